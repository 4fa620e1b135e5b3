"""The compiled core, built once per instruction-set level; this module loads the best
level the CPU runs, or the one forced by the ``NTKFLOW_ISA`` environment variable
(``baseline``, ``x86-64-v3``, ``x86-64-v4``) so that a mixed cluster can run one level and
get identical bits everywhere. Private: use the ``ntkflow`` package.

A core built without OpenMP (no OpenMP in the compiler, or ``NTKFLOW_OPENMP=OFF``) runs
every call on one thread, with the same bits; ``threads`` > 1 then warns once per process
(``SerialBuildWarning``) and runs on one thread."""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # Every level has the API of the baseline module's stub (_core_baseline.pyi); at run
    # time the names come from the level loaded below, through __getattr__.
    from ._core_baseline import *  # noqa: F403

_MODULES = {"baseline": "_core_baseline", "x86-64-v3": "_core_v3", "x86-64-v4": "_core_v4"}
_ORDER = ("baseline", "x86-64-v3", "x86-64-v4")


def _load(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"{__package__}.{name}")
    except ImportError:
        return None


def _select() -> tuple[str, ModuleType]:
    base = _load(_MODULES["baseline"])
    if base is None:
        raise ImportError(
            "ntkflow's compiled core is missing; reinstall with `pip install .` "
            "(a source checkout cannot be imported without building it)"
        )
    cpu_best = base.cpu_best_isa()
    runnable = _ORDER[: _ORDER.index(cpu_best) + 1]
    forced = os.environ.get("NTKFLOW_ISA", "").strip()
    if forced:
        if forced not in _MODULES:
            raise ImportError(
                f"NTKFLOW_ISA must be one of {', '.join(_ORDER)}; got {forced!r}"
            )
        if forced not in runnable:
            raise ImportError(
                f"NTKFLOW_ISA={forced} but this CPU only runs up to {cpu_best}"
            )
        module = base if forced == "baseline" else _load(_MODULES[forced])
        if module is None:
            raise ImportError(f"NTKFLOW_ISA={forced}: that level was not built")
        return forced, module
    for level in reversed(runnable):
        module = base if level == "baseline" else _load(_MODULES[level])
        if module is not None:
            return level, module
    return "baseline", base


ISA, _module = _select()


class SerialBuildWarning(RuntimeWarning):
    """``threads`` > 1 was asked of a core built without OpenMP: it runs on one thread
    (same results, only slower). Shown once per process."""


_serial_warned = False


def team(threads: int) -> int:
    """The core's ``threads`` argument for a checked count (0: the default team). On a
    serial build, more than one thread warns once per process and becomes 1."""
    global _serial_warned
    if threads <= 1 or _module.openmp():
        return threads
    if not _serial_warned:
        _serial_warned = True  # before warn: under an "error" filter it raises
        warnings.warn(
            f"threads={threads}: this ntkflow was built without OpenMP, so every call runs "
            "on one thread (same results, only slower); rebuild with an OpenMP compiler "
            "for threads (nf.build_info()['openmp'] tells which build this is)",
            SerialBuildWarning, stacklevel=_caller_outside_package())
    return 1


def _caller_outside_package() -> int:
    """The ``stacklevel`` that names, from the function calling this, the first frame
    outside ntkflow (the user's call, however deep the package's own calls go)."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def __getattr__(name: str) -> Any:
    return getattr(_module, name)
