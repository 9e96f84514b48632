"""`lost bench` settings: stage names, what each `--preset` maps to, `BenchConfig` and its validation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ConfigError

TRAIN_STAGES = ("vae", "rida", "tokenizer", "tokenizer_sem", "gpt")
LATENCY_STAGES = ("tokenize", "decode", "mesh", "generate")
STAGES = TRAIN_STAGES + LATENCY_STAGES
DTYPES = ("fp32", "bf16")


@dataclass
class BenchPreset:
    """The stage presets and input sizes one `--preset` name stands for (from recipes/<preset>/)."""

    vae: str  # TriplaneVAE preset
    points: int  # surface points per shape fed to the VAE encoder
    queries: int  # occupancy queries per shape in a VAE training step
    rida: str  # RIDA student preset
    rida_overrides: dict[str, Any]  # RidaConfig overrides the recipe sets
    teacher_dim: int  # teacher feature width (RIDA targets)
    teacher_grid: int  # g: teacher patch tokens pooled to g x g per view
    tokenizer: str  # LoST tokenizer preset
    gpt: str  # LoST-GPT preset
    cond_dim: int  # text-embedding width the GPT reads
    resolution: int  # marching-cubes grid of the mesh row
    gpt_overrides: dict[str, Any] = field(default_factory=dict)  # GPTConfig overrides (build_gpt)


PRESETS: dict[str, BenchPreset] = {
    # recipes/tiny: built-in teacher (128-d, 4 x 4), rida.yaml patch 2, vae.yaml 2048 points / 4096 queries
    "tiny": BenchPreset(vae="tiny", points=2048, queries=4096, rida="rida_tiny", rida_overrides={"patch_size": 2},
                        teacher_dim=128, teacher_grid=4, tokenizer="lost_tiny", gpt="gpt_tiny", cond_dim=128,
                        resolution=64),
    # recipes/paper: Direct3D VAE (81,920 points, 32,768 queries), DINOv2-B (768-d, 4 x 4), OpenCLIP ViT-H text
    "paper": BenchPreset(vae="direct3d", points=81920, queries=32768, rida="rida_paper", rida_overrides={},
                         teacher_dim=768, teacher_grid=4, tokenizer="lost_paper", gpt="gpt_paper", cond_dim=1024,
                         resolution=128),
}


@dataclass
class BenchConfig:
    preset: str = "tiny"  # a key of PRESETS
    device: str | None = None  # "cpu", "cuda" or "cuda:N"; None: CUDA when available
    dtype: str | None = None  # "fp32" or "bf16" (autocast); None: bf16 on CUDA, fp32 on a CPU
    batch_size: int = 8  # samples per training step / tokenize / decode / generate call
    repeats: int = 5  # timed calls per row (preset tiny, every stage: ~35 s on 2 idle CPU cores)
    warmup: int = 1  # discarded calls before timing
    stages: list[str] | None = None  # subset of STAGES; None: all
    steps: list[int] = field(default_factory=lambda: [10, 25, 50])  # decoder sampler steps, one row each
    guidance: float = 3.0  # CFG scale of decode and generate
    resolution: int | None = None  # marching-cubes grid; None: the preset's
    peak_tflops: float | None = None  # device peak for MFU; None: PEAK_TFLOPS_BF16 (bf16 only)
    count_flops: bool = True  # one extra FlopCounterMode call per row
    model: str | None = None  # a bundle: its tokenize / decode / mesh / generate replace the random models
    seed: int = 0  # seeds model init and inputs


def parse_stages(text: str) -> list[str] | None:
    """ "all" -> None; "vae,decode" -> ["vae", "decode"] (ConfigError naming an unknown stage)."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    if names == ["all"]:
        return None
    bad = [s for s in names if s not in STAGES]
    if bad or not names:
        raise ConfigError(f"--stages: unknown stage {bad[0] if bad else text!r} (known: all, {', '.join(STAGES)})")
    return list(dict.fromkeys(names))


def parse_ints(text: str, what: str) -> list[int]:
    """ "10,25,50" -> [10, 25, 50] (ConfigError naming `what` when not positive integers)."""
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise ConfigError(f"{what}: expected positive integers separated by commas, got {text!r}")
    return values


def resolve_config(cfg: BenchConfig) -> BenchConfig:
    """Fill the device / dtype / stage defaults and reject settings a user can get wrong (ConfigError)."""
    if cfg.preset not in PRESETS:
        raise ConfigError(f"--preset: {cfg.preset!r} is not one of {', '.join(PRESETS)}")
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device: {device!r} is not cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    dtype = cfg.dtype or ("bf16" if dev.type == "cuda" else "fp32")
    stages = list(cfg.stages) if cfg.stages is not None else list(STAGES)
    checks = [
        ("--dtype", dtype in DTYPES, f"must be one of {', '.join(DTYPES)}, got {dtype!r}"),
        ("--stages", set(stages) <= set(STAGES) and bool(stages), f"unknown or no stage in {stages}"),
        ("--batch-size", cfg.batch_size >= 1, f"must be >= 1, got {cfg.batch_size}"),
        ("--batch-size", cfg.batch_size >= 2 or "rida" not in stages,
         "the rida stage needs >= 2 (its losses compare shapes within a batch)"),
        ("--repeats", cfg.repeats >= 1, f"must be >= 1, got {cfg.repeats}"),
        ("--warmup", cfg.warmup >= 0, f"must be >= 0, got {cfg.warmup}"),
        ("--steps", bool(cfg.steps) and min(cfg.steps) >= 1, f"must be positive integers, got {cfg.steps}"),
        ("--guidance", math.isfinite(cfg.guidance) and cfg.guidance >= 0, f"must be >= 0, got {cfg.guidance}"),
        ("--resolution", cfg.resolution is None or cfg.resolution >= 2, f"must be >= 2, got {cfg.resolution}"),
        ("--peak-tflops", cfg.peak_tflops is None or cfg.peak_tflops > 0, f"must be > 0, got {cfg.peak_tflops}"),
    ]
    for name, ok, why in checks:
        if not ok:
            raise ConfigError(f"{name}: {why}")
    return BenchConfig(**{**cfg.__dict__, "device": device, "dtype": dtype, "stages": stages})


def command_line(cfg: BenchConfig) -> str:
    """The `lost bench` command that reproduces a resolved config."""
    parts = ["lost bench", f"--preset {cfg.preset}", f"--device {cfg.device}", f"--dtype {cfg.dtype}",
             f"--batch-size {cfg.batch_size}", f"--repeats {cfg.repeats}", f"--warmup {cfg.warmup}",
             f"--stages {','.join(cfg.stages or STAGES)}", f"--steps {','.join(map(str, cfg.steps))}",
             f"--guidance {cfg.guidance:g}", f"--seed {cfg.seed}"]
    if cfg.resolution is not None:
        parts.append(f"--resolution {cfg.resolution}")
    if cfg.peak_tflops is not None:
        parts.append(f"--peak-tflops {cfg.peak_tflops:g}")
    if not cfg.count_flops:
        parts.append("--no-flops")
    if cfg.model is not None:
        parts.append(f"--model {cfg.model}")
    return " ".join(parts)
