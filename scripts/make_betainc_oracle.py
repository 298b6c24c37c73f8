"""High-precision oracle for the regularized incomplete beta function and its three partial derivatives.

For seeded points grouped in named regions this script computes, with mpmath at high precision,

    I_x(a, b),   dI/da,   dI/db,   dI/dx = x^(a-1) (1-x)^(b-1) / B(a, b)

and stores them in ``tests/data/betainc_oracle.npz`` (float64, with the mpmath version and the precision).
Every ``a`` and ``b``, and every ``x`` except the points flagged ``f32 = False`` (``x`` closer to 1 than
float32 can represent), is exactly representable in float32, so one table serves float32 and float64 tests.

Method (primary). With y = 1 - x, the hypergeometric series

    I_x(a, b) = P * S,   P = x^a y^b / (a B(a, b)),   S = sum_n t_n,   t_0 = 1,
    t_{n+1} = t_n (a + b + n) x / (a + 1 + n)

has positive terms, so it is summed without cancellation; its derivatives with respect to a and b are summed
term by term in forward mode (d log t_{n+1}/da = d log t_n/da + 1/(a+b+n) - 1/(a+1+n), and
d log t_{n+1}/db = d log t_n/db + 1/(a+b+n)), with d log P/da = log x - 1/a - psi(a) + psi(a+b) and
d log P/db = log y - psi(b) + psi(a+b). Either I_x(a, b) is summed directly or 1 - I_y(b, a), whichever needs
fewer terms (accounting for the digits that cancel: in the value of 1 - I_y(b, a) when I is small, in the
derivatives of the direct sum when I is close to 1), with the working precision raised by that many digits.
Every point is computed at two working precisions 20 digits apart, and the precision is raised until they
agree to 10^-dps in all four quantities.

Method (cross-check). On a subset of every region the four quantities are recomputed independently by
tanh-sinh quadrature of the integral representations

    I = int_0^x f,   dI/da = int_0^x f (log t - psi(a) + psi(a+b)),
    dI/db = int_0^x f (log(1-t) - psi(b) + psi(a+b))

with f the Beta density (or the complementary integrals over [x, 1] above the mean), split at the mean plus
multiples of the standard deviation, and with the substitution u = t^a (u = (1-t)^b) that removes the endpoint
singularity when a < 1 (b < 1). The largest relative disagreement is printed and stored.

Usage: ``python scripts/make_betainc_oracle.py`` (a few minutes on one core with gmpy2 installed, which
mpmath uses automatically; several times longer without it). ``--quick`` computes a handful of points per
region and writes nothing; ``--regions NAME ...`` recomputes only those regions and merges them into the
existing table (the other regions are kept; every region has its own seeded generator, so the table equals
the one a full run would write).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import mpmath
import numpy as np
from mpmath import mp, mpf
from scipy import special

REGIONS = (
    "generic",
    "moderate",
    "quantile",
    "tiny",
    "large",
    "near_mean",
    "x_near_0",
    "x_near_1",
    "skewed",
    "integer",
    "deep_ends",
    "complement_band",
)

# Points per region.
COUNTS = {
    "generic": 400,
    "moderate": 300,
    "quantile": 400,
    "tiny": 350,
    "large": 350,
    "near_mean": 400,
    "x_near_0": 300,
    "x_near_1": 350,
    "skewed": 300,
    "integer": 250,
    "deep_ends": 150,
    "complement_band": 200,
}

F32_TINY = float(np.finfo(np.float32).tiny)
ONE_MINUS_F32 = 1.0 - 2.0**-24  # largest float32 below 1


# --------------------------------------------------------------------------------------------------------
# Point generation.
# --------------------------------------------------------------------------------------------------------
def f32(v: float) -> float:
    """Round to the nearest float32 and return it as a Python float (exact in float64)."""
    return float(np.float32(v))


def loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def valid_x32(x: float) -> bool:
    return F32_TINY <= x <= ONE_MINUS_F32


def quantile_x(rng: np.random.Generator, a: float, b: float) -> float | None:
    """A float32 x at a uniformly random quantile of Beta(a, b), or None if it rounds to 0 or 1."""
    u = rng.uniform(0.001, 0.999)
    x = f32(float(special.betaincinv(a, b, u)))
    return x if valid_x32(x) else None


def mean_sd(a: float, b: float) -> tuple[float, float]:
    s = a + b
    return a / s, math.sqrt(a * b / (s * s * (s + 1.0)))


def draw_point(region: str, rng: np.random.Generator) -> tuple[float, float, float] | None:
    """One candidate point (a, b, x) of a region; None to reject and redraw."""
    if region == "generic":
        a, b = f32(loguniform(rng, 1e-3, 1e5)), f32(loguniform(rng, 1e-3, 1e5))
        x = f32(rng.uniform(0.0, 1.0))
    elif region == "moderate":
        a, b = f32(loguniform(rng, 0.05, 50.0)), f32(loguniform(rng, 0.05, 50.0))
        x = f32(rng.uniform(0.0, 1.0))
    elif region == "quantile":
        a, b = f32(loguniform(rng, 1e-3, 1e5)), f32(loguniform(rng, 1e-3, 1e5))
        x = quantile_x(rng, a, b)
    elif region == "tiny":
        a, b = f32(loguniform(rng, 1e-3, 1e-2)), f32(loguniform(rng, 1e-3, 1e5))
        if rng.uniform() < 0.5:
            a, b = b, a
        kind = rng.integers(3)
        if kind == 0:
            x = f32(rng.uniform(0.0, 1.0))
        elif kind == 1:
            x = quantile_x(rng, a, b)
        else:
            x = f32(loguniform(rng, 1e-30, 1.0))
    elif region == "large":
        a, b = f32(loguniform(rng, 1e3, 1e5)), f32(loguniform(rng, 1e3, 1e5))
        m, s = mean_sd(a, b)
        x = f32(rng.uniform(0.0, 1.0)) if rng.uniform() < 0.1 else f32(m + rng.uniform(-10.0, 10.0) * s)
    elif region == "near_mean":
        a = loguniform(rng, 5.0, 2e4)
        kind = rng.integers(4)
        if kind == 0:
            b = a
        elif kind == 1:
            b = a + float(rng.choice([-1.0, -0.5, 0.5, 1.0]))
        else:
            b = a * (1.0 + float(rng.choice([-1.0, 1.0])) * loguniform(rng, 1e-5, 0.1))
        a, b = f32(a), f32(b)
        m, s = mean_sd(a, b)
        k = float(rng.choice([0.0, 0.0, 0.01, -0.01, 0.3, -0.3, 1.0, -1.0, 2.5, -2.5, 5.0, -5.0]))
        x = f32(m + k * s)
    elif region == "x_near_0":
        a, b = f32(loguniform(rng, 1e-3, 1e5)), f32(loguniform(rng, 1e-3, 1e5))
        x = f32(loguniform(rng, 1e-12, 1e-3))
    elif region == "x_near_1":
        a, b = f32(loguniform(rng, 1e-3, 1e5)), f32(loguniform(rng, 1e-3, 1e5))
        if rng.uniform() < 0.5:
            # exactly representable in float32: 1 - k 2^-24
            k = int(round(loguniform(rng, 1.0, 2.0**24 * 1e-3)))
            x = 1.0 - k * 2.0**-24
        else:
            # float64 only: 1 - x down to 1e-12
            x = float(1.0 - loguniform(rng, 1e-12, 1e-3))
    elif region == "skewed":
        small, big = f32(loguniform(rng, 1e-3, 0.1)), f32(loguniform(rng, 1e3, 1e5))
        a, b = (small, big) if rng.uniform() < 0.5 else (big, small)
        kind = rng.integers(3)
        if kind == 0:
            x = quantile_x(rng, a, b)
        elif kind == 1:
            x = f32(loguniform(rng, 1e-12, 1.0))
        else:
            x = f32(1.0 - loguniform(rng, 2.0**-24, 1.0))
    elif region == "integer":

        def draw_int() -> float:
            kind = rng.integers(3)
            if kind == 0:
                return float(rng.integers(1, 31))
            if kind == 1:
                return float(round(loguniform(rng, 1.0, 1e4)))
            return float(rng.integers(0, 60)) + 0.5

        a, b = draw_int(), draw_int()
        x = f32(rng.uniform(0.0, 1.0)) if rng.uniform() < 0.5 else quantile_x(rng, a, b)
    elif region == "deep_ends":
        a, b = f32(loguniform(rng, 1e-3, 1e5)), f32(loguniform(rng, 1e-3, 1e5))
        if rng.uniform() < 0.5:
            x = f32(loguniform(rng, 1e-30, 1e-12))
        else:
            # 1 - x from 2^-53 (the float64 spacing below 1) up to 1e-12; float64 only
            x = float(1.0 - math.ldexp(float(round(loguniform(rng, 1.0, 1e-12 * 2.0**53))), -53))
    elif region == "complement_band":
        # Issue 11, defect 1: after the swap to I_{1-x}(b, a) with b tiny, J = I_{1-x}(b, a) is close to 1 and
        # 1 - J cancels unless the complement series is used; the band is x just above the switch point
        # (a+1)/(a+b+2) with 1 - x > 0.3, i.e. a up to about 1.33.
        b = f32(loguniform(rng, 1e-3, 0.2))
        kind = rng.integers(4)
        a = f32(rng.uniform(1.15, 1.4)) if kind == 0 else f32(loguniform(rng, 1e-3, 1.4))
        s = (a + 1.0) / (a + b + 2.0)
        if kind <= 1:
            x = f32(s + loguniform(rng, 1e-7, 1.0) * 0.02)  # just above the switch point
        elif kind == 2:
            x = f32(rng.uniform(s, max(s, 0.7)))  # 1 - x > 0.3 where the band allows it
        else:
            x = f32(rng.uniform(s, 0.95))
        if not x > s:
            return None
    else:
        raise ValueError(region)
    if x is None or not (0.0 < x < 1.0):
        return None
    return a, b, x


def make_points(seed: int, counts: dict[str, int]) -> list[tuple[str, float, float, float]]:
    points = []
    for i, region in enumerate(REGIONS):
        rng = np.random.default_rng([seed, i])
        got = 0
        while got < counts[region]:
            p = draw_point(region, rng)
            if p is not None:
                points.append((region, *p))
                got += 1
    return points


# --------------------------------------------------------------------------------------------------------
# Primary method: hypergeometric series with forward-mode derivatives.
# --------------------------------------------------------------------------------------------------------
def estimate_terms(a: float, b: float, x: float, digits: float) -> float:
    """Rough number of series terms t_n needed (float64 arithmetic, for choosing a side)."""
    if x <= 0.0:
        return 1.0
    if x >= 1.0:
        return 1e12
    lx = math.log(x)

    def logt(n: float) -> float:
        return math.lgamma(a + b + n) - math.lgamma(a + b) - math.lgamma(a + 1 + n) + math.lgamma(a + 1) + n * lx

    peak = max(0.0, math.ceil(((a + b) * x - a - 1.0) / (1.0 - x)))
    target = logt(peak) - digits * math.log(10.0) - 5.0
    hi = peak + 1.0
    while logt(hi) > target:
        hi = peak + 2.0 * (hi - peak)
        if hi > 1e12:
            return 1e12
    lo = peak
    while hi - lo > 1.0 + 1e-3 * hi:
        mid = 0.5 * (lo + hi)
        if logt(mid) > target:
            lo = mid
        else:
            hi = mid
    return hi


def series(a: mpf, b: mpf, x: mpf, y: mpf, max_terms: int = 5_000_000) -> tuple[mpf, mpf, mpf]:
    """I_x(a, b), dI/da, dI/db by the hypergeometric series at the current working precision."""
    ab = a + b
    a1 = a + 1
    lnx, lny = mpmath.log(x), mpmath.log(y)
    psi_ab = mpmath.psi(0, ab)
    log_p = a * lnx + b * lny - mpmath.log(a) - (mpmath.loggamma(a) + mpmath.loggamma(b) - mpmath.loggamma(ab))
    dlp_da = lnx - 1 / a - mpmath.psi(0, a) + psi_ab
    dlp_db = lny - mpmath.psi(0, b) + psi_ab
    tol = mpf(2) ** (-mp.prec - 10)
    s, sa, sb = mpf(1), mpf(0), mpf(0)
    t, da, db = mpf(1), mpf(0), mpf(0)
    n = 0
    while True:
        num = ab + n
        den = a1 + n
        inv_num = 1 / num
        inv_den = 1 / den
        t = t * x * num * inv_den
        da += inv_num - inv_den
        db += inv_num
        s += t
        sa += t * da
        sb += t * db
        n += 1
        if (n & 15) == 0:
            r = (ab + n) * x / (a1 + n)  # next ratio; ratios move monotonically towards x
            rmax = max(r, x)
            if r < 1 and t * (1 + abs(da) + db + n) < tol * (1 - rmax) * s:
                break
            if n > max_terms:
                raise RuntimeError(f"series did not converge for a={a}, b={b}, x={x}")
    p = mpmath.exp(log_p)
    return p * s, p * (dlp_da * s + sa), p * (dlp_db * s + sb)


def density(a: mpf, b: mpf, x: mpf, y: mpf) -> mpf:
    log_b = mpmath.loggamma(a) + mpmath.loggamma(b) - mpmath.loggamma(a + b)
    return mpmath.exp((a - 1) * mpmath.log(x) + (b - 1) * mpmath.log(y) - log_b)


def _digits_below_one(a: float, b: float, x: float) -> float:
    """About -log10 I_x(a, b) (float64 estimate, with a bound from the prefactor where it underflows)."""
    est = float(special.betainc(a, b, x))
    if est > 0.0:
        return max(0.0, -math.log10(est))
    return 300.0 + max(0.0, -(a * math.log(x) + b * math.log1p(-x)) / math.log(10.0))


def choose_side(a: float, b: float, x: float, dps: int) -> tuple[bool, int]:
    """(use the complement, extra digits needed) by comparing the estimated costs of both sides.

    Summing I_x(a, b) directly, the derivatives cancel when I is close to 1 (they are of the order of 1 - I
    while the terms are of order 1); summing 1 - I_y(b, a), everything cancels when I is close to 0.
    """
    y = 1.0 - x
    n_left = estimate_terms(a, b, x, dps)
    n_right = estimate_terms(b, a, y, dps)
    extra_left = int(math.ceil(_digits_below_one(b, a, y))) + 5
    extra_right = int(math.ceil(_digits_below_one(a, b, x))) + 5
    cost_left = n_left * ((dps + extra_left) / dps) ** 1.6
    cost_right = n_right * ((dps + extra_right) / dps) ** 1.6
    if cost_right < cost_left:
        return True, extra_right
    return False, extra_left


def _evaluate(a_f: float, b_f: float, x_f: float, complement: bool, work: int) -> list[mpf]:
    with mp.workdps(work):
        a, b, x = mpf(a_f), mpf(b_f), mpf(x_f)
        y = 1 - x  # exact: x >= 1e-30 needs at most 53 + 100 bits
        if complement:
            v, dv_db, dv_da = series(b, a, y, x)
            vals = [1 - v, -dv_da, -dv_db]
        else:
            vals = list(series(a, b, x, y))
        vals.append(density(a, b, x, y))
        return vals


def _disagreement(lo: list[mpf], hi: list[mpf]) -> float:
    worst = 0.0
    for u, v in zip(lo, hi, strict=True):
        if v != 0:
            worst = max(worst, float(abs((u - v) / v)))
        elif u != 0:
            worst = 1.0
    return worst


def oracle_point(a_f: float, b_f: float, x_f: float, dps: int) -> tuple[list[mpf], float, int]:
    """[I, dI/da, dI/db, dI/dx] correct to about ``dps`` digits.

    The quantities are computed at two working precisions 20 digits apart; when they disagree by more than
    10^-dps (cancellation: a derivative far smaller than the series terms), the precision is raised by the
    number of digits lost and the pair recomputed. Returns the values, the final disagreement and the
    working precision used.
    """
    complement, extra = choose_side(a_f, b_f, x_f, dps)
    work = dps + 10 + extra
    for _ in range(6):
        lo = _evaluate(a_f, b_f, x_f, complement, work)
        hi = _evaluate(a_f, b_f, x_f, complement, work + 20)
        with mp.workdps(work + 40):
            agree = _disagreement(lo, hi)
        if agree <= 10.0**-dps:
            return hi, agree, work + 20
        lost = dps + 10 + (math.log10(agree) if agree > 0 else 0.0)
        work += max(int(math.ceil(lost)), work)
    raise RuntimeError(f"no convergence at a={a_f!r} b={b_f!r} x={x_f!r}: {agree:.1e}")


# --------------------------------------------------------------------------------------------------------
# Cross-check: quadrature of the integral representations.
# --------------------------------------------------------------------------------------------------------
def _quad_lower(a: mpf, b: mpf, x: mpf) -> list[mpf]:
    """int_0^x f, int_0^x f (log t - psi(a) + psi(a+b)), int_0^x f (log(1-t) - psi(b) + psi(a+b))."""
    ab = a + b
    y = 1 - x
    log_b = mpmath.loggamma(a) + mpmath.loggamma(b) - mpmath.loggamma(ab)
    psi_ab = mpmath.psi(0, ab)
    ca = -mpmath.psi(0, a) + psi_ab
    cb = -mpmath.psi(0, b) + psi_ab
    m = a / ab
    sd = mpmath.sqrt(a * b / (ab * ab * (ab + 1)))
    # Breakpoints: around the bulk of the density, geometric towards 0 and towards 1, and on the scale of
    # the exponential decay of the integrand below x (1 / |d log f / dt| at x).
    cuts = {m + k * sd for k in (-40, -20, -10, -5, -2, -1, 0, 1, 2)}
    cuts |= {x * mpf(10) ** -k for k in (1, 2, 4, 8, 16)} | {1 - y * mpf(10) ** k for k in (1, 2, 4, 8)}
    slope = abs((a - 1) / x - (b - 1) / y)
    if slope > 0:
        cuts |= {x - mpf(2) ** k / slope for k in range(0, 14)}
    edges_t = [mpf(0), *sorted(c for c in cuts if 0 < c < x), x]

    # mpmath's quadrature tests convergence in absolute terms: integrate the density divided by its largest
    # value on [0, x] (reached at x, at the mode, or at 0 when the substitution below is used), then divided
    # by a first estimate of the integral.
    def log_density(t):
        return (a - 1) * mpmath.log(t) + (b - 1) * mpmath.log1p(-t) - log_b

    if a < 1:
        # u = t^a removes the singularity t^(a-1) at 0: f dt = (1-t)^(b-1) / (a B) du, log t = log(u) / a
        log_scale = max((b - 1) * mpmath.log1p(-x), mpf(0)) - log_b - mpmath.log(a)

        def parts(u):
            t = u ** (1 / a)
            l1t = mpmath.log1p(-t)
            w = mpmath.exp((b - 1) * l1t - log_b - mpmath.log(a) - log_scale)
            return w, w * (mpmath.log(u) / a + ca), w * (l1t + cb)

        edges = [e**a for e in edges_t]
    else:
        mode = (a - 1) / (ab - 2) if ab > 2 else mpf(0)
        log_scale = max(log_density(t) for t in (x, mode) if 0 < t <= x) if mode < x else log_density(x)

        def parts(t):
            lt, l1t = mpmath.log(t), mpmath.log1p(-t)
            w = mpmath.exp((a - 1) * lt + (b - 1) * l1t - log_b - log_scale)
            return w, w * (lt + ca), w * (l1t + cb)

        edges = edges_t
    # Second pass: rescale by the first estimate of the integral, so that it is of order one.
    first = mpmath.quad(lambda s: parts(s)[0], edges)
    log_scale += mpmath.log(first)
    scale = mpmath.exp(log_scale)
    return [scale * mpmath.quad(lambda s, i=i: parts(s)[i], edges) for i in range(3)]


def quad_point(a_f: float, b_f: float, x_f: float, dps: int) -> list[mpf]:
    """[I, dI/da, dI/db, dI/dx] by quadrature; above the mean through I_x(a, b) = 1 - I_{1-x}(b, a)."""
    with mp.workdps(dps):
        a, b, x = mpf(a_f), mpf(b_f), mpf(x_f)
        y = 1 - x
        if x <= a / (a + b):
            vals = _quad_lower(a, b, x)
        else:
            v, dv_db, dv_da = _quad_lower(b, a, y)
            vals = [1 - v, -dv_da, -dv_db]
        vals.append(density(a, b, x, y))
        return vals


def _merge(path: Path, reg, abx, out, agreement, cross, elapsed):
    """Merge freshly computed regions into the table at ``path``: rows in region order, the others kept."""
    with np.load(path) as old:
        old_names = [str(r) for r in old["region_names"]]
        old_abx = np.stack([old["a"], old["b"], old["x"]], axis=1)
        old_out = np.stack([old[q] for q in ("value", "d_a", "d_b", "d_x")], axis=1)
        old_reg = np.array([REGIONS.index(old_names[i]) for i in old["region"]], dtype=np.int8)
        old_agree = float(old["self_agreement"])
        cross = max(cross, float(old["cross_check"]))
        elapsed += float(old["generation_seconds"])
    parts = []
    for i in range(len(REGIONS)):
        new_rows = reg == i
        src = (reg, abx, out) if new_rows.any() else (old_reg, old_abx, old_out)
        rows = src[0] == i
        parts.append((src[0][rows], src[1][rows], src[2][rows]))
    reg = np.concatenate([p[0] for p in parts])
    abx = np.concatenate([p[1] for p in parts])
    out = np.concatenate([p[2] for p in parts])
    agreement = np.concatenate([agreement, [old_agree]])
    return reg, abx, out, agreement, cross, elapsed


# --------------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_out = Path(__file__).resolve().parents[1] / "tests" / "data" / "betainc_oracle.npz"
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--seed", type=int, default=20240611)
    parser.add_argument("--dps", type=int, default=50, help="digits required of every quantity")
    parser.add_argument("--check-per-region", type=int, default=25, help="points per region cross-checked")
    parser.add_argument("--quick", action="store_true", help="a few points per region, no file written")
    parser.add_argument(
        "--regions",
        nargs="+",
        choices=REGIONS,
        help="compute only these regions and merge them into the existing --out file, whose other regions are "
        "kept (each region has its own seeded generator, so the result equals that of a full run)",
    )
    args = parser.parse_args()

    wanted = set(args.regions or REGIONS)
    counts = {r: (0 if r not in wanted else 6 if args.quick else c) for r, c in COUNTS.items()}
    points = make_points(args.seed, counts)
    backend = mpmath.libmp.BACKEND
    print(f"mpmath {mpmath.__version__} (backend {backend}), {len(points)} points, dps {args.dps}")
    n = len(points)
    out = np.zeros((n, 4))
    agreement = np.zeros(n)
    max_work = 0
    t0 = time.perf_counter()
    for i, (_, a, b, x) in enumerate(points):
        vals, agree, work = oracle_point(a, b, x, args.dps)
        agreement[i] = agree
        max_work = max(max_work, work)
        out[i] = [float(v) for v in vals]
        if (i + 1) % 200 == 0:
            print(f"  {i + 1}/{n} points, {time.perf_counter() - t0:.0f} s", flush=True)
    elapsed = time.perf_counter() - t0
    print(
        f"series: {elapsed:.0f} s, largest disagreement between two working precisions "
        f"{agreement.max():.1e}, highest working precision {max_work} digits"
    )

    # Independent cross-check on a subset of every region.
    t1 = time.perf_counter()
    regions = np.array([p[0] for p in points])
    check_dps = 60
    worst = {}
    for region in REGIONS:
        members = np.flatnonzero(regions == region)
        idx = members[np.linspace(0, len(members) - 1, min(args.check_per_region, len(members))).astype(int)]
        w = 0.0
        for j in idx:
            _, a, b, x = points[j]
            ref = quad_point(a, b, x, check_dps)
            series_vals = oracle_point(a, b, x, args.dps)[0]
            with mp.workdps(check_dps + 10):
                for q, s in zip(ref, series_vals, strict=True):
                    if s != 0:
                        w = max(w, float(abs((q - s) / s)))
        worst[region] = w
        print(f"  cross-check {region:10s} {len(idx):3d} points: max rel. difference {w:.1e}", flush=True)
    cross = max(worst.values())
    print(f"quadrature cross-check: {time.perf_counter() - t1:.0f} s, max relative difference {cross:.1e}")

    # float64 sanity check of the values against scipy
    sc = special.betainc(
        np.array([p[1] for p in points]), np.array([p[2] for p in points]), np.array([p[3] for p in points])
    )
    mask = out[:, 0] > 1e-300
    scipy_err = np.max(np.abs(sc[mask] - out[mask, 0]) / out[mask, 0])
    print(f"scipy float64 values: max rel. difference {scipy_err:.1e}")

    if args.quick:
        return
    region_index = {r: i for i, r in enumerate(REGIONS)}
    reg = np.array([region_index[p[0]] for p in points], dtype=np.int8)
    abx = np.array([p[1:] for p in points])
    if args.regions:
        reg, abx, out, agreement, cross, elapsed = _merge(args.out, reg, abx, out, agreement, cross, elapsed)
    f32_exact = (abx.astype(np.float32).astype(np.float64) == abx).all(axis=1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        a=abx[:, 0],
        b=abx[:, 1],
        x=abx[:, 2],
        value=out[:, 0],
        d_a=out[:, 1],
        d_b=out[:, 2],
        d_x=out[:, 3],
        region=reg,
        region_names=np.array(REGIONS),
        f32=f32_exact,
        mpmath_version=np.array(mpmath.__version__),
        dps=np.array(args.dps),
        seed=np.array(args.seed),
        self_agreement=np.array(agreement.max()),
        cross_check=np.array(cross),
        generation_seconds=np.array(elapsed),
    )
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
