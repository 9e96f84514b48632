"""Solid primitives for the procedural categories; every function returns a manifold3d.Manifold.

Frame: Y up, units loosely metres. Parts are meant to overlap a little and be boolean-unioned
(`union`), hollows subtracted (`subtract`), so a builder's result is one watertight shell.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from manifold3d import CrossSection, Manifold, OpType

SEGMENTS = 28  # circular segments of rods and lathes: ~100 triangles per rod
BALL_SEGMENTS = 16  # geodesic spheres stay cheap (~130 triangles)


def box(x0: float, x1: float, y0: float, y1: float, z0: float, z1: float) -> Manifold:
    """Axis-aligned box from its extents."""
    return Manifold.cube((x1 - x0, y1 - y0, z1 - z0)).translate((x0, y0, z0))


def rod(p0: Sequence[float], p1: Sequence[float], r0: float, r1: float | None = None,
        segments: int = SEGMENTS) -> Manifold:
    """Cylinder (or cone when r1 differs, r1=0 for a point) from point p0 to point p1."""
    a, b = np.asarray(p0, dtype=float), np.asarray(p1, dtype=float)
    length = float(np.linalg.norm(b - a))
    z = (b - a) / length
    helper = np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    x = np.cross(helper, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    frame = np.column_stack([x, y, z, a])  # [3, 4]: rotation taking +Z to the rod axis, then offset
    return Manifold.cylinder(length, r0, r0 if r1 is None else r1, segments).transform(frame)


def ball(center: Sequence[float], radius: float, scale: Sequence[float] = (1.0, 1.0, 1.0),
         segments: int = BALL_SEGMENTS) -> Manifold:
    """Sphere, optionally stretched into an ellipsoid."""
    return Manifold.sphere(radius, segments).scale(tuple(scale)).translate(tuple(center))


def _ccw(points: Sequence[Sequence[float]]) -> np.ndarray:
    pts = np.asarray(points, dtype=float)
    area = 0.5 * np.sum(pts[:, 0] * np.roll(pts[:, 1], -1) - np.roll(pts[:, 0], -1) * pts[:, 1])
    return pts if area > 0 else pts[::-1].copy()  # manifold's Positive fill rule drops clockwise loops


def lathe(profile: Sequence[Sequence[float]], segments: int = SEGMENTS) -> Manifold:
    """Solid of revolution about the Y axis from a closed (radius, height) polygon, radius >= 0."""
    solid = Manifold.revolve(CrossSection([_ccw(profile)]), segments)
    return solid.rotate((-90.0, 0.0, 0.0))  # revolve's axis is +Z: map it to +Y


def extrude_xy(polygon: Sequence[Sequence[float]], width: float) -> Manifold:
    """A side profile drawn in the XY plane, extruded along Z and centred on z = 0."""
    return Manifold.extrude(CrossSection([_ccw(polygon)]), width).translate((0.0, 0.0, -width / 2))


def ring(radius: float, tube: float, y: float = 0.0) -> Manifold:
    """Horizontal torus around the Y axis at height y."""
    section = CrossSection.circle(tube, 12).translate((radius, 0.0))
    return Manifold.revolve(section, SEGMENTS).rotate((-90.0, 0.0, 0.0)).translate((0.0, y, 0.0))


def loop_handle(radius: float, tube: float) -> Manifold:
    """Half torus in the XY plane bulging toward +X; its cut ends sit at x = 0, y = +-radius."""
    section = CrossSection.circle(tube, 12).translate((radius, 0.0))
    return Manifold.revolve(section, SEGMENTS, 180.0).rotate((0.0, 0.0, -90.0))


def rounded_box(x0: float, x1: float, y0: float, y1: float, z0: float, z1: float,
                radius: float) -> Manifold:
    """Box with rounded edges (hull of eight corner spheres); radius is clipped to fit."""
    r = min(radius, 0.49 * min(x1 - x0, y1 - y0, z1 - z0))
    corners = [ball((x, y, z), r, segments=12)
               for x in (x0 + r, x1 - r) for y in (y0 + r, y1 - r) for z in (z0 + r, z1 - r)]
    return Manifold.batch_hull(corners)


def hull(points: Sequence[Sequence[float]]) -> Manifold:
    return Manifold.hull_points(np.asarray(points, dtype=float))


def union(parts: Sequence[Manifold]) -> Manifold:
    return Manifold.batch_boolean(list(parts), OpType.Add)


def subtract(solid: Manifold, holes: Sequence[Manifold]) -> Manifold:
    return Manifold.batch_boolean([solid, *holes], OpType.Subtract) if holes else solid


def polar(radius: float, angle_deg: float) -> tuple[float, float]:
    """(x, z) at an angle measured from +Z (the front) toward +X."""
    a = np.radians(angle_deg)
    return radius * float(np.sin(a)), radius * float(np.cos(a))
