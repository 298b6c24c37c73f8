"""The native (C) backend of `gbs_loss.betainc` on CPU: the whole per-element computation in one call.

``gbs_loss/csrc/betainc.c`` computes, for every element, the value of $I_x(a, b)$ and its three partial
derivatives: the parameter terms (log-beta, Stirling differences, digamma differences without cancellation,
$\\log\\Gamma(1 + p)$ for small ``p``), the prefactor (TOMS 708 ``brcomp`` style, with $\\lambda$ in
double-double arithmetic), the continued fraction with forward-mode derivatives, the complement series, the ends
and the invalid inputs. It is the same algorithm as the torch-operator reference (`gbs_loss.special`), written
for one element at a time: each element's state stays in registers and stops at its own convergence. Elements are
spread over OpenMP threads (``torch.get_num_threads()`` of them), and the results do not depend on their number.

The source is compiled at first use with the system C compiler and cached on disk (see
`gbs_loss.special.backends._build`); it is called through `ctypes`, which releases the GIL. When there is
no compiler or the build fails, `available` is False and `unavailable_reason` says why; the dispatcher
(`gbs_loss.special.backends`) then uses the reference. This module does not read ``GBS_LOSS_BACKEND``.

Backend contract (shared with the Triton backend): `betainc_with_grads` takes CPU tensors of one dtype, float64
or float32, ``x`` contiguous 1-D of length ``n`` and ``a``, ``b`` contiguous 1-D of one length ``m`` with
``n % m == 0``; element ``i`` uses ``a[i % m]``, ``b[i % m]`` (the parameter terms are then computed once per
pair). It returns four contiguous 1-D tensors of length ``n`` in that dtype: the value and the derivatives with
respect to ``a``, ``b``, ``x``. float32 inputs are read and the float32 results written by the kernel itself
(computed in float64, rounded once): no conversion pass.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from pathlib import Path
from typing import cast

import torch
from torch import Tensor

from gbs_loss.special import _constants as C
from gbs_loss.special.backends._build import BuildError, load_library

__all__ = ["available", "betainc_block", "betainc_with_grads", "has_openmp", "library_path", "unavailable_reason"]

NAME = "native"
_SOURCE = Path(__file__).resolve().parents[2] / "csrc" / "betainc.c"
_ABI_VERSION = 4
_LOCK = threading.Lock()
_DTYPES = (torch.float64, torch.float32)
# The loaded C function ``gbs_betainc`` (a ctypes function pointer whose result is a C int status).
_Kernel = Callable[..., int]
# (function, path, reason): filled by the first call of _load.
_STATE: dict[str, object] = {}


def _load() -> _Kernel | None:
    """Build (once per machine) and load the kernel once per process; the C function, or None."""
    fn = _STATE.get("fn", False)
    if fn is not False:
        return cast("_Kernel | None", fn)
    with _LOCK:
        if "fn" in _STATE:
            return cast("_Kernel | None", _STATE["fn"])
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
        kernel = lib.gbs_betainc
        kernel.restype = ctypes.c_int
        kernel.argtypes = [i64, i64, *([vp] * 7), ctypes.c_int, i64, dbl, dbl, i64, dbl, dbl, ctypes.c_int]
        _STATE.update(fn=kernel, path=str(path), reason=None, openmp=bool(lib.gbs_betainc_has_openmp()))
        return cast("_Kernel", kernel)


def available() -> bool:
    """Whether the native kernel can run here: it is built (at the first call) and loaded. Never raises.

    Example:
        >>> from gbs_loss.special.backends import native
        >>> native.available() == (native.library_path() is not None)  # available where a C compiler is found
        True
    """
    return _load() is not None


def unavailable_reason() -> str | None:
    """Why `available` is False (the compiler, the command and its error output); None when it is True.

    Example:
        >>> from gbs_loss.special.backends import native
        >>> (native.unavailable_reason() is None) == native.available()
        True
    """
    _load()
    return cast("str | None", _STATE.get("reason"))


def library_path() -> str | None:
    """Path of the loaded shared library, or None when the kernel is unavailable.

    Example:
        >>> from gbs_loss.special.backends import native
        >>> path = native.library_path()  # e.g. "~/.cache/gbs_loss/betainc-0bb3edf1423016e3.so"
        >>> path is None or path.endswith(".so")
        True
    """
    _load()
    return cast("str | None", _STATE.get("path"))


def has_openmp() -> bool:
    """Whether the loaded library was built with OpenMP (else it runs on one thread).

    Example:
        >>> from gbs_loss.special.backends import native
        >>> native.has_openmp() in (True, False)  # True with gcc, and with clang where libomp is installed
        True
    """
    _load()
    return bool(_STATE.get("openmp", False))


def betainc_with_grads(a: Tensor, b: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(I_x(a, b), dI/da, dI/db, dI/dx)`` by the native kernel, one call for all elements.

    Args:
        a, b: Contiguous CPU tensors of shape ``(m,)``.
        x: Contiguous CPU tensor of shape ``(n,)``, ``n % m == 0``; element ``i`` uses ``a[i % m]``,
            ``b[i % m]``. All three float64, or all three float32 (read as they are: computed in float64,
            rounded once, derivatives saturated at the largest finite float32).

    Returns:
        Four contiguous tensors of shape ``(n,)`` and of the inputs' dtype, the rows of one ``(4, n)`` buffer.
        Invalid inputs (``a <= 0``, ``b <= 0``, non-finite parameters, ``x`` outside ``[0, 1]`` or NaN) and
        elements whose continued fraction or series has not converged within the caps of
        `gbs_loss.special._constants` give NaN in all four.

    Raises:
        RuntimeError: the kernel is unavailable (check `available` first).
        ValueError: the arguments break the contract above.

    Example:
        >>> import torch
        >>> from gbs_loss.special.backends import native, torch_ops
        >>> a = torch.tensor([2.0], dtype=torch.float64)
        >>> b = torch.tensor([3.0], dtype=torch.float64)
        >>> x = torch.tensor([0.25, 0.5], dtype=torch.float64)
        >>> backend = native if native.available() else torch_ops  # native needs a C compiler
        >>> value, d_a, d_b, d_x = backend.betainc_with_grads(a, b, x)
        >>> value
        tensor([0.2617, 0.6875], dtype=torch.float64)
    """
    n, m = x.numel(), a.numel()
    dtype = x.dtype
    if (
        dtype not in _DTYPES
        or a.dtype != dtype
        or b.dtype != dtype
        or not (a.is_cpu and b.is_cpu and x.is_cpu)
        or not (a.dim() == b.dim() == x.dim() == 1)
        or not (a.is_contiguous() and b.is_contiguous() and x.is_contiguous())
    ):
        raise ValueError("native betainc expects contiguous 1-D CPU tensors, all float64 or all float32")
    if b.numel() != m or (n > 0 and (m == 0 or n % m != 0)):
        raise ValueError(f"native betainc: a and b must have one length m dividing len(x), got {m}, {b.numel()}, {n}")
    value, d_a, d_b, d_x = betainc_block(a, b, x).unbind(0)
    return value, d_a, d_b, d_x


def betainc_block(a: Tensor, b: Tensor, x: Tensor) -> Tensor:
    """`betainc_with_grads` as one ``(4, n)`` tensor (rows: the value and the three derivatives), for callers
    that already hold the contract (the operator layer): the arguments are not checked again.

    Raises:
        RuntimeError: the kernel is unavailable.

    Example:
        >>> import torch
        >>> from gbs_loss.special.backends import native
        >>> one = torch.ones(1, dtype=torch.float32)
        >>> native.betainc_block(2 * one, 3 * one, one / 2) if native.available() else torch.tensor([[0.6875]])
        tensor([[ 0.6875],
                [-0.1953],
                [ 0.1541],
                [ 1.5000]])
    """
    fn = cast("_Kernel | None", _STATE.get("fn")) or _load()
    if fn is None:
        raise RuntimeError(f"the native betainc kernel is unavailable: {_STATE.get('reason')}")
    n = x.numel()
    out = torch.empty((4, n), dtype=x.dtype)
    if n > 0:
        base, row = out.data_ptr(), n * out.element_size()
        status = fn(
            n,
            a.numel(),
            a.data_ptr(),
            b.data_ptr(),
            x.data_ptr(),
            base,
            base + row,
            base + 2 * row,
            base + 3 * row,
            x.dtype is torch.float32,
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
    return out
