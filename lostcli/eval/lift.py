"""Does `lost dataset lift` lift the shape in the image? Test renders in, lifted shapes against their ground truth.

`export_renders` writes one view of N test shapes as PNGs named by id (what `lost dataset lift` reads);
`evaluate_lift` then compares each lifted shape with (a) its own ground-truth mesh and (b) the mesh of another
random test shape (a derangement: nobody is paired with itself): the median Chamfer of (a) well below (b) means
the image decides the shape. The render classifier, applied to the lifted shape's 4 previews, gives (c) a
category agreement with the true category, against chance 1 / categories. Writes JSON + a preview grid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

from ..data.render import save_grid
from ..data.store import DatasetStore
from ..errors import DataError
from ..models.classifier import label_indices, load_classifier, predict_renders
from ..persist import atomic_path, atomic_write_json
from .geometry import mesh_metrics


def export_renders(root: str | Path, out: str | Path, n: int = 20, split: str = "test", view: int = 0,
                   seed: int = 0) -> list[str]:
    """Write view `view` of `n` random shapes of `split` as OUT/{id}.png; returns the ids (sorted)."""
    store = DatasetStore(Path(root))
    ids = store.ids(split=split)
    if len(ids) < 2:
        raise DataError(f"{root}: fewer than 2 shapes in split {split!r}")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(ids, size=min(n, len(ids)), replace=False).tolist())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for id in chosen:
        with atomic_path(out / f"{id}.png") as tmp:
            Image.fromarray(store.load(id, keys=["renders"])["renders"][view]).save(tmp, format="PNG")
    return chosen


def _mesh(store: DatasetStore, id: str) -> trimesh.Trimesh:
    a = store.load(id, keys=["mesh_vertices", "mesh_faces"])
    return trimesh.Trimesh(a["mesh_vertices"], a["mesh_faces"], process=False)


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random permutation of range(n) with no fixed point (n >= 2)."""
    while True:
        perm = rng.permutation(n)
        if not (perm == np.arange(n)).any():
            return perm


def evaluate_lift(lifted: str | Path, truth: str | Path, classifier: str | Path | None = None, points: int = 20000,
                  seed: int = 0, grid: str | Path | None = None, inputs: str | Path | None = None) -> dict:
    """Chamfer of each lifted shape to its own ground truth vs to a random other one, and category agreement.

    Args:
        lifted: the store `lost dataset lift` wrote (ids = the truth store's ids).
        truth: the prepared store the images were rendered from.
        classifier: render classifier folder (None: no category agreement).
        points: surface points per mesh for the Chamfer distance.
        grid: optional PNG: per shape the input image, the lifted shape's front and right previews and the
            ground truth's front render.
        inputs: the folder of input PNGs (for the grid).

    Returns:
        {"n", "points", "chamfer_own_median", "chamfer_other_median", "own_below_other", "per_shape", and with a
        classifier "category_agreement", "chance", "categories"}.
    """
    lifted_store, truth_store = DatasetStore(Path(lifted)), DatasetStore(Path(truth))
    known = set(truth_store.ids())
    ids = [i for i in lifted_store.ids() if i in known]
    if len(ids) < 2:
        raise DataError(f"{lifted}: fewer than 2 lifted shapes whose id is in {truth}")
    rng = np.random.default_rng(seed)
    other = derangement(len(ids), rng)
    gts = [_mesh(truth_store, i) for i in ids]
    category = {r["id"]: r.get("category") for r in truth_store.records()}
    rows = []
    for k, id in enumerate(ids):
        pred = _mesh(lifted_store, id)
        own = mesh_metrics(pred, gts[k], n=points, seed=seed)
        oth = mesh_metrics(pred, gts[other[k]], n=points, seed=seed)
        rows.append({"id": id, "category": category[id], "other": ids[other[k]], "chamfer_own": own.chamfer,
                     "chamfer_other": oth.chamfer})
    own, oth = np.array([r["chamfer_own"] for r in rows]), np.array([r["chamfer_other"] for r in rows])
    report = {"n": len(ids), "points": points, "chamfer_own_median": float(np.median(own)),
              "chamfer_other_median": float(np.median(oth)), "own_below_other": float(np.mean(own < oth))}
    previews = np.stack([lifted_store.load(i, keys=["renders"])["renders"] for i in ids])  # [N, 4, S, S, 3]
    if classifier is not None:
        model = load_classifier(classifier).model
        probs = predict_renders(model, previews)
        pred = probs.argmax(dim=-1).numpy()
        truth_idx = label_indices([r["category"] for r in rows], model.categories)
        for r, p in zip(rows, pred):
            r["predicted"] = model.categories[int(p)]
        report.update(category_agreement=float(np.mean(pred == truth_idx)), chance=1.0 / len(model.categories),
                      categories=len(model.categories))
    report["per_shape"] = rows
    if grid is not None:
        tiles, labels = [], []
        for k, (id, r) in enumerate(zip(ids, rows)):
            gt = truth_store.load(id, keys=["renders"])["renders"][0]
            src = np.asarray(Image.open(Path(inputs) / f"{id}.png").convert("RGB").resize(gt.shape[:2][::-1])) \
                if inputs is not None and (Path(inputs) / f"{id}.png").is_file() else gt
            tiles.append(np.concatenate([src, previews[k][0], previews[k][1], gt], axis=1))
            guess = f" -> {r['predicted']}" if "predicted" in r else ""
            labels.append(f"{r['category']}{guess}  CD own {r['chamfer_own'] * 100:.2f} / other "
                          f"{r['chamfer_other'] * 100:.2f} (x1e-2)")
        save_grid(tiles, grid, labels=labels, ncols=2,
                  title="input | lifted front | lifted right | ground truth front")
        report["grid"] = str(grid)
    return report


def write_report(report: dict, path: str | Path) -> None:
    atomic_write_json(Path(path), report)

