"""`lost generate`: text -> shapes with the bundle's LoST-GPT (a thin wrapper over `LostPipeline.generate` and
`batch.samples.write_samples`, which documents the files written into OUT)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import ConfigError
from .common import console, err_console

FORMATS = ("glb", "obj", "ply")


def read_prompts(prompt: Optional[str], prompts_file: Optional[Path]) -> list[str]:
    """The prompt argument, or the prompts of --prompts FILE (`data.prompts.read_prompt_file`: one per line,
    optionally CATEGORY<TAB>prompt; blank lines and '#' comments skipped)."""
    if (prompt is None) == (prompts_file is None):
        raise ConfigError("give a PROMPT or --prompts FILE (exactly one of them)")
    if prompts_file is None:
        if not prompt.strip():
            raise ConfigError("prompt: empty; describe the shape, e.g. \"a round table with a single pedestal leg\"")
        return [prompt.strip()]
    from ..data.prompts import read_prompt_file

    return [prompt for _, prompt in read_prompt_file(prompts_file)]  # a "CATEGORY<TAB>" column is dropped


def generate(
    model: Annotated[Path, typer.Option("--model", "-m", help="Model bundle with gpt/ and text_encoder/ (lost gpt export).")],
    prompt: Annotated[Optional[str], typer.Argument(help="Text prompt (or --prompts FILE).")] = None,
    n: Annotated[int, typer.Option("-n", "--num-samples", help="Samples per prompt.")] = 4,
    seed: Annotated[int, typer.Option("--seed", help="Seed of every draw: the same seed gives the same meshes.")] = 0,
    cfg: Annotated[Optional[float], typer.Option("--cfg", help="Classifier-free guidance on the GPT head (1 = none; default: the bundle's, 3.0).")] = None,
    temperature: Annotated[Optional[float], typer.Option("--temperature", help="Sampling temperature (default: the bundle's, 1.0).")] = None,
    tokens: Annotated[Optional[int], typer.Option("--tokens", "-k", help="Tokens to generate and decode (default: the GPT's length; fewer = coarse draft).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("generated"),
    fmt: Annotated[str, typer.Option("--format", help="Mesh format: glb, obj or ply.")] = "glb",
    prompts_file: Annotated[Optional[Path], typer.Option("--prompts", help="Text file, one prompt per line.")] = None,
    prefix: Annotated[Optional[Path], typer.Option("--prefix", help="Tokens file (lost tokenize) whose first tokens are kept.")] = None,
    keep: Annotated[Optional[int], typer.Option("--keep", help="Tokens of --prefix to keep (default: all it holds).")] = None,
    schedule: Annotated[Optional[str], typer.Option("--cfg-schedule", help="Guidance schedule over tokens: constant or linear.")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Diffusion-head steps per token (default: the GPT's).")] = None,
    resolution: Annotated[int, typer.Option("--resolution", help="Marching-cubes grid resolution.")] = 128,
) -> None:
    """Generate shapes from text: one mesh, preview and tokens file per sample, plus grid.png.

    Example: lost generate "a round table with a single pedestal leg" --model models/lost-tiny -n 4 --seed 0 --out gen
    """
    from ..batch.samples import write_samples
    from ..data.mesh import ONE_PIECE, is_one_piece
    from ..pipeline import GenerateConfig, LostPipeline, load_tokens

    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    texts = read_prompts(prompt, prompts_file)
    if keep is not None and prefix is None:
        raise ConfigError("--keep: needs --prefix tokens.safetensors")
    t0 = time.time()
    pipe = LostPipeline.from_pretrained(model)
    first = load_tokens(prefix, pipeline=pipe) if prefix is not None else None
    config = GenerateConfig(guidance=cfg, temperature=temperature, guidance_schedule=schedule, num_tokens=tokens,
                            steps=steps, resolution=resolution)
    result = pipe.generate(texts, n=n, seed=seed, config=config, prefix=first, keep=keep)
    samples = write_samples(result, out, (fmt,), pipe.model_id, n,
                            {"model": str(model), "prompts": texts, "prefix": str(prefix) if prefix else None})
    empty = [str(r["index"]) for r in samples if r["empty"]]
    if empty:
        err_console.print(f"warning: samples {', '.join(empty)}: no surface decoded, no mesh written", highlight=False)
    s = result.settings
    console.print(f"{len(samples)} samples ({len(texts)} prompt(s) x {n}), {s['k']} tokens (kept {s['keep']}), "
                  f"cfg {s['guidance']} {s['guidance_schedule']}, temperature {s['temperature']}, seed {seed} -> "
                  f"{out}/sample_*.{fmt}, {out / 'grid.png'} ({time.time() - t0:.1f} s)")
    whole = sum(is_one_piece(r.get("largest_part")) for r in samples)
    console.print(f"{whole} of {len(samples)} samples in one piece (>= {ONE_PIECE:g} of the surface in one part)")
