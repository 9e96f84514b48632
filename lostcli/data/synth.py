"""The built-in procedural dataset: watertight shapes of everyday categories with matching captions.

This is the embedded default: every stage of the pipeline can train on it offline. Shapes come
from `lostcli.data.shapes` (one sampler/builder/describer per category) and are normalised here:
Y up, axis-aligned bounding box centred at the origin, longest side 1, so the object rests on its
lowest point y = min. Furniture, containers, lamps, trees, rockets and houses face +Z; cars and
airplanes point their nose toward +X (the front render shows their side).

Shape-specific detail (`deform`, on by default): after the parts are built, each shape is bent by its own
smooth random displacement field, d(p) = sum over DEFORM_MODES modes of a_m sin(2 pi f_m <u_m, p> + phi_m)
(directions u_m, 0.5-1.25 cycles per object length, amplitudes a_m ~ N(0, (deform^2 / modes) I)). A category's
parameters (10-15 numbers) describe a shape so briefly that one 32-d LoST token holds all of it; the
deformation adds about 50 numbers of geometry, the way two real chairs of one design still differ, so later
tokens have something to add. Captions do not mention it: it is detail, not semantics. Two deformations of
one shape differ by a Chamfer distance of about 3.5e-2 at the default amplitude 0.03 (in the unit frame).

Layout written by `synth_dataset`:
    out/synth-000000.glb ...          one watertight mesh per item
    out/metadata.jsonl                 {"id", "category", "caption", "split", "params", "file"} per line
Item i is generated from its own rng seeded by (seed, i): an item does not depend on n or on
any other item, so a larger dataset extends a smaller one with the same seed.
"""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import trimesh

from lostcli.data.shapes import GENERATORS, Draw, Facts, Generator, pick
from lostcli.errors import ConfigError
from lostcli.persist import atomic_write_bytes

CATEGORIES: tuple[str, ...] = tuple(GENERATORS)
DEFORM = 0.03  # default amplitude of the per-shape smooth deformation (object length 1); 0 turns it off
DEFORM_MODES = 8  # sinusoidal modes of the displacement field
DEFORM_CYCLES = (0.5, 1.25)  # spatial frequency range, cycles per object length: bends, never wrinkles
DEFORM_EDGE = 0.08  # edges are split to at most this length first, so flat faces can bend

# Words a caption may use instead of the category name (every caption contains one of these or the name).
CATEGORY_SYNONYMS: dict[str, tuple[str, ...]] = {
    "chair": ("armchair",),
    "table": (),
    "stool": (),
    "sofa": ("couch",),
    "bed": (),
    "bench": (),
    "desk": (),
    "cabinet": ("cupboard", "dresser", "chest of drawers"),
    "bookshelf": ("bookcase",),
    "lamp": (),
    "mug": ("cup",),
    "bottle": (),
    "vase": ("amphora",),
    "car": ("sedan", "hatchback", "van", "minivan", "truck"),
    "airplane": ("plane", "aircraft", "airliner", "jet"),
    "rocket": (),
    "tree": (),
    "house": ("cottage", "home"),
}

_TEMPLATES = (  # {a}: "a"/"an" agreeing with the next word
    "{a} {desc} with {features}",
    "{a} {desc} with {features}",
    "{a} {desc} that has {features}",
    "a 3D model of {a} {desc} with {features}",
    "{a} {desc}, with {features}",
)
ProgressFn = Callable[[int, int], None]


@dataclass
class SynthShape:
    """One generated item."""

    mesh: trimesh.Trimesh  # watertight volume, Y up, AABB centred at the origin, longest side 1
    category: str  # one of CATEGORIES
    caption: str  # what the geometry shows, e.g. "a bar stool with a round seat and three legs"
    params: dict  # the sampled parameters (JSON-serialisable); build_mesh(category, params) rebuilds it


# ----------------------------------------------------------------------------------------------
# One shape
# ----------------------------------------------------------------------------------------------

def _generator(category: str) -> Generator:
    if category not in GENERATORS:
        raise ConfigError(f"unknown category {category!r}; choose from {', '.join(CATEGORIES)}")
    return GENERATORS[category]


def sample_params(category: str, rng: np.random.Generator) -> dict:
    """Draw the parameters of one shape of `category` (JSON-serialisable)."""
    draw = Draw(rng)
    _generator(category).sample(draw)
    return draw.params


def sample_deformation(rng: np.random.Generator, amplitude: float, modes: int = DEFORM_MODES) -> dict:
    """Parameters of one smooth displacement field (JSON-serialisable): per mode a unit direction, a frequency
    in cycles per object length, a phase and a 3-D amplitude."""
    u = rng.normal(size=(modes, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    freq = rng.uniform(*DEFORM_CYCLES, size=modes)
    phase = rng.uniform(0.0, 2 * np.pi, size=modes)
    amp = rng.normal(size=(modes, 3)) * amplitude / np.sqrt(modes)
    rows = np.concatenate([u, freq[:, None], phase[:, None], amp], axis=1)  # [modes, 8]
    return {"amplitude": amplitude, "modes": np.round(rows, 5).tolist()}


def displace(points: np.ndarray, deformation: dict) -> np.ndarray:
    """Apply a displacement field to points [N, 3]: p + sum_m a_m sin(2 pi f_m <u_m, p> + phi_m)."""
    modes = np.asarray(deformation["modes"], dtype=np.float64).reshape(-1, 8)
    u, freq, phase, amp = modes[:, :3], modes[:, 3], modes[:, 4], modes[:, 5:]
    return points + np.sin(2 * np.pi * freq[None] * (points @ u.T) + phase[None]) @ amp


def _unit_box(solid):
    """Centre a manifold3d solid's bounding box at the origin and scale its longest side to 1."""
    x0, y0, z0, x1, y1, z1 = solid.bounding_box()
    scale = 1.0 / max(x1 - x0, y1 - y0, z1 - z0)
    return solid.translate((-(x0 + x1) / 2, -(y0 + y1) / 2, -(z0 + z1) / 2)).scale((scale, scale, scale))


def build_mesh(category: str, params: dict) -> trimesh.Trimesh:
    """Build the normalised, watertight mesh of `category` from its parameters (deterministic); a "deform"
    entry bends it (see the module docstring)."""
    solid = _unit_box(_generator(category).build(params))
    if params.get("deform"):
        field = params["deform"]
        solid = solid.refine_to_length(DEFORM_EDGE).warp_batch(lambda v: displace(np.asarray(v), field))
        solid = _unit_box(solid)
    out = solid.to_mesh()
    mesh = trimesh.Trimesh(np.asarray(out.vert_properties[:, :3], dtype=np.float64),
                           np.asarray(out.tri_verts, dtype=np.int64), process=False)
    mesh = _single_shell(mesh, category, params)
    if not (mesh.is_watertight and mesh.is_volume):  # a generator bug, never a user error
        raise RuntimeError(f"synthetic {category} is not a watertight volume for params {params}")
    return mesh


def _single_shell(mesh: trimesh.Trimesh, category: str, params: dict) -> trimesh.Trimesh:
    """Drop the negligible shells a union can leave behind (slivers on touching faces, tiny voids)."""
    shells = mesh.split(only_watertight=False)
    if len(shells) == 1:
        return mesh
    volumes = [abs(s.volume) for s in shells]
    keep = [s for s, v in zip(shells, volumes) if v > 1e-3 * max(volumes)]
    if len(keep) != 1:  # a real floating part: a generator bug
        raise RuntimeError(f"synthetic {category} has {len(keep)} separate parts for params {params}")
    return keep[0]


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def compose_caption(facts: Facts, rng: np.random.Generator) -> str:
    """Turn facts into one sentence, e.g. "a tall bar stool with a round seat and three legs"."""
    desc = " ".join([*facts.adjectives, facts.noun])
    article = "an" if desc[0] in "aeiou" else "a"
    if not facts.features:
        return f"{article} {desc}"
    return pick(rng, _TEMPLATES).format(a=article, desc=desc, features=_join(facts.features))


def caption_from_params(category: str, params: dict, rng: np.random.Generator) -> str:
    """Caption stating what the shape with these parameters shows (phrasing drawn from rng)."""
    return compose_caption(_generator(category).describe(params, rng), rng)


def generate_shape(category: str, rng: np.random.Generator, deform: float = 0.0) -> SynthShape:
    """Sample, build and caption one shape of `category` (bent by a smooth deformation when `deform` > 0).

    The deformation is drawn last, so the category parameters and the caption are those of the bare shape."""
    params = sample_params(category, rng)
    caption = caption_from_params(category, params, rng)
    if deform > 0:
        params["deform"] = sample_deformation(rng, deform)
    mesh = build_mesh(category, params)
    return SynthShape(mesh, category, caption, params)


# ----------------------------------------------------------------------------------------------
# Item assignment: category and split depend only on (seed, i)
# ----------------------------------------------------------------------------------------------

def item_category(seed: int, i: int) -> str:
    """Category of item i: each block of C consecutive items holds every category once, in a seeded order."""
    block, slot = divmod(i, len(CATEGORIES))
    order = np.random.default_rng([seed, block, 0x5CA7]).permutation(len(CATEGORIES))
    return CATEGORIES[int(order[slot])]


def split_cycle(splits: Sequence[float]) -> list[str]:
    """A short cycle of split names with the requested proportions, val and test spread out.

    (0.8, 0.1, 0.1) -> train, train, train, val, train, train, test, train, train, train.
    """
    if len(splits) != 3 or min(splits) < 0 or abs(sum(splits) - 1.0) > 1e-6:
        raise ConfigError(f"splits must be three non-negative fractions summing to 1, got {tuple(splits)}")
    fractions = [Fraction(f).limit_denominator(100) for f in splits]
    length = int(np.lcm.reduce([f.denominator for f in fractions]))
    counts = [int(f * length) for f in fractions]
    cycle, used = [], [0, 0, 0]
    for step in range(length):  # largest deficit first: an even interleaving
        deficit = [(step + 1) * c / length - u for c, u in zip(counts, used)]
        k = int(np.argmax(deficit))
        used[k] += 1
        cycle.append(("train", "val", "test")[k])
    return cycle


def item_split(category: str, i: int, cycle: Sequence[str]) -> str:
    """Split of item i: its rank within its category walks the cycle from a per-category offset.

    Stratified: every category sees the whole cycle every len(cycle) items, and the offsets
    differ, so even one block of C items already holds val and test items.
    """
    c = CATEGORIES.index(category)
    rank = i // len(CATEGORIES)  # each block holds every category once
    return cycle[(rank + c * len(cycle) // len(CATEGORIES)) % len(cycle)]


# ----------------------------------------------------------------------------------------------
# The dataset on disk
# ----------------------------------------------------------------------------------------------

def _make_item(job: tuple[str, int, int, tuple[str, ...], float]) -> dict:
    """Generate item i, write its glb atomically, return its metadata record (runs in workers too)."""
    out, seed, i, cycle, deform = job
    category = item_category(seed, i)
    shape = generate_shape(category, np.random.default_rng([seed, i]), deform)
    item_id = f"synth-{i:06d}"
    file = f"{item_id}.glb"
    atomic_write_bytes(Path(out) / file, shape.mesh.export(file_type="glb"), fsync=False)
    return {"id": item_id, "category": category, "caption": shape.caption,
            "split": item_split(category, i, cycle), "params": shape.params, "file": file}


def synth_dataset(out: Path, n: int, seed: int, splits: Sequence[float] = (0.8, 0.1, 0.1),
                  progress: ProgressFn | None = None, workers: int = 1, deform: float = DEFORM) -> list[dict]:
    """Write n procedural shapes and their metadata to `out`; returns the records in id order.

    Args:
        out: directory to create or fill (existing items with the same ids are overwritten).
        n: number of items; categories are balanced (each block of C items holds all C).
        seed: dataset seed (>= 0); item i uses an rng seeded by (seed, i).
        splits: train/val/test fractions; assignment is deterministic and stratified per category.
        progress: called as progress(done, n) after each item.
        workers: processes generating in parallel (1 = in this process).
        deform: amplitude of each shape's smooth deformation (object length 1); 0: the bare parametric shapes.
    """
    if n < 1:
        raise ConfigError(f"n must be at least 1, got {n}")
    if seed < 0:
        raise ConfigError(f"seed must be non-negative, got {seed}")
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    if not 0.0 <= deform <= 0.1:
        raise ConfigError(f"deform must be in [0, 0.1] (object length 1), got {deform}")
    cycle = tuple(split_cycle(splits))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), seed, i, cycle, deform) for i in range(n)]
    records: list[dict] = []
    if workers == 1:
        for job in jobs:
            records.append(_make_item(job))
            if progress is not None:
                progress(len(records), n)
    else:  # spawn: a forked child would inherit the parent's thread pools (torch, TBB) mid-state
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for record in pool.imap_unordered(_make_item, jobs, chunksize=4):
                records.append(record)
                if progress is not None:
                    progress(len(records), n)
    records.sort(key=lambda r: r["id"])
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    atomic_write_bytes(out / "metadata.jsonl", lines.encode(), fsync=False)
    return records
