"""`lost dataset latents`: posterior means of every shape, plus per-channel statistics of the train split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..data.store import DatasetStore, ShardWriter
from ..errors import DataError
from ..latent.base import ShapeVAE, encode_points_for

TABLE = "latents"


@dataclass
class LatentsResult:
    done: int  # items encoded by this process in this run
    skipped: int  # items already in the table
    stats: dict | None  # per-channel statistics (rank 0 after finalize)


@torch.no_grad()
def encode_dataset(root: Path, vae: ShapeVAE, *, points: int | None = None, batch_size: int = 16, rank: int = 0,
                   world_size: int = 1, device: str = "cpu", vae_name: str = "",
                   progress: Callable | None = None) -> LatentsResult:
    """Store z = posterior mean [C, H, W] for every item under table `latents` (resumable, sharded)."""
    store = DatasetStore(root)
    items = store.records()
    if not items:
        raise DataError(f"{root}: no prepared items (run lost dataset prepare first)")
    done = store.done_ids(TABLE)
    mine = [r for i, r in enumerate(items) if i % world_size == rank]  # this process's share
    todo = [r for r in mine if r["id"] not in done]
    n = points or encode_points_for(vae)
    vae = vae.to(device).eval()
    count = 0
    with ShardWriter(Path(root), TABLE, rank=rank, shard_size=256) as writer:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            arrays = [store.load(r["id"], keys=["surface_points", "surface_normals"]) for r in chunk]
            pts = torch.from_numpy(np.stack([a["surface_points"][:n] for a in arrays])).float().to(device)
            nrm = torch.from_numpy(np.stack([a["surface_normals"][:n] for a in arrays]).astype(np.float32)).to(device)
            z = vae.encode(pts, nrm).float().cpu().numpy()  # [B, C, H, W] posterior means
            for rec, zi in zip(chunk, z):
                writer.add(rec["id"], {"z": zi}, {"id": rec["id"], "split": rec.get("split"),
                                                  "category": rec.get("category"), "vae": vae_name})
            count += len(chunk)
            if progress:
                progress(count, len(todo), chunk[-1]["id"])
    return LatentsResult(done=count, skipped=len(mine) - len(todo), stats=None)


def latent_stats(root: Path, split: str = "train") -> dict:
    """Per-channel mean/std of the stored latents over `split` (all items if the split is empty)."""
    store = DatasetStore(root)
    if not store.ids(split=split, table=TABLE):
        split = None  # e.g. a folder of real meshes without a train split: use everything
    total, sum_, sq, n_items = 0, 0.0, 0.0, 0
    for _, arrays in store.iter_table(TABLE, keys=["z"], split=split):
        z = arrays["z"].astype(np.float64)  # [C, H, W]
        flat = z.reshape(z.shape[0], -1)
        sum_, sq = sum_ + flat.sum(1), sq + (flat ** 2).sum(1)
        total += flat.shape[1]
        n_items += 1
    if total == 0:
        raise DataError(f"{root}: no latents stored")
    mean = sum_ / total
    std = np.sqrt(np.maximum(sq / total - mean ** 2, 1e-12))
    stats = {"mean": mean.tolist(), "std": std.tolist(), "split": split or "all", "items": n_items,
             "latent_shape": list(z.shape)}
    store.write_stats(TABLE, stats)
    return stats
