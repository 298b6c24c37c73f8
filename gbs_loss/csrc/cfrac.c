/*
 * gbs-loss native kernel: the continued fraction of the regularized incomplete beta function, with the
 * forward-mode derivatives of its logarithm with respect to both parameters.
 *
 * This is the scalar twin of gbs_loss.special._continued_fraction (see its docstring for the mathematics):
 * the even contraction of the classical fraction (Didonato & Morris 1992, TOMS 708, the fraction behind
 * `bfrac`, written with lambda = (p + q) y - q), evaluated with the modified Lentz algorithm (Thompson &
 * Barnett 1986) and differentiated term by term (Boik & Robinson-Cox 1998). The arithmetic follows the
 * PyTorch code operation by operation; the one difference is that every element stops at the first step
 * where it has converged, instead of at the next checkpoint of the vectorised loop.
 *
 * Built at run time by gbs_loss/_native.py with the system C compiler and called through ctypes; the
 * elements are independent, so the result does not depend on the number of threads.
 *
 * gbs_cfrac -- inputs, all float64 arrays of `count` elements: p, q (parameters after the swap), x, y = 1 - x,
 * lam. Outputs: log G, d log G / dp, d log G / dq, and converged (1) or not (0) within `max_steps` steps.
 *
 * gbs_complement_sums -- the sums of gbs_loss.special._complement_series (TOMS 708 `bpser`, small p):
 * T = sum_j t_j / (p + j) with t_j = (1 - q)_j xx^j / j!, and its derivatives with respect to p and q,
 * over `terms` terms, in the order of the PyTorch loop.
 */
#include <math.h>
#include <stdint.h>

int gbs_cfrac_abi_version(void) { return 2; }

void gbs_cfrac(int64_t count, const double *p_in, const double *q_in, const double *x_in, const double *y_in,
               const double *lam_in, int64_t max_steps, double tol, double tiny, double *log_g, double *dlog_g_p,
               double *dlog_g_q, uint8_t *converged, int threads)
{
#if defined(_OPENMP)
#pragma omp parallel for num_threads(threads) schedule(dynamic, 256)
#endif
    for (int64_t i = 0; i < count; ++i) {
        const double p = p_in[i], q = q_in[i], x = x_in[i], y = y_in[i];
        const double one_lam = 1.0 + lam_in[i];
        const double pq0 = p + q, x2 = x * x, yp1 = 1.0 + y, p1 = p + 1.0;
        /* beta_0 = (1 + lambda) / (p + 1); C_0 = beta_0, D_0 = 0; d lambda / dp = y, d lambda / dq = -x. */
        const double be0 = one_lam / p1;
        double inv_c = 1.0 / be0;
        double rc_p = (y - be0) * inv_c / p1, rc_q = -x * inv_c / p1;
        double rd_p = 0.0, rd_q = 0.0, d = 0.0;
        double g = be0, dg_p = rc_p, dg_q = rc_q;
        uint8_t ok = 0;
        for (int64_t k = 1; k <= max_steps; ++k) {
            const double n = (double)k;
            const double s = p + (2.0 * n - 1.0);
            const double inv_s = 1.0 / s, inv_s2 = 1.0 / (s + 2.0);
            const double pq = pq0 + (n - 1.0), inv_pq = 1.0 / pq;
            const double inv_s_sq = inv_s * inv_s;
            /* alpha_n = P Q, P = (p + n - 1)(p + q + n - 1) x^2 / s^2 (alpha_1 divided by p), Q = n (q - n). */
            double big_p, dlogp_p;
            if (k == 1) {
                big_p = pq * x2 * inv_s_sq;
                dlogp_p = inv_pq - 2.0 * inv_s;
            } else {
                const double pn1 = p + (n - 1.0);
                big_p = pn1 * pq * x2 * inv_s_sq;
                dlogp_p = 1.0 / pn1 + inv_pq - 2.0 * inv_s;
            }
            const double big_q = (q - n) * n;
            const double al = big_p * big_q;
            const double da_p = al * dlogp_p, da_q = (big_q * inv_pq + n) * big_p;
            /* beta_n = n + n (q - n) x / s + u (1 + lambda + n (1 + y)), u = (p + n) / (p + 2n + 1). */
            const double u = (p + n) * inv_s2, ell = one_lam + n * yp1;
            const double xs = x * inv_s, w = big_q * xs;
            const double be = (w + n) + u * ell;
            const double db_p = inv_s2 * inv_s2 * ell * (n + 1.0) + u * y - w * inv_s;
            const double db_q = xs * n - u * x;
            /* Modified Lentz step and the recurrences of the relative derivatives dD/D and dC/C. */
            double den = be + al * d;
            if (den == 0.0)
                den = tiny;
            const double d_new = 1.0 / den;
            double c_new = be + al * inv_c;
            if (c_new == 0.0)
                c_new = tiny;
            const double inv_cn = 1.0 / c_new;
            rd_p = -((da_p + al * rd_p) * d + db_p) * d_new;
            rd_q = -((da_q + al * rd_q) * d + db_q) * d_new;
            rc_p = ((da_p - al * rc_p) * inv_c + db_p) * inv_cn;
            rc_q = ((da_q - al * rc_q) * inv_c + db_q) * inv_cn;
            const double inc_p = rc_p + rd_p, inc_q = rc_q + rd_q, factor = c_new * d_new;
            d = d_new;
            inv_c = inv_cn;
            g *= factor;
            dg_p += inc_p;
            dg_q += inc_q;
            if (fabs(factor - 1.0) <= tol && fabs(inc_p) <= tol * fabs(dg_p) && fabs(inc_q) <= tol * fabs(dg_q)) {
                ok = 1;
                break;
            }
        }
        log_g[i] = log(g);
        dlog_g_p[i] = dg_p;
        dlog_g_q[i] = dg_q;
        converged[i] = ok;
    }
}

void gbs_complement_sums(int64_t count, const double *p_in, const double *q_in, const double *xx_in, int64_t terms,
                         double *big_t_out, double *dt_p_out, double *dt_q_out)
{
    for (int64_t i = 0; i < count; ++i) {
        const double p = p_in[i], q = q_in[i], xx = xx_in[i];
        double t = 1.0, dt = 0.0, big_t = 0.0, dt_p = 0.0, dt_q = 0.0;
        for (int64_t k = 1; k <= terms; ++k) {
            const double j = (double)k;
            const double f = (j - q) * xx / j;
            dt = dt * f - t * (xx / j);
            t = t * f;
            const double inv = 1.0 / (p + j);
            const double term = t * inv;
            big_t = big_t + term;
            dt_p = dt_p - term * inv;
            dt_q = dt_q + dt * inv;
        }
        big_t_out[i] = big_t;
        dt_p_out[i] = dt_p;
        dt_q_out[i] = dt_q;
    }
}
