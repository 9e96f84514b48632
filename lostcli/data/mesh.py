"""Mesh files: load and validate, normalise to the shared frame, export, summarise.

Frames. `load_mesh` returns the geometry in the file's own frame and units (every scene node transform
applied, nothing else). `normalize_mesh(mesh, up)` then maps it into the toolkit's frame in one affine
step: an optional Z-up -> Y-up rotation, centring the axis-aligned bounding box at the origin and a
uniform scale so the longest side is 1.9 (docs/protocols.md). The step is kept as a `Normalization`, so
anything produced in the normalised frame (a reconstruction, sampled points) can be mapped back into
the source file's frame with `Normalization.inverse`. `load_normalized` does both for the common case.

Every problem with a file raises `MeshError` with one line that starts with the file path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import trimesh
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..errors import ConfigError, DataError, MeshError
from ..persist import atomic_write_bytes

SUPPORTED = (".obj", ".glb", ".gltf", ".ply", ".stl", ".off")
EXPORTABLE = (".glb", ".obj", ".ply")
UP_AXES = ("y", "z")
TARGET_EXTENT = 1.9  # longest bbox side after normalisation: the shape lies in [-0.95, 0.95]^3

# (x, y, z) -> (x, z, -y): a proper rotation (det +1) taking a Z-up source's +Z to the toolkit's +Y.
_Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
# A face is degenerate when its area is below this fraction of the squared bbox diagonal: relative,
# so that millimetre and kilometre files are judged alike, and far above float64 round-off.
_DEGENERATE_AREA_REL = 1e-14


# ----------------------------------------------------------------------------------------------------
# Loading and validation
# ----------------------------------------------------------------------------------------------------


def _one_line(text: str, limit: int = 160) -> str:
    """Collapse a (possibly multi-line) loader message to one short line."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _scene_triangles(scene: trimesh.Scene, path: Path, max_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate every triangle mesh instanced in `scene`, node transforms applied.

    Points and paths are ignored. A node whose transform mirrors (det < 0) has its faces flipped so that
    outward normals stay outward, which the winding-number inside test relies on.

    Returns:
        vertices [V, 3] float64 and faces [F, 3] int64 (unmerged: one vertex block per instance).
    """
    blocks_v: list[np.ndarray] = []
    blocks_f: list[np.ndarray] = []
    n_faces, offset = 0, 0
    for node in scene.graph.nodes_geometry:
        transform, geom_name = scene.graph[node]
        geom = scene.geometry.get(geom_name)
        if not isinstance(geom, trimesh.Trimesh) or len(geom.faces) == 0:
            continue
        n_faces += len(geom.faces)
        if n_faces > max_faces:  # stop before concatenating a huge scene
            raise MeshError(f"{path}: more than {max_faces} faces (the limit; raise max_faces to load it)")
        v = np.asarray(geom.vertices, dtype=np.float64)
        f = np.asarray(geom.faces, dtype=np.int64)
        if f.min() < 0 or f.max() >= len(v):
            raise MeshError(f"{path}: face indices out of range in geometry '{geom_name}'")
        t = np.asarray(transform, dtype=np.float64)
        v = v @ t[:3, :3].T + t[:3, 3]
        if np.linalg.det(t[:3, :3]) < 0:
            f = f[:, ::-1]
        blocks_v.append(v)
        blocks_f.append(f + offset)
        offset += len(v)
    if not blocks_f:
        raise MeshError(f"{path}: no triangles (the file holds no triangle mesh)")
    return np.concatenate(blocks_v), np.concatenate(blocks_f)


def _face_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Triangle areas [F] of `vertices` [V, 3] and `faces` [F, 3]."""
    a, b, c = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    return 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)


def load_mesh(path: str | Path, max_faces: int = 2_000_000) -> trimesh.Trimesh:
    """Load a triangle mesh file, merge its scene into one mesh and validate it.

    The result is in the file's own frame (no up-axis rotation, centring or scaling: see
    `normalize_mesh`). Vertices are merged by position (geometry only: UVs, colours and materials are
    dropped), degenerate (zero-area) faces and unreferenced vertices are removed.

    Args:
        path: a file with one of the `SUPPORTED` extensions.
        max_faces: refuse files with more triangles than this.

    Returns:
        a `trimesh.Trimesh` with at least one non-degenerate triangle and finite vertices.

    Raises:
        MeshError: missing, empty, unsupported, unreadable or corrupt file; no triangles; NaN/inf
            vertices; only degenerate faces; more than `max_faces` faces.
    """
    path = Path(path)
    if not path.exists():
        if path.is_symlink():  # dangling, or a loop of links
            raise MeshError(f"{path}: broken symbolic link (to '{os.readlink(path)}', which cannot be opened)")
        raise MeshError(f"{path}: file not found")
    if not path.is_file():
        raise MeshError(f"{path}: not a file")
    ext = path.suffix.lower()
    if ext not in SUPPORTED:
        raise MeshError(f"{path}: unsupported extension '{path.suffix}' (supported: {', '.join(SUPPORTED)})")
    if path.stat().st_size == 0:
        raise MeshError(f"{path}: file is empty")
    try:
        # process=False: validate the raw arrays ourselves (trimesh would silently drop NaN vertices).
        scene = trimesh.load(str(path), file_type=ext[1:], force="scene", process=False)
    except Exception as e:  # loaders raise anything from ValueError to struct.error on bad bytes
        reason = f"{type(e).__name__}: {_one_line(e)}"
        raise MeshError(f"{path}: unreadable or corrupt {ext[1:]} file ({reason})") from e
    if not isinstance(scene, trimesh.Scene):
        raise MeshError(f"{path}: unreadable {ext[1:]} file (loader returned {type(scene).__name__})")

    vertices, faces = _scene_triangles(scene, path, max_faces)
    if not np.isfinite(vertices).all():
        bad = int((~np.isfinite(vertices)).any(axis=1).sum())
        raise MeshError(f"{path}: {bad} vertices contain NaN or inf")

    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, process=False)
    mesh.merge_vertices()  # position-only: there are no visuals to keep seams apart
    f = mesh.faces
    diag2 = float(np.sum(mesh.extents**2))
    keep = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
    keep &= _face_areas(mesh.vertices, f) > _DEGENERATE_AREA_REL * diag2
    if not keep.any():
        raise MeshError(f"{path}: all {len(f)} faces are degenerate (zero area)")
    if not keep.all():
        mesh.update_faces(keep)
    mesh.remove_unreferenced_vertices()
    return mesh


# ----------------------------------------------------------------------------------------------------
# Normalisation
# ----------------------------------------------------------------------------------------------------


@dataclass
class Normalization:
    """An affine map from a mesh's source frame to the normalised frame (up rotation, centre, scale).

    `matrix` is 4x4 float64 acting on column vectors: x_norm = M[:3, :3] @ x_src + M[:3, 3].
    """

    matrix: np.ndarray  # [4, 4] float64, source frame -> normalised frame

    def __post_init__(self) -> None:
        m = np.asarray(self.matrix, dtype=np.float64)
        if m.shape != (4, 4) or not np.isfinite(m).all():
            raise DataError(f"normalization: expected a finite 4x4 matrix, got shape {m.shape}")
        self.matrix = m

    @property
    def scale(self) -> float:
        """Uniform scale factor: a length L in the source frame is L * scale in the normalised frame."""
        return float(np.cbrt(np.linalg.det(self.matrix[:3, :3])))

    @staticmethod
    def _affine(m: np.ndarray, points: np.ndarray) -> np.ndarray:
        p = np.asarray(points)
        out = p.astype(np.float64, copy=False) @ m[:3, :3].T + m[:3, 3]
        return out.astype(p.dtype, copy=False) if np.issubdtype(p.dtype, np.floating) else out

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Map points [..., 3] from the source frame to the normalised frame (float dtype kept)."""
        return self._affine(self.matrix, points)

    def inverse(self, points: np.ndarray) -> np.ndarray:
        """Map points [..., 3] from the normalised frame back to the source frame (float dtype kept)."""
        return self._affine(np.linalg.inv(self.matrix), points)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: {"matrix": 4 lists of 4 floats}."""
        return {"matrix": self.matrix.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalization:
        """Inverse of `to_dict`; raises `DataError` on a missing or malformed matrix."""
        if not isinstance(d, dict) or "matrix" not in d:
            raise DataError("normalization: missing 'matrix'")
        try:
            m = np.asarray(d["matrix"], dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise DataError(f"normalization: 'matrix' is not numeric ({_one_line(e)})")
        return cls(matrix=m)


def up_rotation(up: str) -> np.ndarray:
    """The 3x3 rotation taking a source with up axis `up` ("y" or "z") to the toolkit's Y-up frame."""
    if up not in UP_AXES:
        raise ConfigError(f"up: expected 'y' or 'z', got {up!r}")
    return np.eye(3) if up == "y" else _Z_UP_TO_Y_UP.copy()


def normalize_mesh(mesh: trimesh.Trimesh, up: str = "y") -> tuple[trimesh.Trimesh, Normalization]:
    """Rotate to Y-up, centre the bounding box at the origin and scale the longest side to 1.9.

    Args:
        mesh: a mesh in its source frame (as `load_mesh` returns it); left unchanged.
        up: the source's up axis, "y" (glTF convention) or "z"; "z" maps (x, y, z) -> (x, z, -y).

    Returns:
        (a normalised copy inside [-0.95, 0.95]^3, the `Normalization` that produced it).
    """
    rot = up_rotation(up)
    v = np.asarray(mesh.vertices, dtype=np.float64) @ rot.T
    lo, hi = v.min(axis=0), v.max(axis=0)
    extent = float((hi - lo).max())
    if not np.isfinite(extent) or extent <= 0.0:
        raise MeshError(f"mesh has zero or non-finite extent ({extent}); cannot normalise")
    s = TARGET_EXTENT / extent
    center = 0.5 * (lo + hi)
    m = np.eye(4)
    m[:3, :3] = s * rot
    m[:3, 3] = -s * center
    norm = Normalization(matrix=m)
    out = mesh.copy()
    out.vertices = norm.apply(np.asarray(mesh.vertices, dtype=np.float64))  # det > 0: winding kept
    return out, norm


def load_normalized(
    path: str | Path, up: str = "y", max_faces: int = 2_000_000
) -> tuple[trimesh.Trimesh, Normalization]:
    """`load_mesh` then `normalize_mesh`: the mesh in the normalised frame and its `Normalization`."""
    up_rotation(up)  # reject a bad `up` before reading the file
    return normalize_mesh(load_mesh(path, max_faces=max_faces), up=up)


# ----------------------------------------------------------------------------------------------------
# Export and statistics
# ----------------------------------------------------------------------------------------------------


def export_mesh(mesh: trimesh.Trimesh, path: str | Path) -> Path:
    """Write `mesh` as .glb, .obj or .ply (by extension), atomically, creating parent folders.

    Returns:
        the path written.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in EXPORTABLE:
        raise MeshError(f"{path}: cannot export to '{path.suffix}' (supported: {', '.join(EXPORTABLE)})")
    try:
        data = mesh.export(file_type=ext[1:])
    except Exception as e:
        raise MeshError(f"{path}: export failed ({type(e).__name__}: {_one_line(e)})")
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, payload)  # readers never see a half-written file
    except OSError as e:
        raise MeshError(f"{path}: cannot write ({_one_line(e.strerror or e)})")
    return path


ONE_PIECE = 0.95  # a surface is "in one piece" when its largest connected part holds at least this share of its area


def _face_parts(faces: np.ndarray) -> tuple[int, np.ndarray]:
    """(number of connected parts, part label of each face) of a non-empty face array [F, 3]; faces sharing a
    vertex index are connected (marching-cubes and exported meshes share their vertices)."""
    used, inv = np.unique(faces, return_inverse=True)
    inv = inv.reshape(faces.shape)
    rows = np.concatenate([inv[:, 0], inv[:, 1]])
    cols = np.concatenate([inv[:, 1], inv[:, 2]])
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(len(used), len(used)))
    n, labels = connected_components(graph, directed=False)
    return int(n), labels[inv[:, 0]]


def count_components(mesh: trimesh.Trimesh) -> int:
    """Number of connected components of the face graph (faces sharing a vertex are connected)."""
    f = np.asarray(mesh.faces, dtype=np.int64)
    return _face_parts(f)[0] if len(f) else 0


def largest_part_share(mesh: trimesh.Trimesh | None) -> float | None:
    """Share of a mesh's surface area in its largest connected part: 1.0 for one piece, lower when parts float
    apart (a table top above a detached stem). None for no surface. Compare with `ONE_PIECE`."""
    if mesh is None or len(mesh.faces) == 0:
        return None
    area = np.asarray(mesh.area_faces, dtype=np.float64)
    total = float(area.sum())
    if not total > 0:
        return None
    _, labels = _face_parts(np.asarray(mesh.faces, dtype=np.int64))
    return float(np.bincount(labels, weights=area).max() / total)


def is_one_piece(share: float | None) -> bool:
    """Whether a `largest_part_share` reaches `ONE_PIECE` (None, no surface: not in one piece)."""
    return share is not None and share >= ONE_PIECE


def one_piece_share(shares: list[float | None]) -> float | None:
    """Fraction of surfaces in one piece (`is_one_piece`); None for an empty list."""
    if not shares:
        return None
    return float(np.mean([is_one_piece(s) for s in shares]))


def mesh_stats(mesh: trimesh.Trimesh) -> dict[str, Any]:
    """JSON-ready summary: vertex/face counts, watertightness, components, surface area, bbox."""
    return {
        "vertices": int(len(mesh.vertices)),
        "faces": int(len(mesh.faces)),
        "watertight": bool(mesh.is_watertight),
        "components": count_components(mesh),
        "area": float(mesh.area),
        "bbox": np.asarray(mesh.bounds, dtype=np.float64).tolist(),  # [[min x, y, z], [max x, y, z]]
    }
