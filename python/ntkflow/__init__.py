"""ntkflow: ensembles of finite-width two-layer networks under gradient flow.

Simulate thousands of trajectories at once in a compiled core, compare them with exact
solutions, and follow the neural tangent kernel. See ``simulate`` to start.
"""

from __future__ import annotations

from . import exact, mechanisms
from ._core import SerialBuildWarning
from ._gram import ntk_gram
from ._memory import memory_budget, set_memory_budget
from ._simulate import initial_params, sgd_batches, simulate
from ._table import Table
from ._validate import MemoryBudgetError
from ._version import __version__ as __version__
from .mechanisms import Classification, classify, classify_exact
from .parametrization import Parametrization
from .result import STATUS_NAMES, Result
from .specs import (
    Dataset,
    Gaussian,
    GradientDescent,
    GradientFlow,
    LatentLine,
    Moments,
    Objective,
    Params,
    Record,
    SGD,
    TwoLayer,
)
from .store import Store
from .studies import PhaseDiagram, WidthStudy, phase_diagram, width_study
from .sweeps import Sweep, Task, TaskFailure, TaskOutput, sweep


def build_info() -> dict[str, object]:
    """How the compiled core was built and which instruction-set level is in use.

    ``openmp`` is False for a core built without OpenMP (no OpenMP in the compiler, or
    ``NTKFLOW_OPENMP=OFF``): every call then runs on one thread, with the same bits, and
    ``max_threads`` is 1; asking for ``threads`` > 1 warns once (``SerialBuildWarning``).
    """
    from . import _core

    return {
        "version": __version__,
        "isa": _core.ISA,
        "cpu_best_isa": _core.cpu_best_isa(),
        "compiler": _core.build_compiler(),
        "eigen": _core.eigen_version(),
        "openmp": _core.openmp(),  # False: a serial build, one thread per call
        "max_threads": _core.max_threads(),
    }


__all__ = [
    "STATUS_NAMES",
    "Classification",
    "Dataset",
    "Gaussian",
    "GradientDescent",
    "GradientFlow",
    "LatentLine",
    "MemoryBudgetError",
    "Moments",
    "Objective",
    "Params",
    "Parametrization",
    "PhaseDiagram",
    "Record",
    "Result",
    "SGD",
    "Store",
    "SerialBuildWarning",
    "Sweep",
    "Task",
    "TaskFailure",
    "TaskOutput",
    "Table",
    "TwoLayer",
    "WidthStudy",
    "build_info",
    "classify",
    "classify_exact",
    "exact",
    "initial_params",
    "mechanisms",
    "memory_budget",
    "ntk_gram",
    "phase_diagram",
    "set_memory_budget",
    "sgd_batches",
    "simulate",
    "sweep",
    "width_study",
]
