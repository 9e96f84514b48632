"""Labelled PNG grids of a dataset: one shape per category, from a mesh folder or a prepared store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import DataError
from .mesh import load_mesh, normalize_mesh
from .render import VIEWS, render_views, save_grid
from .store import DatasetStore


def _pick(records: list[dict], per_category: int) -> list[dict]:
    seen: dict[str, int] = {}
    out = []
    for rec in records:
        cat = rec.get("category", "unknown")
        if seen.get(cat, 0) < per_category:
            seen[cat] = seen.get(cat, 0) + 1
            out.append(rec)
    return sorted(out, key=lambda r: (r.get("category", ""), r["id"]))


def category_grid(src: Path, out: Path, per_category: int = 1, view: str = "front", size: int = 160,
                  ncols: int = 6) -> Path:
    """Render (or read the stored renders of) `per_category` shapes per category into one labelled grid.

    Args:
        src: a folder with metadata.jsonl and meshes (e.g. `lost dataset synth`), or a prepared dataset.
        view: which of the 4 orthographic views to show ("front", "right", "back", "left"), or "all".
    """
    src = Path(src)
    views = list(VIEWS) if view == "all" else [view]
    tiles, labels = [], []
    if (src / "items").is_dir():
        store = DatasetStore(src)
        for rec in _pick(store.records(), per_category):
            renders = store.load(rec["id"], keys=["renders"])["renders"]
            tiles.append(np.concatenate([renders[VIEWS.index(v)] for v in views], axis=1))
            labels.append(f"{rec.get('category')} {rec['id']}")
    elif (src / "metadata.jsonl").is_file():
        records = [json.loads(line) for line in (src / "metadata.jsonl").read_text().splitlines() if line.strip()]
        for rec in _pick(records, per_category):
            mesh, _ = normalize_mesh(load_mesh(src / rec.get("file", f"{rec['id']}.glb")))
            r = render_views(mesh, size=size, views=views)
            tiles.append(np.concatenate(list(r.images), axis=1))
            labels.append(f"{rec['category']} {rec['id']}")
    else:
        raise DataError(f"{src}: neither a prepared dataset (items/) nor a folder with metadata.jsonl")
    if not tiles:
        raise DataError(f"{src}: no shapes to preview")
    return save_grid(tiles, out, labels=labels, ncols=ncols if len(views) == 1 else 2)
