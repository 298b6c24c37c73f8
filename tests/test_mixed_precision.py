"""Mixed precision and bit-for-bit reproducibility on CPU.

* Under ``torch.autocast("cpu", dtype=bfloat16 | float16)`` the gates arrive in low precision; every loss
  upcasts them and computes in float32: the result is float32, finite, *identical* to the loss of the same
  values upcast outside autocast, and close to the loss of a model run entirely in float32.
* Low-precision samples that round to exactly 0 or 1 (saturated sigmoids, common in bfloat16) give finite
  losses and gradients.
* The same inputs give bit-identical losses and gradients across runs, in this process and in a fresh one.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from gbs_loss import BatchShaping, GeneralizedBatchShaping, batch_shaping_loss, hyperprior_loss
from gbs_loss.priors import Beta, Normal, RelaxedBernoulli, SymmetricBeta

LOW = [torch.bfloat16, torch.float16]


def _criteria() -> dict[str, torch.nn.Module]:
    return {
        "bas_beta": BatchShaping(Beta(0.6, 0.4)),
        "bas_relaxed_bernoulli": BatchShaping(RelaxedBernoulli(torch.linspace(0.2, 0.8, 6), 0.5), ties=True),
        "gbas_relaxed_bernoulli": GeneralizedBatchShaping(6, hyperprior=Normal(0.3, 0.1), temperature_weight=0.01),
        "gbas_beta": GeneralizedBatchShaping(6, prior="beta", hyperprior=Beta(3.0, 7.0)),
    }


# ----------------------------------------------------------------------------------------------------------
# Autocast.
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("name", ["bas_beta", "bas_relaxed_bernoulli", "gbas_relaxed_bernoulli", "gbas_beta"])
def test_autocast_computes_in_float32(dtype: torch.dtype, name: str) -> None:
    torch.manual_seed(0)
    gate = torch.nn.Linear(10, 6)
    inputs = torch.randn(96, 10) * 2
    criterion = _criteria()[name]
    with torch.autocast("cpu", dtype=dtype):
        gates = torch.sigmoid(gate(inputs))
        loss = criterion(gates)
    assert gates.dtype == dtype  # autocast did run the gate in low precision
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    # The loss of the same (low-precision) values upcast outside autocast: bit-identical.
    assert torch.equal(loss, criterion(gates.detach().float()))
    # Close to the loss of a model run entirely in float32.
    full = criterion(torch.sigmoid(gate(inputs)))
    torch.testing.assert_close(loss, full, rtol=0.05, atol=2e-3)
    loss.backward()
    grads = [gate.weight.grad, *(p.grad for p in criterion.parameters())]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("dtype", LOW)
def test_autocast_training_steps_stay_finite_and_reduce_the_loss(dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    gate = torch.nn.Linear(10, 6)
    gbas = GeneralizedBatchShaping(6, hyperprior=Normal(0.3, 0.1), temperature_weight=0.01)
    opt = torch.optim.Adam([*gate.parameters(), *gbas.parameters()], lr=0.05)
    inputs = torch.randn(128, 10)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=dtype):
            loss = gbas(torch.sigmoid(gate(inputs)))
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(p).all() for p in [*gate.parameters(), *gbas.parameters()])
    assert losses[-1] < 0.7 * losses[0], losses


# ----------------------------------------------------------------------------------------------------------
# Low-precision inputs without autocast.
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize(
    "prior",
    [Beta(0.6, 0.4), SymmetricBeta(0.3), RelaxedBernoulli(0.3, 0.2), Normal(0.5, 0.2)],
    ids=["beta", "symmetric_beta", "relaxed_bernoulli", "normal"],
)
def test_saturated_low_precision_samples(dtype: torch.dtype, prior) -> None:
    # Sigmoids of large logits round to exactly 0 and 1 in low precision, where Beta densities diverge.
    logits = torch.cat([torch.linspace(-30, 30, 40), torch.full((8,), 200.0), torch.full((8,), -200.0)])
    gates = torch.sigmoid(logits.to(dtype)).reshape(-1, 1).repeat(1, 3).requires_grad_()
    assert (gates == 1).any() and (gates == 0).any()
    loss = batch_shaping_loss(gates, prior, ties=True)
    (grad,) = torch.autograd.grad(loss, gates)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert grad.dtype == dtype and torch.isfinite(grad).all()
    assert torch.equal(loss, batch_shaping_loss(gates.detach().float(), prior, ties=True))


@pytest.mark.parametrize("dtype", LOW)
def test_hyperprior_of_low_precision_parameters(dtype: torch.dtype) -> None:
    means = torch.linspace(0.05, 0.95, 12).to(dtype).requires_grad_()
    for hyper in (Normal(0.3, 0.1), Beta(3.0, 7.0)):
        loss = hyperprior_loss(means, hyper)
        (grad,) = torch.autograd.grad(loss, means)
        assert loss.dtype == torch.float32 and torch.isfinite(loss) and torch.isfinite(grad).all()
        assert torch.equal(loss, hyperprior_loss(means.detach().float(), hyper))


# ----------------------------------------------------------------------------------------------------------
# Determinism.
# ----------------------------------------------------------------------------------------------------------
_COMPUTE = textwrap.dedent(
    """
    import torch
    from gbs_loss import GeneralizedBatchShaping, batch_shaping_loss
    from gbs_loss.priors import Beta, Normal


    def compute():
        g = torch.Generator().manual_seed(123)
        x = torch.rand(257, 7, generator=g)
        x[100:140] = x[0:40]  # many ties, ranked by position without ties=True
        x[5, :], x[6, :] = 0.0, 1.0
        out = []
        for ties in (False, True):
            xl = x.clone().requires_grad_()
            a = torch.linspace(0.3, 3.0, 7).requires_grad_()
            loss = batch_shaping_loss(xl, Beta(a, 0.7), ties=ties)
            out += [loss.detach(), *torch.autograd.grad(loss, (xl, a))]
        for family in ("relaxed_bernoulli", "beta"):
            module = GeneralizedBatchShaping(
                7, prior=family, hyperprior=Normal(0.3, 0.1), init_mean=torch.linspace(0.1, 0.9, 7),
                temperature_weight=0.01,
            )
            xl = x.clone().requires_grad_()
            loss = module(xl)
            out += [loss.detach(), *torch.autograd.grad(loss, (xl, *module.parameters()))]
        return out
    """
)


def _compute() -> list[torch.Tensor]:
    namespace: dict[str, object] = {}
    exec(compile(_COMPUTE, "<determinism>", "exec"), namespace)
    return namespace["compute"]()


def _assert_bitwise_equal(first: list[torch.Tensor], second: list[torch.Tensor]) -> None:
    assert len(first) == len(second)
    for i, (u, v) in enumerate(zip(first, second, strict=True)):
        assert u.dtype == v.dtype and torch.equal(u, v), f"result {i} differs"


def test_bit_identical_across_runs() -> None:
    first, second = _compute(), _compute()
    _assert_bitwise_equal(first, second)
    # The tied samples' gradients (ties=False) depend on the order the sort gives them, the same in every run.
    grad_x = first[1]
    assert not torch.equal(grad_x[100:140], grad_x[0:40])


def test_bit_identical_in_a_fresh_process(tmp_path: Path) -> None:
    out = tmp_path / "fresh.pt"
    script = f"{_COMPUTE}\ntorch.set_num_threads({torch.get_num_threads()})\ntorch.save(compute(), {str(out)!r})\n"
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    _assert_bitwise_equal(_compute(), torch.load(out))
