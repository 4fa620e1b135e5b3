"""Figures: ensemble trajectories, width scaling, phase diagrams.

Needs matplotlib (``pip install 'ntkflow[plot]'``), imported only when a function here is
called. Figures are built with ``matplotlib.figure.Figure`` directly, never through
pyplot, so no global backend or state is touched (safe in scripts, tests and servers);
in a notebook, display the returned Figure. Every function returns the Figure and saves
it when ``path`` is given; with ``ax=`` it draws into your Axes instead (one, or one per
panel), so that figures compose, and returns the Figure they belong to.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._validate import require

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from .result import Result
    from .studies import PhaseDiagram, WidthStudy

LABEL_COLORS = {"kernel": "#4C72B0", "alignment": "#DD8452", "disalignment": "#55A868",
                "rescaling": "#C44E52", "failed": "#999999"}


def _figure(**kwargs: Any) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            "ntkflow.plots needs matplotlib: pip install 'ntkflow[plot]'") from None
    return Figure(**kwargs)


def _axes(ax: Any, n: int, figsize: tuple[float, float]) -> tuple[Figure, list[Any], bool]:
    """The figure and the ``n`` Axes to draw on, and whether the figure is ours: a new
    one-row figure, or the caller's ``ax`` (one Axes, or ``n`` in a list or array)."""
    if ax is None:
        fig = _figure(figsize=figsize, layout="constrained")
        return fig, list(fig.subplots(1, n, squeeze=False)[0]), True
    axes = [ax] if hasattr(ax, "figure") else list(np.ravel(np.asarray(ax, dtype=object)))
    require(len(axes) == n and all(hasattr(a, "plot") and hasattr(a, "figure")
                                   for a in axes),
            "ax", f"must be {'a matplotlib Axes' if n == 1 else f'{n} matplotlib Axes'} "
            "(one per panel)", ax)
    fig = axes[0].figure
    while getattr(fig, "figure", fig) is not fig:  # a SubFigure: up to the root Figure
        fig = fig.figure
    return fig, axes, False


def _save(fig: Figure, path: str | Path | None, dpi: int) -> None:
    if path is not None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(p, dpi=dpi)


def _band(ax: Any, t: np.ndarray, y: np.ndarray, band: tuple[float, float], color: str,
          label: str) -> None:
    with np.errstate(invalid="ignore"):
        lo, med, hi = np.nanquantile(y, [band[0], 0.5, band[1]], axis=0)
    ax.fill_between(t, lo, hi, color=color, alpha=0.25, lw=0)
    ax.plot(t, med, color=color, lw=1.8, label=label)


QUANTITIES = ("loss", "ntk", "alignment", "norms")


def _series(res: Any, q: str) -> list[tuple[str, np.ndarray]]:
    if q == "loss":
        return [("loss", np.asarray(res.loss))]
    if q == "alignment":
        return [("alignment a(t)", np.asarray(res.alignment))]
    if q == "norms":
        return [("|u|^2", np.asarray(res.norm_u2)), ("|W|^2", np.asarray(res.norm_w2))]
    K = res.ntk
    require(K is not None, "quantities", '"ntk" needs an NTK record', q)
    if K.ndim == 2:
        return [("K(t) / K(0)", K / K[:, :1])]
    from .mechanisms import _ntk_change

    return [("||K(t) - K(0)|| / ||K(0)||", _ntk_change(res))]


def trajectories(
    result: Result,
    solution: Any = None,
    *,
    quantities: Sequence[str] = QUANTITIES,
    band: tuple[float, float] = (0.05, 0.95),
    title: str | None = None,
    ax: Any = None,
    path: str | Path | None = None,
    dpi: int = 110,
) -> Figure:
    """Ensemble median and quantile band of each quantity against time (log axis).

    Parameters
    ----------
    result : Result
    solution : exact.LineSolution, optional
        Its median over the same trajectories is overlaid (dashed).
    quantities : subset of ("loss", "ntk", "alignment", "norms")
    band : (low, high) quantiles of the shaded band.
    ax : matplotlib Axes, or one per quantity, optional
        Draw there (no figure title) instead of in a new figure.
    """
    for q in quantities:
        require(q in QUANTITIES, "quantities", f"entries must be among {QUANTITIES}", q)
    fig, axes, own = _axes(ax, len(quantities), (3.6 * len(quantities), 3.2))
    t = np.asarray(result.times)
    keep = t > 0
    path_ = solution.at(t) if solution is not None else None
    colors = ["#4C72B0", "#DD8452"]
    for ax, q in zip(axes, quantities, strict=True):
        for (name, y), color in zip(_series(result, q), colors, strict=False):
            _band(ax, t[keep], y[:, keep], band, color, f"{name} (median)")
        if path_ is not None:
            for (_name, y), color in zip(_series(path_, q) if q != "ntk" else
                                        [("exact", path_.ntk / path_.ntk[:, :1])], colors, strict=False):
                ax.plot(t[keep], np.nanmedian(y[:, keep], axis=0), "--", color="k", lw=1,
                        label="exact (median)" if color == colors[0] else None)
        ax.set_xscale("log")
        if q in ("loss", "norms"):
            ax.set_yscale("log")
        ax.set_xlabel("t")
        ax.set_title(q)
        ax.legend(fontsize=7, loc="best")
    if own:
        fig.suptitle(title or f"{result.trajectories} trajectories, width "
                     f"{result.net.width}; band {band[0]:g}-{band[1]:g} quantiles",
                     fontsize=10)
    _save(fig, path, dpi)
    return fig


def width_scaling(
    study: WidthStudy,
    scores: Sequence[str] | None = None,
    *,
    ax: Any = None,
    path: str | Path | None = None,
    dpi: int = 110,
) -> Figure:
    """Log-log median of each fitted score against width: interquartile bars, the fitted
    power law, and the band its bootstrap exponent interval spans. ``ax``: a matplotlib
    Axes, or one per score, to draw in (no figure title) instead of a new figure."""
    scores = list(study.fits) if scores is None else list(scores)
    for s in scores:
        require(s in study.fits, "scores", f"entries must be among {tuple(study.fits)}", s)
    fig, axes, own = _axes(ax, max(1, len(scores)), (3.8 * max(1, len(scores)), 3.4))
    from .studies import _score_columns

    w = np.asarray(study.table["width"], dtype=float)
    for ax, s in zip(axes, scores, strict=True):
        samples = [_score_columns(e)[s][e.classification.ok] for e in study.ensembles]
        q = np.array([np.nanquantile(v, [0.25, 0.5, 0.75]) if v.size else [np.nan] * 3
                      for v in samples])
        ax.errorbar(w, q[:, 1], yerr=[q[:, 1] - q[:, 0], q[:, 2] - q[:, 1]], fmt="o",
                    ms=4, capsize=2, label="median, IQR")
        f = study.fits[s]
        if np.isfinite(f.exponent):
            ww = np.geomspace(w.min(), w.max(), 50)
            pivot = np.exp(np.mean(np.log(w)))
            mid = f.prefactor * pivot**f.exponent
            ax.plot(ww, f.prefactor * ww**f.exponent, "k-", lw=1,
                    label=f"fit m^{f.exponent:+.3f} [{f.low:+.3f}, {f.high:+.3f}]")
            ax.fill_between(ww, mid * (ww / pivot) ** f.low, mid * (ww / pivot) ** f.high,
                            color="k", alpha=0.12, lw=0)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("width m")
        ax.set_title(s)
        ax.legend(fontsize=7)
    if own:
        fig.suptitle(f"width study: {study.parametrization.name}"
                     f"{' (exact, t = inf)' if study.exact else ''}", fontsize=10)
    _save(fig, path, dpi)
    return fig


def phase_diagram(
    diagram: PhaseDiagram,
    *,
    ax: Any = None,
    path: str | Path | None = None,
    dpi: int = 110,
) -> Figure:
    """Heatmap of the dominant label per cell, shaded by its fraction and annotated.
    ``ax``: a matplotlib Axes to draw in instead of a new figure."""
    from matplotlib.colors import to_rgb

    ny, nx = diagram.shape
    rgb = np.ones((ny, nx, 3))
    for i in range(ny):
        for j in range(nx):
            lab = str(diagram.dominant[i, j])
            frac = diagram.dominant_fraction[i, j]
            a = 0.35 + 0.65 * (frac if np.isfinite(frac) else 0.0)
            rgb[i, j] = 1 - a * (1 - np.array(to_rgb(LABEL_COLORS[lab])))
    fig, (ax,), _ = _axes(ax, 1, (1.0 + 0.9 * nx + 2.2, 1.2 + 0.6 * ny))
    ax.imshow(rgb, origin="lower", aspect="auto")
    for i in range(ny):
        for j in range(nx):
            lab = str(diagram.dominant[i, j])
            frac = diagram.dominant_fraction[i, j]
            txt = lab[0].upper() + (f" {frac:.2f}" if np.isfinite(frac) else "")
            ax.text(j, i, txt, ha="center", va="center", fontsize=7)
    ax.set_xticks(range(nx), [f"{v:g}" for v in diagram.x_values], fontsize=7)
    ax.set_yticks(range(ny), [f"{v:g}" for v in diagram.y_values], fontsize=7)
    ax.set_xlabel(diagram.x_name)
    ax.set_ylabel(diagram.y_name)
    from matplotlib.patches import Patch

    present = sorted({str(v) for v in diagram.dominant.ravel()})
    ax.legend(handles=[Patch(color=LABEL_COLORS[k], label=k) for k in present],
              loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    ax.set_title(f"dominant mechanism ({diagram.trajectories} trajectories/cell"
                 f"{', exact t = inf' if diagram.exact else ''})", fontsize=9)
    _save(fig, path, dpi)
    return fig
