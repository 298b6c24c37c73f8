r"""Module forms of the Batch-Shaping losses.

* `BatchShaping` -- a fixed prior; a thin wrapper of `gbs_loss.functional.batch_shaping_loss`
  (Bejnordi, Blankevoort, Welling, "Batch-Shaping for Learning Conditional Channel Gated Networks",
  ICLR 2020).
* `GeneralizedBatchShaping` -- one learnable prior per position, a hyperprior on the learned means and
  an L1 term on the temperatures (Havtorn, Royer, Blankevoort, Ehteshami Bejnordi, "MSViT: Dynamic
  Mixed-Scale Tokenization for Vision Transformers", ICCV Workshops 2023, arXiv 2307.02321).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Real
from typing import Literal, TypeAlias

import torch
from torch import Tensor, nn

from gbs_loss._coerce import as_index, check_real
from gbs_loss._shapes import broadcast_shapes
from gbs_loss.functional import (
    ProcessGroupArg,
    Reduction,
    _check_distributed,
    _check_input,
    _check_options,
    _fused_loss,
    _prepare_batch,
    _shaping_loss,
    batch_shaping_loss,
    hyperprior_loss,
)
from gbs_loss.priors import RELAXED_BERNOULLI_CDF, Beta, ClosedFormCdf, Prior, RelaxedBernoulli

__all__ = ["BatchShaping", "GeneralizedBatchShaping"]

#: The families of learned priors of `GeneralizedBatchShaping`.
PriorFamily: TypeAlias = Literal["relaxed_bernoulli", "beta"]
_FAMILIES = ("relaxed_bernoulli", "beta")


class BatchShaping(nn.Module):
    r"""Batch-Shaping loss with a fixed prior, the module form of
    `batch_shaping_loss`.

    $$
    L = \frac{1}{D} \sum_{k=1}^{D} \frac{1}{N} \sum_{i=1}^{N}
        \Big( \frac{i}{N + 1} - F_k\big(x_{(i),k}\big) \Big)^2
    $$

    (Bejnordi, Blankevoort, Welling, ICLR 2020). See the function for the conventions.

    Args:
        prior: Any object with a differentiable ``cdf``, e.g. ``gbs_loss.priors.Beta(0.6, 0.4)``; its
            parameters broadcast against the positions. It is stored as given (not registered as a
            submodule or parameter).
        dim: The batch dimension; ``None`` flattens the input into one distribution.
        ties: Give tied samples the largest rank of their group.
        reduction: ``"mean"`` over positions, ``"sum"``, or ``"none"``.
        validate_args: Check that the input is finite (synchronises with an accelerator).
        distributed: Gather the batches of all data-parallel processes before computing the loss, so that
            the loss and the gradients are those of the whole batch (see
            `batch_shaping_loss`).
        process_group: The process group to gather over with ``distributed=True``; ``None`` for the default.

    Shape:
        - Input: $(N, *)$ for ``dim=0``.
        - Output: $()$, or $(*)$ for ``reduction="none"``.

    Example:
        >>> import torch
        >>> from gbs_loss import BatchShaping
        >>> from gbs_loss.priors import Beta
        >>> criterion = BatchShaping(Beta(0.6, 0.4))
        >>> gates = torch.rand(128, 16, requires_grad=True)
        >>> criterion(gates).backward()
        >>> gates.grad.shape
        torch.Size([128, 16])
    """

    def __init__(
        self,
        prior: Prior,
        dim: int | None = 0,
        ties: bool = False,
        reduction: Reduction = "mean",
        validate_args: bool = True,
        *,
        distributed: bool = False,
        process_group: ProcessGroupArg = None,
    ) -> None:
        super().__init__()
        _check_options(prior, dim, ties, reduction, validate_args)
        _check_distributed(distributed, process_group)
        self.prior = prior
        self.dim = dim
        self.ties = ties
        self.reduction = reduction
        self.validate_args = validate_args
        self.distributed = distributed
        self.process_group = process_group

    def forward(self, x: Tensor) -> Tensor:
        """The loss of the batch ``x`` (see the class docstring)."""
        return batch_shaping_loss(
            x,
            self.prior,
            self.dim,
            self.ties,
            self.reduction,
            self.validate_args,
            distributed=self.distributed,
            process_group=self.process_group,
        )

    def extra_repr(self) -> str:
        extra = ", distributed=True" if self.distributed else ""
        return f"prior={self.prior!r}, dim={self.dim}, ties={self.ties}, reduction={self.reduction!r}{extra}"


def _inverse_softplus(y: Tensor) -> Tensor:
    """``log(exp(y) - 1)`` for ``y > 0``, accurate for large and small ``y``."""
    return y + torch.log(-torch.expm1(-y))


def _check_weight(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    number = float(value)
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"{name} must be finite and >= 0, got {value}")
    return number


def _init_tensor(
    name: str, value: object, positions: tuple[int, ...], ok: Callable[[Tensor], Tensor], expected: str
) -> Tensor:
    """An initial value (number or tensor) broadcast to the positions, checked with ``ok``.

    The value is checked as given (in float64 for a number) and again in the parameters' dtype (the default
    dtype), so that a value that rounds to 0 or to infinity there is refused with the value received.
    """
    real = check_real(value, name)
    given = real.detach() if isinstance(real, Tensor) else torch.tensor(real, dtype=torch.float64)
    for t, note in ((given, ""), (given.to(torch.get_default_dtype()), f" in {torch.get_default_dtype()}")):
        good = ok(t)
        if not bool(good.all()):
            bad = given[~good].reshape(-1)[0].item() if given.dim() > 0 else given.item()
            shown = f"{bad:g}" if given.numel() == 1 else f"a tensor with values such as {bad:g}"
            rounded = f", which is {t[~good].reshape(-1)[0].item():g}{note}" if note else ""
            raise ValueError(f"{name} must be {expected}{note}, got {shown}{rounded}")
    t = given.to(torch.get_default_dtype())
    try:
        t = t.expand(positions).clone()
    except RuntimeError:
        raise ValueError(f"{name} of shape {tuple(t.shape)} does not broadcast to the positions {positions}") from None
    return t


def _show(value: object) -> str:
    """A received value, briefly."""
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}" if value.numel() != 1 else f"{value.item():g}"
    return repr(value)


def _check_positions(positions: object) -> tuple[int, ...]:
    """``positions`` as a non-empty tuple of positive ints (``numpy.int64`` and other integers accepted)."""
    message = f"positions must be a positive int or a non-empty tuple of positive ints, got {positions!r}"
    items = positions if isinstance(positions, (tuple, list)) else (positions,)
    if not items:
        raise ValueError(message)
    out = []
    for p in items:
        try:
            out.append(as_index(p, "positions", minimum=1))
        except (TypeError, ValueError):
            raise ValueError(message) from None
    return tuple(out)


class GeneralizedBatchShaping(nn.Module):
    r"""Generalized Batch-Shaping: one learned prior per position, shaped in turn by a hyperprior.

    For samples $x$ of shape $(N, *\text{positions})$ (``dim=0``) with $D$ positions,
    learned per-position priors $F_k(\,\cdot\,; \phi_k)$ and a hyperprior CDF $G$,

    $$
    L = w_p \underbrace{\frac{1}{D} \sum_{k=1}^{D} \frac{1}{N} \sum_{i=1}^{N}
        \Big( \frac{i}{N+1} - F_k(x_{(i),k}; \phi_k) \Big)^2}_{\text{prior}}
      + w_h \underbrace{\frac{1}{D} \sum_{j=1}^{D}
        \Big( \frac{j}{D+1} - G(m_{(j)}) \Big)^2}_{\text{hyperprior}}
      + w_t \underbrace{\frac{1}{D} \sum_{k=1}^{D} \lambda_k}_{\text{temperature}}
    $$

    where $m_{(1)} \le \dots \le m_{(D)}$ are the learned prior means sorted and $\lambda_k > 0$
    the temperatures (an L1 term: a small weight favours peaky, nearly binary priors and so binary gates).
    This is the loss of MSViT's gate (Havtorn, Royer, Blankevoort, Ehteshami Bejnordi, ICCV Workshops 2023,
    arXiv 2307.02321): each position of the gate grid may learn its own rate of fine tokens, while the
    hyperprior -- e.g. a Normal whose mean is the target fraction of fine tokens -- keeps the rates in check.
    Gradients reach the samples (through the prior densities) and the priors' parameters; the hyperprior is
    fixed.

    Priors (``prior``):

    * ``"relaxed_bernoulli"``: `RelaxedBernoulli` with mean
      $m_k = \sigma(u_k)$ and temperature $\lambda_k = \operatorname{softplus}(r_k)$, parameters
      ``mean_logits`` $u$ and ``raw_temperatures`` $r$.
    * ``"beta"``: `Beta` with mean $m_k = \sigma(u_k)$ and concentration
      $c_k = a_k + b_k = \operatorname{softplus}(r_k)$ (so $a_k = m_k c_k$,
      $b_k = (1 - m_k) c_k$), parameters ``mean_logits`` and ``raw_concentrations``; the temperature
      term then applies to the concentrations (a small concentration, too, puts the mass near 0 and 1).

    The parametrisation has no constraints, so any optimiser can train it. The defaults start every prior
    as the uniform distribution (mean 1/2, temperature 1 or concentration 2), which commits to nothing.

    After each forward, `components` holds the detached terms ``"prior"``, ``"hyperprior"``,
    ``"temperature"`` (unweighted) and ``"total"`` for logging, without synchronising with an accelerator.

    Args:
        positions: The shape of the positions, an int or a tuple, e.g. ``49`` or ``(7, 7)``.
        prior: ``"relaxed_bernoulli"`` (MSViT) or ``"beta"``.
        hyperprior: Any object with a differentiable ``cdf`` and scalar parameters acting on the learned
            means, e.g. ``gbs_loss.priors.Normal(0.3, 0.1, validate_args=False)`` or
            ``gbs_loss.priors.Beta(3.0, 7.0)``; ``None`` for no hyperprior term. Stored as given.
        init_mean: Initial means in ``(0, 1)``, a number or a tensor broadcasting to ``positions``.
        init_temperature: Initial temperatures ``> 0`` (Relaxed Bernoulli only); ``None`` for 1.
        init_concentration: Initial concentrations $a + b > 0$ (Beta only); ``None`` for 2.
        prior_weight: $w_p \ge 0$.
        hyperprior_weight: $w_h \ge 0$.
        temperature_weight: $w_t \ge 0$; 0 (the default) leaves the temperatures free.
        dim: The batch dimension of the input.
        ties: Give tied samples the largest rank of their group (in both terms).
        validate_args: Check that the input lies in ``[0, 1]``, the support of the learned priors (reads values:
            synchronises with an accelerator). The hyperprior's own checks are governed by its own
            ``validate_args``.
        distributed: Gather the batches of all data-parallel processes for the prior term, so that the loss
            and every gradient are those of one process on the whole batch (see
            `batch_shaping_loss`). The module must then live inside the
            `DistributedDataParallel`-wrapped model, so that its learned priors
            start equal on every process and DDP averages their gradients; the hyperprior and temperature
            terms act on those replicated parameters and need no gather.
        process_group: The process group to gather over with ``distributed=True``; ``None`` for the default.

    Shape:
        - Input: $(N, *\text{positions})$ for ``dim=0``; in general the batch along ``dim`` and the
          remaining dimensions broadcasting from ``positions``.
        - Output: $()$.

    Example:
        >>> import torch
        >>> from gbs_loss import GeneralizedBatchShaping
        >>> from gbs_loss.priors import Normal
        >>> gbas = GeneralizedBatchShaping((7, 7), hyperprior=Normal(0.3, 0.1), temperature_weight=0.01)
        >>> gates = torch.rand(32, 7, 7, requires_grad=True)
        >>> loss = gbas(gates)
        >>> loss.backward()
        >>> sorted(gbas.components), gbas.means.shape, gbas.temperatures.shape
        (['hyperprior', 'prior', 'temperature', 'total'], torch.Size([7, 7]), torch.Size([7, 7]))
    """

    components: dict[str, Tensor]

    def __init__(
        self,
        positions: int | tuple[int, ...],
        prior: PriorFamily = "relaxed_bernoulli",
        hyperprior: Prior | None = None,
        *,
        init_mean: float | Tensor = 0.5,
        init_temperature: float | Tensor | None = None,
        init_concentration: float | Tensor | None = None,
        prior_weight: float = 1.0,
        hyperprior_weight: float = 1.0,
        temperature_weight: float = 0.0,
        dim: int = 0,
        ties: bool = False,
        validate_args: bool = True,
        distributed: bool = False,
        process_group: ProcessGroupArg = None,
    ) -> None:
        super().__init__()
        self.positions = _check_positions(positions)
        if prior not in _FAMILIES:
            raise ValueError(f"prior must be one of {_FAMILIES}, got {prior!r}")
        unused = "init_concentration" if prior == "relaxed_bernoulli" else "init_temperature"
        unused_value = init_concentration if prior == "relaxed_bernoulli" else init_temperature
        if unused_value is not None:
            used = "init_temperature" if prior == "relaxed_bernoulli" else "init_concentration"
            raise ValueError(
                f"{unused} is not used by prior={prior!r} (use {used}), got {unused}={_show(unused_value)}"
            )
        self.family = prior
        if hyperprior is not None:
            _check_options(hyperprior, None, ties, "mean", validate_args, prior_name="hyperprior")
            if math.prod(self.positions) < 2:
                raise ValueError(f"a hyperprior needs at least 2 positions to shape, got positions {self.positions}")
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"dim must be an int, got {type(dim).__name__}")
        _check_options(None, dim, ties, "mean", validate_args, check_prior=False)
        _check_distributed(distributed, process_group)
        self.hyperprior = hyperprior
        self.prior_weight = _check_weight("prior_weight", prior_weight)
        self.hyperprior_weight = _check_weight("hyperprior_weight", hyperprior_weight)
        self.temperature_weight = _check_weight("temperature_weight", temperature_weight)
        self.dim = dim
        self.ties = ties
        self.validate_args = validate_args
        self.distributed = distributed
        self.process_group = process_group

        mean = _init_tensor("init_mean", init_mean, self.positions, lambda t: (t > 0) & (t < 1), "in (0, 1)")
        self.mean_logits = nn.Parameter(torch.logit(mean))
        if prior == "relaxed_bernoulli":
            spread = _init_tensor(
                "init_temperature",
                1.0 if init_temperature is None else init_temperature,
                self.positions,
                lambda t: (t > 0) & torch.isfinite(t),
                "> 0 and finite",
            )
            self.raw_temperatures = nn.Parameter(_inverse_softplus(spread))
        else:
            spread = _init_tensor(
                "init_concentration",
                2.0 if init_concentration is None else init_concentration,
                self.positions,
                lambda t: (t > 0) & torch.isfinite(t),
                "> 0 and finite",
            )
            self.raw_concentrations = nn.Parameter(_inverse_softplus(spread))
        self.components = {}

    # -- the learned priors ---------------------------------------------------------------------------------
    @property
    def means(self) -> Tensor:
        r"""The learned prior means $\sigma(u)$, shape ``positions`` (differentiable).

        Example:
            >>> GeneralizedBatchShaping(3, init_mean=0.25).means.detach()
            tensor([0.2500, 0.2500, 0.2500])
        """
        return torch.sigmoid(self.mean_logits)

    @property
    def temperatures(self) -> Tensor | None:
        """The learned temperatures, shape ``positions`` (differentiable); ``None`` for the Beta prior.

        Example:
            >>> GeneralizedBatchShaping(3, init_temperature=0.5).temperatures.detach()
            tensor([0.5000, 0.5000, 0.5000])
            >>> GeneralizedBatchShaping(3, prior="beta").temperatures is None
            True
        """
        if self.family != "relaxed_bernoulli":
            return None
        return nn.functional.softplus(self.raw_temperatures)

    @property
    def concentrations(self) -> Tensor | None:
        """The learned concentrations ``a + b``, shape ``positions``; ``None`` for the Relaxed Bernoulli.

        Example:
            >>> GeneralizedBatchShaping(3, prior="beta").concentrations.detach()
            tensor([2., 2., 2.])
            >>> GeneralizedBatchShaping(3).concentrations is None
            True
        """
        if self.family != "beta":
            return None
        return nn.functional.softplus(self.raw_concentrations)

    def prior(self) -> Prior:
        """The current learned priors as one prior object with parameters of shape ``positions``.

        Its parameters are differentiable functions of the module's parameters; argument validation is off
        (the parametrisation keeps them valid).

        Example:
            >>> import torch
            >>> prior = GeneralizedBatchShaping(3, prior="beta").prior()  # uniform at the start
            >>> type(prior).__name__, prior.cdf(torch.tensor([0.25])).detach()
            ('Beta', tensor([0.2500, 0.2500, 0.2500]))
        """
        return self._learned()[0]

    def _learned(self) -> tuple[Prior, Tensor]:
        """The learned prior and its spread parameters (temperatures or concentrations)."""
        spread = self._spread()
        return self._prior_from(spread), spread

    def _spread(self) -> Tensor:
        return nn.functional.softplus(
            self.raw_temperatures if self.family == "relaxed_bernoulli" else self.raw_concentrations
        )

    def _prior_from(self, spread: Tensor) -> RelaxedBernoulli | Beta:
        if self.family == "relaxed_bernoulli":
            return RelaxedBernoulli(logits=self.mean_logits, temperature=spread, validate_args=False)
        u = self.mean_logits
        # A mean or a concentration near 0 can make a = m c underflow to 0, outside the Beta's domain:
        # keep both shape parameters at least the smallest normal number of the dtype.
        tiny = torch.finfo(u.dtype).tiny
        a = (torch.sigmoid(u) * spread).clamp_min(tiny)
        b = (torch.sigmoid(-u) * spread).clamp_min(tiny)
        return Beta(a, b, validate_args=False)

    # -- the loss -------------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """The total loss of the batch ``x``; the terms are left in `components`."""
        dim = _check_input(x, self.dim, self.validate_args, check_batch=False)
        assert dim is not None  # self.dim is an int
        found = x.shape[:dim] + x.shape[dim + 1 :]
        try:
            ok = broadcast_shapes(found, self.positions) == found
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(
                f"x of shape {tuple(x.shape)} has positions {tuple(found)} (its shape without dim "
                f"{dim}), which do not match the module's positions {self.positions}"
            )
        if x.device != self.mean_logits.device:
            raise ValueError(
                f"x is on device {x.device} but the module's parameters are on {self.mean_logits.device}; "
                f"move one of them (e.g. module.to(x.device))"
            )
        # Both families of learned priors live on [0, 1]: values outside (say logits passed instead of
        # sigmoids) are an error worth reporting.
        x, dim = _prepare_batch(x, dim, self.validate_args, self.distributed, self.process_group, support=(0.0, 1.0))
        assert dim is not None
        spread = self._spread()
        if self.family == "relaxed_bernoulli" and not self.ties:
            # The fused path straight from the parameters: no distribution object to build on every step.
            closed = ClosedFormCdf(RELAXED_BERNOULLI_CDF, (spread, self.mean_logits))
            prior_term = _fused_loss(x, None, closed, dim, "mean", self.validate_args, "prior")
        else:
            prior_term = _shaping_loss(
                x, self._prior_from(spread), dim, self.ties, "mean", nonnegative=self.validate_args
            )
        total = prior_term if self.prior_weight == 1 else self.prior_weight * prior_term
        if self.hyperprior is not None:
            hyper_term = hyperprior_loss(self.means, self.hyperprior, ties=self.ties, validate_args=False)
            if self.hyperprior_weight != 0:
                total = torch.add(total, hyper_term, alpha=self.hyperprior_weight)
        else:
            hyper_term = prior_term.new_zeros(())
        if self.temperature_weight != 0:
            temp_term = spread.mean()
            total = torch.add(total, temp_term, alpha=self.temperature_weight)
        else:
            temp_term = spread.detach().mean()
        self.components = {
            "prior": prior_term.detach(),
            "hyperprior": hyper_term.detach(),
            "temperature": temp_term.detach(),
            "total": total.detach(),
        }
        return total

    def extra_repr(self) -> str:
        return (
            f"positions={self.positions}, prior={self.family!r}, hyperprior={self.hyperprior!r}, "
            f"prior_weight={self.prior_weight}, hyperprior_weight={self.hyperprior_weight}, "
            f"temperature_weight={self.temperature_weight}, dim={self.dim}, ties={self.ties}"
            + (", distributed=True" if self.distributed else "")
        )
