"""The command line end to end, in subprocesses: demo, run (each kind), bad configs."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ntkflow as nf
from ntkflow.studies import derive_seed

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# The command line runs without matplotlib (no figures, a note on stderr): only the PNG
# checks depend on it, and test_cli_without_matplotlib runs that path in any case.
try:
    import matplotlib  # noqa: F401

    HAVE_MATPLOTLIB = True
except ImportError:
    HAVE_MATPLOTLIB = False


def ntkflow(*args: str, cwd: Path, hide_matplotlib: bool = False
            ) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if hide_matplotlib:
        # A package of that name first on the path whose import fails, as if absent.
        blocker = cwd / "_no_matplotlib"
        (blocker / "matplotlib").mkdir(parents=True, exist_ok=True)
        (blocker / "matplotlib" / "__init__.py").write_text(
            "raise ModuleNotFoundError(\"No module named 'matplotlib'\", name='matplotlib')\n")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(blocker),
                                                          env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "ntkflow.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _png(path: Path, plotted: bool = HAVE_MATPLOTLIB) -> None:
    """A PNG was written where matplotlib is importable; otherwise none."""
    if not plotted:
        assert not path.exists()
        return
    assert path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


NO_FIGURE = "matplotlib is not installed: no figure"


def _demo_deviation(stdout: str) -> float:
    m = re.search(r"largest relative deviation from the exact solution: (\S+)", stdout)
    assert m, stdout
    return float(m.group(1))


def test_demo_small(tmp_path: Path) -> None:
    r = ntkflow("demo", "--trajectories", "50", "--out", str(tmp_path / "fig"), "--quiet",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    _png(tmp_path / "fig" / "ntkflow_demo.png")
    # Every record against the closed form: dopri5 at rtol 1e-9 gives 1.7e-9 here (2e-9
    # with 1000 trajectories); 1e-8 is 5x that, and the demo at rtol 1e-8 fails it.
    assert 0.0 < _demo_deviation(r.stdout) < 1e-8, r.stdout
    # every setting 100% correct with 50 seeds (the labels of docs/theory.md §E.4)
    assert "K1 1.000, A1 1.000, D1 1.000, R2 1.000" in r.stdout
    assert r.stderr == ("" if HAVE_MATPLOTLIB else NO_FIGURE + " (pip install "
                        "'ntkflow[plot]')\n")


def test_demo_writes_into_its_own_folder_by_default(tmp_path: Path) -> None:
    # Not into the current folder: from a checkout the figure would show up in
    # `git status` and in the sdist (ntkflow_demo/ is in .gitignore and sdist.exclude).
    r = ntkflow("demo", "--trajectories", "20", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert [p.name for p in tmp_path.iterdir()] == (["ntkflow_demo"] if HAVE_MATPLOTLIB
                                                    else [])
    _png(tmp_path / "ntkflow_demo" / "ntkflow_demo.png")
    assert (f"figure: {Path('ntkflow_demo') / 'ntkflow_demo.png'}" in r.stdout
            ) is HAVE_MATPLOTLIB
    h = ntkflow("demo", "--help", cwd=tmp_path)
    assert "default: ntkflow_demo" in " ".join(h.stdout.split())


def test_demo_output_folder_is_ignored_by_git_and_the_sdist() -> None:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    root = Path(__file__).resolve().parents[1]
    assert "ntkflow_demo/" in (root / ".gitignore").read_text().splitlines()
    with (root / "pyproject.toml").open("rb") as fh:
        sdist = tomllib.load(fh)["tool"]["scikit-build"]["sdist"]
    assert "ntkflow_demo/" in sdist["exclude"]


def test_cli_without_matplotlib(tmp_path: Path) -> None:
    # What a user without the plot extra gets: the demo and a run complete, with their
    # numbers and data files, no figure and one line saying why.
    r = ntkflow("demo", "--trajectories", "10", "--quiet", cwd=tmp_path,
                hide_matplotlib=True)
    assert r.returncode == 0, r.stderr
    assert r.stderr == NO_FIGURE + " (pip install 'ntkflow[plot]')\n"
    assert 0.0 < _demo_deviation(r.stdout) < 1e-8 and "figure:" not in r.stdout
    assert not (tmp_path / "ntkflow_demo").exists()
    cfg = _small_config(tmp_path, "simulate.toml", {"trajectories = 500": "trajectories = 8"})
    r = ntkflow("run", str(cfg), "--out", "out", "--quiet", cwd=tmp_path,
                hide_matplotlib=True)
    assert r.returncode == 0, r.stderr
    assert "matplotlib is not installed: no figures" in r.stderr
    assert (tmp_path / "out" / "simulation.npz").is_file()
    _png(tmp_path / "out" / "trajectories.png", plotted=False)


def _small_config(tmp_path: Path, name: str, replace: dict[str, str]) -> Path:
    text = (EXAMPLES / name).read_text()
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text)
    return path


def test_run_simulate(tmp_path: Path) -> None:
    cfg = _small_config(tmp_path, "simulate.toml", {"trajectories = 500": "trajectories = 40"})
    r = ntkflow("run", str(cfg), "--out", "out", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    with np.load(out / "simulation.npz") as z:  # plain NumPy, no ntkflow needed
        assert z["loss"].shape == (40, 200)
        assert set(z["labels"]) == {"alignment"}
    with (out / "classification.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 40 and rows[0]["label"] == "alignment"
    _png(out / "trajectories.png")


def test_run_width_study(tmp_path: Path) -> None:
    cfg = _small_config(tmp_path, "width_study.toml", {
        "widths = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096]": "widths = [16, 64, 256]",
        "trajectories = 256": "trajectories = 30", "n_boot = 1000": "n_boot = 50"})
    r = ntkflow("run", str(cfg), "--out", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    for f in ("width_study.csv", "width_study_fits.csv", "width_study_trajectories.csv"):
        assert (out / f).stat().st_size > 50
    with np.load(out / "width_study.npz") as z:
        assert list(z["width"]) == [16, 64, 256]
        # issue 16: seeds are 64-bit unsigned; mixed with ones >= 2**63 they went through
        # float64 (6192166547663441477 came back as 6192166547663441920). Exact now.
        assert z["seed"].dtype == np.uint64 and z["width"].dtype == np.int64
        assert int(z["seed"][0]) == 6192166547663441477
    with (out / "width_study.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["seed"] for r in rows] == [str(derive_seed(0, m)) for m in (16, 64, 256)]
    assert rows[0]["seed"] == "6192166547663441477"
    assert [r["ok"] for r in rows] == ["30", "30", "30"]
    _png(out / "width_scaling.png")
    assert "rho_star" in r.stdout
    # issue 16: per_trajectory = true writes the long table, one row per width x
    # trajectory with every column, the same bytes as the Python API's to_long()
    api = nf.width_study([16, 64, 256], "ntk", trajectories=30, exact=True, n_boot=50)
    ref = api.to_long().to_csv(tmp_path / "ref.csv")
    long = out / "width_study_trajectories.csv"
    assert long.read_text() == ref.read_text()
    with long.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 * 30 and rows[0]["seed"] == "6192166547663441477"
    assert {"width", "trajectory", "label", "ok", "kappa", "rho_star", "t_hit"} <= set(rows[0])


def test_run_phase_diagram(tmp_path: Path) -> None:
    cfg = _small_config(tmp_path, "phase_diagram.toml", {
        "x_values = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5]": "x_values = [0.5, 1.25]",
        "y_values = [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0]": "y_values = [0.0, 2.0]",
        "trajectories = 200": "trajectories = 20", "exact = true": "exact = false",
        "# parquet = true": "parquet = true"})
    r = ntkflow("run", str(cfg), "--out", "out", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    with np.load(out / "phase_diagram.npz") as z:
        assert z["dominant"].shape == (2, 2)
        assert z["dominant"][0, 1] == "alignment" and z["dominant"][0, 0] == "kernel"
        dominant = z["dominant"].ravel().tolist()
    _png(out / "phase_diagram.png")
    # the long table as CSV and Parquet: one row per cell x trajectory, the same values
    # (the Parquet file written back as CSV gives the same bytes), dtypes kept
    long = nf.Table.read_parquet(out / "phase_diagram_trajectories.parquet")
    assert len(long) == 2 * 2 * 20 and long.names[:3] == ("alpha", "c_w", "width")
    assert long["seed"].dtype == np.uint64 and long["ok"].dtype == bool
    assert (long.to_csv(tmp_path / "back.csv").read_text()
            == (out / "phase_diagram_trajectories.csv").read_text())
    cells = nf.Table.read_parquet(out / "phase_diagram.parquet")
    assert cells["dominant"].tolist() == dominant


@pytest.mark.parametrize(("text", "message"), [
    ('kind = "simulate"\n[network\nwidth = 4\n', "is not valid TOML"),
    ('kind = "simulate"\n[network]\nwidht = 4\n', "unknown key network.widht"),
    ('kind = "simulate"\n[netwrk]\nwidth = 4\n', "unknown key 'netwrk'"),
    ('kind = "simulate"\n[network]\nwidth = 0\n', "width must be an integer >= 1"),
    ('kind = "simulate"\n[network]\nwidth = "big"\n', "network.width must be of type integer"),
    # t_max = "auto" draws the initial parameters before simulate() checks its arguments:
    # the message still names the key and value, not "trajectories, width and dim".
    ('kind = "simulate"\n[run]\ntrajectories = -5\n',
     "[run] trajectories must be an integer >= 1; got -5"),
    ('kind = "simulate"\n[run]\nseed = -1\n', "[run] seed must be an integer >= 0; got -1"),
    ('kind = "simulate"\n[run]\ntrajectories = 0\n[train]\nt_max = 1.0\n',
     "[run] trajectories must be an integer >= 1; got 0"),
    ('kind = "width_study"\n[study]\nwidths = [4, 8]\ntrajectories = -5\n',
     "[study] trajectories must be an integer >= 1; got -5"),
    ('kind = "simulate"\n[train]\nt_max = "later"\n', "train.t_max"),
    ('kind = "phase_diagram"\n[grid]\nx = "alpah"\nx_values = [1]\ny = "c_w"\n'
     'y_values = [0]\n', "x name must be one of"),
    ('kind = "phase_diagram"\n[grid]\nx = "alpha"\nx_values = [1]\ny = "beta"\n'
     'y_values = [0]\n', 'y name "beta" was renamed to "target"'),
    ('kind = "sweep"\n', "kind must be one of"),
    ('kind = "width_study"\n[output]\nparquet = "yes"\n',
     "output.parquet must be of type true/false"),
])
def test_bad_config_gives_one_line_error(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    r = ntkflow("run", str(cfg), "--out", "out", cwd=tmp_path)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ntkflow run: error:"), r.stderr
    assert message in lines[0], lines[0]


def test_missing_config_file(tmp_path: Path) -> None:
    r = ntkflow("run", "nope.toml", cwd=tmp_path)
    assert r.returncode == 2 and "cannot read" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("cmd", [[], ["demo"], ["run"], ["info"]])
def test_help_everywhere(tmp_path: Path, cmd: list[str]) -> None:
    r = ntkflow(*cmd, "--help", cwd=tmp_path)
    assert r.returncode == 0 and "usage: ntkflow" in r.stdout


@pytest.fixture(scope="module")
def plotted() -> tuple[Any, Any, Any]:
    """A small simulation, width study and phase diagram to plot."""
    pytest.importorskip("matplotlib")
    import ntkflow as nf

    res = nf.simulate(nf.TwoLayer(width=16, kappa=0.25), nf.LatentLine(),
                      nf.GradientFlow(t_max=20.0), init=nf.Gaussian(0.1, 0.1),
                      trajectories=30, record=nf.Record(times=50, spacing="log"))
    st = nf.width_study([16, 64], "ntk", trajectories=20, exact=True, n_boot=20)
    pd = nf.phase_diagram(("alpha", [0.5, 1.0]), ("c_w", [0.0]), width=64,
                          trajectories=20, exact=True)
    return res, st, pd


def test_plot_functions_return_and_save_figures(tmp_path: Path, plotted) -> None:
    from matplotlib.figure import Figure

    import ntkflow as nf
    from ntkflow import plots

    res, st, pd = plotted
    fig = plots.trajectories(res, nf.exact.line(res, res.net, res.data, res.train),
                             path=tmp_path / "a.png")
    assert isinstance(fig, Figure)
    _png(tmp_path / "a.png")
    assert isinstance(plots.width_scaling(st, path=tmp_path / "b.png"), Figure)
    _png(tmp_path / "b.png")
    assert isinstance(plots.phase_diagram(pd, path=tmp_path / "c.png"), Figure)
    _png(tmp_path / "c.png")
    with pytest.raises(ValueError, match="quantities"):
        plots.trajectories(res, quantities=("speed",))


def test_plot_functions_draw_into_given_axes(tmp_path: Path, plotted) -> None:
    # issue 16: plots.phase_diagram(pd, ax=...) was a TypeError, so figures could not be
    # composed. Each function draws into the Axes given (one, or one per panel) and
    # returns the (root) Figure they belong to, without a figure title of its own.
    from matplotlib.figure import Figure

    from ntkflow import plots

    res, st, pd = plotted
    fig = Figure(layout="constrained")
    top, bottom = fig.subfigures(2, 1)
    a = top.subplots(1, 3)
    b = bottom.subplots(1, 2)
    assert plots.phase_diagram(pd, ax=a[0]) is fig
    assert plots.width_scaling(st, ["rho_star", "abs_delta_a"], ax=a[1:]) is fig
    assert plots.trajectories(res, quantities=("loss", "alignment"), ax=b,
                              path=tmp_path / "all.png") is fig
    assert len(a[0].images) == 1 and a[1].lines and b[1].lines
    assert fig._suptitle is None
    _png(tmp_path / "all.png")
    solo = Figure().subplots()
    assert isinstance(plots.phase_diagram(pd, ax=solo), Figure)
    with pytest.raises(ValueError, match="ax must be 2 matplotlib Axes"):
        plots.width_scaling(st, ["rho_star", "abs_delta_a"], ax=a[0])
    with pytest.raises(ValueError, match="ax must be a matplotlib Axes"):
        plots.phase_diagram(pd, ax="left")


def test_relu_width_study_and_tanh_phase_diagram_from_toml(tmp_path: Path) -> None:
    """#16: studies of networks with an activation from a config file, on a dataset read
    from an .npz next to it (with a held-out set), equal to the Python API's."""
    from ntkflow import config

    rng = np.random.default_rng(0)
    X, Xt = rng.normal(size=(20, 3)), rng.normal(size=(10, 3))
    w = rng.normal(size=3)
    np.savez(tmp_path / "task.npz", X=X, y=np.sin(X @ w), X_test=Xt, y_test=np.sin(Xt @ w))
    study = tmp_path / "relu.toml"
    study.write_text('kind = "width_study"\n[parametrization]\nname = "ntk"\n'
                     '[data]\nfile = "task.npz"\n'
                     '[study]\nwidths = [32, 128]\ntrajectories = 4\nact = "relu"\n'
                     't_max = 10.0\ntimes = 20\nn_boot = 20\n[output]\nfigures = false\n')
    config.run(study, tmp_path / "out", quiet=True)
    api = nf.width_study([32, 128], "ntk", trajectories=4, act="relu", t_max=10.0,
                         times=20, n_boot=20, data=nf.Dataset(X, np.sin(X @ w)),
                         test=nf.Dataset(Xt, np.sin(Xt @ w)))
    with np.load(tmp_path / "out" / "width_study.npz") as z:
        for name in ("frac_kernel", "median_delta_lin", "median_test_loss_gap", "seed"):
            np.testing.assert_array_equal(z[name], api.table[name], name)
    grid = tmp_path / "tanh.toml"
    grid.write_text('kind = "phase_diagram"\n[parametrization]\nname = "ntk"\n'
                    '[data]\nfile = "task.npz"\n'
                    '[grid]\nx = "alpha"\nx_values = [0.0, 0.5]\ny = "s_w"\n'
                    'y_values = [0.5, 1.0]\nwidth = 32\ntrajectories = 3\nact = "tanh"\n'
                    't_max = 5.0\ntimes = 10\n[output]\nfigures = false\n')
    config.run(grid, tmp_path / "grid", quiet=True)
    assert (tmp_path / "grid" / "phase_diagram.csv").exists()
    bad = tmp_path / "bad.toml"
    bad.write_text('kind = "width_study"\n[data]\nfile = "none.npz"\n'
                   '[study]\nwidths = [8]\nact = "relu"\nt_max = 1.0\n')
    with pytest.raises(config.ConfigError, match="data.file"):
        config.run(bad, tmp_path / "bad", quiet=True)


def test_parquet_output_without_pyarrow_is_refused_before_any_work(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ntkflow import cli

    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    cfg = _small_config(tmp_path, "width_study.toml", {"# parquet = true": "parquet = true"})
    assert cli.main(["run", str(cfg), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["ntkflow run: error: output.parquet = true needs pyarrow: pip install "
                   "'ntkflow[parquet]' (or leave parquet out)"]
    assert not (tmp_path / "out").exists()  # refused before the folder, let alone a run


def test_teacher_student_file_is_what_its_generator_writes() -> None:
    # examples/data/teacher_student.npz is committed; its script must reproduce it bit
    # for bit, so the file can always be traced to (and rebuilt from) the code.
    import runpy

    data = EXAMPLES / "data"
    made = runpy.run_path(str(data / "make_teacher_student.py"))["make"]()
    assert (data / "teacher_student.npz").stat().st_size < 60_000
    with np.load(data / "teacher_student.npz") as z:
        assert sorted(z.files) == sorted(made) == ["X", "X_test", "y", "y_test"]
        for k, v in made.items():
            assert z[k].dtype == v.dtype == np.float64, k
            assert z[k].shape == v.shape and z[k].tobytes() == v.tobytes(), k
    assert made["X"].shape == (64, 5) and made["X_test"].shape == (256, 5)


def test_relu_width_study_example_runs_on_its_data_file(tmp_path: Path) -> None:
    data = EXAMPLES / "data" / "teacher_student.npz"
    cfg = _small_config(tmp_path, "relu_width_study.toml", {
        "widths = [64, 256, 1024]": "widths = [16, 64]",
        "trajectories = 16": "trajectories = 3", "n_boot = 1000": "n_boot = 20",
        "t_max = 30.0": "t_max = 3.0", "times = 40": "times = 10",
        'file = "data/teacher_student.npz"': f"file = {str(data)!r}",
        "[output]": "[output]\nfigures = false"})
    r = ntkflow("run", str(cfg), "--out", "out", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with (tmp_path / "out" / "width_study_trajectories.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["width"], r["trajectory"]) for r in rows] == [
        (m, t) for m in ("16", "64") for t in ("0", "1", "2")]
    assert {r["seed"] for r in rows} == {str(derive_seed(0, 16)), str(derive_seed(0, 64))}
    # the twin and the file's held-out set were used: their scores are numbers
    assert all(r["ok"] == "True" and float(r["delta_lin"]) >= 0 for r in rows)
    assert all(np.isfinite(float(r["test_loss_gap"])) for r in rows)


def test_phase_diagram_axes_from_toml(tmp_path: Path) -> None:
    """#16: the width and the new axes (samples, imbalance, target, ...) from a config
    file, equal to the Python API's."""
    from ntkflow import config

    rng = np.random.default_rng(2)
    X = rng.normal(size=(20, 2))
    np.savez(tmp_path / "task.npz", X=X, y=np.tanh(X[:, 0]))
    grid = tmp_path / "samples.toml"
    grid.write_text('kind = "phase_diagram"\n[parametrization]\nname = "ntk"\n'
                    '[data]\nfile = "task.npz"\n'
                    '[grid]\nx = "samples"\nx_values = [8, 20]\ny = "imbalance"\n'
                    'y_values = [0.25, 4.0]\nwidth = 16\ntrajectories = 3\n'
                    'act = "relu"\nt_max = 3.0\ntimes = 10\n[output]\nfigures = false\n')
    config.run(grid, tmp_path / "a", quiet=True)
    api = nf.phase_diagram(("samples", [8, 20]), ("imbalance", [0.25, 4.0]), "ntk",
                           width=16, trajectories=3, act="relu", t_max=3.0, times=10,
                           data=nf.Dataset(X, np.tanh(X[:, 0])))
    with np.load(tmp_path / "a" / "phase_diagram.npz") as z:
        assert z["x_values"].tolist() == [8, 20] and z["x_values"].dtype == np.int64
        for name in ("final_loss", "delta_lin"):
            np.testing.assert_array_equal(z[f"median_{name}"], api.median[name], name)
        np.testing.assert_array_equal(z["source"], api.source)
        np.testing.assert_array_equal(z["outputs"], api.outputs)
        assert z["outputs"].tolist() == [[1, 1], [1, 1]]
    widths = tmp_path / "widths.toml"
    widths.write_text('kind = "phase_diagram"\n[grid]\nx = "width"\nx_values = [8, 32]\n'
                      'y = "target"\ny_values = [0.5, -1.0]\ntrajectories = 4\n'
                      'exact = true\n[output]\nfigures = false\n')
    config.run(widths, tmp_path / "b", quiet=True)
    api = nf.phase_diagram(("width", [8, 32]), ("target", [0.5, -1.0]), trajectories=4,
                           exact=True)
    with (tmp_path / "b" / "phase_diagram.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["target"], r["width"], r["source"]) for r in rows] == [
        ("0.5", "8", "exact"), ("0.5", "32", "exact"), ("-1.0", "8", "exact"),
        ("-1.0", "32", "exact")]
    medians = [float(r["median_rho_star"]) for r in rows]
    assert medians == api.median["rho_star"].ravel().tolist()
