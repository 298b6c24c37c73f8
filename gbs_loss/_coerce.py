r"""Argument coercion shared by the special functions, the priors and the losses.

Every public function of the library takes numbers or tensors and turns them into tensors the same way, with
errors that name the argument, what was expected and what was received. The rules, written once:

* A *real* argument is a Python or NumPy real number (not a ``bool``) or a real tensor (not ``bool``, not
  complex): `check_real`.
* A distribution *parameter* keeps a floating tensor as given (not copied, so gradients reach it), turns an
  integer tensor into the default dtype and a number into a 0-dimensional float64 tensor, which keeps the
  number exact and does not promote the points' dtype: `as_parameter`.
* The arguments of an elementwise function are converted together: their floating dtype is promoted,
  numbers and integer tensors take that dtype, and floating tensors keep their own (so that each gradient is
  cast back to its own dtype): `as_float_tensors`.
* Tensors share one device, except 0-dimensional CPU tensors (numbers), which go anywhere, as in torch:
  `check_devices`; shapes broadcast together: `check_broadcast`.
* A count is anything `operator.index` accepts (``int``, ``numpy.int64``, ...), not a ``bool``:
  `as_index`.

Every function takes the argument's ``name`` and an optional ``owner`` (the function or class the user
called); messages read ``"{owner}: {name} must be ..., got ..."`` (without the ``"{owner}: "`` part when
``owner`` is ``None``).

Example:
    >>> import numpy as np
    >>> import torch
    >>> from gbs_loss._coerce import as_float_tensors, as_index, as_parameter
    >>> as_parameter(0.6, "a", "Beta")
    tensor(0.6000, dtype=torch.float64)
    >>> tensors, dtype = as_float_tensors({"a": 2, "x": torch.tensor([0.5], dtype=torch.float64)})
    >>> [t.dtype for t in tensors], dtype
    ([torch.float64, torch.float64], torch.float64)
    >>> as_index(np.int64(7), "positions")
    7
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from numbers import Real

import torch
from torch import Tensor

from gbs_loss._dtypes import float_dtype
from gbs_loss._shapes import broadcast_shapes

__all__ = [
    "as_float_tensors",
    "as_index",
    "as_parameter",
    "check_bool",
    "check_broadcast",
    "check_devices",
    "check_real",
    "describe_type",
    "prefix",
]


def prefix(owner: str | None) -> str:
    """``"{owner}: "``, or ``""`` without an owner: the start of every message.

    Example:
        >>> prefix("batch_shaping_loss"), prefix(None)
        ('batch_shaping_loss: ', '')
    """
    return f"{owner}: " if owner else ""


def describe_type(value: object) -> str:
    """How a received value is named in a type error: ``"str"``, ``"a tensor of dtype torch.bool"``, ...

    Example:
        >>> import torch
        >>> describe_type("7x7"), describe_type(torch.ones(2, dtype=torch.bool))
        ('str', 'a tensor of dtype torch.bool')
    """
    if isinstance(value, Tensor):
        return f"a tensor of dtype {value.dtype}"
    return type(value).__name__


def check_real(value: object, name: str, owner: str | None = None) -> Tensor | float:
    """A real tensor as given, or a real number as a ``float``; raise ``TypeError`` for anything else.

    Args:
        value: The argument.
        name: Its name, for the message.
        owner: The function or class called, for the message.

    Returns:
        ``value`` itself if it is a tensor, else ``float(value)``.

    Raises:
        TypeError: ``value`` is a ``bool``, a boolean or complex tensor, or not a real number.

    Example:
        >>> check_real(3, "a")
        3.0
        >>> check_real(True, "a", "Beta")
        Traceback (most recent call last):
        ...
        TypeError: Beta: a must be a real number or a real tensor, got bool
    """
    if isinstance(value, Tensor):
        if value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"{prefix(owner)}{name} must be a real number or a real tensor, got {describe_type(value)}")
        return value
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{prefix(owner)}{name} must be a real number or a real tensor, got {describe_type(value)}")
    return float(value)


def as_parameter(value: object, name: str, owner: str | None = None) -> Tensor:
    """A distribution parameter as a floating tensor; floating tensors are returned as given.

    Integer tensors become the default dtype; numbers become 0-dimensional float64 CPU tensors (exact, and,
    being 0-dimensional, they do not promote the dtype of the points they meet, see
    `gbs_loss._dtypes.compute_dtype`).

    Args:
        value: A real number or a real tensor.
        name: Its name, for the message.
        owner: The class called, for the message.

    Returns:
        A floating tensor.

    Raises:
        TypeError: as `check_real`.

    Example:
        >>> as_parameter(torch.tensor([1, 2]), "a").dtype
        torch.float32
    """
    real = check_real(value, name, owner)
    if isinstance(real, Tensor):
        return real if real.is_floating_point() else real.to(torch.get_default_dtype())
    return torch.tensor(real, dtype=torch.float64)


def check_devices(owner: str | None = None, **tensors: Tensor) -> torch.device | None:
    """The one device of ``tensors``, ignoring 0-dimensional CPU tensors (numbers), which go anywhere.

    Args:
        owner: The function or class called, for the message.
        **tensors: The tensors, by argument name.

    Returns:
        The common device, or ``None`` when every tensor is a 0-dimensional CPU tensor.

    Raises:
        ValueError: the tensors live on several devices.

    Example:
        >>> check_devices(a=torch.zeros(2), b=torch.tensor(1.0))
        device(type='cpu')
        >>> check_devices("betainc", a=torch.zeros(2), b=torch.zeros(2, device="meta"))
        Traceback (most recent call last):
        ...
        ValueError: betainc: all tensors must be on one device, got a: cpu, b: meta
    """
    placed = {name: t.device for name, t in tensors.items() if not (t.dim() == 0 and t.device.type == "cpu")}
    devices = set(placed.values())
    if len(devices) > 1:
        found = ", ".join(f"{name}: {device}" for name, device in placed.items())
        raise ValueError(f"{prefix(owner)}all tensors must be on one device, got {found}")
    if devices:
        return devices.pop()
    return torch.device("cpu") if tensors else None


def check_broadcast(owner: str | None = None, **tensors: Tensor) -> torch.Size:
    """The broadcast shape of ``tensors``; raise ``ValueError`` naming every shape if there is none.

    Args:
        owner: The function or class called, for the message.
        **tensors: The tensors, by argument name.

    Returns:
        The broadcast shape.

    Raises:
        ValueError: the shapes do not broadcast together.

    Example:
        >>> check_broadcast(a=torch.zeros(3, 1), b=torch.zeros(4))
        torch.Size([3, 4])
    """
    try:
        return broadcast_shapes(*(t.shape for t in tensors.values()))
    except RuntimeError:
        names = ", ".join(tensors)
        found = ", ".join(f"{name}: {tuple(t.shape)}" for name, t in tensors.items())
        raise ValueError(f"{prefix(owner)}{names} must have shapes that broadcast together, got {found}") from None


def as_float_tensors(
    values: Mapping[str, object], owner: str | None = None, *, broadcast: bool = True
) -> tuple[list[Tensor], torch.dtype]:
    """The arguments of an elementwise function as floating tensors on one device, and their promoted dtype.

    The dtype is the promoted dtype of the floating tensors (0-dimensional ones included), the default dtype if
    there are none. Floating tensors keep their own dtype; numbers and integer tensors take the promoted one.
    Every tensor is moved to the device of the tensors with at least one dimension (a 0-dimensional CPU
    tensor goes anywhere).

    Args:
        values: The arguments by name, in order: real numbers or real tensors.
        owner: The function called, for the messages.
        broadcast: Expand the tensors to their broadcast shape (views, no copy).

    Returns:
        ``(tensors, dtype)``: the tensors in the order of ``values`` and the promoted floating dtype.

    Raises:
        TypeError: an argument is not real (see `check_real`).
        ValueError: tensors on several devices, or shapes that do not broadcast.

    Example:
        >>> (a, x), dtype = as_float_tensors({"a": 2, "x": torch.tensor([0.1, 0.2])})
        >>> a.shape, a.dtype, dtype
        (torch.Size([2]), torch.float32, torch.float32)
    """
    reals = {name: check_real(value, name, owner) for name, value in values.items()}
    given = {name: t for name, t in reals.items() if isinstance(t, Tensor)}
    dtype = float_dtype(*given.values())
    device = check_devices(owner, **{name: t for name, t in given.items() if t.dim() > 0})
    if device is None:
        device = next((t.device for t in given.values()), torch.device("cpu"))
    converted = {
        name: (
            v.to(device=device, dtype=v.dtype if v.is_floating_point() else dtype)
            if isinstance(v, Tensor)
            else torch.tensor(v, dtype=dtype, device=device)
        )
        for name, v in reals.items()
    }
    shape = check_broadcast(owner, **converted)
    tensors = [t.expand(shape) if broadcast else t for t in converted.values()]
    return tensors, dtype


def as_index(value: object, name: str, owner: str | None = None, *, minimum: int | None = None) -> int:
    """An integer argument as an ``int``: anything `operator.index` accepts except a ``bool``.

    Accepts ``int``, ``numpy.int64`` and other integer scalars (any ``numbers.Integral``); refuses ``bool``
    (``True`` is rarely meant as 1), floats (``7.0``) and strings.

    Args:
        value: The argument.
        name: Its name, for the message.
        owner: The function or class called, for the message.
        minimum: The smallest accepted value, if any.

    Returns:
        ``operator.index(value)``.

    Raises:
        TypeError: ``value`` is not an integer, or is a boolean.
        ValueError: ``value`` is below ``minimum``.

    Example:
        >>> as_index(7, "positions", minimum=1)
        7
    """
    if isinstance(value, bool) or getattr(getattr(value, "dtype", None), "kind", None) == "b":
        raise TypeError(f"{prefix(owner)}{name} must be an integer, got {type(value).__name__}")
    try:
        index = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{prefix(owner)}{name} must be an integer, got {type(value).__name__}") from None
    if minimum is not None and index < minimum:
        raise ValueError(f"{prefix(owner)}{name} must be >= {minimum}, got {index}")
    return index


def check_bool(value: object, name: str, owner: str | None = None) -> bool:
    """``value`` if it is a ``bool``; raise ``TypeError`` otherwise (``1`` is not accepted for ``True``).

    Example:
        >>> check_bool(True, "ties")
        True
    """
    if not isinstance(value, bool):
        raise TypeError(f"{prefix(owner)}{name} must be a bool, got {type(value).__name__}")
    return value
