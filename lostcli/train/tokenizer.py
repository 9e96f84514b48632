"""The LoST tokenizer stage: run config, the latents dataset, the semantic loss and the Task.

One training step on a batch of raw latents z (the `latents` table, key "z"):

    x0     = normalize(z)                                   per-channel dataset statistics (kept in the model)
    tokens = encode(x0)                                     [B, R, 32]
    keep   = sample_keep(nested = epoch >= nest_after)      all R during the first `nest_after` epochs
    drop   = sample_drop()                                  whole condition -> null tokens with p = cfg_drop_prob
    x_t, t, target = noised(x0, noise, u)                   flow matching by default (models/flow.py)
    pred   = decoder_forward(x_t, t, tokens, keep, drop)
    L      = MSE(pred, target) + lambda (1 - cos(f(x0_hat), f(x0))),   x0_hat = predict_x0(x_t, t, pred)

f is the frozen RIDA student (paper: lambda = 1.0); it reads its own normalisation of the RAW latents, so
x0 and x0_hat are mapped back with the tokenizer's statistics first. Gradients reach the tokenizer through
x0_hat; the student is frozen (no optimizer state, no EMA) and kept in eval mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import OptimConfig, TrainConfig, to_dict
from ..data.loader import StoreDataset
from ..data.store import DatasetStore
from ..errors import ConfigError, DataError
from ..models.flow import KINDS, PREDICTION, TIME_SAMPLING, noised, predict_x0, sample_u
from ..models.lost import LoSTTokenizer, build_tokenizer
from ..models.rida import RidaStudent

LATENTS = "latents"


# ----------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------


@dataclass
class TokenizerModelConfig:
    preset: str = "lost_tiny"  # lost_tiny, lost_small, lost_paper or lost_trellis (models/lost.py)
    overrides: dict[str, Any] = field(default_factory=dict)  # LoSTConfig overrides (latent_shape: from the data)


@dataclass
class TokenizerObjectiveConfig:
    scheduler: str = "flow"  # "flow" (flow matching, velocity) or "ddpm" (epsilon; sampled with DDIM)
    num_train_timesteps: int = 1000  # length of the diffusers training chain
    time_sampling: str = "logit_normal"  # flow: sigma ~ sigmoid(N(0, 1)) or "uniform"; ddpm: timestep = floor(u T)
    time_shift: float = 1.0  # s > 1 moves training times towards noise: u -> s u / (1 + (s - 1) u) (SD3)
    semantic_weight: float = 1.0  # lambda of 1 - cos(f(x0_hat), f(x0)); 0 disables it (no --rida needed)
    # samples per batch the semantic loss sees (the batch's first n; batches are drawn at random, so the mean
    # stays unbiased): 0 = all. The frozen student's forward + backward costs about as much as a tiny tokenizer
    # step on a CPU. With 8 of 32, 2000 tiny steps took 633 s with lambda = 1 against 596 s without the loss
    # (4-d tokens, 2 threads).
    semantic_batch: int = 0
    nest_after: int = 50  # epochs trained with all R registers kept before nested dropout starts (paper: 50 of 250)
    sample_steps: int = 25  # sampling defaults stored with the export: scheduler steps
    guidance: float = 3.0  # sampling defaults stored with the export: classifier-free guidance scale


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
    checks = [
        ("tokenizer.scheduler", cfg.scheduler in KINDS, f"must be one of {list(KINDS)}"),
        ("tokenizer.time_sampling", cfg.time_sampling in TIME_SAMPLING, f"must be one of {list(TIME_SAMPLING)}"),
        ("tokenizer.num_train_timesteps", cfg.num_train_timesteps >= 2, "must be >= 2"),
        ("tokenizer.time_shift", cfg.time_shift > 0, "must be > 0"),
        ("tokenizer.semantic_weight", cfg.semantic_weight >= 0, "must be >= 0"),
        ("tokenizer.semantic_batch", cfg.semantic_batch >= 0, "must be >= 0 (0 = the whole batch)"),
        ("tokenizer.nest_after", cfg.nest_after >= 0, "must be >= 0 (epochs)"),
        ("tokenizer.sample_steps", cfg.sample_steps >= 1, "must be >= 1"),
        ("tokenizer.guidance", cfg.guidance >= 0, "must be >= 0"),
    ]
    for path, ok, why in checks:
        if not ok:
            raise ConfigError(f"{path}: {why} (got {getattr(cfg, path.split('.')[1])!r})")


# ----------------------------------------------------------------------------------------------------
# Data and models
# ----------------------------------------------------------------------------------------------------


def require_latents(store: DatasetStore) -> None:
    """DataError naming the dataset when it has no `latents` table yet."""
    if not store.has_table(LATENTS):
        raise DataError(f"{store.root}: no '{LATENTS}' table (run `lost dataset latents {store.root} --vae VAE` first)")


def open_latents(root: str | Path, split: str | None = "train") -> tuple[StoreDataset, dict]:
    """The `latents` table of a dataset as items {"z": raw [C, H, W], "index"}, and its stats.json.

    Raises:
        DataError: no latents table, no statistics, or no items of the split.
    """
    root = Path(root)
    store = DatasetStore(root)
    require_latents(store)
    stats = store.read_stats(LATENTS)
    for key in ("mean", "std"):
        if not isinstance(stats.get(key), list):
            raise DataError(f"{root / LATENTS / 'stats.json'}: no per-channel '{key}' list")
    return StoreDataset(root, ["z"], split=split, table=LATENTS), stats


def build_tokenizer_for(cfg: TokenizerRunConfig, latent_shape: list[int], stats: dict) -> LoSTTokenizer:
    """A fresh tokenizer: preset + overrides, the data's latent shape and statistics, and the decoder
    target that the chosen scheduler trains.

    Raises:
        ConfigError: naming `model.overrides.<field>` when an override contradicts the data or scheduler.
    """
    want = {"latent_shape": list(latent_shape), "prediction": PREDICTION[cfg.tokenizer.scheduler]}
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


def semantic_loss(student: RidaStudent, tokenizer: LoSTTokenizer, x0_hat: torch.Tensor,
                  x0: torch.Tensor) -> torch.Tensor:
    """mean_b 1 - cos(f(x0_hat_b), f(x0_b)) for tokenizer-normalised latents [B, C, H, W].

    Both are mapped to raw latents (tokenizer statistics), then to the student's own normalisation. The
    reference embedding carries no gradient; x0_hat does, through the frozen student.
    """
    def student_input(z: torch.Tensor) -> torch.Tensor:
        return student.normalize(tokenizer.denormalize(z))

    with torch.no_grad():
        ref = student.embed(student_input(x0))  # [B, D], L2-normalised
    pred = student.embed(student_input(x0_hat))  # [B, D], L2-normalised
    return (1.0 - (pred.float() * ref.float()).sum(dim=-1)).mean()


# ----------------------------------------------------------------------------------------------------
# The Task
# ----------------------------------------------------------------------------------------------------


class TokenizerTask(nn.Module):
    """Trains the LoST tokenizer (encoder + DiT decoder) on raw-latent batches {"z": [B, C, H, W]}.

    Args:
        tokenizer: the model to train (latent statistics already set).
        objective: the `tokenizer.*` settings.
        student: the frozen RIDA student; required when `objective.semantic_weight` > 0, ignored otherwise.
        run_config: the resolved run config, stored in the export.
        rida_info: where the student came from (stored in the export).
    """

    def __init__(self, tokenizer: LoSTTokenizer, objective: TokenizerObjectiveConfig,
                 student: RidaStudent | None = None, run_config: dict | None = None,
                 rida_info: dict | None = None) -> None:
        super().__init__()
        check_objective(objective)
        if tokenizer.config.prediction != PREDICTION[objective.scheduler]:
            raise ConfigError(f"tokenizer.scheduler: {objective.scheduler!r} trains a decoder predicting "
                              f"{PREDICTION[objective.scheduler]!r}, the model predicts "
                              f"{tokenizer.config.prediction!r}")
        if objective.semantic_weight > 0 and student is None:
            raise ConfigError(f"tokenizer.semantic_weight: {objective.semantic_weight} needs the RIDA student "
                              "(--rida RIDA_EXPORT), or set tokenizer.semantic_weight=0")
        self.tokenizer = tokenizer
        self.cfg = objective
        # frozen inside the task: excluded from the optimizer and EMA (requires_grad False), saved in checkpoints
        self.student = student.requires_grad_(False).eval() if objective.semantic_weight > 0 else None
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
        tokens = tok.encode(x0)  # [B, R, T]
        keep = tok.sample_keep(B, nested=self.nested, device=device)  # [B]
        drop = tok.sample_drop(B, device=device)  # [B] bool: CFG null condition
        u = sample_u(B, cfg.time_sampling, device=device, shift=cfg.time_shift)
        x_t, t, target = noised(cfg.scheduler, x0, torch.randn_like(x0), u, cfg.num_train_timesteps)
        pred = tok.decoder_forward(x_t, t, tokens, keep, drop)  # [B, C, H, W]
        denoise = F.mse_loss(pred.float(), target.float())
        out = {"denoise": denoise.detach(), "keep_mean": keep.float().mean()}
        loss = denoise
        if self.student is not None:
            n = cfg.semantic_batch or B  # the first n samples (random draws) stand for the batch
            x0_hat = predict_x0(cfg.scheduler, x_t[:n], t[:n], pred[:n], cfg.num_train_timesteps)
            semantic = semantic_loss(self.student, tok, x0_hat, x0[:n])
            loss = loss + cfg.semantic_weight * semantic
            out["semantic"] = semantic.detach()
        return {"loss": loss, **out}

    def sampling_defaults(self) -> dict[str, Any]:
        """What `flow.sample_latents` should use with this model (stored as "sampling" in config.json)."""
        c = self.cfg
        return {"scheduler": c.scheduler, "steps": c.sample_steps, "guidance": c.guidance,
                "num_train_timesteps": c.num_train_timesteps}

    def export(self, out_dir: Path) -> None:
        self.tokenizer.save_pretrained(out_dir, extra_config={
            "sampling": self.sampling_defaults(), "rida": self.rida_info, "run": self.run_config})


def check_run(cfg: TokenizerRunConfig) -> None:
    """The `tokenizer.*` checks, and a RIDA student named whenever the semantic loss is on."""
    check_objective(cfg.tokenizer)
    if cfg.tokenizer.semantic_weight > 0 and cfg.rida is None:
        raise ConfigError(f"tokenizer.semantic_weight: {cfg.tokenizer.semantic_weight} needs the RIDA student "
                          "(--rida RIDA_EXPORT), or set tokenizer.semantic_weight=0")


def build_task(cfg: TokenizerRunConfig, dataset: StoreDataset, stats: dict) -> TokenizerTask:
    """Tokenizer (from the data's latent shape and statistics) + frozen student (when the semantic loss is on).

    Seed (`train.loop.seed_everything`) before calling: the tokenizer's initial weights follow the seed.
    """
    check_run(cfg)
    latent_shape = [int(v) for v in dataset[0]["z"].shape]
    tokenizer = build_tokenizer_for(cfg, latent_shape, stats)
    student, info = None, None
    if cfg.tokenizer.semantic_weight > 0:
        student = load_student(cfg.rida, latent_shape)
        info = {"path": str(cfg.rida), "preset": student.preset, "teacher": student.extra_config.get("teacher"),
                "objective": student.extra_config.get("objective")}
    return TokenizerTask(tokenizer, cfg.tokenizer, student, run_config=to_dict(cfg), rida_info=info)
