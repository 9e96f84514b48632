"""`lost bench` runner and report: time every case of the chosen stages, then write bench.json / bench.md.

Each row holds (bench.json "rows"):
    stage, kind ("train" | "latency"), setting, model, params, batch_size,
    median_s, q1_s, q3_s, min_s, max_s  seconds per call over `repeats` calls after `warmup` discarded ones,
    repeats, warmup, samples_per_s (batch_size / median_s),
    peak_mem_bytes, mem_kind  ("cuda_max_allocated": torch.cuda.max_memory_allocated over the row;
                               "cpu_rss_hwm": process RSS high-water mark (getrusage), reset per row;
                               "cpu_rss_hwm_process": the same, not resettable here: peak of the process so far),
    flops  (FlopCounterMode: matmul / conv / attention FLOPs of one call, forward + backward; None if skipped),
    tflops (flops / median_s / 1e12), mfu (tflops / peak TFLOP/s; None without a peak), note.
"""

from __future__ import annotations

import gc
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch

from .cases import BUILDERS, Case, _Ctx
from .config import PRESETS, TRAIN_STAGES, BenchConfig, command_line, resolve_config
from .measure import PeakMemory, count_flops, device_name, measure, peak_tflops_for


# ----------------------------------------------------------------------------------------------------
# Runner
# ----------------------------------------------------------------------------------------------------


def _run_case(ctx: _Ctx, case: Case, peak: float | None) -> dict[str, Any]:
    """Time one case (memory over warm-up + repeats), then count its FLOPs in one more call."""
    cfg = ctx.cfg
    sync = (lambda: torch.cuda.synchronize(ctx.device)) if ctx.device.type == "cuda" else None
    with PeakMemory(ctx.device) as mem:
        timing = measure(case.fn, cfg.repeats, cfg.warmup, sync=sync)
    flops = None
    if cfg.count_flops and case.flops:
        flops = count_flops(case.flops_fn or case.fn, case.frozen) * case.flops_scale
    median = timing.median
    tflops = flops / median / 1e12 if flops is not None and median > 0 else None
    return {
        "stage": case.stage, "kind": "train" if case.stage in TRAIN_STAGES else "latency",
        "setting": case.setting, "model": case.model, "params": int(case.params), "batch_size": case.batch_size,
        "median_s": median, "q1_s": timing.quantile(0.25), "q3_s": timing.quantile(0.75),
        "min_s": min(timing.times), "max_s": max(timing.times), "repeats": timing.repeats, "warmup": timing.warmup,
        "samples_per_s": case.batch_size / median if median > 0 else None,
        "peak_mem_bytes": mem.bytes, "mem_kind": mem.kind,
        "flops": flops, "tflops": tflops, "mfu": tflops / peak if tflops is not None and peak else None,
        "note": case.note,
    }


def run_bench(cfg: BenchConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Benchmark the chosen stages; returns {"meta": {...}, "rows": [...], "notes": [...]} (see the module doc).

    Args:
        cfg: settings (resolved here: `resolve_config`).
        progress: called with one line before each row.

    Raises:
        ConfigError: bad settings; CheckpointError: an unloadable `model` bundle.
    """
    cfg = resolve_config(cfg)
    if cfg.model is not None:  # a bad bundle fails before minutes of training rows, not after
        from ..bundle import read_bundle

        read_bundle(cfg.model)
    device = torch.device(cfg.device)
    name = device_name(device)
    peak = cfg.peak_tflops if cfg.peak_tflops is not None else peak_tflops_for(name, cfg.dtype)
    ctx = _Ctx(cfg=cfg, spec=PRESETS[cfg.preset], device=device, generator=torch.Generator().manual_seed(cfg.seed))
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for stage in cfg.stages:
        torch.manual_seed(cfg.seed)  # model init of each stage
        for case in BUILDERS[stage](ctx):
            if progress:
                progress(f"{case.stage}: {case.setting}")
            try:
                rows.append(_run_case(ctx, case, peak))
            except torch.cuda.OutOfMemoryError:  # a size that does not fit is a result, not a crash
                ctx.notes.append(f"{case.stage} ({case.setting}): CUDA out of memory at batch {case.batch_size}")
            del case
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    meta = {
        "preset": cfg.preset, "device": str(device), "device_name": name, "dtype": cfg.dtype,
        "batch_size": cfg.batch_size, "threads": torch.get_num_threads(), "repeats": cfg.repeats,
        "warmup": cfg.warmup, "torch": torch.__version__, "peak_tflops": peak,
        "peak_source": None if peak is None else ("--peak-tflops" if cfg.peak_tflops is not None else "table"),
        "model": cfg.model, "stages": list(cfg.stages), "seconds": time.perf_counter() - t0,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": command_line(cfg),
    }
    return {"meta": meta, "rows": rows, "notes": ctx.notes}


# ----------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------

MEM_LABELS = {
    "cuda_max_allocated": "torch.cuda.max_memory_allocated over the row",
    "cpu_rss_hwm": "process RSS high-water mark (getrusage ru_maxrss), reset before each row: includes the "
                   "interpreter and libraries (~0.3-0.5 GB)",
    "cpu_rss_hwm_process": "process RSS high-water mark (getrusage ru_maxrss) since start: not per row",
}


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Column headers and formatted cells of the results table (shared by Markdown and the terminal)."""
    head = ["stage", "setting", "batch", "median ms", "IQR ms", "min-max ms", "samples/s", "peak MiB",
            "GFLOP/call", "TFLOP/s", "MFU"]
    cells = []
    for r in report["rows"]:
        ms = {k: r[k] * 1e3 for k in ("median_s", "q1_s", "q3_s", "min_s", "max_s")}
        cells.append([
            r["stage"], r["setting"], str(r["batch_size"]), f"{ms['median_s']:.2f}",
            f"{ms['q1_s']:.2f}-{ms['q3_s']:.2f}", f"{ms['min_s']:.2f}-{ms['max_s']:.2f}",
            _fmt(r["samples_per_s"], ".1f"), f"{r['peak_mem_bytes'] / 2**20:.0f}",
            _fmt(None if r["flops"] is None else r["flops"] / 1e9, ".3g"), _fmt(r["tflops"], ".3g"),
            _fmt(None if r["mfu"] is None else 100 * r["mfu"], ".1f") + ("%" if r["mfu"] is not None else ""),
        ])
    return head, cells


def to_markdown(report: dict[str, Any]) -> str:
    """bench.md: the settings, how each number was measured, and the table."""
    m = report["meta"]
    kinds = sorted({r["mem_kind"] for r in report["rows"]})
    peak = (f"MFU against {m['peak_tflops']:g} TFLOP/s ({m['peak_source']})" if m["peak_tflops"] is not None
            else "MFU omitted (no known peak for this device and dtype; pass --peak-tflops)")
    lines = [
        f"# lost bench: preset {m['preset']} on {m['device']} ({m['dtype']})", "",
        f"- command: `{m['command']}`",
        f"- device: {m['device_name']}; dtype {m['dtype']}; batch size {m['batch_size']}; torch threads "
        f"{m['threads']}; torch {m['torch']}; {m['date']}",
        f"- times: median and IQR (q1-q3) and min-max over {m['repeats']} repeats after {m['warmup']} warm-up "
        "call(s); training rows are forward + backward + clip + AdamW on random inputs, random-init models"
        + (f"; latency rows use bundle {m['model']}" if m["model"] else ""),
        *[f"- peak memory ({k}): {MEM_LABELS.get(k, k)}" for k in kinds],
        f"- FLOPs: torch.utils.flop_counter (matmul, conv, attention; training rows forward + backward); {peak}",
        "",
    ]
    head, cells = table_rows(report)
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in cells]
    notes = [f"{r['stage']} ({r['setting']}): {r['note']}" for r in report["rows"] if r["note"]] + report["notes"]
    if notes:
        lines += ["", "Notes:", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    """Write OUT/bench.json and OUT/bench.md; returns their paths."""
    from ..persist import atomic_write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "bench.json", report)
    md = out / "bench.md"
    md.write_text(to_markdown(report), encoding="utf-8")
    return out / "bench.json", md
