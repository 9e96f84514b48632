"""`lost tokenizer ...`: train the LoST tokenizer (alias: `lost train-tokenizer`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import DataOpt, OutOpt, RecipeOpt, ResumeOpt, SetOpt, console, require_dir, resolve_config

app = typer.Typer(no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]})

RidaOpt = Annotated[Optional[Path], typer.Option(
    "--rida", help="Frozen RIDA student (lost rida train's run or export) for the semantic loss.")]


@app.callback()
def _group() -> None:
    """The LoST tokenizer: z -> up to R ordered 32-d tokens, and a DiT decoder from any prefix back to z."""


@app.command("train")
def train(data: DataOpt, out: OutOpt, recipe: RecipeOpt = None, rida: RidaOpt = None, sets: SetOpt = None,
          resume: ResumeOpt = False) -> None:
    """Train the tokenizer on the dataset's latents: L_denoise + lambda (1 - cos(f(x0_hat), f(x0))).

    Needs the `latents` table (lost dataset latents) and, unless every term that uses it is off (the tiny recipe:
    --set tokenizer.semantic_weight=0 --set tokenizer.semantic_x0_weight=0), a RIDA student. Nested dropout
    starts after tokenizer.nest_after epochs.
    Example: lost tokenizer train --recipe recipes/tiny/tokenizer.yaml --data prepared --rida runs/rida --out runs/tok
    """
    from ..config import to_dict
    from ..train.loop import seed_everything, train as run_train
    from ..data.latents import open_latents
    from ..train.tokenizer import TokenizerRunConfig, build_task, check_run
    from .common import start_run

    cfg = resolve_config(TokenizerRunConfig, recipe, sets)
    if rida is not None:
        cfg.rida = str(rida)
    check_run(cfg)  # before the run directory is created
    dataset, stats = open_latents(require_dir(data, "dataset"), split=cfg.split)
    start_run(out, cfg)
    seed_everything(cfg.train.seed)
    task = build_task(cfg, dataset, stats)
    result = run_train(task, dataset, cfg.train, cfg.optim, out, resume=resume, run_config=to_dict(cfg))
    semantic = f"semantic weight {cfg.tokenizer.semantic_weight}" if task.student is not None else "no semantic loss"
    console.print(f"trained tokenizer ({task.tokenizer.num_params() / 1e6:.2f}M params, {semantic}) on "
                  f"{len(dataset)} latents: {result.steps} steps, final loss {result.final_loss:.4f} "
                  f"({result.seconds:.0f} s); export: {result.export_dir}")
