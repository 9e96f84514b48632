"""`lost teacher ...` (train and evaluate the built-in teacher) and `lost dataset features` (teacher features).

`features` is a plain function attached to the dataset group by the app: `dataset.app.command("features")`.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import DataOpt, OutOpt, RecipeOpt, ResumeOpt, SetOpt, console, require_dir, resolve_config

app = typer.Typer(no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]})

TeacherOpt = Annotated[str, typer.Option("--teacher", "-t", help=(
    "Teacher: built-in folder (lost teacher train's export), timm:NAME[@WEIGHTS], open_clip:NAME/TAG, "
    "open_clip:NAME@WEIGHTS or open_clip:FOLDER."))]
ImageSizeOpt = Annotated[Optional[int], typer.Option("--image-size", help="Teacher input size for timm/OpenCLIP (default: the model's own; 224 gives DINOv2 a 16x16 grid).")]


@app.command("train")
def train(data: DataOpt, out: OutOpt, recipe: RecipeOpt = None, sets: SetOpt = None, resume: ResumeOpt = False) -> None:
    """Train the built-in teacher (a small OpenCLIP-architecture model) on render-caption pairs.

    Each step pairs one random view of each shape with its caption (symmetric InfoNCE, learned logit
    scale). The export (OUT/export) is the offline RIDA teacher and metric network; its text tower
    conditions LoST-GPT.
    Example: lost teacher train --recipe recipes/tiny/teacher.yaml --data prepared --out runs/teacher
    """
    from ..config import to_dict
    from ..models.teacher import ClipTeacher
    from ..train.loop import seed_everything, train as run_train
    from ..train.teacher import ClipTask, RenderCaptionDataset, TeacherRunConfig
    from .common import start_run

    cfg = resolve_config(TeacherRunConfig, recipe, sets)
    require_dir(data, "dataset")
    dataset = RenderCaptionDataset(data, cfg.split, cfg.model.image_size, cfg.model.text_context, cache=cfg.data.cache)
    seed_everything(cfg.train.seed)
    # the task checks its settings: built before the run directory, so a refused value leaves nothing behind
    task = ClipTask(ClipTeacher(cfg.model), run_config=to_dict(cfg), category_caption_prob=cfg.data.category_caption_prob,
                    view_weight=cfg.data.view_weight)
    start_run(out, cfg)
    result = run_train(task, dataset, cfg.train, cfg.optim, out, resume=resume, run_config=to_dict(cfg))
    console.print(f"trained {result.steps} steps on {len(dataset)} shapes, final loss {result.final_loss:.4f} "
                  f"({result.seconds:.0f} s); export: {result.export_dir}")
    console.print(f"next: lost teacher eval --teacher {result.export_dir} --data {data} --split test")


@app.command("eval")
def evaluate(
    teacher: TeacherOpt,
    data: DataOpt,
    split: Annotated[str, typer.Option("--split", help="Dataset split to evaluate.")] = "test",
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Where eval.json goes (default: the teacher folder).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Shapes per forward pass.")] = 16,
) -> None:
    """Text <-> render top-1 retrieval on a split, against chance; writes eval.json.

    Each caption is matched against every shape of the split (shape embedding = mean of its 4 view
    embeddings) and each shape against every caption. A hit counts when the retrieved item carries the
    query's caption (captions can repeat across shapes); category top-1 counts the same category.
    Example: lost teacher eval --teacher runs/teacher/export --data prepared --split test
    """
    from ..batch.features import teacher_retrieval
    from ..persist import atomic_write_json
    from ..teachers import load_teacher
    from .common import ProgressBar

    require_dir(data, "dataset")
    model = load_teacher(teacher)
    t0 = time.time()
    with ProgressBar("eval", None) as tick:
        result = teacher_retrieval(data, model, split=split, batch_size=batch_size, progress=tick)
    result["seconds"] = round(time.time() - t0, 2)
    folder = out if out is not None else (Path(teacher) if Path(teacher).is_dir() else None)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / "eval.json", {**result, "command": f"lost teacher eval --teacher {teacher} "
                                                 f"--data {data} --split {split}"})
    r = result
    console.print(f"{model.name} on {r['n']} {split} shapes ({r['categories']} categories): "
                  f"text->render top-1 {r['text_to_render_top1']:.3f}, render->text top-1 "
                  f"{r['render_to_text_top1']:.3f} (chance {r['chance_top1']:.3f}); category top-1 "
                  f"{r['text_to_render_category_top1']:.3f} / {r['render_to_text_category_top1']:.3f} "
                  f"(chance {r['chance_category_top1']:.3f})" + (f" -> {folder / 'eval.json'}" if folder else ""))


def features(
    data: Annotated[Path, typer.Argument(help="Prepared dataset directory.")],
    teacher: Annotated[Optional[str], typer.Option("--teacher", "-t", help=(
        "Teacher: built-in folder, timm:NAME[@WEIGHTS], open_clip:NAME/TAG, open_clip:NAME@WEIGHTS or "
        "open_clip:FOLDER (default: the recipe's)."))] = None,
    grid: Annotated[Optional[int], typer.Option("--grid", help="Pool patch tokens to GRID x GRID per view (default 4).")] = None,
    image_size: ImageSizeOpt = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Shapes per forward pass (default 16).")] = None,
    recipe: RecipeOpt = None,
    sets: SetOpt = None,
) -> None:
    """Store each shape's teacher features: per-view and mean global embeddings, pooled patch tokens.

    Resumable like prepare (a resumed run must use the same teacher and grid); under `accelerate launch`
    items are split across processes.
    Example: lost dataset features prepared --teacher runs/teacher/export --grid 4
    """
    import torch

    from ..batch.features import FeaturesConfig, extract_features, finalize_features
    from ..errors import ConfigError
    from ..teachers import load_teacher
    from .common import ProgressBar, process_info

    cli = {k: v for k, v in (("teacher", teacher), ("grid", grid), ("image_size", image_size),
                             ("batch_size", batch_size)) if v is not None}
    cfg = dataclasses.replace(resolve_config(FeaturesConfig, recipe, sets), **cli)  # options beat the recipe
    if not cfg.teacher:
        raise ConfigError("teacher: give --teacher SPEC (or a recipe with teacher: ...)")
    require_dir(data, "dataset")
    rank, world, wait = process_info()
    device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    model = load_teacher(cfg.teacher, image_size=cfg.image_size, device=device)
    t0 = time.time()
    with ProgressBar("features", None, enabled=rank == 0) as tick:
        result = extract_features(data, model, grid=cfg.grid, batch_size=cfg.batch_size, rank=rank,
                                  world_size=world, progress=tick)
    wait()
    if rank == 0:
        stats = finalize_features(data)
        console.print(f"embedded {result.done} shapes, skipped {result.skipped} done ({time.time() - t0:.1f} s) "
                      f"with {model.name}: global [4, {model.embed_dim}], spatial [4, {cfg.grid}, {cfg.grid}, "
                      f"{model.embed_dim}] from a {model.grid}x{model.grid} grid; {stats['items']} items in "
                      f"{data / 'features'}")
