"""Input checks shared by the spec objects: every message names the parameter, the
allowed range and the value received."""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sized
from typing import Any

import numpy as np
from numpy.typing import NDArray


class MemoryBudgetError(ValueError, MemoryError):
    """A requested allocation is larger than the memory budget (see ``memory_budget``)."""


# Longest repr of a value quoted in a message; longer ones are cut with "...".
_MAX_REPR = 80
# Longest quote of any value, a summary of arrays in a tuple, list or dict included.
_MAX_SHOWN = 100


def require(ok: bool, name: str, rule: str, value: object) -> None:
    """Raise ``ValueError("<name> <rule>; got <value>")`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{name} {rule}; got {show(value)}")


def show(value: object) -> str:
    """The value as quoted in a message: arrays (and anything with a ``shape``) by type
    and shape, tuples, lists and dicts holding them item by item, anything else by its
    repr cut to about 80 characters; never more than 100 characters, so that a message
    never prints a whole array."""
    text = _show(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _show(value: object) -> str:
    if isinstance(value, (tuple, list)) and any(_shaped(v) for v in value):
        items = ", ".join(_item(v) for v in value[:4])
        return _container(value, items, len(value) > 4)
    if isinstance(value, Mapping) and any(_shaped(v) for v in value.values()):
        pairs = list(value.items())
        items = ", ".join(f"{_cut(repr(k), 20)}: {_item(v)}" for k, v in pairs[:4])
        return _container(value, items, len(pairs) > 4)
    if _shaped(value):
        dtype = f" and dtype {value.dtype}" if isinstance(value, np.ndarray) else ""
        return _shape_of(value) + dtype
    return _cut(repr(value), _MAX_REPR)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _item(value: object) -> str:
    return _shape_of(value) if _shaped(value) else type(value).__name__


def _container(value: Sized, items: str, more: bool) -> str:
    n = len(value)
    return (f"{type(value).__name__} of {n} item{'s' * (n != 1)} "
            f"({items}{', ...' if more else ''})")


def _shaped(value: object) -> bool:
    """An array-like with at least one dimension (NumPy, pandas, xarray, torch...)."""
    shape = getattr(value, "shape", None)
    return isinstance(shape, tuple) and len(shape) > 0


def _shape_of(value: Any) -> str:
    kind = "array" if isinstance(value, np.ndarray) else type(value).__name__
    return f"{kind} of shape {tuple(value.shape)}"


def integer(value: Any, name: str, *, minimum: int | None = None) -> int:
    """An exact integer (numpy integers accepted, bools and floats refused)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer; got {show(value)}")
    try:
        out = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer; got {show(value)}") from None
    if minimum is not None:
        require(out >= minimum, name, f"must be an integer >= {minimum}", value)
    return out


def real(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A finite real number in the given range."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a real number; got {show(value)}")
    out = float(value)
    ok = math.isfinite(out)
    if low is not None:
        ok = ok and (out > low if low_open else out >= low)
    if high is not None:
        ok = ok and (out < high if high_open else out <= high)
    require(ok, name, _range_rule(low, high, low_open, high_open), value)
    return out


def _range_rule(low: float | None, high: float | None, low_open: bool,
                high_open: bool) -> str:
    """The rule as a reader says it: "must be a finite number > 0", "must be in (0, 1]"
    (finite goes without saying for a closed-off interval), "must be a finite number"."""
    if low is not None and high is not None:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        return f"must be in {lo}{_number(low)}, {_number(high)}{hi}"
    if low is not None:
        return f"must be a finite number {'>' if low_open else '>='} {_number(low)}"
    if high is not None:
        return f"must be a finite number {'<' if high_open else '<='} {_number(high)}"
    return "must be a finite number"


def _number(x: float) -> str:
    """A bound as written by hand: 0 and 1 rather than 0.0 and 1.0."""
    x = float(x)
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)


def array(
    value: Any, name: str, *, ndim: int | tuple[int, ...], finite: bool = True,
    copy: bool = True
) -> NDArray[np.float64]:
    """A C-contiguous float64 copy of ``value``, checked for rank and finiteness. With
    ``copy=False`` (arguments used only during the call) an array that already is one is
    returned as it is, and left writeable."""
    if np.iscomplexobj(value):
        raise ValueError(f"{name} must be real; got a complex array")
    try:
        out = np.array(value, dtype=np.float64, order="C", copy=True if copy else None)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be an array of real numbers; got {show(value)}"
        ) from None
    ranks = (ndim,) if isinstance(ndim, int) else ndim
    require(out.ndim in ranks, name, f"must have {' or '.join(map(str, ranks))} dimensions", out)
    if finite and not np.all(np.isfinite(out)):
        bad = int(np.size(out) - np.count_nonzero(np.isfinite(out)))
        raise ValueError(f"{name} must be finite; got {bad} NaN or infinite entries")
    if copy:
        out.setflags(write=False)
    return out
