"""Tests of the native (C) backend of ``betainc``: ``gbs_loss.special.backends.native``.

Oracles: the mpmath table ``tests/data/betainc_oracle.npz`` (50 digits, every region; see ``tests/test_betainc.py``),
mpmath itself for the points of defect 1 of issue 11 (``scripts/make_betainc_oracle.py``), central finite
differences for gradcheck, and the torch-operator reference ``gbs_loss.special._kernel.betainc_kernel`` for the
agreement between backends.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _support import check_backend_against_oracle, check_backends_agree
from _support import wide_grid as support_grid

from gbs_loss.special.backends import _build, native, torch_ops

F64 = torch.float64
DATA = Path(__file__).parent / "data" / "betainc_oracle.npz"
QUANTITIES = ("value", "d_a", "d_b", "d_x")
TOL = {"value": 1e-12, "d_a": 1e-11, "d_b": 1e-11, "d_x": 1e-11}
AGREEMENT = 1e-13
# Below this, relative errors are measured against this floor instead (see tests/test_betainc.py).
FLOOR = torch.finfo(F64).tiny / 1e-12

needs_native = pytest.mark.skipif(
    not native.available(), reason=f"native kernel unavailable: {native.unavailable_reason()}"
)


# --------------------------------------------------------------------------------------------------------
# Helpers.
# --------------------------------------------------------------------------------------------------------
@functools.cache
def oracle() -> dict[str, np.ndarray]:
    with np.load(DATA) as f:
        return {k: f[k] for k in f.files}


@functools.cache
def oracle_module():
    """scripts/make_betainc_oracle.py (``oracle_point(a, b, x, dps)``: mpmath values of I and its gradients)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / "make_betainc_oracle.py"
    spec = importlib.util.spec_from_file_location("make_betainc_oracle", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def t64(values) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float64)).contiguous()


def run_native(a, b, x) -> dict[str, np.ndarray]:
    outs = native.betainc_with_grads(t64(a), t64(b), t64(x))
    return {q: o.numpy() for q, o in zip(QUANTITIES, outs, strict=True)}


def run_reference(a, b, x, compact: bool = True) -> dict[str, np.ndarray]:
    from gbs_loss.special._kernel import betainc_kernel

    outs = betainc_kernel(t64(a), t64(b), t64(x), compact)
    return {q: o.numpy() for q, o in zip(QUANTITIES, outs, strict=True)}


def rel_err(got: np.ndarray, ref: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
    """``|got - ref| / max(|ref|, scale, FLOOR)``; NaN or inf results count as inf."""
    denom = np.maximum(np.abs(ref), FLOOR if scale is None else np.maximum(scale, FLOOR))
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(got - ref) / denom
    return np.where(np.isfinite(got) & np.isfinite(err), err, np.inf)


def worst(err: np.ndarray, a, b, x, k: int = 3) -> str:
    idx = np.argsort(-err)[:k]
    return "; ".join(f"a={a[i]!r} b={b[i]!r} x={x[i]!r}: {err[i]:.2e}" for i in idx)


def parameter_scale(a: np.ndarray, b: np.ndarray, x: np.ndarray, ref: dict[str, np.ndarray]) -> np.ndarray:
    """Size of the terms that the parameter derivatives sum before they cancel.

    With ``J`` the side the fraction is evaluated on (``I`` below the switch point ``(a + 1) / (a + b + 2)``,
    ``1 - I`` above), ``dJ/dp = J (log xx + digamma difference - d log G / dp)``: where the sum in parentheses
    cancels, the last bits of its terms (which differ between libm and torch's vectorised logarithms) decide the
    last digits of the derivative in either backend. Agreement is measured relative to
    ``J * (|log x| + |log(1 - x)|)`` where that is larger than the derivative.
    """
    v = ref["value"]
    j = np.where(x * (a + b + 2.0) > a + 1.0, 1.0 - v, v)
    with np.errstate(divide="ignore", invalid="ignore"):
        return j * (np.abs(np.log(x)) + np.abs(np.log1p(-x)))


def wide_grid(seed: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """a, b log-uniform in [1e-3, 1e5]; x uniform, log-uniform towards both ends, and near the switch point."""
    rng = np.random.default_rng(seed)
    a = np.exp(rng.uniform(math.log(1e-3), math.log(1e5), n))
    b = np.exp(rng.uniform(math.log(1e-3), math.log(1e5), n))
    kind = rng.integers(4, size=n)
    ends = np.exp(rng.uniform(math.log(1e-12), math.log(1e-2), n))
    switch = (a + 1.0) / (a + b + 2.0) * (1.0 + rng.uniform(-1e-3, 1e-3, n))
    x = np.select([kind == 0, kind == 1, kind == 2], [rng.uniform(0.0, 1.0, n), ends, 1.0 - ends], switch)
    keep = (x > 0) & (x < 1)
    return a[keep], b[keep], x[keep]


# --------------------------------------------------------------------------------------------------------
# Accuracy.
# --------------------------------------------------------------------------------------------------------
@needs_native
def test_oracle_every_region() -> None:
    """Every region of the mpmath table within the float64 contract (value 1e-12, gradients 1e-11)."""
    o = oracle()
    got = run_native(o["a"], o["b"], o["x"])
    names = [str(r) for r in o["region_names"]]
    failures = []
    for q in QUANTITIES:
        err = rel_err(got[q], o[q])
        for r, name in enumerate(names):
            sel = o["region"] == r
            assert sel.any()
            if not err[sel].max() <= TOL[q]:
                failures.append(
                    f"{name} {q}: {err[sel].max():.2e} ({worst(err[sel], o['a'][sel], o['b'][sel], o['x'][sel])})"
                )
    assert not failures, "\n".join(failures)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_public_api_with_native_backend_meets_the_contract(dtype: torch.dtype) -> None:
    """The shared check of ``tests/_support.py``: the public ``betainc`` (forward and backward) with the native
    backend forced, on every region of the oracle, float64 and float32 (its float32-exact points)."""
    worst = check_backend_against_oracle("native", dtype, label="native")
    assert set(worst) == set(QUANTITIES)


@needs_native
def test_shared_agreement_check_with_the_torch_backend() -> None:
    """The shared agreement check of ``tests/_support.py`` (values 1e-13, gradients 1e-12 plus the allowance for
    results far in a tail), on its seeded wide grid, between the two contract functions."""
    check_backends_agree(native.betainc_with_grads, torch_ops.betainc_with_grads, support_grid(21, 2000))


@needs_native
def test_defect_1_band() -> None:
    """a about 1.2-1.33, b about 1e-3, x just above the switch point: the complement series keeps 1e-12.

    The band of defect 1 of issue 11 (2.8e-12 before the fix), against mpmath at 30 digits.
    """
    mod = oracle_module()
    rng = np.random.default_rng(11)
    a = np.concatenate([[1.2980329015260543], rng.uniform(1.2, 1.33, 5)])
    b = np.concatenate([[0.0010084948096717229], np.exp(rng.uniform(math.log(5e-4), math.log(2e-3), 5))])
    switch = (a + 1.0) / (a + b + 2.0)
    x = np.concatenate([[0.6979084172856816], switch[1:] + rng.uniform(1e-6, 2e-2, 5)])
    got = run_native(a, b, x)
    ref = {q: np.empty(len(a)) for q in QUANTITIES}
    for i in range(len(a)):
        vals = mod.oracle_point(float(a[i]), float(b[i]), float(x[i]), 30)[0]
        for q, v in zip(QUANTITIES, vals, strict=True):
            ref[q][i] = float(v)
    for q in QUANTITIES:
        err = rel_err(got[q], ref[q])
        assert err.max() <= TOL[q], f"{q}: {worst(err, a, b, x)}"


@needs_native
@pytest.mark.parametrize("compact", [True, False])
def test_agrees_with_reference(compact: bool) -> None:
    """The native kernel and the torch-operator reference agree to 1e-13 relative (float64).

    On the oracle points and a wide seeded grid; NaN in the same places. For the parameter derivatives, see
    :func:`parameter_scale` for where cancellation makes the last digits of both backends noise.
    """
    o = oracle()
    ga, gb, gx = wide_grid(5, 1500)
    a, b, x = (np.concatenate([o[k], g]) for k, g in (("a", ga), ("b", gb), ("x", gx)))
    if not compact:  # the masked mode is slow on CPU: a subset
        a, b, x = a[::7], b[::7], x[::7]
    got, ref = run_native(a, b, x), run_reference(a, b, x, compact)
    scale = parameter_scale(a, b, x, ref)
    for q in QUANTITIES:
        np.testing.assert_array_equal(np.isnan(got[q]), np.isnan(ref[q]), err_msg=q)
        ok = ~np.isnan(ref[q])
        err = rel_err(got[q][ok], ref[q][ok], scale[ok] if q in ("d_a", "d_b") else None)
        assert err.max() <= AGREEMENT, f"{q}: {worst(err, a[ok], b[ok], x[ok])}"


@needs_native
def test_gradcheck_through_public_betainc(monkeypatch: pytest.MonkeyPatch) -> None:
    """gradcheck of the public ``betainc`` with ``GBS_LOSS_BACKEND=native`` (moderate, small and large shapes)."""
    monkeypatch.setenv("GBS_LOSS_BACKEND", "native")
    from gbs_loss import betainc

    a = torch.tensor([0.7, 2.5, 30.0, 0.05, 150.0], dtype=F64, requires_grad=True)
    b = torch.tensor([1.3, 0.4, 45.0, 3.0, 120.0], dtype=F64, requires_grad=True)
    x = torch.tensor([0.3, 0.8, 0.42, 0.6, 0.55], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(betainc, (a, b, x), eps=1e-6, atol=1e-7, rtol=1e-5)
    # Shared parameters (one pair for several points): gradients summed over the points.
    a1 = torch.tensor([1.7], dtype=F64, requires_grad=True)
    b1 = torch.tensor([2.2], dtype=F64, requires_grad=True)
    x3 = torch.tensor([[0.1], [0.5], [0.9]], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(betainc, (a1, b1, x3), eps=1e-6, atol=1e-7, rtol=1e-5)


class _NativeBetainc(torch.autograd.Function):
    """The backend's partials wired into autograd directly, to gradcheck the kernel without the dispatcher."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        value, d_a, d_b, d_x = native.betainc_with_grads(a, b, x)
        ctx.save_for_backward(d_a, d_b, d_x)
        return value

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        d_a, d_b, d_x = ctx.saved_tensors
        return grad * d_a, grad * d_b, grad * d_x


@needs_native
def test_gradcheck_kernel_partials() -> None:
    """The kernel's three partials against central finite differences, across the methods it switches between."""
    a = torch.tensor([0.7, 2.5, 30.0, 0.05, 150.0, 1.25, 12.0], dtype=F64, requires_grad=True)
    b = torch.tensor([1.3, 0.4, 45.0, 3.0, 120.0, 0.1, 0.15], dtype=F64, requires_grad=True)
    x = torch.tensor([0.3, 0.8, 0.42, 0.6, 0.55, 0.7, 0.97], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(_NativeBetainc.apply, (a, b, x), eps=1e-7, atol=1e-7, rtol=1e-5)


# --------------------------------------------------------------------------------------------------------
# The contract: broadcasting, ends, invalid inputs, non-convergence, empty input.
# --------------------------------------------------------------------------------------------------------
@needs_native
def test_shared_parameters_match_per_element() -> None:
    """``m < n`` (element ``i`` uses ``a[i % m]``) gives bit for bit what the expanded parameters give."""
    rng = np.random.default_rng(3)
    m, reps = 37, 9
    a = np.concatenate([np.exp(rng.uniform(-7, 11, m - 4)), [0.05, 0.15, 25.0, -1.0]])
    b = np.concatenate([np.exp(rng.uniform(-7, 11, m - 4)), [0.1, 30.0, 0.08, 2.0]])
    x = rng.uniform(0, 1, m * reps)
    x[:5] = [0.0, 1.0, 1e-300, 1 - 1e-16, 0.5]
    shared = native.betainc_with_grads(t64(a), t64(b), t64(x))
    full = native.betainc_with_grads(t64(np.tile(a, reps)), t64(np.tile(b, reps)), t64(x))
    for q, s, f in zip(QUANTITIES, shared, full, strict=True):
        assert s.shape == (m * reps,) and s.is_contiguous() and s.dtype == F64
        assert torch.equal(torch.nan_to_num(s, nan=-7.0), torch.nan_to_num(f, nan=-7.0)), q
    assert torch.isnan(shared[0][m - 1 :: m]).all()  # a = -1


@needs_native
def test_ends() -> None:
    """I_0 = 0, I_1 = 1, zero parameter derivatives, d/dx the density's one-sided limit where finite."""
    a = [1.0, 2.0, 0.5, 3.0, 2.0, 0.5, 1.0]
    b = [4.0, 1.0, 2.0, 1.0, 3.0, 0.5, 1.0]
    x = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    got = run_native(a, b, x)
    np.testing.assert_array_equal(got["value"], x)
    np.testing.assert_array_equal(got["d_a"], 0.0)
    np.testing.assert_array_equal(got["d_b"], 0.0)
    np.testing.assert_array_equal(got["d_x"], [4.0, 0.0, 0.0, 3.0, 0.0, 0.0, 1.0])


@needs_native
def test_invalid_inputs_give_nan() -> None:
    nan, inf = float("nan"), float("inf")
    a = [0.0, -1.0, nan, inf, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    b = [2.0, 2.0, 2.0, 2.0, 0.0, -inf, 2.0, 2.0, 2.0, 2.0]
    x = [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, -1e-300, 1.0 + 2e-16, nan, inf]
    got = run_native(a, b, x)
    for q in QUANTITIES:
        assert np.isnan(got[q]).all(), q
    # And valid neighbours are unaffected.
    ok = run_native([2.0, 0.0], [3.0, 1.0], [0.5, 0.5])
    assert ok["value"][0] == pytest.approx(0.6875, rel=1e-15) and np.isnan(ok["value"][1])


@needs_native
def test_non_convergence_is_nan_like_the_reference() -> None:
    """a = b = 1e9 at x = 0.5 needs more than MAX_STEPS fraction steps: NaN in all four, as in the reference."""
    a, b, x = [1e9, 1e9, 1e5], [1e9, 1e9, 1e5], [0.5, 0.5 + 1e-6, 0.5]
    got, ref = run_native(a, b, x), run_reference(a, b, x)
    for q in QUANTITIES:
        np.testing.assert_array_equal(np.isnan(got[q]), np.isnan(ref[q]), err_msg=q)
        assert np.isnan(got[q][:2]).all() and np.isfinite(got[q][2])


@needs_native
def test_empty_input() -> None:
    e = torch.empty(0, dtype=F64)
    outs = native.betainc_with_grads(e, e, e)
    assert len(outs) == 4 and all(o.shape == (0,) and o.dtype == F64 for o in outs)
    outs = native.betainc_with_grads(t64([1.0, 2.0]), t64([1.0, 2.0]), e)
    assert all(o.shape == (0,) for o in outs)


def _float32_points() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float32 points over wide parameters, with ends, invalid inputs and a density beyond float32's range."""
    gen = torch.Generator().manual_seed(21)
    a = torch.exp(torch.empty(400, dtype=F64).uniform_(-7, 11, generator=gen))
    b = torch.exp(torch.empty(400, dtype=F64).uniform_(-7, 11, generator=gen))
    x = torch.rand(400, dtype=F64, generator=gen)
    extra_a = t64([0.001, 2.0, 1.0, -1.0, 2.0, 3.0])
    extra_b = t64([5.0, 3.0, 4.0, 2.0, 2.0, 0.001])
    extra_x = t64([2.0**-149, 0.0, 0.0, 0.5, float("nan"), 1.0 - 2.0**-24])
    return (torch.cat([a, extra_a]).float(), torch.cat([b, extra_b]).float(), torch.cat([x, extra_x]).float())


@needs_native
def test_float32_is_float64_rounded_once() -> None:
    """float32 in, float32 out: the float64 results rounded once, derivatives saturated at float32's largest."""
    a, b, x = _float32_points()
    got = native.betainc_with_grads(a, b, x)
    ref = native.betainc_with_grads(a.double(), b.double(), x.double())
    big = torch.finfo(torch.float32).max
    for i, (g, r) in enumerate(zip(got, ref, strict=True)):
        assert g.dtype == torch.float32 and g.is_contiguous()
        want = r.float() if i == 0 else r.clamp(-big, big).float()
        torch.testing.assert_close(g, want, rtol=0, atol=0, equal_nan=True)
    assert got[3][400] == big  # the density at x = 2^-149 (float32 subnormal) with a = 0.001 is beyond float32


@needs_native
def test_float32_agrees_with_the_torch_backend() -> None:
    a, b, x = _float32_points()
    for g, r in zip(native.betainc_with_grads(a, b, x), torch_ops.betainc_with_grads(a, b, x), strict=True):
        assert r.dtype == torch.float32
        torch.testing.assert_close(g, r, rtol=2.0**-23, atol=0, equal_nan=True)


@needs_native
def test_contract_violations_raise() -> None:
    a = t64([1.0, 2.0])
    with pytest.raises(ValueError):
        native.betainc_with_grads(a, a, t64([0.5, 0.5, 0.5]))  # 3 % 2 != 0
    with pytest.raises(ValueError):
        native.betainc_with_grads(a.float(), a.float(), t64([0.5, 0.5]))
    with pytest.raises(ValueError):
        native.betainc_with_grads(a, a, t64([[0.5, 0.5]]))


@needs_native
def test_each_element_independent_of_its_neighbours() -> None:
    """An element gets the same bits alone as in a batch (the kernel steps two fractions in lockstep per lane).

    Mixed easy, hard, series and non-converging elements, so that lanes are refilled and finish alone.
    """
    a, b, x = wide_grid(13, 300)
    a = np.concatenate([a, [1e9, 0.05, 3e4, 1e9]])
    b = np.concatenate([b, [1e9, 7.0, 3e4, 1e9]])
    x = np.concatenate([x, [0.5, 0.9, 0.5, 0.5]])
    batch = native.betainc_with_grads(t64(a), t64(b), t64(x))
    for i in range(len(x)):
        alone = native.betainc_with_grads(t64(a[i : i + 1]), t64(b[i : i + 1]), t64(x[i : i + 1]))
        for q, u, v in zip(QUANTITIES, batch, alone, strict=True):
            assert torch.equal(torch.nan_to_num(u[i : i + 1], nan=-7.0), torch.nan_to_num(v, nan=-7.0)), (q, i)


@needs_native
def test_thread_invariance() -> None:
    """Bit-identical results at 1 and 2 threads (every element's arithmetic is independent of the schedule)."""
    a, b, x = wide_grid(8, 4000)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = native.betainc_with_grads(t64(a), t64(b), t64(x))
        torch.set_num_threads(2)
        two = native.betainc_with_grads(t64(a), t64(b), t64(x))
    finally:
        torch.set_num_threads(before)
    for q, u, v in zip(QUANTITIES, one, two, strict=True):
        assert torch.equal(torch.nan_to_num(u, nan=-7.0), torch.nan_to_num(v, nan=-7.0)), q


# --------------------------------------------------------------------------------------------------------
# Build, cache and fallback.
# --------------------------------------------------------------------------------------------------------
@pytest.fixture
def fresh_state(monkeypatch: pytest.MonkeyPatch):
    """Forget the loaded library for the test (restored afterwards)."""
    saved = dict(native._STATE)
    native._STATE.clear()
    yield
    native._STATE.clear()
    native._STATE.update(saved)


@needs_native
def test_fresh_cache_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_state) -> None:
    """An empty cache folder: the kernel is compiled into it, loads, and computes."""
    monkeypatch.setenv("GBS_LOSS_CACHE_DIR", str(tmp_path))
    assert native.available(), native.unavailable_reason()
    path = Path(native.library_path())
    assert path.parent == tmp_path and path.name.startswith("betainc-") and path.suffix == ".so"
    assert not [p for p in tmp_path.iterdir() if p != path]  # no temporary file left behind
    v = native.betainc_with_grads(t64([2.0]), t64([3.0]), t64([0.5]))[0]
    assert v.item() == pytest.approx(0.6875, rel=1e-15)
    # A second load finds the cached library instead of compiling again.
    mtime = path.stat().st_mtime_ns
    native._STATE.clear()
    assert native.available() and Path(native.library_path()) == path and path.stat().st_mtime_ns == mtime


def test_no_compiler_is_unavailable(monkeypatch: pytest.MonkeyPatch, fresh_state) -> None:
    monkeypatch.setattr(_build, "find_compiler", lambda: None)
    assert not native.available()
    assert "compiler" in native.unavailable_reason()
    assert native.library_path() is None
    with pytest.raises(RuntimeError, match="unavailable"):
        native.betainc_with_grads(t64([1.0]), t64([1.0]), t64([0.5]))


def test_failed_build_is_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_state) -> None:
    """A compiler that fails: unavailable, with the command and its exit status in the reason."""
    monkeypatch.setattr(_build, "find_compiler", lambda: "false")
    monkeypatch.setattr(_build, "cache_dirs", lambda: [tmp_path / "a", tmp_path / "b"])
    assert not native.available()
    reason = native.unavailable_reason()
    assert "false" in reason and "exit" in reason and str(tmp_path / "b") in reason
    assert not any(p.is_file() for p in tmp_path.rglob("*"))  # no partial library left behind


def test_public_betainc_falls_back_without_native(monkeypatch: pytest.MonkeyPatch, fresh_state) -> None:
    """With the kernel unavailable, the default backend choice still computes betainc (the torch reference)."""
    monkeypatch.setattr(_build, "find_compiler", lambda: None)
    monkeypatch.delenv("GBS_LOSS_BACKEND", raising=False)
    from gbs_loss import betainc

    a = torch.tensor([2.0, 0.5], dtype=F64, requires_grad=True)
    v = betainc(a, torch.tensor([3.0, 0.5], dtype=F64), torch.tensor([0.5, 0.25], dtype=F64))
    assert torch.allclose(v, torch.tensor([0.6875, 1.0 / 3.0], dtype=F64), rtol=1e-14, atol=0)
    v.sum().backward()
    assert torch.isfinite(a.grad).all()


def test_switch_point_of_the_kernel_follows_the_constants(monkeypatch: pytest.MonkeyPatch, fresh_state) -> None:
    """The kernel's compiled-in LARGE must equal ``_constants.LARGE``; otherwise the backend is unavailable."""
    from gbs_loss.special import _constants

    monkeypatch.setattr(_constants, "LARGE", 12.0)
    assert not native.available()
    assert "LARGE" in native.unavailable_reason()


def test_isa_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """-mavx only on x86-64 processors that list avx; never elsewhere."""
    flags = _build.isa_flags()
    assert flags in ((), ("-mavx",))
    if flags:
        assert Path("/proc/cpuinfo").read_text().count(" avx") > 0
    monkeypatch.setattr(_build.platform, "machine", lambda: "arm64")
    assert _build.isa_flags() == ()
