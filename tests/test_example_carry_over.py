"""examples/carry_over.py at a small size. Its linear runs are model A, so their labels
must be the closed form's; and a relu network on one-dimensional data without a bias is two
copies of model A (units with w_i > 0 see only z > 0, the others only z < 0), so the
alignment and disalignment settings keep their labels under relu (docs/carry_over.md)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path


def _example():
    path = Path(__file__).resolve().parents[1] / "examples" / "carry_over.py"
    spec = importlib.util.spec_from_file_location("carry_over", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_carry_over_example(tmp_path, capsys) -> None:
    res = _example().main(["--widths", "32", "64", "--families", "A1", "D1", "--acts", "relu",
                           "--dim", "1", "--trajectories", "4", "--out", str(tmp_path),
                           "--no-figure"])
    out = capsys.readouterr().out
    assert "width exponents of the medians" in out
    rows = {(r["family"], r["act"], r["width"]): r for r in res["rows"]}
    assert len(rows) == 2 * 2 * 2
    for (fam, act, w), r in rows.items():
        assert r["ok"] == 4, (fam, act, w)
        if act == "linear":  # model A: the simulated labels are the exact ones
            assert r["dominant"] == r["expected"] and r["frac_" + r["expected"]] == 1.0
        else:  # relu on a line: two copies of model A
            assert r["dominant"] == {"A1": "alignment", "D1": "disalignment"}[fam]
            assert r["median_delta_lin"] > 0.05  # the twin test does not call them kernel
    saved = json.loads((tmp_path / "carry_over.json").read_text())
    assert [r["dominant"] for r in saved["rows"]] == [r["dominant"] for r in res["rows"]]
    assert (tmp_path / "carry_over.txt").read_text().startswith("dominant label")
