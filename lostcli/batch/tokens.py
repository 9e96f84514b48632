"""Token jobs over files and datasets: decode a tokens file to meshes and previews (`lost decode`), and
cache every shape's tokens for GPT training (`lost dataset tokens`).

Table `tokens`, per item: "tokens" float32 [R, token_dim], all R tokens of the shape (GPT training reads any
prefix). `tokens/stats.json` records the bundle's model id; a resumed run must use the same model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..data.store import DatasetStore, FailureLog, ShardWriter
from ..errors import DataError
from ..persist import atomic_write_json
from ..pipeline import LostPipeline, Tokens, to_source_frame

TABLE = "tokens"


# ----------------------------------------------------------------------------------------------------
# Decoding a tokens file
# ----------------------------------------------------------------------------------------------------


@dataclass
class DecodeResult:
    outputs: list[dict]  # per prefix: {"k", "mesh" (path or None), "empty", "vertices", "faces", "seconds"}
    preview: Path | None  # the PNG written, if any
    record: Path  # the JSON record of this decode
    seconds: float

    @property
    def empty(self) -> list[int]:
        """Prefix lengths whose decode found no surface."""
        return [o["k"] for o in self.outputs if o["empty"]]


def prefix_path(out: Path, k: int) -> Path:
    """`shape.glb` -> `shape_k4.glb`: the mesh of prefix k in a progressive decode."""
    return out.with_name(f"{out.stem}_k{k}{out.suffix}")


def decode_to_files(
    pipeline: LostPipeline,
    tokens: Tokens,
    ks: list[int],
    out: Path,
    *,
    progressive: bool = False,
    preview: Path | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    seed: int = 0,
    resolution: int = 128,
    source_frame: bool = True,
    tokens_file: str | None = None,
    progress: Callable | None = None,
) -> DecodeResult:
    """Decode prefixes of `tokens` and write one mesh per prefix, a preview PNG and a JSON record.

    Every prefix is decoded from the same seeded noise, so `--tokens 4` and the k = 4 mesh of a
    progressive run are the same shape. Meshes are written in the source mesh's frame when the tokens
    carry its normalisation and `source_frame`; previews always show the unit frame (docs/protocols.md cameras).
    A prefix whose latent holds no surface writes no mesh; it is reported in the result and the record.

    Args:
        ks: prefix lengths (each <= tokens.k); one, or several with `progressive`.
        out: mesh path (.glb/.obj/.ply); with `progressive`, prefix k goes to `prefix_path(out, k)`.
        preview: PNG path: one row of the four views per prefix, labelled "k = ...".
    """
    from ..data.mesh import export_mesh
    from ..data.render import render_views, save_grid, views_strip

    t0 = time.time()
    outputs, strips, labels = [], [], []
    for i, k in enumerate(ks):
        t1 = time.time()
        mesh = pipeline.decode(tokens.tokens, k=k, steps=steps, guidance=guidance, seed=seed,
                               resolution=resolution)[0]
        path = prefix_path(out, k) if progressive else out
        entry = {"k": k, "mesh": None, "empty": mesh is None, "vertices": 0, "faces": 0}
        if mesh is not None:
            frame = to_source_frame(mesh, tokens.normalization if source_frame else None)
            export_mesh(frame, path)
            entry.update(mesh=str(path), vertices=int(len(mesh.vertices)), faces=int(len(mesh.faces)))
        if preview is not None:
            strip = views_strip(render_views(mesh)) if mesh is not None else None
            strips.append(strip)
            labels.append(f"k = {k}" + (" (no surface)" if mesh is None else ""))
        entry["seconds"] = round(time.time() - t1, 3)
        outputs.append(entry)
        if progress:
            progress(i + 1, len(ks), f"k = {k}")
    if preview is not None:
        shape = next((s.shape for s in strips if s is not None), (224, 4 * 224, 3))
        blank = np.full(shape, 255, dtype=np.uint8)  # an empty decode is a white row, labelled
        save_grid([s if s is not None else blank for s in strips], preview, labels=labels, ncols=1)
    record = out.with_name(f"{out.stem}.decode.json")
    atomic_write_json(record, {
        "tokens_file": tokens_file, "source": tokens.source, "model_id": pipeline.model_id, "ks": ks,
        "steps": steps if steps is not None else pipeline.sampling["steps"],
        "guidance": guidance if guidance is not None else pipeline.sampling["guidance"],
        "scheduler": pipeline.sampling["scheduler"], "seed": seed, "resolution": resolution,
        "frame": "source" if source_frame and tokens.normalization is not None else "unit",
        "outputs": outputs, "preview": str(preview) if preview is not None else None,
        "empty": [o["k"] for o in outputs if o["empty"]],
    })
    return DecodeResult(outputs, preview, record, time.time() - t0)


# ----------------------------------------------------------------------------------------------------
# Dataset tokens
# ----------------------------------------------------------------------------------------------------


@dataclass
class TokensResult:
    done: int  # items tokenized by this process in this run
    skipped: int  # items already in the table
    failed: list[str] = field(default_factory=list)  # ids whose tokens were not finite (recorded, not stored)


def _stats_for(pipeline: LostPipeline, points: int, bundle: str) -> dict:
    return {"model_id": pipeline.model_id, "num_tokens": pipeline.num_tokens, "token_dim": pipeline.token_dim,
            "points": points, "bundle": bundle,
            "arrays": {"tokens": f"float32 [{pipeline.num_tokens}, {pipeline.token_dim}], all R tokens in order"}}


def _check_same_model(root: Path, store: DatasetStore, stats: dict) -> None:
    """A resumed run must add tokens of the same model as those already stored."""
    if not (Path(root) / TABLE / "stats.json").is_file():
        return
    old = store.read_stats(TABLE).get("model_id")
    if old != stats["model_id"]:
        raise DataError(f"{Path(root) / TABLE}: holds tokens of model {str(old)[:12]}, not of this bundle "
                        f"({stats['model_id'][:12]}); delete the table to recompute")


@torch.no_grad()
def tokenize_dataset(
    root: Path,
    pipeline: LostPipeline,
    *,
    points: int | None = None,
    batch_size: int = 16,
    rank: int = 0,
    world_size: int = 1,
    bundle: str = "",
    progress: Callable | None = None,
) -> TokensResult:
    """Store all R tokens of every prepared item under table `tokens` (resumable, sharded by rank).

    Tokens come from the item's stored surface samples (first `points`, default: as the VAE was trained)
    through the bundle's own VAE, exactly as `LostPipeline.tokenize` with (points, normals).

    Raises:
        DataError: no prepared items, or a table holding another model's tokens.
    """
    store = DatasetStore(root)
    items = store.records()
    if not items:
        raise DataError(f"{root}: no prepared items (run lost dataset prepare first)")
    n = points or pipeline.num_points
    stats = _stats_for(pipeline, n, bundle)
    _check_same_model(root, store, stats)
    if rank == 0 and not (Path(root) / TABLE / "stats.json").is_file():
        store.write_stats(TABLE, stats)  # before any shard: a crashed run is still checked on resume
    done = store.done_ids(TABLE)
    mine = [r for i, r in enumerate(items) if i % world_size == rank]  # this process's share
    todo = [r for r in mine if r["id"] not in done]
    failures = FailureLog(root, rank)
    result = TokensResult(done=0, skipped=len(mine) - len(todo))
    with ShardWriter(Path(root), TABLE, rank=rank, shard_size=256) as writer:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            arrays = [store.load(r["id"], keys=["surface_points", "surface_normals"]) for r in chunk]
            pts = torch.from_numpy(np.stack([a["surface_points"][:n] for a in arrays]).astype(np.float32))
            nrm = torch.from_numpy(np.stack([a["surface_normals"][:n] for a in arrays]).astype(np.float32))
            tokens = pipeline.tokenize_points(pts, nrm).cpu().numpy()  # [B, R, T]
            for rec, t in zip(chunk, tokens):
                if not np.isfinite(t).all():
                    failures.add(rec.get("file", rec["id"]), "tokens contain NaN or inf", id=rec["id"], stage=TABLE)
                    result.failed.append(rec["id"])
                    continue
                writer.add(rec["id"], {"tokens": t}, {"split": rec.get("split"), "category": rec.get("category"),
                                                      "model_id": pipeline.model_id})
                result.done += 1
            if progress:
                progress(start + len(chunk), len(todo), chunk[-1]["id"])
    return result

