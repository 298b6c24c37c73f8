"""Build-at-first-use of a small C99 source into a shared library, cached on disk and loaded with `ctypes`.

Used by the native backend (`gbs_loss.special.backends.native`). The source has no Python or PyTorch
headers, so a build takes a fraction of a second with the system C compiler:

* the compiler is ``$CC`` if set, else the first of ``cc``, ``gcc``, ``clang`` on the ``PATH``;
* the flags are fixed (``-O2 -std=c99 -ffp-contract=off -fno-fast-math``: no fused multiply-add and no
  reassociation, so that results are reproducible and follow the reference operation by operation), with
  ``-fopenmp`` when the compiler accepts it, else without, and ``-mavx`` on x86-64 processors that have AVX
  (`isa_flags`: wider vector registers, the same IEEE operations; the flag is part of the library's name, so a
  cache folder shared by machines with and without AVX holds one build for each);
* the library's name carries a hash of the source, the flags, the compiler, the platform and an ABI version,
  so that any change gives a new build and stale libraries are never loaded;
* it is built under a private temporary name and renamed into place, so that concurrent processes never load
  half a file;
* the cache folder is ``$GBS_LOSS_CACHE_DIR``, else ``$XDG_CACHE_HOME/gbs_loss``, else ``~/.cache/gbs_loss``;
  when that cannot be written, a folder in the system's temporary directory.

Every failure raises `BuildError` whose message lists each attempt and why it failed.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["BASE_FLAGS", "BuildError", "cache_dirs", "find_compiler", "isa_flags", "load_library"]

BASE_FLAGS: tuple[str, ...] = ("-O2", "-fPIC", "-shared", "-std=c99", "-ffp-contract=off", "-fno-fast-math")


class BuildError(RuntimeError):
    """The library could not be compiled or loaded; the message says why.

    Example:
        >>> from pathlib import Path
        >>> from gbs_loss.special.backends._build import BuildError, load_library
        >>> try:
        ...     load_library(Path("no_such_source.c"), "missing", 1, "abi_version")
        ... except BuildError as exc:
        ...     print(type(exc).__name__)
        BuildError
    """


def cache_dirs() -> list[Path]:
    """Folders to build into, in order of preference (see the module docstring).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from gbs_loss.special.backends._build import cache_dirs
        >>> cache_dirs()[-1].parent == Path(tempfile.gettempdir())  # the last resort
        True
    """
    env = os.environ.get("GBS_LOSS_CACHE_DIR")
    if env:
        first = Path(env)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        first = Path(xdg) / "gbs_loss" if xdg else Path.home() / ".cache" / "gbs_loss"
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return [first, Path(tempfile.gettempdir()) / f"gbs_loss-{uid}"]


def find_compiler() -> str | None:
    """``$CC`` when set and found, else the first of ``cc``, ``gcc``, ``clang`` on the ``PATH``; None if none.

    Example:
        >>> import shutil
        >>> from gbs_loss.special.backends._build import find_compiler
        >>> compiler = find_compiler()  # "cc" on most Linux machines
        >>> compiler is None or shutil.which(compiler.split()[0]) is not None
        True
    """
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and name.split() and shutil.which(name.split()[0]):
            return name
    return None


def isa_flags() -> tuple[str, ...]:
    """Instruction-set flags for this processor: ``("-mavx",)`` on x86-64 Linux processors with AVX, else none.

    Read from ``/proc/cpuinfo`` (the library is built and run on the same machine); anything unreadable means no
    flag, which is always safe.

    Example:
        >>> from gbs_loss.special.backends._build import isa_flags
        >>> isa_flags() in ((), ("-mavx",))
        True
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return ()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("flags"):
                    return ("-mavx",) if "avx" in line.split(":", 1)[-1].split() else ()
    except OSError:
        pass
    return ()


def _compile(source: Path, stem: str, compiler: str, folder: Path, abi: int) -> tuple[Path, bool]:
    """Compile ``source`` into ``folder`` (or find it there); ``(path, with_openmp)``."""
    text = source.read_bytes()
    tag = f"{sys.platform}-{platform.machine()}-{sysconfig.get_config_var('SOABI')}-{compiler}"
    errors = []
    isa = isa_flags()
    attempts = [("-fopenmp", *isa), isa, ("-fopenmp",), ()]
    for extra in dict.fromkeys(attempts):  # in order, without repeats (no ISA flag: two attempts)
        flags = (*BASE_FLAGS, *extra)
        key = hashlib.sha256(text + repr((tag, flags, abi)).encode()).hexdigest()[:16]
        target = folder / f"{stem}-{key}.so"
        if target.exists():
            return target, "-fopenmp" in extra
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
        os.close(fd)
        cmd = [*compiler.split(), *flags, "-o", tmp, str(source), "-lm"]
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as exc:
            Path(tmp).unlink(missing_ok=True)
            errors.append(f"{' '.join(cmd)}: {exc}")
            continue
        if result.returncode == 0:
            os.replace(tmp, target)
            return target, "-fopenmp" in extra
        Path(tmp).unlink(missing_ok=True)
        errors.append(f"{' '.join(cmd)}: exit {result.returncode}: {result.stderr.strip()[-500:]}")
    raise BuildError("compilation failed: " + " | ".join(errors))


def load_library(
    source: Path, stem: str, abi: int, abi_symbol: str, folders: Sequence[Path] | None = None
) -> tuple[ctypes.CDLL, Path]:
    """Build ``source`` if needed and load it; return ``(library, path)``.

    Args:
        source: The C file.
        stem: File name prefix of the built library.
        abi: Expected return value of the library's function ``abi_symbol`` (a library that disagrees is
            rejected: it was built from another version of the source).
        abi_symbol: Name of a ``int f(void)`` function of the library that returns its ABI version.
        folders: Cache folders to try, in order (default `cache_dirs`).

    Raises:
        BuildError: no compiler, or every folder failed; the message lists the reasons.

    Example:
        >>> from gbs_loss.special.backends import native
        >>> from gbs_loss.special.backends._build import BuildError, load_library
        >>> try:  # built at the first call, then found in the cache
        ...     lib, path = load_library(native._SOURCE, "betainc", native._ABI_VERSION, "gbs_betainc_abi_version")
        ... except BuildError:  # no C compiler here
        ...     pass
    """
    compiler = find_compiler()
    if compiler is None:
        raise BuildError("no C compiler found (set CC, or install cc, gcc or clang)")
    reasons = []
    for folder in folders if folders is not None else cache_dirs():
        try:
            path, _ = _compile(source, stem, compiler, Path(folder), abi)
            lib = ctypes.CDLL(str(path))
            version = getattr(lib, abi_symbol)()
        except (BuildError, OSError, AttributeError) as exc:
            reasons.append(f"{folder}: {exc}")
            continue
        if version != abi:
            reasons.append(f"{path}: ABI version {version}, expected {abi}")
            continue
        return lib, path
    raise BuildError("; ".join(reasons))
