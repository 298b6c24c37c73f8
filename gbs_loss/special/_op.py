r"""The operator layer of `gbs_loss.betainc`: the custom op, the autograd function and its backward.

* ``gbs_loss::betainc_with_grads`` is a `torch.library` custom operator (returning the four results as one
  ``(4, n)`` tensor) with a fake-tensor implementation:
  under `torch.compile` the torch and native backends are one opaque node (no graph break). Its body asks
  `gbs_loss.special.backends` for the strategy.
* The Triton backend is called above the opaque operator, directly from the autograd function, so that
  `torch.compile` sees its ``torch.library.triton_op`` and the kernel inside it. In eager mode every
  backend is called directly (the dispatcher of a custom op costs more than the whole computation at small
  sizes).
* `BetaincFunction` saves the three partial derivatives that the forward computes anyway; its backward is
  one multiplication per input that needs a gradient, then a sum to the input's shape where the input was
  broadcast. Second derivatives are not implemented: the first derivatives are marked (`first_derivatives_only`,
  shared with `gbs_loss.special.inverse`) so that differentiating them raises a clear ``RuntimeError`` instead of
  silently returning zeros.
"""

from __future__ import annotations

import math
from typing import NoReturn

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx

from gbs_loss._dtypes import saturate, saturate_
from gbs_loss.special import backends

__all__ = [
    "BetaincFunction",
    "Plan",
    "PlainBetaincFunction",
    "betainc_block",
    "betainc_with_grads_op",
    "evaluate",
    "first_derivatives_only",
]

F64 = torch.float64
F32 = torch.float32

Plan = tuple[torch.Size, torch.Size, bool, torch.dtype]
"""``(out_shape, ab_shape, shared, dtype)``: see `BetaincFunction`."""


@torch.library.custom_op("gbs_loss::betainc_with_grads", mutates_args=())
def betainc_with_grads_op(a: Tensor, b: Tensor, x: Tensor) -> Tensor:
    """Opaque operator: ``(I, dI/da, dI/db, dI/dx)`` stacked into one ``(4, n)`` tensor of the inputs' dtype.

    Arguments as in the backend contract (`.backends`); the torch or native backend is chosen by
    `.backends.get_block`.

    Example:
        >>> import torch
        >>> a = torch.tensor([2.0], dtype=torch.float64)
        >>> b = torch.tensor([3.0], dtype=torch.float64)
        >>> x = torch.tensor([0.25, 0.5], dtype=torch.float64)
        >>> torch.ops.gbs_loss.betainc_with_grads(a, b, x)
        tensor([[ 0.2617,  0.6875],
                [-0.2281, -0.1953],
                [ 0.1069,  0.1541],
                [ 1.6875,  1.5000]], dtype=torch.float64)
    """
    return backends.get_block(x.device)(a, b, x)


@betainc_with_grads_op.register_fake
def _(a: Tensor, b: Tensor, x: Tensor) -> Tensor:
    return torch.empty((4, x.numel()), dtype=x.dtype, device=x.device)


@torch.compiler.assume_constant_result  # type: ignore[untyped-decorator]  # unannotated in torch
def _triton_selected(device_type: str) -> bool:
    """Whether the Triton backend runs for this device type; evaluated once when `torch.compile` traces."""
    return backends.resolve(torch.device(device_type)) == "triton"


def _compute(a: Tensor, b: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """The value and the ``(3, n)`` derivatives through the chosen backend; under tracing, through an operator
    the compiler can see."""
    if torch.compiler.is_compiling():
        block: Tensor = (
            torch.ops.gbs_loss.betainc_triton(a, b, x)
            if _triton_selected(x.device.type)
            else torch.ops.gbs_loss.betainc_with_grads(a, b, x)
        )
        return block[0], block[1:]
    block = backends.get_block(x.device)(a, b, x)
    return block[0], block[1:]


def betainc_block(a: Tensor, b: Tensor, x: Tensor) -> Tensor:
    """``(I, dI/da, dI/db, dI/dx)`` as the rows of one ``(4, n)`` float64 tensor, from the chosen backend.

    Arguments as in the backend contract (`.backends`). For callers that fuse `betainc` into their own autograd
    node (the losses' Beta path): the backend is chosen as for `betainc` itself (`_compute`); the native and
    Triton backends write this buffer directly.

    Example:
        >>> import torch
        >>> from gbs_loss.special._op import betainc_block
        >>> a = torch.tensor([2.0], dtype=torch.float64)
        >>> b = torch.tensor([3.0], dtype=torch.float64)
        >>> betainc_block(a, b, torch.tensor([0.25, 0.5], dtype=torch.float64))
        tensor([[ 0.2617,  0.6875],
                [-0.2281, -0.1953],
                [ 0.1069,  0.1541],
                [ 1.6875,  1.5000]], dtype=torch.float64)
    """
    if torch.compiler.is_compiling():
        if _triton_selected(x.device.type):
            traced: Tensor = torch.ops.gbs_loss.betainc_triton(a, b, x)
            return traced
        opaque: Tensor = torch.ops.gbs_loss.betainc_with_grads(a, b, x)
        return opaque
    return backends.get_block(x.device)(a, b, x)


def _flat(t: Tensor, shape: torch.Size, n: int, dtype: torch.dtype) -> Tensor:
    """``t`` expanded to ``shape`` and flattened, as a contiguous tensor of ``dtype`` (one copy at most)."""
    if t.shape == shape and t.is_contiguous():
        t = t if t.dtype == dtype else t.to(dtype)
        return t if t.dim() == 1 else t.view(n)
    out = torch.empty(shape, dtype=dtype, device=t.device)
    out.copy_(t.expand(shape))
    return out.view(n)


def _flat64(t: Tensor, shape: torch.Size, n: int) -> Tensor:
    """``t`` expanded to ``shape`` and flattened, as a contiguous float64 tensor (one copy at most)."""
    return _flat(t, shape, n, F64)


class _NamedCtx(FunctionCtx):
    """The autograd context of `_NoDoubleBackward` (typing only)."""

    function: str


class _NoDoubleBackward(torch.autograd.Function):
    """Identity whose backward raises: marks a first derivative as not differentiable."""

    @staticmethod
    def forward(ctx: _NamedCtx, t: Tensor, function: str, *inputs: Tensor) -> Tensor:
        # ``inputs`` (the arguments of the function) only link the result to the graph of the first derivative.
        ctx.function = function
        return t.clone()

    @staticmethod
    def backward(ctx: _NamedCtx, *grads: Tensor) -> NoReturn:
        raise RuntimeError(
            f"{ctx.function} supports first derivatives only: second derivatives (double backward, e.g. "
            "torch.autograd.grad(..., create_graph=True) followed by another backward) are not implemented"
        )


def first_derivatives_only(grad: Tensor, function: str, *inputs: Tensor) -> Tensor:
    """``grad``, a first derivative of ``function`` at ``inputs``, marked so that differentiating it raises.

    Called in the backward of an autograd function that implements first derivatives only. Under
    ``create_graph`` the returned gradient would otherwise silently miss the second-order terms: it is linked to
    ``inputs`` instead through an identity whose backward raises a ``RuntimeError`` naming ``function``. Without
    grad mode (a plain ``backward()``) ``grad`` is returned as is.

    Args:
        grad: A gradient computed by the backward.
        function: The public name of the function, for the message.
        *inputs: The function's tensor arguments.

    Returns:
        ``grad`` (a copy when grad mode is on).

    Example:
        >>> import torch
        >>> a = torch.tensor([2.0], requires_grad=True)
        >>> with torch.enable_grad():
        ...     g = first_derivatives_only(torch.ones(1), "betainc", a)
        >>> g.sum().backward()  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        RuntimeError: betainc supports first derivatives only: second derivatives (double backward, e.g. ...
    """
    if not torch.is_grad_enabled():
        return grad
    out: Tensor = _NoDoubleBackward.apply(grad, function, *inputs)  # type: ignore[no-untyped-call]  # unannotated in torch
    return out


def evaluate(a: Tensor, b: Tensor, x: Tensor, plan: Plan) -> tuple[Tensor, Tensor]:
    """The value (in the output dtype, of the output shape) and the three flat partial derivatives, ``(3, n)``.

    ``plan`` as in `BetaincFunction`. The backend computes in float64 whatever the dtype; it reads and writes
    float32 itself when all three arguments are float32 (the derivatives then come as float32, saturated at the
    dtype's largest finite value), and float64 otherwise (the arguments converted here, the value converted
    back). Called directly when no gradient is needed.

    Example:
        >>> import torch
        >>> from gbs_loss.special._op import evaluate
        >>> a = torch.tensor([2.0], dtype=torch.float64)
        >>> b = torch.tensor([3.0], dtype=torch.float64)
        >>> x = torch.tensor([0.25, 0.5], dtype=torch.float64)
        >>> value, derivs = evaluate(a, b, x, (x.shape, a.shape, True, torch.float32))
        >>> value, derivs[2]
        (tensor([0.2617, 0.6875]), tensor([1.6875, 1.5000], dtype=torch.float64))
    """
    out_shape, ab_shape, shared, dtype = plan
    work = dtype if dtype == F32 and a.dtype == F32 and b.dtype == F32 and x.dtype == F32 else F64
    n = math.prod(out_shape)
    par_shape = ab_shape if shared else out_shape
    m = math.prod(par_shape)
    if n == 0:
        value = torch.empty(out_shape, dtype=work, device=x.device)
        derivs = torch.zeros((3, 0), dtype=work, device=x.device)
    else:
        value, derivs = _compute(
            _flat(a, par_shape, m, work), _flat(b, par_shape, m, work), _flat(x, out_shape, n, work)
        )
        if len(out_shape) != 1:
            value = value.view(out_shape)
    return (value if dtype == work else value.to(dtype)), derivs


class _BetaincCtx(FunctionCtx):
    """The autograd context of `BetaincFunction`: what its forward stores for the backward (typing only)."""

    plan: Plan
    shapes: tuple[torch.Size, torch.Size, torch.Size]
    dtypes: tuple[torch.dtype, torch.dtype, torch.dtype]
    saved_tensors: tuple[Tensor, ...]
    needs_input_grad: tuple[bool, ...]


class BetaincFunction(torch.autograd.Function):
    r"""$I_x(a, b)$ with its three partial derivatives saved for the backward.

    ``plan = (out_shape, ab_shape, shared, dtype)``: the broadcast shape of all three arguments, that of ``a`` and
    ``b``, whether ``(a, b)`` broadcast along leading dimensions only (then they are passed as ``m`` parameters,
    one per trailing position, and the parameter terms are computed once each), and the output dtype.

    The backward multiplies the incoming gradient into the saved ``(3, n)`` derivatives (one operation for the
    three inputs when all need a gradient), sums where an input was broadcast, and saturates where the
    derivatives are narrower than float64.

    Example:
        >>> import torch
        >>> from gbs_loss.special._op import BetaincFunction
        >>> a = torch.tensor([2.0], dtype=torch.float64, requires_grad=True)
        >>> b = torch.tensor([3.0], dtype=torch.float64)
        >>> x = torch.tensor([0.25, 0.5], dtype=torch.float64)
        >>> value = BetaincFunction.apply(a, b, x, (x.shape, a.shape, True, torch.float64))
        >>> value.sum().backward()
        >>> a.grad  # the two partial derivatives with respect to a, summed over the shared parameter
        tensor([-0.4233], dtype=torch.float64)
    """

    @staticmethod
    def forward(ctx: _BetaincCtx, a: Tensor, b: Tensor, x: Tensor, plan: Plan) -> Tensor:
        value, derivs = evaluate(a, b, x, plan)
        ctx.save_for_backward(derivs, a, b, x)  # a, b, x: to link the first derivatives under create_graph
        ctx.plan = plan
        ctx.shapes = (a.shape, b.shape, x.shape)
        ctx.dtypes = (a.dtype, b.dtype, x.dtype)
        return value

    @staticmethod
    def backward(ctx: _BetaincCtx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        out_shape, ab_shape, shared, _ = ctx.plan
        n = math.prod(out_shape)
        g = grad if grad.dim() == 1 else grad.reshape(n)
        derivs, a, b, x = ctx.saved_tensors
        needs = ctx.needs_input_grad
        # g * dI/d(a, b, x) (a narrower g is promoted exactly inside the multiplication); float32 derivatives are
        # saturated, and so is their product with the incoming gradient.
        prods: list[Tensor | None] = [None, None, None]
        if needs[0] and needs[1] and needs[2]:
            prods = list(saturate_(derivs * g).unbind(0))
        else:
            for i in range(3):
                if needs[i]:
                    prods[i] = saturate_(derivs[i] * g)
        grads: list[Tensor | None] = []
        for i, out in enumerate(prods):
            if out is None:
                grads.append(None)
                continue
            if i < 2 and shared:
                m = math.prod(ab_shape)
                if m == 1:
                    out = out.sum()
                elif m:
                    out = out.view(n // m, m).sum(0)
                if out.shape != ab_shape:
                    out = out.view(ab_shape)
            elif len(out_shape) != 1:
                out = out.view(out_shape)
            if out.shape != ctx.shapes[i]:
                out = out.sum_to_size(ctx.shapes[i])
            # Saturated in a narrower dtype; float64's infinite limits are kept.
            out = saturate(out, ctx.dtypes[i], keep_same_dtype=True)
            grads.append(first_derivatives_only(out, "betainc", a, b, x))
        return grads[0], grads[1], grads[2], None


class _PlainCtx(FunctionCtx):
    """The autograd context of `PlainBetaincFunction` (typing only)."""

    saved_tensors: tuple[Tensor, ...]


class PlainBetaincFunction(torch.autograd.Function):
    r"""`BetaincFunction` for the most common eager call, with the least work around the backend call.

    For three contiguous 1-D tensors of one length and one dtype, float32 or float64, on one device: nothing to
    broadcast, convert, sum or saturate beyond the backend's own float32 saturation. The forward is one backend
    call (`gbs_loss.special.backends.get_block`); the backward one multiplication of the incoming gradient into
    the saved ``(3, n)`` derivatives (plus a clamp in float32, as in `BetaincFunction`). At a few hundred
    points the work around the kernel is most of the time of a call; `gbs_loss.betainc` takes this path when
    it can (not under ``torch.compile``, which sees `BetaincFunction`).

    Example:
        >>> import torch
        >>> from gbs_loss.special._op import PlainBetaincFunction
        >>> a = torch.tensor([2.0, 2.0], dtype=torch.float64, requires_grad=True)
        >>> b = torch.tensor([3.0, 3.0], dtype=torch.float64)
        >>> x = torch.tensor([0.25, 0.5], dtype=torch.float64)
        >>> PlainBetaincFunction.apply(a, b, x).sum().backward()
        >>> a.grad
        tensor([-0.2281, -0.1953], dtype=torch.float64)
    """

    @staticmethod
    def forward(ctx: _PlainCtx, a: Tensor, b: Tensor, x: Tensor) -> Tensor:
        block = backends.get_block(x.device)(a, b, x)
        ctx.save_for_backward(block[1:], a, b, x)  # a, b, x: to link the first derivatives under create_graph
        return block[0]

    @staticmethod
    def backward(ctx: _PlainCtx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        derivs, a, b, x = ctx.saved_tensors
        g_a, g_b, g_x = saturate_(derivs * grad).unbind(0)
        if torch.is_grad_enabled():
            g_a, g_b, g_x = (first_derivatives_only(g, "betainc", a, b, x) for g in (g_a, g_b, g_x))
        return g_a, g_b, g_x
