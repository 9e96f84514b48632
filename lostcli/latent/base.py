"""The interface every shape VAE offers LoST, its Gaussian posterior, and the save/load registry.

A shape VAE maps a surface point cloud (points + normals in [-1, 1]^3) to a latent grid z [C, H, W]
(the layout LoST patchifies), and z back to an occupancy field queried at arbitrary points. Each
concrete VAE (`direct3d.TriplaneVAE`, `trellis.SparseStructureVAE`) registers itself with
`@register_vae` so `load_vae` can rebuild it from a saved folder's `config.json`.
"""

from __future__ import annotations

import copy
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
import torch.nn as nn
import trimesh

from ..config import from_dict, to_dict
from ..errors import CheckpointError, ConfigError
from ..persist import CONFIG_NAME, WEIGHTS_NAME, Pretrained, load_strict, read_state_dict
from .extract import extract_mesh


# ----------------------------------------------------------------------------------------------------
# Posterior
# ----------------------------------------------------------------------------------------------------


@dataclass
class DiagonalGaussian:
    """A diagonal Gaussian over latents; `mean`, `logvar` [B, ...] (logvar clamped to [-30, 20])."""

    mean: torch.Tensor
    logvar: torch.Tensor

    def __post_init__(self) -> None:
        # Same clamp as the Direct3D / LDM posterior: keeps exp(logvar) finite in fp16/bf16 too.
        self.logvar = self.logvar.clamp(-30.0, 20.0)

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised draw mean + std * eps, [B, ...] (differentiable in mean and logvar)."""
        eps = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) averaged over all non-batch elements, [B] (the Direct3D reduction)."""
        per_elem = 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar)
        return per_elem.flatten(1).mean(dim=1)


# ----------------------------------------------------------------------------------------------------
# The interface
# ----------------------------------------------------------------------------------------------------


class ShapeVAE(nn.Module, Pretrained):
    """Base of every shape VAE: point cloud -> latent grid [C, H, W] -> occupancy logits -> mesh.

    Subclasses set `config_class` and `presets`, build themselves from one config dataclass, and
    implement `latent_shape`, `posterior` and `occupancy`. Override `mesh_query` when part of the
    decode can be shared across query chunks (e.g. decoding a triplane once).
    """

    config_class: ClassVar[type]  # the model config dataclass
    presets: ClassVar[dict[str, Any]] = {}  # preset name -> config instance

    def __init__(self, config: Any, preset: str | None = None) -> None:
        super().__init__()
        self.config = config
        self.preset = preset  # recorded in config.json; None for a custom config
        self.extra_config: dict[str, Any] = {}  # user data saved next to the config (e.g. latent stats)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "ShapeVAE":
        """Build a preset, optionally replacing config fields (e.g. `latent_dim=8`)."""
        if name not in cls.presets:
            raise ConfigError(f"{cls.__name__}: unknown preset '{name}' (known: {', '.join(cls.presets)})")
        cfg = copy.deepcopy(cls.presets[name])  # presets are shared: never hand out the original
        if overrides:
            cfg = from_dict(cls.config_class, {**to_dict(cfg), **overrides})
        return cls(cfg, preset=name)

    # -- what LoST sees -------------------------------------------------------------------------------

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one latent as LoST patchifies it."""
        raise NotImplementedError

    def posterior(self, points: torch.Tensor, normals: torch.Tensor) -> DiagonalGaussian:
        """Encoder posterior for surface samples points, normals [B, N, 3] -> Gaussian over [B, C, H, W]."""
        raise NotImplementedError

    def occupancy(self, z: torch.Tensor, xyz: torch.Tensor) -> torch.Tensor:
        """Occupancy logits [B, M] of latents z [B, C, H, W] at points xyz [B, M, 3] in [-1, 1]^3."""
        raise NotImplementedError

    def encode(
        self,
        points: torch.Tensor,
        normals: torch.Tensor,
        sample: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Latents z [B, C, H, W]: the posterior mean, or a draw from it when `sample`."""
        post = self.posterior(points, normals)
        return post.sample(generator) if sample else post.mode()

    def mesh_query(self, z: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """For one latent z [1, C, H, W], a function xyz [M, 3] -> logits [M] (used under no_grad)."""
        return lambda xyz: self.occupancy(z, xyz[None])[0]

    @torch.no_grad()
    def to_mesh(
        self,
        z: torch.Tensor,
        resolution: int = 128,
        threshold: float = 0.0,
        chunk: int = 65536,
    ) -> trimesh.Trimesh | None:
        """Marching-cubes mesh of one latent z [C, H, W] or [1, C, H, W] over [-1, 1]^3.

        Returns None when the occupancy never crosses `threshold` (no surface).
        """
        if z.dim() == 3:
            z = z[None]
        if z.dim() != 4 or z.shape[0] != 1 or tuple(z.shape[1:]) != tuple(self.latent_shape):
            raise ValueError(f"to_mesh expects one latent {list(self.latent_shape)}, got {list(z.shape)}")
        p = next(self.parameters())
        z = z.to(device=p.device, dtype=p.dtype)
        query = self.mesh_query(z)
        return extract_mesh(query, resolution, threshold=threshold, chunk=chunk, bound=1.0, device=p.device)

    # -- persistence ----------------------------------------------------------------------------------

    # `save_pretrained` (`Pretrained`): config.json {"class": the registered name, "preset", "config", extras}
    pretrained_what = "shape VAE"

    @classmethod
    def pretrained_class(cls) -> str:
        return _registered_name(cls)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: torch.device | str = "cpu") -> ShapeVAE:
        """`load_vae(path)`: a saved VAE folder of any registered class (or of `cls` when called on a subclass)."""
        vae = load_vae(path, device=device)
        if not isinstance(vae, cls):
            raise CheckpointError(f"{path}: holds a {type(vae).__name__}, not a {cls.__name__}")
        return vae

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def encode_points_for(vae: ShapeVAE) -> int:
    """How many surface points the VAE was trained with (its run config), else a safe default."""
    run = vae.extra_config.get("run", {}) if isinstance(vae.extra_config, dict) else {}
    return int(run.get("loss", {}).get("points", 2048))


# ----------------------------------------------------------------------------------------------------
# Registry and loading
# ----------------------------------------------------------------------------------------------------

VAE_REGISTRY: dict[str, type[ShapeVAE]] = {}
# Built-in classes, imported on first use so `base` does not pull in diffusers.
_BUILTIN_MODULES = {
    "TriplaneVAE": "lostcli.latent.direct3d",
    "SparseStructureVAE": "lostcli.latent.trellis",
}


def register_vae(cls: type[ShapeVAE]) -> type[ShapeVAE]:
    """Class decorator: make `cls` loadable by `load_vae` under its class name."""
    VAE_REGISTRY[cls.__name__] = cls
    return cls


def _registered_name(cls: type[ShapeVAE]) -> str:
    if VAE_REGISTRY.get(cls.__name__) is not cls:
        raise ConfigError(f"{cls.__name__} is not registered with @register_vae")
    return cls.__name__


def get_vae_class(name: str) -> type[ShapeVAE]:
    """The registered class called `name` (importing the built-in module that defines it if needed)."""
    if name not in VAE_REGISTRY and name in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[name])
    if name not in VAE_REGISTRY:
        known = sorted(set(VAE_REGISTRY) | set(_BUILTIN_MODULES))
        raise ConfigError(f"unknown shape VAE class '{name}' (known: {', '.join(known)})")
    return VAE_REGISTRY[name]


def read_vae_config(directory: str | Path) -> dict[str, Any]:
    """The parsed `config.json` of a saved VAE folder."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: not found (a saved VAE folder holds {CONFIG_NAME} + {WEIGHTS_NAME})")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable JSON ({e})") from None
    if not isinstance(meta, dict) or "class" not in meta or "config" not in meta:
        raise CheckpointError(f"{path}: expected an object with 'class' and 'config' keys")
    return meta


def build_vae(class_name: str, config: dict[str, Any] | None = None, preset: str | None = None) -> ShapeVAE:
    """Build an untrained VAE from a config dict, a preset name, or a preset plus field overrides."""
    cls = get_vae_class(class_name)
    if preset is not None:
        return cls.from_preset(preset, **(config or {}))
    return cls(from_dict(cls.config_class, config or {}))


def load_vae(
    path: str | Path,
    class_name: str | None = None,
    preset: str | None = None,
    device: torch.device | str | None = None,
) -> ShapeVAE:
    """Load a VAE saved by `save_pretrained`, or a bare weights file with a named class and preset.

    Args:
        path: a folder (config.json + model.safetensors), its config.json, or a weights file
            (.safetensors/.ckpt/.pt/.pth/.bin, e.g. Direct3D's `vae.ckpt`). A weights file uses the
            config.json beside it when there is one, else `class_name` + `preset`.
        class_name: registered class for a bare weights file (e.g. "TriplaneVAE").
        preset: preset for a bare weights file (e.g. "direct3d").
        device: where to put the model (default CPU). The model is returned in eval mode.

    Raises:
        CheckpointError: missing/unreadable files, or weights that do not fit the config exactly.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: not found")
    if path.is_dir() or path.name == CONFIG_NAME:
        folder = path if path.is_dir() else path.parent
        weights = folder / WEIGHTS_NAME
        meta = read_vae_config(folder)
    else:
        weights, folder = path, path.parent
        meta = read_vae_config(folder) if (folder / CONFIG_NAME).is_file() and class_name is None else None
    if meta is not None:
        if not isinstance(meta["config"], dict):
            raise CheckpointError(f"{folder / CONFIG_NAME}: 'config' must be an object")
        try:
            vae = build_vae(meta["class"], meta["config"])
        except ConfigError as e:
            raise CheckpointError(f"{folder / CONFIG_NAME}: {e}") from None
        vae.preset = meta.get("preset")
        vae.extra_config = {k: v for k, v in meta.items() if k not in ShapeVAE.pretrained_keys}
    else:
        if class_name is None or preset is None:
            raise CheckpointError(
                f"{path}: a bare weights file needs class_name and preset (no {CONFIG_NAME} beside it)"
            )
        vae = build_vae(class_name, preset=preset)
    state = read_state_dict(weights)
    load_strict(vae, state, str(weights))
    return vae.to(device or "cpu").eval()

