"""Direct3D-compatible triplane VAE (D3D-VAE): point cloud -> rolled-out triplane latent -> occupancy.

Module names, parameter names and shapes follow the released `D3D_VAE` (DreamTechAI/Direct3D,
`direct3d/models/vae.py`), so its `vae.ckpt` loads with strict key matching
(`load_vae("vae.ckpt", "TriplaneVAE", "direct3d")`). Conventions (checked against the release):
  * points live in [-1, 1]^3; Fourier features 2^k (k < num_freqs, no pi), [x, sin, cos] layout;
  * 3R^2 learnable queries cross-attend to the points; token t*R^2 + h*R + w becomes cell (h, w) of
    plane t, and the planes are rolled out side by side: latent [C, R, 3R] = [plane0 | plane1 | plane2];
  * EG3D plane axes: plane0 (u=x, v=y), plane1 (u=x, v=z), plane2 (u=z, v=y), with (u, v) -> (W, H)
    of grid_sample (bilinear, zero padding, align_corners=False, box_warp 2);
  * the occupancy MLP reads the plane-major concatenation [f0 | f1 | f2] and returns logits.
Latents seen by LoST are z = (z_vae - latents_shift) * latents_scale; decoding inverts this exactly as
the release pipeline does (z_vae = z / scale + shift). Both default to the identity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .base import DiagonalGaussian, ShapeVAE, register_vae

# (u, v) coordinate indices of each plane: EG3D `generate_planes()` after its inverse projection.
PLANE_UV = ((0, 1), (0, 2), (2, 1))
BOX_WARP = 2.0  # the side of the cube mapped onto the planes' [-1, 1] range


@dataclass
class TriplaneVAEConfig:
    triplane_res: int = 32  # R: latent cells per plane side; latent is [latent_dim, R, 3R]
    latent_dim: int = 16  # C: latent channels
    triplane_dim: int = 32  # channels of each decoded feature plane
    num_freqs: int = 8  # Fourier frequencies 2^0 .. 2^(num_freqs-1) per coordinate
    num_attention_heads: int = 12  # encoder heads; width = heads * head_dim
    attention_head_dim: int = 64  # encoder head dim
    num_encoder_layers: int = 8  # self-attention blocks after the single cross-attention block
    num_geodecoder_layers: int = 5  # Linear layers of the occupancy MLP
    occ_hidden_dim: int = 64  # hidden width of the occupancy MLP (release: 64)
    block_out_channels: list[int] = field(default_factory=lambda: [128, 256, 512, 512])  # decoder widths, fine->coarse
    layers_per_block: int = 2  # the decoder's up blocks hold layers_per_block + 1 resnets
    norm_num_groups: int = 32  # GroupNorm groups in the decoder (release: 32)
    mid_block_add_attention: bool = True  # single-head self-attention in the decoder's mid block
    gradient_checkpointing: bool = False  # recompute encoder/decoder blocks in backward (training only)
    latents_scale: float = 1.0  # z = (z_vae - shift) * scale; decode uses z_vae = z / scale + shift
    latents_shift: float = 0.0


PRESETS: dict[str, TriplaneVAEConfig] = {
    # The released D3D-VAE: 119,275,265 params (encoder 66.2M, decoder 53.0M); latent [16, 32, 96].
    "direct3d": TriplaneVAEConfig(),
    # CPU preset, same classes: latent [8, 8, 24] (three 8x8 planes), decoded to 3 x 16 x 32 x 32;
    # ~0.85M parameters, ~0.5 s per training step (batch 16, 2048 points, 4096 queries) on 2 CPU threads.
    "tiny": TriplaneVAEConfig(
        triplane_res=8,
        latent_dim=8,
        triplane_dim=16,
        num_attention_heads=4,
        attention_head_dim=32,
        num_encoder_layers=2,
        num_geodecoder_layers=3,
        block_out_channels=[32, 32, 32],
        layers_per_block=1,
    ),
}


# ----------------------------------------------------------------------------------------------------
# Encoder: Fourier features + Perceiver-style point encoder
# ----------------------------------------------------------------------------------------------------


class FourierEmbedder(nn.Module):
    """xyz [..., 3] -> [xyz, sin(xyz * f), cos(xyz * f)] [..., 3 (2 F + 1)], f = 2^k, grouped by coordinate."""

    def __init__(self, num_freqs: int, input_dim: int = 3) -> None:
        super().__init__()
        # Not persistent: the release checkpoint has no such key.
        self.register_buffer("freq", 2.0 ** torch.arange(num_freqs, dtype=torch.float32), persistent=False)
        self.out_dim = input_dim * (2 * num_freqs + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = (x[..., None] * self.freq).flatten(-2)  # [..., 3 F], frequency fastest
        return torch.cat([x, angles.sin(), angles.cos()], dim=-1)


class Attention(nn.Module):
    """Multi-head attention (SDPA); keys/values from `context` when given. Bias-free q/k/v as released."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, inner)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        B, L, _ = x.shape
        q = self.to_q(x).view(B, L, self.heads, -1).transpose(1, 2)  # [B, h, L, d]
        k = self.to_k(context).view(B, context.shape[1], self.heads, -1).transpose(1, 2)  # [B, h, N, d]
        v = self.to_v(context).view(B, context.shape[1], self.heads, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, h, L, d]
        return self.to_out(out.transpose(1, 2).reshape(B, L, -1))


class TransformerBlock(nn.Module):
    """Pre-LN block: x + attn(norm1(x), norm1_c(c)), then x + mlp(norm2(x)); GELU MLP x4."""

    def __init__(self, heads: int, head_dim: int, cross_attention: bool = False) -> None:
        super().__init__()
        dim = heads * head_dim
        self.norm1 = nn.LayerNorm(dim)
        self.norm1_c = nn.LayerNorm(dim) if cross_attention else None
        self.attn = Attention(dim, heads, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if self.norm1_c is not None:
            x = x + self.attn(self.norm1(x), self.norm1_c(context))
        else:
            x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PointEncoder(nn.Module):
    """Point features [B, N, in] -> tokens [B, num_latents, width] (learned queries, 1 cross + L self blocks)."""

    def __init__(self, num_latents: int, in_channels: int, heads: int, head_dim: int, num_layers: int) -> None:
        super().__init__()
        width = heads * head_dim
        self.learnable_token = nn.Parameter(torch.randn(num_latents, width) * 0.01)
        self.proj_in = nn.Linear(in_channels, width)
        self.cross_attn = TransformerBlock(heads, head_dim, cross_attention=True)
        self.self_attn = nn.ModuleList([TransformerBlock(heads, head_dim) for _ in range(num_layers)])
        self.norm_out = nn.LayerNorm(width)
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ctx = self.proj_in(x)  # [B, N, D]
        tokens = self.learnable_token[None].expand(x.shape[0], -1, -1)  # [B, 3 R^2, D]
        ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        run: Callable = (lambda f, *a: checkpoint(f, *a, use_reentrant=False)) if ckpt else (lambda f, *a: f(*a))
        tokens = run(self.cross_attn, tokens, ctx)
        for block in self.self_attn:
            tokens = run(block, tokens)
        return self.norm_out(tokens)


# ----------------------------------------------------------------------------------------------------
# Decoder: diffusers UNet mid/up blocks over the rolled-out triplane, then an occupancy MLP
# ----------------------------------------------------------------------------------------------------


class TriplaneDecoder(nn.Module):
    """Rolled-out latent features [B, in, R, 3R] -> feature planes [B, out, R s, 3 R s], s = 2^(blocks-1)."""

    def __init__(self, cfg: TriplaneVAEConfig, in_channels: int) -> None:
        super().__init__()
        # Imported here: diffusers is heavy and only this class needs it.
        from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D, UpDecoderBlock2D

        chans = list(cfg.block_out_channels)
        groups = cfg.norm_num_groups
        self.conv_in = nn.Conv2d(in_channels, chans[-1], kernel_size=3, padding=1)
        # Registered before mid_block, as released (fixes the state_dict order, not the keys).
        self.up_blocks = nn.ModuleList()
        self.mid_block = UNetMidBlock2D(
            in_channels=chans[-1],
            temb_channels=None,
            resnet_eps=1e-6,
            resnet_act_fn="silu",
            resnet_groups=groups,
            attention_head_dim=chans[-1],  # one head over all channels
            output_scale_factor=1.0,
            add_attention=cfg.mid_block_add_attention,
        )
        rev = list(reversed(chans))
        prev = rev[0]
        for i, out in enumerate(rev):
            self.up_blocks.append(
                UpDecoderBlock2D(
                    in_channels=prev,
                    out_channels=out,
                    num_layers=cfg.layers_per_block + 1,
                    add_upsample=i < len(rev) - 1,  # nearest x2 + conv on all but the last block
                    resnet_eps=1e-6,
                    resnet_act_fn="silu",
                    resnet_groups=groups,
                    temb_channels=None,
                )
            )
            prev = out
        self.conv_norm_out = nn.GroupNorm(groups, chans[0], eps=1e-6)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(chans[0], cfg.triplane_dim, kernel_size=3, padding=1)
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        run: Callable = (lambda f, a: checkpoint(f, a, use_reentrant=False)) if ckpt else (lambda f, a: f(a))
        x = self.conv_in(x)  # [B, c_last, R, 3R]
        x = run(self.mid_block, x)
        for block in self.up_blocks:
            x = run(block, x)  # channels c_last -> c_0, spatial x2 per upsampling block
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


class OccDecoder(nn.Module):
    """Sampled plane features [B, 3, M, Cp] -> occupancy logits [B, M] (ReLU MLP, no final activation)."""

    def __init__(self, plane_channels: int, hidden_dim: int, num_layers: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(3 * plane_channels, hidden_dim), nn.ReLU()]
        for _ in range(num_layers - 2):
            layers += [nn.Linear(hidden_dim, hidden_dim), nn.ReLU()]
        layers.append(nn.Linear(hidden_dim, 1))
        self.net = nn.Sequential(*layers)  # keys net.0, net.2, ..., net.{2(L-1)}

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        B, P, M, C = feats.shape
        x = feats.permute(0, 2, 1, 3).reshape(B, M, P * C)  # plane-major [f0 | f1 | f2]
        return self.net(x)[..., 0]


def sample_planes(planes: torch.Tensor, xyz: torch.Tensor, box_warp: float = BOX_WARP) -> torch.Tensor:
    """Bilinear features of planes [B, 3, Cp, H, W] at xyz [B, M, 3] -> [B, 3, M, Cp] (zeros outside)."""
    B, P, C, H, W = planes.shape
    uv = torch.stack([xyz[..., list(ax)] for ax in PLANE_UV], dim=1) * (2.0 / box_warp)  # [B, 3, M, 2]
    grid = uv.reshape(B * P, 1, -1, 2).to(planes.dtype)  # grid x = u -> W, grid y = v -> H
    out = F.grid_sample(
        planes.reshape(B * P, C, H, W), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )  # [B*3, Cp, 1, M]
    return out.reshape(B, P, C, -1).transpose(2, 3)


# ----------------------------------------------------------------------------------------------------
# The VAE
# ----------------------------------------------------------------------------------------------------


@register_vae
class TriplaneVAE(ShapeVAE):
    """Direct3D's D3D-VAE: points+normals [B, N, 3] -> z [B, C, R, 3R] -> planes -> occupancy logits."""

    config_class = TriplaneVAEConfig
    presets = PRESETS

    def __init__(self, config: TriplaneVAEConfig, preset: str | None = None) -> None:
        super().__init__(config, preset)
        cfg = config
        width = cfg.num_attention_heads * cfg.attention_head_dim
        self.fourier_embedder = FourierEmbedder(cfg.num_freqs)
        self.encoder = PointEncoder(
            num_latents=3 * cfg.triplane_res**2,
            in_channels=self.fourier_embedder.out_dim + 3,  # + normals
            heads=cfg.num_attention_heads,
            head_dim=cfg.attention_head_dim,
            num_layers=cfg.num_encoder_layers,
        )
        self.pre_latent = nn.Conv2d(width, 2 * cfg.latent_dim, kernel_size=1)  # -> mean | logvar
        self.post_latent = nn.Conv2d(cfg.latent_dim, width, kernel_size=1)
        self.decoder = TriplaneDecoder(cfg, in_channels=width)
        self.occ_decoder = OccDecoder(cfg.triplane_dim, cfg.occ_hidden_dim, cfg.num_geodecoder_layers)
        self.encoder.gradient_checkpointing = cfg.gradient_checkpointing
        self.decoder.gradient_checkpointing = cfg.gradient_checkpointing

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        R = self.config.triplane_res
        return (self.config.latent_dim, R, 3 * R)

    # -- encode ---------------------------------------------------------------------------------------

    def posterior(self, points: torch.Tensor, normals: torch.Tensor) -> DiagonalGaussian:
        """Posterior over z [B, C, R, 3R] from surface points and unit normals [B, N, 3]."""
        R = self.config.triplane_res
        x = torch.cat([self.fourier_embedder(points), normals], dim=-1)  # [B, N, 3(2F+1) + 3]
        tokens = self.encoder(x)  # [B, 3 R^2, D], token t*R^2 + h*R + w
        B, _, D = tokens.shape
        grid = tokens.view(B, 3, R, R, D).permute(0, 4, 2, 1, 3)  # [B, D, R(h), 3(t), R(w)]
        grid = grid.reshape(B, D, R, 3 * R)  # rolled out: column t*R + w
        mean, logvar = self.pre_latent(grid).chunk(2, dim=1)  # [B, C, R, 3R] each
        post = DiagonalGaussian(mean, logvar)  # clamps logvar as the release does
        scale, shift = self.config.latents_scale, self.config.latents_shift
        if scale == 1.0 and shift == 0.0:
            return post
        return DiagonalGaussian((post.mean - shift) * scale, post.logvar + 2.0 * math.log(scale))

    # -- decode ---------------------------------------------------------------------------------------

    def decode_planes(self, z: torch.Tensor) -> torch.Tensor:
        """Latents z [B, C, R, 3R] -> feature planes [B, 3, Cp, H', W'] (H' = W' = R * 2^(blocks-1))."""
        z = z / self.config.latents_scale + self.config.latents_shift
        rolled = self.decoder(self.post_latent(z))  # [B, Cp, H', 3W']
        B, C, H, W3 = rolled.shape
        return rolled.view(B, C, H, 3, W3 // 3).permute(0, 3, 1, 2, 4)  # [B, 3, Cp, H', W']

    def query_planes(self, planes: torch.Tensor, xyz: torch.Tensor) -> torch.Tensor:
        """Occupancy logits [B, M] at xyz [B, M, 3] from decoded planes [B, 3, Cp, H', W']."""
        return self.occ_decoder(sample_planes(planes, xyz))

    def occupancy(self, z: torch.Tensor, xyz: torch.Tensor) -> torch.Tensor:
        """Occupancy logits [B, M] of z [B, C, R, 3R] at xyz [B, M, 3] in [-1, 1]^3."""
        return self.query_planes(self.decode_planes(z), xyz)

    def mesh_query(self, z: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        planes = self.decode_planes(z)  # decoded once, queried chunk by chunk
        return lambda xyz: self.query_planes(planes, xyz[None])[0]
