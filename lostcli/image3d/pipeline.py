"""Image -> 3D with Direct3D's networks: encode the image, sample a triplane latent with the DiT, decode a mesh.

`ImageTo3D.from_pretrained(spec)` reads any of:
  * the release: a folder holding Direct3D's `config.yaml` + `model.ckpt` ({"vae": ..., "dit": ...}, read with
    `weights_only=True`, both halves strictly), or its hub id `DreamTechAI/Direct3D`; the image encoders come
    from the hub ids its config names unless local folders are passed;
  * a folder written by `save_pretrained`:

        FOLDER/config.json             {"class": "ImageTo3D", "config": {...}}, written last
        FOLDER/vae/                    TriplaneVAE folder (its config holds latents_scale)
        FOLDER/dit/                    Direct3DDiT folder
        FOLDER/semantic_encoder/       CLIP vision tower (transformers folder)
        FOLDER/pixel_encoder/          DINOv2 tower (transformers folder)

Sampling follows the release pipeline: Euler-ancestral steps over the epsilon-predicting DiT, classifier-free
guidance against zeros in place of every condition (unconditional half first), initial noise N(0, I) NOT scaled
by the scheduler's `init_noise_sigma` (the release draws it so), one seeded generator for the initial noise and
every ancestral step. Latents come out in the DiT's space (what the LoST authors stored); the VAE, whose
`latents_scale` is the release's 2.45, divides by it before decoding.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import trimesh

from ..config import from_dict, to_dict
from ..errors import CheckpointError, ConfigError
from ..latent.direct3d import TriplaneVAE, TriplaneVAEConfig
from ..latent.direct3d_dit import Direct3DDiT, Direct3DDiTConfig
from ..persist import (CONFIG_NAME, WEIGHTS_NAME, atomic_dir, atomic_write_json, load_strict, read_model_folder,
                       read_state_dict_parts)
from .condition import (PIXEL_ENCODER, SEMANTIC_ENCODER, ImageCondition, ImageEncoders, ImageLike, load_encoders,
                        load_tower, preprocess, resize_batch)

RELEASE_REPO = "DreamTechAI/Direct3D"
RELEASE_FILES = ("config.yaml", "model.ckpt")
RELEASE_TARGETS = {"vae": "D3D_VAE", "dit": "D3D_DiT", "scheduler": "EulerAncestralDiscreteScheduler"}
PARTS = ("vae", "dit", "semantic_encoder", "pixel_encoder")  # sub-folders of a saved pipeline


@dataclass
class SchedulerConfig:
    num_train_timesteps: int = 1000  # diffusers EulerAncestralDiscreteScheduler arguments, as released
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    prediction_type: str = "epsilon"
    scale_init_noise: bool = False  # False: x_T ~ N(0, I) as the release draws it; True: times init_noise_sigma


@dataclass
class ImageTo3DConfig:
    steps: int = 50  # sampling steps
    guidance: float = 4.0  # classifier-free guidance scale; 1: the conditional prediction alone
    image_size: int = 224  # side both encoders see
    mc_resolution: int = 512  # marching-cubes cells per axis (the release queries 513^3 points)
    mc_threshold: float = -1.0  # iso-level on the occupancy logits (the LoST authors' value)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)


@dataclass
class PipelinePreset:
    vae: str  # TriplaneVAE preset
    dit: str  # Direct3DDiT preset
    latents_scale: float  # DiT latents = VAE latents * latents_scale
    semantic_encoder: str | None  # default encoder specs (None: must be given)
    pixel_encoder: str | None


PRESETS: dict[str, PipelinePreset] = {
    "direct3d": PipelinePreset("direct3d", "direct3d", 2.45, SEMANTIC_ENCODER, PIXEL_ENCODER),
    # CPU preset: tiny VAE (latent [8, 8, 24]) and DiT; encoders are 32-wide local towers the caller names.
    "tiny": PipelinePreset("tiny", "tiny", 2.45, None, None),
}


# ----------------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------------


def make_scheduler(cfg: SchedulerConfig) -> Any:
    """A fresh diffusers EulerAncestralDiscreteScheduler (it keeps a step index: one per sampling run)."""
    from diffusers import EulerAncestralDiscreteScheduler

    return EulerAncestralDiscreteScheduler(**{k: v for k, v in to_dict(cfg).items() if k != "scale_init_noise"})


@torch.no_grad()
def sample_latents(dit: Direct3DDiT, cond: ImageCondition, scheduler: SchedulerConfig, steps: int,
                   guidance: float, generator: torch.Generator) -> torch.Tensor:
    """Latents [B, C, H, W] (the DiT's scaled space) for B images' conditions.

    eps = eps_u + guidance * (eps_c - eps_u), eps_u from zeros in place of every condition; at guidance 1 only
    the conditional branch runs.
    """
    sched = make_scheduler(scheduler)
    device = cond.pixel.device
    sched.set_timesteps(steps, device=device)
    dtype = next(dit.parameters()).dtype
    B = cond.pixel.shape[0]
    shape = (B, dit.config.in_channels, *dit.config.sample_size)
    z = torch.randn(shape, generator=generator, device=device, dtype=dtype)  # no init_noise_sigma, as released
    if scheduler.scale_init_noise:  # a weak DiT cannot denoise the release's unscaled start (sigma_max ~ 157)
        z = z * sched.init_noise_sigma
    guided = guidance != 1.0
    both = ImageCondition.cat(cond.zeros_like(), cond) if guided else cond  # [uncond; cond]
    for t in sched.timesteps:
        x = sched.scale_model_input(torch.cat([z, z]) if guided else z, t)
        eps = dit(x, t.expand(x.shape[0]), both.pixel, both.semantic, both.pooled)
        if guided:
            eps_u, eps_c = eps.chunk(2)
            eps = eps_u + guidance * (eps_c - eps_u)
        z = sched.step(eps, t, z, generator=generator).prev_sample
    return z


# ----------------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------------


class ImageTo3D:
    """Direct3D image-to-3D: `__call__(images) -> latents`, `decode(latents) -> meshes`."""

    def __init__(self, vae: TriplaneVAE, dit: Direct3DDiT, encoders: ImageEncoders,
                 config: ImageTo3DConfig | None = None) -> None:
        if tuple(vae.latent_shape) != (dit.config.in_channels, *dit.config.sample_size):
            raise ConfigError(f"DiT latent {[dit.config.in_channels, *dit.config.sample_size]} does not fit the "
                              f"VAE latent {list(vae.latent_shape)}")
        if (encoders.semantic_channels, encoders.pixel_channels) != (dit.config.semantic_channels,
                                                                     dit.config.pixel_channels):
            raise ConfigError(f"encoder widths (semantic {encoders.semantic_channels}, pixel "
                              f"{encoders.pixel_channels}) do not fit the DiT's ({dit.config.semantic_channels}, "
                              f"{dit.config.pixel_channels})")
        self.vae, self.dit = vae.eval().requires_grad_(False), dit.eval().requires_grad_(False)  # inference only
        self.encoders = encoders
        self.config = config or ImageTo3DConfig()

    @property
    def device(self) -> torch.device:
        return next(self.dit.parameters()).device

    def to(self, device: torch.device | str) -> ImageTo3D:
        for module in (self.vae, self.dit, self.encoders):
            module.to(device)
        return self

    # -- building and loading -----------------------------------------------------------------------

    @classmethod
    def from_preset(cls, name: str, semantic_encoder: str | Path | None = None,
                    pixel_encoder: str | Path | None = None) -> ImageTo3D:
        """An untrained VAE and DiT of a preset, with encoders by spec (the preset's hub ids by default)."""
        if name not in PRESETS:
            raise ConfigError(f"image-to-3D preset '{name}': unknown (known: {', '.join(PRESETS)})")
        p = PRESETS[name]
        semantic, pixel = semantic_encoder or p.semantic_encoder, pixel_encoder or p.pixel_encoder
        if semantic is None or pixel is None:
            raise ConfigError(f"image-to-3D preset '{name}' needs semantic_encoder and pixel_encoder folders")
        vae = TriplaneVAE.from_preset(p.vae, latents_scale=p.latents_scale)
        return cls(vae, Direct3DDiT.from_preset(p.dit), load_encoders(semantic, pixel))

    @classmethod
    def from_pretrained(cls, spec: str | Path, semantic_encoder: str | Path | None = None,
                        pixel_encoder: str | Path | None = None, device: torch.device | str = "cpu") -> ImageTo3D:
        """A saved pipeline folder, a release folder (config.yaml + model.ckpt) or the release's hub id.

        Args:
            semantic_encoder, pixel_encoder: local folders replacing the encoders the release's config names
                (for offline machines); a saved pipeline folder brings its own.

        Raises:
            CheckpointError: one line naming the missing or unfitting file.
        """
        path = Path(spec)
        if not path.exists() and str(spec).count("/") == 1 and not str(spec).startswith((".", "/")):
            path = _download_release(str(spec))  # a hub id such as DreamTechAI/Direct3D
        if not path.is_dir():
            raise CheckpointError(f"{spec}: no such folder (nor a hub id such as {RELEASE_REPO})")
        if (path / CONFIG_NAME).is_file():
            pipe = cls._from_saved(path)
        elif (path / "config.yaml").is_file():
            pipe = cls._from_release(path, semantic_encoder, pixel_encoder)
        else:
            raise CheckpointError(f"{path / CONFIG_NAME}: not found (an image-to-3D folder holds config.json and "
                                  f"{', '.join(PARTS)}/, or Direct3D's config.yaml and model.ckpt)")
        return pipe.to(device)

    @classmethod
    def read_config(cls, spec: str | Path) -> ImageTo3DConfig:
        """The sampling defaults a pipeline carries, without loading weights: a saved folder's config.json, or
        the release's settings for a Direct3D folder or hub id."""
        path = Path(spec)
        if path.is_dir() and (path / CONFIG_NAME).is_file():
            return read_model_folder(path, cls.__name__, ImageTo3DConfig, "image-to-3D pipeline")[2]
        return ImageTo3DConfig()

    @classmethod
    def _from_saved(cls, folder: Path) -> ImageTo3D:
        for part, file in [(p, CONFIG_NAME) for p in PARTS] + [("vae", WEIGHTS_NAME), ("dit", WEIGHTS_NAME)]:
            if not (folder / part / file).is_file():
                raise CheckpointError(f"{folder / part / file}: not found (an image-to-3D folder holds "
                                      f"{', '.join(p + '/' for p in PARTS)} and config.json)")
        _, _, config = read_model_folder(folder, cls.__name__, ImageTo3DConfig, "image-to-3D pipeline")
        vae = TriplaneVAE.from_pretrained(folder / "vae")
        dit = Direct3DDiT.from_pretrained(folder / "dit").requires_grad_(False)
        encoders = ImageEncoders(load_tower("semantic", folder / "semantic_encoder"),
                                 load_tower("pixel", folder / "pixel_encoder"), config.image_size)
        return cls(vae, dit, encoders, config)

    @classmethod
    def _from_release(cls, folder: Path, semantic: str | Path | None, pixel: str | Path | None) -> ImageTo3D:
        vae_cfg, dit_cfg, specs, sched = read_release_config(folder / "config.yaml")
        ckpt = folder / "model.ckpt"
        if not ckpt.is_file():
            raise CheckpointError(f"{ckpt}: not found (a Direct3D folder holds config.yaml and model.ckpt)")
        parts = read_state_dict_parts(ckpt, ("vae", "dit"))
        for part in ("vae", "dit"):
            if part not in parts:
                raise CheckpointError(f"{ckpt}: no '{part}' state dict (Direct3D's model.ckpt holds 'vae' and 'dit')")
        vae = TriplaneVAE(vae_cfg, preset="direct3d")
        load_strict(vae, parts["vae"], f"{ckpt} [vae]")
        dit = Direct3DDiT.from_state_dict(dit_cfg, parts["dit"], f"{ckpt} [dit]", preset="direct3d")
        encoders = load_encoders(semantic or specs[0], pixel or specs[1])
        return cls(vae, dit, encoders, ImageTo3DConfig(scheduler=sched))

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the folder described in the module docstring (atomically: a complete folder or none)."""
        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            self.vae.save_pretrained(tmp / "vae")
            self.dit.save_pretrained(tmp / "dit")
            self.encoders.save_pretrained(tmp)
            atomic_write_json(tmp / CONFIG_NAME, {"class": type(self).__name__, "config": to_dict(self.config)})
        return directory

    # -- inference ----------------------------------------------------------------------------------

    def encode_images(self, images: ImageLike | Sequence[ImageLike]) -> ImageCondition:
        """Paths or PIL images -> the DiT's conditions (Direct3D's preprocessing, no background removal)."""
        items = [images] if isinstance(images, (str, Path)) or not isinstance(images, Sequence) else list(images)
        pixels = resize_batch([preprocess(im) for im in items], self.config.image_size)  # [B, 3, 224, 224]
        return self.encoders(pixels.to(self.device))

    @torch.no_grad()
    def __call__(self, images: ImageLike | Sequence[ImageLike], steps: int | None = None,
                 guidance: float | None = None, seed: int = 0) -> torch.Tensor:
        """Latents [B, C, H, W] (the DiT's space: VAE latents times latents_scale) for B images.

        Same images, steps, guidance and seed: the same latents (one generator seeds the initial noise and
        every ancestral step).
        """
        steps = self.config.steps if steps is None else steps
        guidance = self.config.guidance if guidance is None else guidance
        if steps < 1:
            raise ConfigError(f"steps: {steps} must be >= 1")
        cond = self.encode_images(images)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        return sample_latents(self.dit, cond, self.config.scheduler, steps, guidance, generator)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, resolution: int | None = None,
               threshold: float | None = None) -> list[trimesh.Trimesh | None]:
        """Latents [B, C, H, W] from `__call__` -> one mesh per latent, None where the field has no surface.

        The VAE divides by its latents_scale (and adds its shift) before decoding, as the release does.
        """
        resolution = self.config.mc_resolution if resolution is None else resolution
        threshold = self.config.mc_threshold if threshold is None else threshold
        return [self.vae.to_mesh(z, resolution=resolution, threshold=threshold) for z in latents]


# ----------------------------------------------------------------------------------------------------
# The release's files
# ----------------------------------------------------------------------------------------------------


def read_release_config(path: Path) -> tuple[TriplaneVAEConfig, Direct3DDiTConfig, tuple[str, str], SchedulerConfig]:
    """Direct3D's config.yaml -> (VAE config, DiT config, (semantic, pixel) encoder ids, scheduler config).

    Only the `params` are read (never the `target` import paths, which are checked by class name); an unknown
    parameter is an error naming it.
    """
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise CheckpointError(f"{path}: unreadable YAML ({str(e).splitlines()[0]})") from None
    sections = ("vae", "dit", "semantic_encoder", "pixel_encoder", "scheduler")
    for name in sections:
        section = data.get(name) if isinstance(data, dict) else None
        if not isinstance(section, dict) or not isinstance(section.get("params"), dict):
            raise CheckpointError(f"{path}: no '{name}.params' section (not Direct3D's config.yaml)")
    for name, cls_name in RELEASE_TARGETS.items():
        if not str(data[name].get("target", "")).endswith(cls_name):
            raise CheckpointError(f"{path}: {name}.target is {data[name].get('target')!r}, expected {cls_name}")

    def parse(name: str, config_type: type, base: Any) -> Any:
        try:
            return from_dict(config_type, {**to_dict(base), **data[name]["params"]})
        except ConfigError as e:
            raise CheckpointError(f"{path}: {name}.params.{e}") from None

    vae = parse("vae", TriplaneVAEConfig, copy.deepcopy(TriplaneVAE.presets["direct3d"]))
    dit = parse("dit", Direct3DDiTConfig, Direct3DDiT.presets["direct3d"])
    sched = parse("scheduler", SchedulerConfig, SchedulerConfig())
    specs = tuple(str(data[name]["params"].get("version", "")) for name in ("semantic_encoder", "pixel_encoder"))
    if not all(specs):
        raise CheckpointError(f"{path}: semantic_encoder/pixel_encoder need params.version (a hub id)")
    return vae, dit, specs, sched


def _download_release(repo: str) -> Path:
    """The folder holding config.yaml + model.ckpt of a hub repo (from the local cache when offline)."""
    import os

    from huggingface_hub import hf_hub_download

    try:
        paths = [Path(hf_hub_download(repo, name)) for name in RELEASE_FILES]
    except Exception as e:  # offline, missing, no access: one line
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        hint = " (HF_HUB_OFFLINE is set: download config.yaml and model.ckpt elsewhere and pass the folder)"
        hint = hint if offline else ""
        raise CheckpointError(f"{repo}: no such folder, and fetching {' + '.join(RELEASE_FILES)} from the hub failed "
                              f"({type(e).__name__}){hint}") from None
    return paths[0].parent
