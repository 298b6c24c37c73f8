"""Tests of ``betaincinv``, the inverse of the regularized incomplete beta function in x, and its gradients.

Accuracy is measured as the relative error in ``x`` against what the condition number allows (the contract of
:func:`gbs_loss.special.inverse.betaincinv`, see ``docs/betaincinv.md``):

    |x - x_ref| / x_ref <= 1e-12 + C * kappa * eps,    kappa = min(y, 1 - y) / (min(x, 1 - x) * f(x)),

with ``f`` the Beta density and ``eps = 2**-52``: ``kappa`` is the factor by which a relative error in
``min(y, 1 - y)`` (one rounding of y, or the error of ``betainc`` itself) becomes a relative error in
``min(x, 1 - x)``. Oracles: mpmath at 50 digits (values and gradients), ``scipy.special.betaincinv`` where it
round-trips, and the round trip through :func:`gbs_loss.betainc`.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import special

from gbs_loss.special import betainc
from gbs_loss.special.inverse import _solve, betaincinv

F64 = torch.float64
EPS = float(np.finfo(np.float64).eps)
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Factor C on kappa * eps in the allowed error (betainc's own relative error is a few eps to ~30 eps for tiny
# parameters; the inverse inherits it times kappa).
C_KAPPA = 64.0


def _points(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """a, b log-uniform in [1e-3, 1e5]; y uniform, log-uniform down to 1e-300, and within 1e-16..1e-1 of 1."""
    rng = np.random.default_rng(seed)
    a = 10 ** rng.uniform(-3, 5, n)
    b = 10 ** rng.uniform(-3, 5, n)
    kind = rng.integers(0, 4, n)
    y = np.select(
        [kind == 0, kind == 1, kind == 2],
        [rng.uniform(0, 1, n), 10 ** -rng.uniform(0, 300, n), 1 - 10 ** -rng.uniform(1, 16, n)],
        10 ** -rng.uniform(0, 13, n),
    )
    return a, b, y


def _density_and_kappa(a: np.ndarray, b: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """kappa = min(y, 1 - y) / (min(x, 1 - x) f(x)), with f from betainc's x-derivative on the exact side."""
    small = x <= 0.5
    z = np.where(small, x, 1 - x)
    za = torch.tensor(np.where(small, a, b), dtype=F64)
    zb = torch.tensor(np.where(small, b, a), dtype=F64)
    zt = torch.tensor(z, dtype=F64, requires_grad=True)
    betainc(za, zb, zt).sum().backward()
    dens = zt.grad.numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = np.minimum(y, 1 - y) / (z * dens)
    return np.where(np.isfinite(kappa), kappa, np.inf)


def _rel(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        err = np.abs(got - ref) / np.abs(ref)
    err = np.where(got == ref, 0.0, err)
    return np.where(np.isfinite(err), err, np.inf)


def _mp_betainc(a: mpmath.mpf, b: mpmath.mpf, x: mpmath.mpf) -> mpmath.mpf:
    """I_x(a, b) by the series x^a (1-x)^b / (a B(a, b)) * sum_n (a+b)_n / (a+1)_n x^n, for x below the mean.

    (``mpmath.betainc`` does not converge for some large a, b.) The terms fall geometrically once their ratio
    (a + b + n) x / (a + 1 + n) is below 1, which holds for every n when x < (a + 1) / (a + b).
    """
    log_pref = a * mpmath.log(x) + b * mpmath.log1p(-x) - mpmath.log(a) - mpmath.log(mpmath.beta(a, b))
    term, total, n = mpmath.mpf(1), mpmath.mpf(1), 0
    while abs(term) > mpmath.mpf(10) ** (-mpmath.mp.dps - 5) * total:
        term *= (a + b + n) * x / (a + 1 + n)
        total += term
        n += 1
    return mpmath.exp(log_pref) * total


def _mp_inverse(a: float, b: float, y: float, x0: float) -> mpmath.mpf:
    """x with I_x(a, b) = y at the working precision: Newton's iteration with the density, from our answer."""
    am, bm, ym = mpmath.mpf(a), mpmath.mpf(b), mpmath.mpf(y)
    log_beta = mpmath.log(mpmath.beta(am, bm))
    x = mpmath.mpf(x0)
    for _ in range(6):
        dens = mpmath.exp((am - 1) * mpmath.log(x) + (bm - 1) * mpmath.log1p(-x) - log_beta)
        x = x - (_mp_cdf(am, bm, x) - ym) / dens
    return x


def _mp_cdf(a: mpmath.mpf, b: mpmath.mpf, x: mpmath.mpf) -> mpmath.mpf:
    """I_x(a, b) by the series on the side where it converges: I_x(a, b) or 1 - I_{1-x}(b, a)."""
    # The side whose first term ratio (and with it the geometric rate, which tends to x or 1 - x) is smaller.
    direct = x * (a + b) / (a + 1) <= (1 - x) * (a + b) / (b + 1)
    return _mp_betainc(a, b, x) if direct else 1 - _mp_betainc(b, a, 1 - x)


# --------------------------------------------------------------------------------------------------------
# Values.
# --------------------------------------------------------------------------------------------------------
class TestValues:
    def test_known_values(self):
        # Closed forms: I_x(a, 1) = x^a, I_x(1, b) = 1 - (1 - x)^b, I_x(1/2, 1/2) = 2 asin(sqrt x) / pi.
        y = torch.tensor([1e-300, 1e-20, 0.25, 0.5, 0.75, 1 - 1e-12], dtype=F64)
        yy = y.numpy()
        torch.testing.assert_close(betaincinv(3.0, 1.0, y), torch.tensor(np.cbrt(yy)), rtol=1e-13, atol=0)
        ref = -np.expm1(np.log1p(-yy) / 2.5)
        torch.testing.assert_close(betaincinv(1.0, 2.5, y), torch.tensor(ref), rtol=1e-13, atol=0)
        ref = np.sin(np.pi * yy / 2) ** 2
        torch.testing.assert_close(betaincinv(0.5, 0.5, y), torch.tensor(ref), rtol=1e-13, atol=0)

    def test_ends_and_invalid(self):
        y = torch.tensor([0.0, 1.0, -0.1, 1.1, math.nan, 0.5, 0.5, 0.5, 0.5], dtype=F64)
        a = torch.tensor([2.0, 2.0, 2.0, 2.0, 2.0, 0.0, -1.0, math.inf, math.nan], dtype=F64)
        x = betaincinv(a, 3.0, y)
        assert x[0] == 0 and x[1] == 1
        assert torch.isnan(x[2:]).all()

    def test_round_trip(self):
        a, b, y = _points(3000, seed=1)
        ta, tb, ty = torch.tensor(a), torch.tensor(b), torch.tensor(y)
        x = betaincinv(ta, tb, ty).numpy()
        assert np.isfinite(x).all() and (x >= 0).all() and (x <= 1).all()
        # The solver's own answer z = min(x, 1 - x), exact before the final rounding of 1 - z: the round trip
        # I(x) = y is checked there, in min(y, 1 - y), evaluating the CDF on the side where z is the argument.
        z_t, small_t = _solve(ta, tb, ty)
        z, small = z_t.numpy(), small_t.numpy()
        upper = y > 0.5
        tau = np.where(upper, 1 - y, y)
        lower_cdf = betainc(torch.where(small_t, ta, tb), torch.where(small_t, tb, ta), z_t).numpy()
        same = small != upper  # I_z is directly the lower-tail quantity wanted
        got = np.where(same, lower_cdf, 1 - lower_cdf)
        err = _rel(got, tau)
        kappa = _density_and_kappa(a, b, y, np.where(small, z, 1 - z))
        # Rounding z once moves the CDF by tau eps / kappa; betainc's own error is a few eps; where the CDF is
        # evaluated as a complement its absolute error eps becomes eps / tau.
        with np.errstate(divide="ignore"):
            allowed = 1e-12 + 4 * EPS / np.where(kappa > 0, kappa, np.inf) + 64 * EPS
        allowed = np.where(same, allowed, allowed + 4 * EPS / tau)
        keep = z > 1e-300  # answers below 1e-300: nothing is asked
        bad = keep & ~(err <= allowed)
        assert not bad.any(), [(a[i], b[i], y[i], z[i], err[i], allowed[i]) for i in np.where(bad)[0][:5]]

    def test_against_scipy(self):
        a, b, y = _points(3000, seed=2)
        x = betaincinv(torch.tensor(a), torch.tensor(b), torch.tensor(y)).numpy()
        ref = special.betaincinv(a, b, y)
        # Compare where scipy round-trips (its answer reproduces y to 1e-13) and the answer is normal.
        back = special.betainc(a, b, ref)
        ok = (_rel(back, y) < 1e-13) & (ref > 1e-300) & (ref < 1)
        kappa = _density_and_kappa(a, b, y, ref)
        err = _rel(x, ref)
        allowed = 1e-12 + C_KAPPA * kappa * EPS
        bad = ok & ~(err <= allowed)
        assert ok.sum() > 1500
        assert not bad.any(), [(a[i], b[i], y[i], x[i], ref[i], err[i], kappa[i]) for i in np.where(bad)[0][:5]]

    @pytest.mark.parametrize(
        ("label", "a", "b", "y"),
        [
            ("tiny a", 1e-2, 2.0, 0.3),
            ("tiny b", 0.7, 2e-3, 0.01),
            ("large a b", 3e4, 8e4, 1e-40),
            ("a = b large, mean", 2e4, 2e4, 0.5 + 1e-9),
            ("y near 0", 2.5, 0.4, 1e-250),
            ("y near 1", 40.0, 1.5, 1 - 3e-13),
            ("moderate", 3.3, 7.1, 0.61),
        ],
    )
    def test_against_mpmath(self, label, a, b, y):
        with mpmath.workdps(50):
            x = betaincinv(a, b, torch.tensor(y, dtype=F64)).item()
            ref = _mp_inverse(a, b, y, x)
            err = float(abs(mpmath.mpf(x) - ref) / ref)
        kappa = _density_and_kappa(np.array([a]), np.array([b]), np.array([y]), np.array([x]))[0]
        assert err <= 1e-12 + C_KAPPA * kappa * EPS, (label, x, ref, err, kappa)

    def test_float32_contract(self):
        a, b, y = _points(2000, seed=3)
        y32 = torch.tensor(y, dtype=torch.float32)
        a32, b32 = torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)
        got = betaincinv(a32, b32, y32)
        assert got.dtype == torch.float32
        ref = betaincinv(a32.double(), b32.double(), y32.double()).float().double().numpy()
        err = _rel(got.double().numpy(), ref)
        keep = ref > 1e-37  # normal float32 range
        assert (err[keep] <= 1e-5).all()
        assert torch.isfinite(got).all()

    def test_low_precision_and_numbers(self):
        for dtype in (torch.float16, torch.bfloat16):
            out = betaincinv(torch.tensor(2.0, dtype=dtype), 3.0, torch.tensor([0.1, 0.9], dtype=dtype))
            assert out.dtype == dtype
        assert betaincinv(2, 3, 0.5).dtype == torch.get_default_dtype()

    def test_no_nan_on_valid_extremes(self):
        vals = torch.tensor([1e-3, 1e-2, 0.5, 1.0, 2.0, 1e3, 1e5], dtype=F64)
        ys = torch.tensor([0.0, 1e-300, 1e-100, 1e-12, 0.3, 0.5, 1 - 1e-12, 1 - 1e-16, 1.0], dtype=F64)
        a, b, y = torch.meshgrid(vals, vals, ys, indexing="ij")
        x = betaincinv(a, b, y)
        assert torch.isfinite(x).all() and (x >= 0).all() and (x <= 1).all()


# --------------------------------------------------------------------------------------------------------
# Gradients.
# --------------------------------------------------------------------------------------------------------
class TestGradients:
    def test_against_mpmath(self):
        pts = [(a, b, y) for a in (0.05, 0.7, 3.0, 40.0) for b in (0.2, 2.5, 30.0) for y in (0.1, 0.6)]
        pts += [(2.0, 3.0, 1e-30), (50.0, 4.0, 1 - 1e-10), (0.05, 0.3, 0.5), (300.0, 200.0, 0.3)]
        a = torch.tensor([p[0] for p in pts], dtype=F64, requires_grad=True)
        b = torch.tensor([p[1] for p in pts], dtype=F64, requires_grad=True)
        y = torch.tensor([p[2] for p in pts], dtype=F64, requires_grad=True)
        x = betaincinv(a, b, y)
        x.sum().backward()
        with mpmath.workdps(40):
            for i, (ai, bi, yi) in enumerate(pts):
                xm = _mp_inverse(ai, bi, yi, x[i].item())
                am, bm = mpmath.mpf(ai), mpmath.mpf(bi)
                dens = xm ** (am - 1) * (1 - xm) ** (bm - 1) / mpmath.beta(am, bm)
                d_a = mpmath.diff(lambda s, xm=xm, bm=bm: _mp_cdf(s, bm, xm), am)
                d_b = mpmath.diff(lambda s, xm=xm, am=am: _mp_cdf(am, s, xm), bm)
                ref = {"a": -d_a / dens, "b": -d_b / dens, "y": 1 / dens}
                got = {"a": a.grad[i].item(), "b": b.grad[i].item(), "y": y.grad[i].item()}
                for k in ref:
                    err = abs(got[k] - ref[k]) / abs(ref[k])
                    assert err <= 1e-9, (k, ai, bi, yi, got[k], float(ref[k]), float(err))

    def test_gradcheck(self):
        a = torch.tensor([0.7, 2.0, 30.0], dtype=F64, requires_grad=True)
        b = torch.tensor([1.5, 0.4, 20.0], dtype=F64, requires_grad=True)
        y = torch.tensor([0.3, 0.8, 0.5], dtype=F64, requires_grad=True)
        assert torch.autograd.gradcheck(betaincinv, (a, b, y), eps=1e-7, atol=1e-6, rtol=1e-5)

    def test_broadcast_gradients(self):
        a = torch.tensor(2.0, dtype=F64, requires_grad=True)
        y = torch.tensor([[0.1, 0.5], [0.7, 0.9]], dtype=F64, requires_grad=True)
        x = betaincinv(a, 3.0, y)
        x.sum().backward()
        assert a.grad.shape == () and y.grad.shape == (2, 2)

    def test_end_gradients(self):
        y = torch.tensor([0.0, 1.0], dtype=F64, requires_grad=True)
        a = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
        x = betaincinv(a, 4.0, y)
        x.sum().backward()
        assert a.grad.tolist() == [0.0, 0.0]
        assert y.grad[0].item() == pytest.approx(0.25)  # a = 1 at x = 0: 1 / f(0) = 1 / b
        assert y.grad[1].item() == math.inf  # b > 1: the density vanishes at 1

    def test_double_backward_raises(self):
        y = torch.tensor([0.3], dtype=F64, requires_grad=True)
        (g,) = torch.autograd.grad(betaincinv(2.0, 3.0, y).sum(), y, create_graph=True)
        with pytest.raises(RuntimeError, match="first derivatives only"):
            g.sum().backward()


# --------------------------------------------------------------------------------------------------------
# Properties.
# --------------------------------------------------------------------------------------------------------
PARAM = st.floats(1e-3, 1e5).map(float)
PROB = st.floats(0.0, 1.0)


class TestProperties:
    @SETTINGS
    @given(PARAM, PARAM, st.lists(PROB, min_size=2, max_size=8))
    def test_monotone_and_in_unit_interval(self, a, b, ys):
        y = torch.tensor(sorted(ys), dtype=F64)
        x = betaincinv(a, b, y)
        assert ((x >= 0) & (x <= 1)).all()
        assert (x[1:] >= x[:-1]).all()

    @SETTINGS
    @given(PARAM, PARAM, st.floats(0.5, 1.0, exclude_min=True, exclude_max=True))
    def test_symmetry(self, a, b, y):
        # For y >= 1/2, 1 - y is exact, and both calls reduce to the same lower-tail problem: the answers agree
        # up to the final rounding of 1 - z.
        x = betaincinv(a, b, torch.tensor(y, dtype=F64)).item()
        xr = betaincinv(b, a, torch.tensor(1 - y, dtype=F64)).item()
        assert abs(x - (1 - xr)) <= EPS, (x, xr)


# --------------------------------------------------------------------------------------------------------
# Interface, errors, compile.
# --------------------------------------------------------------------------------------------------------
class TestInterface:
    def test_shapes(self):
        x = betaincinv(torch.ones(3, 1), torch.ones(1, 4) * 2, torch.full((3, 4), 0.5))
        assert x.shape == (3, 4)
        assert betaincinv(2.0, 3.0, torch.empty(0)).shape == (0,)

    def test_errors(self):
        with pytest.raises(TypeError, match="y must be"):
            betaincinv(2.0, 3.0, "0.5")
        with pytest.raises(TypeError, match="a must be"):
            betaincinv(torch.tensor([True]), 3.0, 0.5)
        with pytest.raises(ValueError, match="broadcast"):
            betaincinv(torch.ones(3), 3.0, torch.ones(4) / 2)

    def test_no_data_dependent_control_flow(self):
        # The solver compiles to one graph with dynamo: no .item(), no bool(), no data-dependent Python loop.
        a, b, y = (torch.tensor(v, dtype=F64) for v in ([0.5, 3.0], [2.0, 1e4], [0.3, 1e-20]))
        # Two steps are traced (the loop body is the same at any count; tracing twelve takes much longer).
        compiled = torch.compile(lambda a, b, y: _solve(a, b, y, 2), fullgraph=True, backend="eager")
        z, small = compiled(a, b, y)
        z0, small0 = _solve(a, b, y, 2)
        torch.testing.assert_close(z, z0, rtol=0, atol=0)
        assert torch.equal(small, small0)

    def test_compile_fullgraph_equals_eager(self):
        def f(a, b, y):
            return betaincinv(a, b, y) * 2

        a = torch.tensor([0.5, 3.0, 100.0], dtype=F64, requires_grad=True)
        y = torch.tensor([0.3, 1e-20, 0.9], dtype=F64, requires_grad=True)
        compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
        out = compiled(a, 2.0, y)
        out.sum().backward()
        ga, gy = a.grad.clone(), y.grad.clone()
        a.grad = y.grad = None
        ref = f(a, 2.0, y)
        ref.sum().backward()
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
        torch.testing.assert_close(ga, a.grad, rtol=0, atol=0)
        torch.testing.assert_close(gy, y.grad, rtol=0, atol=0)
