"""Nature and buildings: tree, house (both face +Z, the front render's camera)."""

from __future__ import annotations

import numpy as np
from manifold3d import Manifold

from lostcli.data.shapes.primitives import ball, box, hull, rod, subtract, union
from lostcli.data.shapes.recipe import Draw, Facts, Generator, number, pick


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
    "tree": Generator(_tree_sample, _tree_build, _tree_describe),
    "house": Generator(_house_sample, _house_build, _house_describe),
}
