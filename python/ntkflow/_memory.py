"""The memory budget: every large allocation is estimated and checked before it is made."""

from __future__ import annotations

import os
import time

from ._validate import MemoryBudgetError, real, show

_budget: float | None = None
# The machine's default budget, read at most every _MACHINE_TTL seconds: reading the
# cgroup files took ~0.2 ms, a fifth of a tiny sweep task, and every simulate checks the
# budget several times. A job's limit that changes is seen within the TTL.
_MACHINE_TTL = 10.0
_machine: tuple[float, float] | None = None  # (time.monotonic() when read, budget)


def _physical_memory() -> float:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - exotic platforms
        return 8.0 * 2**30


def _cgroup_limit(root: str = "/") -> float:
    """The tightest memory limit of this process's cgroups (inf if none): on a cluster node
    a job's limit, not the node's memory, is what the kernel enforces."""
    try:
        with open(os.path.join(root, "proc/self/cgroup")) as fh:
            lines = fh.read().splitlines()
    except OSError:
        return float("inf")
    sysfs = os.path.join(root, "sys/fs/cgroup")
    limit = float("inf")
    for line in lines:
        if line.count(":") < 2:
            continue
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2: one unified tree
            base, name = sysfs, "memory.max"
        elif "memory" in controllers.split(","):
            base, name = os.path.join(sysfs, "memory"), "memory.limit_in_bytes"
        else:
            continue
        # The effective limit is the smallest along the path; inside a container the path
        # may not exist under the mount, whose top is then the container's own cgroup.
        parts = [p for p in path.split("/") if p]
        for depth in range(len(parts), -1, -1):
            try:
                with open(os.path.join(base, *parts[:depth], name)) as fh:
                    text = fh.read().strip()
            except OSError:
                continue
            # cgroup v1 writes "no limit" as a page-rounded 2^63 - 1, v2 as "max".
            if text.isdigit() and int(text) < 2**62:
                limit = min(limit, float(text))
    return limit


def _parse_bytes(text: str, name: str = "NTKFLOW_MEMORY_BUDGET") -> float:
    """A size such as ``8G``, ``500M``, ``1.5GB`` or ``1000000`` (bytes; K, M, G, T are
    powers of 1024), > 0."""
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    t = text.strip().lower().removesuffix("b")
    scale = units.get(t[-1:], 1) if t else 1
    number = t[:-1] if t[-1:] in units else t
    try:
        return real(float(number) * scale, name, low=0.0, low_open=True)
    except ValueError:
        raise ValueError(
            f"{name} must be a size > 0 such as 8G or 500M; got {show(text)}"
        ) from None


def memory_budget() -> float:
    """Largest allocation, in bytes, that one call may make.

    Set with ``set_memory_budget`` or the ``NTKFLOW_MEMORY_BUDGET`` environment variable
    (e.g. ``8G``); the default is half the machine's physical memory, or half the memory
    limit of the process's cgroup (a batch job's allocation) when that is smaller.
    """
    if _budget is not None:
        return _budget
    env = os.environ.get("NTKFLOW_MEMORY_BUDGET")
    if env:
        return _parse_bytes(env)
    return _machine_budget()


def _machine_budget() -> float:
    global _machine
    now = time.monotonic()
    if _machine is None or not 0.0 <= now - _machine[0] < _MACHINE_TTL:
        _machine = (now, 0.5 * min(_physical_memory(), _cgroup_limit()))
    return _machine[1]


def set_memory_budget(nbytes: float | str | None) -> None:
    """Set the budget: a number of bytes, or a size in the forms ``NTKFLOW_MEMORY_BUDGET``
    takes (``"8G"``, ``"500M"``, ``"1.5GB"``; K, M, G, T are powers of 1024). ``None``
    restores the default."""
    global _budget
    if nbytes is None:
        _budget = None
    elif isinstance(nbytes, str):
        _budget = _parse_bytes(nbytes, "nbytes")
    else:
        _budget = real(nbytes, "nbytes", low=0.0, low_open=True)


def check(nbytes: float, what: str, hint: str) -> None:
    """Refuse an allocation of ``nbytes`` over the budget, saying how to shrink it."""
    budget = memory_budget()
    if nbytes > budget:
        raise MemoryBudgetError(
            f"{what} needs {nbytes / 2**30:.3g} GiB, over the memory budget of "
            f"{budget / 2**30:.3g} GiB; {hint}, or raise the budget with "
            "ntkflow.set_memory_budget(...) / NTKFLOW_MEMORY_BUDGET"
        )
