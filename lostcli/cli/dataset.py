"""`lost dataset ...`: the built-in procedural set, preparing any mesh folder, inspecting a store, prompts."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..config import load_config
from .common import (JsonOpt, OutOpt, ProgressBar, RecipeOpt, SeedOpt, SetOpt, console, err_console, process_info,
                     require_dir)

app = typer.Typer(no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]})


@app.command("synth")
def synth(
    out: OutOpt,
    n: Annotated[int, typer.Option("--n", help="Number of shapes.")] = 240,
    seed: SeedOpt = 0,
    workers: Annotated[int, typer.Option("--workers", help="Worker processes.")] = 1,
    deform: Annotated[float, typer.Option("--deform", help="Amplitude of each shape's smooth random deformation "
                                          "(object length 1; 0: the bare parametric shapes).")] = 0.03,
) -> None:
    """Write the built-in procedural dataset: DIR/<id>.glb and DIR/metadata.jsonl.

    Every shape is its category's parametric model bent by its own smooth random deformation (--deform).
    Example: lost dataset synth --out synth --n 240 --seed 0
    """
    from ..data.synth import synth_dataset

    if n <= 0:
        from ..errors import LostError

        raise LostError(f"--n must be positive, got {n}")
    t0 = time.time()
    with ProgressBar("synth", n) as tick:
        records = synth_dataset(out, n=n, seed=seed, workers=workers, progress=tick, deform=deform)
    cats = sorted({r["category"] for r in records})
    console.print(f"wrote {len(records)} shapes in {len(cats)} categories to {out} ({time.time() - t0:.1f} s)")


@app.command("prepare")
def prepare(
    src: Annotated[Path, typer.Argument(help="Folder of meshes (obj, glb/gltf, ply, stl, off), optional metadata.jsonl.")],
    out: OutOpt,
    workers: Annotated[int, typer.Option("--workers", "-w", help="Worker processes on this node.")] = 1,
    up: Annotated[str, typer.Option("--up", help="Up axis of the sources: y (glTF) or z.")] = "y",
    recipe: RecipeOpt = None,
    sets: SetOpt = None,
) -> None:
    """Normalise meshes and store surface samples, occupancy samples, 4 renders and captions as shards.

    Resumable (a re-run skips finished items); failed items are recorded and the rest completes.
    Under `accelerate launch` items are split across processes.

    Example: lost dataset prepare tests/data --out prepared --workers 2
    """
    from ..data.prepare import PrepareConfig, finalize, prepare_dataset
    from ..errors import LostError

    require_dir(src, "source")
    if up not in ("y", "z"):
        raise LostError(f"--up must be 'y' or 'z', got {up!r}")
    cfg = load_config(PrepareConfig, recipe, list(sets or []), base={"up": up})
    rank, world, wait = process_info()
    t0 = time.time()
    with ProgressBar("prepare", None, enabled=rank == 0) as tick:
        result = prepare_dataset(src, out, cfg, rank=rank, world_size=world, workers=workers, progress=tick)
    wait()
    if rank == 0:
        finalize(out)
        known = f", {result.known_failures} known failures not retried" if result.known_failures else ""
        console.print(f"prepared {result.done} new, skipped {result.skipped} done, "
                      f"{len(result.failed)} failed{known} on this process ({time.time() - t0:.1f} s) -> {out}")
        for f in result.failed:  # the reason starts with the file path
            err_console.print(f"  failed: {f['reason']}", markup=False)


@app.command("info")
def info(
    path: Annotated[Path, typer.Argument(help="Prepared dataset directory.")],
    json_out: JsonOpt = False,
) -> None:
    """Counts per split and category, and the failures of a prepared dataset."""
    from ..data.store import DatasetStore
    from ..errors import DataError

    store = DatasetStore(path)
    if not (path / "items").is_dir() and not (path / "config.json").is_file():
        raise DataError(f"{path}: not a prepared dataset (no items/ or config.json; see lost dataset prepare)")
    data = store.info()
    if json_out:
        print(json.dumps(data, indent=2))
        return
    console.print(f"[bold]{path}[/bold]: {data['items']} items")
    table = Table("split", "items")
    for k, v in sorted(data["splits"].items()):
        table.add_row(k, str(v))
    console.print(table)
    table = Table("category", "items")
    for k, v in sorted(data["categories"].items()):
        table.add_row(k, str(v))
    console.print(table)
    for f in data["failures"]:
        console.print(f"[red]failed[/red] {f['file']}: {f['reason']}")


@app.command("check")
def check(
    meshes: Annotated[list[Path], typer.Argument(help="Mesh files (obj, glb/gltf, ply, stl, off).")],
    up: Annotated[str, typer.Option("--up", help="Up axis of the sources: y (glTF) or z.")] = "y",
    max_faces: Annotated[int, typer.Option("--max-faces", help="Refuse meshes with more triangles.")] = 2_000_000,
    labels: Annotated[int, typer.Option("--labels", help="Also label N occupancy queries (as prepare does) and "
                                        "report their agreement with an independent ray-parity test.")] = 0,
    json_out: JsonOpt = False,
) -> None:
    """Load, validate and normalise each mesh as `prepare` would, and print its statistics.

    Stops with a one-line error (exit code 2) at the first unusable file.
    Example: lost dataset check chair.glb lamp.obj
    """
    from ..data.mesh import load_mesh, mesh_stats, normalize_mesh, up_rotation
    from ..errors import MeshError

    up_rotation(up)  # ConfigError on a bad axis, before reading any file
    for path in meshes:
        mesh = load_mesh(path, max_faces=max_faces)
        try:
            _, norm = normalize_mesh(mesh, up=up)
        except MeshError as e:
            raise MeshError(f"{path}: {e}") from e
        stats = {"file": str(path), **mesh_stats(mesh), "scale": norm.scale}
        if labels > 0:
            stats["label_agreement"] = _label_agreement(normalize_mesh(mesh, up=up)[0], labels)
        if json_out:
            print(json.dumps(stats))
            continue
        console.print(f"{path}: vertices {stats['vertices']}, faces {stats['faces']}, "
                      f"watertight {'yes' if stats['watertight'] else 'no'}, components {stats['components']}, "
                      f"normalising scale {stats['scale']:.4g}"
                      + (f", winding/ray-parity label agreement {stats['label_agreement'] * 100:.2f}%"
                         if labels > 0 else ""), markup=False)  # paths may hold "[...]"


def _label_agreement(mesh, n: int) -> float:
    """Fraction of n prepare-style occupancy queries where winding-number and ray-parity labels agree."""
    from ..data.sampling import OccupancyConfig, inside_by_ray_parity, sample_occupancy

    occ = sample_occupancy(mesh, OccupancyConfig(n_uniform=n // 2, n_near=n - n // 2), seed=0)
    return float(((occ["sdf"] < 0) == inside_by_ray_parity(mesh, occ["points"])).mean())


@app.command("preview")
def preview(
    src: Annotated[Path, typer.Argument(help="Mesh folder with metadata.jsonl, or a prepared dataset.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write.")] = Path("preview.png"),
    per_category: Annotated[int, typer.Option("--per-category", help="Shapes per category.")] = 1,
    view: Annotated[str, typer.Option("--view", help="front, right, back, left or all.")] = "front",
) -> None:
    """A labelled PNG grid with one (or more) shapes per category.

    Example: lost dataset preview synth --out synth.png
    """
    from ..data.preview import category_grid

    console.print(f"wrote {category_grid(src, out, per_category=per_category, view=view)}")


@app.command("prompts")
def prompts(
    n: Annotated[int, typer.Option("--n", help="Number of prompts.")] = 100,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write prompts here (one per line).")] = None,
    seed: SeedOpt = 0,
    template: Annotated[bool, typer.Option("--template", help="Print an LLM prompt template instead.")] = False,
) -> None:
    """Offline generator of diverse object prompts; --template prints a prompt for a language model."""
    from ..data.prompts import PROMPT_TEMPLATE, generate_prompts

    if template:
        print(PROMPT_TEMPLATE.format(n=n))
        return
    lines = generate_prompts(n, seed)
    if out is None:
        print("\n".join(lines))
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines) + "\n")
        console.print(f"wrote {len(lines)} prompts to {out}")


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------
