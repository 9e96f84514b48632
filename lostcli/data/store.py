"""The dataset store: per-item arrays in sharded npz files, one JSONL index line per finished item.

A dataset directory DIR holds TABLES. `items` is written by `lost dataset prepare`; later stages add
per-id tables of derived data (latents, teacher features, tokens) with the same writer and reader:

    DIR/<table>/shard-r{rank:03d}-{k:05d}.npz     arrays named "{id}/{key}", one zip member each
    DIR/<table>/shard-r{rank:03d}-{k:05d}.jsonl   one JSON record per item of the shard
    DIR/<table>/stats.json                        optional table statistics (e.g. latent mean/std)
    DIR/failures/r{rank:03d}.jsonl                {"file", "reason", ...} per item that failed
    DIR/manifest.json                             summary written by rank 0 at the end (`write_manifest`)

The npz of a shard is renamed into place before its index, so an index line exists only for items whose
arrays are completely on disk; a crash leaves at most an npz without index, which readers ignore. Readers
work from the indices alone, so an interrupted run is readable (and resumable) without a manifest.
Members whose bytes compress well (renders, depth, faces) are deflated, the rest (float point clouds,
which deflate to ~93%) are stored; `np.load` reads either lazily, one array at a time.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
import zlib
from collections import Counter, OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..persist import atomic_write_json, atomic_write_text, json_default, publish, tmp_path_for

STORE_VERSION = 1
ITEMS = "items"
SPLITS = ("train", "val", "test")
_SHARD_RE = re.compile(r"^shard-r(\d{3,})-(\d{5,})\.(npz|jsonl)$")
_NAME_BAD = re.compile(r"[/\\\x00]")
_DEFLATE_BELOW = 0.8  # deflate a member when a sample of it compresses below this ratio
_DEFLATE_LEVEL = 1  # fastest zlib level: renders -> ~0.13, depth ~0.27, faces ~0.38 of raw; 3+ gains little


def _open_shard_limit() -> int:
    """NpzFile handles DatasetStore.load keeps open (LRU), one file descriptor each, per process.

    Training draws items at random, so with fewer handles than shards nearly every item re-opens its shard and
    re-parses the zip directory: on a 3024-shape dataset (48 latents + 48 features shards), 8 handles made one
    batch of 256 RIDA items take 1.4 s to read instead of 0.07 s. Keep up to 256 open, within an eighth of
    the soft descriptor limit (DataLoader workers each hold their own).
    """
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):  # no `resource` module on Windows
        return 64
    if soft == resource.RLIM_INFINITY:
        return 256
    return max(8, min(256, soft // 8))


_OPEN_SHARDS = _open_shard_limit()


# ----------------------------------------------------------------------------------------------------
# Atomic file helpers
# ----------------------------------------------------------------------------------------------------


def dumps_line(obj: Any) -> str:
    """One compact JSON line (no trailing newline)."""
    return json.dumps(obj, default=json_default, separators=(",", ":"), ensure_ascii=False)


def read_json(path: Path) -> Any:
    """Read a JSON file, raising DataError("PATH: ...") when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: malformed JSON ({e})") from None


def iter_jsonl(path: Path, what: str = "JSON line") -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSON-lines file.

    Raises:
        DataError: "PATH:LINE: malformed <what>" on a line that is not valid JSON (callers check its shape).
    """
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise DataError(f"{path}:{lineno}: malformed {what}") from None
            yield lineno, rec


def check_name(name: str, what: str) -> str:
    """Ids and array keys become zip member names "{id}/{key}": non-empty, no slashes or NUL."""
    if not isinstance(name, str) or not name or _NAME_BAD.search(name) or name in (".", ".."):
        raise DataError(f"invalid {what} {name!r}: must be a non-empty string without '/', '\\' or NUL")
    return name


def _compresses(raw: memoryview) -> bool:
    """Deflate only what pays: try level 1 on up to 4 spread 16 KB samples of the bytes."""
    n = len(raw)
    if n < 1024:
        return False
    step = max(n // 4, 16384)
    sample = b"".join(bytes(raw[i : i + 16384]) for i in range(0, n, step))
    return len(zlib.compress(sample, 1)) < _DEFLATE_BELOW * len(sample)


# ----------------------------------------------------------------------------------------------------
# Writer
# ----------------------------------------------------------------------------------------------------


def _shard_numbers(folder: Path, rank: int) -> list[int]:
    if not folder.is_dir():
        return []
    out = []
    for entry in os.scandir(folder):
        m = _SHARD_RE.match(entry.name)
        if m and int(m.group(1)) == rank:
            out.append(int(m.group(2)))
    return out


class ShardWriter:
    """Append items of one rank to `root/table/` as shards of `shard_size` items.

    Arrays are streamed into the open shard's temporary zip as they are added (memory stays at one
    item); `flush` renames the npz into place, then writes its index. Numbering resumes after every
    shard of this rank already on disk, finished or orphaned, so nothing is ever overwritten.

    Args:
        root: dataset directory (created if missing).
        table: table name, e.g. "items", "latents".
        rank: process rank; shards of different ranks never collide.
        shard_size: items per shard.
    """

    def __init__(self, root: Path, table: str, rank: int = 0, shard_size: int = 64) -> None:
        if shard_size < 1:
            raise DataError(f"{root}: shard_size must be >= 1, got {shard_size}")
        if rank < 0:
            raise DataError(f"{root}: rank must be >= 0, got {rank}")
        self.root = Path(root)
        self.table = check_name(table, "table name")
        self.rank = rank
        self.shard_size = shard_size
        self.folder = self.root / table
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob(f".shard-r{rank:03d}-*.tmp-*"):
            stale.unlink(missing_ok=True)  # left by a crashed writer of this rank
        numbers = _shard_numbers(self.folder, rank)
        self._next = max(numbers) + 1 if numbers else 0
        self._zip: zipfile.ZipFile | None = None
        self._tmp: Path | None = None
        self._records: list[dict] = []
        self._ids: set[str] = set()
        self.shards_written: list[str] = []  # npz names finished by this writer

    def _shard_name(self) -> str:
        return f"shard-r{self.rank:03d}-{self._next:05d}"

    def add(self, id: str, arrays: dict[str, np.ndarray], record: dict | None = None) -> None:
        """Add one item: its arrays and its JSON record ("id" and "keys" are filled in)."""
        check_name(id, "item id")
        if id in self._ids:
            raise DataError(f"{self.folder}: item {id!r} added twice to one shard")
        if not arrays:
            raise DataError(f"{self.folder}: item {id!r} has no arrays")
        rec = dict(record or {})
        rec["id"] = id
        rec["keys"] = sorted(arrays)
        # Validate everything before touching the shard, so a bad item leaves no partial members.
        line = dumps_line(rec)
        clean = {}
        for key in rec["keys"]:
            check_name(key, "array key")
            a = np.ascontiguousarray(np.asarray(arrays[key]))
            if a.dtype.hasobject:
                raise DataError(f"{self.folder}: item {id!r} array {key!r} has dtype object")
            clean[key] = a
        if self._zip is None:
            self._tmp = tmp_path_for(self.folder / f"{self._shard_name()}.npz")
            self._zip = zipfile.ZipFile(self._tmp, "w", allowZip64=True)
        for key, a in clean.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, a, allow_pickle=False)
            raw = buf.getbuffer()
            deflate = _compresses(raw[128:])  # skip the .npy header
            info = zipfile.ZipInfo(f"{id}/{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
            self._zip.writestr(info, raw, compresslevel=_DEFLATE_LEVEL if deflate else None)
        self._records.append(json.loads(line))
        self._ids.add(id)
        if len(self._records) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Finish the open shard: npz renamed into place first, then its index (both atomic)."""
        if self._zip is None:
            return
        assert self._tmp is not None
        self._zip.close()
        name = self._shard_name()
        publish(self._tmp, self.folder / f"{name}.npz")
        atomic_write_text(self.folder / f"{name}.jsonl", "".join(dumps_line(r) + "\n" for r in self._records))
        self.shards_written.append(f"{name}.npz")
        self._zip, self._tmp = None, None
        self._records, self._ids = [], set()
        self._next += 1

    def close(self) -> None:
        """Flush the last partial shard."""
        self.flush()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        # Items already added are complete even when the caller fails later: keep them.
        self.close()


# ----------------------------------------------------------------------------------------------------
# Failures log
# ----------------------------------------------------------------------------------------------------


class FailureLog:
    """Append-only `DIR/failures/r{rank:03d}.jsonl`: one line per failed item, flushed per write."""

    def __init__(self, root: Path, rank: int = 0) -> None:
        self.path = Path(root) / "failures" / f"r{rank:03d}.jsonl"

    def add(self, file: str, reason: str, **extra: Any) -> dict:
        """Record one failure; `reason` is collapsed to one line. Returns the record written."""
        rec = {"file": str(file), "reason": " ".join(str(reason).split()), **extra}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(dumps_line(rec) + "\n")  # one write per line: a crash loses at most this line
            f.flush()
            os.fsync(f.fileno())
        return rec


# ----------------------------------------------------------------------------------------------------
# Reader
# ----------------------------------------------------------------------------------------------------


class _TableIndex:
    """Every record of one table, keyed by id, with the shard npz that holds its arrays."""

    def __init__(self, signature: tuple, records: dict[str, dict], shard_of: dict[str, Path], shards: list[str]):
        self.signature = signature
        self.records = records
        self.shard_of = shard_of
        self.shards = shards  # finished npz names (with an index), sorted


class DatasetStore:
    """Read (and summarise) a dataset directory written by `ShardWriter`.

    Args:
        root: the dataset directory.

    Raises:
        DataError: "DIR: ..." when the directory is missing or a file in it is malformed.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset directory does not exist")
        self._index: dict[str, _TableIndex] = {}
        self._open: OrderedDict[Path, Any] = OrderedDict()
        self._pid = os.getpid()

    # --- indices -------------------------------------------------------------------------------

    def _signature(self, folder: Path) -> tuple:
        entries = []
        for entry in os.scandir(folder):
            if entry.name.endswith(".jsonl") and _SHARD_RE.match(entry.name):
                st = entry.stat()
                entries.append((entry.name, st.st_mtime_ns, st.st_size))
        return tuple(sorted(entries))

    def _table(self, table: str, refresh: bool = True) -> _TableIndex:
        folder = self.root / check_name(table, "table name")
        if not folder.is_dir():
            raise DataError(f"{folder}: no such table in this dataset")
        cached = self._index.get(table)
        if cached is not None and not refresh:
            return cached
        sig = self._signature(folder)
        if cached is not None and cached.signature == sig:
            return cached
        records: dict[str, dict] = {}
        shard_of: dict[str, Path] = {}
        shards = []
        # Sorted shard order: within a rank numbering is chronological, so a later copy of an id wins.
        for name, _, _ in sig:
            index_path = folder / name
            npz_path = index_path.with_suffix(".npz")
            if not npz_path.is_file():
                raise DataError(f"{index_path}: index without its shard {npz_path.name}")
            shards.append(npz_path.name)
            for lineno, rec in iter_jsonl(index_path, "index line"):
                if not isinstance(rec, dict) or not isinstance(rec.get("id"), str):
                    raise DataError(f"{index_path}:{lineno}: index record has no string 'id'")
                records[rec["id"]] = rec
                shard_of[rec["id"]] = npz_path
        index = _TableIndex(sig, records, shard_of, shards)
        self._index[table] = index
        return index

    def has_table(self, name: str) -> bool:
        """True when `DIR/name/` holds at least one finished shard."""
        folder = self.root / name
        return folder.is_dir() and bool(self._signature(folder))

    def tables(self) -> list[str]:
        """Names of the tables with at least one finished shard."""
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.has_table(p.name))

    def _split_of(self) -> dict[str, str]:
        return {i: r.get("split", "train") for i, r in self._table(ITEMS).records.items()}

    def _select(self, index: _TableIndex, table: str, split: str | None) -> list[str]:
        ids = sorted(index.records)
        if split is None:
            return ids
        if split not in SPLITS:
            raise DataError(f"{self.root}: unknown split {split!r} (expected one of {', '.join(SPLITS)})")
        # Derived tables take the split from `items`, so their records need not repeat it.
        if table == ITEMS:
            return [i for i in ids if index.records[i].get("split", "train") == split]
        splits = self._split_of()
        return [i for i in ids if splits.get(i) == split]

    def records(self, split: str | None = None, table: str = ITEMS) -> list[dict]:
        """Records of finished items, sorted by id (optionally one split)."""
        index = self._table(table)
        return [index.records[i] for i in self._select(index, table, split)]

    def ids(self, split: str | None = None, table: str = ITEMS) -> list[str]:
        """Sorted ids of finished items (optionally one split)."""
        return self._select(self._table(table), table, split)

    def done_ids(self, table: str = ITEMS) -> set[str]:
        """Ids with a finished index line; empty when the table does not exist yet."""
        if not (self.root / table).is_dir():
            return set()
        return set(self._table(table).records)

    # --- arrays --------------------------------------------------------------------------------

    def _npz(self, path: Path) -> Any:
        if self._pid != os.getpid():
            # A forked DataLoader worker must not share the parent's file offsets.
            self._open.clear()
            self._pid = os.getpid()
        handle = self._open.get(path)
        if handle is not None:
            self._open.move_to_end(path)
            return handle
        try:
            handle = np.load(path, allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise DataError(f"{path}: unreadable shard ({e})") from None
        self._open[path] = handle
        while len(self._open) > _OPEN_SHARDS:
            _, old = self._open.popitem(last=False)
            old.close()
        return handle

    @staticmethod
    def _read(npz: Any, path: Path, id: str, keys: list[str]) -> dict[str, np.ndarray]:
        out = {}
        for key in keys:
            try:
                out[key] = npz[f"{id}/{key}"]
            except KeyError:
                raise DataError(f"{path}: item {id!r} has no array {key!r}") from None
            except (OSError, ValueError, zipfile.BadZipFile, zlib.error) as e:
                raise DataError(f"{path}: item {id!r} array {key!r} is unreadable ({e})") from None
        return out

    def load(self, id: str, keys: list[str] | None = None, table: str = ITEMS) -> dict[str, np.ndarray]:
        """Arrays of one item (all keys, or `keys`); only the requested members are read."""
        index = self._table(table, refresh=False)
        if id not in index.records:
            index = self._table(table)  # written since the last scan?
            if id not in index.records:
                raise DataError(f"{self.root / table}: no item {id!r}")
        rec = index.records[id]
        wanted = list(rec["keys"]) if keys is None else list(keys)
        missing = [k for k in wanted if k not in rec["keys"]]
        if missing:
            raise DataError(
                f"{self.root / table}: item {id!r} has no array {missing[0]!r} (has {', '.join(rec['keys'])})"
            )
        path = index.shard_of[id]
        return self._read(self._npz(path), path, id, wanted)

    def iter_table(
        self, table: str = ITEMS, keys: list[str] | None = None, split: str | None = None
    ) -> Iterator[tuple[dict, dict[str, np.ndarray]]]:
        """Stream `(record, arrays)` shard by shard (each shard opened once), in shard order."""
        index = self._table(table)
        wanted = set(self._select(index, table, split))
        by_shard: dict[Path, list[str]] = {}
        for i in sorted(wanted, key=lambda i: (index.shard_of[i].name, i)):
            by_shard.setdefault(index.shard_of[i], []).append(i)
        for path, ids in by_shard.items():
            try:
                npz = np.load(path, allow_pickle=False)
            except (OSError, ValueError, zipfile.BadZipFile) as e:
                raise DataError(f"{path}: unreadable shard ({e})") from None
            with npz:
                for i in ids:
                    rec = index.records[i]
                    yield rec, self._read(npz, path, i, list(rec["keys"]) if keys is None else list(keys))

    def close(self) -> None:
        """Close cached shard handles."""
        for handle in self._open.values():
            handle.close()
        self._open.clear()

    # --- failures, summary, manifest, stats --------------------------------------------------------

    def failures(self) -> list[dict]:
        """Current failure records of every rank: the latest per file, none for ids since finished.

        A torn last line (a crash mid-write) is skipped.
        """
        folder = self.root / "failures"
        if not folder.is_dir():
            return []
        done = self.done_ids(ITEMS)
        latest: dict[Any, dict] = {}
        for path in sorted(folder.glob("r*.jsonl")):
            lines = path.read_text(encoding="utf-8").splitlines()
            for lineno, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    if lineno == len(lines):
                        continue  # torn by a crash mid-write
                    raise DataError(f"{path}:{lineno}: malformed failure line") from None
                if not isinstance(rec, dict):
                    raise DataError(f"{path}:{lineno}: failure line is not a JSON object")
                if rec.get("id") in done:
                    continue  # retried later with success
                latest.pop(rec.get("file"), None)
                latest[rec.get("file")] = rec  # re-inserted: keeps the order of the latest records
        return list(latest.values())

    def info(self) -> dict:
        """Counts of finished items per split and category, the failures, and the tables present."""
        records = self.records() if self.has_table(ITEMS) else []
        return {
            "items": len(records),
            "splits": dict(sorted(Counter(r.get("split", "train") for r in records).items())),
            "categories": dict(sorted(Counter(r.get("category", "unknown") for r in records).items())),
            "failures": [{"file": f.get("file"), "reason": f.get("reason")} for f in self.failures()],
            "tables": {t: len(self._table(t).records) for t in self.tables()},
        }

    def write_manifest(self, extra: dict | None = None) -> dict:
        """Write `DIR/manifest.json` (atomic) from the shard indices and failures; returns it."""
        info = self.info()
        manifest = {
            "version": STORE_VERSION,
            "items": info["items"],
            "splits": info["splits"],
            "categories": info["categories"],
            "tables": {
                t: {"items": n, "shards": self._table(t).shards} for t, n in info["tables"].items()
            },
            "shards": self._table(ITEMS).shards if self.has_table(ITEMS) else [],
            "failures": self.failures(),
            **(extra or {}),
        }
        atomic_write_json(self.root / "manifest.json", manifest)
        return manifest

    def manifest(self) -> dict | None:
        """The manifest if a finished run wrote one, else None."""
        path = self.root / "manifest.json"
        return read_json(path) if path.is_file() else None

    def write_stats(self, table: str, stats: dict) -> None:
        """Write `DIR/table/stats.json` (atomic)."""
        folder = self.root / check_name(table, "table name")
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / "stats.json", stats)

    def read_stats(self, table: str) -> dict:
        """Read `DIR/table/stats.json`; DataError when it is missing or malformed."""
        stats = read_json(self.root / check_name(table, "table name") / "stats.json")
        if not isinstance(stats, dict):
            raise DataError(f"{self.root / table / 'stats.json'}: expected a JSON object")
        return stats
