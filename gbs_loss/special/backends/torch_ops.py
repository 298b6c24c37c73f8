"""The "torch" backend: the reference computation in torch operations, on any device that supports float64.

It is the readable implementation, the fallback where neither the native kernel nor Triton is available, and the
backend for devices that have neither (MPS is excluded by its lack of float64; XPU without Triton, ...). On CPU
converged elements leave the working set early (compact mode); on other devices the continued fraction runs in
masked chunks with one host synchronisation per chunk (the Triton backend never synchronises).

The private switch `_MODE` (``"auto"``, ``"compact"`` or ``"masked"``; see `_forced_mode`) lets the
tests run the masked mode on CPU, so that the accelerator path is executed and checked against the oracle.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from gbs_loss.special._kernel import betainc_kernel

__all__ = ["available", "betainc_block", "betainc_with_grads"]

_MODE = "auto"
_MODES = ("auto", "compact", "masked")


def available() -> bool:
    """Always true: the reference needs nothing beyond PyTorch.

    Example:
        >>> from gbs_loss.special.backends import torch_ops
        >>> torch_ops.available()
        True
    """
    return True


def betainc_with_grads(a: Tensor, b: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(I, dI/da, dI/db, dI/dx)`` under the backend contract (see `gbs_loss.special.backends`).

    Args:
        a, b: Contiguous tensors of shape ``(m,)``.
        x: Contiguous tensor of shape ``(n,)`` with ``n % m == 0`` on the same device; element ``i``
            uses ``a[i % m]`` and ``b[i % m]``. All three float64, or all three float32 (converted to float64
            here; the results rounded once, the derivatives saturated at the largest finite float32).

    Returns:
        Four contiguous tensors of shape ``(n,)`` in the inputs' dtype.

    Example:
        >>> import torch
        >>> from gbs_loss.special.backends import torch_ops
        >>> a = torch.tensor([2.0], dtype=torch.float64)
        >>> b = torch.tensor([3.0], dtype=torch.float64)
        >>> x = torch.tensor([0.25, 0.5], dtype=torch.float64)
        >>> value, d_a, d_b, d_x = torch_ops.betainc_with_grads(a, b, x)
        >>> value, d_x
        (tensor([0.2617, 0.6875], dtype=torch.float64), tensor([1.6875, 1.5000], dtype=torch.float64))
    """
    if x.dtype == torch.float64:
        return betainc_kernel(a, b, x, _compact(x))
    value, d_a, d_b, d_x = betainc_block(a, b, x).unbind(0)
    return value, d_a, d_b, d_x


def _compact(x: Tensor) -> bool:
    return x.device.type == "cpu" if _MODE == "auto" else _MODE == "compact"


def betainc_block(a: Tensor, b: Tensor, x: Tensor) -> Tensor:
    """`betainc_with_grads` stacked into one ``(4, n)`` tensor (the operator layer's form).

    Example:
        >>> import torch
        >>> from gbs_loss.special.backends import torch_ops
        >>> one = torch.ones(1, dtype=torch.float64)
        >>> torch_ops.betainc_block(2 * one, 3 * one, one / 2)[:, 0]
        tensor([ 0.6875, -0.1953,  0.1541,  1.5000], dtype=torch.float64)
    """
    if x.dtype == torch.float64:
        return torch.stack(betainc_kernel(a, b, x, _compact(x)))
    f64 = torch.float64
    block = torch.stack(betainc_kernel(a.to(f64), b.to(f64), x.to(f64), _compact(x)))
    big = torch.finfo(x.dtype).max
    block[1:].clamp_(-big, big)  # the derivatives saturate at the narrower dtype's largest value
    return block.to(x.dtype)


@contextmanager
def _forced_mode(mode: str) -> Iterator[None]:
    """Run the torch backend in ``mode`` (``"compact"`` or ``"masked"``) on every device, within the block."""
    global _MODE
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    previous, _MODE = _MODE, mode
    try:
        yield
    finally:
        _MODE = previous
