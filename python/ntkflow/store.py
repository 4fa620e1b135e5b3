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
                            summary.json (their summary rows, in member order). <seq> is
                            8 digits counting commits from 1, <shard> = seq // 1000 (5 digits)
    STORE/index.jsonl       one line per committed segment, in commit order:
                            {"segment": "<shard>/<seq>.zip", "keys": [...]}; a key in a
                            later line supersedes the same key in an earlier one
    STORE/summary.csv       one row per finished task (rewritten when a sweep ends)
    STORE/.lock             held (flock) by the sweep writing to the store

Why this layout. Version 1 wrote one file per task with two fsyncs and a folder fsync each
(13.5 ms a task) and, to resume, opened and CRC-checked every task file (7 ms a task); its
manifest listed every spec in one JSON. Here a commit is one segment of many tasks: one
atomic file (temporary name, fsync, rename, fsync of the folder) and one appended,
fsync'ed index line, so the fsync cost is shared by every task of the batch, and a task is
complete or absent after any kill because a segment is either renamed into place whole or
not at all. Resume reads the index (one file) and looks only at segments numbered after its
last line -- the ones a killed writer renamed but did not index -- so it costs O(changed)
file checks, not O(tasks). Folders hold at most 1000 segments whatever the sweep's size,
and a segment holds up to ``batch_tasks`` tasks, so 10^6 tasks are ~10^3-10^5 files.

Zip of .npz rather than Parquet: the arrays of a task have shapes that differ by task
(trajectories, record times) and by what it computed, so they do not fit a table without
nesting; a zip of the very bytes version 1 wrote keeps every array bit for bit, needs only
NumPy (a dependency anyway; pyarrow is optional), and migrating a version-1 store is a
byte copy. Reading without ntkflow::

    import io, json, zipfile, numpy as np
    for line in open("STORE/index.jsonl"):
        seg = json.loads(line)
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
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
from numpy.typing import NDArray

from . import _core
from ._summary import flatten, rows_table, summary_row
from ._table import Table, _cell
from ._validate import integer, real
from ._version import __version__

FORMAT = "ntkflow.store"
VERSION = 2
_TMP = ".tmp-"
_SHARD = 1000  # segments per folder
_ROWS = "summary.json"
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
        self._where: dict[str, str] | None = None  # key -> segment, from the index
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
        """Keys of the tasks still to compute."""
        done = set(self.finished())
        return [k for k in self.keys() if k not in done]

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
            raise KeyError(f"task {key} is not finished in the store {self.path}")
        data = self._segment(where[key]).read(f"{key}.npz")
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def summary(self) -> Table:
        """One row per finished task: key, the spec's fields (``net.width``,
        ``train.rtol``, ...), ok/failed counts, label fractions, dominant label, score
        medians over ok trajectories, t_max, isa, seconds."""
        if self._v1():
            return rows_table([summary_row(self.load(k)) for k in self.finished()])
        where = self._index()
        rows: dict[str, dict[str, Any]] = {}
        for seg in dict.fromkeys(where.values()):  # rows are kept beside the arrays
            for row in json.loads(self._segment(seg).read(_ROWS)):
                if where.get(row["key"]) == seg:
                    rows[row["key"]] = row
        return rows_table([rows[k] for k in self.keys() if k in rows])

    def write_summary(self) -> Path:
        """(Re)write ``summary.csv`` atomically; returns its path."""
        table = self.summary()

        def write(fh: IO[bytes]) -> None:
            text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
            w = csv.writer(text)
            w.writerow(table.names)
            w.writerows(zip(*(_cells(v) for v in table.columns.values()), strict=True))
            text.flush()
            text.detach()

        path = self.path / "summary.csv"
        atomic_write(path, write)
        return path

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
        self._where = None

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
        if self._where is None:
            self._where, _, _ = self._read_index()
        return self._where

    def _read_index(self) -> tuple[dict[str, str], list[str], bool]:
        """(key -> segment, the segments in index order, whether the file needs repair:
        a line cut by a kill, or garbage)."""
        where: dict[str, str] = {}
        order: list[str] = []
        damaged = False
        try:
            fh = open(self.index_path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            return where, order, False
        with fh:
            for raw in fh:
                try:
                    if not raw.endswith(b"\n"):
                        raise ValueError("cut")
                    entry = json.loads(raw)
                    seg, keys = entry["segment"], entry["keys"]
                except (ValueError, KeyError, TypeError):
                    damaged = True
                    continue
                order.append(seg)
                for k in keys:
                    where[k] = seg
        return where, order, damaged

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
                self._write_task_list({"key": t.key, "spec": t.describe()} for t in tasks)
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
        a cut index line, remove temporary files; returns the next segment number.
        Only segments numbered after the index's are looked at: commits are sequential
        under the lock, so that is where a kill leaves them."""
        where, order, damaged = self._read_index()
        seqs = sorted(_seq(s) for s in order)
        last = seqs[-1] if seqs else 0
        # a damaged line can hide a segment anywhere: look at the gaps too
        candidates = ([s for s in range(1, last) if s not in set(seqs)] if damaged else [])
        found: list[tuple[str, list[str]]] = []
        seq = last + 1
        for s in candidates:
            keys = self._verified_keys(_segment_name(s))
            if keys is not None:
                found.append((_segment_name(s), keys))
        while (self.segments_dir / _segment_name(seq)).exists():
            name = _segment_name(seq)
            keys = self._verified_keys(name)
            if keys is None:  # cannot be: renamed only once complete; but never trust it
                (self.segments_dir / name).unlink()
                break
            found.append((name, keys))
            seq += 1
        for s in {last + 1, seq}:  # where a killed commit left its temporary file
            _remove_leftovers(self.segments_dir / _segment_name(s).split("/")[0])
        if damaged or found:
            entries = [(s, [k for k, v in where.items() if v == s]) for s in order]
            entries += found
            entries.sort(key=lambda e: _seq(e[0]))

            def write(fh: IO[bytes]) -> None:
                for s, ks in entries:
                    fh.write(_index_line(s, ks))
            atomic_write(self.index_path, write)
        self._where = None
        return seq

    def _verified_keys(self, name: str) -> list[str] | None:
        """The keys of a segment whose every member passes its CRC, else None."""
        path = self.segments_dir / name
        if not path.exists():
            return None
        try:
            with zipfile.ZipFile(path) as z:
                if z.testzip() is not None:
                    return None
                return [n[:-4] for n in z.namelist() if n.endswith(".npz")]
        except (OSError, zipfile.BadZipFile, EOFError):
            return None

    def _commit(self, seq: int, items: list[tuple[str, bytes, dict[str, Any]]]) -> None:
        name = _segment_name(seq)
        path = self.segments_dir / name
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True)
            _fsync_dir(path.parent.parent)
            _fsync_dir(self.path)

        data = _zip_bytes([*((f"{key}.npz", b) for key, b, _ in items),
                           (_ROWS, json.dumps([r for _, _, r in items]).encode())])
        atomic_write(path, lambda fh: None if fh.write(data) else None)
        # The segment is committed now; the index line only saves the next resume a look.
        with open(self.index_path, "ab") as fh:
            fh.write(_index_line(name, [k for k, _, _ in items]))
            fh.flush()
            os.fsync(fh.fileno())
        if self._where is not None:
            for key, _, _ in items:
                self._where[key] = name

    def _finished_keys(self, keys: Iterable[str]) -> set[str]:
        where = self._index()
        return {k for k in keys if k in where}

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


def _cells(column: NDArray[Any]) -> list[str]:
    """``_cell`` of every value of a column, a column at a time (summary.csv of 10^5 tasks
    is 10^7 cells): Python floats and ints format as NumPy's scalars do in ``_cell``."""
    if column.dtype.kind == "f":
        return ["" if math.isnan(f) else repr(f) for f in column.tolist()]
    if column.dtype.kind in "iub":
        return [str(v) for v in column.tolist()]
    return [_cell(v) for v in column]


def _index_line(segment: str, keys: list[str]) -> bytes:
    return json.dumps({"segment": segment, "keys": keys},
                      separators=(",", ":")).encode() + b"\n"


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
        self._raise()
        st = self.store
        with self._mutex:
            if not self.pending:
                self.since = time.monotonic()
            self.pending.append((key, data, row))
            self.size += len(data)
            if (len(self.pending) >= st.batch_tasks or self.size >= st.batch_bytes
                    or time.monotonic() - self.since >= st.batch_seconds):
                self._flush()
        if self._timer is None and self.pending:
            self._timer = threading.Thread(target=self._tick, daemon=True,
                                           name="ntkflow-store-commit")
            self._timer.start()

    def _tick(self) -> None:
        wait = min(0.25, max(0.005, self.store.batch_seconds / 4))
        while not self._stop.wait(wait):
            with self._mutex:
                if self.pending and (time.monotonic() - self.since
                                     >= self.store.batch_seconds):
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
        if not self.pending:
            return
        self.store._commit(self.seq, self.pending)
        self.seq += 1
        self.committed += len(self.pending)
        self.commits += 1
        self.pending, self.size = [], 0

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
