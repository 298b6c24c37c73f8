"""Argument checks shared by the MSViT gate, tokenizer and models (shapes only: no host synchronisation)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["check_images", "check_mask", "check_patch_sizes", "check_positive_int", "resolve_budget"]


def check_positive_int(owner: str, name: str, value: Any) -> int:
    """Return ``value`` if it is a positive ``int`` (not a bool); raise ``TypeError``/``ValueError`` otherwise.

    Example:
        >>> check_positive_int("MixedScaleGate", "fine_size", 16)
        16
        >>> check_positive_int("MixedScaleGate", "fine_size", True)
        Traceback (most recent call last):
            ...
        TypeError: MixedScaleGate: fine_size must be a positive int, got bool True
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name} must be a positive int, got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value}")
    return value


def check_patch_sizes(owner: str, coarse_size: Any, fine_size: Any) -> int:
    """Check that ``coarse_size`` is a multiple of ``fine_size`` larger than it; return their ratio.

    Example:
        >>> check_patch_sizes("MixedScaleGate", 32, 16)
        2
        >>> check_patch_sizes("MixedScaleGate", 24, 16)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        ValueError: MixedScaleGate: coarse_size must be a multiple of fine_size ... got coarse_size=24 and fine_size=16
    """
    coarse = check_positive_int(owner, "coarse_size", coarse_size)
    fine = check_positive_int(owner, "fine_size", fine_size)
    if coarse <= fine or coarse % fine != 0:
        raise ValueError(
            f"{owner}: coarse_size must be a multiple of fine_size larger than it (for example "
            f"32 and 16), got coarse_size={coarse_size} and fine_size={fine_size}"
        )
    return coarse // fine


def check_images(owner: str, images: Any, in_channels: int | None, coarse_size: int) -> tuple[int, int]:
    """Check a batch of images ``(B, C, H, W)``; return the grid of coarse regions ``(H // Sc, W // Sc)``.

    Example:
        >>> check_images("MixedScaleGate", torch.zeros(2, 3, 64, 96), 3, 32)
        (2, 3)
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"{owner}: images must be a torch.Tensor of shape (B, C, H, W), got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"{owner}: images must be a floating-point tensor, got dtype {images.dtype}")
    if images.dim() != 4:
        raise ValueError(f"{owner}: images must have shape (B, C, H, W), got shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    if in_channels is not None and c != in_channels:
        raise ValueError(
            f"{owner}: images must have {in_channels} channels (dim 1 of (B, C, H, W)), got "
            f"{c} (shape {tuple(images.shape)})"
        )
    if b == 0:
        raise ValueError(f"{owner}: images must hold at least one image, got shape {tuple(images.shape)}")
    if h == 0 or w == 0 or h % coarse_size != 0 or w % coarse_size != 0:
        raise ValueError(
            f"{owner}: image height and width must be positive multiples of coarse_size="
            f"{coarse_size}, got {h}x{w} (shape {tuple(images.shape)})"
        )
    return h // coarse_size, w // coarse_size


def check_mask(owner: str, mask: Any, batch: int, regions: tuple[int, int]) -> None:
    """Check a split mask of shape ``(B, H // Sc, W // Sc)`` (bool or floating point).

    Example:
        >>> check_mask("mixed_scale_tokens", torch.zeros(2, 2, 3), 2, (2, 3))
        >>> check_mask("mixed_scale_tokens", torch.tensor([[[float("nan")]]]), 1, (1, 1))
        Traceback (most recent call last):
            ...
        ValueError: mixed_scale_tokens: mask must not hold NaN (1 = split, 0 = keep), got 1 NaN
    """
    if not isinstance(mask, Tensor):
        raise TypeError(f"{owner}: mask must be a torch.Tensor, got {type(mask).__name__}")
    if not (mask.dtype.is_floating_point or mask.dtype == torch.bool):
        raise TypeError(
            f"{owner}: mask must be a bool or floating-point tensor (1 = split into fine "
            f"patches), got dtype {mask.dtype}"
        )
    expected = (batch, *regions)
    if tuple(mask.shape) != expected:
        raise ValueError(
            f"{owner}: mask must have shape (B, H / coarse_size, W / coarse_size) = {expected}, got {tuple(mask.shape)}"
        )
    # A NaN would read as "keep" (NaN > 0.5 is False). Checked where it is free: on the CPU, outside compilation
    # (on an accelerator it would cost a host synchronisation).
    if (
        mask.dtype.is_floating_point
        and mask.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and bool(torch.isnan(mask).any())
    ):
        raise ValueError(
            f"{owner}: mask must not hold NaN (1 = split, 0 = keep), got {int(torch.isnan(mask).sum())} NaN"
        )


def resolve_budget(owner: str, budget: Any, regions: int | None) -> int | None:
    """Number of regions to split per image for a ``budget`` (an int count or a float fraction in ``[0, 1]``).

    With ``regions=None`` only the type and sign are checked (a constructor that does not know the image size).

    Example:
        >>> resolve_budget("MixedScaleGate", 0.25, 16), resolve_budget("MixedScaleGate", 3, 16)
        (4, 3)
        >>> resolve_budget("MixedScaleGate", 3, None), resolve_budget("MixedScaleGate", None, 16)
        (3, None)
    """
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise TypeError(
            f"{owner}: budget must be an int (regions to split per image), a float in [0, 1] (fraction of "
            f"regions) or None, got {type(budget).__name__} {budget!r}"
        )
    if isinstance(budget, float):
        if not 0.0 <= budget <= 1.0:
            raise ValueError(f"{owner}: a float budget is a fraction of regions in [0, 1], got {budget!r}")
        return None if regions is None else int(round(budget * regions))
    if budget < 0 or (regions is not None and budget > regions):
        if regions is None:
            raise ValueError(f"{owner}: budget must be a non-negative int, got {budget}")
        raise ValueError(f"{owner}: budget must be in [0, {regions}] (the regions of an image), got {budget}")
    return budget
