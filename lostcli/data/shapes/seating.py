"""Seating and beds: chair, stool, bench, sofa, bed (all face +Z, the front render's camera)."""

from __future__ import annotations

import numpy as np
from manifold3d import Manifold

from lostcli.data.shapes.primitives import ball, box, polar, ring, rod, rounded_box, union
from lostcli.data.shapes.recipe import Draw, Facts, Generator, number, pick


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
# Beds
# ----------------------------------------------------------------------------------------------

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


GENERATORS: dict[str, Generator] = {
    "chair": Generator(_chair_sample, _chair_build, _chair_describe),
    "stool": Generator(_stool_sample, _stool_build, _stool_describe),
    "sofa": Generator(_sofa_sample, _sofa_build, _sofa_describe),
    "bed": Generator(_bed_sample, _bed_build, _bed_describe),
    "bench": Generator(_bench_sample, _bench_build, _bench_describe),
}
