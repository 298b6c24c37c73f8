"""Test support for ``betainc`` and its backends: the mpmath oracle, error measures, and the backend contract checks.

Imported by ``tests/test_betainc.py``, ``tests/test_fast_paths.py`` and the backend test files
(``tests/test_backend_native.py``, ``tests/test_backend_triton.py``)::

    from _support import check_backend_against_oracle, check_backends_agree

Oracle: ``tests/data/betainc_oracle.npz``, I_x(a, b), dI/da, dI/db and dI/dx computed with mpmath at 50 digits by
``scripts/make_betainc_oracle.py`` on seeded points in named regions (every a, b and, except where flagged, x
exactly representable in float32, so one table serves both dtypes).

Relative errors are ``|got - ref| / max(|ref|, floor)`` with ``floor = tiny / 1e-12`` in float64 and
``tiny / 1e-5`` in float32 (``tiny``: the smallest normal number of the dtype; 1e-12 and 1e-5: the value
tolerances). Below the floor a result is only required to be within about ``tiny`` of the reference in absolute
terms. NaN or infinite results count as an infinite error.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from scipy import special

from gbs_loss import betainc
from gbs_loss.special import backends

__all__ = [
    "DATA",
    "F64",
    "QUANTITIES",
    "TOLERANCE",
    "backend_results",
    "check_backend_against_oracle",
    "check_backends_agree",
    "contract_results",
    "log_uniform",
    "masked_torch_backend",
    "oracle",
    "oracle_module",
    "oracle_subset",
    "region_names",
    "rel_err",
    "report",
    "value_and_grads",
    "wide_grid",
]

DATA = Path(__file__).parent / "data" / "betainc_oracle.npz"
QUANTITIES = ("value", "d_a", "d_b", "d_x")
TOLERANCE = {
    torch.float64: {"value": 1e-12, "d_a": 1e-11, "d_b": 1e-11, "d_x": 1e-11},
    torch.float32: {"value": 1e-5, "d_a": 1e-4, "d_b": 1e-4, "d_x": 1e-4},
}
F64 = torch.float64

Backend = str | Callable


def rel_err(got: np.ndarray, ref: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """Relative error with the floor of the module docstring; NaN or inf results count as inf."""
    floor = torch.finfo(dtype).tiny / TOLERANCE[dtype]["value"]
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(got - ref) / np.maximum(np.abs(ref), floor)
    return np.where(np.isfinite(got) & np.isfinite(err), err, np.inf)


def value_and_grads(a, b, x, dtype: torch.dtype = F64) -> dict[str, np.ndarray]:
    """I_x(a, b) and its three partial derivatives through the public API (float64 numpy arrays)."""
    ta, tb, tx = (torch.tensor(np.asarray(v, dtype=np.float64), dtype=dtype, requires_grad=True) for v in (a, b, x))
    out = betainc(ta, tb, tx)
    out.backward(torch.ones_like(out))
    return {
        "value": out.detach().double().numpy(),
        "d_a": ta.grad.double().numpy(),
        "d_b": tb.grad.double().numpy(),
        "d_x": tx.grad.double().numpy(),
    }


def contract_results(fn: Callable, a, b, x) -> dict[str, np.ndarray]:
    """Call a backend's ``betainc_with_grads`` directly (float64, elementwise) and return numpy arrays."""
    ta, tb, tx = (torch.tensor(np.asarray(v, dtype=np.float64)) for v in (a, b, x))
    outs = fn(ta, tb, tx)
    assert len(outs) == 4
    for t in outs:
        assert t.dtype == F64 and t.shape == tx.shape and t.is_contiguous()
    return {q: t.numpy() for q, t in zip(QUANTITIES, outs, strict=True)}


def backend_results(backend: Backend, a, b, x, dtype: torch.dtype = F64) -> dict[str, np.ndarray]:
    """Results of one backend: a name (``"torch"``, ``"native"``, ``"triton"``: through the public API under
    :func:`gbs_loss.special.backends.use`, any dtype) or a ``betainc_with_grads`` callable (float64 only)."""
    if callable(backend):
        assert dtype == F64, "a contract function is float64 only; pass a backend name for other dtypes"
        return contract_results(backend, a, b, x)
    with backends.use(backend):
        return value_and_grads(a, b, x, dtype)


def report(errors: dict[str, np.ndarray], tol: dict[str, float], points, got, ref, label: str) -> list[str]:
    """Messages for the quantities whose largest error exceeds its tolerance, with the worst points."""
    a, b, x = points
    lines = []
    for q, err in errors.items():
        if not err.max(initial=0.0) <= tol[q]:
            lines.append(f"{label} {q}: max rel. error {err.max():.3e} > {tol[q]:.0e}")
            for i in np.argsort(-err)[:5]:
                if err[i] > tol[q]:
                    lines.append(
                        f"    a={a[i]!r} b={b[i]!r} x={x[i]!r}: got {got[q][i]!r}, ref {ref[q][i]!r}, "
                        f"rel. error {err[i]:.3e}"
                    )
    return lines


@functools.cache
def oracle_module():
    """scripts/make_betainc_oracle.py, whose ``oracle_point(a, b, x, digits)`` computes I and its gradients."""
    path = Path(__file__).resolve().parents[1] / "scripts" / "make_betainc_oracle.py"
    spec = importlib.util.spec_from_file_location("make_betainc_oracle", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def oracle() -> dict[str, np.ndarray]:
    with np.load(DATA) as f:
        return {k: f[k] for k in f.files}


def region_names() -> list[str]:
    return [str(r) for r in oracle()["region_names"]]


def oracle_subset(per_region: int | None = None, dtype: torch.dtype = F64) -> np.ndarray:
    """Indices into the oracle: every point usable in ``dtype``, or ``per_region`` spread evenly over each region.

    The subset covers every region (the worst points of a region are not singled out: evenly spaced rows of a
    seeded table).
    """
    o = oracle()
    usable = o["f32"] if dtype == torch.float32 else np.ones(len(o["a"]), dtype=bool)
    if per_region is None:
        return np.flatnonzero(usable)
    picks = []
    for r in range(len(region_names())):
        members = np.flatnonzero((o["region"] == r) & usable)
        take = np.linspace(0, len(members) - 1, min(per_region, len(members))).round().astype(int)
        picks.append(members[np.unique(take)])
    return np.concatenate(picks)


def check_backend_against_oracle(
    backend: Backend,
    dtype: torch.dtype = F64,
    regions: Iterable[str] | None = None,
    per_region: int | None = None,
    label: str | None = None,
) -> dict[str, float]:
    """Assert the accuracy contract of one backend on the oracle table; return the largest error per quantity.

    Args:
        backend: A backend name (run through the public API, so float32 and the backward are covered too) or a
            ``betainc_with_grads`` contract function (float64).
        dtype: float64 (value 1e-12, gradients 1e-11) or float32 (1e-5, 1e-4; the float32-exact points only).
        regions: Region names to check (default: all).
        per_region: At most this many points per region (evenly spread), e.g. for the Triton interpreter.
        label: Prefix of the failure messages.
    """
    o = oracle()
    names = region_names()
    idx = oracle_subset(per_region, dtype)
    if regions is not None:
        wanted = [names.index(r) for r in regions]
        idx = idx[np.isin(o["region"][idx], wanted)]
    pts = tuple(o[k][idx] for k in ("a", "b", "x"))
    got = backend_results(backend, *pts, dtype=dtype)
    ref = {q: o[q][idx] for q in QUANTITIES}
    label = label or (backend if isinstance(backend, str) else getattr(backend, "__module__", "backend"))
    lines = []
    worst = {q: 0.0 for q in QUANTITIES}
    for r in sorted(set(o["region"][idx].tolist())):
        sel = o["region"][idx] == r
        errors = {q: rel_err(got[q][sel], ref[q][sel], dtype) for q in QUANTITIES}
        for q in QUANTITIES:
            worst[q] = max(worst[q], float(errors[q].max()))
        sub = tuple(p[sel] for p in pts)
        lines += report(
            errors,
            TOLERANCE[dtype],
            sub,
            {q: got[q][sel] for q in QUANTITIES},
            {q: ref[q][sel] for q in QUANTITIES},
            f"{label} {names[r]} {dtype}",
        )
    assert not lines, "\n".join(lines)
    return worst


def check_backends_agree(
    first: Backend, second: Backend, points, rtol: float = 1e-13, grad_rtol: float = 1e-12
) -> dict[str, float]:
    """Assert that two backends agree on ``points`` (float64); return the largest difference per quantity.

    Allowed: ``rtol`` relative for the value and ``grad_rtol`` for the gradients (relative errors with the float64
    floor), plus ``4 eps |ln|v||``: a result ``v = exp(L)`` far in a tail (``|L|`` in the hundreds) is defined by
    its exponent only to a few ulps of ``L``, whatever the implementation. NaN must appear at the same elements.
    Measured between the native and torch backends on 3000 points of :func:`wide_grid`: values within 1e-13 plus
    that allowance, gradients within 6e-13 (where both are within 6.3e-13 of mpmath).
    """
    one = backend_results(first, *points)
    two = backend_results(second, *points)
    eps = float(np.finfo(np.float64).eps)
    lines = []
    worst = {}
    for q in QUANTITIES:
        nan1, nan2 = np.isnan(one[q]), np.isnan(two[q])
        assert np.array_equal(nan1, nan2), f"{q}: NaN at different elements ({nan1.sum()} vs {nan2.sum()})"
        ref = two[q][~nan1]
        err = rel_err(one[q][~nan1], ref, F64)
        with np.errstate(divide="ignore"):
            exponent = np.where(ref != 0, np.abs(np.log(np.abs(ref))), 0.0)
        allowed = (rtol if q == "value" else grad_rtol) + 4 * eps * exponent
        worst[q] = float(err.max(initial=0.0))
        if not np.all(err <= allowed):
            i = int(np.argmax(err / allowed))
            a, b, x = (np.asarray(p)[~nan1][i] for p in points)
            lines.append(f"{q}: {err[i]:.2e} > {allowed[i]:.1e} at a={a!r} b={b!r} x={x!r}")
    assert not lines, "\n".join(lines)
    return worst


def log_uniform(rng: np.random.Generator, lo: float, hi: float, n: int) -> np.ndarray:
    return np.exp(rng.uniform(math.log(lo), math.log(hi), n))


def wide_grid(seed: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """a, b log-uniform in [1e-3, 1e5]; x uniform, at Beta quantiles, and log-uniform towards both ends."""
    rng = np.random.default_rng(seed)
    a, b = log_uniform(rng, 1e-3, 1e5, n), log_uniform(rng, 1e-3, 1e5, n)
    kind = rng.integers(4, size=n)
    q = special.betaincinv(a, b, rng.uniform(0.001, 0.999, n))
    x = np.select(
        [kind == 0, kind == 1, kind == 2],
        [rng.uniform(0.0, 1.0, n), q, log_uniform(rng, 1e-12, 1e-3, n)],
        1.0 - log_uniform(rng, 1e-12, 1e-3, n),
    )
    keep = (x > 0) & (x < 1)
    return a[keep], b[keep], x[keep]


def masked_torch_backend():
    """Context in which the torch backend runs its accelerator (masked, chunked) mode on every device."""
    from gbs_loss.special.backends import torch_ops

    return torch_ops._forced_mode("masked")
