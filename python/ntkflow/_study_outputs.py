"""Study results as ``xarray.Dataset``s whose dimensions are the sweep's axes.

Kept out of studies.py so that the study classes carry only thin methods. The datasets are
built from the studies' long tables (``to_long()``: one row per ensemble x trajectory), so
they hold the same values, bit for bit, and pick up every column the table gains.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import NDArray

from ._table import Table

if TYPE_CHECKING:  # pragma: no cover
    import xarray


class _Scored(Protocol):
    """What a dataset reads of an ensemble of a study (``studies.Ensemble``), besides
    its rows in the long table."""

    @property
    def t_max(self) -> float: ...
    @property
    def seconds(self) -> float: ...
    @property
    def source(self) -> str: ...
    @property
    def classification(self) -> Any: ...


def _xarray(caller: str) -> Any:
    try:
        import xarray as xr
    except ImportError:
        raise ImportError(f"{caller} needs xarray: pip install 'ntkflow[xarray]'") from None
    return xr


def study_dataset(
    caller: str,
    long: Table,
    ensembles: Sequence[_Scored],
    axes: Sequence[tuple[str, int]],
    per_trajectory: Sequence[str],
    attrs: dict[str, Any],
) -> xarray.Dataset:
    """The long table of a study as a Dataset of dims (*axes, "trajectory").

    ``axes`` are (name, size) in row-major order of ``ensembles`` (one per grid point);
    ``per_trajectory`` the columns that vary along trajectories (label, ok, scores). Every
    other column is a coordinate on the axes (hyperparameters, seed), except one that
    varies within an ensemble after all: it is kept as a per-trajectory variable rather
    than lost. t_max, seconds and source come from the ensembles.
    """
    xr = _xarray(caller)
    names = tuple(n for n, _ in axes)
    shape = tuple(s for _, s in axes)
    trajectories = ensembles[0].classification.trajectories if ensembles else 0
    full = (*shape, trajectories)
    # The long table is ensemble-major, trajectory-minor; anything else would scramble
    # the reshape silently (a raise, not an assert: python -O must not skip it).
    if not (len(ensembles) == math.prod(shape) and len(long) == math.prod(full)
            and np.array_equal(long["trajectory"], np.tile(np.arange(trajectories),
                                                           len(ensembles)))):
        raise RuntimeError(f"{caller}: the long table does not hold {shape} ensembles of "
                           f"{trajectories} trajectories in order")  # pragma: no cover

    def grid(name: str) -> NDArray[Any]:
        return long[name].reshape(full)

    dims = (*names, "trajectory")
    coords: dict[str, Any] = {"trajectory": np.arange(trajectories, dtype=np.int64)}
    for k, name in enumerate(names):  # the axis values: along axis k, the rest at 0
        coords[name] = grid(name)[tuple(slice(None) if i == k else 0
                                        for i in range(len(full)))]
    data: dict[str, Any] = {}
    for name in long.names:
        if name in names or name == "trajectory":
            continue
        values = grid(name)
        if name in per_trajectory or not _constant(values):
            data[name] = (dims, values)
        else:
            coords[name] = (names, values[..., 0])
    data["t_max"] = (names, np.array([e.t_max for e in ensembles]).reshape(shape))
    data["seconds"] = (names, np.array([e.seconds for e in ensembles]).reshape(shape))
    if "source" not in coords and "source" not in data:  # older long tables lack it
        data["source"] = (names, np.array([e.source for e in ensembles]).reshape(shape))
    # Flags as 0/1: netCDF has no boolean attributes, and to_netcdf should just work.
    flags = {k: int(v) if isinstance(v, bool) else v for k, v in attrs.items()}
    ds: xarray.Dataset = xr.Dataset(data, coords=coords, attrs={
        **flags, **_thresholds(ensembles), "trajectories": trajectories})
    return ds


def _constant(values: NDArray[Any]) -> bool:
    """Equal along the last axis (NaN equal to NaN)."""
    first = values[..., :1]
    same = values == first
    if values.dtype.kind == "f":
        same |= np.isnan(values) & np.isnan(first)
    return bool(np.all(same))


def _thresholds(ensembles: Sequence[_Scored]) -> dict[str, float]:
    """eps and tau when every ensemble was classified with the same ones."""
    out: dict[str, float] = {}
    for name in ("eps", "tau"):
        values = {float(getattr(e.classification, name)) for e in ensembles}
        if len(values) == 1:
            out[name] = values.pop()
    return out
