"""Four orthographic, Lambert-shaded views of a mesh, by ray casting (docs/protocols.md "Renders").

Conventions (the RIDA spatial loss and every render-based metric rely on them):

- Views sit at azimuth 0, 90, 180, 270 degrees about +Y, elevation 0: ``front`` (camera on +Z looking
  toward -Z), ``right`` (camera on +X), ``back`` (camera on -Z), ``left`` (camera on -X).
- Image up is world +Y in every view. Image right, as the camera sees it: front +X, right -Z,
  back -X, left +Z. For every view ``right x up = origin_dir`` (a right-handed camera frame).
- The square image covers [-1, 1] x [-1, 1] of the view plane; pixel (row i, col j) has its centre at
  ``u = -1 + (j + 0.5) * 2 / size`` (image right) and ``v = 1 - (i + 0.5) * 2 / size`` (image up), so
  the world point seen there lies on the line ``u * right + v * up + s * origin_dir``.
- Rays start on the plane at distance 3 from the origin (``3 * origin_dir``) and travel along
  ``-origin_dir``: everything in [-1.5, 1.5]^3 is seen. ``depth = 3 - t`` is the hit's signed
  coordinate along ``origin_dir`` (towards the camera), e.g. ``+z`` of the front-most point in the
  front view; 0 on background.
- Shading: ``colour = BASE_COLOR * (AMBIENT + DIFFUSE * |n . l|)`` with the light at the camera
  (``l = origin_dir``), two-sided so open meshes and flipped faces render, on a pure white background.
  ``n`` is the smooth normal interpolated from per-corner normals; a corner whose area-weighted
  vertex normal deviates from its face normal by more than ``CREASE_ANGLE_DEG`` keeps the face normal,
  so curved surfaces look smooth while boxes and machined parts keep crisp edges.

Ray casting uses trimesh's Embree intersector (``embreex``); without it, trimesh's pure-numpy
intersector (much slower) is used.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image, ImageDraw, ImageFont

from ..errors import ConfigError, MeshError
from ..persist import atomic_path

try:  # Embree: ~100x faster than trimesh's numpy ray/triangle test
    from trimesh.ray.ray_pyembree import RayMeshIntersector as _Intersector
except ImportError:  # pragma: no cover - embreex is a declared dependency
    from trimesh.ray.ray_triangle import RayMeshIntersector as _Intersector

CAMERA_DISTANCE = 3.0  # ray origins lie on the plane at this distance from the origin
BASE_COLOR = (0.8, 0.8, 0.8)  # neutral light grey albedo (RGB in [0, 1])
AMBIENT = 0.25  # shade of a surface seen edge-on
DIFFUSE = 0.75  # added Lambert term at |n . l| = 1 (AMBIENT + DIFFUSE = 1)
CREASE_ANGLE_DEG = 30.0  # corners whose vertex normal deviates more than this are shaded flat
BACKGROUND = 255  # pure white

LABEL_HEIGHT = 16  # px under each tile in save_grid when labels are given
TITLE_HEIGHT = 20  # px above the grid in save_grid when a title is given


# ----------------------------------------------------------------------------------------------------
# Cameras
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class View:
    """One orthographic camera: unit world-axis vectors of its frame."""

    name: str  # "front", "right", "back" or "left"
    origin_dir: tuple[float, float, float]  # unit vector from the origin toward the camera
    right: tuple[float, float, float]  # world direction of image right (+u)
    up: tuple[float, float, float]  # world direction of image up (+v)


VIEW_SPECS: dict[str, View] = {
    "front": View("front", (0.0, 0.0, 1.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "right": View("right", (1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, 1.0, 0.0)),
    "back": View("back", (0.0, 0.0, -1.0), (-1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "left": View("left", (-1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.0, 1.0, 0.0)),
}
VIEWS: tuple[str, ...] = ("front", "right", "back", "left")  # azimuth 0, 90, 180, 270


def get_view(name: str) -> View:
    """The camera of a view name; raises ConfigError for an unknown name."""
    if name not in VIEW_SPECS:
        raise ConfigError(f"unknown view {name!r}; expected one of {', '.join(VIEWS)}")
    return VIEW_SPECS[name]


def pixel_to_view(size: int) -> tuple[np.ndarray, np.ndarray]:
    """View-plane coordinates of the pixel centres of a ``size x size`` image.

    Pixel (row i, col j) maps to ``u = -1 + (j + 0.5) * 2 / size`` (image right) and
    ``v = 1 - (i + 0.5) * 2 / size`` (image up); row 0 is the top of the image.

    Returns:
        (u, v): float64 grids, each [size, size], indexed [i, j].
    """
    if size < 1:
        raise ConfigError(f"render size must be >= 1, got {size}")
    c = -1.0 + (np.arange(size) + 0.5) * 2.0 / size  # [size] increasing
    u = np.broadcast_to(c[None, :], (size, size)).copy()
    v = np.broadcast_to(-c[:, None], (size, size)).copy()
    return u, v


# ----------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------


@dataclass
class RenderSet:
    """Renders of one mesh from several views (V views, H = W = size)."""

    images: np.ndarray  # uint8 [V, H, W, 3], shaded grey on white
    depth: np.ndarray  # float32 [V, H, W], signed coordinate along origin_dir; 0 on background
    mask: np.ndarray  # bool [V, H, W], True where a ray hit the surface
    views: tuple[str, ...] = VIEWS  # view name of each of the V renders


def render_views(mesh: trimesh.Trimesh, size: int = 224, views: Sequence[str] = VIEWS) -> RenderSet:
    """Render ``mesh`` (as given, no normalisation) from orthographic views.

    Args:
        mesh: triangle mesh, expected inside [-1, 1]^3 (anything in [-1.5, 1.5]^3 is hit).
        size: image side H = W in pixels.
        views: view names from VIEWS, in output order.

    Returns:
        RenderSet with images [V, H, W, 3], depth [V, H, W] and mask [V, H, W]. A mesh without
        faces (or with zero extent) gives white images and empty masks.
    """
    cams = [get_view(name) for name in views]
    u, v = pixel_to_view(size)
    n_views, n_pix = len(cams), size * size
    images = np.full((n_views, size, size, 3), BACKGROUND, dtype=np.uint8)
    depth = np.zeros((n_views, size, size), dtype=np.float32)
    mask = np.zeros((n_views, size, size), dtype=bool)
    out = RenderSet(images=images, depth=depth, mask=mask, views=tuple(views))

    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    if len(faces) == 0 or n_views == 0:
        return out
    if not np.isfinite(vertices).all():
        raise MeshError("mesh vertices contain NaN or inf")
    if np.ptp(vertices[faces.ravel()], axis=0).max() <= 0.0:
        return out  # every face is a point: nothing can be hit

    # all views in one Embree call: rays [V * H * W, 3], float32 as Embree takes them
    frames = np.array([[c.right, c.up, c.origin_dir] for c in cams])  # [V, 3 (right, up, back), 3]
    flat_u, flat_v = u.reshape(-1), v.reshape(-1)  # [HW]
    f32 = frames.astype(np.float32)
    uv32 = np.stack([flat_u, flat_v], axis=1).astype(np.float32)  # [HW, 2]
    origins = (uv32 @ f32[:, :2] + CAMERA_DISTANCE * f32[:, None, 2]).reshape(-1, 3)  # [V * HW, 3]
    dirs = np.repeat(-f32[:, 2], n_pix, axis=0)  # [V * HW, 3]
    tri = np.asarray(_Intersector(mesh).intersects_first(origins, dirs), dtype=np.int64)  # -1: miss
    tri = tri.reshape(n_views, n_pix)
    if not (tri >= 0).any():
        return out

    corner_n = _corner_normals(vertices, faces)  # [F, 3, 3]
    color = np.asarray(BASE_COLOR) * 255.0  # [3]
    for k in range(n_views):
        hit = tri[k] >= 0  # [HW]
        ids = tri[k][hit]  # [N] hit faces
        uvd = (vertices @ frames[k].T)[faces[ids]]  # [N, 3 corners, (u, v, depth)] in the view frame
        bary = _barycentric_2d(flat_u[hit], flat_v[hit], uvd)  # [N, 3]
        # depth along origin_dir is affine over the triangle: interpolate it (= 3 - t along the ray)
        depth[k].reshape(-1)[hit] = np.einsum("nk,nk->n", bary, uvd[..., 2])
        n = np.einsum("nk,nkc->nc", bary, corner_n[ids])  # [N, 3] smooth normal, not unit
        length = np.linalg.norm(n, axis=1)
        cos = np.abs(n @ frames[k, 2]) / np.maximum(length, 1e-12)  # two-sided Lambert, l = origin_dir
        shade = AMBIENT + DIFFUSE * np.clip(cos, 0.0, 1.0)  # [N]
        images[k].reshape(-1, 3)[hit] = np.round(shade[:, None] * color).astype(np.uint8)
        mask[k].reshape(-1)[hit] = True
    return out


def _barycentric_2d(pu: np.ndarray, pv: np.ndarray, tri_uv: np.ndarray) -> np.ndarray:
    """Barycentrics of pixel centres inside their hit triangles, in the (orthographic) view plane.

    Embree reports which triangle a ray hit (in float32 and a rescaled frame); an orthographic
    projection preserves barycentrics, so solving in 2D gives float64 weights for depth and normals.

    Args:
        pu, pv: [N] pixel centres in the view plane.
        tri_uv: [N, 3, >=2] the hit triangles' corners in view coordinates (u, v, ...).

    Returns:
        [N, 3] weights, clipped onto the triangle; a triangle seen edge-on gets (1/3, 1/3, 1/3).
    """
    a, b, c = tri_uv[:, 0, :2], tri_uv[:, 1, :2], tri_uv[:, 2, :2]  # [N, 2] each
    e1, e2 = b - a, c - a
    du, dv = pu - a[:, 0], pv - a[:, 1]
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]  # 2 * signed projected area
    ok = np.abs(det) > 1e-14
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    w1 = np.where(ok, np.clip((du * e2[:, 1] - dv * e2[:, 0]) * inv, 0.0, 1.0), 1.0 / 3.0)
    w2 = np.where(ok, np.clip((e1[:, 0] * dv - e1[:, 1] * du) * inv, 0.0, 1.0), 1.0 / 3.0)
    total = np.maximum(w1 + w2, 1.0)  # rounding can land just outside: pull back onto the edge
    w1, w2 = w1 / total, w2 / total
    return np.stack([1.0 - w1 - w2, w1, w2], axis=1)


def _corner_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Per-corner shading normals [F, 3, 3] (unit): smooth, except across creases.

    Each corner takes its vertex's area-weighted normal unless that deviates from the face normal by
    more than CREASE_ANGLE_DEG (a sharp edge, a cone tip, or inconsistently wound neighbours, whose
    normals cancel), in which case it keeps the face normal. O(F), unlike exact crease splitting.
    """
    tris = vertices[faces]  # [F, 3, 3]
    cross = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])  # [F, 3], length = 2 * area
    length = np.linalg.norm(cross, axis=1, keepdims=True)
    face_n = np.where(length > 0, cross / np.maximum(length, 1e-300), 0.0)  # [F, 3]
    corner_vert, corner_cross = faces.ravel(), np.repeat(cross, 3, axis=0)  # [3F], [3F, 3]
    vert_n = np.stack(  # area-weighted sum over incident faces; bincount is ~10x np.add.at
        [np.bincount(corner_vert, corner_cross[:, c], minlength=len(vertices)) for c in range(3)], axis=1
    )
    vert_n /= np.maximum(np.linalg.norm(vert_n, axis=1, keepdims=True), 1e-300)
    corner = vert_n[faces]  # [F, 3, 3]
    cos = np.einsum("fkc,fc->fk", corner, face_n)  # [F, 3]
    smooth = cos >= np.cos(np.radians(CREASE_ANGLE_DEG))
    return np.where(smooth[..., None], corner, face_n[:, None, :])


# ----------------------------------------------------------------------------------------------------
# Images on disk
# ----------------------------------------------------------------------------------------------------


def views_strip(render: RenderSet) -> np.ndarray:
    """The views side by side, left to right in ``render.views`` order: uint8 [H, V * W, 3]."""
    return np.concatenate(list(render.images), axis=1)


def views_tile(views: np.ndarray, size: int = 112) -> np.ndarray:
    """uint8 views [4, S, S, 3] -> one [2 * size, 2 * size, 3] tile: front, right / back, left."""
    small = [np.asarray(Image.fromarray(v).resize((size, size), Image.BILINEAR)) for v in views]
    return np.concatenate([np.concatenate(small[:2], axis=1), np.concatenate(small[2:4], axis=1)], axis=0)


def save_grid(
    images: Sequence[np.ndarray],
    path: str | os.PathLike,
    labels: Sequence[str] | None = None,
    ncols: int = 4,
    title: str | None = None,
) -> Path:
    """Write images as a labelled PNG grid (atomic write; parent folders are created).

    Tiles are placed row-major without gaps; each cell is the largest tile's size (smaller tiles sit
    at its top-left on white). The PNG is ``min(ncols, N) * W`` wide and
    ``TITLE_HEIGHT * (title given) + rows * (H + LABEL_HEIGHT * (labels given))`` tall.

    Args:
        images: [H, W, 3] uint8 (or float in [0, 1]) colour, or [H, W] grey: bool masks map to black
            on white, uint8 is taken as is, other dtypes are min-max scaled (e.g. depth maps).
        path: output PNG path.
        labels: one caption per image, drawn under its tile with PIL's default font.
        ncols: tiles per row.
        title: optional caption drawn above the grid.

    Returns:
        The path written.
    """
    if len(images) == 0:
        raise ValueError("save_grid needs at least one image")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"save_grid got {len(labels)} labels for {len(images)} images")
    tiles = [_to_rgb(img) for img in images]
    cols = max(1, min(ncols, len(tiles)))
    rows = -(-len(tiles) // cols)
    tile_h = max(t.shape[0] for t in tiles)
    tile_w = max(t.shape[1] for t in tiles)
    label_h = LABEL_HEIGHT if labels is not None else 0
    title_h = TITLE_HEIGHT if title is not None else 0
    canvas = Image.new("RGB", (cols * tile_w, title_h + rows * (tile_h + label_h)), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    if title is not None:
        draw.text((4, title_h // 2), title, fill="black", font=font, anchor="lm")
    for k, tile in enumerate(tiles):
        x, y = (k % cols) * tile_w, title_h + (k // cols) * (tile_h + label_h)
        canvas.paste(Image.fromarray(tile), (x, y))
        if labels is not None:
            center = (x + tile_w // 2, y + tile_h + label_h // 2)
            draw.text(center, str(labels[k]), fill="black", font=font, anchor="mm")
    return _atomic_save_png(canvas, Path(path))


def preview(
    mesh: trimesh.Trimesh, path: str | os.PathLike, size: int = 224, label: str | None = None
) -> RenderSet:
    """Render the four views and save them as one strip PNG (``label`` captioned underneath).

    Returns:
        The RenderSet that was saved, for callers that also need depth or masks.
    """
    render = render_views(mesh, size=size)
    save_grid([views_strip(render)], path, labels=None if label is None else [label], ncols=1)
    return render


def _to_rgb(img: np.ndarray) -> np.ndarray:
    """Any supported tile as uint8 [H, W, 3]."""
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[2] == 3:
        if a.dtype == np.uint8:
            return a
        return (np.clip(a.astype(np.float64), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if a.ndim != 2:
        raise ValueError(f"save_grid tiles must be [H, W, 3] or [H, W], got shape {a.shape}")
    if a.dtype == np.bool_:
        grey = np.where(a, 0, 255).astype(np.uint8)  # foreground black on white
    elif a.dtype == np.uint8:
        grey = a
    else:
        f = np.nan_to_num(a.astype(np.float64))
        lo, hi = f.min(), f.max()
        scaled = (f - lo) / (hi - lo) if hi > lo else np.zeros_like(f)
        grey = (scaled * 255.0).round().astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def _atomic_save_png(image: Image.Image, path: Path) -> Path:
    """Write to a temporary file beside ``path`` then rename, so readers never see a partial PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path
