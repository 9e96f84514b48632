"""Direct3D-compatible image-to-3D diffusion transformer (D3D-DiT): noisy triplane latent + image tokens -> epsilon.

Module names, parameter names and shapes follow the released `D3D_DiT` (DreamTechAI/Direct3D,
`direct3d/models/dit.py`), so the "dit" half of its `model.ckpt` loads with strict key matching. How it computes
(checked against the release):
  * patches: Conv2d p x p over the latent [C, H, W] -> row-major tokens, plus a fixed 2-D sine-cosine embedding
    whose FIRST half encodes the column and the second half the row (not in the state dict);
  * time: [cos | sin] features of t (256, frequencies 1 .. 1/10^4) plus `cond_proj` of the pooled CLIP embedding,
    then Linear-SiLU-Linear; PixArt's adaLN-single turns it into one [6, D] modulation shared by every block,
    each block adding its own `scale_shift_table`;
  * block: self-attention over [DINOv2 pixel tokens | modulated latent tokens] (gated, outputs of the latent
    tokens only), then cross-attention to the CLIP tokens with no norm and no gate, then the gated GELU MLP;
  * out: LayerNorm, shift/scale from the time embedding plus a learned [2, D] table, Linear, unpatchify.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..persist import Pretrained, load_strict

FREQ_DIM = 256  # sinusoidal timestep features (fixed in the release)
LN_EPS = 1e-6


@dataclass
class Direct3DDiTConfig:
    in_channels: int = 16  # latent channels C
    out_channels: int = 16  # predicted epsilon channels (= C)
    sample_size: list[int] = field(default_factory=lambda: [32, 96])  # latent H, W (three R x R planes side by side)
    patch_size: int = 2  # p: tokens = (H/p)(W/p)
    num_layers: int = 44  # transformer blocks
    num_attention_heads: int = 16  # width = heads * head_dim
    attention_head_dim: int = 72
    attention_bias: bool = True  # biases on q/k/v (the output projection always has one)
    semantic_channels: int = 1024  # width of the CLIP tokens and pooled embedding
    pixel_channels: int = 1024  # width of the DINOv2 tokens
    mlp_ratio: int = 4  # MLP hidden = mlp_ratio * width


PRESETS: dict[str, Direct3DDiTConfig] = {
    # The released D3D-DiT: 950,269,376 params, width 1152, 768 latent tokens (latent [16, 32, 96], p = 2).
    "direct3d": Direct3DDiTConfig(),
    # CPU preset on the tiny D3D-VAE latent [8, 8, 24]: 48 tokens, width 32, 2 blocks, 32-wide image tokens;
    # 64,192 params, ~2 ms per forward at batch 2 with 257 + 257 image tokens on one CPU thread.
    "tiny": Direct3DDiTConfig(
        in_channels=8,
        out_channels=8,
        sample_size=[8, 24],
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=16,
        semantic_channels=32,
        pixel_channels=32,
    ),
}


# ----------------------------------------------------------------------------------------------------
# Embeddings
# ----------------------------------------------------------------------------------------------------


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """Positions [M] -> [M, dim] = [sin | cos] at frequencies 10000^(-i / (dim/2)), computed in float64."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))  # [dim/2]
    angles = pos.reshape(-1, 1).double() * omega[None]  # [M, dim/2]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_2d_colrow(dim: int, h: int, w: int) -> torch.Tensor:
    """Row-major grid [h*w, dim]: the first half encodes the column index, the second half the row index.

    This is the order of the release (its helper meshgrids (w, h) and embeds grid[0], the columns, first);
    LoST's own `models.blocks.sincos_2d` puts the row first.
    """
    if dim % 4:
        raise ConfigError(f"width {dim} must be divisible by 4 for the 2-D sine-cosine position embedding")
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")  # [h, w] each
    return torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1)


def timestep_features(t: torch.Tensor, dim: int = FREQ_DIM, max_period: float = 10000.0) -> torch.Tensor:
    """Timesteps [B] (any real value, 0..999 here) -> [cos | sin] features [B, dim] (diffusers' flip_sin_to_cos)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]  # [B, half]
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class PatchEmbed(nn.Module):
    """Latent [B, C, H, W] -> tokens [B, (H/p)(W/p), D] plus the fixed sine-cosine position embedding."""

    def __init__(self, in_channels: int, dim: int, patch_size: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = grid  # (H/p, W/p)
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        # Not persistent: the release computes it at build time, its checkpoint has no such key.
        self.register_buffer("pos_embed", sincos_2d_colrow(dim, *grid)[None], persistent=False)

    def reset_pos_embed(self) -> None:
        """Recompute the buffer on the weights' device (after a build on the meta device)."""
        self.pos_embed = sincos_2d_colrow(self.proj.out_channels, *self.grid)[None].to(self.proj.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(x).flatten(2).transpose(1, 2)  # [B, D, h, w] -> [B, h*w, D]
        return tokens + self.pos_embed.to(tokens.dtype)


class TimestepEmbedding(nn.Module):
    """Time features [B, 256] plus cond_proj(pooled image embedding [B, Ds]) -> Linear-SiLU-Linear -> [B, D]."""

    def __init__(self, dim: int, cond_dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(FREQ_DIM, dim)
        self.cond_proj = nn.Linear(cond_dim, FREQ_DIM, bias=False)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, features: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        x = features + self.cond_proj(pooled)  # the image joins in the 256-d feature space
        return self.linear_2(F.silu(self.linear_1(x)))


class ConditionedTimestep(nn.Module):
    """Holds the timestep embedder (the release's `emb` level of nesting): t [B], pooled [B, Ds] -> [B, D]."""

    def __init__(self, dim: int, cond_dim: int) -> None:
        super().__init__()
        self.timestep_embedder = TimestepEmbedding(dim, cond_dim)

    def forward(self, t: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        features = timestep_features(t).to(pooled.dtype)  # [B, 256]
        return self.timestep_embedder(features, pooled)


class AdaLNSingle(nn.Module):
    """PixArt adaLN-single: t, pooled -> (modulation [B, 6D] shared by all blocks, time embedding [B, D])."""

    def __init__(self, dim: int, cond_dim: int) -> None:
        super().__init__()
        self.emb = ConditionedTimestep(dim, cond_dim)
        self.linear = nn.Linear(dim, 6 * dim)

    def forward(self, t: torch.Tensor, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.emb(t, pooled)  # [B, D]
        return self.linear(F.silu(emb)), emb


class Projection(nn.Module):
    """Image tokens [B, N, Din] -> Linear -> GELU(tanh) -> Linear -> [B, N, D] (PixArt's caption projection)."""

    def __init__(self, in_features: int, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_features, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.gelu(self.linear_1(x), approximate="tanh"))


# ----------------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head attention (SDPA): queries from x [B, N, D], keys/values from `context` [B, M, D]."""

    def __init__(self, dim: int, heads: int, bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=bias)
        self.to_k = nn.Linear(dim, dim, bias=bias)
        self.to_v = nn.Linear(dim, dim, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])  # key `to_out.0`, as diffusers names it

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q = self.to_q(x).view(B, N, self.heads, -1).transpose(1, 2)  # [B, h, N, d]
        k = self.to_k(context).view(B, context.shape[1], self.heads, -1).transpose(1, 2)  # [B, h, M, d]
        v = self.to_v(context).view(B, context.shape[1], self.heads, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, h, N, d]
        return self.to_out[0](out.transpose(1, 2).reshape(B, N, D))


class GELUProj(nn.Module):
    """Linear then tanh-GELU (diffusers' `GELU` activation module, key `proj`)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    """x [B, N, D] -> GELU MLP -> [B, N, D]; `net` = [GELUProj, (dropout slot), Linear] as released."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(GELUProj(dim, hidden), nn.Identity(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DiTBlock(nn.Module):
    """Gated self-attention over [pixel tokens | x], ungated cross-attention to semantic tokens, gated MLP."""

    def __init__(self, cfg: Direct3DDiTConfig) -> None:
        super().__init__()
        dim = cfg.num_attention_heads * cfg.attention_head_dim
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=LN_EPS)
        self.attn1 = Attention(dim, cfg.num_attention_heads, cfg.attention_bias)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=LN_EPS)
        self.attn2 = Attention(dim, cfg.num_attention_heads, cfg.attention_bias)
        self.ff = FeedForward(dim, cfg.mlp_ratio * dim)
        self.scale_shift_table = nn.Parameter(torch.zeros(6, dim))  # added to the shared modulation

    def forward(self, x: torch.Tensor, c_semantic: torch.Tensor, c_pixel: torch.Tensor,
                mod: torch.Tensor) -> torch.Tensor:
        """x [B, N, D], c_semantic [B, Ns, D], c_pixel [B, Np, D], mod [B, 6D] -> [B, N, D]."""
        B, N, D = x.shape
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.scale_shift_table[None] + mod.reshape(B, 6, D)
        ).chunk(6, dim=1)  # [B, 1, D] each
        h = self.norm1(x) * (1 + scale_msa) + shift_msa
        # Queries from the latent tokens only: the release attends with all of them and keeps the last N.
        x = x + gate_msa * self.attn1(h, torch.cat([c_pixel, h], dim=1))
        x = x + self.attn2(x, c_semantic)  # no norm and no gate before the cross-attention, as released
        h = self.norm2(x) * (1 + scale_mlp) + shift_mlp
        return x + gate_mlp * self.ff(h)


# ----------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------


class Direct3DDiT(nn.Module, Pretrained):
    """Epsilon prediction for noisy latents [B, C, H, W] given DINOv2 and CLIP tokens of one image each."""

    config_class = Direct3DDiTConfig
    pretrained_what = "Direct3D DiT"
    presets = PRESETS

    def __init__(self, config: Direct3DDiTConfig, preset: str | None = None) -> None:
        super().__init__()
        self.config, self.preset = config, preset
        self.extra_config: dict = {}
        cfg, p = config, config.patch_size
        dim = cfg.num_attention_heads * cfg.attention_head_dim
        H, W = cfg.sample_size
        if H % p or W % p:
            raise ConfigError(f"sample_size {cfg.sample_size} is not divisible by patch_size {p}")
        # Registration order fixes the state-dict order, which then equals the release's.
        self.scale_shift_table = nn.Parameter(torch.zeros(2, dim))
        self.pos_embed = PatchEmbed(cfg.in_channels, dim, p, (H // p, W // p))
        self.transformer_blocks = nn.ModuleList([DiTBlock(cfg) for _ in range(cfg.num_layers)])
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=LN_EPS)
        self.proj_out = nn.Linear(dim, p * p * cfg.out_channels)
        self.adaln_single = AdaLNSingle(dim, cfg.semantic_channels)
        self.semantic_projection = Projection(cfg.semantic_channels, dim)
        self.pixel_projection = Projection(cfg.pixel_channels, dim)
        self.initialize_weights()

    @classmethod
    def from_preset(cls, name: str) -> Direct3DDiT:
        if name not in PRESETS:
            raise ConfigError(f"Direct3D DiT: unknown preset '{name}' (known: {', '.join(PRESETS)})")
        return cls(copy.deepcopy(PRESETS[name]), preset=name)  # presets are shared: never hand out the original

    @classmethod
    def build_pretrained(cls, config: Direct3DDiTConfig, meta: dict) -> Direct3DDiT:
        """Uninitialised weights (the file overwrites them all): built on meta, then allocated."""
        return cls.build_empty(config, meta.get("preset"))

    @classmethod
    def build_empty(cls, config: Direct3DDiTConfig, preset: str | None = None,
                    device: torch.device | str = "cpu") -> Direct3DDiT:
        """A model with allocated but unset weights (no 950M-parameter init) and its position buffer computed."""
        with torch.device("meta"):
            model = cls(config, preset)
        model = model.to_empty(device=device)
        model.pos_embed.reset_pos_embed()
        return model

    @classmethod
    def from_state_dict(cls, config: Direct3DDiTConfig, state: dict[str, torch.Tensor], source: str,
                        preset: str | None = None) -> Direct3DDiT:
        """Build and load a state dict strictly, adopting its tensors (no copy); CheckpointError names bad keys."""
        with torch.device("meta"):
            model = cls(config, preset)
        load_strict(model, state, source, assign=True)
        model.pos_embed.reset_pos_embed()
        return model.eval()

    def initialize_weights(self) -> None:
        """Xavier linears, N(0, 0.02) timestep MLP, zero adaLN-single; every block starts as the identity
        (zero gates in its table, zero cross-attention output) and the model outputs 0 (zero proj_out)."""
        # (models.blocks.xavier_init_linears does the same, but latent/ sits below models/ and cannot import it)
        def init(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.apply(init)
        w = self.pos_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.pos_embed.proj.bias)
        emb = self.adaln_single.emb.timestep_embedder
        for layer in (emb.linear_1, emb.linear_2, emb.cond_proj):
            nn.init.normal_(layer.weight, std=0.02)
        nn.init.zeros_(self.adaln_single.linear.weight)
        nn.init.zeros_(self.adaln_single.linear.bias)
        dim = self.scale_shift_table.shape[1]
        for block in self.transformer_blocks:
            nn.init.normal_(block.scale_shift_table, std=dim**-0.5)  # the release's randn / sqrt(D)
            with torch.no_grad():
                block.scale_shift_table[[2, 5]] = 0.0  # gate_msa, gate_mlp
            nn.init.zeros_(block.attn2.to_out[0].weight)
            nn.init.zeros_(block.attn2.to_out[0].bias)
        nn.init.normal_(self.scale_shift_table, std=dim**-0.5)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c_pixel: torch.Tensor, c_semantic: torch.Tensor,
                c_pooled: torch.Tensor) -> torch.Tensor:
        """Predicted noise for noisy latents.

        Args:
            x: noisy latents [B, C, H, W] (the DiT's scaled space: VAE latents times `latents_scale`).
            t: timesteps [B] on the 0..999 training scale (floats allowed).
            c_pixel: DINOv2 last hidden state [B, Np, Dp] (CLS + patch tokens); zeros for the unconditional branch.
            c_semantic: CLIP vision last hidden state [B, Ns, Ds]; zeros for the unconditional branch.
            c_pooled: CLIP CLS token of that same hidden state [B, Ds] (= c_semantic[:, 0]).

        Returns:
            epsilon [B, C_out, H, W].
        """
        B, _, H, W = x.shape
        p = self.config.patch_size
        h, w = H // p, W // p
        if (h, w) != self.pos_embed.grid:
            raise ValueError(f"latent {list(x.shape[1:])} does not fit sample_size {self.config.sample_size}")
        x = self.pos_embed(x)  # [B, N, D]
        mod, t_emb = self.adaln_single(t.expand(B), c_pooled.to(x.dtype))  # [B, 6D], [B, D]
        c_semantic = self.semantic_projection(c_semantic.to(x.dtype))  # [B, Ns, D]
        c_pixel = self.pixel_projection(c_pixel.to(x.dtype))  # [B, Np, D]
        for block in self.transformer_blocks:
            x = block(x, c_semantic, c_pixel, mod)
        shift, scale = (self.scale_shift_table[None] + t_emb[:, None]).chunk(2, dim=1)  # [B, 1, D] each
        x = self.proj_out(self.norm_out(x) * (1 + scale) + shift)  # [B, N, p*p*C]
        C = self.config.out_channels
        x = x.reshape(B, h, w, p, p, C).permute(0, 5, 1, 3, 2, 4)  # [B, C, h, p, w, p]
        return x.reshape(B, C, H, W)

    def num_params(self) -> int:
        return sum(q.numel() for q in self.parameters())
