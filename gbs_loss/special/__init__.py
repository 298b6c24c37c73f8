"""Special functions: the regularized incomplete beta function `betainc` (the Beta CDF) with exact gradients
with respect to ``a``, ``b`` and ``x``, `betaln` and the Beta log-density `beta_log_prob`.

Layout (one algorithm, three implementations, one place that picks among them):

* `api` -- the public functions: argument checks and coercion;
* `inverse` -- `betaincinv`, the inverse in ``x`` (Halley steps on `betainc`, implicit gradients);
* `_op` -- the custom operator, the autograd function and its backward;
* `backends` -- the choice of backend (``GBS_LOSS_BACKEND``) and the backends: ``torch``
  (the reference in torch operations), ``native`` (one C call on CPU) and ``triton`` (one kernel on GPUs);
* the reference algorithm, piece by piece: `_constants` (numbers shared by every backend),
  `_gamma` (log-gamma and digamma differences, $\\log B$),
  `_prefactor` ($x^a y^b / B(a, b)$), `_fraction` (the
  continued fraction and the complement series) and `_kernel` (the whole per-element
  computation).
"""

from gbs_loss.special.api import beta_log_prob, betainc, betaln
from gbs_loss.special.inverse import betaincinv

__all__ = ["beta_log_prob", "betainc", "betaincinv", "betaln"]
