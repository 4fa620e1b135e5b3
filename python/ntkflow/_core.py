"""The compiled core, built once per instruction-set level; this module loads the best
level the CPU runs, or the one forced by the ``NTKFLOW_ISA`` environment variable
(``baseline``, ``x86-64-v3``, ``x86-64-v4``) so that a mixed cluster can run one level and
get identical bits everywhere. Private: use the ``ntkflow`` package."""

from __future__ import annotations

import importlib
import os
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


def __getattr__(name: str) -> Any:
    return getattr(_module, name)
