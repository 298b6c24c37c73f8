"""The native (C) backend of :func:`gbs_loss.betainc` on CPU: the whole per-element computation in one call.

``gbs_loss/csrc/betainc.c`` computes, for every element, the value of :math:`I_x(a, b)` and its three partial
derivatives: the parameter terms (log-beta, Stirling differences, digamma differences without cancellation,
:math:`\\log\\Gamma(1 + p)` for small ``p``), the prefactor (TOMS 708 ``brcomp`` style, with :math:`\\lambda` in
double-double arithmetic), the continued fraction with forward-mode derivatives, the complement series, the ends
and the invalid inputs. It is the same algorithm as the torch-operator reference (:mod:`gbs_loss.special`), written
for one element at a time: each element's state stays in registers and stops at its own convergence. Elements are
spread over OpenMP threads (``torch.get_num_threads()`` of them), and the results do not depend on their number.

The source is compiled at first use with the system C compiler and cached on disk (see
:mod:`gbs_loss.special.backends._build`); it is called through :mod:`ctypes`, which releases the GIL. When there is
no compiler or the build fails, :func:`available` is False and :func:`unavailable_reason` says why; the dispatcher
(:mod:`gbs_loss.special.backends`) then uses the reference. This module does not read ``GBS_LOSS_BACKEND``.

Backend contract (shared with the Triton backend): :func:`betainc_with_grads` takes float64 CPU tensors, ``x``
contiguous 1-D of length ``n`` and ``a``, ``b`` contiguous 1-D of one length ``m`` with ``n % m == 0``; element
``i`` uses ``a[i % m]``, ``b[i % m]`` (the parameter terms are then computed once per pair). It returns four
contiguous float64 1-D tensors of length ``n``: the value and the derivatives with respect to ``a``, ``b``, ``x``.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import torch
from torch import Tensor

from gbs_loss.special import _constants as C
from gbs_loss.special.backends._build import BuildError, load_library

__all__ = ["available", "betainc_with_grads", "has_openmp", "library_path", "unavailable_reason"]

NAME = "native"
_SOURCE = Path(__file__).resolve().parents[2] / "csrc" / "betainc.c"
_ABI_VERSION = 3
_LOCK = threading.Lock()
_F64 = torch.float64
# (function, path, reason): filled by the first call of _load.
_STATE: dict[str, object] = {}


def _load() -> ctypes._CFuncPtr | None:
    """Build (once per machine) and load the kernel once per process; the C function, or None."""
    fn = _STATE.get("fn", False)
    if fn is not False:
        return fn  # type: ignore[return-value]
    with _LOCK:
        if "fn" in _STATE:
            return _STATE["fn"]  # type: ignore[return-value]
        try:
            lib, path = load_library(_SOURCE, "betainc", _ABI_VERSION, "gbs_betainc_abi_version")
        except (BuildError, OSError) as exc:
            _STATE.update(fn=None, path=None, reason=str(exc), openmp=False)
            return None
        lib.gbs_betainc_large.restype = ctypes.c_double
        if lib.gbs_betainc_large() != C.LARGE:
            reason = f"{path}: built with LARGE = {lib.gbs_betainc_large()}, _constants.LARGE = {C.LARGE}"
            _STATE.update(fn=None, path=None, reason=reason, openmp=False)
            return None
        vp, i64, dbl = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
        fn = lib.gbs_betainc
        fn.restype = ctypes.c_int
        fn.argtypes = [i64, i64, *([vp] * 7), i64, dbl, dbl, i64, dbl, dbl, ctypes.c_int]
        _STATE.update(fn=fn, path=str(path), reason=None, openmp=bool(lib.gbs_betainc_has_openmp()))
        return fn


def available() -> bool:
    """Whether the native kernel can run here: it is built (at the first call) and loaded. Never raises."""
    return _load() is not None


def unavailable_reason() -> str | None:
    """Why :func:`available` is False (the compiler, the command and its error output); None when it is True."""
    _load()
    return _STATE.get("reason")  # type: ignore[return-value]


def library_path() -> str | None:
    """Path of the loaded shared library, or None when the kernel is unavailable."""
    _load()
    return _STATE.get("path")  # type: ignore[return-value]


def has_openmp() -> bool:
    """Whether the loaded library was built with OpenMP (else it runs on one thread)."""
    _load()
    return bool(_STATE.get("openmp", False))


def betainc_with_grads(a: Tensor, b: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(I_x(a, b), dI/da, dI/db, dI/dx)`` by the native kernel, one call for all elements.

    Args:
        a, b: Contiguous float64 CPU tensors of shape ``(m,)``.
        x: Contiguous float64 CPU tensor of shape ``(n,)``, ``n % m == 0``; element ``i`` uses ``a[i % m]``,
            ``b[i % m]``.

    Returns:
        Four contiguous float64 tensors of shape ``(n,)``. Invalid inputs (``a <= 0``, ``b <= 0``, non-finite
        parameters, ``x`` outside ``[0, 1]`` or NaN) and elements whose continued fraction or series has not
        converged within the caps of :mod:`gbs_loss.special._constants` give NaN in all four.

    Raises:
        RuntimeError: the kernel is unavailable (check :func:`available` first).
        ValueError: the arguments break the contract above.
    """
    fn = _STATE.get("fn") or _load()
    if fn is None:
        raise RuntimeError(f"the native betainc kernel is unavailable: {_STATE.get('reason')}")
    n, m = x.numel(), a.numel()
    for t in (a, b, x):
        if t.dtype != _F64 or not t.is_cpu or t.dim() != 1 or not t.is_contiguous():
            raise ValueError("native betainc expects contiguous 1-D float64 CPU tensors")
    if b.numel() != m or (n > 0 and (m == 0 or n % m != 0)):
        raise ValueError(f"native betainc: a and b must have one length m dividing len(x), got {m}, {b.numel()}, {n}")
    out = torch.empty((4, n), dtype=_F64)
    if n > 0:
        value, d_a, d_b, d_x = out.unbind(0)
        status = fn(
            n,
            m,
            a.data_ptr(),
            b.data_ptr(),
            x.data_ptr(),
            value.data_ptr(),
            d_a.data_ptr(),
            d_b.data_ptr(),
            d_x.data_ptr(),
            C.MAX_STEPS,
            C.TOL,
            C.TINY,
            C.SERIES_MAX_TERMS,
            C.SERIES_TOL,
            C.SERIES_P_MAX,
            torch.get_num_threads(),
        )
        if status != 0:
            raise MemoryError("native betainc: could not allocate the parameter terms")
        return value, d_a, d_b, d_x
    return out[0], out[1], out[2], out[3]
