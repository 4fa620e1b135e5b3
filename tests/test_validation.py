"""Bad input fails before any work starts, with a ValueError naming the parameter."""

from __future__ import annotations

import numpy as np
import pytest

import ntkflow as nf

NET = nf.TwoLayer(width=4)
DATA = nf.LatentLine()
FLOW = nf.GradientFlow(t_max=1.0)


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: nf.TwoLayer(width=0), "width"),
        (lambda: nf.TwoLayer(width=-3), "width"),
        (lambda: nf.TwoLayer(width=2.5), "width"),
        (lambda: nf.TwoLayer(width=4, kappa=0.0), "kappa"),
        (lambda: nf.TwoLayer(width=4, act="softplus"), "act"),
        (lambda: nf.GradientFlow(eta_u=-0.1), "eta_u"),
        (lambda: nf.GradientFlow(eta_w=float("nan")), "eta_w"),
        (lambda: nf.GradientFlow(t_max=0.0), "t_max"),
        (lambda: nf.GradientFlow(solver="rk45"), "solver"),
        (lambda: nf.GradientFlow(dt=-1.0), "dt"),
        (lambda: nf.GradientFlow(rtol=0.0), "rtol"),
        (lambda: nf.GradientDescent(lr=-0.1), "lr"),
        (lambda: nf.GradientDescent(steps=0), "steps"),
        (lambda: nf.GradientDescent(steps=10**20), "steps"),
        (lambda: nf.LatentLine(sigma=0.0), "sigma"),
        (lambda: nf.LatentLine(beta=float("inf")), "beta"),
        (lambda: nf.Moments(Sigma=[[1.0, np.nan], [np.nan, 1.0]], b=[1.0, 0.0]), "Sigma"),
        (lambda: nf.Moments(Sigma=[[1.0, 0.5], [0.0, 1.0]], b=[1.0, 0.0]), "Sigma"),
        (lambda: nf.Moments(Sigma=[[1.0, 0.0], [0.0, -1.0]], b=[1.0, 0.0]), "Sigma"),
        (lambda: nf.Moments(Sigma=np.ones((2, 3)), b=[1.0, 0.0]), "Sigma"),
        (lambda: nf.Moments(Sigma=np.eye(2), b=[1.0, 0.0, 2.0]), "b"),
        (lambda: nf.Moments(Sigma=[[1.0, 0.0], [0.0, 0.0]], b=[1.0, 1.0]), "b"),
        (lambda: nf.Moments(Sigma=np.eye(2), b=[1.0, 1.0], y2=0.5), "y2"),
        (lambda: nf.Dataset(X=np.ones((5, 2)), y=np.ones(4)), "y"),
        (lambda: nf.Dataset(X=[[1.0, np.inf]], y=[1.0]), "X"),
        (lambda: nf.Dataset(X=np.empty((0, 2)), y=np.empty(0)), "X"),
        (lambda: nf.Dataset(X=np.ones((3, 2)) * 1j, y=np.ones(3)), "X"),
        (lambda: nf.Dataset(X=[["a", "b"]], y=[1.0]), "X"),
        (lambda: nf.Dataset(X=np.zeros((3, 2)), y=np.ones(3)), "X"),
        (lambda: nf.Params(np.ones((2, 3)), np.full((2, 3), np.nan)), "W0"),
        (lambda: nf.Params(np.ones((0, 3)), np.ones((0, 3))), "u0"),
        (lambda: nf.Gaussian(-1.0, 1.0), "s_u"),
        (lambda: nf.Gaussian(1.0, 1.0, correlation=1.5), "correlation"),
        (lambda: nf.Gaussian(0.0, 1.0, correlation="copy"), "s_u"),
        (lambda: nf.Params(np.ones((2, 3)), np.ones((2, 4, 1))), "W0"),
        (lambda: nf.Record(times=[0.0, 2.0, 1.0]), "times"),
        (lambda: nf.Record(times=[0.0, 1.0, 1.0]), "times"),
        (lambda: nf.Record(times=[-1.0, 1.0]), "times"),
        (lambda: nf.Record(times=0), "times"),
        (lambda: nf.Record(ntk="full"), "ntk"),
        (lambda: nf.Record(params="some"), "params"),
    ],
)
def test_specs_refuse_bad_values(make, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        make()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"trajectories": 0}, "trajectories"),
        ({"seed": -1}, "seed"),
        ({"threads": 0}, "threads"),
        ({"record": nf.Record(times=[0.0, 2.0])}, "times"),  # beyond t_max = 1
        ({"init": nf.Params(np.ones((2, 5)), np.ones((2, 5)))}, "width"),
        ({"init": nf.Params(np.ones((2, 4)), np.ones((2, 4))), "trajectories": 3},
         "trajectories"),
        ({"method": "fast"}, "method"),
        # 1e300 fixed steps (a double past 2^63 once converted to a step count in the core
        # gave one step of size t_max), and 1e7 steps against max_steps = 1e7 - 1.
        ({"train": nf.GradientFlow(t_max=1.0, solver="rk4", dt=1e-300)}, "dt"),
        ({"train": nf.GradientFlow(t_max=1.0, solver="euler", dt=1e-7, max_steps=9_999_999)},
         "dt"),
        ({"record": nf.Record(params="final"), "method": "reduced"}, "record.params"),
    ],
)
def test_simulate_refuses_inconsistent_arguments(kwargs, name: str) -> None:
    kwargs = {"train": FLOW, **kwargs}
    with pytest.raises(ValueError, match=name):
        nf.simulate(NET, DATA, **kwargs)


def test_gradient_descent_record_times_are_step_numbers() -> None:
    with pytest.raises(ValueError, match="times"):
        nf.simulate(NET, DATA, nf.GradientDescent(steps=10), record=nf.Record(times=[0, 2.5]))


def test_memory_budget_is_checked_before_allocating() -> None:
    nf.set_memory_budget(1e6)
    try:
        with pytest.raises(nf.MemoryBudgetError, match="GiB") as info:
            nf.simulate(NET, DATA, FLOW, trajectories=10_000, record=nf.Record(times=1000))
        assert isinstance(info.value, ValueError) and isinstance(info.value, MemoryError)
        # 8 B x 50 trajectories x 101 times x 1000 neurons x (1 + d) parameters is nearly
        # all of the request: the message says so and how to keep fewer.
        for act, data in (("linear", DATA), ("relu", nf.Dataset(X=np.eye(2), y=[1.0, -1.0]))):
            gib = 8.0 * 50 * 101 * 1000 * (1 + data.dim) / 2**30
            with pytest.raises(nf.MemoryBudgetError, match='record.params="final"') as info:
                nf.simulate(nf.TwoLayer(width=1000, act=act), data, FLOW, trajectories=50,
                            record=nf.Record(params="all"))
            assert f"record.params='all' ({gib:.3g} GiB of it)" in str(info.value)
    finally:
        nf.set_memory_budget(None)


@pytest.mark.parametrize("version", [1, 2])
def test_default_budget_follows_a_cgroup_limit(tmp_path, version: int) -> None:
    # A fake /proc and /sys tree for a batch job: a 6 GiB limit on the job's parent cgroup
    # and none on the job itself. The tightest limit along the path is the one enforced.
    from ntkflow._memory import _cgroup_limit

    if version == 2:
        cgroup, base, name, unlimited = "0::/slurm/job1\n", "", "memory.max", "max"
    else:
        cgroup, base, name, unlimited = ("5:cpu,cpuacct:/slurm/job1\n4:memory:/slurm/job1\n",
                                         "memory", "memory.limit_in_bytes",
                                         "9223372036854771712")
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text(cgroup)
    job = tmp_path / "sys/fs/cgroup" / base / "slurm/job1"
    job.mkdir(parents=True)
    (job / name).write_text(unlimited + "\n")
    assert _cgroup_limit(str(tmp_path)) == float("inf")
    (job.parent / name).write_text(f"{6 * 2**30}\n")
    assert _cgroup_limit(str(tmp_path)) == 6 * 2**30
    (tmp_path / "sys/fs/cgroup" / base / name).write_text(f"{2**40}\n")
    assert _cgroup_limit(str(tmp_path)) == 6 * 2**30
    assert _cgroup_limit(str(tmp_path / "missing")) == float("inf")


def test_dataset_loss_is_the_datasets_own() -> None:
    # A linear network on (X, y) is reduced to moments; the loss reported must still be
    # 1/(2n) sum (f(x_j) - y_j)^2 evaluated directly on the data.
    rng = np.random.default_rng(5)
    X, y = rng.normal(size=(50, 3)), rng.normal(size=50)
    res = nf.simulate(nf.TwoLayer(width=6, kappa=0.5), nf.Dataset(X=X, y=y),
                      nf.GradientFlow(t_max=2.0), trajectories=2,
                      record=nf.Record(times=[0.0, 1.0, 2.0]))
    f = 0.5 * np.einsum("jd,ktd->ktj", X, res.p)  # f(x_j) = kappa p . x_j
    direct = 0.5 * np.mean((f - y) ** 2, axis=-1)
    # Round-off only: the moments form avoids cancellation near the minimum.
    np.testing.assert_allclose(res.loss, direct, rtol=1e-12)


def test_non_contiguous_and_read_only_inputs_are_copied_not_refused() -> None:
    rng = np.random.default_rng(0)
    u = rng.normal(size=(4, 10))
    W = rng.normal(size=(4, 10, 2))
    X = rng.normal(size=(20, 4))
    y = rng.normal(size=20)
    ro = W.copy()
    ro.setflags(write=False)
    net = nf.TwoLayer(width=10, kappa=0.3)
    train = nf.GradientFlow(t_max=1.0)
    a = nf.simulate(net, nf.Dataset(X=X[:, ::2], y=y), train, init=nf.Params(u, ro))
    b = nf.simulate(net, nf.Dataset(X=np.asfortranarray(X[:, ::2]), y=y[::-1][::-1]),
                    train, init=nf.Params(np.asfortranarray(u), W[:, :, :]))
    np.testing.assert_array_equal(a.loss, b.loss)


def test_result_repr_summarises_instead_of_printing_arrays() -> None:
    # A diverging ensemble: the repr must say so and stay a line long, whatever the size.
    res = nf.simulate(nf.TwoLayer(width=16), DATA, nf.GradientDescent(lr=50.0, steps=200),
                      trajectories=300, seed=1, record=nf.Record(params="final"))
    text = repr(res)
    assert "diverged 300" in text and "records loss" in text and ", u, W" in text
    assert len(text) < 400 and "nan" not in text.replace("median nan", "")


def test_arrays_passed_as_data_are_named_by_shape_not_printed() -> None:
    # The commonest slip, simulate(net, (X, y), ...): the message names the parameter, the
    # types and shapes given and the fix, and stays short instead of printing both arrays.
    X, y = np.random.default_rng(0).normal(size=(50, 3)), np.ones(50)
    for data, given in (((X, y), "tuple of 2 items (array of shape (50, 3), array of shape "
                                 "(50,))"),
                        (X, "array of shape (50, 3) and dtype float64")):
        with pytest.raises(ValueError, match="data") as info:
            nf.simulate(NET, data, FLOW, trajectories=2)
        text = str(info.value)
        assert text == ("data must be a LatentLine, Moments or Dataset; for arrays use "
                        f"nf.Dataset(X, y); got {given}")
    with pytest.raises(ValueError, match=r"nf\.Dataset\(X, y\)"):
        nf.initial_params(NET, data=(X, y))


@pytest.mark.parametrize(
    "make",
    [
        lambda: nf.TwoLayer(width=np.arange(10_000)),
        lambda: nf.TwoLayer(width=4, kappa=np.ones(10_000)),
        lambda: nf.TwoLayer(width=4, kappa="k" * 1000),
        lambda: nf.GradientFlow(solver="x" * 1000),
        lambda: nf.simulate(NET, list(range(10_000)), FLOW),
        lambda: nf.Dataset([[object()] * 1000], [1.0]),
    ],
)
def test_messages_never_print_a_large_value(make) -> None:
    # Any value quoted in a message is its type and shape (arrays) or a repr of at most
    # about 80 characters.
    with pytest.raises(ValueError) as info:
        make()
    got = str(info.value).split("; got ", 1)[1]
    assert len(got) <= 80, got


_X = np.random.default_rng(0).normal(size=(200, 5))


@pytest.mark.parametrize(
    ("make", "name"),
    [
        # the messages issue #18 quoted, and containers of arrays in general
        (lambda: nf.simulate(NET, (_X, _X[:, 0]), FLOW), "data"),
        (lambda: nf.simulate(NET, {"X": _X, "y": _X[:, 0]}, FLOW), "data"),
        (lambda: nf.simulate(NET, [np.zeros((3,) * 6)] * 9, FLOW), "data"),
        (lambda: nf.simulate(NET, {"k" * 200: _X, **{str(i): 0 for i in range(9)}}, FLOW),
         "data"),
        (lambda: nf.simulate(NET, DATA, FLOW, trajectories=-5), "trajectories"),
        (lambda: nf.TwoLayer(width=4, kappa=float("inf")), "kappa"),
        (lambda: nf.set_memory_budget("8X"), "nbytes"),
    ],
)
def test_messages_name_the_parameter_and_stay_short(make, name: str) -> None:
    # Whatever was passed, the message starts with the parameter's name and quotes the
    # value in at most 100 characters (before: 3,175 characters for (X, y)).
    with pytest.raises(ValueError) as info:
        make()
    text = str(info.value)
    assert text.startswith(f"{name} "), text
    got = text.split("; got ", 1)[1]
    assert len(got) <= 100 and len(text) <= 200, text
    assert "0." not in got  # no array entries printed


def test_data_given_as_a_dict_of_arrays_is_named_by_shapes() -> None:
    with pytest.raises(ValueError) as info:
        nf.simulate(NET, {"X": _X, "y": _X[:, 0]}, FLOW)
    assert str(info.value).endswith("; got dict of 2 items ('X': array of shape (200, 5), "
                                    "'y': array of shape (200,))")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: nf.TwoLayer(width=4, kappa=0.0), "kappa must be a finite number > 0; got 0.0"),
        (lambda: nf.GradientFlow(eta_u=-0.1), "eta_u must be a finite number >= 0; got -0.1"),
        (lambda: nf.GradientFlow(rtol=2.0), "rtol must be in (0, 1]; got 2.0"),
        (lambda: nf.Gaussian(correlation=1.5), "correlation must be in [-1, 1]; got 1.5"),
        (lambda: nf.LatentLine(beta=float("inf")), "beta must be a finite number; got inf"),
        (lambda: nf.TwoLayer(width=0), "width must be an integer >= 1; got 0"),
    ],
)
def test_range_messages_read_naturally(make, message: str) -> None:
    # No "in (0.0, inf]": a one-sided bound is written as a comparison, an interval only
    # when both ends are finite.
    with pytest.raises(ValueError) as info:
        make()
    assert str(info.value) == message


@pytest.mark.parametrize(("given", "nbytes"),
                         [("8G", 8 * 2**30), ("500M", 500 * 2**20), ("1.5GB", 1.5 * 2**30),
                          (" 2g ", 2 * 2**30), ("1000000", 1e6), (2**30, 2**30)])
def test_set_memory_budget_takes_the_environment_variables_sizes(
        monkeypatch, given, nbytes: float) -> None:
    # nf.set_memory_budget("8G") means what NTKFLOW_MEMORY_BUDGET=8G means.
    try:
        nf.set_memory_budget(given)
        assert nf.memory_budget() == nbytes
        if isinstance(given, str):
            nf.set_memory_budget(None)
            monkeypatch.setenv("NTKFLOW_MEMORY_BUDGET", given)
            assert nf.memory_budget() == nbytes
    finally:
        nf.set_memory_budget(None)


@pytest.mark.parametrize("given", ["8X", "", "-1G", "G", "inf"])
def test_set_memory_budget_refuses_a_bad_size(given: str) -> None:
    before = nf.memory_budget()
    with pytest.raises(ValueError, match=r"^nbytes must be a size > 0 such as 8G or 500M; "
                                         r"got '"):
        nf.set_memory_budget(given)
    assert nf.memory_budget() == before
    with pytest.raises(ValueError, match=r"^nbytes must be a finite number > 0; got -1"):
        nf.set_memory_budget(-1)


def test_log_spaced_record_times_end_at_the_horizon() -> None:
    flow = nf.GradientFlow(t_max=50.0)
    for n in (2, 3, 7):
        t = nf.Record(times=n, spacing="log").resolve_times(flow)
        assert t.size == n and t[0] == 0.0 and t[-1] == 50.0
        assert np.all(np.diff(t) > 0)
    t = nf.Record(times=5, spacing="log").resolve_times(flow)
    np.testing.assert_allclose(t[1:], np.geomspace(50.0 * 1e-4, 50.0, 4), rtol=1e-15)


def test_default_budget_reads_the_machine_at_most_once_per_ttl(monkeypatch) -> None:
    # The cgroup files are read once per _MACHINE_TTL, not on every check (a tiny sweep
    # task checks the budget several times): count the reads on a fake clock.
    from ntkflow import _memory

    reads = []
    clock = [1000.0]
    monkeypatch.setattr(_memory, "_machine", None)
    monkeypatch.setattr(_memory, "_cgroup_limit", lambda: reads.append(1) or 6.0 * 2**30)
    monkeypatch.setattr(_memory.time, "monotonic", lambda: clock[0])
    monkeypatch.delenv("NTKFLOW_MEMORY_BUDGET", raising=False)
    expected = 0.5 * min(_memory._physical_memory(), 6.0 * 2**30)
    assert all(nf.memory_budget() == expected for _ in range(100))
    assert len(reads) == 1
    clock[0] += _memory._MACHINE_TTL  # the TTL is over: read again, once
    monkeypatch.setattr(_memory, "_cgroup_limit", lambda: reads.append(1) or 2.0 * 2**30)
    assert nf.memory_budget() == nf.memory_budget() == 2**30
    assert len(reads) == 2
