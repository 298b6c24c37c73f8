r"""Priors for (Generalized) Batch-Shaping: :mod:`torch.distributions` with a differentiable CDF.

The losses need a prior CDF that is differentiable with respect to the points *and* to every parameter, so
that the parameters can be learned (Generalized Batch-Shaping, Havtorn, Royer, Blankevoort, Ehteshami
Bejnordi, "MSViT: Dynamic Mixed-Scale Tokenization for Vision Transformers", ICCV Workshops 2023,
arXiv 2307.02321). The priors here are :mod:`torch.distributions` -- subclasses of the distribution of the
same name, with everything torch gives (``sample``, ``rsample``, ``entropy``, ``batch_shape``, ``support``,
``expand``, ...) -- and add what torch lacks:

* :class:`Beta` -- :math:`\mathrm{Beta}(a, b)`, a :class:`torch.distributions.Beta`, the prior of the original
  Batch-Shaping loss (Bejnordi, Blankevoort, Welling, "Batch-Shaping for Learning Conditional Channel Gated
  Networks", ICLR 2020); its :meth:`~Beta.cdf` is :func:`gbs_loss.betainc`, with exact gradients for
  :math:`x`, :math:`a` and :math:`b`, and its :meth:`~Beta.icdf` is :func:`gbs_loss.special.betaincinv`;
* :class:`SymmetricBeta` -- the :class:`Beta` :math:`\mathrm{Beta}(a, 1 - a)`, one parameter, the mean;
* :class:`RelaxedBernoulli` -- a :class:`torch.distributions.RelaxedBernoulli` (binary concrete), MSViT's
  learned per-position prior, with the closed-form CDF :math:`\sigma(\lambda \operatorname{logit} x -
  \operatorname{logit} m)`;
* :class:`Normal` -- a :class:`torch.distributions.Normal`, MSViT's hyperprior on the learned means, whose
  CDF keeps its digits in the lower tail and its gradients finite for any valid parameters.

The losses accept any object with a differentiable ``cdf`` (the :class:`Prior` protocol): a
:mod:`torch.distributions` instance, say. :class:`RelaxedBernoulli` and :class:`Normal` also have a
closed-form CDF with a hand-written backward (:meth:`Normal.closed_form_cdf`), which the losses fuse with the
sort and the squared distance into one autograd node; any prior exposing that method takes the fused path.
:class:`Beta` (and :class:`SymmetricBeta`) expose :meth:`Beta.betainc_parameters` instead: the losses then call
the ``betainc`` backend once inside their own node (values and the three partial derivatives in one pass).

Parameters are Python numbers or tensors, learnable or not; tensors are used as given (not copied), so
gradients reach them. Python numbers are kept exact (float64) and 0-dimensional for the CDF, so they neither
lose digits nor promote the points' dtype; torch's own attributes (``loc``, ``concentration1``, ``probs``, ...)
follow torch's rules (numbers in the default dtype).

Argument validation follows :mod:`torch.distributions` (``validate_args``, ``arg_constraints``, ``support``).
It is on by default (``validate_args=True``), as before these priors were torch distributions; ``None`` takes
torch's global default (:meth:`torch.distributions.Distribution.set_default_validate_args`), which is normally
on but which ``torch.compile`` switches off for the whole process on its first use. With validation the
constructor checks the parameters against the distribution's ``arg_constraints`` (finite values
besides) and :meth:`~Beta.cdf` checks the points against its ``support``, raising a ``ValueError`` that names
the argument, the expected range and the value received. That message needs the values on the host, so it
is given for CPU tensors in eager mode (one min/max reduction when the check passes). For tensors on an
accelerator (CUDA, say) and under :func:`torch.compile` the checks are asynchronous device assertions
(:func:`torch._assert_async`: no host synchronisation, no graph break; a failure is reported at the next
synchronisation, a ``RuntimeError`` with the same message minus the value received, on CUDA a device-side
assertion after which the process must restart); shape, dtype and device checks stay as they are. Without
validation the CDF of the bounded priors is still the mathematical one outside the open support: 0 at and below
the lower end, 1 at and above the upper end, with zero gradient there; NaN points give NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, TypeVar, runtime_checkable

import torch
import torch.distributions as td
from torch import Tensor
from torch.distributions import constraints
from torch.distributions.relaxed_bernoulli import LogitRelaxedBernoulli
from torch.distributions.transforms import SigmoidTransform
from torch.distributions.utils import broadcast_all

from gbs_loss._coerce import as_parameter, check_broadcast, check_devices, check_real
from gbs_loss._dtypes import compute_dtype, saturate, saturating_cast
from gbs_loss._shapes import broadcast_shapes
from gbs_loss.special import beta_log_prob, betainc

__all__ = ["Beta", "CdfKernel", "ClosedFormCdf", "Normal", "Prior", "RelaxedBernoulli", "SymmetricBeta"]


@runtime_checkable
class Prior(Protocol):
    """What the losses need of a prior: a ``cdf`` differentiable with respect to the points and parameters.

    Any object with such a method qualifies (a structural type: no base class to inherit): the priors of this
    module, a :mod:`torch.distributions` instance whose ``cdf`` is implemented, or a user's own class.
    Optional attributes the losses use when present: ``batch_shape`` (checked against the positions),
    ``closed_form_cdf()`` (the fused fast path, see :class:`ClosedFormCdf`), ``validate_args`` and ``support``.

    Example:
        >>> import torch
        >>> from gbs_loss.priors import Prior
        >>> isinstance(torch.distributions.Normal(0.0, 1.0), Prior)
        True
    """

    def cdf(self, value: Tensor) -> Tensor:
        """The CDF at ``value``, broadcast against the parameters; differentiable."""
        ...


# ----------------------------------------------------------------------------------------------------------
# Closed-form CDFs with a hand-written backward.
# ----------------------------------------------------------------------------------------------------------
#: Sums an elementwise gradient of parameter ``index`` to that parameter's shape and saturates it to its dtype;
#: ``nan_as_zero`` ignores NaN products (``0 * inf`` at the ends of the support).
Reduce = Callable[[int, Tensor, bool], Tensor]


class CdfKernel(NamedTuple):
    """A closed-form CDF ``F(x; *params)`` and its gradients, as two plain functions.

    Attributes:
        cdf: ``cdf(x, *params) -> (value, saved)``: the CDF, broadcast, and the tensors its gradients need.
        grads: ``grads(grad, saved, needs, reduce) -> (gx, *gparams)``: ``gx`` elementwise (of the broadcast
            shape, finite unless NaN), each ``gparams[i]`` already passed through ``reduce(i, g, nan_as_zero)``;
            ``None`` where ``needs`` (one flag for ``x``, then one per parameter) is false.
    """

    cdf: Callable[..., tuple[Tensor, tuple[Tensor, ...]]]
    grads: Callable[[Tensor, tuple[Tensor, ...], tuple[bool, ...], Reduce], tuple[Tensor | None, ...]]


class ClosedFormCdf(NamedTuple):
    """The capability that selects the losses' fused path: a :class:`CdfKernel` and its parameters.

    Returned by ``closed_form_cdf()`` of a prior (:meth:`Normal.closed_form_cdf`,
    :meth:`RelaxedBernoulli.closed_form_cdf`); the parameters broadcast against the points.
    """

    kernel: CdfKernel
    params: tuple[Tensor, ...]


def sum_to_shape(t: Tensor, shape: torch.Size, nan_as_zero: bool) -> Tensor:
    """Sum ``t`` over the dimensions along which ``shape`` was broadcast (optionally ignoring NaN)."""
    if t.shape == shape:
        return t.nan_to_num(nan=0.0, posinf=math.inf, neginf=-math.inf) if nan_as_zero else t
    lead = t.dim() - len(shape)
    dims = list(range(lead)) + [lead + i for i, n in enumerate(shape) if n == 1 and t.shape[lead + i] != 1]
    reduce = torch.nansum if nan_as_zero else torch.sum
    out = reduce(t, dim=dims, keepdim=True)
    return out if out.shape == shape else out.reshape(shape)


def make_reduce(shapes: tuple[torch.Size, ...], dtypes: tuple[torch.dtype, ...]) -> Reduce:
    """The ``reduce`` a :class:`CdfKernel` receives for parameters of ``shapes`` and ``dtypes``."""

    def reduce(index: int, g: Tensor, nan_as_zero: bool) -> Tensor:
        summed, dtype = sum_to_shape(g, shapes[index], nan_as_zero), dtypes[index]
        if summed.dtype != dtype:
            return saturate(summed, dtype)
        big = torch.finfo(dtype).max
        return summed.clamp(-big, big)  # saturate without a cast to the same dtype (a new tensor, as saturate's)

    return reduce


class _ClosedFormCdfFunction(torch.autograd.Function):
    """One autograd node for any :class:`CdfKernel`: the forward and backward of ``kernel``, nothing else.

    The gradient with respect to the points is summed to their shape where they were broadcast against the
    parameters, and saturated at their dtype's largest value; the parameters' gradients likewise.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, kernel: CdfKernel, *params: Tensor) -> Tensor:
        value, saved = kernel.cdf(x, *params)
        ctx.save_for_backward(*saved)
        ctx.kernel = kernel
        ctx.x_shape = x.shape
        ctx.shapes = tuple(p.shape for p in params)
        ctx.dtypes = tuple(p.dtype for p in params)
        return value

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        needs = (ctx.needs_input_grad[0], *ctx.needs_input_grad[2:])
        gx, *gparams = ctx.kernel.grads(grad, tuple(ctx.saved_tensors), needs, make_reduce(ctx.shapes, ctx.dtypes))
        if gx is not None and gx.shape != ctx.x_shape:
            gx = saturate(sum_to_shape(gx, ctx.x_shape, nan_as_zero=False), gx.dtype)
        return (gx, None, *gparams)


def closed_form_cdf(x: Tensor, closed_form: ClosedFormCdf) -> Tensor:
    """Evaluate a :class:`ClosedFormCdf` at ``x`` (points already in the computation dtype) as one node."""
    if not (torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in closed_form.params))):
        return closed_form.kernel.cdf(x, *closed_form.params)[0]  # nothing to differentiate: no node
    out: Tensor = _ClosedFormCdfFunction.apply(x, closed_form.kernel, *closed_form.params)  # type: ignore[no-untyped-call]
    return out


def _relaxed_bernoulli_cdf(x: Tensor, t: Tensor, u: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
    """``sigmoid(t * logit(x) - u)`` and what its gradients need."""
    # eps=0 clamps x to [0, 1] inside the logit kernel (NaN stays NaN): logit is infinite at the ends, and t is
    # kept above 0 so that the CDF is exactly 0 or 1 there.
    lx = torch.logit(x, eps=0.0)
    t_pos = t.clamp_min(torch.finfo(t.dtype).tiny)
    # The sigmoid overwrites the argument, a tensor of its own: one allocation fewer.
    cdf = torch.addcmul(-u, t_pos, lx).sigmoid_()
    return cdf, (x, cdf, lx, t_pos)


def _relaxed_bernoulli_grads(
    grad: Tensor, saved: tuple[Tensor, ...], needs: tuple[bool, ...], reduce: Reduce
) -> tuple[Tensor | None, ...]:
    x, cdf, lx, t_pos = saved
    # dF/dz = F (1 - F): exactly 0 at the ends, where F is exactly 0 or 1. gz is a new tensor, which the
    # gradient with respect to x overwrites once the parameters' sums are taken.
    gz = torch.ops.aten.sigmoid_backward(grad, cdf)
    gx = gt = gu = None
    if needs[1]:
        # dz/dt = logit(x), infinite at the ends where gz is 0: those NaN products count as 0.
        gt = reduce(0, gz * lx, True)
    if needs[2]:
        gu = reduce(1, gz, False).neg()
    if needs[0]:
        # dz/dx = t / (x (1 - x)), 0 outside [0, 1]; at the ends 0 / 0 = NaN, set to the convention 0.
        # A huge temperature makes the density overflow near the median: saturate there. All in place.
        big = torch.finfo(gz.dtype).max
        gx = gz.mul_(t_pos)
        gx = torch.ops.aten.logit_backward.grad_input(gx, x, 0.0, grad_input=gx)
        gx = gx.nan_to_num_(nan=0.0, posinf=big, neginf=-big)
    return gx, gt, gu


#: ``sigmoid(t * logit(x) - u)``, parameters ``(temperature, logits)``. Three elementwise passes forward
#: (logit, the product, the sigmoid in place), seven backward (three of them in place).
RELAXED_BERNOULLI_CDF = CdfKernel(_relaxed_bernoulli_cdf, _relaxed_bernoulli_grads)


def _normal_cdf(x: Tensor, loc: Tensor, scale: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
    """``Phi((x - loc) / scale)`` as ``erfc((loc - x) / (scale sqrt 2)) / 2`` and what its gradients need."""
    w = (loc - x) / (scale * math.sqrt(2.0))
    return 0.5 * torch.special.erfc(w), (w, scale)


def _normal_grads(
    grad: Tensor, saved: tuple[Tensor, ...], needs: tuple[bool, ...], reduce: Reduce
) -> tuple[Tensor | None, ...]:
    w, scale = saved
    big = torch.finfo(w.dtype).max
    # phi(z) with z = -sqrt(2) w; exactly 0 where |w| is huge or infinite.
    phi = torch.exp(-w * w) * (1.0 / math.sqrt(2.0 * math.pi))
    gx = gloc = gscale = None
    if needs[0] or needs[1]:
        d = (grad * phi / scale).clamp(-big, big)  # clamp keeps NaN (from NaN points)
        gx = d if needs[0] else None
        if needs[1]:
            gloc = reduce(0, d, False).neg()
    if needs[2]:
        # z phi(z) is 0 where w is infinite (there 0 * inf would give NaN); NaN points keep NaN.
        z_phi = torch.where(torch.isinf(w), torch.zeros_like(w), w * (-math.sqrt(2.0)) * phi)
        gscale = reduce(1, (-(grad * z_phi) / scale).clamp(-big, big), False)
    return gx, gloc, gscale


#: :math:`\Phi((x - \mu)/\sigma)`, parameters ``(loc, scale)``. The value is
#: :math:`\tfrac12 \operatorname{erfc}((\mu - x)/(\sigma\sqrt2))`, which keeps full relative precision in the lower
#: tail (where ``torch.special.ndtr`` loses digits). Autograd of that expression gives NaN for a tiny scale (a
#: density that underflows to 0 times a ratio that overflows); here the derivatives are formed as
#: :math:`\varphi(z)/\sigma` and :math:`-z\varphi(z)/\sigma`, products that vanish where :math:`z` is huge and
#: saturate at the dtype's largest value where the density itself exceeds it.
NORMAL_CDF = CdfKernel(_normal_cdf, _normal_grads)


# ----------------------------------------------------------------------------------------------------------
# Validation.
# ----------------------------------------------------------------------------------------------------------
def _describe(value: Tensor, bad: Tensor) -> str:
    """Describe the received value of a failed check for an error message."""
    value = value.detach()
    if value.numel() == 1:
        return f"{value.reshape(()).item():g}"
    first = value[bad].reshape(-1)[0].item()
    return f"a tensor of shape {tuple(value.shape)} with {int(bad.sum())} value(s) out of range (for example {first:g})"


def _check_range(owner: str, name: str, value: Tensor, ok: Tensor, expected: str) -> None:
    """Raise a ``ValueError`` naming ``name`` unless ``ok`` holds everywhere (reads CPU values).

    Under :func:`torch.compile` and for tensors on an accelerator the check is an asynchronous device assertion
    instead (no host synchronisation; a ``RuntimeError`` with the same message, minus the value received). A
    tensor on the ``meta`` device has no values and passes.
    """
    if ok.device.type == "meta":
        return
    if torch.compiler.is_compiling() or ok.device.type != "cpu":
        # No host read under torch.compile or on an accelerator: an asynchronous device assertion.
        torch._assert_async(ok.all(), f"{owner}: {name} must be {expected}")
        return
    bad = ~ok
    if bool(bad.any()):
        raise ValueError(f"{owner}: {name} must be {expected}, got {_describe(value, bad)}")


class _OpenInterval(constraints.Constraint):
    """The open interval ``(lower_bound, upper_bound)``: torch's ``constraints.interval`` is closed."""

    def __init__(self, lower_bound: float, upper_bound: float) -> None:
        self.lower_bound, self.upper_bound = lower_bound, upper_bound
        super().__init__()

    def check(self, value: Tensor) -> Tensor:
        return (self.lower_bound < value) & (value < self.upper_bound)


_OPEN_UNIT = _OpenInterval(0.0, 1.0)
# Constraints that are open intervals (with the finite check: (lower_bound, upper_bound), infinite where unbounded).
_OPEN_CONSTRAINTS = (_OpenInterval, type(constraints.positive), type(constraints.real))


def _check_constraint(owner: str, name: str, value: Tensor, constraint: Any, expected: str) -> None:
    """:func:`_check_range` with a :mod:`torch.distributions.constraints` constraint, also requiring finite values.

    The constraints used here (``real``, ``positive``, open intervals) are open intervals: on the CPU, eagerly,
    one min/max reduction decides that they hold, and the message is only built when they do not.
    """
    if value.device.type == "cpu" and not torch.compiler.is_compiling() and isinstance(constraint, _OPEN_CONSTRAINTS):
        lo = float(getattr(constraint, "lower_bound", -math.inf))
        hi = float(getattr(constraint, "upper_bound", math.inf))
        if _within(value, lo, hi, closed=False):
            return
    _check_range(owner, name, value, constraint.check(value) & torch.isfinite(value), expected)


def _within(x: Tensor, lo: float, hi: float, closed: bool = True) -> bool:
    """Whether every value of ``x`` lies in ``[lo, hi]`` (``(lo, hi)`` unless ``closed``); NaN fails.

    One fused min/max reduction and one host read, instead of a comparison mask per bound. True for an empty
    tensor and for a tensor on the ``meta`` device (it has no values).
    """
    if x.device.type == "meta" or x.numel() == 0:
        return True
    with torch.no_grad():
        lowest, highest = torch.aminmax(x)  # NaN if x holds one
    low, high = lowest.item(), highest.item()  # comparisons with NaN are false
    return (lo <= low and high <= hi) if closed else (lo < low and high < hi)


def _both_positive(a: Tensor, b: Tensor) -> bool:
    """Whether two 1-D CPU parameters of one dtype are all positive and finite, by one reduction (eagerly).

    False when that cannot be decided so cheaply (other shapes, devices or dtypes, or under compile): the
    caller then checks each parameter with its own message.
    """
    if torch.compiler.is_compiling() or a.device.type != "cpu" or b.device.type != "cpu":
        return False
    if a.dim() != 1 or b.dim() != 1 or a.dtype != b.dtype:
        return False
    return _within(torch.cat((a, b)), 0.0, math.inf, closed=False)


def _check_points(owner: str, name: str, x: Tensor, lo: float, hi: float) -> None:
    """``lo <= x <= hi`` everywhere (NaN fails): one reduction when it holds, the full message when it does not."""
    if torch.compiler.is_compiling() or x.device.type != "cpu" or not _within(x, lo, hi):
        _check_range(owner, name, x, (x >= lo) & (x <= hi), f"inside the support [{lo:g}, {hi:g}] (and not NaN)")


def _resolve_validate(owner: str, validate_args: object) -> bool:
    """``validate_args`` as a bool: ``None`` takes torch's global default."""
    if validate_args is None:
        return bool(td.Distribution._validate_args)
    if not isinstance(validate_args, bool):
        raise TypeError(f"{owner}: validate_args must be a bool or None, got {type(validate_args).__name__}")
    return validate_args


def _parameters(owner: str, **values: object) -> dict[str, Tensor]:
    """Coerce the parameters: real, non-empty, on one device, broadcasting together."""
    params = {name: as_parameter(value, name, owner) for name, value in values.items()}
    for name, p in params.items():
        if p.numel() == 0:
            raise ValueError(f"{owner}: {name} must have at least one element, got a tensor of shape {tuple(p.shape)}")
    check_devices(owner, **params)
    check_broadcast(owner, **params)
    return params


def _for_torch(given: object, param: Tensor) -> Tensor | float:
    """What to hand torch's constructor: a number as the number (torch's dtype rules), a tensor as given."""
    return param if isinstance(given, Tensor) else float(given)  # type: ignore[arg-type]  # a real number


_D = TypeVar("_D", bound=td.Distribution)


def _unvalidated(cls: type[_D], *args: Any, **kwargs: Any) -> _D:
    """``cls(*args, **kwargs)`` without torch's argument validation.

    The instance's ``_validate_args`` is set to ``False`` *before* torch's ``__init__`` runs, which is then
    called without ``validate_args``: torch's own checks (whose values the priors have checked already, with
    messages that name the user's arguments) are skipped, and the priors then set ``_validate_args`` to their
    own setting.
    """
    obj = cls.__new__(cls)
    obj._validate_args = False
    cls.__init__(obj, *args, **kwargs)
    return obj


def _bounds(support: object) -> tuple[float, float]:
    """The closed bounds of a :mod:`torch.distributions.constraints` support (infinite where unbounded)."""
    return float(getattr(support, "lower_bound", -math.inf)), float(getattr(support, "upper_bound", math.inf))


class _PriorMixin:
    """What the priors add to their :mod:`torch.distributions` class: checked points, exact parameters, repr.

    Subclasses set ``_names`` and ``_exact`` (the parameters as given, by name, for the CDF; ``None`` after
    :meth:`torch.distributions.Distribution.expand`, which then falls back to :meth:`_torch_params`).
    """

    _names: tuple[str, ...] = ()
    _exact: tuple[Tensor, ...] | None = None
    _validate_args: bool
    support: Any

    def _torch_params(self) -> tuple[Tensor, ...]:
        raise NotImplementedError

    def _params(self) -> tuple[Tensor, ...]:
        """The parameters the CDF computes with: as given (numbers exact), else torch's."""
        return self._exact if self._exact is not None else self._torch_params()

    @property
    def validate_args(self) -> bool:
        """Whether the parameters were checked and :meth:`cdf` checks its points (torch's ``_validate_args``)."""
        return bool(self._validate_args)

    def _prepare(self, x: object, name: str = "x", method: str = "cdf", check_support: bool = True) -> Tensor:
        """``x`` as a tensor in the computation dtype, on the parameters' device, optionally checked."""
        owner = f"{type(self).__name__}.{method}"
        params = self._params()
        real = check_real(x, name, owner)
        if isinstance(real, Tensor):
            t = real
        else:
            device = next((p.device for p in params if p.dim() > 0), None)
            t = torch.tensor(real, dtype=torch.get_default_dtype(), device=device)
        check_devices(owner, **{name: t}, **dict(zip(self._names, params, strict=True)))
        dtype = compute_dtype(t, *params)
        t = saturating_cast(t, dtype) if t.is_floating_point() else t.to(dtype)
        if check_support and self.validate_args:
            lo, hi = _bounds(self.support)
            _check_points(owner, name, t, lo, hi)
        return t

    def _prepare_probabilities(self, p: object) -> Tensor:
        """Probabilities for :meth:`icdf`, checked to lie in ``[0, 1]`` with validation."""
        p_t = self._prepare(p, "p", "icdf", check_support=False)
        if self.validate_args:
            _check_range(f"{type(self).__name__}.icdf", "p", p_t, (p_t >= 0) & (p_t <= 1), "in [0, 1]")
        return p_t

    def __repr__(self) -> str:
        parts = []
        for name, value in zip(self._names, self._params(), strict=True):
            shown = f"{value.detach().item():g}" if value.numel() == 1 else f"<tensor of shape {tuple(value.shape)}>"
            parts.append(f"{name}={shown}")
        return f"{type(self).__name__}({', '.join(parts)})"


# ----------------------------------------------------------------------------------------------------------
# The priors.
# ----------------------------------------------------------------------------------------------------------
class Beta(_PriorMixin, td.Beta):
    r"""The Beta distribution with a CDF and quantiles: a :class:`torch.distributions.Beta`.

    .. math::

        F(x; a, b) = I_x(a, b) = \frac{1}{B(a, b)} \int_0^x t^{a-1} (1 - t)^{b-1}\,dt, \qquad 0 \le x \le 1,

    computed by :func:`gbs_loss.betainc`, whose gradients with respect to :math:`x`, :math:`a` and :math:`b`
    are exact (no clipped density, no finite differences). Bejnordi, Blankevoort and Welling (ICLR 2020) used
    :math:`\mathrm{Beta}(0.6, 0.4)` for gates that should be off 40% of the time, mostly near 0 or 1.
    :meth:`icdf` is :func:`gbs_loss.special.betaincinv`, :meth:`log_prob` the accurate
    :func:`gbs_loss.beta_log_prob`; ``sample``, ``rsample``, ``entropy``, ``mean``, ``variance`` are torch's.

    ``a`` and ``b`` are torch's ``concentration1`` and ``concentration0``; the attributes :attr:`a` and
    :attr:`b` hold them as given (numbers exact in float64), torch's attributes as torch builds them.

    Args:
        a: First shape parameter, :math:`a > 0`; a number or a tensor (learnable or not).
        b: Second shape parameter, :math:`b > 0`; broadcasts with ``a``.
        validate_args: Check ``a, b > 0`` (finite) here and ``0 <= x <= 1`` in :meth:`cdf`; ``None`` for
            torch's global default. Without the check, points below 0 have CDF 0 and points above 1 have CDF 1 (zero
            gradient); invalid ``a`` or ``b`` give NaN.

    Shape:
        - ``a``, ``b``: non-empty shapes that broadcast together (:attr:`batch_shape`).
        - ``cdf(x)``: ``x`` broadcasts against :attr:`batch_shape`.

    Example:
        >>> import torch
        >>> from gbs_loss.priors import Beta
        >>> a = torch.tensor([0.6, 2.0], requires_grad=True)
        >>> prior = Beta(a, 0.4)
        >>> prior.cdf(torch.tensor([[0.5, 0.5]])).shape
        torch.Size([1, 2])
        >>> isinstance(prior, torch.distributions.Beta), prior.rsample((3,)).shape
        (True, torch.Size([3, 2]))
    """

    _names = ("a", "b")
    _torch_ab: tuple[Tensor | float, Tensor | float] = (1.0, 1.0)
    _lazy_dirichlet: td.Dirichlet | None = None

    def __init__(self, a: Tensor | float, b: Tensor | float, validate_args: bool | None = True) -> None:
        owner = type(self).__name__
        validate = _resolve_validate(owner, validate_args)
        params = _parameters(owner, a=a, b=b)
        if validate and not _both_positive(params["a"], params["b"]):
            for name, p in params.items():
                _check_constraint(owner, name, p, constraints.positive, "> 0 and finite")
        self._setup(params["a"], params["b"], _for_torch(a, params["a"]), _for_torch(b, params["b"]), validate)

    def _setup(self, a: Tensor, b: Tensor, torch_a: Tensor | float, torch_b: Tensor | float, validate: bool) -> None:
        # torch's Beta.__init__, with the validation left to the checks above (see _unvalidated). torch's Dirichlet
        # (its parameters stacked) is built on first use only (sampling, say): the CDF and the losses never need
        # it, and a learned prior is built on every training step.
        self._torch_ab = (torch_a, torch_b)
        self._lazy_dirichlet = None
        self._validate_args = False
        td.ExponentialFamily.__init__(self, broadcast_shapes(a.shape, b.shape))
        self._validate_args = validate
        self._exact = (a, b)

    @property
    def _dirichlet(self) -> td.Dirichlet:
        """torch's Dirichlet over ``(a, b)``, through which torch's Beta computes (built on first use)."""
        if self._lazy_dirichlet is None:
            torch_a, torch_b = self._torch_ab
            if isinstance(torch_a, Tensor) or isinstance(torch_b, Tensor):
                stacked = torch.stack(list(broadcast_all(torch_a, torch_b)), -1)
            else:
                stacked = torch.tensor([torch_a, torch_b])
            self._lazy_dirichlet = _unvalidated(td.Dirichlet, stacked)
        return self._lazy_dirichlet

    @_dirichlet.setter
    def _dirichlet(self, value: td.Dirichlet) -> None:
        self._lazy_dirichlet = value

    def expand(self, batch_shape: Any, _instance: Any = None) -> Beta:
        """torch's ``expand``; the expanded prior computes with torch's (expanded) parameters."""
        new = self._get_checked_instance(type(self), _instance)  # type: ignore[no-untyped-call]
        super().expand(batch_shape, _instance=new)  # type: ignore[no-untyped-call]
        new._exact = None
        return new  # type: ignore[no-any-return]

    def _torch_params(self) -> tuple[Tensor, ...]:
        return self.concentration1, self.concentration0

    @property
    def a(self) -> Tensor:
        """The first shape parameter (torch's ``concentration1``) as given."""
        return self._params()[0]

    @property
    def b(self) -> Tensor:
        """The second shape parameter (torch's ``concentration0``) as given."""
        return self._params()[1]

    def betainc_parameters(self) -> tuple[Tensor, Tensor] | None:
        r"""``(a, b)`` as :meth:`cdf` computes with them: the capability that selects the losses' fused Beta path.

        The losses then sort, call the ``betainc`` backend once for :math:`I_x(a, b)` and its three partial
        derivatives, and form the loss and its gradients in one autograd node (the same numbers as :meth:`cdf`).
        ``None`` when a subclass redefines :meth:`cdf`: the losses then call that ``cdf``.
        """
        if type(self).cdf is not Beta.cdf:
            return None
        a, b = self._params()
        return a, b

    def cdf(self, value: Tensor | float) -> Tensor:
        r"""The CDF :math:`I_x(a, b)`, differentiable with respect to ``value``, :math:`a` and :math:`b`.

        float16 and bfloat16 points are computed in float32 (the computation itself runs in float64); the
        result has the promoted dtype of the points and of the parameters with at least one dimension.

        Args:
            value: Points; with validation they must lie in ``[0, 1]``.

        Returns:
            :math:`F(x)`, of the broadcast shape of ``value`` and :attr:`batch_shape`.
        """
        x = self._prepare(value)
        a, b = self._params()
        # clamp keeps NaN and has zero gradient outside [0, 1]: there the CDF is the constant 0 or 1.
        x = x.clamp(0.0, 1.0)
        # betainc computes in the promoted dtype of its arguments, which scalar float64 parameters can raise
        # above x's; cast x here so that its gradient (a density, possibly huge near the ends) saturates
        # instead of overflowing when it is cast back.
        dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), x.dtype)
        if dtype != x.dtype:
            return betainc(a, b, saturating_cast(x, dtype)).to(x.dtype)
        return betainc(a, b, x)

    def icdf(self, value: Tensor | float) -> Tensor:
        r"""The quantile function :math:`I^{-1}_p(a, b)`, by :func:`gbs_loss.special.betaincinv`.

        Differentiable with respect to ``value`` and both parameters (implicit function theorem).

        Args:
            value: Probabilities ``p``; with validation they must lie in ``[0, 1]``.

        Returns:
            The quantiles, of the broadcast shape of ``value`` and :attr:`batch_shape`.
        """
        from gbs_loss.special.inverse import betaincinv  # imported here: the CDF alone does not need it

        p = self._prepare_probabilities(value)
        a, b = self._params()
        dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), p.dtype)
        return betaincinv(a, b, saturating_cast(p, dtype)).to(p.dtype)

    def log_prob(self, value: Tensor | float) -> Tensor:
        """The log-density, accurate for large ``a`` and ``b`` (:func:`gbs_loss.beta_log_prob`).

        ``-inf`` outside ``[0, 1]``; at the ends, the one-sided limit.
        """
        x = self._prepare(value, method="log_prob", check_support=False)
        a, b = self._params()
        return beta_log_prob(x, a, b).to(x.dtype)


class SymmetricBeta(Beta):
    r"""The Beta distribution :math:`\mathrm{Beta}(a, 1 - a)`, parametrised by its mean :math:`a`: a :class:`Beta`.

    A one-parameter family whose two shape parameters sum to one: :math:`F(x) = I_x(a, 1 - a)`, mean
    :math:`a`, U-shaped with most mass near 0 and 1. The original Batch-Shaping prior
    :math:`\mathrm{Beta}(0.6, 0.4)` (Bejnordi, Blankevoort, Welling, ICLR 2020) is ``SymmetricBeta(0.6)``.
    :attr:`b` is computed as ``1 - a``, so gradients with respect to ``a`` account for both shape parameters.

    Args:
        a: The mean, :math:`0 < a < 1`; a number or a tensor (learnable or not).
        validate_args: Check ``0 < a < 1`` here and ``0 <= x <= 1`` in :meth:`cdf`; ``None`` for torch's
            default.

    Shape:
        - ``a``: any non-empty shape (:attr:`batch_shape`); ``cdf(x)``: ``x`` broadcasts against it.

    Example:
        >>> from gbs_loss.priors import SymmetricBeta
        >>> SymmetricBeta(0.6).cdf(torch.tensor([0.5]))
        tensor([0.3841])
    """

    _names = ("a", "b")

    def __init__(self, a: Tensor | float, validate_args: bool | None = True) -> None:
        owner = type(self).__name__
        validate = _resolve_validate(owner, validate_args)
        a_t = _parameters(owner, a=a)["a"]
        if validate:
            _check_constraint(owner, "a", a_t, _OPEN_UNIT, "in (0, 1)")
        b_t = 1.0 - a_t
        torch_b = b_t if isinstance(a, Tensor) else 1.0 - float(a)
        self._setup(a_t, b_t, _for_torch(a, a_t), torch_b, validate)

    def __repr__(self) -> str:
        a = self.a
        shown = f"{a.detach().item():g}" if a.numel() == 1 else f"<tensor of shape {tuple(a.shape)}>"
        return f"SymmetricBeta(a={shown})"


class RelaxedBernoulli(_PriorMixin, td.RelaxedBernoulli):
    r"""The Relaxed Bernoulli (binary concrete) distribution, with a CDF: a torch ``RelaxedBernoulli``.

    With :math:`m` the ``mean`` (torch's ``probs``) and :math:`\lambda` the ``temperature`` (torch's
    ``temperature``), a sample is :math:`X = \sigma\big((\operatorname{logit} m + L)/\lambda\big)` with
    :math:`L` standard logistic (Maddison, Mnih, Teh, "The Concrete Distribution", ICLR 2017; Jang, Gu, Poole,
    ICLR 2017), so

    .. math::

        F(x) = \sigma\big(\lambda \operatorname{logit}(x) - \operatorname{logit}(m)\big),
        \qquad 0 \le x \le 1.

    :math:`m = P(X > 1/2)` is the mean of the Bernoulli distribution that :math:`X` becomes as
    :math:`\lambda \to 0` (peaky, nearly binary values); a large temperature concentrates :math:`X` near
    1/2; :math:`m = 1/2, \lambda = 1` is the uniform distribution. The property :attr:`mean` is this
    parameter :math:`m` (the name the losses use), *not* :math:`E[X]`, which differs in general and which
    torch does not provide for this distribution either. Used with learned :math:`m` and :math:`\lambda` per
    position by Havtorn et al., "MSViT", ICCV Workshops 2023, arXiv 2307.02321.

    Names: ``mean`` = torch's ``probs``, ``logits`` = torch's ``logits``, ``temperature`` = torch's
    ``temperature``. The argument order is this library's (``mean`` first), not torch's (``temperature``
    first). Unlike torch, the temperature may have its own shape: it broadcasts with the mean.

    Args:
        mean: :math:`m \in (0, 1)`; a number or a tensor (learnable or not). Give either ``mean`` or
            ``logits``.
        temperature: :math:`\lambda > 0`; broadcasts with the mean.
        logits: :math:`\operatorname{logit}(m)` instead of ``mean`` (any finite value); avoids computing the
            logit of a sigmoid for parameters learned without constraints.
        validate_args: Check the parameters here and ``0 <= x <= 1`` in :meth:`cdf`; ``None`` for torch's
            default. Without the check, points at or below 0 have CDF 0, at or above 1 have CDF 1 (zero
            gradient), NaN gives NaN.

    Shape:
        - ``mean`` (or ``logits``), ``temperature``: non-empty shapes that broadcast together
          (:attr:`batch_shape`).
        - ``cdf(x)``: ``x`` broadcasts against :attr:`batch_shape`.

    Example:
        >>> from gbs_loss.priors import RelaxedBernoulli
        >>> prior = RelaxedBernoulli(torch.tensor([0.5, 0.2]), temperature=torch.tensor([1.0, 0.5]))
        >>> prior.cdf(torch.tensor([0.25, 0.5]))
        tensor([0.2500, 0.8000])
        >>> prior.rsample((4,)).shape
        torch.Size([4, 2])
    """

    def __init__(
        self,
        mean: Tensor | float | None = None,
        temperature: Tensor | float = 1.0,
        *,
        logits: Tensor | float | None = None,
        validate_args: bool | None = True,
    ) -> None:
        owner = type(self).__name__
        validate = _resolve_validate(owner, validate_args)
        if (mean is None) == (logits is None):
            raise ValueError(
                f"{owner}: give exactly one of mean and logits, got {'both' if mean is not None else 'neither'}"
            )
        given_name = "mean" if mean is not None else "logits"
        given = mean if mean is not None else logits
        params = _parameters(owner, **{given_name: given, "temperature": temperature})
        m, t = params[given_name], params["temperature"]
        if validate:
            if given_name == "mean":
                _check_constraint(owner, "mean", m, _OPEN_UNIT, "in (0, 1)")
            else:
                _check_constraint(owner, "logits", m, constraints.real, "finite")
            _check_constraint(owner, "temperature", t, constraints.positive, "> 0 and finite")
        self._names = (given_name, "temperature")
        self._given_mean = given_name == "mean"
        # torch takes the batch shape from the mean alone: hand it the mean broadcast against the temperature.
        shape = broadcast_shapes(m.shape, t.shape)
        torch_m = _for_torch(given, m)
        if isinstance(torch_m, Tensor) and torch_m.shape != shape:
            torch_m = torch_m.expand(shape)
        elif not isinstance(torch_m, Tensor) and shape != torch.Size():
            torch_m = torch.full(shape, torch_m, dtype=t.dtype, device=t.device)
        torch_t = (
            t if isinstance(temperature, Tensor) else torch.tensor(float(temperature), dtype=torch.get_default_dtype())
        )
        # torch's base distribution (a LogitRelaxedBernoulli) is built on first use only (sampling, say): the CDF
        # and the losses never need it, and a learned prior is built on every training step.
        self._torch_args = (torch_t, torch_m)
        self._base: LogitRelaxedBernoulli | None = None
        self.transforms = [SigmoidTransform()]
        self._validate_args = False
        td.Distribution.__init__(self, shape, torch.Size())
        self._validate_args = validate
        self._exact = (m, t)

    @property  # type: ignore[override]
    def base_dist(self) -> LogitRelaxedBernoulli:
        """torch's base distribution, the logit of this one (built on first use)."""
        if self._base is None:
            temperature, given = self._torch_args
            self._base = _unvalidated(
                LogitRelaxedBernoulli,
                temperature,
                probs=given if self._given_mean else None,
                logits=None if self._given_mean else given,
            )
        return self._base

    @base_dist.setter
    def base_dist(self, value: LogitRelaxedBernoulli) -> None:
        self._base = value

    def expand(self, batch_shape: Any, _instance: Any = None) -> RelaxedBernoulli:
        """torch's ``expand``; the expanded prior computes with torch's (expanded) parameters."""
        new = self._get_checked_instance(type(self), _instance)  # type: ignore[no-untyped-call]
        super().expand(batch_shape, _instance=new)  # type: ignore[no-untyped-call]
        new._names = self._names
        new._given_mean = self._given_mean
        new._exact = None
        return new  # type: ignore[no-any-return]

    def _torch_params(self) -> tuple[Tensor, ...]:
        base = self.base_dist
        return (base.probs if self._given_mean else base.logits), base.temperature

    @property
    def temperature(self) -> Tensor:
        r"""The temperature :math:`\lambda` (torch's ``temperature``) as given."""
        return self._params()[1]

    @property
    def logits(self) -> Tensor:
        r""":math:`\operatorname{logit}(m)` (torch's ``logits``), exact when the logits were given."""
        given = self._params()[0]
        return torch.logit(given) if self._given_mean else given

    @property
    def probs(self) -> Tensor:
        r"""The mean parameter :math:`m` (torch's ``probs``): :attr:`mean`."""
        return self.mean

    @property
    def mean(self) -> Tensor:
        r"""The ``mean`` parameter :math:`m = P(X > 1/2)` (torch's ``probs``; not :math:`E[X]`)."""
        given = self._params()[0]
        return given if self._given_mean else torch.sigmoid(given)

    def closed_form_cdf(self) -> ClosedFormCdf | None:
        """The closed-form CDF the losses fuse into one node (parameters ``(temperature, logits)``).

        ``None`` when a subclass redefines :meth:`cdf`: the losses then call that ``cdf``.
        """
        if type(self).cdf is not RelaxedBernoulli.cdf:
            return None
        return ClosedFormCdf(RELAXED_BERNOULLI_CDF, (self.temperature, self.logits))

    def cdf(self, value: Tensor | float) -> Tensor:
        r"""The CDF :math:`\sigma(\lambda \operatorname{logit} x - \operatorname{logit} m)`, exact at the ends.

        Differentiable with respect to ``value`` and both parameters (a hand-written backward: zero gradients
        at the ends, where the CDF is exactly 0 or 1). float16 and bfloat16 points are computed in float32.

        Args:
            value: Points; with validation they must lie in ``[0, 1]``.

        Returns:
            :math:`F(x)`, of the broadcast shape of ``value`` and :attr:`batch_shape`.
        """
        x = self._prepare(value)
        return closed_form_cdf(x, ClosedFormCdf(RELAXED_BERNOULLI_CDF, (self.temperature, self.logits)))

    def log_prob(self, value: Tensor | float) -> Tensor:
        """The log-density; ``-inf`` outside ``[0, 1]`` and the one-sided limit at the ends."""
        x = self._prepare(value, method="log_prob", check_support=False)
        t, u = self.temperature, self.logits
        xc = x.clamp(torch.finfo(x.dtype).tiny, 1.0 - torch.finfo(x.dtype).eps / 2)
        z = t * torch.logit(xc) - u
        inner = (
            torch.log(t)
            + torch.nn.functional.logsigmoid(z)
            + torch.nn.functional.logsigmoid(-z)
            - torch.log(xc)
            - torch.log1p(-xc)
        )
        inf = torch.full_like(inner, math.inf)
        # One-sided limits: the density behaves like t x^(t-1) e^(-u) at 0 and t (1-x)^(t-1) e^(u) at 1.
        at0 = torch.where(t < 1, inf, torch.where(t > 1, -inf, torch.log(t) - u))
        at1 = torch.where(t < 1, inf, torch.where(t > 1, -inf, torch.log(t) + u))
        out = torch.where(x == 0, at0, torch.where(x == 1, at1, inner))
        return torch.where((x < 0) | (x > 1), -inf, out)

    def icdf(self, value: Tensor | float) -> Tensor:
        r"""The quantile function :math:`\sigma\big((\operatorname{logit} p + \operatorname{logit} m)/\lambda\big)`.

        Args:
            value: Probabilities ``p``; with validation they must lie in ``[0, 1]``.
        """
        p = self._prepare_probabilities(value)
        return torch.sigmoid((torch.logit(p) + self.logits) / self.temperature)


class Normal(_PriorMixin, td.Normal):
    r"""The Normal distribution :math:`\mathcal{N}(\mu, \sigma^2)`, robust CDF: a :class:`torch.distributions.Normal`.

    .. math:: F(x) = \Phi\Big(\frac{x - \mu}{\sigma}\Big)

    computed as :math:`\tfrac12 \operatorname{erfc}\big((\mu - x) / (\sigma\sqrt2)\big)`, accurate in the
    tails, with a hand-written backward that stays finite for any valid parameters. Everything else is
    torch's. In Havtorn et al., "MSViT", ICCV Workshops 2023 (arXiv 2307.02321), its mean is the target
    fraction of image regions that use fine tokens and its scale how much positions may differ.

    Args:
        loc: Mean :math:`\mu` (finite); a number or a tensor (learnable or not).
        scale: Standard deviation :math:`\sigma > 0`; broadcasts with ``loc``.
        validate_args: Check the parameters here and that the points are not NaN in :meth:`cdf`; ``None``
            for torch's global default.

    Shape:
        - ``loc``, ``scale``: non-empty shapes that broadcast together (:attr:`batch_shape`).
        - ``cdf(x)``: ``x`` broadcasts against :attr:`batch_shape`.

    Example:
        >>> from gbs_loss.priors import Normal
        >>> Normal(0.3, 0.1).cdf(torch.tensor([0.3, 0.5]))
        tensor([0.5000, 0.9772])
    """

    _names = ("loc", "scale")

    def __init__(self, loc: Tensor | float, scale: Tensor | float, validate_args: bool | None = True) -> None:
        owner = type(self).__name__
        validate = _resolve_validate(owner, validate_args)
        params = _parameters(owner, loc=loc, scale=scale)
        loc_t, scale_t = params["loc"], params["scale"]
        if validate:
            _check_constraint(owner, "loc", loc_t, constraints.real, "finite")
            _check_constraint(owner, "scale", scale_t, constraints.positive, "> 0 and finite")
        self._validate_args = False  # see _unvalidated
        td.Normal.__init__(self, _for_torch(loc, loc_t), _for_torch(scale, scale_t))
        self._validate_args = validate
        self._exact = (loc_t, scale_t)

    def expand(self, batch_shape: Any, _instance: Any = None) -> Normal:
        """torch's ``expand``; the expanded prior computes with torch's (expanded) parameters."""
        new = self._get_checked_instance(type(self), _instance)  # type: ignore[no-untyped-call]
        super().expand(batch_shape, _instance=new)  # type: ignore[no-untyped-call]
        new._exact = None
        return new  # type: ignore[no-any-return]

    def _torch_params(self) -> tuple[Tensor, ...]:
        return self.loc, self.scale

    def closed_form_cdf(self) -> ClosedFormCdf | None:
        """The closed-form CDF the losses fuse into one node (parameters ``(loc, scale)``).

        ``None`` when a subclass redefines :meth:`cdf`: the losses then call that ``cdf``.
        """
        if type(self).cdf is not Normal.cdf:
            return None
        return ClosedFormCdf(NORMAL_CDF, self._params())

    def cdf(self, value: Tensor | float) -> Tensor:
        r""":math:`\Phi((x - \mu)/\sigma)`, differentiable with respect to ``value``, ``loc`` and ``scale``.

        Args:
            value: Points; with validation they must not be NaN.

        Returns:
            :math:`F(x)`, of the broadcast shape of ``value`` and :attr:`batch_shape`.
        """
        x = self._prepare(value)
        return closed_form_cdf(x, ClosedFormCdf(NORMAL_CDF, self._params()))

    def log_prob(self, value: Tensor | float) -> Tensor:
        r""":math:`-\tfrac12 z^2 - \log\sigma - \tfrac12\log 2\pi` with :math:`z = (x - \mu)/\sigma`."""
        x = self._prepare(value, method="log_prob", check_support=False)
        loc, scale = self._params()
        z = (x - loc) / scale
        return -0.5 * z * z - torch.log(scale) - 0.5 * math.log(2.0 * math.pi)

    def icdf(self, value: Tensor | float) -> Tensor:
        r""":math:`\mu + \sigma\,\Phi^{-1}(p)`.

        Args:
            value: Probabilities ``p``; with validation they must lie in ``[0, 1]``.
        """
        p = self._prepare_probabilities(value)
        loc, scale = self._params()
        out: Tensor = loc + scale * torch.special.ndtri(p)
        return out
