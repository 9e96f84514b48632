"""`lost image3d train` and `lost dataset lift`: the image-to-3D model and the data engine's image -> shape stage."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import (DataOpt, OutOpt, RecipeOpt, ResumeOpt, SeedOpt, SetOpt, console, err_console, require_dir,
                     require_finite, require_int_range, require_out_dir, resolve_config)

app = typer.Typer(no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]})


@app.command("train")
def train(data: DataOpt, out: OutOpt, recipe: RecipeOpt = None, sets: SetOpt = None, resume: ResumeOpt = False) -> None:
    """Train a Direct3D-style DiT (epsilon, DDPM betas 1e-4..0.02, 10% condition dropout) on renders -> latents.

    The dataset needs renders (lost dataset prepare) and a latents table (lost dataset latents); model.vae names
    the VAE that made the latents. The export is an image-to-3D folder for `lost dataset lift --model`.
    Example: lost image3d train --recipe recipes/tiny/image3d.yaml --data prepared --out runs/image3d
    --set model.vae=runs/vae/export
    """
    from ..train.image3d import Image3DRunConfig, RenderLatentPairs, build_task, run_config
    from ..train.loop import seed_everything, train as run_train
    from .common import start_run

    cfg = resolve_config(Image3DRunConfig, recipe, sets)
    require_dir(data, "dataset")
    start_run(out, cfg)
    seed_everything(cfg.train.seed)
    task = build_task(cfg, data)
    dataset = RenderLatentPairs(data, cfg.model.image_size, split=cfg.split)
    result = run_train(task, dataset, cfg.train, cfg.optim, out, resume=resume, run_config=run_config(cfg))
    console.print(f"trained {result.steps} steps on {len(dataset)} (view, latent) pairs, final loss "
                  f"{result.final_loss:.4f} ({result.seconds:.0f} s); export: {result.export_dir}")


def lift(
    images_dir: Annotated[Path, typer.Argument(help="Folder from `lost dataset images` or any PNG / JPEG folder.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Image-to-3D folder (lost image3d train's export), "
                                       "Direct3D release folder, or hub id DreamTechAI/Direct3D.")],
    out: OutOpt,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Euler-ancestral sampling steps (default: the "
                                                 "model's own; the release: 50).")] = None,
    guidance: Annotated[Optional[float], typer.Option("--guidance", help="Classifier-free guidance scale (default: "
                                                      "the model's own; the release: 4.0).")] = None,
    seed: SeedOpt = 0,
    resolution: Annotated[int, typer.Option("--resolution", help="Marching-cubes cells per axis (8..1024).")] = 256,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per sampling call.")] = 4,
) -> None:
    """Images -> latents, meshes (.glb) and 4-view previews, as a dataset store later stages read.

    Writes OUT/items, OUT/latents (+ stats.json), OUT/meshes/*.glb, OUT/previews/*.png; captions and categories
    come from images.jsonl when present. Resumable; bad images go to OUT/failures/ and the rest goes on.
    Under `accelerate launch` the images are split across processes.
    Example: lost dataset lift images --model runs/image3d/export --out lifted --steps 25
    """
    from ..batch.images import default_device
    from ..batch.lift import LiftSettings, discover_images, finalize_lift, lift_images, plan_lift
    from ..image3d.pipeline import ImageTo3D
    from .common import ProgressBar, process_info

    if steps is not None:
        require_int_range("--steps", steps, 1)
    if guidance is not None:
        require_finite("--guidance", guidance)
    require_int_range("--resolution", resolution, 8, 1024)
    require_int_range("--batch-size", batch_size, 1)
    require_out_dir(out)
    items = discover_images(images_dir)
    rank, world, wait = process_info()
    spec = str(Path(model).resolve()) if Path(model).exists() else model
    defaults = ImageTo3D.read_config(model)
    steps = defaults.steps if steps is None else steps
    guidance = defaults.guidance if guidance is None else guidance
    settings = LiftSettings(model=spec, steps=steps, guidance=float(guidance), seed=seed, resolution=resolution)
    out.mkdir(parents=True, exist_ok=True)
    todo, _, _ = plan_lift(items, out, settings, rank, world)
    pipe = ImageTo3D.from_pretrained(model, device=default_device(world)) if todo else None
    t0 = time.time()
    with ProgressBar("lift", None, enabled=rank == 0) as tick:
        result = lift_images(pipe, items, out, settings, batch_size=batch_size, rank=rank, world_size=world,
                             progress=tick)
    wait()
    if rank == 0:
        manifest = finalize_lift(out)
        console.print(f"lifted {result.done} new, skipped {result.skipped} done and {result.known_failures} known "
                      f"failures, {len(result.failed)} failed on this process ({time.time() - t0:.1f} s); {out} "
                      f"holds {manifest['items']} of {result.total} images", markup=False)
    for f in result.failed:
        err_console.print(f"  failed: {f['reason']}", markup=False)
