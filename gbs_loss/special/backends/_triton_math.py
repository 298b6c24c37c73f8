# Triton reads the annotations of @triton.jit parameters (tl.constexpr, and scalar types that change how a kernel is
# specialised), and triton.jit itself is untyped: the kernel functions are deliberately left unannotated.
# mypy: allow-untyped-defs, allow-incomplete-defs, allow-untyped-decorators
r"""The Triton kernel of `gbs_loss.betainc`: value and three partial derivatives in one pass, float64.

This module is the element-by-element twin of the torch reference (`gbs_loss.special._kernel`, with
`_gamma`, `_prefactor` and `_fraction`); see
those modules for the mathematics and the references (TOMS 708, Didonato & Morris 1992; Boik & Robinson-Cox 1998;
Thompson & Barnett 1986). One program handles ``BLOCK`` elements; the continued fraction runs in a ``while`` loop
until every element of the block has passed the convergence test of every backend, or the shared step cap.

Only Triton builtins are used (``tl.exp``, ``tl.log``, ``tl.fma``, ``tl.where``...):
libdevice's extern functions (``log1p``, ``expm1``, ``lgamma``) do not run under Triton's interpreter and tie the
kernel to one vendor, so the few special functions needed are written here from builtins:

* `log1p` and `expm1` from ``u = fl(1 + x)`` (resp. ``fl(exp(x))``) plus a first-order correction
  for the rounding of ``u``, within an ulp when ``tl.log`` and ``tl.exp`` are (checked against mpmath in the tests);
* $\log\Gamma(z)$ for the small arguments of $\log B$ by an upward shift of ten and Stirling's series;
* the exact product error of the double-double $\lambda$ by ``tl.fma`` (exact in the interpreter too).

The module is imported (and its functions decorated) lazily by `gbs_loss.special.backends.triton`, once per
mode: ``triton.jit`` decides at decoration time whether a function is compiled or interpreted
(``TRITON_INTERPRET``), so the mode in force at the first call is the one that counts.
"""

from __future__ import annotations

import triton
import triton.language as tl

from gbs_loss.special._constants import LARGE as _LARGE_PY
from gbs_loss.special._constants import SERIES_P_MAX as _SERIES_P_MAX_PY
from gbs_loss.special._constants import SERIES_TOL as _SERIES_TOL_PY
from gbs_loss.special._constants import TINY as _TINY_PY
from gbs_loss.special._constants import TOL as _TOL_PY
from gbs_loss.special._gamma import _DIGAMMA, _EULER_GAMMA, _STIRLING, _ZETA, HALF_LOG_2PI

__all__ = ["BLOCK", "BLOCK_INTERPRETED", "NUM_WARPS", "betainc_kernel"]

# Launch geometry: one element per thread, four warps per program. The interpreter's cost is per operation, not
# per element, so there one program takes many elements.
BLOCK = 128
NUM_WARPS = 4
BLOCK_INTERPRETED = 4096

# Constants seen by the kernels (Triton reads globals only when they are constexpr).
HALF_LOG_2PI_C = tl.constexpr(HALF_LOG_2PI)
EULER_GAMMA_C = tl.constexpr(_EULER_GAMMA)
LARGE = tl.constexpr(_LARGE_PY)
TOL = tl.constexpr(_TOL_PY)
TINY = tl.constexpr(_TINY_PY)
SERIES_P_MAX = tl.constexpr(_SERIES_P_MAX_PY)
SERIES_TOL = tl.constexpr(_SERIES_TOL_PY)
# Stirling's series of log-gamma and the asymptotic series of digamma, highest order first for Horner.
STIRLING_REV = tl.constexpr(tuple(reversed(_STIRLING)))
N_STIRLING = tl.constexpr(len(_STIRLING))
DIGAMMA_C = tl.constexpr(tuple(_DIGAMMA))
N_DIGAMMA = tl.constexpr(len(_DIGAMMA))
# Taylor coefficients (-1)^k zeta(k) / k of log Gamma(1 + p), k = 32 .. 2 (Abramowitz & Stegun 6.1.33).
LGAMMA1P_REV = tl.constexpr(tuple(((-1) ** k) * _ZETA[k - 2] / k for k in range(len(_ZETA) + 1, 1, -1)))
N_LGAMMA1P = tl.constexpr(len(_ZETA))
# 1 / (2k + 1), k = 20 .. 1: the artanh series of rlog1.
RLOG1_REV = tl.constexpr(tuple(1.0 / (2 * k + 1) for k in range(20, 0, -1)))
N_RLOG1 = tl.constexpr(20)


# The combine function of tl.max. Calling it through tl.reduce (a builtin) rather than calling tl.max or tl.zeros_like
# (themselves @triton.jit functions of triton.language) keeps the kernel working under the interpreter even when
# triton.language was imported before TRITON_INTERPRET was set: the interpreter recognises this combine function
# and reduces with NumPy, and nothing else of triton.language's jit-decorated library is called.
_MAX_COMBINE = tl.standard._elementwise_max


# ----------------------------------------------------------------------------------------------------------
# Elementary functions from builtins.
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def zeros(x):
    """float64 zeros of the shape of ``x``."""
    return tl.full(x.shape, 0.0, tl.float64)


@triton.jit
def any_true(mask):
    """Whether ``mask`` holds for some element of the block (a block-wide reduction to one scalar)."""
    return tl.reduce(mask.to(tl.int32), 0, _MAX_COMBINE) > 0


@triton.jit
def any_pending(done):
    """Whether some element of the block is not ``done``."""
    return any_true(~done)


@triton.jit
def log1p(x):
    """``log(1 + x)`` for ``x >= -1`` within an ulp: ``log(u) - ((u - 1) - x) / u`` with ``u = fl(1 + x)``.

    The second term is the first-order correction for the rounding of ``u`` (``log(1 + x) = log(u) + log(1 +
    (x - (u - 1)) / u)``); ``u - 1`` is exact (Sterbenz).
    """
    u = 1.0 + x
    safe_u = tl.where((u == 0.0) | (u == float("inf")), 1.0, u)
    out = tl.log(u) - ((u - 1.0) - x) / safe_u
    out = tl.where(u == 1.0, x, out)
    return tl.where((u == 0.0) | (u == float("inf")), tl.log(u), out)


@triton.jit
def expm1(x):
    """``exp(x) - 1`` within an ulp: ``(u - 1) + u (x - log u)`` with ``u = fl(exp(x))``.

    The second term is the first-order correction for the rounding of ``u`` (``exp(x) = u exp(x - log u)``).
    """
    u = tl.exp(x)
    ends = (u == 0.0) | (u == float("inf"))
    safe_u = tl.where(ends, 1.0, u)
    out = (safe_u - 1.0) + safe_u * (x - tl.log(safe_u))
    out = tl.where(u == 1.0, x, out)
    return tl.where(ends, u - 1.0, out)


@triton.jit
def two_sum(u, v):
    """Knuth's TwoSum: ``u + v = s + e`` exactly, ``s = fl(u + v)``."""
    s = u + v
    bv = s - u
    return s, (u - (s - bv)) + (v - bv)


@triton.jit
def two_prod(u, v):
    """``u * v = p + e`` exactly, ``p = fl(u * v)``, the error by one fused multiply-add."""
    p = u * v
    return p, tl.fma(u, v, -p)


# ----------------------------------------------------------------------------------------------------------
# Log-gamma and digamma pieces (gbs_loss.special._gamma).
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def stirling_delta(z):
    r"""Stirling correction $\log\Gamma(z) - (z - 1/2)\log z + z - \log\sqrt{2\pi}$, $z \ge 10$."""
    w = 1.0 / (z * z)
    s = zeros(z)
    for i in tl.static_range(N_STIRLING):
        s = s * w + STIRLING_REV[i]
    return s / z


@triton.jit
def lgamma_ratio(a, b):
    r"""$\log\Gamma(b) - \log\Gamma(a + b)$ for $b \ge 10$ (TOMS 708 ``algdiv``)."""
    return stirling_delta(b) - stirling_delta(a + b) - (a + b - 0.5) * log1p(a / b) - a * tl.log(b) + a


@triton.jit
def lgamma_shifted(z):
    r"""$\log\Gamma(z)$ for moderate $z > 0$: $\log\Gamma(z + 10) - \log(z (z+1) \cdots (z+9))$.

    Stirling's series at $z + 10 \ge 10$; absolute error a few 1e-15 for $z \le 20$.
    """
    prod = z
    for k in tl.static_range(1, 10):
        prod = prod * (z + k)
    zs = z + 10.0
    return (zs - 0.5) * tl.log(zs) - zs + HALF_LOG_2PI_C + stirling_delta(zs) - tl.log(prod)


@triton.jit
def betaln_direct(a, b):
    r"""$\log B(a, b)$ where $\min(a, b) < 10$ (TOMS 708 ``betaln``: both small, or one large)."""
    p = tl.minimum(a, b)
    q = tl.maximum(a, b)
    one_large = q >= LARGE
    q_small = tl.where(one_large, 1.0, q)
    q_large = tl.where(one_large, q, LARGE)
    small = lgamma_shifted(p) + lgamma_shifted(q_small) - lgamma_shifted(p + q_small)
    mixed = lgamma_shifted(p) + lgamma_ratio(p, q_large)
    return tl.where(one_large, mixed, small)


@triton.jit
def lgamma1p_small(p):
    r"""$\log\Gamma(1 + p)$ for $|p| \le 0.2$ by its Taylor series (no ``1 + p`` formed)."""
    s = zeros(p)
    for i in tl.static_range(N_LGAMMA1P):
        s = s * p + LGAMMA1P_REV[i]
    return p * (p * s - EULER_GAMMA_C)


@triton.jit
def lgamma_diff(q, p):
    r"""$\log\Gamma(q + p) - \log\Gamma(q)$, accurate relative to $p$ (shift by ten below 10)."""
    shift = q < LARGE
    e = zeros(q)
    for k in tl.static_range(10):
        t = p / (q + k)
        e = e + t + e * t
    corr = log1p(e)
    # Where E overflows (p / q near the float64 limit), the sum of the ten logarithms.
    if any_true(tl.abs(e) == float("inf")):
        slow = zeros(q)
        for k in tl.static_range(10):
            slow = slow + log1p(p / (q + k))
        corr = tl.where(tl.abs(e) == float("inf"), slow, corr)
    qs = tl.where(shift, q + 10.0, q)
    return -lgamma_ratio(p, qs) - tl.where(shift, corr, 0.0)


@triton.jit
def digamma_diff(d, delta):
    r"""$\psi(d + \delta) - \psi(d)$ without cancellation (shift by ten, then the differenced asymptotics)."""
    shift = tl.minimum(d, d + delta) < LARGE
    corr = zeros(d)
    for k in tl.static_range(10):
        corr = corr + delta / ((d + k) * (d + delta + k))
    ds = tl.where(shift, d + 10.0, d)
    ratio = delta / ds
    lg = log1p(ratio)
    u = 1.0 + ratio
    one_minus_r = ratio * (2.0 + ratio) / (u * u)
    r = 1.0 - one_minus_r
    w = 1.0 / (ds * ds)
    total = zeros(d)
    wk = zeros(d) + 1.0
    sk = zeros(d)
    for i in tl.static_range(N_DIGAMMA):
        wk = wk * w
        sk = 1.0 + r * sk
        total = total + DIGAMMA_C[i] * wk * sk
    asym = lg + delta / (2.0 * ds * (ds + delta)) + one_minus_r * total
    return tl.where(shift, asym + corr, asym)


# ----------------------------------------------------------------------------------------------------------
# Prefactor (gbs_loss.special._prefactor).
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def rlog1(e):
    r"""$e - \log(1 + e)$ for $|e| \le 1/2$ by the artanh series (no cancellation near 0)."""
    t = e / (2.0 + e)
    t2 = t * t
    s = zeros(e)
    for i in tl.static_range(N_RLOG1):
        s = s * t2 + RLOG1_REV[i]
    return e * t - 2.0 * t * t2 * s


@triton.jit
def rlog1_any(e, log1pe):
    r"""$e - \log(1+e)$ for any $e > -1$; ``log1pe`` is an accurate $\log(1+e)$ below -1/2."""
    near = tl.abs(e) <= 0.5
    series = rlog1(tl.where(near, e, 0.0))
    far = e - tl.where(e > 0, log1p(tl.where(e > 0, e, 0.0)), log1pe)
    return tl.where(near, series, far)


@triton.jit
def lambda_dd(p, q, xx, yy, xx_exact):
    r"""$\lambda = p - (p+q)\,xx = (p+q)\,yy - q$ in double-double, from whichever of ``xx``, ``yy`` is exact."""
    s, s_err = two_sum(p, q)
    z = tl.where(xx_exact, xx, yy)
    prod, prod_err = two_prod(s, z)
    first = tl.where(xx_exact, p, prod)
    second = tl.where(xx_exact, -prod, -q)
    d, d_err = two_sum(first, second)
    tail = s_err * z + prod_err
    return d + tl.where(xx_exact, d_err - tail, d_err + tail)


@triton.jit
def log_prefactor_stirling(p, q, lam, logxx, logyy):
    r"""$\log(xx^p\,yy^q / B(p, q))$ for $\min(p, q) \ge 10$ (TOMS 708 ``brcomp``, Stirling form)."""
    u = rlog1_any(-lam / p, logxx + log1p(q / p))
    v = rlog1_any(lam / q, logyy + log1p(p / q))
    bcorr = stirling_delta(p) + stirling_delta(q) - stirling_delta(p + q)
    const = 0.5 * (tl.log(p) + tl.log(q) - tl.log(p + q)) - HALF_LOG_2PI_C - bcorr
    return -(p * u + q * v) + const


@triton.jit
def log_prefactor(p, q, lam, logxx, logyy):
    r"""$\log(xx^p\,yy^q / B(p, q))$: the Stirling form for $\min(p, q) \ge 10$, else direct.

    Each form is evaluated only in blocks that have elements needing it, on safe arguments elsewhere.
    """
    large = tl.minimum(p, q) >= LARGE
    out = zeros(p)
    if any_true(large):
        pl = tl.where(large, p, LARGE)
        ql = tl.where(large, q, LARGE)
        stirling = log_prefactor_stirling(
            pl, ql, tl.where(large, lam, 0.0), tl.where(large, logxx, -0.69), tl.where(large, logyy, -0.69)
        )
        out = tl.where(large, stirling, out)
    if any_true(~large):
        ps = tl.where(large, 1.0, p)
        qs = tl.where(large, 1.0, q)
        direct = ps * tl.where(large, -0.69, logxx) + qs * tl.where(large, -0.69, logyy) - betaln_direct(ps, qs)
        out = tl.where(large, out, direct)
    return out


# ----------------------------------------------------------------------------------------------------------
# The continued fraction and the complement series (gbs_loss.special._fraction).
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def continued_fraction(p, q, x, y, lam, done, max_steps):
    r"""``(log G, d log G/dp, d log G/dq, converged)`` of the even-contracted fraction, forward-mode derivatives.

    Modified Lentz algorithm; every element of the block stops after the first step that passes the test
    $|C_n D_n - 1| \le$ TOL and both relative increments within TOL (its state is frozen from then on), and
    the loop ends when all have stopped or after ``max_steps`` steps. ``done`` marks elements that need no fraction.
    """
    one_lam = 1.0 + lam
    pq0 = p + q
    x2 = x * x
    yp1 = 1.0 + y
    p1 = p + 1.0
    be0 = one_lam / p1
    inv_c = 1.0 / be0
    rc_p = (y - be0) * inv_c / p1
    rc_q = -x * inv_c / p1
    rd_p = zeros(x)
    rd_q = zeros(x)
    d = zeros(x)
    g = be0
    dg_p = rc_p
    dg_q = rc_q
    k = tl.full([], 0, tl.int32)
    while (k < max_steps) & any_pending(done):
        k += 1
        n = k.to(tl.float64)
        s = p + (2.0 * n - 1.0)
        inv_s = 1.0 / s
        inv_s2 = 1.0 / (s + 2.0)
        pq = pq0 + (n - 1.0)
        inv_pq = 1.0 / pq
        inv_s_sq = inv_s * inv_s
        # alpha_n = P Q, P = (p + n - 1)(p + q + n - 1) x^2 / s^2 (alpha_1 divided by p), Q = n (q - n).
        first = k == 1
        pn1 = tl.where(first, 1.0, p + (n - 1.0))
        big_p = pn1 * pq * x2 * inv_s_sq
        dlogp_p = tl.where(first, 0.0, 1.0 / pn1) + inv_pq - 2.0 * inv_s
        big_q = (q - n) * n
        al = big_p * big_q
        da_p = al * dlogp_p
        da_q = (big_q * inv_pq + n) * big_p
        # beta_n = n + n (q - n) x / s + u (1 + lambda + n (1 + y)), u = (p + n) / (p + 2n + 1).
        u = (p + n) * inv_s2
        ell = one_lam + n * yp1
        xs = x * inv_s
        w = big_q * xs
        be = (w + n) + u * ell
        db_p = inv_s2 * inv_s2 * ell * (n + 1.0) + u * y - w * inv_s
        db_q = xs * n - u * x
        # Lentz step and the recurrences of the relative derivatives dD/D and dC/C.
        den = be + al * d
        den = tl.where(den == 0.0, TINY, den)
        d_new = 1.0 / den
        c_new = be + al * inv_c
        c_new = tl.where(c_new == 0.0, TINY, c_new)
        inv_cn = 1.0 / c_new
        rd_p = -((da_p + al * rd_p) * d + db_p) * d_new
        rd_q = -((da_q + al * rd_q) * d + db_q) * d_new
        rc_p = ((da_p - al * rc_p) * inv_c + db_p) * inv_cn
        rc_q = ((da_q - al * rc_q) * inv_c + db_q) * inv_cn
        inc_p = rc_p + rd_p
        inc_q = rc_q + rd_q
        factor = c_new * d_new
        d = d_new
        inv_c = inv_cn
        g = tl.where(done, g, g * factor)
        dg_p = tl.where(done, dg_p, dg_p + inc_p)
        dg_q = tl.where(done, dg_q, dg_q + inc_q)
        conv = (tl.abs(factor - 1.0) <= TOL) & (tl.abs(inc_p) <= TOL * tl.abs(dg_p))
        conv = conv & (tl.abs(inc_q) <= TOL * tl.abs(dg_q))
        done = done | conv
    return tl.log(g), dg_p, dg_q, done


@triton.jit
def series_sums(p, q, xx, done, max_terms):
    r"""The sums $T = \sum_j t_j/(p+j)$, $\partial_p T$, $\partial_q T$ of the complement series.

    $t_j = (1-q)_j\,xx^j/j!$; an element stops after the first term whose contributions to $T$ and
    $\partial_q T$ are within SERIES_TOL of the sums, at most ``max_terms`` terms. ``done`` marks
    elements that need no series.
    """
    t = zeros(xx) + 1.0
    dt = zeros(xx)
    big_t = zeros(xx)
    dtp = zeros(xx)
    dtq = zeros(xx)
    j = tl.full([], 0, tl.int32)
    while (j < max_terms) & any_pending(done):
        j += 1
        jf = j.to(tl.float64)
        f = (jf - q) * xx / jf
        dt = dt * f - t * (xx / jf)
        t = t * f
        inv = 1.0 / (p + jf)
        term = t * inv
        dterm = dt * inv
        big_t = tl.where(done, big_t, big_t + term)
        dtp = tl.where(done, dtp, dtp - term * inv)
        dtq = tl.where(done, dtq, dtq + dterm)
        done = done | ((tl.abs(term) <= SERIES_TOL * tl.abs(big_t)) & (tl.abs(dterm) <= SERIES_TOL * tl.abs(dtq)))
    return big_t, dtp, dtq, done


@triton.jit
def saturate32(v):
    """``v`` clamped to the finite float32 range (NaN stays NaN), before a float32 store."""
    big = 3.4028234663852886e38
    return tl.where(v > big, big, tl.where(v < -big, -big, v))


# ----------------------------------------------------------------------------------------------------------
# The kernel (gbs_loss.special._kernel.betainc_kernel, element by element).
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def betainc_kernel(
    a_ptr, b_ptr, x_ptr, out_ptr, n, m, max_steps, series_max_terms, SATURATE: tl.constexpr, BLOCK_SIZE: tl.constexpr
):
    """``out[0..3, i] = (I, dI/da, dI/db, dI/dx)`` at ``(a[i % m], b[i % m], x[i])``, ``i < n``.

    Computed in float64 and stored in the dtype of ``out`` (float64, or float32 with ``SATURATE``: the
    derivatives are then clamped to the largest finite float32 first). ``max_steps`` and ``series_max_terms``
    are the caps of `gbs_loss.special._constants`, passed at each launch (so that the tests can lower them
    together with the reference's).
    """
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offs < n
    poffs = offs % m
    # float64 (the contract); other floating dtypes are converted here, exactly, at no extra pass.
    a = tl.load(a_ptr + poffs, mask=mask, other=1.0).to(tl.float64)
    b = tl.load(b_ptr + poffs, mask=mask, other=1.0).to(tl.float64)
    x = tl.load(x_ptr + offs, mask=mask, other=0.5).to(tl.float64)

    par_valid = (a > 0) & (b > 0) & (tl.abs(a) < float("inf")) & (tl.abs(b) < float("inf"))
    a_s = tl.where(par_valid, a, 1.0)
    b_s = tl.where(par_valid, b, 1.0)
    valid = par_valid & (x >= 0) & (x <= 1)
    interior = valid & (x > 0) & (x < 1)
    x_s = tl.where(interior, x, 0.5)
    y_s = 1.0 - x_s
    logx = tl.log(x_s)
    logy = log1p(-x_s)
    # Swap to I_y(b, a) above (a + 1)/(a + b + 2), where the fraction converges.
    swap = x_s * (a_s + b_s + 2.0) > a_s + 1.0
    p = tl.where(swap, b_s, a_s)
    q = tl.where(swap, a_s, b_s)
    xx = tl.where(swap, y_s, x_s)
    yy = tl.where(swap, x_s, y_s)
    logxx = tl.where(swap, logy, logx)
    logyy = tl.where(swap, logx, logy)
    lam = lambda_dd(p, q, xx, yy, ~swap)
    dig_p = digamma_diff(p + 1.0, q - 1.0)
    dig_q = digamma_diff(q, p)
    logk = log_prefactor(p, q, lam, logxx, logyy)

    # Continued fraction; lanes beyond n and ends/invalid inputs take no steps.
    idle = ~interior | ~mask
    logf, gp, gq, converged = continued_fraction(p, q, xx, yy, lam, idle, max_steps)
    valid = valid & (converged | ~interior)
    j = tl.exp(logk - tl.log(p) - logf)
    dj_dp = j * (logxx + dig_p - gp)
    dj_dq = j * (logyy + dig_q - gq)
    value = tl.where(swap, 1.0 - j, j)

    # Complement series where J is close to 1 (small p after the swap), in blocks that have such elements.
    use_series = swap & (p <= SERIES_P_MAX) & interior & mask
    if any_true(use_series):
        ps = tl.where(use_series, p, 0.1)
        qs = tl.where(use_series, q, 1.0)
        xs = tl.where(use_series, xx, 0.1)
        lxs = tl.where(use_series, logxx, -2.302585092994046)
        big_t, dtp, dtq, ok = series_sums(ps, qs, xs, ~use_series, series_max_terms)
        pt = ps * big_t
        ls = ps * lxs - lgamma1p_small(ps) + lgamma_diff(qs, ps) + log1p(pt)
        lp = lxs + dig_p + (big_t + ps * dtp) / (1.0 + pt)
        lq = dig_q + ps * dtq / (1.0 + pt)
        js = tl.exp(ls)
        value = tl.where(use_series, -expm1(ls), value)
        dj_dp = tl.where(use_series, js * lp, dj_dp)
        dj_dq = tl.where(use_series, js * lq, dj_dq)
        valid = valid & ok

    d_a = tl.where(swap, -dj_dq, dj_dp)
    d_b = tl.where(swap, -dj_dp, dj_dq)
    d_x = tl.exp(logk - logx - logy)
    # Ends: I_0 = 0, I_1 = 1, zero parameter gradients, the density's finite one-sided limit (else 0) for x.
    at0 = valid & (x == 0)
    at1 = valid & (x == 1)
    ends = at0 | at1
    value = tl.where(
        at0,
        0.0,
        tl.where(
            at1,
            1.0,
            tl.minimum(
                tl.maximum(value, 0.0, propagate_nan=tl.PropagateNan.ALL), 1.0, propagate_nan=tl.PropagateNan.ALL
            ),
        ),
    )
    d_a = tl.where(ends, 0.0, d_a)
    d_b = tl.where(ends, 0.0, d_b)
    end_dx = tl.where(at0 & (a_s == 1.0), b_s, tl.where(at1 & (b_s == 1.0), a_s, 0.0))
    d_x = tl.where(ends, end_dx, d_x)
    nan = float("nan")
    if SATURATE:
        d_a = saturate32(d_a)
        d_b = saturate32(d_b)
        d_x = saturate32(d_x)
    # Rows of the (4, n) output; offsets in int64 (3 n may exceed int32).
    row1 = offs + n
    row2 = row1 + n
    row3 = row2 + n
    tl.store(out_ptr + offs, tl.where(valid, value, nan), mask=mask)
    tl.store(out_ptr + row1, tl.where(valid, d_a, nan), mask=mask)
    tl.store(out_ptr + row2, tl.where(valid, d_b, nan), mask=mask)
    tl.store(out_ptr + row3, tl.where(valid, d_x, nan), mask=mask)
