"""The optional native (C) kernel of :func:`gbs_loss.betainc` on CPU, built at first use.

The continued fraction at the heart of :func:`gbs_loss.betainc` runs a few dozen dependent steps per element.
In PyTorch each step is some sixty elementwise operations over the whole working set, so on CPU the time goes
into memory traffic and per-operation overhead rather than arithmetic. ``csrc/cfrac.c`` is the same loop
written for one element at a time: its state stays in registers and each element stops as soon as it has
converged. It is compiled here, the first time it is needed, with the system C compiler (``$CC``, else
``cc``, ``gcc`` or ``clang``), with OpenMP where the compiler has it, into a cache folder, and called through
:mod:`ctypes` (which releases the GIL). The source is plain C99 with no PyTorch headers, so a build takes
about a tenth of a second.

Nothing here is required: when no compiler is found, the build fails, or the environment variable
``GBS_LOSS_NATIVE`` is ``0``, :func:`gbs_loss.betainc` runs the same algorithm in PyTorch operations, with
results that agree to a few units in the last place. Accelerators always use the PyTorch operations.

Environment:
    ``GBS_LOSS_NATIVE``: ``0`` disables the native kernel (read at each call).
    ``GBS_LOSS_CACHE_DIR``: where the shared library is kept (default ``$XDG_CACHE_HOME/gbs_loss``, else
    ``~/.cache/gbs_loss``, else a temporary folder).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["NativeUnavailable", "cfrac", "complement_sums", "enabled", "library_path", "load"]

_SOURCE = Path(__file__).resolve().parent / "csrc" / "cfrac.c"
_ABI_VERSION = 2
_BASE_FLAGS = ("-O2", "-fPIC", "-shared", "-std=c99", "-ffp-contract=off", "-fno-fast-math")
_LOCK = threading.Lock()


class NativeUnavailable(RuntimeError):
    """Raised by :func:`load` when the native kernel cannot be built or loaded; the message says why."""


def enabled() -> bool:
    """Whether the native kernel may be used: ``GBS_LOSS_NATIVE`` is not ``0`` and the kernel loads."""
    if os.environ.get("GBS_LOSS_NATIVE", "1").strip() == "0":
        return False
    try:
        load()
    except NativeUnavailable:
        return False
    return True


def _cache_dir() -> Path:
    env = os.environ.get("GBS_LOSS_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "gbs_loss" if xdg else Path.home() / ".cache" / "gbs_loss"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name.split()[0]):
            return name
    return None


def _build(compiler: str, folder: Path) -> Path:
    """Compile the source into ``folder``; with OpenMP when the compiler accepts ``-fopenmp``."""
    source = _SOURCE.read_bytes()
    tag = f"{sys.platform}-{platform.machine()}-{sysconfig.get_config_var('SOABI')}-{compiler}"
    errors = []
    for extra in (("-fopenmp",), ()):
        flags = (*_BASE_FLAGS, *extra)
        key = hashlib.sha256(source + repr((tag, flags, _ABI_VERSION)).encode()).hexdigest()[:16]
        target = folder / f"cfrac-{key}.so"
        if target.exists():
            return target
        folder.mkdir(parents=True, exist_ok=True)
        # Build under a private name and rename into place, so that concurrent processes never see half a file.
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
        os.close(fd)
        cmd = [*compiler.split(), *flags, "-o", tmp, str(_SOURCE), "-lm"]
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as exc:
            errors.append(f"{' '.join(cmd)}: {exc}")
            Path(tmp).unlink(missing_ok=True)
            continue
        if result.returncode == 0:
            os.replace(tmp, target)
            return target
        Path(tmp).unlink(missing_ok=True)
        errors.append(f"{' '.join(cmd)}: exit {result.returncode}: {result.stderr.strip()[-500:]}")
    raise NativeUnavailable("could not compile the native kernel: " + " | ".join(errors))


@functools.lru_cache(maxsize=1)
def _load_cached() -> tuple[ctypes.CDLL | None, str]:
    compiler = _compiler()
    if compiler is None:
        return None, "no C compiler found (set CC, or install cc, gcc or clang)"
    folders = [_cache_dir(), Path(tempfile.gettempdir()) / f"gbs_loss-{os.getuid() if hasattr(os, 'getuid') else 0}"]
    reasons = []
    for folder in folders:
        try:
            path = _build(compiler, folder)
            lib = ctypes.CDLL(str(path))
        except (NativeUnavailable, OSError) as exc:
            reasons.append(f"{folder}: {exc}")
            continue
        if lib.gbs_cfrac_abi_version() != _ABI_VERSION:
            reasons.append(f"{path}: ABI version {lib.gbs_cfrac_abi_version()}, expected {_ABI_VERSION}")
            continue
        vp = ctypes.c_void_p
        lib.gbs_cfrac.restype = None
        lib.gbs_cfrac.argtypes = [
            ctypes.c_int64,
            *([vp] * 5),
            ctypes.c_int64,
            ctypes.c_double,
            ctypes.c_double,
            *([vp] * 4),
            ctypes.c_int,
        ]
        lib.gbs_complement_sums.restype = None
        lib.gbs_complement_sums.argtypes = [ctypes.c_int64, *([vp] * 3), ctypes.c_int64, *([vp] * 3)]
        return lib, str(path)
    return None, "; ".join(reasons)


def load() -> ctypes.CDLL:
    """Build (once per machine) and load the native kernel.

    Raises:
        NativeUnavailable: no compiler, or the build or the load failed; the message gives the reason.
    """
    with _LOCK:
        lib, info = _load_cached()
    if lib is None:
        raise NativeUnavailable(info)
    return lib


def library_path() -> str | None:
    """Path of the loaded shared library, or ``None`` when the native kernel is unavailable."""
    try:
        load()
    except NativeUnavailable:
        return None
    return _load_cached()[1]


def cfrac(
    p: Tensor, q: Tensor, x: Tensor, y: Tensor, lam: Tensor, max_steps: int, tol: float, tiny: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Run ``csrc/cfrac.c`` on contiguous float64 CPU tensors of one shape.

    Returns ``(log G, d log G / dp, d log G / dq, converged)`` as in
    :func:`gbs_loss.special._continued_fraction`.
    """
    lib = load()
    p, q, x, y, lam = (t.contiguous() for t in (p, q, x, y, lam))
    log_g, dp, dq = torch.empty_like(x), torch.empty_like(x), torch.empty_like(x)
    converged = torch.empty(x.shape, dtype=torch.uint8)
    lib.gbs_cfrac(
        x.numel(),
        p.data_ptr(),
        q.data_ptr(),
        x.data_ptr(),
        y.data_ptr(),
        lam.data_ptr(),
        max_steps,
        tol,
        tiny,
        log_g.data_ptr(),
        dp.data_ptr(),
        dq.data_ptr(),
        converged.data_ptr(),
        max(1, torch.get_num_threads()),
    )
    return log_g, dp, dq, converged.bool()


def complement_sums(p: Tensor, q: Tensor, xx: Tensor, terms: int) -> tuple[Tensor, Tensor, Tensor]:
    """Run ``gbs_complement_sums`` on float64 CPU tensors of one shape: ``(T, dT/dp, dT/dq)``.

    The sums of :func:`gbs_loss.special._complement_series`, over ``terms`` terms.
    """
    lib = load()
    p, q, xx = (t.contiguous() for t in (p, q, xx))
    big_t, dt_p, dt_q = torch.empty_like(xx), torch.empty_like(xx), torch.empty_like(xx)
    lib.gbs_complement_sums(
        xx.numel(), p.data_ptr(), q.data_ptr(), xx.data_ptr(), terms, big_t.data_ptr(), dt_p.data_ptr(), dt_q.data_ptr()
    )
    return big_t, dt_p, dt_q
