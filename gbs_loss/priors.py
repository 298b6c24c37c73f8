r"""Priors for (Generalized) Batch-Shaping: distributions with a differentiable CDF.

Every prior has a :meth:`~Prior.cdf` that is differentiable with respect to the points *and* to every
parameter, so its parameters can be learned (Generalized Batch-Shaping, Havtorn, Royer, Blankevoort,
Ehteshami Bejnordi, "MSViT: Dynamic Mixed-Scale Tokenization for Vision Transformers", ICCV Workshops 2023,
arXiv 2307.02321). Parameters are Python numbers or tensors, learnable or not; tensors are used as given (not
copied), so gradients reach them. Their shapes broadcast together and, in the losses, against the positions
(every index of the input except the batch dimension).

* :class:`Beta` -- :math:`\mathrm{Beta}(a, b)`, the prior of the original Batch-Shaping loss (Bejnordi,
  Blankevoort, Welling, "Batch-Shaping for Learning Conditional Channel Gated Networks", ICLR 2020), whose
  CDF is :func:`gbs_loss.betainc` with exact gradients for :math:`x`, :math:`a` and :math:`b`;
* :class:`SymmetricBeta` -- :math:`\mathrm{Beta}(a, 1 - a)`, one parameter, the mean;
* :class:`RelaxedBernoulli` -- the binary concrete distribution of MSViT's learned per-position priors;
* :class:`Normal` -- :math:`\mathcal{N}(\mu, \sigma^2)`, MSViT's hyperprior on the learned means.

Any other object with a differentiable ``cdf`` (a :mod:`torch.distributions` instance, say) works as well.

Argument validation follows :mod:`torch.distributions`: with ``validate_args=True`` (the default) the
constructor checks the parameters' ranges and :meth:`~Prior.cdf` checks that the points lie in the support,
raising a ``ValueError`` that names the argument, the expected range and the value received. These checks
read tensor values and therefore synchronise with an accelerator; ``validate_args=False`` skips them. Without
validation the CDF of the bounded priors is still the mathematical one outside the open support: 0 at and
below the lower end, 1 at and above the upper end, with zero gradient there; NaN points give NaN.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor

from gbs_loss._shapes import broadcast_shapes
from gbs_loss.special import beta_log_prob, betainc

__all__ = ["Beta", "Normal", "Prior", "RelaxedBernoulli", "SymmetricBeta"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _as_param(owner: str, name: str, value: Tensor | float) -> Tensor:
    """Turn a parameter into a floating tensor, keeping floating tensors as they are (so gradients flow)."""
    if isinstance(value, Tensor):
        if value.dtype == torch.bool or value.is_complex():
            raise TypeError(
                f"{owner}: {name} must be a real number or a real tensor, got a tensor of dtype {value.dtype}"
            )
        if not value.is_floating_point():
            return value.to(torch.get_default_dtype())
        return value
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{owner}: {name} must be a real number or a real tensor, got {type(value).__name__}")
    # float64 keeps the number exact; as a 0-dimensional tensor it does not promote the points' dtype.
    return torch.tensor(float(value), dtype=torch.float64)


def _describe(value: Tensor, bad: Tensor) -> str:
    """Describe the received value of a failed check for an error message."""
    value = value.detach()
    if value.numel() == 1:
        return f"{value.reshape(()).item():g}"
    first = value[bad].reshape(-1)[0].item()
    return f"a tensor of shape {tuple(value.shape)} with {int(bad.sum())} value(s) out of range (for example {first:g})"


def _check_range(owner: str, name: str, value: Tensor, ok: Tensor, expected: str) -> None:
    """Raise a ``ValueError`` naming ``name`` unless ``ok`` holds everywhere (reads values: synchronises).

    A tensor on the ``meta`` device has no values and passes.
    """
    if ok.device.type == "meta":
        return
    bad = ~ok
    if bool(bad.any()):
        raise ValueError(f"{owner}: {name} must be {expected}, got {_describe(value, bad)}")


def _within(x: Tensor, lo: float, hi: float, closed: bool = True) -> bool:
    """Whether every value of ``x`` lies in ``[lo, hi]`` (``(lo, hi)`` unless ``closed``); NaN fails.

    One fused min/max reduction and one host read, instead of a comparison mask per bound. True for an empty
    tensor and for a tensor on the ``meta`` device (it has no values).
    """
    if x.device.type == "meta" or x.numel() == 0:
        return True
    lowest, highest = torch.aminmax(x.detach().reshape(-1))
    ok = (lowest >= lo) & (highest <= hi) if closed else (lowest > lo) & (highest < hi)
    return bool(ok)


def _check_devices(owner: str, **tensors: Tensor) -> None:
    """All tensors on one device, except 0-dimensional CPU tensors (Python numbers), which go anywhere."""
    placed = {name: t.device for name, t in tensors.items() if not (t.dim() == 0 and t.device.type == "cpu")}
    if len(set(placed.values())) > 1:
        found = ", ".join(f"{name} on {device}" for name, device in placed.items())
        raise ValueError(f"{owner}: all tensors must be on one device, got {found}")


def _compute_dtype(x: Tensor, *params: Tensor) -> torch.dtype:
    """Dtype of a computation on ``x`` and ``params``: promoted like torch, never below float32."""
    dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    for p in params:
        # Zero-dimensional parameters (Python numbers) do not promote, as in torch's own type promotion.
        if p.dim() > 0:
            dtype = torch.promote_types(dtype, p.dtype)
    if dtype in _LOW_PRECISION:
        dtype = torch.float32
    return dtype


class Prior:
    """Base class of the priors: a distribution with a differentiable CDF.

    Subclasses set :attr:`support` and implement :meth:`_cdf` (and optionally :meth:`_log_prob`,
    :meth:`_icdf`) on points already converted to the computation dtype and validated.

    Args:
        validate_args: Check the parameters at construction and the points in :meth:`cdf`.
    """

    #: Closed support ``(lower, upper)`` of the distribution.
    support: tuple[float, float] = (-math.inf, math.inf)

    def __init__(self, validate_args: bool = True) -> None:
        if not isinstance(validate_args, bool):
            raise TypeError(f"{type(self).__name__}: validate_args must be a bool, got {type(validate_args).__name__}")
        self.validate_args = validate_args

    # -- to be provided by subclasses -------------------------------------------------------------------
    def _params(self) -> tuple[Tensor, ...]:
        raise NotImplementedError

    def _cdf(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _log_prob(self, x: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no log_prob")

    def _icdf(self, p: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no closed-form icdf")

    # -- public API ----------------------------------------------------------------------------------------
    @property
    def batch_shape(self) -> torch.Size:
        """Broadcast shape of the parameters."""
        return broadcast_shapes(*(p.shape for p in self._params()))

    @property
    def mean(self) -> Tensor:
        """The prior's mean (for :class:`RelaxedBernoulli`, its ``mean`` parameter; see there)."""
        raise NotImplementedError

    def _prepare(self, x: Tensor | float, name: str, check_support: bool) -> Tensor:
        owner = f"{type(self).__name__}.{'cdf' if name == 'x' else name}"
        params = self._params()
        if not isinstance(x, Tensor):
            if isinstance(x, bool) or not isinstance(x, Real):
                raise TypeError(f"{owner}: x must be a real tensor or number, got {type(x).__name__}")
            device = next((p.device for p in params if p.dim() > 0), None)
            x = torch.tensor(float(x), dtype=torch.get_default_dtype(), device=device)
        elif x.dtype == torch.bool or x.is_complex():
            raise TypeError(f"{owner}: x must be a real tensor, got dtype {x.dtype}")
        _check_devices(owner, x=x, **dict(zip(self._param_names(), params, strict=True)))
        dtype = _compute_dtype(x, *params)
        if x.dtype != dtype:
            x = _SaturatingCast.apply(x, dtype) if x.is_floating_point() else x.to(dtype)
        if self.validate_args and check_support:
            lo, hi = self.support
            if not _within(x, lo, hi):
                _check_range(owner, "x", x, (x >= lo) & (x <= hi), f"inside the support [{lo:g}, {hi:g}] (and not NaN)")
        return x

    def cdf(self, x: Tensor | float) -> Tensor:
        r"""Cumulative distribution function :math:`F(x) = P(X \le x)`.

        Differentiable with respect to ``x`` and to every parameter. float16 and bfloat16 points are
        computed in float32; the result has the promoted dtype of ``x`` and the non-scalar parameters.

        Args:
            x: Points; with ``validate_args`` they must lie in :attr:`support`.

        Returns:
            :math:`F(x)`, of the broadcast shape of ``x`` and :attr:`batch_shape`.
        """
        return self._cdf(self._prepare(x, "x", check_support=True))

    def log_prob(self, x: Tensor | float) -> Tensor:
        """Log-density at ``x`` (``-inf`` outside the support, the one-sided limit at its ends)."""
        return self._log_prob(self._prepare(x, "log_prob", check_support=False))

    def icdf(self, p: Tensor | float) -> Tensor:
        """Quantile function, the inverse of :meth:`cdf`, for probabilities ``p`` in ``[0, 1]``."""
        p = self._prepare(p, "icdf", check_support=False)
        if self.validate_args:
            _check_range(f"{type(self).__name__}.icdf", "p", p, (p >= 0) & (p <= 1), "in [0, 1]")
        return self._icdf(p)

    def __repr__(self) -> str:
        names = self._param_names()
        parts = []
        for name, value in zip(names, self._params(), strict=True):
            shown = f"{value.detach().item():g}" if value.numel() == 1 else f"<tensor of shape {tuple(value.shape)}>"
            parts.append(f"{name}={shown}")
        return f"{type(self).__name__}({', '.join(parts)})"

    def _param_names(self) -> tuple[str, ...]:
        raise NotImplementedError


def _check_broadcast(owner: str, **params: Tensor) -> None:
    """The parameters broadcast together and live on one device."""
    _check_devices(owner, **params)
    try:
        broadcast_shapes(*(p.shape for p in params.values()))
    except RuntimeError:
        shapes = ", ".join(f"{k} of shape {tuple(v.shape)}" for k, v in params.items())
        raise ValueError(f"{owner}: the parameters must broadcast together, got {shapes}") from None


class Beta(Prior):
    r"""The Beta distribution, the prior of the original Batch-Shaping loss.

    .. math::

        F(x; a, b) = I_x(a, b) = \frac{1}{B(a, b)} \int_0^x t^{a-1} (1 - t)^{b-1}\,dt, \qquad 0 \le x \le 1,

    computed by :func:`gbs_loss.betainc`, whose gradients with respect to :math:`x`, :math:`a` and :math:`b`
    are exact (no clipped density, no finite differences). Bejnordi, Blankevoort and Welling (ICLR 2020) used
    :math:`\mathrm{Beta}(0.6, 0.4)` for gates that should be off 40% of the time, mostly near 0 or 1.

    Args:
        a: First shape parameter, :math:`a > 0`; a number or a tensor (learnable or not).
        b: Second shape parameter, :math:`b > 0`; broadcasts with ``a``.
        validate_args: Check ``a, b > 0`` (finite) here and ``0 <= x <= 1`` in :meth:`cdf`. Without the
            check, points below 0 have CDF 0 and points above 1 have CDF 1 (zero gradient); invalid ``a`` or
            ``b`` give NaN.

    Shape:
        - ``a``, ``b``: shapes that broadcast together (:attr:`batch_shape`).
        - ``cdf(x)``: ``x`` broadcasts against :attr:`batch_shape`.

    Example:
        >>> import torch
        >>> from gbs_loss.priors import Beta
        >>> a = torch.tensor([0.6, 2.0], requires_grad=True)
        >>> prior = Beta(a, 0.4)
        >>> prior.cdf(torch.tensor([[0.5, 0.5]])).shape
        torch.Size([1, 2])
    """

    support = (0.0, 1.0)

    def __init__(self, a: Tensor | float, b: Tensor | float, validate_args: bool = True) -> None:
        super().__init__(validate_args)
        owner = type(self).__name__
        self.a = _as_param(owner, "a", a)
        self.b = _as_param(owner, "b", b)
        _check_broadcast(owner, a=self.a, b=self.b)
        if validate_args:
            _check_range(owner, "a", self.a, (self.a > 0) & torch.isfinite(self.a), "> 0 and finite")
            _check_range(owner, "b", self.b, (self.b > 0) & torch.isfinite(self.b), "> 0 and finite")

    def _params(self) -> tuple[Tensor, ...]:
        return self.a, self.b

    def _param_names(self) -> tuple[str, ...]:
        return ("a", "b")

    def _shape(self) -> tuple[Tensor, Tensor]:
        return self.a, self.b

    @property
    def mean(self) -> Tensor:
        """:math:`a / (a + b)`."""
        a, b = self._shape()
        return a / (a + b)

    def _cdf(self, x: Tensor) -> Tensor:
        a, b = self._shape()
        # clamp keeps NaN and has zero gradient outside [0, 1]: there the CDF is the constant 0 or 1.
        x = x.clamp(0.0, 1.0)
        # betainc computes in the promoted dtype of its arguments, which scalar float64 parameters can raise
        # above x's; cast x here so that its gradient (a density, possibly huge near the ends) saturates
        # instead of overflowing when it is cast back.
        dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), x.dtype)
        if dtype != x.dtype:
            return betainc(a, b, _SaturatingCast.apply(x, dtype)).to(x.dtype)
        return betainc(a, b, x)

    def _log_prob(self, x: Tensor) -> Tensor:
        a, b = self._shape()
        return beta_log_prob(x, a, b).to(x.dtype)


class SymmetricBeta(Beta):
    r"""The Beta distribution :math:`\mathrm{Beta}(a, 1 - a)`, parametrised by its mean :math:`a`.

    A one-parameter family whose two shape parameters sum to one: :math:`F(x) = I_x(a, 1 - a)`, mean
    :math:`a`, U-shaped with most mass near 0 and 1. The original Batch-Shaping prior
    :math:`\mathrm{Beta}(0.6, 0.4)` (Bejnordi, Blankevoort, Welling, ICLR 2020) is ``SymmetricBeta(0.6)``.
    Gradients with respect to ``a`` account for both shape parameters.

    Args:
        a: The mean, :math:`0 < a < 1`; a number or a tensor (learnable or not).
        validate_args: Check ``0 < a < 1`` here and ``0 <= x <= 1`` in :meth:`cdf`.

    Shape:
        - ``a``: any shape (:attr:`batch_shape`); ``cdf(x)``: ``x`` broadcasts against it.

    Example:
        >>> from gbs_loss.priors import SymmetricBeta
        >>> SymmetricBeta(0.6).cdf(torch.tensor([0.5]))
        tensor([0.3841])
    """

    def __init__(self, a: Tensor | float, validate_args: bool = True) -> None:
        Prior.__init__(self, validate_args)
        owner = type(self).__name__
        self.a = _as_param(owner, "a", a)
        if validate_args:
            _check_range(owner, "a", self.a, (self.a > 0) & (self.a < 1), "in (0, 1)")

    @property
    def b(self) -> Tensor:
        """The second shape parameter, :math:`1 - a`."""
        return 1.0 - self.a

    def _params(self) -> tuple[Tensor, ...]:
        return (self.a,)

    def _param_names(self) -> tuple[str, ...]:
        return ("a",)

    def _shape(self) -> tuple[Tensor, Tensor]:
        return self.a, 1.0 - self.a

    @property
    def mean(self) -> Tensor:
        """:math:`a`."""
        return self.a


class RelaxedBernoulli(Prior):
    r"""The Relaxed Bernoulli (binary concrete) distribution, MSViT's learned per-position gate prior.

    With :math:`m` the ``mean`` and :math:`\lambda` the ``temperature``, a sample is
    :math:`X = \sigma\big((\operatorname{logit} m + L)/\lambda\big)` with :math:`L` standard logistic, so

    .. math::

        F(x) = \sigma\big(\lambda \operatorname{logit}(x) - \operatorname{logit}(m)\big),
        \qquad 0 \le x \le 1.

    :math:`m = P(X > 1/2)` is the mean of the Bernoulli distribution that :math:`X` becomes as
    :math:`\lambda \to 0` (peaky, nearly binary values); a large temperature concentrates :math:`X` near
    1/2; :math:`m = 1/2, \lambda = 1` is the uniform distribution. (For other values :math:`E[X] \ne m`
    in general.) Used with learned :math:`m` and :math:`\lambda` per position by Havtorn et al., "MSViT",
    ICCV Workshops 2023, arXiv 2307.02321.

    Args:
        mean: :math:`m \in (0, 1)`; a number or a tensor (learnable or not). Give either ``mean`` or
            ``logits``.
        temperature: :math:`\lambda > 0`; broadcasts with the mean.
        logits: :math:`\operatorname{logit}(m)` instead of ``mean`` (any real value); avoids computing the
            logit of a sigmoid for parameters learned without constraints.
        validate_args: Check the parameters here and ``0 <= x <= 1`` in :meth:`cdf`. Without the check,
            points at or below 0 have CDF 0, at or above 1 have CDF 1 (zero gradient), NaN gives NaN.

    Shape:
        - ``mean`` (or ``logits``), ``temperature``: shapes that broadcast together (:attr:`batch_shape`).
        - ``cdf(x)``: ``x`` broadcasts against :attr:`batch_shape`.

    Example:
        >>> from gbs_loss.priors import RelaxedBernoulli
        >>> prior = RelaxedBernoulli(torch.tensor([0.5, 0.2]), temperature=torch.tensor([1.0, 0.5]))
        >>> prior.cdf(torch.tensor([0.25, 0.5]))
        tensor([0.2500, 0.8000])
    """

    support = (0.0, 1.0)

    def __init__(
        self,
        mean: Tensor | float | None = None,
        temperature: Tensor | float = 1.0,
        *,
        logits: Tensor | float | None = None,
        validate_args: bool = True,
    ) -> None:
        super().__init__(validate_args)
        owner = type(self).__name__
        if (mean is None) == (logits is None):
            raise ValueError(
                f"{owner}: give exactly one of mean and logits, got {'both' if mean is not None else 'neither'}"
            )
        self.temperature = _as_param(owner, "temperature", temperature)
        if mean is not None:
            self._mean = _as_param(owner, "mean", mean)
            self._logits = None
        else:
            self._logits = _as_param(owner, "logits", logits)
            self._mean = None
        _check_broadcast(
            owner,
            **{"mean" if mean is not None else "logits": self._given(), "temperature": self.temperature},
        )
        if validate_args:
            if self._mean is not None:
                _check_range(owner, "mean", self._mean, (self._mean > 0) & (self._mean < 1), "in (0, 1)")
            else:
                _check_range(owner, "logits", self._logits, torch.isfinite(self._logits), "finite")
            t = self.temperature
            _check_range(owner, "temperature", t, (t > 0) & torch.isfinite(t), "> 0 and finite")

    def _given(self) -> Tensor:
        return self._mean if self._mean is not None else self._logits

    @property
    def logits(self) -> Tensor:
        r""":math:`\operatorname{logit}(m)`."""
        return self._logits if self._logits is not None else torch.logit(self._mean)

    @property
    def mean(self) -> Tensor:
        r"""The ``mean`` parameter :math:`m = P(X > 1/2)`."""
        return self._mean if self._mean is not None else torch.sigmoid(self._logits)

    def _params(self) -> tuple[Tensor, ...]:
        return self._given(), self.temperature

    def _param_names(self) -> tuple[str, ...]:
        return ("mean" if self._mean is not None else "logits", "temperature")

    def _cdf(self, x: Tensor) -> Tensor:
        return _RelaxedBernoulliCdf.apply(x, self.temperature, self.logits)

    def _log_prob(self, x: Tensor) -> Tensor:
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

    def _icdf(self, p: Tensor) -> Tensor:
        return torch.sigmoid((torch.logit(p) + self.logits) / self.temperature)


def _relaxed_bernoulli_cdf(x: Tensor, t: Tensor, u: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
    """``sigmoid(t * logit(x) - u)`` and what its gradients need (shared with the fused loss)."""
    # eps=0 clamps x to [0, 1] inside the logit kernel (NaN stays NaN): logit is infinite at the ends.
    lx = torch.logit(x, eps=0.0)
    t_pos = t.clamp_min(torch.finfo(t.dtype).tiny)
    cdf = torch.sigmoid(torch.addcmul(-u, t_pos, lx))
    return cdf, (x, cdf, lx, t_pos)


def _relaxed_bernoulli_cdf_grads(
    grad: Tensor, saved: tuple[Tensor, ...], shapes: tuple[torch.Size, ...], dtypes: tuple, needs: tuple[bool, ...]
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of :func:`_relaxed_bernoulli_cdf`: for ``x`` elementwise (finite), for ``t`` and ``u`` summed
    to ``shapes`` and saturated to ``dtypes``."""
    x, cdf, lx, t_pos = saved
    # dF/dz = F (1 - F): exactly 0 at the ends, where F is exactly 0 or 1.
    gz = torch.ops.aten.sigmoid_backward(grad, cdf)
    gx = gt = gu = None
    if needs[0]:
        # dz/dx = t / (x (1 - x)), 0 outside [0, 1]; at the ends 0 / 0 = NaN, set to the convention 0.
        # A huge temperature makes the density overflow near the median: saturate there.
        big = torch.finfo(gz.dtype).max
        gx = torch.ops.aten.logit_backward(gz * t_pos, x, 0.0).nan_to_num_(nan=0.0, posinf=big, neginf=-big)
    if needs[1]:
        # dz/dt = logit(x), infinite at the ends where gz is 0: those NaN products count as 0.
        gt = _saturate(_sum_to_shape(gz * lx, shapes[0], nan_as_zero=True), dtypes[0])
    if needs[2]:
        gu = _saturate(_sum_to_shape(gz, shapes[1], nan_as_zero=False).neg(), dtypes[1])
    return gx, gt, gu


class _RelaxedBernoulliCdf(torch.autograd.Function):
    """``sigmoid(t * logit(x) - u)`` with exact ends and a hand-written backward (a small autograd graph).

    ``x`` is clamped to ``[0, 1]`` (NaN stays NaN). At the ends ``logit`` is infinite, so the CDF is exactly
    0 or 1 (``t`` is kept above 0 for this); the gradients with respect to ``x``, ``t`` and ``u`` are zero
    there. Four elementwise passes forward, about six backward.
    """

    @staticmethod
    def forward(ctx, x: Tensor, t: Tensor, u: Tensor) -> Tensor:
        cdf, saved = _relaxed_bernoulli_cdf(x, t, u)
        ctx.save_for_backward(*saved)
        ctx.x_shape = x.shape
        ctx.shapes = (t.shape, u.shape)
        ctx.dtypes = (t.dtype, u.dtype)
        return cdf

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        gx, gt, gu = _relaxed_bernoulli_cdf_grads(grad, ctx.saved_tensors, ctx.shapes, ctx.dtypes, ctx.needs_input_grad)
        return _x_grad(gx, ctx.x_shape), gt, gu


def _x_grad(gx: Tensor | None, shape: torch.Size) -> Tensor | None:
    """An elementwise gradient summed to the shape of the points (where they were broadcast), saturated."""
    if gx is None or gx.shape == shape:
        return gx
    return _saturate(_sum_to_shape(gx, shape, nan_as_zero=False), gx.dtype)


def _sum_to_shape(t: Tensor, shape: torch.Size, nan_as_zero: bool) -> Tensor:
    """Sum ``t`` over the dimensions along which ``shape`` was broadcast (optionally ignoring NaN)."""
    if t.shape == shape:
        return t.nan_to_num(nan=0.0, posinf=math.inf, neginf=-math.inf) if nan_as_zero else t
    lead = t.dim() - len(shape)
    dims = list(range(lead)) + [lead + i for i, n in enumerate(shape) if n == 1 and t.shape[lead + i] != 1]
    reduce = torch.nansum if nan_as_zero else torch.sum
    return reduce(t, dim=dims, keepdim=True).reshape(shape)


class Normal(Prior):
    r"""The Normal distribution :math:`\mathcal{N}(\mu, \sigma^2)`, MSViT's hyperprior on the learned means.

    .. math:: F(x) = \Phi\Big(\frac{x - \mu}{\sigma}\Big)

    computed as :math:`\tfrac12 \operatorname{erfc}\big((\mu - x) / (\sigma\sqrt2)\big)`, accurate in the
    tails. In Havtorn et al., "MSViT", ICCV
    Workshops 2023 (arXiv 2307.02321), its mean is the target fraction of image regions that use fine tokens
    and its scale how much positions may differ.

    Args:
        loc: Mean :math:`\mu` (finite); a number or a tensor (learnable or not).
        scale: Standard deviation :math:`\sigma > 0`; broadcasts with ``loc``.
        validate_args: Check the parameters here and that the points are not NaN in :meth:`cdf`.

    Shape:
        - ``loc``, ``scale``: shapes that broadcast together (:attr:`batch_shape`).
        - ``cdf(x)``: ``x`` broadcasts against :attr:`batch_shape`.

    Example:
        >>> from gbs_loss.priors import Normal
        >>> Normal(0.3, 0.1).cdf(torch.tensor([0.3, 0.5]))
        tensor([0.5000, 0.9772])
    """

    def __init__(self, loc: Tensor | float, scale: Tensor | float, validate_args: bool = True) -> None:
        super().__init__(validate_args)
        owner = type(self).__name__
        self.loc = _as_param(owner, "loc", loc)
        self.scale = _as_param(owner, "scale", scale)
        _check_broadcast(owner, loc=self.loc, scale=self.scale)
        if validate_args:
            _check_range(owner, "loc", self.loc, torch.isfinite(self.loc), "finite")
            _check_range(owner, "scale", self.scale, (self.scale > 0) & torch.isfinite(self.scale), "> 0 and finite")

    def _params(self) -> tuple[Tensor, ...]:
        return self.loc, self.scale

    def _param_names(self) -> tuple[str, ...]:
        return ("loc", "scale")

    @property
    def mean(self) -> Tensor:
        r""":math:`\mu`."""
        return self.loc

    def _cdf(self, x: Tensor) -> Tensor:
        return _NormalCdf.apply(x, self.loc, self.scale)

    def _log_prob(self, x: Tensor) -> Tensor:
        z = (x - self.loc) / self.scale
        return -0.5 * z * z - torch.log(self.scale) - 0.5 * math.log(2.0 * math.pi)

    def _icdf(self, p: Tensor) -> Tensor:
        return self.loc + self.scale * torch.special.ndtri(p)


def _normal_cdf(x: Tensor, loc: Tensor, scale: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
    """``Phi((x - loc) / scale)`` as ``erfc((loc - x) / (scale sqrt 2)) / 2`` and what its gradients need."""
    w = (loc - x) / (scale * math.sqrt(2.0))
    return 0.5 * torch.special.erfc(w), (w, scale)


def _normal_cdf_grads(
    grad: Tensor, saved: tuple[Tensor, ...], shapes: tuple[torch.Size, ...], dtypes: tuple, needs: tuple[bool, ...]
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of :func:`_normal_cdf`: for ``x`` elementwise (finite unless NaN), for ``loc`` and ``scale``
    summed to ``shapes`` and saturated to ``dtypes``."""
    w, scale = saved
    big = torch.finfo(w.dtype).max
    # phi(z) with z = -sqrt(2) w; exactly 0 where |w| is huge or infinite.
    phi = torch.exp(-w * w) * (1.0 / math.sqrt(2.0 * math.pi))
    gx = gloc = gscale = None
    if needs[0] or needs[1]:
        d = (grad * phi / scale).clamp(-big, big)  # clamp keeps NaN (from NaN points)
        gx = d if needs[0] else None
        if needs[1]:
            gloc = _saturate(_sum_to_shape(d, shapes[0], nan_as_zero=False).neg(), dtypes[0])
    if needs[2]:
        # z phi(z) is 0 where w is infinite (there 0 * inf would give NaN); NaN points keep NaN.
        z_phi = torch.where(torch.isinf(w), torch.zeros_like(w), w * (-math.sqrt(2.0)) * phi)
        d = (-(grad * z_phi) / scale).clamp(-big, big)
        gscale = _saturate(_sum_to_shape(d, shapes[1], nan_as_zero=False), dtypes[1])
    return gx, gloc, gscale


class _NormalCdf(torch.autograd.Function):
    r"""``Phi((x - loc) / scale)`` with a hand-written backward that stays finite for any valid parameters.

    The value is :math:`\tfrac12 \operatorname{erfc}\big((\mu - x) / (\sigma\sqrt2)\big)`, which keeps full
    relative precision in the lower tail (where ``torch.special.ndtr`` loses digits). Autograd of that
    expression gives NaN for a tiny scale: the derivative with respect to :math:`\sigma` multiplies a density
    that underflows to 0 by a ratio :math:`(x - \mu)/\sigma^2` that overflows. Here the derivatives are
    formed as :math:`\varphi(z)/\sigma` and :math:`-z\varphi(z)/\sigma` with :math:`z = (x - \mu)/\sigma`,
    products that vanish where :math:`z` is huge, and saturate at the dtype's largest value where the
    density itself exceeds it.
    """

    @staticmethod
    def forward(ctx, x: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
        cdf, saved = _normal_cdf(x, loc, scale)
        ctx.save_for_backward(*saved)
        ctx.x_shape = x.shape
        ctx.shapes = (loc.shape, scale.shape)
        ctx.dtypes = (loc.dtype, scale.dtype)
        return cdf

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        gx, gloc, gscale = _normal_cdf_grads(grad, ctx.saved_tensors, ctx.shapes, ctx.dtypes, ctx.needs_input_grad)
        return _x_grad(gx, ctx.x_shape), gloc, gscale


class _SaturatingCast(torch.autograd.Function):
    """``x.to(dtype)`` whose backward saturates the gradient at the largest value of ``x``'s dtype.

    A float32 gradient cast back to a float16 input overflows to infinity beyond 65504 (a steep density, say);
    it saturates instead, as the gradients of :func:`gbs_loss.betainc` do. NaN stays NaN.
    """

    @staticmethod
    def forward(ctx, x: Tensor, dtype: torch.dtype) -> Tensor:
        ctx.dtype = x.dtype
        return x.to(dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return _saturate(grad, ctx.dtype), None


def _saturate(t: Tensor, dtype: torch.dtype) -> Tensor:
    """Cast to ``dtype``, replacing overflow to infinity by the dtype's largest finite value (NaN stays)."""
    big = torch.finfo(dtype).max
    return t.to(dtype).nan_to_num(nan=math.nan, posinf=big, neginf=-big)
