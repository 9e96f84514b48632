"""Procedural geometry of the built-in categories: per category a sampler, a builder and a describer.

Frame: Y up, object resting on y = 0 before normalisation (units are loosely metres). Furniture,
containers, lamps, trees, rockets and houses face +Z (the front render's camera); vehicles (car,
airplane) and the desk lamp's arm point toward +X, so the front render shows their side profile.
Every builder returns ONE manifold3d solid: parts overlap a little and are boolean-unioned (hollows
are subtracted), so the surface is watertight, a single shell, with no internal faces.

`sample(draw)` records JSON-serialisable parameters, `build(params)` turns them into a solid
deterministically, and `describe(params, rng)` lists what the geometry visibly shows (`Facts`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from manifold3d import CrossSection, Manifold, OpType

SEGMENTS = 28  # circular segments of rods and lathes: ~100 triangles per rod
BALL_SEGMENTS = 16  # geodesic spheres stay cheap (~130 triangles)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


# ----------------------------------------------------------------------------------------------
# Parameter recording and descriptions
# ----------------------------------------------------------------------------------------------

class Draw:
    """Samples parameters from an rng and records each under its key (floats rounded to 4 places)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.params: dict[str, Any] = {}

    def uniform(self, key: str, lo: float, hi: float) -> float:
        value = round(float(self.rng.uniform(lo, hi)), 4)
        self.params[key] = value
        return value

    def integer(self, key: str, lo: int, hi: int) -> int:
        """Uniform integer in [lo, hi], both inclusive."""
        value = int(self.rng.integers(lo, hi + 1))
        self.params[key] = value
        return value

    def choice(self, key: str, options: Sequence[Any]) -> Any:
        value = options[int(self.rng.integers(len(options)))]
        self.params[key] = value
        return value

    def flag(self, key: str, p: float) -> bool:
        value = bool(self.rng.random() < p)
        self.params[key] = value
        return value

    def seed(self, key: str) -> int:
        """A sub-seed for layouts with many random parts (books, canopy blobs)."""
        value = int(self.rng.integers(2**31))
        self.params[key] = value
        return value


@dataclass
class Facts:
    """What a shape visibly shows, the raw material of its caption."""

    noun: str  # the category word or a synonym, e.g. "bar stool"
    adjectives: list[str]  # overall shape words, e.g. ["tall", "round"]
    features: list[str]  # visible parts, e.g. ["three legs", "a footrest ring"]


def pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    """One phrasing among equivalent ones."""
    return options[int(rng.integers(len(options)))]


def number(k: int) -> str:
    return NUMBER_WORDS[k] if 0 <= k < len(NUMBER_WORDS) else str(k)


# ----------------------------------------------------------------------------------------------
# Solid primitives (all return manifold3d.Manifold)
# ----------------------------------------------------------------------------------------------

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


@dataclass(frozen=True)
class Generator:
    """One category: sample parameters, build the solid, describe what it shows."""

    sample: Callable[[Draw], None]
    build: Callable[[dict], Manifold]
    describe: Callable[[dict, np.random.Generator], Facts]


# ----------------------------------------------------------------------------------------------
# Seating: chair, stool, bench, sofa
# ----------------------------------------------------------------------------------------------

def _chair_sample(d: Draw) -> None:
    shape = d.choice("seat_shape", ["square", "round"])
    d.choice("base", ["legs4", "legs3", "pedestal"] if shape == "round" else ["legs4", "legs4", "pedestal"])
    d.uniform("seat_width", 0.40, 0.56)
    d.uniform("seat_depth", 0.40, 0.54)
    d.uniform("seat_height", 0.40, 0.50)
    d.uniform("seat_thickness", 0.03, 0.07)
    d.uniform("leg_radius", 0.016, 0.03)
    d.uniform("back_height", 0.22, 0.62)
    d.choice("back_style", ["solid", "slats", "rails"])
    d.integer("back_bars", 2, 5)
    d.uniform("back_tilt", 0.0, 14.0)
    d.flag("arms", 0.4)


def _swivel_base(top: float, column_radius: float, reach: float) -> list[Manifold]:
    """Office-chair base: column, hub and five spokes ending in caster balls."""
    parts = [rod((0, 0.06, 0), (0, top, 0), column_radius), rod((0, 0.04, 0), (0, 0.1, 0), 0.05)]
    for k in range(5):
        x, z = polar(reach, 72.0 * k)
        parts.append(rod((0, 0.07, 0), (x, 0.05, z), 0.018))
        parts.append(ball((x, 0.03, z), 0.03))
    return parts


def _chair_back(width: float, height: float, thick: float, style: str, bars: int) -> Manifold:
    """Back in a local frame: x centred, y from 0 to height, z centred."""
    if style == "solid":
        return box(-width / 2, width / 2, 0, height, -thick / 2, thick / 2)
    post = 0.035
    parts = [box(s * width / 2 - (post if s > 0 else 0), s * width / 2 + (post if s < 0 else 0),
                 0, height, -thick / 2, thick / 2) for s in (-1, 1)]
    parts.append(box(-width / 2, width / 2, height - 0.05, height, -thick / 2, thick / 2))
    if style == "slats":  # vertical slats between the posts
        for x in np.linspace(-width / 2, width / 2, bars + 2)[1:-1]:
            parts.append(box(x - 0.014, x + 0.014, 0, height - 0.02, -thick * 0.3, thick * 0.3))
    else:  # horizontal rails, a ladder back
        for y in np.linspace(0.15 * height, height - 0.05, bars + 1)[:-1]:
            parts.append(box(-width / 2, width / 2, y, y + 0.035, -thick * 0.35, thick * 0.35))
    return union(parts)


def _chair_build(p: dict) -> Manifold:
    w, h, t, r = p["seat_width"], p["seat_height"], p["seat_thickness"], p["leg_radius"]
    round_seat = p["seat_shape"] == "round"
    depth = w if round_seat else p["seat_depth"]
    parts = [rod((0, h - t, 0), (0, h, 0), w / 2) if round_seat
             else box(-w / 2, w / 2, h - t, h, -depth / 2, depth / 2)]
    top = h - t + 0.01  # legs end inside the seat
    if p["base"] == "pedestal":
        parts += _swivel_base(top, 1.6 * r, 0.3 * max(w, depth) + 0.08)
    elif round_seat:
        angles = (45, 135, 225, 315) if p["base"] == "legs4" else (60, 180, 300)
        for a in angles:
            x, z = polar(w / 2 - 1.6 * r, a)
            parts.append(rod((x, 0, z), (x, top, z), r))
    else:
        for x in (-1, 1):
            for z in (-1, 1):
                px, pz = x * (w / 2 - 1.6 * r), z * (depth / 2 - 1.6 * r)
                parts.append(rod((px, 0, pz), (px, top, pz), r))
    bw, bh, bt = (0.8 * w if round_seat else w), p["back_height"], 0.035
    back_z = -0.3 * w if round_seat else -depth / 2 + bt / 2
    back = _chair_back(bw, bh, bt, p["back_style"], p["back_bars"])
    parts.append(back.rotate((-p["back_tilt"], 0, 0)).translate((0, h - 0.01, back_z)))
    if p["arms"]:
        arm_h = min(0.22, 0.8 * bh)
        lean = arm_h * np.sin(np.radians(p["back_tilt"]))
        for s in (-1, 1):
            x = s * (0.37 * w if round_seat else w / 2 - 0.025)
            front = 0.3 * w if round_seat else depth / 2 - 0.05
            parts.append(rod((x, h - 0.01, front), (x, h + arm_h, front), 0.018))
            parts.append(box(x - 0.025, x + 0.025, h + arm_h - 0.03, h + arm_h,
                             back_z - lean - 0.02, front + 0.04))
    return union(parts)


def _chair_describe(p: dict, rng: np.random.Generator) -> Facts:
    base = {"legs4": pick(rng, ["four legs", "four straight legs"]), "legs3": "three legs",
            "pedestal": pick(rng, ["a swivel pedestal on a five-spoke base",
                                   "a central pedestal with a star base"])}
    height = "high" if p["back_height"] > 0.45 else "low" if p["back_height"] < 0.32 else "medium-height"
    style = {"solid": "solid back", "slats": pick(rng, ["slatted back", "back with vertical slats"]),
             "rails": pick(rng, ["ladder back", "back with horizontal rails"])}[p["back_style"]]
    features = [f"a {p['seat_shape']} seat", base[p["base"]], f"a {height} {style}"]
    if p["arms"]:
        features.append(pick(rng, ["armrests", "two arms"]))
    noun = "office chair" if p["base"] == "pedestal" else pick(rng, ["chair", "armchair"]) if p["arms"] else "chair"
    return Facts(noun, [], features)


def _stool_sample(d: Draw) -> None:
    shape = d.choice("seat_shape", ["round", "round", "square"])
    tall = d.flag("tall", 0.5)
    d.uniform("height", 0.65, 0.8) if tall else d.uniform("height", 0.4, 0.5)
    d.choice("base", ["legs3", "legs4", "pedestal"] if shape == "round" else ["legs4", "legs4", "pedestal"])
    d.uniform("seat_size", 0.3, 0.42)
    d.uniform("seat_thickness", 0.03, 0.06)
    d.uniform("leg_radius", 0.014, 0.024)
    d.uniform("splay", 0.0, 0.07)
    d.flag("footrest", 0.65 if tall else 0.0)


def _stool_build(p: dict) -> Manifold:
    s, h, t, r = p["seat_size"], p["height"], p["seat_thickness"], p["leg_radius"]
    parts = [rod((0, h - t, 0), (0, h, 0), s / 2) if p["seat_shape"] == "round"
             else box(-s / 2, s / 2, h - t, h, -s / 2, s / 2)]
    top = h - t + 0.01
    if p["base"] == "pedestal":
        parts += [rod((0, 0, 0), (0, 0.03, 0), 0.35 * s + 0.03), rod((0, 0.02, 0), (0, top, 0), 0.03)]
        if p["footrest"]:
            y = 0.35 * h
            parts += [ring(0.42 * s, 0.012, y), rod((-0.42 * s, y, 0), (0.42 * s, y, 0), 0.01),
                      rod((0, y, -0.42 * s), (0, y, 0.42 * s), 0.01)]
        return union(parts)
    angles = (45, 135, 225, 315) if p["base"] == "legs4" else (60, 180, 300)
    radial = (s / 2 - 1.6 * r) if p["seat_shape"] == "round" else (s / 2 - 1.6 * r) * np.sqrt(2)
    foot = radial + p["splay"]
    for a in angles:
        xt, zt = polar(radial, a)
        xb, zb = polar(foot, a)
        parts.append(rod((xb, 0, zb), (xt, top, zt), r))
    if p["footrest"]:
        y = 0.33 * h
        parts.append(ring(foot + (radial - foot) * y / top, 0.011, y))
    return union(parts)


def _stool_describe(p: dict, rng: np.random.Generator) -> Facts:
    splayed = "splayed " if p["splay"] > 0.035 else ""
    base = {"legs3": f"three {splayed}legs", "legs4": f"four {splayed}legs",
            "pedestal": pick(rng, ["a central pedestal column with a round foot", "a single pedestal post"])}
    features = [f"a {p['seat_shape']} seat", base[p["base"]]]
    if p["footrest"]:
        features.append(pick(rng, ["a footrest ring", "a ring-shaped footrest"]))
    noun = pick(rng, ["bar stool", "tall stool"]) if p["tall"] else pick(rng, ["stool", "low stool"])
    return Facts(noun, [], features)


def _bench_sample(d: Draw) -> None:
    d.uniform("length", 1.0, 1.8)
    d.uniform("depth", 0.3, 0.45)
    d.uniform("height", 0.4, 0.48)
    d.uniform("seat_thickness", 0.04, 0.06)
    d.choice("seat", ["solid", "slats"])
    d.integer("slats", 3, 5)
    d.choice("legs", ["legs4", "panels"])
    back = d.flag("backrest", 0.45)
    d.uniform("back_height", 0.3, 0.45)
    d.flag("arms", 0.5 if back else 0.0)


def _bench_build(p: dict) -> Manifold:
    L, D, h, t = p["length"], p["depth"], p["height"], p["seat_thickness"]
    parts = []
    if p["seat"] == "solid":
        parts.append(box(-L / 2, L / 2, h - t, h, -D / 2, D / 2))
    else:
        n, gap = p["slats"], 0.015
        width = (D - (n - 1) * gap) / n
        for k in range(n):
            z0 = -D / 2 + k * (width + gap)
            parts.append(box(-L / 2, L / 2, h - t, h, z0, z0 + width))
    inset = 0.12 if p["legs"] == "legs4" else 0.1
    for s in (-1, 1):  # cross bearers tie slats and legs together
        x = s * (L / 2 - inset)
        parts.append(box(x - 0.03, x + 0.03, h - t - 0.05, h - t + 0.005, -D / 2 + 0.02, D / 2 - 0.02))
        if p["legs"] == "legs4":
            for z in (-1, 1):
                parts.append(box(x - 0.025, x + 0.025, 0, h - t - 0.04, z * (D / 2 - 0.05) - 0.025,
                                 z * (D / 2 - 0.05) + 0.025))
        else:
            parts.append(box(x - 0.03, x + 0.03, 0, h - t - 0.04, -0.45 * D, 0.45 * D))
    if p["backrest"]:
        bh, zb = p["back_height"], -D / 2 + 0.02
        for s in (-1, 1):
            x = s * (L / 2 - inset)
            parts.append(box(x - 0.03, x + 0.03, h - 0.02, h + bh, zb - 0.02, zb + 0.02))
        for y in (h + 0.45 * bh, h + bh - 0.08):
            parts.append(box(-L / 2, L / 2, y, y + 0.08, zb - 0.015, zb + 0.015))
        if p["arms"]:
            for s in (-1, 1):
                x = s * (L / 2 - 0.03)
                parts.append(box(x - 0.025, x + 0.025, h - 0.01, h + 0.22, D / 2 - 0.07, D / 2 - 0.03))
                parts.append(box(x - 0.03, x + 0.03, h + 0.2, h + 0.24, zb - 0.02, D / 2 - 0.02))
    return union(parts)


def _bench_describe(p: dict, rng: np.random.Generator) -> Facts:
    adjectives = ["long"] if p["length"] > 1.45 else ["short"] if p["length"] < 1.2 else []
    seat = (pick(rng, [f"a seat of {number(p['slats'])} slats", "a slatted seat"]) if p["seat"] == "slats"
            else pick(rng, ["a flat solid seat", "a solid seat"]))
    legs = "four legs" if p["legs"] == "legs4" else pick(rng, ["two slab legs", "solid panel ends"])
    features = [seat, legs]
    if p["backrest"]:
        features.append(pick(rng, ["a backrest", "a back of two rails"]))
    if p["arms"]:
        features.append("armrests")
    noun = pick(rng, ["park bench", "bench"]) if p["backrest"] else "bench"
    return Facts(noun, adjectives, features)


def _sofa_sample(d: Draw) -> None:
    seats = d.integer("seats", 2, 4)
    d.uniform("seat_width", 0.55, 0.7)
    d.uniform("depth", 0.8, 0.98)
    legs = d.flag("legs", 0.6)
    d.uniform("leg_height", 0.06, 0.14) if legs else d.uniform("leg_height", 0.0, 0.0)
    d.uniform("base_height", 0.16, 0.24)
    d.uniform("cushion", 0.1, 0.16)
    d.uniform("back_height", 0.35, 0.55)
    d.uniform("back_depth", 0.16, 0.26)
    d.choice("arms", ["none", "square", "square", "rolled", "rolled"])
    d.uniform("arm_width", 0.12, 0.22)
    d.uniform("arm_height", 0.1, 0.24)
    chaise = d.flag("chaise", 0.3 if seats >= 3 else 0.0)
    d.uniform("chaise_length", 0.55, 0.8) if chaise else d.uniform("chaise_length", 0.0, 0.0)


def _sofa_arm(x0: float, x1: float, top: float, z0: float, z1: float, rolled: bool) -> Manifold:
    if not rolled:
        return rounded_box(x0, x1, 0, top, z0, z1, 0.03)
    r = 0.55 * (x1 - x0)  # a round roll along the arm's top, wider than the arm
    xc = (x0 + x1) / 2
    return union([box(x0, x1, 0, top - r, z0, z1), rod((xc, top - r, z0), (xc, top - r, z1), r)])


def _sofa_build(p: dict) -> Manifold:
    n, sw, D = p["seats"], p["seat_width"], p["depth"]
    lh, bh, ch = p["leg_height"], p["base_height"], p["cushion"]
    arm = p["arm_width"] if p["arms"] != "none" else 0.0
    W = n * sw + 2 * arm
    seat_top = lh + bh + ch
    front = D / 2 + p["chaise_length"]  # the chaise (if any) extends the +X seat forward
    parts = [box(-W / 2, W / 2, lh, lh + bh, -D / 2, D / 2)]
    if p["chaise"]:
        parts.append(box(W / 2 - arm - sw, W / 2, lh, lh + bh, 0, front))
    zb = -D / 2 + p["back_depth"]
    for k in range(n):
        x0 = -W / 2 + arm + k * sw + 0.01
        z1 = front if (p["chaise"] and k == n - 1) else D / 2
        parts.append(rounded_box(x0, x0 + sw - 0.02, lh + bh - 0.03, seat_top, zb - 0.03, z1, 0.04))
        parts.append(rounded_box(x0, x0 + sw - 0.02, lh + bh - 0.03, seat_top + p["back_height"],
                                 -D / 2 + 0.005, zb, 0.05))  # kept off the base's back plane
    if arm:
        top = seat_top + p["arm_height"]
        parts.append(_sofa_arm(-W / 2, -W / 2 + arm, top, -D / 2, D / 2, p["arms"] == "rolled")
                     .translate((0, lh - 0.01, 0)))
        parts.append(_sofa_arm(W / 2 - arm, W / 2, top, -D / 2, front, p["arms"] == "rolled")
                     .translate((0, lh - 0.01, 0)))
    if p["legs"]:
        for x, z1 in ((-W / 2 + 0.07, D / 2), (W / 2 - 0.07, front)):
            for z in (-D / 2 + 0.07, z1 - 0.07):
                parts.append(rod((x, 0, z), (x, lh + 0.02, z), 0.028, 0.02))
    return union(parts)


def _sofa_describe(p: dict, rng: np.random.Generator) -> Facts:
    seats = number(p["seats"])
    cushions = bool(rng.random() < 0.5)  # name the seat count either on the cushions or on the noun
    features = [f"{seats} seat cushions"] if cushions else []
    if p["arms"] == "square":
        features.append(pick(rng, ["square arms", "boxy armrests"]))
    elif p["arms"] == "rolled":
        features.append(pick(rng, ["rolled arms", "round rolled armrests"]))
    if p["chaise"]:
        features.append(pick(rng, ["an L-shaped chaise extension", "a chaise on one side"]))
    features.append(pick(rng, ["short legs", "four short feet"]) if p["legs"] else "a solid base")
    noun = pick(rng, ["sofa", "couch"]) if cushions else f"{seats}-seat {pick(rng, ['sofa', 'couch'])}"
    return Facts(noun, ["long"] if p["seats"] == 4 else [], features)


# ----------------------------------------------------------------------------------------------
# Tables and storage: table, desk, bed, cabinet, bookshelf
# ----------------------------------------------------------------------------------------------

def _table_sample(d: Draw) -> None:
    shape = d.choice("top_shape", ["round", "square", "rectangular", "oval"])
    d.choice("support", {"round": ["legs3", "legs4", "pedestal"],
                         "square": ["legs4", "legs4", "pedestal"],
                         "rectangular": ["legs4", "legs4", "trestle"],
                         "oval": ["legs4", "pedestal", "trestle"]}[shape])
    level = d.choice("height_class", ["low", "medium", "medium", "tall"])
    d.uniform("height", *{"low": (0.35, 0.48), "medium": (0.7, 0.78), "tall": (0.98, 1.1)}[level])
    if shape in ("round", "square"):
        d.uniform("length", 0.75, 1.2)
        d.params["depth"] = d.params["length"]
    else:
        d.uniform("length", 1.3, 2.0)
        d.uniform("depth", 0.7, 1.0)
    d.uniform("top_thickness", 0.03, 0.06)
    d.uniform("leg_radius", 0.022, 0.04)
    d.choice("leg_profile", ["round", "square"])
    d.flag("shelf", 0.3 if d.params["support"] == "legs4" and level != "tall" else 0.0)


def _table_top(shape: str, L: float, D: float, y0: float, y1: float) -> Manifold:
    if shape in ("square", "rectangular"):
        return box(-L / 2, L / 2, y0, y1, -D / 2, D / 2)
    return rod((0, y0, 0), (0, y1, 0), 0.5, segments=40).scale((L, 1.0, D))  # unit-diameter disc stretched


def _post(x: float, z: float, y0: float, y1: float, r: float, square: bool) -> Manifold:
    return box(x - r, x + r, y0, y1, z - r, z + r) if square else rod((x, y0, z), (x, y1, z), r)


def _table_build(p: dict) -> Manifold:
    L, D, h, t, r = p["length"], p["depth"], p["height"], p["top_thickness"], p["leg_radius"]
    curved = p["top_shape"] in ("round", "oval")
    parts = [_table_top(p["top_shape"], L, D, h - t, h)]
    under = h - t + 0.01
    square = p["leg_profile"] == "square"
    if p["support"] in ("legs4", "legs3"):
        if p["support"] == "legs3":
            spots = [polar(0.33 * L, a) for a in (60, 180, 300)]
        elif curved:  # corners of the inscribed square of the ellipse
            spots = [(sx * 0.33 * L, sz * 0.33 * D) for sx in (-1, 1) for sz in (-1, 1)]
        else:
            spots = [(sx * (L / 2 - 0.08), sz * (D / 2 - 0.08)) for sx in (-1, 1) for sz in (-1, 1)]
        parts += [_post(x, z, 0, under, r, square) for x, z in spots]
        if p["shelf"]:
            xs, zs = max(abs(s[0]) for s in spots), max(abs(s[1]) for s in spots)
            parts.append(box(-xs, xs, 0.16 * h, 0.16 * h + 0.025, -zs, zs))
    elif p["support"] == "pedestal":
        foot = 0.3 * min(L, D)
        parts += [rod((0, 0, 0), (0, 0.04, 0), foot), rod((0, 0.03, 0), (0, under, 0), 1.8 * r)]
    else:  # trestle: two slab ends on feet, joined by a stretcher
        for s in (-1, 1):
            x = s * (L / 2 - 0.18)
            parts.append(box(x - 0.03, x + 0.03, 0.04, under, -0.3 * D, 0.3 * D))
            parts.append(box(x - 0.05, x + 0.05, 0, 0.06, -0.38 * D, 0.38 * D))
        parts.append(box(-L / 2 + 0.18, L / 2 - 0.18, 0.35 * h, 0.35 * h + 0.06, -0.03, 0.03))
    return union(parts)


def _table_describe(p: dict, rng: np.random.Generator) -> Facts:
    noun = {"low": pick(rng, ["coffee table", "low table"]), "tall": pick(rng, ["bar table", "tall table"]),
            "medium": pick(rng, ["table", "dining table"])}[p["height_class"]]
    support = {"legs4": "four square legs" if p["leg_profile"] == "square" else "four legs",
               "legs3": "three legs",
               "pedestal": pick(rng, ["a single central pedestal", "a single pedestal leg"]),
               "trestle": pick(rng, ["trestle legs joined by a stretcher", "two trestle ends"])}
    features = [support[p["support"]]]
    if p["shelf"]:
        features.append("a lower shelf")
    return Facts(noun, [p["top_shape"]], features)


def _desk_sample(d: Draw) -> None:
    d.uniform("width", 1.1, 1.6)
    d.uniform("depth", 0.55, 0.75)
    d.uniform("height", 0.72, 0.78)
    d.uniform("top_thickness", 0.03, 0.05)
    d.choice("style", ["pedestal", "pedestal", "double", "legs"])
    d.integer("drawers", 2, 4)
    d.uniform("pedestal_width", 0.36, 0.45)
    d.flag("hutch", 0.35)
    d.uniform("hutch_height", 0.3, 0.5)
    d.flag("back_panel", 0.5)


def _drawer_fronts(x0: float, x1: float, y0: float, y1: float, z: float, rows: int) -> list[Manifold]:
    """Drawer panels stacked between y0 and y1 on the face at z, each with a bar handle."""
    parts, gap = [], 0.012
    step = (y1 - y0) / rows
    for k in range(rows):
        a, b = y0 + k * step + gap / 2, y0 + (k + 1) * step - gap / 2
        parts.append(box(x0 + 0.02, x1 - 0.02, a, b, z - 0.01, z + 0.018))
        xm, ym, half = (x0 + x1) / 2, (a + b) / 2, 0.22 * (x1 - x0)
        parts.append(rod((xm - half, ym, z + 0.035), (xm + half, ym, z + 0.035), 0.009))
        for x in (xm - half + 0.01, xm + half - 0.01):
            parts.append(rod((x, ym, z + 0.01), (x, ym, z + 0.04), 0.007))
    return parts


def _desk_build(p: dict) -> Manifold:
    W, D, h, t, pw = p["width"], p["depth"], p["height"], p["top_thickness"], p["pedestal_width"]
    under = h - t + 0.005
    parts = [box(-W / 2, W / 2, h - t, h, -D / 2, D / 2)]
    zf = D / 2 - 0.03  # front face of carcasses, set back under the top's lip
    sides = {"pedestal": (1,), "double": (-1, 1), "legs": ()}[p["style"]]
    for s in sides:
        x0, x1 = (W / 2 - pw - 0.01, W / 2 - 0.01) if s > 0 else (-W / 2 + 0.01, -W / 2 + pw + 0.01)
        parts.append(box(x0, x1, 0, under, -D / 2 + 0.03, zf))
        parts += _drawer_fronts(x0, x1, 0.05, under - 0.02, zf, p["drawers"])
    legs = {"pedestal": [(-W / 2 + 0.05, z) for z in (-D / 2 + 0.06, D / 2 - 0.06)], "double": [],
            "legs": [(x, z) for x in (-W / 2 + 0.05, W / 2 - 0.05) for z in (-D / 2 + 0.06, D / 2 - 0.06)]}
    parts += [box(x - 0.025, x + 0.025, 0, under, z - 0.025, z + 0.025) for x, z in legs[p["style"]]]
    if p["style"] == "legs":  # a shallow drawer under the top
        parts.append(box(-0.3 * W, 0.3 * W, h - t - 0.12, under, -D / 2 + 0.06, zf - 0.01))
        parts += _drawer_fronts(-0.3 * W, 0.3 * W, h - t - 0.12, h - t, zf - 0.01, 1)
    if p["back_panel"]:
        parts.append(box(-W / 2 + 0.03, W / 2 - 0.03, 0.3 * h, under, -D / 2 + 0.04, -D / 2 + 0.06))
    if p["hutch"]:
        hh, zb = p["hutch_height"], -D / 2 + 0.26
        for s in (-1, 1):
            parts.append(box(s * W / 2 - 0.02 * (s + 1), s * W / 2 - 0.02 * (s - 1), h - 0.01, h + hh, -D / 2, zb))
        parts.append(box(-W / 2, W / 2, h + hh - 0.025, h + hh, -D / 2, zb))
        parts.append(box(-W / 2, W / 2, h + 0.5 * hh, h + 0.5 * hh + 0.02, -D / 2, zb))
        parts.append(box(-W / 2, W / 2, h - 0.01, h + hh, -D / 2, -D / 2 + 0.015))
    return union(parts)


def _desk_describe(p: dict, rng: np.random.Generator) -> Facts:
    k = number(p["drawers"])
    features = {"pedestal": [f"a {k}-drawer pedestal on one side", "two legs on the other"],
                "double": [f"two pedestals of {k} drawers"],
                "legs": ["four legs", "a drawer under the top"]}[p["style"]]
    if p["back_panel"]:
        features.append(pick(rng, ["a back panel", "a modesty panel at the back"]))
    if p["hutch"]:
        features.append(pick(rng, ["a hutch shelf on top", "a raised shelf unit at the back"]))
    return Facts(pick(rng, ["desk", "writing desk", "office desk"]), [], features)


def _bed_sample(d: Draw) -> None:
    double = d.flag("double", 0.5)
    d.uniform("width", 1.4, 1.8) if double else d.uniform("width", 0.9, 1.1)
    d.uniform("length", 1.95, 2.15)
    d.uniform("frame_height", 0.22, 0.35)
    d.flag("legs", 0.5)
    d.uniform("mattress", 0.16, 0.26)
    d.uniform("headboard_height", 0.35, 0.9)
    d.choice("headboard", ["panel", "rounded"])
    d.flag("footboard", 0.45)
    d.uniform("footboard_height", 0.08, 0.25)
    d.integer("pillows", 1, 2) if double else d.integer("pillows", 1, 1)


def _bed_build(p: dict) -> Manifold:
    W, L, fh, mt = p["width"], p["length"], p["frame_height"], p["mattress"]
    lh, ht = (0.12 if p["legs"] else 0.0), 0.06
    top = fh + mt
    parts = [box(-W / 2, W / 2, lh, fh, -L / 2, L / 2),
             rounded_box(-W / 2 + 0.03, W / 2 - 0.03, fh - 0.03, top, -L / 2 + ht - 0.01, L / 2 - 0.03, 0.06)]
    head_top = top + p["headboard_height"]
    if p["headboard"] == "rounded":  # a half-ellipse crown on a shorter panel
        crown = min(0.25 * W, 0.6 * p["headboard_height"])
        parts.append(box(-W / 2 - 0.02, W / 2 + 0.02, 0, head_top - crown, -L / 2, -L / 2 + ht))
        parts.append(Manifold.cylinder(ht, 1.0, 1.0, 40).scale((W / 2 + 0.02, crown, 1.0))
                     .translate((0, head_top - crown, -L / 2)))
    else:
        parts.append(box(-W / 2 - 0.02, W / 2 + 0.02, 0, head_top, -L / 2, -L / 2 + ht))
    if p["footboard"]:
        parts.append(box(-W / 2 - 0.02, W / 2 + 0.02, 0, top + p["footboard_height"], L / 2 - 0.05, L / 2 + 0.01))
    if p["legs"]:
        for x in (-W / 2 + 0.06, W / 2 - 0.06):
            for z in (-L / 2 + 0.1, L / 2 - 0.08):
                parts.append(rod((x, 0, z), (x, lh + 0.02, z), 0.035, 0.028))
    n = p["pillows"]
    pw = (W - 0.16) / n
    for k in range(n):
        x0 = -W / 2 + 0.08 + k * pw
        parts.append(rounded_box(x0 + 0.02, x0 + pw - 0.02, top - 0.03, top + 0.11,
                                 -L / 2 + ht + 0.04, -L / 2 + ht + 0.42, 0.05))
    return union(parts)


def _bed_describe(p: dict, rng: np.random.Generator) -> Facts:
    tall = "tall" if p["headboard_height"] > 0.6 else "low"
    shape = "rounded " if p["headboard"] == "rounded" else ""
    features = [f"a {tall} {shape}headboard"]
    if p["footboard"]:
        features.append("a footboard")
    features.append("one pillow" if p["pillows"] == 1 else "two pillows")
    features.append(pick(rng, ["short legs", "four short legs"]) if p["legs"] else "a solid base")
    noun = pick(rng, ["double bed", "wide bed"]) if p["double"] else pick(rng, ["single bed", "narrow bed"])
    return Facts(noun, [], features)


def _cabinet_sample(d: Draw) -> None:
    width = d.uniform("width", 0.5, 1.2)
    d.uniform("height", 0.5, 1.8)
    d.uniform("depth", 0.35, 0.55)
    front = d.choice("front", ["doors", "drawers", "mixed"])
    d.integer("doors", 1, 2 if width < 0.8 else 3) if front == "doors" else d.integer("doors", 2, 2)
    d.integer("drawers", 2, 5) if front == "drawers" else d.integer("drawers", 1, 2)
    d.choice("feet", ["legs", "plinth"])
    d.choice("handles", ["knobs", "bars"])


def _cabinet_build(p: dict) -> Manifold:
    W, H, D = p["width"], p["height"], p["depth"]
    fh = 0.12 if p["feet"] == "legs" else 0.07
    zf = D / 2
    parts = [box(-W / 2, W / 2, fh, H - 0.025, -D / 2, zf),
             box(-W / 2 - 0.015, W / 2 + 0.015, H - 0.03, H, -D / 2 - 0.01, zf + 0.025)]
    if p["feet"] == "legs":
        for x in (-W / 2 + 0.05, W / 2 - 0.05):
            for z in (-D / 2 + 0.05, zf - 0.05):
                parts.append(rod((x, 0, z), (x, fh + 0.01, z), 0.022, 0.03))
    else:
        parts.append(box(-W / 2 + 0.03, W / 2 - 0.03, 0, fh + 0.01, -D / 2 + 0.03, zf - 0.03))
    bottom, top, gap = fh + 0.02, H - 0.05, 0.012
    rows = 0 if p["front"] == "doors" else p["drawers"]
    split = {"doors": top, "drawers": bottom,  # drawers above `split`, doors below it
             "mixed": top - rows * min(0.2, (top - bottom) / (rows + 2))}[p["front"]]
    if rows:
        step = (top - split) / rows
        for k in range(rows):
            a, b = split + k * step + gap / 2, split + (k + 1) * step - gap / 2
            parts.append(box(-W / 2 + 0.03, W / 2 - 0.03, a, b, zf - 0.01, zf + 0.02))
            parts.append(_handle(0.0, (a + b) / 2, zf + 0.02, p["handles"], vertical=False))
    if p["front"] != "drawers":
        n = p["doors"]
        dw = (W - 0.06) / n
        for k in range(n):
            x0, x1 = -W / 2 + 0.03 + k * dw + gap / 2, -W / 2 + 0.03 + (k + 1) * dw - gap / 2
            parts.append(box(x0, x1, bottom, split - gap / 2, zf - 0.01, zf + 0.02))
            hx = x1 - 0.05 if k < n / 2 else x0 + 0.05  # handles near the meeting edges
            parts.append(_handle(hx, split - 0.12 if split - bottom > 0.5 else (bottom + split) / 2,
                                 zf + 0.02, p["handles"], vertical=True))
    return union(parts)


def _handle(x: float, y: float, z: float, style: str, vertical: bool) -> Manifold:
    """A knob or a bar handle standing off the face at depth z."""
    if style == "knobs":
        return union([rod((x, y, z - 0.01), (x, y, z + 0.02), 0.008), ball((x, y, z + 0.025), 0.016)])
    d = np.array([0, 0.06, 0]) if vertical else np.array([0.08, 0, 0])
    c = np.array([x, y, z + 0.03])
    feet = [rod(c + s * d - [0, 0, 0.04], c + s * d, 0.007) for s in (-1, 1)]
    return union([rod(c - d, c + d, 0.009), *feet])


def _cabinet_describe(p: dict, rng: np.random.Generator) -> Facts:
    W, H = p["width"], p["height"]
    adjectives = ["tall"] if H > 1.2 and H > 1.4 * W else ["low"] if H < 0.8 else []
    if W > 1.0 and H < W:
        adjectives.append("wide")
    features = []
    if p["front"] != "doors":
        features.append(f"{number(p['drawers'])} drawer" + ("s" if p["drawers"] > 1 else ""))
    if p["front"] != "drawers":
        features.append(f"{number(p['doors'])} door" + ("s" if p["doors"] > 1 else ""))
    features.append(pick(rng, ["round knobs", "knob handles"]) if p["handles"] == "knobs" else "bar handles")
    features.append("four short legs" if p["feet"] == "legs" else "a plinth base")
    noun = (pick(rng, ["chest of drawers", "dresser", "cabinet"]) if p["front"] == "drawers"
            else pick(rng, ["cabinet", "cupboard"]))
    return Facts(noun, adjectives, features)


def _bookshelf_sample(d: Draw) -> None:
    width = d.uniform("width", 0.6, 1.6)
    height = d.uniform("height", 0.8, 2.0)
    d.uniform("depth", 0.25, 0.4)
    d.integer("shelves", 1, max(1, min(5, int(height / 0.3) - 1)))
    d.uniform("board", 0.02, 0.035)
    d.flag("divider", 0.6 if width > 1.1 else 0.0)
    d.flag("books", 0.5)
    d.seed("books_seed")


def _bookshelf_build(p: dict) -> Manifold:
    W, H, D, b = p["width"], p["height"], p["depth"], p["board"]
    parts = [box(-W / 2, -W / 2 + b, 0, H, -D / 2, D / 2), box(W / 2 - b, W / 2, 0, H, -D / 2, D / 2),
             box(-W / 2, W / 2, H - b, H, -D / 2, D / 2), box(-W / 2, W / 2, 0, 0.06, -D / 2, D / 2),
             box(-W / 2, W / 2, 0, H, -D / 2, -D / 2 + 0.012)]
    levels = np.linspace(0.06, H - b, p["shelves"] + 2)  # tops of the boards bounding each compartment
    for y in levels[1:-1]:
        parts.append(box(-W / 2, W / 2, y - b, y, -D / 2, D / 2))
    columns = [(-W / 2 + b, W / 2 - b)]
    if p["divider"]:
        parts.append(box(-b / 2, b / 2, 0, H, -D / 2, D / 2))
        columns = [(-W / 2 + b, -b / 2), (b / 2, W / 2 - b)]
    if p["books"]:
        rng = np.random.default_rng(p["books_seed"])
        for y0, y1 in zip(levels[:-1], levels[1:] - b):
            for x0, x1 in columns:
                x, stop = x0 + 0.01, x0 + (x1 - x0) * rng.uniform(0.5, 0.95)
                while x < stop:  # a row of books of varied width and height, standing on the board
                    w = rng.uniform(0.025, 0.05)
                    hb = (y1 - y0) * rng.uniform(0.6, 0.88)
                    back, front = -D / 2 + 0.01, -D / 2 + D * rng.uniform(0.7, 0.9)
                    parts.append(box(x, x + w, y0 - 0.002, y0 + hb, back, front))
                    x += w + 0.004
    return union(parts)


def _bookshelf_describe(p: dict, rng: np.random.Generator) -> Facts:
    W, H = p["width"], p["height"]
    adjectives = ["tall", "narrow"] if H > 1.5 * W else ["wide"] if W > 1.1 * H else ["low"] if H < 1.0 else []
    k = p["shelves"]
    features = [f"{number(k)} shelf" if k == 1 else f"{number(k)} shelves"]
    if p["divider"]:
        features.append(pick(rng, ["a central divider", "two columns of compartments"]))
    if p["books"]:
        features.append(pick(rng, ["rows of books", "books standing on the shelves"]))
    return Facts(pick(rng, ["bookshelf", "bookcase"]), adjectives, features)


# ----------------------------------------------------------------------------------------------
# Containers and lamps: mug, bottle, vase, lamp
# ----------------------------------------------------------------------------------------------

def _vessel(radii: Sequence[float], heights: Sequence[float], wall: float,
            floor: float) -> tuple[Manifold, Manifold]:
    """Outer solid and inner cavity of an open-topped vessel with outer profile r(y).

    The cavity follows the profile inset by `wall` and pokes out of the top, so subtracting it
    (after any handles are unioned on) leaves a clean interior.
    """
    outer = [(0.0, 0.0)] + list(zip(radii, heights)) + [(0.0, heights[-1])]
    inner = [(0.0, floor)] + [(max(r - wall, 0.2 * wall), y) for r, y in zip(radii, heights) if y > floor]
    inner += [(inner[-1][0], heights[-1] + 0.05), (0.0, heights[-1] + 0.05)]
    return lathe(outer), lathe(inner)


def _mug_sample(d: Draw) -> None:
    d.uniform("radius", 0.035, 0.06)
    d.uniform("height", 0.06, 0.13)
    d.uniform("wall", 0.006, 0.009)
    d.uniform("taper", 0.85, 1.2)
    d.flag("handle", 0.8)
    d.choice("handle_shape", ["round", "round", "square"])
    d.flag("rim", 0.3)


def _mug_build(p: dict) -> Manifold:
    rb, H, w = p["radius"], p["height"], p["wall"]
    rt = rb * p["taper"]
    ys = np.linspace(0.0, H, 6)
    outer, cavity = _vessel([rb + (rt - rb) * y / H for y in ys], ys, w, 0.012)
    parts = [outer]
    if p["rim"]:
        parts.append(ring(rt - 0.3 * w, 0.6 * w, H - 0.6 * w))
    if p["handle"]:
        r_mid = (rb + rt) / 2 - 0.4 * w
        span = 0.34 * H
        if p["handle_shape"] == "round":
            parts.append(loop_handle(span, 0.2 * span).scale((1.15, 1.0, 1.0)).translate((r_mid, H / 2, 0)))
        else:  # a squared D: two arms out, one upright, balls on the corners
            reach, tube = 0.45 * span + 0.02, 0.012
            a, b = (r_mid, H / 2 + span, 0), (r_mid + reach, H / 2 + span, 0)
            c, e = (r_mid + reach, H / 2 - span, 0), (r_mid, H / 2 - span, 0)
            parts += [rod(a, b, tube), rod(b, c, tube), rod(c, e, tube), ball(b, tube), ball(c, tube)]
    return subtract(union(parts), [cavity])


def _mug_describe(p: dict, rng: np.random.Generator) -> Facts:
    ratio = p["height"] / (2 * p["radius"])
    adjectives = (["tall"] if ratio > 1.15 else ["short"] if ratio < 0.8 else [])
    adjectives += ["wide"] if p["radius"] > 0.05 else ["narrow"] if p["radius"] < 0.042 else []
    features = []
    if p["handle"]:
        features.append(pick(rng, ["a round loop handle", "a curved handle"]) if p["handle_shape"] == "round"
                        else pick(rng, ["a squared handle", "an angular D-shaped handle"]))
    if p["taper"] > 1.1:
        features.append("sides flaring toward the top")
    elif p["taper"] < 0.93:
        features.append("sides tapering toward the top")
    else:
        features.append(pick(rng, ["straight sides", "straight cylindrical sides"]))
    if p["rim"]:
        features.append("a rolled rim")
    return Facts(pick(rng, ["mug", "cup", "coffee mug"]), adjectives, features)


def _bottle_sample(d: Draw) -> None:
    body = d.choice("body", ["round", "round", "square", "flask"])
    d.uniform("radius", 0.03, 0.05)
    d.uniform("body_height", 0.06, 0.1) if body == "flask" else d.uniform("body_height", 0.11, 0.24)
    d.uniform("shoulder", 0.02, 0.06)
    d.uniform("neck_radius", 0.3, 0.42)  # fraction of the body radius
    d.choice("neck", ["short", "long"])
    d.uniform("neck_length", 0.05, 0.09) if d.params["neck"] == "long" else d.uniform("neck_length", 0.012, 0.03)
    d.flag("cap", 0.6)


def _bottle_build(p: dict) -> Manifold:
    rb, hb, hs = p["radius"], p["body_height"], p["shoulder"]
    rn = rb * p["neck_radius"]
    y_neck = hb + hs
    y_top = y_neck + p["neck_length"]
    neck = [(rn, y_neck), (rn, y_top - 0.006), (rn * 1.15, y_top - 0.004), (rn * 1.15, y_top), (0.0, y_top)]
    if p["body"] == "flask":  # a sphere-like belly on a flat foot
        angles = np.radians(np.linspace(-60, 70, 9))
        belly = [(rb * np.cos(a), hb / 2 * (np.sin(a) - np.sin(angles[0]))) for a in angles]
        y_neck = belly[-1][1] + 0.3 * hs
        y_top = y_neck + p["neck_length"]
        neck = [(rn, y_neck), (rn, y_top - 0.006), (rn * 1.15, y_top - 0.004), (rn * 1.15, y_top), (0.0, y_top)]
        solid = lathe([(0.0, 0.0)] + belly + neck)
    elif p["body"] == "round":
        t = np.linspace(0, 1, 6)[1:]
        shoulder = [(rn + (rb - rn) * np.cos(np.pi / 2 * s), hb + hs * np.sin(np.pi / 2 * s)) for s in t]
        solid = lathe([(0.0, 0.0), (rb, 0.0), (rb, hb)] + shoulder[::-1][1:] + [(rn, y_neck)] + neck[1:])
    else:  # square body: rounded box, hull up to the neck ring
        body = rounded_box(-rb, rb, 0, hb, -rb, rb, 0.2 * rb)
        shoulder = Manifold.batch_hull([box(-rb, rb, hb - 0.002, hb, -rb, rb),
                                        rod((0, y_neck - 0.001, 0), (0, y_neck, 0), rn)])
        solid = union([body, shoulder, lathe([(0.0, y_neck - 0.002)] + neck)])
    if p["cap"]:
        solid = union([solid, rod((0, y_top - 0.6 * rn - 0.01, 0), (0, y_top + 0.01, 0), rn * 1.3)])
    return solid


def _bottle_describe(p: dict, rng: np.random.Generator) -> Facts:
    adjectives = {"round": ["round"], "square": ["square"], "flask": []}[p["body"]]
    if p["body"] != "flask" and p["body_height"] > 4.5 * p["radius"]:
        adjectives.insert(0, pick(rng, ["tall", "slender"]))
    features = ["a round flask-shaped belly"] if p["body"] == "flask" else []
    features.append("a long narrow neck" if p["neck"] == "long" else "a short neck")
    if p["cap"]:
        features.append(pick(rng, ["a cap", "a capped top"]))
    return Facts("bottle", adjectives, features)


def _vase_sample(d: Draw) -> None:
    style = d.choice("style", ["bulb", "cylinder", "trumpet", "amphora"])
    d.uniform("height", 0.2, 0.42)
    d.uniform("radius", 0.06, 0.13)
    d.uniform("neck", 0.35, 0.6) if style in ("bulb", "amphora") else d.uniform("neck", 0.8, 1.0)
    d.uniform("wall", 0.007, 0.011)


def _vase_profile(style: str, t: np.ndarray, neck: float) -> np.ndarray:
    """Outer radius as a fraction of the maximum radius, t from 0 (foot) to 1 (mouth)."""
    if style in ("bulb", "amphora"):  # a belly low down, a narrow neck, a small flared lip
        belly = np.exp(-((t - 0.38) / 0.3) ** 2)
        return neck + (1 - neck) * belly + 0.25 * np.clip((t - 0.85) / 0.15, 0, 1) ** 2
    if style == "cylinder":  # near-straight sides narrowing slightly to `neck` at the mouth
        return 1 - (1 - neck) * t + 0.04 * np.sin(np.pi * t)
    return 0.45 + 0.55 * ((t - 0.25) / 0.75).clip(0) ** 1.6 + 0.25 * (0.25 - t).clip(0) / 0.25  # trumpet


def _vase_build(p: dict) -> Manifold:
    H, R = p["height"], p["radius"]
    t = np.linspace(0, 1, 14)
    radii = R * _vase_profile(p["style"], t, p["neck"])
    outer, cavity = _vessel(list(radii), list(t * H), p["wall"], 0.02)
    parts = [outer]
    if p["style"] == "amphora":  # two handles from the shoulder up to the neck
        ys, yn = 0.5 * H, 0.82 * H
        rs = float(np.interp(ys / H, t, radii))
        rn = float(np.interp(yn / H, t, radii))
        for s in (-1, 1):
            a, b = (s * (rs - 0.01), ys, 0), (s * (rs + 0.05), ys + 0.05 * H, 0)
            c, e = (s * (rn + 0.05), yn, 0), (s * (rn - 0.01), yn, 0)
            parts += [rod(a, b, 0.009), rod(b, c, 0.009), rod(c, e, 0.009), ball(b, 0.009), ball(c, 0.009)]
    return subtract(union(parts), [cavity])


def _vase_describe(p: dict, rng: np.random.Generator) -> Facts:
    ratio = p["height"] / (2 * p["radius"])  # height over the widest diameter
    adjectives = ["tall"] if ratio > 1.8 else ["squat"] if ratio < 1.1 else []
    features = {"bulb": [pick(rng, ["a round belly and a narrow neck", "a bulbous body and a narrow neck"])],
                "cylinder": [pick(rng, ["straight cylindrical sides", "a simple cylindrical body"])],
                "trumpet": [pick(rng, ["a narrow waist and a wide flared mouth", "a trumpet-shaped flaring top"])],
                "amphora": ["a round belly", "a narrow neck", "two handles"]}[p["style"]]
    noun = pick(rng, ["amphora vase", "vase"]) if p["style"] == "amphora" else "vase"
    return Facts(noun, adjectives, features)


def _lamp_sample(d: Draw) -> None:
    kind = d.choice("kind", ["floor", "table", "desk"])
    d.choice("shade", ["cone", "drum", "dome", "globe"] if kind != "desk" else ["cone", "dome"])
    d.uniform("height", {"floor": 1.4, "table": 0.45, "desk": 0.0}[kind],
              {"floor": 1.8, "table": 0.65, "desk": 0.0}[kind])
    d.uniform("shade_size", 0.16, 0.24) if kind != "desk" else d.uniform("shade_size", 0.07, 0.1)
    d.choice("base", {"floor": ["disc", "tripod"], "table": ["disc", "column", "vase"], "desk": ["disc"]}[kind])
    d.uniform("arm_lean", 10.0, 35.0)
    d.uniform("arm_length", 0.28, 0.4)
    d.uniform("head_angle", 20.0, 60.0)


def _shade_height(style: str, size: float) -> float:
    return {"cone": 1.1, "drum": 1.1, "dome": 0.8, "globe": 2.0}[style] * size


def _shade(style: str, size: float, y: float) -> Manifold:
    """A solid lamp shade centred on the Y axis with its lower rim at height y."""
    h = _shade_height(style, size)
    if style == "cone":
        return rod((0, y, 0), (0, y + h, 0), size, 0.55 * size)
    if style == "drum":
        return rod((0, y, 0), (0, y + h, 0), size)
    if style == "dome":
        arc = [(size * np.cos(a), 0.8 * size * np.sin(a)) for a in np.linspace(0, np.pi / 2, 8)]
        return lathe([(0.0, 0.0)] + arc).translate((0, y, 0))
    return ball((0, y + size, 0), size, segments=24)


def _lamp_build(p: dict) -> Manifold:
    size = p["shade_size"]
    if p["kind"] == "desk":
        parts = [rod((0, 0, 0), (0, 0.03, 0), 0.1)]
        lean = np.radians(p["arm_lean"])
        L = p["arm_length"]
        elbow = np.array([-L * np.sin(lean), 0.02 + L * np.cos(lean), 0.0])  # leans back, away from +X
        tip = elbow + np.array([L, -0.15 * L, 0.0])
        parts += [rod((0, 0.02, 0), elbow, 0.012), rod(elbow, tip, 0.012), ball(elbow, 0.022), ball(tip, 0.02)]
        head = _shade(p["shade"], size, 0.01 - _shade_height(p["shade"], size))  # rim below, top at the tip
        head = head.rotate((0, 0, p["head_angle"])).translate(tuple(tip))
        return union(parts + [head])
    H = p["height"]
    shade_y = H - _shade_height(p["shade"], size)
    parts = [_shade(p["shade"], size, shade_y), rod((0, 0.02, 0), (0, shade_y + 0.3 * size, 0), 0.014)]
    if p["base"] == "tripod":
        for a in (0, 120, 240):
            x, z = polar(0.28 * H / 1.6, a)
            parts.append(rod((x, 0.0, z), (0, 0.35 * H, 0), 0.012))
    elif p["base"] == "disc":
        parts.append(rod((0, 0, 0), (0, 0.03, 0), 0.09 + 0.08 * H))
    elif p["base"] == "column":
        parts.append(rod((0, 0, 0), (0, 0.45 * H, 0), 0.045))
    else:  # a bulbous vase-like body
        t = np.linspace(0, 1, 9)
        parts.append(lathe([(0.0, 0.0)] + [(0.03 + 0.07 * np.sin(np.pi * s) + 0.015 * (1 - s), 0.45 * H * s)
                                           for s in t] + [(0.0, 0.45 * H)]))
    return union(parts)


def _lamp_describe(p: dict, rng: np.random.Generator) -> Facts:
    shade = {"cone": pick(rng, ["a cone-shaped shade", "a tapered shade"]),
             "drum": pick(rng, ["a drum shade", "a cylindrical shade"]),
             "dome": "a dome shade", "globe": pick(rng, ["a globe shade", "a spherical shade"])}[p["shade"]]
    if p["kind"] == "desk":
        return Facts(pick(rng, ["desk lamp", "reading lamp"]), [],
                     [pick(rng, ["an angled two-part arm", "a jointed arm"]), shade, "a round base"])
    base = {"disc": "a round base", "tripod": pick(rng, ["a tripod base", "three splayed legs"]),
            "column": "a column base", "vase": "a bulbous base"}[p["base"]]
    noun = pick(rng, ["floor lamp", "standing lamp"]) if p["kind"] == "floor" else "table lamp"
    return Facts(noun, ["tall"] if p["kind"] == "floor" else [], [shade, base])


# ----------------------------------------------------------------------------------------------
# Vehicles: car, airplane, rocket (cars and airplanes point their nose toward +X)
# ----------------------------------------------------------------------------------------------

def _car_sample(d: Draw) -> None:
    style = d.choice("style", ["sedan", "hatchback", "van", "pickup", "boxtruck"])
    truck = style in ("pickup", "boxtruck")
    d.uniform("length", 5.0, 6.5) if truck else d.uniform("length", 3.8, 5.0)
    d.uniform("width", 1.7, 2.0)
    d.uniform("wheel_radius", 0.36, 0.45) if truck else d.uniform("wheel_radius", 0.3, 0.38)
    d.uniform("clearance", 0.18, 0.3)
    d.uniform("body_height", 0.55, 0.75)
    d.uniform("cabin_height", 0.45, 0.6)
    d.uniform("hood", 0.22, 0.3)  # hood length as a fraction of the length
    d.choice("wheels", [4, 6] if truck else [4])


def _car_profile(p: dict) -> list[tuple[float, float]]:
    """Side silhouette in the XY plane, rear at -L/2, nose at +L/2."""
    L, c, hb, hc = p["length"], p["clearance"], p["body_height"], p["cabin_height"]
    belt = c + hb
    nose = [(-L / 2, c), (L / 2, c), (L / 2, c + 0.8 * hb), (L / 2 - 0.12, belt)]
    style = p["style"]
    if style in ("sedan", "hatchback"):
        xw = L / 2 - p["hood"] * L  # windshield base
        roof_front, rear = xw - 0.9 * hc, (-L / 2 + 0.22 * L if style == "sedan" else -L / 2 + 0.05)
        roof_back = rear + (0.75 * hc if style == "sedan" else 0.25 * hc)
        return nose + [(xw, belt), (roof_front, belt + hc), (roof_back, belt + hc), (rear, belt), (-L / 2, belt)]
    if style == "van":
        xw = L / 2 - 0.6 * p["hood"] * L
        top = belt + 1.8 * hc
        return nose + [(xw, belt), (xw - 0.6 * hc, top), (-L / 2 + 0.05, top), (-L / 2, top - 0.05)]
    cab_front = L / 2 - p["hood"] * L
    cab_back = cab_front - 0.9 - 0.4 * hc
    cab = nose + [(cab_front, belt), (cab_front - 0.5 * hc, belt + hc), (cab_back, belt + hc), (cab_back, belt)]
    return cab + [(-L / 2, belt)]  # pickup walls and the box truck's cargo box are added in _car_build


def _car_build(p: dict) -> Manifold:
    L, W, R = p["length"], p["width"], p["wheel_radius"]
    parts = [extrude_xy(_car_profile(p), W)]
    belt = p["clearance"] + p["body_height"]
    cab_back = L / 2 - p["hood"] * L - 0.9 - 0.4 * p["cabin_height"]
    holes = []
    if p["style"] == "pickup":  # an open bed behind the cab: raise the walls, then hollow it out
        parts.append(box(-L / 2, cab_back + 0.02, belt - 0.05, belt + 0.25, -W / 2, W / 2))
        holes.append(box(-L / 2 + 0.1, cab_back - 0.1, belt - 0.2, belt + 1.0, -W / 2 + 0.1, W / 2 - 0.1))
    elif p["style"] == "boxtruck":
        top = belt + 1.9 * p["cabin_height"] + 0.3
        parts.append(box(-L / 2, cab_back - 0.08, p["clearance"] + 0.05, top, -W / 2, W / 2))
    body = subtract(union(parts), holes)
    axles = [L / 2 - 0.17 * L, -L / 2 + 0.19 * L]
    if p["wheels"] == 6:
        axles.append(axles[1] + 2.3 * R)
    tire = 0.25
    wheels = [rod((x, R, s * (W / 2 - tire)), (x, R, s * (W / 2 + 0.04)), R, segments=32)
              for x in axles for s in (-1, 1)]
    return union([body, *wheels])


def _car_describe(p: dict, rng: np.random.Generator) -> Facts:
    noun = {"sedan": pick(rng, ["sedan", "car", "sedan car"]), "hatchback": pick(rng, ["hatchback", "small car"]),
            "van": pick(rng, ["van", "minivan"]), "pickup": "pickup truck",
            "boxtruck": pick(rng, ["box truck", "delivery truck"])}[p["style"]]
    features = [f"{number(p['wheels'])} wheels"]
    features += {"sedan": ["a separate trunk", "a sloping windshield"],
                 "hatchback": [pick(rng, ["a short rear", "a steep sloping back"])],
                 "van": [pick(rng, ["a tall boxy body", "a tall roof"])],
                 "pickup": [pick(rng, ["an open cargo bed", "an open bed behind the cab"])],
                 "boxtruck": [pick(rng, ["a tall cargo box", "a big box behind the cab"])]}[p["style"]]
    return Facts(noun, [], features)


def _airplane_sample(d: Draw) -> None:
    d.uniform("radius", 0.04, 0.065)  # fuselage radius; the fuselage is 1 long
    d.uniform("span", 0.8, 1.15)
    d.uniform("chord", 0.15, 0.24)
    d.uniform("taper", 0.3, 0.6)
    d.choice("wing_sweep", ["straight", "swept"])
    d.uniform("sweep", 0.0, 8.0) if d.params["wing_sweep"] == "straight" else d.uniform("sweep", 24.0, 38.0)
    d.choice("wing_position", ["low", "high"])
    d.uniform("dihedral", 0.0, 6.0)
    d.choice("engines", ["underwing2", "underwing4", "tail2", "propeller"])
    d.choice("tail", ["conventional", "t-tail"])


def _wing(x_le: float, y: float, chord: float, thick: float, span: float, sweep: float,
          taper: float, dihedral: float, side: int) -> Manifold:
    """One tapered, swept wing panel from the centre line (z = 0) to z = side * span."""
    def section(x: float, yy: float, z: float, c: float, t: float) -> list[tuple[float, float, float]]:
        return [(x, yy, z), (x - 0.3 * c, yy + t / 2, z), (x - c, yy, z), (x - 0.3 * c, yy - t / 2, z)]
    tip_x = x_le - span * np.tan(np.radians(sweep))
    tip_y = y + span * np.tan(np.radians(dihedral))
    return hull(section(x_le, y, 0.0, chord, thick) +
                section(tip_x, tip_y, side * span, taper * chord, max(0.6 * taper * thick, 0.008)))


def _airplane_build(p: dict) -> Manifold:
    r, span, chord = p["radius"], p["span"], p["chord"]
    prop = p["engines"] == "propeller"
    nose = 0.06 if prop else 0.12
    xs = [(-0.5, 0.25 * r), (-0.25, r), (0.5 - nose, r)]
    xs += [(0.5 - nose + nose * np.sin(a), r * np.cos(a)) for a in np.linspace(0.2, np.pi / 2, 5)]
    profile = [(0.0, -0.5)] + [(rr, x) for x, rr in xs] + [(0.0, 0.5)]
    if prop:
        profile[-2:] = [(0.5 * r, 0.5), (0.0, 0.5)]
    parts = [lathe(profile).rotate((0, 0, -90))]  # fuselage: lathe along Y, then Y -> +X
    wy = -0.5 * r if p["wing_position"] == "low" else 0.6 * r
    x_le = 0.12 + 0.3 * chord
    for s in (-1, 1):
        parts.append(_wing(x_le, wy, chord, 0.13 * chord, span / 2, p["sweep"], p["taper"], p["dihedral"], s))
    fin_h = 0.16
    fin = hull([(-0.5, 0.3 * r, -0.008), (-0.5, 0.3 * r, 0.008), (-0.3, 0.6 * r, -0.008), (-0.3, 0.6 * r, 0.008),
                (-0.49 - 0.5 * fin_h * np.tan(np.radians(p["sweep"] + 10)), 0.3 * r + fin_h, -0.006),
                (-0.42 - 0.5 * fin_h * np.tan(np.radians(p["sweep"] + 10)), 0.3 * r + fin_h, 0.006)])
    parts.append(fin)
    ty = 0.3 * r + fin_h - 0.01 if p["tail"] == "t-tail" else 0.2 * r
    tx = -0.36 if p["tail"] == "conventional" else -0.4 - 0.5 * fin_h * np.tan(np.radians(p["sweep"] + 10))
    for s in (-1, 1):
        parts.append(_wing(tx, ty, 0.1, 0.015, 0.17, p["sweep"] + 5, 0.5, 0.0, s))
    nr = 0.55 * r
    if p["engines"].startswith("underwing"):
        spots = (0.35,) if p["engines"] == "underwing2" else (0.28, 0.6)
        for f in spots:
            for s in (-1, 1):
                z = s * f * span / 2
                x = x_le - abs(z) * np.tan(np.radians(p["sweep"])) + 0.04
                y = wy + abs(z) * np.tan(np.radians(p["dihedral"])) - nr - 0.012
                parts.append(rod((x - 0.14, y, z), (x + 0.02, y, z), 0.8 * nr, nr))
                parts.append(box(x - 0.1, x - 0.02, y, y + nr + 0.02, z - 0.005, z + 0.005))
    elif p["engines"] == "tail2":
        for s in (-1, 1):
            z = s * (r + nr + 0.005)
            parts.append(rod((-0.37, 0.4 * r, z), (-0.22, 0.4 * r, z), 0.8 * nr, nr))
            parts.append(box(-0.33, -0.26, 0.35 * r, 0.45 * r, min(0, z), max(0, z)))
    else:
        parts.append(rod((0.49, 0, 0), (0.56, 0, 0), 0.45 * r, 0.05 * r))  # spinner
        for a in (0, 120, 240):
            parts.append(box(0.505, 0.52, -0.012, 0.17, -0.004, 0.004).rotate((a, 0, 0)))
    return union(parts)


def _airplane_describe(p: dict, rng: np.random.Generator) -> Facts:
    wings = ("swept-back wings" if p["wing_sweep"] == "swept"
             else pick(rng, ["straight wings", "straight unswept wings"]))
    place = "high-mounted" if p["wing_position"] == "high" else "low-mounted"
    engines = {"underwing2": "two engines under the wings", "underwing4": "four engines under the wings",
               "tail2": pick(rng, ["two rear-mounted engines", "two engines beside the tail"]),
               "propeller": pick(rng, ["a propeller on the nose", "a nose propeller"])}[p["engines"]]
    tail = "a T-tail" if p["tail"] == "t-tail" else pick(rng, ["a conventional tail", "a low tailplane"])
    noun = (pick(rng, ["propeller plane", "light aircraft", "airplane"]) if p["engines"] == "propeller"
            else pick(rng, ["airplane", "jet airliner", "aircraft", "plane"]))
    return Facts(noun, [], [f"{place} {wings}", engines, tail])


def _rocket_sample(d: Draw) -> None:
    d.integer("stages", 1, 3)
    d.uniform("radius", 0.06, 0.1)  # the rocket stands about 1 tall
    d.uniform("upper_scale", 0.6, 0.9)  # radius ratio of each stage to the one below
    d.choice("nose", ["pointed", "rounded"])
    d.uniform("nose_length", 1.6, 3.0)  # in radii
    fins = d.choice("fins", [3, 4])
    d.uniform("fin_size", 1.2, 2.2)  # span in body radii
    d.choice("boosters", [0, 2, 4] if fins == 4 else [0, 3])


def _rocket_build(p: dict) -> Manifold:
    r, n = p["radius"], p["stages"]
    nozzle = 0.06
    parts = [rod((0, 0, 0), (0, nozzle + 0.005, 0), 0.75 * r, 0.45 * r)]
    y, radius = nozzle, r
    body_h = 1.0 - nozzle - p["nose_length"] * r * p["upper_scale"] ** (n - 1)
    heights = [0.5, 0.3, 0.2][:n] if n > 1 else [1.0]
    heights = [body_h * h / sum(heights) for h in heights]
    for k, h in enumerate(heights):
        parts.append(rod((0, y, 0), (0, y + h, 0), radius))
        y += h
        if k < n - 1:  # a short tapering interstage
            nxt = radius * p["upper_scale"]
            parts.append(rod((0, y - 0.001, 0), (0, y + 0.03, 0), radius, nxt))
            y, radius = y + 0.03, nxt
    nl = p["nose_length"] * radius
    if p["nose"] == "pointed":  # ogive-like: radius falls as 1 - (s / nl)^1.6
        arc = [(radius * (1 - f ** 1.6), nl * f) for f in np.sin(np.linspace(0, np.pi / 2, 8))]
    else:  # a half-ellipsoid cap
        arc = [(radius * np.cos(a), 0.5 * nl * np.sin(a)) for a in np.linspace(0, np.pi / 2, 8)]
    parts.append(lathe([(0.0, -0.001)] + arc[:-1] + [(0.0, arc[-1][1])]).translate((0, y, 0)))
    span, fin_h = p["fin_size"] * r, 0.22
    root = [(0.8 * r, yy, zz) for yy in (0.0, fin_h) for zz in (-0.008, 0.008)]  # buried in the body
    tip = [(r + span, yy, zz) for yy in (0.0, 0.3 * fin_h) for zz in (-0.005, 0.005)]
    fin = hull(root + tip)
    first = 45.0 if p["fins"] == 4 else 60.0  # fins at first + k * step degrees about Y, boosters between
    step = 360.0 / p["fins"]
    parts += [fin.rotate((0, first + step * k, 0)) for k in range(p["fins"])]
    nb, br = p["boosters"], 0.4 * r
    top = nozzle + 0.45 * heights[0]
    for k in range(nb):
        a = np.radians(first - step / 2 + (360.0 / nb) * k)
        x, z = (r + 0.9 * br) * np.cos(a), -(r + 0.9 * br) * np.sin(a)  # same angle convention as rotate
        parts += [rod((x, nozzle - 0.02, z), (x, top, z), br),
                  rod((x, top - 0.001, z), (x, top + 3 * br, z), br, 0.0)]
    return union(parts)


def _rocket_describe(p: dict, rng: np.random.Generator) -> Facts:
    adjectives = ["slender"] if p["radius"] < 0.072 else ["stubby"] if p["radius"] > 0.088 else []
    stages = {1: "a single stage", 2: "two stages", 3: "three stages"}[p["stages"]]
    features = [stages, f"{number(p['fins'])} fins"]
    if p["boosters"]:
        features.append(f"{number(p['boosters'])} side boosters")
    features.append(pick(rng, ["a pointed nose cone", "a sharp nose"]) if p["nose"] == "pointed"
                    else pick(rng, ["a rounded nose cone", "a blunt rounded nose"]))
    return Facts(pick(rng, ["rocket", "rocket ship", "space rocket"]), adjectives, features)


# ----------------------------------------------------------------------------------------------
# Nature and buildings: tree, house
# ----------------------------------------------------------------------------------------------

def _tree_sample(d: Draw) -> None:
    kind = d.choice("kind", ["conifer", "broadleaf"])
    d.uniform("trunk_height", 0.12, 0.5)
    d.uniform("trunk_radius", 0.035, 0.07)
    d.integer("layers", 1, 5) if kind == "conifer" else d.integer("layers", 3, 8)  # cones or blobs
    d.uniform("crown_radius", 0.3, 0.5) if kind == "conifer" else d.uniform("crown_radius", 0.35, 0.6)
    d.uniform("crown_height", 0.7, 1.2) if kind == "conifer" else d.uniform("crown_height", 0.9, 1.5)
    d.seed("blob_seed")


def _tree_build(p: dict) -> Manifold:
    th, tr, n, R = p["trunk_height"], p["trunk_radius"], p["layers"], p["crown_radius"]
    if p["kind"] == "conifer":
        ch = p["crown_height"]
        parts = [rod((0, 0, 0), (0, th + 0.1, 0), tr, 0.8 * tr)]
        if n == 1:
            return union(parts + [rod((0, th, 0), (0, th + ch + 0.3, 0), 0.8 * R, 0.0)])
        step = ch / (n + 0.6)
        for k in range(n):  # each cone overlaps the one above it
            yb = th + k * step
            parts.append(rod((0, yb, 0), (0, yb + 1.7 * step, 0), R * (1 - 0.55 * k / n), 0.0))
        return union(parts)
    rng = np.random.default_rng(p["blob_seed"])
    stretch = p["crown_height"]  # vertical stretch of the crown
    center = np.array([0.0, th + 0.9 * R * stretch, 0.0])
    parts = [rod((0, 0, 0), center, tr, 0.7 * tr), ball(center, 0.6 * R, (1, stretch, 1), segments=20)]
    for _ in range(n - 1):
        v = rng.normal(size=3)
        v /= np.linalg.norm(v)
        v[1] *= stretch
        parts.append(ball(center + 0.5 * R * v, R * rng.uniform(0.35, 0.5), segments=20))
    return union(parts)


def _tree_describe(p: dict, rng: np.random.Generator) -> Facts:
    trunk = (pick(rng, ["a tall bare trunk", "a long trunk"]) if p["trunk_height"] > 0.35
             else pick(rng, ["a short trunk", "a short stout trunk"]) if p["trunk_height"] < 0.22 else "a trunk")
    if p["kind"] == "conifer":
        crown = ("a single tall cone of foliage" if p["layers"] == 1
                 else f"{number(p['layers'])} stacked cone-shaped layers")
        return Facts(pick(rng, ["pine tree", "fir tree", "conifer tree"]), [], [crown, trunk])
    shape = "tall oval" if p["crown_height"] > 1.25 else "round"
    crown = pick(rng, [f"a {shape} crown of {number(p['layers'])} leafy blobs", f"a bushy {shape} crown"])
    return Facts(pick(rng, ["tree", "leafy tree", "broadleaf tree"]), [], [crown, trunk])


def _house_sample(d: Draw) -> None:
    d.integer("storeys", 1, 2)
    d.uniform("width", 6.0, 10.0)
    d.uniform("depth", 5.0, 8.0)
    d.uniform("storey_height", 2.6, 3.0)
    d.choice("roof", ["gable", "gable", "hip", "flat"])
    d.uniform("pitch", 25.0, 45.0)
    d.flag("chimney", 0.5)
    d.integer("windows", 2, 4)  # per floor on the front
    d.flag("garage", 0.35)


def _house_build(p: dict) -> Manifold:
    W, D, H = p["width"], p["depth"], p["storeys"] * p["storey_height"]
    o = 0.35  # eave overhang
    rise = (D / 2 + o) * np.tan(np.radians(p["pitch"]))
    parts = [box(-W / 2, W / 2, 0, H, -D / 2, D / 2)]
    if p["roof"] == "gable":
        parts.append(hull([(sx * (W / 2 + o), H - 0.01, sz * (D / 2 + o)) for sx in (-1, 1) for sz in (-1, 1)]
                          + [(sx * (W / 2 + o), H + rise, 0) for sx in (-1, 1)]))
    elif p["roof"] == "hip":
        ridge = max(W / 2 - D / 2, 0.01)
        parts.append(hull([(sx * (W / 2 + o), H - 0.01, sz * (D / 2 + o)) for sx in (-1, 1) for sz in (-1, 1)]
                          + [(sx * ridge, H + rise, 0) for sx in (-1, 1)]))
    else:
        rise = 0.4
        parts.append(box(-W / 2 - 0.15, W / 2 + 0.15, H - 0.01, H + rise, -D / 2 - 0.15, D / 2 + 0.15))
    if p["chimney"]:
        x, z = 0.3 * W, -0.2 * D
        parts.append(box(x - 0.35, x + 0.35, H - 0.5, H + rise + 0.6, z - 0.35, z + 0.35))
    holes = [box(-0.5, 0.5, 0.0, 2.1, D / 2 - 0.15, D / 2 + 0.1)]  # the front door
    n = p["windows"]
    for floor in range(p["storeys"]):
        y = floor * p["storey_height"] + 0.9
        xs = [x for x in np.linspace(-W / 2, W / 2, n + 3)[1:-1] if abs(x) > 1.0 or floor > 0][:n]
        holes += [box(x - 0.5, x + 0.5, y, y + 1.2, D / 2 - 0.15, D / 2 + 0.1) for x in xs]
        holes += [box(x - 0.5, x + 0.5, y, y + 1.2, -D / 2 - 0.1, -D / 2 + 0.15) for x in xs]
    if p["garage"]:
        gw = 3.4
        parts.append(box(W / 2 - 0.05, W / 2 + gw, 0, 2.7, -D / 2 + 0.6, D / 2))
        parts.append(box(W / 2 - 0.05, W / 2 + gw + 0.15, 2.69, 2.95, -D / 2 + 0.45, D / 2 + 0.15))
        holes.append(box(W / 2 + 0.45, W / 2 + gw - 0.45, 0.0, 2.2, D / 2 - 0.15, D / 2 + 0.3))
    return subtract(union(parts), holes)


def _house_describe(p: dict, rng: np.random.Generator) -> Facts:
    roof = {"gable": pick(rng, ["a gabled roof", "a pitched gable roof"]), "hip": "a hipped roof",
            "flat": "a flat roof"}[p["roof"]]
    windows = number(p["windows"])
    front = f"{windows} front windows" if p["storeys"] == 1 else f"{windows} windows on each floor of the front"
    features = [roof, front, "a front door"]
    if p["chimney"]:
        features.append("a chimney")
    if p["garage"]:
        features.append(pick(rng, ["an attached garage", "a garage on one side"]))
    adjectives = ["two-storey"] if p["storeys"] == 2 else ["single-storey"]
    noun = pick(rng, ["house", "cottage"]) if p["storeys"] == 1 else pick(rng, ["house", "home"])
    return Facts(noun, adjectives, features)


GENERATORS: dict[str, Generator] = {
    name: Generator(globals()[f"_{name}_sample"], globals()[f"_{name}_build"], globals()[f"_{name}_describe"])
    for name in ("chair", "table", "stool", "sofa", "bed", "bench", "desk", "cabinet", "bookshelf",
                 "lamp", "mug", "bottle", "vase", "car", "airplane", "rocket", "tree", "house")
}
