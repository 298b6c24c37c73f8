"""gbs-loss: Generalized Batch-Shaping for PyTorch.

The package provides

* `gbs_loss.betainc`, the regularized incomplete beta function with exact gradients
  with respect to ``x``, ``a`` and ``b`` (the Beta CDF that PyTorch lacks);
* the Batch-Shaping and Generalized Batch-Shaping losses, their priors and modules;
* a reference MSViT gate and mixed-scale tokenizer in `gbs_loss.msvit`.
"""

from gbs_loss import msvit
from gbs_loss.distributed import gather_batch
from gbs_loss.functional import batch_shaping_loss, hyperprior_loss
from gbs_loss.modules import BatchShaping, GeneralizedBatchShaping
from gbs_loss.priors import Beta, Normal, RelaxedBernoulli, SymmetricBeta
from gbs_loss.special import beta_log_prob, betainc, betaincinv, betaln

__version__ = "0.2.0"

__all__ = [
    "BatchShaping",
    "Beta",
    "GeneralizedBatchShaping",
    "Normal",
    "RelaxedBernoulli",
    "SymmetricBeta",
    "__version__",
    "batch_shaping_loss",
    "hyperprior_loss",
    "msvit",
    "beta_log_prob",
    "betainc",
    "betaincinv",
    "betaln",
    "gather_batch",
]
