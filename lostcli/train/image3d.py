"""The image-to-3D stage: a Direct3D DiT learns epsilon of noisy VAE latents given one render of the shape.

As Direct3D trains its DiT: DDPM noise with the linear beta schedule 1e-4 .. 0.02 over 1000 steps, epsilon
prediction, MSE; the image conditions (pixel tokens, semantic tokens and the pooled token) are replaced by zeros
for a `cond_drop` share of the batch, the unconditional input classifier-free guidance samples against.

Direct3D reads two frozen towers, CLIP ViT-L/14 (semantic) and DINOv2-L (pixel). The tiny recipe keeps that
split with what an offline machine has: the semantic tower is the built-in teacher's image tower (an OpenCLIP ViT
trained on the dataset's renders and captions, `model.semantic_tower`), converted to a transformers CLIP vision
tower and frozen; the pixel tower is a small DINOv2 trained with the DiT. With `model.semantic_tower: ""` both
towers are small ViTs trained from scratch with the DiT (a random frozen tower would hand the DiT fixed random
features). docs/data-engine.md has the measurements. The export is an `ImageTo3D` folder
(`lost dataset lift --model`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from ..config import OptimConfig, TrainConfig, to_dict
from ..data.latents import LATENTS, require_latents
from ..data.store import DatasetStore
from ..errors import ConfigError, DataError
from ..image3d.condition import (CLIP_MEAN, CLIP_STD, DINO_MEAN, DINO_STD, ImageCondition, ImageEncoders, normalise,
                                 preprocess, resize_batch)
from ..image3d.pipeline import ImageTo3D, ImageTo3DConfig, SchedulerConfig
from ..latent.direct3d import TriplaneVAE
from ..latent.direct3d_dit import Direct3DDiT
from .loop import Task


@dataclass
class TowerConfig:
    hidden_size: int = 32  # width of both image towers (= the tiny DiT's semantic_channels / pixel_channels)
    layers: int = 2  # transformer layers per tower
    heads: int = 2  # attention heads
    intermediate_size: int = 64  # MLP hidden width
    patch_size: int = 14  # as CLIP ViT-L/14 and DINOv2


@dataclass
class Image3DModelConfig:
    dit: str = "tiny"  # Direct3DDiT preset
    dit_overrides: dict[str, Any] = field(default_factory=dict)  # Direct3DDiTConfig fields on top of the preset
    vae: str = ""  # the TriplaneVAE folder whose latents the dataset's `latents` table holds (required)
    image_size: int = 112  # side both towers see (tokens = (image_size / patch_size)^2 + 1)
    towers: TowerConfig = field(default_factory=TowerConfig)
    # "": a semantic (CLIP vision) tower trained with the DiT; else an OpenCLIP teacher spec (a built-in teacher
    # folder, open_clip:...) whose image tower becomes the frozen semantic tower, as Direct3D freezes CLIP
    semantic_tower: str = ""


@dataclass
class Image3DLossConfig:
    cond_drop: float = 0.1  # share of the batch trained with zeros in place of every condition (CFG)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)  # DDPM betas, as Direct3D


@dataclass
class Image3DRunConfig:
    model: Image3DModelConfig = field(default_factory=Image3DModelConfig)
    loss: Image3DLossConfig = field(default_factory=Image3DLossConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-4, warmup_steps=50))
    train: TrainConfig = field(default_factory=TrainConfig)
    split: str = "train"  # dataset split to train on
    steps: int = 25  # sampling steps written into the export's config (lost dataset lift may override)
    guidance: float = 3.0  # guidance written into the export's config


# ----------------------------------------------------------------------------------------------------
# Building
# ----------------------------------------------------------------------------------------------------


def frozen_semantic_tower(spec: str, image_size: int) -> nn.Module:
    """A teacher's OpenCLIP image tower as a frozen transformers CLIP vision tower (`model.semantic_tower`)."""
    from ..image3d.condition import clip_vision_from_open_clip
    from ..models.teacher import OpenClipTeacher
    from ..teachers import load_teacher

    teacher = load_teacher(spec)
    if not isinstance(teacher, OpenClipTeacher):
        raise ConfigError(f"model.semantic_tower: {spec} is a {type(teacher).__name__}; the semantic tower must be "
                          "an OpenCLIP image tower (a built-in teacher folder or an open_clip: spec)")
    if teacher.image_size != image_size:
        raise ConfigError(f"model.image_size: {image_size} must equal the semantic tower's input side "
                          f"{teacher.image_size} ({spec})")
    return clip_vision_from_open_clip(teacher.model.visual).requires_grad_(False)


def build_towers(cfg: TowerConfig, image_size: int) -> tuple[nn.Module, nn.Module]:
    """Untrained (semantic, pixel) towers: a CLIP vision transformer and a DINOv2, both `cfg`-sized."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, Dinov2Config, Dinov2Model

    if image_size % cfg.patch_size:
        raise ConfigError(f"model.image_size: {image_size} is not a multiple of towers.patch_size {cfg.patch_size}")
    common = dict(hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.layers,
                  num_attention_heads=cfg.heads, image_size=image_size, patch_size=cfg.patch_size)
    semantic = CLIPVisionModel(CLIPVisionConfig(projection_dim=cfg.hidden_size, **common))
    pixel = Dinov2Model(Dinov2Config(**common))
    # Never used: the DiT reads CLIP's hidden state before its post-LayerNorm; DINOv2's mask token is for iBOT.
    for name, param in [*semantic.named_parameters(), *pixel.named_parameters()]:
        if "post_layernorm" in name or name.endswith("mask_token"):
            param.requires_grad_(False)
    return semantic, pixel


def build_dit(cfg: Image3DModelConfig, semantic_channels: int, pixel_channels: int) -> Direct3DDiT:
    """A preset DiT with field overrides, reading towers of the given widths; ConfigError names `model.dit` or
    `model.dit_overrides.<field>`."""
    if cfg.dit not in Direct3DDiT.presets:
        raise ConfigError(f"model.dit: {cfg.dit!r} is not a preset (known: {', '.join(Direct3DDiT.presets)})")
    config = copy.deepcopy(Direct3DDiT.presets[cfg.dit])
    for key, value in cfg.dit_overrides.items():
        if not hasattr(config, key):
            raise ConfigError(f"model.dit_overrides.{key}: unknown Direct3DDiTConfig field")
        setattr(config, key, value)
    widths = (config.semantic_channels, config.pixel_channels)
    config.semantic_channels, config.pixel_channels = semantic_channels, pixel_channels
    same = not cfg.dit_overrides and widths == (semantic_channels, pixel_channels)
    return Direct3DDiT(config, preset=cfg.dit if same else None)


def latent_affine(stats: dict) -> tuple[float, float]:
    """(scale, shift) taking the VAE latents to about unit variance: one scalar each, as Direct3D's 2.45."""
    mean, std = np.asarray(stats["mean"], dtype=np.float64), np.asarray(stats["std"], dtype=np.float64)
    shift = float(mean.mean())
    return float(1.0 / np.sqrt(np.mean(std ** 2 + (mean - shift) ** 2))), shift


def load_vae(spec: str, stats: dict) -> TriplaneVAE:
    """The frozen VAE of the latents table, its latents_scale / latents_shift set from the table's statistics."""
    if not spec:
        raise ConfigError("model.vae: name the TriplaneVAE folder the dataset's latents were made with")
    vae = TriplaneVAE.from_pretrained(spec)
    if not isinstance(vae, TriplaneVAE):
        raise ConfigError(f"model.vae: {spec} is a {type(vae).__name__}, not a TriplaneVAE")
    vae.config.latents_scale, vae.config.latents_shift = latent_affine(stats)
    return vae.eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------


class RenderLatentPairs(Dataset):
    """(one render, the shape's latent) for every shape of a split and every stored view: 4 N items.

    Item: {"image": [3, S, S] in [0, 1] (Direct3D's preprocessing, resized to S), "z": [C, H, W] VAE latents}.
    """

    def __init__(self, root: str | Path, image_size: int, split: str | None = "train") -> None:
        self.store = DatasetStore(Path(root))
        require_latents(self.store)
        self.ids = sorted(set(self.store.ids(split=split, table=LATENTS)) & set(self.store.ids(split=split)))
        if not self.ids:
            raise DataError(f"{root}: no shapes of split {split!r} with both renders and latents")
        first = self.store.records(table="items")[0]
        self.views = int(self.store.load(first["id"], keys=["renders"])["renders"].shape[0])
        self.image_size = image_size
        self._images: dict[int, torch.Tensor] = {}  # index -> float16 [3, S, S]: preprocessing is the slow part

    def __len__(self) -> int:
        return len(self.ids) * self.views

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        id, view = self.ids[index // self.views], index % self.views
        if index not in self._images:
            render = self.store.load(id, keys=["renders"])["renders"][view]  # uint8 [S0, S0, 3] on white
            self._images[index] = resize_batch([preprocess(Image.fromarray(render))], self.image_size)[0].half()
        image = self._images[index].float()
        z = self.store.load(id, keys=["z"], table=LATENTS)["z"]
        return {"image": image, "z": torch.from_numpy(np.asarray(z, dtype=np.float32))}


# ----------------------------------------------------------------------------------------------------
# The task
# ----------------------------------------------------------------------------------------------------


class Image3DTask(Task):
    """Epsilon MSE of the DiT on DDPM-noised latents, conditioned on trainable image towers (CFG dropout)."""

    def __init__(self, dit: Direct3DDiT, semantic: nn.Module, pixel: nn.Module, vae: TriplaneVAE,
                 cfg: Image3DRunConfig) -> None:
        from diffusers import DDPMScheduler

        super().__init__()
        self.dit, self.semantic, self.pixel, self.vae = dit, semantic, pixel, vae  # vae: frozen, for the export
        self.semantic_frozen = not any(p.requires_grad for p in semantic.parameters())  # a teacher's tower
        self.cfg = cfg
        s = cfg.loss.scheduler
        if s.prediction_type != "epsilon":
            raise ConfigError(f"loss.scheduler.prediction_type: {s.prediction_type!r} (only epsilon is trained)")
        self.noise = DDPMScheduler(num_train_timesteps=s.num_train_timesteps, beta_start=s.beta_start,
                                   beta_end=s.beta_end, beta_schedule=s.beta_schedule)

    def encode(self, images: torch.Tensor) -> ImageCondition:
        """images [B, 3, S, S] in [0, 1] -> the DiT's conditions (with gradients through trained towers)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.semantic_frozen):
            semantic = self.semantic(pixel_values=normalise(images, CLIP_MEAN, CLIP_STD)).last_hidden_state  # [B,N,D]
        pixel = self.pixel(pixel_values=normalise(images, DINO_MEAN, DINO_STD)).last_hidden_state  # [B, N, D]
        return ImageCondition(pixel=pixel, semantic=semantic, pooled=semantic[:, 0])

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        scale, shift = self.vae.config.latents_scale, self.vae.config.latents_shift
        z = (batch["z"] - shift) * scale  # [B, C, H, W], the DiT's space
        B = z.shape[0]
        cond = self.encode(batch["image"])
        keep = (torch.rand(B, device=z.device) >= self.cfg.loss.cond_drop).to(z.dtype)  # [B] 0: unconditional
        pixel, semantic = cond.pixel * keep[:, None, None], cond.semantic * keep[:, None, None]
        t = torch.randint(0, self.noise.config.num_train_timesteps, (B,), device=z.device)
        eps = torch.randn_like(z)
        x_t = self.noise.add_noise(z, eps, t)
        pred = self.dit(x_t, t.float(), pixel, semantic, semantic[:, 0])
        loss = F.mse_loss(pred, eps)
        return {"loss": loss, "uncond": 1 - keep.mean()}

    def pipeline(self) -> ImageTo3D:
        """The trained networks as an inference pipeline (copies: the task keeps training)."""
        encoders = ImageEncoders(copy.deepcopy(self.semantic), copy.deepcopy(self.pixel), self.cfg.model.image_size)
        config = ImageTo3DConfig(steps=self.cfg.steps, guidance=self.cfg.guidance,
                                 image_size=self.cfg.model.image_size, mc_resolution=64, mc_threshold=0.0,
                                 scheduler=self.cfg.loss.scheduler)
        return ImageTo3D(copy.deepcopy(self.vae), copy.deepcopy(self.dit), encoders, config)

    def export(self, out_dir: Path) -> None:
        self.pipeline().save_pretrained(out_dir)


def build_task(cfg: Image3DRunConfig, data: str | Path) -> Image3DTask:
    """The stage's task: a preset DiT reading the towers' widths, the towers (fresh, or a frozen teacher tower for
    the semantic one), and the VAE of `data`'s latents table (scaled by its stats)."""
    store = DatasetStore(Path(data))
    require_latents(store)
    vae = load_vae(cfg.model.vae, store.read_stats(LATENTS))
    # both towers are drawn even when a teacher's replaces the semantic one, so the pixel tower's initialisation
    # (and with it every run measured in docs/data-engine.md) does not depend on model.semantic_tower
    semantic, pixel = build_towers(cfg.model.towers, cfg.model.image_size)
    if cfg.model.semantic_tower:
        semantic = frozen_semantic_tower(cfg.model.semantic_tower, cfg.model.image_size)
    dit = build_dit(cfg.model, int(semantic.config.hidden_size), int(pixel.config.hidden_size))
    if tuple(vae.latent_shape) != (dit.config.in_channels, *dit.config.sample_size):
        raise ConfigError(f"model.vae: latent {list(vae.latent_shape)} does not fit the DiT preset {cfg.model.dit!r}")
    return Image3DTask(dit, semantic, pixel, vae, cfg)


def run_config(cfg: Image3DRunConfig) -> dict:
    return to_dict(cfg)
