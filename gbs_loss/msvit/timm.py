r"""MSViT around a ``timm`` Vision Transformer, and the one-line entry `from_timm`.

Havtorn, Royer, Blankevoort, Ehteshami Bejnordi, "MSViT: Dynamic Mixed-Scale Tokenization for Vision
Transformers", ICCV Workshops 2023, arXiv 2307.02321. The adapter drives the timm model's own modules (patch
embedding, position embedding, class / distillation / register tokens, blocks, norms, pooling and heads) on the
mixed-scale tokens; nothing of timm is copied. ``timm`` is an optional dependency (``pip install timm``).

Supported: ``timm.models.vision_transformer.VisionTransformer`` and its subclasses with a ``Conv2d`` patch
embedding of square, non-overlapping patches (every patch size: 8, 14, 16, 32, ...), learned or no position
embeddings, class, distillation (DeiT) and register tokens, ``no_embed_class``, ``dynamic_img_size``,
``global_pool`` ``"token"``, ``"avg"``, ``"max"``, ``"avgmax"``, ``"map"`` (attention pooling) and ``""`` (no
pooling), ``pool_include_prefix``, gradient checkpointing (``set_grad_checkpointing``). Refused at construction
with an error naming the attribute: rotary position embeddings (``rope``), ``global_pool="prr"``, an attention
pool with its own position embedding, patch dropout.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.utils.checkpoint
from torch import Tensor, nn

from gbs_loss.modules import GeneralizedBatchShaping
from gbs_loss.msvit._packed import run_timm_blocks
from gbs_loss.msvit._validation import check_patch_sizes, check_positive_int
from gbs_loss.msvit.gate import GateOutput, MixedScaleGate
from gbs_loss.msvit.loss import msvit_gate_loss
from gbs_loss.msvit.tokenizer import mixed_scale_tokens
from gbs_loss.msvit.vit import ViTOutput, _gate_and_mask

__all__ = ["TimmMixedScaleViT", "from_timm"]

_POOLS = ("token", "avg", "max", "avgmax", "map", "")


def _identity(x: Tensor) -> Tensor:
    return x


def _accepts_attn_mask(block: nn.Module) -> bool:
    try:
        return "attn_mask" in inspect.signature(block.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - exotic callables
        return False


def _runs_packed(block: nn.Module) -> bool:
    """Whether ``block`` is timm's plain pre-norm ``Block`` with its standard ``Attention`` (what the packed runner
    drives submodule by submodule); other block types (post-norm, parallel, ...) keep the masked padded path."""
    try:
        from timm.layers import Attention
        from timm.models.vision_transformer import Block
    except ImportError:  # pragma: no cover - old timm
        return False
    attn: Any = getattr(block, "attn", None)
    return type(block).forward is Block.forward and type(attn).forward is Attention.forward


def _default_gate(coarse_size: int, fine_size: int, in_channels: int, target: float | None) -> MixedScaleGate:
    # The gate's default gate_resolution follows coarse_size (7 for the 28-pixel coarse patches of patch-14 models).
    options: dict[str, Any] = {} if target is None else {"init_rate": target}
    return MixedScaleGate(coarse_size, fine_size, in_channels, **options)


class TimmMixedScaleViT(nn.Module):
    r"""MSViT around a ``timm`` ``VisionTransformer``: its own embeddings, blocks, pooling and heads on mixed tokens.

    The fine patch embedding is the ViT's ``patch_embed.proj`` (with ``patch_embed.norm``); the fine
    position-embedding grid is ``pos_embed`` without its prefix entries (resampled by timm's own
    ``resample_abs_pos_embed`` to the image's grid when ``dynamic_img_size=True``); coarse tokens are built as in
    `mixed_scale_tokens`. The class, distillation and register tokens are prepended as
    timm does. Execution: when no image of the batch has padding (every region split, or the gate's ``budget``
    mode), the blocks run exactly as in timm's ``forward_features``; otherwise, for timm's standard ``Block``,
    the packed runner of `gbs_loss.msvit._packed` drives each block's own submodules on the real tokens of
    the whole batch (no compute on padding) and attends per image; other block types get an additive attention
    mask that hides the padding (blocks that take no ``attn_mask``, from old timm versions, run image by image).
    Gradient checkpointing follows ``vit.grad_checkpointing`` (one checkpoint per block, as timm). Pooling
    follows ``vit.global_pool`` over the real tokens only: ``"token"`` and DeiT's distilled heads go through
    ``vit.forward_head`` (so a distilled DeiT averages its two heads, or returns both in distilled training, as
    timm); ``"avg"``, ``"max"``, ``"avgmax"`` ignore the padding; ``"map"`` runs ``vit.attn_pool`` with the
    padding masked; ``""`` returns the head applied to every token (padding rows are meaningless). Havtorn et
    al., "MSViT", ICCV Workshops 2023, arXiv 2307.02321.

    Args:
        vit: A ``timm`` ``VisionTransformer`` (or subclass such as DeiT's ``VisionTransformerDistilled``).
        gate: The gate; when ``None``, a `MixedScaleGate` whose ``gate_resolution``
            fits the coarse size (7 for patch-14 models) and whose initial split rate is ``target``.
        coarse_size: Side of a coarse patch in pixels; twice the ViT's patch size when ``None``.
        max_tokens: Fixed padded length of the token sequences, or ``None`` (see
            `mixed_scale_tokens`).
        return_logits: Return the logits tensor from ``forward`` (what timm's train and validate scripts expect)
            instead of a `ViTOutput`; the full output is kept in `last_output`.
        target: Split fraction a default gate starts at (its ``init_rate``); the gate's default when ``None``.
        packed: Run the blocks packed (``True``), masked on the padded batch (``False``), or packed whenever
            every block is timm's standard ``Block`` (``None``).

    Attributes:
        last_output: The `ViTOutput` of the latest ``forward`` (its ``gate.soft`` goes to
            the gate loss), or ``None`` before the first call.

    Shape:
        - Input: ``(B, C, H, W)``, ``H`` and ``W`` multiples of ``coarse_size`` (the ViT's image size unless
          ``dynamic_img_size``); optional mask ``(B, H / Sc, W / Sc)``.
        - Output: `ViTOutput` with ``logits`` of shape ``(B, num_classes)`` (``(B, P + T,
          num_classes)`` for ``global_pool=""``, ``P`` prefix tokens), or the logits alone with
          ``return_logits=True``.

    Example:
        >>> import torch
        >>> import timm  # doctest: +SKIP
        >>> from gbs_loss.msvit import TimmMixedScaleViT
        >>> vit = timm.create_model("vit_small_patch16_224", num_classes=10)  # doctest: +SKIP
        >>> model = TimmMixedScaleViT(vit)  # doctest: +SKIP
        >>> model(torch.randn(2, 3, 224, 224)).logits.shape  # doctest: +SKIP
        torch.Size([2, 10])
    """

    vit: Any  # the timm model: its attributes are read dynamically

    def __init__(
        self,
        vit: nn.Module,
        gate: MixedScaleGate | None = None,
        coarse_size: int | None = None,
        max_tokens: int | None = None,
        *,
        return_logits: bool = False,
        target: float | None = None,
        packed: bool | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        patch_embed = getattr(vit, "patch_embed", None)
        proj = getattr(patch_embed, "proj", None)
        if not isinstance(proj, nn.Conv2d) or not isinstance(getattr(vit, "blocks", None), nn.Module):
            raise TypeError(
                f"{owner}: vit must be a timm VisionTransformer whose patch_embed.proj is an "
                f"nn.Conv2d, got {type(vit).__name__} with patch_embed.proj "
                f"{type(proj).__name__}"
            )
        stride = tuple(proj.stride)
        if stride[0] != stride[1] or tuple(proj.kernel_size) != stride:
            raise ValueError(
                f"{owner}: the patch embedding must have square, non-overlapping patches, got "
                f"kernel_size={tuple(proj.kernel_size)} and stride={stride}"
            )
        fine_size = stride[0]
        coarse_size = 2 * fine_size if coarse_size is None else coarse_size
        check_patch_sizes(owner, coarse_size, fine_size)
        self._check_supported(vit, owner)
        if gate is None:
            gate = _default_gate(coarse_size, fine_size, proj.in_channels, target)
        elif not isinstance(gate, MixedScaleGate):
            raise TypeError(f"{owner}: gate must be a MixedScaleGate or None, got {type(gate).__name__}")
        elif gate.coarse_size != coarse_size or gate.in_channels != proj.in_channels:
            raise ValueError(
                f"{owner}: the gate has coarse_size={gate.coarse_size} and in_channels={gate.in_channels}, "
                f"expected {coarse_size} and {proj.in_channels}"
            )
        if max_tokens is not None:
            check_positive_int(owner, "max_tokens", max_tokens)
        if not isinstance(return_logits, bool):
            raise TypeError(f"{owner}: return_logits must be a bool, got {type(return_logits).__name__}")
        blocks: Any = vit.blocks
        supported = all(_runs_packed(block) for block in blocks)
        if packed is None:
            packed = supported
        elif not isinstance(packed, bool):
            raise TypeError(f"{owner}: packed must be a bool or None, got {type(packed).__name__}")
        elif packed and not supported:
            raise ValueError(
                f"{owner}: packed=True needs timm's vision_transformer.Block with its standard Attention in every "
                "vit.blocks entry; use packed=None or False for other blocks (they run masked on the padded batch)"
            )
        self.vit = vit
        self.gate = gate
        self.coarse_size = coarse_size
        self.fine_size = fine_size
        self.max_tokens = max_tokens
        self.return_logits = return_logits
        self.packed = packed
        self.masked_blocks = all(_accepts_attn_mask(block) for block in blocks)
        self.last_output: ViTOutput | None = None

    @staticmethod
    def _check_supported(vit: nn.Module, owner: str) -> None:
        """Refuse, naming the attribute, what the adapter cannot run faithfully on mixed tokens."""
        if getattr(vit, "rope", None) is not None:
            raise ValueError(
                f"{owner}: rotary position embeddings are not supported (vit.rope is "
                f"{type(vit.rope).__name__}; supported: vit.rope None, i.e. learned or no absolute position "
                f"embeddings in vit.pos_embed): coarse tokens have no rotary position"
            )
        pool = getattr(vit, "global_pool", "token")
        if pool not in _POOLS:
            raise ValueError(f"{owner}: vit.global_pool must be one of {list(_POOLS)}, got {pool!r}")
        attn_pool = getattr(vit, "attn_pool", None)
        if (pool == "map") != (attn_pool is not None):
            raise ValueError(
                f"{owner}: vit.attn_pool must be set exactly when vit.global_pool == 'map', got global_pool="
                f"{pool!r} and attn_pool {type(attn_pool).__name__}"
            )
        if attn_pool is not None and getattr(attn_pool, "pos_embed", None) is not None:
            raise ValueError(
                f"{owner}: vit.attn_pool.pos_embed must be None (attention pooling without its own position "
                "embedding); mixed tokens have no fixed positions"
            )
        patch_drop = getattr(vit, "patch_drop", None)
        if patch_drop is not None and not isinstance(patch_drop, nn.Identity):
            raise ValueError(
                f"{owner}: vit.patch_drop must be nn.Identity (patch_drop_rate=0), got "
                f"{type(patch_drop).__name__}; MSViT already chooses the tokens"
            )
        count = sum(
            0 if t is None else t.shape[1]
            for t in (getattr(vit, n, None) for n in ("cls_token", "dist_token", "reg_token"))
        )
        if count != getattr(vit, "num_prefix_tokens", count):
            raise ValueError(
                f"{owner}: vit.num_prefix_tokens={vit.num_prefix_tokens} but cls_token, dist_token and reg_token "
                f"hold {count} tokens; supported: prefix tokens from those attributes only"
            )
        pos = getattr(vit, "pos_embed", None)
        if pos is not None and (not isinstance(pos, Tensor) or pos.dim() != 3):
            raise ValueError(f"{owner}: vit.pos_embed must be None or a (1, N, D) tensor")

    # -- pieces of the timm model ----------------------------------------------------------------------------
    def _module(self, name: str) -> Any:
        """An optional layer of the timm model (``norm_pre``, ``fc_norm``, ...), the identity where it has none."""
        module = getattr(self.vit, name, None)
        return _identity if module is None else module

    @property
    def num_prefix_tokens(self) -> int:
        """Number of class, distillation and register tokens in front of the image tokens."""
        return sum(
            t.shape[1]
            for t in (getattr(self.vit, n, None) for n in ("cls_token", "dist_token", "reg_token"))
            if t is not None
        )

    def _pos_embeds(self, grid: tuple[int, int]) -> tuple[Tensor | None, Tensor | None]:
        """Position embeddings of the prefix tokens (``None`` where timm adds none) and of the fine grid."""
        vit = self.vit
        pos = vit.pos_embed
        if pos is None:
            return None, None
        shared = 0 if getattr(vit, "no_embed_class", False) else self.num_prefix_tokens
        if getattr(vit, "dynamic_img_size", False) and tuple(grid) != tuple(vit.patch_embed.grid_size):
            from timm.layers import resample_abs_pos_embed  # the adapter only runs with timm installed

            pos = resample_abs_pos_embed(
                pos, new_size=list(grid), old_size=list(vit.patch_embed.grid_size), num_prefix_tokens=shared
            )
        return (pos[:, :shared] if shared else None), pos[:, shared:]

    def _prefix(self, b: int, pos: Tensor | None) -> Tensor | None:
        vit = self.vit
        parts = [
            t.expand(b, -1, -1)
            for t in (getattr(vit, n, None) for n in ("cls_token", "dist_token", "reg_token"))
            if t is not None
        ]
        if not parts:
            return None
        prefix = torch.cat(parts, dim=1)
        return prefix if pos is None else prefix + pos

    def _run_blocks(self, x: Tensor, padding: Tensor, lengths: Tensor, no_padding: bool) -> Tensor:
        """The timm blocks on the batch: no compute on padding (packed), or the padding hidden from attention."""
        vit = self.vit
        checkpointing = bool(getattr(vit, "grad_checkpointing", False)) and torch.is_grad_enabled()
        if no_padding:  # exactly timm's forward_features
            if checkpointing:
                for block in vit.blocks:
                    x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
                return x
            out: Tensor = vit.blocks(x)
            return out
        if self.packed:  # token-wise layers on the real tokens only, attention per image
            return run_timm_blocks(vit.blocks, x, lengths, checkpoint=checkpointing)
        if self.masked_blocks:
            bias = torch.zeros(padding.shape, dtype=x.dtype, device=x.device).masked_fill(padding, float("-inf"))
            bias = bias[:, None, None, :]
            for block in vit.blocks:
                if checkpointing:
                    x = torch.utils.checkpoint.checkpoint(block, x, attn_mask=bias, use_reentrant=False)
                else:
                    x = block(x, attn_mask=bias)
            return x
        rows = []
        for i, length in enumerate(lengths.tolist()):  # old timm: one image at a time, one synchronisation
            row = x[i : i + 1, :length]
            for block in vit.blocks:
                row = (
                    torch.utils.checkpoint.checkpoint(block, row, use_reentrant=False) if checkpointing else block(row)
                )
            rows.append(torch.cat([row, row.new_zeros(1, x.shape[1] - length, row.shape[2])], dim=1))
        return torch.cat(rows, dim=0)

    def _head(self, x: Tensor, padding: Tensor, no_padding: bool) -> Tensor:
        """timm's pooling and head(s), over the real tokens only."""
        vit = self.vit
        pool = getattr(vit, "global_pool", "token")
        if no_padding or pool in ("token", "") or getattr(vit, "head_dist", None) is not None:
            head: Tensor = vit.forward_head(x)
            return head
        if not getattr(vit, "pool_include_prefix", False):
            x, padding = x[:, self.num_prefix_tokens :], padding[:, self.num_prefix_tokens :]
        if pool == "map":
            bias = torch.zeros(padding.shape, dtype=x.dtype, device=x.device).masked_fill(padding, float("-inf"))
            pooled = vit.attn_pool(x, attn_mask=bias[:, None, None, :])
        else:
            keep = ~padding.unsqueeze(-1)
            mean = (x * keep.to(x.dtype)).sum(1) / keep.sum(1).clamp(min=1).to(x.dtype)
            largest = x.masked_fill(~keep, float("-inf")).amax(1)
            pooled = {"avg": mean, "max": largest, "avgmax": 0.5 * (largest + mean)}[pool]
        logits: Tensor = vit.head(self._module("head_drop")(self._module("fc_norm")(pooled)))
        return logits

    # -- forward -----------------------------------------------------------------------------------------------
    def forward(self, images: Tensor, mask: Tensor | None = None) -> ViTOutput | Tensor:
        """Classify a batch of images on mixed-scale tokens with the timm ViT's own layers.

        Args:
            images: Images ``(B, C, H, W)``.
            mask: Split decisions ``(B, H / Sc, W / Sc)`` to use instead of the gate's (all ones: the plain ViT).

        Returns:
            A `ViTOutput`, or its ``logits`` alone when `return_logits` is set (the
            output is then in `last_output`).
        """
        vit = self.vit
        gate_out, mask = _gate_and_mask(self.gate, images, mask)
        b = images.shape[0]
        grid = (images.shape[-2] // self.fine_size, images.shape[-1] // self.fine_size)
        prefix_pos, patch_pos = self._pos_embeds(grid)
        budget = getattr(self.gate, "budget", None) if gate_out is not None else None
        tokens = mixed_scale_tokens(
            images,
            mask,
            vit.patch_embed.proj,
            patch_pos,
            coarse_size=self.coarse_size,
            fine_size=self.fine_size,
            embed_norm=getattr(vit.patch_embed, "norm", None),
            max_tokens=self.max_tokens,
            budget=budget,
            scores=None if gate_out is None else gate_out.logits,
        )
        count = self.num_prefix_tokens
        prefix = self._prefix(b, prefix_pos)
        x = tokens.tokens if prefix is None else torch.cat([prefix.to(tokens.tokens.dtype), tokens.tokens], 1)
        x = self._module("norm_pre")(self._module("pos_drop")(x))
        padding = torch.cat([tokens.padding_mask.new_zeros(b, count), tokens.padding_mask], dim=1)
        if budget is not None:  # the gate's budget mode: every image has the same length, nothing synchronises
            no_padding = True
        elif self.max_tokens is None:  # the lengths were read on the host already; one more read is cheap
            no_padding = not bool(padding.any())
        else:  # a fixed padded length: the packed runner reads the total length once
            no_padding = False
        x = self._run_blocks(x, padding, tokens.lengths + count, no_padding)
        x = self._module("norm")(x)
        logits = self._head(x, padding, no_padding)
        out = ViTOutput(logits, x[:, count:], gate_out, tokens)
        self.last_output = out
        return logits if self.return_logits else out

    def __getstate__(self) -> dict[str, Any]:
        # Copies and pickles (timm's model EMA deep-copies the model) leave out the latest output and its graph.
        state = self.__dict__.copy()
        state["last_output"] = None
        return state

    # -- what timm's scripts and optimiser factory look for --------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """The wrapped model's ``num_classes``."""
        return int(self.vit.num_classes)

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """The wrapped model's ``pretrained_cfg`` (timm's data-config helpers read it)."""
        return getattr(self.vit, "pretrained_cfg", {})

    @property
    def default_cfg(self) -> dict[str, Any]:
        """Alias of `pretrained_cfg`, as in timm."""
        return self.pretrained_cfg

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Turn gradient checkpointing of the wrapped model's blocks on or off (timm's method)."""
        self.vit.set_grad_checkpointing(enable)

    def no_weight_decay(self) -> set[str]:
        """Parameter names timm's optimiser factory keeps out of weight decay (timm's own, the gate loss's priors)."""
        names = {f"vit.{n}" for n in getattr(self.vit, "no_weight_decay", set)()}
        names |= {n for n, _ in self.named_parameters() if n.startswith("gate_criterion.")}
        return names

    def extra_repr(self) -> str:
        return (
            f"coarse_size={self.coarse_size}, fine_size={self.fine_size}, max_tokens={self.max_tokens}, "
            f"return_logits={self.return_logits}"
        )


class _TimmMSViTWithLoss(TimmMixedScaleViT):
    """`TimmMixedScaleViT` with its Generalized Batch-Shaping gate loss attached (see `from_timm`)."""

    gate_criterion: GeneralizedBatchShaping

    def gate_loss(self, output: ViTOutput | GateOutput | Tensor | None = None) -> Tensor:
        """The Generalized Batch-Shaping loss of the gate's soft values of the latest ``forward`` (or of ``output``).

        Args:
            output: A `ViTOutput`, a `GateOutput` or soft values
                ``(B, H / Sc, W / Sc)``; `last_output` when ``None``.

        Returns:
            The scalar loss, to add to the task loss.
        """
        owner = f"{type(self).__name__}.gate_loss"
        output = self.last_output if output is None else output
        if isinstance(output, ViTOutput):
            output = output.gate
        if isinstance(output, GateOutput):
            output = output.soft
        if not isinstance(output, Tensor):
            raise RuntimeError(
                f"{owner}: no gate output: run forward first, without a mask (a given mask bypasses the gate)"
            )
        regions = tuple(self.gate_criterion.mean_logits.shape)
        if tuple(output.shape[1:]) != regions:
            raise ValueError(
                f"{owner}: the gate loss was built for a {regions[0]}x{regions[1]} grid of coarse regions, got "
                f"soft values of shape {tuple(output.shape)}; call from_timm with img_size for this image size"
            )
        loss: Tensor = self.gate_criterion(output)
        return loss


def from_timm(
    model: nn.Module,
    coarse_size: int | None = None,
    target: float = 0.3,
    spread: float = 0.1,
    *,
    gate: MixedScaleGate | None = None,
    img_size: int | tuple[int, int] | None = None,
    max_tokens: int | None = None,
    return_logits: bool = True,
    **loss_options: Any,
) -> TimmMixedScaleViT:
    r"""Turn a ``timm`` Vision Transformer into an MSViT in one line, with its gate loss ready.

    In the style of token-reduction libraries that patch a timm model in one call (ToMe's
    ``tome.patch.timm(model)``; Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023): the returned
    module wraps ``model`` (whose parameters it shares), returns plain logits by default, so that timm's train and
    validate scripts and any classification loop run unchanged, and keeps the full output (gate values, tokens)
    in ``last_output``. ``model.gate_loss()`` is the Generalized Batch-Shaping loss
    (`msvit_gate_loss`) of the latest forward's soft gate values, pulling the split
    fraction toward ``target`` (Havtorn et al., "MSViT", ICCV Workshops 2023, arXiv 2307.02321). Its learned
    priors are parameters of the returned module (``model.gate_criterion``), so ``model.parameters()`` gives the
    optimiser everything and ``state_dict`` saves everything.

    Args:
        model: A ``timm`` ``VisionTransformer`` (see `TimmMixedScaleViT` for what is supported).
        coarse_size: Side of a coarse patch in pixels; twice the model's patch size when ``None``.
        target: Target fraction of regions split into fine tokens, in ``(0, 1)``.
        spread: Standard deviation of the hyperprior on the regions' split rates, in ``(0, 1)``.
        gate: A gate to use instead of the default `MixedScaleGate`.
        img_size: Image size the gate loss is built for (its grid of regions); the model's ``img_size`` when
            ``None``.
        max_tokens: Fixed padded token length, or ``None`` (see `mixed_scale_tokens`).
        return_logits: ``forward`` returns the logits (``True``) or a `ViTOutput`.
        **loss_options: Further keyword arguments of `msvit_gate_loss`
            (``temperature_weight``, ``validate_args``, ...).

    Returns:
        A `TimmMixedScaleViT` with a ``gate_loss()`` method and a ``gate_criterion`` submodule.

    Example:
        >>> import torch
        >>> import timm  # doctest: +SKIP
        >>> from gbs_loss.msvit import from_timm
        >>> model = from_timm(timm.create_model("vit_small_patch16_224", num_classes=10), target=0.3)  # doctest: +SKIP
        >>> logits = model(torch.randn(4, 3, 224, 224))  # doctest: +SKIP
        >>> labels = torch.tensor([0, 1, 2, 3])
        >>> loss = torch.nn.functional.cross_entropy(logits, labels) + model.gate_loss()  # doctest: +SKIP
        >>> loss.backward()  # doctest: +SKIP
    """
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target < 1:
        raise ValueError(f"from_timm: target must be a number in (0, 1), got {target!r}")
    wrapped = _TimmMSViTWithLoss(model, gate, coarse_size, max_tokens, return_logits=return_logits, target=target)
    if img_size is None:
        img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
        if img_size is None:
            raise ValueError("from_timm: the model has no patch_embed.img_size; pass img_size")
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if len(size) != 2 or any(
        isinstance(s, bool) or not isinstance(s, int) or s <= 0 or s % wrapped.coarse_size for s in size
    ):
        raise ValueError(
            f"from_timm: img_size must be positive multiples of coarse_size={wrapped.coarse_size}, got {img_size!r}"
        )
    regions = (size[0] // wrapped.coarse_size, size[1] // wrapped.coarse_size)
    wrapped.gate_criterion = msvit_gate_loss(regions, target, spread, **loss_options)
    return wrapped
