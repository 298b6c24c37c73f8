"""Data-parallel Batch-Shaping: two real processes on the gloo backend against one process on the whole batch.

Two processes are spawned once for the whole module (a few seconds); they run every scenario below on their
slice of a batch and save what they computed. The reference is computed here, in one process, on the
concatenated batch. What must hold:

* the loss on every process equals the single-process loss of the whole batch;
* the gradient reaching a process's own samples is ``world_size`` times the single-process gradient of that
  slice (the sum over processes), so that DDP's averaging yields the single-process gradient of the model
  that produced the samples;
* the gradients of prior parameters, averaged by DDP, equal the single-process ones;
* a few optimizer steps of a DDP-wrapped model leave the same parameters as single-process training;
* bad values on one process raise the same ``ValueError`` on every process instead of hanging.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from gbs_loss import BatchShaping, GeneralizedBatchShaping, batch_shaping_loss
from gbs_loss.distributed import gather_batch
from gbs_loss.priors import Beta, Normal, RelaxedBernoulli

F64 = torch.float64
WORLD = 2
UNEVEN = (5, 7)  # per-process batch sizes with validation on (exchanged between the processes)
EVEN = (6, 6)  # with validate_args=False (no exchange, no host synchronisation)
STEPS = 3


# ----------------------------------------------------------------------------------------------------------
# Shared by the workers and the reference.
# ----------------------------------------------------------------------------------------------------------
def _batch(seed: int, n: int, d: int) -> torch.Tensor:
    """A reproducible batch in (0, 1) with a few exact ties."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=g, dtype=F64) * 0.96 + 0.02
    x[n // 2] = x[0]  # ties across the two processes' slices
    return x


def _slice(x: torch.Tensor, sizes: tuple[int, ...], rank: int, dim: int = 0) -> torch.Tensor:
    start = sum(sizes[:rank])
    return x.narrow(dim, start, sizes[rank])


def _beta_params() -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.tensor([0.6, 2.0, 0.9], dtype=F64, requires_grad=True)
    b = torch.tensor([0.4, 3.0, 1.7], dtype=F64, requires_grad=True)
    return a, b


def _rb_params() -> tuple[torch.Tensor, torch.Tensor]:
    u = torch.tensor([[-0.5], [0.3], [1.1]], dtype=F64, requires_grad=True)
    t = torch.tensor([[0.7], [1.3], [2.0]], dtype=F64, requires_grad=True)
    return u, t


class _GatedModel(nn.Module):
    """A gate producing soft values for 4 positions, and the GBaS loss of those values."""

    def __init__(self, family: str, distributed: bool, validate_args: bool) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.gate = nn.Linear(5, 4).double()
        hyperprior = Normal(0.3, 0.1) if family == "relaxed_bernoulli" else Beta(3.0, 7.0)
        self.gbas = GeneralizedBatchShaping(
            4,
            prior=family,
            hyperprior=hyperprior,
            init_mean=torch.tensor([0.2, 0.4, 0.5, 0.7]),
            temperature_weight=0.05,
            ties=True,
            validate_args=validate_args,
            distributed=distributed,
        ).double()

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gates = torch.sigmoid(self.gate(inputs))
        gates.retain_grad()
        return self.gbas(gates), gates


def _inputs(total: int) -> torch.Tensor:
    return torch.randn(total, 5, generator=torch.Generator().manual_seed(11), dtype=F64)


def _train(model: nn.Module, inputs: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    """STEPS SGD steps; the losses, the samples' and the parameters' gradients of the first step, the params."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    out: dict[str, list[torch.Tensor]] = {"loss": []}
    for step in range(STEPS):
        opt.zero_grad()
        loss, gates = model(inputs)
        loss.backward()
        out["loss"].append(loss.detach().clone())
        if step == 0:
            out["gates_grad"] = [gates.grad.clone()]
            out["param_grads"] = [p.grad.clone() for p in model.parameters()]
        opt.step()
    out["params"] = [p.detach().clone() for p in model.parameters()]
    return out


# ----------------------------------------------------------------------------------------------------------
# The workers.
# ----------------------------------------------------------------------------------------------------------
def _scenarios(rank: int) -> dict[str, object]:
    res: dict[str, object] = {}

    # Functional loss, uneven slices, learnable Beta parameters outside any DDP model.
    x = _slice(_batch(1, sum(UNEVEN), 3), UNEVEN, rank).clone().requires_grad_()
    a, b = _beta_params()
    loss = batch_shaping_loss(x, Beta(a, b), ties=True, distributed=True)
    res["beta"] = (loss.detach(), *torch.autograd.grad(loss, (x, a, b)))

    # Batch along dim 1, reduction="none", Relaxed Bernoulli priors broadcasting over a trailing dim.
    x = _slice(_batch(2, sum(UNEVEN), 3).T.unsqueeze(-1).repeat(1, 1, 2), UNEVEN, rank, dim=1)
    x = x.clone().requires_grad_()
    u, t = _rb_params()
    prior = RelaxedBernoulli(logits=u, temperature=t)
    loss = batch_shaping_loss(x, prior, dim=1, reduction="none", distributed=True)
    res["rb_none"] = (loss.detach(), *torch.autograd.grad(loss.sum(), (x, u, t)))

    # dim=None: the samples of all processes are one distribution.
    x = _slice(_batch(3, sum(UNEVEN), 3), UNEVEN, rank).clone().requires_grad_()
    loss = batch_shaping_loss(x, Normal(0.5, 0.25), dim=None, reduction="sum", distributed=True)
    res["flat"] = (loss.detach(), *torch.autograd.grad(loss, (x,)))

    # Equal slices without validation (no size exchange), module form, float32.
    x = _slice(_batch(4, sum(EVEN), 3).float(), EVEN, rank).clone().requires_grad_()
    crit = BatchShaping(RelaxedBernoulli(0.3, 0.6), validate_args=False, distributed=True)
    loss = crit(x)
    res["even"] = (loss.detach(), *torch.autograd.grad(loss, (x,)))

    # One process without samples.
    x = _batch(5, 4, 3) if rank == 1 else _batch(5, 4, 3)[:0]
    x = x.clone().requires_grad_()
    loss = batch_shaping_loss(x, Beta(0.6, 0.4), distributed=True)
    res["empty_rank"] = (loss.detach(), *torch.autograd.grad(loss, (x,)))

    # The gather itself on an explicit group (all processes), batch along dim 1.
    group = dist.new_group(list(range(WORLD)))
    part = torch.full((2, rank + 1), float(rank), dtype=F64)
    res["gathered"] = gather_batch(part, dim=1, process_group=group)

    # DDP training of a gate under GBaS, uneven slices (validated) and even slices (not validated).
    for family in ("relaxed_bernoulli", "beta"):
        for sizes, validate in ((UNEVEN, True), (EVEN, False)):
            model = nn.parallel.DistributedDataParallel(_GatedModel(family, True, validate))
            inputs = _slice(_inputs(sum(sizes)), sizes, rank)
            res[f"ddp_{family}_{validate}"] = _train(model, inputs)

    # Bad input on one process only: every process raises the same error.
    for case in ("nan", "dtype", "positions", "single"):
        x = torch.rand(4, 3, dtype=F64)
        if case == "nan" and rank == 1:
            x[2, 1] = float("nan")
        if case == "dtype" and rank == 1:
            x = x.float()
        if case == "positions" and rank == 1:
            x = torch.rand(4, 2, dtype=F64)
        if case == "single":
            x = x[: 1 - rank]  # one sample on rank 0, none on rank 1
        try:
            batch_shaping_loss(x, Beta(0.6, 0.4), distributed=True)
            res[f"error_{case}"] = None
        except ValueError as err:
            res[f"error_{case}"] = str(err)
    return res


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    if hasattr(socket, "if_nameindex") and "lo" in {name for _, name in socket.if_nameindex()}:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=60),
    )
    try:
        torch.save(_scenarios(rank), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict[str, object]]:
    """What each of the two processes computed (spawned once for the module)."""
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.fail("torch.distributed with the gloo backend is required")
    out_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(out_dir)), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _close(actual, expected, rtol: float = 1e-12, atol: float = 1e-15) -> None:
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def _check_against(results, key: str, ref_loss, ref_x_grad, ref_param_grads, sizes, dim: int = 0, **tol) -> None:
    for rank, res in enumerate(results):
        loss, x_grad, *param_grads = res[key]
        _close(loss, ref_loss, **tol)
        # The sum over the processes of identical losses: world_size times the single-process gradient.
        _close(x_grad, WORLD * _slice(ref_x_grad, sizes, rank, dim), **tol)
        for got, want in zip(param_grads, ref_param_grads, strict=True):
            _close(got, want, **tol)


# ----------------------------------------------------------------------------------------------------------
# The tests.
# ----------------------------------------------------------------------------------------------------------
class TestFunctional:
    def test_uneven_slices_learnable_beta(self, results) -> None:
        x = _batch(1, sum(UNEVEN), 3).requires_grad_()
        a, b = _beta_params()
        loss = batch_shaping_loss(x, Beta(a, b), ties=True)
        gx, ga, gb = torch.autograd.grad(loss, (x, a, b))
        _check_against(results, "beta", loss.detach(), gx, (ga, gb), UNEVEN)

    def test_batch_along_dim_1_reduction_none(self, results) -> None:
        x = _batch(2, sum(UNEVEN), 3).T.unsqueeze(-1).repeat(1, 1, 2).requires_grad_()
        u, t = _rb_params()
        loss = batch_shaping_loss(x, RelaxedBernoulli(logits=u, temperature=t), dim=1, reduction="none")
        assert loss.shape == (3, 2)
        gx, gu, gt = torch.autograd.grad(loss.sum(), (x, u, t))
        _check_against(results, "rb_none", loss.detach(), gx, (gu, gt), UNEVEN, dim=1)

    def test_flattened_batch(self, results) -> None:
        x = _batch(3, sum(UNEVEN), 3).requires_grad_()
        loss = batch_shaping_loss(x, Normal(0.5, 0.25), dim=None, reduction="sum")
        (gx,) = torch.autograd.grad(loss, (x,))
        _check_against(results, "flat", loss.detach(), gx, (), UNEVEN)

    def test_equal_slices_without_validation(self, results) -> None:
        x = _batch(4, sum(EVEN), 3).float().requires_grad_()
        loss = BatchShaping(RelaxedBernoulli(0.3, 0.6))(x)
        (gx,) = torch.autograd.grad(loss, (x,))
        _check_against(results, "even", loss.detach(), gx, (), EVEN, rtol=1e-5, atol=1e-7)

    def test_a_process_without_samples(self, results) -> None:
        x = _batch(5, 4, 3).requires_grad_()
        loss = batch_shaping_loss(x, Beta(0.6, 0.4))
        (gx,) = torch.autograd.grad(loss, (x,))
        _check_against(results, "empty_rank", loss.detach(), gx, (), (0, 4))
        assert results[0]["empty_rank"][1].shape == (0, 3)

    def test_gather_on_explicit_group_along_dim_1(self, results) -> None:
        expected = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 1.0]], dtype=F64)
        for res in results:
            assert torch.equal(res["gathered"], expected)


class TestDataParallelTraining:
    @pytest.mark.parametrize("family", ["relaxed_bernoulli", "beta"])
    @pytest.mark.parametrize("validate", [True, False], ids=["uneven-validated", "even-unvalidated"])
    def test_ddp_equals_one_process_on_the_whole_batch(self, results, family: str, validate: bool) -> None:
        sizes = UNEVEN if validate else EVEN
        ref = _train(_GatedModel(family, False, validate), _inputs(sum(sizes)))
        for rank, res in enumerate(results):
            got = res[f"ddp_{family}_{validate}"]
            _close(got["loss"], ref["loss"], rtol=1e-10, atol=1e-14)
            # Samples: world_size times their single-process gradient, which DDP's averaging divides back.
            _close(got["gates_grad"][0], WORLD * _slice(ref["gates_grad"][0], sizes, rank), rtol=1e-10, atol=1e-14)
            # Parameters of the gate and of the learned priors: DDP-averaged gradients = single process.
            _close(got["param_grads"], ref["param_grads"], rtol=1e-10, atol=1e-14)
            _close(got["params"], ref["params"], rtol=1e-10, atol=1e-14)
        # The losses changed over the steps (the comparison is not between constants).
        assert not torch.equal(ref["loss"][0], ref["loss"][-1])


class TestErrors:
    @pytest.mark.parametrize(
        ("case", "message"),
        [
            ("nan", "gathered from all processes.*finite"),
            ("dtype", "same dtype and positions on every process"),
            ("positions", "same dtype and positions on every process"),
            ("single", "at least 2 samples"),
        ],
    )
    def test_bad_input_on_one_process_raises_on_every_process(self, results, case: str, message: str) -> None:
        import re

        for res in results:
            assert res[f"error_{case}"] is not None and re.search(message, res[f"error_{case}"]), res[f"error_{case}"]

    def test_without_process_group_raises(self) -> None:
        assert not dist.is_initialized()
        with pytest.raises(RuntimeError, match="init_process_group"):
            batch_shaping_loss(torch.rand(4, 2), Beta(0.6, 0.4), distributed=True)
        with pytest.raises(RuntimeError, match="init_process_group"):
            GeneralizedBatchShaping(2, distributed=True)(torch.rand(4, 2))

    @pytest.mark.parametrize(
        ("kwargs", "error", "message"),
        [
            ({"distributed": 1}, TypeError, "distributed must be a bool"),
            ({"distributed": True, "process_group": "world"}, TypeError, "process_group must be a"),
            ({"process_group": object()}, ValueError, "only used with distributed=True"),
        ],
    )
    def test_bad_options(self, kwargs, error, message: str) -> None:
        with pytest.raises(error, match=message):
            batch_shaping_loss(torch.rand(4, 2), Beta(0.6, 0.4), **kwargs)
        with pytest.raises(error, match=message):
            BatchShaping(Beta(0.6, 0.4), **kwargs)
        with pytest.raises(error, match=message):
            GeneralizedBatchShaping(2, **kwargs)

    def test_gather_argument_checks(self) -> None:
        with pytest.raises(TypeError, match="x must be a torch.Tensor"):
            gather_batch([1.0, 2.0])
        with pytest.raises(ValueError, match="dim must be in"):
            gather_batch(torch.rand(3), dim=1)
        with pytest.raises(TypeError, match="equal_sizes must be a bool"):
            gather_batch(torch.rand(3), equal_sizes="yes")


# ----------------------------------------------------------------------------------------------------------
# torch.compile of the distributed loss (slow: every process compiles).
# ----------------------------------------------------------------------------------------------------------
def _compiled_worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    if hasattr(socket, "if_nameindex") and "lo" in {name for _, name in socket.if_nameindex()}:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=120)
    )
    try:
        module = GeneralizedBatchShaping(
            3, hyperprior=Normal(0.3, 0.1, validate_args=False), validate_args=False, distributed=True
        ).double()
        x = _slice(_batch(6, sum(EVEN), 3), EVEN, rank)
        out = {}
        for name, fn in (("eager", module), ("compiled", torch.compile(module, fullgraph=True))):
            xl = x.clone().requires_grad_()
            loss = fn(xl)
            out[name] = (loss.detach(), *torch.autograd.grad(loss, [xl, *module.parameters()]))
        torch.save(out, Path(out_dir) / f"compiled{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_compiled_distributed_loss_has_no_graph_break_and_equals_eager(tmp_path) -> None:
    mp.spawn(_compiled_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        res = torch.load(tmp_path / f"compiled{rank}.pt", weights_only=False)
        _close(res["compiled"], res["eager"], rtol=1e-10, atol=1e-14)
