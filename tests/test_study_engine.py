"""One study engine for every network (issue #16): studies trained by descent or SGD,
networks with several outputs, the phase-diagram axes, recorded scores and the source of
each ensemble -- each checked against a direct ``simulate`` or the closed form."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

import ntkflow as nf
from ntkflow.studies import SCORE_COLUMNS, derive_seed, ensemble_task, run_ensemble


def regression(n: int = 24, n_test: int = 0, seed: int = 0) -> tuple[Any, Any]:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=3)
    X, Xt = rng.normal(size=(n, 3)), rng.normal(size=(max(n_test, 1), 3))
    test = nf.Dataset(Xt, np.sin(Xt @ w)) if n_test else None
    return nf.Dataset(X, np.sin(X @ w)), test


def three_classes(n: int = 30, seed: int = 1) -> tuple[Any, Any, Any]:
    """Points around three centres in the plane, labelled by centre (classes=3)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    centres = np.array([[1.0, 0.0], [-0.5, 0.8], [-0.5, -0.8]])
    X = centres[labels] + 0.3 * rng.normal(size=(n, 2))
    return X, labels, nf.Dataset(X, labels, classes=3)


def same_scores(c: nf.Classification, d: nf.Classification) -> None:
    """Bit for bit: labels and every score (NaN equal to NaN)."""
    np.testing.assert_array_equal(c.labels, d.labels)
    assert set(c.scores) == set(d.scores)
    for k, v in c.scores.items():
        assert v.tobytes() == d.scores[k].tobytes(), k


# --------------------------------------------------------------------------- training


def test_sgd_width_study_is_a_direct_simulate_per_width() -> None:
    # Each width trains as the SGD template at the template's rates times the width's
    # (ntk, eta0 = 0.5, c_w = 0.5: eta_u = 0.5, eta_w = 0.5 sqrt(m)); SGD never asks for
    # the threshold time, which is NaN.
    data, _ = regression()
    p = nf.Parametrization(eta0=0.5, c_w=0.5)
    sgd = nf.SGD(lr=0.4, steps=150, batch_size=8, eta_u=2.0, eta_w=0.25)
    study = nf.width_study([16, 64], p, trajectories=4, seed=7, data=data, train=sgd,
                           act="relu", times=25, n_boot=20)
    for w, e in zip((16, 64), study.ensembles, strict=True):
        h = p.at(w)
        train = nf.SGD(lr=0.4, steps=150, batch_size=8, eta_u=2.0 * 0.5,
                       eta_w=0.25 * 0.5 * math.sqrt(w))
        assert e.hyper == h
        direct = nf.simulate(nf.TwoLayer(width=w, kappa=w**-0.5, act="relu"), data, train,
                             init=nf.Gaussian(h.s_u, h.s_w), trajectories=4,
                             seed=derive_seed(7, w),
                             record=nf.Record(times=25, spacing="log", linearized=True))
        assert direct.times[-1] == 150 and direct.times.size < 25  # whole steps, log grid
        assert e.final_loss.tobytes() == direct.loss[:, -1].tobytes()
        same_scores(e.classification, nf.classify(direct))
        assert np.all(np.isnan(e.t_hit)) and e.t_max == 150.0
    assert np.all(study.table["t_max"] == 150.0)
    assert np.all(np.isnan(study.table["median_t_hit"]))
    assert np.all(study.table["median_final_loss"] < 0.5 * np.var(data.y))  # it trained


def test_descent_phase_diagram_cell_is_a_direct_simulate() -> None:
    # Gradient descent on the latent line (linear network): records at step numbers,
    # the threshold time is a step number, and an lr_ratio cell keeps sqrt(eta_u eta_w).
    gd = nf.GradientDescent(lr=0.3, steps=400)
    pd = nf.phase_diagram(("alpha", [0.5, 1.0]), ("lr_ratio", [1.0, 4.0]), width=32,
                          trajectories=5, seed=2, train=gd, times=40, loss_below=1e-4)
    e = pd.ensembles[1 * 2 + 1]  # row lr_ratio 4, column alpha 1
    base = nf.Parametrization.named("ntk").replace(alpha=1.0).at(32)
    h = e.hyper
    assert h.eta_w / h.eta_u == pytest.approx(4.0, rel=1e-15)
    assert h.eta_u * h.eta_w == pytest.approx(base.eta_u * base.eta_w, rel=1e-15)
    assert (h.s_u, h.s_w, h.kappa) == (base.s_u, base.s_w, base.kappa)
    direct = nf.simulate(nf.TwoLayer(width=32, kappa=32**-1.0), nf.LatentLine(),
                         nf.GradientDescent(lr=0.3, steps=400, eta_u=h.eta_u,
                                            eta_w=h.eta_w),
                         init=nf.Gaussian(1.0, 1.0), trajectories=5,
                         seed=derive_seed(2, "alpha", 1.0, "lr_ratio", 4.0),
                         record=nf.Record(times=40, spacing="log", loss_below=1e-4))
    assert e.final_loss.tobytes() == direct.loss[:, -1].tobytes()
    assert e.t_hit.tobytes() == direct.t_hit.tobytes()
    assert np.all(e.t_hit == np.round(e.t_hit))  # step numbers, all reached
    same_scores(e.classification, nf.classify(direct))
    assert pd.table()["source"].tolist() == ["simulate"] * 4


def test_flow_template_is_the_settings_flow() -> None:
    # A GradientFlow template with unit rates describes the tasks the flow settings do
    # (same keys: the same numbers and stores); its horizon is its t_max, or "auto".
    h = nf.Parametrization.named("mean_field").at(16)
    kw: dict[str, Any] = dict(correlation=0.0, seed=3, trajectories=4)
    flow = nf.GradientFlow(t_max=7.0, solver="rk4", dt=0.02, rtol=1e-10, atol=1e-14)
    assert (ensemble_task(h, train=flow, **kw).key
            == ensemble_task(h, t_max=7.0, solver="rk4", dt=0.02, **kw).key)
    assert (ensemble_task(h, train=flow, t_max="auto", **kw).key
            == ensemble_task(h, solver="rk4", dt=0.02, **kw).key)
    fast = ensemble_task(h, train=nf.GradientFlow(t_max=7.0, eta_u=3.0), **kw)
    assert (fast.train.eta_u, fast.train.eta_w) == (3.0 * h.eta_u, h.eta_w)


@pytest.mark.parametrize(("settings", "name"), [
    (dict(train=nf.SGD(), exact=True), "exact"),
    (dict(train=nf.GradientDescent(), t_max="auto"), "t_max"),
    (dict(train=nf.GradientFlow(), t_max=5.0), "t_max"),
    (dict(train=nf.GradientFlow(), solver="rk4"), "solver"),
    (dict(train=nf.SGD(), loss="square"), "loss"),
    (dict(train="sgd"), "train"),
    (dict(train=nf.SGD(), data=nf.LatentLine()), "data"),
    (dict(loss="softmax", linearized=True, t_max=1.0), "linearized"),
])
def test_contradictory_settings_are_refused(settings: dict[str, Any], name: str) -> None:
    _, _, data = three_classes()
    with pytest.raises(ValueError, match=f"^{name} ") as err:
        nf.width_study([8], **{"data": data, **settings})
    assert "\n" not in str(err.value)


def test_sgd_batch_larger_than_a_cell_is_refused_before_any_work(tmp_path) -> None:
    data, _ = regression()
    with pytest.raises(ValueError, match="train.batch_size must be <= the 10 training"):
        nf.phase_diagram(("samples", [24, 10]), ("alpha", [0.5]), width=8,
                         trajectories=2, data=data, train=nf.SGD(batch_size=16),
                         act="relu", store=tmp_path / "s")
    assert not (tmp_path / "s").exists()


# --------------------------------------------------------------------------- outputs


def test_three_class_softmax_study_and_diagram() -> None:
    # Three outputs on the softmax loss through both studies: an outputs column of 3,
    # the training error as a score (one-hot targets are labels), and a samples axis on
    # class labels (the first n rows, still three classes).
    X, labels, data = three_classes()
    kw: dict[str, Any] = dict(trajectories=4, seed=1, data=data, loss="softmax",
                              act="tanh", t_max=5.0, times=20)
    study = nf.width_study([16, 32], "mean_field", n_boot=20, **kw)
    assert study.table["outputs"].tolist() == [3, 3]
    assert study.table["outputs"].dtype == np.int64
    h = nf.Parametrization.named("mean_field").at(32)
    direct = nf.simulate(nf.TwoLayer(width=32, kappa=h.kappa, act="tanh"), data,
                         nf.GradientFlow(t_max=5.0, eta_u=h.eta_u, eta_w=h.eta_w,
                                         loss="softmax", rtol=1e-10, atol=1e-14),
                         init=nf.Gaussian(h.s_u, h.s_w), trajectories=4,
                         seed=derive_seed(1, 32),
                         record=nf.Record(times=20, spacing="log", loss_below=1e-6))
    assert direct.p.shape[-1] == 3
    e = study.ensembles[1]
    assert e.final_loss.tobytes() == direct.loss[:, -1].tobytes()
    same_scores(e.classification, nf.classify(direct))
    ok = e.classification.ok
    assert study.table["median_error"][1] == np.median(direct.error[ok, -1])
    pd = nf.phase_diagram(("samples", [12, 30]), ("init_scale", [0.5]), "mean_field",
                          width=16, **kw)
    assert pd.table()["outputs"].tolist() == [3, 3]
    h = nf.Parametrization.named("mean_field").at(16)
    cell = nf.simulate(nf.TwoLayer(width=16, kappa=h.kappa, act="tanh"),
                       nf.Dataset(X[:12], labels[:12], classes=3),
                       nf.GradientFlow(t_max=5.0, eta_u=h.eta_u, eta_w=h.eta_w,
                                       loss="softmax", rtol=1e-10, atol=1e-14),
                       init=nf.Gaussian(0.5 * h.s_u, 0.5 * h.s_w), trajectories=4,
                       seed=derive_seed(1, "samples", 12.0, "init_scale", 0.5),
                       record=nf.Record(times=20, spacing="log", loss_below=1e-6))
    assert pd.ensembles[0].final_loss.tobytes() == cell.loss[:, -1].tobytes()
    with pytest.raises(ValueError, match="exact"):
        nf.width_study([8], data=nf.Dataset(X[:, :1], labels, classes=3), exact=True)


# --------------------------------------------------------------------------- axes


def test_init_scale_and_imbalance_cells() -> None:
    # An imbalance r cell has s_u / s_w = r at the base's s_u s_w; init_scale c
    # multiplies both (to rounding, 1e-15 relative). The scores are those of the closed
    # form on that Hyper with the cell's seed, exactly.
    p = nf.Parametrization.named("small_init", s_u0=0.5, s_w0=2.0)
    pd = nf.phase_diagram(("imbalance", [0.25, 4.0]), ("init_scale", [1.0, 0.1]), p,
                          width=64, trajectories=6, seed=5, exact=True)
    base = p.at(64)
    for k, (r, c) in enumerate([(0.25, 1.0), (4.0, 1.0), (0.25, 0.1), (4.0, 0.1)]):
        h = pd.ensembles[k].hyper
        assert h.s_u / h.s_w == pytest.approx(r, rel=1e-15)
        assert h.s_u * h.s_w == pytest.approx(c * c * base.s_u * base.s_w, rel=1e-15)
        assert (h.kappa, h.eta_u, h.eta_w) == (base.kappa, base.eta_u, base.eta_w)
        ref = run_ensemble(h, correlation=0.0, trajectories=6, exact=True,
                           seed=derive_seed(5, "imbalance", r, "init_scale", c))
        same_scores(pd.ensembles[k].classification, ref.classification)
    assert pd.table()["source"].tolist() == ["exact"] * 4


def test_target_cell_is_a_study_of_that_latent_line() -> None:
    pd = nf.phase_diagram(("target", [0.5, -2.0]), ("alpha", [1.0]), width=32,
                          trajectories=6, seed=4, exact=True)
    h = nf.Parametrization.named("ntk").replace(alpha=1.0).at(32)
    ref = run_ensemble(h, correlation=0.0, trajectories=6, exact=True,
                       data=nf.LatentLine(beta=-2.0),
                       seed=derive_seed(4, "target", -2.0, "alpha", 1.0))
    same_scores(pd.ensembles[1].classification, ref.classification)
    assert pd.ensembles[1].final_loss.tobytes() == ref.final_loss.tobytes()


def test_samples_and_init_prefactor_axes() -> None:
    # A samples cell trains on the first n rows; s_u0 is an axis like the exponents.
    data, _ = regression()
    pd = nf.phase_diagram(("samples", [10, 24]), ("s_u0", [0.5]), width=16,
                          trajectories=3, seed=6, data=data, act="relu", t_max=4.0,
                          times=15)
    h = nf.Parametrization.named("ntk", s_u0=0.5).at(16)
    assert pd.ensembles[0].hyper == h and h.s_u == 0.5
    direct = nf.simulate(nf.TwoLayer(width=16, kappa=0.25, act="relu"),
                         nf.Dataset(data.X[:10], data.y[:10]),
                         nf.GradientFlow(t_max=4.0, rtol=1e-10, atol=1e-14),
                         init=nf.Gaussian(0.5, 1.0), trajectories=3,
                         seed=derive_seed(6, "samples", 10.0, "s_u0", 0.5),
                         record=nf.Record(times=15, spacing="log", loss_below=1e-6,
                                          linearized=True))
    assert pd.ensembles[0].final_loss.tobytes() == direct.loss[:, -1].tobytes()
    same_scores(pd.ensembles[0].classification, nf.classify(direct))
    assert pd.table()["samples"].tolist() == [10, 24]
    assert pd.table()["samples"].dtype == np.int64


@pytest.mark.parametrize(("x", "settings", "message"), [
    (("beta", [1.0]), {}, 'x name "beta" was renamed to "target"'),
    (("alhpa", [1.0]), {}, "x name must be one of alpha, beta_u"),
    (("samples", [10.5]), {}, "samples axis values must be positive integers"),
    (("samples", [10]), {}, "data must be a Dataset to vary samples"),
    (("samples", [25]), {"data": "regression", "act": "relu", "t_max": 1.0},
     "samples axis values must be <= the Dataset's 24 rows"),
    (("imbalance", [0.0]), {}, "imbalance axis values must be > 0"),
    (("lr_ratio", [-1.0]), {}, "lr_ratio axis values must be > 0"),
    (("init_scale", [-1.0]), {}, "init_scale axis values must be >= 0"),
    (("target", [1.0]), {"data": "regression", "act": "relu", "t_max": 1.0},
     "data must be a LatentLine to vary target or sigma"),
])
def test_bad_axes_are_one_line_errors(x: Any, settings: dict[str, Any],
                                      message: str) -> None:
    if settings.get("data") == "regression":
        settings = dict(settings, data=regression()[0])
    with pytest.raises(ValueError) as err:
        nf.phase_diagram(x, ("alpha", [0.5]), width=8, trajectories=2, **settings)
    text = str(err.value)
    assert text.startswith(message), text
    assert "\n" not in text and len(text) < 260, text


# --------------------------------------------------------------------------- scores


def test_recorded_test_loss_is_a_study_score() -> None:
    # median_test_loss is the median over ok trajectories of the final test loss of a
    # direct simulate; "test_loss" can be fitted; without a test set it is NaN.
    data, test = regression(n_test=12)
    kw: dict[str, Any] = dict(trajectories=5, seed=8, data=data, test=test, act="relu",
                              t_max=6.0, times=20)
    study = nf.width_study([16, 64], "ntk", n_boot=50, fit=("test_loss",), **kw)
    for w, e in zip((16, 64), study.ensembles, strict=True):
        direct = nf.simulate(nf.TwoLayer(width=w, kappa=w**-0.5, act="relu"), data,
                             nf.GradientFlow(t_max=6.0, rtol=1e-10, atol=1e-14),
                             trajectories=5, seed=derive_seed(8, w),
                             record=nf.Record(times=20, spacing="log", loss_below=1e-6,
                                              linearized=True, test=test))
        ok = e.classification.ok
        assert ok.all()
        row = study.table["width"].tolist().index(w)
        assert study.table["median_test_loss"][row] == np.median(direct.test_loss[ok, -1])
    assert math.isfinite(study.fits["test_loss"].exponent)
    assert {"test_loss", "test_error", "error"} <= set(SCORE_COLUMNS)
    pd = nf.phase_diagram(("alpha", [0.5]), ("c_w", [0.0]), width=16, **kw)
    assert pd.median["test_loss"][0, 0] == np.median(pd.ensembles[0].finals["test_loss"])
    # not recorded (no test set; real-valued targets have no error): NaN
    plain = nf.width_study([16], "ntk", trajectories=3, exact=True, fit=())
    for name in ("median_test_loss", "median_test_error", "median_error"):
        assert math.isnan(plain.table[name][0]), name


def test_a_store_file_without_final_records_reads_as_nan(tmp_path) -> None:
    # Stores written before the final records were kept resume: those scores are NaN.
    from ntkflow.studies import _ensemble, _score_columns

    data, test = regression(n_test=6)
    st = nf.width_study([8], "ntk", trajectories=2, data=data, test=test, act="relu",
                        t_max=1.0, times=5, fit=(), store=tmp_path / "s")
    out = nf.Store(tmp_path / "s")
    key = st.ensembles[0]
    task = ensemble_task(key.hyper, correlation=0.0, seed=key.seed, trajectories=2,
                            data=data, test=test, act="relu", t_max=1.0, times=5)
    arrays = dict(out.load(task.key))
    assert "final_test_loss" in arrays
    del arrays["final_test_loss"]
    old = _ensemble(key.hyper, nf.TaskOutput(task, arrays))
    assert "test_loss" not in old.finals and key.finals["test_loss"].shape == (2,)
    assert np.all(np.isnan(_score_columns(old)["test_loss"]))
    assert np.all(np.isfinite(_score_columns(key)["test_loss"]))
