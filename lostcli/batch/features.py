"""Teacher features of every shape (`lost dataset features`) and the teacher's text-render retrieval
(`lost teacher eval`): both run a `Teacher` over the 4 stored renders of each shape.

Table `features`, per item (renders in the order of `data.render.VIEWS`: front, right, back, left):

    global_views  float32 [4, D]        global embedding of each view, L2-normalised
    global        float32 [D]           mean of the 4 normalised view embeddings, L2-normalised
    spatial       float16 [4, g, g, D]  patch tokens adaptive-average-pooled from g0 x g0 to g x g, raw
                                        (float16 halves the disk; `StoreDataset` reads it as float32)

`features/stats.json` records the teacher (name, spec, D, g0, input size) and g; a resumed run must use
the same teacher spec and grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..data.render import VIEWS
from ..data.store import DatasetStore, ShardWriter
from ..errors import ConfigError, DataError
from ..models.teacher import OpenClipTeacher, Teacher

TABLE = "features"


@dataclass
class FeaturesConfig:
    teacher: str = ""  # teacher spec (load_teacher): built-in folder, timm:NAME[@FILE], open_clip:...
    grid: int = 4  # g: patch tokens are pooled to g x g per view
    image_size: int | None = None  # timm/OpenCLIP input size (None: the model's own; 224: DINOv2 grid 16)
    batch_size: int = 16  # shapes per forward pass (x4 views)


@dataclass
class FeaturesResult:
    done: int  # items embedded by this process in this run
    skipped: int  # items already in the table
    stats: dict  # what features/stats.json holds


def _load_renders(store: DatasetStore, ids: list[str]) -> torch.Tensor:
    """uint8 [B, 4, H, W, 3] renders of `ids`."""
    return torch.from_numpy(np.stack([store.load(i, keys=["renders"])["renders"] for i in ids]))


def pool_tokens(patches: torch.Tensor, grid: int) -> torch.Tensor:
    """[..., g0, g0, D] -> [..., g, g, D] by adaptive average pooling (exact block means when g divides g0)."""
    *lead, g0, g1, D = patches.shape
    x = patches.reshape(-1, g0, g1, D).permute(0, 3, 1, 2)  # [N, D, g0, g0]
    x = F.adaptive_avg_pool2d(x, grid)  # [N, D, g, g]
    return x.permute(0, 2, 3, 1).reshape(*lead, grid, grid, D)


def _stats_for(teacher: Teacher, grid: int) -> dict:
    return {"teacher": teacher.describe(), "grid": grid, "teacher_grid": teacher.grid,
            "embed_dim": teacher.embed_dim, "views": list(VIEWS),
            "arrays": {"global_views": "float32 [4, D], L2-normalised", "global": "float32 [D], L2-normalised",
                       "spatial": "float16 [4, g, g, D], pooled patch tokens"}}


def _check_same_teacher(root: Path, store: DatasetStore, stats: dict) -> None:
    """A resumed run must add features from the same teacher and grid as those already stored."""
    if not (Path(root) / TABLE / "stats.json").is_file():
        return
    old = store.read_stats(TABLE)
    old_spec = old.get("teacher", {}).get("spec")
    if old_spec != stats["teacher"]["spec"] or old.get("grid") != stats["grid"]:
        raise DataError(f"{Path(root) / TABLE}: holds features of teacher {old_spec} at grid {old.get('grid')}, "
                        f"not {stats['teacher']['spec']} at grid {stats['grid']}; delete the table to recompute")


@torch.no_grad()
def extract_features(root: Path, teacher: Teacher, *, grid: int = 4, batch_size: int = 16, rank: int = 0,
                     world_size: int = 1, progress: Callable | None = None) -> FeaturesResult:
    """Store teacher features of every item under table `features` (resumable, sharded by rank).

    Args:
        root: prepared dataset directory (items with `renders` u8 [4, H, W, 3]).
        teacher: any `Teacher` (its `spec` is recorded and checked on resume).
        grid: g, the pooled patch grid side (<= the teacher's g0).
        batch_size: shapes per forward pass.
        rank, world_size: this process's share of the items (item i goes to rank i % world_size).
        progress: optional callback (done, total, label).

    Raises:
        ConfigError: grid outside [1, g0].
        DataError: no prepared items, or a table of another teacher/grid.
    """
    if not 1 <= grid <= teacher.grid:
        raise ConfigError(f"grid: must be in [1, {teacher.grid}] for {teacher.name} (its patch grid), got {grid}")
    root = Path(root)
    store = DatasetStore(root)
    items = store.records()
    if not items:
        raise DataError(f"{root}: no prepared items (run lost dataset prepare first)")
    stats = _stats_for(teacher, grid)
    _check_same_teacher(root, store, stats)
    if rank == 0:
        store.write_stats(TABLE, {**stats, "items": None})  # claims the table for this teacher
    done = store.done_ids(TABLE)
    mine = [r for i, r in enumerate(items) if i % world_size == rank]
    todo = [r for r in mine if r["id"] not in done]
    count = 0
    with ShardWriter(root, TABLE, rank=rank, shard_size=256) as writer:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            glob, patches = teacher.forward_views(_load_renders(store, [r["id"] for r in chunk]))
            views = F.normalize(glob, dim=-1)  # [B, 4, D]
            mean = F.normalize(views.mean(dim=1), dim=-1)  # [B, D]
            spatial = pool_tokens(patches, grid)  # [B, 4, g, g, D]
            views, mean = views.cpu().numpy(), mean.cpu().numpy()
            spatial = spatial.cpu().to(torch.float16).numpy()
            for k, rec in enumerate(chunk):
                writer.add(rec["id"], {"global_views": views[k], "global": mean[k], "spatial": spatial[k]},
                           {"split": rec.get("split"), "category": rec.get("category"), "teacher": teacher.name})
            count += len(chunk)
            if progress:
                progress(count, len(todo), chunk[-1]["id"])
    return FeaturesResult(done=count, skipped=len(mine) - len(todo), stats=stats)


def finalize_features(root: Path) -> dict:
    """Rank 0, after every process finished: record the item count in features/stats.json."""
    store = DatasetStore(Path(root))
    stats = store.read_stats(TABLE)
    stats["items"] = len(store.done_ids(TABLE))
    store.write_stats(TABLE, stats)
    return stats


# ----------------------------------------------------------------------------------------------------
# Text <-> render retrieval of a teacher with a text tower
# ----------------------------------------------------------------------------------------------------


@torch.no_grad()
def shape_embeddings(root: Path, teacher: Teacher, ids: list[str], batch_size: int = 16,
                     progress: Callable | None = None) -> torch.Tensor:
    """One embedding per shape: the mean of its 4 L2-normalised view embeddings, L2-normalised. [N, D]"""
    store = DatasetStore(Path(root))
    out = []
    for start in range(0, len(ids), batch_size):
        glob, _ = teacher.forward_views(_load_renders(store, ids[start:start + batch_size]))
        out.append(F.normalize(F.normalize(glob, dim=-1).mean(dim=1), dim=-1).cpu())
        if progress:
            progress(min(start + batch_size, len(ids)), len(ids), ids[min(start + batch_size, len(ids)) - 1])
    return torch.cat(out)


def retrieval_scores(text: torch.Tensor, shape: torch.Tensor, captions: list[str],
                     categories: list[str]) -> dict[str, float]:
    """Top-1 retrieval both ways between N captions and N shapes (caption i belongs to shape i).

    A hit counts when the retrieved item carries the query's caption (its own, or an identical caption of
    another shape); category top-1 counts a retrieved item of the query's category.

    Args:
        text, shape: L2-normalised [N, D] embeddings.
    """
    sim = text @ shape.t()  # [N captions, N shapes]
    caps, cats = np.asarray(captions, dtype=object), np.asarray(categories, dtype=object)
    t2r = sim.argmax(dim=1).numpy()  # best shape per caption
    r2t = sim.argmax(dim=0).numpy()  # best caption per shape
    n = len(captions)
    same_cat = cats[:, None] == cats[None, :]
    return {
        "n": n,
        "text_to_render_top1": float(np.mean(caps[t2r] == caps)),
        "render_to_text_top1": float(np.mean(caps[r2t] == caps)),
        "text_to_render_category_top1": float(np.mean(cats[t2r] == cats)),
        "render_to_text_category_top1": float(np.mean(cats[r2t] == cats)),
        "chance_top1": 1.0 / n,
        "chance_category_top1": float(same_cat.mean()),  # a uniformly random pick's category hit rate
    }


def teacher_retrieval(root: Path, teacher: Teacher, split: str = "test", batch_size: int = 16,
                      progress: Callable | None = None) -> dict:
    """Text -> render and render -> text top-1 of a teacher with a text tower on one split.

    Each test caption is matched against all shapes of the split (shape embedding = mean of its 4 view
    embeddings) and each shape against all captions.

    Raises:
        DataError: the split is empty or has items without captions.
        ConfigError: the teacher has no text tower.
    """
    if not isinstance(teacher, OpenClipTeacher):
        raise ConfigError(f"{teacher.spec or teacher.name}: has no text tower (use a built-in or OpenCLIP teacher)")
    store = DatasetStore(Path(root))
    records = store.records(split=split)
    if not records:
        raise DataError(f"{root}: no items in split {split!r}")
    if any(not r.get("caption") for r in records):
        raise DataError(f"{root}: split {split!r} has items without captions")
    ids = [r["id"] for r in records]
    captions = [r["caption"] for r in records]
    categories = [str(r.get("category", "unknown")) for r in records]
    shape = shape_embeddings(root, teacher, ids, batch_size=batch_size, progress=progress)
    text = torch.cat([teacher.encode_text(captions[i:i + 256]).cpu() for i in range(0, len(captions), 256)])
    scores = retrieval_scores(text, shape, captions, categories)
    return {"teacher": teacher.describe(), "split": split, "categories": len(set(categories)),
            "unique_captions": len(set(captions)), **scores}
