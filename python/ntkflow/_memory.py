"""The memory budget: every large allocation is estimated and checked before it is made."""

from __future__ import annotations

import os

from ._validate import MemoryBudgetError, real

_budget: float | None = None


def _physical_memory() -> float:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - exotic platforms
        return 8.0 * 2**30


def _parse_bytes(text: str) -> float:
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    t = text.strip().lower().removesuffix("b")
    scale = units.get(t[-1:], 1) if t else 1
    number = t[:-1] if t[-1:] in units else t
    try:
        return real(float(number) * scale, "NTKFLOW_MEMORY_BUDGET", low=0.0, low_open=True)
    except ValueError:
        raise ValueError(
            f"NTKFLOW_MEMORY_BUDGET must be a size such as 8G or 500M; got {text!r}"
        ) from None


def memory_budget() -> float:
    """Largest allocation, in bytes, that one call may make.

    Set with ``set_memory_budget`` or the ``NTKFLOW_MEMORY_BUDGET`` environment variable
    (e.g. ``8G``); the default is half the machine's physical memory.
    """
    if _budget is not None:
        return _budget
    env = os.environ.get("NTKFLOW_MEMORY_BUDGET")
    if env:
        return _parse_bytes(env)
    return 0.5 * _physical_memory()


def set_memory_budget(nbytes: float | None) -> None:
    """Set the budget in bytes; ``None`` restores the default."""
    global _budget
    _budget = None if nbytes is None else real(nbytes, "nbytes", low=0.0, low_open=True)


def check(nbytes: float, what: str, hint: str) -> None:
    """Refuse an allocation of ``nbytes`` over the budget, saying how to shrink it."""
    budget = memory_budget()
    if nbytes > budget:
        raise MemoryBudgetError(
            f"{what} needs {nbytes / 2**30:.3g} GiB, over the memory budget of "
            f"{budget / 2**30:.3g} GiB; {hint}, or raise the budget with "
            "ntkflow.set_memory_budget(...) / NTKFLOW_MEMORY_BUDGET"
        )
