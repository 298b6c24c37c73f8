r"""The continued fraction and the complement series of the reference ("torch") implementation, with derivatives.

Both are written in torch operations over whole tensors, and come in two modes:

* **compact** (CPU): converged elements leave the working set at a few checkpoints, so an easy element costs a
  dozen steps and only the hard ones run long (the checkpoints synchronise with the host, which is free on CPU);
* **masked** (accelerators without a fused kernel): every element runs in chunks of
  `CHUNK_STEPS` steps with convergence masks; between chunks one host
  synchronisation asks whether all have converged. The fused Triton kernel never synchronises; this fallback
  does, once per chunk.

Both modes stop at the same cap, `MAX_STEPS`, and flag the same elements as
non-converged as the native and Triton kernels.

References:
    * A. R. Didonato, A. H. Morris Jr., "Algorithm 708", ACM TOMS 18(3), 1992 (``bfrac``, ``bpser``).
    * I. J. Thompson, A. R. Barnett, "Coulomb and Bessel functions of complex arguments and order", Journal of
      Computational Physics 64, 1986 (modified Lentz algorithm).
    * R. J. Boik, J. F. Robinson-Cox, "Derivatives of the incomplete beta function", Journal of Statistical
      Software 3(1), 1998 (forward-mode derivatives of the fraction).
"""

from __future__ import annotations

import torch
from torch import Tensor

from gbs_loss.special._constants import CHUNK_STEPS, MAX_STEPS, SERIES_MAX_TERMS, SERIES_TOL, TINY, TOL
from gbs_loss.special._gamma import digamma_diffs, lgamma1p_small, lgamma_diff

__all__ = ["complement_series", "continued_fraction"]

# Terms of the complement series between two convergence checks.
_SERIES_CHUNK = 8


def _fraction_coefficients(
    n: int, p: Tensor, q: Tensor, x: Tensor, y: Tensor, inv: dict[str, Tensor]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Coefficients ``alpha_n``, ``beta_n`` of the fraction and their derivatives with respect to ``(p, q)``.

    ``inv`` holds loop invariants: ``pq`` (p + q), ``x2`` (x^2), ``yp1`` (1 + y), ``one_lam`` (1 + lambda).
    Returns ``alpha``, ``beta`` and the stacked derivatives ``d alpha``, ``d beta`` of shape ``(2, *x.shape)``.
    """
    s = p + (2 * n - 1)
    inv_s = s.reciprocal()
    inv_s2 = (s + 2.0).reciprocal()
    pq = inv["pq"] + (n - 1)
    inv_pq = pq.reciprocal()
    # alpha_n = P * Q with P = (p + n - 1)(p + q + n - 1) x^2 / s^2 and Q = n (q - n); alpha_1 is divided by p.
    inv_s_sq = inv_s * inv_s
    if n == 1:
        big_p = pq * inv["x2"] * inv_s_sq
        dlogp_p = torch.add(inv_pq, inv_s, alpha=-2.0)
    else:
        pn1 = p + (n - 1)
        big_p = (pn1 * pq).mul_(inv["x2"]).mul_(inv_s_sq)
        dlogp_p = torch.add(pn1.reciprocal(), inv_pq).add_(inv_s, alpha=-2.0)
    big_q = (q - n).mul_(n)
    al = big_p * big_q
    da = torch.empty((2, *x.shape), dtype=x.dtype, device=x.device)
    torch.mul(al, dlogp_p, out=da[0])
    torch.mul(big_q, inv_pq, out=da[1]).add_(n).mul_(big_p)
    # beta_n = n + n (q - n) x / s + u (1 + lambda + n (1 + y)) with u = (p + n) / (p + 2n + 1).
    u = (p + n).mul_(inv_s2)
    ell = torch.add(inv["one_lam"], inv["yp1"], alpha=n)
    xs = x * inv_s
    w = big_q * xs
    be = torch.addcmul(w + n, u, ell)
    db = torch.empty_like(da)
    torch.mul(inv_s2, inv_s2, out=db[0]).mul_(ell).mul_(n + 1.0).addcmul_(u, y).addcmul_(w, inv_s, value=-1.0)
    torch.mul(xs, n, out=db[1]).addcmul_(u, x, value=-1.0)
    return al, be, da, db


def _check_now(n: int) -> bool:
    """Steps after which converged elements leave the working set (CPU): every 4 up to 32, then every 8."""
    return (n >= 8 and n % 4 == 0 and n <= 32) or (n > 32 and n % 8 == 0)


def _lentz_step(
    n: int, p: Tensor, q: Tensor, x: Tensor, y: Tensor, inv: dict[str, Tensor], state: dict[str, Tensor]
) -> tuple[Tensor, Tensor]:
    r"""One step of the differentiated modified Lentz recurrences; returns ``(C_n D_n, increment of d log G)``.

    ``state`` holds ``d`` ($D_{n-1}$), ``inv_c`` ($1 / C_{n-1}$) and the relative derivatives ``rc``,
    ``rd`` ($\dot C/C$, $\dot D/D$, stacked over ``(p, q)``); it is updated in place.
    """
    al, be, da, db = _fraction_coefficients(n, p, q, x, y, inv)
    d, inv_c = state["d"], state["inv_c"]
    den = torch.addcmul(be, al, d)
    den.masked_fill_(den == 0, TINY)
    d_new = den.reciprocal()
    c_new = torch.addcmul(be, al, inv_c)
    c_new.masked_fill_(c_new == 0, TINY)
    inv_cn = c_new.reciprocal()
    # dD'/D' = -D' (beta' + D (alpha' + alpha dD/D));  dC'/C' = (beta' + (alpha' - alpha dC/C) / C) / C'.
    state["rd"] = torch.addcmul(da, al, state["rd"]).mul_(d).add_(db).mul_(-d_new)
    state["rc"] = torch.addcmul(da, al, state["rc"], value=-1.0).mul_(inv_c).add_(db).mul_(inv_cn)
    state["d"], state["inv_c"] = d_new, inv_cn
    return c_new * d_new, state["rc"] + state["rd"]


def _converged(factor: Tensor, inc: Tensor, dg: Tensor) -> Tensor:
    """The convergence test of every backend: $|C_n D_n - 1|$ and both relative increments within TOL."""
    return ((factor - 1.0).abs() <= TOL) & (inc.abs() <= TOL * dg.abs()).all(dim=0)


def continued_fraction(
    p: Tensor, q: Tensor, x: Tensor, y: Tensor, lam: Tensor, compact: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""Evaluate $G$ in $I_x(p, q) = x^p y^q / (p\,B(p, q)\,G)$ and its log-derivatives.

    The fraction is the even contraction of the classical one, written with
    $\lambda = (p+q)y - q$ so that no step cancels when $x$ is close to 1 (Didonato & Morris 1992,
    the fraction behind ``bfrac``; coefficients re-derived here):

    $$
    G = \beta_0 + \cfrac{\alpha_1}{\beta_1 + \cfrac{\alpha_2}{\beta_2 + \cdots}},\qquad
    \beta_0 = \frac{1+\lambda}{p+1},\quad
    \alpha_n = \frac{(p+n-1)(p+q+n-1)\,n(q-n)\,x^2}{(p+2n-1)^2}\ (\alpha_1 \text{ divided by } p),

    \beta_n = n + \frac{n(q-n)x}{p+2n-1} + \frac{p+n}{p+2n+1}\left(1 + \lambda + n(1+y)\right).
    $$

    Modified Lentz algorithm, differentiated in forward mode: with $C_n = \beta_n + \alpha_n / C_{n-1}$,
    $D_n = 1 / (\beta_n + \alpha_n D_{n-1})$ and $G_n = G_{n-1} C_n D_n$, the relative derivatives
    $\dot C_n / C_n$ and $\dot D_n / D_n$ obey first-order recurrences, and
    $\partial \log G = \sum_n (\dot C_n / C_n + \dot D_n / D_n)$. An element stops after the first step
    that passes the convergence test, at most `MAX_STEPS` steps.

    Args:
        p, q: Parameters of the fraction (after the swap), float64.
        x, y: ``xx`` and ``yy = 1 - xx`` (one of them exact), float64.
        lam: $\lambda = (p+q)y - q$, accurate to a few ulps of itself.
        compact: Working-set compaction (CPU) instead of masked chunks.

    Shape:
        All arguments one shape ``(n,)``; the outputs too.

    Returns:
        ``(log G, d log G / dp, d log G / dq, converged)``.

    Example:
        >>> import torch
        >>> from gbs_loss import betainc
        >>> from gbs_loss.special._fraction import continued_fraction
        >>> from gbs_loss.special._prefactor import lambda_dd, log_prefactor
        >>> p = torch.tensor([2.0, 50.0], dtype=torch.float64)
        >>> q = torch.tensor([3.0, 40.0], dtype=torch.float64)
        >>> x = torch.tensor([0.25, 0.5], dtype=torch.float64)
        >>> lam = lambda_dd(p, q, x, 1.0 - x, torch.ones(2, dtype=torch.bool))
        >>> log_g, _, _, converged = continued_fraction(p, q, x, 1.0 - x, lam, compact=True)
        >>> converged
        tensor([True, True])
        >>> i = torch.exp(log_prefactor(p, q, lam, x.log(), torch.log1p(-x)) - p.log() - log_g)
        >>> i, torch.allclose(i, betainc(p, q, x))
        (tensor([0.2617, 0.1445], dtype=torch.float64), True)
    """
    out_g = torch.empty_like(x)
    out_dg = torch.empty((2, *x.shape), dtype=x.dtype, device=x.device)
    idx = torch.arange(x.numel(), device=x.device) if compact else None
    one_lam = 1.0 + lam
    inv = {"pq": p + q, "x2": x * x, "yp1": 1.0 + y, "one_lam": one_lam}
    # beta_0 and its derivatives (d lambda / dp = y, d lambda / dq = -x); C_0 = beta_0, D_0 = 0.
    p1 = p + 1.0
    be0 = one_lam / p1
    inv_c = be0.reciprocal()
    rc = torch.stack(((y - be0) * inv_c / p1, -x * inv_c / p1))
    state = {"d": torch.zeros_like(x), "inv_c": inv_c, "rc": rc, "rd": torch.zeros_like(rc)}
    g = be0.clone()
    dg = rc.clone()
    converged = torch.ones_like(x, dtype=torch.bool)
    if not compact:
        done = torch.zeros_like(x, dtype=torch.bool)
        n = 0
        while n < MAX_STEPS:
            for _ in range(min(CHUNK_STEPS, MAX_STEPS - n)):
                n += 1
                factor, inc = _lentz_step(n, p, q, x, y, inv, state)
                g = torch.where(done, g, g * factor)
                dg = torch.where(done, dg, dg + inc)
                done = done | _converged(factor, inc, dg)
            if bool(done.all()):  # one host synchronisation per chunk
                break
        return torch.log(g), dg[0], dg[1], done
    assert idx is not None  # compact mode
    for n in range(1, MAX_STEPS + 1):
        factor, inc = _lentz_step(n, p, q, x, y, inv, state)
        g.mul_(factor)
        dg.add_(inc)
        last = n == MAX_STEPS
        if not (_check_now(n) or last):
            continue
        conv = _converged(factor, inc, dg)
        if last:
            converged[idx[~conv]] = False
            conv = torch.ones_like(conv)
        if bool(conv.any()):
            sel = idx[conv]
            out_g[sel] = g[conv]
            out_dg[:, sel] = dg[:, conv]
            keep = ~conv
            if not bool(keep.any()):
                break
            idx = idx[keep]
            p, q, x, y = p[keep], q[keep], x[keep], y[keep]
            inv = {k: v[keep] for k, v in inv.items()}
            state = {k: v[..., keep] for k, v in state.items()}
            g, dg = g[keep], dg[:, keep]
    return torch.log(out_g), out_dg[0], out_dg[1], converged


def _series_sums(p: Tensor, q: Tensor, xx: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""The sums $T$, $\partial T/\partial p$, $\partial T/\partial q$ and a convergence flag.

    $T = \sum_{j\ge1} t_j / (p + j)$ with $t_j = (1-q)_j\,xx^j / j!$; each element stops after the
    first term ``j`` whose contributions to $T$ and $\partial T / \partial q$ are at most
    `SERIES_TOL` times the sums (see `gbs_loss.special._constants`), at most
    `SERIES_MAX_TERMS` terms. Converged elements are frozen (masked), and the loop ends when all have
    converged (checked every few terms, a host synchronisation; the series is short and runs only on the
    elements that need it in compact mode).
    """
    t = torch.ones_like(xx)  # t_j
    dt = torch.zeros_like(xx)  # d t_j / dq
    big_t = torch.zeros_like(xx)
    dtp = torch.zeros_like(xx)
    dtq = torch.zeros_like(xx)
    done = torch.zeros_like(xx, dtype=torch.bool)
    for j in range(1, SERIES_MAX_TERMS + 1):
        f = (j - q) * xx / j
        dt = dt * f - t * (xx / j)
        t = t * f
        inv = 1.0 / (p + j)
        term = t * inv
        dterm = dt * inv
        big_t = torch.where(done, big_t, big_t + term)
        dtp = torch.where(done, dtp, dtp - term * inv)
        dtq = torch.where(done, dtq, dtq + dterm)
        done = done | ((term.abs() <= SERIES_TOL * big_t.abs()) & (dterm.abs() <= SERIES_TOL * dtq.abs()))
        if j % _SERIES_CHUNK == 0 and bool(done.all()):
            break
    return big_t, dtp, dtq, done


def complement_series(p: Tensor, q: Tensor, xx: Tensor, logxx: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""``(log J, d log J / dp, d log J / dq, converged)`` for $J = I_{xx}(p, q)$ by its power series.

    Used when $J$ is close to 1 and $1 - J$ is wanted (TOMS 708 ``bpser``; the series re-derived):

    $$
    J = \frac{xx^p}{p\,B(p,q)}\Big(1 + p\,T\Big),\qquad
    T = \sum_{j\ge1} \frac{(1-q)_j}{j!}\,\frac{xx^j}{p+j},
    $$

    and $\log J = p\log xx - \log\Gamma(1+p) + \log\Gamma(p+q) - \log\Gamma(q) + \log(1 + pT)$ is a
    sum of terms of order $p$, so $1 - J = -\mathrm{expm1}(\log J)$ keeps full relative precision.
    Used for $p \le$ ``SERIES_P_MAX`` after the swap, where $xx \le 0.6$ and $q\,xx \lesssim 1.2$.

    Args:
        p, q: Parameters after the swap, $p \le 0.2$.
        xx: The point after the swap; ``logxx`` its logarithm.

    Shape:
        All arguments one shape; the outputs too.

    Example:
        >>> import torch
        >>> from gbs_loss import betainc
        >>> from gbs_loss.special._fraction import complement_series
        >>> p = torch.tensor([1e-3], dtype=torch.float64)
        >>> q = torch.tensor([2.0], dtype=torch.float64)
        >>> xx = torch.tensor([0.1], dtype=torch.float64)
        >>> log_j, _, _, converged = complement_series(p, q, xx, xx.log())
        >>> converged, -torch.expm1(log_j)  # 1 - I_0.1(0.001, 2) = I_0.9(2, 0.001)
        (tensor([True]), tensor([0.0014], dtype=torch.float64))
        >>> torch.allclose(-torch.expm1(log_j), betainc(q, p, 1.0 - xx))
        True
    """
    big_t, dtp, dtq, converged = _series_sums(p, q, xx)
    pt = p * big_t
    logj = p * logxx - lgamma1p_small(p) + lgamma_diff(q, p) + torch.log1p(pt)
    dig_p, dig_q = digamma_diffs((1.0 + p, q - 1.0), (q, p))
    dlogj_p = logxx + dig_p + (big_t + p * dtp) / (1.0 + pt)
    dlogj_q = dig_q + p * dtq / (1.0 + pt)
    return logj, dlogj_p, dlogj_q, converged
