"""Special functions: the regularized incomplete beta function :func:`betainc` (the Beta CDF) with exact gradients
with respect to ``a``, ``b`` and ``x``, :func:`betaln` and the Beta log-density :func:`beta_log_prob`.

Layout (one algorithm, three implementations, one place that picks among them):

* :mod:`~gbs_loss.special.api` -- the public functions: argument checks and coercion;
* :mod:`~gbs_loss.special._op` -- the custom operator, the autograd function and its backward;
* :mod:`~gbs_loss.special.backends` -- the choice of backend (``GBS_LOSS_BACKEND``) and the backends: ``torch``
  (the reference in torch operations), ``native`` (one C call on CPU) and ``triton`` (one kernel on GPUs);
* the reference algorithm, piece by piece: :mod:`~gbs_loss.special._constants` (numbers shared by every backend),
  :mod:`~gbs_loss.special._gamma` (log-gamma and digamma differences, :math:`\\log B`),
  :mod:`~gbs_loss.special._prefactor` (:math:`x^a y^b / B(a, b)`), :mod:`~gbs_loss.special._fraction` (the
  continued fraction and the complement series) and :mod:`~gbs_loss.special._kernel` (the whole per-element
  computation).
"""

from gbs_loss.special.api import beta_log_prob, betainc, betaln

__all__ = ["beta_log_prob", "betainc", "betaln"]
