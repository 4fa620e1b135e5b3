"""A folder of finished sweep tasks, readable without ntkflow.

Layout (``Store.LAYOUT``)::

    STORE/manifest.json      the sweep: format, ntkflow version, ISA level, and the list of
                             tasks, each {"key": ..., "spec": Task.describe()}
    STORE/tasks/<key>.npz    one per finished task: plain arrays (np.load with
                             allow_pickle=False), see the README
    STORE/summary.csv        one row per finished task (rewritten when a sweep ends)
    STORE/.lock              held (flock) by the sweep writing to the store

Every file is written atomically: a temporary file in the same folder, flushed and
fsync'ed, renamed over the final name with ``os.replace`` and the folder fsync'ed, so a
task file either does not exist or is complete, whenever the process is killed.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
from numpy.typing import NDArray

from . import _core
from ._summary import flatten, rows_table, summary_row
from ._table import Table, _cell
from ._version import __version__

FORMAT = "ntkflow.store"
VERSION = 1
_TMP = ".tmp-"


class _Described(Protocol):
    """What the manifest needs of a task (a ``sweeps.Task``): its key and description."""

    @property
    def key(self) -> str: ...

    def describe(self) -> dict[str, Any]: ...


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` so that it is either absent/old or complete: temporary file in the
    same folder, flush + fsync, ``os.replace``, fsync of the folder."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{_TMP}", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


class _Lock:
    """An exclusive flock on STORE/.lock, released on close or when the process dies."""

    def __init__(self, path: Path) -> None:
        self._fh = open(path, "a+b")  # noqa: SIM115 - held until close()
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            return
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._fh.close()
            raise RuntimeError(f"another sweep is writing to the store {path.parent}; "
                               "wait for it or use another folder") from None

    def close(self) -> None:
        self._fh.close()


class Store:
    """A sweep's results on disk: one ``.npz`` per finished task and a manifest.

    ``Store(path)`` opens a folder (``sweep(store=path)`` creates it). Reading needs no
    ntkflow: ``np.load("STORE/tasks/<key>.npz", allow_pickle=False)`` and any CSV reader
    for ``summary.csv``.
    """

    LAYOUT = __doc__

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    @property
    def tasks_dir(self) -> Path:
        return self.path / "tasks"

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    def file(self, key: str) -> Path:
        """The file of a task (finished or not)."""
        return self.tasks_dir / f"{key}.npz"

    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest: format, version, ntkflow version, isa, tasks."""
        try:
            text = self.manifest_path.read_text()
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.path} is not an ntkflow store (no "
                                    "manifest.json); sweep(..., store=PATH) creates one"
                                    ) from None
        out: dict[str, Any] = json.loads(text)
        return out

    def keys(self) -> list[str]:
        """Keys of all the sweep's tasks, in the manifest's order."""
        return [t["key"] for t in self.manifest["tasks"]]

    def finished(self) -> list[str]:
        """Keys of the tasks whose file exists and loads."""
        return [k for k in self.keys() if self._loads(k)]

    def missing(self) -> list[str]:
        """Keys of the tasks still to compute."""
        done = set(self.finished())
        return [k for k in self.keys() if k not in done]

    def load(self, key: str | int) -> dict[str, NDArray[Any]]:
        """The arrays of a finished task (by key, or by index in the manifest)."""
        if isinstance(key, int):
            key = self.keys()[key]
        with open(self.file(key), "rb") as fh, np.load(fh, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def summary(self) -> Table:
        """One row per finished task: key, the spec's fields (``net.width``,
        ``train.rtol``, ...), ok/failed counts, label fractions, dominant label, score
        medians over ok trajectories, t_max, isa, seconds."""
        return rows_table([summary_row(self.load(k)) for k in self.finished()])

    def write_summary(self) -> Path:
        """(Re)write ``summary.csv`` atomically; returns its path."""
        table = self.summary()

        def write(fh: IO[bytes]) -> None:
            text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
            w = csv.writer(text)
            w.writerow(table.names)
            for i in range(len(table)):
                w.writerow([_cell(v[i]) for v in table.columns.values()])
            text.flush()
            text.detach()

        path = self.path / "summary.csv"
        atomic_write(path, write)
        return path

    # ---------------------------------------------------------------- used by sweep()

    def _loads(self, key: str) -> bool:
        path = self.file(key)
        if not path.exists():
            return False
        try:  # our own handle: np.load leaks its own when the zip is truncated
            with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
                for name in z.files:  # reading every member checks its CRC
                    z[name]
                return str(z["key"]) == key
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return False

    def _write(self, key: str, arrays: dict[str, NDArray[Any]]) -> None:
        atomic_write(self.file(key), lambda fh: np.savez(fh, **arrays))  # type: ignore[arg-type]

    def _finished_keys(self, keys: Iterable[str]) -> set[str]:
        done = set()
        for k in keys:
            if self._loads(k):
                done.add(k)
            else:  # a file that exists but does not load is not finished
                with contextlib.suppress(FileNotFoundError):
                    self.file(k).unlink()
        return done

    def _begin(self, tasks: Sequence[_Described]) -> _Lock:
        """Create or check the store for these tasks; returns the held lock."""
        self.tasks_dir.mkdir(parents=True, exist_ok=True)
        lock = _Lock(self.path / ".lock")
        try:
            for folder in (self.path, self.tasks_dir):  # leftovers of a killed writer
                for p in folder.iterdir():
                    if p.name.startswith(".") and _TMP in p.name:
                        p.unlink()
            entries = [{"key": t.key, "spec": t.describe()} for t in tasks]
            if self.manifest_path.exists():
                self._check(self.manifest, entries)
            else:
                manifest = {"format": FORMAT, "version": VERSION, "ntkflow": __version__,
                            "isa": str(_core.ISA), "tasks": entries}
                text = json.dumps(manifest, indent=1, allow_nan=False) + "\n"
                atomic_write(self.manifest_path, lambda fh: None if fh.write(text.encode())
                             else None)
        except BaseException:
            lock.close()
            raise
        return lock

    def _check(self, manifest: dict[str, Any], entries: list[dict[str, Any]]) -> None:
        where = f"the store {self.path}"
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise ValueError(f"{where} is not an ntkflow store of version {VERSION} "
                             f"(manifest says {manifest.get('format')!r} version "
                             f"{manifest.get('version')!r})")
        isa = str(_core.ISA)
        if manifest.get("isa") != isa:
            raise ValueError(
                f"{where} was computed with ntkflow's {manifest.get('isa')} core, this "
                f"process runs {isa}: resuming would mix results that differ in the last "
                f"bits; set NTKFLOW_ISA={manifest.get('isa')} or use a new store folder")
        old = manifest["tasks"]
        if {t["key"] for t in old} == {t["key"] for t in entries}:
            return
        raise ValueError(f"{where} holds a sweep of other specs; refusing to mix their "
                         f"results:\n  " + "\n  ".join(_differences(old, entries)) +
                         "\nuse a new store folder, or delete this one to start over")


def _differences(old: list[dict[str, Any]], new: list[dict[str, Any]],
                 limit: int = 6) -> list[str]:
    """What differs between two task lists, in words, at most ``limit`` lines."""
    lines = []
    if len(old) != len(new):
        lines.append(f"the store has {len(old)} tasks, this sweep {len(new)}")
    old_keys = {t["key"] for t in old}
    new_keys = {t["key"] for t in new}
    for i, (a, b) in enumerate(zip(old, new, strict=False)):
        if a["key"] == b["key"] or (a["key"] in new_keys and b["key"] in old_keys):
            continue
        fa, fb = flatten(a["spec"]), flatten(b["spec"])
        diffs = [f"{k} is {fa.get(k, '(absent)')!r} in the store, {fb.get(k, '(absent)')!r} "
                 "now" for k in dict.fromkeys([*fa, *fb]) if fa.get(k) != fb.get(k)]
        lines.append(f"task {i}: " + "; ".join(diffs))
    for i, t in enumerate(new[len(old):], start=len(old)):
        if t["key"] not in old_keys:
            lines.append(f"task {i} ({t['key']}) is not in the store")
    for i, t in enumerate(old[len(new):], start=len(new)):
        if t["key"] not in new_keys:
            lines.append(f"store task {i} ({t['key']}) is not in this sweep")
    if len(lines) > limit:
        lines = [*lines[:limit], f"... and {len(lines) - limit} more"]
    return lines
