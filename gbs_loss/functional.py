r"""Functional form of the Batch-Shaping and Generalized Batch-Shaping losses.

Batch-Shaping (Bejnordi, Blankevoort, Welling, "Batch-Shaping for Learning Conditional Channel Gated
Networks", ICLR 2020) is a Cramér--von Mises style distance between the empirical CDF of a batch and a prior
CDF, evaluated at the sorted samples. Generalized Batch-Shaping (Havtorn, Royer, Blankevoort, Ehteshami
Bejnordi, "MSViT: Dynamic Mixed-Scale Tokenization for Vision Transformers", ICCV Workshops 2023,
arXiv 2307.02321) gives every position its own prior with learned parameters and shapes those parameters in
turn with a hyperprior (:func:`hyperprior_loss`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import torch
import torch.distributions as td
from torch import Tensor

from gbs_loss import _sorting
from gbs_loss._coerce import check_bool, check_devices
from gbs_loss._dtypes import LOW_PRECISION, compute_dtype, saturate, saturate_, saturating_cast
from gbs_loss._shapes import broadcast_shapes
from gbs_loss.distributed import _check_group, gather_batch
from gbs_loss.priors import (
    Beta,
    CdfKernel,
    ClosedFormCdf,
    Prior,
    RelaxedBernoulli,
    _check_points,
    _within,
    make_reduce,
)
from gbs_loss.special._op import _flat64, betainc_block
from gbs_loss.special.api import _shares_trailing

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

__all__ = ["ProcessGroupArg", "Reduction", "batch_shaping_loss", "hyperprior_loss"]

#: How a loss reduces its per-position values.
Reduction: TypeAlias = Literal["none", "mean", "sum"]
#: A process group to gather over, ``None`` for the default group.
ProcessGroupArg: TypeAlias = "ProcessGroup | None"
_REDUCTIONS = ("none", "mean", "sum")


# ----------------------------------------------------------------------------------------------------------
# Argument checks shared by the functions and the modules.
# ----------------------------------------------------------------------------------------------------------
def _check_options(
    prior: object,
    dim: object,
    ties: object,
    reduction: object,
    validate_args: object,
    prior_name: str = "prior",
    check_prior: bool = True,
) -> None:
    """Check the options that do not depend on the input (shared with the modules' constructors)."""
    if check_prior:
        _check_prior(prior, prior_name)
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int)):
        raise TypeError(f"dim must be an int or None, got {type(dim).__name__}")
    check_bool(ties, "ties")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    check_bool(validate_args, "validate_args")


def _check_prior(prior: object, prior_name: str) -> None:
    """A prior instance with a ``cdf`` method (the :class:`~gbs_loss.priors.Prior` protocol)."""
    if isinstance(prior, type):
        example = f"{prior.__name__}(0.6, 0.4)" if issubclass(prior, td.Beta) else f"{prior.__name__}(...)"
        raise TypeError(
            f"{prior_name} must be a distribution instance with a differentiable cdf, got the class "
            f"{prior.__name__} itself; create one with its parameters, e.g. {example}"
        )
    if not callable(getattr(prior, "cdf", None)):
        raise TypeError(
            f"{prior_name} must be an object with a differentiable cdf method (for example "
            f"gbs_loss.priors.Beta(0.6, 0.4)), got {type(prior).__name__}"
        )


def _check_distributed(distributed: object, process_group: object) -> None:
    """Check the distributed options (shared with the modules' constructors)."""
    check_bool(distributed, "distributed")
    if process_group is not None:
        if not distributed:
            raise ValueError(
                "process_group is only used with distributed=True, got a process group with distributed=False"
            )
        _check_group(process_group)


def _check_input(
    x: object, dim: int | None, validate_args: bool, name: str = "x", check_batch: bool = True
) -> int | None:
    """Check the input tensor; return ``dim`` normalised to a non-negative index (or None).

    With ``check_batch=False`` the batch size and the values are left to :func:`_check_batch` (for a batch
    that is gathered from several processes first).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if dim is not None:
        if x.dim() == 0:
            raise ValueError(
                f"{name} must have at least one dimension (the batch) when dim={dim}, got a 0-dimensional tensor"
            )
        if not -x.dim() <= dim < x.dim():
            raise ValueError(
                f"dim must be in [{-x.dim()}, {x.dim() - 1}] for {name} of shape {tuple(x.shape)}, got {dim}"
            )
        dim = dim % x.dim()
    if check_batch:
        _check_batch(x, dim, validate_args, name)
    return dim


def _check_batch(
    x: Tensor,
    dim: int | None,
    validate_args: bool,
    name: str = "x",
    gathered: bool = False,
    support: tuple[float, float] | None = None,
) -> None:
    """At least two samples per position and, with ``validate_args``, finite values (inside ``support``)."""
    n = x.numel() if dim is None else x.shape[dim]
    where = " (gathered from all processes)" if gathered else ""
    if dim is not None and n > 0 and x.numel() == 0:
        raise ValueError(f"{name}{where} has no positions: shape {tuple(x.shape)} with the batch along dim {dim}")
    if n == 0:
        raise ValueError(f"{name}{where} has an empty batch: shape {tuple(x.shape)}, dim={dim}")
    if n == 1:
        raise ValueError(
            f"{name}{where} needs a batch of at least 2 samples to have a distribution, got 1 "
            f"(shape {tuple(x.shape)}, dim={dim})"
        )
    if not validate_args or x.device.type == "meta":  # a meta tensor has no values to check
        return
    if torch.compiler.is_compiling() or x.device.type != "cpu":
        # No host read under torch.compile or on an accelerator: an asynchronous device assertion (a RuntimeError
        # when it fails; on CUDA a device-side assertion, reported at the next synchronisation).
        if support is None:
            torch._assert_async(torch.isfinite(x).all(), f"{name}{where} must be finite (validate_args=True)")
        else:
            lo, hi = support
            torch._assert_async(
                ((x >= lo) & (x <= hi)).all(), f"{name}{where} must lie in [{lo:g}, {hi:g}] (validate_args=True)"
            )
        return
    if support is None:
        if _within(x, -math.inf, math.inf, closed=False):  # NaN fails
            return
    elif _within(x, support[0], support[1]):
        return
    ok = torch.isfinite(x) if support is None else (x >= support[0]) & (x <= support[1])  # False for NaN
    nonfinite = ~torch.isfinite(x)
    if bool(nonfinite.any()):
        raise ValueError(
            f"{name}{where} must be finite, got {int(nonfinite.sum())} NaN or infinite value(s) in a tensor of "
            f"shape {tuple(x.shape)} (pass validate_args=False to skip this check)"
        )
    assert support is not None  # the finite case returned above
    bad = ~ok
    first = x.detach()[bad].reshape(-1)[0].item()
    raise ValueError(
        f"{name}{where} must lie in [{support[0]:g}, {support[1]:g}], got {int(bad.sum())} value(s) outside "
        f"(for example {first:g}) in a tensor of shape {tuple(x.shape)}; pass values such as sigmoid outputs "
        f"(or validate_args=False to skip this check)"
    )


def _prepare_batch(
    x: object,
    dim: int | None,
    validate_args: bool,
    distributed: bool,
    process_group: ProcessGroupArg,
    name: str = "x",
    support: tuple[float, float] | None = None,
) -> tuple[Tensor, int | None]:
    """Check ``x`` and, with ``distributed``, gather the batches of all processes; return it and its dim.

    With ``validate_args`` the processes exchange their batch sizes (so they may differ) and every process
    checks the gathered batch, so a bad value raises the same error on every process; without it the sizes
    must be equal and nothing synchronises with the host.
    """
    dim = _check_input(x, dim, validate_args, name, check_batch=False)
    assert isinstance(x, Tensor)  # checked above
    if not distributed:
        _check_batch(x, dim, validate_args, name, support=support)
        return x, dim
    if dim is None:
        x, dim = x.reshape(-1), 0
        flat = True
    else:
        flat = False
    x = gather_batch(x, dim, process_group, equal_sizes=not validate_args, name=name)
    _check_batch(x, None if flat else dim, validate_args, name, gathered=True, support=support)
    return x, dim


def _check_prior_shape(prior: object, positions: torch.Size, prior_name: str = "prior") -> None:
    """The prior's parameters must broadcast to the positions without enlarging them."""
    batch_shape = getattr(prior, "batch_shape", None)
    if batch_shape is None:
        return
    try:
        ok = broadcast_shapes(torch.Size(batch_shape), positions) == positions
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"{prior_name} parameters of shape {tuple(batch_shape)} do not broadcast against the "
            f"positions of shape {tuple(positions)} (the input's shape without the batch dim)"
        )


# ----------------------------------------------------------------------------------------------------------
# The computation.
# ----------------------------------------------------------------------------------------------------------
class _SortValues(torch.autograd.Function):
    """Sorted values along ``dim``; the backward scatters the gradient back through the fixed permutation.

    Unlike the backward of :func:`torch.sort`, it writes every element once (the indices are a permutation)
    instead of filling zeros first. The order it gives tied samples is fixed: the sort
    (:func:`gbs_loss._sorting.sort`) is deterministic, so the same input gets the same permutation, hence the
    same gradients, in every run on the same device (on CPU, float32 with several positions: tied samples in
    their original order).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, dim: int, nonnegative: bool = False) -> Tensor:
        values, indices = _sorting.sort(x, dim, nonnegative)
        ctx.save_for_backward(indices)
        ctx.dim = dim
        return values

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (indices,) = ctx.saved_tensors
        return torch.empty_like(grad).scatter_(ctx.dim, indices, grad), None, None


def _largest_ranks(xs: Tensor) -> Tensor:
    """1-based ranks of sorted samples (batch first) where every tie gets the largest rank of its group.

    That rank is the number of samples ``<= x``: the position of the group's last member. The last members
    are found by comparing neighbours, and a reversed running minimum hands every member the position of the
    next last member. Linear in the number of values, no host synchronisation.
    """
    n = xs.shape[0]
    is_last = torch.cat([xs[1:] != xs[:-1], torch.ones_like(xs[:1], dtype=torch.bool)])
    position = torch.arange(1, n + 1, device=xs.device).reshape((n,) + (1,) * (xs.dim() - 1))
    candidate = torch.where(is_last, position, n)
    return candidate.flip(0).cummin(0).values.flip(0)


_REDUCTION_CODES = {"none": 0, "mean": 1, "sum": 2}  # ATen's Reduction enum, for mse_loss_backward


def _fused_forward(
    x: Tensor, dim: int, reduction: str, nonnegative: bool, kernel: CdfKernel, params: tuple[Tensor, ...]
) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[Tensor, ...]]:
    """The forward of :class:`_FusedShaping`: ``(loss, indices, cdf, ecdf, saved)``.

    ``ecdf`` is ``i/(N+1)`` of size ``N`` along ``dim`` and 1 elsewhere (it broadcasts against ``cdf``).
    """
    xs, indices = _sorting.sort(x, dim, nonnegative)
    n = x.shape[dim]
    cdf, saved = kernel.cdf(xs, *params)
    shape = [1] * x.dim()
    shape[dim] = n
    ecdf = torch.arange(1, n + 1, dtype=cdf.dtype, device=cdf.device).div_(n + 1).view(shape)
    # The squared distances in place in one temporary (what mse_loss computes, without its broadcast target).
    sq = torch.sub(cdf, ecdf).square_()
    if reduction == "none":
        loss = sq.mean(dim)
    else:
        loss = sq.sum().div_(sq.numel() if reduction == "mean" else n)
    return loss, indices, cdf, ecdf, saved


def _unsort(src: Tensor, indices: Tensor, dim: int) -> Tensor:
    """``empty_like(src).scatter_(dim, indices, src)``: values in sorted order back to the original order.

    On CPU, for a batch along any dim but the last, the scatter is done along one flat dimension, with the flat
    positions computed in one pass over the indices: for a 256 x 196 batch along dim 0 on one thread, 0.17 ms
    in all against 0.31 ms for ``scatter_`` along ``dim``.
    """
    shape = indices.shape
    inner = math.prod(shape[dim + 1 :])
    if src.device.type != "cpu" or inner == 1 or src.shape != shape:
        return torch.empty_like(src).scatter_(dim, indices, src)
    n, outer = shape[dim], math.prod(shape[:dim])
    # The flat position of element (a, i, b) of a contiguous (outer, n, inner) tensor is a n inner + i inner + b.
    base = torch.arange(inner, device=src.device)
    if outer > 1:
        base = torch.arange(0, outer * n * inner, n * inner, device=src.device).view(outer, 1, 1) + base
    flat = torch.add(base, indices.reshape(outer, n, inner), alpha=inner)
    out = torch.empty(src.numel(), dtype=src.dtype, device=src.device)
    # reshape, not view: the indices and src may have any layout (a copy then); the output is contiguous.
    return out.scatter_(0, flat.reshape(-1), src.reshape(-1)).view(shape)


class _FusedShaping(torch.autograd.Function):
    r"""The Batch-Shaping loss of one of this library's closed-form priors as one autograd node.

    The same computation as the general path (sort, prior CDF, squared distance to the empirical CDF) and the
    same CDF code (:mod:`gbs_loss.priors`), without the intermediate autograd nodes: on CPU at 256 x 196
    values the general path spends about as long on the bookkeeping around its small tensors as on the sort
    itself. The loss is computed in the layout of ``x`` (the batch along ``dim``): nothing is transposed.

    ``kernel`` is the prior's :class:`~gbs_loss.priors.CdfKernel` (from its ``closed_form_cdf()``, the same code
    as its ``cdf``); ``params`` have ``x.dim()`` dimensions (size 1 along ``dim``) or none, and broadcast
    against ``x``.
    """

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, dim: int, reduction: str, nonnegative: bool, kernel: CdfKernel, *params: Tensor
    ) -> Tensor:
        loss, indices, cdf, ecdf, saved = _fused_forward(x, dim, reduction, nonnegative, kernel, params)
        ctx.save_for_backward(indices, cdf, ecdf, *saved)
        ctx.dim, ctx.reduction, ctx.n, ctx.kernel = dim, reduction, x.shape[dim], kernel
        ctx.shapes = tuple(p.shape for p in params)
        ctx.dtypes = tuple(p.dtype for p in params)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        indices, cdf, ecdf, *saved = ctx.saved_tensors
        dim, reduction, n = ctx.dim, ctx.reduction, ctx.n
        # dL/dF = 2 (F - ecdf) g / M (mean), 2 (F - ecdf) g / n (sum; "none": per position), in one pass into a
        # buffer that is not filled with zeros first (as aten's mse_loss_backward does).
        if reduction == "none":
            scale, code = (grad / n).unsqueeze(dim), _REDUCTION_CODES["none"]
        elif reduction == "sum":
            scale, code = grad / n, _REDUCTION_CODES["sum"]
        else:
            scale, code = grad, _REDUCTION_CODES["mean"]
        g_cdf = torch.ops.aten.mse_loss_backward.grad_input(scale, cdf, ecdf, code, grad_input=torch.empty_like(cdf))
        needs = (ctx.needs_input_grad[0], *ctx.needs_input_grad[5:])
        gxs, *gparams = ctx.kernel.grads(g_cdf, tuple(saved), needs, make_reduce(ctx.shapes, ctx.dtypes))
        gx = None if gxs is None else _unsort(gxs, indices, dim)
        return (gx, None, None, None, None, *gparams)


def _in_layout(param: Tensor, positions: int, dim: int) -> Tensor:
    """A parameter of the positions' shape (right-aligned) viewed in the layout of ``x``: size 1 along ``dim``.

    A 0-dimensional parameter stays 0-dimensional, so that it keeps not taking part in type promotion.
    """
    if param.dim() == 0:
        return param
    shape = [1] * (positions - param.dim()) + list(param.shape)
    shape.insert(dim, 1)
    return param.reshape(shape)  # one view (one autograd node), not a reshape and an unsqueeze


def _closed_form(prior: object) -> ClosedFormCdf | None:
    """The prior's closed-form CDF if it has one (the capability that selects the fused path), else ``None``."""
    method = getattr(prior, "closed_form_cdf", None)
    if method is None:
        return None
    closed = method()
    return closed if isinstance(closed, ClosedFormCdf) else None


def _support_bounds(prior: object) -> tuple[float, float]:
    """The closed bounds of the prior's ``support`` (a torch constraint), infinite where unknown."""
    support = getattr(prior, "support", None)
    lo = getattr(support, "lower_bound", -math.inf)
    hi = getattr(support, "upper_bound", math.inf)
    return (
        (float(lo), float(hi))
        if isinstance(lo, (int, float)) and isinstance(hi, (int, float))
        else (-math.inf, math.inf)
    )


def _validates(prior: object) -> bool:
    """Whether a prior checks its points (torch's ``_validate_args``)."""
    return bool(getattr(prior, "_validate_args", False))


def _fused_loss(
    x: Tensor, prior: object, closed: ClosedFormCdf, dim: int, reduction: str, nonnegative: bool, name: str
) -> Tensor:
    """The loss through :class:`_FusedShaping` (tied samples ranked in the fixed order of the sort)."""
    positions = x.shape[:dim] + x.shape[dim + 1 :]
    _check_prior_shape(prior, positions, name)
    lo, hi = _support_bounds(prior)
    validate = _validates(prior)
    prepare = getattr(prior, "_prepare", None)
    if prepare is not None:
        x = prepare(x)  # dtype promotion and, with validation, the support (with the prior's own message)
    else:
        x = saturating_cast(x, compute_dtype(x, *closed.params))
        if validate:
            _check_support(x, prior, "x", "prior")
    params = tuple(_in_layout(p, len(positions), dim) for p in closed.params)
    nonnegative = nonnegative or (validate and lo >= 0 and hi <= 1)
    if not (torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params))):
        # Nothing to differentiate: the forward alone, without an autograd node (which dynamo cannot trace
        # when no input requires a gradient).
        return _fused_forward(x, dim, reduction, nonnegative, closed.kernel, params)[0]
    out: Tensor = _FusedShaping.apply(x, dim, reduction, nonnegative, closed.kernel, *params)  # type: ignore[no-untyped-call]
    return out


def _beta_parameters(prior: object) -> tuple[Tensor, Tensor] | None:
    """``(a, b)`` of a Beta prior whose CDF is this library's (the capability of the fused Beta path), else None."""
    method = getattr(prior, "betainc_parameters", None)
    if method is None:
        return None
    ab = method()
    return ab if isinstance(ab, tuple) and len(ab) == 2 and all(isinstance(t, Tensor) for t in ab) else None


_F64 = torch.float64
#: ``(par_shape, m, out_dtype)``: the shape ``(a, b)`` are expanded to and passed as ``m`` values to the backend
#: (one per trailing block of positions), and the dtype of the loss.
_BetaPlan = tuple[torch.Size, int, torch.dtype]


def _beta_forward(
    x: Tensor, a: Tensor, b: Tensor, dim: int, reduction: str, nonnegative: bool, plan: _BetaPlan, grads: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""The forward of :class:`_FusedBeta`: ``(loss, indices, p_x, s_ab)``.

    With :math:`r_{ik} = I_{x_{(i),k}}(a_k, b_k) - i/(N+1)` (in float64) and :math:`c` the reduction's factor,
    ``p_x`` holds :math:`2 c\, r_{ik}\,\partial I/\partial x` at the sorted points (batch first, shape
    ``(N, D)``) and ``s_ab`` the per-position sums :math:`2 c \sum_i r_{ik}\,\partial I/\partial a` and
    :math:`2 c \sum_i r_{ik}\,\partial I/\partial b` (shape ``(2, D)``), both in the dtype of the loss (saturating);
    they are the gradients for an incoming gradient of 1. Unless ``grads``, ``p_x`` and ``s_ab`` are empty.
    """
    par_shape, m, out_dtype = plan
    xs, indices = _sorting.sort(x, dim, nonnegative)
    n = x.shape[dim]
    moved = xs if dim == 0 else xs.movedim(dim, 0)
    count = moved.numel()
    positions = count // n
    # One copy: the sorted points, batch first, float64, contiguous (the layout of the backend contract).
    if moved.dtype == _F64 and moved.is_contiguous():
        x64 = moved.view(count)
    else:
        x64 = torch.empty(count, dtype=_F64, device=x.device).copy_(moved.reshape(count))
    if not nonnegative:
        # Outside [0, 1] the CDF is the constant 0 or 1 (NaN stays NaN), as in Beta.cdf.
        x64 = x64.clamp(0.0, 1.0)
    block = betainc_block(_flat64(a, par_shape, m), _flat64(b, par_shape, m), x64)
    rows = block.view(4, n, positions)
    r = rows[0]
    # r = I - i / (N + 1), in place (1/(N+1) rounded once: within an ulp of i/(N+1)).
    r.sub_(torch.arange(1, n + 1, dtype=_F64, device=x.device).view(n, 1), alpha=1.0 / (n + 1))
    if reduction == "none":
        factor = 1.0 / n
        loss = r.square().mean(0).view(moved.shape[1:])
    else:
        factor = 1.0 / (count if reduction == "mean" else n)
        flat = block[0]
        loss = torch.dot(flat, flat).mul_(factor)
    if loss.dtype != out_dtype:
        loss = loss.to(out_dtype)
    if not grads:
        return loss, indices, r, r
    # Rows 1, 2, 3 of the block become 2 c r dI/da, 2 c r dI/db, 2 c r dI/dx, in place.
    rows[1:].mul_(r.mul_(2.0 * factor))
    p_x = rows[3]
    if not nonnegative:
        # The clamp's gradient: 0 outside [0, 1] and at NaN points.
        p_x.masked_fill_(~((moved >= 0) & (moved <= 1)).view(n, positions), 0.0)
    s_ab = rows[1:3].sum(1)
    if out_dtype != _F64:
        p_x, s_ab = _saturated(p_x, out_dtype), _saturated(s_ab, out_dtype)
    return loss, indices, p_x, s_ab


def _saturated(t: Tensor, dtype: torch.dtype) -> Tensor:
    """A float64 tensor that may be overwritten, cast to ``dtype`` saturating at its largest finite value."""
    big = torch.finfo(dtype).max
    return t.clamp_(-big, big).to(dtype)


class _FusedBeta(torch.autograd.Function):
    r"""The Batch-Shaping loss of a Beta prior as one autograd node, with one ``betainc`` backend call.

    Forward: sort along ``dim``; one float64 copy of the sorted points, batch first; one call of the
    ``betainc`` backend chosen by :mod:`gbs_loss.special.backends` (Triton on CUDA, native on CPU, torch
    operations otherwise) for :math:`I`, :math:`\partial I/\partial a`, :math:`\partial I/\partial b` and
    :math:`\partial I/\partial x` at all points, written into one ``(4, N D)`` buffer; the residuals
    :math:`r_{ik} = I_{ik} - i/(N+1)` and the loss :math:`c \sum_{ik} r_{ik}^2` (:math:`c = 1/(ND)` for the mean,
    :math:`1/N` for the sum and, per position, for ``"none"``). It saves only the gradients for an incoming
    gradient of one,

    .. math::

        \frac{\partial L}{\partial x_{(i),k}} = 2 c\, r_{ik} \frac{\partial I_{ik}}{\partial x}, \qquad
        \frac{\partial L}{\partial a_k} = 2 c \sum_i r_{ik} \frac{\partial I_{ik}}{\partial a}, \qquad
        \frac{\partial L}{\partial b_k} = 2 c \sum_i r_{ik} \frac{\partial I_{ik}}{\partial b},

    so that the backward is one multiplication by the incoming gradient per input, the scatter back through the
    sort's permutation for ``x`` and a sum over the positions that share a parameter. Everything is computed in
    float64 and cast once, saturating, to the loss's dtype (the saved gradients for an incoming gradient of one;
    the product with the incoming gradient is then taken in that dtype). The numbers are those of the general path
    (``Beta.cdf`` through :func:`gbs_loss.betainc`, then the squared distance), to rounding.
    """

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, a: Tensor, b: Tensor, dim: int, reduction: str, nonnegative: bool, plan: _BetaPlan
    ) -> Tensor:
        loss, indices, p_x, s_ab = _beta_forward(x, a, b, dim, reduction, nonnegative, plan, True)
        ctx.save_for_backward(indices, p_x, s_ab)
        ctx.dim, ctx.reduction, ctx.plan = dim, reduction, plan
        ctx.meta = (x.dtype, a.shape, a.dtype, b.shape, b.dtype)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        indices, p_x, s_ab = ctx.saved_tensors
        dim = ctx.dim
        par_shape, m, _ = ctx.plan
        x_dtype, a_shape, a_dtype, b_shape, b_dtype = ctx.meta
        positions = p_x.shape[1]
        g = grad.reshape(1, positions) if ctx.reduction == "none" else grad
        gx = ga = gb = None
        if ctx.needs_input_grad[0]:
            # Saturated after the multiplication: p_x is finite but a large incoming gradient (a loss weight) could
            # carry it past the dtype's range.
            gxs = p_x * g
            gxs = saturate(gxs, x_dtype) if gxs.dtype != x_dtype else saturate_(gxs)
            if dim != 0:
                src = gxs.view(indices.movedim(dim, 0).shape).movedim(0, dim)
            else:
                src = gxs if gxs.shape == indices.shape else gxs.view(indices.shape)
            gx = torch.empty(indices.shape, dtype=x_dtype, device=src.device).scatter_(dim, indices, src)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            g_ab = s_ab * g
            if m != positions:  # parameters shared by the trailing blocks of positions
                g_ab = g_ab.view(2, positions // m, m).sum(1)
            saturate_(g_ab)  # as for x: saturated after the multiplication
            ga = _param_grad(g_ab[0], par_shape, a_shape, a_dtype) if ctx.needs_input_grad[1] else None
            gb = _param_grad(g_ab[1], par_shape, b_shape, b_dtype) if ctx.needs_input_grad[2] else None
        return gx, ga, gb, None, None, None, None


def _param_grad(g: Tensor, par_shape: torch.Size, shape: torch.Size, dtype: torch.dtype) -> Tensor:
    """A parameter's gradient (``m`` values) summed to its shape and cast, saturating, to its dtype."""
    if g.shape != par_shape:
        g = g.view(par_shape)
    if g.shape != shape:
        g = g.sum_to_size(shape)
    return g if g.dtype == dtype else saturate(g, dtype)


def _fused_beta_loss(
    x: Tensor, prior: object, ab: tuple[Tensor, Tensor], dim: int, reduction: str, nonnegative: bool, name: str
) -> Tensor:
    """The loss of a Beta prior through :class:`_FusedBeta` (tied samples ranked in the fixed order of the sort)."""
    a, b = ab
    positions = x.shape[:dim] + x.shape[dim + 1 :]
    _check_prior_shape(prior, positions, name)
    check_devices(f"{type(prior).__name__}.cdf", x=x, a=a, b=b)
    # 0-dimensional CPU parameters (numbers) go to the points' device, as in betainc.
    a, b = (t if t.device == x.device else t.to(x.device) for t in ab)
    # The dtype Beta.cdf computes in (compute_dtype; without its type promotions when all dtypes agree).
    same = (a.dtype == x.dtype or a.dim() == 0) and (b.dtype == x.dtype or b.dim() == 0)
    out_dtype = x.dtype if same and x.dtype in (torch.float32, _F64) else compute_dtype(x, a, b)
    validate = _validates(prior)
    if validate:
        _check_points(f"{type(prior).__name__}.cdf", "x", x, 0.0, 1.0)
    nonnegative = nonnegative or validate
    ab_shape = broadcast_shapes(a.shape, b.shape)
    shared = _shares_trailing(ab_shape, positions)
    par_shape = ab_shape if shared else positions
    plan = (par_shape, math.prod(par_shape), out_dtype)
    if not (torch.is_grad_enabled() and (x.requires_grad or a.requires_grad or b.requires_grad)):
        return _beta_forward(x, a, b, dim, reduction, nonnegative, plan, False)[0]
    out: Tensor = _FusedBeta.apply(x, a, b, dim, reduction, nonnegative, plan)  # type: ignore[no-untyped-call]
    return out


def _check_support(x: Tensor, prior: object, name: str, owner: str) -> None:
    """``x`` inside the prior's closed support (and not NaN); an assertion on the device under compile.

    ``owner`` names the prior in the message; ``"hyperprior"`` adds the hyperprior's repr (eagerly only: the
    repr reads parameter values).
    """
    lo, hi = _support_bounds(prior)
    expected = f"inside the support [{lo:g}, {hi:g}] of the {owner}"
    if x.device.type == "meta":
        return
    if torch.compiler.is_compiling() or x.device.type != "cpu":
        torch._assert_async(((x >= lo) & (x <= hi)).all(), f"{name} must be {expected} (and not NaN)")
        return
    if _within(x, lo, hi):
        return
    bad = ~((x >= lo) & (x <= hi))
    first = x.detach()[bad].reshape(-1)[0].item()
    raise ValueError(
        f"{name} must be {expected} {prior!r} (and not NaN), got {int(bad.sum())} value(s) outside (for example "
        f"{first:g}) in a tensor of shape {tuple(x.shape)}"
    )


def _as_prior(prior: object) -> object:
    """The prior, with a plain :class:`torch.distributions.Beta` or ``RelaxedBernoulli`` (no ``cdf`` in torch)
    replaced by this library's subclass with the same parameters (gradients still reach them)."""
    if isinstance(prior, td.Beta) and not isinstance(prior, Beta) and type(prior).cdf is td.Distribution.cdf:
        return Beta(prior.concentration1, prior.concentration0, validate_args=_validates(prior))
    if (
        isinstance(prior, td.RelaxedBernoulli)
        and not isinstance(prior, RelaxedBernoulli)
        and type(prior).cdf is td.TransformedDistribution.cdf
    ):
        return RelaxedBernoulli(logits=prior.logits, temperature=prior.temperature, validate_args=_validates(prior))
    return prior


def _cdf(prior: Prior, xs: Tensor, prior_name: str) -> Tensor:
    """``prior.cdf(xs)``, with a clear error when the prior has no CDF."""
    try:
        return prior.cdf(xs)
    except NotImplementedError as err:
        raise TypeError(
            f"{prior_name} {type(prior).__module__}.{type(prior).__qualname__} has no cdf (it raised "
            f"NotImplementedError{': ' + str(err) if str(err) else ''}); the loss needs a differentiable CDF: use a "
            f"prior of gbs_loss.priors (Beta, SymmetricBeta, RelaxedBernoulli, Normal) or any object whose cdf is "
            f"implemented"
        ) from err


def _shaping_loss(
    x: Tensor,
    prior: object,
    dim: int | None,
    ties: bool,
    reduction: str,
    prior_name: str = "prior",
    nonnegative: bool = False,
) -> Tensor:
    """The reduced loss; for ``"none"`` of shape ``x.shape`` without ``dim`` (``()`` for ``dim=None``).

    ``nonnegative``: the values were checked to lie in ``[0, 1]`` (the sort may then skip a step). A prior
    with a closed-form CDF (``closed_form_cdf()``, e.g. :class:`~gbs_loss.priors.RelaxedBernoulli` and
    :class:`~gbs_loss.priors.Normal`) takes a fused path (:class:`_FusedShaping`) when ``ties`` is false, and so
    does a Beta prior whose CDF is :func:`gbs_loss.betainc` (``betainc_parameters()``, e.g.
    :class:`~gbs_loss.priors.Beta` and :class:`~gbs_loss.priors.SymmetricBeta`; :class:`_FusedBeta`).

    ``x`` is checked already and ``dim`` normalised. The batch is sorted once; the permutation is a constant
    for autograd (the gradient of the sort is the scatter back to the original order).
    """
    prior = _as_prior(prior)
    if x.dtype in LOW_PRECISION:
        x = saturating_cast(x, torch.float32)
    if dim is None:
        x = x.reshape(-1)
        dim = 0
    closed = None if ties else _closed_form(prior)
    if closed is not None:
        return _fused_loss(x, prior, closed, dim, reduction, nonnegative, prior_name)
    ab = None if ties else _beta_parameters(prior)
    if ab is not None:
        return _fused_beta_loss(x, prior, ab, dim, reduction, nonnegative, prior_name)
    xs: Tensor = _SortValues.apply(x, dim, nonnegative).movedim(dim, 0)  # type: ignore[no-untyped-call]
    n = xs.shape[0]
    positions = xs.shape[1:]
    _check_prior_shape(prior, positions, prior_name)
    cdf = _cdf(prior, xs, prior_name)  # type: ignore[arg-type]  # checked by _check_prior
    if not isinstance(cdf, Tensor) or cdf.shape != xs.shape:
        got = tuple(cdf.shape) if isinstance(cdf, Tensor) else type(cdf).__name__
        raise ValueError(
            f"{prior_name}.cdf must return a tensor of the samples' shape {tuple(xs.shape)} "
            f"(batch first), got {got}; do the prior's parameters broadcast against the "
            f"positions {tuple(positions)}?"
        )
    if cdf.dtype in LOW_PRECISION:
        cdf = cdf.float()
    if ties:
        ecdf = _largest_ranks(xs.detach()).to(cdf.dtype) / (n + 1)
    else:
        ecdf = torch.arange(1, n + 1, dtype=cdf.dtype, device=cdf.device).div_(n + 1)
        ecdf = ecdf.reshape((n,) + (1,) * len(positions)).expand_as(cdf)
    # Every position has N samples, so the mean over positions of the per-position means is the mean over
    # all elements: one fused kernel forward and one backward.
    if reduction == "none":
        return torch.nn.functional.mse_loss(cdf, ecdf, reduction="none").mean(0)
    if reduction == "sum":
        out: Tensor = torch.nn.functional.mse_loss(cdf, ecdf, reduction="sum") / n
        return out
    return torch.nn.functional.mse_loss(cdf, ecdf, reduction="mean")


def batch_shaping_loss(
    x: Tensor,
    prior: Prior,
    dim: int | None = 0,
    ties: bool = False,
    reduction: Reduction = "mean",
    validate_args: bool = True,
    *,
    distributed: bool = False,
    process_group: ProcessGroupArg = None,
) -> Tensor:
    r"""Batch-Shaping loss: squared distance between the batch's empirical CDF and a prior CDF.

    For every position :math:`k` (every index of ``x`` other than ``dim``) with samples
    :math:`x_{1,k}, \dots, x_{N,k}` sorted as :math:`x_{(1),k} \le \dots \le x_{(N),k}`,

    .. math::

        \ell_k = \frac{1}{N} \sum_{i=1}^{N} \Big( \frac{i}{N + 1} - F_k\big(x_{(i),k}\big) \Big)^2,
        \qquad
        L = \frac{1}{D} \sum_{k=1}^{D} \ell_k \quad (\text{reduction}=\text{"mean"}),

    where :math:`F_k` is the prior's CDF with the parameters of position :math:`k` (the prior's parameters
    broadcast against the positions: position :math:`k` is paired with prior :math:`k` only). The sort is a
    fixed permutation for autograd; gradients reach the samples through the prior's density and the prior's
    parameters through :math:`\partial F / \partial \phi`. With ``ties=True`` every member of a group of equal
    values gets the largest rank of its group (the right-continuous empirical CDF). This is Batch-Shaping
    (Bejnordi, Blankevoort, Welling, ICLR 2020) and, with one learned prior per position, the prior term of
    Generalized Batch-Shaping (Havtorn et al., "MSViT", ICCV Workshops 2023, arXiv 2307.02321).

    Cost: one sort along ``dim``, one CDF evaluation and a few elementwise passes; memory linear in
    ``x.numel()``. With ``ties=True`` a few more linear passes find the largest rank of every group.

    With ``distributed=True`` (data-parallel training) the batches of all processes are gathered along
    ``dim`` first (:func:`gbs_loss.distributed.gather_batch`), so every process computes the loss of the whole
    batch; the gradient reaching each process's own samples is the sum over processes, so that after DDP's
    averaging every gradient is that of one process on the concatenated batch (see the training guide).

    Args:
        x: Samples, e.g. soft gate values. float16 and bfloat16 are computed in float32.
        prior: Any object with a differentiable ``cdf`` (a :mod:`gbs_loss.priors` prior or a
            :mod:`torch.distributions` instance). Its parameters broadcast against the positions, the shape
            of ``x`` without ``dim``; ``cdf`` receives the sorted samples with the batch first,
            shape ``(N, *positions)``.
        dim: The batch dimension, along which the empirical CDF is taken. ``None`` flattens ``x`` into one
            distribution (the original Batch-Shaping); the prior must then be scalar.
        ties: Give tied samples the largest rank of their group; without it tied samples are ranked in an
            arbitrary order, the same in every run on a given device (results are reproducible).
        reduction: ``"mean"`` over positions (the published convention), ``"sum"``, or ``"none"`` for one
            loss per position.
        validate_args: Check that ``x`` is finite. On the CPU a failure raises a ``ValueError`` with the count
            and an example; on an accelerator (and under ``torch.compile``) the check is an asynchronous device
            assertion, without host synchronisation, which fails at the next synchronisation (on CUDA a
            device-side assertion). Shape and dtype checks are always done. Without it NaN samples give a NaN loss.
        distributed: Gather the batches of all processes of ``process_group`` along ``dim`` before computing
            the loss (every process must call the loss). With ``validate_args=True`` the processes exchange
            their batch sizes, which may then differ; with ``validate_args=False`` they must be equal and
            nothing synchronises with the host.
        process_group: The :class:`torch.distributed.ProcessGroup` to gather over with ``distributed=True``;
            ``None`` for the default group.

    Returns:
        The loss; a scalar, or of shape ``positions`` for ``reduction="none"``. Its dtype is the promoted
        dtype of the samples and of the prior's CDF, float32 for float16 and bfloat16 inputs.

    Raises:
        TypeError: ``x`` is not a floating-point tensor, ``prior`` has no ``cdf``, or an option has the
            wrong type.
        ValueError: an empty batch or a batch of one, no positions, ``dim`` out of range, non-finite
            samples, an unknown reduction, prior parameters that do not broadcast against the positions, a
            ``process_group`` without ``distributed=True``, or processes that disagree on dtype or positions.
        RuntimeError: ``distributed=True`` without an initialised process group.

    Shape:
        - ``x``: :math:`(N, *)` for ``dim=0``; any shape with the batch along ``dim`` in general. With
          ``distributed=True``, :math:`N` is this process's batch size and the loss is that of the
          :math:`\sum_r N_r` samples of all processes.
        - Output: :math:`()`, or :math:`(*)` (the positions) for ``reduction="none"``.

    Example:
        >>> import torch
        >>> from gbs_loss.functional import batch_shaping_loss
        >>> from gbs_loss.priors import Beta
        >>> gates = torch.rand(64, 49, requires_grad=True)
        >>> loss = batch_shaping_loss(gates, Beta(0.6, 0.4))
        >>> loss.backward()
        >>> loss.shape, gates.grad.shape
        (torch.Size([]), torch.Size([64, 49]))
    """
    _check_options(prior, dim, ties, reduction, validate_args)
    _check_distributed(distributed, process_group)
    x, dim = _prepare_batch(x, dim, validate_args, distributed, process_group)
    return _shaping_loss(x, prior, dim, ties, reduction)


def hyperprior_loss(
    params: Tensor,
    hyperprior: Prior,
    ties: bool = False,
    validate_args: bool = True,
) -> Tensor:
    r"""Hyperprior term of Generalized Batch-Shaping: Batch-Shaping of a parameter vector.

    The :math:`D` values of ``params`` (e.g. the learned prior means of the :math:`D` positions, whatever
    the shape of ``params``) are treated as one batch and shaped toward the hyperprior CDF :math:`G`:

    .. math::

        L_{\text{hyper}} = \frac{1}{D} \sum_{j=1}^{D}
            \Big( \frac{j}{D + 1} - G\big(\phi_{(j)}\big) \Big)^2,
        \qquad \phi_{(1)} \le \dots \le \phi_{(D)}.

    In MSViT (Havtorn et al., ICCV Workshops 2023, arXiv 2307.02321) :math:`G` is a Normal or a Beta whose
    mean is the target fraction of image regions that use fine tokens.

    There is no ``distributed`` option: the values shaped here are parameters, which data-parallel training
    (DDP) keeps identical on every process. Every process therefore already holds the whole "batch" and
    computes the same loss and the same gradient, which DDP's averaging leaves unchanged; gathering would
    repeat every value once per process and change the loss.

    Args:
        params: The parameters to shape, any shape with at least 2 elements.
        hyperprior: Any object with a differentiable ``cdf`` and scalar parameters, e.g.
            ``gbs_loss.priors.Normal(0.3, 0.1)``, ``gbs_loss.priors.Beta(3.0, 7.0)`` or
            ``torch.distributions.Normal(0.3, 0.1)``.
        ties: Give tied values the largest rank of their group.
        validate_args: Check that ``params`` is finite.

    Returns:
        The scalar loss.

    Shape:
        - ``params``: any shape, :math:`D \ge 2` elements. Output: :math:`()`.

    Example:
        >>> from gbs_loss.functional import hyperprior_loss
        >>> from gbs_loss.priors import Normal
        >>> means = torch.rand(49, requires_grad=True)
        >>> hyperprior_loss(means, Normal(0.3, 0.1)).shape
        torch.Size([])
    """
    _check_options(hyperprior, None, ties, "mean", validate_args, prior_name="hyperprior")
    _check_input(params, None, validate_args, name="params")
    if _validates(hyperprior) and _support_bounds(hyperprior) != (-math.inf, math.inf):
        # The hyperprior's own check would name its argument x: check here, naming params.
        _check_support(params, hyperprior, "params", "hyperprior")
    return _shaping_loss(params, hyperprior, None, ties, "mean", prior_name="hyperprior")
