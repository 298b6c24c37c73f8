"""Tests of the speed paths: the native ``betainc`` kernel and its fallback, the integer-key sort, the fused
loss node, and the cheap shape and range checks.

Every fast path is checked against the path it replaces (same results, to the last few units in the last
place), and the native kernel and the PyTorch fallback are each checked against the mpmath oracle of
``test_betainc.py``, so that neither can drift while the other hides it.
"""

from __future__ import annotations

import ctypes
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special
from test_betainc import TOLERANCE, oracle, rel_err, value_and_grads, wide_grid

from gbs_loss import _native, _sorting, batch_shaping_loss, betainc, hyperprior_loss
from gbs_loss import functional as F
from gbs_loss.special import _legacy as S
from gbs_loss._shapes import broadcast_shapes
from gbs_loss.priors import Beta, Normal, RelaxedBernoulli, _within

F64 = torch.float64
Tensor = torch.Tensor
HAS_COMPILER = any(shutil.which(name) for name in ("cc", "gcc", "clang"))


@pytest.fixture
def eager(monkeypatch):
    """Run ``betainc`` through the PyTorch operations instead of the native kernel."""
    monkeypatch.setenv("GBS_LOSS_NATIVE", "0")
    assert not _native.enabled()


@pytest.fixture
def fresh_native(monkeypatch, tmp_path):
    """An empty cache folder and a cleared load cache, restored (cleared again) afterwards."""
    monkeypatch.setenv("GBS_LOSS_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("GBS_LOSS_NATIVE", raising=False)
    _native._load_cached.cache_clear()
    yield tmp_path
    _native._load_cached.cache_clear()


def count_calls(monkeypatch, module, name: str) -> list[int]:
    """Wrap ``module.name`` to count its calls; returns the one-element counter."""
    calls = [0]
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def oracle_errors(dtype: torch.dtype) -> dict[str, float]:
    """Largest relative error of each quantity over the oracle table (the float32 subset for float32)."""
    o = oracle()
    mask = o["f32"] if dtype == torch.float32 else np.ones(len(o["a"]), dtype=bool)
    got = value_and_grads(o["a"][mask], o["b"][mask], o["x"][mask], dtype)
    return {q: float(rel_err(got[q], o[q][mask], dtype).max()) for q in got}


# Points in the two regions that the native kernel serves: the continued fraction (moderate a, b, x near
# the mean) and the complement series (small b, x close to 1).
CF_POINTS = ([2.5, 40.0, 300.0], [3.5, 60.0, 250.0], [0.4, 0.41, 0.55])
SERIES_POINTS = ([2.0, 5.0, 2.0], [0.01, 0.05, 0.1], [0.75, 0.9, 0.95])


# --------------------------------------------------------------------------------------------------------
# The native kernel: availability, dispatch, fallback.
# --------------------------------------------------------------------------------------------------------
class TestNative:
    def test_builds_where_a_compiler_is(self):
        # CI images and development machines have a C compiler: the kernel must build there. Without one,
        # the reason is stated.
        if HAS_COMPILER:
            path = _native.library_path()
            assert path is not None and Path(path).is_file()
            assert isinstance(_native.load(), ctypes.CDLL)
            assert _native.enabled()
        else:
            with pytest.raises(_native.NativeUnavailable, match="no C compiler"):
                _native.load()
            assert not _native.enabled()

    def test_builds_in_a_fresh_cache_folder(self, fresh_native):
        if not HAS_COMPILER:
            with pytest.raises(_native.NativeUnavailable):
                _native.load()
            return
        path = Path(_native.library_path())
        assert path.parent == fresh_native and path.suffix == ".so"
        assert [p.name for p in fresh_native.iterdir()] == [path.name]  # no temporary file left behind
        a, b, x = (torch.tensor(v, dtype=F64) for v in CF_POINTS)
        np.testing.assert_allclose(betainc(a, b, x).numpy(), special.betainc(*CF_POINTS), rtol=1e-12)

    @pytest.mark.parametrize("points", [CF_POINTS, SERIES_POINTS], ids=["fraction", "series"])
    def test_cpu_uses_the_kernel_when_enabled(self, monkeypatch, points):
        cfrac = count_calls(monkeypatch, _native, "cfrac")
        sums = count_calls(monkeypatch, _native, "complement_sums")
        betainc(*(torch.tensor(v, dtype=F64) for v in points))
        used = cfrac[0] if points is CF_POINTS else sums[0]
        assert used == (1 if _native.enabled() else 0)

    def test_environment_variable_disables_it(self, monkeypatch, eager):
        cfrac = count_calls(monkeypatch, _native, "cfrac")
        sums = count_calls(monkeypatch, _native, "complement_sums")
        for points in (CF_POINTS, SERIES_POINTS):
            got = betainc(*(torch.tensor(v, dtype=F64) for v in points))
            np.testing.assert_allclose(got.numpy(), special.betainc(*points), rtol=1e-12)
        assert cfrac == [0] and sums == [0]

    def test_failed_build_falls_back(self, monkeypatch, fresh_native):
        monkeypatch.setattr(_native, "_compiler", lambda: "false")  # a "compiler" that always fails
        with pytest.raises(_native.NativeUnavailable, match="could not compile"):
            _native.load()
        assert not _native.enabled() and _native.library_path() is None
        points = wide_grid(7, 300)
        got = betainc(*(torch.tensor(v) for v in points)).numpy()
        assert np.all(rel_err(got, special.betainc(*points), F64) <= 1e-11)

    def test_missing_compiler_falls_back(self, monkeypatch, fresh_native):
        monkeypatch.setattr(_native, "_compiler", lambda: None)
        with pytest.raises(_native.NativeUnavailable, match="no C compiler"):
            _native.load()
        got = betainc(*(torch.tensor(v, dtype=F64) for v in CF_POINTS))
        np.testing.assert_allclose(got.numpy(), special.betainc(*CF_POINTS), rtol=1e-12)


# --------------------------------------------------------------------------------------------------------
# Both implementations of the continued fraction and the series against the oracle and each other.
# --------------------------------------------------------------------------------------------------------
class TestBothPaths:
    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
    def test_native_meets_the_contract(self, dtype):
        errors = oracle_errors(dtype)
        assert all(errors[q] <= TOLERANCE[dtype][q] for q in errors), errors

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
    def test_fallback_meets_the_contract(self, dtype, eager):
        errors = oracle_errors(dtype)
        assert all(errors[q] <= TOLERANCE[dtype][q] for q in errors), errors

    def test_paths_agree(self, monkeypatch):
        points = wide_grid(11, 5000)
        native = value_and_grads(*points)
        monkeypatch.setenv("GBS_LOSS_NATIVE", "0")
        fallback = value_and_grads(*points)
        for q in native:
            err = rel_err(native[q], fallback[q], F64)
            assert err.max() <= TOLERANCE[F64][q], f"{q}: {err.max():.2e}"

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

    def test_unconverged_elements_are_flagged_alike(self, monkeypatch):
        # Cut the fraction short: both implementations must flag the same elements and agree on the rest.
        monkeypatch.setattr(S, "_MAX_STEPS_CPU", 3)
        rng = np.random.default_rng(4)
        p = torch.tensor(np.exp(rng.uniform(0, 6, 500)))
        q = torch.tensor(np.exp(rng.uniform(0, 6, 500)))
        x = torch.tensor(rng.uniform(0.05, 0.95, 500))
        y = 1.0 - x
        lam = (p + q) * y - q
        native = S._continued_fraction(p, q, x, y, lam, compact=True) if _native.enabled() else None
        monkeypatch.setenv("GBS_LOSS_NATIVE", "0")
        fallback = S._continued_fraction(p, q, x, y, lam, compact=True)
        assert 0 < int(fallback[3].sum()) < 500  # some converged in 3 steps, most did not
        assert (native is not None) == HAS_COMPILER  # with a compiler the kernel loads and is compared
        if native is not None:
            assert torch.equal(native[3], fallback[3])
            for got, ref in zip(native[:3], fallback[:3], strict=True):
                torch.testing.assert_close(got, ref, rtol=1e-13, atol=1e-14, equal_nan=True)  # NaN: G_3 < 0

    @pytest.mark.parametrize("shape", [(0,), (3, 0)])
    def test_empty(self, shape):
        a = torch.ones(shape, dtype=F64, requires_grad=True)
        out = betainc(a, 2.0, torch.full(shape, 0.5, dtype=F64))
        assert out.shape == shape
        out.sum().backward()
        assert a.grad.shape == shape


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
    """Same distribution; a subclass, so the loss takes the general (unfused) path."""


class _GeneralNormal(Normal):
    """Same distribution; a subclass, so the loss takes the general (unfused) path."""


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
        assert type(batch_shaping_loss(x, general).grad_fn).__name__ != "_FusedShapingBackward"
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
