r"""``python -m gbs_loss msvit-tradeoff``: MSViT's accuracy against tokens, trained by a classifier's own loss.

MSViT (Havtorn, Royer, Blankevoort, Ehteshami Bejnordi, "MSViT: Dynamic Mixed-Scale Tokenization for Vision
Transformers", ICCV Workshops 2023, arXiv 2307.02321) claims a better accuracy-complexity trade-off than a ViT
with a fixed patch size: a gate sends background regions to one coarse token and informative regions to fine
tokens. This module checks the claim at laptop scale, on real data that ships offline:

* **Data.** scikit-learn's handwritten digits (1,797 real 8x8 scans, split per class into training and
  held-out test digits) are pasted, as ink of a contrasting colour, at random positions of the fine-token
  lattice on small canvases whose backgrounds are smooth crops of scikit-image's photographs
  (`make_canvases`): the digit covers a few regions, the others carry no information. The digits keep
  their native resolution (enlarged, they would lose nothing in a coarse token); test canvases use
  photographs never seen in training.
* **Models.** The library's `MixedScaleViT` with the same architecture in every run:
  all-fine (every region split), all-coarse (none), a random gate (every region split with a given
  probability, in training and test) and MSViT (a `MixedScaleGate` trained jointly
  with the ViT by the classifier's cross-entropy through the straight-through mask, plus the Generalized
  Batch-Shaping loss `msvit_gate_loss` setting the split rate). As MSViT fine-tunes
  pretrained ViTs, every seed first trains one shared backbone on random masks of random split rates, from
  which every model is fine-tuned.
* **Measure.** Held-out accuracy, mean tokens per image (class token excluded), the measured split rate,
  multiply-accumulates per image, and the share of the regions under the digit that were split, which
  shows whether the gate looks at the right place.

Everything is seeded: with the same seed, every model sees the same stream of training canvases and is tested
on the same canvases.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from gbs_loss.msvit.gate import MixedScaleGate
from gbs_loss.msvit.loss import msvit_gate_loss
from gbs_loss.msvit.tokenizer import mixed_scale_tokens
from gbs_loss.msvit.vit import MixedScaleViT

if TYPE_CHECKING:
    from tqdm import tqdm

__all__ = [
    "TEST_BACKGROUNDS",
    "TRAIN_BACKGROUNDS",
    "Canvases",
    "DigitSplit",
    "RunResult",
    "TradeoffConfig",
    "bernoulli_mask",
    "encoder_macs",
    "format_table",
    "load_backgrounds",
    "load_digit_split",
    "main",
    "make_canvases",
    "run_tradeoff",
    "switch_forward",
]

#: scikit-image photographs whose smooth crops are the backgrounds of the training canvases.
TRAIN_BACKGROUNDS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "coins", "retina", "brick")
#: Photographs of the test canvases' backgrounds, never seen in training.
TEST_BACKGROUNDS = ("motorcycle", "camera", "colorwheel", "grass")

_MEAN, _STD = 0.5, 0.25  # normalisation of the [0, 1] canvases before the model


def _require(module: str) -> ModuleType:
    try:
        return __import__(module)
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise SystemExit(f"msvit-tradeoff needs {module}: pip install 'gbs-loss[demo]' ({err})") from err


class DigitSplit(NamedTuple):
    """scikit-learn's handwritten digits, split into training and held-out test digits.

    Attributes:
        train_images: ``(N_train, 8, 8)`` float32 ink intensities in ``[0, 1]``.
        train_labels: ``(N_train,)`` int64 classes 0-9.
        test_images: ``(N_test, 8, 8)`` float32 in ``[0, 1]``.
        test_labels: ``(N_test,)`` int64.

    Example:
        >>> from gbs_loss.msvit.tradeoff import load_digit_split
        >>> split = load_digit_split()  # a DigitSplit
        >>> split.test_images.shape, split.test_labels.dtype
        (torch.Size([450, 8, 8]), torch.int64)
    """

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor


def load_digit_split(test_fraction: float = 0.25, seed: int = 0) -> DigitSplit:
    """Load scikit-learn's 1,797 handwritten digits and split them, class by class, into train and test.

    Args:
        test_fraction: Share of every class held out for testing, in ``(0, 1)``.
        seed: Seed of the split (the same seed gives the same split).

    Returns:
        A `DigitSplit`; the intensities ``0..16`` of the scans are divided by 16.

    Example:
        >>> from gbs_loss.msvit.tradeoff import load_digit_split
        >>> split = load_digit_split(test_fraction=0.25, seed=0)
        >>> split.train_images.shape, split.test_images.shape
        (torch.Size([1347, 8, 8]), torch.Size([450, 8, 8]))
        >>> split.train_labels[:5]
        tensor([0, 3, 4, 5, 7])
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"load_digit_split: test_fraction must be in (0, 1), got {test_fraction}")
    _require("sklearn")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32) / 16.0)
    labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    generator = torch.Generator().manual_seed(seed)
    train_idx, test_idx = [], []
    for cls in range(10):
        idx = (labels == cls).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        n_test = round(test_fraction * len(idx))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    train, test = torch.cat(train_idx).sort().values, torch.cat(test_idx).sort().values
    return DigitSplit(images[train], labels[train], images[test], labels[test])


def load_backgrounds(names: tuple[str, ...] | list[str], short_side: int = 48) -> list[Tensor]:
    """scikit-image photographs, area-downscaled so that their short side is ``short_side`` pixels.

    Crops of these small versions, enlarged to the canvas size, are smooth backgrounds.

    Args:
        names: Photograph names (see `gbs_loss.msvit.demo.load_photo`).
        short_side: Short side in pixels after downscaling.

    Returns:
        One ``(3, h, w)`` float tensor in ``[0, 1]`` per photograph.

    Example:
        >>> from gbs_loss.msvit.tradeoff import load_backgrounds
        >>> [tuple(photo.shape) for photo in load_backgrounds(("camera", "grass"))]
        [(3, 48, 48), (3, 48, 48)]
    """
    from gbs_loss.msvit.demo import load_photo

    out = []
    for name in names:
        photo = load_photo(name)
        scale = short_side / min(photo.shape[1:])
        size = (max(short_side, round(photo.shape[1] * scale)), max(short_side, round(photo.shape[2] * scale)))
        out.append(F.interpolate(photo[None], size=size, mode="area")[0].clamp(0.0, 1.0))
    return out


class Canvases(NamedTuple):
    """A batch of digit canvases.

    Attributes:
        images: ``(B, 3, S, S)`` float32 in ``[0, 1]``.
        boxes: ``(B, 4)`` int64 pixel box ``(top, left, bottom, right)`` of each pasted digit (bottom and right
            exclusive); the digit's ink lies inside it.

    Example:
        >>> import torch
        >>> from gbs_loss.msvit.tradeoff import load_backgrounds, load_digit_split, make_canvases
        >>> digits = load_digit_split().test_images[:2]
        >>> canvases = make_canvases(digits, load_backgrounds(("camera",)), torch.Generator().manual_seed(0))
        >>> canvases.images.shape, canvases.boxes.shape
        (torch.Size([2, 3, 64, 64]), torch.Size([2, 4]))
    """

    images: Tensor
    boxes: Tensor


def make_canvases(
    digits: Tensor,
    backgrounds: list[Tensor],
    generator: torch.Generator,
    canvas_size: int = 64,
    digit_sizes: tuple[int, int] = (10, 14),
    crop_size: int = 12,
    contrast: float = 0.7,
    lattice: int = 1,
) -> Canvases:
    """Paste digits at random positions on smooth photographic backgrounds.

    For each digit: a random ``crop_size`` square of a random (downscaled) photograph, mirrored at random, is
    enlarged to ``canvas_size`` with bilinear interpolation and its contrast reduced to ``contrast`` around
    its mean (a smooth background); the 8x8 scan is enlarged (bilinear) to a random side in ``digit_sizes``
    and pasted at a uniformly random position, as the opacity of ink that is black on a light background and
    white on a dark one.

    Args:
        digits: ``(B, 8, 8)`` ink intensities in ``[0, 1]``.
        backgrounds: Photographs from `load_backgrounds`, each at least ``crop_size`` pixels square.
        generator: Source of all randomness (the same seed gives the same canvases).
        canvas_size: Side of the canvases in pixels.
        digit_sizes: Smallest and largest side of the pasted digits in pixels (inclusive).
        crop_size: Side, in pixels of the downscaled photograph, of the background crops; smaller is smoother.
        contrast: Factor applied to the background's deviations from its mean, in ``(0, 1]``.
        lattice: The digits' top-left corners are drawn uniformly among the multiples of ``lattice`` that keep
            the digit inside the canvas (1: any pixel).

    Returns:
        `Canvases` of ``B`` images.

    Example:
        >>> import torch
        >>> from gbs_loss.msvit.tradeoff import load_backgrounds, load_digit_split, make_canvases
        >>> digits = load_digit_split().test_images[:4]
        >>> backgrounds = load_backgrounds(("camera", "grass"))
        >>> gen = torch.Generator().manual_seed(0)
        >>> canvases = make_canvases(digits, backgrounds, gen, canvas_size=24, digit_sizes=(8, 8), lattice=4)
        >>> canvases.images.shape
        torch.Size([4, 3, 24, 24])
        >>> canvases.boxes  # (top, left, bottom, right): 8-pixel digits at multiples of 4
        tensor([[12,  8, 20, 16],
                [16,  8, 24, 16],
                [ 4, 16, 12, 24],
                [16,  0, 24,  8]])
    """
    if digits.dim() != 3 or digits.shape[1:] != (8, 8):
        raise ValueError(f"make_canvases: digits must have shape (B, 8, 8), got {tuple(digits.shape)}")
    low, high = digit_sizes
    if not 1 <= low <= high <= canvas_size:
        raise ValueError(
            f"make_canvases: digit_sizes must satisfy 1 <= low <= high <= {canvas_size}, got {digit_sizes}"
        )
    b = digits.shape[0]
    crops = []
    for _ in range(b):
        photo = backgrounds[int(torch.randint(len(backgrounds), (1,), generator=generator))]
        _, h, w = photo.shape
        top = int(torch.randint(h - crop_size + 1, (1,), generator=generator))
        left = int(torch.randint(w - crop_size + 1, (1,), generator=generator))
        crop = photo[:, top : top + crop_size, left : left + crop_size]
        if float(torch.rand((), generator=generator)) < 0.5:
            crop = crop.flip(-1)
        crops.append(crop)
    background = F.interpolate(torch.stack(crops), size=(canvas_size, canvas_size), mode="bilinear")
    mean = background.mean(dim=(1, 2, 3), keepdim=True)
    images = (mean + contrast * (background - mean)).clamp(0.0, 1.0)

    sizes = torch.randint(low, high + 1, (b,), generator=generator)
    slots = torch.div(canvas_size - sizes, lattice, rounding_mode="floor") + 1  # admissible corners per axis
    tops = (torch.rand(b, generator=generator) * slots).long() * lattice
    lefts = (torch.rand(b, generator=generator) * slots).long() * lattice
    for i in range(b):
        s, top, left = int(sizes[i]), int(tops[i]), int(lefts[i])
        alpha = F.interpolate(digits[i][None, None], size=(s, s), mode="bilinear", align_corners=False)[0]
        alpha = alpha.clamp(0.0, 1.0)
        patch = images[i, :, top : top + s, left : left + s]
        ink = 0.0 if float(patch.mean()) > 0.5 else 1.0
        images[i, :, top : top + s, left : left + s] = patch * (1.0 - alpha) + ink * alpha
    boxes = torch.stack([tops, lefts, tops + sizes, lefts + sizes], dim=1)
    return Canvases(images, boxes)


def bernoulli_mask(batch: int, regions: tuple[int, int], rate: float | Tensor, generator: torch.Generator) -> Tensor:
    """A random gate: every region of every image split with probability ``rate``, independently.

    Args:
        batch: Number of images.
        regions: The grid of coarse regions ``(Rh, Rw)``.
        rate: Split probability in ``[0, 1]``, a number or a ``(batch,)`` tensor (one rate per image).
        generator: Source of randomness.

    Returns:
        ``(batch, Rh, Rw)`` float32 mask of 0s and 1s.

    Example:
        >>> import torch
        >>> from gbs_loss.msvit.tradeoff import bernoulli_mask
        >>> bernoulli_mask(2, (3, 3), 0.5, torch.Generator().manual_seed(0))
        tensor([[[1., 0., 1.],
                 [1., 1., 0.],
                 [1., 0., 1.]],
        <BLANKLINE>
                [[0., 1., 1.],
                 [1., 1., 1.],
                 [0., 0., 0.]]])
    """
    rate = torch.as_tensor(rate, dtype=torch.float32)
    if bool(((rate < 0) | (rate > 1)).any()):
        raise ValueError(f"bernoulli_mask: rate must be in [0, 1], got {rate}")
    rate = rate.reshape(-1, 1, 1) if rate.dim() else rate
    return (torch.rand(batch, *regions, generator=generator) < rate).float()


Kind = Literal["all-fine", "all-coarse", "random", "msvit"]


@dataclass
class TradeoffConfig:
    """Settings of the experiment (the defaults are those of the documented run).

    Attributes:
        canvas_size: Side of the canvases in pixels.
        coarse_size: Side of a coarse patch (a gate region) in pixels.
        fine_size: Side of a fine patch in pixels.
        digit_size: Side of the pasted digits in pixels (8: the scans at their native resolution).
        lattice: The digits' corners lie on multiples of this many pixels (the fine patch size by default).
        embed_dim: Token width of the ViT.
        depth: Encoder layers.
        num_heads: Attention heads.
        mlp_ratio: Feed-forward width relative to ``embed_dim``.
        batch_size: Canvases per training step.
        pretrain_epochs: Epochs of the shared backbone, trained with random masks of random split rates.
        epochs: Fine-tuning epochs of every model from the shared backbone.
        lr: AdamW learning rate of the ViT (peak, one epoch of warm-up, cosine decay).
        gate_lr: AdamW learning rate of the gate and of the Generalized Batch-Shaping priors.
        weight_decay: AdamW weight decay of the ViT.
        targets: Split rates of MSViT's target and of the random gate.
        shaping_weight: Weight of the Generalized Batch-Shaping loss beside the cross-entropy.
        spread: Standard deviation of the hyperprior on the per-region split rates.
        temperature_weight: Weight of the L1 term on the priors' temperatures.
        gate_noise: Noise of the gate's logits in training (``"logistic"``: binary-concrete exploration).
        switch_gradient: Train MSViT with `switch_forward` (the straight-through gradient of switching a
            region between its coarse and fine tokens) instead of the tokenizer's own straight-through term.
        test_copies: Test canvases per held-out digit (different positions and backgrounds).
        seeds: Seeds of the runs (each seed: its own backbone, training canvases and initialisations).
        data_seed: Seed of the train/test split of the digits and of the test canvases.

    Example:
        >>> from gbs_loss.msvit.tradeoff import TradeoffConfig
        >>> cfg = TradeoffConfig(epochs=1, targets=(0.5,))
        >>> cfg.regions, cfg.ratio  # 3x3 regions of 8 pixels, each split into 2x2 fine patches of 4
        ((3, 3), 2)
    """

    canvas_size: int = 24
    coarse_size: int = 8
    fine_size: int = 4
    digit_size: int = 8
    lattice: int = 4
    embed_dim: int = 48
    depth: int = 3
    num_heads: int = 4
    mlp_ratio: float = 2.0
    batch_size: int = 32
    pretrain_epochs: int = 8
    epochs: int = 3
    lr: float = 2e-3
    gate_lr: float = 1e-2
    weight_decay: float = 0.05
    targets: tuple[float, ...] = (0.25, 0.5)
    shaping_weight: float = 1.0
    spread: float = 0.1
    temperature_weight: float = 0.1
    gate_noise: Literal["logistic", "none"] = "none"
    switch_gradient: bool = True
    test_copies: int = 2
    seeds: tuple[int, ...] = (0,)
    data_seed: int = 0

    @property
    def regions(self) -> tuple[int, int]:
        """The grid of coarse regions."""
        side = self.canvas_size // self.coarse_size
        return side, side

    @property
    def ratio(self) -> int:
        """Fine patches per coarse patch side."""
        return self.coarse_size // self.fine_size


@dataclass
class RunResult:
    """One trained and tested model.

    Attributes:
        kind: ``"all-fine"``, ``"all-coarse"``, ``"random"`` or ``"msvit"``.
        target: The split rate asked for (random gate: its rate; MSViT: the loss's target); 1 and 0 for the
            all-fine and all-coarse models.
        seed: The run's seed.
        accuracy: Held-out test accuracy in ``[0, 1]``.
        tokens: Mean tokens per test image (class token not counted).
        split_rate: Measured fraction of split regions on the test canvases.
        digit_split: Fraction of the regions under a digit that were split.
        mmacs: Mean multiply-accumulates per test image, in millions (encoder, embeddings and gate).
        seconds: Training time of this model (fine-tuning only).
        masks: Test masks ``(M, Rh, Rw)`` of the first test canvases (for the picture).

    Example:
        >>> import torch
        >>> from gbs_loss.msvit.tradeoff import RunResult
        >>> result = RunResult("msvit", 0.25, 0, 0.9, 13.5, 0.2, 0.5, 0.07, 1.0, torch.zeros(0, 3, 3))
        >>> result.label
        'MSViT 25%'
    """

    kind: Kind
    target: float
    seed: int
    accuracy: float
    tokens: float
    split_rate: float
    digit_split: float
    mmacs: float
    seconds: float
    masks: Tensor

    @property
    def label(self) -> str:
        """A short name for tables and plots."""
        return _label(self.kind, self.target)


def _normalise(images: Tensor) -> Tensor:
    return (images - _MEAN) / _STD


def _build_model(cfg: TradeoffConfig, gate: MixedScaleGate | None = None) -> MixedScaleViT:
    return MixedScaleViT(
        num_classes=10,
        image_size=cfg.canvas_size,
        coarse_size=cfg.coarse_size,
        fine_size=cfg.fine_size,
        in_channels=3,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        gate=gate,
    )


def _build_gate(cfg: TradeoffConfig, target: float) -> MixedScaleGate:
    """A gate whose fresh output bias splits about ``target`` of the regions (MSViT starts near the target)."""
    return MixedScaleGate(
        coarse_size=cfg.coarse_size,
        fine_size=cfg.fine_size,
        in_channels=3,
        gate_resolution=cfg.coarse_size // 2,
        hidden_dims=(32, 32),
        noise=cfg.gate_noise,
        init_rate=target,
    )


def _region_overlap(boxes: Tensor, cfg: TradeoffConfig) -> Tensor:
    """``(B, Rh, Rw)`` bool: the regions that a digit's box overlaps."""
    rh, rw = cfg.regions
    edges = torch.arange(rh) * cfg.coarse_size
    rows = (edges[None] < boxes[:, 2:3]) & (edges[None] + cfg.coarse_size > boxes[:, 0:1])
    cols = (edges[None] < boxes[:, 3:4]) & (edges[None] + cfg.coarse_size > boxes[:, 1:2])
    return rows[:, :, None] & cols[:, None, :]


def encoder_macs(tokens: Tensor, cfg: TradeoffConfig) -> Tensor:
    """Multiply-accumulates of the patch embedding and the encoder for images of ``tokens`` tokens each.

    Counts, per image, the linear patch embedding of its tokens, and per layer the QKV and output projections,
    the attention products (with the class token) and the feed-forward layers; norms, softmax and the head
    are left out, as in the usual ViT figures.

    Args:
        tokens: Token counts per image (class token not included), any shape.
        cfg: The model's settings.

    Returns:
        Float tensor of the same shape.

    Example:
        >>> import torch
        >>> from gbs_loss.msvit.tradeoff import TradeoffConfig, encoder_macs
        >>> encoder_macs(torch.tensor([9, 36]), TradeoffConfig())  # all-coarse and all-fine images
        tensor([ 602496., 2523168.], dtype=torch.float64)
    """
    t = tokens.double() + 1.0
    d, hidden = cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio)
    layer = 4 * d * d * t + 2 * t * t * d + 2 * d * hidden * t
    embed = (tokens.double()) * 3 * cfg.fine_size**2 * d
    return embed + cfg.depth * layer


class _TestSet(NamedTuple):
    images: Tensor
    labels: Tensor
    regions_with_digit: Tensor


def _schedule(
    optimizer: torch.optim.Optimizer, steps_per_epoch: int, total: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """One epoch of linear warm-up (at most a tenth of the run), then cosine decay to zero."""
    warm = max(1, min(steps_per_epoch, total // 10))

    def factor(step: int) -> float:
        return min(1.0, (step + 1) / warm) * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def switch_forward(model: MixedScaleViT, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""MSViT's forward pass in training with a straight-through gradient that compares the two choices.

    The forward values are exactly those of ``model(images)`` on the padded path. The gradient reaching the
    gate's decision $m_r$ of region $r$ differs from the tokenizer's own straight-through term,
    which scales the chosen tokens by $m_r$ or $1 - m_r$: for a kept region that estimates the
    effect of *removing* its coarse token, and an informative region then learns to stay coarse, whatever
    fine tokens would bring. Here every token $t$ of region $r$ gets
    $t + (m_r - \operatorname{sg}(m_r))(f_t - c_r)$, where $c_r$ is the region's coarse patch
    embedding and $f_t$ the fine patch embedding of the token (the mean of the region's fine patch
    embeddings for a coarse token): the first-order effect of *switching* the region between one coarse
    token and its fine tokens. (Uses the padded execution of `MixedScaleViT`: its
    ``gate``, ``tokenizer``, ``cls_token``, ``encoder`` and ``head``.)

    Args:
        model: The MSViT model (in training mode).
        images: Normalised images ``(B, C, H, W)``.

    Returns:
        ``(logits, soft, mask)``: the classifier's logits and the gate's soft values and hard mask.

    Example:
        >>> import torch
        >>> from gbs_loss.msvit import MixedScaleViT
        >>> from gbs_loss.msvit.tradeoff import switch_forward
        >>> model = MixedScaleViT(
        ...     num_classes=10, image_size=24, coarse_size=8, fine_size=4, embed_dim=16, depth=1, num_heads=2
        ... ).train()
        >>> logits, soft, mask = switch_forward(model, torch.randn(2, 3, 24, 24))
        >>> logits.shape, soft.shape, mask.shape
        (torch.Size([2, 10]), torch.Size([2, 3, 3]), torch.Size([2, 3, 3]))
        >>> logits.sum().backward()  # the gate's parameters get the switching gradient
    """
    gate = model.gate(images)
    mask = gate.mask
    tok = model.tokenizer
    tokens = mixed_scale_tokens(
        images,
        mask.detach(),
        tok.patch_embed,
        tok.pos_embed,
        coarse_size=tok.coarse_size,
        fine_size=tok.fine_size,
        embed_norm=tok.embed_norm,
    )
    ratio = tok.coarse_size // tok.fine_size
    fine = tok.patch_embed(images).permute(0, 2, 3, 1)  # (B, Gh, Gw, D)
    coarse = tok.patch_embed(F.avg_pool2d(images, ratio)).permute(0, 2, 3, 1)  # (B, Rh, Rw, D)
    fine_mean = F.avg_pool2d(fine.permute(0, 3, 1, 2), ratio).permute(0, 2, 3, 1)

    def up(x: Tensor) -> Tensor:
        return x.repeat_interleave(ratio, 1).repeat_interleave(ratio, 2)

    b, gh, gw, d = fine.shape
    split = up(mask.detach().bool()).unsqueeze(-1)
    delta = torch.where(split, fine - up(coarse), up(fine_mean - coarse)).reshape(b, gh * gw, d)
    ste = up(mask - mask.detach()).reshape(b, gh * gw, 1)
    index = tokens.positions.unsqueeze(-1)
    extra = torch.gather(delta * ste, 1, index.expand(-1, -1, d))
    x = tokens.tokens + extra.masked_fill(tokens.padding_mask.unsqueeze(-1), 0.0)
    x = torch.cat([model.cls_token.expand(b, -1, -1).to(x.dtype), x], dim=1)
    padding = torch.cat([tokens.padding_mask.new_zeros(b, 1), tokens.padding_mask], dim=1)
    x = model.encoder(x, src_key_padding_mask=padding)
    return model.head(x[:, 0]), gate.soft, mask


def _train_masks(
    kind: Kind, target: float, batch: int, cfg: TradeoffConfig, generator: torch.Generator
) -> Tensor | None:
    """Masks for a training batch; ``None`` lets the gate decide (MSViT)."""
    if kind == "all-fine":
        return torch.ones(batch, *cfg.regions)
    if kind == "all-coarse":
        return torch.zeros(batch, *cfg.regions)
    if kind == "random":
        return bernoulli_mask(batch, cfg.regions, target, generator)
    return None


def _progress_bar(total: int, enabled: bool, position: int = 0) -> tqdm | None:
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is part of the demo extra
        return None
    return tqdm(total=total, unit="step", leave=False, dynamic_ncols=True, position=position)


def _label(kind: str, target: float) -> str:
    if kind in ("random", "msvit"):
        return f"{'MSViT' if kind == 'msvit' else 'random gate'} {100 * target:.0f}%"
    return kind


def _fit(
    model: MixedScaleViT,
    kind: Kind | Literal["pretrain"],
    target: float,
    cfg: TradeoffConfig,
    digits: tuple[Tensor, Tensor],
    backgrounds: list[Tensor],
    seed: int,
    epochs: int,
    bar: tqdm | None = None,
) -> None:
    """Train ``model`` in place: cross-entropy, plus the Generalized Batch-Shaping loss for MSViT."""
    if epochs == 0:
        model.eval()
        return
    images, labels = digits
    n = len(labels)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = steps_per_epoch * epochs
    data_gen = torch.Generator().manual_seed(10_007 * seed + 1)  # the same canvases for every model of a seed
    mask_gen = torch.Generator().manual_seed(10_007 * seed + 2)
    backbone = [p for name, p in model.named_parameters() if not name.startswith("gate.")]
    groups = [{"params": backbone, "lr": cfg.lr, "weight_decay": cfg.weight_decay}]
    criterion = None
    if kind == "msvit":
        criterion = msvit_gate_loss(
            cfg.regions, target, cfg.spread, temperature_weight=cfg.temperature_weight, validate_args=False
        )
        extra = [*model.gate.parameters(), *criterion.parameters()]
        groups.append({"params": extra, "lr": cfg.gate_lr, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups)
    scheduler = _schedule(optimizer, steps_per_epoch, total)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=data_gen)
        for start in range(0, n, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            canvases = make_canvases(
                images[idx],
                backgrounds,
                data_gen,
                cfg.canvas_size,
                (cfg.digit_size, cfg.digit_size),
                lattice=cfg.lattice,
            )
            b = len(idx)
            mask: Tensor | None
            if kind == "pretrain":  # every image its own split rate, so that the backbone knows every mix
                mask = bernoulli_mask(b, cfg.regions, torch.rand(b, generator=mask_gen), mask_gen)
            else:
                mask = _train_masks(kind, target, b, cfg, mask_gen)
            soft: Tensor | None = None
            split: Tensor | None = None
            if kind == "msvit" and cfg.switch_gradient:
                logits, soft, split = switch_forward(model, _normalise(canvases.images))
            else:
                out = model(_normalise(canvases.images), mask)
                logits = out.logits
                if kind == "msvit":
                    soft, split = out.gate.soft, out.gate.mask
            loss = F.cross_entropy(logits, labels[idx])
            if criterion is not None:
                loss = loss + cfg.shaping_weight * criterion(soft)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]  # Tensor.backward is unannotated in torch
            optimizer.step()
            scheduler.step()
            if bar is not None:
                bar.update(1)
                if split is not None:  # MSViT
                    bar.set_postfix(split=f"{float(split.detach().mean()):.2f}", refresh=False)
    model.eval()


@torch.no_grad()
def _evaluate(
    model: MixedScaleViT, kind: Kind, target: float, cfg: TradeoffConfig, test: _TestSet, seed: int, keep: int
) -> tuple[float, float, float, float, float, Tensor]:
    """Accuracy, mean tokens, split rate, digit-region split rate, mean MMACs and the first ``keep`` masks."""
    model.eval()
    mask_gen = torch.Generator().manual_seed(10_007 * seed + 3)
    correct, tokens, masks = [], [], []
    for start in range(0, len(test.labels), 256):
        x = test.images[start : start + 256]
        mask = _train_masks(kind, target, len(x), cfg, mask_gen)
        out = model(_normalise(x), mask)
        mask = out.gate.mask if mask is None else mask
        counts = out.tokens.lengths.double()
        expected = cfg.regions[0] * cfg.regions[1] + (cfg.ratio**2 - 1) * mask.sum(dim=(1, 2)).double()
        if not torch.equal(counts, expected):  # pragma: no cover - a tokenizer bug
            raise RuntimeError("msvit-tradeoff: token counts do not match the masks")
        correct.append(out.logits.argmax(dim=1) == test.labels[start : start + 256])
        tokens.append(counts)
        masks.append(mask.bool())
    mask = torch.cat(masks)
    tokens_t = torch.cat(tokens)
    macs = encoder_macs(tokens_t, cfg)
    if kind == "msvit":
        macs = macs + model.gate.macs(cfg.canvas_size, cfg.canvas_size)
    under = test.regions_with_digit
    return (
        float(torch.cat(correct).float().mean()),
        float(tokens_t.mean()),
        float(mask.float().mean()),
        float(mask[under].float().mean()),
        float(macs.mean()) / 1e6,
        mask[:keep].float(),
    )


def _runs(cfg: TradeoffConfig) -> list[tuple[Kind, float]]:
    runs: list[tuple[Kind, float]] = [("all-coarse", 0.0)]
    runs += [("random", t) for t in cfg.targets]
    runs += [("msvit", t) for t in cfg.targets]
    runs.append(("all-fine", 1.0))
    return runs


def _test_set(cfg: TradeoffConfig, data: DigitSplit) -> _TestSet:
    """The held-out canvases: every test digit ``cfg.test_copies`` times, on the test photographs."""
    test_gen = torch.Generator().manual_seed(10_007 * cfg.data_seed + 4)
    digits = data.test_images.repeat(cfg.test_copies, 1, 1)
    canvases = make_canvases(
        digits,
        load_backgrounds(TEST_BACKGROUNDS),
        test_gen,
        cfg.canvas_size,
        (cfg.digit_size, cfg.digit_size),
        lattice=cfg.lattice,
    )
    return _TestSet(canvases.images, data.test_labels.repeat(cfg.test_copies), _region_overlap(canvases.boxes, cfg))


def _run_seed(cfg: TradeoffConfig, seed: int, progress: bool, position: int, keep: int) -> list[RunResult]:
    """Every model of one seed: the shared backbone, then each model fine-tuned from it and tested."""
    if position:  # a worker process of run_tradeoff(jobs > 1)
        torch.set_num_threads(1)
    data = load_digit_split(seed=cfg.data_seed)
    train_bg = load_backgrounds(TRAIN_BACKGROUNDS)
    test = _test_set(cfg, data)
    train = (data.train_images, data.train_labels)
    runs = _runs(cfg)
    steps = math.ceil(len(data.train_labels) / cfg.batch_size)
    bar = _progress_bar(steps * (cfg.pretrain_epochs + cfg.epochs * len(runs)), progress, position)
    results = []
    try:
        torch.manual_seed(seed)
        backbone = _build_model(cfg)
        if bar is not None:
            bar.set_description(f"seed {seed}: shared backbone")
        _fit(backbone, "pretrain", 0.5, cfg, train, train_bg, seed, cfg.pretrain_epochs, bar)
        state = {k: v for k, v in backbone.state_dict().items() if not k.startswith("gate.")}
        for kind, target in runs:
            torch.manual_seed(10_007 * seed + 5)
            model = _build_model(cfg, _build_gate(cfg, target) if kind == "msvit" else None)
            model.load_state_dict(state, strict=False)
            if bar is not None:
                bar.set_description(f"seed {seed}: {_label(kind, target)}")
            start = time.perf_counter()
            _fit(model, kind, target, cfg, train, train_bg, seed, cfg.epochs, bar)
            seconds = time.perf_counter() - start
            acc, tokens, rate, under, mmacs, masks = _evaluate(model, kind, target, cfg, test, seed, keep)
            results.append(RunResult(kind, target, seed, acc, tokens, rate, under, mmacs, seconds, masks))
    finally:
        if bar is not None:
            bar.close()
    return results


def run_tradeoff(
    cfg: TradeoffConfig, progress: bool = True, keep: int = 8, jobs: int = 1
) -> tuple[list[RunResult], Tensor, Tensor]:
    """Train and test every model of the comparison, for every seed.

    For each seed: one backbone is pre-trained with random masks whose split rate is drawn per image, then
    every model is fine-tuned from it for ``cfg.epochs`` epochs with its own masks (MSViT: a fresh gate and
    the Generalized Batch-Shaping loss, trained jointly with the backbone from its first fine-tuning step),
    and tested on the same held-out canvases.

    Args:
        cfg: The settings.
        progress: Show tqdm progress bars.
        keep: Number of test canvases whose masks are kept for the picture.
        jobs: Seeds run in parallel processes (one CPU thread each) when above 1.

    Returns:
        ``(results, test_images, test_labels)``: one `RunResult` per model and seed (seed by seed, in
        the order of the runs), and the first ``keep`` test canvases with their labels.

    Example:
        >>> from gbs_loss.msvit.tradeoff import TradeoffConfig, run_tradeoff
        >>> cfg = TradeoffConfig(embed_dim=16, depth=1, num_heads=2, pretrain_epochs=0, epochs=1, batch_size=256)
        >>> cfg.test_copies, cfg.targets = 1, (0.5,)
        >>> results, images, labels = run_tradeoff(cfg, progress=False, keep=2)  # a few seconds
        >>> [r.label for r in results], images.shape
        (['all-coarse', 'random gate 50%', 'MSViT 50%', 'all-fine'], torch.Size([2, 3, 24, 24]))
    """
    if jobs > 1 and len(cfg.seeds) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(jobs, len(cfg.seeds))) as pool:
            futures = [pool.submit(_run_seed, cfg, seed, progress, k + 1, keep) for k, seed in enumerate(cfg.seeds)]
            results = [r for f in futures for r in f.result()]
    else:
        results = [r for seed in cfg.seeds for r in _run_seed(cfg, seed, progress, 0, keep)]
    test = _test_set(cfg, load_digit_split(seed=cfg.data_seed))
    return results, test.images[:keep], test.labels[:keep]


def _grouped(results: list[RunResult]) -> list[list[RunResult]]:
    """Results grouped by model (kind and target), in the order of the runs."""
    groups: dict[tuple[str, float], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.kind, r.target), []).append(r)
    return list(groups.values())


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def format_table(results: list[RunResult], full_tokens: int) -> str:
    """The results as a Markdown table, one row per model (mean and spread over the seeds).

    Args:
        results: From `run_tradeoff`.
        full_tokens: Tokens of an all-fine image, for the relative column.

    Returns:
        The table as text.

    Example:
        >>> import torch
        >>> from gbs_loss.msvit.tradeoff import RunResult, format_table
        >>> result = RunResult("msvit", 0.25, 0, 0.9, 13.5, 0.2, 0.5, 0.07, 1.0, torch.zeros(0, 3, 3))
        >>> print(format_table([result], full_tokens=36))
        | model | seeds | tokens / image | of all-fine | split rate | digit regions split | MMAC / image | accuracy |
        |---|---|---:|---:|---:|---:|---:|---:|
        | MSViT 25% | 0 | 13.5 | 38% | 20.0% | 50% | 0.07 | 90.0% |
    """
    lines = [
        "| model | seeds | tokens / image | of all-fine | split rate | digit regions split | MMAC / image | accuracy |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for group in _grouped(results):
        first = group[0]
        acc, acc_std = _mean_std([r.accuracy for r in group])
        tokens = _mean_std([r.tokens for r in group])[0]
        rate = _mean_std([r.split_rate for r in group])[0]
        under = _mean_std([r.digit_split for r in group])[0]
        macs = _mean_std([r.mmacs for r in group])[0]
        spread = f" ± {100 * acc_std:.1f}" if len(group) > 1 else ""
        seeds = ",".join(str(r.seed) for r in group)
        lines.append(
            f"| {first.label} | {seeds} | {tokens:.1f} | {100 * tokens / full_tokens:.0f}% | {100 * rate:.1f}% | "
            f"{100 * under:.0f}% | {macs:.2f} | {100 * acc:.1f}%{spread} |"
        )
    return "\n".join(lines)


def _plot(results: list[RunResult], cfg: TradeoffConfig, path: Path, dpi: int) -> None:
    """Accuracy against tokens per image (the paper's accuracy/GMACs figure in miniature)."""
    _require("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = {}
    for group in _grouped(results):
        acc = _mean_std([r.accuracy for r in group])
        points[(group[0].kind, group[0].target)] = (_mean_std([r.tokens for r in group])[0], *acc, group[0])
    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    fixed = sorted(
        (v for (kind, _), v in points.items() if kind in ("all-fine", "all-coarse", "random")), key=lambda v: v[0]
    )
    msvit = sorted((v for (kind, _), v in points.items() if kind == "msvit"), key=lambda v: v[0])
    for series, color, marker, name in (
        (fixed, "#888888", "o", "fixed rates: all-coarse, random gate, all-fine"),
        (msvit, "#d62728", "*", "MSViT: gate trained by the classifier + GBaS"),
    ):
        if not series:
            continue
        xs, ys, es = [v[0] for v in series], [100 * v[1] for v in series], [100 * v[2] for v in series]
        ax.errorbar(
            xs,
            ys,
            yerr=es if any(es) else None,
            color=color,
            marker=marker,
            ms=11 if marker == "*" else 6,
            lw=1.5,
            capsize=3,
            label=name,
        )
        for x, y, v in zip(xs, ys, series, strict=True):
            ax.annotate(v[3].label, (x, y), textcoords="offset points", xytext=(6, -12), fontsize=8, color=color)
    ax.set_xlabel("tokens per image (mean over the test canvases)")
    ax.set_ylabel("held-out accuracy (%)")
    seeds = ", ".join(str(s) for s in cfg.seeds)
    ax.set_title(
        f"Digits on {cfg.canvas_size}x{cfg.canvas_size} photo canvases, {cfg.coarse_size}/{cfg.fine_size}-px "
        f"tokens (seeds {seeds})",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, facecolor="white")
    plt.close(fig)


def _draw_gates(
    results: list[RunResult], images: Tensor, labels: Tensor, cfg: TradeoffConfig, path: Path, dpi: int
) -> None:
    """Test canvases with the regions that each MSViT model split (first seed)."""
    _require("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    rows = [r for r in results if r.kind == "msvit" and r.seed == results[0].seed]
    count = min(len(images), 8)
    if not rows or not count:
        return
    fig, axes = plt.subplots(
        len(rows), count, figsize=(1.45 * count, 1.75 * len(rows) + 0.3), squeeze=False, layout="constrained"
    )
    sc, sf = cfg.coarse_size, cfg.fine_size
    for row, result in zip(axes, rows, strict=True):
        for j, ax in enumerate(row[:count]):
            ax.imshow(
                images[j].permute(1, 2, 0).numpy(),
                interpolation="nearest",
                extent=(0, cfg.canvas_size, cfg.canvas_size, 0),
            )
            mask = result.masks[j]
            for i0, j0 in mask.nonzero().tolist():
                top, left = i0 * sc, j0 * sc
                ax.add_patch(Rectangle((left, top), sc, sc, fill=False, edgecolor="#00d5ff", lw=1.6))
                for k in range(1, cfg.ratio):
                    ax.plot([left + k * sf] * 2, [top, top + sc], color="#00d5ff", lw=0.6)
                    ax.plot([left, left + sc], [top + k * sf] * 2, color="#00d5ff", lw=0.6)
            tokens = mask.numel() + (cfg.ratio**2 - 1) * int(mask.sum())
            ax.set_title(f"'{int(labels[j])}': {tokens} tok.", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(f"{result.label}\n{100 * result.accuracy:.1f}% acc.", fontsize=8)
    fig.suptitle("Where the trained MSViT gates split (cyan: fine tokens) on held-out test canvases", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, facecolor="white")
    plt.close(fig)


_DOCS = Path(__file__).resolve().parents[2] / "docs" / "img"


def _quick(cfg: TradeoffConfig) -> TradeoffConfig:
    """A seconds-long smoke version: a tiny model, a few steps, one copy of the test digits."""
    cfg.embed_dim, cfg.depth, cfg.num_heads = 16, 1, 2
    cfg.pretrain_epochs, cfg.epochs, cfg.batch_size, cfg.test_copies = 0, 1, 256, 1
    return cfg


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gbs_loss msvit-tradeoff",
        description="MSViT's accuracy against tokens on scikit-learn digits pasted on scikit-image photographs: "
        "all-fine, all-coarse, a random gate and MSViT (gate trained by the classifier's loss, straight-through, "
        "plus Generalized Batch-Shaping) at matched split rates; prints a table and saves two PNGs.",
    )
    d = TradeoffConfig()
    parser.add_argument("--seeds", type=int, nargs="+", default=list(d.seeds), help="seeds (default: 0)")
    parser.add_argument(
        "--targets", type=float, nargs="+", default=list(d.targets), help="split rates (default: 0.25 0.5)"
    )
    parser.add_argument(
        "--pretrain-epochs", type=int, default=d.pretrain_epochs, help="epochs of the shared backbone (default: 8)"
    )
    parser.add_argument("--epochs", type=int, default=d.epochs, help="fine-tuning epochs per model (default: 3)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="canvases per step (default: 32)")
    parser.add_argument("--lr", type=float, default=d.lr, help="ViT learning rate (default: 2e-3)")
    parser.add_argument("--gate-lr", type=float, default=d.gate_lr, help="gate learning rate (default: 1e-2)")
    parser.add_argument(
        "--shaping-weight", type=float, default=d.shaping_weight, help="weight of the GBaS loss (default: 1)"
    )
    parser.add_argument("--gate-noise", choices=("logistic", "none"), default=d.gate_noise, help="(default: none)")
    parser.add_argument(
        "--tokenizer-gradient",
        action="store_true",
        help="train MSViT with the tokenizer's own straight-through term instead of the switch gradient",
    )
    parser.add_argument("--test-copies", type=int, default=d.test_copies, help="test canvases per digit (default: 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument("--jobs", type=int, default=1, help="seeds trained in parallel processes (default: 1)")
    parser.add_argument("--json", type=Path, default=None, help="also save the results as JSON")
    parser.add_argument("--dpi", type=int, default=110, help="resolution of the PNGs (default: 110)")
    parser.add_argument(
        "--out", type=Path, default=Path("outputs/msvit_tradeoff.png"), help="the plot (default: outputs/...)"
    )
    parser.add_argument(
        "--gate-out",
        type=Path,
        default=None,
        help="the picture of the gates (default: next to --out, with the suffix _gate)",
    )
    parser.add_argument("--docs", action="store_true", help="also save both PNGs in docs/img/")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run (tiny model, few steps)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the comparison, print the table and save the plots; return the exit status.

    Args:
        argv: Command-line options (``python -m gbs_loss msvit-tradeoff --help``); ``None`` reads ``sys.argv``.

    Returns:
        0 on success.

    Example:
        >>> from gbs_loss.msvit.tradeoff import main
        >>> main(["--quick", "--quiet", "--out", "outputs/msvit_tradeoff.png"])  # doctest: +SKIP
        MSViT accuracy against tokens: ...
        0
    """
    parser = _parser()
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size", "test_copies", "threads", "jobs", "dpi"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.pretrain_epochs < 0:
        parser.error(f"--pretrain-epochs must be >= 0, got {args.pretrain_epochs}")
    if not all(0 < t < 1 for t in args.targets):
        parser.error(f"--targets must be in (0, 1), got {args.targets}")
    if args.batch_size < 2:
        parser.error("--batch-size must be at least 2 (Batch-Shaping needs a batch)")
    torch.set_num_threads(args.threads)
    cfg = TradeoffConfig(
        pretrain_epochs=args.pretrain_epochs,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        gate_lr=args.gate_lr,
        targets=tuple(args.targets),
        shaping_weight=args.shaping_weight,
        gate_noise=args.gate_noise,
        switch_gradient=not args.tokenizer_gradient,
        test_copies=args.test_copies,
        seeds=tuple(args.seeds),
    )
    if args.quick:
        cfg = _quick(cfg)
    start = time.perf_counter()
    results, images, labels = run_tradeoff(cfg, progress=not args.quiet, jobs=args.jobs)
    seconds = time.perf_counter() - start
    full = cfg.regions[0] * cfg.regions[1] * cfg.ratio**2
    print(
        f"MSViT accuracy against tokens: scikit-learn digits ({cfg.digit_size} px) on {cfg.canvas_size}x"
        f"{cfg.canvas_size} scikit-image backgrounds, {cfg.regions[0]}x{cfg.regions[1]} regions of "
        f"{cfg.coarse_size} px, {cfg.fine_size}-px fine tokens ({cfg.regions[0] * cfg.regions[1]} coarse / {full} "
        f"fine tokens); ViT dim {cfg.embed_dim}, depth {cfg.depth}; {cfg.pretrain_epochs} shared + {cfg.epochs} "
        f"epochs per model; seeds {', '.join(map(str, cfg.seeds))}; {seconds:.0f} s"
    )
    print(format_table(results, full))
    gate_out = args.gate_out or args.out.with_name(args.out.stem + "_gate" + args.out.suffix)
    pairs = [(args.out, gate_out)] + (
        [(_DOCS / "msvit_tradeoff.png", _DOCS / "msvit_tradeoff_gate.png")] if args.docs else []
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        rows = [{k: v for k, v in vars(r).items() if k != "masks"} for r in results]
        args.json.write_text(json.dumps({"config": vars(cfg), "seconds": seconds, "results": rows}, indent=1))
    for plot_path, gate_path in pairs:
        _plot(results, cfg, plot_path, args.dpi)
        _draw_gates(results, images, labels, cfg, gate_path, args.dpi)
        print(f"saved {plot_path} and {gate_path}")
    return 0
