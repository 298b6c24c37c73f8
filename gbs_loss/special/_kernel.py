r"""The reference per-element computation of $I_x(a, b)$ and its three partial derivatives, in torch operations.

This is the body of the "torch" backend (`gbs_loss.special.backends.torch_ops`) and the readable statement of
the algorithm that the native and Triton kernels implement element by element. With $y = 1 - x$:

1. **Invalid inputs and ends.** $a \le 0$, $b \le 0$, non-finite parameters, $x \notin [0, 1]$
   or NaN give NaN in all four outputs. $I_0 = 0$, $I_1 = 1$, with zero parameter gradients and the
   density's one-sided limit as the $x$-gradient where it is finite (``b`` at 0 when $a = 1$, ``a``
   at 1 when $b = 1$), 0 where it diverges.
2. **Swap.** Above $x = (a+1)/(a+b+2)$ the symmetry $I_x(a, b) = 1 - I_y(b, a)$ is used:
   $J = I_{xx}(p, q)$ with $(p, q, xx) = (b, a, y)$; otherwise $(a, b, x)$.
3. **Prefactor** $K = xx^p\,yy^q / B(p, q)$ in logarithms (`gbs_loss.special._prefactor`), with
   $\lambda = (p+q)\,yy - q$ in double-double arithmetic.
4. **Continued fraction** $J = K / (p\,G)$ with $\partial \log G$ in forward mode
   (`gbs_loss.special._fraction`); $\partial_p \log K = \log xx + \psi(p+q) - \psi(p+1)$,
   $\partial_q \log K = \log yy + \psi(p+q) - \psi(q)$ by cancellation-free digamma differences.
5. **Complement series.** After a swap with $p \le 0.2$ (`SERIES_P_MAX`)
   $J$ is close to 1 and $1 - J$ would cancel: $\log J$ is summed as a power series instead and
   the value is $-\mathrm{expm1}(\log J)$.
6. **Non-convergence** of the fraction (more than `MAX_STEPS` steps, far
   outside the documented domain) or of the series gives NaN rather than a wrong number.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gbs_loss.special._constants import LARGE, SERIES_P_MAX
from gbs_loss.special._fraction import complement_series, continued_fraction
from gbs_loss.special._gamma import betaln64, digamma_diffs
from gbs_loss.special._masked import piecewise
from gbs_loss.special._prefactor import lambda_dd, log_prefactor, stirling_constant

__all__ = ["betainc_kernel", "parameter_terms"]


def parameter_terms(a: Tensor, b: Tensor) -> dict[str, Tensor]:
    r"""Everything that depends on ``(a, b)`` only, for both orientations of the fraction.

    ``lbeta`` is $\log B(a, b)$, ``stirling`` the parameter part of the Stirling prefactor (zero where
    $\min(a, b) < 10$), and ``d_*`` the digamma differences of the log-derivatives of the prefactor:
    unswapped, ``p = a`` needs $\psi(a+b) - \psi(a+1)$ (``d_a1``) and ``q = b`` needs
    $\psi(a+b) - \psi(b)$ (``d_b``); swapped, the same with ``a`` and ``b`` exchanged (``d_b1``, ``d_a``).

    Args:
        a, b: Valid (positive, finite) float64 parameters of one shape.

    Returns:
        A dict of float64 tensors of that shape.

    Example:
        >>> import torch
        >>> from gbs_loss.special._kernel import parameter_terms
        >>> terms = parameter_terms(torch.tensor([2.0], dtype=torch.float64), torch.tensor([3.0], dtype=torch.float64))
        >>> sorted(terms), terms["lbeta"]
        (['d_a', 'd_a1', 'd_b', 'd_b1', 'lbeta', 'stirling'], tensor([-2.4849], dtype=torch.float64))
    """
    large = torch.minimum(a, b) >= LARGE
    digammas = digamma_diffs((a + 1.0, b - 1.0), (b, a), (b + 1.0, a - 1.0), (a, b))
    return {
        "lbeta": betaln64(a, b),
        "stirling": piecewise(large, stirling_constant, (a, b), (LARGE, LARGE), False),
        **dict(zip(("d_a1", "d_b", "d_b1", "d_a"), digammas, strict=True)),
    }


def betainc_kernel(a: Tensor, b: Tensor, x: Tensor, compact: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""Value and the three partial derivatives of $I_x(a, b)$, following the backend contract.

    Element ``i`` of ``x`` uses ``a[i % m]`` and ``b[i % m]``. When ``m < n`` (one ``(a, b)`` shared by many
    ``x``, as in a loss with per-position priors) the parameter-only terms are computed once per parameter.

    Args:
        a, b: Contiguous float64 tensors of shape ``(m,)``.
        x: Contiguous float64 tensor of shape ``(n,)``, ``n % m == 0``, on the device of ``a`` and ``b``.
        compact: Evaluate with working-set compaction (CPU) instead of masked chunks (any device).

    Returns:
        ``(I, dI/da, dI/db, dI/dx)``, four float64 tensors of shape ``(n,)``.

    Example:
        >>> import torch
        >>> from gbs_loss.special._kernel import betainc_kernel
        >>> a = torch.tensor([2.0], dtype=torch.float64)
        >>> b = torch.tensor([3.0], dtype=torch.float64)
        >>> x = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
        >>> value, d_a, d_b, d_x = betainc_kernel(a, b, x, compact=True)
        >>> value
        tensor([0.0000, 0.2617, 0.6875, 1.0000], dtype=torch.float64)
        >>> d_x  # the Beta(2, 3) density; 0 at the ends, where it is 0 too
        tensor([0.0000, 1.6875, 1.5000, 0.0000], dtype=torch.float64)
    """
    n, m = x.numel(), a.numel()
    par_valid = (a > 0) & (b > 0) & torch.isfinite(a) & torch.isfinite(b)
    a_par = torch.where(par_valid, a, 1.0)
    b_par = torch.where(par_valid, b, 1.0)
    shared = m < n
    terms = parameter_terms(a_par, b_par) if shared else None
    reps = n // m if m else 0

    def flat(t: Tensor) -> Tensor:
        return t.repeat(reps) if shared else t

    a_s, b_s, valid = flat(a_par), flat(b_par), flat(par_valid)
    valid = valid & (x >= 0) & (x <= 1)
    interior = valid & (x > 0) & (x < 1)
    one = torch.ones_like(x)
    x_s = torch.where(interior, x, 0.5)
    y_s = 1.0 - x_s
    logx = torch.log(x_s)
    logy = torch.log1p(-x_s)
    # Evaluate the fraction on the side where it converges: swap to I_y(b, a) above (a + 1)/(a + b + 2).
    swap = x_s * (a_s + b_s + 2.0) > a_s + 1.0
    p = torch.where(swap, b_s, a_s)
    q = torch.where(swap, a_s, b_s)
    xx = torch.where(swap, y_s, x_s)
    yy = torch.where(swap, x_s, y_s)
    logxx = torch.where(swap, logy, logx)
    logyy = torch.where(swap, logx, logy)
    # lambda = (p + q) yy - q, from x itself (exact) rather than from the rounded 1 - x.
    lam = lambda_dd(p, q, xx, yy, ~swap)
    if terms is not None:  # shared
        params = (flat(terms["stirling"]), flat(terms["lbeta"]))
        dig_p = torch.where(swap, flat(terms["d_b1"]), flat(terms["d_a1"]))
        dig_q = torch.where(swap, flat(terms["d_a"]), flat(terms["d_b"]))
    else:
        params = None
        dig_p, dig_q = digamma_diffs((p + 1.0, q - 1.0), (q, p))
    logk = log_prefactor(p, q, lam, logxx, logyy, compact, params)
    logf, gp, gq, converged = continued_fraction(p, q, xx, yy, lam, compact)
    # The ends do not depend on the fraction (evaluated there at x = 1/2 only to keep every branch finite).
    valid = valid & (converged | ~interior)
    # J = I_xx(p, q) = K / p / F with K = xx^p yy^q / B(p, q).
    j = torch.exp(logk - torch.log(p) - logf)
    dj_dp = j * (logxx + dig_p - gp)
    dj_dq = j * (logyy + dig_q - gq)
    value = torch.where(swap, 1.0 - j, j)
    # Where the complement J is close to 1 (small p after the swap), 1 - J would cancel: use the power series of
    # log J instead, whose terms are all of order p.
    use_series = swap & (p <= SERIES_P_MAX)
    if compact:
        idx = use_series.nonzero().reshape(-1)
        if idx.numel():
            ls, lp, lq, ok = complement_series(p[idx], q[idx], xx[idx], logxx[idx])
            js = torch.exp(ls)
            value.index_copy_(0, idx, -torch.expm1(ls))
            dj_dp.index_copy_(0, idx, js * lp)
            dj_dq.index_copy_(0, idx, js * lq)
            valid.index_copy_(0, idx, valid[idx] & (ok | ~interior[idx]))
    else:
        tenth = torch.full_like(p, 0.1)
        ls, lp, lq, ok = complement_series(
            torch.where(use_series, p, tenth),
            torch.where(use_series, q, one),
            torch.where(use_series, xx, tenth),
            torch.where(use_series, logxx, torch.log(tenth)),
        )
        js = torch.exp(ls)
        value = torch.where(use_series, -torch.expm1(ls), value)
        dj_dp = torch.where(use_series, js * lp, dj_dp)
        dj_dq = torch.where(use_series, js * lq, dj_dq)
        valid = valid & (ok | ~use_series | ~interior)
    d_a = torch.where(swap, -dj_dq, dj_dp)
    d_b = torch.where(swap, -dj_dp, dj_dq)
    d_x = torch.exp(logk - logx - logy)
    # Ends: I_0 = 0, I_1 = 1, no dependence on a and b; the x-derivative is the density's one-sided limit
    # where it is finite (a = 1 at x = 0: b; b = 1 at x = 1: a; otherwise 0) and 0 where it diverges.
    zero = torch.zeros_like(x)
    at0 = valid & (x == 0)
    at1 = valid & (x == 1)
    ends = at0 | at1
    value = torch.where(at0, zero, torch.where(at1, one, value.clamp(0.0, 1.0)))
    d_a = torch.where(ends, zero, d_a)
    d_b = torch.where(ends, zero, d_b)
    end_dx = torch.where(at0 & (a_s == 1), b_s, torch.where(at1 & (b_s == 1), a_s, zero))
    d_x = torch.where(ends, end_dx, d_x)
    nan = torch.full_like(x, float("nan"))
    return (
        torch.where(valid, value, nan),
        torch.where(valid, d_a, nan),
        torch.where(valid, d_b, nan),
        torch.where(valid, d_x, nan),
    )
