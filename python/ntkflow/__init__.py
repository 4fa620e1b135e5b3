"""ntkflow: ensembles of finite-width two-layer networks under gradient flow.

Simulate thousands of trajectories at once in a compiled core, compare them with exact
solutions, and follow the neural tangent kernel. See ``simulate`` to start.
"""

from __future__ import annotations

from . import exact
from ._gram import ntk_gram
from ._memory import memory_budget, set_memory_budget
from ._simulate import simulate
from ._validate import MemoryBudgetError
from .result import STATUS_NAMES, Result
from .specs import (
    Dataset,
    Gaussian,
    GradientDescent,
    GradientFlow,
    LatentLine,
    Moments,
    Params,
    Record,
    TwoLayer,
)

__version__ = "0.1.0"


def build_info() -> dict[str, object]:
    """How the compiled core was built and which instruction-set level is in use."""
    from . import _core

    return {
        "version": __version__,
        "isa": _core.ISA,
        "cpu_best_isa": _core.cpu_best_isa(),
        "compiler": _core.build_compiler(),
        "eigen": _core.eigen_version(),
        "max_threads": _core.max_threads(),
    }


__all__ = [
    "STATUS_NAMES",
    "Dataset",
    "Gaussian",
    "GradientDescent",
    "GradientFlow",
    "LatentLine",
    "MemoryBudgetError",
    "Moments",
    "Params",
    "Record",
    "Result",
    "TwoLayer",
    "build_info",
    "exact",
    "memory_budget",
    "ntk_gram",
    "set_memory_budget",
    "simulate",
]
