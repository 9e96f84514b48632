"""Transformer blocks shared by the LoST encoder/decoder and later models (GPT, diffusion heads).

Reads top to bottom: attention and MLP, the plain pre-LN ViT block, the adaLN-Zero pieces (modulate,
timestep embedder, DiT block, final layer), patch (un)embedding, and the fixed sine-cosine position
embeddings. Attention always goes through `F.scaled_dot_product_attention`, so the same code runs on a
CPU and picks the fused kernels on a GPU; masks are boolean with True meaning "may attend".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError

LN_EPS = 1e-6  # LayerNorm eps of every block (ViT / DiT use 1e-6)


# ----------------------------------------------------------------------------------------------------
# Attention and MLP
# ----------------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head self-attention via SDPA, with an optional boolean mask (True = may attend)."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"width {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, N, D], mask [N, N] or [B, 1, N, N] bool (row = query, column = key) -> [B, N, D]."""
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # [B, h, N, d]
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, h, N, d]
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    """Linear -> GELU -> (dropout) -> Linear (`approximate="tanh"` is DiT's GELU, "none" is ViT's)."""

    def __init__(self, dim: int, hidden: int, out: int | None = None, approximate: str = "none",
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate=approximate)
        self.drop = nn.Dropout(dropout)  # on the hidden activations, training only (a no-op at 0)
        self.fc2 = nn.Linear(hidden, out or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))


class Block(nn.Module):
    """Pre-LN ViT block: x + drop(attn(norm(x), mask)), then x + drop(mlp(norm(x))).

    `norm_eps` is the LayerNorm eps (ViT/DiT's 1e-6 by default; the RIDA student keeps torch's 1e-5) and
    `dropout` drops the residual branches and the MLP hidden activations in training (0: none).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, norm_eps: float = LN_EPS,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout=dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, N, D], mask [N, N] bool or None -> [B, N, D]."""
        x = x + self.drop(self.attn(self.norm1(x), mask))
        return x + self.drop(self.mlp(self.norm2(x)))


# ----------------------------------------------------------------------------------------------------
# adaLN-Zero conditioning (DiT)
# ----------------------------------------------------------------------------------------------------


def xavier_init_linears(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every nn.Linear inside `module` (ViT / DiT / MAR init)."""
    def init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    module.apply(init)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [B, N, D] * (1 + scale [B, D]) + shift [B, D], broadcast over the N tokens."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    """Scalar timesteps [B] -> sinusoidal features [B, freq_dim] -> MLP -> [B, dim]."""

    def __init__(self, dim: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        """[cos | sin] features [B, dim] of t [B] at geometric frequencies 1 .. 1/max_period."""
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = t.float()[:, None] * freqs[None]  # [B, half]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:  # odd widths get one zero column
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t [B] (any real scale; DiT uses 0..999) -> [B, dim]."""
        emb = self.timestep_embedding(t, self.freq_dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class DiTBlock(nn.Module):
    """DiT block: attention and MLP, each wrapped in adaLN-Zero (shift, scale, gate) from c."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=LN_EPS)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), approximate="tanh")
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, N, D], c [B, D] -> [B, N, D] (the identity while adaLN_modulation is zero)."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), mask)
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))

    def zero_init(self) -> None:
        """adaLN-Zero: zero the modulation output so every gate starts closed."""
        nn.init.zeros_(self.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.adaLN_modulation[-1].bias)


class FinalLayer(nn.Module):
    """adaLN (shift, scale) from c, then Linear to p*p*C_out values per token."""

    def __init__(self, dim: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=LN_EPS)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x [B, N, D], c [B, D] -> [B, N, p*p*C_out]."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))

    def zero_init(self) -> None:
        """Zero the modulation and the output projection (the model outputs 0 at init)."""
        for layer in (self.adaLN_modulation[-1], self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)


# ----------------------------------------------------------------------------------------------------
# Patches
# ----------------------------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches of [B, C, H, W] -> row-major tokens [B, (H/p)(W/p), D]."""

    def __init__(self, in_channels: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, D, h, w] -> [B, h*w, D]

    def init_as_linear(self) -> None:
        """Xavier-uniform on the flattened kernel, as for a Linear (DiT / MAE)."""
        w = self.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.proj.bias)


def unpatchify(x: torch.Tensor, channels: int, h: int, w: int, patch_size: int) -> torch.Tensor:
    """Row-major tokens [B, h*w, p*p*C] (per token: p rows x p cols x C) -> [B, C, h*p, w*p]."""
    B, p = x.shape[0], patch_size
    x = x.reshape(B, h, w, p, p, channels)
    x = x.permute(0, 5, 1, 3, 2, 4)  # [B, C, h, p, w, p]
    return x.reshape(B, channels, h * p, w * p)


# ----------------------------------------------------------------------------------------------------
# Fixed sine-cosine position embeddings
# ----------------------------------------------------------------------------------------------------


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """Positions [M] -> [M, dim] = [sin | cos] at frequencies 1 .. 1/10000 (dim even)."""
    if dim % 2:
        raise ConfigError(f"width {dim} must be even for a sine-cosine position embedding")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))  # [dim/2]
    out = pos.reshape(-1, 1).double() * omega[None]  # [M, dim/2]
    return torch.cat([out.sin(), out.cos()], dim=1).float()


def sincos_2d(dim: int, h: int, w: int) -> torch.Tensor:
    """Row-major grid [h*w, dim]: the first half encodes the row, the second half the column."""
    if dim % 4:
        raise ConfigError(f"width {dim} must be divisible by 4 for the 2-D sine-cosine position embedding")
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.cat([sincos_1d(dim // 2, rows), sincos_1d(dim // 2, cols)], dim=1)  # [h*w, dim]


@torch.no_grad()
def map_views(module: nn.Module, images: torch.Tensor, fn: Callable[[torch.Tensor], Any],
              batch_size: int) -> tuple[list[Any], int, int]:
    """Run `fn` over every view of uint8 renders [N, V, H, W, 3], `batch_size` images at a time, with `module`
    in eval mode (its training flag is restored afterwards). Returns (outputs per chunk, N, V)."""
    if images.dtype != torch.uint8 or images.dim() != 5 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 views [N, V, H, W, 3], got {images.dtype} {tuple(images.shape)}")
    N, V = images.shape[:2]
    flat = images.reshape(N * V, *images.shape[2:])
    was_training = module.training
    module.eval()
    try:
        outs = [fn(flat[i:i + batch_size]) for i in range(0, N * V, batch_size)]
    finally:
        module.train(was_training)
    return outs, N, V
