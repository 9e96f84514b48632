"""`lost gpt ...`: train LoST-GPT on a dataset's cached tokens and captions, export it into a model bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import DataOpt, OutOpt, RecipeOpt, ResumeOpt, SetOpt, console, require_dir, resolve_config

app = typer.Typer(no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]})

BundleOpt = Annotated[Optional[Path], typer.Option(
    "--model", "-m", help="Model bundle whose tokens the dataset holds (lost dataset tokens DIR --model BUNDLE).")]
TextEncoderOpt = Annotated[Optional[str], typer.Option("--text-encoder", "-t", help=(
    "Text encoder: built-in teacher folder (lost teacher train's run or export), open_clip:MODEL/TAG, "
    "open_clip:MODEL@WEIGHTS or open_clip:FOLDER."))]


@app.callback()
def _group() -> None:
    """LoST-GPT: text -> continuous LoST tokens, one at a time, with a per-token diffusion head."""


@app.command("train")
def train(data: DataOpt, out: OutOpt, recipe: RecipeOpt = None, model: BundleOpt = None,
          text_encoder: TextEncoderOpt = None, sets: SetOpt = None, resume: ResumeOpt = False) -> None:
    """Train the GPT on the dataset's `tokens` table, conditioned on its captions' text embeddings.

    Caption embeddings are computed once and cached in OUT/text_cache; OUT/text_encoder keeps the encoder.
    Example: lost gpt train -r recipes/tiny/gpt.yaml -d prepared -m models/lost-tiny -t runs/teacher -o runs/gpt
    """
    from accelerate import PartialState

    from ..bundle import read_bundle
    from ..config import to_dict
    from ..teachers import load_text_encoder
    from ..train.gpt import (TEXT_DIR, GPTRunConfig, build_task, check_run, check_text_encoder, open_tokens,
                             prepare_data)
    from ..train.loop import seed_everything, train as run_train
    from .common import start_run

    cfg = resolve_config(GPTRunConfig, recipe, sets)
    cfg.bundle = str(model) if model is not None else cfg.bundle
    cfg.text_encoder = text_encoder if text_encoder is not None else cfg.text_encoder
    check_run(cfg)  # before the run directory is created
    model_id = read_bundle(cfg.bundle)["model_id"]
    ids, stats = open_tokens(require_dir(data, "dataset"), cfg.split, model_id, bundle=cfg.bundle)
    state = PartialState()
    encoder = load_text_encoder(cfg.text_encoder, device=state.device)
    main = state.is_main_process
    progress = (lambda msg: console.print(f"[dim]{msg}[/dim]")) if main else None
    with state.main_process_first():  # the main process writes the text cache; the others then read it
        if main:
            check_text_encoder(out, encoder)
            start_run(out, cfg)
            encoder.save_into(out / TEXT_DIR)
        seed_everything(cfg.train.seed)
        task = build_task(cfg, stats, encoder.describe(), model_id)
        dataset = prepare_data(cfg, data, ids, encoder, task.gpt.config.num_tokens, out, progress=progress)
    del encoder  # embeddings are cached: free the text tower before training
    result = run_train(task, dataset, cfg.train, cfg.optim, out, resume=resume, run_config=to_dict(cfg))
    c = task.gpt.config
    console.print(f"trained GPT ({sum(p.numel() for p in task.gpt.parameters()) / 1e6:.2f}M params, {c.num_tokens} "
                  f"tokens x {c.token_dim}) on {len(dataset)} shapes / {dataset.num_captions} captions: "
                  f"{result.steps} steps, final loss {result.final_loss:.4f} ({result.seconds:.0f} s); "
                  f"export: {result.export_dir}")
    console.print(f"next: lost gpt export {out} --into {cfg.bundle}")


@app.command("export")
def export(
    run: Annotated[Path, typer.Argument(help="GPT run directory (lost gpt train --out).")],
    into: Annotated[Path, typer.Option("--into", help="Model bundle to add gpt/ and text_encoder/ to.")],
) -> None:
    """Add the trained GPT and its text encoder to a model bundle (other components are kept).

    Example: lost gpt export runs/gpt --into models/lost-tiny
    """
    from ..train.gpt import export_gpt

    meta = export_gpt(run, into)
    g = meta["gpt"]
    console.print(f"bundle {into}: gpt {g['num_tokens']} tokens x {g['token_dim']} ({g['params'] / 1e6:.2f}M params), "
                  f"text encoder {g['text_encoder']}; guidance {g['guidance']}, temperature {g['temperature']}; "
                  f"components {', '.join(meta['components'])}")
