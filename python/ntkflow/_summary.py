"""The summary of finished tasks: one row per task, from the plain arrays a task computes
(its store file), and a ``Table`` of such rows. ``Sweep.summary()`` and a store's
``summary.csv`` are both made of these rows."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ._table import Table
from .mechanisms import FAILED, LABELS, SCORE_NAMES


def flatten(desc: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"net": {"width": 8}}`` -> ``{"net.width": 8}``; array descriptions become
    ``"sha256:<first 16 hex>"`` strings."""
    out: dict[str, Any] = {}
    for k, v in desc.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and "array_sha256" in v:
            out[name] = f"sha256:{v['array_sha256'][:16]}"
        elif isinstance(v, dict):
            out.update(flatten(v, name + "."))
        else:
            out[name] = v
    return out


def summary_row(arrays: Mapping[str, NDArray[Any]]) -> dict[str, Any]:
    """One row of a sweep summary: the task's spec (flattened) and its label fractions
    and score medians over ok trajectories."""
    row: dict[str, Any] = {"key": str(arrays["key"])}
    spec = flatten(json.loads(str(arrays["spec"])))
    spec.pop("format", None)
    row.update(spec)
    labels, ok = arrays["labels"], np.asarray(arrays["ok"], dtype=bool)
    total = int(ok.sum())
    row["ok"] = total
    row["failed"] = int(ok.size - total)
    counts = {lab: int(np.sum(labels[ok] == lab)) for lab in LABELS}
    for lab in LABELS:
        row[f"frac_{lab}"] = counts[lab] / total if total else math.nan
    row["dominant"] = max(LABELS, key=lambda k: counts[k]) if total else FAILED
    meds: dict[str, NDArray[Any]] = {k: arrays[f"score_{k}"] for k in SCORE_NAMES}
    meds["final_loss"] = arrays["final_loss"]
    meds["t_hit"] = arrays["t_hit"]
    for k, v in meds.items():
        v = np.asarray(v, dtype=np.float64)[ok]
        v = v[np.isfinite(v)]
        row[f"median_{k}"] = float(np.median(v)) if v.size else math.nan
    row["t_max"] = float(arrays["t_max"])
    row["source"] = str(arrays["source"])
    row["isa"] = str(arrays["isa"])
    row["seconds"] = float(arrays["seconds"])
    return row


RESULT_COLUMNS: tuple[str, ...] = (
    "ok", "failed", *(f"frac_{lab}" for lab in LABELS), "dominant",
    *(f"median_{k}" for k in (*SCORE_NAMES, "final_loss", "t_hit")),
    "t_max", "source", "isa", "seconds")
"""The columns of a summary row after the key and the spec's fields, in order."""


def _shape(spec: Mapping[str, Any]) -> tuple[Any, ...]:
    """The field names of a description to the depth where its values are leaves (specs,
    their fields; a Dataset in a Record, its arrays), which is what ``flatten``'s names
    depend on."""
    return tuple(
        tuple((k2, tuple(v2)) if isinstance(v2, dict) else k2 for k2, v2 in v.items())
        if isinstance(v, dict) else k for k, v in spec.items())


def csv_header(specs: Iterable[Mapping[str, Any]]) -> list[str]:
    """The columns of a store's summary.csv: key, every spec field any task has (in the
    order the tasks first name them), then ``RESULT_COLUMNS``; fixed when the store is
    created, so that rows can be appended as tasks finish."""
    names: dict[str, None] = {"key": None}
    shapes: set[tuple[Any, ...]] = set()
    for spec in specs:
        shape = _shape(spec)  # flattening only specs of a new shape: 5x cheaper
        if shape in shapes:
            continue
        shapes.add(shape)
        fields = flatten(spec)
        fields.pop("format", None)
        names.update(dict.fromkeys(fields))
    names.update(dict.fromkeys(RESULT_COLUMNS))
    return list(names)


def rows_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    """A Table from dict rows with possibly different keys: numbers missing -> NaN,
    strings missing -> ""."""
    names: dict[str, None] = {}
    for r in rows:
        names.update(dict.fromkeys(r))
    cols: dict[str, NDArray[Any]] = {}
    for name in names:
        vals = [r.get(name) for r in rows]
        present = [v for v in vals if v is not None]
        if all(isinstance(v, bool) for v in present):
            cols[name] = np.array(vals if None not in vals else [str(v) for v in vals])
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in present) and \
                None not in vals:
            big = any(v is not None and v >= 2**63 for v in vals)  # derived seeds are 64-bit unsigned
            cols[name] = np.array(vals, dtype=np.uint64 if big else np.int64)
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
            cols[name] = np.array([math.nan if v is None else v for v in vals],
                                  dtype=np.float64)
        else:
            cols[name] = np.array(["" if v is None else str(v) for v in vals], dtype=str)
    return Table(cols)
