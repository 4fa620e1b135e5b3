"""The version-2 store: batched commits, the index, migration from version 1, and a
sweeping process SIGKILLed at random points (no finished task lost, none partial)."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ntkflow as nf
from ntkflow import sweeps
from ntkflow.sweeps import execute

HERE = Path(__file__).resolve().parent


def tiny_tasks(n: int) -> list[nf.Task]:
    return [nf.Task(net=nf.TwoLayer(width=8, kappa=8**-0.5),
                    data=nf.LatentLine(beta=1.0 + 0.01 * (i % 50)),
                    train=nf.GradientFlow(rtol=1e-10), trajectories=4, seed=i,
                    record=nf.Record(times=20, spacing="log", loss_below=1e-6),
                    horizon="auto") for i in range(n)]


def index_of(store: Path) -> dict[str, str]:
    """key -> segment, read with plain json (a cut last line is not a commit)."""
    out: dict[str, str] = {}
    index = store / "index.jsonl"
    if index.exists():
        for line in index.read_bytes().splitlines(keepends=True):
            if line.endswith(b"\n"):
                entry = json.loads(line)
                out.update(dict.fromkeys(entry["keys"], entry["segment"]))
    return out


def csv_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV by column name; an empty cell and "None" both mean "no value"
    (summary.csv leaves unset spec fields empty, Table.to_csv writes None)."""
    import csv
    with open(path, newline="") as fh:
        return [{k: "" if v == "None" else v for k, v in row.items()}
                for row in csv.DictReader(fh)]


def same_arrays(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return set(a) == set(b) and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and
        a[k].tobytes() == b[k].tobytes() for k in a if k != "seconds")


def test_commits_are_batched_and_resume_opens_no_segment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tasks = tiny_tasks(7)
    ref = nf.sweep(tasks, threads=1)
    done = nf.sweep(tasks, store=nf.Store(tmp_path, batch_tasks=3, batch_seconds=60))
    segs = sorted(p.relative_to(tmp_path / "segments").as_posix()
                  for p in (tmp_path / "segments").rglob("*.zip"))
    assert segs == ["00000/00000001.zip", "00000/00000002.zip", "00000/00000003.zip"]
    assert sorted(set(index_of(tmp_path).values())) == segs
    for a, b in zip(ref, done, strict=True):
        assert same_arrays(a.arrays, b.arrays)
    opened: list[Any] = []
    real = zipfile.ZipFile

    def spy(*args: Any, **kw: Any) -> Any:
        opened.append(args[0])
        return real(*args, **kw)

    monkeypatch.setattr(zipfile, "ZipFile", spy)
    again = nf.sweep(tasks, store=tmp_path)  # finished: the index alone answers
    assert again.computed == () and opened == []
    monkeypatch.undo()
    table = nf.Store(tmp_path).summary()
    assert list(table["key"]) == [t.key for t in tasks]
    table.to_csv(tmp_path / "by_table.csv")  # the same cells, appended as committed
    assert csv_rows(tmp_path / "summary.csv") == csv_rows(tmp_path / "by_table.csv")
    np.testing.assert_array_equal(table["median_final_loss"],
                                  ref.summary()["median_final_loss"])


def test_a_finished_task_is_committed_while_the_next_one_runs(tmp_path: Path) -> None:
    """A task that finishes before a long one is committed within batch_seconds, not
    when the long one ends: a kill during the long task does not lose it."""
    tasks = tiny_tasks(2)
    st = nf.Store(tmp_path, batch_seconds=0.05)
    lock, writer = st._begin(tasks)
    try:
        writer.add(tasks[0].key, execute(tasks[0], None, 1))
        deadline = time.monotonic() + 10
        while tasks[0].key not in index_of(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.01)  # as if the next task were running
        assert list(index_of(tmp_path)) == [tasks[0].key]
        writer.add(tasks[1].key, execute(tasks[1], None, 1))
        writer.close()
    finally:
        lock.close()
    assert list(index_of(tmp_path)) == [t.key for t in tasks]
    assert writer.commits == 2


def test_resume_false_recomputes_and_supersedes(tmp_path: Path) -> None:
    tasks = tiny_tasks(3)
    nf.sweep(tasks, store=tmp_path)
    again = nf.sweep(tasks, store=tmp_path, resume=False)
    assert len(again.computed) == 3
    assert set(index_of(tmp_path).values()) == {"00000/00000002.zip"}
    assert len(nf.Store(tmp_path).summary()) == 3
    for a, b in zip(nf.sweep(tasks), again, strict=True):
        assert same_arrays(a.arrays, b.arrays)
    # the superseded segment is removed, summary.csv has each task once
    seg1 = tmp_path / "segments" / "00000" / "00000001.zip"
    assert [p.name for p in (tmp_path / "segments").rglob("*.zip")] == ["00000002.zip"]
    assert [r["key"] for r in csv_rows(tmp_path / "summary.csv")] == [t.key for t in tasks]
    # killed after the index dropped it but before its file was deleted: removed next time
    seg1.write_bytes((tmp_path / "segments" / "00000" / "00000002.zip").read_bytes())
    assert nf.sweep(tasks, store=tmp_path).computed == () and not seg1.exists()


@pytest.mark.parametrize("value", [
    np.float64(2.5), np.array(3, dtype=np.int8), np.arange(5, dtype=np.uint64) * 2**61,
    np.arange(12.0).reshape(3, 4), np.asfortranarray(np.arange(12.0).reshape(3, 4)),
    np.arange(12.0).reshape(3, 4)[:, ::2], np.array(["ok", "failed"]), np.str_("key"),
    np.array([True, False]), np.zeros((0, 3)), np.full(100_000, np.nan)])
def test_task_files_are_what_numpy_writes(value: Any) -> None:
    """The store's own .npz writer (four times faster than np.savez): each member is the
    bytes np.save writes, and np.load reads the arrays back bit for bit."""
    from ntkflow.store import _npy_bytes, _npz_bytes

    buf = io.BytesIO()  # (written in C order: np.save of the C-ordered copy)
    np.save(buf, value if np.asanyarray(value).flags.c_contiguous else value.copy(order="C"))
    assert _npy_bytes(np.asanyarray(value)) == buf.getvalue()
    data = _npz_bytes({"a": value, "b": np.arange(3)})
    assert zipfile.ZipFile(io.BytesIO(data)).testzip() is None
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        assert z.files == ["a", "b"]
        got = z["a"]
        want = np.asanyarray(value)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes() == np.ascontiguousarray(want).tobytes()
    with pytest.raises(ValueError, match="plain arrays"):
        _npz_bytes({"a": np.array([None])})


def test_batch_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match="batch_tasks"):
        nf.Store("x", batch_tasks=0)
    with pytest.raises(ValueError, match="batch_seconds"):
        nf.Store("x", batch_seconds=-1.0)
    with pytest.raises(ValueError, match="batch_bytes"):
        nf.Store("x", batch_bytes=0)


def write_v1(path: Path, tasks: list[nf.Task], finished: list[nf.Task]) -> None:
    """A version-1 store as ntkflow <= this change wrote it: manifest with every spec,
    one np.savez file per finished task."""
    (path / "tasks").mkdir(parents=True)
    manifest = {"format": "ntkflow.store", "version": 1, "ntkflow": "0.1.0",
                "isa": str(nf._core.ISA),
                "tasks": [{"key": t.key, "spec": t.describe()} for t in tasks]}
    (path / "manifest.json").write_text(json.dumps(manifest, indent=1))
    for t in finished:
        np.savez(path / "tasks" / f"{t.key}.npz", **execute(t, None, 1))


def test_version_1_store_is_refused_then_migrated_bit_for_bit(tmp_path: Path) -> None:
    tasks = tiny_tasks(5)
    write_v1(tmp_path, tasks, tasks[:3])
    old_bytes = {t.key: (tmp_path / "tasks" / f"{t.key}.npz").read_bytes() for t in tasks[:3]}
    with pytest.raises(ValueError, match=r"version-1 layout(.|\n)*\.migrate\(\)"):
        nf.sweep(tasks, store=tmp_path)
    old = nf.Store(tmp_path)  # still readable as it is
    assert old.finished() == [t.key for t in tasks[:3]]
    v1_arrays = {k: old.load(k) for k in old.finished()}
    assert len(old.summary()) == 3
    nf.Store(tmp_path).migrate()
    assert not (tmp_path / "tasks").exists()
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["version"] == 2 and manifest["migrated_from"]["version"] == 1
    for key, seg in index_of(tmp_path).items():  # the very bytes of the old files
        with zipfile.ZipFile(tmp_path / "segments" / seg) as z:
            assert z.read(f"{key}.npz") == old_bytes[key]
    resumed = nf.sweep(tasks, store=tmp_path)
    assert resumed.computed == (tasks[3].key, tasks[4].key)
    ref = nf.sweep(tasks, threads=1)
    for t, a, b in zip(tasks, ref, resumed, strict=True):
        assert same_arrays(a.arrays, b.arrays)
        if t.key in v1_arrays:
            assert same_arrays(a.arrays, v1_arrays[t.key])
    assert len(nf.Store(tmp_path).summary()) == 5
    nf.Store(tmp_path).migrate()  # a version-2 store: nothing to do


def test_a_migration_killed_part_way_leaves_version_1(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
    tasks = tiny_tasks(4)
    write_v1(tmp_path, tasks, tasks)
    st = nf.Store(tmp_path)

    def killed(*args: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(st, "_write_manifest", killed)
    with pytest.raises(KeyboardInterrupt):
        st.migrate()
    monkeypatch.undo()
    assert nf.Store(tmp_path).version == 1 and len(list((tmp_path / "tasks").iterdir())) == 4
    nf.Store(tmp_path).migrate()
    assert nf.sweep(tasks, store=tmp_path).computed == ()


# --------------------------------------------------------------------------- SIGKILL

KILL_TASKS = 400
KILLER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {here!r})
    import ntkflow as nf
    from test_store import tiny_tasks
    tasks = tiny_tasks({n})
    store = nf.Store({store!r}, batch_tasks=int(sys.argv[1]), batch_seconds=0.01)
    print("ready", flush=True)
    nf.sweep(tasks, store=store, threads=1)
""")


def test_sigkill_at_random_points_loses_no_finished_task(tmp_path: Path) -> None:
    """The sweeping process is SIGKILLed at a random time after it starts sweeping,
    again and again on the same store (each run resumes the last), with commits every
    few tasks so that kills land inside commits too. After every kill: every task the
    index lists has its complete arrays, equal bit for bit to an in-process run; every
    segment file is complete; nothing committed before is lost. NTKFLOW_KILL_REPS sets
    the number of kills (20 by default)."""
    reps = int(os.environ.get("NTKFLOW_KILL_REPS", "20"))
    store = tmp_path / "s"
    tasks = tiny_tasks(KILL_TASKS)
    clean = nf.sweep(tasks, threads=1)
    clean.summary().to_csv(tmp_path / "clean.csv")
    ref = {t.key: o.arrays for t, o in zip(tasks, clean, strict=True)}
    script = KILLER.format(here=str(HERE), n=KILL_TASKS, store=str(store))
    rng = random.Random(19)
    seen: dict[str, str] = {}
    kills = 0
    for rep in range(reps):
        proc = subprocess.Popen([sys.executable, "-c", script, str(rng.choice([1, 3, 8]))],
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
            time.sleep(rng.uniform(0.0, 0.4))
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        kills += proc.returncode == -signal.SIGKILL
        now = index_of(store)
        assert set(seen) <= set(now), f"kill {rep}: committed tasks were lost"
        for p in (store / "segments").rglob("*"):
            if p.suffix == ".zip":  # visible under its final name: complete
                with zipfile.ZipFile(p) as z:
                    assert z.testzip() is None, p
            else:
                assert p.is_dir() or p.name.startswith("."), p
        st = nf.Store(store) if (store / "manifest.json").exists() else None
        for key in set(now) - set(seen):
            assert st is not None and same_arrays(st.load(key), ref[key]), key
        seen = now
        print(f"kill {rep}: {len(seen)} committed", file=sys.stderr)
        if len(seen) == KILL_TASKS:
            break
    assert kills >= min(reps, 3), "the sweeps ended before they could be killed"
    done = nf.sweep(tasks, store=store, threads=1)
    assert set(done.skipped) >= set(seen)
    for t, out in zip(tasks, done, strict=True):
        assert same_arrays(out.arrays, ref[t.key])
    # summary.csv, appended commit by commit across the kills: each task once, the
    # cells of the clean run's summary
    assert summary_without_seconds(store / "summary.csv") == summary_without_seconds(
        tmp_path / "clean.csv")
    with zipfile.ZipFile(next((store / "segments").rglob("*.zip"))) as z:  # the recipe
        name = next(n for n in z.namelist() if n.endswith(".npz"))
        assert np.load(io.BytesIO(z.read(name)), allow_pickle=False)["labels"].shape == (4,)


# --------------------------------------------------------------------------- failures

FAIL_ENV = "NTKFLOW_TEST_FAIL_SEEDS"


def install_failures(seeds: str) -> None:
    """Make the tasks of these seeds (comma-separated; "" none) raise inside
    ``simulate``, in this process or in a Dask worker (``client.run``): the switch is an
    environment variable read at every call, so that clearing it "fixes" them."""
    os.environ[FAIL_ENV] = seeds
    real = getattr(sweeps, "_unpatched_simulate", sweeps.simulate)

    def flaky(*args: Any, **kw: Any) -> Any:
        if str(kw["seed"]) in os.environ.get(FAIL_ENV, "").split(","):
            raise ValueError(f"injected failure of seed {kw['seed']}")
        return real(*args, **kw)

    sweeps._unpatched_simulate = real  # type: ignore[attr-defined]
    sweeps.simulate = flaky  # type: ignore[assignment]


@pytest.fixture
def failures(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(sweeps, "simulate", sweeps.simulate)  # restored afterwards
    monkeypatch.setenv(FAIL_ENV, "")
    yield install_failures
    with pytest.MonkeyPatch.context():
        if hasattr(sweeps, "_unpatched_simulate"):
            del sweeps._unpatched_simulate


def summary_without_seconds(path: Path) -> dict[str, dict[str, str]]:
    rows = csv_rows(path)
    out = {r["key"]: {k: v for k, v in r.items() if k != "seconds"} for r in rows}
    assert len(out) == len(rows), "a task has two rows in summary.csv"
    return out


def test_a_raising_task_fails_alone_and_rerun_completes_the_store(
        tmp_path: Path, failures: Any) -> None:
    """Tasks that raise are recorded as failed (type and message, no arrays), the others
    finish; a resume does not retry them; rerun() computes only them, and then every
    task is bit for bit the in-process run in which nothing failed."""
    tasks = tiny_tasks(6)
    ref = nf.sweep(tasks, threads=1)
    clean = tmp_path / "clean"
    nf.sweep(tasks, store=clean, threads=1)
    failures("2,4")
    bad = {tasks[2].key, tasks[4].key}
    store = tmp_path / "s"
    done = nf.sweep(tasks, store=nf.Store(store, batch_tasks=2), threads=1)
    assert set(done.failed) == bad and len(done.computed) == 6
    assert done.failed[tasks[2].key].error == "ValueError"
    assert "injected failure of seed 2" in done.failed[tasks[2].key].message
    with pytest.raises(ValueError, match="injected failure of seed 2.*rerun"):
        done[2]  # the task's exception type, when a built-in one
    assert isinstance(nf.TaskFailure("KilledWorker", "x").error_for("y"), RuntimeError)
    assert len(done.summary()) == 4
    st = nf.Store(store)
    assert set(st.failed()) == bad and set(st.missing()) == bad
    assert "injected failure of seed 4" in st.failed()[tasks[4].key]["message"]
    with pytest.raises(KeyError, match="failed"):
        st.load(tasks[4].key)
    assert set(summary_without_seconds(store / "summary.csv")) == {
        t.key for t in tasks} - bad
    again = nf.sweep(tasks, store=store, threads=1)  # resume: failed are not retried
    assert again.computed == () and set(again.failed) == bad
    still = again.rerun(threads=1)  # not fixed yet: fails again, alone
    assert set(still.computed) == bad and set(still.failed) == bad
    failures("")  # fixed
    fixed = still.rerun(threads=1)
    assert set(fixed.computed) == bad and fixed.failed == {}
    assert nf.Store(store).failed() == {} and nf.Store(store).missing() == []
    for a, b in zip(ref, fixed, strict=True):
        assert same_arrays(a.arrays, b.arrays)
    assert summary_without_seconds(store / "summary.csv") == summary_without_seconds(
        clean / "summary.csv")
    # the segments holding only superseded failures were removed
    live = set(index_of(store).values())
    assert {p.relative_to(store / "segments").as_posix()
            for p in (store / "segments").rglob("*.zip")} == live


def test_failures_in_memory_and_rerun_of_everything(failures: Any) -> None:
    tasks = tiny_tasks(3)
    ref = nf.sweep(tasks, threads=1)
    failures("1")
    done = nf.sweep(tasks, threads=1)
    assert list(done.failed) == [tasks[1].key]
    failures("")
    fixed = done.rerun()
    assert fixed.computed == (tasks[1].key,) and fixed.failed == {}
    for a, b in zip(ref, fixed, strict=True):
        assert same_arrays(a.arrays, b.arrays)
    assert len(done.rerun(failed_only=False).computed) == 3


def test_retries_is_checked() -> None:
    with pytest.raises(ValueError, match="retries"):
        nf.sweep(tiny_tasks(1), retries=-1)
    with pytest.raises(ValueError, match="retries"):
        nf.sweep(tiny_tasks(1), retries=1.5)


# --------------------------------------------------------------------------- integrity


def test_a_truncated_segment_is_found_on_resume_and_its_tasks_recomputed(
        tmp_path: Path) -> None:
    tasks = tiny_tasks(6)
    ref = nf.sweep(tasks, threads=1)
    nf.sweep(tasks, store=nf.Store(tmp_path, batch_tasks=2), threads=1)
    clean = summary_without_seconds(tmp_path / "summary.csv")
    seg = tmp_path / "segments" / "00000" / "00000002.zip"
    seg.write_bytes(seg.read_bytes()[:-50])
    with pytest.warns(RuntimeWarning, match="00000002.zip.*damaged.*2 tasks"):
        again = nf.sweep(tasks, store=tmp_path, threads=1)
    assert set(again.computed) == {tasks[2].key, tasks[3].key}
    assert seg.with_name("00000002.zip.damaged").exists()
    for a, b in zip(ref, again, strict=True):
        assert same_arrays(a.arrays, b.arrays)
    assert summary_without_seconds(tmp_path / "summary.csv") == clean


def test_a_corrupted_byte_is_named_on_read_and_verify_repairs(tmp_path: Path) -> None:
    """A flipped byte keeps the size (a resume's stat does not see it): reading the task
    names the segment and the repair; verify() (CRC-32 of every segment) sets it aside
    and the next sweep recomputes its tasks."""
    tasks = tiny_tasks(4)
    ref = nf.sweep(tasks, threads=1)
    nf.sweep(tasks, store=nf.Store(tmp_path, batch_tasks=2), threads=1)
    seg = tmp_path / "segments" / "00000" / "00000001.zip"
    data = bytearray(seg.read_bytes())
    data[200] ^= 0xFF  # inside the first task's first array
    seg.write_bytes(bytes(data))
    assert nf.sweep(tasks, store=tmp_path).computed == ()
    with pytest.raises(OSError, match="00000001.zip.*damaged.*verify"):
        nf.Store(tmp_path).load(tasks[0].key)
    with pytest.warns(RuntimeWarning, match="00000001.zip"):
        assert nf.Store(tmp_path).verify() == ["00000/00000001.zip"]
    assert nf.Store(tmp_path).verify() == []
    again = nf.sweep(tasks, store=tmp_path, threads=1)
    assert set(again.computed) == {tasks[0].key, tasks[1].key}
    for a, b in zip(ref, again, strict=True):
        assert same_arrays(a.arrays, b.arrays)


def test_older_version_2_stores_without_the_new_index_fields(tmp_path: Path) -> None:
    """Index lines with only segment and keys, and the summary.csv of the whole-table
    writer: read, verified, resumed; summary.csv rebuilt once with each task once."""
    tasks = tiny_tasks(5)
    ref = nf.sweep(tasks, threads=1)
    nf.sweep(tasks, store=nf.Store(tmp_path, batch_tasks=2), threads=1)
    clean = summary_without_seconds(tmp_path / "summary.csv")
    index = tmp_path / "index.jsonl"
    lines = [json.loads(x) for x in index.read_text().splitlines()]
    index.write_text("".join(json.dumps({"segment": e["segment"], "keys": e["keys"]}) + "\n"
                             for e in lines[:2]))  # the last commit: not indexed
    nf.Store(tmp_path).summary().to_csv(tmp_path / "summary.csv")  # the old writer's
    st = nf.Store(tmp_path)
    assert len(st.finished()) == 4 and st.failed() == {} and st.verify() == []
    again = nf.sweep(tasks, store=tmp_path, threads=1)
    assert again.computed == ()
    for a, b in zip(ref, again, strict=True):
        assert same_arrays(a.arrays, b.arrays)
    assert summary_without_seconds(tmp_path / "summary.csv") == clean
    assert "csv" in json.loads(index.read_text().splitlines()[-1])
