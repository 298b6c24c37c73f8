"""Argument checks shared by the MSViT gate, tokenizer and models (shapes only: no host synchronisation)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["check_images", "check_mask", "check_patch_sizes", "check_positive_int"]


def check_positive_int(owner: str, name: str, value: Any) -> int:
    """Return ``value`` if it is a positive ``int`` (not a bool); raise ``TypeError``/``ValueError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name} must be a positive int, got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value}")
    return value


def check_patch_sizes(owner: str, coarse_size: Any, fine_size: Any) -> int:
    """Check that ``coarse_size`` is a multiple of ``fine_size`` larger than it; return their ratio."""
    check_positive_int(owner, "coarse_size", coarse_size)
    check_positive_int(owner, "fine_size", fine_size)
    if coarse_size <= fine_size or coarse_size % fine_size != 0:
        raise ValueError(
            f"{owner}: coarse_size must be a multiple of fine_size larger than it (for example "
            f"32 and 16), got coarse_size={coarse_size} and fine_size={fine_size}"
        )
    return coarse_size // fine_size


def check_images(owner: str, images: Any, in_channels: int | None, coarse_size: int) -> tuple[int, int]:
    """Check a batch of images ``(B, C, H, W)``; return the grid of coarse regions ``(H // Sc, W // Sc)``."""
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
    """Check a split mask of shape ``(B, H // Sc, W // Sc)`` (bool or floating point)."""
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
