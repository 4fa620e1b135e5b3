"""Study outputs that keep everything (issue 16): xarray with the sweep axes as
dimensions, and Parquet and CSV files that keep every column's dtype.

The reference is always the study's long table (``to_long()``, one row per ensemble x
trajectory): whatever form the outputs take, each of its cells must come back bit for bit.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ntkflow as nf
from ntkflow.studies import SCORE_COLUMNS, derive_seed

TRAJECTORIES = 5


@pytest.fixture(scope="module")
def study() -> nf.WidthStudy:
    # Widths 16 and 64 with seed 0: one seed below 2**63 and one above, which float64 or
    # int64 would not keep.
    return nf.width_study([16, 64], "ntk", trajectories=TRAJECTORIES, seed=0, exact=True,
                          n_boot=5)


@pytest.fixture(scope="module")
def diagram() -> nf.PhaseDiagram:
    # "width" is an axis and a hyperparameter at once: one coordinate, of integers.
    return nf.phase_diagram(("width", [16, 64]), ("alpha", [0.5, 1.25]),
                            trajectories=TRAJECTORIES, seed=3, exact=True)


def _same(a: Any, b: Any) -> bool:
    """Bit for bit: the same dtype and the same bytes (NaN equal to NaN, -0.0 not 0.0);
    strings the same text (a NumPy string's dtype is its length)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind == b.dtype.kind == "U":
        return str(a) == str(b)
    return a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _rows_in(ds: Any, long: nf.Table, dims: tuple[str, ...]) -> None:
    """Every cell of every row of ``long`` is in ``ds`` at that row's coordinates."""
    for row in long.rows():
        point = ds.sel({d: row[d] for d in dims})
        for name in long.names:
            assert _same(point[name].values, row[name]), (name, row)


def test_width_study_xarray_holds_the_long_table(study: nf.WidthStudy) -> None:
    pytest.importorskip("xarray")
    ds = study.to_xarray()
    long = study.to_long()
    assert dict(ds.sizes) == {"width": 2, "trajectory": TRAJECTORIES}
    _rows_in(ds, long, ("width", "trajectory"))
    # nothing dropped, nothing invented: the table's columns and three per-width outputs
    assert set(ds.variables) == {*long.names, "t_max", "seconds", "source"}
    for name in ("label", "ok", *SCORE_COLUMNS):
        assert ds[name].dims == ("width", "trajectory"), name
    for name in ("kappa", "s_u", "s_w", "eta_u", "eta_w", "seed"):
        assert name in ds.coords and ds[name].dims == ("width",), name
    seeds = [derive_seed(0, 16), derive_seed(0, 64)]
    assert seeds[1] > 2**63
    assert ds["seed"].dtype == np.uint64 and ds["seed"].values.tolist() == seeds
    assert ds["width"].dtype == np.int64 and ds["width"].values.tolist() == [16, 64]
    assert ds["ok"].dtype == bool and ds["label"].dtype.kind == "U"
    assert ds["trajectory"].values.tolist() == list(range(TRAJECTORIES))
    for k, e in enumerate(study.ensembles):
        assert ds["t_max"].values[k] == e.t_max and ds["seconds"].values[k] == e.seconds
        assert ds["source"].values[k] == e.source == "exact"
    assert ds.attrs == {"parametrization": "ntk", "exact": 1, "eps": 0.05, "tau": 0.1,
                        "trajectories": TRAJECTORIES}
    # the coordinates follow a reduction over trajectories
    med = ds["rho_star"].median("trajectory")
    assert med["seed"].values.tolist() == seeds
    assert np.array_equal(med.values, study.table["median_rho_star"])


def test_phase_diagram_xarray_has_the_grid_as_dimensions(diagram: nf.PhaseDiagram) -> None:
    pytest.importorskip("xarray")
    ds = diagram.to_xarray()
    long = diagram.to_long()
    assert ds["rho_star"].dims == ("alpha", "width", "trajectory")
    assert dict(ds.sizes) == {"alpha": 2, "width": 2, "trajectory": TRAJECTORIES}
    assert ds["alpha"].values.tolist() == [0.5, 1.25]
    assert ds["width"].dtype == np.int64 and ds["width"].values.tolist() == [16, 64]
    _rows_in(ds, long, ("alpha", "width", "trajectory"))
    assert set(ds.variables) == {*long.names, "t_max", "seconds", "source"}
    assert ds["seed"].dims == ("alpha", "width") and ds["seed"].dtype == np.uint64
    # cell (i, j) is ensembles[i * nx + j], and its mean score is the diagram's
    for i in range(2):
        for j in range(2):
            e = diagram.ensembles[2 * i + j]
            cell = ds.isel(alpha=i, width=j)
            assert cell["label"].values.tolist() == e.classification.labels.tolist()
            assert int(cell["seed"]) == e.seed
            ok = cell["rho_star"].values[cell["ok"].values]
            assert np.mean(ok) == diagram.mean["rho_star"][i, j]
    assert ds.attrs == {"exact": 1, "eps": 0.05, "tau": 0.1, "trajectories": TRAJECTORIES}


def test_xarray_missing_names_the_extra(study: nf.WidthStudy, diagram: nf.PhaseDiagram,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "xarray", None)  # import xarray raises ImportError
    with pytest.raises(ImportError, match=r"WidthStudy.to_xarray needs xarray: "
                       r"pip install 'ntkflow\[xarray\]'"):
        study.to_xarray()
    with pytest.raises(ImportError, match=r"PhaseDiagram.to_xarray .*ntkflow\[xarray\]"):
        diagram.to_xarray()


def _edges() -> nf.Table:
    """Values a file format could bend: the largest seed, -0.0, NaN, inf, long labels."""
    return nf.Table({"seed": np.array([0, 2**63, 2**64 - 1], dtype=np.uint64),
                     "width": np.array([1, 2**62, -3], dtype=np.int64),
                     "x": np.array([np.nan, -0.0, np.inf]), "ok": np.array([True, False, True]),
                     "label": np.array(["kernel", "disalignment", ""])})


def _same_table(a: nf.Table, b: nf.Table) -> None:
    assert a.names == b.names
    for name in a.names:
        assert a[name].dtype.kind == b[name].dtype.kind, name
        if a[name].dtype.kind == "U":
            assert a[name].tolist() == b[name].tolist(), name
        else:
            assert _same(a[name], b[name]), name


def test_parquet_keeps_every_column_and_dtype(study: nf.WidthStudy, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    for table in (study.to_long(), _edges()):
        path = table.to_parquet(tmp_path / "new" / "t.parquet")  # makes the folder
        _same_table(table, nf.Table.read_parquet(path))
        schema = pq.read_schema(path)  # what any Parquet reader sees
        assert str(schema.field("seed").type) == "uint64"
        assert str(schema.field("width").type) == "int64"
        assert str(schema.field("ok").type) == "bool"
        assert str(schema.field("label").type) == "string"
    pytest.importorskip("pandas")
    import pandas as pd

    df = pd.read_parquet(path)
    assert df["seed"].dtype == np.uint64 and df["seed"].tolist() == [0, 2**63, 2**64 - 1]


def test_parquet_missing_names_the_extra(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ImportError, match=r"Table.to_parquet needs pyarrow: "
                       r"pip install 'ntkflow\[parquet\]'"):
        _edges().to_parquet(tmp_path / "t.parquet")
    assert not (tmp_path / "t.parquet").exists()
    with pytest.raises(ImportError, match=r"Table.read_parquet needs pyarrow"):
        nf.Table.read_parquet(tmp_path / "t.parquet")


def test_csv_keeps_seeds_exact_and_reads_back_with_dtypes(study: nf.WidthStudy,
                                                          tmp_path: Path) -> None:
    long = study.to_long()
    path = long.to_csv(tmp_path / "long.csv")
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    seeds = [derive_seed(0, 16)] * TRAJECTORIES + [derive_seed(0, 64)] * TRAJECTORIES
    assert [int(r["seed"]) for r in rows] == seeds
    # CSV has no types: pandas reads it back exactly given the seed's dtype (the README's
    # recipe; all seeds below 2**63 would come back int64); NaN is an empty cell.
    pytest.importorskip("pandas")
    import pandas as pd

    df = pd.read_csv(path, dtype={"seed": "uint64"})
    back = nf.Table({k: df[k].to_numpy() for k in df.columns})
    for name in ("label", "source"):  # pandas reads strings as objects
        back.columns[name] = back[name].astype(str)
    _same_table(long, back)
    edges = pd.read_csv(_edges().to_csv(tmp_path / "edges.csv"), dtype={"seed": "uint64"},
                        keep_default_na=False, na_values={"x": [""]})
    assert edges["seed"].tolist() == [0, 2**63, 2**64 - 1]
    assert edges["label"].tolist() == ["kernel", "disalignment", ""]
