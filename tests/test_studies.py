"""Parametrizations, width studies and phase diagrams (docs/theory.md §D)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

import ntkflow as nf
from ntkflow.studies import derive_seed, fit_scaling

WIDTHS = [2**k for k in range(4, 13)]

# docs/theory.md §D presets: (alpha, beta_u, beta_w, c_u, c_w) and predicted
# (rho, delta_cos) exponents
TABLE_D = {
    "ntk": ((0.5, 0, 0, 0, 0), (-1.0, -0.5)),
    "mean_field": ((1, 0, 0, 1, 1), (0.0, 0.0)),
    "standard": ((0, 0.5, 0, -1, -1), (-2.0, -0.5)),
    "small_init": ((0.5, 0.5, 0.5, 0, 0), (0.5, 0.0)),
    "ntk_fast_w": ((0.5, 0, 0, 0, 1), (-2.0, -0.5)),
    "mean_field_imbalanced": ((1, 0, 0, 0, 2), (-2.0, 0.0)),
}


@pytest.mark.parametrize("name", list(TABLE_D))
def test_presets_match_theory_table(name: str) -> None:
    (a, bu, bw, cu, cw), (rho, dcos) = TABLE_D[name]
    p = nf.Parametrization.named(name)
    assert (p.alpha, p.beta_u, p.beta_w, p.c_u, p.c_w) == (a, bu, bw, cu, cw)
    assert p.predicted_exponents() == {"rho": rho, "delta_cos": dcos}
    m = 1000
    h = p.at(m)
    # exact formulas of §D, to rounding (1e-15 relative)
    assert math.isclose(h.kappa, m**-a, rel_tol=1e-15)
    assert math.isclose(h.s_u, m**-bu, rel_tol=1e-15)
    assert math.isclose(h.s_w, m**-bw, rel_tol=1e-15)
    assert math.isclose(h.eta_u, m**cu, rel_tol=1e-15)
    assert math.isclose(h.eta_w, m**cw, rel_tol=1e-15)


def test_general_exponents_and_prefactors() -> None:
    p = nf.Parametrization(alpha=0.25, beta_u=0.1, beta_w=-0.2, c_u=0.5, c_w=-0.5,
                           kappa0=2.0, eta0=3.0)
    h = p.at(64)
    assert h == (64, 2.0 * 64**-0.25, 64**-0.1, 64**0.2, 3.0 * 64**0.5, 3.0 * 64**-0.5)
    assert p.replace(alpha=1.0).name == "custom"
    assert nf.Parametrization.named("ntk", kappa0=2.0).at(4).kappa == 1.0


@pytest.mark.parametrize(("make", "name"), [
    (lambda: nf.Parametrization.named("muP"), "parametrization"),
    (lambda: nf.Parametrization(kappa0=0.0), "kappa0"),
    (lambda: nf.Parametrization(alpha=float("nan")), "alpha"),
    (lambda: nf.Parametrization().at(0), "width"),
    (lambda: nf.Parametrization().replace(gamma=1.0), "gamma"),
    (lambda: nf.width_study([16, 16], "ntk"), "widths"),
    (lambda: nf.width_study([16], "ntk", fit=("nope",)), "fit"),
    (lambda: nf.phase_diagram(("alpah", [1]), ("c_w", [0])), "x name"),
    (lambda: nf.phase_diagram(("alpha", [1]), ("alpha", [0])), "y name"),
])
def test_bad_input(make, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        make()


def test_ntk_exponents_within_bootstrap_intervals() -> None:
    # docs/theory.md §D, NTK parametrization: rho ~ m^-1, |Delta |cos|| ~ m^-1/2
    # (t = inf, exact).
    # Observed (256 seeds/width, seeds 0-2): rho* -1.003..-1.007, |da| -0.488..-0.505,
    # each interval containing the prediction.
    st = nf.width_study(WIDTHS, "ntk", trajectories=256, seed=0, exact=True, n_boot=500)
    for score, pred in (("rho_star", -1.0), ("rho_T", -1.0), ("abs_delta_a", -0.5)):
        f = st.fits[score]
        assert f.low <= pred <= f.high, f
        assert f.predicted == pred
    assert np.all(st.table["frac_kernel"][-3:] == 1.0)


def test_mean_field_exponent_within_bootstrap_interval() -> None:
    # docs/theory.md §D, mean field: rho ~ m^0 (feature learning); observed
    # -0.002..+0.003.
    st = nf.width_study(WIDTHS, "mean_field", trajectories=256, seed=0, exact=True,
                        n_boot=500, fit=("rho_star",))
    f = st.fits["rho_star"]
    assert f.low <= 0.0 <= f.high, f
    assert np.all(st.table["frac_alignment"] >= 0.95)


def test_simulated_width_study_agrees_with_exact() -> None:
    # Same derived seeds, so the same trajectories: labels equal, rho* medians within 2%
    # (grid extreme vs exact, §E.2), threshold times within 1% (exact side: log-grid
    # interpolation, ~1e-3).
    kw = dict(widths=[16, 64, 256], parametrization="ntk", trajectories=100, seed=5,
              per_trajectory=True, n_boot=100)
    sim = nf.width_study(**kw)
    ex = nf.width_study(**kw, exact=True)
    assert np.mean(sim.trajectories["label"] == ex.trajectories["label"]) >= 0.99
    np.testing.assert_allclose(sim.table["median_rho_star"], ex.table["median_rho_star"],
                               rtol=2e-2)
    np.testing.assert_allclose(sim.table["median_t_hit"], ex.table["median_t_hit"],
                               rtol=1e-2)
    assert np.all(sim.table["median_final_loss"] < 1e-12)


def test_seeds_depend_on_width_not_order() -> None:
    a = nf.width_study([16, 64], "ntk", trajectories=20, seed=3, exact=True, n_boot=10)
    b = nf.width_study([64, 16], "ntk", trajectories=20, seed=3, exact=True, n_boot=10)
    with pytest.warns(UserWarning, match="one width"):
        c = nf.width_study([64], "ntk", trajectories=20, seed=3, exact=True, n_boot=10)
    assert a.table["median_rho_star"][1] == b.table["median_rho_star"][0]
    assert c.table["median_rho_star"][0] == b.table["median_rho_star"][0]
    assert list(a.table["seed"]) == [derive_seed(3, 16), derive_seed(3, 64)]
    assert derive_seed(3, 16) != derive_seed(4, 16)


def test_fit_scaling_recovers_known_power_law() -> None:
    # Synthetic medians c w^k with log-normal scatter: the point estimate equals
    # np.polyfit on the log medians (1e-12) and the interval covers k.
    rng = np.random.default_rng(0)
    widths = [8, 32, 128, 512, 2048]
    k = -0.7
    samples = [3.0 * w**k * np.exp(rng.normal(0, 0.3, 400)) for w in widths]
    f = fit_scaling(widths, samples, n_boot=800, boot_seed=1)
    ref = np.polyfit(np.log(widths), np.log([np.median(s) for s in samples]), 1)
    assert math.isclose(f.exponent, ref[0], rel_tol=1e-12)
    assert f.low <= k <= f.high
    assert f.high - f.low < 0.1
    f2 = fit_scaling(widths, samples, n_boot=800, boot_seed=1)
    assert f2 == f  # fixed bootstrap seed


def test_table_csv_round_trip(tmp_path) -> None:
    st = nf.width_study([16, 32], "ntk", trajectories=10, seed=0, exact=True, n_boot=10)
    path = st.table.to_csv(tmp_path / "t.csv")
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2
    assert float(rows[1]["median_rho_star"]) == st.table["median_rho_star"][1]
    assert int(rows[0]["width"]) == 16


def test_phase_diagram_exact_cells() -> None:
    # alpha vs c_w at width 256 (NTK base): alpha = 0.5 is lazy, alpha = 1.25 aligns
    # (observed fractions 1.00; at c_w = -1 §D's e_D is 1.5 > alpha, so that cell is
    # feature learning only at this finite width, rho ~ m^-1/2). Each cell equals a direct
    # classify_exact of the same derived seed (bit-identical).
    xs, ys = [0.5, 1.25], [-1.0, 0.0, 0.5]
    pd = nf.phase_diagram(("alpha", xs), ("c_w", ys), base="ntk", width=256,
                          trajectories=100, seed=1, exact=True)
    assert pd.shape == (3, 2)
    assert np.all(pd.dominant[:, 0] == "kernel")
    assert np.all(pd.dominant[:, 1] == "alignment")
    total = sum(pd.fractions.values())
    np.testing.assert_allclose(total, 1.0, rtol=1e-12)
    p = nf.Parametrization.named("ntk").replace(alpha=1.25, c_w=0.0)
    seed = derive_seed(1, "alpha", 1.25, "c_w", 0.0)
    sol = nf.exact.line(nf._simulate.draw_initial(p.init(256), 256, 1, 100, seed=seed),
                        p.net(256), nf.LatentLine(), p.train(256))
    c = nf.classify_exact(sol)
    assert pd.fractions["alignment"][1, 1] == c.fractions["alignment"]
    assert pd.median["rho_star"][1, 1] == c.median("rho_star")
    assert len(pd.table()) == 6


def test_phase_diagram_simulated_matches_exact() -> None:
    # correlation vs target: kernel/alignment/disalignment/rescaling regions (§E.3b);
    # simulated cells (100 seeds, 200 log times) have the exact cells' fractions +- 0.02.
    kw = dict(x=("correlation", [0.0, 0.9]), y=("target", [0.05, 1.0]),
              base=nf.Parametrization(alpha=1.0), width=256, trajectories=100, seed=2)
    ex = nf.phase_diagram(**kw, exact=True)
    sim = nf.phase_diagram(**kw)
    assert ex.dominant[0, 1] == "disalignment" and ex.dominant[1, 0] == "alignment"
    assert np.array_equal(sim.dominant, ex.dominant)
    for lab in nf.mechanisms.LABELS:
        np.testing.assert_allclose(sim.fractions[lab], ex.fractions[lab], atol=0.02)


def test_exact_cells_need_no_horizon_at_t_inf() -> None:
    # issue 16: correlation 1 (u0 = w0) with beta* < 0 is the unreachable target of §A.5:
    # Gamma = 1/8 > 0 but no trajectory escapes, so "auto" has no finite horizon. The
    # t = inf cell needs none: rescaling, the loss stops at L* + Sigma beta*^2 / 2 = 0.5
    # (exactly, 0 tolerance) and the level 1e-6 is never reached (t_hit NaN). Before the
    # fix this raised 't_max "auto" found no finite horizon'.
    pd = nf.phase_diagram(("correlation", [1.0, 0.5]), ("target", [-1.0]), trajectories=8,
                          seed=4, exact=True)
    assert pd.dominant[0, 0] == "rescaling" and pd.ok[0, 0] == 8
    assert pd.median["final_loss"][0, 0] == 0.5
    assert math.isnan(pd.median["t_hit"][0, 0])
    # A cell whose limit reaches the level still times it on the horizon, as before
    # (bit-identical to the closed form on t_esc + 40/Gamma).
    from ntkflow.sweeps import _exact_t_hit, _horizon

    p = nf.Parametrization.named("ntk").replace(correlation=0.5)
    seed = derive_seed(4, "correlation", 0.5, "target", -1.0)
    sol = nf.exact.line(nf._simulate.draw_initial(p.init(256), 256, 1, 8, seed=seed),
                        p.net(256), nf.LatentLine(beta=-1.0), p.train(256))
    assert pd.median["t_hit"][0, 1] == np.median(_exact_t_hit(sol, _horizon(sol), 1e-6))
    # Simulating the unreachable cell does need a horizon: a clear error, not a wrong one.
    with pytest.raises(ValueError, match="unreachable target"):
        nf.phase_diagram(("correlation", [1.0]), ("target", [-1.0]), trajectories=2)


def test_studies_run_the_tasks_their_settings_describe(tmp_path) -> None:
    # The one settings spec (StudySettings) builds, for every width and cell, the Task the
    # studies built before it: equal keys (SHA-256 of the full description) mean the same
    # bits and that existing stores resume. Non-default values for every setting, so a
    # dropped or swapped one changes a key.
    kw = dict(t_max=30.0, solver="rk4", rtol=1e-8, atol=1e-12, dt=0.02, times=30,
              loss_below=1e-4, eps=0.1, tau=0.2, exact=True)
    data = nf.LatentLine(beta=0.5, sigma=2.0)
    p = nf.Parametrization.named("mean_field")

    def task(h, seed, d, corr=p.correlation, t_max=30.0):
        auto = t_max == "auto"
        return nf.Task(net=nf.TwoLayer(width=h.width, kappa=h.kappa), data=d,
                       train=nf.GradientFlow(eta_u=h.eta_u, eta_w=h.eta_w,
                                             t_max=1.0 if auto else t_max, solver="rk4",
                                             rtol=1e-8, atol=1e-12, dt=0.02),
                       init=nf.Gaussian(h.s_u, h.s_w, correlation=corr), trajectories=3,
                       seed=seed, record=nf.Record(times=30, spacing="log",
                                                   loss_below=1e-4),
                       compute="exact", horizon="auto" if auto else "train", eps=0.1,
                       tau=0.2)

    nf.width_study([8, 16], p, 3, 9, data=data, store=tmp_path / "w", n_boot=5, **kw)
    want = {task(p.at(m), derive_seed(9, m), data).key for m in (8, 16)}
    assert set(nf.Store(tmp_path / "w").keys()) == want
    kw["t_max"] = "auto"
    nf.phase_diagram(("target", [0.5, -1.0]), ("correlation", [0.25]), p, 8, 3, 9, data=data,
                     store=tmp_path / "p", **kw)
    want = {task(p.at(8), derive_seed(9, "target", b, "correlation", 0.25),
                 nf.LatentLine(beta=b, sigma=2.0), 0.25, "auto").key for b in (0.5, -1.0)}
    assert set(nf.Store(tmp_path / "p").keys()) == want


def test_study_settings_are_checked_in_one_place() -> None:
    with pytest.raises(TypeError, match="width_study.*'rtl'.*rtol"):
        nf.width_study([8, 16], rtl=1e-8)
    with pytest.raises(TypeError, match="phase_diagram.*'widths'"):
        nf.phase_diagram(("alpha", [1]), ("c_w", [0]), widths=[8])
    for study in (lambda **k: nf.width_study([8], **k),
                  lambda **k: nf.phase_diagram(("alpha", [1]), ("c_w", [0]), **k)):
        with pytest.raises(ValueError, match="trajectories"):
            study(trajectories=0)
        with pytest.raises(ValueError, match="loss_below"):
            study(loss_below=-1.0)


def test_integer_columns_stay_integers(tmp_path) -> None:
    # issue 16: seeds, widths and counts keep every digit in tables, CSV and NPZ. Widths
    # 16 and 64 with seed 0 mix seeds below and above 2**63, which sent the column
    # through float64 (6192166547663441477 -> 6192166547663441920).
    st = nf.width_study([16, 64], "ntk", trajectories=4, seed=0, exact=True, n_boot=5,
                        per_trajectory=True)
    seeds = [derive_seed(0, 16), derive_seed(0, 64)]
    assert seeds[0] == 6192166547663441477 and seeds[1] >= 2**63
    assert st.table["seed"].dtype == np.uint64 and st.table["seed"].tolist() == seeds
    for name in ("width", "trajectories", "ok", "failed"):
        assert st.table[name].dtype == np.int64, name
    assert st.trajectories["trajectory"].dtype == np.int64
    with st.table.to_csv(tmp_path / "w.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["seed"]) for r in rows] == seeds and rows[1]["width"] == "64"
    np.savez(tmp_path / "w.npz", **st.table.columns)
    with np.load(tmp_path / "w.npz") as z:
        assert z["seed"].tolist() == seeds
    # a width axis of a phase diagram is a column of integers too (was float: "16.0")
    pd = nf.phase_diagram(("width", [16, 64]), ("alpha", [0.5]), trajectories=4,
                          exact=True)
    assert pd.table()["width"].dtype == np.int64
    with pd.table().to_csv(tmp_path / "p.csv").open() as fh:
        assert [r["width"] for r in csv.DictReader(fh)] == ["16", "64"]
    pd.to_npz(tmp_path / "p.npz")
    with np.load(tmp_path / "p.npz") as z:
        assert z["x_values"].dtype == np.int64 and z["x_values"].tolist() == [16, 64]


def test_one_width_says_it_cannot_fit_and_repr_is_the_summary() -> None:
    # issue 16: nf.width_study([64]) returned NaN fits without a word, and print(study)
    # dumped arrays. Now a warning, a note in summary() (no "+nan" rows), repr = summary.
    with pytest.warns(UserWarning, match=r"one width \(64\): no scaling fit"):
        st = nf.width_study([64], "ntk", trajectories=4, exact=True, n_boot=5)
    assert all(math.isnan(f.exponent) for f in st.fits.values())
    assert st.notes and "note: one width (64)" in st.summary()
    assert "nan" not in st.summary() and "rho_star     no fit" in st.summary()
    assert repr(st) == st.summary()
    assert nf.width_study([64], trajectories=4, exact=True, fit=()).notes == ()  # no fit
    two = nf.width_study([16, 64], "ntk", trajectories=4, exact=True, n_boot=5)
    assert two.notes == () and "note" not in repr(two)
    pd = nf.phase_diagram(("alpha", [0.5, 1.0]), ("c_w", [0.0]), width=16, trajectories=4,
                          exact=True)
    assert repr(pd) == pd.summary() and "array(" not in repr(pd)
    assert pd.summary().startswith("phase diagram: 4 trajectories per cell (exact, t = inf)")


def test_long_tables_have_one_row_per_setting_and_trajectory() -> None:
    st = nf.width_study([8, 16], "ntk", trajectories=5, seed=2, exact=True, n_boot=5,
                        per_trajectory=True)
    long = st.to_long()
    assert len(long) == 2 * 5
    assert long["width"].tolist() == [8] * 5 + [16] * 5
    assert long["trajectory"].tolist() == [0, 1, 2, 3, 4] * 2
    assert long["seed"].dtype == np.uint64
    assert long["seed"].tolist() == [derive_seed(2, 8)] * 5 + [derive_seed(2, 16)] * 5
    e = st.ensembles[1]
    assert long["label"][5:].tolist() == e.classification.labels.tolist()
    assert np.array_equal(long["rho_star"][5:], e.classification.scores["rho_star"])
    assert np.array_equal(long["kappa"], np.repeat([8**-0.5, 16**-0.5], 5))
    for name in st.trajectories.names:  # per_trajectory=True is a selection of it
        a, b = st.trajectories[name], long[name]
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), name
    pd = nf.phase_diagram(("alpha", [0.5, 1.25]), ("c_w", [-1.0, 0.0, 0.5]), width=32,
                          trajectories=4, seed=1, exact=True)
    long = pd.to_long()
    assert len(long) == 6 * 4 and long.names[:3] == ("alpha", "c_w", "width")
    # cell (i, j) = (2, 1): c_w 0.5, alpha 1.25; its rows give the cell's mean exactly
    rows = (long["alpha"] == 1.25) & (long["c_w"] == 0.5) & long["ok"]
    assert rows.sum() == pd.ok[2, 1] == 4
    assert np.mean(long["rho_star"][rows]) == pd.mean["rho_star"][2, 1]
    assert set(long["seed"][rows].tolist()) == {derive_seed(1, "alpha", 1.25, "c_w", 0.5)}
    pytest.importorskip("pandas")
    df = pd.to_long().to_pandas()
    assert df.shape == (24, len(long.names)) and df["seed"].dtype == np.uint64
    assert (df.groupby(["c_w", "alpha"])["label"].count() == 4).all()


def test_width_study_of_a_relu_network_on_a_dataset() -> None:
    """#16: any activation in a width study, its kernel label by the twin test
    (docs/theory.md §E.5); what it cannot do is refused naming the setting."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 3))
    data = nf.Dataset(X, np.sin(X @ rng.normal(size=3)))
    study = nf.width_study([64, 1024], "ntk", trajectories=8, act="relu", data=data,
                           t_max=30.0, times=40, n_boot=100)
    e64, e1024 = study.ensembles
    for e in study.ensembles:
        c = e.classification
        assert c.kernel_test == "delta_lin"
        np.testing.assert_array_equal(c.labels[c.ok] == "kernel",
                                      c.scores["delta_lin"][c.ok] < 0.05)
    # Lazier with width: delta_lin falls, every wide run is kernel.
    assert study.table["median_delta_lin"][1] < 0.5 * study.table["median_delta_lin"][0]
    assert study.table["frac_kernel"][1] == 1.0
    assert study.fits["delta_lin"].exponent < 0
    with pytest.raises(ValueError, match="data"):
        nf.width_study([16], "ntk", act="relu", t_max=1.0)
    with pytest.raises(ValueError, match="t_max"):
        nf.width_study([16], "ntk", act="tanh", data=data)
    with pytest.raises(ValueError, match="exact"):
        nf.width_study([16], "ntk", act="relu", data=data, t_max=1.0, exact=True)


def test_init_scale_prefactors_carry_a_fixed_scale_across_widths() -> None:
    p = nf.Parametrization(beta_u=0.5, s_u0=0.01, s_w0=2.0)
    for m in (4, 256):
        h = p.at(m)
        assert h.s_u == pytest.approx(0.01 * m**-0.5, rel=1e-15)
        assert h.s_w == 2.0
    assert p.predicted_exponents() == nf.Parametrization(beta_u=0.5).predicted_exponents()
    with pytest.raises(ValueError, match="s_w0"):
        nf.Parametrization(s_w0=0.0)
