"""``ntkflow run CONFIG.toml``: a simulation, width study or phase diagram described in a
TOML file, with its data (.npz, .csv, and .parquet on request) and figures written to
an output folder.

Every key is checked against the schema below before anything runs: an unknown key, a
wrong type or a bad value raises ``ConfigError`` naming the key (``section.key``).
See ``examples/*.toml``. Studies of networks with an activation take their data from an
.npz file (``[data] file``, with X, y and optionally X_test, y_test) and the network's
``act``, ``bias``, ``loss`` and ``linearized`` in ``[study]`` / ``[grid]``.

``[output] per_trajectory = true`` adds a study's long table (``to_long()``: one row per
width or cell x trajectory, with its hyperparameters, seed, label, ok flag and every
score) as ``<kind>_trajectories.csv``; ``parquet = true`` writes every table as .parquet
too, with its dtypes (needs pyarrow).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ._validate import show

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """A configuration file that cannot be run; the message names the key."""


_NUM = (int, float)
_T_MAX = (int, float, str)
# section -> key -> allowed Python types of the TOML value
_COMMON: dict[str, dict[str, tuple[type, ...]]] = {
    "data": {"beta": _NUM, "sigma": _NUM, "loss_min": _NUM},
    "classify": {"eps": _NUM, "tau": _NUM},
    "output": {"figures": (bool,), "per_trajectory": (bool,), "parquet": (bool,)},
}
_PARAM: dict[str, tuple[type, ...]] = {"name": (str,), "alpha": _NUM, "beta_u": _NUM, "beta_w": _NUM, "c_u": _NUM,
          "c_w": _NUM, "kappa0": _NUM, "eta0": _NUM, "s_u0": _NUM, "s_w0": _NUM,
          "correlation": (int, float, str)}
_SOLVE: dict[str, tuple[type, ...]] = {"t_max": _T_MAX, "solver": (str,), "rtol": _NUM, "atol": _NUM, "dt": _NUM,
          "times": (int,), "loss_below": _NUM, "threads": (int,)}
# studies are sweeps: a store folder (relative paths from the config file's folder),
# resume, and a Dask scheduler address
_SWEEP: dict[str, tuple[type, ...]] = {"store": (str,), "resume": (bool,), "scheduler": (str,)}
# Studies of any network: its activation, bias, loss and twin, and the data as a file
# (.npz with X, y and optionally X_test, y_test; relative to the config file's folder) or
# a LatentLine.
_NETWORK: dict[str, tuple[type, ...]] = {"act": (str,), "bias": (bool,), "loss": (str,),
                                         "linearized": (bool,)}
_DATA: dict[str, tuple[type, ...]] = {**_COMMON["data"], "file": (str,), "classes": (int,)}
SCHEMA: dict[str, dict[str, dict[str, tuple[type, ...]]]] = {
    "simulate": {
        "network": {"width": (int,), "kappa": _NUM},
        "init": {"s_u": _NUM, "s_w": _NUM, "correlation": (int, float, str)},
        "train": {"eta_u": _NUM, "eta_w": _NUM, "lambda_u": _NUM, "lambda_w": _NUM,
                  **_SOLVE},
        "run": {"trajectories": (int,), "seed": (int,), "method": (str,),
                "spacing": (str,)},
        **_COMMON,
    },
    "width_study": {
        "parametrization": _PARAM,
        "study": {"widths": (list,), "trajectories": (int,), "seed": (int,),
                  "exact": (bool,), "n_boot": (int,), "fit": (list,), **_SOLVE,
                  **_SWEEP, **_NETWORK},
        **_COMMON,
        "data": _DATA,
    },
    "phase_diagram": {
        "parametrization": _PARAM,
        "grid": {"x": (str,), "x_values": (list,), "y": (str,), "y_values": (list,),
                 "width": (int,), "trajectories": (int,), "seed": (int,),
                 "exact": (bool,), **_SOLVE, **_SWEEP, **_NETWORK},
        **_COMMON,
        "data": _DATA,
    },
}


def _type_name(types: tuple[type, ...]) -> str:
    names = {int: "integer", float: "number", str: "string", bool: "true/false",
             list: "array"}
    return " or ".join(dict.fromkeys(names[t] for t in types))


def load(path: str | Path) -> dict[str, Any]:
    """Read and check a config file; returns the parsed dict (with ``kind``)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {p}: {exc.strerror or exc}") from None
    try:
        cfg = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p} is not valid TOML: {exc}") from None
    kind = cfg.get("kind")
    if kind not in SCHEMA:
        raise ConfigError(f"kind must be one of {', '.join(SCHEMA)}; got {show(kind)}")
    schema = SCHEMA[kind]
    for section, body in cfg.items():
        if section == "kind":
            continue
        if section not in schema:
            raise ConfigError(f"unknown key {section!r} for kind {kind!r} (allowed "
                              f"sections: {', '.join(schema)})")
        if not isinstance(body, dict):
            raise ConfigError(f"{section} must be a table ([{section}])")
        for key, value in body.items():
            if key not in schema[section]:
                raise ConfigError(f"unknown key {section}.{key} (allowed in [{section}]: "
                                  f"{', '.join(schema[section])})")
            types = schema[section][key]
            ok = isinstance(value, types) and not (isinstance(value, bool) and
                                                   bool not in types)
            if not ok:
                raise ConfigError(f"{section}.{key} must be of type {_type_name(types)}; "
                                  f"got {show(value)}")
    return cfg


def _call(key: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run ``fn``; a ValueError from validation becomes a ConfigError naming ``key``."""
    try:
        return fn(*args, **kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"[{key}] {exc}") from None


def _t_max(value: Any, key: str) -> Any:
    if isinstance(value, str):
        if value != "auto":
            raise ConfigError(f"{key}.t_max must be a number > 0 or \"auto\"; got {show(value)}")
        return "auto"
    return float(value)


def _data(cfg: dict[str, Any]) -> Any:
    from .specs import LatentLine

    return _call("data", LatentLine, **cfg.get("data", {}))


def _study_data(cfg: dict[str, Any]) -> dict[str, Any]:
    """A study's data keywords: ``data`` (and ``test``) from ``[data] file`` (an .npz with
    X, y and optionally X_test, y_test, read relative to the config file), else the
    LatentLine of ``[data]``."""
    from .specs import Dataset

    sec = dict(cfg.get("data", {}))
    if "file" not in sec:
        if "classes" in sec:
            raise ConfigError("data.classes needs data.file (class labels of a dataset)")
        return {"data": _data(cfg)}
    extra = sorted(set(sec) - {"file", "classes"})
    if extra:
        raise ConfigError(f"data.{extra[0]} is for a LatentLine, not with data.file")
    path = Path(sec["file"])
    if not path.is_absolute():
        path = cfg["_sweep"][0].parent / path
    try:
        with np.load(path) as z:
            arrays = {k: np.asarray(z[k]) for k in z.files}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"data.file: cannot read {path} as .npz ({exc})") from None
    for k in ("X", "y"):
        if k not in arrays:
            raise ConfigError(f"data.file: {path} has no array {k!r} (it needs X and y; "
                              "X_test and y_test are optional)")
    classes = sec.get("classes")
    out = {"data": _call("data", Dataset, arrays["X"], arrays["y"], classes=classes)}
    if "X_test" in arrays or "y_test" in arrays:
        if not ("X_test" in arrays and "y_test" in arrays):
            raise ConfigError(f"data.file: {path} needs both X_test and y_test, or neither")
        out["test"] = _call("data", Dataset, arrays["X_test"], arrays["y_test"],
                            classes=classes)
    return out


def _network_kwargs(sec: dict[str, Any]) -> dict[str, Any]:
    return {k: sec[k] for k in _NETWORK if k in sec}


def _parametrization(cfg: dict[str, Any]) -> Any:
    from .parametrization import Parametrization

    sec = dict(cfg.get("parametrization", {}))
    name = sec.pop("name", None)
    if name is not None:
        return _call("parametrization", Parametrization.named, name, **sec)
    return _call("parametrization", Parametrization, **sec)


def _solve_kwargs(sec: dict[str, Any], key: str) -> dict[str, Any]:
    out: dict[str, Any] = {k: sec[k] for k in ("solver", "rtol", "atol", "dt", "times", "loss_below",
                               "threads") if k in sec}
    out["t_max"] = _t_max(sec.get("t_max", "auto"), key)
    return out


def _sweep_kwargs(sec: dict[str, Any], config: Path, store: str | Path | None,
                  scheduler: str | None) -> dict[str, Any]:
    """store/resume/client of a study: the command line's --store/--scheduler win over
    the file's keys; a relative store in the file is relative to the file's folder."""
    kw: dict[str, Any] = {"resume": sec.get("resume", True)}
    if store is not None:
        kw["store"] = Path(store)
    elif "store" in sec:
        kw["store"] = config.parent / sec["store"]
    address = scheduler if scheduler is not None else sec.get("scheduler")
    if address is not None:
        kw["client"] = address
    return kw


def run(path: str | Path, out: str | Path, *, quiet: bool = False,
        store: str | Path | None = None, scheduler: str | None = None) -> list[Path]:
    """Run a config file; returns the files written.

    ``store`` (a folder) and ``scheduler`` (a Dask address) apply to width studies and
    phase diagrams, over the config's ``store``/``scheduler`` keys.
    """
    cfg = load(path)
    _check_parquet(cfg)
    cfg["_sweep"] = (Path(path), store, scheduler)
    if cfg["kind"] == "simulate" and (store is not None or scheduler is not None):
        raise ConfigError("--store and --scheduler apply to width_study and "
                          "phase_diagram configs, not simulate")
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create output folder {out}: {exc.strerror}") from None
    kind = cfg["kind"]
    figures = cfg.get("output", {}).get("figures", True)
    no_matplotlib = False
    if figures:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            no_matplotlib, figures = True, False
    cls = cfg.get("classify", {})
    eps, tau = cls.get("eps", 0.05), cls.get("tau", 0.1)
    t0 = time.perf_counter()
    if kind == "simulate":
        files = _run_simulate(cfg, out, figures, eps, tau, quiet)
    elif kind == "width_study":
        files = _run_width_study(cfg, out, figures, eps, tau, quiet)
    else:
        files = _run_phase_diagram(cfg, out, figures, eps, tau, quiet)
    if no_matplotlib:
        # Said after the run, so that a config refused on its values gets one line only.
        print("matplotlib is not installed: no figures (pip install 'ntkflow[plot]')",
              file=sys.stderr)
    if not quiet:
        print(f"{kind} done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return files


def _check_parquet(cfg: dict[str, Any]) -> None:
    """``[output] parquet = true`` needs pyarrow: refused before anything runs, rather
    than after a long study that then cannot write its files."""
    if not cfg.get("output", {}).get("parquet", False):
        return
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise ConfigError("output.parquet = true needs pyarrow: pip install "
                          "'ntkflow[parquet]' (or leave parquet out)") from None


def _tables(cfg: dict[str, Any], out: Path, **tables: Any) -> list[Path]:
    """Each table as ``out/<name>.csv``, and as .parquet beside it with ``[output]
    parquet = true``."""
    parquet = cfg.get("output", {}).get("parquet", False)
    files = []
    for name, table in tables.items():
        files.append(table.to_csv(out / f"{name}.csv"))
        if parquet:
            files.append(table.to_parquet(out / f"{name}.parquet"))
    return files


def _run_simulate(cfg: dict[str, Any], out: Path, figures: bool, eps: float, tau: float,
                  quiet: bool) -> list[Path]:
    from . import exact
    from ._initial import draw_initial
    from ._simulate import simulate
    from .mechanisms import classify
    from .specs import Gaussian, GradientFlow, Record, TwoLayer

    net = _call("network", TwoLayer, **cfg.get("network", {"width": 256}))
    data = _data(cfg)
    init = _call("init", Gaussian, **cfg.get("init", {}))
    run_ = cfg.get("run", {})
    n = run_.get("trajectories", 1000)
    seed = run_.get("seed", 0)
    tr = dict(cfg.get("train", {}))
    solve = _solve_kwargs(tr, "train")
    threads = solve.pop("threads", None)
    loss_below = solve.pop("loss_below", None)
    times = solve.pop("times", 200)
    t_max = solve.pop("t_max")
    decay = {k: tr[k] for k in ("lambda_u", "lambda_w") if k in tr}
    if t_max == "auto":
        if data.dim != 1:  # pragma: no cover - LatentLine only here
            raise ConfigError("train.t_max=\"auto\" needs one-dimensional data")
        if any(v != 0 for v in decay.values()):
            raise ConfigError('train.t_max="auto" comes from the closed form, which '
                              "has no weight decay: give train.t_max as a number with "
                              "train.lambda_u or train.lambda_w")
        probe = _call("train", GradientFlow, eta_u=tr.get("eta_u", 1.0),
                      eta_w=tr.get("eta_w", 1.0))
        params = _call("run", draw_initial, init, net.width, 1, n, seed=seed)
        sol = exact.line(params, net, data, probe)
        t = np.asarray(sol.escape_time) + 40.0 / np.asarray(sol.rate)
        t_max = float(np.max(t[np.isfinite(t)]))
    train = _call("train", GradientFlow, eta_u=tr.get("eta_u", 1.0),
                  eta_w=tr.get("eta_w", 1.0), t_max=t_max, **decay, **solve)
    record = _call("run", Record, times=times, spacing=run_.get("spacing", "log"),
                   loss_below=loss_below)
    res = _call("run", simulate, net, data, train, init=init, trajectories=n, seed=seed,
                record=record, threads=threads, method=run_.get("method", "full"))
    c = classify(res, eps, tau)
    if not quiet:
        print(res.summary())
        print(c.summary())
    files = []
    arrays = {k: getattr(res, k) for k in ("times", "loss", "p", "norm_u2", "norm_w2",
                                           "alignment", "ntk", "status", "t_fail",
                                           "steps", "t_hit") if getattr(res, k) is not None}
    arrays["labels"] = c.labels
    arrays.update({f"score_{k}": v for k, v in c.scores.items()})
    np.savez(out / "simulation.npz", **arrays)
    files.append(out / "simulation.npz")
    from ._table import Table

    cols: dict[str, Any] = {"trajectory": np.arange(res.trajectories), "label": c.labels,
                            "status": res.status, "final_loss": res.loss[:, -1]}
    cols.update(c.scores)
    files.extend(_tables(cfg, out, classification=Table(cols)))
    if figures:
        from . import plots

        solution = (exact.line(res, net, data, train)
                    if train.eta_u > 0 and train.eta_w > 0 and train.lambda_u == 0
                    and train.lambda_w == 0 else None)
        plots.trajectories(res, solution, path=out / "trajectories.png")
        files.append(out / "trajectories.png")
    return files


def _run_width_study(cfg: dict[str, Any], out: Path, figures: bool, eps: float,
                     tau: float, quiet: bool) -> list[Path]:
    from .studies import width_study

    st = dict(cfg.get("study", {}))
    if "widths" not in st:
        raise ConfigError("study.widths is required (e.g. widths = [16, 64, 256])")
    kw = _solve_kwargs(st, "study")
    for k in ("trajectories", "seed", "exact", "n_boot"):
        if k in st:
            kw[k] = st[k]
    kw.update(_sweep_kwargs(st, *cfg["_sweep"]))
    if "fit" in st:
        kw["fit"] = tuple(st["fit"])
    kw.update(_network_kwargs(st))
    res = _call("study", width_study, st["widths"], _parametrization(cfg),
                **_study_data(cfg), eps=eps, tau=tau, progress=not quiet, **kw)
    if not quiet:
        print(res.summary())
    files = _tables(cfg, out, width_study=res.table, width_study_fits=res.fits_table())
    if cfg.get("output", {}).get("per_trajectory", False):
        # The long table: a superset of the columns this file had before (width,
        # trajectory, label, scores), now with each width's hyperparameters and seed.
        files.extend(_tables(cfg, out, width_study_trajectories=res.to_long()))
    columns: dict[str, Any] = {k: np.asarray(v) for k, v in res.table.columns.items()}
    np.savez(out / "width_study.npz", **columns)
    files.append(out / "width_study.npz")
    if figures:
        from . import plots

        plots.width_scaling(res, path=out / "width_scaling.png")
        files.append(out / "width_scaling.png")
    return files


def _run_phase_diagram(cfg: dict[str, Any], out: Path, figures: bool, eps: float,
                       tau: float, quiet: bool) -> list[Path]:
    from .studies import phase_diagram

    g = dict(cfg.get("grid", {}))
    for k in ("x", "x_values", "y", "y_values"):
        if k not in g:
            raise ConfigError(f"grid.{k} is required")
    kw = _solve_kwargs(g, "grid")
    for k in ("width", "trajectories", "seed", "exact"):
        if k in g:
            kw[k] = g[k]
    kw.update(_sweep_kwargs(g, *cfg["_sweep"]))
    kw.update(_network_kwargs(g))
    res = _call("grid", phase_diagram, (g["x"], g["x_values"]), (g["y"], g["y_values"]),
                _parametrization(cfg), **_study_data(cfg), eps=eps, tau=tau,
                progress=not quiet, **kw)
    if not quiet:
        print(res.summary())
    files = _tables(cfg, out, phase_diagram=res.table())
    if cfg.get("output", {}).get("per_trajectory", False):
        files.extend(_tables(cfg, out, phase_diagram_trajectories=res.to_long()))
    res.to_npz(out / "phase_diagram.npz")
    files.append(out / "phase_diagram.npz")
    if figures:
        from . import plots

        plots.phase_diagram(res, path=out / "phase_diagram.png")
        files.append(out / "phase_diagram.png")
    return files
