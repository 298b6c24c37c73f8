"""Special functions: the regularized incomplete beta function and friends (package being split into modules)."""

from gbs_loss.special._legacy import beta_log_prob, betainc, betaln

__all__ = ["beta_log_prob", "betainc", "betaln"]
