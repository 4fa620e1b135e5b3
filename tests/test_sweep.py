"""Sweeps: in-process against Dask (a LocalCluster on loopback, started here), the store's
atomic writes and resume after a killed worker or a killed sweep."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ntkflow as nf
from ntkflow.sweeps import cost, execute

# Dask's own warnings, raised in this process by the cluster it starts (scratch folders,
# ports, deprecations inside dask/distributed/tornado); nothing of ntkflow's.
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*[Ss]cratch.*:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*[Pp]ort.*:UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:distributed.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:dask.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:tornado.*"),
    pytest.mark.filterwarnings("ignore::ResourceWarning:distributed.*"),
]

HERE = Path(__file__).resolve().parent


def line_tasks(n: int, *, width: int = 32, trajectories: int = 20,
               rtol: float = 1e-10) -> list[nf.Task]:
    """n small simulated ensembles of the latent line, t_max from the closed form."""
    return [nf.Task(net=nf.TwoLayer(width=width, kappa=width**-0.5),
                    data=nf.LatentLine(beta=1.0 + 0.125 * i),
                    train=nf.GradientFlow(t_max=1.0, rtol=rtol),
                    init=nf.Gaussian(1.0, 1.0, correlation=0.5 if i % 2 else 0.0),
                    trajectories=trajectories, seed=1000 + i,
                    record=nf.Record(times=40, spacing="log", loss_below=1e-6),
                    horizon="auto")
            for i in range(n)]


def slow_tasks(n: int = 8) -> list[nf.Task]:
    """Tasks of ~0.3-0.5 s each on one thread, so that a kill lands mid-task."""
    return line_tasks(n, width=2048, trajectories=300)


def assert_same(a: nf.Sweep, b: nf.Sweep) -> None:
    """Bit for bit: every array of every task (only the wall time may differ)."""
    assert [t.key for t in a.tasks] == [t.key for t in b.tasks]
    for x, y in zip(a, b, strict=True):
        assert set(x.arrays) == set(y.arrays)
        for k, v in x.arrays.items():
            if k == "seconds":
                continue
            w = y.arrays[k]
            assert v.dtype == w.dtype and v.shape == w.shape, k
            assert v.tobytes() == w.tobytes(), k


def committed(store: Path) -> dict[str, str]:
    """key -> segment of the committed tasks, read from the index with plain json."""
    out: dict[str, str] = {}
    index = store / "index.jsonl"
    if index.exists():
        for line in index.read_text().splitlines():
            entry = json.loads(line)
            out.update(dict.fromkeys(entry["keys"], entry["segment"]))
    return out


def segment_files(store: Path) -> list[Path]:
    return sorted((store / "segments").glob("*/*.zip"))


def stamps(store: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in segment_files(store)}


def leftovers(store: Path) -> list[Path]:
    return [p for p in store.rglob("*") if ".tmp-" in p.name]


# --------------------------------------------------------------------------- in-process


def test_task_key_is_the_description() -> None:
    a, b = line_tasks(2)
    assert a.key != b.key and len(a.key) == 16
    again = line_tasks(1)[0]
    assert again == a and again.key == a.key  # a new object, the same description
    with pytest.raises(ValueError, match="train"):
        nf.Task(net=a.net, data=a.data, train=nf.GradientDescent(), compute="exact")
    with pytest.raises(ValueError, match="data"):
        nf.Task(net=a.net, data=nf.Moments(Sigma=np.eye(2), b=[1.0, 0.0]),
                train=a.train, horizon="auto")


def test_store_layout_is_readable_without_ntkflow(tmp_path: Path) -> None:
    tasks = line_tasks(3)
    done = nf.sweep(tasks, store=tmp_path / "s")
    assert done.computed == tuple(t.key for t in tasks) and done.skipped == ()
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["version"] == 2 and manifest["tasks"] == 3
    lines = (tmp_path / "s" / "tasks.jsonl").read_text().splitlines()
    specs = [json.loads(line) for line in lines]
    assert [t["key"] for t in specs] == [t.key for t in tasks]
    assert specs[1]["spec"]["data"]["beta"] == 1.125
    seen = 0
    for line in (tmp_path / "s" / "index.jsonl").read_text().splitlines():  # the recipe
        seg = json.loads(line)                                # of store.py's docstring
        with zipfile.ZipFile(tmp_path / "s" / "segments" / seg["segment"]) as zf:
            for key in seg["keys"]:  # plain arrays, no pickles
                with np.load(io.BytesIO(zf.read(key + ".npz")), allow_pickle=False) as z:
                    t = next(t for t in tasks if t.key == key)
                    assert z["labels"].shape == (20,) and z["final_loss"].dtype == np.float64
                    assert str(z["key"]) == key and json.loads(str(z["spec"])) == t.describe()
                    seen += 1
    assert seen == 3
    with open(tmp_path / "s" / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["key"] for r in rows] == [t.key for t in tasks]
    table = nf.Store(tmp_path / "s").summary()
    assert isinstance(table, nf.Table) and len(table) == 3
    np.testing.assert_array_equal(table["seed"], [1000, 1001, 1002])
    assert table["median_final_loss"][0] == float(rows[0]["median_final_loss"])
    assert not leftovers(tmp_path / "s")


def test_in_memory_and_store_give_the_same_numbers(tmp_path: Path) -> None:
    tasks = line_tasks(4)
    mem = nf.sweep(tasks, threads=1)
    assert mem.store is None
    assert_same(mem, nf.sweep(tasks, store=tmp_path / "s", threads=2))
    again = nf.sweep(tasks, store=tmp_path / "s")  # all finished: nothing recomputed
    assert again.computed == () and len(again.skipped) == 4
    assert_same(mem, again)
    res = nf.sweep([nf.Task(**{**_fields(tasks[0]), "compute": "records"})])[0].result()
    assert res.loss.shape == (20, 40) and res.train.t_max == float(mem[0]["t_max"])


def _fields(t: nf.Task) -> dict[str, Any]:
    return {k: getattr(t, k) for k in ("net", "data", "train", "init", "trajectories",
                                       "seed", "record", "horizon")}


def test_resume_with_other_specs_is_refused(tmp_path: Path) -> None:
    nf.sweep(line_tasks(3), store=tmp_path)
    with pytest.raises(ValueError, match=r"other specs(.|\n)*task 0: train\.rtol is "
                       r"1e-10 in the store, 1e-09 now"):
        nf.sweep(line_tasks(3, rtol=1e-9), store=tmp_path)
    with pytest.raises(ValueError, match="the store has 3 tasks, this sweep 4"):
        nf.sweep(line_tasks(4), store=tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["isa"] = "some-other-level"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="NTKFLOW_ISA=some-other-level"):
        nf.sweep(line_tasks(3), store=tmp_path)


def test_a_worker_on_another_isa_level_refuses() -> None:
    with pytest.raises(RuntimeError, match="set NTKFLOW_ISA="):
        execute(line_tasks(1)[0], "not-this-level", None)


def test_what_a_killed_commit_leaves_is_recovered_or_recomputed(tmp_path: Path) -> None:
    """A segment renamed into place but not indexed (killed between the two) is indexed
    on resume, not recomputed; a cut index line is dropped; a segment that does not load
    is discarded and its tasks recomputed."""
    tasks = line_tasks(4)
    first = nf.sweep(tasks)  # in memory: the files below are changed under a reader
    nf.sweep(tasks, store=nf.Store(tmp_path, batch_tasks=1))
    assert len(segment_files(tmp_path)) == 4
    index = tmp_path / "index.jsonl"
    lines = index.read_text().splitlines(keepends=True)
    index.write_text("".join(lines[:2]) + lines[2][:10])  # line 3 cut, line 4 lost
    again = nf.sweep(tasks, store=tmp_path)
    assert again.computed == ()
    assert index.read_text() == "".join(lines)
    assert_same(first, again)
    index.write_text("".join(lines[:3]))  # segment 4 not indexed and broken
    broken = segment_files(tmp_path)[-1]
    broken.write_bytes(broken.read_bytes()[:100])
    again = nf.sweep(tasks, store=tmp_path)
    assert again.computed == (tasks[3].key,)
    assert_same(first, again)
    assert committed(tmp_path) == {t.key: p.relative_to(tmp_path / "segments").as_posix()
                                   for t, p in zip(tasks, segment_files(tmp_path),
                                                   strict=True)}


def test_width_study_and_phase_diagram_with_a_store(tmp_path: Path) -> None:
    kw: dict[str, Any] = dict(trajectories=10, seed=3, times=30)
    plain = nf.width_study([8, 16], "ntk", **kw)
    stored = nf.width_study([8, 16], "ntk", store=tmp_path / "w", **kw)
    for k in plain.table.names:
        if k != "seconds":
            np.testing.assert_array_equal(plain.table[k], stored.table[k])
    before = stamps(tmp_path / "w")
    resumed = nf.width_study([8, 16], "ntk", store=tmp_path / "w", **kw)
    assert stamps(tmp_path / "w") == before
    np.testing.assert_array_equal(resumed.table["seconds"], stored.table["seconds"])
    grid = (("alpha", [0.5, 1.0]), ("target", [0.5, -1.0]))
    pd0 = nf.phase_diagram(*grid, width=16, trajectories=10, exact=True)
    pd1 = nf.phase_diagram(*grid, width=16, trajectories=10, exact=True, store=tmp_path / "p")
    np.testing.assert_array_equal(pd0.dominant, pd1.dominant)
    np.testing.assert_array_equal(pd0.median["rho_star"], pd1.median["rho_star"])
    assert len(nf.Store(tmp_path / "p").summary()) == 4


def test_killed_sweep_resumes_without_recomputing(tmp_path: Path) -> None:
    store = tmp_path / "s"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(HERE)!r})
        import ntkflow as nf
        from test_sweep import slow_tasks
        nf.sweep(slow_tasks(), store={str(store)!r}, threads=1)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while len(committed(store)) < 2 and time.monotonic() < deadline:
            assert proc.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = stamps(store)
    done = committed(store)
    tasks = slow_tasks()
    assert 2 <= len(done) < len(tasks)
    shard = segment_files(store)[0].parent
    (shard / ".00000009.zip.tmp-abc").write_bytes(b"partial")  # as if cut mid-write
    resumed = nf.sweep(tasks, store=store)
    assert set(resumed.skipped) == set(done)
    assert set(resumed.computed) == {t.key for t in tasks} - set(resumed.skipped)
    after = stamps(store)
    assert all(after[n] == v for n, v in before.items())  # written once, never again
    assert set(committed(store)) == {t.key for t in tasks} and not leftovers(store)
    assert_same(nf.sweep(tasks, threads=2), resumed)


def test_without_dask_local_works_and_client_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("dask", "distributed"):
        monkeypatch.setitem(sys.modules, name, None)  # `import distributed` now fails
    done = nf.sweep(line_tasks(2))
    assert len(done) == 2
    with pytest.raises(ImportError, match=r"pip install 'ntkflow\[dask\]'"):
        nf.sweep(line_tasks(2), client="tcp://127.0.0.1:8786")
    with pytest.raises(ImportError, match=r"pip install 'ntkflow\[dask\]'"):
        nf.width_study([8, 16], trajectories=4, exact=True, client="tcp://127.0.0.1:8786")


# --------------------------------------------------------------------------- Dask


def local_cluster(**config: Any) -> Iterator[Any]:
    """A Client of 2 single-threaded worker processes on this machine, with these Dask
    settings while the cluster starts; closed after the tests that use it."""
    distributed = pytest.importorskip("distributed")
    import dask

    with dask.config.set(config):
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1,
                                           processes=True, host="127.0.0.1",
                                           dashboard_address=None,
                                           silence_logs=logging.CRITICAL)
    c = distributed.Client(cluster)
    try:
        yield c
    finally:
        c.close()
        cluster.close()


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    yield from local_cluster()


def test_dask_gives_the_same_bits(client: Any, tmp_path: Path) -> None:
    tasks = line_tasks(16)
    local = nf.sweep(tasks)
    on_dask = nf.sweep(tasks, client=client, store=tmp_path / "s")
    assert len(on_dask.computed) == 16
    assert_same(local, on_dask)
    assert len(committed(tmp_path / "s")) == 16 and not leftovers(tmp_path / "s")
    by_address = nf.sweep(tasks[:3], client=client.scheduler.address)  # a str: own Client
    assert_same(nf.sweep(tasks[:3]), by_address)


def records_tasks() -> list[nf.Task]:
    """compute="records" tasks whose runs record every kind of array: the parameters at
    every record time and every per-neuron delta (a linear network), and on a dataset
    the kernel metrics, the Gram matrix, the linearised twin, a labelled test set,
    biases and relu switching events (flow and descent)."""
    rng = np.random.default_rng(4)
    X, Xt = rng.normal(size=(10, 3)), rng.normal(size=(8, 3))
    data, test = nf.Dataset(X, np.sign(X[:, 0])), nf.Dataset(Xt, np.sign(Xt[:, 0]))
    rich = nf.Record(times=6, params="all", deltas=True, gram="train", linearized=True,
                     test=test, ntk="metrics")
    relu = nf.TwoLayer(width=8, act="relu", kappa=8**-0.5, bias=True)
    return [
        nf.Task(**{**_fields(line_tasks(1)[0]), "compute": "records",
                   "record": nf.Record(times=12, spacing="log", params="all", deltas=True,
                                       loss_below=1e-6)}),
        nf.Task(net=relu, data=data, train=nf.GradientFlow(t_max=2.0), trajectories=3,
                seed=7, record=rich, init=nf.Gaussian(s_b=0.5), compute="records"),
        nf.Task(net=relu, data=data, train=nf.GradientDescent(lr=0.3, steps=40),
                trajectories=3, seed=8, record=rich, init=nf.Gaussian(s_b=0.5),
                compute="records"),
    ]


def test_dask_groups_tasks_into_chunks(client: Any, tmp_path: Path) -> None:
    """#19: tiny tasks go to the workers in chunks of about CHUNK_SECONDS of work (after
    a first wave of one task each, which calibrates the cost model), packed there; the
    bits are those of the in-process run."""
    from distributed import get_task_stream

    tasks = line_tasks(40, width=8, trajectories=4)
    with get_task_stream(client) as ts:
        on_dask = nf.sweep(tasks, client=client, store=tmp_path / "s")
    chunks = {str(t["key"]) for t in ts.data if "ntkflow-" in str(t["key"])}
    assert 4 <= len(chunks) <= 20, chunks
    assert_same(nf.sweep(tasks), on_dask)
    assert len(nf.Store(tmp_path / "s").summary()) == 40
    assert cost(tasks[0]) * 2 == cost(
        nf.Task(**{**_fields(tasks[0]), "trajectories": 8}))


def test_dask_gives_the_same_full_records(client: Any) -> None:
    # Not only the summaries: every array of every task's Result, the parameters at every
    # record time included, is the same bits in-process and on the cluster, and is the
    # Result simulate() returns for that task.
    import dataclasses

    tasks = records_tasks()
    local = nf.sweep(tasks)
    on_dask = nf.sweep(tasks, client=client)
    assert_same(local, on_dask)
    for task, out in zip(tasks, on_dask, strict=True):
        res = out.result()
        direct = nf.simulate(task.net, task.data, res.train, init=task.init,
                             trajectories=task.trajectories, seed=task.seed,
                             record=task.record, progress=False)
        arrays = [f.name for f in dataclasses.fields(nf.Result)
                  if isinstance(getattr(direct, f.name), np.ndarray)]
        for name in arrays:
            a, b = getattr(res, name), getattr(direct, name)
            assert a is not None, name
            assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), name
        assert res.path == direct.path
        assert {"u", "W", "deltas"} <= set(arrays)
        if task.net.act == "relu":
            assert {"gram", "ntk_change", "lin_gap", "test_error", "events", "b"} <= set(arrays)


def test_dask_survives_a_killed_worker(client: Any, tmp_path: Path) -> None:
    client.wait_for_workers(2)
    tasks = slow_tasks()
    pids: dict[str, int] = client.run(os.getpid)
    store = tmp_path / "s"
    # A commit per task: with the default batch (about a second of finished work) the
    # x86-64-v4 build finished all 8 tasks before the first commit, and nothing was killed.
    st = nf.Store(store, batch_tasks=1)
    killed: list[tuple[str, int]] = []

    def kill_a_busy_worker() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if committed(store):  # the sweep is well under way
                busy = [w for w, keys in client.processing().items() if keys and w in pids]
                if busy:
                    killed.append((busy[0], len(committed(store))))
                    os.kill(pids[busy[0]], signal.SIGKILL)
                    return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_a_busy_worker)
    killer.start()
    try:
        on_dask = nf.sweep(tasks, client=client, store=st)
    finally:
        killer.join()
    assert killed and killed[0][1] < len(tasks), "no worker was killed mid-sweep"
    assert_same(nf.sweep(tasks, threads=2), on_dask)
    assert not leftovers(store)
    client.wait_for_workers(2)  # the nanny restarts the killed worker


def test_cli_run_with_a_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ntkflow.cli import main

    cfg = tmp_path / "ws.toml"
    cfg.write_text('kind = "width_study"\n[parametrization]\nname = "ntk"\n'
                   '[study]\nwidths = [8, 16, 32]\ntrajectories = 8\nexact = true\n'
                   'n_boot = 20\nstore = "from_config"\n[output]\nfigures = false\n')
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert len(committed(tmp_path / "from_config")) == 3  # relative to the config file
    store = tmp_path / "from_cli"
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--quiet",
                 "--store", str(store)]) == 0
    before = stamps(store)
    assert len(committed(store)) == 3 and (store / "summary.csv").exists()
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--quiet",
                 "--store", str(store)]) == 0  # resumed: nothing recomputed
    assert stamps(store) == before
    cfg.write_text(cfg.read_text().replace("trajectories = 8", "trajectories = 9"))
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--quiet",
                 "--store", str(store)]) == 2
    assert "trajectories is 8 in the store, 9 now" in capsys.readouterr().err


def test_keys_describe_new_spec_fields_only_when_set():
    """Fields added after the first task format (bias, loss, s_b, classes, weight decay)
    are left out of a task's description at their defaults, so older stores keep their
    keys; set, they change the key."""
    base = nf.Task(net=nf.TwoLayer(width=4), data=nf.LatentLine(),
                   train=nf.GradientFlow(t_max=1.0), trajectories=2)
    desc = base.describe()
    assert "bias" not in desc["net"] and "s_b" not in desc["init"]
    assert not {"loss", "lambda_u", "lambda_w"} & set(desc["train"])
    other = nf.Task(net=nf.TwoLayer(width=4), data=nf.LatentLine(),
                    train=nf.GradientFlow(t_max=1.0, lambda_w=0.1), trajectories=2)
    assert other.key != base.key and other.describe()["train"]["lambda_w"] == 0.1


def test_sweep_runs_relu_sgd_tasks_with_the_twin_test():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(24, 3))
    data = nf.Dataset(X, np.sin(X[:, 0]))
    tasks = [nf.Task(net=nf.TwoLayer(width=w, act="relu", kappa=w ** -0.5), data=data,
                     train=nf.SGD(lr=0.5, steps=200, batch_size=8), trajectories=3,
                     record=nf.Record(times=11, linearized=True)) for w in (16, 64)]
    outs = nf.sweep(tasks)
    for task, out in zip(tasks, outs):
        direct = nf.simulate(task.net, data, task.train, trajectories=3,
                             record=task.record)
        np.testing.assert_array_equal(out["final_loss"], direct.loss[:, -1])
        c, d = out.classification(), nf.classify(direct)
        assert c.kernel_test == d.kernel_test == "delta_lin"
        np.testing.assert_array_equal(c.labels, d.labels)


def test_relu_width_study_same_bits_on_dask(client: Any) -> None:
    """#16: a relu width study (twin test, a held-out set) runs in-process and on a
    LocalCluster with the same numbers."""
    rng = np.random.default_rng(0)
    X, Xt = rng.normal(size=(20, 3)), rng.normal(size=(15, 3))
    w = rng.normal(size=3)
    kw = dict(trajectories=6, act="relu", data=nf.Dataset(X, np.sin(X @ w)),
              test=nf.Dataset(Xt, np.sin(Xt @ w)), t_max=10.0, times=30, n_boot=50)
    local = nf.width_study([32, 128], "ntk", **kw)
    on_dask = nf.width_study([32, 128], "ntk", client=client, **kw)
    for name in local.table.columns:
        if name != "seconds":
            np.testing.assert_array_equal(local.table[name], on_dask.table[name], name)
    assert np.all(np.isfinite(local.table["median_delta_lin"]))
    assert np.all(np.isfinite(local.table["median_test_loss_gap"]))
    assert all(e.classification.kernel_test == "delta_lin" for e in local.ensembles)
    assert "delta_lin" in local.fits and "med d_lin" in local.summary()


def test_tanh_phase_diagram_same_bits_on_dask(client: Any) -> None:
    """#16: a tanh phase diagram (twin test, a held-out set) runs in-process and on a
    LocalCluster with the same numbers, cell by cell and trajectory by trajectory."""
    rng = np.random.default_rng(1)
    X, Xt = rng.normal(size=(16, 2)), rng.normal(size=(12, 2))
    w = rng.normal(size=2)
    kw = dict(width=32, trajectories=4, act="tanh", data=nf.Dataset(X, np.tanh(X @ w)),
              test=nf.Dataset(Xt, np.tanh(Xt @ w)), t_max=8.0, times=20)
    axes = (("alpha", [0.5, 1.0]), ("correlation", [0.0, 0.9]))
    local = nf.phase_diagram(*axes, **kw)
    on_dask = nf.phase_diagram(*axes, client=client, **kw)
    a, b = local.to_long(), on_dask.to_long()
    assert len(a) == 2 * 2 * 4
    for name in a.columns:
        np.testing.assert_array_equal(a[name], b[name], name)
    assert np.all(np.isfinite(a["delta_lin"])) and np.all(np.isfinite(a["test_loss_gap"]))


def sgd_study_kw() -> dict[str, Any]:
    """A small relu width study trained by SGD (with a held-out set)."""
    rng = np.random.default_rng(3)
    X, Xt = rng.normal(size=(16, 2)), rng.normal(size=(8, 2))
    return dict(trajectories=4, act="relu", data=nf.Dataset(X, np.tanh(X[:, 0])),
                test=nf.Dataset(Xt, np.tanh(Xt[:, 0])), times=20, n_boot=20,
                train=nf.SGD(lr=0.3, steps=120, batch_size=6))


def assert_same_study(a: Any, b: Any) -> None:
    for name in a.table.columns:
        if name != "seconds":
            np.testing.assert_array_equal(a.table[name], b.table[name], name)
    for e, f in zip(a.ensembles, b.ensembles, strict=True):
        assert e.final_loss.tobytes() == f.final_loss.tobytes()
        for k, v in e.classification.scores.items():
            assert v.tobytes() == f.classification.scores[k].tobytes(), k


def test_sgd_width_study_same_bits_through_a_store(tmp_path: Path) -> None:
    """#16: a width study trained by SGD gives the same bits in-process, through a store
    and resumed from it (nothing recomputed)."""
    kw = sgd_study_kw()
    local = nf.width_study([16, 64], "ntk", **kw)
    stored = nf.width_study([16, 64], "ntk", store=tmp_path / "s", **kw)
    before = stamps(tmp_path / "s")
    resumed = nf.width_study([16, 64], "ntk", store=tmp_path / "s", **kw)
    assert len(committed(tmp_path / "s")) == 2
    assert stamps(tmp_path / "s") == before
    assert_same_study(local, stored)
    assert_same_study(local, resumed)
    assert np.all(np.isfinite(local.table["median_test_loss"]))


def test_sgd_width_study_same_bits_on_dask(client: Any) -> None:
    kw = sgd_study_kw()
    assert_same_study(nf.width_study([16, 64], "ntk", **kw),
                      nf.width_study([16, 64], "ntk", client=client, **kw))


def test_dask_a_raising_task_fails_alone_unretried_and_rerun(client: Any,
                                                             tmp_path: Path) -> None:
    """On the cluster, a task that raises (in the worker process) is recorded as failed
    alone, its chunk's other tasks are kept, and its chunk is not submitted again;
    rerun() on the cluster completes the store with the in-process bits."""
    from distributed import get_task_stream

    from .test_store import install_failures

    tasks = line_tasks(6, width=8, trajectories=4)
    ref = nf.sweep(tasks)
    client.run(install_failures, str(tasks[1].seed))
    try:
        with get_task_stream(client) as ts:
            done = nf.sweep(tasks, client=client, store=tmp_path / "s")
    finally:
        client.run(install_failures, "")
    assert list(done.failed) == [tasks[1].key] and len(done.computed) == 6
    assert done.failed[tasks[1].key].error == "ValueError"
    assert not [t for t in ts.data if str(t["key"]).endswith("-1")], "a chunk was retried"
    fixed = done.rerun(client=client)
    assert fixed.computed == (tasks[1].key,) and fixed.failed == {}
    assert_same(ref, fixed)
