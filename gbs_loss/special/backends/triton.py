r"""The "triton" backend of `gbs_loss.betainc`: one fused Triton kernel per forward, on GPUs.

The whole per-element computation (parameter terms, prefactor, continued fraction with its forward-mode
derivatives, complement series, ends and invalid inputs) runs in one kernel,
`gbs_loss.special.backends._triton_math.betainc_kernel`, in float64: one launch per forward, no host
synchronisation, no intermediate tensors beyond the ``(4, n)`` output. Each program handles
`BLOCK` elements and runs the fraction in a ``while`` loop until
all of them have converged (or the shared step cap, `MAX_STEPS`).

The kernel is launched from a `torch.library.triton_op` (``gbs_loss::betainc_triton``) through
`torch.library.wrap_triton`, so that ``torch.compile(fullgraph=True)`` sees the kernel itself.

Under Triton's interpreter (``TRITON_INTERPRET=1``) the same kernel runs on CPU tensors, which is how CI tests it.
``wrap_triton`` cannot trace an interpreted kernel, so there the launch goes through a second, opaque custom
operator (``gbs_loss::betainc_triton_interpreted``), which ``torch.compile`` treats as a black box.

Triton is optional: without it this module still imports, `available` is false and
`betainc_with_grads` raises.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from gbs_loss.special import _constants

try:
    import triton as _triton
except ImportError:  # Triton is an optional dependency
    _triton = None

__all__ = ["available", "betainc_block", "betainc_with_grads", "interpreted", "launches"]

_MATH_MODULE = "gbs_loss.special.backends._triton_math"
# Number of kernel launches so far (eager calls only; for the launch-count tests).
_LAUNCHES = [0]


def interpreted() -> bool:
    """Whether Triton's interpreter is on (``TRITON_INTERPRET`` set to anything but ``0``), read at each call.

    Example:
        >>> import os
        >>> from gbs_loss.special.backends import triton
        >>> triton.interpreted() == (os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0"))
        True
    """
    return os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0")


def available() -> bool:
    """Whether this backend can run: Triton imports, and a CUDA device is present or the interpreter is on.

    Example:
        >>> import torch
        >>> from gbs_loss.special.backends import triton
        >>> triton.available() <= (torch.cuda.is_available() or triton.interpreted())
        True
    """
    return _triton is not None and (interpreted() or torch.cuda.is_available())


def launches() -> int:
    """How many times the kernel has been launched in this process (eager launches; a test aid).

    Example:
        >>> from gbs_loss.special.backends import triton
        >>> isinstance(triton.launches(), int)
        True
    """
    return _LAUNCHES[0]


@functools.cache
def _kernels(interpret: bool) -> ModuleType:
    """The kernel module, its functions decorated for ``interpret`` mode (decided by ``triton.jit`` at import).

    The compiled flavour is the ordinary module; the interpreted one is a second copy of the same source loaded
    under another name while the interpreter is on, so that both can live in one process.
    """
    if not interpret:
        if interpreted():
            raise RuntimeError("the compiled Triton kernel cannot be loaded while TRITON_INTERPRET is on")
        return importlib.import_module(_MATH_MODULE)
    name = _MATH_MODULE + "_interpreted"
    source = importlib.util.find_spec(_MATH_MODULE)
    if source is None or source.origin is None:
        raise ImportError(f"cannot find the source of {_MATH_MODULE}")
    spec = importlib.util.spec_from_file_location(name, source.origin)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {source.origin} as {name}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _grid(n: int, block: int) -> tuple[int]:
    return ((n + block - 1) // block,)


def _launch(kernel: Any, a: Tensor, b: Tensor, x: Tensor, out: Tensor, block: int, num_warps: int) -> None:
    """One launch over all ``n`` elements; the caps are read from `gbs_loss.special._constants` now.

    ``kernel`` is a ``triton.JITFunction`` or its `torch.library.wrap_triton` wrapper (``Any``: Triton is
    optional and its launch syntax ``kernel[grid](...)`` has no static type).
    """
    n, m = x.numel(), a.numel()
    caps = (_constants.MAX_STEPS, _constants.SERIES_MAX_TERMS)
    saturate = out.dtype == torch.float32
    kernel[_grid(n, block)](a, b, x, out, n, m, *caps, SATURATE=saturate, BLOCK_SIZE=block, num_warps=num_warps)


if _triton is not None:

    @torch.library.custom_op("gbs_loss::betainc_triton_interpreted", mutates_args=())
    def _betainc_interpreted(a: Tensor, b: Tensor, x: Tensor) -> Tensor:
        """The kernel under Triton's interpreter, as an opaque operator (``wrap_triton`` cannot trace it)."""
        out = torch.empty((4, x.numel()), dtype=x.dtype, device=x.device)
        if x.numel():
            math = _kernels(True)
            _launch(math.betainc_kernel, a, b, x, out, math.BLOCK_INTERPRETED, math.NUM_WARPS)
            _LAUNCHES[0] += 1
        return out

    @_betainc_interpreted.register_fake
    def _(a: Tensor, b: Tensor, x: Tensor) -> Tensor:
        return x.new_empty((4, x.numel()))

    @torch.library.triton_op("gbs_loss::betainc_triton", mutates_args=())
    def _betainc_triton(a: Tensor, b: Tensor, x: Tensor) -> Tensor:
        """``(4, n)`` in the dtype of ``x``: rows ``I, dI/da, dI/db, dI/dx`` under the backend contract (one launch)."""
        if interpreted():
            interpreted_out: Tensor = _betainc_interpreted(a, b, x)
            return interpreted_out
        out = torch.empty((4, x.numel()), dtype=x.dtype, device=x.device)
        if x.numel():
            math = _kernels(False)
            _launch(torch.library.wrap_triton(math.betainc_kernel), a, b, x, out, math.BLOCK, math.NUM_WARPS)
            if not torch.compiler.is_compiling():
                _LAUNCHES[0] += 1
        return out


def betainc_with_grads(a: Tensor, b: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(I, dI/da, dI/db, dI/dx)`` under the backend contract (see `gbs_loss.special.backends`).

    Args:
        a, b: Contiguous tensors of shape ``(m,)``.
        x: Contiguous tensor of shape ``(n,)`` with ``n % m == 0`` on the same device; element ``i``
            uses ``a[i % m]`` and ``b[i % m]``. All three float64, or all three float32 (read and written by
            the kernel: computed in float64, rounded once, derivatives saturated at the largest finite float32).

    Returns:
        Four contiguous tensors of shape ``(n,)`` in the inputs' dtype (rows of one ``(4, n)`` buffer).

    Raises:
        RuntimeError: Triton is not installed.

    Example:
        >>> import torch
        >>> from gbs_loss.special.backends import triton
        >>> a = torch.tensor([2.0], dtype=torch.float64, device="cuda")  # doctest: +SKIP
        >>> b = torch.tensor([3.0], dtype=torch.float64, device="cuda")  # doctest: +SKIP
        >>> x = torch.tensor([0.25, 0.5], dtype=torch.float64, device="cuda")  # doctest: +SKIP
        >>> triton.betainc_with_grads(a, b, x)[0]  # doctest: +SKIP
        tensor([0.2617, 0.6875], device='cuda:0', dtype=torch.float64)
    """
    value, d_a, d_b, d_x = betainc_block(a, b, x).unbind(0)
    return value, d_a, d_b, d_x


def betainc_block(a: Tensor, b: Tensor, x: Tensor) -> Tensor:
    """`betainc_with_grads` as the kernel's ``(4, n)`` output (the operator layer's form), one launch.

    Raises:
        RuntimeError: Triton is not installed.

    Example:
        >>> import torch
        >>> from gbs_loss.special.backends import triton
        >>> one = torch.ones(1, dtype=torch.float64, device="cuda")  # doctest: +SKIP
        >>> triton.betainc_block(2 * one, 3 * one, one / 2)[:, 0]  # doctest: +SKIP
        tensor([ 0.6875, -0.1953,  0.1541,  1.5000], device='cuda:0', dtype=torch.float64)
    """
    if _triton is None:
        raise RuntimeError("the triton backend needs the triton package, which is not installed")
    out: Tensor = torch.ops.gbs_loss.betainc_triton(a, b, x)
    return out
