"""The one place that picks a backend (implementation strategy) for `gbs_loss.betainc`.

One algorithm (`gbs_loss.special._kernel`), three implementations, side by side:

| name | module | runs |
|---|---|---|
| ``torch`` | `torch_ops` | everywhere: the reference in torch operations |
| ``native`` | ``backends.native`` | CPU tensors: one C call, OpenMP over elements |
| ``triton`` | ``backends.triton`` | CUDA tensors (any tensor under ``TRITON_INTERPRET=1``) |

Every backend exposes ``available() -> bool`` (cheap after its first call),
``betainc_with_grads(a, b, x) -> (value, d/da, d/db, d/dx)`` and ``betainc_block(a, b, x)``, the same four as the
rows of one ``(4, n)`` tensor (what the operator layer uses; native and Triton write it directly), under one
contract:

* inputs on one device, all float64 or all float32; ``x`` contiguous of shape ``(n,)``; ``a`` and ``b``
  contiguous of shape ``(m,)`` with ``n % m == 0``; element ``i`` uses ``a[i % m]`` and ``b[i % m]``
  (elementwise when ``m == n``, one parameter per trailing position otherwise; other broadcasts are expanded by
  the caller);
* outputs: four contiguous tensors of shape ``(n,)`` in the inputs' dtype. The computation is float64 either way;
  float32 results are rounded once and the derivatives saturated at the largest finite float32 (the native and
  Triton kernels read and write float32 themselves, without conversion passes);
* invalid parameters (``a <= 0``, ``b <= 0``, non-finite) and ``x`` outside ``[0, 1]`` or NaN give NaN in all four;
  the ends ``x = 0`` and ``x = 1`` follow `gbs_loss.betainc`; non-convergence within
  `MAX_STEPS` steps gives NaN;
* the numbers (step cap, tolerances, series rule) come from `gbs_loss.special._constants`.

Choice: the environment variable ``GBS_LOSS_BACKEND`` (read at each call), or `use` within a block:

* ``auto`` (default): ``triton`` for CUDA tensors when Triton imports, ``native`` for CPU tensors when the kernel
  builds, ``torch`` otherwise. The deprecated ``GBS_LOSS_NATIVE=0`` still turns ``native`` off under ``auto``.
* ``torch``, ``native``, ``triton``: that backend, or a `BackendUnavailable` error saying why not.
  ``triton`` runs on CPU tensors only under Triton's interpreter (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType

import torch

from gbs_loss.special.backends import torch_ops

__all__ = ["BACKENDS", "BackendUnavailable", "available", "get", "get_block", "resolve", "setting", "use"]

BACKENDS = ("torch", "native", "triton")
_CHOICES = ("auto", *BACKENDS)
_ENV = "GBS_LOSS_BACKEND"

Strategy = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
]


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run here (not installed, not built, or the wrong device).

    Example:
        >>> import torch
        >>> from gbs_loss.special import backends
        >>> with backends.use("native"):
        ...     backends.resolve(torch.device("meta"))
        Traceback (most recent call last):
            ...
        gbs_loss.special.backends.BackendUnavailable: the native backend runs on CPU tensors only, got a tensor on meta
    """


_override = threading.local()
_modules: dict[str, ModuleType | None] = {"torch": torch_ops}
_import_errors: dict[str, str] = {}


def _module(name: str) -> ModuleType | None:
    """The module of backend ``name``, imported once; ``None`` when it does not exist or fails to import."""
    if name not in _modules:
        try:
            _modules[name] = importlib.import_module(f"gbs_loss.special.backends.{name}")
        except ImportError as exc:  # not written yet, or its dependency (Triton) is missing
            _modules[name] = None
            _import_errors[name] = f"{type(exc).__name__}: {exc}"
    return _modules[name]


def _is_available(name: str) -> bool:
    module = _module(name)
    return module is not None and bool(module.available())


def setting() -> str:
    """The requested backend: the innermost `use` block, else ``GBS_LOSS_BACKEND``, else ``"auto"``.

    Raises:
        ValueError: ``GBS_LOSS_BACKEND`` is not one of ``auto``, ``torch``, ``native``, ``triton``.

    Example:
        >>> from gbs_loss.special import backends
        >>> with backends.use("torch"):
        ...     backends.setting()
        'torch'
    """
    forced: str | None = getattr(_override, "name", None)
    if forced is not None:
        return forced
    value = os.environ.get(_ENV)
    if value is None:
        return "auto"
    value = value.strip().lower() or "auto"
    if value not in _CHOICES:
        raise ValueError(f"{_ENV} must be one of {', '.join(_CHOICES)}, got {value!r}")
    return value


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0")


def resolve(device: torch.device) -> str:
    """Name of the backend that runs for tensors on ``device`` under the current setting.

    Raises:
        BackendUnavailable: an explicitly requested backend is not available for ``device``.

    Example:
        >>> import torch
        >>> from gbs_loss.special import backends
        >>> backends.resolve(torch.device("cpu")) in backends.BACKENDS  # "native" when a C compiler is found
        True
        >>> with backends.use("torch"):
        ...     backends.resolve(torch.device("cpu"))
        'torch'
    """
    name = setting()
    kind = device.type
    if name == "auto":
        if kind == "cuda":
            return "triton" if _is_available("triton") else "torch"
        if kind == "cpu" and os.environ.get("GBS_LOSS_NATIVE", "1").strip() != "0" and _is_available("native"):
            return "native"
        return "torch"
    if name == "native" and kind != "cpu":
        raise BackendUnavailable(f"the native backend runs on CPU tensors only, got a tensor on {device}")
    if name == "triton" and kind == "cpu" and not _interpreted():
        raise BackendUnavailable("the triton backend runs on CPU tensors only with TRITON_INTERPRET=1")
    if not _is_available(name):
        reason = _import_errors.get(name, "its available() is false")
        raise BackendUnavailable(f"{_ENV}={name} was requested but that backend is unavailable: {reason}")
    return name


def get(device: torch.device) -> Strategy:
    """The ``betainc_with_grads`` function of the backend chosen for ``device`` (see `resolve`).

    Example:
        >>> import torch
        >>> from gbs_loss.special import backends
        >>> with backends.use("torch"):
        ...     strategy = backends.get(torch.device("cpu"))
        >>> one = torch.ones(1, dtype=torch.float64)
        >>> strategy(2.0 * one, 3.0 * one, 0.5 * one)[0]
        tensor([0.6875], dtype=torch.float64)
    """
    module = _modules[resolve(device)]
    assert module is not None  # resolve only names backends whose module imported
    strategy: Strategy = module.betainc_with_grads
    return strategy


def get_block(device: torch.device) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The ``betainc_block`` function (the four results as one ``(4, n)`` tensor) of the backend chosen for ``device``.

    Example:
        >>> import torch
        >>> from gbs_loss.special import backends
        >>> one = torch.ones(1, dtype=torch.float64)
        >>> backends.get_block(torch.device("cpu"))(2.0 * one, 3.0 * one, 0.5 * one)[0]
        tensor([0.6875], dtype=torch.float64)
    """
    module = _modules[resolve(device)]
    assert module is not None  # resolve only names backends whose module imported
    block: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = module.betainc_block
    return block


def available(name: str) -> bool:
    """Whether backend ``name`` can run at all here (its module imports and its ``available()`` is true).

    Example:
        >>> from gbs_loss.special import backends
        >>> backends.available("torch")
        True
    """
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    return _is_available(name)


@contextmanager
def use(name: str) -> Iterator[None]:
    """Force backend ``name`` (or ``"auto"``) in this thread within the block, whatever ``GBS_LOSS_BACKEND`` says.

    Example:
        >>> import torch
        >>> from gbs_loss import betainc
        >>> from gbs_loss.special import backends
        >>> with backends.use("torch"):
        ...     betainc(torch.tensor(2.0, dtype=torch.float64), 3.0, 0.5)
        tensor(0.6875, dtype=torch.float64)
    """
    if name not in _CHOICES:
        raise ValueError(f"backend must be one of {', '.join(_CHOICES)}, got {name!r}")
    previous = getattr(_override, "name", None)
    _override.name = name
    try:
        yield
    finally:
        _override.name = previous
