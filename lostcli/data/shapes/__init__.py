"""Procedural geometry of the built-in categories: per category a sampler, a builder and a describer.

Frame: Y up, object resting on y = 0 before normalisation (units are loosely metres). Furniture,
containers, lamps, trees, rockets and houses face +Z (the front render's camera); vehicles (car,
airplane) and the desk lamp's arm point toward +X, so the front render shows their side profile.
Every builder returns ONE manifold3d solid: parts overlap a little and are boolean-unioned (hollows
are subtracted), so the surface is watertight, a single shell, with no internal faces.

`sample(draw)` records JSON-serialisable parameters, `build(params)` turns them into a solid
deterministically, and `describe(params, rng)` lists what the geometry visibly shows (`Facts`).

Modules: `recipe` (Draw, Facts, Generator), `primitives` (solid helpers), and one module per group
of categories: `seating`, `storage`, `containers`, `vehicles`, `outdoor`.
"""

from __future__ import annotations

from lostcli.data.shapes import containers, outdoor, seating, storage, vehicles
from lostcli.data.shapes.recipe import Draw, Facts, Generator, number, pick

__all__ = ["CATEGORY_ORDER", "GENERATORS", "Draw", "Facts", "Generator", "number", "pick"]

# The order fixes CATEGORIES in synth.py, hence which category item i gets: never reorder.
CATEGORY_ORDER: tuple[str, ...] = (
    "chair", "table", "stool", "sofa", "bed", "bench", "desk", "cabinet", "bookshelf",
    "lamp", "mug", "bottle", "vase", "car", "airplane", "rocket", "tree", "house",
)

_BY_GROUP: dict[str, Generator] = {**seating.GENERATORS, **storage.GENERATORS, **containers.GENERATORS,
                                   **vehicles.GENERATORS, **outdoor.GENERATORS}
GENERATORS: dict[str, Generator] = {name: _BY_GROUP[name] for name in CATEGORY_ORDER}
assert len(_BY_GROUP) == len(CATEGORY_ORDER)  # no group registers a category missing from the order
