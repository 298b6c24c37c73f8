"""Shape helpers used on every call of the losses (kept out of the hot path's way)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["broadcast_shapes"]


def broadcast_shapes(*shapes: Sequence[int]) -> torch.Size:
    """The broadcast shape of ``shapes``, as `torch.broadcast_shapes` (which raises ``RuntimeError``).

    A plain-Python version: `torch.broadcast_shapes` goes through the reference implementation in
    ``torch._refs`` and costs tens of microseconds per call, which adds up when a loss checks shapes a few
    times per step.

    Example:
        >>> broadcast_shapes((3, 1), (4,), ())
        torch.Size([3, 4])
        >>> broadcast_shapes((2,), (3,))
        Traceback (most recent call last):
            ...
        RuntimeError: Shape mismatch: objects cannot be broadcast to a single shape, got [(2,), (3,)]
    """
    ndim = 0
    for shape in shapes:
        ndim = len(shape) if len(shape) > ndim else ndim
    out = [1] * ndim
    for shape in shapes:
        offset = ndim - len(shape)
        for i, size in enumerate(shape):
            j = offset + i
            if size == 1 or size == out[j]:
                continue
            if out[j] == 1:
                out[j] = size
            else:
                raise RuntimeError(
                    f"Shape mismatch: objects cannot be broadcast to a single shape, got {[tuple(s) for s in shapes]}"
                )
    return torch.Size(out)
