r"""The MSViT gate: one split-or-keep decision per coarse image region.

Havtorn, Royer, Blankevoort, Ehteshami Bejnordi, "MSViT: Dynamic Mixed-Scale Tokenization for Vision
Transformers", ICCV Workshops 2023, arXiv 2307.02321. The image is cut into coarse patches (32x32 pixels by
default, a 7x7 grid for a 224x224 image); a small MLP looks at each coarse patch and outputs a logit, "split this
region into fine 16x16 patches" (1) or "keep one coarse token" (0). During training the soft value
$\sigma((\ell + L) / \tau)$ (with logistic noise $L$) goes to the Generalized Batch-Shaping loss and a
straight-through estimator passes the hard 0/1 decision forward while gradients flow through the soft value;
in evaluation the decision is a deterministic threshold of the logit.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gbs_loss.msvit._validation import check_images, check_patch_sizes, check_positive_int, resolve_budget

__all__ = ["GateOutput", "MixedScaleGate"]


class GateOutput(NamedTuple):
    """What `MixedScaleGate` returns; every field has shape ``(B, H / Sc, W / Sc)``.

    Attributes:
        logits: The raw logits $\\ell$ of the MLP, one per coarse region.
        soft: Soft split probabilities in ``(0, 1)``: $\\sigma((\\ell + L) / \\tau)$ in training (``L``
            logistic noise, when enabled), $\\sigma(\\ell / \\tau)$ in evaluation. Feed these to the
            Generalized Batch-Shaping loss (see `gbs_loss.msvit.msvit_gate_loss`).
        mask: The hard decision, exactly 0.0 (keep one coarse token) or 1.0 (split into fine tokens), in the
            dtype of ``soft``. In training its gradient is passed straight through to ``soft``; in evaluation it
            is ``soft > threshold`` and carries no gradient.

    Example:
        >>> import torch
        >>> out = MixedScaleGate().eval()(torch.randn(2, 3, 64, 64))  # 32-pixel regions: a 2 x 2 grid
        >>> out.logits.shape, out.mask.dtype, sorted(set(out.mask.flatten().tolist())) <= [0.0, 1.0]
        (torch.Size([2, 2, 2]), torch.float32, True)
    """

    logits: Tensor
    soft: Tensor
    mask: Tensor


class MixedScaleGate(nn.Module):
    r"""A small MLP that decides, for every coarse region of an image, whether to split it into fine patches.

    Every coarse patch (``coarse_size`` pixels square) is average-pooled to ``gate_resolution`` pixels square,
    flattened and passed through an MLP with GELU activations that outputs one logit (Havtorn et al., "MSViT:
    Dynamic Mixed-Scale Tokenization for Vision Transformers", ICCV Workshops 2023, arXiv 2307.02321). The
    regions are processed independently, so the gate works for any image size that is a multiple of
    ``coarse_size``.

    Cost with the defaults (3 channels, ``gate_resolution=8``, ``hidden_dims=(64, 64)``):
    **16,577 parameters** and, for a 224x224 image (49 regions), **0.81 M multiply-accumulates** in the MLP
    plus 0.15 M additions for the pooling, about **0.96 M** in all. A ViT-S/16 has about 22 M parameters and
    4.6 G multiply-accumulates at 224x224: the gate adds 0.08% of its parameters and 0.02% of its compute.
    `num_parameters` and `macs` compute these numbers for other settings.

    Training (``module.train()``): ``soft = sigmoid((logits + L) / temperature)`` with ``L`` standard
    logistic noise when ``noise="logistic"``; ``mask = (soft > threshold)`` as 0/1 with a straight-through
    estimator: its forward value is exactly the hard decision and its gradient flows to ``soft`` unchanged.
    Evaluation (``module.eval()``): no noise; ``mask = (sigmoid(logits / temperature) > threshold)``,
    deterministic, without gradient.

    Args:
        coarse_size: Side of a coarse patch in pixels ($S_c$).
        fine_size: Side of a fine patch in pixels ($S_f$); ``coarse_size`` must be a multiple of it
            larger than it. The gate itself only needs ``coarse_size``; ``fine_size`` is kept so that the gate
            and a `MixedScaleTokenizer` can be checked against each other.
        in_channels: Number of image channels.
        gate_resolution: Side, in pixels, to which each coarse patch is average-pooled before the MLP; must
            divide ``coarse_size`` (``coarse_size`` itself means no pooling). ``None`` (default): the largest
            divisor of ``coarse_size`` not above 8 (8 for 32-pixel coarse patches, 7 for 28, 4 for 12), so that
            every patch size works.
        hidden_dims: Widths of the MLP's hidden layers (may be empty: a linear gate).
        noise: ``"logistic"`` adds logistic noise to the logits in training (a binary-concrete relaxation);
            ``"none"`` does not.
        temperature: $\tau > 0$ of the soft values.
        threshold: Soft value above which a region is split, in ``(0, 1)``.
        init_rate: Fraction of regions a fresh gate splits, in ``(0, 1)``; pass the target rate of the
            Generalized Batch-Shaping loss. With PyTorch's default initialisation the logits of a fresh MLP
            differ by only about 0.01 across regions, around an offset that depends on the seed, so thresholding
            them at 0 in evaluation splits 0% or 100% of the regions. The output layer is therefore calibrated at
            construction on `reference_inputs` (synthetic standardized images, a fixed private generator):
            its weights are scaled so that the logits $\ell$ have standard deviation
            `INIT_LOGIT_STD` (``s``, two logistic scales) over the reference regions, and its bias is set so
            that exactly ``init_rate`` of them have $\ell > 0$, the evaluation decision. In training a
            region splits when $\ell + L > 0$; were $\ell$ logistic with scale $s' = s\sqrt{3} / \pi$ and
            $P(\ell > 0) = r$, its mean is $s' \operatorname{logit}(r)$ and the sum has about logistic scale
            $\sqrt{1 + s'^2}$, so training splits about $\sigma(s' \operatorname{logit}(r) / \sqrt{1 + s'^2})$:
            0.12 for 0.1, 0.32 for 0.3 (the larger ``s``, the closer the two rates; at ``s' = 2`` the soft values
            are not yet saturated). On other images the rate
            follows their scale: about ``init_rate`` (within 0.1) on standardized images, closer to 0.5 on images
            whose regions differ much more than the reference's. Use ``budget`` for an exact count.
        budget: Per-image budget mode: ``None`` (default) thresholds every region independently; an int ``k``
            splits exactly the ``k`` regions with the largest (noisy, in training) logits of every image, a float
            in ``[0, 1]`` that fraction of the regions (rounded). Every image then has exactly
            ``regions + ((Sc / Sf)^2 - 1) k`` tokens: no padding and no host synchronisation. The mask is the
            hard top-k decision with the same straight-through gradient as the threshold.

    Shape:
        - Input: ``(B, C, H, W)`` with ``H`` and ``W`` multiples of ``coarse_size``.
        - Output: a `GateOutput` whose fields have shape ``(B, H / coarse_size, W / coarse_size)``.

    Example:
        >>> import torch
        >>> from gbs_loss.msvit import MixedScaleGate
        >>> gate = MixedScaleGate()
        >>> out = gate(torch.randn(2, 3, 224, 224))
        >>> out.soft.shape, out.mask.shape
        (torch.Size([2, 7, 7]), torch.Size([2, 7, 7]))
        >>> gate.num_parameters(), gate.macs(224, 224)
        (16577, 956480)
    """

    def __init__(
        self,
        coarse_size: int = 32,
        fine_size: int = 16,
        in_channels: int = 3,
        gate_resolution: int | None = None,
        hidden_dims: tuple[int, ...] = (64, 64),
        noise: Literal["logistic", "none"] = "logistic",
        temperature: float = 1.0,
        threshold: float = 0.5,
        init_rate: float = 0.5,
        budget: int | float | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        check_patch_sizes(owner, coarse_size, fine_size)
        check_positive_int(owner, "in_channels", in_channels)
        if gate_resolution is None:
            gate_resolution = max(r for r in range(1, min(8, coarse_size) + 1) if coarse_size % r == 0)
        check_positive_int(owner, "gate_resolution", gate_resolution)
        if gate_resolution > coarse_size or coarse_size % gate_resolution != 0:
            raise ValueError(f"{owner}: gate_resolution must divide coarse_size={coarse_size}, got {gate_resolution}")
        if not isinstance(hidden_dims, (tuple, list)):
            raise TypeError(
                f"{owner}: hidden_dims must be a tuple of positive ints, got "
                f"{type(hidden_dims).__name__} {hidden_dims!r}"
            )
        for width in hidden_dims:
            check_positive_int(owner, "hidden_dims entries", width)
        if noise not in ("logistic", "none"):
            raise ValueError(f"{owner}: noise must be 'logistic' or 'none', got {noise!r}")
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, (int, float))
            or not (temperature > 0 and math.isfinite(temperature))
        ):
            raise ValueError(f"{owner}: temperature must be a finite number > 0, got {temperature!r}")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
            raise ValueError(f"{owner}: threshold must be a number in (0, 1), got {threshold!r}")
        if isinstance(init_rate, bool) or not isinstance(init_rate, (int, float)) or not 0 < init_rate < 1:
            raise ValueError(f"{owner}: init_rate must be a number in (0, 1), got {init_rate!r}")
        resolve_budget(owner, budget, None)

        self.coarse_size = coarse_size
        self.fine_size = fine_size
        self.in_channels = in_channels
        self.gate_resolution = gate_resolution
        self.hidden_dims = tuple(hidden_dims)
        self.noise = noise
        self.temperature = float(temperature)
        self.threshold = float(threshold)
        self.init_rate = float(init_rate)
        self.budget = budget

        widths = [in_channels * gate_resolution**2, *self.hidden_dims]
        layers: list[nn.Module] = []
        for w_in, w_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(w_in, w_out), nn.GELU()]
        layers.append(nn.Linear(widths[-1], 1))
        self.mlp = nn.Sequential(*layers)
        self._calibrate_output_layer()

    #: Standard deviation of a fresh gate's logits over the reference regions (2 logistic scales, about 3.6).
    INIT_LOGIT_STD = 2.0 * math.pi / math.sqrt(3.0)

    def reference_inputs(self, images: int = 32) -> Tensor:
        """Region inputs of synthetic standardized images, the reference on which a fresh gate is calibrated.

        Each image is the sum of a smooth random field (Gaussian noise on an 8 x 8 grid, upsampled bicubically)
        and white noise, with per-image weights drawn log-uniformly in ``[0.1, 1]``: the value scale of images
        normalized per channel (mean 0, standard deviation about 1), from flat, textured to noisy regions. A
        private generator with a fixed seed draws them, so the global random state is untouched and the result
        does not depend on the seed.

        Args:
            images: Number of reference images, of ``4 x 4`` coarse regions each.

        Returns:
            Tensor of shape ``(images * 16, in_channels * gate_resolution ** 2)`` in the dtype and on the device
            of the gate's parameters.
        """
        weight = self.mlp[-1].weight
        generator = torch.Generator().manual_seed(12345)
        side = 4 * self.coarse_size
        shape = (images, self.in_channels)
        field = torch.randn(*shape, 8, 8, generator=generator, dtype=torch.float64)
        field = F.interpolate(field, size=(side, side), mode="bicubic", align_corners=False)
        noise = torch.randn(*shape, side, side, generator=generator, dtype=torch.float64)
        a, b = torch.exp(
            torch.empty(2, images, 1, 1, 1, dtype=torch.float64).uniform_(math.log(0.1), 0.0, generator=generator)
        )
        regions = self.region_inputs((a * field + b * noise).to(weight.dtype).to(weight.device))
        return regions.reshape(-1, regions.shape[-1])

    @torch.no_grad()
    def _calibrate_output_layer(self) -> None:
        """Scale the output layer and set its bias so that a fresh gate splits ``init_rate`` of the regions."""
        last = self.mlp[-1]
        assert isinstance(last, nn.Linear) and last.bias is not None  # built so in __init__
        bias = last.bias
        if last.weight.is_meta:
            bias.fill_(math.log(self.init_rate) - math.log1p(-self.init_rate))
            return
        features = self.mlp[:-1](self.reference_inputs()).double()
        raw = features @ last.weight.double().squeeze(0)
        scale = self.INIT_LOGIT_STD / raw.std().clamp_min(1e-12)
        last.weight.mul_(scale.to(last.weight.dtype))
        bias.fill_(-torch.quantile(scale * raw, 1.0 - self.init_rate).item())

    @property
    def region_features(self) -> int:
        """Number of inputs of the MLP per region: ``in_channels * gate_resolution ** 2``."""
        return self.in_channels * self.gate_resolution**2

    def num_parameters(self) -> int:
        """Number of parameters of the gate.

        Example:
            >>> MixedScaleGate().num_parameters()
            16577
        """
        return sum(p.numel() for p in self.parameters())

    def macs(self, height: int = 224, width: int = 224) -> int:
        """Multiply-accumulates of one forward pass on one ``height x width`` image.

        Counts the MLP's multiply-accumulates (one per weight and region; biases and GELUs not counted, as
        in the usual ViT figures) plus one addition per input value for the average pooling (none without
        pooling).

        Args:
            height: Image height in pixels, a multiple of ``coarse_size``.
            width: Image width in pixels, a multiple of ``coarse_size``.

        Returns:
            The operation count as an int.

        Example:
            >>> MixedScaleGate().macs(224, 224)
            956480
        """
        owner = f"{type(self).__name__}.macs"
        for name, value in (("height", height), ("width", width)):
            check_positive_int(owner, name, value)
            if value % self.coarse_size:
                raise ValueError(f"{owner}: {name} must be a multiple of coarse_size={self.coarse_size}, got {value}")
        regions = (height // self.coarse_size) * (width // self.coarse_size)
        mlp = sum(m.in_features * m.out_features for m in self.mlp if isinstance(m, nn.Linear))
        pooling = self.in_channels * height * width if self.gate_resolution < self.coarse_size else 0
        return regions * mlp + pooling

    def region_inputs(self, images: Tensor) -> Tensor:
        """The MLP's input for every coarse region: the pooled, flattened pixels.

        Args:
            images: Images ``(B, C, H, W)``.

        Returns:
            Tensor of shape ``(B, H / Sc, W / Sc, C * gate_resolution ** 2)``.
        """
        rh, rw = check_images(type(self).__name__, images, self.in_channels, self.coarse_size)
        k = self.coarse_size // self.gate_resolution
        pooled = F.avg_pool2d(images, k) if k > 1 else images
        b, c, g = images.shape[0], images.shape[1], self.gate_resolution
        regions = pooled.reshape(b, c, rh, g, rw, g).permute(0, 2, 4, 1, 3, 5)
        return regions.reshape(b, rh, rw, c * g * g)

    def forward(self, images: Tensor, budget: int | float | None = None) -> GateOutput:
        """Gate logits, soft values and hard mask for a batch of images.

        Args:
            images: Images ``(B, C, H, W)``, ``H`` and ``W`` multiples of ``coarse_size``.
            budget: Regions to split per image (int) or their fraction (float), overriding `budget` for
                this call; ``None`` uses `budget`.

        Returns:
            A `GateOutput` ``(logits, soft, mask)``, each of shape ``(B, H / Sc, W / Sc)``.
        """
        logits = self.mlp(self.region_inputs(images)).squeeze(-1)
        noisy = logits
        if self.training and self.noise == "logistic":
            tiny = torch.finfo(logits.dtype).tiny
            u = torch.rand_like(logits).clamp(tiny, 1.0 - torch.finfo(logits.dtype).eps)
            noisy = logits + (torch.log(u) - torch.log1p(-u))
        soft = torch.sigmoid(noisy / self.temperature)
        budget = self.budget if budget is None else budget
        if budget is None:
            hard = (soft > self.threshold).to(soft.dtype)
        else:
            b = logits.shape[0]
            flat = noisy.detach().reshape(b, -1)
            k = resolve_budget(type(self).__name__, budget, flat.shape[1])
            top = flat.topk(k, dim=1, sorted=False).indices
            hard = torch.zeros_like(flat).scatter(1, top, 1.0).reshape(logits.shape).to(soft.dtype)
        if self.training:
            # Straight-through: the forward value is exactly `hard` (soft - soft.detach() is exactly 0) and the
            # gradient with respect to `soft` is the identity.
            mask = hard + (soft - soft.detach())
        else:
            mask = hard.detach()
        return GateOutput(logits, soft, mask)

    def extra_repr(self) -> str:
        return (
            f"coarse_size={self.coarse_size}, fine_size={self.fine_size}, in_channels={self.in_channels}, "
            f"gate_resolution={self.gate_resolution}, noise={self.noise!r}, "
            f"temperature={self.temperature:g}, threshold={self.threshold:g}, init_rate={self.init_rate:g}, "
            f"budget={self.budget!r}"
        )
