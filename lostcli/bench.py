"""`lost bench`: training-step throughput, inference latency, peak memory and FLOPs of every stage.

Reads top to bottom: the settings (stage names, what each `--preset` maps to, the bf16 peak table), the
measuring helpers (`measure`, `PeakMemory`, `count_flops`), the cases each stage times, the runner, and the
report writers.

Models are random-initialised from the stage presets (no weights needed); inputs are random tensors of the
shapes a real step sees. `model=BUNDLE` runs tokenize / decode / mesh / generate on a real bundle instead.

- Training rows (vae, rida, tokenizer, tokenizer_sem, gpt): one call = the stage's Task forward (the same
  module the training loop runs), backward, grad-norm clipping and an AdamW step; bf16 = autocast with fp32
  weights, as Accelerate's bf16 mixed precision. samples/s = batch / median.
- Latency rows: tokenize (VAE encode + tokenizer encode of B point clouds), decode (B token sequences ->
  latents, per sampler step count, with CFG), mesh (marching cubes of ONE latent: batch 1), generate (the
  GPT's L tokens for B conditions with CFG on the head).

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
import math
import platform
import resource
import time
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from .errors import CheckpointError, ConfigError

TRAIN_STAGES = ("vae", "rida", "tokenizer", "tokenizer_sem", "gpt")
LATENCY_STAGES = ("tokenize", "decode", "mesh", "generate")
STAGES = TRAIN_STAGES + LATENCY_STAGES
DTYPES = ("fp32", "bf16")
# Dense bf16 tensor-core peaks (vendor datasheets), matched in order against torch.cuda.get_device_name.
PEAK_TFLOPS_BF16: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM
    ("H200", 989.0),
    ("A100", 312.0),
)


# ----------------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------------


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


def peak_tflops_for(device_name: str, dtype: str) -> float | None:
    """Dense bf16 peak TFLOP/s of a known GPU (None for fp32, a CPU or an unknown device)."""
    if dtype != "bf16":
        return None
    return next((peak for key, peak in PEAK_TFLOPS_BF16 if key.lower() in device_name.lower()), None)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model from /proc/cpuinfo (platform.processor() elsewhere)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


# ----------------------------------------------------------------------------------------------------
# Measuring: time, memory, FLOPs
# ----------------------------------------------------------------------------------------------------


@dataclass
class Timing:
    """Seconds per call of the timed repeats (warm-up calls are not in `times`)."""

    times: list[float]  # one per repeat, in order
    warmup: int  # calls run and discarded before timing

    @property
    def repeats(self) -> int:
        return len(self.times)

    def quantile(self, q: float) -> float:
        """Linear-interpolated quantile q in [0, 1] of the repeats."""
        return float(np.quantile(np.asarray(self.times, dtype=np.float64), q))

    @property
    def median(self) -> float:
        return self.quantile(0.5)


def measure(fn: Callable[[], Any], repeats: int, warmup: int, clock: Callable[[], float] = time.perf_counter,
            sync: Callable[[], None] | None = None) -> Timing:
    """Call `fn` warmup times untimed, then `repeats` times timed one by one.

    Args:
        clock: monotonic seconds (injectable for tests).
        sync: waits for queued device work (torch.cuda.synchronize) before each clock read.
    """
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        sync()
        times.append(clock() - t0)
    return Timing(times=times, warmup=warmup)


def _reset_rss_hwm() -> bool:
    """Reset the process's peak RSS to its current RSS (Linux >= 4.0: /proc/self/clear_refs "5")."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory(AbstractContextManager):
    """Peak memory of the block: CUDA `max_memory_allocated`, or the process RSS high-water mark on a CPU.

    After the block: `bytes` and `kind` ("cuda_max_allocated", "cpu_rss_hwm" when the high-water mark could
    be reset at entry, else "cpu_rss_hwm_process": the peak of the whole process so far).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.bytes = 0
        self.kind = ""

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "cuda_max_allocated"
        else:
            self.kind = "cpu_rss_hwm" if _reset_rss_hwm() else "cpu_rss_hwm_process"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self.bytes = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def _sdpa_cpu(q, k, v, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(q, k, v)


def _sdpa_cpu_backward(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, q, k, v)


# torch's counter knows the CUDA attention kernels only; the CPU flash kernel would count 0 FLOPs.
_CPU_ATTENTION = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward,
}


@contextmanager
def _frozen(modules: tuple[torch.nn.Module, ...]) -> Iterator[None]:
    """Parameters of `modules` with requires_grad False inside the block (restored after).

    FlopCounterMode's module tracker fails on a view of a parameter taken under no_grad (it still requires
    grad but has no grad_fn); inference needs no gradients, so the count runs with them switched off.
    """
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def count_flops(fn: Callable[[], Any], frozen: tuple[torch.nn.Module, ...] = ()) -> int:
    """Matmul / conv / attention FLOPs of one call of `fn` (a multiply-add counts 2), forward and backward.

    Args:
        frozen: modules an inference `fn` runs (see `_frozen`); leave empty for a training step.
    """
    with _frozen(frozen), FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION) as counter:
        fn()
    return int(counter.get_total_flops())


# ----------------------------------------------------------------------------------------------------
# Cases: what one row calls
# ----------------------------------------------------------------------------------------------------


@dataclass
class Case:
    stage: str  # one of STAGES
    setting: str  # what varies within the stage, e.g. "steps=25 cfg=3"
    model: str  # the networks the row runs
    params: int  # their parameters
    batch_size: int  # samples per call
    fn: Callable[[], Any]  # one call: a training step or an inference call
    flops: bool = True  # count FLOPs (off for CPU work such as marching cubes)
    note: str = ""  # shown under the table
    frozen: tuple[torch.nn.Module, ...] = ()  # inference models: parameters frozen while FLOPs are counted
    flops_fn: Callable[[], Any] | None = None  # a cheaper call to count instead of `fn` ...
    flops_scale: int = 1  # ... whose FLOPs times this are those of `fn` (decode: 1 step x steps)


@dataclass
class _Ctx:
    """What every stage builder needs: settings, device, precision and the random generator."""

    cfg: BenchConfig
    spec: BenchPreset
    device: torch.device
    generator: torch.Generator
    pipe: Any = None  # LostPipeline of --model, loaded once
    notes: list[str] = field(default_factory=list)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.cfg.dtype == "bf16" else nullcontext()

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.generator).to(self.device)


def _nparams(*modules: torch.nn.Module, trainable: bool = False) -> int:
    return sum(p.numel() for m in modules for p in m.parameters() if p.requires_grad or not trainable)


def _sphere(ctx: _Ctx, B: int, N: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random points on a sphere of radius 0.8 and their outward normals, [B, N, 3] each."""
    n = torch.nn.functional.normalize(ctx.randn(B, N, 3), dim=-1)
    return 0.8 * n, n


def _train_step(ctx: _Ctx, task: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Callable[[], None]:
    """forward (autocast) -> backward -> clip to 1.0 -> AdamW, as `train/loop.py` does for one step."""
    task.to(ctx.device).train()
    params = [p for p in task.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.95))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with ctx.autocast():
            loss = task(batch)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    return step


def _build_vae(ctx: _Ctx):
    from .latent.direct3d import TriplaneVAE

    return TriplaneVAE.from_preset(ctx.spec.vae)


def _build_student(ctx: _Ctx):
    from .models.rida import build_student

    return build_student(ctx.spec.rida, **ctx.spec.rida_overrides)


def _vae_cases(ctx: _Ctx) -> Iterator[Case]:
    from .train.vae import VaeLossConfig, VaeTask

    B, s = ctx.cfg.batch_size, ctx.spec
    vae = _build_vae(ctx)
    points, normals = _sphere(ctx, B, s.points)
    xyz = ctx.randn(B, s.queries, 3).clamp(-1, 1)
    batch = {"surface_points": points, "surface_normals": normals, "occ_points": xyz,
             "occ_sdf": xyz.norm(dim=-1) - 0.8}  # [B, M]: the sphere's signed distance
    task = VaeTask(vae, VaeLossConfig(points=s.points, queries=s.queries))
    yield Case("vae", f"{s.points} points, {s.queries} queries", f"TriplaneVAE/{s.vae}", _nparams(vae, trainable=True),
               B, _train_step(ctx, task, batch))


def _rida_cases(ctx: _Ctx) -> Iterator[Case]:
    from .train.rida import RidaLossConfig, RidaTask

    B, s = ctx.cfg.batch_size, ctx.spec
    student = _build_student(ctx)
    C, H = student.config.latent_channels, student.config.plane_res
    g, Dt = s.teacher_grid, s.teacher_dim
    batch = {"z": ctx.randn(B, C, H, student.config.planes * H), "global": ctx.randn(B, Dt),
             "patches": ctx.randn(B, 4, g, g, Dt)}  # 4 views of g x g teacher patch tokens
    task = RidaTask(student, RidaLossConfig())
    yield Case("rida", f"teacher {Dt}-d, {g}x{g} grid", f"RidaStudent/{s.rida}", _nparams(student, trainable=True),
               B, _train_step(ctx, task, batch))


def _tokenizer_cases(ctx: _Ctx, semantic: bool) -> Iterator[Case]:
    from .models.lost import build_tokenizer
    from .train.tokenizer import TokenizerObjectiveConfig, TokenizerTask

    B, s = ctx.cfg.batch_size, ctx.spec
    tok = build_tokenizer(s.tokenizer)
    student = _build_student(ctx) if semantic else None
    objective = TokenizerObjectiveConfig(semantic_weight=1.0 if semantic else 0.0, nest_after=0)
    task = TokenizerTask(tok, objective, student)
    batch = {"z": ctx.randn(B, *tok.config.latent_shape)}
    model = f"LoSTTokenizer/{s.tokenizer}" + (f" + frozen RidaStudent/{s.rida}" if semantic else "")
    yield Case("tokenizer_sem" if semantic else "tokenizer", "L_denoise + 1 - cos(f(x0_hat), f(x0))" if semantic
               else "L_denoise", model, _nparams(tok, trainable=True), B, _train_step(ctx, task, batch))


def _gpt_cases(ctx: _Ctx) -> Iterator[Case]:
    from .models.gpt import build_gpt
    from .train.gpt import GPTSamplingConfig, GPTTask

    B, s = ctx.cfg.batch_size, ctx.spec
    gpt = build_gpt(s.gpt, **{**s.gpt_overrides, "cond_dim": s.cond_dim})
    c = gpt.config
    batch = {"tokens": ctx.randn(B, c.num_tokens, c.token_dim), "text": ctx.randn(B, 1, c.cond_dim),
             "text_mask": torch.ones(B, 1, device=ctx.device)}
    task = GPTTask(gpt, GPTSamplingConfig(), info={})
    yield Case("gpt", f"{c.num_tokens} tokens, head x{c.diffloss.repeats}", f"LoSTGPT/{s.gpt}",
               _nparams(gpt, trainable=True), B, _train_step(ctx, task, batch))


def _pipeline(ctx: _Ctx):
    """The bundle's pipeline, or one of the random preset VAE + tokenizer."""
    from .pipeline import LostPipeline

    if ctx.pipe is None:
        if ctx.cfg.model is not None:
            ctx.pipe = LostPipeline.from_pretrained(ctx.cfg.model, device=ctx.device)
        else:
            from .models.lost import build_tokenizer

            vae, tok = _build_vae(ctx).to(ctx.device), build_tokenizer(ctx.spec.tokenizer).to(ctx.device)
            ctx.pipe = LostPipeline(vae, tok, model_id="random-init")
    return ctx.pipe


def _label(ctx: _Ctx, what: str) -> str:
    return f"bundle {ctx.cfg.model}: {what}" if ctx.cfg.model is not None else what


def _tokenize_cases(ctx: _Ctx) -> Iterator[Case]:
    pipe, B = _pipeline(ctx), ctx.cfg.batch_size
    N = pipe.num_points if ctx.cfg.model is not None else ctx.spec.points
    points, normals = _sphere(ctx, B, N)

    def call() -> torch.Tensor:
        with ctx.autocast():
            return pipe.tokenize_points(points, normals)  # [B, R, D]
    model = _label(ctx, f"TriplaneVAE/{ctx.spec.vae} + LoSTTokenizer/{ctx.spec.tokenizer} encoder"
                   if ctx.cfg.model is None else "vae + tokenizer encoder")
    yield Case("tokenize", f"{N} points -> {pipe.num_tokens} tokens", model,
               _nparams(pipe.vae, pipe.tokenizer.encoder), B, call, frozen=(pipe.vae, pipe.tokenizer))


def _decode_cases(ctx: _Ctx) -> Iterator[Case]:
    from .models.lost import standardize_tokens

    pipe, B = _pipeline(ctx), ctx.cfg.batch_size
    tokens = standardize_tokens(ctx.randn(B, pipe.num_tokens, pipe.token_dim))  # [B, R, D]
    model = _label(ctx, f"LoSTTokenizer/{ctx.spec.tokenizer} decoder" if ctx.cfg.model is None else "decoder")
    for steps in ctx.cfg.steps:
        def call(steps: int = steps) -> torch.Tensor:
            with ctx.autocast():
                return pipe.decode_latents(tokens, steps=steps, guidance=ctx.cfg.guidance, seed=ctx.cfg.seed)
        # every sampler step is the same decoder call: count one step (tests/test_bench.py checks this)
        yield Case("decode", f"steps={steps} cfg={ctx.cfg.guidance:g}, {pipe.num_tokens} tokens -> latent", model,
                   _nparams(pipe.tokenizer.decoder), B, call, frozen=(pipe.tokenizer,),
                   flops_fn=lambda: call(1), flops_scale=steps)


def _mesh_cases(ctx: _Ctx) -> Iterator[Case]:
    from .latent.extract import extract_mesh

    pipe, real = _pipeline(ctx), ctx.cfg.model is not None
    res = ctx.cfg.resolution or ctx.spec.resolution
    points, normals = _sphere(ctx, 1, pipe.num_points if real else ctx.spec.points)
    with torch.no_grad(), ctx.autocast():
        z = pipe.vae.encode(points, normals).float()  # [1, C, H, W]
    faces: list[int] = []

    def call() -> None:
        with torch.no_grad(), ctx.autocast():
            if real:
                mesh = pipe.vae.to_mesh(z, resolution=res)
            else:  # a random field's surface is noise (~10x a shape's faces): query it all, mesh a sphere
                field = pipe.vae.mesh_query(z)
                mesh = extract_mesh(lambda xyz: 0.0 * field(xyz).float() + (0.8 - xyz.norm(dim=-1)), res,
                                    device=ctx.device)
        faces.append(0 if mesh is None else len(mesh.faces))
    call()  # untimed: the face count for the note (the timed warm-up follows as usual)
    note = f"{faces[0]} faces" + ("" if real else "; random weights: the VAE field is queried on the whole grid, "
                                  "the surface meshed is a radius-0.8 sphere")
    model = f"bundle {ctx.cfg.model}: vae" if real else f"TriplaneVAE/{ctx.spec.vae}"
    yield Case("mesh", f"resolution={res} (one latent)", model, _nparams(pipe.vae), 1, call, flops=False, note=note)


def _generate_cases(ctx: _Ctx) -> Iterator[Case]:
    B, g = ctx.cfg.batch_size, ctx.cfg.guidance
    if ctx.cfg.model is not None:
        pipe = _pipeline(ctx)
        try:
            gpt, text = pipe.gpt, pipe.text_encoder
        except CheckpointError as e:
            if ctx.cfg.stages is not None and list(ctx.cfg.stages) != list(STAGES):
                raise  # asked for explicitly
            ctx.notes.append(f"generate skipped: {' '.join(str(e).split())}")
            return
        cond = text.encode(["a wooden chair with four legs"]).to(ctx.device, torch.float32).expand(B, -1)
        model = f"bundle {ctx.cfg.model}: gpt"
    else:
        from .models.gpt import build_gpt

        gpt = build_gpt(ctx.spec.gpt, **{**ctx.spec.gpt_overrides, "cond_dim": ctx.spec.cond_dim})
        gpt = gpt.to(ctx.device).eval()
        cond = ctx.randn(B, ctx.spec.cond_dim)
        model = f"LoSTGPT/{ctx.spec.gpt}"
    c = gpt.config

    def call() -> torch.Tensor:
        generator = torch.Generator(device=ctx.device).manual_seed(ctx.cfg.seed)
        with ctx.autocast():
            return gpt.generate(cond, guidance=g, generator=generator)  # [B, L, D]
    yield Case("generate", f"{c.num_tokens} tokens x {c.diffloss.sample_steps} head steps, cfg={g:g}", model,
               _nparams(gpt), B, call, frozen=(gpt,))


BUILDERS: dict[str, Callable[[_Ctx], Iterator[Case]]] = {
    "vae": _vae_cases,
    "rida": _rida_cases,
    "tokenizer": lambda ctx: _tokenizer_cases(ctx, semantic=False),
    "tokenizer_sem": lambda ctx: _tokenizer_cases(ctx, semantic=True),
    "gpt": _gpt_cases,
    "tokenize": _tokenize_cases,
    "decode": _decode_cases,
    "mesh": _mesh_cases,
    "generate": _generate_cases,
}


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
        from .pipeline import read_bundle

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
    from .data.store import atomic_write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "bench.json", report)
    md = out / "bench.md"
    md.write_text(to_markdown(report), encoding="utf-8")
    return out / "bench.json", md
