"""The LoST tokenizer stage: run config, the latents dataset, the semantic loss and the Task.

One training step on a batch of raw latents z (the `latents` table, key "z"):

    x0     = normalize(z)                                   per-channel dataset statistics (kept in the model)
    tokens = encode(x0)                                     [B, R, 32]
    keep   = sample_keep(nested = epoch >= nest_after)      all R during the first `nest_after` epochs
    drop   = sample_drop()                                  whole condition -> null tokens with p = cfg_drop_prob
    x_t, t, target = noised(x0, noise, u)                   flow matching by default (models/flow.py)
    pred   = decode(tokens, keep, x_t, t, drop)
    L      = MSE(pred, target) + lambda (1 - cos(f(x0_hat), f(x0))),   x0_hat = predict_x0(x_t, t, pred)

f is the frozen RIDA student (paper: lambda = 1.0); it reads its own normalisation of the RAW latents, so
x0 and x0_hat are mapped back with the tokenizer's statistics first. Gradients reach the tokenizer through
x0_hat; the student is frozen (no optimizer state, no EMA) and kept in eval mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import OptimConfig, TrainConfig, to_dict
from ..data.latents import principal_axes
from ..data.loader import StoreDataset
from ..errors import ConfigError
from ..models.flow import KINDS, PREDICTION, PREDICTIONS, TIME_SAMPLING, noised, predict_x0, sample_u
from ..models.lost import KEEP_MODES, LoSTTokenizer, build_tokenizer
from ..models.rida import RidaStudent
from .loop import Task

SEMANTIC_FORMS = ("spatial", "global")
LOSS_SPACES = ("prediction", "velocity")
VELOCITY_MIN_SIGMA = 0.05  # the v-loss of an x0 decoder divides by sigma no smaller than this


# ----------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------


@dataclass
class TokenizerModelConfig:
    preset: str = "lost_tiny"  # lost_tiny, lost_small, lost_paper or lost_trellis (models/lost.py)
    overrides: dict[str, Any] = field(default_factory=dict)  # LoSTConfig overrides (latent_shape: from the data)


@dataclass
class TokenizerObjectiveConfig:
    scheduler: str = "flow"  # "flow" (flow matching) or "ddpm" (the authors' ADM chain; sampled with DDIM)
    num_train_timesteps: int = 1000  # length of the diffusers training chain
    prediction: str = "auto"  # decoder target: "auto" (flow: velocity, ddpm: epsilon), or "sample" (x0)
    # the space the MSE is taken in: "prediction" (what the decoder outputs) or, for flow, "velocity" (an x0
    # decoder's implied velocity, i.e. its x0 error / sigma^2 with sigma clamped at VELOCITY_MIN_SIGMA: JiT's
    # x-prediction with the v-loss, which keeps the low-noise steps weighted as a velocity decoder's)
    loss_space: str = "prediction"
    time_sampling: str = "logit_normal"  # flow: sigma ~ sigmoid(N(0, 1)) or "uniform"; ddpm: timestep = floor(u T)
    time_shift: float = 1.0  # s > 1 moves training times towards noise: u -> s u / (1 + (s - 1) u) (SD3);
    # flow: the sampler uses the same shift (stored with the export)
    semantic_weight: float = 1.0  # lambda of the semantic loss on the decoder's x0 estimate; 0: off (no --rida needed)
    # "spatial" (the authors' code): mean over the frozen student's spatial tokens of 1 - cos(f(x0_hat), f(x0));
    # "global": 1 - cos of its global embeddings
    semantic_form: str = "spatial"
    semantic_max_t: float = 1.0  # only samples at time t <= this (flow sigma / DDPM fraction) count; 1: all (authors)
    semantic_skip_dropped: bool = False  # leave CFG-dropped samples out (their x0 estimate ignores the tokens)
    # weight of the same semantic loss on the full-noise pass's clean-latent estimate (the pass of `x0_weight`, run
    # for this term alone when x0_weight is 0), over the samples that see their tokens; 0: off (the paper). At full
    # noise the estimate depends on the kept tokens alone, and a decode at temperature 0 starts from it, so this is
    # where a short prefix's semantics are decided; the denoising-pass term gated at `semantic_max_t` never sees it.
    semantic_x0_weight: float = 0.0
    # REPA-style alignment (FlexTok, REPA): 1 - cos between an MLP projection of decoder block `repa_layer`'s patch
    # states and the frozen student's spatial tokens of the clean x0, mean over patches; 0: off. The projector is
    # trained with the decoder and dropped from the export.
    repa_weight: float = 0.0
    repa_layer: int = 2  # 1-based decoder block whose output is aligned
    # weight of a full-noise regression term: one more decoder pass at pure noise (flow sigma = 1) whose clean-latent
    # estimate is regressed on x0 (MSE, CFG-dropped samples left out). At full noise only the tokens carry the
    # shape, so this trains the decoder to read them and sends the encoder a direct reconstruction gradient;
    # 0: off (the paper's objective). Needs flow, or a decoder predicting the sample (epsilon is ill-posed there).
    x0_weight: float = 0.0
    # samples per batch the full-noise regression sees (the batch's first n; batches are drawn at random, so the
    # mean stays unbiased): 0 = all. Its extra decoder pass costs 40% of a tiny step on a CPU (1.04 s against
    # 0.63 s at one thread, batch 32); with 8 of 32 it costs a quarter of that.
    x0_batch: int = 0
    # samples per batch each semantic term sees (the first n of those it applies to; batches are drawn at random, so
    # the mean stays unbiased): 0 = all. The frozen student's forward + backward costs about as much as a tiny tokenizer
    # step on a CPU. With 8 of 32, 2000 tiny steps took 633 s with lambda = 1 against 596 s without the loss
    # (4-d tokens, 2 threads).
    semantic_batch: int = 0
    # std of Gaussian noise added to the (unit-RMS, z-scored) tokens the decoder reads in training; 0: off (the
    # paper). A continuous 32-d token holds as many digits as the decoder can read, so on data whose shapes need
    # ~30 numbers the first token carries everything and later tokens add nothing (a flat Chamfer in k). Noise of
    # std s caps what one token can carry at about 16 log2(1 + 1 / s^2) bits, so the shape must be spread over
    # the prefix, most important first (nested dropout), and the decoder learns to read every kept token.
    # Decoding at inference reads the clean tokens.
    token_noise: float = 0.0
    # exponent a of a spectral metric on the latent error (the denoising and full-noise terms): the error's component
    # along the i-th principal direction of the training latents weighs lambda_i^-a (lambda_i: that direction's
    # variance, floored at the direction where 99% of the variance is reached), scaled so that sum_i w_i lambda_i =
    # sum_i lambda_i (an error as large as the data weighs as under MSE). 0: plain MSE (the paper). A positive-definite
    # quadratic loss has the same minimiser as MSE; it changes what a budget-limited decoder fits first. Under MSE the
    # first token's few large directions hold most of the error, so the decoder reads token 1 and little else.
    loss_whiten: float = 0.0
    loss_whiten_terms: str = "all"  # the terms measured with it: "all" (denoising and full-noise) or "x0" (full-noise)
    nest_after: int = 50  # epochs trained with all R registers kept before nested dropout starts (paper: 50 of 250)
    keep_sampling: str = "pow2"  # nested dropout's prefix lengths: "pow2" ({1, 2, 4, ..., R}, paper) or "uniform" (1..R)
    sample_steps: int = 25  # sampling defaults stored with the export: scheduler steps
    guidance: float = 3.0  # sampling defaults stored with the export: classifier-free guidance scale
    sample_temperature: float = 1.0  # sampling defaults stored with the export: scale of the starting noise


@dataclass
class TokenizerRunConfig:
    model: TokenizerModelConfig = field(default_factory=TokenizerModelConfig)
    tokenizer: TokenizerObjectiveConfig = field(default_factory=TokenizerObjectiveConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-4, weight_decay=0.05, warmup_steps=50))
    train: TrainConfig = field(default_factory=TrainConfig)
    split: str = "train"  # dataset split to train on
    rida: Optional[str] = None  # RIDA student export or run directory (`--rida` sets it)


def check_objective(cfg: TokenizerObjectiveConfig) -> None:
    """Reject settings the stage cannot use, naming the dotted path."""
    full_noise_ok = cfg.scheduler == "flow" or cfg.prediction == "sample"  # epsilon at pure noise: ill-posed
    checks = [
        ("tokenizer.scheduler", cfg.scheduler in KINDS, f"must be one of {list(KINDS)}"),
        ("tokenizer.prediction", cfg.prediction == "auto" or cfg.prediction in PREDICTIONS.get(cfg.scheduler, ()),
         f"must be 'auto' or one of {list(PREDICTIONS.get(cfg.scheduler, ()))} for this scheduler"),
        ("tokenizer.time_sampling", cfg.time_sampling in TIME_SAMPLING, f"must be one of {list(TIME_SAMPLING)}"),
        ("tokenizer.loss_space", cfg.loss_space in LOSS_SPACES and (cfg.loss_space == "prediction" or (
            cfg.scheduler == "flow" and cfg.prediction == "sample")),
         f"must be one of {list(LOSS_SPACES)}; 'velocity' needs scheduler flow and prediction sample"),
        ("tokenizer.num_train_timesteps", cfg.num_train_timesteps >= 2, "must be >= 2"),
        ("tokenizer.time_shift", cfg.time_shift > 0, "must be > 0"),
        ("tokenizer.semantic_weight", cfg.semantic_weight >= 0, "must be >= 0"),
        ("tokenizer.semantic_batch", cfg.semantic_batch >= 0, "must be >= 0 (0 = the whole batch)"),
        ("tokenizer.semantic_form", cfg.semantic_form in SEMANTIC_FORMS, f"must be one of {list(SEMANTIC_FORMS)}"),
        ("tokenizer.semantic_max_t", 0.0 < cfg.semantic_max_t <= 1.0, "must be in (0, 1]"),
        ("tokenizer.semantic_x0_weight", cfg.semantic_x0_weight >= 0 and (cfg.semantic_x0_weight == 0 or full_noise_ok),
         "must be >= 0; > 0 needs scheduler flow or prediction sample"),
        ("tokenizer.repa_weight", cfg.repa_weight >= 0, "must be >= 0"),
        ("tokenizer.x0_weight", cfg.x0_weight >= 0 and (cfg.x0_weight == 0 or full_noise_ok),
         "must be >= 0; > 0 needs scheduler flow or prediction sample"),
        ("tokenizer.x0_batch", cfg.x0_batch >= 0, "must be >= 0 (0 = the whole batch)"),
        ("tokenizer.repa_layer", cfg.repa_layer >= 1, "must be >= 1 (a decoder block)"),
        ("tokenizer.token_noise", cfg.token_noise >= 0, "must be >= 0"),
        ("tokenizer.loss_whiten_terms", cfg.loss_whiten_terms in ("all", "x0"), "must be 'all' or 'x0'"),
        ("tokenizer.loss_whiten", math.isfinite(cfg.loss_whiten) and 0 <= cfg.loss_whiten <= 1, "must be in [0, 1]"),
        ("tokenizer.nest_after", cfg.nest_after >= 0, "must be >= 0 (epochs)"),
        ("tokenizer.keep_sampling", cfg.keep_sampling in KEEP_MODES, f"must be one of {list(KEEP_MODES)}"),
        ("tokenizer.sample_steps", cfg.sample_steps >= 1, "must be >= 1"),
        ("tokenizer.sample_temperature", math.isfinite(cfg.sample_temperature) and cfg.sample_temperature >= 0,
         "must be a finite number >= 0"),
        ("tokenizer.guidance", cfg.guidance >= 0, "must be >= 0"),
    ]
    for path, ok, why in checks:
        if not ok:
            raise ConfigError(f"{path}: {why} (got {getattr(cfg, path.split('.')[1])!r})")


# ----------------------------------------------------------------------------------------------------
# Data and models
# ----------------------------------------------------------------------------------------------------


def decoder_target(cfg: TokenizerObjectiveConfig) -> str:
    """What the decoder predicts under these settings ("auto": the scheduler's native target)."""
    return PREDICTION[cfg.scheduler] if cfg.prediction == "auto" else cfg.prediction


def build_tokenizer_for(cfg: TokenizerRunConfig, latent_shape: list[int], stats: dict) -> LoSTTokenizer:
    """A fresh tokenizer: preset + overrides, the data's latent shape and statistics, and the decoder
    target that the chosen scheduler trains.

    Raises:
        ConfigError: naming `model.overrides.<field>` when an override contradicts the data or scheduler.
    """
    want = {"latent_shape": list(latent_shape), "prediction": decoder_target(cfg.tokenizer)}
    for key, value in want.items():
        if key in cfg.model.overrides and cfg.model.overrides[key] != value:
            raise ConfigError(f"model.overrides.{key}: {cfg.model.overrides[key]!r} contradicts {value!r} "
                              f"(from the data / tokenizer.scheduler)")
    tokenizer = build_tokenizer(cfg.model.preset, **{**cfg.model.overrides, **want})
    tokenizer.set_latent_stats(stats["mean"], stats["std"])
    return tokenizer


def load_student(path: str | Path, latent_shape: list[int]) -> RidaStudent:
    """The frozen RIDA student f_theta for latents of `latent_shape` [C, H, W] (eval, requires_grad False).

    Raises:
        CheckpointError: not a RIDA export; ConfigError: trained on latents of another shape.
    """
    student = RidaStudent.from_pretrained(path)
    c = student.config
    reads = [c.latent_channels, c.plane_res, c.planes * c.plane_res]
    if reads != list(latent_shape):
        raise ConfigError(f"{path}: RIDA student reads latents {reads}, the dataset has {list(latent_shape)}")
    return student.requires_grad_(False).eval()


# ----------------------------------------------------------------------------------------------------
# The semantic loss
# ----------------------------------------------------------------------------------------------------


def student_input(student: RidaStudent, tokenizer: LoSTTokenizer, z: torch.Tensor) -> torch.Tensor:
    """Tokenizer-normalised latents -> raw (tokenizer statistics) -> the student's own normalisation."""
    return student.normalize(tokenizer.denormalize(z))


SEMANTIC_WEIGHTS = ("semantic_weight", "semantic_x0_weight")  # the semantic loss's two terms
STUDENT_WEIGHTS = (*SEMANTIC_WEIGHTS, "repa_weight")  # the terms that need the RIDA student


def uses_student_for(objective: TokenizerObjectiveConfig) -> bool:
    """Whether any term of these settings runs the frozen RIDA student."""
    return any(getattr(objective, name) > 0 for name in STUDENT_WEIGHTS)


def require_student(objective: TokenizerObjectiveConfig, present: bool) -> None:
    """ConfigError naming the first term that needs the RIDA student when none is given."""
    for name in STUDENT_WEIGHTS:
        if getattr(objective, name) > 0 and not present:
            raise ConfigError(f"tokenizer.{name}: {getattr(objective, name)} needs the RIDA student "
                              f"(--rida RIDA_EXPORT), or set tokenizer.{name}=0")


def semantic_loss(student: RidaStudent, tokenizer: LoSTTokenizer, x0_hat: torch.Tensor, x0: torch.Tensor,
                  form: str = "spatial") -> torch.Tensor:
    """The semantic loss on tokenizer-normalised latents [B, C, H, W].

    "spatial" (the LoST authors' code): mean over samples and the student's N spatial tokens of
    1 - cos(f(x0_hat)_n, f(x0)_n). "global": mean over samples of 1 - cos of the global embeddings.
    The reference carries no gradient; x0_hat does, through the frozen student.
    """
    with torch.no_grad():
        ref_global, ref_tokens = student.forward_features(student_input(student, tokenizer, x0))
    pred_global, pred_tokens = student.forward_features(student_input(student, tokenizer, x0_hat))
    if form == "global":
        return (1.0 - F.cosine_similarity(pred_global.float(), ref_global.float(), dim=-1)).mean()
    return (1.0 - F.cosine_similarity(pred_tokens.float(), ref_tokens.float(), dim=-1)).mean()  # [B, N] -> mean


def student_tokens_on_grid(student: RidaStudent, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The student's plane-major spatial tokens [B, N_s, D] laid out as the rolled-out latent [B, D, h_s, P w_s],
    average-pooled to the decoder's patch grid (h, w), row-major -> [B, h * w, D]."""
    planes = student.plane_grid(tokens)  # [B, P, h_s, w_s, D]
    B, P, hs, ws, D = planes.shape
    image = planes.permute(0, 4, 2, 1, 3).reshape(B, D, hs, P * ws)  # planes side by side, as the latent
    if (hs, P * ws) != tuple(grid):
        image = F.adaptive_avg_pool2d(image, grid)
    return image.flatten(2).transpose(1, 2)  # [B, h*w, D]


class RepaProjector(nn.Module):
    """REPA's projector: Linear -> SiLU -> Linear -> SiLU -> Linear, decoder width -> student token width."""

    def __init__(self, width: int, out_dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or 2 * width
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


# ----------------------------------------------------------------------------------------------------
# The spectral metric on latent errors
# ----------------------------------------------------------------------------------------------------

WHITEN_FLOOR_VARIANCE = 0.99  # directions past this share of the variance weigh as the direction that reaches it


class LatentMetric(nn.Module):
    """A fixed quadratic form on latent errors: per-sample sum_i w_i (u_i . e)^2 / D over the principal directions
    u_i of the training latents, with w_i = lambda_i^-power normalised so that sum_i w_i lambda_i = sum_i lambda_i.
    Directions outside the training latents' span (N <= D) weigh as the floor direction.

    power 0 gives w = 1 and the plain per-sample MSE. Buffers are not saved: the metric is rebuilt from the data.
    """

    def __init__(self, latents: torch.Tensor, power: float) -> None:
        super().__init__()
        y = latents.flatten(1).double()  # [N, D], tokenizer-normalised
        mean, axes = principal_axes(y)  # axes [r, D], r = min(N, D), by falling variance
        lam = ((y - mean) @ axes.T).var(dim=0)  # [r]: the variance along each axis
        share = lam.cumsum(0) / lam.sum().clamp(min=1e-30)
        q = int(torch.searchsorted(share, torch.tensor(WHITEN_FLOOR_VARIANCE, dtype=share.dtype)).clamp(max=len(lam) - 1))
        floor = float(lam[q]) if lam[q] > 0 else 1e-12
        w = lam.clamp(min=floor).pow(-power)
        scale = lam.sum() / (w * lam).sum().clamp(min=1e-30)  # the rest of the space holds no training variance
        self.register_buffer("basis", axes.T.float(), persistent=False)  # [D, r], columns u_i
        self.register_buffer("weights", (w * scale).float(), persistent=False)  # [r]
        self.register_buffer("rest_weight", (floor ** -power * scale).float(), persistent=False)  # outside the span
        self.register_buffer("variance", lam.float(), persistent=False)  # [r]

    def forward(self, err: torch.Tensor) -> torch.Tensor:
        """Errors [B, ...] -> per-sample weighted mean square [B]."""
        e = err.float().flatten(1)
        along = (e @ self.basis).pow(2)  # [B, r]
        rest = (e.pow(2).sum(1) - along.sum(1)).clamp(min=0.0)
        return ((along * self.weights).sum(1) + self.rest_weight * rest) / e.shape[1]


def latent_metric_for(dataset: StoreDataset, tokenizer: LoSTTokenizer, power: float) -> LatentMetric:
    """The spectral metric of `tokenizer.loss_whiten`, from every latent of the training split (normalised)."""
    with torch.no_grad():
        z = torch.stack([dataset[i]["z"].float() for i in range(len(dataset))])
        return LatentMetric(tokenizer.normalize(z), power)


# ----------------------------------------------------------------------------------------------------
# The Task
# ----------------------------------------------------------------------------------------------------


def noisy_tokens(tokens: torch.Tensor, std: float) -> torch.Tensor:
    """Tokens [B, R, T] plus N(0, std^2) noise (the training-time capacity limit `tokenizer.token_noise`)."""
    return tokens + std * torch.randn_like(tokens) if std > 0 else tokens


class TokenizerTask(Task):
    """Trains the LoST tokenizer (encoder + DiT decoder) on raw-latent batches {"z": [B, C, H, W]}.

    Args:
        tokenizer: the model to train (latent statistics already set).
        objective: the `tokenizer.*` settings.
        student: the frozen RIDA student; required when a term in `STUDENT_WEIGHTS` is on, ignored otherwise.
        run_config: the resolved run config, stored in the export.
        rida_info: where the student came from (stored in the export).
        metric: the spectral metric of the latent errors; required when `objective.loss_whiten` > 0.
    """

    def __init__(self, tokenizer: LoSTTokenizer, objective: TokenizerObjectiveConfig,
                 student: RidaStudent | None = None, run_config: dict | None = None,
                 rida_info: dict | None = None, metric: LatentMetric | None = None) -> None:
        super().__init__()
        check_objective(objective)
        if tokenizer.config.prediction != decoder_target(objective):
            raise ConfigError(f"tokenizer.prediction: these settings train a decoder predicting "
                              f"{decoder_target(objective)!r}, the model predicts {tokenizer.config.prediction!r}")
        require_student(objective, student is not None)
        if objective.repa_weight > 0 and objective.repa_layer > tokenizer.config.dec_depth:
            raise ConfigError(f"tokenizer.repa_layer: {objective.repa_layer} is past the decoder's "
                              f"{tokenizer.config.dec_depth} blocks")
        if objective.loss_whiten > 0 and metric is None:
            raise ConfigError(f"tokenizer.loss_whiten: {objective.loss_whiten} needs the training latents' metric")
        self.tokenizer = tokenizer
        self.cfg = objective
        self.metric = metric if objective.loss_whiten > 0 else None  # training only, not exported
        # frozen inside the task: excluded from the optimizer and EMA (requires_grad False), saved in checkpoints
        uses_student = uses_student_for(objective)
        self.student = student.requires_grad_(False).eval() if uses_student else None
        self.projector = (RepaProjector(tokenizer.config.dec_width, student.config.out_dim)
                          if objective.repa_weight > 0 else None)
        self.run_config = run_config or {}
        self.rida_info = rida_info
        self.nested = objective.nest_after == 0  # set per step by on_step_start

    def on_step_start(self, step: int, epoch: int) -> None:
        """Nested dropout from epoch `nest_after` on (a function of the epoch alone, so resume reproduces it)."""
        self.nested = epoch >= self.cfg.nest_after

    def train(self, mode: bool = True) -> TokenizerTask:
        super().train(mode)
        if self.student is not None:
            self.student.eval()  # frozen network: never in training mode
        return self

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cfg, tok = self.cfg, self.tokenizer
        x0 = tok.normalize(batch["z"].float())  # [B, C, H, W]
        B, device = x0.shape[0], x0.device
        tokens = noisy_tokens(tok.encode(x0), cfg.token_noise)  # [B, R, T]
        keep = tok.sample_keep(B, nested=self.nested, device=device, mode=cfg.keep_sampling)  # [B]
        drop = tok.sample_drop(B, device=device)  # [B] bool: CFG null condition
        u = sample_u(B, cfg.time_sampling, device=device, shift=cfg.time_shift)
        x_t, t, target = noised(cfg.scheduler, x0, torch.randn_like(x0), u, cfg.num_train_timesteps,
                                tok.config.prediction)
        if self.projector is not None:
            pred, hidden = tok.decode_with_hidden(tokens, keep, x_t, t, drop, cfg.repa_layer)
        else:
            pred, hidden = tok.decode(tokens, keep, x_t, t, drop), None  # [B, C, H, W]
        denoise = self._sq_err(pred.float() - target.float(), term="denoise")  # [B]
        if cfg.loss_space == "velocity":  # x0 decoder, v-loss: |x0_hat - x0|^2 / sigma^2
            denoise = denoise * t.float().clamp(min=VELOCITY_MIN_SIGMA).pow(-2)
        denoise = denoise.mean()
        out = {"denoise": denoise.detach(), "keep_mean": keep.float().mean()}
        loss = denoise
        if cfg.semantic_weight > 0:
            semantic = self._semantic(x0, x_t, t, pred, drop)
            loss = loss + cfg.semantic_weight * semantic
            out["semantic"] = semantic.detach()
        if cfg.x0_weight > 0 or cfg.semantic_x0_weight > 0:
            regress, semantic_x0 = self._full_noise_terms(x0, tokens, keep, drop)
            if cfg.x0_weight > 0:
                loss = loss + cfg.x0_weight * regress
                out["x0_regress"] = regress.detach()
            if semantic_x0 is not None:
                loss = loss + cfg.semantic_x0_weight * semantic_x0
                out["semantic_x0"] = semantic_x0.detach()
        if hidden is not None:
            with torch.no_grad():
                ref = self.student.forward_features(student_input(self.student, tok, x0))[1]  # [B, N_s, D_s]
                ref = student_tokens_on_grid(self.student, ref, tok.config.grid)  # [B, N, D_s]
            repa = (1.0 - F.cosine_similarity(self.projector(hidden).float(), ref.float(), dim=-1)).mean()
            loss = loss + cfg.repa_weight * repa
            out["repa"] = repa.detach()
        return {"loss": loss, **out}

    def _full_noise_terms(self, x0: torch.Tensor, tokens: torch.Tensor, keep: torch.Tensor,
                          drop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One decoder pass at pure noise (the same prefixes as the denoising pass; the first `x0_batch` of the
        batch when set), scored over the samples that see their tokens: the MSE of its clean-latent estimate
        against x0, and the semantic loss on that estimate (at most `semantic_batch` of them; None when
        `semantic_x0_weight` is 0). Each is 0, still in the graph, when every sample is dropped."""
        cfg, tok = self.cfg, self.tokenizer
        if cfg.x0_batch:
            n = cfg.x0_batch
            x0, tokens, keep, drop = x0[:n], tokens[:n], keep[:n], drop[:n]
        ones = torch.ones(x0.shape[0], device=x0.device)
        x_t, t, _ = noised(cfg.scheduler, x0, torch.randn_like(x0), ones, cfg.num_train_timesteps,
                           tok.config.prediction)
        pred = tok.decode(tokens, keep, x_t, t, drop)
        x0_hat = predict_x0(cfg.scheduler, x_t, t, pred, cfg.num_train_timesteps, tok.config.prediction)
        err = self._sq_err(x0_hat.float() - x0.float())  # [B]
        use = (~drop).float()
        regress = (err * use).sum() / use.sum().clamp(min=1.0)
        return regress, self._semantic_over(~drop, x0_hat, x0) if cfg.semantic_x0_weight > 0 else None

    def _sq_err(self, err: torch.Tensor, term: str = "x0") -> torch.Tensor:
        """Per-sample mean square of latent errors [B, ...] -> [B], under the spectral metric when it is on."""
        if self.metric is not None and (term == "x0" or self.cfg.loss_whiten_terms == "all"):
            return self.metric(err)
        return err.pow(2).flatten(1).mean(1)

    def _semantic(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, pred: torch.Tensor,
                  drop: torch.Tensor) -> torch.Tensor:
        """The denoising pass's semantic term, over the samples at t <= semantic_max_t (and not CFG-dropped when
        semantic_skip_dropped)."""
        cfg = self.cfg
        use = t <= cfg.semantic_max_t
        if cfg.semantic_skip_dropped:
            use = use & ~drop
        x0_hat = predict_x0(cfg.scheduler, x_t, t, pred, cfg.num_train_timesteps, self.tokenizer.config.prediction)
        return self._semantic_over(use, x0_hat, x0)

    def _semantic_over(self, use: torch.Tensor, x0_hat: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """The semantic loss over the first `semantic_batch` of the samples in `use` [B] bool (all when 0; random
        draws, so an unbiased mean). With none of them it is 0, still connected to the graph, so DDP sees every
        gradient."""
        idx = use.nonzero().flatten()[:self.cfg.semantic_batch or None]
        if len(idx) == 0:
            return x0_hat.sum() * 0.0
        return semantic_loss(self.student, self.tokenizer, x0_hat[idx], x0[idx], self.cfg.semantic_form)

    def sampling_defaults(self) -> dict[str, Any]:
        """What `flow.sample_latents` should use with this model (stored as "sampling" in config.json)."""
        c = self.cfg
        return {"scheduler": c.scheduler, "steps": c.sample_steps, "guidance": c.guidance,
                "temperature": c.sample_temperature,
                "num_train_timesteps": c.num_train_timesteps, "shift": c.time_shift if c.scheduler == "flow" else 1.0}

    def export(self, out_dir: Path) -> None:
        self.tokenizer.save_pretrained(out_dir, extra_config={
            "sampling": self.sampling_defaults(), "rida": self.rida_info, "run": self.run_config})


def check_run(cfg: TokenizerRunConfig) -> None:
    """The `tokenizer.*` checks, and a RIDA student named whenever the semantic loss is on."""
    check_objective(cfg.tokenizer)
    require_student(cfg.tokenizer, cfg.rida is not None)


def build_task(cfg: TokenizerRunConfig, dataset: StoreDataset, stats: dict) -> TokenizerTask:
    """Tokenizer (from the data's latent shape and statistics) + frozen student (when the semantic loss is on).

    Seed (`train.loop.seed_everything`) before calling: the tokenizer's initial weights follow the seed.
    """
    check_run(cfg)
    latent_shape = [int(v) for v in dataset[0]["z"].shape]
    tokenizer = build_tokenizer_for(cfg, latent_shape, stats)
    student, info = None, None
    if uses_student_for(cfg.tokenizer):
        student = load_student(cfg.rida, latent_shape)
        info = {"path": str(cfg.rida), "preset": student.preset, "teacher": student.extra_config.get("teacher"),
                "objective": student.extra_config.get("objective")}
    metric = latent_metric_for(dataset, tokenizer, cfg.tokenizer.loss_whiten) if cfg.tokenizer.loss_whiten > 0 else None
    return TokenizerTask(tokenizer, cfg.tokenizer, student, run_config=to_dict(cfg), rida_info=info, metric=metric)
