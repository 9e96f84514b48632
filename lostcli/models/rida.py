"""The RIDA student f_theta: a ViT over latent patches giving a global embedding and spatial tokens.

Reads top to bottom: the student (its transformer blocks and position embeddings are `blocks.py`'s), the
view <-> plane correspondence used by the spatial loss, persistence, and the preset table.

Input: normalised latents z [B, C, H, P*H], P square planes rolled out side by side (a Direct3D triplane
is [16, 32, 96] = [plane0 | plane1 | plane2]; the tiny VAE's is [8, 8, 24]). Each plane is cut into
p x p patches, giving h = w = H / p tokens per plane side and N = P h w tokens, ordered plane-major
(token t*h*w + i*w + j is plane t, row i, column j). A CLS token in front is read by the global head.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import check_preset
from ..errors import ConfigError
from ..persist import Pretrained
from .blocks import Block, Mlp, sincos_2d, xavier_init_linears

NORM_EPS = 1e-5  # LayerNorm eps of the student (torch's default; the shared blocks default to 1e-6)


# ----------------------------------------------------------------------------------------------------
# The student
# ----------------------------------------------------------------------------------------------------


@dataclass
class RidaConfig:
    latent_channels: int = 8  # C of the latent grid
    plane_res: int = 8  # H: side of one square plane (the latent is [C, H, planes*H])
    planes: int = 3  # square planes rolled out side by side (3 for a triplane, 1 for a plain 2-D grid)
    patch_size: int = 1  # p: latent cells per token side (1 for the tiny latent, 2 for Direct3D)
    width: int = 160  # transformer width
    depth: int = 4  # transformer blocks
    heads: int = 4  # attention heads
    mlp_ratio: float = 4.0  # MLP hidden width / width
    out_dim: int = 128  # D_out of the global embedding and of every spatial token
    head: str = "mlp"  # global projection head: "mlp" (Linear-GELU-Linear) or "linear" (regression baseline)
    dropout: float = 0.0  # dropout in the blocks (residual branches and MLP hidden), training only
    global_pool: str = "cls"  # global head input: "cls" (the CLS token) or "flatten" (all patch tokens, in order)

    def __post_init__(self) -> None:
        if self.plane_res % self.patch_size:
            raise ConfigError(f"patch_size: {self.patch_size} does not divide plane_res {self.plane_res}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout: must be in [0, 1), got {self.dropout}")
        if self.global_pool not in ("cls", "flatten"):
            raise ConfigError(f"global_pool: {self.global_pool!r} is not one of ['cls', 'flatten']")
        if self.head not in ("mlp", "linear"):
            raise ConfigError(f"head: {self.head!r} is not one of ['mlp', 'linear']")
        for name in ("latent_channels", "plane_res", "planes", "patch_size", "width", "depth", "heads", "out_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")

    @property
    def grid(self) -> int:
        """h = w: tokens per plane side."""
        return self.plane_res // self.patch_size

    @property
    def num_tokens(self) -> int:
        """N = planes * h * w spatial tokens (the CLS token not counted)."""
        return self.planes * self.grid**2


class RidaStudent(nn.Module, Pretrained):
    """f_theta: normalised latents z [B, C, H, P*H] -> global [B, D_out] and spatial tokens [B, N, D_out].

    The model holds the per-channel latent statistics it was trained with (`normalize` applies them);
    `embed` and `forward_features` take latents that are already normalised.
    """

    def __init__(self, config: RidaConfig, preset: str | None = None) -> None:
        super().__init__()
        self.config = cfg = config
        self.preset = preset  # recorded in config.json
        self.extra_config: dict[str, Any] = {}  # teacher, objective, run config (filled by the trainer/loader)
        self.register_buffer("latent_mean", torch.zeros(cfg.latent_channels))  # [C]
        self.register_buffer("latent_std", torch.ones(cfg.latent_channels))  # [C]
        self.x_embedder = nn.Conv2d(cfg.latent_channels, cfg.width, cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.register_buffer("pos_embed", sincos_2d(cfg.width, cfg.grid, cfg.grid), persistent=False)  # [h*w, D]
        self.plane_embed = nn.Parameter(torch.zeros(cfg.planes, cfg.width))  # which plane a token is on
        self.blocks = nn.ModuleList([Block(cfg.width, cfg.heads, cfg.mlp_ratio, norm_eps=NORM_EPS, dropout=cfg.dropout)
                                     for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(cfg.width, eps=NORM_EPS)
        pooled = cfg.width * (cfg.num_tokens if cfg.global_pool == "flatten" else 1)
        if cfg.head == "mlp":
            self.global_head: nn.Module = Mlp(pooled, cfg.width, cfg.out_dim)
        else:
            self.global_head = nn.Linear(pooled, cfg.out_dim)
        self.spatial_head = nn.Linear(cfg.width, cfg.out_dim)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier-uniform linears (ViT/DiT), patch embedding as a linear, small normal CLS/plane embeddings."""
        xavier_init_linears(self)
        w = self.x_embedder.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.plane_embed, std=0.02)

    # -- forward ------------------------------------------------------------------------------------

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents [B, C, H, W] -> per-channel standardised latents (the statistics it was trained with)."""
        return (z - self.latent_mean.view(1, -1, 1, 1)) / self.latent_std.view(1, -1, 1, 1)

    def _patchify(self, z: torch.Tensor) -> torch.Tensor:
        """[B, C, H, P*H] -> plane-major tokens [B, N, width] with positions added."""
        cfg = self.config
        B, C, H, W = z.shape
        if (C, H, W) != (cfg.latent_channels, cfg.plane_res, cfg.planes * cfg.plane_res):
            raise ConfigError(f"latent shape {[C, H, W]} does not fit the student "
                              f"({[cfg.latent_channels, cfg.plane_res, cfg.planes * cfg.plane_res]})")
        x = self.x_embedder(z)  # [B, D, h, P*w]
        h = cfg.grid
        x = x.view(B, -1, h, cfg.planes, h).permute(0, 3, 2, 4, 1)  # [B, P, h, w, D]
        x = x + self.pos_embed.view(1, 1, h, h, -1) + self.plane_embed.view(1, cfg.planes, 1, 1, -1)
        return x.reshape(B, cfg.num_tokens, -1)

    def forward_features(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised latents [B, C, H, P*H] -> (global [B, D_out] unnormalised, tokens [B, N, D_out])."""
        x = self._patchify(z)  # [B, N, D]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # [B, 1+N, D]
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        pooled = x[:, 1:].flatten(1) if self.config.global_pool == "flatten" else x[:, 0]
        return self.global_head(pooled), self.spatial_head(x[:, 1:])

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Same as `forward_features` (so hooks and DDP see a call)."""
        return self.forward_features(z)

    def embed(self, z: torch.Tensor) -> torch.Tensor:
        """f_theta(z): L2-normalised global embedding [B, D_out] of normalised latents [B, C, H, P*H]."""
        return F.normalize(self.forward_features(z)[0], dim=-1)

    def plane_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        """Spatial tokens [B, N, D] -> [B, P, h, w, D]: plane t, row i (plane v), column j (plane u)."""
        B, N, D = tokens.shape
        h = self.config.grid
        return tokens.view(B, self.config.planes, h, h, D)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- persistence --------------------------------------------------------------------------------

    def set_latent_stats(self, mean: list[float] | torch.Tensor, std: list[float] | torch.Tensor) -> None:
        """Store the per-channel latent statistics `normalize` applies (saved with the weights)."""
        mean, std = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
        C = self.config.latent_channels
        if mean.shape != (C,) or std.shape != (C,):
            raise ConfigError(f"latent stats have {list(mean.shape)}/{list(std.shape)} channels, the student {C}")
        self.latent_mean.copy_(mean)
        self.latent_std.copy_(std.clamp(min=1e-6))

    # `save_pretrained` / `from_pretrained` (an export folder or a run directory holding `export/`): `Pretrained`
    config_class = RidaConfig
    pretrained_what = "RIDA student"
    pretrained_keys = ("class", "preset", "config", "latent_stats")  # + latent_mean / latent_std in config.json


# ----------------------------------------------------------------------------------------------------
# Spatial correspondence: which plane each orthographic view faces, flipped as the camera sees it
# ----------------------------------------------------------------------------------------------------

# Conventions (lostcli/latent/direct3d.py, lostcli/data/render.py): plane cell (row i, col j) sits at plane
# coordinates u = -1 + (j + .5) 2/h, v = -1 + (i + .5) 2/h (grid_sample, align_corners=False), with
# plane0 (u=x, v=y), plane1 (u=x, v=z), plane2 (u=z, v=y). A render's pixel row 0 is the TOP (v_img = +1)
# and image up is +Y in every view, so every view flips rows. Image right: front +X (= plane0 u: keep
# columns), back -X (flip columns), right -Z (= -plane2 u: flip), left +Z (keep). Plane1 (XZ, seen from
# above) faces none of the four views. tests/test_rida.py checks this table against `pixel_to_view`.
VIEW_PLANES: dict[str, tuple[int, bool, bool]] = {  # view -> (plane, flip rows, flip columns)
    "front": (0, True, False),
    "right": (2, True, True),
    "back": (0, True, True),
    "left": (2, True, False),
}
VIEW_ORDER = ("front", "right", "back", "left")  # the teacher features' view order


def view_grids(planes: torch.Tensor, views: tuple[str, ...] = VIEW_ORDER) -> torch.Tensor:
    """Per-view image-aligned grids [B, V, h, w, D] from plane grids [B, 3, h, w, D] (row 0 = image top)."""
    if planes.shape[1] != 3:
        raise ConfigError(f"the view <-> plane correspondence needs a triplane (3 planes), got {planes.shape[1]}")
    out = []
    for name in views:
        t, flip_rows, flip_cols = VIEW_PLANES[name]
        g = planes[:, t]  # [B, h, w, D]
        dims = [d for d, f in ((1, flip_rows), (2, flip_cols)) if f]
        out.append(g.flip(dims) if dims else g)
    return torch.stack(out, dim=1)


def pool_grid(grid: torch.Tensor, g: int) -> torch.Tensor:
    """Adaptive average pooling of [B, V, h, w, D] to [B, V, g, g, D] (the teacher's patch pooling)."""
    B, V, h, w, D = grid.shape
    if (h, w) == (g, g):
        return grid
    x = grid.permute(0, 1, 4, 2, 3).reshape(B * V, D, h, w)
    return F.adaptive_avg_pool2d(x, g).view(B, V, D, g, g).permute(0, 1, 3, 4, 2)


# ----------------------------------------------------------------------------------------------------
# Presets
# ----------------------------------------------------------------------------------------------------

PRESETS: dict[str, RidaConfig] = {
    # tiny triplane [8, 8, 24], p=1: 192 tokens + CLS; 0.84M parameters; trains on a 2-core CPU in minutes
    "rida_tiny": RidaConfig(latent_channels=8, plane_res=8, patch_size=1, width=128, depth=4, heads=4,
                            out_dim=128),
    # Direct3D triplane [16, 32, 96], p=2: 768 tokens + CLS; ViT-B width, 12 blocks; 86.9M parameters
    "rida_paper": RidaConfig(latent_channels=16, plane_res=32, patch_size=2, width=768, depth=12, heads=12,
                             out_dim=768),
}


def build_student(preset: str, **overrides: Any) -> RidaStudent:
    """A fresh student from a preset name plus field overrides (e.g. the data's latent shape).

    Raises:
        ConfigError: unknown preset or field.
    """
    check_preset(preset, PRESETS, RidaConfig, overrides)
    return RidaStudent(replace(PRESETS[preset], **overrides), preset=preset)


def count_params(preset: str) -> int:
    """Parameters of a preset (for the table above and the docs)."""
    return RidaStudent(PRESETS[preset]).num_params()


if __name__ == "__main__":  # pragma: no cover - prints the size table
    for name in PRESETS:
        print(f"{name}: {count_params(name) / 1e6:.2f}M parameters, {PRESETS[name].num_tokens} tokens")
