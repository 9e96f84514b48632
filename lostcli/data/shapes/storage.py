"""Tables and storage: table, desk, cabinet, bookshelf (all face +Z, the front render's camera)."""

from __future__ import annotations

import numpy as np
from manifold3d import Manifold

from lostcli.data.shapes.primitives import ball, box, polar, rod, union
from lostcli.data.shapes.recipe import Draw, Facts, Generator, number, pick


# ----------------------------------------------------------------------------------------------
# Tables and desks
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



# ----------------------------------------------------------------------------------------------
# Storage: cabinet, bookshelf
# ----------------------------------------------------------------------------------------------

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


GENERATORS: dict[str, Generator] = {
    "table": Generator(_table_sample, _table_build, _table_describe),
    "desk": Generator(_desk_sample, _desk_build, _desk_describe),
    "cabinet": Generator(_cabinet_sample, _cabinet_build, _cabinet_describe),
    "bookshelf": Generator(_bookshelf_sample, _bookshelf_build, _bookshelf_describe),
}
