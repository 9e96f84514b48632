"""How well a shape VAE reconstructs held-out shapes, against the "any other shape" baseline.

For each shape of a split: encode its stored surface samples (posterior mean), extract the decoded surface,
and measure Chamfer / F-score against the stored ground-truth mesh (docs/protocols.md: 100k points per surface,
GT frame). The baseline pairs every shape with a random *other* shape of the same split (a seeded
derangement): a VAE that learned nothing shape-specific cannot beat it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import trimesh

from ..data.render import render_views, save_grid
from ..data.store import DatasetStore
from ..errors import DataError
from ..latent.base import ShapeVAE, encode_points_for
from .geometry import N_POINTS, point_metrics, surface_points


@dataclass
class VaeEvalResult:
    rows: list[dict]  # per shape: id, category, chamfer, fscore_0.01, fscore_0.02, failed, baseline_chamfer
    summary: dict  # medians, means, failures, ratio
    seconds: float
    files: list[Path] = field(default_factory=list)


def _gt_mesh(store: DatasetStore, id_: str) -> trimesh.Trimesh:
    a = store.load(id_, keys=["mesh_vertices", "mesh_faces"])
    return trimesh.Trimesh(a["mesh_vertices"], a["mesh_faces"], process=False)


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation with no fixed point (n >= 2)."""
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(n)
        if n < 2 or not np.any(perm == np.arange(n)):
            return perm


@torch.no_grad()
def evaluate_vae(vae: ShapeVAE, root: Path, split: str = "test", resolution: int = 128, threshold: float = 0.0,
                 n_points: int = N_POINTS, limit: int | None = None, seed: int = 0, out_dir: Path | None = None,
                 grid: int = 8, progress: Callable | None = None) -> VaeEvalResult:
    """Reconstruction Chamfer/F-score of every shape in `split` and the random-other-shape baseline."""
    t0 = time.time()
    store = DatasetStore(Path(root))
    records = store.records(split=split)
    if limit:
        records = records[:limit]
    if len(records) < 2:
        raise DataError(f"{root}: split {split!r} has {len(records)} shapes; need at least 2")
    vae = vae.eval()
    dev = next(vae.parameters()).device
    n_enc = encode_points_for(vae)
    gt_points, recs, rows = [], [], []
    for i, rec in enumerate(records):
        a = store.load(rec["id"], keys=["surface_points", "surface_normals"])
        pts = torch.from_numpy(np.asarray(a["surface_points"][:n_enc], np.float32))[None].to(dev)
        nrm = torch.from_numpy(np.asarray(a["surface_normals"][:n_enc], np.float32))[None].to(dev)
        mesh = vae.to_mesh(vae.encode(pts, nrm), resolution=resolution, threshold=threshold)
        gt = _gt_mesh(store, rec["id"])
        gt_pts = surface_points(gt, n_points, seed + 1)
        pred_pts = surface_points(mesh, n_points, seed) if mesh is not None and len(mesh.faces) else np.zeros((0, 3))
        m = point_metrics(pred_pts, gt_pts)
        gt_points.append(gt_pts)
        recs.append(mesh)
        rows.append({"id": rec["id"], "category": rec.get("category"), **m.as_dict()})
        if progress:
            progress(i + 1, len(records), rec["id"])
    perm = derangement(len(records), seed)
    for i, row in enumerate(rows):
        # another shape's ground-truth samples against this one's (both already drawn above)
        row["baseline_id"] = records[perm[i]]["id"]
        row["baseline_chamfer"] = point_metrics(gt_points[perm[i]], gt_points[i]).chamfer
    ok = [r for r in rows if not r["failed"]]
    med = float(np.median([r["chamfer"] for r in ok])) if ok else float("nan")
    base = float(np.median([r["baseline_chamfer"] for r in rows]))
    summary = {
        "split": split, "n": len(rows), "failures": len(rows) - len(ok), "resolution": resolution,
        "median_chamfer": med, "mean_chamfer": float(np.mean([r["chamfer"] for r in ok])) if ok else float("nan"),
        "median_fscore_0.01": float(np.median([r["fscore_0.01"] for r in rows])),
        "median_fscore_0.02": float(np.median([r["fscore_0.02"] for r in rows])),
        "median_baseline_chamfer": base, "ratio_baseline_over_recon": base / med if med > 0 else float("inf"),
        "points_per_surface": n_points, "encoder_points": n_enc, "seed": seed,
    }
    result = VaeEvalResult(rows, summary, time.time() - t0)
    if out_dir is not None:
        result.files = _write(result, records, recs, store, Path(out_dir), grid)
    return result


def _write(result: VaeEvalResult, records, recs, store: DatasetStore, out: Path, grid: int) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    js = out / "vae_eval.json"
    js.write_text(json.dumps({"summary": result.summary, "rows": result.rows}, indent=1))
    s = result.summary
    md = out / "vae_eval.md"
    md.write_text(
        f"# Shape VAE reconstruction ({s['split']} split, {s['n']} shapes)\n\n"
        f"Chamfer distance is shown x10^-2 (printed number x 10^-2 = raw value), F-score at tau 0.01 / 0.02, "
        f"{s['points_per_surface']} surface points per mesh, marching cubes at {s['resolution']}^3.\n\n"
        "| | median CD (x10^-2) | mean CD (x10^-2) | median F@0.01 | median F@0.02 | failures |\n|---|---|---|---|---|---|\n"
        f"| VAE reconstruction | {s['median_chamfer'] * 100:.3f} | {s['mean_chamfer'] * 100:.3f} | "
        f"{s['median_fscore_0.01']:.3f} | {s['median_fscore_0.02']:.3f} | {s['failures']} |\n"
        f"| random other shape (baseline) | {s['median_baseline_chamfer'] * 100:.3f} | | | | |\n\n"
        f"Baseline / reconstruction median CD ratio: **{s['ratio_baseline_over_recon']:.1f}x**.\n")
    tiles, labels = [], []
    for rec, mesh in list(zip(records, recs))[:grid]:
        gt = render_views(_gt_mesh(store, rec["id"]), size=128, views=("front", "right"))
        pred = render_views(mesh if mesh is not None else trimesh.Trimesh(), size=128, views=("front", "right"))
        tiles.append(np.concatenate([gt.images[0], pred.images[0], gt.images[1], pred.images[1]], axis=1))
        cd = next(r["chamfer"] for r in result.rows if r["id"] == rec["id"])
        labels.append(f"{rec.get('category')} {rec['id']}: input | VAE (front), input | VAE (right); CD {cd * 100:.2f}e-2")
    png = save_grid(tiles, out / "recon_grid.png", labels=labels, ncols=2)
    return [js, md, Path(png)]
