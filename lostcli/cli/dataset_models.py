"""`lost dataset` commands that run a model over a prepared dataset (latents; later features and tokens)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import console, require_dir


def latents(
    data: Annotated[Path, typer.Argument(help="Prepared dataset directory.")],
    vae: Annotated[str, typer.Option("--vae", help="VAE folder, weights file + --preset, TRELLIS folder, or hub id.")],
    preset: Annotated[Optional[str], typer.Option("--preset", help="Preset of a bare checkpoint.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Shapes per forward pass.")] = 16,
    points: Annotated[Optional[int], typer.Option("--points", help="Surface points per shape (default: as trained).")] = None,
) -> None:
    """Store each shape's posterior-mean latent and per-channel statistics of the train split.

    Resumable like prepare; under `accelerate launch` items are split across processes.
    Example: lost dataset latents prepared --vae runs/vae/export
    """
    import torch

    from ..batch.latents import encode_dataset, latent_stats
    from ..latent.hub import resolve_vae
    from .common import ProgressBar, process_info

    require_dir(data, "dataset")
    rank, world, wait = process_info()
    device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    model = resolve_vae(vae, preset=preset, device=device)
    t0 = time.time()
    with ProgressBar("latents", None, enabled=rank == 0) as tick:
        result = encode_dataset(data, model, points=points, batch_size=batch_size, rank=rank, world_size=world,
                                device=device, vae_name=str(vae), progress=tick)
    wait()
    if rank == 0:
        stats = latent_stats(data)
        console.print(f"encoded {result.done} shapes, skipped {result.skipped} done ({time.time() - t0:.1f} s); "
                      f"latent {stats['latent_shape']}, per-channel std {min(stats['std']):.3f}..{max(stats['std']):.3f}")
