"""The reconstruction table (docs/protocols.md, paper Table 2): quality of decoded token prefixes against k.

For every shape of a split: tokenize its stored unit-frame surface samples (all R tokens), decode the first
k tokens for each requested k (batched over shapes, one seeded noise per batch shared by every k), extract
the mesh, and measure it against the stored ground-truth mesh: Chamfer distance and F-score (RAW values,
100k points per surface, GT frame), the render classifier's category accuracy on its 4 views, when a
feature network is given the per-view cosine similarity of its global embeddings to the real renders, and
per row the Frechet distance / KID of all reconstructions' renders against the real renders of the same
shapes (`eval/fd.py`, the network named). Two reference rows come with every table: "vae" (the shape VAE's own reconstruction, the upper
bound) and "mean" (the decoded mean latent of the train split, the "no information" floor).

Row statistics: Chamfer is the median over reconstructions that have a surface (failures are counted in
`failures`, never dropped silently); F-scores are medians over all shapes (a failure scores 0); class
accuracy counts a failure as wrong; "one piece" is the share of shapes whose reconstruction keeps at least 95% of
its surface in one connected part (`data/mesh.py` `largest_part_share`; a failure is not in one piece; the
built-in shapes are one piece each, so a lower share means parts came apart, e.g. a table top above its stem).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import trimesh

from ..data.mesh import largest_part_share, one_piece_share
from ..data.render import render_views, save_grid
from ..data.store import DatasetStore
from ..errors import ConfigError, DataError
from ..models.classifier import LoadedClassifier, classify_views, label_indices, shape_probabilities
from ..persist import atomic_write_json
from .bootstrap import DRAWS, mean_change_interval, median_intervals, shape_change_intervals
from .classifier import classifier_report
from .fd import (RenderDistance, RenderFeatures, feature_network, local_inception_weights, small_sample_warning,
                 teacher_features)
from .geometry import N_POINTS, failed_metrics, point_metrics, surface_points, surface_tree

REFERENCE_ROWS = ("vae", "mean")


@dataclass
class ReconConfig:
    split: str = "test"  # dataset split to reconstruct; "all": every item (e.g. a folder of your own meshes)
    ks: list[int | str] = field(default_factory=lambda: [1, 4, 16, "all"])  # prefix lengths; "all" = R
    steps: int | None = None  # decoder sampling steps; None: the bundle's default
    guidance: float | None = None  # classifier-free guidance scale; None: the bundle's default
    temperature: float | None = None  # decoder starting-noise scale; None: the bundle's default
    resolution: int = 64  # marching-cubes grid
    limit: int | None = None  # only the first N shapes of the split
    n_points: int = N_POINTS  # surface samples per mesh for Chamfer / F-score
    batch_size: int = 8  # shapes tokenized and decoded together
    seed: int = 0  # decoder noise of the batch starting at shape s: seed + s; surface sampling: seed
    render_size: int | None = None  # reconstruction renders; None: the size of the stored (real) renders
    grid: int = 6  # shapes shown in each row's PNG
    mean_items: int = 256  # train shapes averaged into the mean latent (evenly spaced)
    fd_network: str = "auto"  # FD/KID features: "auto", "none", "inception", "classifier" or a teacher spec


@dataclass
class ReconResult:
    rows: list[dict]  # one per k, then "vae" and "mean"
    report: dict  # what recon.json holds
    shapes: list[dict]  # per shape and row: chamfer, fscores, failed, predicted category
    files: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def parse_tokens(text: str) -> list[int | str]:
    """"1,4,16,all" -> [1, 4, 16, "all"] (ConfigError on anything else)."""
    out: list[int | str] = []
    for part in (p.strip() for p in text.split(",")):
        if part == "all":
            out.append("all")
        elif part.isdigit() and int(part) >= 1:
            out.append(int(part))
        else:
            raise ConfigError(f"--tokens {text}: expected positive integers or 'all', comma-separated")
    if not out:
        raise ConfigError("--tokens: give at least one prefix length")
    return out


def resolve_ks(ks: list[int | str], num_tokens: int) -> list[int]:
    """Sorted distinct prefix lengths with "all" = R. Lengths above R are dropped when others remain (the
    paper's 1,4,16,64,all list on a model with R < 64); ConfigError when none remains or one is < 1."""
    wanted = sorted({num_tokens if k == "all" else int(k) for k in ks})
    out = [k for k in wanted if k <= num_tokens]
    if not out or out[0] < 1:
        raise ConfigError(f"tokens: prefix lengths {wanted} must lie in 1..{num_tokens} (the model's R)")
    return out


# ----------------------------------------------------------------------------------------------------
# The evaluation
# ----------------------------------------------------------------------------------------------------


@torch.no_grad()
def mean_latent(store: DatasetStore, vae, num_points: int, max_items: int, split: str = "train") -> tuple[torch.Tensor, dict]:
    """Mean of the VAE's posterior-mean latents over (up to `max_items` evenly spaced) shapes of a split.

    Encoded with the given VAE (not read from a stored table) so the floor always belongs to this model.

    Returns:
        (z_mean [C, H, W] on the VAE's device, {"split", "shapes"}).
    """
    records = store.records(split=split)
    if not records:
        split, records = "all", store.records()
    pick = np.unique(np.linspace(0, len(records) - 1, min(max_items, len(records))).round().astype(int))
    dev = next(vae.parameters()).device
    total, n = None, 0
    for start in range(0, len(pick), 32):
        arrays = [store.load(records[i]["id"], keys=["surface_points", "surface_normals"]) for i in pick[start:start + 32]]
        pts = torch.from_numpy(np.stack([a["surface_points"][:num_points] for a in arrays]).astype(np.float32))
        nrm = torch.from_numpy(np.stack([a["surface_normals"][:num_points] for a in arrays]).astype(np.float32))
        z = vae.encode(pts.to(dev), nrm.to(dev)).float().sum(dim=0)
        total = z if total is None else total + z
        n += len(arrays)
    return total / n, {"split": split, "shapes": n}


class _Row:
    """Per-shape results of one table row."""

    def __init__(self, name: int | str) -> None:
        self.name = name
        self.metrics: list[dict] = []  # SurfaceMetrics.as_dict per shape
        self.hits: list[bool] = []  # classifier correct, per shape with a known category
        self.sims: list[float] = []  # feature similarity per shape
        self.tiles: list[np.ndarray] = []  # preview tiles (first `grid` shapes)
        self.labels: list[str] = []  # one caption per tile
        self.distance: RenderDistance | None = None  # this row's renders against the real ones

    def summary(self) -> dict:
        ok = [m["chamfer"] for m in self.metrics if not m["failed"]]
        d = self.distance.compute() if self.distance is not None else None
        return {
            "k": self.name,
            "chamfer": _num(np.median(ok)) if ok else None,
            "chamfer_mean": _num(np.mean(ok)) if ok else None,
            "fscore_0.01": _num(np.median([m["fscore_0.01"] for m in self.metrics])),
            "fscore_0.02": _num(np.median([m["fscore_0.02"] for m in self.metrics])),
            "class_acc": _num(np.mean(self.hits)) if self.hits else None,
            "class_n": len(self.hits),  # shapes whose category the classifier knows
            "feature_sim": _num(np.mean(self.sims)) if self.sims else None,
            "fd": _num(d.fd) if d is not None else None,
            "kid": _num(d.kid) if d is not None and d.kid is not None else None,
            "kid_std": _num(d.kid_std) if d is not None and d.kid_std is not None else None,
            "failures": sum(m["failed"] for m in self.metrics),
            # decoded rows only (the mean-latent floor is a point set)
            "one_piece": (one_piece_share([m["largest_part"] for m in self.metrics])
                          if self.metrics and all("largest_part" in m for m in self.metrics) else None),
            "n": len(self.metrics),
        }


def add_chamfer_intervals(table: list[dict], rows: dict[int | str, _Row], ks: list[int]) -> None:
    """Put bootstrap intervals in the summary rows (`eval/bootstrap.py`, over the shapes):
    `chamfer_ci` of every row's median Chamfer, and on each token row after the first `chamfer_change` =
    its median minus the previous k's, with the paired interval `chamfer_change_ci` (below 0 throughout:
    the fall from the previous k is larger than the noise of which shapes were drawn); and the per-shape form
    `chamfer_shape_change` (median over shapes of CD_k / CD_prev - 1), its interval `chamfer_shape_change_ci`
    and `chamfer_fall_share` (the share of shapes whose Chamfer fell)."""
    names = list(rows)
    assert names[:len(ks)] == ks  # token rows first, in order: their consecutive changes are the first ones
    cd = np.array([[np.nan if m["failed"] else m["chamfer"] for m in rows[name].metrics] for name in names]).T
    if cd.size == 0:
        return
    ci, change, change_ci = median_intervals(cd)
    shape_change, shape_ci, fall = shape_change_intervals(cd[:, :len(ks)])
    by_name = {r["k"]: r for r in table}
    for name, c in zip(names, ci):
        by_name[name]["chamfer_ci"] = [_num(v) for v in c]
    for k, d, c in zip(ks[1:], change, change_ci):  # zip stops at the last token row (no token -> "vae" change)
        by_name[k]["chamfer_change"] = _num(d)
        by_name[k]["chamfer_change_ci"] = [_num(v) for v in c]
    for k, d, c, f in zip(ks[1:], shape_change, shape_ci, fall):
        by_name[k]["chamfer_shape_change"] = _num(d)
        by_name[k]["chamfer_shape_change_ci"] = [_num(v) for v in c]
        by_name[k]["chamfer_fall_share"] = _num(f)


def _num(x: Any) -> float | None:
    """A JSON-safe float (NaN/inf -> None)."""
    x = float(x)
    return x if math.isfinite(x) else None


def distance_network(spec: str, classifier: LoadedClassifier | None, teacher=None) -> RenderFeatures | None:
    """The FD/KID network of a reconstruction table: `spec` as `eval.fd.feature_network`, except that
    "none" measures no FD and "auto" without Inception weights and without a classifier falls back to the
    similarity teacher (if any, else no FD)."""
    if spec == "none":
        return None
    if spec == "auto" and local_inception_weights() is None and classifier is None:
        return teacher_features(teacher) if teacher is not None else None
    return feature_network(spec, classifier.model if classifier is not None else None)


def _metrics(mesh: trimesh.Trimesh | None, gt_points: np.ndarray, n: int, seed: int, gt_tree=None) -> dict:
    if mesh is None or len(mesh.faces) == 0 or mesh.area <= 0:
        return {**failed_metrics().as_dict(), "largest_part": None}
    return {**point_metrics(surface_points(mesh, n, seed), gt_points, gt_tree=gt_tree).as_dict(),
            "largest_part": largest_part_share(mesh)}


def _render(mesh: trimesh.Trimesh | None, size: int) -> np.ndarray:
    """uint8 [4, size, size, 3] (white for a failed reconstruction)."""
    return render_views(mesh if mesh is not None else trimesh.Trimesh(), size=size).images


def _tile(gt: np.ndarray, pred: np.ndarray, size: int = 112) -> np.ndarray:
    """Preview tile [size, 4 * size, 3]: GT | reconstruction for the front, then the right view."""
    from PIL import Image

    def small(img: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))

    return np.concatenate([small(gt[0]), small(pred[0]), small(gt[1]), small(pred[1])], axis=1)


@dataclass
class _Context:
    """What every batch of a reconstruction table shares."""

    cfg: ReconConfig
    store: DatasetStore
    size: int  # render size (that of the stored ground-truth renders)
    classifier: LoadedClassifier | None
    classes: list[str]
    labels: np.ndarray | None  # category index per evaluated shape (-1: unknown to the classifier)
    teacher: Any
    mean_pts: np.ndarray | None  # surface samples of the decoded mean latent (None: no surface)
    mean_img: np.ndarray  # its renders [1, 4, S, S, 3]
    mean_logits: torch.Tensor | None
    mean_feat: torch.Tensor | None
    reference: RenderDistance | None
    mean_info: dict = field(default_factory=dict)  # which shapes the mean latent averages


def compare_name(label: str, k: int) -> str:
    """Row key of prefix k of the compared bundle (`--compare LABEL=BUNDLE`)."""
    return f"{label}:{k}"


def evaluate_recon(pipe, root: str | Path, cfg: ReconConfig, classifier: LoadedClassifier | None = None,
                   teacher=None, out_dir: str | Path | None = None, command: str = "",
                   progress: Callable | None = None, compare: tuple[str, Any] | None = None) -> ReconResult:
    """Build the reconstruction table of `pipe` (a `LostPipeline`) on a split of a prepared dataset.

    Args:
        pipe: the bundle's pipeline (VAE + tokenizer).
        root: prepared dataset directory (surface samples, GT meshes, renders, categories).
        cfg: what to evaluate and how.
        classifier: the render classifier (class accuracy); None leaves class_acc empty.
        teacher: optional feature network (`models.teacher.Teacher`) for render similarity.
        out_dir: where recon.json, recon.md and the PNGs go (None: nothing written).
        command: the command line, stored in the report.
        progress: `progress(done, total, label)` per shape.
        compare: (label, pipeline) of a second bundle on the same shape VAE (e.g. an ablation): its prefix rows
            are decoded from the same shapes with the same seeds, and the report gains a "comparison" of the
            two per k with paired intervals (`comparison_rows`).
    """
    t0 = time.time()
    store = DatasetStore(Path(root))
    records = store.records(split=None if cfg.split == "all" else cfg.split)[: cfg.limit or None]
    if not records:
        raise DataError(f"{root}: no items in split {cfg.split!r}")
    ks, other_ks, dropped = _prefix_lengths(pipe, cfg, compare)
    names = [*ks, *REFERENCE_ROWS, *(compare_name(compare[0], k) for k in other_ks)]
    rows = {name: _Row(name) for name in names}
    ctx = _context(pipe, store, records, cfg, classifier, teacher)
    for row in rows.values():
        row.distance = ctx.reference.sharing_reference() if ctx.reference is not None else None

    shapes: list[dict] = []
    t_decode = t_measure = 0.0
    for start in range(0, len(records), cfg.batch_size):
        chunk = records[start:start + cfg.batch_size]
        arrays = [store.load(r["id"], keys=["surface_points", "surface_normals", "mesh_vertices", "mesh_faces",
                                            "renders"]) for r in chunk]
        t1 = time.time()
        meshes = _decode_batch(pipe, arrays, ks, cfg, cfg.seed + start)
        if compare is not None:
            theirs = _decode_batch(compare[1], arrays, other_ks, cfg, cfg.seed + start, with_vae=False)
            meshes.update({compare_name(compare[0], k): v for k, v in theirs.items()})
        t2 = time.time()
        shapes.extend(_measure_batch(ctx, chunk, arrays, meshes, rows, start))
        t_decode, t_measure = t_decode + t2 - t1, t_measure + time.time() - t2
        if progress:
            progress(start + len(chunk), len(records), chunk[-1]["id"])

    table = [row.summary() for row in rows.values()]
    add_chamfer_intervals(table, rows, ks)
    report = {
        "rows": table,
        **classifier_report(classifier),
        "feature_network": getattr(teacher, "name", None),
        "fd_network": ctx.reference.features.name if ctx.reference is not None else None,
        "fd_metric": ctx.reference.features.metric_name if ctx.reference is not None else None,
        "fd_warning": small_sample_warning(ctx.reference.features.metric_name, len(records), len(records))
        if ctx.reference is not None else None,
        "command": command,
        "protocol": "docs/protocols.md reconstruction table; chamfer is RAW (multiply by 100 for the paper's x10^-2 "
                    "figure); medians over shapes (chamfer over non-failed reconstructions)",
        "split": cfg.split, "n": len(records), "model_id": pipe.model_id, "num_tokens": pipe.num_tokens,
        "dropped_ks": dropped,  # asked for, but longer than the model's R
        "settings": _settings(pipe, cfg, ks, ctx.size),
        "mean_latent": ctx.mean_info,
        "seconds": {"decode": round(t_decode, 2), "measure": round(t_measure, 2), "total": round(time.time() - t0, 2)},
    }
    if compare is not None:
        report["comparison"] = {"name": compare[0], "model_id": compare[1].model_id,
                                "rows": comparison_rows(rows, [k for k in ks if k in other_ks], compare[0])}
    result = ReconResult(table, report, shapes, seconds=time.time() - t0)
    if out_dir is not None:
        result.files = write_report(result, rows, Path(out_dir))
    return result


def _prefix_lengths(pipe, cfg: ReconConfig, compare: tuple[str, Any] | None) -> tuple[list[int], list[int], list[int]]:
    """(this bundle's prefix lengths, the compared bundle's, the asked-for lengths above this bundle's R);
    ConfigError when the compared bundle decodes another shape VAE's latents."""
    ks = resolve_ks(cfg.ks, pipe.num_tokens)
    dropped = sorted({int(k) for k in cfg.ks if k != "all" and int(k) > pipe.num_tokens})
    other_ks = resolve_ks(cfg.ks, compare[1].num_tokens) if compare is not None else []
    if compare is not None and list(compare[1].vae.latent_shape) != list(pipe.vae.latent_shape):
        raise ConfigError(f"--compare {compare[0]}: its shape VAE's latent {list(compare[1].vae.latent_shape)} is "
                          f"not this bundle's {list(pipe.vae.latent_shape)}")
    return ks, other_ks, dropped


def _settings(pipe, cfg: ReconConfig, ks: list[int], size: int) -> dict:
    """The report's "settings": what was decoded and measured, and how."""
    def bundle_default(value, key: str):
        return value if value is not None else pipe.sampling[key]

    return {"ks": ks, "steps": int(bundle_default(cfg.steps, "steps")),
            "guidance": float(bundle_default(cfg.guidance, "guidance")),
            "temperature": float(bundle_default(cfg.temperature, "temperature")),
            "resolution": cfg.resolution, "points_per_surface": cfg.n_points, "encoder_points": pipe.num_points,
            "seed": cfg.seed, "batch_size": cfg.batch_size, "render_size": size, "scheduler": pipe.sampling.get("scheduler")}


def _context(pipe, store: DatasetStore, records: list[dict], cfg: ReconConfig, classifier: LoadedClassifier | None,
             teacher) -> _Context:
    """The render size, class labels, FD reference and the decoded mean latent (the floor), once per table."""
    classes = classifier.model.categories if classifier is not None else []
    labels = label_indices([r.get("category") for r in records], classes) if classifier is not None else None
    # same cameras, shading and size as the stored ground-truth renders (docs/protocols.md "Renders")
    size = cfg.render_size or int(store.load(records[0]["id"], keys=["renders"])["renders"].shape[1])
    features = distance_network(cfg.fd_network, classifier, teacher)
    reference = RenderDistance(features, seed=cfg.seed) if features is not None else None
    z_mean, mean_info = mean_latent(store, pipe.vae, pipe.num_points, cfg.mean_items)
    mean_mesh = pipe.vae.to_mesh(z_mean, resolution=cfg.resolution)
    mean_pts = (surface_points(mean_mesh, cfg.n_points, cfg.seed)
                if mean_mesh is not None and len(mean_mesh.faces) and mean_mesh.area > 0 else None)
    mean_img = _render(mean_mesh, size)[None]  # [1, 4, S, S, 3]
    return _Context(cfg, store, size, classifier, classes, labels, teacher, mean_pts, mean_img,
                    classify_views(classifier.model, mean_img) if classifier is not None else None,
                    teacher.forward_views(torch.from_numpy(mean_img))[0] if teacher is not None else None, reference,
                    mean_info)


def _decode_batch(pipe, arrays: list[dict], ks: list[int], cfg: ReconConfig, seed: int,
                  with_vae: bool = True) -> dict[int | str, list]:
    """Meshes of a batch of shapes: every prefix k of their tokens (one seeded noise shared by all k) and,
    with `with_vae`, the shape VAE's own reconstruction."""
    n_enc = pipe.num_points
    pts = torch.from_numpy(np.stack([a["surface_points"][:n_enc] for a in arrays]).astype(np.float32))
    nrm = torch.from_numpy(np.stack([a["surface_normals"][:n_enc] for a in arrays]).astype(np.float32))
    tokens = pipe.tokenize_points(pts, nrm)  # [B, R, token_dim]
    meshes: dict[int | str, list] = {k: pipe.decode(tokens[:, :k], k=k, steps=cfg.steps, guidance=cfg.guidance,
                                                    seed=seed, resolution=cfg.resolution,
                                                    temperature=cfg.temperature) for k in ks}
    if with_vae:
        z = pipe.vae.encode(pts.to(pipe.device), nrm.to(pipe.device))
        meshes["vae"] = [pipe.vae.to_mesh(zi, resolution=cfg.resolution) for zi in z]
    return meshes


def _measure_batch(ctx: _Context, chunk: list[dict], arrays: list[dict], meshes: dict, rows: dict[int | str, _Row],
                   start: int) -> list[dict]:
    """Chamfer / F-score, renders, class and feature similarity of every row's meshes of one batch; fills the
    rows and returns the per-shape records."""
    cfg, decoded = ctx.cfg, [name for name in rows if name != "mean"]
    per_shape = [{"id": r["id"], "category": r.get("category")} for r in chunk]
    for i, a in enumerate(arrays):
        gt = trimesh.Trimesh(a["mesh_vertices"], a["mesh_faces"], process=False)
        gt_pts = surface_points(gt, cfg.n_points, cfg.seed + 1)
        gt_tree = surface_tree(gt_pts)  # one tree per ground truth, queried by every row
        for name in decoded:
            per_shape[i][str(name)] = _metrics(meshes[name][i], gt_pts, cfg.n_points, cfg.seed, gt_tree)
        per_shape[i]["mean"] = (point_metrics(ctx.mean_pts, gt_pts, gt_tree=gt_tree).as_dict()
                                if ctx.mean_pts is not None else failed_metrics().as_dict())
    gt_renders = np.stack([a["renders"] for a in arrays])  # [B, 4, H, W, 3] real renders
    gt_feat = ctx.teacher.forward_views(torch.from_numpy(gt_renders))[0] if ctx.teacher is not None else None
    if ctx.reference is not None:
        ctx.reference.update(gt_renders, real=True)
    for name, row in rows.items():
        imgs = (np.repeat(ctx.mean_img, len(chunk), axis=0) if name == "mean"
                else np.stack([_render(m, ctx.size) for m in meshes[name]]))  # [B, 4, S, S, 3]
        for i in range(len(chunk)):
            row.metrics.append(per_shape[i][str(name)])
        if row.distance is not None:
            row.distance.update(imgs, real=False)
        if ctx.classifier is not None:
            _classify_row(ctx, row, name, imgs, per_shape, start)
        if ctx.teacher is not None:
            feat = (ctx.mean_feat.expand(len(chunk), -1, -1) if name == "mean"
                    else ctx.teacher.forward_views(torch.from_numpy(imgs))[0])
            sim = torch.nn.functional.cosine_similarity(feat, gt_feat, dim=-1).mean(dim=1)  # [B]
            for i in range(len(chunk)):
                per_shape[i][str(name)]["feature_sim"] = float(sim[i])
                row.sims.append(float(sim[i]))
        for i in range(len(chunk)):
            if len(row.tiles) < cfg.grid:
                row.tiles.append(_tile(gt_renders[i], imgs[i]))
                m = per_shape[i][str(name)]
                cd = "failed" if m["failed"] else f"CD {m['chamfer'] * 100:.2f}e-2"
                row.labels.append(f"{chunk[i].get('category')} {chunk[i]['id']}: {cd}")
    return per_shape


def _classify_row(ctx: _Context, row: _Row, name, imgs: np.ndarray, per_shape: list[dict], start: int) -> None:
    """The classifier's category for each reconstruction of one row (a failed one counts as wrong)."""
    B = len(per_shape)
    logits = ctx.mean_logits.expand(B, -1, -1) if name == "mean" else classify_views(ctx.classifier.model, imgs)
    pred = shape_probabilities(logits).argmax(dim=-1).numpy()  # [B]
    for i in range(B):
        y = ctx.labels[start + i]
        failed = per_shape[i][str(name)]["failed"]
        per_shape[i][str(name)]["predicted"] = None if failed else ctx.classes[pred[i]]
        hit = bool(pred[i] == y and not failed)
        per_shape[i][str(name)]["correct"] = hit if y >= 0 else None
        if y >= 0:
            row.hits.append(hit)


def comparison_rows(rows: dict[int | str, _Row], ks: list[int], label: str) -> list[dict]:
    """Per k: this bundle's and the compared bundle's class accuracy, feature similarity and median Chamfer, and
    the paired changes (this minus compared) with 95% bootstrap intervals over the shapes."""
    out = []
    for k in ks:
        a, b = rows[k], rows[compare_name(label, k)]
        row: dict[str, Any] = {"k": k}
        for key, va, vb in (("class_acc", a.hits, b.hits), ("feature_sim", a.sims, b.sims)):
            if va and len(va) == len(vb):
                change, ci = mean_change_interval(np.asarray(vb, float), np.asarray(va, float))
                row.update({key: _num(np.mean(va)), f"{key}_other": _num(np.mean(vb)), f"{key}_change": _num(change),
                            f"{key}_change_ci": [_num(v) for v in ci]})
        cd = np.array([[np.nan if m["failed"] else m["chamfer"] for m in r.metrics] for r in (b, a)]).T  # [n, 2]
        if cd.size:
            _, change, change_ci = median_intervals(cd)
            row.update({"chamfer": _num(np.nanmedian(cd[:, 1])), "chamfer_other": _num(np.nanmedian(cd[:, 0])),
                        "chamfer_change": _num(change[0]), "chamfer_change_ci": [_num(v) for v in change_ci[0]]})
        out.append(row)
    return out


# ----------------------------------------------------------------------------------------------------
# Report files
# ----------------------------------------------------------------------------------------------------


def _cell(v: float | None, scale: float = 1.0, digits: int = 3) -> str:
    return "-" if v is None else f"{v * scale:.{digits}f}"


def _row_label(k: int | str, num_tokens: int) -> str:
    if k == "vae":
        return "VAE reconstruction (upper bound)"
    if k == "mean":
        return "mean latent (floor)"
    if isinstance(k, str) and ":" in k:  # a prefix row of the compared bundle
        label, n = k.rsplit(":", 1)
        return f"{label}: k = {n}"
    return f"k = {k} (all)" if k == num_tokens else f"k = {k}"


def render_markdown(report: dict) -> str:
    """recon.md: the table, then what produced it."""
    s, R = report["settings"], report["num_tokens"]
    lines = [
        f"# Reconstruction vs number of tokens ({report['split']} split, {report['n']} shapes)",
        "",
        f"Chamfer distance shown x10^-2 (printed number x 10^-2 = raw value; recon.json holds raw values), "
        f"median over reconstructions with a surface; F-score medians at tau 0.01 / 0.02; "
        f"{s['points_per_surface']} surface points per mesh; {s['steps']} {s['scheduler']} steps, guidance "
        f"{s['guidance']}, marching cubes at {s['resolution']}^3, seed {s['seed']}.",
        "",
        f"| row | median CD (x10^-2) | mean CD (x10^-2) | median F@0.01 | median F@0.02 | class acc | feature sim | "
        f"{report.get('fd_metric') or 'FD'} | KID (x10^3) | one piece | failures |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(f"| {_row_label(r['k'], R)} | {_cell(r['chamfer'], 100)} | {_cell(r['chamfer_mean'], 100)} | "
                     f"{_cell(r['fscore_0.01'])} | {_cell(r['fscore_0.02'])} | {_cell(r['class_acc'])} | "
                     f"{_cell(r['feature_sim'])} | {_cell(r.get('fd'))} | {_cell(r.get('kid'), 1e3, 2)} | "
                     f"{_cell(r.get('one_piece'), digits=2)} | {r['failures']}/{r['n']} |")
    cis = [r for r in report["rows"] if r.get("chamfer_ci")]
    if cis:
        lines += ["", f"Median CD (x10^-2) with its 95% bootstrap interval over the shapes ({DRAWS} resamples), and "
                  "on each k its paired change from the previous k (an interval wholly below 0: a real fall), then the "
                  "same change shape by shape (median over shapes of CD_k / CD_prev - 1, its interval, and the share "
                  "of shapes whose Chamfer fell):", ""]
        prev = None
        for r in cis:
            lo, hi = r["chamfer_ci"]
            text = f"- {_row_label(r['k'], R)}: {_cell(r['chamfer'], 100)} [{_cell(lo, 100)}, {_cell(hi, 100)}]"
            dci = r.get("chamfer_change_ci")
            if r.get("chamfer_change") is not None and dci and None not in dci:
                text += (f"; change from k = {prev}: {100 * r['chamfer_change']:+.3f} "
                         f"[{100 * dci[0]:+.3f}, {100 * dci[1]:+.3f}]")
            sci = r.get("chamfer_shape_change_ci")
            if r.get("chamfer_shape_change") is not None and sci and None not in sci:
                text += (f"; per shape {100 * r['chamfer_shape_change']:+.1f}% [{100 * sci[0]:+.1f}, "
                         f"{100 * sci[1]:+.1f}], fell for {100 * r['chamfer_fall_share']:.0f}% of shapes")
            if isinstance(r["k"], int):
                prev = r["k"]
            lines.append(text)
    comp = report.get("comparison")
    if comp:
        name = comp["name"]
        lines += ["", f"## This bundle against `{name}` (same shapes, seeds and settings)", "",
                  "Paired changes (this bundle minus the other) with 95% bootstrap intervals over the shapes.", "",
                  f"| k | class acc (this / {name}) | change | feature sim (this / {name}) | change | "
                  f"median CD x10^-2 (this / {name}) | change |", "|---|---|---|---|---|---|---|"]
        for r in comp["rows"]:
            cells = []
            for key, scale in (("class_acc", 1.0), ("feature_sim", 1.0), ("chamfer", 100.0)):
                ci = r.get(f"{key}_change_ci")
                cells += [f"{_cell(r.get(key), scale)} / {_cell(r.get(f'{key}_other'), scale)}",
                          f"{scale * r[f'{key}_change']:+.3f} [{scale * ci[0]:+.3f}, {scale * ci[1]:+.3f}]"
                          if ci and None not in ci and r.get(f"{key}_change") is not None else "-"]
            lines.append(f"| {r['k']} | " + " | ".join(cells) + " |")
    lines += ["", f"- Class accuracy: render classifier `{report['classifier']}` on the 4 views of each "
              f"reconstruction (shape-level, view-averaged logits); its own test accuracy on real renders: "
              f"{_cell(report['classifier_test_acc'])} per shape, {_cell(report['classifier_test_acc_per_view'])} "
              f"per view; chance {_cell(report['chance'])}. A failed reconstruction counts as wrong.",
              f"- Feature similarity: {report['feature_network'] or 'not measured (no --teacher)'} "
              "(per-view cosine of global embeddings, reconstruction vs real render, averaged over views and shapes).",
              (f"- {report['fd_metric']}: Frechet distance between Gaussian fits of {report['fd_network']} features "
               "of each row's renders (4 views per shape) vs the real renders of the same shapes (torchmetrics); "
               "KID: unbiased polynomial-kernel MMD over random subsets."
               + (f" Warning: {report['fd_warning']}." if report.get("fd_warning") else ""))
              if report.get("fd_network") else "- FD / KID: not measured (no feature network).",
              "- One piece: share of shapes whose reconstruction keeps >= 95% of its surface area in its largest "
              "connected part (a failure is not in one piece).",
              f"- Mean latent: average of {report['mean_latent']['shapes']} {report['mean_latent']['split']} shapes' "
              "latents encoded by the bundle's VAE, decoded once.",
              *([f"- Not evaluated: k = {', '.join(map(str, report['dropped_ks']))} (longer than R = {R})."]
                if report.get("dropped_ks") else []),
              f"- Model {report['model_id'][:12]}, R = {R}. Command: `{report['command']}`", ""]
    return "\n".join(lines)


def write_report(result: ReconResult, rows: dict[int | str, _Row], out: Path) -> list[Path]:
    """recon.json, recon.md, recon_<row>.png per row and recon_curve.png."""
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "recon.json", out / "recon.md"]
    atomic_write_json(files[0], {**result.report, "shapes": result.shapes})
    files[1].write_text(render_markdown(result.report))
    R = result.report["num_tokens"]
    for name, row in rows.items():
        if row.tiles:
            title = f"{_row_label(name, R)}: ground truth | reconstruction, front and right views"
            safe = str(name).replace(":", "_").replace("/", "_")
            files.append(save_grid(row.tiles, out / f"recon_{safe}.png", labels=row.labels, ncols=1, title=title))
    files.append(plot_curves(result.report, out / "recon_curve.png"))
    return files


def plot_curves(report: dict, path: Path) -> Path:
    """Each metric against k (log2 axis), with the VAE and mean-latent rows as dashed references."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    by_k = [r for r in rows if isinstance(r["k"], int)]
    refs = {r["k"]: r for r in rows if r["k"] in REFERENCE_ROWS}
    metrics = [("chamfer", 100.0, "median CD (x10^-2)"), ("fscore_0.01", 1.0, "median F@0.01"),
               ("class_acc", 1.0, "class accuracy"), ("feature_sim", 1.0, f"feature sim ({report.get('feature_network')})"),
               ("fd", 1.0, report.get("fd_metric") or "FD")]
    metrics = [m for m in metrics if any(r.get(m[0]) is not None for r in rows)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.2), squeeze=False)
    axes = axes[0]
    for ax, (key, scale, label) in zip(axes, metrics):
        xs = [r["k"] for r in by_k if r.get(key) is not None]
        ax.plot(xs, [r[key] * scale for r in by_k if r.get(key) is not None], "o-", color="C0", label="LoST prefix")
        other = [r for r in rows if isinstance(r["k"], str) and ":" in r["k"] and r.get(key) is not None]
        if other:
            ax.plot([int(r["k"].rsplit(":", 1)[1]) for r in other], [r[key] * scale for r in other], "s--",
                    color="C1", label=other[0]["k"].rsplit(":", 1)[0])
        for (name, ref), color in zip(refs.items(), ("C2", "C3")):
            if ref.get(key) is not None:
                ax.axhline(ref[key] * scale, ls="--", color=color, label=name)
        if key == "class_acc" and report.get("chance") is not None:
            ax.axhline(report["chance"], ls=":", color="grey", label="chance")
        ax.set_xscale("log", base=2)
        ax.set_xticks([r["k"] for r in by_k], [str(r["k"]) for r in by_k])
        ax.set_xlabel("tokens k")
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
