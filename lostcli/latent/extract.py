"""Mesh extraction from any occupancy field: dense grid query in chunks, then marching cubes.

Generic over the latent space: a VAE hands in `query(xyz [M, 3]) -> logits [M]` (positive = inside).

Grid and scaling: the grid holds `resolution + 1` samples per axis over [-bound, bound], so sample i
sits at -bound + i * (2 * bound / resolution) and vertices are mapped back with exactly that spacing.
(Direct3D's `triplane2mesh` divides by `resolution + 1` instead, which shrinks its meshes by
res/(res+1) toward the (-1, -1, -1) corner; we do not reproduce that.)
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import trimesh
from skimage import measure

from ..errors import LostError

PAD_MARGIN = 1e4  # the padding shell sits this far below the threshold: "very outside"


@torch.no_grad()
def query_grid(
    query: Callable[[torch.Tensor], torch.Tensor],
    resolution: int,
    chunk: int = 65536,
    bound: float = 1.0,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Logits on the (resolution+1)^3 grid over [-bound, bound]^3, float32 [n, n, n] indexed [ix, iy, iz].

    Points are generated per chunk from flat indices (x slowest, z fastest, as meshgrid 'ij'), so
    memory stays at one chunk of points however large the grid.
    """
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    n = resolution + 1
    axis = torch.linspace(-bound, bound, n, device=device)
    total = n**3
    out = np.empty(total, dtype=np.float32)
    for start in range(0, total, chunk):
        idx = torch.arange(start, min(start + chunk, total), device=device)
        ix, iy, iz = idx // (n * n), (idx // n) % n, idx % n
        xyz = torch.stack([axis[ix], axis[iy], axis[iz]], dim=-1)  # [M, 3]
        logits = query(xyz)
        out[start : start + len(idx)] = logits.reshape(-1).float().cpu().numpy()
    return out.reshape(n, n, n)


def extract_mesh(
    query: Callable[[torch.Tensor], torch.Tensor],
    resolution: int,
    threshold: float = 0.0,
    chunk: int = 65536,
    bound: float = 1.0,
    device: torch.device | str | None = None,
) -> trimesh.Trimesh | None:
    """Surface `logits == threshold` of an occupancy field as a closed, outward-oriented mesh.

    Args:
        query: xyz [M, 3] -> logits [M], larger = more inside; called under no_grad.
        resolution: grid cells per axis (resolution + 1 samples).
        threshold: iso-level on the logits (0 = probability 0.5).
        chunk: points per query call.
        bound: the grid covers [-bound, bound]^3.
        device: where query points are created (the model's device).

    Returns:
        The mesh (vertices inside [-bound, bound]^3, merged, no degenerate faces, normals outward),
        or None when the field never crosses `threshold` (all outside, or all inside).

    Raises:
        LostError: the field holds NaN or inf (corrupt latent or weights).
    """
    vol = query_grid(query, resolution, chunk=chunk, bound=bound, device=device)
    bad = int((~np.isfinite(vol)).sum())
    if bad:
        raise LostError(f"occupancy field holds {bad} non-finite values (corrupt latent or weights)")
    inside = vol > threshold
    if not inside.any() or inside.all():
        return None
    # One shell of "very outside" around the grid closes surfaces that touch the bound.
    padded = np.pad(vol, 1, mode="constant", constant_values=threshold - PAD_MARGIN)
    verts, faces, _, _ = measure.marching_cubes(padded, level=threshold, method="lewiner")
    spacing = 2.0 * bound / resolution
    verts = (verts - 1.0) * spacing - bound  # padded index -> grid index -> world
    # Crossings into the padding shell land within ~spacing/PAD_MARGIN outside the box.
    verts = np.clip(verts, -bound, bound)
    # skimage orders faces so normals point toward decreasing values; inside is the larger side
    # here, so flip to point outward (the same flip as Direct3D's `faces[:, ::-1]`).
    faces = faces[:, ::-1]
    mesh = trimesh.Trimesh(vertices=verts, faces=faces, process=True)  # process merges duplicate vertices
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.remove_unreferenced_vertices()
    if len(mesh.faces) == 0:
        return None
    return mesh
