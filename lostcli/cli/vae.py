"""`lost vae ...`: train a shape VAE, check a downloaded checkpoint, round-trip a mesh."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import (DataOpt, JsonOpt, OutOpt, RecipeOpt, ResumeOpt, SetOpt, console, require_choice, require_dir,
                     require_finite, require_int_range, require_out_dir, require_out_file, resolve_config)

app = typer.Typer(no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]})

VaeOpt = Annotated[str, typer.Option("--vae", help="VAE folder (lost vae train's export), weights file + --preset, TRELLIS folder, or hub id.")]
PresetOpt = Annotated[Optional[str], typer.Option("--preset", help="Preset of a bare checkpoint: direct3d, tiny or trellis.")]

PRESETS = ("direct3d", "tiny", "trellis")  # what --preset may name (`latent.hub.PRESET_CLASS`)
MAX_RESOLUTION = 1024  # marching cubes holds a (R + 1)^3 float32 grid: 4.3 GB at 1024


def _check_common(resolution: int, seed: int, preset: Optional[str]) -> None:
    """The options `reconstruct` and `eval` share; ConfigError names the first bad one."""
    require_int_range("--resolution", resolution, 1, MAX_RESOLUTION)
    require_int_range("--seed", seed, 0)
    require_choice("--preset", preset, PRESETS)


@app.command("train")
def train(data: DataOpt, out: OutOpt, recipe: RecipeOpt = None, sets: SetOpt = None, resume: ResumeOpt = False) -> None:
    """Train a shape VAE (occupancy BCE with semi-continuous targets + KL) through the shared loop.

    Example: lost vae train --recipe recipes/tiny/vae.yaml --data prepared --out runs/vae
    """
    from ..config import to_dict
    from ..data.loader import StoreDataset
    from ..train.loop import seed_everything, train as run_train
    from ..train.vae import VaeRunConfig, build_model, make_task
    from .common import start_run

    cfg = resolve_config(VaeRunConfig, recipe, sets)
    require_dir(data, "dataset")
    start_run(out, cfg)
    seed_everything(cfg.train.seed)
    keys = ("surface_points", "surface_normals", "occ_points", "occ_sdf")
    # Only a few times the points a step uses are read per item: keeps I/O and memory small.
    first = {"surface_points": 4 * cfg.loss.points, "surface_normals": 4 * cfg.loss.points}
    dataset = StoreDataset(data, keys, split=cfg.split, first=first)
    task = make_task(build_model(cfg.model), cfg, run_config=to_dict(cfg))
    result = run_train(task, dataset, cfg.train, cfg.optim, out, resume=resume, run_config=to_dict(cfg))
    console.print(f"trained {result.steps} steps, final loss {result.final_loss:.4f} ({result.seconds:.0f} s); "
                  f"export: {result.export_dir}")


@app.command("reconstruct")
def reconstruct(
    mesh: Annotated[Path, typer.Argument(help="Input mesh.")],
    vae: VaeOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Reconstructed mesh (.glb, .obj or .ply).")] = Path("rec.glb"),
    preset: PresetOpt = None,
    resolution: Annotated[int, typer.Option("--resolution", help="Marching-cubes grid resolution (1..1024).")] = 128,
    threshold: Annotated[float, typer.Option("--threshold", help="Iso-level on the occupancy logits.")] = 0.0,
    points: Annotated[Optional[int], typer.Option(
        "--points", help="Surface points fed to the encoder (>= 1; default: the VAE's).")] = None,
    up: Annotated[str, typer.Option("--up", help="Up axis of the input: y or z.")] = "y",
    seed: Annotated[int, typer.Option("--seed", help="Random seed (>= 0).")] = 0,
    json_out: JsonOpt = False,
) -> None:
    """Encode -> decode -> mesh, and print Chamfer and F-score against the input (docs/protocols.md).

    The output mesh is written in the input's own frame; metrics are computed in the normalised frame.
    Example: lost vae reconstruct chair.glb --vae runs/vae/export --out rec.glb
    """
    from ..data.mesh import EXPORTABLE, UP_AXES

    _check_common(resolution, seed, preset)
    require_finite("--threshold", threshold)
    require_int_range("--points", points, 1)
    require_choice("--up", up, UP_AXES)
    require_out_file("--out", out, EXPORTABLE)

    from ..eval.vae_roundtrip import reconstruct_mesh

    result = reconstruct_mesh(mesh, vae, out, preset=preset, resolution=resolution, threshold=threshold,
                              points=points, up=up, seed=seed)
    if json_out:
        print(json.dumps(result.metrics))
        return
    m = result.metrics
    console.print(f"{mesh.name}: Chamfer {m['chamfer'] * 100:.3f} (x10^-2), F-score@0.01 {m['fscore_0.01']:.3f}, "
                  f"F-score@0.02 {m['fscore_0.02']:.3f}  ({result.seconds:.1f} s) -> {out}")


@app.command("eval")
def evaluate(
    vae: VaeOpt,
    data: DataOpt,
    out: OutOpt,
    split: Annotated[str, typer.Option("--split", help="Dataset split to evaluate.")] = "test",
    preset: PresetOpt = None,
    resolution: Annotated[int, typer.Option("--resolution", help="Marching-cubes grid resolution (1..1024).")] = 128,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Evaluate only the first N (>= 2) shapes.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (>= 0).")] = 0,
) -> None:
    """Median reconstruction Chamfer/F-score on a split vs. the random-other-shape baseline, plus a PNG.

    Writes OUT/vae_eval.json, OUT/vae_eval.md and OUT/recon_grid.png (8 inputs beside their reconstructions).
    Example: lost vae eval --vae runs/vae/export --data prepared --out runs/vae/eval
    """
    from ..data.store import SPLITS

    _check_common(resolution, seed, preset)
    require_choice("--split", split, SPLITS)
    require_int_range("--limit", limit, 2)  # the baseline pairs every shape with another one
    require_out_dir(out)
    require_dir(data, "dataset")

    from ..eval.vae_eval import evaluate_vae
    from ..latent.hub import resolve_vae
    from .common import ProgressBar

    model = resolve_vae(vae, preset=preset)
    with ProgressBar("eval", None) as tick:
        result = evaluate_vae(model, data, split=split, resolution=resolution, limit=limit, seed=seed,
                              out_dir=out, progress=tick)
    s = result.summary
    console.print(f"{s['n']} {split} shapes: median Chamfer {s['median_chamfer'] * 100:.3f} x10^-2 "
                  f"(random other shape: {s['median_baseline_chamfer'] * 100:.3f} x10^-2, ratio "
                  f"{s['ratio_baseline_over_recon']:.1f}x), median F@0.01 {s['median_fscore_0.01']:.3f}, "
                  f"failures {s['failures']} ({result.seconds:.0f} s) -> {out}")


@app.command("check")
def check(
    ckpt: Annotated[Path, typer.Argument(help="Checkpoint: Direct3D vae.ckpt/.safetensors or model.ckpt (VAE + DiT), "
                                               "or a TRELLIS folder/json prefix.")],
    preset: Annotated[str, typer.Option("--preset", help="direct3d or trellis (or tiny).")] = "direct3d",
) -> None:
    """Does this downloaded checkpoint fit the preset? Lists every missing, unexpected or misshapen key.

    Direct3D's image-to-3D model.ckpt is checked in both parts, "vae" and "dit". Exit code 0 only when every
    part loads strictly.
    Example: lost vae check model.ckpt --preset direct3d
    """
    from ..errors import CheckpointError
    from ..latent.hub import check_checkpoint

    require_choice("--preset", preset, PRESETS)
    reports = check_checkpoint(ckpt, preset)
    bad = 0
    for name, report in reports.items():
        console.print(f"[bold]{name}[/bold]: {report.summary()}")
        for line in report.lines():
            console.print(f"  {line}")
        bad += not report.ok
    if bad:
        raise CheckpointError(f"{ckpt}: does not fit preset {preset} ({bad} part(s) with mismatches, listed above)")
    console.print(f"[green]{ckpt} loads strictly as preset {preset}[/green]")
