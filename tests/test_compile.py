"""torch.compile of the losses on the CPU backend: no graph breaks, and the eager values and gradients.

The per-file suites already compile ``betainc`` in float64 (``test_betainc.py``), the functional loss with
float64 Beta and Relaxed Bernoulli priors (parameter gradients, ``test_functional.py``) and the Relaxed
Bernoulli ``GeneralizedBatchShaping`` (``test_modules.py``). The cases here add what those leave out: the
gradients with respect to the samples, float32 inputs to ``betainc`` through the Beta prior, the Beta family
of ``GeneralizedBatchShaping`` with a Beta hyperprior (``betainc`` in both terms) at two batch sizes,
``BatchShaping`` with ``reduction="none"`` along another batch dim, autocast, and every default argument:
``validate_args=True`` in the losses and in the priors, whose value checks become device assertions under
compile (no graph break, no host synchronisation; a failed check raises a ``RuntimeError``).
Each compilation costs seconds, so the cases are few and small; the graph-break count uses
``torch._dynamo.explain``, which traces without compiling.
"""

from __future__ import annotations

import pytest
import torch

from gbs_loss import BatchShaping, GeneralizedBatchShaping, batch_shaping_loss, hyperprior_loss
from gbs_loss.priors import Beta, Normal, RelaxedBernoulli


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _loss_and_grads(fn, x: torch.Tensor, params: list[torch.Tensor]):
    x = x.detach().clone().requires_grad_()
    loss = fn(x)
    grads = torch.autograd.grad(loss.sum(), [x, *params])
    return loss.detach(), grads


def test_batch_shaping_beta_float32_reduction_none_along_dim_1() -> None:
    a = torch.tensor([[0.6], [2.0], [0.3]], requires_grad=True)
    b = torch.tensor([[0.4], [5.0], [0.8]], requires_grad=True)
    x = torch.rand(3, 20, 2, generator=torch.Generator().manual_seed(0))
    x[:, 5] = x[:, 6]  # ties
    x[0, 0, 0], x[1, 1, 1] = 0.0, 1.0  # exact ends

    def fn(x):
        return BatchShaping(Beta(a, b, validate_args=False), dim=1, ties=True, reduction="none", validate_args=False)(x)

    eager = _loss_and_grads(fn, x, [a, b])
    compiled = _loss_and_grads(torch.compile(fn, fullgraph=True), x, [a, b])
    assert eager[0].shape == (3, 2)
    torch.testing.assert_close(compiled, eager)


def test_generalized_beta_family_at_two_batch_sizes() -> None:
    module = GeneralizedBatchShaping(
        (2, 3),
        prior="beta",
        hyperprior=Beta(3.0, 7.0, validate_args=False),
        init_mean=torch.linspace(0.15, 0.85, 6).reshape(2, 3),
        init_concentration=torch.linspace(0.5, 8.0, 6).reshape(2, 3),
        temperature_weight=0.01,
        validate_args=False,
    )
    params = list(module.parameters())
    compiled = torch.compile(module, fullgraph=True)
    g = torch.Generator().manual_seed(1)
    for n in (16, 24):  # a smaller last batch must not break or change anything
        x = torch.rand(n, 2, 3, generator=g)
        torch.testing.assert_close(_loss_and_grads(compiled, x, params), _loss_and_grads(module, x, params))


def test_under_autocast_with_bfloat16_samples() -> None:
    module = GeneralizedBatchShaping(5, hyperprior=Normal(0.3, 0.1, validate_args=False), validate_args=False)

    def fn(gates):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return module(gates)

    gates = torch.rand(32, 5, generator=torch.Generator().manual_seed(3)).bfloat16()
    params = list(module.parameters())
    eager = _loss_and_grads(fn, gates, params)
    got = _loss_and_grads(torch.compile(fn, fullgraph=True), gates, params)
    assert eager[0].dtype == torch.float32 and eager[1][0].dtype == torch.bfloat16
    torch.testing.assert_close(got, eager)


def test_readme_module_with_defaults_compiles_fullgraph_and_still_raises() -> None:
    # Every default: the module validates its input, the hyperprior validates (validate_args=None: torch's).
    module = GeneralizedBatchShaping(4, hyperprior=Normal(0.3, 0.1))
    compiled = torch.compile(module, fullgraph=True)
    x = torch.rand(12, 4, generator=torch.Generator().manual_seed(2))
    params = list(module.parameters())
    torch.testing.assert_close(_loss_and_grads(compiled, x, params), _loss_and_grads(module, x, params))
    x[3, 1] = float("nan")
    with pytest.raises(RuntimeError, match="x must lie in"):
        compiled(x)


def test_functional_beta_with_defaults_compiles_fullgraph() -> None:
    a = torch.tensor([0.6, 2.0, 0.3], requires_grad=True)

    def fn(x):
        return batch_shaping_loss(x, Beta(a, 0.4))  # validate_args everywhere

    x = torch.rand(10, 3, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(_loss_and_grads(torch.compile(fn, fullgraph=True), x, [a]), _loss_and_grads(fn, x, [a]))


_DEFAULT_CASES = {
    "batch_shaping_loss, Beta learned": lambda x: batch_shaping_loss(
        x, Beta(torch.full((4,), 0.6, requires_grad=True), 0.4, validate_args=False)
    ),
    "batch_shaping_loss, Beta validated": lambda x: batch_shaping_loss(x, Beta(2.0, 3.0)),
    "batch_shaping_loss, RelaxedBernoulli": lambda x: batch_shaping_loss(x, RelaxedBernoulli(0.3, 0.5)),
    "hyperprior_loss, Normal": lambda x: hyperprior_loss(x, Normal(0.3, 0.1)),
    "hyperprior_loss, Beta": lambda x: hyperprior_loss(x, Beta(3.0, 7.0)),
    "BatchShaping": BatchShaping(Beta(0.6, 0.4)),
    "README GeneralizedBatchShaping": GeneralizedBatchShaping(4, hyperprior=Normal(0.3, 0.1), validate_args=False),
    "GeneralizedBatchShaping, defaults": GeneralizedBatchShaping(4, hyperprior=Normal(0.3, 0.1)),
    "GeneralizedBatchShaping, beta": GeneralizedBatchShaping(4, prior="beta", hyperprior=Beta(3.0, 7.0)),
}


@pytest.mark.parametrize("case", list(_DEFAULT_CASES))
def test_no_graph_break_with_defaults(case: str) -> None:
    x = torch.rand(16, 4, generator=torch.Generator().manual_seed(5))
    explained = torch._dynamo.explain(_DEFAULT_CASES[case])(x)
    assert explained.graph_break_count == 0, [str(r.reason)[:200] for r in explained.break_reasons]
