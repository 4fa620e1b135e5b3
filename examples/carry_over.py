"""The carry-over study: do model A's mechanism labels survive a relu or tanh activation?

docs/theory.md §E.4 lists settings whose labels are known exactly for model A (a linear
network on one-dimensional data), and §D the width parametrizations. This script turns each
into a family over widths 64 ... 4096, trains linear, relu and tanh networks of every
family on the same one-dimensional data, and reports, per family, activation and width, the
label fractions, the median NTK change rho*, the twin distance delta_lin that decides the
kernel label for networks with an activation (§E.5) and the test-loss gap between network
and twin, with width exponents fitted to their medians. docs/carry_over.md shows and
discusses the result; regenerate it with

    python examples/carry_over.py --out carry_over      # ~1 h on 2 cores; resumable

(each family and activation is one resumable sweep under OUT/store; a killed run picks up
where it stopped). ``--help`` lists the knobs; ``--families``/``--acts``/``--widths`` run a
part.

The data is model A's: n training inputs z standardised to mean 0 and mean square 1
exactly (so a linear network on them is model A with Sigma = 1, bit for bit the same
moments), targets y = beta* z, and a held-out set of fresh z. The E.4 settings become width
families by keeping their init scales, layer correlation and target, with kappa = m^-1/2
for those defined at kappa = 1/sqrt(256) (K1, K2, A1, R2) and kappa = 1/m for those at
kappa = 1/256 (A2, D1, D2); the latter also scale both learning rates with m (eta = m/256),
which only changes the unit of time (§D), so that the horizon does not grow with m. R1
(width 1) and X (a target per run) have no width family and are left out. The linear runs
are model A itself: they are simulated on ``LatentLine`` with the closed-form horizon, and
their exact t = inf labels (``exact=True``) are the reference each activation is compared
with. relu and tanh train for 4x model A's longest horizon over the widths.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import ntkflow as nf
from ntkflow.studies import fit_scaling

P = nf.Parametrization


@dataclass(frozen=True)
class Family:
    """One width family: a parametrization (with its init scales) and a target slope."""

    name: str
    source: str  # where the setting comes from: "E.4" or "D"
    param: nf.Parametrization
    target: float


# A2, D1, D2: kappa = 1/m, eta = m/256 (= 1 at m = 256, as in §E.4).
_MF = {"alpha": 1.0, "c_u": 1.0, "c_w": 1.0, "eta0": 1 / 256}
FAMILIES: tuple[Family, ...] = (
    Family("K1", "E.4 (= ntk, D)", P.named("ntk"), 1.0),
    Family("K2", "E.4", P(alpha=0.5, s_w0=0.01), 1.0),
    Family("A1", "E.4", P(alpha=0.5, s_u0=0.01, s_w0=0.01), 1.0),
    Family("A2", "E.4", P(**_MF), 2.0),
    Family("D1", "E.4", P(**_MF, correlation=0.9), 0.05),
    Family("D2", "E.4", P(**_MF, correlation=0.9), -0.1),
    Family("R2", "E.4", P(alpha=0.5, s_u0=0.01, s_w0=0.01, correlation="copy"), 1.0),
    Family("mean_field", "D", P.named("mean_field"), 1.0),
    Family("standard", "D", P.named("standard"), 1.0),
    Family("small_init", "D", P.named("small_init"), 1.0),
    Family("ntk_fast_w", "D", P.named("ntk_fast_w"), 1.0),
    Family("mf_imbalanced", "D", P.named("mean_field_imbalanced"), 1.0),
)
FIT = ("rho_star", "delta_lin", "abs_test_loss_gap")
SHORT = {"kernel": "K", "alignment": "A", "disalignment": "D", "rescaling": "R", "failed": "F"}


def line_data(n: int, beta: float, seed: int) -> nf.Dataset:
    """n inputs z on a line, standardised exactly (mean 0, mean square 1), y = beta z."""
    z = np.random.default_rng(seed).standard_normal(n)
    z = (z - z.mean()) / np.sqrt(np.mean((z - z.mean()) ** 2))
    return nf.Dataset(z[:, None], beta * z)


def gauss_data(n: int, d: int, beta: float, seed: int) -> nf.Dataset:
    """n inputs in d dimensions, whitened exactly (X^T X / n = I), y = beta x_1: model A's
    target along one direction of isotropic inputs."""
    X = np.random.default_rng(seed).standard_normal((n, d))
    X -= X.mean(axis=0)
    L = np.linalg.cholesky(X.T @ X / n)
    X = np.linalg.solve(L, X.T).T
    return nf.Dataset(X, beta * X[:, 0])


def datasets(fam: Family, dim: int, args: argparse.Namespace) -> tuple[nf.Dataset, nf.Dataset]:
    """Training and held-out data: on a line (dim 1, model A's) or isotropic in dim > 1."""
    if dim == 1:
        return line_data(args.samples, fam.target, 1), line_data(args.test, fam.target, 2)
    return (gauss_data(args.samples, dim, fam.target, 1),
            gauss_data(args.test, dim, fam.target, 2))


def model_a(fam: Family, widths: Sequence[int], trajectories: int,
            seed: int) -> tuple[nf.WidthStudy, nf.WidthStudy]:
    """Model A on this family: exact t = inf labels, and a simulated run whose closed-form
    horizons set the horizon of the other activations."""
    data = nf.LatentLine(beta=fam.target)
    exact = nf.width_study(widths, fam.param, trajectories, seed, data=data, exact=True,
                           fit=())
    sim = nf.width_study(widths, fam.param, trajectories, seed, data=data, times=100,
                         fit=())
    return exact, sim


def activation_study(fam: Family, act: str, widths: Sequence[int], trajectories: int,
                     seed: int, t_max: float, args: argparse.Namespace,
                     dim: int = 1) -> nf.WidthStudy:
    train, test = datasets(fam, dim, args)
    store = Path(args.out) / "store" / (f"{fam.name}-{act}" + ("" if dim == 1 else f"-d{dim}"))
    return nf.width_study(widths, fam.param, trajectories, seed, data=train, test=test,
                          act=act, t_max=t_max, rtol=args.rtol, atol=1e-12, times=100,
                          fit=(), store=store)


def rows_of(fam: str, act: str, study: nf.WidthStudy,
            reference: nf.WidthStudy) -> list[dict[str, Any]]:
    """One row per width: label fractions, the model-A reference label, score medians."""
    rows = []
    t = study.table
    for k, e in enumerate(study.ensembles):
        c = e.classification
        ok = c.ok
        gap = np.abs(c.scores.get("test_loss_gap", np.full(ok.size, np.nan)))[ok]
        rows.append({
            "family": fam, "act": act, "width": int(t["width"][k]),
            "expected": reference.ensembles[k].classification.dominant,
            "dominant": c.dominant, "kernel_test": c.kernel_test,
            "ok": int(ok.sum()), "trajectories": c.trajectories,
            **{f"frac_{lab}": float(c.fractions[lab]) for lab in nf.mechanisms.LABELS},
            "median_rho_star": float(t["median_rho_star"][k]),
            "median_delta_lin": float(t["median_delta_lin"][k]),
            "median_abs_test_loss_gap": float(np.median(gap)) if gap.size else float("nan"),
            "median_final_loss": float(t["median_final_loss"][k]),
            "t_max": float(t["t_max"][k]), "seconds": float(t["seconds"][k]),
        })
    return rows


def fits_of(fam: str, act: str, study: nf.WidthStudy, widths: Sequence[int],
            seed: int) -> list[dict[str, Any]]:
    """Width exponents of the medians of rho*, delta_lin and |test-loss gap|."""
    out = []
    for score in FIT:
        name = score.removeprefix("abs_")
        samples = []
        for e in study.ensembles:
            v = e.classification.scores.get(name)
            v = np.full(e.classification.trajectories, np.nan) if v is None else v
            samples.append(np.abs(v)[e.classification.ok])
        f = fit_scaling(widths, samples, score=score, boot_seed=seed)
        out.append({"family": fam, "act": act, "score": score, "exponent": f.exponent,
                    "low": f.low, "high": f.high})
    return out


def label_line(rows: Sequence[dict[str, Any]]) -> str:
    return "  ".join(f"{SHORT[r['dominant']]} {r['frac_' + r['dominant']] if r['dominant'] != 'failed' else 0:.2f}"
                     for r in rows)


def acceptance(rows: Sequence[dict[str, Any]], family: str,
               eps_lin: float = 0.05) -> dict[str, Any]:
    """§E.5's promise for relu at NTK parametrization: kernel for >= 99% of seeds at every
    width whose median delta_lin is below eps_lin / 2."""
    relu = sorted((r for r in rows if r["family"] == family and r["act"] == "relu"),
                  key=lambda r: r["width"])
    below = [r for r in relu if r["median_delta_lin"] < eps_lin / 2]
    return {"first_width": below[0]["width"] if below else None,
            "kernel_fractions": {r["width"]: r["frac_kernel"] for r in below},
            "trajectories": {r["width"]: r["ok"] for r in below},
            "passed": all(r["frac_kernel"] >= 0.99 for r in below) if below else None}


def trajectories(family: str, act: str, args: argparse.Namespace) -> int:
    """K1 (the NTK parametrization) carries the acceptance check and the exponents, so it
    gets more seeds than the other families."""
    if family != "K1":
        return args.trajectories
    return args.acceptance_trajectories if act == "relu" else args.k1_trajectories


def run(args: argparse.Namespace) -> dict[str, Any]:
    widths = args.widths
    families = [f for f in FAMILIES if args.families is None or f.name in args.families]
    rows: list[dict[str, Any]] = []
    fits: list[dict[str, Any]] = []
    for fam in families:
        exact, sim = model_a(fam, widths, trajectories(fam.name, "linear", args), args.seed)
        rows += rows_of(fam.name, "linear", sim, exact)
        fits += fits_of(fam.name, "linear", sim, widths, args.seed)
        horizon = 4.0 * float(np.max(sim.table["t_max"]))
        print(f"{fam.name:<14} linear {label_line(rows[-len(widths):])}   "
              f"(model A exact: {' '.join(SHORT[e.classification.dominant] for e in exact.ensembles)})",
              flush=True)
        for act in args.acts:
            n = trajectories(fam.name, act, args)
            t0 = time.perf_counter()
            study = activation_study(fam, act, widths, n, args.seed, horizon, args)
            rows += rows_of(fam.name, act, study, exact)
            fits += fits_of(fam.name, act, study, widths, args.seed)
            print(f"{fam.name:<14} {act:<6} {label_line(rows[-len(widths):])}   "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        if fam.name == "K1" and args.dim > 1:  # the NTK parametrization off the line too
            name = f"K1 d={args.dim}"
            for act in ("linear", *args.acts):
                n = trajectories(fam.name, act, args)
                t0 = time.perf_counter()
                study = activation_study(fam, act, widths, n, args.seed, horizon, args,
                                         dim=args.dim)
                rows += rows_of(name, act, study, exact)
                fits += fits_of(name, act, study, widths, args.seed)
                print(f"{name:<14} {act:<6} {label_line(rows[-len(widths):])}   "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
    accept = {f: acceptance(rows, f) for f in ("K1", f"K1 d={args.dim}")
              if any(r["family"] == f and r["act"] == "relu" for r in rows)}
    return {"widths": list(widths), "rows": rows, "fits": fits,
            "acceptance": accept, "settings": {
                "samples": args.samples, "test": args.test, "dim": args.dim, "rtol": args.rtol,
                "trajectories": args.trajectories, "k1_trajectories": args.k1_trajectories,
                "acceptance_trajectories": args.acceptance_trajectories, "seed": args.seed,
                "ntkflow": nf.__version__, "build": nf.build_info()}}


def report(res: dict[str, Any]) -> str:
    """The tables docs/carry_over.md quotes: labels per width, and the fitted exponents."""
    ws = res["widths"]
    lines = ["dominant label (fraction) per width; * where it differs from model A's exact label",
             f"{'family':<14}{'act':<8}" + "".join(f"{w:>9}" for w in ws)]
    for r0 in range(0, len(res["rows"]), len(ws)):
        block = res["rows"][r0:r0 + len(ws)]
        cells = ""
        for r in block:
            frac = r["frac_" + r["dominant"]] if r["dominant"] != "failed" else 0.0
            mark = "*" if r["dominant"] != r["expected"] else " "
            cells += f"{SHORT[r['dominant']]:>3} {frac:4.2f}{mark}"
        lines.append(f"{block[0]['family']:<14}{block[0]['act']:<8}{cells}")
    lines.append("")
    lines.append("width exponents of the medians (95% bootstrap interval)")
    lines.append(f"{'family':<14}{'act':<8}" + "".join(f"{s:>28}" for s in FIT))
    by: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
    for f in res["fits"]:
        by.setdefault((f["family"], f["act"]), {})[f["score"]] = f
    for (fam, act), fs in by.items():
        cells = ""
        for s in FIT:
            f = fs[s]
            cells += (f"{f['exponent']:+8.2f} [{f['low']:+.2f}, {f['high']:+.2f}]"
                      if np.isfinite(f["exponent"]) else f"{'-':>8}{'':>17}").rjust(28)
        lines.append(f"{fam:<14}{act:<8}{cells}")
    lines.append("")
    for fam, acc in res["acceptance"].items():
        lines.append(f"relu, {fam} (NTK parametrization): median delta_lin < eps_lin/2 from "
                     f"width {acc['first_width']}; kernel fractions there "
                     f"{acc['kernel_fractions']} -> "
                     + {True: "passed", False: "NOT passed", None: "no width reached it"}[acc["passed"]])
    return "\n".join(lines)


def figure(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ws = np.array(res["widths"])
    fams = list(dict.fromkeys(r["family"] for r in res["rows"]))
    acts = list(dict.fromkeys(r["act"] for r in res["rows"]))
    fig, axes = plt.subplots(2, 2, figsize=(12, 9.5))
    colors = {"kernel": "#4c72b0", "alignment": "#55a868", "disalignment": "#c44e52",
              "rescaling": "#8172b2", "failed": "#999999"}
    ax = axes[0, 0]
    for i, fam in enumerate(fams):
        for a, act in enumerate(acts):
            for j, w in enumerate(ws):
                r = next(r for r in res["rows"] if r["family"] == fam and r["act"] == act
                         and r["width"] == w)
                x, y = j + a / (len(acts) + 0.5), i
                frac = r["frac_" + r["dominant"]] if r["dominant"] != "failed" else 1.0
                ax.add_patch(plt.Rectangle((x, y - 0.4), 1 / (len(acts) + 0.5), 0.8,
                                           color=colors[r["dominant"]], alpha=0.35 + 0.65 * frac))
                if r["dominant"] != r["expected"]:
                    ax.text(x + 0.13, y, "x", ha="center", va="center", fontsize=8)
    ax.set_xlim(0, len(ws))
    ax.set_ylim(len(fams) - 0.5, -0.5)
    ax.set_xticks(np.arange(len(ws)) + 0.45, [str(w) for w in ws])
    ax.set_yticks(range(len(fams)), fams)
    ax.set_xlabel("width (bars in each cell: " + ", ".join(acts) + ")")
    ax.set_title("dominant label (x: differs from model A's exact label)")
    for lab, col in colors.items():
        if lab != "failed":
            ax.bar(0, 0, color=col, label=lab)
    ax.legend(loc="lower right", fontsize=7, ncol=2)
    styles = {"linear": ":", "relu": "-", "tanh": "--"}
    cmap = plt.get_cmap("tab20")
    for ax, key, title in ((axes[0, 1], "median_delta_lin", "median delta_lin (twin distance)"),
                           (axes[1, 0], "median_rho_star", "median rho* (NTK change)"),
                           (axes[1, 1], "median_abs_test_loss_gap",
                            "median |test loss - twin's test loss|")):
        for i, fam in enumerate(fams):
            for act in acts:
                v = [next(r[key] for r in res["rows"] if r["family"] == fam and r["act"] == act
                          and r["width"] == w) for w in ws]
                if np.any(np.isfinite(v)):
                    ax.loglog(ws, v, styles.get(act, "-"), color=cmap(i),
                              label=fam if act == acts[-1] else None)
        ax.set_xlabel("width m")
        ax.set_title(title)
    axes[0, 1].axhline(0.05, color="k", lw=0.8)
    axes[0, 1].axhline(0.025, color="k", lw=0.8, ls=":")
    axes[1, 0].axhline(0.05, color="k", lw=0.8)
    axes[0, 1].legend(fontsize=7, ncol=2, title="solid relu, dashed tanh, dotted linear",
                      title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048, 4096])
    ap.add_argument("--families", nargs="+", default=None,
                    choices=[f.name for f in FAMILIES], metavar="FAMILY",
                    help=f"a subset of {[f.name for f in FAMILIES]}")
    ap.add_argument("--acts", nargs="+", default=["relu", "tanh"],
                    choices=["relu", "tanh", "erf"])
    ap.add_argument("--trajectories", type=int, default=8)
    ap.add_argument("--k1-trajectories", type=int, default=16,
                    help="trajectories of K1's linear and tanh runs")
    ap.add_argument("--acceptance-trajectories", type=int, default=128,
                    help="trajectories of relu K1, whose kernel fraction is checked at 99%%")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--test", type=int, default=256)
    ap.add_argument("--dim", type=int, default=4,
                    help="K1 also on isotropic inputs of this dimension (1: skip)")
    ap.add_argument("--rtol", type=float, default=1e-7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="carry_over")
    ap.add_argument("--no-figure", action="store_true")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = run(args)
    res["seconds"] = time.perf_counter() - t0
    text = report(res)
    print(text)
    (out / "carry_over.txt").write_text(text + "\n")
    (out / "carry_over.json").write_text(json.dumps(res, indent=1, default=str))
    if not args.no_figure:
        figure(res, out / "carry_over.png")
        print(f"figure: {out / 'carry_over.png'}")
    return res


if __name__ == "__main__":
    main()
