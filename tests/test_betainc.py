"""Tests of the special functions: ``betainc`` (the Beta CDF) with its gradients, ``betaln``, the log-density.

Oracles:

* ``tests/data/betainc_oracle.npz``: I_x(a, b), dI/da, dI/db and dI/dx computed with mpmath at 50 digits by
  ``scripts/make_betainc_oracle.py`` on seeded points in named regions (every a, b and, except where flagged,
  x exactly representable in float32, so one table serves both dtypes);
* ``scipy.special.betainc`` / ``betaln`` and ``scipy.stats.beta.logpdf`` for values on wide seeded grids
  (where scipy is itself inaccurate, mpmath settles the comparison);
* closed forms evaluated with mpmath.

Relative errors are ``|got - ref| / max(|ref|, floor)`` with ``floor = tiny / 1e-12`` in float64 and
``tiny / 1e-5`` in float32 (``tiny``: the smallest normal number of the dtype; 1e-12 and 1e-5: the value
tolerances). Below the floor a result is only required to be within about ``tiny`` of the reference in
absolute terms: near underflow the format itself cannot hold the required relative accuracy (subnormals lose
digits; scipy flushes them to zero). NaN or infinite results count as an infinite error.

Required accuracy (the contract of :func:`gbs_loss.betainc`): float64 value 1e-12, gradients 1e-11; float32
value 1e-5, gradients 1e-4; no NaN or inf anywhere in the domain.
"""

from __future__ import annotations

import contextlib
import functools
import math

import mpmath
import numpy as np
import pytest
import torch
from _support import (
    F64,
    QUANTITIES,
    TOLERANCE,
    backend_results,
    check_backend_against_oracle,
    log_uniform,
    oracle,
    oracle_module,
    region_names,
    rel_err,
    report,
    value_and_grads,
    wide_grid,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import special, stats

from gbs_loss import beta_log_prob, betainc, betaln
from gbs_loss.special import _constants, _fraction, backends
from gbs_loss.special.backends import torch_ops

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@functools.cache
def oracle_results(dtype: torch.dtype) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Evaluate the whole oracle table once per dtype: (mask of points used, results)."""
    o = oracle()
    mask = o["f32"] if dtype == torch.float32 else np.ones(len(o["a"]), dtype=bool)
    return mask, value_and_grads(o["a"][mask], o["b"][mask], o["x"][mask], dtype)


# Hypothesis strategies over the whole required domain: a, b in [1e-3, 1e5], x in (0, 1) down to 1e-300
# (below, the density x^(a-1) / B(a, b) itself overflows float64 for a near 1e-3).
params = st.floats(-3.0, 5.0).map(lambda e: float(10.0**e))
unit = st.one_of(
    st.floats(1e-300, 1.0, exclude_max=True),
    st.floats(1.0, 300.0).map(lambda e: float(10.0**-e)),
    st.floats(1.0, 16.0).map(lambda e: float(1.0 - 10.0**-e)).filter(lambda x: x < 1.0),
)
points = st.lists(st.tuples(params, params, unit), min_size=1, max_size=20)


# --------------------------------------------------------------------------------------------------------
# Smoke.
# --------------------------------------------------------------------------------------------------------
class TestSmoke:
    def test_known_values(self):
        out = betainc(torch.tensor([2.0, 0.5, 1.0]), torch.tensor([3.0, 0.5, 1.0]), torch.tensor([0.5, 0.5, 0.25]))
        # I_0.5(2, 3) = 11/16, I_0.5(1/2, 1/2) = 1/2, I_x(1, 1) = x
        torch.testing.assert_close(out, torch.tensor([0.6875, 0.5, 0.25]), rtol=1e-6, atol=0)

    def test_backward_runs(self):
        a = torch.tensor(2.0, dtype=F64, requires_grad=True)
        x = torch.tensor([0.1, 0.5], dtype=F64, requires_grad=True)
        betainc(a, 3.0, x).sum().backward()
        assert a.grad is not None and x.grad is not None
        # dI/dx is the Beta(2, 3) density 12 x (1 - x)^2
        torch.testing.assert_close(x.grad, 12 * x.detach() * (1 - x.detach()) ** 2, rtol=1e-14, atol=0)


# --------------------------------------------------------------------------------------------------------
# Accuracy against the mpmath oracle.
# --------------------------------------------------------------------------------------------------------
class TestOracle:
    def test_table(self):
        o = oracle()
        assert o["dps"] >= 50
        assert o["cross_check"] < 1e-30 and o["self_agreement"] < 1e-40
        for k in ("a", "b"):
            assert np.all(o[k].astype(np.float32).astype(np.float64) == o[k])
        assert np.all(o["x"][o["f32"]].astype(np.float32).astype(np.float64) == o["x"][o["f32"]])
        assert np.all((o["a"] >= 1e-3) & (o["a"] <= 1e5) & (o["b"] >= 1e-3) & (o["b"] <= 1e5))
        assert np.all((o["x"] > 0) & (o["x"] < 1))

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
    @pytest.mark.parametrize("region", region_names())
    def test_region(self, region, dtype):
        o = oracle()
        mask, res = oracle_results(dtype)
        sel = o["region"][mask] == region_names().index(region)
        assert sel.sum() >= 50, "too few points to test this region"
        pts = tuple(o[k][mask][sel] for k in ("a", "b", "x"))
        got = {q: res[q][sel] for q in QUANTITIES}
        ref = {q: o[q][mask][sel] for q in QUANTITIES}
        errors = {q: rel_err(got[q], ref[q], dtype) for q in QUANTITIES}
        lines = report(errors, TOLERANCE[dtype], pts, got, ref, f"{region} {dtype}")
        assert not lines, "\n".join(lines)

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
    def test_all_finite(self, dtype):
        mask, res = oracle_results(dtype)
        for q in QUANTITIES:
            bad = ~np.isfinite(res[q])
            assert not bad.any(), f"{q}: {bad.sum()} non-finite results, first at index {np.flatnonzero(bad)[:5]}"


# --------------------------------------------------------------------------------------------------------
# Values against scipy.
# --------------------------------------------------------------------------------------------------------
def check_against_scipy(a: np.ndarray, b: np.ndarray, x: np.ndarray, max_disputed: int = 50) -> None:
    """float64 values within 1e-12 of scipy, or, where scipy disagrees by more, within 1e-12 of mpmath.

    scipy (Boost) is itself off by up to ~1e-12 on hard points and by ~1e-8 near underflow (e.g.
    I_0.2003(454.8, 20.6) ~ 8e-286), so points where the two disagree are settled by mpmath, with the
    series of the oracle script at 30 digits (``mpmath.betainc`` fails to converge for some large a, b).
    """
    got = betainc(torch.tensor(a), torch.tensor(b), torch.tensor(x)).numpy()
    tol = TOLERANCE[F64]["value"]
    disputed = np.flatnonzero(~(rel_err(got, special.betainc(a, b, x), F64) <= tol))
    assert len(disputed) <= max_disputed, f"{len(disputed)} points differ from scipy by more than {tol}"
    for i in disputed:
        ref = float(oracle_module().oracle_point(float(a[i]), float(b[i]), float(x[i]), 30)[0][0])
        err = rel_err(got[i : i + 1], np.array([ref]), F64)[0]
        assert err <= tol, f"a={a[i]!r} b={b[i]!r} x={x[i]!r}: {got[i]!r}, mpmath {ref!r}, error {err:.2e}"


class TestScipy:
    def test_float64_wide_grid(self):
        check_against_scipy(*wide_grid(0, 4000))

    def test_float32_wide_grid(self):
        a, b, x = (v.astype(np.float32) for v in wide_grid(1, 4000))
        keep = (x > 0) & (x < 1)
        a, b, x = a[keep], b[keep], x[keep]
        got = betainc(torch.tensor(a), torch.tensor(b), torch.tensor(x))
        assert got.dtype == torch.float32
        ref = special.betainc(a.astype(np.float64), b.astype(np.float64), x.astype(np.float64))
        err = rel_err(got.double().numpy(), ref, torch.float32)
        i = int(np.argmax(err))
        assert err[i] <= 1e-5, f"a={a[i]!r} b={b[i]!r} x={x[i]!r}: {got[i].item()!r} vs scipy {ref[i]!r}"

    def test_moderate_parameters_dense_x(self):
        # the priors of typical use: Beta(a, b) with a, b of order 0.1-10, every x of a fine grid
        a, b = np.meshgrid([0.1, 0.4, 0.6, 1.0, 2.5, 7.0], [0.1, 0.4, 0.6, 1.0, 2.5, 7.0])
        x = np.linspace(0.0, 1.0, 201)[1:-1]
        a, b, x = np.broadcast_arrays(a[..., None], b[..., None], x)
        check_against_scipy(a.ravel(), b.ravel(), x.ravel())


# --------------------------------------------------------------------------------------------------------
# Gradients: gradcheck and closed forms.
# --------------------------------------------------------------------------------------------------------
class TestGradients:
    def test_gradcheck(self):
        rng = np.random.default_rng(3)
        a = torch.tensor(log_uniform(rng, 0.3, 30.0, 8), dtype=F64, requires_grad=True)
        b = torch.tensor(log_uniform(rng, 0.3, 30.0, 8), dtype=F64, requires_grad=True)
        x = torch.tensor(rng.uniform(0.05, 0.95, 8), dtype=F64, requires_grad=True)
        assert torch.autograd.gradcheck(betainc, (a, b, x), eps=1e-6, atol=1e-8, rtol=1e-5)

    def test_gradcheck_broadcast(self):
        a = torch.tensor([[0.7], [3.0]], dtype=F64, requires_grad=True)
        b = torch.tensor([1.5, 4.0, 12.0], dtype=F64, requires_grad=True)
        x = torch.tensor(0.3, dtype=F64, requires_grad=True)
        assert torch.autograd.gradcheck(betainc, (a, b, x), eps=1e-6, atol=1e-8, rtol=1e-5)

    @staticmethod
    def check_closed_form(a, b, x, ref: dict[str, list], quantities: tuple[str, ...]):
        got = value_and_grads(a, b, x)
        refs = {q: np.array([float(v) for v in ref[q]]) for q in quantities}
        errors = {q: rel_err(got[q], refs[q], F64) for q in quantities}
        lines = report(errors, TOLERANCE[F64], (a, b, x), got, refs, "closed form")
        assert not lines, "\n".join(lines)

    @SETTINGS
    @given(st.lists(st.tuples(params, unit), min_size=1, max_size=20))
    def test_a_equal_one(self, pts):
        # I_x(1, b) = 1 - (1-x)^b; dI/dx = b (1-x)^(b-1); dI/db = -(1-x)^b log(1-x)
        b, x = (np.array(v) for v in zip(*pts, strict=True))
        ref = {"value": [], "d_b": [], "d_x": []}
        with mpmath.workdps(40):
            for bi, xi in zip(b, x, strict=True):
                bm, log_y = mpmath.mpf(bi), mpmath.log1p(-mpmath.mpf(xi))
                ref["value"].append(-mpmath.expm1(bm * log_y))
                ref["d_b"].append(-mpmath.exp(bm * log_y) * log_y)
                ref["d_x"].append(bm * mpmath.exp((bm - 1) * log_y))
        self.check_closed_form(np.ones_like(b), b, x, ref, ("value", "d_b", "d_x"))

    @SETTINGS
    @given(st.lists(st.tuples(params, unit), min_size=1, max_size=20))
    def test_b_equal_one(self, pts):
        # I_x(a, 1) = x^a; dI/dx = a x^(a-1); dI/da = x^a log x
        a, x = (np.array(v) for v in zip(*pts, strict=True))
        ref = {"value": [], "d_a": [], "d_x": []}
        with mpmath.workdps(40):
            for ai, xi in zip(a, x, strict=True):
                am, xm = mpmath.mpf(ai), mpmath.mpf(xi)
                ref["value"].append(xm**am)
                ref["d_a"].append(xm**am * mpmath.log(xm))
                ref["d_x"].append(am * xm ** (am - 1))
        self.check_closed_form(a, np.ones_like(a), x, ref, ("value", "d_a", "d_x"))

    @SETTINGS
    @given(st.lists(unit, min_size=1, max_size=20))
    def test_arcsine(self, xs):
        # I_x(1/2, 1/2) = 2/pi asin(sqrt x); dI/dx = 1 / (pi sqrt(x (1-x)))
        x = np.array(xs)
        ref = {"value": [], "d_x": []}
        with mpmath.workdps(40):
            for xi in x:
                xm = mpmath.mpf(xi)
                ref["value"].append(2 / mpmath.pi * mpmath.asin(mpmath.sqrt(xm)))
                ref["d_x"].append(1 / (mpmath.pi * mpmath.sqrt(xm * (1 - xm))))
        self.check_closed_form(np.full_like(x, 0.5), np.full_like(x, 0.5), x, ref, ("value", "d_x"))


# --------------------------------------------------------------------------------------------------------
# Properties over wide domains.
# --------------------------------------------------------------------------------------------------------
class TestProperties:
    @SETTINGS
    @given(points)
    def test_reflection(self, pts):
        # I_x(a, b) = 1 - I_{1-x}(b, a); x is taken in [1/2, 1) so that 1 - x is exact
        a, b, u = (np.array(v) for v in zip(*pts, strict=True))
        x = np.where(u >= 0.5, u, 1.0 - u)
        y = 1.0 - x
        left = betainc(torch.tensor(a), torch.tensor(b), torch.tensor(x)).numpy()
        right = betainc(torch.tensor(b), torch.tensor(a), torch.tensor(y)).numpy()
        np.testing.assert_allclose(left + right, 1.0, rtol=0, atol=2e-12)

    @SETTINGS
    @given(points)
    def test_range_and_gradient_signs(self, pts):
        a, b, x = (np.array(v) for v in zip(*pts, strict=True))
        res = value_and_grads(a, b, x)
        assert np.all((res["value"] >= 0) & (res["value"] <= 1))
        for q in QUANTITIES:
            assert np.all(np.isfinite(res[q])), q
        assert np.all(res["d_x"] >= 0), "I must increase with x"
        assert np.all(res["d_a"] <= 0), "I must decrease with a"
        assert np.all(res["d_b"] >= 0), "I must increase with b"

    @SETTINGS
    @given(points, st.floats(1e-6, 0.5))
    def test_monotone(self, pts, step):
        # increasing in x and b, decreasing in a, up to the required relative accuracy 1e-12
        a, b, x = (np.array(v) for v in zip(*pts, strict=True))
        x2 = x + step * (1.0 - x)
        a2, b2 = a * (1.0 + step), b * (1.0 + step)
        base = betainc(torch.tensor(a), torch.tensor(b), torch.tensor(x)).numpy()
        slack = 2e-12 * base
        assert np.all(betainc(torch.tensor(a), torch.tensor(b), torch.tensor(x2)).numpy() >= base - slack)
        assert np.all(betainc(torch.tensor(a2), torch.tensor(b), torch.tensor(x)).numpy() <= base + slack)
        assert np.all(betainc(torch.tensor(a), torch.tensor(b2), torch.tensor(x)).numpy() >= base - slack)


# --------------------------------------------------------------------------------------------------------
# Ends and the domain.
# --------------------------------------------------------------------------------------------------------
ENDS_AB = [
    (0.3, 0.3),
    (0.3, 1.0),
    (0.3, 4.0),
    (1.0, 0.3),
    (1.0, 1.0),
    (1.0, 4.0),
    (4.0, 0.3),
    (4.0, 1.0),
    (4.0, 4.0),
]


class TestEnds:
    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
    @pytest.mark.parametrize(("a", "b"), ENDS_AB)
    def test_values_and_gradients(self, a, b, dtype):
        res = value_and_grads([a, a], [b, b], [0.0, 1.0], dtype)
        np.testing.assert_array_equal(res["value"], [0.0, 1.0])
        np.testing.assert_array_equal(res["d_a"], [0.0, 0.0])
        np.testing.assert_array_equal(res["d_b"], [0.0, 0.0])
        # dI/dx: the density's one-sided limit where finite (b at 0 when a = 1, a at 1 when b = 1), else 0
        at0 = b if a == 1.0 else 0.0
        at1 = a if b == 1.0 else 0.0
        np.testing.assert_allclose(res["d_x"], [at0, at1], rtol=1e-7, atol=0)

    def test_limits_towards_the_ends(self):
        # values just inside the ends approach the end values continuously
        a = torch.tensor([0.5, 2.0, 1e3], dtype=F64)
        b = torch.tensor([0.5, 3.0, 1e3], dtype=F64)
        assert torch.all(betainc(a, b, torch.tensor(1e-300, dtype=F64)) < 1e-140)
        assert torch.all(betainc(a, b, torch.tensor(1 - 2**-53, dtype=F64)) > 1 - 1e-7)

    @pytest.mark.parametrize(
        ("a", "b", "x"),
        [
            (-1.0, 2.0, 0.5),
            (0.0, 2.0, 0.5),
            (2.0, -1.0, 0.5),
            (2.0, 0.0, 0.5),
            (2.0, 3.0, -0.1),
            (2.0, 3.0, 1.1),
            (math.nan, 3.0, 0.5),
            (2.0, math.nan, 0.5),
            (2.0, 3.0, math.nan),
            (-1.0, 3.0, 0.0),
            (2.0, -1.0, 1.0),
        ],
    )
    def test_nan_outside_domain(self, a, b, x):
        res = value_and_grads([a], [b], [x])
        for q in QUANTITIES:
            assert np.isnan(res[q]).all(), q
        if a != 0.0 and b != 0.0:  # scipy returns the limits 1 or 0 at a = 0 or b = 0
            assert np.isnan(special.betainc(a, b, x))

    def test_invalid_elements_do_not_contaminate(self):
        a = [2.0, -1.0, 2.0, 0.7]
        x = [0.3, 0.3, 1.5, 0.2]
        res = value_and_grads(a, [3.0] * 4, x)
        alone = value_and_grads([2.0, 0.7], [3.0, 3.0], [0.3, 0.2])
        for q in QUANTITIES:
            np.testing.assert_array_equal(res[q][[0, 3]], alone[q])
            assert np.isnan(res[q][[1, 2]]).all()


# --------------------------------------------------------------------------------------------------------
# Shapes, dtypes, exceptions, autograd and compile.
# --------------------------------------------------------------------------------------------------------
class TestShapes:
    def test_broadcast_and_gradient_shapes(self):
        a = torch.tensor([[0.5], [2.0], [9.0]], dtype=F64, requires_grad=True)  # (3, 1)
        b = torch.tensor([0.7, 1.0, 3.0, 40.0], dtype=F64, requires_grad=True)  # (4,)
        x = torch.tensor([0.2, 0.6], dtype=F64).reshape(2, 1, 1).requires_grad_()  # (2, 1, 1)
        out = betainc(a, b, x)
        assert out.shape == (2, 3, 4)
        weights = torch.arange(24, dtype=F64).reshape(2, 3, 4)
        (out * weights).sum().backward()
        assert a.grad.shape == a.shape and b.grad.shape == b.shape and x.grad.shape == x.shape
        # the same with explicitly expanded inputs, then reduced over the broadcast dimensions
        ea, eb, ex = (t.detach().expand(2, 3, 4).clone().requires_grad_() for t in (a, b, x))
        (betainc(ea, eb, ex) * weights).sum().backward()
        torch.testing.assert_close(a.grad, ea.grad.sum(dim=(0, 2)).reshape(3, 1), rtol=1e-14, atol=0)
        torch.testing.assert_close(b.grad, eb.grad.sum(dim=(0, 1)), rtol=1e-14, atol=0)
        torch.testing.assert_close(x.grad, ex.grad.sum(dim=(1, 2)).reshape(2, 1, 1), rtol=1e-14, atol=0)

    def test_scalars_and_empty(self):
        assert betainc(2.0, 3.0, 0.5).shape == ()
        assert betainc(torch.tensor(2.0), 3.0, torch.empty(0, 5)).shape == (0, 5)

    def test_incompatible_shapes(self):
        with pytest.raises(
            ValueError, match=r"a, b, x must have shapes that broadcast together, got a: \(3,\), b: \(4,\)"
        ):
            betainc(torch.ones(3), torch.ones(4), 0.5)
        with pytest.raises(ValueError, match=r"x: \(4,\)"):
            betainc(torch.ones(3), 2.0, torch.ones(4))

    def test_mixed_dtypes_saturate_per_argument(self):
        # x in float16 next to a float32 parameter: the density at x = 1 (a, here 99840) exceeds float16's range,
        # so x's gradient saturates at float16's largest value instead of overflowing to inf.
        x = torch.tensor([1.0], dtype=torch.float16, requires_grad=True)
        a = torch.tensor([99840.0], requires_grad=True)
        value = betainc(a, 1.0, x)
        value.sum().backward()
        assert value.dtype == torch.float32
        assert x.grad.dtype == torch.float16 and a.grad.dtype == torch.float32
        assert x.grad.item() == torch.finfo(torch.float16).max

    def test_unconverged_far_outside_domain_is_nan_not_wrong(self):
        # a = b = 1e9 at the mean needs far more continued-fraction steps than the cap: NaN, never a wrong number.
        assert torch.isnan(betainc(torch.tensor(1e9, dtype=torch.float64), 1e9, 0.5))
        # Up to the documented domain and well beyond it on CPU the value is right.
        for a in (1e5, 1e6, 1e7):
            assert abs(betainc(torch.tensor(a, dtype=torch.float64), a, 0.5).item() - 0.5) < 1e-13

    def test_values_stay_in_unit_interval_for_tiny_parameters(self):
        value = betainc(torch.tensor(1.0, dtype=torch.float64), 1e-30, 0.7)
        assert 0.0 <= value.item() <= 1e-29


class TestDtypes:
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
    def test_output_and_gradient_dtype(self, dtype):
        a = torch.tensor([0.5, 2.0, 7.0], dtype=dtype, requires_grad=True)
        b = torch.tensor([0.5, 3.0, 2.0], dtype=dtype, requires_grad=True)
        x = torch.tensor([0.25, 0.5, 0.875], dtype=dtype, requires_grad=True)
        out = betainc(a, b, x)
        assert out.dtype == dtype
        out.sum().backward()
        assert a.grad.dtype == b.grad.dtype == x.grad.dtype == dtype
        # the same inputs (exact in every dtype above) in float64, rounded to the dtype
        ref = value_and_grads(a.detach().double(), b.detach().double(), x.detach().double())
        eps = torch.finfo(dtype).eps
        np.testing.assert_allclose(out.detach().double().numpy(), ref["value"], rtol=eps, atol=0)
        for t, q in ((a, "d_a"), (b, "d_b"), (x, "d_x")):
            np.testing.assert_allclose(t.grad.double().numpy(), ref[q], rtol=eps, atol=0)

    def test_python_numbers_and_integers_use_the_default_dtype(self):
        for args in ((2.0, 3.0, 0.5), (2, 3, 0.5), (torch.tensor(2), torch.tensor(3), torch.tensor([0, 1]))):
            assert betainc(*args).dtype == torch.get_default_dtype()
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            out = betainc(2, 3, 0.5)
        finally:
            torch.set_default_dtype(previous)
        assert out.dtype == torch.float64 and out.item() == pytest.approx(0.6875, rel=1e-12)

    def test_promotion(self):
        out = betainc(torch.tensor(2.0, dtype=F64), torch.tensor(3.0), torch.tensor([0.5], dtype=torch.float16))
        assert out.dtype == F64
        assert betainc(torch.tensor([2.0]), 3.0, 0.5).dtype == torch.float32


class TestPlainPath:
    """The short path of the common call (three contiguous 1-D tensors of one length and dtype) against the
    general one, on every backend that runs here."""

    @staticmethod
    def _general(a, b, x):
        from gbs_loss.special._op import BetaincFunction

        return BetaincFunction.apply(a, b, x, (x.shape, a.shape, False, x.dtype))

    @pytest.mark.parametrize("backend", ["torch", "native"])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
    def test_equals_general_path(self, backend, dtype):
        if not backends.available(backend):
            pytest.skip(f"backend {backend} unavailable")
        gen = torch.Generator().manual_seed(9)
        a = (torch.rand(300, generator=gen, dtype=F64) * 8 + 0.01).to(dtype)
        b = (torch.rand(300, generator=gen, dtype=F64) * 8 + 0.01).to(dtype)
        x = torch.rand(300, generator=gen, dtype=F64).to(dtype)
        results = []
        with backends.use(backend):
            for fn in (betainc, self._general):
                leaves = [t.clone().requires_grad_() for t in (a, b, x)]
                out = fn(*leaves)
                grads = torch.autograd.grad(out, leaves, torch.linspace(-2, 3, 300, dtype=dtype))
                results.append((out.grad_fn.name(), out.detach(), grads))
        assert results[0][0] == "PlainBetaincFunctionBackward" and results[1][0] == "BetaincFunctionBackward"
        torch.testing.assert_close(results[0][1], results[1][1], rtol=0, atol=0)
        for g0, g1 in zip(results[0][2], results[1][2], strict=True):
            assert g0.dtype == dtype
            torch.testing.assert_close(g0, g1, rtol=0, atol=0)

    def test_float32_gradient_saturates(self):
        # a = 0.5 at x = 1e-30: dI/dx ~ 1e15 / ... beyond float32 times a gradient of 1e30.
        a = torch.tensor([0.5, 2.0], requires_grad=True)
        b = torch.tensor([0.5, 3.0], requires_grad=True)
        x = torch.tensor([1e-30, 0.5], requires_grad=True)
        out = betainc(a, b, x)
        assert out.grad_fn.name() == "PlainBetaincFunctionBackward"
        (g_x,) = torch.autograd.grad(out, (x,), torch.tensor([1e30, 1.0]))
        assert torch.isfinite(g_x).all() and g_x[0] == torch.finfo(torch.float32).max

    def test_second_derivative_raises(self):
        a = torch.tensor([2.0, 3.0], dtype=F64, requires_grad=True)
        x = torch.tensor([0.3, 0.6], dtype=F64, requires_grad=True)
        out = betainc(a, torch.tensor([2.0, 2.0], dtype=F64), x)
        assert out.grad_fn.name() == "PlainBetaincFunctionBackward"
        (g_a,) = torch.autograd.grad(out.sum(), (a,), create_graph=True)
        with pytest.raises(RuntimeError, match="betainc supports first derivatives only"):
            g_a.sum().backward()

    def test_other_calls_take_the_general_path(self):
        a = torch.tensor([2.0, 3.0], requires_grad=True)
        x = torch.tensor([0.3, 0.6])
        for args in (
            (a, 2.0, x),
            (a, a, x.double()),
            (a.view(2, 1), a.view(2, 1), x.view(2, 1)),
            (a, a, x[:1]),  # x broadcast against the parameters
        ):
            assert betainc(*args).grad_fn.name() == "BetaincFunctionBackward"


class TestExceptions:
    @pytest.mark.parametrize("position", [0, 1, 2])
    def test_non_numeric_argument(self, position):
        args = [2.0, 3.0, 0.5]
        args[position] = "0.5"
        with pytest.raises(TypeError, match=["a", "b", "x"][position]):
            betainc(*args)

    @pytest.mark.parametrize("position", [0, 1, 2])
    def test_bool_tensor_is_rejected(self, position):
        # issue 13: a boolean mask passed by mistake must not be read as 0/1 parameters
        args = [torch.tensor([2.0]), torch.tensor([3.0]), torch.tensor([0.5])]
        args[position] = torch.tensor([True])
        name = ["a", "b", "x"][position]
        with pytest.raises(TypeError, match=rf"^{name} must be .*got a tensor of dtype torch.bool"):
            betainc(*args)
        if position < 2:
            with pytest.raises(TypeError, match=rf"^{name} must be .*torch.bool"):
                betaln(*args[:2])

    def test_python_bool_is_rejected(self):
        with pytest.raises(TypeError, match=r"^b must be .*got bool"):
            betainc(2.0, True, 0.5)
        with pytest.raises(TypeError, match=r"^a must be .*got bool"):
            betaln(False, 2.0)

    def test_devices_must_agree(self):
        with pytest.raises(ValueError, match=r"one device, got a: cpu, b: meta"):
            betainc(torch.ones(2), torch.ones(2, device="meta"), 0.5)

    def test_double_backward_raises(self):
        a = torch.tensor([2.0, 0.5], dtype=F64, requires_grad=True)
        x = torch.tensor([0.3, 0.6], dtype=F64, requires_grad=True)
        w = torch.ones(2, dtype=F64, requires_grad=True)
        (gx,) = torch.autograd.grad((w * betainc(a, 3.0, x)).sum(), x, create_graph=True)
        with pytest.raises(RuntimeError, match="(?i)twice|double|second"):
            torch.autograd.grad(gx.sum(), (a, w))

    def test_hessian_raises(self):
        # second derivatives are not implemented: they must not silently come out as zeros
        x = torch.tensor([0.3, 0.6], dtype=F64)
        with pytest.raises(RuntimeError, match="(?i)twice|double|second"):
            torch.autograd.functional.hessian(lambda t: betainc(2.0, 3.0, t).sum(), x)


class TestCompile:
    def test_compile_fullgraph_equals_eager(self):
        def loss(a, b, x):
            return (betainc(a, b, x) * torch.linspace(0.5, 1.5, x.shape[-1], dtype=x.dtype)).sum()

        compiled = torch.compile(loss, fullgraph=True, backend="inductor")
        inputs = (
            torch.tensor([0.6, 2.0, 300.0, 1e-3], dtype=F64),
            torch.tensor([0.4, 5.0, 310.0, 1e4], dtype=F64),
            torch.tensor([0.3, 0.999, 0.49, 1e-9], dtype=F64),
        )
        grads = []
        for fn in (loss, compiled):
            leaves = [t.clone().requires_grad_() for t in inputs]
            out = fn(*leaves)
            out.backward()
            grads.append((out.detach(), *(t.grad for t in leaves)))
        for eager, comp in zip(*grads, strict=True):
            torch.testing.assert_close(comp, eager, rtol=1e-14, atol=0)


# --------------------------------------------------------------------------------------------------------
# The torch reference backend in both of its modes, the dispatch, and the two defects of issue 11.
# --------------------------------------------------------------------------------------------------------
TORCH_MODES = ["compact", "masked"]


@pytest.fixture(params=TORCH_MODES)
def torch_mode(request):
    """The torch backend, forced, in its CPU (compact) mode or its accelerator (masked, chunked) mode."""
    with backends.use("torch"), torch_ops._forced_mode(request.param):
        yield request.param


class TestTorchBackend:
    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
    def test_meets_the_contract_on_the_oracle(self, torch_mode, dtype):
        # the masked mode is what accelerators without Triton run: here it runs on CPU against the oracle
        per_region = None if torch_mode == "compact" else 60
        check_backend_against_oracle("torch", dtype, per_region=per_region, label=f"torch/{torch_mode}")

    def test_gradcheck(self, torch_mode):
        rng = np.random.default_rng(13)
        a = torch.tensor(log_uniform(rng, 0.05, 30.0, 8), dtype=F64, requires_grad=True)
        b = torch.tensor(log_uniform(rng, 0.05, 30.0, 8), dtype=F64, requires_grad=True)
        x = torch.tensor(rng.uniform(0.05, 0.95, 8), dtype=F64, requires_grad=True)
        assert torch.autograd.gradcheck(betainc, (a, b, x), eps=1e-6, atol=1e-8, rtol=1e-5)
        # shared parameters (one per trailing position), the loss's pattern
        x2 = torch.tensor(rng.uniform(0.05, 0.95, (4, 3)), dtype=F64, requires_grad=True)
        assert torch.autograd.gradcheck(betainc, (a[:3], b[:3], x2), eps=1e-6, atol=1e-8, rtol=1e-5)

    def test_modes_agree(self):
        points = wide_grid(21, 1500)
        with torch_ops._forced_mode("compact"):
            compact = backend_results("torch", *points)
        with torch_ops._forced_mode("masked"):
            masked = backend_results("torch", *points)
        for q in QUANTITIES:
            np.testing.assert_array_equal(np.isnan(compact[q]), np.isnan(masked[q]))
            assert rel_err(compact[q], masked[q], F64).max() <= 1e-13, q

    def test_masked_mode_checks_convergence_per_chunk(self, monkeypatch):
        # The masked loop stops at the first chunk boundary where every element has converged: count the checks.
        calls = []
        original = _fraction._converged

        def counting(*args):
            calls.append(1)
            return original(*args)

        monkeypatch.setattr(_fraction, "_converged", counting)
        a, b, x = (torch.tensor(v, dtype=F64) for v in ([2.0, 40.0], [3.0, 60.0], [0.2, 0.4]))
        with torch_ops._forced_mode("masked"):
            torch_ops.betainc_with_grads(a, b, x)
        assert len(calls) % _constants.CHUNK_STEPS == 0 and 0 < len(calls) < _constants.MAX_STEPS


class TestDispatch:
    def test_default_is_auto(self, monkeypatch):
        monkeypatch.delenv("GBS_LOSS_BACKEND", raising=False)
        monkeypatch.delenv("GBS_LOSS_NATIVE", raising=False)
        assert backends.setting() == "auto"
        cpu = backends.resolve(torch.device("cpu"))
        assert cpu == ("native" if backends.available("native") else "torch")

    @pytest.mark.parametrize("name", ["torch", "TORCH", " torch "])
    def test_environment_variable(self, monkeypatch, name):
        monkeypatch.setenv("GBS_LOSS_BACKEND", name)
        assert backends.setting() == "torch" and backends.resolve(torch.device("cpu")) == "torch"
        assert backends.get(torch.device("cpu")) is torch_ops.betainc_with_grads

    def test_unknown_value_is_an_error(self, monkeypatch):
        monkeypatch.setenv("GBS_LOSS_BACKEND", "cuda")
        with pytest.raises(ValueError, match=r"GBS_LOSS_BACKEND must be one of auto, torch, native, triton, got"):
            betainc(2.0, 3.0, 0.5)
        with pytest.raises(ValueError, match="backend must be one of"):
            with backends.use("fast"):
                pass

    def test_deprecated_native_switch(self, monkeypatch):
        monkeypatch.delenv("GBS_LOSS_BACKEND", raising=False)
        monkeypatch.setenv("GBS_LOSS_NATIVE", "0")
        assert backends.resolve(torch.device("cpu")) == "torch"

    def test_use_overrides_the_environment_and_nests(self, monkeypatch):
        monkeypatch.setenv("GBS_LOSS_BACKEND", "torch")
        with backends.use("auto"):
            assert backends.setting() == "auto"
            with backends.use("torch"):
                assert backends.setting() == "torch"
            assert backends.setting() == "auto"
        assert backends.setting() == "torch"

    def test_explicit_backend_on_the_wrong_device_is_a_clear_error(self, monkeypatch):
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        with backends.use("native"), pytest.raises(backends.BackendUnavailable, match="CPU tensors only"):
            backends.resolve(torch.device("meta"))
        with backends.use("triton"), pytest.raises(backends.BackendUnavailable, match="TRITON_INTERPRET=1"):
            betainc(torch.tensor([2.0]), 3.0, 0.5)

    def test_missing_backend_module_is_unavailable(self, monkeypatch):
        monkeypatch.setitem(backends._modules, "native", None)
        monkeypatch.setitem(backends._import_errors, "native", "ModuleNotFoundError: no module named native")
        assert not backends.available("native")
        with backends.use("auto"):
            assert backends.resolve(torch.device("cpu")) == "torch"  # auto falls back
        with backends.use("native"), pytest.raises(backends.BackendUnavailable, match="ModuleNotFoundError"):
            betainc(torch.tensor([2.0]), 3.0, 0.5)

    def test_every_backend_reads_the_shared_constants(self):
        assert _constants.MAX_STEPS == 4096
        assert _constants.SERIES_P_MAX == 0.2 and _constants.SERIES_MAX_TERMS >= 128

    def test_calls_the_chosen_backend_once(self, monkeypatch):
        calls = []
        original = torch_ops.betainc_block  # what the operator layer calls (backends.get_block)

        def spy(a, b, x):
            calls.append((a.shape, x.shape))
            return original(a, b, x)

        monkeypatch.setattr(torch_ops, "betainc_block", spy)
        a = torch.tensor([2.0, 3.0, 4.0], dtype=F64, requires_grad=True)
        x = torch.rand(5, 3, dtype=F64)
        with backends.use("torch"):
            betainc(a, 2.0, x).sum().backward()  # per-position parameters: passed once each, m = 3
            betainc(a[:, None], 2.0, x.T).sum().backward()  # another broadcast: expanded, m = n
        assert calls == [(torch.Size([3]), torch.Size([15])), (torch.Size([15]), torch.Size([15]))]


def available_backends() -> list[str]:
    return [name for name in ("torch", "native") if backends.available(name)]


class TestDefects:
    # Issue 11, defect 1: a in about [1.2, 1.33], b about 1e-3, x just above the switch point (a+1)/(a+b+2),
    # 1 - x > 0.3: 1 - J cancelled because the complement series was only used for 1 - x <= 0.3.
    BAND = [
        (1.2980329015260543, 0.0010084948096717229, 0.6979084172856816),
        (1.25, 0.001, 0.69235),
        (1.32, 0.0015, 0.6993),
        (1.2, 0.002, 0.6880),
        (0.6, 0.004, 0.6160),
        (1.0, 0.19, 0.6452),
    ]

    @pytest.mark.parametrize("name", ["torch", "torch/masked", "native"])
    def test_band_against_mpmath(self, name):
        if name == "native" and not backends.available("native"):
            pytest.skip("native backend unavailable")
        a, b, x = (np.array(v) for v in zip(*self.BAND, strict=True))
        ref = np.array([[float(v) for v in oracle_module().oracle_point(*p, 30)[0]] for p in self.BAND])
        context = torch_ops._forced_mode("masked") if name.endswith("masked") else contextlib.nullcontext()
        with context:
            got = backend_results(name.split("/")[0], a, b, x)
        for i, q in enumerate(QUANTITIES):
            err = rel_err(got[q], ref[:, i], F64)
            assert err.max() <= TOLERANCE[F64][q] / 10, f"{q}: {err.max():.2e} at {self.BAND[int(np.argmax(err))]}"

    def test_defect_2_same_finiteness_everywhere(self):
        # Issue 11, defect 2: the old fixed-step loop (512 steps) gave NaN from a = b = 6.5e5 at x = 0.5 where the
        # CPU path was finite. One step cap for every backend: all finite, and equal finiteness beyond.
        a = np.concatenate([np.geomspace(1e5, 1e6, 40), [4e6, 1e9]])
        x = np.full_like(a, 0.5)
        results = {}
        for name in available_backends():
            results[name] = backend_results(name, a, a, x)
        with torch_ops._forced_mode("masked"):
            results["torch/masked"] = backend_results("torch", a, a, x)
        for name, res in results.items():
            assert np.isfinite(res["value"][:-1]).all(), name
            np.testing.assert_allclose(res["value"][:-1], 0.5, rtol=1e-13, err_msg=name)
            assert np.isnan(res["value"][-1]) and np.isnan(res["d_a"][-1]), name  # 1e9: beyond the cap, NaN
        first = results["torch/masked"]
        for name, res in results.items():
            for q in QUANTITIES:
                np.testing.assert_array_equal(np.isfinite(res[q]), np.isfinite(first[q]), err_msg=f"{name} {q}")


# --------------------------------------------------------------------------------------------------------
# betaln and beta_log_prob.
# --------------------------------------------------------------------------------------------------------
def mp_betaln(a: float, b: float):
    return mpmath.loggamma(a) + mpmath.loggamma(b) - mpmath.loggamma(mpmath.mpf(a) + b)


class TestBetaln:
    # scipy's betaln loses accuracy for mixed tiny/huge arguments (relative error 1.8e-6 at (1e-3, 1e10),
    # 8.5e-13 at (1e5, 3)): there the reference is mpmath. Accuracy asked of betaln: an absolute error of
    # 1e-13 (relative where |log B| > 1), since exp(log B) enters betainc's prefactor.
    TOL = 1e-13

    def test_against_scipy(self):
        rng = np.random.default_rng(4)
        a, b = log_uniform(rng, 1e-2, 1e2, 2000), log_uniform(rng, 1e-2, 1e2, 2000)
        a = np.concatenate([a, [1e5, 1e10, 1e10, 0.5, 3.0]])
        b = np.concatenate([b, [1e5, 1e10, 1.0, 1e10, 1e10]])
        got = betaln(torch.tensor(a), torch.tensor(b)).numpy()
        np.testing.assert_allclose(got, special.betaln(a, b), rtol=self.TOL, atol=self.TOL)

    def test_wide_against_mpmath(self):
        rng = np.random.default_rng(5)
        a, b = log_uniform(rng, 1e-3, 1e5, 400), log_uniform(rng, 1e-3, 1e5, 400)
        a[:100] = log_uniform(rng, 1e-3, 1.0, 100)  # mixed tiny/huge
        b[:100] = log_uniform(rng, 1e3, 1e10, 100)
        got = betaln(torch.tensor(a), torch.tensor(b)).numpy()
        with mpmath.workdps(30):
            ref = np.array([float(mp_betaln(ai, bi)) for ai, bi in zip(a, b, strict=True)])
        err = np.abs(got - ref) / np.maximum(1.0, np.abs(ref))
        i = int(np.argmax(err))
        assert err[i] <= self.TOL, f"betaln({a[i]!r}, {b[i]!r}) = {got[i]!r}, mpmath {ref[i]!r}"

    @pytest.mark.parametrize(
        ("a", "b"),
        [
            (1e5, 1e5),
            (1e10, 1e10),
            (1e10, 1.0),
            (1e-3, 1e10),
            (1e10, 1e-3),
            (0.5, 1e10),
            (1e5, 3.0),
            (1e-3, 1e-3),
            (0.15, 7e4),
        ],
    )
    def test_large_and_mixed_against_mpmath(self, a, b):
        ta = torch.tensor(a, dtype=F64, requires_grad=True)
        tb = torch.tensor(b, dtype=F64, requires_grad=True)
        out = betaln(ta, tb)
        out.backward()
        with mpmath.workdps(50):
            ref = mp_betaln(a, b)
            da = mpmath.psi(0, a) - mpmath.psi(0, mpmath.mpf(a) + b)
            db = mpmath.psi(0, b) - mpmath.psi(0, mpmath.mpf(a) + b)
        assert out.item() == pytest.approx(float(ref), rel=self.TOL, abs=self.TOL)
        assert ta.grad.item() == pytest.approx(float(da), rel=1e-12)
        assert tb.grad.item() == pytest.approx(float(db), rel=1e-12)

    def test_symmetric_shapes_dtypes_and_domain(self):
        out = betaln(torch.tensor([[0.5], [4.0]]), torch.tensor([0.5, 3.0, 1e4]))
        assert out.shape == (2, 3) and out.dtype == torch.float32
        torch.testing.assert_close(out, betaln(torch.tensor([0.5, 3.0, 1e4]), torch.tensor([[0.5], [4.0]])))
        assert torch.isnan(betaln(torch.tensor([-1.0, 0.0]), 2.0)).all()

    def test_gradcheck(self):
        a = torch.tensor([0.3, 2.0, 150.0], dtype=F64, requires_grad=True)
        b = torch.tensor([4.0, 0.01, 90.0], dtype=F64, requires_grad=True)
        assert torch.autograd.gradcheck(betaln, (a, b), eps=1e-6, atol=1e-8, rtol=1e-6)


class TestGammaDifferences:
    """The parameter-term helpers of every backend's algorithm (reference implementation) against mpmath."""

    def test_lgamma_diff_product_form_and_overflow_fallback(self):
        from gbs_loss.special._gamma import lgamma_diff

        q = [1e-3, 0.5, 3.0, 9.99, 10.0, 1e-300, 1e-308, 2.0, 1e-5]
        p = [0.2, 1e-12, 0.05, 0.2, 0.1, 0.2, 0.2, 1e6, 1e-3]
        got = lgamma_diff(torch.tensor(q, dtype=F64), torch.tensor(p, dtype=F64)).numpy()
        with mpmath.workdps(60):
            ref = [
                float(mpmath.loggamma(mpmath.mpf(qi) + pi) - mpmath.loggamma(qi)) for qi, pi in zip(q, p, strict=True)
            ]
        assert np.isfinite(got).all()  # 1e-308: the product overflows, the ten logarithms are used
        # Absolute accuracy is what log J needs (the Stirling differences leave ~1e-18 for tiny p).
        np.testing.assert_allclose(got, ref, rtol=1e-14, atol=1e-17)

    def test_digamma_diff_against_mpmath(self):
        from gbs_loss.special._gamma import digamma_diff

        rng = np.random.default_rng(12)
        d = log_uniform(rng, 1e-3, 1e6, 300)
        delta = d * rng.uniform(-0.999, 3.0, 300)
        got = digamma_diff(torch.tensor(d), torch.tensor(delta)).numpy()
        with mpmath.workdps(60):
            ref = np.array(
                [float(mpmath.psi(0, mpmath.mpf(di) + dl) - mpmath.psi(0, di)) for di, dl in zip(d, delta, strict=True)]
            )
        np.testing.assert_allclose(got, ref, rtol=1e-13)


class TestBetaLogProb:
    def test_against_scipy(self):
        rng = np.random.default_rng(5)
        a, b = log_uniform(rng, 1e-2, 1e2, 2000), log_uniform(rng, 1e-2, 1e2, 2000)
        x = rng.uniform(0.0, 1.0, 2000)
        got = beta_log_prob(torch.tensor(x), torch.tensor(a), torch.tensor(b)).numpy()
        np.testing.assert_allclose(got, stats.beta.logpdf(x, a, b), rtol=1e-12, atol=1e-12)

    def test_against_oracle_density(self):
        # log of the mpmath density dI/dx, where it does not underflow: an absolute error of 1e-11 is a
        # relative error of 1e-11 of the density; a log-density of magnitude L is only exact to ~ L * eps.
        o = oracle()
        keep = o["d_x"] > 1e-300
        got = beta_log_prob(torch.tensor(o["x"][keep]), torch.tensor(o["a"][keep]), torch.tensor(o["b"][keep]))
        ref = np.log(o["d_x"][keep])
        tol = 1e-11 + 4 * np.finfo(np.float64).eps * np.abs(ref)
        err = np.abs(got.numpy() - ref)
        i = int(np.argmax(err / tol))
        assert err[i] <= tol[i], f"a={o['a'][keep][i]!r} b={o['b'][keep][i]!r} x={o['x'][keep][i]!r}: {err[i]:.2e}"

    @pytest.mark.parametrize("x", [0.0, 1.0])
    @pytest.mark.parametrize("ab", [0.5, 1.0, 3.0])
    def test_ends_match_scipy(self, x, ab):
        # +inf, log(ab) or -inf at either end for ab < 1, = 1, > 1
        got = beta_log_prob(torch.tensor(x, dtype=F64), ab, ab).item()
        ref = float(stats.beta.logpdf(x, ab, ab))
        if math.isfinite(ref):
            assert got == pytest.approx(ref, rel=1e-14)
        else:
            assert got == ref

    def test_gradcheck_and_consistency_with_betainc(self):
        x = torch.tensor([0.1, 0.5, 0.93], dtype=F64, requires_grad=True)
        a = torch.tensor([0.6, 3.0, 40.0], dtype=F64, requires_grad=True)
        b = torch.tensor([0.4, 2.0, 7.0], dtype=F64, requires_grad=True)
        assert torch.autograd.gradcheck(beta_log_prob, (x, a, b), eps=1e-6, atol=1e-8, rtol=1e-6)
        res = value_and_grads(a.detach(), b.detach(), x.detach())
        np.testing.assert_allclose(beta_log_prob(x, a, b).detach().exp().numpy(), res["d_x"], rtol=1e-13)


# --------------------------------------------------------------------------------------------------------
# Exhaustive (slow): larger grids and more hypothesis examples.
# --------------------------------------------------------------------------------------------------------
@pytest.mark.slow
class TestSlow:
    def test_float64_large_grid_against_scipy(self):
        check_against_scipy(*wide_grid(10, 100_000), max_disputed=500)

    @settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(points)
    def test_range_signs_and_reflection_many(self, pts):
        TestProperties.test_range_and_gradient_signs.hypothesis.inner_test(TestProperties(), pts)
        TestProperties.test_reflection.hypothesis.inner_test(TestProperties(), pts)
