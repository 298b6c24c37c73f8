/*
 * gbs-loss native CPU kernel: the regularized incomplete beta function I_x(a, b) and its three partial
 * derivatives, the whole per-element computation in one call.
 *
 * This is the scalar twin of the PyTorch reference in gbs_loss/special/ (read its docstrings for the
 * mathematics); the arithmetic follows the reference operation by operation so that both agree to a few
 * units in the last place. Per element, with y = 1 - x:
 *
 *   1. invalid inputs (a <= 0, b <= 0, a or b not finite, x outside [0, 1] or NaN) give NaN in all four
 *      outputs; the ends give I_0 = 0, I_1 = 1, zero parameter derivatives and the density's one-sided limit;
 *   2. the fraction is evaluated on the side where it converges: above (a + 1) / (a + b + 2) the symmetry
 *      I_x(a, b) = 1 - I_y(b, a) is used, with (p, q, xx, yy) the parameters and points after the swap;
 *   3. lambda = p - (p + q) xx = (p + q) yy - q in double-double arithmetic (Knuth's TwoSum, Dekker's
 *      TwoProduct with Veltkamp's split), from whichever of x, y is the exact input;
 *   4. the log-prefactor log(xx^p yy^q / B(p, q)): for min(p, q) >= 10 as in TOMS 708 `brcomp`
 *      (Didonato & Morris 1992), -p rlog1(-lambda/p) - q rlog1(lambda/q) plus a parameter-only Stirling
 *      constant; otherwise p log xx + q log yy - log B(p, q) with an accurate log B (TOMS 708 `betaln`);
 *   5. the continued fraction G (the even contraction behind TOMS 708 `bfrac`, written with lambda) by the
 *      modified Lentz algorithm (Thompson & Barnett 1986), with the derivatives of log G with respect to p and
 *      q carried along term by term in forward mode (Boik & Robinson-Cox 1998); every element stops at its
 *      own convergence, and one that has not converged within the step cap gives NaN;
 *   6. where the complement J = I_xx(p, q) is close to 1 (swapped, small p), the power series of log J
 *      (TOMS 708 `bpser`) so that 1 - J = -expm1(log J) keeps its relative precision;
 *   7. the log-derivatives of the prefactor use digamma differences psi(d + delta) - psi(d) computed without
 *      cancellation (shifted recurrence, then the asymptotic series differenced term by term).
 *
 * The parameter-only terms (log B, the Stirling constant, four digamma differences, the series constants)
 * are computed once per distinct parameter pair when the points outnumber the parameters (element i uses
 * a[i % m], b[i % m]), otherwise once per element, for the orientation that element needs.
 *
 * Work is split into blocks of at most 64 elements spread over OpenMP threads; within a block, the elements that
 * need the continued fraction run it four at a time in the lanes of a vector (same IEEE operations per lane).
 * Inputs and outputs are float64, or float32 (read and written directly: computed in float64, rounded once).
 * Built at run time by gbs_loss/special/backends/native.py with the system C compiler (-ffp-contract=off,
 * no fast-math) and called through ctypes. Every element's arithmetic is the same whichever thread, block or
 * lane runs it, so the results do not depend on the number of threads nor on the other elements.
 *
 * References:
 *   A. R. Didonato, A. H. Morris Jr., "Algorithm 708: Significant digit computation of the incomplete beta
 *     function ratios", ACM TOMS 18(3), 1992.
 *   R. J. Boik, J. F. Robinson-Cox, "Derivatives of the incomplete beta function", J. Stat. Software 3(1), 1998.
 *   I. J. Thompson, A. R. Barnett, "Coulomb and Bessel functions of complex arguments and order",
 *     J. Comput. Phys. 64, 1986.
 *   T. J. Dekker, "A floating-point technique for extending the available precision", Numer. Math. 18, 1971.
 *   M. Abramowitz, I. A. Stegun, Handbook of Mathematical Functions, 6.1.33 (series of log Gamma(1 + p)).
 */
#if defined(__linux__) && !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE 1 /* glibc's lgamma_r: lgamma without writing the global signgam (thread safety) */
#endif
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define GBS_ABI_VERSION 4

int gbs_betainc_abi_version(void) { return GBS_ABI_VERSION; }

int gbs_betainc_has_openmp(void)
{
#if defined(_OPENMP)
    return 1;
#else
    return 0;
#endif
}

/* Below this, log-gamma and digamma are shifted or evaluated directly; above it Stirling's series is used (and
 * the prefactor takes its Stirling form). Fixed at compile time; gbs_betainc_large() lets the loader check it
 * against gbs_loss/special/_constants.py. */
#define LARGE 10.0

double gbs_betainc_large(void) { return LARGE; }
#define HALF_LOG_2PI 0.91893853320467274178
#define EULER_GAMMA 0.57721566490153286061

static double log_gamma(double z)
{
#if defined(__GLIBC__)
    int sign;
    return lgamma_r(z, &sign);
#else
    return lgamma(z);
#endif
}

/* Delta(z) = log Gamma(z) - (z - 1/2) log z + z - log sqrt(2 pi) for z >= 10: eight terms of Stirling's
 * series sum_k B_2k / (2k (2k - 1) z^(2k - 1)), by Horner's rule in 1/z^2. */
static double stirling_delta(double z)
{
    static const double c[8] = {1.0 / 12.0,   -1.0 / 360.0,         1.0 / 1260.0, -1.0 / 1680.0,
                                1.0 / 1188.0, -691.0 / 360360.0,    1.0 / 156.0,  -3617.0 / 122400.0};
    const double w = 1.0 / (z * z);
    double s = 0.0;
    for (int k = 7; k >= 0; --k)
        s = s * w + c[k];
    return s / z;
}

static double bcorr(double p, double q) { return stirling_delta(p) + stirling_delta(q) - stirling_delta(p + q); }

/* log Gamma(b) - log Gamma(a + b) for b >= 10, a > 0, without cancellation (TOMS 708 `algdiv`). */
static double lgamma_ratio(double a, double b)
{
    return stirling_delta(b) - stirling_delta(a + b) - (a + b - 0.5) * log1p(a / b) - a * log(b) + a;
}

/* log B(a, b) for positive a, b: log-gamma sums, one Stirling difference, or Stirling's series for all three
 * gammas with the large terms combined analytically (TOMS 708 `betaln`). Symmetric in (a, b). */
static double betaln64(double a, double b)
{
    const double p = a < b ? a : b, q = a < b ? b : a;
    if (p >= LARGE)
        return HALF_LOG_2PI - 0.5 * log(q) - (p - 0.5) * log1p(q / p) - q * log1p(p / q) + bcorr(p, q);
    if (q >= LARGE)
        return log_gamma(p) + lgamma_ratio(p, q);
    return log_gamma(p) + log_gamma(q) - log_gamma(p + q);
}

/* The parameter-only part of the Stirling prefactor, min(a, b) >= 10:
 * 1/2 log(ab / (a + b)) - log sqrt(2 pi) - Delta(a) - Delta(b) + Delta(a + b). */
static double stirling_constant(double a, double b)
{
    return 0.5 * (log(a) + log(b) - log(a + b)) - HALF_LOG_2PI - bcorr(a, b);
}

/* log Gamma(1 + p) for |p| <= 0.2 without forming 1 + p: -gamma p + sum_k (-1)^k zeta(k) p^k / k. */
static double lgamma1p_small(double p)
{
    /* (-1)^k zeta(k) / k for k = 2 .. 32 (zeta to 21 digits; the divisions folded by the compiler). */
    static const double coef[31] = {
        1.64493406684822643647 / 2.0, -1.20205690315959428540 / 3.0, 1.08232323371113819152 / 4.0,
        -1.03692775514336992633 / 5.0, 1.01734306198444913971 / 6.0, -1.00834927738192282684 / 7.0,
        1.00407735619794433938 / 8.0, -1.00200839282608221442 / 9.0, 1.00099457512781808534 / 10.0,
        -1.00049418860411946456 / 11.0, 1.00024608655330804830 / 12.0, -1.00012271334757848915 / 13.0,
        1.00006124813505870483 / 14.0, -1.00003058823630702049 / 15.0, 1.00001528225940865187 / 16.0,
        -1.00000763719763789976 / 17.0, 1.00000381729326499984 / 18.0, -1.00000190821271655394 / 19.0,
        1.00000095396203387280 / 20.0, -1.00000047693298678781 / 21.0, 1.00000023845050272773 / 22.0,
        -1.00000011921992596531 / 23.0, 1.00000005960818905126 / 24.0, -1.00000002980350351465 / 25.0,
        1.00000001490155482837 / 26.0, -1.00000000745071178984 / 27.0, 1.00000000372533402479 / 28.0,
        -1.00000000186265972351 / 29.0, 1.00000000093132743242 / 30.0, -1.00000000046566290650 / 31.0,
        1.00000000023283118337 / 32.0,
    };
    double s = 0.0;
    for (int k = 32; k >= 2; --k)
        s = s * p + coef[k - 2];
    return p * (p * s - EULER_GAMMA);
}

/* log Gamma(q + p) - log Gamma(q), q > 0, p >= 0, accurate relative to p: below 10 shifted up by 10 with
 * log Gamma(z) = log Gamma(z + 10) - sum_k log(z + k), above it lgamma_ratio. The sum of the ten log(1 + t_k),
 * t_k = p / (q + k), is log1p(E) with 1 + E = prod_k (1 + t_k) and E accumulated as E + t + E t (one logarithm
 * instead of ten), or the ten logarithms where E overflows. */
static double lgamma_diff(double q, double p)
{
    if (q < LARGE) {
        double e = 0.0;
        for (int k = 0; k < 10; ++k) {
            const double t = p / (q + (double)k);
            e = e + t + e * t;
        }
        double corr = log1p(e);
        if (!isfinite(e)) {
            corr = 0.0;
            for (int k = 0; k < 10; ++k)
                corr = corr + log1p(p / (q + (double)k));
        }
        return -lgamma_ratio(p, q + 10.0) - corr;
    }
    return -lgamma_ratio(p, q);
}

/* psi(d + delta) - psi(d) for d > 0, d + delta > 0, without cancellation: shifted up by 10 when either
 * argument is below 10, then the asymptotic series differenced term by term,
 * log(1 + delta/d) + delta / (2 d (d + delta)) + sum_k c_k d^-2k (1 - r^k), r = (1 + delta/d)^-2. */
static double digamma_diff(double d, double delta)
{
    static const double c[8] = {1.0 / 12.0,   -1.0 / 120.0,       1.0 / 252.0, -1.0 / 240.0,
                                1.0 / 132.0,  -691.0 / 32760.0,   1.0 / 12.0,  -3617.0 / 8160.0};
    const double lo = d < d + delta ? d : d + delta;
    const int shift = lo < LARGE;
    double corr = 0.0, ds = d;
    if (shift) {
        for (int k = 0; k < 10; ++k)
            corr = corr + delta / ((d + (double)k) * (d + delta + (double)k));
        ds = d + 10.0;
    }
    const double ratio = delta / ds;
    const double lg = log1p(ratio);
    const double u = 1.0 + ratio;
    const double one_minus_r = ratio * (2.0 + ratio) / (u * u); /* 1 - (1 + ratio)^-2, no cancellation */
    const double r = 1.0 - one_minus_r;
    const double w = 1.0 / (ds * ds);
    double total = 0.0, wk = 1.0, sk = 0.0;
    for (int k = 0; k < 8; ++k) {
        wk = wk * w;
        sk = 1.0 + r * sk;
        total = total + c[k] * wk * sk;
    }
    const double asym = lg + delta / (2.0 * ds * (ds + delta)) + one_minus_r * total;
    return shift ? asym + corr : asym;
}

/* e - log(1 + e) for |e| <= 1/2: with t = e / (2 + e), e t - 2 sum_k t^(2k+1) / (2k + 1). */
static double rlog1(double e)
{
    const double t = e / (2.0 + e), t2 = t * t;
    /* 1 / (2k + 1), k = 1 .. 20 (folded by the compiler, correctly rounded). */
    static const double inv_odd[20] = {1.0 / 3.0,  1.0 / 5.0,  1.0 / 7.0,  1.0 / 9.0,  1.0 / 11.0, 1.0 / 13.0, 1.0 / 15.0,
                                       1.0 / 17.0, 1.0 / 19.0, 1.0 / 21.0, 1.0 / 23.0, 1.0 / 25.0, 1.0 / 27.0, 1.0 / 29.0,
                                       1.0 / 31.0, 1.0 / 33.0, 1.0 / 35.0, 1.0 / 37.0, 1.0 / 39.0, 1.0 / 41.0};
    double s = 0.0;
    for (int k = 20; k >= 1; --k)
        s = s * t2 + inv_odd[k - 1];
    return e * t - 2.0 * t * t2 * s;
}

/* e - log(1 + e) for any e > -1; log1pe: an accurate log(1 + e), used below -1/2. */
static double rlog1_any(double e, double log1pe)
{
    if (fabs(e) <= 0.5)
        return rlog1(e);
    return e - (e > 0.0 ? log1p(e) : log1pe);
}

/* Knuth's TwoSum and Dekker's TwoProduct (Veltkamp's split; no FMA, -ffp-contract=off). */
static void two_sum(double u, double v, double *s, double *e)
{
    const double sum = u + v, bv = sum - u;
    *s = sum;
    *e = (u - (sum - bv)) + (v - bv);
}

static void split(double u, double *hi, double *lo)
{
    const double t = 134217729.0 * u; /* 2^27 + 1 */
    *hi = t - (t - u);
    *lo = u - *hi;
}

static void two_prod(double u, double v, double *p, double *e)
{
    double uh, ul, vh, vl;
    const double prod = u * v;
    split(u, &uh, &ul);
    split(v, &vh, &vl);
    *p = prod;
    *e = ((uh * vh - prod) + uh * vl + ul * vh) + ul * vl;
}

/* lambda = p - (p + q) xx = (p + q) yy - q to a few ulps of lambda, from the exact one of xx, yy. */
static double lambda_dd(double p, double q, double xx, double yy, int xx_exact)
{
    double s, s_err, prod, prod_err, d, d_err;
    two_sum(p, q, &s, &s_err);
    const double z = xx_exact ? xx : yy;
    two_prod(s, z, &prod, &prod_err);
    two_sum(xx_exact ? p : prod, xx_exact ? -prod : -q, &d, &d_err);
    const double tail = s_err * z + prod_err;
    return d + (xx_exact ? d_err - tail : d_err + tail);
}

/* Parameter-only terms of one (a, b) pair, for both orientations of the fraction. */
typedef struct {
    double lbeta;    /* log B(a, b), where min(a, b) < 10 */
    double stirling; /* the Stirling constant, where min(a, b) >= 10 */
    double d_a1;     /* psi(a + b) - psi(a + 1): unswapped, p = a */
    double d_b;      /* psi(a + b) - psi(b):     unswapped, q = b */
    double d_b1;     /* psi(a + b) - psi(b + 1): swapped,   p = b */
    double d_a;      /* psi(a + b) - psi(a):     swapped,   q = a */
    double lg1p;     /* log Gamma(1 + b), swapped series (b small) */
    double lgdiff;   /* log Gamma(a + b) - log Gamma(a), swapped series */
} params_t;

typedef struct {
    int64_t max_steps;
    double tol, tiny;
    int64_t series_max_terms;
    double series_tol, series_p_max;
} controls_t;

static void parameter_terms(double a, double b, double series_p_max, params_t *t)
{
    const int large = (a < b ? a : b) >= LARGE;
    t->lbeta = large ? 0.0 : betaln64(a, b);
    t->stirling = large ? stirling_constant(a, b) : 0.0;
    t->d_a1 = digamma_diff(a + 1.0, b - 1.0);
    t->d_b = digamma_diff(b, a);
    t->d_b1 = digamma_diff(b + 1.0, a - 1.0);
    t->d_a = digamma_diff(a, b);
    const int series = b <= series_p_max;
    t->lg1p = series ? lgamma1p_small(b) : 0.0;
    t->lgdiff = series ? lgamma_diff(a, b) : 0.0;
}

/* State of the continued fraction of one element (see `frac_init` and `lanes_step`). */
typedef struct {
    double p, q, x, y, one_lam, pq0, x2, yp1;
    double inv_c, rc_p, rc_q, rd_p, rd_q, d, g, dg_p, dg_q;
    double inv_s; /* 1 / (p + 2k + 1): 1 / s of the next step */
    int64_t k;
} frac_t;

/* beta_0 = (1 + lambda) / (p + 1); C_0 = beta_0, D_0 = 0; d lambda / dp = y, d lambda / dq = -x. */
static void frac_init(frac_t *f, double p, double q, double x, double y, double lam)
{
    f->p = p;
    f->q = q;
    f->x = x;
    f->y = y;
    f->one_lam = 1.0 + lam;
    f->pq0 = p + q;
    f->x2 = x * x;
    f->yp1 = 1.0 + y;
    const double p1 = p + 1.0;
    const double be0 = f->one_lam / p1;
    f->inv_c = 1.0 / be0;
    f->rc_p = (y - be0) * f->inv_c / p1;
    f->rc_q = -x * f->inv_c / p1;
    f->rd_p = f->rd_q = f->d = 0.0;
    f->g = be0;
    f->dg_p = f->rc_p;
    f->dg_q = f->rc_q;
    f->inv_s = 1.0 / p1;
    f->k = 0;
}

/* The sums of the complement series (TOMS 708 `bpser`, small p): T = sum_j t_j / (p + j) with
 * t_j = (1 - q)_j xx^j / j!, and dT/dp, dT/dq; summed until, after some term, the terms of T and of dT/dq
 * are at most series_tol times their sums (or exactly zero), series_max_terms terms at most. Returns 1 when
 * that was reached (the rule of the reference, gbs_loss/special/_constants.py). */
static int complement_sums(double p, double q, double xx, const controls_t *ctl, double *big_t_out,
                           double *dt_p_out, double *dt_q_out)
{
    const double eps = ctl->series_tol;
    double t = 1.0, dt = 0.0, big_t = 0.0, dt_p = 0.0, dt_q = 0.0;
    int ok = 0;
    for (int64_t k = 1; k <= ctl->series_max_terms; ++k) {
        const double j = (double)k;
        const double f = (j - q) * xx / j;
        dt = dt * f - t * (xx / j);
        t = t * f;
        const double inv = 1.0 / (p + j);
        const double term = t * inv, term_p = term * inv, term_q = dt * inv;
        big_t = big_t + term;
        dt_p = dt_p - term_p;
        dt_q = dt_q + term_q;
        if (fabs(term) <= eps * fabs(big_t) && fabs(term_q) <= eps * fabs(dt_q)) {
            ok = 1;
            break;
        }
    }
    *big_t_out = big_t;
    *dt_p_out = dt_p;
    *dt_q_out = dt_q;
    return ok;
}

static int valid_params(double a, double b) { return a > 0.0 && b > 0.0 && isfinite(a) && isfinite(b); }

/* What an element carries from before its continued fraction to after it (the fraction's own state: frac_t). */
typedef struct {
    int64_t i;                      /* output index */
    double logx, logy, logxx, logyy; /* logarithms of x, y and of the swapped points */
    double p, logk, dig_p, dig_q;
    int swap;
} pending_t;

static void write_nan(int64_t i, double *value, double *d_a, double *d_b, double *d_x)
{
    value[i] = d_a[i] = d_b[i] = d_x[i] = NAN;
}

/* One element up to its continued fraction: (a, b) valid and finite, x in [0, 1]. `pt`: the pair's precomputed
 * terms, or NULL. Returns 1 and fills `pend` and `frac` when the fraction is needed; otherwise writes the outputs
 * (ends, complement series) and returns 0. */
static int element_start(int64_t i, double a, double b, double x, const params_t *pt, const controls_t *ctl,
                         pending_t *pend, frac_t *frac, double *value, double *d_a, double *d_b, double *d_x)
{
    if (x == 0.0 || x == 1.0) {
        /* I_0 = 0, I_1 = 1; d/dx is the density's one-sided limit where finite. */
        value[i] = x;
        d_a[i] = 0.0;
        d_b[i] = 0.0;
        d_x[i] = (x == 0.0 && a == 1.0) ? b : (x == 1.0 && b == 1.0) ? a : 0.0;
        return 0;
    }
    const double y = 1.0 - x;
    const double logx = log(x), logy = log1p(-x);
    const int swap = x * (a + b + 2.0) > a + 1.0;
    const double p = swap ? b : a, q = swap ? a : b;
    const double xx = swap ? y : x, yy = swap ? x : y;
    const double logxx = swap ? logy : logx, logyy = swap ? logx : logy;
    const double lam = lambda_dd(p, q, xx, yy, !swap);
    const int large = (p < q ? p : q) >= LARGE;
    const int use_series = swap && p <= ctl->series_p_max;
    /* Parameter terms of this orientation: psi(p + q) - psi(p + 1), psi(p + q) - psi(q), and the rest. */
    double dig_p, dig_q, lbeta = 0.0, stirling = 0.0, lg1p = 0.0, lgdiff = 0.0;
    if (pt != NULL) {
        dig_p = swap ? pt->d_b1 : pt->d_a1;
        dig_q = swap ? pt->d_a : pt->d_b;
        lbeta = pt->lbeta;
        stirling = pt->stirling;
        lg1p = pt->lg1p;
        lgdiff = pt->lgdiff;
    } else {
        dig_p = digamma_diff(p + 1.0, q - 1.0);
        dig_q = digamma_diff(q, p);
        if (large)
            stirling = stirling_constant(p, q);
        else
            lbeta = betaln64(p, q);
        if (use_series) {
            lg1p = lgamma1p_small(p);
            lgdiff = lgamma_diff(q, p);
        }
    }
    /* log K = log(xx^p yy^q / B(p, q)). */
    double logk;
    if (large) {
        const double u = rlog1_any(-lam / p, logxx + log1p(q / p));
        const double v = rlog1_any(lam / q, logyy + log1p(p / q));
        logk = -(p * u + q * v) + stirling;
    } else {
        logk = p * logxx + q * logyy - lbeta;
    }
    if (use_series) {
        /* log J = p log xx - log Gamma(1 + p) + log Gamma(p + q) - log Gamma(q) + log(1 + p T). */
        double big_t, dtp, dtq;
        if (!complement_sums(p, q, xx, ctl, &big_t, &dtp, &dtq)) {
            write_nan(i, value, d_a, d_b, d_x);
            return 0;
        }
        const double ptt = p * big_t;
        const double logj = p * logxx - lg1p + lgdiff + log1p(ptt);
        const double js = exp(logj);
        const double v = -expm1(logj);
        const double dj_dp = js * (logxx + dig_p + (big_t + p * dtp) / (1.0 + ptt));
        const double dj_dq = js * (dig_q + p * dtq / (1.0 + ptt));
        value[i] = v < 0.0 ? 0.0 : v > 1.0 ? 1.0 : v;
        d_a[i] = -dj_dq; /* swapped */
        d_b[i] = -dj_dp;
        d_x[i] = exp(logk - logx - logy);
        return 0;
    }
    pend->i = i;
    pend->logx = logx;
    pend->logy = logy;
    pend->logxx = logxx;
    pend->logyy = logyy;
    pend->p = p;
    pend->logk = logk;
    pend->dig_p = dig_p;
    pend->dig_q = dig_q;
    pend->swap = swap;
    frac_init(frac, p, q, xx, yy, lam);
    return 1;
}

/* One element after its continued fraction (`status`: 1 converged, 2 not). */
static void element_finish(const pending_t *e, const frac_t *f, int status, double *value, double *d_a, double *d_b,
                           double *d_x)
{
    const int64_t i = e->i;
    if (status != 1) {
        write_nan(i, value, d_a, d_b, d_x);
        return;
    }
    const double logf = log(f->g), gp = f->dg_p, gq = f->dg_q;
    /* J = I_xx(p, q) = K / p / G. */
    const double j = exp(e->logk - log(e->p) - logf);
    const double dj_dp = j * (e->logxx + e->dig_p - gp);
    const double dj_dq = j * (e->logyy + e->dig_q - gq);
    const double v = e->swap ? 1.0 - j : j;
    value[i] = v < 0.0 ? 0.0 : v > 1.0 ? 1.0 : v;
    d_a[i] = e->swap ? -dj_dq : dj_dp;
    d_b[i] = e->swap ? -dj_dp : dj_dq;
    d_x[i] = exp(e->logk - e->logx - e->logy);
}

/* ------------------------------------------------------------------------------------------------------------
 * The continued fraction, LANES elements in lockstep.
 *
 * One step of the continued fraction G (the even contraction behind TOMS 708 `bfrac`, with lambda) by the
 * modified Lentz algorithm (Thompson & Barnett 1986), with the derivatives of log G with respect to p and q in
 * forward mode (Boik & Robinson-Cox 1998), on every lane of a vector of LANES doubles (GCC/Clang vector
 * extensions: SSE2 or AVX on x86-64, NEON on arm64). Each lane does the IEEE operations of one element and nothing
 * else (no fused multiply-add: -ffp-contract=off), so an element gets the same bits whichever lane, block or thread
 * runs it and whatever runs beside it. The step is bound by the latency of its two divisions (D and C of Lentz's
 * recurrences), which depend on the previous step: independent elements side by side in the lanes let the
 * processor overlap them (LANES = 4 with AVX, measured 1.5-1.9x faster than 2 on large a, b).
 * ---------------------------------------------------------------------------------------------------------- */
#if !defined(__GNUC__) && !defined(__clang__)
#error "betainc.c needs the GCC/Clang vector extensions (gcc, clang or a compatible compiler)"
#endif
/* Four lanes where the vector registers hold four doubles (AVX: the build adds -mavx on processors that have it),
 * else two (SSE2, NEON): emulating four lanes with two-lane registers is slower than two lanes. */
#if defined(__AVX__)
#define LANES 4
#else
#define LANES 2
#endif
typedef double vd __attribute__((vector_size(8 * LANES)));
typedef long long vl __attribute__((vector_size(8 * LANES)));

static inline vd vb(double s)
{
    vd r;
    for (int l = 0; l < LANES; ++l)
        r[l] = s;
    return r;
}
static inline vd vsel(vl mask, vd t, vd f) { return (vd)(((vl)t & mask) | ((vl)f & ~mask)); }
static inline vd vabs(vd v) { return (vd)((vl)v & ~(vl)vb(-0.0)); }
static inline int vany(vl mask)
{
    long long r = 0;
    for (int l = 0; l < LANES; ++l)
        r |= mask[l];
    return r != 0;
}

/* The state of LANES fractions: frac_t's fields, one lane per element, and n = the steps taken. */
typedef struct {
    vd p, q, x, y, one_lam, pq0, x2, yp1, inv_c, rc_p, rc_q, rd_p, rd_q, d, g, dg_p, dg_q, inv_s, n;
} fracv_t;

static void lane_load(fracv_t *v, int l, const frac_t *f)
{
    v->p[l] = f->p, v->q[l] = f->q, v->x[l] = f->x, v->y[l] = f->y, v->one_lam[l] = f->one_lam;
    v->pq0[l] = f->pq0, v->x2[l] = f->x2, v->yp1[l] = f->yp1, v->inv_c[l] = f->inv_c, v->rc_p[l] = f->rc_p;
    v->rc_q[l] = f->rc_q, v->rd_p[l] = f->rd_p, v->rd_q[l] = f->rd_q, v->d[l] = f->d, v->g[l] = f->g;
    v->dg_p[l] = f->dg_p, v->dg_q[l] = f->dg_q, v->inv_s[l] = f->inv_s, v->n[l] = (double)f->k;
}

static void lane_store(const fracv_t *v, int l, frac_t *f)
{
    f->inv_c = v->inv_c[l], f->rc_p = v->rc_p[l], f->rc_q = v->rc_q[l], f->rd_p = v->rd_p[l];
    f->rd_q = v->rd_q[l], f->d = v->d[l], f->g = v->g[l], f->dg_p = v->dg_p[l], f->dg_q = v->dg_q[l];
    f->inv_s = v->inv_s[l], f->k = (int64_t)v->n[l];
}

/* One step n (= the previous n + 1) on every lane; returns the lanes that have converged at this step. */
static inline vl lanes_step(fracv_t *f, const controls_t *ctl)
{
    const vd one = vb(1.0), two = vb(2.0), zero = vb(0.0);
    const vd n = f->n + one;
    f->n = n;
    const vd p = f->p, q = f->q, x = f->x, y = f->y, d = f->d, inv_c = f->inv_c;
    const vd s = p + (two * n - one);
    /* 1 / s comes from the previous step (1 / (s + 2) there), which saves a division per step. */
    const vd inv_s = f->inv_s, inv_s2 = one / (s + two);
    const vd pq = f->pq0 + (n - one);
    const vd inv_s_sq = inv_s * inv_s;
    f->inv_s = inv_s2;
    /* alpha_n = P Q, P = (p + n - 1)(p + q + n - 1) x^2 / s^2 (alpha_1 divided by p), Q = n (q - n).
     * 1 / (p + n - 1) and 1 / (p + q + n - 1) from one division where their product is finite. */
    const vl first = n == one;
    const vd pn1 = p + (n - one);
    const vd prod = pn1 * pq;
    const vl slow = first | ~(prod <= vb(1e300));
    const vd r = one / prod;
    vd inv_pq = pn1 * r, inv_pn1 = pq * r;
    if (vany(slow)) {
        inv_pq = vsel(slow, one / pq, inv_pq);
        inv_pn1 = vsel(slow, one / pn1, inv_pn1);
    }
    inv_pn1 = vsel(first, zero, inv_pn1);
    const vd big_p = vsel(first, pq, prod) * f->x2 * inv_s_sq;
    const vd dlogp_p = inv_pn1 + inv_pq - two * inv_s;
    const vd big_q = (q - n) * n;
    const vd al = big_p * big_q;
    const vd da_p = al * dlogp_p, da_q = (big_q * inv_pq + n) * big_p;
    /* beta_n = n + n (q - n) x / s + u (1 + lambda + n (1 + y)), u = (p + n) / (p + 2n + 1). */
    const vd u = (p + n) * inv_s2, ell = f->one_lam + n * f->yp1;
    const vd xs = x * inv_s, w = big_q * xs;
    const vd be = (w + n) + u * ell;
    const vd db_p = inv_s2 * inv_s2 * ell * (n + one) + u * y - w * inv_s;
    const vd db_q = xs * n - u * x;
    /* Modified Lentz step (an exact zero denominator replaced by `tiny`) and the recurrences of the relative
     * derivatives dD/D and dC/C. */
    const vd tiny = vb(ctl->tiny);
    vd den = be + al * d;
    den = vsel(den == zero, tiny, den);
    const vd d_new = one / den;
    vd c_new = be + al * inv_c;
    c_new = vsel(c_new == zero, tiny, c_new);
    const vd inv_cn = one / c_new;
    const vd rd_p = -((da_p + al * f->rd_p) * d + db_p) * d_new;
    const vd rd_q = -((da_q + al * f->rd_q) * d + db_q) * d_new;
    const vd rc_p = ((da_p - al * f->rc_p) * inv_c + db_p) * inv_cn;
    const vd rc_q = ((da_q - al * f->rc_q) * inv_c + db_q) * inv_cn;
    const vd inc_p = rc_p + rd_p, inc_q = rc_q + rd_q, factor = c_new * d_new;
    f->rd_p = rd_p;
    f->rd_q = rd_q;
    f->rc_p = rc_p;
    f->rc_q = rc_q;
    f->d = d_new;
    f->inv_c = inv_cn;
    f->g = f->g * factor;
    f->dg_p = f->dg_p + inc_p;
    f->dg_q = f->dg_q + inc_q;
    const vd tol = vb(ctl->tol);
    return (vabs(factor - one) <= tol) & (vabs(inc_p) <= tol * vabs(f->dg_p)) & (vabs(inc_q) <= tol * vabs(f->dg_q));
}

/* Elements per block at most (the unit of work of a thread). */
#define BLOCK 64

/* Inputs and outputs are float64 or float32 (`f32`); the computation is float64 either way. */
static inline double load(const void *p, int64_t i, int f32)
{
    return f32 ? (double)((const float *)p)[i] : ((const double *)p)[i];
}

/* A float64 derivative as float32, saturated at the largest finite float32 (NaN stays NaN). */
static inline float saturate32(double v) { return v > FLT_MAX ? FLT_MAX : v < -FLT_MAX ? -FLT_MAX : (float)v; }

/* The elements i0 .. i1 - 1: everything before the fraction element by element, then the fractions of the
 * elements that need one (LANES at a time: a lane takes the next waiting element when its own finishes; an
 * element at the step cap finishes unconverged), then the outputs in their dtype. */
static void run_block(int64_t i0, int64_t i1, int64_t m, int64_t n, const void *a, const void *b, const void *x,
                      int f32, const params_t *terms, const controls_t *ctl, void *value, void *d_a, void *d_b,
                      void *d_x)
{
    pending_t pend[BLOCK];
    frac_t frac[BLOCK];
    double ov[BLOCK], oa[BLOCK], ob[BLOCK], ox[BLOCK];
    const int len = (int)(i1 - i0);
    int count = 0;
    for (int li = 0; li < len; ++li) {
        const int64_t i = i0 + li;
        const int64_t k = (m == n) ? i : i % m;
        const double ai = load(a, k, f32), bi = load(b, k, f32), xi = load(x, i, f32);
        if (!valid_params(ai, bi) || !(xi >= 0.0 && xi <= 1.0)) {
            write_nan(li, ov, oa, ob, ox);
            continue;
        }
        if (element_start(li, ai, bi, xi, terms != NULL ? &terms[k] : NULL, ctl, &pend[count], &frac[count], ov, oa,
                          ob, ox))
            ++count;
    }
    if (count > 0 && ctl->max_steps <= 0) {
        for (int e = 0; e < count; ++e)
            element_finish(&pend[e], &frac[e], 2, ov, oa, ob, ox);
    } else if (count > 0) {
        fracv_t v;
        int lane[LANES], next = 0, active = 0;
        vl live;
        for (int l = 0; l < LANES; ++l) {
            /* A lane without an element steps a copy of the first one; its results are never read. */
            lane[l] = next < count ? next++ : -1;
            live[l] = lane[l] >= 0 ? -1 : 0;
            active += lane[l] >= 0;
            lane_load(&v, l, &frac[lane[l] >= 0 ? lane[l] : 0]);
        }
        const vd cap = vb((double)ctl->max_steps);
        while (active > 0) {
            const vl conv = lanes_step(&v, ctl);
            if (!vany((conv | (v.n >= cap)) & live))
                continue;
            for (int l = 0; l < LANES; ++l) {
                if (lane[l] < 0)
                    continue;
                const int status = conv[l] ? 1 : (v.n[l] >= (double)ctl->max_steps ? 2 : 0);
                if (status == 0)
                    continue;
                lane_store(&v, l, &frac[lane[l]]);
                element_finish(&pend[lane[l]], &frac[lane[l]], status, ov, oa, ob, ox);
                if (next < count) {
                    lane[l] = next++;
                    lane_load(&v, l, &frac[lane[l]]);
                } else {
                    lane[l] = -1;
                    live[l] = 0;
                    --active;
                }
            }
        }
    }
    if (f32) {
        float *fv = (float *)value + i0, *fa = (float *)d_a + i0, *fb = (float *)d_b + i0, *fx = (float *)d_x + i0;
        for (int li = 0; li < len; ++li) {
            fv[li] = (float)ov[li];
            fa[li] = saturate32(oa[li]);
            fb[li] = saturate32(ob[li]);
            fx[li] = saturate32(ox[li]);
        }
    } else {
        double *dv = (double *)value + i0, *da = (double *)d_a + i0, *db = (double *)d_b + i0, *dx = (double *)d_x + i0;
        for (int li = 0; li < len; ++li) {
            dv[li] = ov[li];
            da[li] = oa[li];
            db[li] = ob[li];
            dx[li] = ox[li];
        }
    }
}

/*
 * gbs_betainc -- value and partial derivatives of I_x(a, b) for n points.
 *   n, m: numbers of points and of parameter pairs (n % m == 0 when n > 0); point i uses a[i % m], b[i % m].
 *   a, b (m values), x (n values): inputs; value, d_a, d_b, d_x (n values each): outputs; all float64, or all
 *   float32 when f32 is nonzero (then computed in float64, rounded once, derivatives saturated at the largest
 *   finite float32).
 *   max_steps, tol, tiny: step cap, relative tolerance and zero guard of the continued fraction.
 *   series_max_terms, series_tol, series_p_max: term cap, relative tolerance and the bound on p of the
 *   complement series (used where the fraction is swapped and p <= series_p_max).
 *   threads: OpenMP threads at most (ignored without OpenMP).
 * Returns 0, or -1 when memory for the parameter terms could not be allocated (nothing is written then).
 */
int gbs_betainc(int64_t n, int64_t m, const void *a, const void *b, const void *x, void *value, void *d_a,
                void *d_b, void *d_x, int f32, int64_t max_steps, double tol, double tiny, int64_t series_max_terms,
                double series_tol, double series_p_max, int threads)
{
    if (n <= 0 || m <= 0)
        return 0;
    const controls_t ctl = {max_steps, tol, tiny, series_max_terms, series_tol, series_p_max};
    if (threads < 1)
        threads = 1;
    /* Parameter terms once per pair when each pair serves several points. */
    params_t *terms = NULL;
    if (n >= 2 * m) {
        terms = (params_t *)malloc((size_t)m * sizeof(params_t));
        if (terms == NULL)
            return -1;
#if defined(_OPENMP)
#pragma omp parallel for num_threads(threads) schedule(static) if (m >= 256 && threads > 1)
#endif
        for (int64_t k = 0; k < m; ++k) {
            const double ak = load(a, k, f32), bk = load(b, k, f32);
            if (valid_params(ak, bk))
                parameter_terms(ak, bk, series_p_max, &terms[k]);
        }
    }
    /* Blocks scheduled dynamically: elements differ widely in cost (from no fraction step to thousands). Threads
     * only from 256 elements and at most one per 128 of them: waking a thread costs microseconds on an idle
     * machine, but a team whose thread is not scheduled (another process on its core) waits for it at the closing
     * barrier for a scheduler time slice, milliseconds, which a call of a few hundred elements (~0.1 ms on one
     * thread) should never risk. Smaller calls with threads get smaller blocks (at least 16 elements, about four
     * per thread) so that the threads stay busy. */
    if (threads > n / 128)
        threads = n >= 256 ? (int)(n / 128) : 1;
    const int parallel = n >= 256 && threads > 1;
    int64_t size = BLOCK;
    if (parallel && n < (int64_t)BLOCK * 4 * threads) {
        size = (n + 4 * threads - 1) / (4 * threads);
        size = size < 16 ? 16 : (size + 3) / 4 * 4;
    }
    const int64_t blocks = (n + size - 1) / size;
#if defined(_OPENMP)
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (parallel)
#endif
    for (int64_t blk = 0; blk < blocks; ++blk) {
        const int64_t i0 = blk * size, i1 = i0 + size < n ? i0 + size : n;
        run_block(i0, i1, m, n, a, b, x, f32, terms, &ctl, value, d_a, d_b, d_x);
    }
    free(terms);
    return 0;
}
