r"""Dtype rules shared by the special functions, the priors and the losses.

Three rules, written once:

* `LOW_PRECISION` -- the dtypes (float16, bfloat16) that are never computed in: their values are
  promoted to float32 (or better) first, and the results and gradients cast back.
* `compute_dtype` -- the dtype a computation on some points and parameters runs in: promoted like
  torch's own type promotion, in which 0-dimensional tensors (Python numbers) do not take part, and never
  below float32.
* `saturate` and `saturating_cast` -- a cast to a narrower dtype that *saturates* at the dtype's
  largest finite value instead of overflowing to infinity, for values and (through autograd) for gradients. A
  steep density of 1e6 is a perfectly good float32 gradient, but infinite in float16; training treats an
  infinite gradient as a failed step, a saturated one as a large step. NaN stays NaN.

Example:
    >>> import torch
    >>> from gbs_loss._dtypes import compute_dtype, saturate
    >>> compute_dtype(torch.zeros(3, dtype=torch.float16), torch.tensor(0.5, dtype=torch.float64))
    torch.float32
    >>> saturate(torch.tensor([1e6, -float("inf"), float("nan")]), torch.float16)
    tensor([ 65504., -65504.,     nan], dtype=torch.float16)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["LOW_PRECISION", "compute_dtype", "float_dtype", "saturate", "saturate_", "saturating_cast"]

#: Floating dtypes too narrow to compute in: their values are promoted to float32 first.
LOW_PRECISION: frozenset[torch.dtype] = frozenset({torch.float16, torch.bfloat16})


def float_dtype(*tensors: Tensor, ignore_scalars: bool = False) -> torch.dtype:
    """The promoted dtype of the floating-point tensors among ``tensors``; the default dtype if there are none.

    Args:
        *tensors: Tensors of any dtype; integer and boolean ones are ignored.
        ignore_scalars: Ignore 0-dimensional tensors too (they stand for Python numbers, which do not take
            part in torch's type promotion) unless every floating tensor is 0-dimensional.

    Returns:
        A floating dtype (low precision included: see `compute_dtype` for the computation dtype).

    Example:
        >>> float_dtype(torch.zeros(2), torch.zeros(2, dtype=torch.float64))
        torch.float64
        >>> float_dtype(torch.zeros(2), torch.tensor(1.0, dtype=torch.float64), ignore_scalars=True)
        torch.float32
    """
    floats = [t for t in tensors if t.is_floating_point()]
    if ignore_scalars and any(t.dim() > 0 for t in floats):
        floats = [t for t in floats if t.dim() > 0]
    if not floats:
        return torch.get_default_dtype()
    dtype = floats[0].dtype
    for t in floats[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def compute_dtype(x: Tensor, *params: Tensor) -> torch.dtype:
    """The dtype of a computation on points ``x`` and ``params``: torch's promotion, never below float32.

    The points' dtype (the default dtype if they are not floating) is promoted with the dtype of every
    parameter that has at least one dimension; 0-dimensional parameters (Python numbers, kept exact in float64)
    do not promote, as in torch's own type promotion. float16 and bfloat16 become float32.

    Args:
        x: The points.
        *params: The parameters.

    Returns:
        float32 or a wider floating dtype.

    Example:
        >>> compute_dtype(torch.zeros(3, dtype=torch.bfloat16))
        torch.float32
        >>> compute_dtype(torch.zeros(3), torch.ones(3, dtype=torch.float64))
        torch.float64
    """
    dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    for p in params:
        if p.dim() > 0:
            dtype = torch.promote_types(dtype, p.dtype)
    return torch.float32 if dtype in LOW_PRECISION else dtype


def saturate(t: Tensor, dtype: torch.dtype, *, keep_same_dtype: bool = False) -> Tensor:
    """Cast ``t`` to ``dtype``, mapping values beyond the dtype's range (and infinities) to its largest finite value.

    NaN stays NaN. Also applied when ``t`` already has ``dtype`` (infinities then become finite), unless
    ``keep_same_dtype``.

    Args:
        t: A floating tensor.
        dtype: A floating dtype.
        keep_same_dtype: Return ``t`` itself, infinities included, when it already has ``dtype``: only a
            narrowing cast saturates. For gradients computed in float64 whose infinite limits (a density that
            diverges at an end) are part of the contract for float64 arguments.

    Returns:
        ``t`` clamped to ``[-finfo(dtype).max, finfo(dtype).max]`` in ``dtype``.

    Example:
        >>> saturate(torch.tensor([7e4, 1.0]), torch.float16)
        tensor([6.5504e+04, 1.0000e+00], dtype=torch.float16)
        >>> inf = torch.tensor([float("inf")], dtype=torch.float64)
        >>> saturate(inf, torch.float64), saturate(inf, torch.float64, keep_same_dtype=True)
        (tensor([1.7977e+308], dtype=torch.float64), tensor([inf], dtype=torch.float64))
    """
    if keep_same_dtype and t.dtype == dtype:
        return t
    big = torch.finfo(dtype).max
    return t.clamp(-big, big).to(dtype)


def saturate_(t: Tensor) -> Tensor:
    """``t`` clamped in place to its own dtype's finite range when narrower than float64; float64 as it is.

    For a gradient this backward has just computed (its own tensor), multiplied from saturated derivatives: the
    product may overflow the narrower dtype, while float64 keeps its infinite limits (see `saturate`).

    Args:
        t: A floating tensor that may be overwritten.

    Returns:
        ``t`` itself.

    Example:
        >>> saturate_(torch.tensor([float("-inf"), 1.0]))
        tensor([-3.4028e+38,  1.0000e+00])
        >>> saturate_(torch.tensor([float("inf")], dtype=torch.float64))
        tensor([inf], dtype=torch.float64)
    """
    if t.dtype != torch.float64:
        big = torch.finfo(t.dtype).max
        t.clamp_(-big, big)
    return t


class _SaturatingCast(torch.autograd.Function):
    """``x.to(dtype)`` whose backward saturates the gradient at the largest finite value of ``x``'s dtype."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, dtype: torch.dtype) -> Tensor:
        ctx.dtype = x.dtype
        return x.to(dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return saturate(grad, ctx.dtype), None


def saturating_cast(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x.to(dtype)`` for autograd: the gradient cast back to ``x.dtype`` saturates instead of overflowing.

    A float16 sample cast to float32 for a CDF whose density is 1e5 there receives a gradient of 1e5, beyond
    float16's 65504: it becomes 65504 instead of infinity. Without a change of dtype, or for a tensor that does
    not require a gradient, this is ``x.to(dtype)`` (no autograd node).

    Args:
        x: A floating tensor.
        dtype: The dtype to compute in.

    Returns:
        ``x`` in ``dtype``.

    Example:
        >>> x = torch.tensor([0.5], dtype=torch.float16, requires_grad=True)
        >>> (saturating_cast(x, torch.float32) * 1e6).sum().backward()
        >>> x.grad
        tensor([65504.], dtype=torch.float16)
    """
    if x.dtype == dtype:
        return x
    if not (x.requires_grad and torch.is_grad_enabled()):
        return x.to(dtype)
    out: Tensor = _SaturatingCast.apply(x, dtype)  # type: ignore[no-untyped-call]
    return out
