"""Hostile inputs: what training runs throw at the public API.

Every call must end in one of two ways:

* a finite, correct result (checked against scipy where the problem is well conditioned), with finite
  gradients for every argument that requires them; or
* a ``ValueError`` / ``TypeError`` whose message names the offending argument.

Inputs are never mutated (values and version counters are compared before and after every call). The
exception is :func:`gbs_loss.betainc` and its relatives, whose documented contract is scipy's: NaN for
out-of-domain values, elementwise, with the valid elements of the same call unaffected.

The hypothesis profiles live in ``conftest.py``: a small one for the default run and an exhaustive one for
the tests marked ``slow``. The number of cases run is printed at the end of the session.

The Beta parameters are drawn from :math:`[10^{-3}, 10^5]`, the domain over which ``betainc`` is specified.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import mpmath
import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gbs_loss import (
    BatchShaping,
    GeneralizedBatchShaping,
    batch_shaping_loss,
    beta_log_prob,
    betainc,
    betaln,
    hyperprior_loss,
)
from gbs_loss.priors import Beta, Normal, RelaxedBernoulli, SymmetricBeta

F64 = torch.float64
FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
PROFILES = [
    pytest.param("gbs_hostile", id="default"),
    pytest.param("gbs_hostile_slow", id="exhaustive", marks=pytest.mark.slow),
]


def run(profile: str, strategy: st.SearchStrategy, check: Callable[[object], None]) -> None:
    """Run ``check`` on the examples of ``strategy`` under the hypothesis profile ``profile``."""
    settings.get_profile(profile)(given(strategy)(check))()


# ----------------------------------------------------------------------------------------------------------
# Helpers.
# ----------------------------------------------------------------------------------------------------------
class Untouched:
    """Records tensors and checks afterwards that neither their values nor their version counters changed."""

    def __init__(self, *objects: object) -> None:
        self.records = [(t, t.detach().clone(), t._version) for t in _tensors(objects) if t.device.type != "meta"]

    def check(self) -> None:
        for t, copy, version in self.records:
            assert t._version == version, "an input was modified in place"
            torch.testing.assert_close(t.detach(), copy, rtol=0, atol=0, equal_nan=True)


def _tensors(objects) -> list[torch.Tensor]:
    out = []
    for o in objects:
        if isinstance(o, torch.Tensor):
            out.append(o)
        elif isinstance(o, (list, tuple)):
            out.extend(_tensors(o))
    return out


def expect_error(call: Callable[[], object], *names: str) -> None:
    """``call`` raises a ValueError or TypeError whose message names one of ``names``."""
    try:
        call()
    except (ValueError, TypeError) as err:
        message = str(err)
        assert any(re.search(rf"(?<![\w.]){re.escape(n)}(?!\w)", message) for n in names), (names, message)
    else:
        raise AssertionError(f"no error raised; expected one naming {names}")


def all_finite(*tensors: torch.Tensor | None) -> bool:
    return all(t is None or bool(torch.isfinite(t).all()) for t in tensors)


def expit(v: np.ndarray) -> np.ndarray:
    return scipy.special.expit(v)


def log_uniform(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(math.log10(lo), math.log10(hi)).map(lambda e: 10.0**e)


# Sample values as training runs produce them: sigmoids of ordinary and of saturated logits (which round to
# exactly 0 or 1 in low precision), exact ends and values next to them.
UNIT_SPECIALS = [0.0, 1.0, 0.5, 1e-300, 1e-45, 1e-30, 1e-8, 1.0 - 1e-8, 1.0 - 2.0**-24, 1.0 - 2.0**-53]
LOGITS = st.one_of(
    st.floats(-8.0, 8.0),
    st.sampled_from([-1e30, -1e4, -100.0, -50.0, -20.0, 20.0, 50.0, 100.0, 1e4, 1e30]),
)
UNIT = st.one_of(LOGITS.map(lambda v: float(expit(v))), st.sampled_from(UNIT_SPECIALS))
BETA_PARAM = st.one_of(log_uniform(1e-3, 1e5), st.sampled_from([1e-3, 0.5, 1.0, 2.0, 1e5]))


# ----------------------------------------------------------------------------------------------------------
# Priors as specifications: our object and an independent scipy CDF.
# ----------------------------------------------------------------------------------------------------------
@dataclass
class PriorSpec:
    kind: str
    params: dict[str, np.ndarray]
    well_conditioned: bool
    as_numbers: bool = False
    leaves: list[torch.Tensor] = field(default_factory=list)

    def build(self, dtype: torch.dtype, requires_grad: bool):
        """The prior with parameters of ``dtype`` (or Python numbers); its tensors that require grad."""
        values = {}
        self.leaves = []
        for name, v in self.params.items():
            if self.as_numbers:
                values[name] = float(v)
            else:
                t = torch.tensor(v, dtype=dtype).requires_grad_(requires_grad)
                self.leaves.append(t)
                values[name] = t
        if self.kind == "beta":
            return Beta(values["a"], values["b"])
        if self.kind == "symmetric_beta":
            return SymmetricBeta(values["a"])
        if self.kind == "relaxed_bernoulli":
            return RelaxedBernoulli(values["mean"], values["temperature"])
        if self.kind == "relaxed_bernoulli_logits":
            return RelaxedBernoulli(logits=values["logits"], temperature=values["temperature"])
        return Normal(values["loc"], values["scale"])

    def scipy_cdf(self, v: np.ndarray, used: dict[str, np.ndarray]) -> np.ndarray:
        """CDF of the sorted samples ``v`` (batch first) with the parameters as actually used (rounded)."""
        p = used
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            if self.kind == "beta":
                return scipy.stats.beta.cdf(v, p["a"], p["b"])
            if self.kind == "symmetric_beta":
                return scipy.stats.beta.cdf(v, p["a"], 1.0 - p["a"])
            if self.kind.startswith("relaxed_bernoulli"):
                u = p["logits"] if "logits" in p else scipy.special.logit(p["mean"])
                z = p["temperature"] * (np.log(v) - np.log1p(-v)) - u
                return expit(z)
            return scipy.stats.norm.cdf(v, p["loc"], p["scale"])

    def used(self, dtype: torch.dtype) -> dict[str, np.ndarray]:
        if self.as_numbers:
            return {k: np.asarray(v, dtype=np.float64) for k, v in self.params.items()}
        return {k: torch.tensor(v, dtype=dtype).double().numpy() for k, v in self.params.items()}


@st.composite
def prior_specs(draw, d: int | None) -> PriorSpec:
    """A prior with scalar parameters (``d=None``) or scalar or per-position ones, moderate or extreme."""
    kind = draw(st.sampled_from(["beta", "symmetric_beta", "relaxed_bernoulli", "relaxed_bernoulli_logits", "normal"]))
    shape = () if d is None else draw(st.sampled_from([(), (d,)]))
    size = math.prod(shape)
    extreme = draw(st.booleans())

    def arr(strategy: st.SearchStrategy[float]) -> np.ndarray:
        return np.array(draw(st.lists(strategy, min_size=size, max_size=size)), dtype=np.float64).reshape(shape)

    if kind == "beta":
        ab = BETA_PARAM if extreme else log_uniform(1e-2, 1e2)
        params = {"a": arr(ab), "b": arr(ab)}
    elif kind == "symmetric_beta":
        params = {"a": arr(st.sampled_from([1e-6, 1e-3, 0.999, 1 - 1e-6]) if extreme else st.floats(0.05, 0.95))}
    elif kind == "relaxed_bernoulli":
        params = {
            "mean": arr(st.sampled_from([1e-30, 1e-6, 0.999, 1 - 1e-6]) if extreme else st.floats(0.05, 0.95)),
            "temperature": arr(log_uniform(1e-30, 1e30) if extreme else log_uniform(0.1, 10.0)),
        }
    elif kind == "relaxed_bernoulli_logits":
        logits = st.one_of(st.floats(-1e30, 1e30), st.sampled_from([-1e30, 1e30])) if extreme else st.floats(-4, 4)
        params = {
            "logits": arr(logits),
            "temperature": arr(log_uniform(1e-30, 1e30) if extreme else log_uniform(0.1, 10.0)),
        }
    else:
        params = {
            "loc": arr(st.floats(-1e30, 1e30) if extreme else st.floats(-2.0, 2.0)),
            "scale": arr(log_uniform(1e-30, 1e30) if extreme else log_uniform(0.05, 5.0)),
        }
    as_numbers = shape == () and draw(st.booleans())
    return PriorSpec(kind, params, well_conditioned=not extreme, as_numbers=as_numbers)


# ----------------------------------------------------------------------------------------------------------
# Samples in every layout.
# ----------------------------------------------------------------------------------------------------------
def make_samples(values: np.ndarray, dtype: torch.dtype, layout: str, requires_grad: bool):
    """``(x, leaf)``: samples of logical shape ``values.shape`` (N, D) in ``layout``, and the tensor that
    receives their gradient."""
    n, d = values.shape
    if layout == "contiguous":
        leaf = torch.tensor(values).to(dtype).requires_grad_(requires_grad)
        return leaf, leaf
    if layout == "transposed":
        leaf = torch.tensor(values.T.copy()).to(dtype).requires_grad_(requires_grad)
        return leaf.T, leaf
    if layout == "expanded":  # every sample is the first one: a batch of ties with stride 0
        leaf = torch.tensor(values[:1]).to(dtype).requires_grad_(requires_grad)
        return leaf.expand(n, d), leaf
    # strided: every other row of a larger tensor
    base = np.repeat(values, 2, axis=0)
    base[1::2] = 0.25
    leaf = torch.tensor(base).to(dtype).requires_grad_(requires_grad)
    return leaf[::2], leaf


@dataclass
class LossCase:
    values: np.ndarray
    dtype: torch.dtype
    layout: str
    dim: int | None
    prior: PriorSpec
    ties: bool
    reduction: str
    api: str
    x_grad: bool
    param_grad: bool


@st.composite
def loss_cases(draw) -> LossCase:
    n = draw(st.integers(2, 24))
    d = draw(st.integers(1, 4))
    values = np.array(draw(st.lists(UNIT, min_size=n * d, max_size=n * d)), dtype=np.float64).reshape(n, d)
    dim = draw(st.sampled_from([0, 1, None]))
    return LossCase(
        values=values,
        dtype=draw(st.sampled_from(FLOATS)),
        layout=draw(st.sampled_from(["contiguous", "transposed", "expanded", "strided"])),
        dim=dim,
        prior=draw(prior_specs(None if dim is None else d)),
        ties=draw(st.booleans()),
        reduction=draw(st.sampled_from(["mean", "sum", "none"])),
        api=draw(st.sampled_from(["function", "module"])),
        x_grad=draw(st.booleans()),
        param_grad=draw(st.booleans()),
    )


def reference_loss(x: np.ndarray, cdf: Callable[[np.ndarray], np.ndarray], ties: bool, reduction: str):
    """Independent numpy reference: x is (N, D) with the batch first."""
    n = x.shape[0]
    xs = np.sort(x, axis=0)
    if ties:
        ranks = np.stack([scipy.stats.rankdata(xs[:, k], method="max") for k in range(x.shape[1])], axis=1)
    else:
        ranks = np.broadcast_to(np.arange(1, n + 1)[:, None], xs.shape)
    per_position = np.mean((ranks / (n + 1) - cdf(xs)) ** 2, axis=0)
    if reduction == "none":
        return per_position
    return per_position.sum() if reduction == "sum" else per_position.mean()


# ----------------------------------------------------------------------------------------------------------
# The losses on valid input.
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("profile", PROFILES)
def test_losses_on_valid_hostile_input(profile: str, hostile_cases) -> None:
    def check(case: LossCase) -> None:
        hostile_cases["losses"] += 1
        param_dtype = F64 if case.dtype == F64 else torch.float32
        prior = case.prior.build(param_dtype, case.param_grad)
        x, leaf = make_samples(case.values, case.dtype, case.layout, case.x_grad)
        args = x.T if case.dim == 1 else x
        untouched = Untouched(args, leaf, case.prior.leaves)
        if case.api == "function":
            loss = batch_shaping_loss(args, prior, dim=case.dim, ties=case.ties, reduction=case.reduction)
        else:
            loss = BatchShaping(prior, dim=case.dim, ties=case.ties, reduction=case.reduction)(args)
        untouched.check()

        assert all_finite(loss), loss
        assert loss.dtype in (torch.float32, F64)
        positions = (case.values.shape[1],) if case.dim is not None else ()
        assert loss.shape == (positions if case.reduction == "none" else ())
        # Every term is a squared difference of two numbers in [0, 1].
        bound = math.prod(positions) if case.reduction == "sum" else 1
        assert bool((loss >= 0).all()) and bool((loss <= bound).all())

        # The gradient leaving the library is that of the tensor passed in (a layout's own backward, e.g. the
        # sum over an expanded dim in float16, is torch's business).
        leaves = ([x] if case.x_grad else []) + [t for t in case.prior.leaves if t.requires_grad]
        if leaves:
            grads = torch.autograd.grad(loss.sum(), leaves)
            assert all_finite(*grads), grads
            assert all(g.dtype == t.dtype and g.shape == t.shape for g, t in zip(grads, leaves, strict=True))
            untouched.check()

        if case.prior.well_conditioned:
            used = x.detach().double().numpy()
            if case.dim is None:
                used = used.reshape(-1, 1)
            params = case.prior.used(param_dtype)
            expected = reference_loss(used, lambda v: case.prior.scipy_cdf(v, params), case.ties, case.reduction)
            atol = 1e-9 if loss.dtype == F64 else 3e-5
            torch.testing.assert_close(
                loss.detach().double(), torch.tensor(expected).reshape(loss.shape), rtol=1e-4, atol=atol
            )

    run(profile, loss_cases(), check)


@st.composite
def generalized_cases(draw):
    n = draw(st.integers(2, 20))
    d = draw(st.integers(2, 5))
    family = draw(st.sampled_from(["relaxed_bernoulli", "beta"]))
    if family == "beta":
        mean = draw(
            st.lists(st.one_of(st.floats(1e-3, 1 - 1e-3), st.sampled_from([1e-3, 1 - 1e-3])), min_size=d, max_size=d)
        )
        spread = draw(st.lists(log_uniform(2e-3, 1e5), min_size=d, max_size=d))
    else:
        unit = st.one_of(st.floats(1e-6, 1 - 1e-6), st.sampled_from([1e-30, 1e-6, 1 - 1e-6]))
        mean = draw(st.lists(unit, min_size=d, max_size=d))
        spread = draw(st.lists(log_uniform(1e-30, 1e30), min_size=d, max_size=d))
    return {
        "values": np.array(draw(st.lists(UNIT, min_size=n * d, max_size=n * d)), dtype=np.float64).reshape(n, d),
        "family": family,
        "mean": mean,
        "spread": spread,
        "hyperprior": draw(st.sampled_from(["none", "normal", "beta", "torch_normal"])),
        "weights": draw(st.tuples(*[st.sampled_from([0.0, 0.01, 1.0, 1e3])] * 3)),
        "dtype": draw(st.sampled_from(FLOATS)),
        "layout": draw(st.sampled_from(["contiguous", "transposed", "expanded", "strided"])),
        "ties": draw(st.booleans()),
        "x_grad": draw(st.booleans()),
    }


@pytest.mark.parametrize("profile", PROFILES)
def test_generalized_batch_shaping_on_valid_hostile_input(profile: str, hostile_cases) -> None:
    hyperpriors = {
        "none": None,
        "normal": Normal(0.3, 0.1),
        "beta": Beta(3.0, 7.0),
        "torch_normal": torch.distributions.Normal(0.3, 0.1),
    }

    def check(case) -> None:
        hostile_cases["generalized"] += 1
        d = case["values"].shape[1]
        w_p, w_h, w_t = case["weights"]
        spread = "init_temperature" if case["family"] == "relaxed_bernoulli" else "init_concentration"
        module = GeneralizedBatchShaping(
            d,
            prior=case["family"],
            hyperprior=hyperpriors[case["hyperprior"]],
            init_mean=torch.tensor(case["mean"], dtype=F64),
            prior_weight=w_p,
            hyperprior_weight=w_h,
            temperature_weight=w_t,
            ties=case["ties"],
            **{spread: torch.tensor(case["spread"], dtype=F64)},
        )
        params = list(module.parameters())
        assert all_finite(*params)
        x, leaf = make_samples(case["values"], case["dtype"], case["layout"], case["x_grad"])
        untouched = Untouched(x, leaf, params)
        loss = module(x)
        untouched.check()
        assert loss.shape == () and all_finite(loss, *module.components.values()), module.components
        leaves = ([x] if case["x_grad"] else []) + params
        grads = torch.autograd.grad(loss, leaves)
        assert all_finite(*grads), grads
        untouched.check()
        # The components add up to the total.
        c = module.components
        total = w_p * c["prior"] + w_h * c["hyperprior"] + w_t * c["temperature"]
        torch.testing.assert_close(c["total"], total, rtol=1e-5, atol=1e-6)

    run(profile, generalized_cases(), check)


@pytest.mark.parametrize("profile", PROFILES)
def test_hyperprior_loss_on_valid_hostile_input(profile: str, hostile_cases) -> None:
    @st.composite
    def cases(draw):
        d = draw(st.integers(2, 30))
        values = draw(st.lists(st.one_of(UNIT, st.floats(-1e30, 1e30)), min_size=d, max_size=d))
        return values, draw(st.sampled_from(FLOATS)), draw(st.sampled_from(["normal", "beta"])), draw(st.booleans())

    def check(case) -> None:
        hostile_cases["hyperprior"] += 1
        values, dtype, kind, ties = case
        if kind == "beta":
            values = [min(max(v, 0.0), 1.0) for v in values]  # the Beta hyperprior's support
        params = torch.tensor(values, dtype=F64).to(dtype)
        if not bool(torch.isfinite(params).all()):  # float16 overflows: that is a bad input, tested below
            expect_error(lambda: hyperprior_loss(params, Normal(0.3, 0.1)), "params")
            return
        params.requires_grad_()
        hyper = Normal(0.3, 0.1) if kind == "normal" else Beta(3.0, 7.0)
        untouched = Untouched(params)
        loss = hyperprior_loss(params, hyper, ties=ties)
        (grad,) = torch.autograd.grad(loss, params)
        untouched.check()
        assert all_finite(loss, grad) and 0 <= float(loss.detach()) <= 1

    run(profile, cases(), check)


# ----------------------------------------------------------------------------------------------------------
# The losses on bad input: a clear error naming the argument.
# ----------------------------------------------------------------------------------------------------------
BAD_LOSS_INPUTS = [
    "nan",
    "inf",
    "-inf",
    "int",
    "bool",
    "complex",
    "list",
    "numpy",
    "number",
    "empty_batch",
    "no_positions",
    "single_sample",
    "scalar_tensor",
    "dim_out_of_range",
    "dim_float",
    "dim_bool",
    "ties_int",
    "reduction",
    "validate_args",
    "prior_without_cdf",
    "prior_shape",
    "outside_support",
    "devices",
    "distributed_str",
    "process_group_alone",
]


@pytest.mark.parametrize("profile", PROFILES)
def test_losses_on_bad_input_raise_naming_the_argument(profile: str, hostile_cases) -> None:
    @st.composite
    def cases(draw):
        n, d = draw(st.integers(2, 10)), draw(st.integers(1, 4))
        values = np.array(draw(st.lists(UNIT, min_size=n * d, max_size=n * d))).reshape(n, d)
        return (
            draw(st.sampled_from(BAD_LOSS_INPUTS)),
            values,
            draw(st.sampled_from(FLOATS)),
            draw(st.sampled_from(["function", "module", "generalized"])),
        )

    def check(case) -> None:
        hostile_cases["bad loss input"] += 1
        kind, values, dtype, api = case
        n, d = values.shape
        x = torch.tensor(values).to(dtype)
        prior = Beta(torch.full((d,), 0.6), 0.4)
        options: dict[str, object] = {}
        names: tuple[str, ...] = ("x",)
        if kind in ("nan", "inf", "-inf"):
            x = x.clone()
            x[n // 2, d - 1] = float(kind)
        elif kind in ("int", "bool", "complex"):
            x = x.to({"int": torch.int64, "bool": torch.bool, "complex": torch.complex64}[kind])
        elif kind == "list":
            x = values.tolist()
        elif kind == "numpy":
            x = values
        elif kind == "number":
            x = 0.5
        elif kind == "empty_batch":
            x = x[:0]
        elif kind == "no_positions":
            x = x[:, :0]
        elif kind == "single_sample":
            x = x[:1]
        elif kind == "scalar_tensor":
            x = x[0, 0]
        elif kind == "dim_out_of_range":
            options, names = {"dim": 2 if (n + d) % 2 else -3}, ("dim",)
        elif kind in ("dim_float", "dim_bool"):
            options, names = {"dim": 0.0 if kind == "dim_float" else True}, ("dim",)
        elif kind == "ties_int":
            options, names = {"ties": 1}, ("ties",)
        elif kind == "reduction":
            options, names = {"reduction": "average"}, ("reduction",)
        elif kind == "validate_args":
            options, names = {"validate_args": "yes"}, ("validate_args",)
        elif kind == "prior_without_cdf":
            prior, names = torch.distributions.Normal(0.0, 1.0).mean, ("prior",)
        elif kind == "prior_shape":
            prior, names = Beta(torch.full((d + 1,), 0.6), 0.4), ("prior",)
        elif kind == "outside_support":
            x = x.clone()
            x[0, 0] = 1.5
        elif kind == "devices":
            x = x.to("meta")
            names = ("x", "a")
        elif kind == "distributed_str":
            options, names = {"distributed": "yes"}, ("distributed",)
        else:
            options, names = {"process_group": object()}, ("process_group",)

        untouched = Untouched(x)
        # GeneralizedBatchShaping has no prior argument and no reduction: those kinds map to its own
        # counterparts (the hyperprior, its positions) or fall back to the function.
        counterpart = kind in ("prior_without_cdf", "prior_shape", "reduction", "devices")
        if api == "generalized" and not counterpart:
            expect_error(lambda: GeneralizedBatchShaping(d, **options)(x), *names)
        elif api == "generalized" and kind == "prior_without_cdf":
            expect_error(lambda: GeneralizedBatchShaping(d, hyperprior=prior), "hyperprior")
        elif api == "generalized" and kind == "prior_shape":
            expect_error(lambda: GeneralizedBatchShaping(d + 1)(x), "x")
        elif api == "generalized" and kind == "devices":
            expect_error(lambda: GeneralizedBatchShaping(d)(x), "x")
        elif api == "module":
            expect_error(lambda: BatchShaping(prior, **options)(x), *names)
        else:
            expect_error(lambda: batch_shaping_loss(x, prior, **options), *names)
        untouched.check()

    run(profile, cases(), check)


# ----------------------------------------------------------------------------------------------------------
# betainc, betaln, beta_log_prob.
# ----------------------------------------------------------------------------------------------------------
INVALID_PARAM = [math.nan, math.inf, -math.inf, 0.0, -0.0, -1.0, -1e-300]
INVALID_X = [math.nan, math.inf, -math.inf, -1e-300, -0.5, 1.5, 1.0 + 2.0**-52]
ARG_DTYPES = [*FLOATS, torch.int64]  # bool tensors are refused: test_betainc_rejects_bool_tensors
TOLERANCE = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 2e-6, F64: 1e-10}


def _as_dtype(values: list[float], dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.bool:
        return torch.tensor([v != 0 for v in values])
    if dtype == torch.int64:
        return torch.tensor([max(1, round(v)) if math.isfinite(v) and v > 0 else -1 for v in values])
    return torch.tensor(values, dtype=F64).to(dtype)


@st.composite
def betainc_cases(draw):
    k = draw(st.integers(1, 6))
    invalid = draw(st.booleans())
    a_values = st.one_of(BETA_PARAM, st.sampled_from(INVALID_PARAM)) if invalid else BETA_PARAM
    x_values = st.one_of(UNIT, st.sampled_from(INVALID_X)) if invalid else UNIT
    return {
        "a": draw(st.lists(a_values, min_size=k, max_size=k)),
        "b": draw(st.lists(a_values, min_size=k, max_size=k)),
        "x": draw(st.lists(x_values, min_size=3 * k, max_size=3 * k)),
        "dtypes": draw(st.tuples(*[st.sampled_from(ARG_DTYPES)] * 2, st.sampled_from(FLOATS))),
        "a_layout": draw(st.sampled_from(["row", "scalar", "expanded"])),
        "x_layout": draw(st.sampled_from(["contiguous", "transposed"])),
        "grads": draw(st.tuples(st.booleans(), st.booleans(), st.booleans())),
    }


@pytest.mark.parametrize("profile", PROFILES)
def test_betainc_on_hostile_input(profile: str, hostile_cases) -> None:
    def check(case) -> None:
        hostile_cases["betainc"] += 1
        a_dtype, b_dtype, x_dtype = case["dtypes"]
        a = _as_dtype(case["a"], a_dtype)
        b = _as_dtype(case["b"], b_dtype)
        k = a.numel()
        x = _as_dtype(case["x"], x_dtype).reshape(3, k)
        if case["x_layout"] == "transposed":
            x = x.T.contiguous().T
        if case["a_layout"] == "scalar":
            a = a[0]
        elif case["a_layout"] == "expanded":
            a = a[:1].expand(k)
        floats = [t.dtype for t in (a, b, x) if t.is_floating_point()]
        dtype = floats[0]
        for f in floats[1:]:
            dtype = torch.promote_types(dtype, f)
        # Gradients saturate at the largest value of the computation dtype; an argument of lower precision
        # gets its gradient cast back by torch without saturation, so only the gradients of arguments of the
        # result's dtype are checked for finiteness.
        leaves = []
        for t, wanted in zip((a, b, x), case["grads"], strict=True):
            if wanted and t.dtype == dtype:
                leaves.append(t.requires_grad_() if t.is_leaf else t)
        untouched = Untouched(a, b, x)
        out = betainc(a, b, x)
        untouched.check()
        assert out.dtype == dtype and out.shape == (3, k)
        a64, b64, x64 = (t.detach().to(dtype).double().expand(3, k).numpy() for t in (a, b, x))
        valid = (a64 > 0) & (b64 > 0) & np.isfinite(a64) & np.isfinite(b64) & (x64 >= 0) & (x64 <= 1)
        got = out.detach().double().numpy()
        # The documented contract: NaN exactly where the input is out of the domain, elementwise.
        assert np.array_equal(np.isnan(got), ~valid), (got, valid)
        # scipy loses digits next to x = 1; the reflection I_x(a, b) = 1 - I_{1-x}(b, a) with the exact
        # 1 - x (for x >= 1/2) keeps them.
        with np.errstate(invalid="ignore"):
            upper = x64 > 0.5
            expected = np.where(
                upper, 1.0 - scipy.special.betainc(b64, a64, 1.0 - x64), scipy.special.betainc(a64, b64, x64)
            )
        tol = TOLERANCE[dtype]
        np.testing.assert_allclose(got[valid], expected[valid], rtol=tol, atol=tol * 1e-2)
        assert ((got[valid] >= 0) & (got[valid] <= 1)).all()
        # Contiguous copies give the same bits (layout does not matter).
        same = betainc(a.detach().contiguous(), b.detach().contiguous(), x.detach().contiguous())
        torch.testing.assert_close(out.detach(), same, rtol=0, atol=0, equal_nan=True)
        if leaves and valid.all():
            grads = torch.autograd.grad(out.sum(), leaves)
            assert all_finite(*grads), grads
            untouched.check()

    run(profile, betainc_cases(), check)


def _mp_betaln(a: float, b: float) -> float:
    """log B(a, b) by mpmath, with enough digits for a + b to be exact and for Gamma of huge arguments."""
    lo, hi = sorted((float(a), float(b)))
    spread = math.log10(hi) - math.log10(lo)
    size = math.log10(hi) + math.log10(max(1.0, math.log(hi)))
    digits = 30 + max(0, int(spread)) + max(0, int(size))
    with mpmath.workdps(digits):
        return float(mpmath.log(mpmath.beta(mpmath.mpf(a), mpmath.mpf(b))))


@pytest.mark.parametrize("profile", PROFILES)
def test_betaln_on_hostile_input(profile: str, hostile_cases) -> None:
    @st.composite
    def cases(draw):
        dtype = draw(st.sampled_from(FLOATS))
        info = torch.finfo(dtype)
        positive = st.one_of(log_uniform(info.tiny, min(info.max, 1e300)), st.sampled_from([info.tiny, 1.0, 0.5]))
        values = st.one_of(positive, st.sampled_from(INVALID_PARAM)) if draw(st.booleans()) else positive
        k = draw(st.integers(1, 8))
        return dtype, draw(st.lists(values, min_size=k, max_size=k)), draw(st.lists(values, min_size=k, max_size=k))

    def check(case) -> None:
        hostile_cases["betaln"] += 1
        dtype, a_values, b_values = case
        a = torch.tensor(a_values, dtype=F64).to(dtype).requires_grad_()
        b = torch.tensor(b_values, dtype=F64).to(dtype)
        untouched = Untouched(a, b)
        out = betaln(a, b)
        untouched.check()
        a64, b64 = a.detach().double().numpy(), b.double().numpy()
        valid = (a64 > 0) & (b64 > 0) & np.isfinite(a64) & np.isfinite(b64)
        got = out.detach().double().numpy()
        assert out.dtype == dtype and np.array_equal(np.isnan(got), ~valid)
        # mpmath: scipy's betaln loses digits and overflows for huge arguments.
        expected = np.array([_mp_betaln(p, q) for p, q in zip(a64[valid], b64[valid], strict=True)])
        big = torch.finfo(dtype).max
        # Finite wherever the true value is representable; beyond, the overflow keeps its sign.
        representable = np.abs(expected) <= big * (1 - TOLERANCE[dtype])
        # Near its zeros (a or b close to 1) betaln is ill-conditioned: allow for the rounding of a and b,
        # eps * (|a d/da| + |b d/db|), besides the relative tolerance.
        av, bv = a64[valid][representable], b64[valid][representable]
        psi_ab = scipy.special.digamma(av + bv)
        conditioning = np.abs(av * (scipy.special.digamma(av) - psi_ab)) + np.abs(
            bv * (scipy.special.digamma(bv) - psi_ab)
        )
        err = np.abs(got[valid][representable] - expected[representable])
        allowed = TOLERANCE[dtype] * np.abs(expected[representable]) + 8 * torch.finfo(dtype).eps * conditioning
        assert (err <= allowed).all(), (av, bv, got[valid][representable], expected[representable])
        assert np.array_equal(got[valid][~representable], np.sign(expected[~representable]) * np.inf)
        if valid.all() and representable.all():
            (grad,) = torch.autograd.grad(out.sum(), a)
            assert all_finite(grad), grad

    run(profile, cases(), check)


@pytest.mark.parametrize("profile", PROFILES)
def test_beta_log_prob_on_hostile_input(profile: str, hostile_cases) -> None:
    @st.composite
    def cases(draw):
        k = draw(st.integers(1, 8))
        x_values = st.one_of(UNIT, st.sampled_from(INVALID_X))
        return (
            draw(st.sampled_from(FLOATS)),
            draw(st.lists(x_values, min_size=k, max_size=k)),
            draw(st.lists(st.one_of(BETA_PARAM, st.sampled_from(INVALID_PARAM)), min_size=k, max_size=k)),
            draw(st.lists(BETA_PARAM, min_size=k, max_size=k)),
        )

    def check(case) -> None:
        hostile_cases["beta_log_prob"] += 1
        dtype, x_values, a_values, b_values = case
        x, a, b = (torch.tensor(v, dtype=F64).to(dtype) for v in (x_values, a_values, b_values))
        untouched = Untouched(x, a, b)
        out = beta_log_prob(x, a, b)
        untouched.check()
        x64, a64, b64 = (t.double().numpy() for t in (x, a, b))
        got = out.double().numpy()
        valid = (a64 > 0) & np.isfinite(a64) & (b64 > 0) & np.isfinite(b64) & ~np.isnan(x64)
        assert np.array_equal(np.isnan(got), ~valid)
        outside = valid & ((x64 < 0) | (x64 > 1))
        assert (got[outside] == -np.inf).all()
        # Interior points: the log-density, finite where representable.
        inside = valid & (x64 > 0) & (x64 < 1)
        expected = scipy.stats.beta.logpdf(x64[inside], a64[inside], b64[inside])
        big = torch.finfo(dtype).max
        ok = np.abs(expected) < big * 0.99
        np.testing.assert_allclose(got[inside][ok], expected[ok], rtol=max(TOLERANCE[dtype], 1e-7), atol=1e-6)
        # Ends: +inf, log b (or log a) or -inf, the one-sided limits.
        for end, p, q in ((0.0, a64, b64), (1.0, b64, a64)):
            at = valid & (x64 == end)
            limit = np.where(p[at] < 1, np.inf, np.where(p[at] > 1, -np.inf, np.log(q[at])))
            np.testing.assert_allclose(got[at], limit, rtol=max(TOLERANCE[dtype], 1e-7))

    run(profile, cases(), check)


def test_hyperprior_loss_on_bad_input(hostile_cases) -> None:
    cases = [
        (lambda: hyperprior_loss(torch.tensor([0.2, math.nan, 0.4]), Normal(0.3, 0.1)), ("params",)),
        (lambda: hyperprior_loss(torch.tensor([0.2, math.inf]), Normal(0.3, 0.1)), ("params",)),
        (lambda: hyperprior_loss(torch.tensor([1, 2]), Normal(0.3, 0.1)), ("params",)),
        (lambda: hyperprior_loss(torch.tensor([0.3]), Normal(0.3, 0.1)), ("params",)),
        (lambda: hyperprior_loss(torch.zeros(0), Normal(0.3, 0.1)), ("params",)),
        (lambda: hyperprior_loss([0.2, 0.4], Normal(0.3, 0.1)), ("params",)),
        (lambda: hyperprior_loss(torch.rand(3), 0.3), ("hyperprior",)),
        (lambda: hyperprior_loss(torch.rand(3), Normal(torch.zeros(3), 1.0)), ("hyperprior",)),
        (lambda: hyperprior_loss(torch.tensor([0.2, 1.5]), Beta(3.0, 7.0)), ("params",)),
        (lambda: hyperprior_loss(torch.rand(3), Normal(0.3, 0.1), ties=None), ("ties",)),
    ]
    for call, names in cases:
        hostile_cases["hyperprior"] += 1
        expect_error(call, *names)


def test_betainc_rejects_bool_tensors(hostile_cases) -> None:
    flag = torch.tensor([True])
    for call, name in (
        (lambda: betainc(flag, 2.0, 0.5), "a"),
        (lambda: betainc(2.0, flag, 0.5), "b"),
        (lambda: betaln(2.0, flag), "b"),
        (lambda: beta_log_prob(flag, 2.0, 3.0), "x"),
    ):
        hostile_cases["betainc"] += 1
        with pytest.raises(TypeError, match=rf"{name} must be .*got a tensor of dtype torch.bool"):
            call()


def test_betainc_rejects_complex_and_non_numbers(hostile_cases) -> None:
    for name, args in (
        ("a", (torch.tensor([1 + 1j]), 2.0, 0.5)),
        ("b", (2.0, torch.tensor([1j], dtype=torch.complex128), 0.5)),
        ("x", (2.0, 3.0, "0.5")),
        ("a", (None, 3.0, 0.5)),
    ):
        hostile_cases["betainc"] += 1
        expect_error(lambda args=args: betainc(*args), name)
    for name, args in (("a", (torch.tensor([2j]), 1.0)), ("b", (1.0, [2.0]))):
        hostile_cases["betaln"] += 1
        expect_error(lambda args=args: betaln(*args), name)
    hostile_cases["beta_log_prob"] += 1
    expect_error(lambda: beta_log_prob(torch.tensor([0.5j]), 1.0, 2.0), "x")
    # A second device: one error naming the arguments, not a crash inside the kernel.
    hostile_cases["betainc"] += 1
    expect_error(lambda: betainc(torch.ones(3, device="meta"), torch.ones(3), torch.rand(3)), "a", "b")


# ----------------------------------------------------------------------------------------------------------
# The priors: construction and cdf.
# ----------------------------------------------------------------------------------------------------------
PRIOR_PARAMS = {
    "Beta": ("a", "b"),
    "SymmetricBeta": ("a",),
    "RelaxedBernoulli": ("mean", "temperature"),
    "Normal": ("loc", "scale"),
}
GOOD = {"a": 0.6, "b": 0.4, "mean": 0.3, "temperature": 0.7, "loc": 0.3, "scale": 0.1}
BAD_VALUES = {
    "a": [math.nan, math.inf, 0.0, -1.0],
    "b": [math.nan, math.inf, 0.0, -1.0],
    "mean": [math.nan, 0.0, 1.0, -0.5, 1.5],
    "temperature": [math.nan, math.inf, 0.0, -1.0],
    "loc": [math.nan, math.inf, -math.inf],
    "scale": [math.nan, math.inf, 0.0, -1.0],
}
BAD_TYPES = ["bool_tensor", "complex_tensor", "string", "none", "list"]


def _make_prior(cls_name: str, **params):
    cls = {"Beta": Beta, "SymmetricBeta": SymmetricBeta, "RelaxedBernoulli": RelaxedBernoulli, "Normal": Normal}
    return cls[cls_name](**params)


@pytest.mark.parametrize("profile", PROFILES)
def test_prior_construction_on_hostile_parameters(profile: str, hostile_cases) -> None:
    @st.composite
    def cases(draw):
        cls_name = draw(st.sampled_from(sorted(PRIOR_PARAMS)))
        name = draw(st.sampled_from(PRIOR_PARAMS[cls_name]))
        if cls_name == "SymmetricBeta":
            bad = st.sampled_from([math.nan, 0.0, 1.0, -0.5, 1.5])
        else:
            bad = st.sampled_from(BAD_VALUES[name])
        mode = draw(st.sampled_from(["value", "value_in_tensor", "type", "shape", "device"]))
        return cls_name, name, mode, draw(bad), draw(st.sampled_from(BAD_TYPES)), draw(st.integers(2, 4))

    def check(case) -> None:
        hostile_cases["prior construction"] += 1
        cls_name, name, mode, bad, bad_type, k = case
        params = {p: GOOD[p] for p in PRIOR_PARAMS[cls_name]}
        if mode == "value":
            params[name] = bad
        elif mode == "value_in_tensor":
            t = torch.full((k,), GOOD[name])
            t[k - 1] = bad
            params[name] = t
        elif mode == "type":
            params[name] = {
                "bool_tensor": torch.tensor([True]),
                "complex_tensor": torch.tensor([0.5 + 0j]),
                "string": "0.5",
                "none": None,
                "list": [0.5],
            }[bad_type]
        elif mode == "shape":
            if len(params) == 1:
                return  # nothing to mismatch with
            params = {p: torch.full((k + i,), GOOD[p]) for i, p in enumerate(params)}
            name = next(iter(params))
        else:
            if len(params) == 1:
                return
            params = {p: torch.full((k,), GOOD[p], device="meta" if i else "cpu") for i, p in enumerate(params)}
            name = next(iter(params))
        expect_error(lambda: _make_prior(cls_name, **params), name)

    run(profile, cases(), check)


@pytest.mark.parametrize("profile", PROFILES)
def test_prior_cdf_on_hostile_points(profile: str, hostile_cases) -> None:
    @st.composite
    def cases(draw):
        d = draw(st.integers(1, 4))
        return (
            draw(prior_specs(d)),
            draw(st.lists(st.one_of(UNIT, st.sampled_from(INVALID_X)), min_size=3 * d, max_size=3 * d)),
            draw(st.sampled_from([*FLOATS, torch.int64])),
            draw(st.booleans()),
        )

    def check(case) -> None:
        hostile_cases["prior cdf"] += 1
        spec, values, dtype, grad = case
        d = len(values) // 3
        prior = spec.build(torch.float32, grad)
        if dtype == torch.int64:
            x = torch.tensor([[0, 1] * d], dtype=dtype).reshape(-1, d)
        else:
            x = torch.tensor(values, dtype=F64).to(dtype).reshape(3, d)
            if grad:
                x.requires_grad_()
        untouched = Untouched(x, spec.leaves)
        lo, hi = (-math.inf, math.inf) if spec.kind == "normal" else (0.0, 1.0)
        x64 = x.detach().double()
        if not bool(((x64 >= lo) & (x64 <= hi)).all()):
            expect_error(lambda: prior.cdf(x), "x")
            untouched.check()
            return
        cdf = prior.cdf(x)
        untouched.check()
        assert all_finite(cdf) and bool(((cdf >= 0) & (cdf <= 1)).all()), cdf
        leaves = [t for t in [x, *spec.leaves] if t.requires_grad]
        if leaves:
            grads = torch.autograd.grad(cdf.sum(), leaves)
            assert all_finite(*grads), grads

    run(profile, cases(), check)


def test_priors_reject_points_on_another_device_and_bad_icdf(hostile_cases) -> None:
    cases = [
        (lambda: Beta(torch.ones(2), 0.4).cdf(torch.rand(2, device="meta")), ("x", "a")),
        (lambda: RelaxedBernoulli(torch.full((2,), 0.3), 0.5).cdf(torch.rand(2, device="meta")), ("x", "mean")),
        (lambda: Normal(torch.zeros(2, device="meta"), 1.0).cdf(torch.rand(2)), ("x", "loc")),
        (lambda: RelaxedBernoulli(0.3, 0.5).icdf(torch.tensor([1.5])), ("p",)),
        (lambda: Normal(0.3, 0.5).icdf(torch.tensor([math.nan])), ("p",)),
        (lambda: Beta(0.6, 0.4).cdf(torch.tensor([0.5j])), ("x",)),
        (lambda: RelaxedBernoulli(0.3, 0.5, logits=0.1), ("mean", "logits")),
        (lambda: RelaxedBernoulli(temperature=0.5), ("mean", "logits")),
    ]
    for call, names in cases:
        hostile_cases["prior cdf"] += 1
        expect_error(call, *names)


# ----------------------------------------------------------------------------------------------------------
# Module construction.
# ----------------------------------------------------------------------------------------------------------
BAD_CONSTRUCTION = [
    ({"positions": 0}, "positions"),
    ({"positions": -3}, "positions"),
    ({"positions": (7, 0)}, "positions"),
    ({"positions": 2.5}, "positions"),
    ({"positions": True}, "positions"),
    ({"positions": ()}, "positions"),
    ({"prior": "gaussian"}, "prior"),
    ({"hyperprior": 0.3}, "hyperprior"),
    ({"init_mean": 0.0}, "init_mean"),
    ({"init_mean": 1.0}, "init_mean"),
    ({"init_mean": math.nan}, "init_mean"),
    ({"init_mean": torch.tensor([0.5, 1.5, 0.5])}, "init_mean"),
    ({"init_mean": torch.tensor([0.5, 0.5])}, "init_mean"),
    ({"init_mean": torch.tensor([True])}, "init_mean"),
    ({"init_mean": "0.5"}, "init_mean"),
    ({"init_temperature": 0.0}, "init_temperature"),
    ({"init_temperature": math.inf}, "init_temperature"),
    ({"init_temperature": -1.0}, "init_temperature"),
    ({"init_temperature": torch.tensor([1j])}, "init_temperature"),
    ({"prior": "beta", "init_concentration": 0.0}, "init_concentration"),
    ({"prior": "beta", "init_concentration": math.nan}, "init_concentration"),
    ({"init_concentration": -1.0}, "init_concentration"),  # not used by the Relaxed Bernoulli family
    ({"init_concentration": 3.0}, "init_concentration"),
    ({"prior": "beta", "init_temperature": 0.5}, "init_temperature"),
    ({"init_temperature": 1e-50}, "init_temperature"),  # rounds to 0 in float32
    ({"positions": np.bool_(True)}, "positions"),
    ({"prior_weight": -1.0}, "prior_weight"),
    ({"hyperprior_weight": math.nan}, "hyperprior_weight"),
    ({"temperature_weight": math.inf}, "temperature_weight"),
    ({"temperature_weight": True}, "temperature_weight"),
    ({"dim": 0.0}, "dim"),
    ({"ties": "no"}, "ties"),
    ({"validate_args": 1}, "validate_args"),
    ({"distributed": 1}, "distributed"),
]


@pytest.mark.parametrize(("kwargs", "name"), BAD_CONSTRUCTION)
def test_generalized_batch_shaping_bad_construction(kwargs, name: str, hostile_cases) -> None:
    hostile_cases["module construction"] += 1
    kwargs = {"positions": 3, **kwargs}
    positions = kwargs.pop("positions")
    expect_error(lambda: GeneralizedBatchShaping(positions, **kwargs), name)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"prior": None}, "prior"),
        ({"prior": torch.ones(2)}, "prior"),
        ({"dim": "0"}, "dim"),
        ({"ties": None}, "ties"),
        ({"reduction": "max"}, "reduction"),
        ({"validate_args": None}, "validate_args"),
        ({"distributed": "True"}, "distributed"),
        ({"process_group": 3}, "process_group"),
    ],
)
def test_batch_shaping_bad_construction(kwargs, name: str, hostile_cases) -> None:
    hostile_cases["module construction"] += 1
    kwargs = {"prior": Beta(0.6, 0.4), **kwargs}
    expect_error(lambda: BatchShaping(**kwargs), name)


# ----------------------------------------------------------------------------------------------------------
# The errors a user meets first (issue 13): each names the argument, the expected value and the value received.
# ----------------------------------------------------------------------------------------------------------
class TestFirstErrors:
    def test_torch_beta_prior_works_like_ours(self) -> None:
        x = torch.rand(16, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
        a = torch.tensor([2.0, 0.5, 1.0, 3.0], dtype=F64, requires_grad=True)
        got = batch_shaping_loss(x, torch.distributions.Beta(a, 2.0))
        (g,) = torch.autograd.grad(got, a)
        want = batch_shaping_loss(x, Beta(a, 2.0))
        (g_want,) = torch.autograd.grad(want, a)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
        torch.testing.assert_close(g, g_want, rtol=1e-10, atol=0)
        sorted_x = np.sort(x.numpy(), axis=0)
        ecdf = np.arange(1, 17)[:, None] / 17
        ref = np.mean((ecdf - scipy.special.betainc(a.detach().numpy(), 2.0, sorted_x)) ** 2)
        assert abs(got.item() - ref) < 1e-13

    def test_torch_relaxed_bernoulli_prior_works(self) -> None:
        x = torch.rand(16, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
        probs = torch.tensor([0.2, 0.5, 0.7], dtype=F64)
        got = batch_shaping_loss(x, torch.distributions.RelaxedBernoulli(torch.tensor(0.5, dtype=F64), probs=probs))
        want = batch_shaping_loss(x, RelaxedBernoulli(probs, 0.5))
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0)

    def test_prior_without_cdf_gets_a_clear_error(self) -> None:
        from torch.distributions.relaxed_bernoulli import LogitRelaxedBernoulli

        prior = LogitRelaxedBernoulli(torch.tensor(0.5), probs=torch.tensor(0.3))
        with pytest.raises(
            TypeError, match=r"prior .*LogitRelaxedBernoulli has no cdf .*use a prior of gbs_loss.priors"
        ):
            batch_shaping_loss(torch.randn(8, 2), prior, validate_args=False)

    def test_class_instead_of_instance(self) -> None:
        with pytest.raises(
            TypeError, match=r"prior must be a distribution instance .* got the class Beta itself.*Beta\(0.6, 0.4\)"
        ):
            batch_shaping_loss(torch.rand(8, 2), Beta)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"hyperprior .* got the class Normal itself"):
            hyperprior_loss(torch.rand(8), Normal)  # type: ignore[arg-type]

    def test_relaxed_bernoulli_icdf_names_p(self) -> None:
        expect_error(lambda: RelaxedBernoulli(0.3, 0.5).icdf([0.5]), "p")
        with pytest.raises(
            TypeError, match=r"RelaxedBernoulli.icdf: p must be a real number or a real tensor, got list"
        ):
            RelaxedBernoulli(0.3, 0.5).icdf([0.5])

    def test_hyperprior_out_of_support_names_params(self) -> None:
        with pytest.raises(
            ValueError,
            match=r"params must be inside the support \[0, 1\] of the hyperprior Beta\(a=3, b=7\) \(and not NaN\), "
            r"got 1 value\(s\) outside \(for example 1.5\)",
        ):
            hyperprior_loss(torch.tensor([0.2, 1.5, 0.3]), Beta(3.0, 7.0))

    def test_tiny_init_temperature_says_what_it_became(self) -> None:
        with pytest.raises(
            ValueError, match=r"init_temperature must be > 0 and finite in torch.float32, got 1e-50, which is 0"
        ):
            GeneralizedBatchShaping(4, init_temperature=1e-50)

    def test_init_concentration_refused_for_relaxed_bernoulli(self) -> None:
        with pytest.raises(
            ValueError,
            match=r"init_concentration is not used by prior='relaxed_bernoulli' .*got init_concentration=-1.0",
        ):
            GeneralizedBatchShaping(4, init_concentration=-1.0)

    def test_empty_beta_refused(self) -> None:
        with pytest.raises(ValueError, match=r"Beta: a must have at least one element, got a tensor of shape \(0,\)"):
            Beta(torch.empty(0), 0.4)

    @pytest.mark.parametrize("positions", [np.int64(7), (np.int32(7),), [7], torch.tensor(7)])
    def test_numpy_integer_positions_accepted(self, positions) -> None:
        module = GeneralizedBatchShaping(positions)
        assert module.positions == (7,) and all(type(p) is int for p in module.positions)
        module(torch.rand(5, 7)).backward()
