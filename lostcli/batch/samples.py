"""Files of generated samples (`lost generate` and the web app's Generate and Complete tabs).

Into OUT, for sample i (prompt-major: sample p * n + j is seed draw j of prompt p): sample_{i}.{fmt} for each
requested mesh format (unit frame), sample_{i}.png (the four docs/protocols.md views side by side),
sample_{i}.safetensors (its tokens: `lost decode` them again or continue them with --prefix), grid.png (one
row per prompt, each sample as a 2 x 2 tile of its views) and generate.json (the record).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..data.mesh import export_mesh, largest_part_share
from ..data.render import render_views, save_grid, views_tile
from ..persist import atomic_write_json
from ..pipeline import GenerationResult, save_tokens


def write_samples(result: GenerationResult, out: Path, formats: Sequence[str], model_id: str, n: int,
                  record: dict) -> list[dict]:
    """Write each sample's meshes, preview and tokens, then grid.png and generate.json; one record per sample.

    A sample whose decode found no surface gets white views labelled "(no surface)" and no mesh file.
    Each record: index, prompt, draw, preview, tokens, empty, and for a surface "mesh" (the first format's
    file), "meshes" ({format: file}), vertices, faces and largest_part (the share of its surface in its largest
    connected part: 1.0 for one piece, `data/mesh.py`).
    """
    samples, tiles, labels = [], [], []
    for i, (mesh, prompt) in enumerate(zip(result.meshes, result.prompts)):
        views = render_views(mesh).images if mesh is not None else np.full((4, 224, 224, 3), 255, np.uint8)
        label = f"{i}: {prompt[:32]}" + (" (no surface)" if mesh is None else "")
        rec = {"index": i, "prompt": prompt, "draw": i % n, "mesh": None, "meshes": {}, "empty": mesh is None,
               "preview": str(save_grid([np.concatenate(list(views), axis=1)], out / f"sample_{i}.png",
                                        labels=[label])),
               "tokens": str(save_tokens(out / f"sample_{i}.safetensors", result.sample_tokens(i, model_id)))}
        if mesh is not None:
            rec["meshes"] = {fmt: str(export_mesh(mesh, out / f"sample_{i}.{fmt}")) for fmt in formats}
            rec.update(mesh=rec["meshes"][formats[0]], vertices=int(len(mesh.vertices)), faces=int(len(mesh.faces)),
                       largest_part=largest_part_share(mesh))
        samples.append(rec)
        tiles.append(views_tile(views))
        labels.append(label)
    save_grid(tiles, out / "grid.png", labels=labels, ncols=n)
    atomic_write_json(out / "generate.json", {**record, "settings": result.settings, "samples": samples,
                                              "grid": str(out / "grid.png")})
    return samples
