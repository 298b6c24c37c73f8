"""Tests of the Triton backend of ``betainc`` (``gbs_loss.special.backends.triton``), run on CPU.

CI has no GPU: the kernel runs under Triton's interpreter (``TRITON_INTERPRET=1``), which executes the same kernel
source on CPU tensors. The backend reads the variable at each call and decorates its kernel module for the mode in
force at its first call, so setting it here (for the duration of this module's tests) is enough, whatever was
imported before. The interpreter costs about a millisecond per operation and block, so every test runs all its
points in one launch, and the continued fraction's step count drives the time: the oracle subset (a few seeded
points of every region) takes about ten seconds.

Also here: the kernel compiled for an NVIDIA GPU (sm_90) without one (Triton's bundled ``ptxas``), the launch
counts of the issue (one kernel launch and a bounded number of other operators per forward + backward), and a run
of ``benchmarks/bench_gpu.py --device cpu --quick`` end to end.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from _support import (  # noqa: E402
    QUANTITIES,
    check_backend_against_oracle,
    check_backends_agree,
    oracle,
    oracle_subset,
    rel_err,
)

from gbs_loss import betainc  # noqa: E402
from gbs_loss.special import _constants, _fraction, backends  # noqa: E402
from gbs_loss.special.backends import torch_ops  # noqa: E402
from gbs_loss.special.backends import triton as triton_backend  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64
# Points per oracle region in the interpreted subset.
PER_REGION = 5
# The first defect: a ~ 1.2-1.33, b ~ 1e-3, x just above the switch point, 1 - x > 0.3.
DEFECT_POINTS = [
    (1.2980329015260543, 0.0010084948096717229, 0.6979084172856816),
    (1.25, 0.001, 0.70),
    (1.31, 0.0015, 0.66),
]


@pytest.fixture(autouse=True, scope="module")
def _interpreter():
    """Triton's interpreter on, for this module's tests only (the backend reads the variable at each call)."""
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = previous


def f64(values) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float64))


def run_triton(a, b, x) -> tuple[torch.Tensor, ...]:
    return triton_backend.betainc_with_grads(f64(a), f64(b), f64(x))


def run_reference(a, b, x, mode: str = "masked") -> tuple[torch.Tensor, ...]:
    with torch_ops._forced_mode(mode):
        return torch_ops.betainc_with_grads(f64(a), f64(b), f64(x))


def assert_same(got: tuple[torch.Tensor, ...], ref: tuple[torch.Tensor, ...], rtol: float) -> None:
    """Equal NaN patterns and equal values to ``rtol`` (relative, with the float64 floor) in all four outputs."""
    for name, g, r in zip(QUANTITIES, got, ref, strict=True):
        g, r = g.numpy(), r.numpy()
        np.testing.assert_array_equal(np.isnan(g), np.isnan(r), err_msg=f"NaN pattern of {name}")
        ok = ~np.isnan(r)
        err = rel_err(g[ok], r[ok], F64)
        assert err.max(initial=0.0) <= rtol, f"{name}: max relative difference {err.max():.2e} > {rtol:.0e}"


@pytest.fixture(scope="module")
def subset_points() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PER_REGION points of every region of the oracle, and the defect points."""
    o = oracle()
    idx = oracle_subset(PER_REGION)
    return tuple(np.concatenate([o[k][idx], [p[i] for p in DEFECT_POINTS]]) for i, k in enumerate("abx"))


# --------------------------------------------------------------------------------------------------------
# The contract.
# --------------------------------------------------------------------------------------------------------
def test_available_under_interpreter():
    assert triton_backend.available()
    assert backends.available("triton")
    with backends.use("triton"):
        assert backends.resolve(torch.device("cpu")) == "triton"


def test_oracle_subset_float64():
    """Every region of the oracle (PER_REGION points each) within the float64 contract, through the public API."""
    check_backend_against_oracle("triton", per_region=PER_REGION, label="triton (interpreted)")


def test_defect_band_matches_mpmath():
    """Defect 1 of the issue (complement series now used without the old xx <= 0.3 bound): 1e-12 against mpmath."""
    mpmath = pytest.importorskip("mpmath")
    a, b, x = (np.array(v) for v in zip(*DEFECT_POINTS, strict=True))
    got = run_triton(a, b, x)[0].numpy()
    with mpmath.workdps(40):
        ref = np.array([float(mpmath.betainc(ai, bi, 0, xi, regularized=True)) for ai, bi, xi in DEFECT_POINTS])
    assert rel_err(got, ref, F64).max() <= 1e-12


def test_agrees_with_torch_reference(subset_points):
    """The Triton backend and the torch reference agree to 1e-13 relative (values and gradients), same NaNs."""
    check_backends_agree(triton_backend.betainc_with_grads, torch_ops.betainc_with_grads, subset_points, 1e-13, 1e-13)


def test_agrees_on_wide_grid():
    """Seeded points over the whole domain (a, b in [1e-3, 3e3], x uniform and near both ends), one launch."""
    rng = np.random.default_rng(5)
    n = 96
    a = np.exp(rng.uniform(math.log(1e-3), math.log(3e3), n))
    b = np.exp(rng.uniform(math.log(1e-3), math.log(3e3), n))
    kind = rng.integers(3, size=n)
    x = np.select([kind == 0, kind == 1], [rng.uniform(0, 1, n), 10.0 ** rng.uniform(-14, -1, n)])
    x = np.where(kind == 2, 1.0 - 10.0 ** rng.uniform(-14, -1, n), x)
    got = run_triton(a, b, x)
    for out in got:
        assert torch.isfinite(out).all()
    assert_same(got, run_reference(a, b, x, "compact"), 1e-13)


def test_broadcast_contract():
    """``n % m == 0``: element i uses a[i % m], b[i % m]; same as the elementwise call with expanded parameters."""
    a = f64([0.5, 2.0, 30.0])
    b = f64([0.7, 5.0, 12.0])
    x = torch.linspace(0.05, 0.95, 12, dtype=F64)
    shared = triton_backend.betainc_with_grads(a, b, x)
    full = triton_backend.betainc_with_grads(a.repeat(4), b.repeat(4), x)
    for s, f in zip(shared, full, strict=True):
        assert s.shape == (12,) and s.dtype == F64 and s.is_contiguous()
        torch.testing.assert_close(s, f, rtol=0, atol=0)
    assert_same(shared, run_reference(a, b, x), 1e-13)


def test_invalid_inputs_and_ends():
    """NaN for invalid inputs in all four outputs; the ends' conventions; identical to the reference."""
    inf, nan = float("inf"), float("nan")
    cases = [
        (-1.0, 2.0, 0.5),
        (0.0, 2.0, 0.5),
        (2.0, 0.0, 0.5),
        (inf, 2.0, 0.5),
        (2.0, nan, 0.5),
        (2.0, 3.0, -0.1),
        (2.0, 3.0, 1.5),
        (2.0, 3.0, nan),
        (2.0, 3.0, 0.0),
        (2.0, 3.0, 1.0),
        (1.0, 3.0, 0.0),
        (2.0, 1.0, 1.0),
        (0.5, 0.5, 0.0),
        (0.5, 0.5, 1.0),
        (1.0, 1.0, 0.0),
        (1.0, 1.0, 1.0),
    ]
    a, b, x = (np.array(v) for v in zip(*cases, strict=True))
    got = run_triton(a, b, x)
    for i in range(8):
        assert all(math.isnan(out[i]) for out in got), cases[i]
    value, d_a, d_b, d_x = (out[8:].tolist() for out in got)
    assert value == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    assert d_a == [0.0] * 8 and d_b == [0.0] * 8
    assert d_x == [0.0, 0.0, 3.0, 2.0, 0.0, 0.0, 1.0, 1.0]
    assert_same(got, run_reference(a, b, x), 0.0)


def test_empty():
    out = triton_backend.betainc_with_grads(f64([]), f64([]), f64([]))
    assert len(out) == 4 and all(o.shape == (0,) and o.dtype == F64 for o in out)
    with backends.use("triton"):
        assert betainc(torch.ones(0, dtype=F64), 2.0, torch.ones(0, dtype=F64)).shape == (0,)


def test_non_convergence_same_as_reference(monkeypatch):
    """With the step cap lowered (in both backends), the same elements are reported as non-converged (NaN).

    a = b = 1e9 at x = 1/2 never converges; a = b = 1e4 at the mean needs more than 40 steps; a = b = 10 fewer.
    The real cap (4096 steps) is exercised by the slow test below (the interpreter needs minutes for it).
    """
    monkeypatch.setattr(_constants, "MAX_STEPS", 40)
    monkeypatch.setattr(_fraction, "MAX_STEPS", 40)
    a = [1e9, 1e4, 10.0, 2.0]
    x = [0.5, 0.5, 0.5, 0.3]
    got = run_triton(a, a, x)
    for out in got:
        assert out[:2].isnan().all() and out[2:].isfinite().all()
    assert_same(got, run_reference(a, a, x, "masked"), 1e-13)
    assert_same(got, run_reference(a, a, x, "compact"), 1e-13)


@pytest.mark.slow
def test_non_convergence_real_cap():
    """a = b = 1e9, x = 1/2: NaN in all four after MAX_STEPS steps, as in the reference (minutes interpreted)."""
    got = run_triton([1e9], [1e9], [0.5])
    ref = run_reference([1e9], [1e9], [0.5])
    for g, r in zip(got, ref, strict=True):
        assert g.isnan().all() and r.isnan().all()


# --------------------------------------------------------------------------------------------------------
# Through the public API.
# --------------------------------------------------------------------------------------------------------
def test_float32_public_api():
    """float32 through betainc with the Triton backend forced: value 1e-5, gradients 1e-4 against the oracle."""
    check_backend_against_oracle("triton", torch.float32, per_region=3, label="triton (interpreted)")


def test_float32_in_and_out():
    """float32 in, float32 out (read and written by the kernel): the float64 results rounded once, derivatives
    saturated at float32's largest value, within an ulp of the torch reference."""
    a = torch.tensor([0.5, 2.0, 7.5, 0.001, 3.0, -1.0, 2.0], dtype=torch.float32)
    b = torch.tensor([0.5, 3.0, 120.0, 5.0, 0.002, 2.0, 2.0], dtype=torch.float32)
    x = torch.tensor([0.25, 0.5, 0.05, 2.0**-149, 0.875, 0.5, float("nan")], dtype=torch.float32)
    got = triton_backend.betainc_with_grads(a, b, x)
    ref = triton_backend.betainc_with_grads(a.double(), b.double(), x.double())
    reference = torch_ops.betainc_with_grads(a, b, x)
    big = torch.finfo(torch.float32).max
    for i, (g, r, t) in enumerate(zip(got, ref, reference, strict=True)):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, (r if i == 0 else r.clamp(-big, big)).float(), rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(g, t, rtol=2.0**-23, atol=0, equal_nan=True)
    assert got[3][3] == big


def test_gradcheck():
    """gradcheck through the public betainc with the Triton backend forced (fast mode: a few launches)."""
    # Rows a, b, x of one input (fewer evaluations in fast mode); the second point takes the complement series.
    abx = torch.tensor([[0.7, 3.0], [1.5, 0.1], [0.3, 0.8]], dtype=F64, requires_grad=True)

    def fn(t: torch.Tensor) -> torch.Tensor:
        return betainc(t[0], t[1], t[2])

    with backends.use("triton"):
        assert torch.autograd.gradcheck(fn, (abx,), eps=1e-6, atol=1e-8, rtol=1e-6, fast_mode=True)


def test_public_broadcasting():
    """(N, D) points with (D,) parameters (one prior per position): the same as the torch backend."""
    a = torch.tensor([0.6, 2.0, 9.0], dtype=F64, requires_grad=True)
    b = torch.tensor([0.4, 3.0, 11.0], dtype=F64, requires_grad=True)
    x = torch.rand(5, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    results = []
    for name in ("triton", "torch"):
        with backends.use(name):
            value = betainc(a, b, x)
            grads = torch.autograd.grad(value.sum(), (a, b))
        results.append((value.detach(), *grads))
    for got, ref in zip(*results, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-13, atol=0)


def test_torch_compile_fullgraph_matches_eager():
    """torch.compile(fullgraph=True) on the Triton path equals eager (interpreted: the launch is an opaque op)."""
    torch._dynamo.reset()
    a = torch.tensor([0.5, 2.0, 7.0], dtype=F64)
    b = torch.tensor([1.5, 3.0, 0.9], dtype=F64)
    x = torch.tensor([[0.2, 0.5, 0.9], [0.6, 0.1, 0.99]], dtype=F64)

    def f(a, b, x):
        return betainc(a, b, x) * 2.0

    with backends.use("triton"):
        eager = f(a, b, x)
        compiled = torch.compile(f, fullgraph=True, backend="aot_eager")(a, b, x)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)


def test_opcheck_triton_op():
    """torch.library.opcheck of gbs_loss::betainc_triton (schema, fake tensor, dispatch registrations)."""
    a = f64([0.5, 2.0])
    b = f64([1.5, 3.0])
    x = f64([0.2, 0.5, 0.7, 0.9])
    torch.library.opcheck(
        torch.ops.gbs_loss.betainc_triton.default,
        (a, b, x),
        test_utils=("test_schema", "test_faketensor", "test_autograd_registration"),
    )


# --------------------------------------------------------------------------------------------------------
# Launch counts (torch.profiler: leaf aten operators; Triton launches counted by the backend).
# --------------------------------------------------------------------------------------------------------
_LAUNCH_OP = "gbs_loss::betainc_triton_interpreted"


def profile_counts(fn) -> tuple[int, int, list[str]]:
    """``(kernel launches, other leaf aten operators, their names)`` of one call of ``fn``.

    A leaf aten operator is an ``aten::`` event with no ``aten::`` event inside it. Operators inside the
    interpreted launch (the interpreter's own bookkeeping) are not counted: on a GPU the launch is one kernel.
    """
    before = triton_backend.launches()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    launches = triton_backend.launches() - before

    def inside_launch(event) -> bool:
        parent = event.cpu_parent
        while parent is not None:
            if parent.name == _LAUNCH_OP:
                return True
            parent = parent.cpu_parent
        return False

    leaves = [
        e.name
        for e in prof.events()
        if e.name.startswith("aten::")
        and not any(c.name.startswith("aten::") for c in e.cpu_children)
        and not inside_launch(e)
    ]
    return launches, len(leaves), leaves


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "elementwise"])
def test_launch_count_betainc_forward_backward(dtype, shared):
    """One forward + backward: at most 3 Triton launches and at most 40 other leaf aten operators, in float64 and
    in float32 (which the kernel reads and writes itself), with scalar parameters and elementwise ones."""
    gen = torch.Generator().manual_seed(0)
    shape = () if shared else (1000,)
    a = torch.full(shape, 2.0, dtype=dtype).requires_grad_()
    b = torch.full(shape, 3.0, dtype=dtype).requires_grad_()
    x = torch.rand(1000, dtype=dtype, generator=gen).requires_grad_()

    def step():
        betainc(a, b, x).sum().backward()

    with backends.use("triton"):
        step()  # warm-up: the kernel module is loaded at the first call
        launches, leaves, names = profile_counts(step)
    assert 1 <= launches <= 3
    assert leaves <= 40, f"{leaves} leaf aten operators: {sorted(names)}"


def test_launch_count_gbas_beta_priors(monkeypatch):
    """GBaS loss with per-position Beta priors (256 x 196), forward + backward: at most 60 leaf operators in all.

    Only the host side is measured here, so the interpreted kernel (tens of seconds at this size) is replaced by a
    stand-in that fills the output buffer inside the same launch operator. The loss takes its fused Beta node (one
    backend call); the prior is built inside the step, with its default validation (one min/max reduction for both
    parameters and one for the points: a few operators on CPU tensors, device assertions on a GPU). The sort is the
    one of a CUDA tensor (``torch.sort``): on CPU tensors ``gbs_loss._sorting`` would sort packed integer keys
    instead (about 15 more operators), a path that never runs with the Triton backend on a GPU. Measured: 57
    leaf operators and 1 launch.
    """
    from gbs_loss import _sorting, priors
    from gbs_loss.functional import batch_shaping_loss

    def fake_launch(kernel, a, b, x, out, block, num_warps):
        out[0].fill_(0.5)
        out[1:].fill_(0.1)

    monkeypatch.setattr(_sorting, "INT_SORT_MIN", 1 << 62)  # torch.sort, as for CUDA tensors
    monkeypatch.setattr(triton_backend, "_launch", fake_launch)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(256, 196, dtype=torch.float32, generator=gen).clamp(0.01, 0.99).requires_grad_()
    a = (0.5 + torch.rand(196, generator=gen)).requires_grad_()
    b = (0.5 + torch.rand(196, generator=gen)).requires_grad_()

    def step():
        batch_shaping_loss(x, priors.Beta(a, b), validate_args=False).backward()

    with backends.use("triton"):
        step()
        launches, leaves, names = profile_counts(step)
    assert 1 <= launches <= 3
    assert launches + leaves <= 60, f"{launches} launches, {leaves} leaf aten operators: {sorted(names)}"


# --------------------------------------------------------------------------------------------------------
# The kernel compiles for a GPU; the special functions written from builtins.
# --------------------------------------------------------------------------------------------------------
_PROBE_MATH = None  # the interpreted kernel module, set by the test below (the interpreter reads globals)


def _probe(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, _PROBE_MATH.log1p(x), mask=mask)
    tl.store(out_ptr + n + offs, _PROBE_MATH.expm1(x), mask=mask)


def test_log1p_expm1_within_one_ulp():
    """The kernel's log1p and expm1 (from tl.log / tl.exp) within 1 ulp of mpmath, interpreted."""
    global _PROBE_MATH
    mpmath = pytest.importorskip("mpmath")
    _PROBE_MATH = triton_backend._kernels(True)
    kernel = triton.jit(_probe)
    rng = np.random.default_rng(2)
    x = np.concatenate([10.0 ** rng.uniform(-18, 1.5, 150), -(10.0 ** rng.uniform(-18, -1e-6, 150)), [0.0, 1.0]])
    out = torch.empty(2 * len(x), dtype=F64)
    kernel[(1,)](f64(x), out, len(x), BLOCK=512)
    with mpmath.workdps(40):
        ref_l = np.array([float(mpmath.log1p(v)) for v in x])
        ref_e = np.array([float(mpmath.expm1(v)) for v in x])
    for got, ref in ((out[: len(x)].numpy(), ref_l), (out[len(x) :].numpy(), ref_e)):
        ulps = np.abs(got - ref) / np.spacing(np.abs(ref))
        assert np.max(np.where(ref == 0, np.abs(got), ulps)) <= 1.0


def _ptxas_available() -> bool:
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        return os.path.exists(get_ptxas(90).path)
    except Exception:  # noqa: BLE001 - any failure means: cannot compile for NVIDIA here
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _ptxas_available(), reason="Triton's NVIDIA backend (ptxas) is not installed")
def test_kernel_compiles_for_sm90():
    """The kernel compiles to a cubin for an H100/H200 (sm_90) without a GPU, for float64 and for float32 pointers
    (Triton's bundled ptxas; ~15 s of CPU each)."""
    code = (
        "import os\n"
        "os.environ.pop('TRITON_INTERPRET', None)\n"
        "import triton\n"
        "from triton.backends.compiler import GPUTarget\n"
        "from gbs_loss.special.backends import triton as tb\n"
        "m = tb._kernels(False)\n"
        "for ptr, saturate in (('*fp64', False), ('*fp32', True)):\n"
        "    sig = {'a_ptr': ptr, 'b_ptr': ptr, 'x_ptr': ptr, 'out_ptr': ptr, 'n': 'i32', 'm': 'i32',\n"
        "           'max_steps': 'i32', 'series_max_terms': 'i32',\n"
        "           'SATURATE': 'constexpr', 'BLOCK_SIZE': 'constexpr'}\n"
        "    consts = {'SATURATE': saturate, 'BLOCK_SIZE': m.BLOCK}\n"
        "    src = triton.compiler.ASTSource(fn=m.betainc_kernel, signature=sig, constexprs=consts)\n"
        "    c = triton.compile(src, target=GPUTarget('cuda', 90, 32), options={'num_warps': m.NUM_WARPS})\n"
        "    assert c.asm.get('cubin'), ptr\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-4000:]


# --------------------------------------------------------------------------------------------------------
# The GPU benchmark script runs end to end (on CPU, interpreted, tiny sizes).
# --------------------------------------------------------------------------------------------------------
def test_bench_gpu_quick_on_cpu(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_gpu.py"),
            "--device",
            "cpu",
            "--quick",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert (tmp_path / "bench_gpu.md").is_file() and (tmp_path / "bench_gpu.json").is_file()
    import json

    report = json.loads((tmp_path / "bench_gpu.json").read_text())
    errors = [row for row in report["rows"] if row.get("error")]
    assert not [row for row in errors if row["impl"].startswith(("gbs_loss", "Beta", "Relaxed"))], errors
