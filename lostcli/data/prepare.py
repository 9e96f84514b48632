"""`lost dataset prepare`: a folder of mesh files -> a dataset store (normalised meshes, samples, renders).

Per item: load and validate the mesh, normalise it to [-0.95, 0.95]^3, sample surface points with
normals and occupancy (signed distance) points, render the 4 orthographic views, and append everything
to the `items` table of the store. Items are split round-robin over ranks (Accelerate processes); each
rank may use a pool of worker processes, while the rank's parent process alone writes its shards.

Re-runs redo nothing: ids with a finished index line are skipped, and a file that failed before is not
retried while its modification time and size are unchanged. Every per-item exception becomes one
failure line in `DIR/failures/` and the run goes on. `finalize` (rank 0, after every rank is done)
writes `DIR/manifest.json` from the shard indices.
"""

from __future__ import annotations

import multiprocessing as mp
import re
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..config import to_dict
from ..errors import ConfigError, DataError, LostError
from ..persist import atomic_write_json
from .mesh import SUPPORTED, load_mesh, mesh_stats, normalize_mesh, up_rotation
from .render import render_views
from .sampling import OccupancyConfig, sample_occupancy, sample_surface
from .store import ITEMS, SPLITS, DatasetStore, FailureLog, ShardWriter, iter_jsonl, read_json

METADATA = "metadata.jsonl"
Progress = Callable[[int, int, str], None]  # (processed so far, to process, id just processed)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_WORD_SPLIT = re.compile(r"[\s_.\-]+|(?<=[a-z0-9])(?=[A-Z])")


@dataclass
class PrepareConfig:
    up: str = "y"  # source up axis: "y" (glTF) or "z"; rotated to +Y before normalising
    max_faces: int = 2_000_000  # files with more triangles are recorded as failures
    surface_points: int = 16384  # area-weighted surface samples (with normals) per shape
    occupancy: OccupancyConfig = field(default_factory=OccupancyConfig)  # signed-distance samples
    render_size: int = 224  # pixels per side of each of the 4 orthographic renders
    shard_size: int = 64  # items per shard file (does not change the data)
    seed: int = 0  # base seed; each item's seed is derived from (seed, id), not from order
    val_fraction: float = 0.05  # share of ids hashed to "val" (when metadata gives no split)
    test_fraction: float = 0.05  # share of ids hashed to "test" (when metadata gives no split)


@dataclass
class SourceItem:
    """One mesh file to prepare, with its dataset labels."""

    id: str  # unique, filesystem-safe
    path: Path  # the mesh file (may be missing when metadata names a file that is not there)
    source: str  # path relative to the source folder, POSIX separators
    category: str
    caption: str
    split: str  # "train", "val" or "test"
    meta: dict[str, Any] = field(default_factory=dict)  # further metadata.jsonl fields, kept as given


@dataclass
class PrepareResult:
    done: int  # items prepared and written by this call
    skipped: int  # items already in the store
    failed: list[dict]  # failure records written by this call
    known_failures: int = 0  # items not retried: failed before and their file is unchanged


# ----------------------------------------------------------------------------------------------------
# Discovery
# ----------------------------------------------------------------------------------------------------


def safe_id(text: str) -> str:
    """A filesystem- and zip-safe id: runs of other characters become "_"."""
    out = _UNSAFE.sub("_", text).strip("._")
    return out or "item"


def caption_for(stem: str) -> str:
    """The default caption "a 3D model of a <stem words>" (snake, kebab and camel case split)."""
    words = " ".join(w.lower() for w in _WORD_SPLIT.split(stem) if w)
    return f"a 3D model of a {words or 'shape'}"


def hash_split(id: str, val_fraction: float, test_fraction: float) -> str:
    """Stable split from the id alone: crc32(id) / 2^32 below test, then val fraction."""
    u = zlib.crc32(id.encode("utf-8")) / 2**32
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def item_seed(seed: int, id: str) -> int:
    """Per-item seed from (base seed, id): independent of worker count and order."""
    return zlib.crc32(f"{seed}:{id}".encode("utf-8")) & 0x7FFFFFFF


def _read_metadata(path: Path) -> list[tuple[int, dict]]:
    rows = []
    for lineno, rec in iter_jsonl(path):
        if not isinstance(rec, dict) or not isinstance(rec.get("file"), str) or not rec["file"]:
            raise DataError(f"{path}:{lineno}: record needs a 'file' string")
        for key in ("id", "category", "caption", "split"):
            if key in rec and not isinstance(rec[key], str):
                raise DataError(f"{path}:{lineno}: '{key}' must be a string")
        if "split" in rec and rec["split"] not in SPLITS:
            raise DataError(f"{path}:{lineno}: split {rec['split']!r} is not one of {', '.join(SPLITS)}")
        rows.append((lineno, rec))
    return rows


def discover(src: Path, val_fraction: float = 0.05, test_fraction: float = 0.05) -> list[SourceItem]:
    """Every mesh file under `src` (recursive, sorted), labelled from `src/metadata.jsonl` if present.

    Every entry with a mesh extension that is not a folder counts, openable or not (a broken symlink yields an
    item whose preparation fails and is recorded); hidden files and folders are skipped.

    A metadata record {"file", "id"?, "category"?, "caption"?, "split"?, ...} is attached to the file
    whose path relative to `src` (or, failing that, whose unique file name) equals "file"; missing
    labels fall back to: id = file stem, category = parent folder name ("unknown" at the top level),
    caption = "a 3D model of a <stem words>", split = hash of the id. A metadata record whose file is
    not found still yields an item (its preparation fails and is recorded).

    Raises:
        DataError: `src` is not a folder, or metadata.jsonl is malformed or repeats an id or file.
    """
    src = Path(src)
    if not src.is_dir():
        raise DataError(f"{src}: source folder does not exist")
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction > 1:
        raise ConfigError(f"val_fraction + test_fraction must lie in [0, 1], got {val_fraction} + {test_fraction}")
    # Not `is_file()`: a broken link or an unreadable entry with a mesh extension must fail (and be recorded)
    # in `prepare_item`, not vanish here. Folders are walked, not prepared.
    files = sorted(
        p
        for p in src.rglob("*")
        if p.suffix.lower() in SUPPORTED
        and not any(part.startswith(".") for part in p.relative_to(src).parts)
        and not p.is_dir()
    )
    rel = {p.relative_to(src).as_posix(): p for p in files}
    by_name: dict[str, list[str]] = {}
    for r in rel:
        by_name.setdefault(r.rsplit("/", 1)[-1], []).append(r)

    meta_path = src / METADATA
    meta_of: dict[str, tuple[int, dict]] = {}  # relative path -> (line, record)
    if meta_path.is_file():
        for lineno, rec in _read_metadata(meta_path):
            name = rec["file"].replace("\\", "/")
            name = name[2:] if name.startswith("./") else name
            if name.startswith("/") or ".." in name.split("/"):
                raise DataError(f"{meta_path}:{lineno}: 'file' must be a path inside {src}, got {rec['file']!r}")
            key = name if name in rel else (by_name[name][0] if len(by_name.get(name, [])) == 1 else name)
            if key in meta_of:
                raise DataError(f"{meta_path}:{lineno}: file {rec['file']!r} already listed on line {meta_of[key][0]}")
            meta_of[key] = (lineno, rec)

    items: list[SourceItem] = []
    taken: dict[str, str] = {}  # id -> relative path
    for key in sorted(set(rel) | set(meta_of)):
        path = rel.get(key, src / key)
        lineno, rec = meta_of.get(key, (0, {}))
        stem = Path(key).stem
        parent = Path(key).parent.name
        if "id" in rec:
            id = safe_id(rec["id"])
            if id in taken:
                raise DataError(f"{meta_path}:{lineno}: id {rec['id']!r} is used twice (also by {taken[id]})")
        else:
            id = safe_id(stem)
            if id in taken:  # same stem in another folder: disambiguate by the relative path
                id = f"{id}-{zlib.crc32(key.encode('utf-8')):08x}"
        taken[id] = key
        extra = {k: v for k, v in rec.items() if k not in ("id", "file", "category", "caption", "split")}
        if "id" in rec and rec["id"] != id:
            extra["source_id"] = rec["id"]
        items.append(
            SourceItem(
                id=id,
                path=path,
                source=key,
                category=rec.get("category", parent or "unknown"),
                caption=rec.get("caption", caption_for(stem)),
                split=rec.get("split", hash_split(id, val_fraction, test_fraction)),
                meta=extra,
            )
        )
    return items


# ----------------------------------------------------------------------------------------------------
# One item
# ----------------------------------------------------------------------------------------------------


def prepare_item(item: SourceItem, cfg: PrepareConfig, seed: int) -> tuple[dict[str, np.ndarray], dict]:
    """Load, normalise, sample and render one mesh.

    Returns:
        arrays: surface_points f32 [N, 3], surface_normals f16 [N, 3], occ_points f32 [M, 3],
            occ_sdf f32 [M] (negative inside), renders u8 [4, S, S, 3], depth f16 [4, S, S],
            mask bool [4, S, S] (depth is 0 on background, so the mask is kept), and the normalised
            mesh as mesh_vertices f32 [V, 3], mesh_faces i32 [F, 3].
        record: id, category, caption, split, source, normalization (source -> normalised frame),
            stats (of the mesh as loaded, in its source units), plus any extra metadata as "meta".

    Raises:
        MeshError: the file is unusable (see `load_mesh`).
    """
    surface_seed, occ_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(2))
    loaded = load_mesh(item.path, max_faces=cfg.max_faces)
    mesh, norm = normalize_mesh(loaded, up=cfg.up)
    points, normals = sample_surface(mesh, cfg.surface_points, surface_seed)
    occ = sample_occupancy(mesh, cfg.occupancy, occ_seed)
    views = render_views(mesh, size=cfg.render_size)
    arrays = {
        "surface_points": np.asarray(points, dtype=np.float32),
        "surface_normals": np.asarray(normals, dtype=np.float16),
        "occ_points": np.asarray(occ["points"], dtype=np.float32),
        "occ_sdf": np.asarray(occ["sdf"], dtype=np.float32),
        "renders": np.asarray(views.images, dtype=np.uint8),
        "depth": np.asarray(views.depth, dtype=np.float16),
        "mask": np.asarray(views.mask, dtype=bool),
        "mesh_vertices": np.asarray(mesh.vertices, dtype=np.float32),
        "mesh_faces": np.asarray(mesh.faces, dtype=np.int32),
    }
    record = {
        "id": item.id,
        "category": item.category,
        "caption": item.caption,
        "split": item.split,
        "source": item.source,
        "normalization": norm.to_dict(),
        "stats": mesh_stats(loaded),
    }
    if item.meta:
        record["meta"] = item.meta
    return arrays, record


def _reason(path: Path, err: BaseException) -> str:
    """One line naming the file and the problem."""
    msg = " ".join(str(err).split())
    if not isinstance(err, LostError):
        msg = f"{type(err).__name__}: {msg}" if msg else type(err).__name__
    return msg if msg.startswith(str(path)) else f"{path}: {msg}"


def _run_one(job: tuple[SourceItem, PrepareConfig]) -> tuple[SourceItem, bool, Any]:
    """Worker body: (item, True, (arrays, record)) or (item, False, reason); never raises Exception."""
    item, cfg = job
    try:
        return item, True, prepare_item(item, cfg, item_seed(cfg.seed, item.id))
    except Exception as e:  # any per-item failure is recorded, the run goes on
        return item, False, _reason(item.path, e)


def _init_worker() -> None:
    # Parallelism comes from the pool: one math thread per worker avoids oversubscription.
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------------------
# The dataset
# ----------------------------------------------------------------------------------------------------


def _file_signature(path: Path) -> tuple[int | None, int | None]:
    try:
        st = path.stat()
    except OSError:
        return None, None
    return st.st_mtime_ns, st.st_size


def _check_config(out: Path, cfg: PrepareConfig) -> None:
    """Write DIR/config.json, or refuse to add items prepared differently to an existing dataset."""
    path = out / "config.json"
    resolved = to_dict(cfg)
    if not path.is_file():
        atomic_write_json(path, resolved)
        return
    old = read_json(path)
    if not isinstance(old, dict):
        raise DataError(f"{path}: expected a JSON object")
    ignore = {"shard_size"}  # storage layout only
    differs = sorted(k for k in set(old) | set(resolved) if k not in ignore and old.get(k) != resolved.get(k))
    if differs:
        raise DataError(
            f"{path}: the dataset was prepared with a different config ({', '.join(differs)}); "
            "use a new output folder or the same settings"
        )


def _check_arguments(cfg: PrepareConfig, rank: int, world_size: int, workers: int) -> None:
    """ConfigError on a share, worker count, shard size or up axis that `prepare_dataset` cannot use."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank/world_size: need 0 <= rank < world_size, got {rank}/{world_size}")
    if workers < 1:
        raise ConfigError(f"workers: must be >= 1, got {workers}")
    if cfg.shard_size < 1:
        raise ConfigError(f"shard_size: must be >= 1, got {cfg.shard_size}")
    up_rotation(cfg.up)  # ConfigError on a bad axis, before any work


def _still_to_prepare(store: DatasetStore, items: list[SourceItem]) -> tuple[list[SourceItem], int, int]:
    """(items neither stored nor recorded as failed in their current version, stored ones, known failures)."""
    done_ids = store.done_ids(ITEMS)
    failed_before = {(f.get("source"), f.get("mtime_ns"), f.get("size")) for f in store.failures()}
    todo: list[SourceItem] = []
    skipped = known = 0
    for item in items:
        if item.id in done_ids:
            skipped += 1
        elif (item.source, *_file_signature(item.path)) in failed_before:
            known += 1
        else:
            todo.append(item)
    return todo, skipped, known


def prepare_dataset(
    src: Path,
    out: Path,
    cfg: PrepareConfig | None = None,
    rank: int = 0,
    world_size: int = 1,
    workers: int = 1,
    progress: Progress | None = None,
) -> PrepareResult:
    """Prepare this rank's share (items[rank::world_size]) of the meshes under `src` into `out`.

    Args:
        src: folder of mesh files (optionally with metadata.jsonl).
        out: dataset directory (created; resumed if it holds earlier work).
        cfg: preparation settings (default `PrepareConfig()`).
        rank, world_size: this process's share; ranks write disjoint shard files.
        workers: processes preparing items in parallel (spawned); this process writes the shards.
        progress: called as progress(processed, to_process, id) after each item.

    Raises:
        DataError / ConfigError: bad `src`, metadata or settings, or a config differing from the one
            `out` was prepared with. Per-item problems are recorded, never raised.
    """
    cfg = cfg or PrepareConfig()
    _check_arguments(cfg, rank, world_size, workers)
    items = discover(Path(src), cfg.val_fraction, cfg.test_fraction)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{out}: cannot create the dataset folder ({e.strerror or e})") from None
    _check_config(out, cfg)

    todo, skipped, known = _still_to_prepare(DatasetStore(out), items[rank::world_size])
    log = FailureLog(out, rank)
    failed: list[dict] = []
    done = 0
    jobs = [(item, cfg) for item in todo]
    pool = None
    try:
        if workers > 1 and len(jobs) > 1:
            pool = mp.get_context("spawn").Pool(min(workers, len(jobs)), initializer=_init_worker)
            results: Iterator = pool.imap(_run_one, jobs, chunksize=1)  # in order: deterministic shards
        else:
            results = map(_run_one, jobs)
        with ShardWriter(out, ITEMS, rank=rank, shard_size=cfg.shard_size) as writer:
            for n, (item, ok, payload) in enumerate(results, 1):
                if ok:
                    writer.add(item.id, *payload)
                    done += 1
                else:
                    mtime_ns, size = _file_signature(item.path)
                    failed.append(
                        log.add(
                            str(item.path), payload, id=item.id, source=item.source,
                            mtime_ns=mtime_ns, size=size, rank=rank,
                        )
                    )
                if progress is not None:
                    progress(n, len(todo), item.id)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return PrepareResult(done=done, skipped=skipped, failed=failed, known_failures=known)


def finalize(out: Path) -> dict:
    """Write `out/manifest.json` from every rank's shard indices and failures (rank 0, at the end)."""
    out = Path(out)
    store = DatasetStore(out)
    config_path = out / "config.json"
    extra = {
        "created_by": f"lostcli {__version__}",
        "config": read_json(config_path) if config_path.is_file() else None,
    }
    return store.write_manifest(extra)
