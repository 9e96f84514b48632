"""`lost demo`: the embedded default -- the whole offline pipeline with the tiny recipes, one command."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import console


def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory (resumable: rerun to continue).")] = Path("runs/demo"),
    n: Annotated[Optional[int], typer.Option("--n", help="Shapes in the built-in dataset (default 3024; 72 with --quick; 1008: 40 minutes shorter, fewer claims shown).")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Smoke test: 72 shapes, 2 training steps per stage, tiny evaluations.")] = False,
    semantic_weight: Annotated[Optional[float], typer.Option("--semantic-weight", help="Tokenizer semantic loss weight, both terms (default: the tiny recipe's; the no_semantic ablation is trained beside it).")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Stages run side by side once their inputs exist; the CPU threads are split among them.")] = 2,
    recipes: Annotated[Optional[Path], typer.Option("--recipes", help="Folder of the tiny recipes (default: the repository's recipes/tiny).")] = None,
) -> None:
    """The embedded default: the whole offline pipeline with the tiny recipes, then a report.

    Built-in dataset -> prepare -> VAE -> teacher -> features -> RIDA -> classifier -> tokenizer -> bundle
    -> tokens -> GPT -> reconstruction, retrieval and generation tables -> samples. Each stage is a `lost`
    command (logged to OUT/logs/STAGE.log); finished stages are skipped on a rerun and interrupted training
    continues from its checkpoint. Leaves the model in OUT/bundle, the tables in OUT/report (recon.json,
    retrieval.json, gen.json, report.md) and samples in OUT/samples.
    Example: lost demo --out runs/demo
    """
    from ..demo import DemoOptions, check_start, run_demo

    opts = DemoOptions.make(out, n=n, quick=quick, semantic_weight=semantic_weight, recipes=recipes)
    check_start(opts, jobs)  # before the display starts: a refusal is one clean line
    with _display(out) as show:
        result = run_demo(opts, progress=show, jobs=jobs)
    console.print(f"report:  {result.report}\nbundle:  {result.bundle}\nsamples: {result.samples} (grid.png, "
                  f"sample_*.glb)\ntime: {result.total_seconds:.0f} s this run", highlight=False)
    console.print("seconds per stage: " + ", ".join(f"{k} {'-' if v is None else format(v, '.0f')}"
                                                    for k, v in result.seconds.items()), highlight=False)


@contextmanager
def _display(out: Path) -> Iterator:
    """One rich display: the overall bar (stages finished / total, time since start) and the running stage's clock."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[count]}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        overall = bar.add_task("demo", total=None, count="")
        current = bar.add_task("", total=None, count="")

        def show(event: str, i: int, total: int, stage, seconds: float) -> None:
            done = i + (event != "start")
            bar.update(overall, total=total, completed=done, count=f"{done}/{total}",
                       description=f"[{i + 1}/{total}] {stage.name}: {stage.title}")
            if event == "start":
                bar.reset(current, description=f"  log: {out / 'logs' / (stage.name + '.log')}")
            else:
                what = f"done in {seconds:.1f} s" if event == "done" else "already finished"
                bar.console.print(f"{stage.name:>11}  {what}", highlight=False)

        yield show
        bar.remove_task(current)
