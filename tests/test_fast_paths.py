"""Tests of the speed paths: the choice of ``betainc`` backend on CPU and its fallback, the integer-key sort, the
fused loss node, and the cheap shape and range checks.

Every fast path is checked against the path it replaces (same results, to the last few units in the last
place). The backends of ``betainc`` are each checked against the mpmath oracle in their own files
(``tests/test_betainc.py`` for the torch reference in both of its modes, ``tests/test_backend_native.py``,
``tests/test_backend_triton.py``); here they are checked against each other and through the dispatch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _support import F64, TOLERANCE, backend_results, check_backend_against_oracle, check_backends_agree, wide_grid
from hypothesis import given, settings
from hypothesis import strategies as st

from gbs_loss import _sorting, batch_shaping_loss, betainc, hyperprior_loss
from gbs_loss import functional as F
from gbs_loss._shapes import broadcast_shapes
from gbs_loss.priors import Beta, Normal, RelaxedBernoulli, SymmetricBeta, _within
from gbs_loss.special import backends
from gbs_loss.special.backends import torch_ops

Tensor = torch.Tensor
HAS_NATIVE = backends.available("native")


def count_calls(monkeypatch, module, name: str) -> list[int]:
    """Wrap ``module.name`` to count its calls; returns the one-element counter."""
    calls = [0]
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


# --------------------------------------------------------------------------------------------------------
# betainc on CPU: the dispatch, the fallback, and the backends against each other.
# --------------------------------------------------------------------------------------------------------
class TestBetaincBackends:
    def test_auto_uses_the_native_kernel_when_it_builds(self, monkeypatch):
        monkeypatch.delenv("GBS_LOSS_BACKEND", raising=False)
        monkeypatch.delenv("GBS_LOSS_NATIVE", raising=False)
        reference = count_calls(monkeypatch, torch_ops, "betainc_block")  # what backends.get_block hands out
        betainc(torch.tensor([2.5, 40.0], dtype=F64), 3.5, torch.tensor([0.4, 0.99], dtype=F64))
        assert reference[0] == (0 if HAS_NATIVE else 1)

    def test_falls_back_to_torch_without_the_native_kernel(self, monkeypatch):
        monkeypatch.delenv("GBS_LOSS_BACKEND", raising=False)
        monkeypatch.setitem(backends._modules, "native", None)
        reference = count_calls(monkeypatch, torch_ops, "betainc_block")  # what backends.get_block hands out
        points = wide_grid(7, 300)
        got = betainc(*(torch.tensor(v) for v in points)).numpy()
        assert reference[0] == 1
        with backends.use("torch"):
            ref = betainc(*(torch.tensor(v) for v in points)).numpy()
        np.testing.assert_array_equal(got, ref)

    @pytest.mark.skipif(not HAS_NATIVE, reason="native backend unavailable")
    def test_native_and_torch_agree(self):
        check_backends_agree("native", "torch", wide_grid(11, 3000))

    @pytest.mark.skipif(not HAS_NATIVE, reason="native backend unavailable")
    def test_native_and_masked_torch_agree(self):
        with torch_ops._forced_mode("masked"):
            check_backends_agree("native", "torch", wide_grid(12, 800))

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
    def test_default_backend_meets_the_contract(self, dtype):
        check_backend_against_oracle("auto", dtype)

    def test_thread_count_does_not_change_results(self):
        points = [torch.tensor(v) for v in wide_grid(12, 4000)]
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            one = betainc(*points)
            torch.set_num_threads(max(2, threads))
            many = betainc(*points)
        finally:
            torch.set_num_threads(threads)
        assert torch.equal(one, many)  # elements are independent: bit-identical

    @pytest.mark.parametrize("name", ["auto", "torch"])
    def test_shared_parameters_equal_expanded_ones(self, name):
        # per-position priors pass (a, b) once per position (m < n); the same values expanded (m = n) must give
        # bit-identical results and gradients
        rng = np.random.default_rng(5)
        a = torch.tensor(np.exp(rng.uniform(-3, 5, 7)), requires_grad=True)
        b = torch.tensor(np.exp(rng.uniform(-3, 5, 7)), requires_grad=True)
        x = torch.tensor(rng.uniform(0, 1, (50, 7)))
        ea, eb = (t.detach().expand(50, 7).clone().requires_grad_() for t in (a, b))
        with backends.use(name):
            shared, expanded = betainc(a, b, x), betainc(ea, eb, x)
            w = torch.randn(50, 7, dtype=F64)
            (shared * w).sum().backward()
            (expanded * w).sum().backward()
        assert torch.equal(shared, expanded)
        torch.testing.assert_close(a.grad, ea.grad.sum(0), rtol=1e-14, atol=0)
        torch.testing.assert_close(b.grad, eb.grad.sum(0), rtol=1e-14, atol=0)

    @pytest.mark.parametrize("shape", [(0,), (3, 0)])
    def test_empty(self, shape):
        a = torch.ones(shape, dtype=F64, requires_grad=True)
        out = betainc(a, 2.0, torch.full(shape, 0.5, dtype=F64))
        assert out.shape == shape
        out.sum().backward()
        assert a.grad.shape == shape

    def test_gradients_keep_their_tolerance_through_the_dispatch(self):
        # the backward multiplies by the saved partials: compare with the partials returned by the backend
        points = wide_grid(3, 200)
        via_api = backend_results("auto", *points)
        direct = backend_results(backends.get(torch.device("cpu")), *points)
        for q in via_api:
            np.testing.assert_array_equal(via_api[q], direct[q])
        assert TOLERANCE[F64]["value"] == 1e-12


# --------------------------------------------------------------------------------------------------------
# The integer-key sort.
# --------------------------------------------------------------------------------------------------------
def _special_values(dtype: torch.dtype) -> Tensor:
    info = torch.finfo(dtype)
    return torch.tensor([0.0, -0.0, info.tiny, -info.tiny, info.max, -info.max, float("inf"), float("-inf"), 1.0,
                         -1.0, info.tiny / 4, -info.tiny / 4], dtype=dtype)  # fmt: skip


class TestSort:
    @pytest.fixture(params=["numpy", "torch"])
    def sort_backend(self, request, monkeypatch):
        monkeypatch.setenv("GBS_LOSS_SORT", request.param)
        assert _sorting.backend() == request.param
        return request.param

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
    @pytest.mark.parametrize("shape,dim", [((5000,), 0), ((300, 40), 0), ((40, 300), 1), ((64, 3, 50), 0)])
    def test_values_and_permutation(self, dtype, shape, dim, sort_backend):
        x = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(0)) * 1e3
        flat = x.reshape(-1)
        flat[: 12 * 8 : 8] = _special_values(dtype)  # signed zeros, subnormals, infinities, extremes
        values, indices = _sorting.sort(x, dim)
        assert torch.equal(values, torch.sort(x, dim=dim).values)
        assert torch.equal(x.gather(dim, indices), values)
        assert torch.equal(indices.sort(dim).values, torch.arange(shape[dim]).reshape(
            [-1 if i == dim else 1 for i in range(len(shape))]).expand(shape))  # fmt: skip

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
    def test_nonnegative_shortcut(self, dtype):
        x = torch.rand(6000, 3, dtype=dtype, generator=torch.Generator().manual_seed(1))
        x[:10] = 0.0
        x[10:20] = 1.0
        values, indices = _sorting.sort(x, 0, nonnegative=True)
        assert torch.equal(values, torch.sort(x, dim=0).values)
        assert torch.equal(x.gather(0, indices), values)

    def test_nan_keeps_the_other_values_in_order(self):
        x = torch.randn(5000, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        x[[3, 70]] = float("nan")
        x[100] = -float("nan")
        values, _ = _sorting.sort(x, 0)
        finite = values[~values.isnan()]
        assert values.isnan().sum() == 3
        assert torch.equal(finite, torch.sort(x[~x.isnan()]).values)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int64])
    def test_other_dtypes_use_torch_sort(self, dtype):
        x = (torch.randn(5000) * 100).to(dtype)
        values, indices = _sorting.sort(x, 0)
        ref = torch.sort(x)
        assert torch.equal(values, ref.values) and torch.equal(x[indices], values)

    @pytest.mark.parametrize("nonnegative", [False, True])
    @pytest.mark.parametrize("shape,dim", [((3000, 4), 0), ((4, 3000), -1), ((50, 7, 40), 1)])
    def test_packed_keys_are_a_stable_sort(self, shape, dim, nonnegative, sort_backend):
        # float32 with several positions takes the packed keys: tied samples keep their original order,
        # exactly as torch's stable sort, whichever library sorts the keys.
        g = torch.Generator().manual_seed(3)
        levels = torch.rand(17, generator=g) if nonnegative else torch.randn(17, generator=g)
        levels[:2] = torch.tensor([0.0, -0.0 if not nonnegative else 1.0])
        x = levels[torch.randint(17, shape, generator=g)]  # heavy ties
        values, indices = _sorting.sort(x, dim, nonnegative=nonnegative)
        ref = torch.sort(x, dim=dim, stable=True)
        assert torch.equal(values, ref.values)
        if not nonnegative:  # torch ranks -0.0 and +0.0 as ties; the keys put -0.0 first
            x = x + 0.0  # -0.0 + 0.0 = +0.0
            values, indices = _sorting.sort(x, dim)
            ref = torch.sort(x, dim=dim, stable=True)
        assert torch.equal(indices, ref.indices)

    def test_non_contiguous_input(self, sort_backend):
        x = torch.randn(300, 40, generator=torch.Generator().manual_seed(5)).t()  # a transposed view
        values, indices = _sorting.sort(x, 1)
        ref = torch.sort(x, dim=1, stable=True)
        assert torch.equal(values, ref.values) and torch.equal(indices, ref.indices)

    def test_backend_is_measured_once(self, monkeypatch):
        monkeypatch.delenv("GBS_LOSS_SORT", raising=False)
        assert _sorting.backend() in ("numpy", "torch")
        assert _sorting.backend() == _sorting.backend()
        monkeypatch.setenv("GBS_LOSS_SORT", "nonsense")  # not a choice: measured as without it
        assert _sorting.backend() == _sorting._measured_backend(torch.get_num_threads())

    def test_gradient_is_the_scatter_back(self, monkeypatch):
        monkeypatch.setattr(_sorting, "INT_SORT_MIN", 0)  # the integer path on a tensor small enough for gradcheck
        x = torch.randn(7, 3, dtype=F64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t: F._SortValues.apply(t, 0, False), (x,))
        w = torch.randn(7, 3, dtype=F64)
        (F._SortValues.apply(x, 0, False) * w).sum().backward()
        grad = x.grad.clone()
        x.grad = None
        (torch.sort(x, dim=0).values * w).sum().backward()
        assert torch.equal(grad, x.grad)


# --------------------------------------------------------------------------------------------------------
# The fused loss node against the general path.
# --------------------------------------------------------------------------------------------------------
class _GeneralRelaxedBernoulli(RelaxedBernoulli):
    """Same distribution without the fused-path capability, so the loss takes the general (unfused) path."""

    def closed_form_cdf(self):
        return None


class _GeneralNormal(Normal):
    """Same distribution without the fused-path capability, so the loss takes the general (unfused) path."""

    def closed_form_cdf(self):
        return None


def _priors(kind: str, positions: tuple[int, ...], dtype: torch.dtype, seed: int):
    """The same learnable prior twice: the fused class and its general-path subclass."""
    g = torch.Generator().manual_seed(seed)
    if kind == "relaxed_bernoulli":
        mean = torch.rand(positions, dtype=dtype, generator=g) * 0.8 + 0.1
        temp = torch.rand(positions, dtype=dtype, generator=g) + 0.3
        params = [mean.requires_grad_(), temp.requires_grad_()]
        return params, RelaxedBernoulli(params[0], params[1]), _GeneralRelaxedBernoulli(params[0], params[1])
    loc = (torch.rand(positions, dtype=dtype, generator=g) - 0.5).requires_grad_()
    scale = (torch.rand(positions, dtype=dtype, generator=g) + 0.2).requires_grad_()
    return [loc, scale], Normal(loc, scale), _GeneralNormal(loc, scale)


def _grads(loss: Tensor, inputs: list[Tensor]) -> tuple[Tensor, ...]:
    return torch.autograd.grad(loss, inputs, torch.randn(loss.shape, generator=torch.Generator().manual_seed(9),
                                                         dtype=loss.dtype))  # fmt: skip


class TestFused:
    @pytest.mark.parametrize("kind", ["relaxed_bernoulli", "normal"])
    def test_fused_node_is_used(self, kind):
        params, fused, general = _priors(kind, (5,), F64, 0)
        x = torch.rand(32, 5, dtype=F64, requires_grad=True)
        assert type(batch_shaping_loss(x, fused).grad_fn).__name__ == "_FusedShapingBackward"
        general_fn = type(batch_shaping_loss(x, general).grad_fn).__name__
        assert general_fn not in ("_FusedShapingBackward", "_FusedBetaBackward")
        assert type(batch_shaping_loss(x, fused, ties=True).grad_fn).__name__ != "_FusedShapingBackward"

    @pytest.mark.parametrize("kind", ["relaxed_bernoulli", "normal"])
    @pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
    @pytest.mark.parametrize("shape,dim", [((64, 7), 0), ((3, 50, 4), 1), ((3, 4, 60), -1), ((5000, 3), 0)])
    def test_equals_general_path(self, kind, reduction, dtype, shape, dim):
        positions = tuple(s for i, s in enumerate(shape) if i != dim % len(shape))
        params, fused, general = _priors(kind, positions, dtype, 1)
        x = torch.rand(shape, dtype=dtype, generator=torch.Generator().manual_seed(2)).requires_grad_()
        got = batch_shaping_loss(x, fused, dim=dim, reduction=reduction)
        ref = batch_shaping_loss(x, general, dim=dim, reduction=reduction)
        assert got.shape == ref.shape and got.dtype == ref.dtype == dtype
        tol = {"rtol": 1e-12, "atol": 1e-15} if dtype == F64 else {"rtol": 2e-5, "atol": 1e-7}
        torch.testing.assert_close(got, ref, **tol)
        for g, r in zip(_grads(got, [x, *params]), _grads(ref, [x, *params]), strict=True):
            torch.testing.assert_close(g, r, **tol)

    @pytest.mark.parametrize("kind", ["relaxed_bernoulli", "normal"])
    def test_whole_tensor_as_one_batch(self, kind):
        params, fused, general = _priors(kind, (), F64, 3)
        x = torch.rand(6, 7, 8, dtype=F64, requires_grad=True)
        got, ref = batch_shaping_loss(x, fused, dim=None), batch_shaping_loss(x, general, dim=None)
        torch.testing.assert_close(got, ref, rtol=1e-13, atol=0)
        for g, r in zip(_grads(got, [x, *params]), _grads(ref, [x, *params]), strict=True):
            torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-15)

    @pytest.mark.parametrize("kind", ["relaxed_bernoulli", "normal"])
    @pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
    def test_gradcheck(self, kind, reduction):
        params, fused, _ = _priors(kind, (3,), F64, 4)
        x = (torch.rand(9, 3, dtype=F64) * 0.9 + 0.05).requires_grad_()

        def loss(x, a, b):
            prior = RelaxedBernoulli(a, b) if kind == "relaxed_bernoulli" else Normal(a, b)
            return batch_shaping_loss(x, prior, reduction=reduction)

        assert torch.autograd.gradcheck(loss, (x, *params))

    def test_python_number_parameters_keep_the_dtype(self):
        x = torch.rand(100, 4, requires_grad=True)
        for prior in (RelaxedBernoulli(0.3, 0.5), Normal(0.5, 0.2)):
            loss = batch_shaping_loss(x, prior)
            assert loss.dtype == torch.float32
            (gx,) = torch.autograd.grad(loss, x)
            assert gx.dtype == torch.float32 and torch.isfinite(gx).all()

    def test_normal_hyperprior_equals_general_path(self):
        loc = torch.rand(49, dtype=F64, requires_grad=True)
        got = hyperprior_loss(loc, Normal(0.3, 0.1))
        ref = hyperprior_loss(loc, _GeneralNormal(0.3, 0.1))
        torch.testing.assert_close(got, ref, rtol=1e-13, atol=1e-14, equal_nan=True)  # NaN: G_3 < 0
        torch.testing.assert_close(torch.autograd.grad(got, loc)[0], torch.autograd.grad(ref, loc)[0],
                                   rtol=1e-12, atol=1e-15)  # fmt: skip

    def test_other_priors_are_not_fused(self):
        params = (torch.tensor([2.0, 3.0], requires_grad=True), torch.tensor([5.0, 1.5], requires_grad=True))
        loss = batch_shaping_loss(torch.rand(40, 2), Beta(*params))
        assert type(loss.grad_fn).__name__ != "_FusedShapingBackward"


# --------------------------------------------------------------------------------------------------------
# Shape and range helpers.
# --------------------------------------------------------------------------------------------------------
shapes = st.lists(st.lists(st.sampled_from([1, 1, 2, 3, 5]), max_size=4), min_size=1, max_size=4)


class TestHelpers:
    @settings(max_examples=200, deadline=None)
    @given(shapes)
    def test_broadcast_shapes_is_torch_broadcast_shapes(self, shapes_):
        try:
            ref = torch.broadcast_shapes(*shapes_)
        except RuntimeError:
            with pytest.raises(RuntimeError, match="cannot be broadcast"):
                broadcast_shapes(*shapes_)
            return
        got = broadcast_shapes(*shapes_)
        assert isinstance(got, torch.Size) and got == ref

    @pytest.mark.parametrize(
        "values,closed,expected",
        [
            ([0.0, 0.5, 1.0], True, True),
            ([0.0, 0.5, 1.0], False, False),
            ([1e-6, 0.5, 1 - 1e-6], False, True),
            ([0.5, float("nan")], True, False),
            ([float("nan")], False, False),
            ([0.5, float("inf")], True, False),
            ([float("-inf"), 0.5], True, False),
            ([-1e-30, 0.5], True, False),
            ([], True, True),
        ],
    )
    def test_within(self, values, closed, expected):
        for dtype in (torch.float32, F64):
            assert _within(torch.tensor(values, dtype=dtype), 0.0, 1.0, closed=closed) is expected

    def test_within_meta_and_grad(self):
        assert _within(torch.empty(3, device="meta"), 0.0, 1.0)
        x = torch.full((4,), 0.5, requires_grad=True)
        assert _within(x, 0.0, 1.0)


# --------------------------------------------------------------------------------------------------------
# The fused Beta node (one betainc backend call inside the loss's node) against the general path.
# --------------------------------------------------------------------------------------------------------
class _GeneralBeta(Beta):
    """Same distribution; its own cdf (the capability is withdrawn), so the loss takes the general path."""

    def cdf(self, value):
        return super().cdf(value)


class _GeneralSymmetricBeta(SymmetricBeta):
    def cdf(self, value):
        return super().cdf(value)


_BETA_TOL = {torch.float64: {"rtol": 1e-12, "atol": 1e-15}, torch.float32: {"rtol": 2e-5, "atol": 1e-7}}


def _beta_params(layout: str, positions: tuple[int, ...], dtype: torch.dtype, seed: int):
    """``(leaves, a, b)``: the learnable tensors and the two parameters in one of several layouts."""
    g = torch.Generator().manual_seed(seed)

    def draw(shape):
        return (torch.exp(torch.rand(shape, dtype=F64, generator=g) * 4 - 2)).to(dtype).requires_grad_()

    if layout == "per_position":
        a, b = draw(positions), draw(positions)
        return [a, b], a, b
    if layout == "numbers":
        return [], 0.6, 2.5
    if layout == "scalar_tensors":
        a, b = draw(()), draw(())
        return [a, b], a, b
    if layout == "trailing":  # shared by the leading positions: m < D
        a, b = draw(positions[-1:]), draw((1,) * (len(positions) - 1) + positions[-1:])
        return [a, b], a, b
    if layout == "leading":  # size 1 on the trailing position: expanded to the positions
        a = draw(positions[:1] + (1,) * (len(positions) - 1))
        return [a], a, 1.7
    raise AssertionError(layout)


def _beta_grads(loss: Tensor, inputs: list[Tensor]) -> tuple[Tensor, ...]:
    weight = torch.randn(loss.shape, generator=torch.Generator().manual_seed(9), dtype=F64).to(loss.dtype)
    return torch.autograd.grad(loss, inputs, weight)


def _compare_beta(x, prior, general, inputs, tol, **kwargs):
    got = batch_shaping_loss(x, prior, **kwargs)
    ref = batch_shaping_loss(x, general, **kwargs)
    assert type(got.grad_fn).__name__ == "_FusedBetaBackward"
    assert type(ref.grad_fn).__name__ != "_FusedBetaBackward"
    assert got.shape == ref.shape and got.dtype == ref.dtype
    torch.testing.assert_close(got, ref, equal_nan=True, **tol)
    for g, r in zip(_beta_grads(got, inputs), _beta_grads(ref, inputs), strict=True):
        assert g.dtype == r.dtype and g.shape == r.shape
        torch.testing.assert_close(g, r, equal_nan=True, **tol)


class TestFusedBeta:
    def test_fused_node_is_used(self):
        a = torch.tensor([2.0, 3.0, 0.5], requires_grad=True)
        x = torch.rand(40, 3)
        assert type(batch_shaping_loss(x, Beta(a, 0.4)).grad_fn).__name__ == "_FusedBetaBackward"
        sym = SymmetricBeta(torch.tensor([0.3, 0.6, 0.5], requires_grad=True))
        assert type(batch_shaping_loss(x, sym).grad_fn).__name__ == "_FusedBetaBackward"
        assert type(batch_shaping_loss(x, _GeneralBeta(a, 0.4)).grad_fn).__name__ != "_FusedBetaBackward"
        assert type(batch_shaping_loss(x, Beta(a, 0.4), ties=True).grad_fn).__name__ != "_FusedBetaBackward"
        assert _GeneralBeta(a, 0.4).betainc_parameters() is None
        plain = torch.distributions.Beta(a, torch.tensor(0.4))  # torch's own Beta: replaced by ours, fused
        assert type(batch_shaping_loss(x, plain).grad_fn).__name__ == "_FusedBetaBackward"

    def test_weighted_gradient_saturates_instead_of_overflowing(self):
        """A float32 value next to 0 under a Beta with a < 1 has a density beyond float32; times a loss weight of
        1000 it must saturate at the largest float32, not become -inf (found by the exhaustive hostile test)."""
        from gbs_loss import GeneralizedBatchShaping

        module = GeneralizedBatchShaping(
            3,
            prior="beta",
            init_mean=torch.tensor([0.5, 0.5, 0.125], dtype=F64),
            init_concentration=torch.tensor([1.0, 1.0, 1.0], dtype=F64),
            prior_weight=1000.0,
            hyperprior_weight=0.0,
            temperature_weight=0.0,
        )
        x = torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, 3.72007598e-44]]).requires_grad_()
        grads = torch.autograd.grad(module(x), [x, *module.parameters()])
        assert all(torch.isfinite(g).all() for g in grads), grads
        assert grads[0][1, 2] == -torch.finfo(torch.float32).max

    def test_one_backend_call(self, monkeypatch):
        calls = count_calls(monkeypatch, backends, "get_block")
        a = torch.tensor([2.0, 3.0], requires_grad=True)
        batch_shaping_loss(torch.rand(500, 2, requires_grad=True), Beta(a, 0.4)).backward()
        assert calls[0] == 1

    @pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
    @pytest.mark.parametrize("shape,dim", [((64, 7), 0), ((3, 50, 4), 1), ((3, 4, 60), -1), ((5000, 3), 0)])
    def test_equals_general_path(self, reduction, dtype, shape, dim):
        positions = tuple(s for i, s in enumerate(shape) if i != dim % len(shape))
        leaves, a, b = _beta_params("per_position", positions, dtype, 1)
        x = torch.rand(shape, dtype=dtype, generator=torch.Generator().manual_seed(2)).requires_grad_()
        _compare_beta(x, Beta(a, b), _GeneralBeta(a, b), [x, *leaves], _BETA_TOL[dtype], dim=dim, reduction=reduction)

    @pytest.mark.parametrize("layout", ["numbers", "scalar_tensors", "trailing", "leading"])
    @pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
    def test_parameter_layouts(self, layout, reduction):
        leaves, a, b = _beta_params(layout, (5, 6), F64, 3)
        x = torch.rand(40, 5, 6, dtype=F64, generator=torch.Generator().manual_seed(4)).requires_grad_()
        _compare_beta(x, Beta(a, b), _GeneralBeta(a, b), [x, *leaves], _BETA_TOL[F64], reduction=reduction)

    @pytest.mark.parametrize("x_dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
    @pytest.mark.parametrize("param_dtype", [torch.float32, torch.float64])
    def test_mixed_dtypes(self, x_dtype, param_dtype):
        leaves, a, b = _beta_params("per_position", (6,), param_dtype, 5)
        x = torch.rand(70, 6, generator=torch.Generator().manual_seed(6)).to(x_dtype).requires_grad_()
        tol = _BETA_TOL[torch.promote_types(torch.promote_types(x_dtype, param_dtype), torch.float32)]
        _compare_beta(x, Beta(a, b), _GeneralBeta(a, b), [x, *leaves], tol)

    def test_symmetric_beta(self):
        a = (torch.rand(8, dtype=F64, generator=torch.Generator().manual_seed(7)) * 0.8 + 0.1).requires_grad_()
        x = torch.rand(50, 8, dtype=F64, requires_grad=True)
        _compare_beta(x, SymmetricBeta(a), _GeneralSymmetricBeta(a), [x, a], _BETA_TOL[F64])

    def test_whole_tensor_as_one_batch(self):
        a = torch.tensor(0.7, dtype=F64, requires_grad=True)
        x = torch.rand(6, 7, 8, dtype=F64, requires_grad=True)
        _compare_beta(x, Beta(a, 0.4), _GeneralBeta(a, 0.4), [x, a], _BETA_TOL[F64], dim=None)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
    def test_points_outside_the_support_without_validation(self, dtype):
        leaves, a, b = _beta_params("per_position", (4,), dtype, 8)
        x = torch.rand(30, 4, dtype=dtype, generator=torch.Generator().manual_seed(9)) * 1.4 - 0.2
        x[0, 0], x[3, 1], x[5, 2] = 0.0, 1.0, float("nan")
        x.requires_grad_()
        for validate in (True, False):  # the loss's own check (finite values) passes or is off
            kwargs = {"validate_args": False, "reduction": "none"}
            prior = Beta(a, b, validate_args=False)
            general = _GeneralBeta(a, b, validate_args=False)
            if validate:
                x_ok = x.detach().nan_to_num(0.5).requires_grad_()
                _compare_beta(x_ok, prior, general, [x_ok, *leaves], _BETA_TOL[dtype], **kwargs)
            else:
                _compare_beta(x, prior, general, [x, *leaves], _BETA_TOL[dtype], **kwargs)

    def test_validation_messages_are_the_general_paths(self):
        x = torch.rand(30, 4)
        x[2, 1] = 1.5
        for prior in (Beta(torch.ones(4), 2.0), _GeneralBeta(torch.ones(4), 2.0)):
            with pytest.raises(ValueError, match=r"Beta\.cdf: x must be inside the support \[0, 1\]"):
                batch_shaping_loss(x, prior)
        with pytest.raises(ValueError, match="must be finite"):
            batch_shaping_loss(torch.full((5, 2), float("nan")), Beta(torch.ones(2), 2.0))

    @pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
    def test_gradcheck(self, reduction):
        g = torch.Generator().manual_seed(10)
        x = (torch.rand(9, 3, dtype=F64, generator=g) * 0.9 + 0.05).requires_grad_()
        a = (torch.rand(3, dtype=F64, generator=g) * 3 + 0.3).requires_grad_()
        b = (torch.rand(3, dtype=F64, generator=g) * 3 + 0.3).requires_grad_()
        assert torch.autograd.gradcheck(lambda x, a, b: batch_shaping_loss(x, Beta(a, b), reduction=reduction),
                                        (x, a, b))  # fmt: skip

    def test_forward_without_gradients(self):
        a = torch.tensor([2.0, 3.0], dtype=F64)
        x = torch.rand(40, 2, dtype=F64)
        got = batch_shaping_loss(x, Beta(a, 0.4))
        assert got.grad_fn is None
        torch.testing.assert_close(got, batch_shaping_loss(x, _GeneralBeta(a, 0.4)), rtol=1e-13, atol=0)

    def test_beta_hyperprior_equals_general_path(self):
        means = torch.rand(49, dtype=F64, generator=torch.Generator().manual_seed(11)).requires_grad_()
        hyper_a = torch.tensor(3.0, dtype=F64, requires_grad=True)
        got = hyperprior_loss(means, Beta(hyper_a, 7.0))
        ref = hyperprior_loss(means, _GeneralBeta(hyper_a, 7.0))
        assert type(got.grad_fn).__name__ == "_FusedBetaBackward"
        torch.testing.assert_close(got, ref, rtol=1e-13, atol=1e-15)
        for g, r in zip(torch.autograd.grad(got, [means, hyper_a]), torch.autograd.grad(ref, [means, hyper_a]),
                        strict=True):  # fmt: skip
            torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-15)

    def test_torch_backend_equals_default(self):
        leaves, a, b = _beta_params("per_position", (5,), F64, 12)
        x = torch.rand(64, 5, dtype=F64, requires_grad=True)
        got = batch_shaping_loss(x, Beta(a, b))
        with backends.use("torch"):
            ref = batch_shaping_loss(x, Beta(a, b))
            ref_grads = torch.autograd.grad(ref, [x, *leaves])
        torch.testing.assert_close(got, ref, rtol=1e-13, atol=0)
        for g, r in zip(torch.autograd.grad(got, [x, *leaves]), ref_grads, strict=True):
            torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-15)

    @pytest.mark.parametrize("reduction", ["mean", "none"])
    def test_compile_fullgraph_equals_eager(self, reduction):
        leaves, a, b = _beta_params("per_position", (5,), torch.float32, 13)
        x = torch.rand(64, 5, requires_grad=True)

        def step(x, a, b):
            return batch_shaping_loss(x, Beta(a, b), reduction=reduction)

        torch._dynamo.reset()
        compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
        got, ref = compiled(x, a, b), step(x, a, b)
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-7)
        for g, r in zip(_beta_grads(got, [x, a, b]), _beta_grads(ref, [x, a, b]), strict=True):
            torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-7)


def _leaf_operators(fn) -> list[str]:
    """The leaf aten operators (no aten operator inside) of one call of ``fn``, as ``torch.profiler`` sees them."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return [
        e.name
        for e in prof.events()
        if e.name.startswith("aten::") and not any(c.name.startswith("aten::") for c in e.cpu_children)
    ]


@pytest.mark.skipif(not HAS_NATIVE, reason="native backend unavailable")
def test_operator_count_gbas_beta_priors_native():
    """GBaS with per-position Beta priors (256 x 196) on CPU, native backend, forward + backward: at most 80 leaf
    operators (measured 75, of which the packed-key sort is about 19; 151 before the fused Beta node)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(256, 196, generator=gen).clamp(0.01, 0.99).requires_grad_()
    a = (0.5 + torch.rand(196, generator=gen)).requires_grad_()
    b = (0.5 + torch.rand(196, generator=gen)).requires_grad_()

    def step():
        batch_shaping_loss(x, Beta(a, b), validate_args=False).backward()

    with backends.use("native"):
        step()
        names = _leaf_operators(step)
    assert len(names) <= 80, f"{len(names)} leaf aten operators: {sorted(names)}"
