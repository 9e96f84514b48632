"""`lost dataset images`: one FLUX image per prompt (the data engine's text -> image stage)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import OutOpt, SeedOpt, console, err_console, require_int_range, require_out_dir


def images(
    prompts_file: Annotated[Path, typer.Argument(help="Prompts, one per line (a leading '12. ' is dropped; "
                                                      "optional CATEGORY<TAB>prompt).")],
    model: Annotated[str, typer.Option("--model", "-m", help="FLUX pipeline: hub id (black-forest-labs/FLUX.1-schnell"
                                       ", FLUX.1-dev) or a local diffusers folder.")],
    out: OutOpt,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Denoising steps (dev 50, schnell 4).")] = None,
    guidance: Annotated[Optional[float], typer.Option("--guidance", help="Guidance (dev 3.5, schnell 0).")] = None,
    size: Annotated[Optional[int], typer.Option("--size", help="Image height = width, a multiple of 16 (512).")] = None,
    max_seq_len: Annotated[Optional[int], typer.Option("--max-seq-len", help="T5 tokens (dev 512, schn. 256).")] = None,
    wrapper: Annotated[bool, typer.Option("--wrapper/--no-wrapper", help="Wrap prompts as the authors did: "
                                          "'3D render of a {prompt}, isometric view, ..., white background'.")] = True,
    seed: SeedOpt = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Prompts per pipeline call.")] = 8,
    offload: Annotated[Optional[str], typer.Option("--offload", help="For small GPUs: 'model' (one component on "
                                                   "the GPU at a time) or 'sequential' (layer by layer).")] = None,
) -> None:
    """Draw one 8-bit PNG per prompt into DIR/images/ with the manifest DIR/images.jsonl.

    Dev vs schnell is read from the hub id's name or the folder's transformer config; defaults follow it.
    Resumable (a re-run draws only what is missing); failed prompts go to DIR/failures/ and the rest goes on.
    Under `accelerate launch` the prompts are split across processes.

    Example: lost dataset images prompts.txt --model black-forest-labs/FLUX.1-schnell --out images
    """
    from ..batch.images import (check_offload, default_device, dtype_for, generate_images, identify_flux,
                                 merge_manifest, resolve_settings)
    from ..data.prompts import read_prompt_lines
    from .common import ProgressBar, process_info

    require_int_range("--batch-size", batch_size, 1)
    require_out_dir(out)
    prompts = read_prompt_lines(prompts_file, numbered=True)
    spec, variant = identify_flux(model)
    rank, world, wait = process_info()
    device = default_device(world)
    check_offload(offload, device)
    settings = resolve_settings(spec, variant, seed=seed, dtype=dtype_for(device), wrapper=wrapper, steps=steps,
                                guidance=guidance, size=size, max_seq_len=max_seq_len)
    if rank == 0 and prompts.blank:
        err_console.print(f"skipped {prompts.blank} empty lines in {prompts_file}", markup=False)
    t0 = time.time()
    with ProgressBar("images", None, enabled=rank == 0) as tick:
        result = generate_images(prompts.items, out, settings, source=prompts_file, device=device, offload=offload,
                                 batch_size=batch_size, rank=rank, world_size=world, progress=tick)
    wait()
    if rank == 0:
        rows = merge_manifest(out)
        console.print(f"FLUX.1-{variant}: drew {result.done} new, skipped {result.skipped} done, {len(result.failed)} "
                      f"failed on this process ({time.time() - t0:.1f} s); {out / 'images.jsonl'} holds {rows} of "
                      f"{result.total} prompts", markup=False)
    for f in result.failed:
        err_console.print(f"  failed: {f['file']}: {f['reason']}", markup=False)
