"""A folder of finished sweep tasks, readable without ntkflow.

Layout (``Store.LAYOUT``), version 2::

    STORE/manifest.json     format, version 2, ntkflow version, ISA level, the number of
                            tasks and the SHA-256 of their sorted keys (one line each)
    STORE/tasks.jsonl       the sweep's tasks in order, one JSON object a line:
                            {"key": ..., "spec": Task.describe()}
    STORE/segments/<shard>/<seq>.zip
                            a batch of finished tasks committed together: an uncompressed
                            zip holding one <key>.npz per task (the bytes np.savez wrote,
                            plain arrays, np.load(..., allow_pickle=False)) and
                            summary.json (their summary rows, in member order), and
                            failures.json when tasks of the batch raised: a list of
                            {"key", "error", "message", "traceback"} (no arrays for them).
                            <seq> is 8 digits counting commits from 1, <shard> = seq //
                            1000 (5 digits)
    STORE/index.jsonl       one line per committed segment, in commit order:
                            {"segment": "<shard>/<seq>.zip", "keys": [...], "failed":
                            [...], "bytes": <size>, "crc32": <of the file>, "csv": <size
                            of summary.csv after its rows>}; a key in a later line
                            supersedes the same key in an earlier one. "failed" (keys of
                            tasks that raised), "bytes", "crc32" and "csv" may be absent
                            (stores written before them)
    STORE/summary.csv       one row per finished task, appended as segments are committed
                            (commit order); its columns are fixed when the store is made
    STORE/.lock             held (flock) by the sweep writing to the store

Why this layout. Version 1 wrote one file per task with two fsyncs and a folder fsync each
(13.5 ms a task) and, to resume, opened and CRC-checked every task file (7 ms a task); its
manifest listed every spec in one JSON. Here a commit is one segment of many tasks: one
atomic file (temporary name, fsync, rename, fsync of the folder) and one appended,
fsync'ed index line, so the fsync cost is shared by every task of the batch, and a task is
complete or absent after any kill because a segment is either renamed into place whole or
not at all. Resume reads the index (one file) and looks only at segments numbered after its
last line -- the ones a killed writer renamed but did not index -- so it costs O(changed)
file checks, not O(tasks); and a stat of every indexed segment against the size its line
records (O(segments)): a damaged segment is set aside (``<seq>.zip.damaged``, with a
warning) and its tasks computed again. Reading a member checks its CRC (a damaged segment
is named, with the repair: ``Store.verify()``, the CRC-32 of every segment). summary.csv is
appended per commit, before the index line that records its new size: a resume cuts it
back to that size and appends the rows of the segments it indexes, so every finished
task has one row whatever the kills. A sweep that computed tasks again (resume=False,
``Sweep.rerun``) removes the segments nothing refers to any more when it ends. Folders hold at most 1000 segments whatever the sweep's size,
and a segment holds up to ``batch_tasks`` tasks, so 10^6 tasks are ~10^3-10^5 files.

Zip of .npz rather than Parquet: the arrays of a task have shapes that differ by task
(trajectories, record times) and by what it computed, so they do not fit a table without
nesting; a zip of the very bytes version 1 wrote keeps every array bit for bit, needs only
NumPy (a dependency anyway; pyarrow is optional), and migrating a version-1 store is a
byte copy. Reading without ntkflow::

    import io, json, zipfile, numpy as np
    for line in open("STORE/index.jsonl"):
        seg = json.loads(line)      # seg.get("failed", []): keys that raised, no .npz
        with zipfile.ZipFile("STORE/segments/" + seg["segment"]) as z:
            for key in seg["keys"]:
                arrays = np.load(io.BytesIO(z.read(key + ".npz")), allow_pickle=False)

``Store(path).migrate()`` converts a version-1 store in place (every task file copied byte
for byte); a sweep on a version-1 store is refused with that advice.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import shutil
import struct
import tempfile
import threading
import time
import warnings
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
from numpy.typing import NDArray

from . import _core
from ._summary import csv_header, flatten, rows_table, summary_row
from ._table import Table, _cell
from ._validate import integer, real
from ._version import __version__

FORMAT = "ntkflow.store"
VERSION = 2
_TMP = ".tmp-"
_SHARD = 1000  # segments per folder
_ROWS = "summary.json"
_FAILURES = "failures.json"
_CSV = "summary.csv"
_DAMAGED = ".damaged"
_OPEN_SEGMENTS = 4  # zip handles kept open for reading (tasks are read in runs of a segment)


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


def _remove_leftovers(folder: Path) -> None:
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.startswith(".") and _TMP in p.name:
                p.unlink()


def _keys_digest(keys: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()


def _npy_bytes(a: NDArray[Any]) -> bytes:
    """What ``np.save`` writes for ``a`` (format 1.0), without its per-call overhead."""
    if not a.flags.c_contiguous:  # (np.ascontiguousarray would make a 0-d array 1-d)
        a = a.copy(order="C")
    if a.dtype.hasobject:
        raise ValueError("a store holds plain arrays only, not objects")
    d = np.lib.format.header_data_from_array_1_0(a)
    header = "{" + "".join(f"'{k}': {v!r}, " for k, v in sorted(d.items())) + "}"
    if a.ndim:  # np.save's spare room for growing the first axis in place
        header += " " * (21 - len(repr(a.shape[0])))
    text = header.encode("latin1")
    pad = 64 - (10 + len(text) + 1) % 64
    return (b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text) + pad + 1) + text +
            b" " * pad + b"\n" + a.tobytes())


def _zip_stored(members: Iterable[tuple[str, bytes]]) -> bytes:
    """An uncompressed zip of these members, as ``zipfile`` would write it, but in one
    pass with a fixed date (1980-01-01): the same arrays give the same bytes. Only for
    members and totals under 2 GiB (``_zip_bytes`` checks)."""
    out: list[bytes] = []
    central: list[bytes] = []
    offset = 0
    n = 0
    for name, data in members:
        fname = name.encode("utf-8")
        crc = zlib.crc32(data)
        local = struct.pack("<4s2B4HL2L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, 33, crc,
                            len(data), len(data), len(fname), 0)
        central.append(struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 20, 3, 20, 0, 0, 0,
                                   0, 33, crc, len(data), len(data), len(fname), 0, 0, 0,
                                   0, 0o600 << 16, offset) + fname)
        out += [local, fname, data]
        offset += len(local) + len(fname) + len(data)
        n += 1
    cd = b"".join(central)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, n, n, len(cd), offset, 0)
    return b"".join(out) + cd + end


def _zip_bytes(members: list[tuple[str, bytes]]) -> bytes:
    if len(members) < 0xFFFF and sum(len(b) for _, b in members) < 1 << 31:
        return _zip_stored(members)
    buf = io.BytesIO()  # zip64 territory: zipfile's general writer
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        for name, data in members:
            z.writestr(name, data)
    return buf.getvalue()


def _npz_bytes(arrays: dict[str, Any]) -> bytes:
    """The task's .npz: what ``np.savez`` writes (one ``<name>.npy`` member per array,
    each byte for byte as ``np.save`` writes it), four times faster, which is most of a
    tiny task's store cost."""
    return _zip_bytes([(f"{k}.npy", _npy_bytes(np.asanyarray(v)))
                       for k, v in arrays.items()])


def _segment_name(seq: int) -> str:
    return f"{seq // _SHARD:05d}/{seq:08d}.zip"


def _seq(name: str) -> int:
    return int(name.rsplit("/", 1)[-1].split(".", 1)[0])


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
    """A sweep's results on disk: batches of finished tasks (segments), an index of them
    and a manifest (see ``Store.LAYOUT``).

    ``Store(path)`` opens a folder (``sweep(store=path)`` creates it). Reading needs no
    ntkflow: NumPy, ``zipfile`` and ``json`` (the module docstring shows how), and any
    CSV reader for ``summary.csv``.

    Parameters
    ----------
    path : str or Path
    batch_tasks : int
        A commit holds at most this many finished tasks (default 1024).
    batch_seconds : float
        ... and is made at the latest this long after its first task finished (default
        1 s): what a kill can lose of finished work.
    batch_bytes : int
        ... or when its tasks' files reach this size (default 64 MiB): the writer's memory.
    """

    LAYOUT = __doc__

    def __init__(self, path: str | Path, *, batch_tasks: int = 1024,
                 batch_seconds: float = 1.0, batch_bytes: int = 64 << 20) -> None:
        self.path = Path(path)
        self.batch_tasks = integer(batch_tasks, "batch_tasks", minimum=1)
        self.batch_seconds = real(batch_seconds, "batch_seconds", low=0.0)
        self.batch_bytes = integer(batch_bytes, "batch_bytes", minimum=1)
        self._cached: _IndexState | None = None  # the index, read once
        self._csv_columns: list[str] | None = None  # set by _begin: commits append rows
        self._superseded = False  # a commit replaced an earlier one's task
        self._csv_end: int | None = None  # summary.csv's size after the last commit
        self._open: OrderedDict[str, zipfile.ZipFile] = OrderedDict()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    def __del__(self) -> None:
        self._close_segments()

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    @property
    def index_path(self) -> Path:
        return self.path / "index.jsonl"

    @property
    def segments_dir(self) -> Path:
        return self.path / "segments"

    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest: format, version, ntkflow version, isa, tasks (their number; the
        list of a version-1 store), keys_sha256."""
        try:
            text = self.manifest_path.read_text()
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.path} is not an ntkflow store (no "
                                    "manifest.json); sweep(..., store=PATH) creates one"
                                    ) from None
        out: dict[str, Any] = json.loads(text)
        return out

    @property
    def version(self) -> int:
        return int(self.manifest.get("version", 0))

    def keys(self) -> list[str]:
        """Keys of all the sweep's tasks, in the sweep's order."""
        if self._v1():
            return [t["key"] for t in self.manifest["tasks"]]
        with open(self.path / "tasks.jsonl", encoding="utf-8") as fh:
            return [json.loads(line)["key"] for line in fh if line.strip()]

    def specs(self) -> Iterator[dict[str, Any]]:
        """``{"key": ..., "spec": ...}`` of every task, in the sweep's order."""
        if self._v1():
            yield from self.manifest["tasks"]
            return
        with open(self.path / "tasks.jsonl", encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)

    def finished(self) -> list[str]:
        """Keys of the finished tasks, in the sweep's order."""
        if self._v1():
            return [k for k in self.keys() if self._v1_loads(k)]
        where = self._index()
        return [k for k in self.keys() if k in where]

    def missing(self) -> list[str]:
        """Keys of the tasks without arrays: never run, or failed (see ``failed``)."""
        done = set(self.finished())
        return [k for k in self.keys() if k not in done]

    def failed(self) -> dict[str, dict[str, str]]:
        """Tasks whose last run raised and that have not finished since, in the sweep's
        order: key -> {"error": exception type, "message": ..., "traceback": ...}.
        ``Sweep.rerun()`` computes them again."""
        if self._v1():
            return {}
        state = self._state()
        info: dict[str, dict[str, str]] = {}
        for seg in dict.fromkeys(state.failed.values()):
            for f in json.loads(self._read_member(seg, _FAILURES)):
                if state.failed.get(f["key"]) == seg:
                    info[f["key"]] = {k: f[k] for k in ("error", "message", "traceback")}
        return {k: info[k] for k in self.keys() if k in info}

    def verify(self) -> list[str]:
        """Check every indexed segment against the size and CRC-32 its index line records
        (reads every byte: O(store); a resume checks sizes only). Damaged segments are
        renamed ``<seq>.zip.damaged`` and dropped from the index, so the next sweep
        recomputes their tasks; returns their names (empty: all intact). Segments of
        stores written before the index recorded CRCs are checked member by member."""
        if self._v1():
            return []
        lock = _Lock(self.path / ".lock")
        try:
            state = self._read_index()
            bad = [e for e in state.entries if not self._intact(e, crc=True)]
            if bad:
                self._drop(state, bad)
            return [e["segment"] for e in bad]
        finally:
            lock.close()

    def load(self, key: str | int) -> dict[str, NDArray[Any]]:
        """The arrays of a finished task (by key, or by index in the sweep's order)."""
        if isinstance(key, int):
            key = self.keys()[key]
        if self._v1():
            with open(self._v1_file(key), "rb") as fh, \
                    np.load(fh, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        where = self._index()
        if key not in where:
            failed = self._state().failed.get(key)
            raise KeyError(f"task {key} is not finished in the store {self.path}" + (
                " (it failed: Store.failed() says why, Sweep.rerun() computes it again)"
                if failed else ""))
        data = self._read_member(where[key], f"{key}.npz")
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def _read_member(self, segment: str, member: str) -> bytes:
        """A member of a segment; a damaged segment (zipfile checks the member's CRC)
        is named, with how to repair the store."""
        try:
            return self._segment(segment).read(member)
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            self._open.pop(segment, None)
            raise OSError(
                f"segment {self.segments_dir / segment} of the store is damaged ({exc}): "
                f"ntkflow.Store({str(self.path)!r}).verify() drops damaged segments "
                "from the index, and the next sweep recomputes their tasks") from exc

    def summary(self) -> Table:
        """One row per finished task: key, the spec's fields (``net.width``,
        ``train.rtol``, ...), ok/failed counts, label fractions, dominant label, score
        medians over ok trajectories, t_max, isa, seconds."""
        if self._v1():
            return rows_table([summary_row(self.load(k)) for k in self.finished()])
        where = self._index()
        rows: dict[str, dict[str, Any]] = {}
        for seg in dict.fromkeys(where.values()):  # rows are kept beside the arrays
            for row in json.loads(self._read_member(seg, _ROWS)):
                if where.get(row["key"]) == seg:
                    rows[row["key"]] = row
        return rows_table([rows[k] for k in self.keys() if k in rows])

    def write_summary(self, path: str | Path | None = None) -> Path:
        """Write every finished task's summary row as CSV, with ``summary.csv``'s
        columns; returns the path. Default: ``summary.csv`` itself, rebuilt (sweeps keep it
        up to date, appending rows as they commit); another path gets the rows in the
        sweep's order."""
        if path is None:
            lock = _Lock(self.path / ".lock")
            try:
                self._rebuild_csv(self._read_index())
            finally:
                lock.close()
            return self.path / _CSV
        state = self._read_index()
        out = Path(path)
        out.write_bytes(_csv_bytes(self._header(), self._live_rows(state, ordered=True),
                                   head=True))
        return out

    def migrate(self) -> None:
        """Convert a version-1 store (one ``tasks/<key>.npz`` per task) to this layout, in
        place: every task file that loads is copied byte for byte into segments (its
        arrays stay bit for bit the same), then the manifest is replaced and ``tasks/``
        removed. Killed part-way, the store is still version 1 and ``migrate`` can be
        called again."""
        man = self.manifest
        if man.get("version") == VERSION:
            return
        if man.get("format") != FORMAT or man.get("version") != 1:
            raise ValueError(f"{self.path}: cannot migrate {man.get('format')!r} version "
                             f"{man.get('version')!r}; only version 1 of {FORMAT!r}")
        lock = _Lock(self.path / ".lock")
        try:
            for p in (self.index_path, self.path / "tasks.jsonl"):  # an earlier attempt's
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
            shutil.rmtree(self.segments_dir, ignore_errors=True)
            _remove_leftovers(self.path)
            tasks = man["tasks"]
            self._write_task_list(tasks)
            writer = _Writer(self, next_seq=1)
            for t in tasks:
                if self._v1_loads(t["key"]):
                    data = self._v1_file(t["key"]).read_bytes()
                    with np.load(io.BytesIO(data), allow_pickle=False) as z:
                        row = summary_row({k: z[k] for k in z.files})
                    writer.add_bytes(t["key"], data, row)
            writer.close()
            new = {"format": FORMAT, "version": VERSION, "ntkflow": __version__,
                   "isa": man["isa"], "tasks": len(tasks),
                   "keys_sha256": _keys_digest(t["key"] for t in tasks),
                   "migrated_from": {"version": 1, "ntkflow": man.get("ntkflow")}}
            self._write_manifest(new)  # the commit point of the migration
            shutil.rmtree(self.path / "tasks", ignore_errors=True)
        finally:
            lock.close()
        self._cached = None

    # ---------------------------------------------------------------- reading helpers

    def _v1(self) -> bool:
        return self.manifest.get("version") == 1

    def _v1_file(self, key: str) -> Path:
        return self.path / "tasks" / f"{key}.npz"

    def _v1_loads(self, key: str) -> bool:
        path = self._v1_file(key)
        if not path.exists():
            return False
        try:  # our own handle: np.load leaks its own when the zip is truncated
            with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
                for name in z.files:  # reading every member checks its CRC
                    z[name]
                return str(z["key"]) == key
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return False

    def _segment(self, name: str) -> zipfile.ZipFile:
        z = self._open.get(name)
        if z is None:
            z = zipfile.ZipFile(self.segments_dir / name)
            self._open[name] = z
            while len(self._open) > _OPEN_SEGMENTS:
                self._open.popitem(last=False)[1].close()
        else:
            self._open.move_to_end(name)
        return z

    def _close_segments(self) -> None:
        for z in getattr(self, "_open", {}).values():
            z.close()
        self._open = OrderedDict()

    def _index(self) -> dict[str, str]:
        """key -> segment of every finished task, from the index (read-only: segments a
        killed writer did not index are picked up by the next sweep)."""
        return self._state().where

    def _state(self) -> _IndexState:
        if self._cached is None:
            self._cached = self._read_index()
        return self._cached

    def _read_index(self) -> _IndexState:
        """The index's lines; ``damaged``: the file needs repair (a line cut by a kill,
        or garbage)."""
        state = _IndexState()
        try:
            fh = open(self.index_path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            return state
        with fh:
            for raw in fh:
                try:
                    if not raw.endswith(b"\n"):
                        raise ValueError("cut")
                    entry = json.loads(raw)
                    if not isinstance(entry["segment"], str) or not isinstance(
                            entry["keys"], list):
                        raise TypeError("not an index line")
                except (ValueError, KeyError, TypeError):
                    state.damaged = True
                    continue
                state.add(entry)
        return state

    def _intact(self, entry: dict[str, Any], crc: bool = False) -> bool:
        """Whether a segment has the size (and with ``crc`` the CRC-32) its index line
        records; lines without them (older stores) are checked by stat, or by every
        member's CRC."""
        path = self.segments_dir / entry["segment"]
        try:
            size = path.stat().st_size
        except OSError:
            return False
        if "bytes" in entry and size != entry["bytes"]:
            return False
        if not crc:
            return True
        if "crc32" in entry:
            value = 0
            with open(path, "rb") as fh:
                while block := fh.read(1 << 22):
                    value = zlib.crc32(block, value)
            return bool(value == entry["crc32"])
        return self._verified(entry["segment"]) is not None

    def _drop(self, state: _IndexState, bad: list[dict[str, Any]]) -> None:
        """Set damaged segments aside (renamed ``.damaged``) and out of the index, with a
        warning naming them: their tasks are no longer done, and summary.csv is rebuilt
        without them."""
        names = {e["segment"] for e in bad}
        for e in bad:
            n = len(e["keys"]) + len(e.get("failed", ()))
            warnings.warn(f"segment {self.segments_dir / e['segment']} of the store is "
                          f"damaged (its size or CRC-32 is not what the index recorded); "
                          f"its {n} tasks will be computed again", RuntimeWarning,
                          stacklevel=3)
        kept = _IndexState()
        for e in state.entries:
            if e["segment"] not in names:
                kept.add({k: v for k, v in e.items() if k != "csv"})
        _write_index(self.index_path, kept.entries)  # summary.csv: not trusted from here
        for name in names:
            with contextlib.suppress(OSError):
                path = self.segments_dir / name
                os.replace(path, path.with_name(path.name + _DAMAGED))
        self._rebuild_csv(kept)

    def _live_rows(self, state: _IndexState, ordered: bool) -> list[dict[str, Any]]:
        """Summary rows of the finished tasks (not those superseded): commit order, or
        with ``ordered`` the sweep's."""
        rows: dict[str, dict[str, Any]] = {}
        for seg in dict.fromkeys(state.where.values()):
            for row in json.loads(self._read_member(seg, _ROWS)):
                if state.where.get(row["key"]) == seg:
                    rows[row["key"]] = row
        if not ordered:
            return list(rows.values())
        return [rows[k] for k in self.keys() if k in rows]

    def _header(self) -> list[str]:
        if self._csv_columns is None:
            self._csv_columns = csv_header(e["spec"] for e in self.specs())
        return self._csv_columns

    def _rebuild_csv(self, state: _IndexState) -> None:
        """Write summary.csv in full (O(tasks): after a repair, a superseding sweep, or on
        a store written before rows were appended), then record its size in the index's
        last line: appends continue from there."""
        data = _csv_bytes(self._header(), self._live_rows(state, ordered=True), head=True)
        atomic_write(self.path / _CSV, lambda fh: None if fh.write(data) else None)
        if state.entries:
            state.entries[-1]["csv"] = len(data)
            _write_index(self.index_path, state.entries)
        self._cached = None

    # ---------------------------------------------------------------- used by sweep()

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        text = json.dumps(manifest, indent=1, allow_nan=False) + "\n"
        atomic_write(self.manifest_path, lambda fh: None if fh.write(text.encode())
                     else None)

    def _write_task_list(self, entries: Iterable[dict[str, Any]]) -> None:
        def write(fh: IO[bytes]) -> None:
            for e in entries:
                fh.write(json.dumps({"key": e["key"], "spec": e["spec"]}, allow_nan=False,
                                    separators=(",", ":")).encode() + b"\n")
        atomic_write(self.path / "tasks.jsonl", write)

    def _begin(self, tasks: Sequence[_Described]) -> tuple[_Lock, _Writer]:
        """Create or check the store for these tasks, recover what a killed writer left;
        returns the held lock and a writer for new commits."""
        self.path.mkdir(parents=True, exist_ok=True)
        lock = _Lock(self.path / ".lock")
        try:
            _remove_leftovers(self.path)
            keys = [t.key for t in tasks]
            digest = _keys_digest(keys)
            if self.manifest_path.exists():
                self._check(self.manifest, digest, tasks)
            else:
                specs = [t.describe() for t in tasks]
                self._write_task_list({"key": k, "spec": d} for k, d in zip(keys, specs))
                self._csv_columns = csv_header(specs)
                with contextlib.suppress(FileNotFoundError):  # not this sweep's rows
                    (self.path / _CSV).unlink()
                self._write_manifest({"format": FORMAT, "version": VERSION,
                                      "ntkflow": __version__, "isa": str(_core.ISA),
                                      "tasks": len(keys), "keys_sha256": digest})
            shutil.rmtree(self.path / "tasks", ignore_errors=True)  # a migration's rest
            writer = _Writer(self, next_seq=self._recover())
        except BaseException:
            lock.close()
            raise
        return lock, writer

    def _recover(self) -> int:
        """Index the segments a killed writer renamed into place but did not index, drop
        a cut index line, set damaged segments aside (by size: a stat per segment),
        bring summary.csv to what the index holds, remove temporary files; returns the
        next segment number. Only segments numbered after the index's are looked at:
        commits are sequential under the lock, so that is where a kill leaves them."""
        state = self._read_index()
        bad = [e for e in state.entries if not self._intact(e)]
        if bad:
            self._drop(state, bad)
            state = self._read_index()
        seqs = [_seq(e["segment"]) for e in state.entries]
        last = max(seqs, default=0)
        known = set(seqs)
        # a damaged line can hide a segment anywhere: look at the gaps too
        gaps = [s for s in range(1, last) if s not in known] if state.damaged else []
        found: list[dict[str, Any]] = []
        for s in gaps:
            entry = self._verified(_segment_name(s))
            if entry is not None:
                found.append(entry)
        seq = last + 1
        while (self.segments_dir / _segment_name(seq)).exists():
            name = _segment_name(seq)
            entry = self._verified(name)
            if entry is None:  # cannot be: renamed only once complete; but never trust it
                (self.segments_dir / name).unlink()
                break
            found.append(entry)
            seq += 1
        for s in {last + 1, seq}:  # where a killed commit left its temporary file
            _remove_leftovers(self.segments_dir / _segment_name(s).split("/")[0])
        if not state.damaged:
            self._remove_orphans(known, last)
        csv_ok = self._csv_consistent(state)
        if state.damaged or found or not csv_ok:
            replaced = any(k in state.where or k in state.failed
                           for e in found for k in (*e["keys"], *e.get("failed", ())))
            append = csv_ok and not replaced  # summary.csv holds the indexed rows
            entries = [e if append else {k: v for k, v in e.items() if k != "csv"}
                       for e in state.entries]
            entries += found
            entries.sort(key=lambda e: _seq(e["segment"]))
            if append:
                for e in found:
                    e["csv"] = self._append_csv(
                        json.loads(self._read_member(e["segment"], _ROWS)), None)
                if entries:  # the last line's size is the one that counts
                    entries[-1]["csv"] = (self.path / _CSV).stat().st_size
            _write_index(self.index_path, entries)
            state = self._read_index()
            if not append:
                self._rebuild_csv(state)
                state = self._read_index()
        self._cached = state
        self._csv_end = (self.path / _CSV).stat().st_size
        return seq

    def _remove_orphans(self, indexed: set[int], last: int) -> None:
        """Remove segments numbered below the index's last that it does not list: those
        ``_end`` had dropped from the index when a kill stopped it deleting them (an
        intact index lists every other segment below its last). O(segments) names."""
        if not self.segments_dir.is_dir():
            return
        for shard in self.segments_dir.iterdir():
            if not shard.is_dir():
                continue
            for p in shard.glob("*.zip"):
                with contextlib.suppress(ValueError):
                    if _seq(p.name) < last and _seq(p.name) not in indexed:
                        p.unlink()

    def _csv_consistent(self, state: _IndexState) -> bool:
        """Whether summary.csv starts with its header and holds at least what the index's
        last line says it held after that commit (then it is cut back to that size);
        else it is rebuilt."""
        path = self.path / _CSV
        try:
            with open(path, "rb") as fh:
                head = fh.readline()
                size = os.fstat(fh.fileno()).st_size
        except OSError:
            return False
        if not head.endswith(b"\n"):
            return False
        end = state.entries[-1].get("csv") if state.entries else len(head)
        if not isinstance(end, int) or size < end:
            return False
        self._csv_columns = next(csv.reader([head.decode("utf-8")]))
        if size > end:  # rows of a commit the kill did not index, or a cut row
            with open(path, "r+b") as fh:
                fh.truncate(end)
        return True

    def _append_csv(self, rows: list[dict[str, Any]], end: int | None) -> int:
        """Append summary rows to summary.csv (fsync'ed before the index line that
        records its new size); returns that size."""
        data = _csv_bytes(self._header(), rows, head=False)
        with open(self.path / _CSV, "ab") as fh:
            if end is not None and fh.tell() != end:
                fh.truncate(end)
                fh.seek(end)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
            return fh.tell()

    def _verified(self, name: str) -> dict[str, Any] | None:
        """The index line of a segment whose every member passes its CRC, else None."""
        path = self.segments_dir / name
        if not path.exists():
            return None
        try:
            with zipfile.ZipFile(path) as z:
                if z.testzip() is not None:
                    return None
                names = z.namelist()
                failed = ([f["key"] for f in json.loads(z.read(_FAILURES))]
                          if _FAILURES in names else [])
            data = path.read_bytes()
        except (OSError, zipfile.BadZipFile, EOFError, ValueError, KeyError, TypeError):
            return None
        entry: dict[str, Any] = {"segment": name,
                                 "keys": [n[:-4] for n in names if n.endswith(".npz")]}
        if failed:
            entry["failed"] = failed
        entry.update(bytes=len(data), crc32=zlib.crc32(data))
        return entry

    def _commit(self, seq: int, items: list[tuple[str, bytes, dict[str, Any]]],
                failures: list[dict[str, str]]) -> None:
        name = _segment_name(seq)
        path = self.segments_dir / name
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True)
            _fsync_dir(path.parent.parent)
            _fsync_dir(self.path)
        members = [*((f"{key}.npz", b) for key, b, _ in items),
                   (_ROWS, json.dumps([r for _, _, r in items]).encode())]
        if failures:
            members.append((_FAILURES, json.dumps(failures).encode()))
        data = _zip_bytes(members)
        atomic_write(path, lambda fh: None if fh.write(data) else None)
        # The segment is committed now. Its summary rows go to summary.csv, then the
        # index line (with the csv's new size) saves the next resume a look.
        entry: dict[str, Any] = {"segment": name, "keys": [k for k, _, _ in items]}
        if failures:
            entry["failed"] = [f["key"] for f in failures]
        entry.update(bytes=len(data), crc32=zlib.crc32(data))
        if self._csv_columns is not None and self._csv_end is not None:
            self._csv_end = entry["csv"] = self._append_csv([r for _, _, r in items],
                                                            self._csv_end)
        with open(self.index_path, "ab") as fh:
            fh.write(_index_line(entry))
            fh.flush()
            os.fsync(fh.fileno())
        state = self._cached
        if state is not None:
            self._superseded |= any(k in state.where or k in state.failed
                                    for k in (*entry["keys"], *entry.get("failed", ())))
            state.add(entry)

    def _done_keys(self, keys: Iterable[str]) -> set[str]:
        """Tasks a resume skips: finished, or failed (``Sweep.rerun`` retries those)."""
        state = self._state()
        return {k for k in keys if k in state.where or k in state.failed}

    def _end(self) -> None:
        """After a sweep's last commit: if it replaced tasks of earlier commits
        (resume=False, a rerun), remove the segments nothing refers to any more (the
        index first, then the files: a kill in between leaves an unindexed file below
        the last, which no resume reads) and rebuild summary.csv without the replaced
        rows."""
        if not self._superseded:
            return
        self._superseded = False
        state = self._read_index()
        live = set(state.where.values()) | set(state.failed.values())
        dead = [e["segment"] for e in state.entries if e["segment"] not in live]
        kept = _IndexState()
        for e in state.entries:
            if e["segment"] in live:
                kept.add({k: v for k, v in e.items() if k != "csv"})
        _write_index(self.index_path, kept.entries)
        for name in dead:
            with contextlib.suppress(FileNotFoundError):
                (self.segments_dir / name).unlink()
        self._close_segments()
        self._rebuild_csv(kept)

    def _check(self, manifest: dict[str, Any], digest: str,
               tasks: Sequence[_Described]) -> None:
        where = f"the store {self.path}"
        if manifest.get("format") == FORMAT and manifest.get("version") == 1:
            raise ValueError(
                f"{where} has the version-1 layout (one file per task); this ntkflow "
                f"writes version {VERSION}. Convert it in place, losslessly (each task "
                f"file is copied byte for byte): ntkflow.Store({str(self.path)!r})"
                ".migrate(); or use a new store folder")
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
        if manifest.get("keys_sha256") == digest:
            return
        old = list(self.specs())
        entries = [{"key": t.key, "spec": t.describe()} for t in tasks]
        raise ValueError(f"{where} holds a sweep of other specs; refusing to mix their "
                         f"results:\n  " + "\n  ".join(_differences(old, entries)) +
                         "\nuse a new store folder, or delete this one to start over")


def _index_line(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, separators=(",", ":")).encode() + b"\n"


def _write_index(path: Path, entries: Iterable[dict[str, Any]]) -> None:
    def write(fh: IO[bytes]) -> None:
        for e in entries:
            fh.write(_index_line(e))
    atomic_write(path, write)


def _csv_bytes(header: list[str], rows: Iterable[dict[str, Any]], head: bool) -> bytes:
    """CSV lines of summary rows under ``header`` (absent cells empty, floats at full
    precision, NaN empty), with the header line first if ``head``."""
    buf = io.StringIO()
    w = csv.writer(buf)
    if head:
        w.writerow(header)
    w.writerows(["" if (v := r.get(n)) is None else _cell(v) for n in header]
                for r in rows)
    return buf.getvalue().encode("utf-8")


class _IndexState:
    """The index read into memory: its lines, and which segment holds each task."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self.where: dict[str, str] = {}  # key -> segment of its arrays (finished)
        self.failed: dict[str, str] = {}  # key -> segment recording it failed, if not
        self.damaged = False               # finished since

    def add(self, entry: dict[str, Any]) -> None:
        self.entries.append(entry)
        seg = entry["segment"]
        failed = self.failed
        for k in entry["keys"]:
            self.where[k] = seg
            if failed:  # (most stores have none: no look-up per task)
                failed.pop(k, None)
        for k in entry.get("failed", ()):
            if k not in self.where:
                self.failed[k] = seg


class _Writer:
    """Batches finished tasks into commits (see ``Store``'s batch_* parameters).

    A commit is made when a task is added and the batch is full, or by a timer thread
    once the oldest pending task has waited ``batch_seconds``: a task that finishes just
    before a long one starts must not wait for the long one to be committed. (The core
    releases the GIL while it integrates, so the timer runs.) ``close`` commits the
    rest and stops the timer."""

    def __init__(self, store: Store, next_seq: int) -> None:
        self.store = store
        self.seq = next_seq
        self.pending: list[tuple[str, bytes, dict[str, Any]]] = []
        self.failures: list[dict[str, str]] = []
        self.size = 0
        self.since = 0.0
        self.committed = 0
        self.commits = 0
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        self._error: BaseException | None = None

    def add(self, key: str, arrays: dict[str, Any]) -> None:
        self.add_bytes(key, _npz_bytes(arrays), summary_row(arrays))

    def add_bytes(self, key: str, data: bytes, row: dict[str, Any]) -> None:
        self._add(lambda: self.pending.append((key, data, row)), len(data))

    def add_failure(self, key: str, error: str, message: str, traceback: str) -> None:
        """A task that raised: recorded (no arrays), so that a resume skips it and
        ``Sweep.rerun`` finds it."""
        self._add(lambda: self.failures.append(
            {"key": key, "error": error, "message": message, "traceback": traceback}),
            len(message) + len(traceback))

    def _add(self, append: Callable[[], None], size: int) -> None:
        self._raise()
        st = self.store
        with self._mutex:
            if not self.pending and not self.failures:
                self.since = time.monotonic()
            append()
            self.size += size
            if (len(self.pending) + len(self.failures) >= st.batch_tasks
                    or self.size >= st.batch_bytes
                    or time.monotonic() - self.since >= st.batch_seconds):
                self._flush()
        if self._timer is None and (self.pending or self.failures):
            self._timer = threading.Thread(target=self._tick, daemon=True,
                                           name="ntkflow-store-commit")
            self._timer.start()

    def _tick(self) -> None:
        wait = min(0.25, max(0.005, self.store.batch_seconds / 4))
        while not self._stop.wait(wait):
            with self._mutex:
                if (self.pending or self.failures) and (
                        time.monotonic() - self.since >= self.store.batch_seconds):
                    try:
                        self._flush()
                    except BaseException as exc:  # raised in the sweep's thread
                        self._error = exc
                        return

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _flush(self) -> None:
        if not self.pending and not self.failures:
            return
        self.store._commit(self.seq, self.pending, self.failures)
        self.seq += 1
        self.committed += len(self.pending) + len(self.failures)
        self.commits += 1
        self.pending, self.failures, self.size = [], [], 0

    def flush(self) -> None:
        """Commit what is pending now."""
        self._raise()
        with self._mutex:
            self._flush()

    def close(self) -> None:
        """Stop the timer and commit what is pending."""
        self._stop.set()
        if self._timer is not None:
            self._timer.join()
        self.flush()


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
