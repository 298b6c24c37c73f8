r"""The prefactor $x^a y^b / B(a, b)$ of the incomplete beta function, in logarithms, without cancellation.

For large parameters the prefactor is computed as in TOMS 708 ``brcomp`` (Didonato & Morris 1992): with
$\lambda = a - (a+b)x$ the huge terms $a \log x$, $b \log y$ and $\log B(a, b)$ cancel
analytically and only $a\,\mathrm{rlog1}(-\lambda/a) + b\,\mathrm{rlog1}(\lambda/b)$ remains, with
$\mathrm{rlog1}(e) = e - \log(1+e)$. $\lambda$ itself is computed in double-double arithmetic
(Knuth's TwoSum, Dekker's TwoProduct with Veltkamp's splitting), because in the tails of large-parameter
distributions the prefactor is as sensitive to $\lambda$ as $|\lambda|\,\epsilon$.

References:
    * A. R. Didonato, A. H. Morris Jr., "Algorithm 708", ACM TOMS 18(3), 1992.
    * T. J. Dekker, "A floating-point technique for extending the available precision", Numerische Mathematik 18,
      1971; D. E. Knuth, *The Art of Computer Programming* vol. 2, 4.2.2 (TwoSum).
"""

from __future__ import annotations

import torch
from torch import Tensor

from gbs_loss.special._constants import LARGE
from gbs_loss.special._gamma import HALF_LOG_2PI, bcorr, betaln64
from gbs_loss.special._masked import piecewise

__all__ = ["lambda_dd", "log_prefactor", "rlog1", "rlog1_any", "stirling_constant", "two_prod", "two_sum"]


def rlog1(e: Tensor) -> Tensor:
    r"""$e - \log(1 + e)$ for $|e| \le 1/2$, accurate to a few ulps.

    With $t = e / (2 + e)$, $\log(1+e) = 2\,\mathrm{artanh}\,t$, so
    $e - \log(1+e) = e t - 2 \sum_{k \ge 1} t^{2k+1} / (2k+1)$ (no cancellation for small ``e``).

    Example:
        >>> import torch
        >>> from gbs_loss.special._prefactor import rlog1
        >>> rlog1(torch.tensor([1e-9, 0.25], dtype=torch.float64))
        tensor([5.0000e-19, 2.6856e-02], dtype=torch.float64)
    """
    t = e / (2.0 + e)
    t2 = t * t
    s = torch.zeros_like(e)
    for k in range(20, 0, -1):
        s = s * t2 + 1.0 / (2 * k + 1)
    return e * t - 2.0 * t * t2 * s


def two_sum(u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Knuth's TwoSum: ``u + v = s + e`` exactly, with ``s = fl(u + v)``.

    Example:
        >>> import torch
        >>> from gbs_loss.special._prefactor import two_sum
        >>> two_sum(torch.tensor([1.0], dtype=torch.float64), torch.tensor([1e-20], dtype=torch.float64))
        (tensor([1.], dtype=torch.float64), tensor([1.0000e-20], dtype=torch.float64))
    """
    s = u + v
    bv = s - u
    return s, (u - (s - bv)) + (v - bv)


def _split(u: Tensor) -> tuple[Tensor, Tensor]:
    """Veltkamp's splitting of a float64 into two halves of 26 significant bits."""
    t = 134217729.0 * u  # 2**27 + 1
    hi = t - (t - u)
    return hi, u - hi


def two_prod(u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Dekker's TwoProduct: ``u * v = p + e`` exactly, with ``p = fl(u * v)`` (no FMA needed).

    Example:
        >>> import torch
        >>> from gbs_loss.special._prefactor import two_prod
        >>> u = torch.tensor([1.0 + 2.0**-30], dtype=torch.float64)
        >>> p, e = two_prod(u, u)  # (1 + 2^-30)^2 = 1 + 2^-29 + 2^-60: the last term is the rounding error
        >>> e.item() == 2.0**-60
        True
    """
    p = u * v
    uh, ul = _split(u)
    vh, vl = _split(v)
    return p, ((uh * vh - p) + uh * vl + ul * vh) + ul * vl


def rlog1_any(e: Tensor, log1pe: Tensor) -> Tensor:
    r"""$e - \log(1+e)$ for any $e > -1$; ``log1pe`` is an accurate $\log(1+e)$ for ``e`` near -1.

    Series near 0 (`rlog1`), ``log1p`` for $e > 1/2$, and the given logarithm below $-1/2$
    (where ``1 + e`` would have lost its relative precision).

    Example:
        >>> import torch
        >>> from gbs_loss.special._prefactor import rlog1_any
        >>> e = torch.tensor([-0.9, 0.1, 3.0], dtype=torch.float64)
        >>> rlog1_any(e, torch.log1p(e))
        tensor([1.4026, 0.0047, 1.6137], dtype=torch.float64)
    """
    near = e.abs() <= 0.5
    series = rlog1(torch.where(near, e, torch.zeros_like(e)))
    far = e - torch.where(e > 0, torch.log1p(torch.where(e > 0, e, torch.zeros_like(e))), log1pe)
    return torch.where(near, series, far)


def lambda_dd(p: Tensor, q: Tensor, xx: Tensor, yy: Tensor, xx_exact: Tensor) -> Tensor:
    r"""$\lambda = p - (p+q)\,xx = (p+q)\,yy - q$ to a few ulps of $\lambda$ itself.

    Computed in double-double arithmetic from whichever of ``xx``, ``yy`` is the exact input (the other is a
    rounded ``1 - x``). In the tails of large-parameter distributions the prefactor is as sensitive to
    $\lambda$ as $|\lambda|\,\epsilon$, which plain float64 would turn into errors of 1e-12.

    Example:
        >>> import torch
        >>> from gbs_loss.special._prefactor import lambda_dd
        >>> p = torch.tensor([2.0, 1e6], dtype=torch.float64)
        >>> q = torch.tensor([3.0, 1e6], dtype=torch.float64)
        >>> xx = torch.tensor([0.25, 0.4999], dtype=torch.float64)
        >>> lambda_dd(p, q, xx, 1.0 - xx, torch.ones(2, dtype=torch.bool))
        tensor([  0.7500, 200.0000], dtype=torch.float64)
    """
    s, s_err = two_sum(p, q)
    z = torch.where(xx_exact, xx, yy)
    prod, prod_err = two_prod(s, z)
    # xx exact: lambda = p - (s + s_err) xx;  yy exact: lambda = (s + s_err) yy - q.
    first = torch.where(xx_exact, p, prod)
    second = torch.where(xx_exact, -prod, -q)
    d, d_err = two_sum(first, second)
    tail = s_err * z + prod_err
    return d + torch.where(xx_exact, d_err - tail, d_err + tail)


def stirling_constant(a: Tensor, b: Tensor) -> Tensor:
    r"""Parameter-only part of the Stirling prefactor.

    $\tfrac12\log\frac{ab}{a+b} - \log\sqrt{2\pi} - \Delta(a) - \Delta(b) + \Delta(a+b)$, for
    $a, b \ge 10$.

    Example:
        >>> import torch
        >>> from gbs_loss.special._prefactor import stirling_constant
        >>> a = torch.tensor([10.0, 1e4], dtype=torch.float64)
        >>> stirling_constant(a, a)
        tensor([-0.1267,  3.3396], dtype=torch.float64)
    """
    return 0.5 * (torch.log(a) + torch.log(b) - torch.log(a + b)) - HALF_LOG_2PI - bcorr(a, b)


def _log_prefactor_stirling(
    a: Tensor, b: Tensor, lam: Tensor, logx: Tensor, logy: Tensor, const: Tensor | None = None
) -> Tensor:
    e1 = -lam / a
    e2 = lam / b
    u = rlog1_any(e1, logx + torch.log1p(b / a))
    v = rlog1_any(e2, logy + torch.log1p(a / b))
    return -(a * u + b * v) + (stirling_constant(a, b) if const is None else const)


def _log_prefactor_direct(a: Tensor, b: Tensor, logx: Tensor, logy: Tensor, lbeta: Tensor | None = None) -> Tensor:
    return a * logx + b * logy - (betaln64(a, b) if lbeta is None else lbeta)


def log_prefactor(
    a: Tensor,
    b: Tensor,
    lam: Tensor,
    logx: Tensor,
    logy: Tensor,
    compact: bool = False,
    params: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    r"""$\log\left(x^a y^b / B(a, b)\right)$ for interior ``x``, accurate for large ``a`` and ``b``.

    For $\min(a,b) \ge 10$ (TOMS 708 ``brcomp``): with $\lambda = a - (a+b)x$,
    $x_0 = a/(a+b)$, $e_1 = x/x_0 - 1 = -\lambda/a$, $e_2 = y/y_0 - 1 = \lambda/b$,

    $$
    \log\frac{x^a y^b}{B(a,b)} = -a\,\mathrm{rlog1}(e_1) - b\,\mathrm{rlog1}(e_2)
        + \tfrac12\log\frac{ab}{a+b} - \log\sqrt{2\pi} - \Delta(a) - \Delta(b) + \Delta(a+b),
    $$

    where the terms of size $a \log x$ have cancelled analytically. Otherwise
    $a \log x + b \log y - \log B(a, b)$ with an accurate $\log B$. ``params`` optionally holds
    the parameter-only parts ``(stirling_constant, betaln)`` computed in advance (once per distinct ``(a, b)``).

    Example:
        >>> import torch
        >>> from gbs_loss.special._prefactor import lambda_dd, log_prefactor
        >>> a = torch.tensor([2.0, 1e6], dtype=torch.float64)
        >>> b = torch.tensor([3.0, 1e6], dtype=torch.float64)
        >>> x = torch.tensor([0.25, 0.4999], dtype=torch.float64)
        >>> lam = lambda_dd(a, b, x, 1.0 - x, torch.ones(2, dtype=torch.bool))
        >>> log_prefactor(a, b, lam, x.log(), torch.log1p(-x))
        tensor([-1.1507,  5.6022], dtype=torch.float64)
    """
    large = torch.minimum(a, b) >= LARGE
    # Precomputed parameter terms, when given, travel as one more argument of each branch.
    const, lbeta = ((params[0],), (params[1],)) if params is not None else ((), ())
    extra_safe = (0.0,) if params is not None else ()
    stirling = piecewise(
        large,
        _log_prefactor_stirling,
        (a, b, lam, logx, logy, *const),
        (LARGE, LARGE, 0.0, -0.69, -0.69, *extra_safe),
        compact,
    )
    direct = piecewise(
        ~large, _log_prefactor_direct, (a, b, logx, logy, *lbeta), (1.0, 1.0, -0.69, -0.69, *extra_safe), compact
    )
    return stirling + direct
