"""Containers and lamps: mug, bottle, vase, lamp, mostly lathed about the Y axis."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from manifold3d import Manifold

from lostcli.data.shapes.primitives import (ball, box, lathe, loop_handle, polar, ring, rod, rounded_box,
                                             subtract, union)
from lostcli.data.shapes.recipe import Draw, Facts, Generator, pick


# ----------------------------------------------------------------------------------------------
# Open vessels: mug, bottle, vase
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



# ----------------------------------------------------------------------------------------------
# Lamps (the desk lamp's arm points toward +X)
# ----------------------------------------------------------------------------------------------

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


GENERATORS: dict[str, Generator] = {
    "lamp": Generator(_lamp_sample, _lamp_build, _lamp_describe),
    "mug": Generator(_mug_sample, _mug_build, _mug_describe),
    "bottle": Generator(_bottle_sample, _bottle_build, _bottle_describe),
    "vase": Generator(_vase_sample, _vase_build, _vase_describe),
}
