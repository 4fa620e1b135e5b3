"""A small column table: NumPy columns of equal length, CSV out, Parquet and pandas if
installed."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from ._validate import require

if TYPE_CHECKING:  # pragma: no cover
    import pandas


def _cell(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return "" if math.isnan(f) else repr(f)
    if isinstance(v, (np.integer, int)) and not isinstance(v, bool):
        return str(int(v))
    return str(v)


@dataclass(frozen=True, eq=False)
class Table:
    """Columns of equal length, by name, in insertion order.

    ``table["width"]`` is a NumPy array; ``len(table)`` the number of rows.
    """

    columns: dict[str, NDArray[Any]]

    def __post_init__(self) -> None:
        lengths = {k: len(v) for k, v in self.columns.items()}
        require(len(set(lengths.values())) <= 1, "columns", "must all have the same length",
                lengths)

    def __getitem__(self, name: str) -> NDArray[Any]:
        require(name in self.columns, "column", f"must be one of {tuple(self.columns)}", name)
        return self.columns[name]

    def __contains__(self, name: object) -> bool:
        return name in self.columns

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.columns)

    def rows(self) -> list[dict[str, Any]]:
        """The table as a list of dicts (one per row)."""
        return [{k: v[i] for k, v in self.columns.items()} for i in range(len(self))]

    def to_pandas(self) -> pandas.DataFrame:
        """A ``pandas.DataFrame`` (needs pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("Table.to_pandas needs pandas: pip install pandas") from None
        return pd.DataFrame({k: np.asarray(v) for k, v in self.columns.items()})

    def to_csv(self, path: str | Path) -> Path:
        """Write a CSV with a header row; floats at full precision, NaN as empty."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(self.names)
            for i in range(len(self)):
                w.writerow([_cell(v[i]) for v in self.columns.values()])
        return path

    def to_parquet(self, path: str | Path) -> Path:
        """Write a Parquet file (needs the ``parquet`` extra, pyarrow) in which every
        column keeps its dtype: uint64 seeds, int64 widths, bool flags, str labels, NaN
        as NaN (not as missing). ``Table.read_parquet`` reads it back."""
        pa, pq = _pyarrow("Table.to_parquet")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({k: pa.array(v) for k, v in self.columns.items()}), path)
        return path

    @classmethod
    def read_parquet(cls, path: str | Path) -> Table:
        """A Table from a Parquet file such as ``to_parquet`` writes (needs pyarrow)."""
        _, pq = _pyarrow("Table.read_parquet")
        t = pq.read_table(Path(path))
        return cls({k: _numpy(t.column(k)) for k in t.column_names})

    def __repr__(self) -> str:
        return f"Table({len(self)} rows: {', '.join(self.names)})"


def _pyarrow(caller: str) -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(f"{caller} needs pyarrow: pip install 'ntkflow[parquet]'") from None
    return pa, pq


def _numpy(column: Any) -> NDArray[Any]:
    """A pyarrow column as NumPy: strings as str (pyarrow gives objects), the rest as
    its own dtype."""
    import pyarrow as pa

    values: NDArray[Any] = column.to_numpy()
    text = pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
    return values.astype(str) if text else values
