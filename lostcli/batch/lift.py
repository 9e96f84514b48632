"""`lost dataset lift`: the data engine's second stage, images -> Direct3D latents, meshes and 4-view previews.

Input: a folder from `lost dataset images` (its `images.jsonl` gives each image's index, prompt and category) or
any folder of PNG / JPEG files (searched recursively; the caption comes from the file name). Output: a dataset
store that every later stage reads like a prepared folder:

    DIR/settings.json                      model, steps, guidance, seed, resolution (a re-run must match)
    DIR/items/shard-r000-00000.{npz,jsonl} per image: renders u8 [4, S, S, 3], depth, mask of the lifted mesh,
                                           mesh_vertices, mesh_faces, surface_points, surface_normals;
                                           record: id, category, caption, split, source, lift settings
    DIR/latents/shard-r000-....{npz,jsonl} z = the VAE latent [C, H, W] (`lost dataset latents`' space)
    DIR/latents/stats.json                 per-channel mean / std (written by rank 0 at the end)
    DIR/meshes/{id}.glb                    the lifted mesh (the VAE's frame, as the latents decode)
    DIR/previews/{id}.png                  its 4 views side by side
    DIR/failures/r000.jsonl                unreadable or degenerate images, meshes without a surface
    DIR/manifest.json                      written by rank 0 at the end (when anything changed)

Image k of the sorted list belongs to process k % world. A batch of images is sampled with the seed
`item_seed(seed, first id)`. Files are written first (glb, png), then the latents row, then the items row: an
id with an items row is finished, and a re-run skips it. A failed file is not retried while its size and
modification time are unchanged.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..data.prepare import caption_for, hash_split, item_seed, safe_id
from ..data.render import render_views
from ..data.sampling import sample_surface
from ..data.store import ITEMS, DatasetStore, FailureLog, ShardWriter
from ..errors import DataError, LostError
from ..persist import atomic_path, bind_settings
from .images import MANIFEST
from .latents import TABLE as LATENTS
from .latents import latent_stats

SUFFIXES = (".png", ".jpg", ".jpeg")
MIN_SIDE = 8  # pixels: smaller images are recorded as failures (a 1 x 1 image holds no object)
PREVIEW_SIZE = 224  # side of each preview view (as `lost dataset prepare` renders)
SURFACE_POINTS = 16384  # surface samples per lifted mesh (as `lost dataset prepare`)


@dataclass(frozen=True)
class LiftSettings:
    """Everything that decides a lifted shape (a resumed run must use the same)."""

    model: str  # pipeline folder (absolute) or hub id
    steps: int  # Euler-ancestral steps
    guidance: float  # classifier-free guidance scale
    seed: int  # base seed; a batch samples with item_seed(seed, its first id)
    resolution: int  # marching-cubes cells per axis


@dataclass
class LiftImage:
    """One image to lift."""

    id: str  # unique, filesystem-safe
    path: Path
    source: str  # path relative to the input folder
    category: str
    caption: str
    split: str


@dataclass
class LiftResult:
    done: int  # images lifted by this process in this run
    skipped: int  # this process's images already finished
    failed: list[dict] = field(default_factory=list)  # failure records written by this process
    known_failures: int = 0  # images not retried: failed before, file unchanged
    total: int = 0  # images in the folder


# ----------------------------------------------------------------------------------------------------
# Discovery and checks
# ----------------------------------------------------------------------------------------------------


def discover_images(src: Path) -> list[LiftImage]:
    """The images of a `lost dataset images` folder (by its manifest) or of any folder (sorted by path).

    Raises:
        DataError: no such folder, a malformed manifest, or no image in it.
    """
    src = Path(src)
    if not src.is_dir():
        raise DataError(f"{src}: images folder not found")
    manifest = src / MANIFEST
    items: list[LiftImage] = []
    if manifest.is_file():
        for lineno, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                index, file = int(row["index"]), str(row["file"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise DataError(f"{manifest}:{lineno}: malformed row (needs index and file)") from None
            id = f"{index:06d}"
            items.append(LiftImage(id, src / file, file, str(row.get("category") or "unknown"),
                                   str(row.get("prompt") or caption_for(Path(file).stem)), hash_split(id, 0.05, 0.05)))
    else:
        for path in sorted(p for p in src.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file()):
            rel = path.relative_to(src).as_posix()
            id = safe_id(str(Path(rel).with_suffix("")))
            items.append(LiftImage(id, path, rel, "unknown", caption_for(path.stem), hash_split(id, 0.05, 0.05)))
    if not items:
        raise DataError(f"{src}: no PNG or JPEG images (nor an {MANIFEST})")
    seen: dict[str, str] = {}
    for it in items:
        if it.id in seen:
            raise DataError(f"{src}: {it.source} and {seen[it.id]} map to the same id {it.id!r}")
        seen[it.id] = it.source
    return items


def check_image(path: Path):
    """The image as a loaded PIL image; DataError naming the file when it is empty, unreadable or too small."""
    from ..image3d.condition import open_image

    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    image = open_image(path)
    if min(image.size) < MIN_SIDE:
        raise DataError(f"{path}: image is {image.size[0]} x {image.size[1]} pixels (at least {MIN_SIDE} needed)")
    return image


def check_settings(out: Path, settings: LiftSettings, write: bool) -> None:
    """Bind the folder to one set of settings (`persist.bind_settings` on OUT/settings.json)."""
    bind_settings(out / "settings.json", asdict(settings), "shapes lifted", write)


def _signature(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _known_failures(out: Path, rank: int) -> dict[str, list[int] | None]:
    """{id: file signature when it failed} from this rank's failure log."""
    path = out / "failures" / f"r{rank:03d}.jsonl"
    known: dict[str, list[int] | None] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # torn by a crash mid-write
            if isinstance(rec, dict) and "id" in rec:
                known[rec["id"]] = rec.get("signature")
    return known


# ----------------------------------------------------------------------------------------------------
# The job
# ----------------------------------------------------------------------------------------------------


def _mesh_arrays(mesh, seed: int) -> dict[str, np.ndarray]:
    """Previews and surface samples of one lifted mesh (the arrays `lost dataset prepare` stores)."""
    views = render_views(mesh, size=PREVIEW_SIZE)
    points, normals = sample_surface(mesh, SURFACE_POINTS, seed)
    return {
        "renders": np.asarray(views.images, dtype=np.uint8),
        "depth": np.asarray(views.depth, dtype=np.float16),
        "mask": np.asarray(views.mask, dtype=bool),
        "mesh_vertices": np.asarray(mesh.vertices, dtype=np.float32),
        "mesh_faces": np.asarray(mesh.faces, dtype=np.int32),
        "surface_points": np.asarray(points, dtype=np.float32),
        "surface_normals": np.asarray(normals, dtype=np.float16),
    }


def _save_files(out: Path, id: str, mesh, renders: np.ndarray) -> None:
    from PIL import Image

    for sub in ("meshes", "previews"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "meshes" / f"{id}.glb") as tmp:
        mesh.export(tmp, file_type="glb")
    with atomic_path(out / "previews" / f"{id}.png") as tmp:
        Image.fromarray(np.concatenate(list(renders), axis=1)).save(tmp, format="PNG")


def lift_images(pipe, items: list[LiftImage], out: Path, settings: LiftSettings, *, batch_size: int = 4,
                rank: int = 0, world_size: int = 1, progress: Callable | None = None) -> LiftResult:
    """Lift this process's unfinished images into the store at `out` (see the module docstring).

    Args:
        pipe: an `ImageTo3D` (or None when nothing is left to do: `plan_lift` says so first).

    Raises:
        DataError: the folder holds shapes lifted with other settings.
    """
    out.mkdir(parents=True, exist_ok=True)
    todo, skipped, known = plan_lift(items, out, settings, rank, world_size)
    result = LiftResult(done=0, skipped=skipped, known_failures=known, total=len(items))
    if not todo:
        return result
    failures = FailureLog(out, rank)
    scale, shift = pipe.vae.config.latents_scale, pipe.vae.config.latents_shift

    def fail(item: LiftImage, reason: str) -> None:
        reason = reason if reason.startswith(str(item.path)) else f"{item.path}: {reason}"
        result.failed.append(failures.add(item.source, reason, id=item.id, signature=_signature(item.path)))

    with ShardWriter(out, LATENTS, rank=rank, shard_size=256) as zw, \
            ShardWriter(out, ITEMS, rank=rank, shard_size=64) as iw:
        for start in range(0, len(todo), batch_size):
            chunk, images = [], []
            for item in todo[start:start + batch_size]:
                try:
                    images.append(check_image(item.path))
                    chunk.append(item)
                except LostError as e:
                    fail(item, str(e))
            if chunk:
                z = pipe(images, steps=settings.steps, guidance=settings.guidance,
                         seed=item_seed(settings.seed, chunk[0].id))  # [B, C, H, W], the DiT's space
                meshes = pipe.decode(z, resolution=settings.resolution)
                z_vae = (z.float() / scale + shift).cpu().numpy()  # the latents table holds VAE latents
                for item, zi, mesh in zip(chunk, z_vae, meshes):
                    if mesh is None or len(mesh.faces) == 0 or not np.isfinite(zi).all():
                        fail(item, "the sampled latent decodes to no surface")
                        continue
                    arrays = _mesh_arrays(mesh, item_seed(settings.seed, item.id))
                    _save_files(out, item.id, mesh, arrays["renders"])
                    base = {"category": item.category, "split": item.split}
                    zw.add(item.id, {"z": zi}, {**base, "vae": settings.model})
                    zw.flush()  # the latent is on disk before the item counts as finished
                    iw.add(item.id, arrays, {**base, "caption": item.caption, "source": item.source,
                                             "lift": asdict(settings)})
                    iw.flush()
                    result.done += 1
            if progress:
                end = min(start + batch_size, len(todo))
                progress(end, len(todo), todo[end - 1].id)
    return result


def plan_lift(items: list[LiftImage], out: Path, settings: LiftSettings, rank: int = 0,
              world_size: int = 1) -> tuple[list[LiftImage], int, int]:
    """(images this process still has to lift, how many of its share are finished, known failures skipped)."""
    check_settings(out, settings, write=rank == 0)
    done = DatasetStore(out).done_ids(ITEMS) if out.is_dir() else set()
    failed = _known_failures(out, rank)
    mine = [it for k, it in enumerate(items) if k % world_size == rank]
    todo = [it for it in mine if it.id not in done]
    retry = [it for it in todo if it.id not in failed or failed[it.id] != _signature(it.path)]
    return retry, len(mine) - len(todo), len(todo) - len(retry)


def finalize_lift(out: Path) -> dict:
    """Rank 0 after every process is done: latent statistics and the manifest; returns the manifest.

    Both are rewritten only when the shards or failures changed since the manifest was written, so a re-run that
    lifted nothing leaves every file as it was.
    """
    store = DatasetStore(out)
    fingerprint = {table: sorted(p.name for p in (out / table).glob("shard-*.jsonl")) for table in (ITEMS, LATENTS)}
    fingerprint["failures"] = len(store.failures())
    old = store.manifest()
    if old is not None and old.get("fingerprint") == fingerprint:
        return old
    if store.has_table(LATENTS):
        latent_stats(out)
    return store.write_manifest({"created_by": "lost dataset lift", "fingerprint": fingerprint,
                                 "settings": json.loads((out / "settings.json").read_text(encoding="utf-8"))})
