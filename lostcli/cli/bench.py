"""`lost bench`: training-step throughput, tokenize / decode / generate latency, peak memory and MFU
(a thin wrapper over `lostcli.bench.run_bench`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from .common import console


def bench(
    preset: Annotated[str, typer.Option("--preset", help="Model sizes: tiny or paper (the stage presets of recipes/tiny, recipes/paper).")] = "tiny",
    device: Annotated[Optional[str], typer.Option("--device", help="cpu, cuda or cuda:N (default: cuda when available).")] = None,
    dtype: Annotated[Optional[str], typer.Option("--dtype", help="fp32 or bf16 autocast (default: bf16 on GPU, fp32 on CPU).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Samples per training step and per tokenize/decode/generate call.")] = 8,
    repeats: Annotated[int, typer.Option("--repeats", help="Timed calls per row (median and spread over these).")] = 5,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed calls before timing.")] = 1,
    stages: Annotated[str, typer.Option("--stages", help="Comma-separated: vae, rida, tokenizer, tokenizer_sem, gpt, tokenize, decode, mesh, generate; or all.")] = "all",
    steps: Annotated[str, typer.Option("--steps", help="Decoder sampler steps, one decode row each.")] = "10,25,50",
    guidance: Annotated[float, typer.Option("--guidance", help="Classifier-free guidance of decode and generate.")] = 3.0,
    resolution: Annotated[Optional[int], typer.Option("--resolution", help="Marching-cubes grid of the mesh row (default: tiny 64, paper 128).")] = None,
    peak_tflops: Annotated[Optional[float], typer.Option("--peak-tflops", help="Device peak TFLOP/s for MFU (default: bf16 table: H100/H200 989, A100 312).")] = None,
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Bundle whose tokenize/decode/mesh/generate are timed instead of random models.")] = None,
    no_flops: Annotated[bool, typer.Option("--no-flops", help="Skip the FLOP count (one extra call per row).")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder for bench.json and bench.md.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of model init and inputs.")] = 0,
) -> None:
    """Measure every stage: samples/s and peak memory of a training step, latency of tokenize/decode/generate.

    Random-init models of the preset (no weights needed); median and spread over repeats after warm-up.
    Example: lost bench --preset tiny --out reports/bench      (GPU: lost bench --preset paper --batch-size 32)
    """
    from ..bench import BenchConfig, parse_ints, parse_stages, run_bench, table_rows, write_report

    cfg = BenchConfig(preset=preset, device=device, dtype=dtype, batch_size=batch_size, repeats=repeats,
                      warmup=warmup, stages=parse_stages(stages), steps=parse_ints(steps, "--steps"),
                      guidance=guidance, resolution=resolution, peak_tflops=peak_tflops, count_flops=not no_flops,
                      model=None if model is None else str(model), seed=seed)
    report = run_bench(cfg, progress=lambda line: console.print(f"[dim]{line}[/dim]", highlight=False))
    m = report["meta"]
    if out is not None:
        m["command"] += f" --out {out}"  # the resolved settings, so the command reproduces the run exactly
    head, cells = table_rows(report)
    table = Table(*head, title=f"{m['preset']} on {m['device_name']} ({m['dtype']}, {m['threads']} threads)")
    for row in cells:
        table.add_row(*row)
    console.print(table)
    for note in [f"{r['stage']}: {r['note']}" for r in report["rows"] if r["note"]] + report["notes"]:
        console.print(f"note: {note}", highlight=False)
    if out is not None:
        paths = write_report(report, out)
        console.print(f"{len(report['rows'])} rows in {m['seconds']:.0f} s -> {paths[0]}, {paths[1]}")
