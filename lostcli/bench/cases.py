"""`lost bench` cases: what one row calls, built per stage from the preset's random-init models.

Models are random-initialised from the stage presets (no weights needed); inputs are random tensors of the
shapes a real step sees. `model=BUNDLE` runs tokenize / decode / mesh / generate on a real bundle instead.

- Training rows (vae, rida, tokenizer, tokenizer_sem, gpt): one call = the stage's Task forward (the same
  module the training loop runs), backward, grad-norm clipping and an AdamW step; bf16 = autocast with fp32
  weights, as Accelerate's bf16 mixed precision. samples/s = batch / median.
- Latency rows: tokenize (VAE encode + tokenizer encode of B point clouds), decode (B token sequences ->
  latents, per sampler step count, with CFG), mesh (marching cubes of ONE latent: batch 1), generate (the
  GPT's L tokens for B conditions with CFG on the head).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from ..errors import CheckpointError
from .config import STAGES, BenchConfig, BenchPreset


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
    from ..latent.direct3d import TriplaneVAE

    return TriplaneVAE.from_preset(ctx.spec.vae)


def _build_student(ctx: _Ctx):
    from ..models.rida import build_student

    return build_student(ctx.spec.rida, **ctx.spec.rida_overrides)


def _vae_cases(ctx: _Ctx) -> Iterator[Case]:
    from ..train.vae import VaeLossConfig, VaeTask

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
    from ..train.rida import RidaLossConfig, RidaTask

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
    from ..models.lost import build_tokenizer
    from ..train.tokenizer import TokenizerObjectiveConfig, TokenizerTask

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
    from ..models.gpt import build_gpt
    from ..train.gpt import GPTSamplingConfig, GPTTask

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
    from ..pipeline import LostPipeline

    if ctx.pipe is None:
        if ctx.cfg.model is not None:
            ctx.pipe = LostPipeline.from_pretrained(ctx.cfg.model, device=ctx.device)
        else:
            from ..models.lost import build_tokenizer

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
    from ..models.lost import standardize_tokens

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
    from ..latent.extract import extract_mesh

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
        from ..models.gpt import build_gpt

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
