"""Evaluate a branch of a piecewise function only where its mask holds, with or without host synchronisation."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["piecewise"]


def piecewise(
    mask: Tensor, fn: Callable[..., Tensor], args: tuple[Tensor, ...], safe: tuple[float, ...], compact: bool
) -> Tensor:
    """``fn(*args)`` where ``mask`` holds, zero elsewhere.

    With ``compact`` (CPU) ``fn`` runs on the masked subset alone (``nonzero`` synchronises, which costs nothing
    on the CPU); otherwise on full tensors whose unmasked entries are replaced by the harmless values ``safe``, so
    that neither the value nor the gradient of the branch not taken can be inf or NaN, with no host
    synchronisation.

    Args:
        mask: Boolean tensor, the shape of every argument.
        fn: Elementwise function of the arguments.
        args: Tensors of one shape.
        safe: One harmless value per argument, used where ``mask`` is false (masked mode).
        compact: Whether to gather the masked subset (CPU) or evaluate everywhere (accelerators).

    Returns:
        A tensor of the shape of the arguments.

    Example:
        >>> import torch
        >>> from gbs_loss.special._masked import piecewise
        >>> x = torch.tensor([-1.0, 4.0, 9.0])
        >>> piecewise(x > 0, torch.sqrt, (x,), (1.0,), compact=False)
        tensor([0., 2., 3.])
    """
    if compact:
        out = torch.zeros_like(args[0])
        idx = mask.reshape(-1).nonzero().reshape(-1)  # one nonzero for all the arguments
        if idx.numel() == mask.numel():
            return fn(*args)
        if idx.numel() > 0:
            sub = fn(*(t.reshape(-1).index_select(0, idx) for t in args))
            out.reshape(-1).index_copy_(0, idx, sub)
        return out
    value = fn(*(torch.where(mask, t, v) for t, v in zip(args, safe, strict=True)))
    return torch.where(mask, value, torch.zeros_like(value))
