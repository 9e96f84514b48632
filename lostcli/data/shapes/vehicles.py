"""Vehicles: car, airplane, rocket.

Cars and airplanes point their nose toward +X, so the front render shows their side profile;
rockets stand up along +Y.
"""

from __future__ import annotations

import numpy as np
from manifold3d import Manifold

from lostcli.data.shapes.primitives import box, extrude_xy, hull, lathe, rod, subtract, union
from lostcli.data.shapes.recipe import Draw, Facts, Generator, number, pick


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


GENERATORS: dict[str, Generator] = {
    "car": Generator(_car_sample, _car_build, _car_describe),
    "airplane": Generator(_airplane_sample, _airplane_build, _airplane_describe),
    "rocket": Generator(_rocket_sample, _rocket_build, _rocket_describe),
}
