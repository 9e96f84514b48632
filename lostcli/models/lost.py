"""The LoST tokenizer: a ViT encoder that writes a latent grid into R ordered 32-d tokens, and a DiT
decoder that reconstructs the grid from any prefix of them.

Reads top to bottom: the config, the encoder attention mask and nested-dropout choices, the encoder, the
decoder, the tokenizer that holds both (with persistence), and the preset size table.

Shapes: latents z [B, C, H, W], normalised per channel (`LoSTTokenizer.normalize`); p x p patches give
N = (H/p)(W/p) row-major patch tokens (a rolled-out triplane [C, R, 3R] is just a wide grid; its 2-D
position embedding tells the planes apart by column). R registers give R tokens of `token_dim` channels.

- Encoder (Semanticist / FlexTok "causal_last" layout): [patches ; registers] through pre-LN ViT blocks.
  Patches attend to patches only; register i attends to every patch and to registers 0..i. Registers ->
  LayerNorm -> Linear(token_dim) -> per-token standardisation (z-score over channels, eps `TOKEN_EPS`).
- Nested dropout: keep k per sample from {1, 2, 4, ..., R}; tokens at positions >= k are replaced by the
  decoder's per-position learned null tokens (token space, as Semanticist's `null_cond`).
- Decoder (DiT with in-context conditioning, as Semanticist): [noised patches ; Linear(cond) + learned
  register positions] (`cond_embed`: one Linear shared by the positions, or one per position), full attention, one adaLN-Zero driven by the timestep only, the final layer reads
  the patch outputs only. Classifier-free guidance: `drop_cond` replaces the WHOLE condition by the null
  tokens (the training task draws it with p = `cfg_drop_prob`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..config import check_preset, from_dict, to_dict
from ..errors import ConfigError
from ..persist import Pretrained
from .blocks import (LN_EPS, Block, DiTBlock, FinalLayer, PatchEmbed, TimestepEmbedder, sincos_2d, unpatchify,
                     xavier_init_linears)

TOKEN_EPS = 1e-6  # per-token standardisation: (x - mean) / sqrt(var + eps), biased var over channels
PREDICTIONS = ("velocity", "epsilon", "sample")
KEEP_MODES = ("pow2", "uniform")  # how nested dropout draws the kept prefix length
COND_EMBEDS = ("shared", "per_position", "shared_plus_position")  # how the decoder maps condition tokens to its width


# ----------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------


@dataclass
class LoSTConfig:
    latent_shape: list[int] = field(default_factory=lambda: [8, 8, 24])  # [C, H, W] of one latent grid
    patch_size: int = 1  # p: latent cells per patch side (2 for Direct3D / TRELLIS, 1 for tiny latents)
    enc_width: int = 128  # encoder ViT width
    enc_depth: int = 4  # encoder blocks
    enc_heads: int = 4  # encoder attention heads
    num_registers: int = 64  # R: register tokens = the most tokens a shape is written into
    token_dim: int = 32  # channels of one token (the paper's 32)
    dec_width: int = 192  # decoder DiT width
    dec_depth: int = 6  # decoder DiT blocks
    dec_heads: int = 6  # decoder attention heads
    mlp_ratio: float = 4.0  # MLP hidden width / width, encoder and decoder
    cfg_drop_prob: float = 0.1  # P(whole condition -> null tokens) per training sample (CFG)
    prediction: str = "velocity"  # decoder target: "velocity" (flow matching), "epsilon" or "sample" (x0)
    time_scale: float = 1000.0  # the [0, 1] time is multiplied by this (timesteps=True: used as they are)
    # std at init of the encoder's learned register inputs and of the decoder's register position embeddings.
    # Beside O(1) sin-cos patch positions, 0.02 (timm's) makes every register attend alike, so the R tokens start
    # as near-copies (cosine 0.98) and the decoder cannot tell them apart; 0.5 starts them apart (0.66)
    register_init_std: float = 0.02
    # The decoder's token -> width map. "shared": one Linear for every register position (Semanticist, FlexTok).
    # "per_position": a Linear of its own per position, so token j's channels land in their own directions and
    # even uniform attention over the registers passes every token on; a shared map plus softmax attention must
    # learn one sharp head per token to tell them apart, which a small decoder does not do in a short budget.
    # "shared_plus_position": the shared Linear plus a per-position one that starts at zero (the shared model at
    # init, learning from every position, with a map of its own per position on top)
    cond_embed: str = "shared"
    grad_checkpointing: bool = False  # recompute block activations in backward (memory for paper-size runs)

    def __post_init__(self) -> None:
        if len(self.latent_shape) != 3 or min(self.latent_shape) < 1:
            raise ConfigError(f"latent_shape: expected [C, H, W] of positive sizes, got {self.latent_shape}")
        C, H, W = self.latent_shape
        if self.patch_size < 1 or H % self.patch_size or W % self.patch_size:
            raise ConfigError(f"patch_size: {self.patch_size} does not divide the latent grid {H}x{W}")
        for name in ("enc_width", "enc_depth", "enc_heads", "num_registers", "token_dim",
                     "dec_width", "dec_depth", "dec_heads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        for width, heads in (("enc_width", "enc_heads"), ("dec_width", "dec_heads")):
            if getattr(self, width) % getattr(self, heads):
                raise ConfigError(f"{width}: {getattr(self, width)} is not divisible by {heads} {getattr(self, heads)}")
            if getattr(self, width) % 4:  # the 2-D sin-cos position embedding splits the width in four
                raise ConfigError(f"{width}: must be divisible by 4, got {getattr(self, width)}")
        if not 0.0 <= self.cfg_drop_prob <= 1.0:
            raise ConfigError(f"cfg_drop_prob: must be in [0, 1], got {self.cfg_drop_prob}")
        if self.prediction not in PREDICTIONS:
            raise ConfigError(f"prediction: {self.prediction!r} is not one of {list(PREDICTIONS)}")
        if self.time_scale <= 0:
            raise ConfigError(f"time_scale: must be > 0, got {self.time_scale}")
        if self.register_init_std <= 0:
            raise ConfigError(f"register_init_std: must be > 0, got {self.register_init_std}")
        if self.cond_embed not in COND_EMBEDS:
            raise ConfigError(f"cond_embed: {self.cond_embed!r} is not one of {list(COND_EMBEDS)}")

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w): patches per column and per row."""
        _, H, W = self.latent_shape
        return H // self.patch_size, W // self.patch_size

    @property
    def num_patches(self) -> int:
        """N = h * w patch tokens."""
        h, w = self.grid
        return h * w


# ----------------------------------------------------------------------------------------------------
# Encoder mask and nested-dropout choices
# ----------------------------------------------------------------------------------------------------


def register_mask(num_patches: int, num_registers: int) -> torch.Tensor:
    """Boolean attention mask [N+R, N+R] (row = query, True = may attend) for [patches ; registers].

    Patches see patches only; register i sees every patch and registers 0..i (causal).
    """
    N, R = num_patches, num_registers
    mask = torch.zeros(N + R, N + R, dtype=torch.bool)
    mask[:, :N] = True  # everyone sees the patches
    mask[N:, N:] = torch.ones(R, R, dtype=torch.bool).tril()  # registers: causal among themselves
    return mask


def keep_choices(num_registers: int) -> list[int]:
    """Prefix lengths nested dropout draws from: 1, 2, 4, ... below R, then R itself.

    For R a power of two this is {1, 2, 4, ..., R}; otherwise R is appended (R = 48: 1, 2, ..., 32, 48),
    so training always sees the full sequence too.
    """
    out, k = [], 1
    while k < num_registers:
        out.append(k)
        k *= 2
    return out + [num_registers]


def standardize_tokens(x: torch.Tensor, eps: float = TOKEN_EPS) -> torch.Tensor:
    """Z-score each token over its channels: [B, R, D] -> [B, R, D] with mean 0, std 1 per token."""
    return F.layer_norm(x, (x.shape[-1],), eps=eps)


# ----------------------------------------------------------------------------------------------------
# Encoder
# ----------------------------------------------------------------------------------------------------


class LoSTEncoder(nn.Module):
    """ViT over latent patches with R causal registers appended; only the registers leave, as tokens."""

    def __init__(self, config: LoSTConfig) -> None:
        super().__init__()
        self.config = cfg = config
        C = cfg.latent_shape[0]
        N, R, D = cfg.num_patches, cfg.num_registers, cfg.enc_width
        self.x_embedder = PatchEmbed(C, D, cfg.patch_size)
        self.register_buffer("pos_embed", sincos_2d(D, *cfg.grid), persistent=False)  # [N, D], frozen
        self.registers = nn.Parameter(torch.zeros(R, D))  # one learned input per register position
        self.register_buffer("attn_mask", register_mask(N, R), persistent=False)  # [N+R, N+R]
        self.blocks = nn.ModuleList([Block(D, cfg.enc_heads, cfg.mlp_ratio) for _ in range(cfg.enc_depth)])
        self.norm = nn.LayerNorm(D, eps=LN_EPS)
        self.to_tokens = nn.Linear(D, cfg.token_dim)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier-uniform linears (and the patch kernel), zero biases, registers ~ N(0, register_init_std)."""
        xavier_init_linears(self)
        self.x_embedder.init_as_linear()
        std = self.config.register_init_std
        nn.init.trunc_normal_(self.registers, std=std, a=-2 * std, b=2 * std)

    def forward_features(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents z [B, C, H, W] -> the whole sequence after the blocks [B, N+R, D]."""
        x = self.x_embedder(z) + self.pos_embed  # [B, N, D]
        regs = self.registers.to(x.dtype).expand(x.shape[0], -1, -1)  # [B, R, D]
        x = torch.cat([x, regs], dim=1)  # [B, N+R, D]: registers AFTER the patches
        for block in self.blocks:
            if self.config.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, self.attn_mask, use_reentrant=False)
            else:
                x = block(x, self.attn_mask)
        return x

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents z [B, C, H, W] -> standardised tokens [B, R, token_dim]."""
        x = self.forward_features(z)[:, self.config.num_patches:]  # [B, R, D]: only registers leave
        return standardize_tokens(self.to_tokens(self.norm(x)))  # [B, R, token_dim]


# ----------------------------------------------------------------------------------------------------
# Decoder
# ----------------------------------------------------------------------------------------------------


class PerPositionLinear(nn.Module):
    """A Linear of its own for each of R positions: [B, R, in] -> [B, R, out], weight [R, out, in], bias [R, out].

    Position r computes x[:, r] @ weight[r].T + bias[r], as nn.Linear would with weight[r] and bias[r].
    """

    def __init__(self, positions: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(positions, out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(positions, out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform per position (the bound of a Linear(in, out)), zero bias."""
        _, out_f, in_f = self.weight.shape
        bound = (6.0 / (in_f + out_f)) ** 0.5
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.weight.shape[0], self.weight.shape[2]):
            raise ValueError(f"input {list(x.shape)} does not fit [B, {self.weight.shape[0]}, {self.weight.shape[2]}]")
        return torch.einsum("bri,roi->bro", x, self.weight.to(x.dtype)) + self.bias.to(x.dtype)


class LoSTDecoder(nn.Module):
    """DiT over [noised latent patches ; condition tokens], timestep adaLN-Zero, patch outputs only."""

    def __init__(self, config: LoSTConfig) -> None:
        super().__init__()
        self.config = cfg = config
        C = cfg.latent_shape[0]
        R, D = cfg.num_registers, cfg.dec_width
        self.x_embedder = PatchEmbed(C, D, cfg.patch_size)
        self.register_buffer("pos_embed", sincos_2d(D, *cfg.grid), persistent=False)  # [N, D], frozen
        self.t_embedder = TimestepEmbedder(D)
        if cfg.cond_embed == "per_position":  # weight [R, D, token_dim]
            self.cond_embedder = PerPositionLinear(R, cfg.token_dim, D)
        else:  # weight [D, token_dim], shared by every position
            self.cond_embedder = nn.Linear(cfg.token_dim, D)
        # shared_plus_position: a per-position map added to the shared one, zero at init
        self.cond_embedder_pos = (PerPositionLinear(R, cfg.token_dim, D) if cfg.cond_embed == "shared_plus_position"
                                  else None)
        self.cond_pos_embed = nn.Parameter(torch.zeros(R, D))  # learned register position embeddings
        self.null_cond = nn.Parameter(torch.zeros(R, cfg.token_dim))  # per-position null tokens (token space)
        self.blocks = nn.ModuleList([DiTBlock(D, cfg.dec_heads, cfg.mlp_ratio) for _ in range(cfg.dec_depth)])
        self.final_layer = FinalLayer(D, cfg.patch_size, C)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT init: Xavier linears, N(0, 0.02) timestep MLP and learned embeddings, adaLN-Zero everywhere."""
        xavier_init_linears(self)
        self.x_embedder.init_as_linear()
        if isinstance(self.cond_embedder, PerPositionLinear):
            self.cond_embedder.reset_parameters()
        if self.cond_embedder_pos is not None:
            nn.init.zeros_(self.cond_embedder_pos.weight)
            nn.init.zeros_(self.cond_embedder_pos.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        nn.init.normal_(self.cond_pos_embed, std=self.config.register_init_std)
        nn.init.normal_(self.null_cond, std=0.02)
        for block in self.blocks:
            block.zero_init()  # adaLN-Zero: every block starts as the identity
        self.final_layer.zero_init()  # the decoder outputs 0 at init

    def time_input(self, t: torch.Tensor, batch_size: int, timesteps: bool = False) -> torch.Tensor:
        """t: [B] or scalar -> float [B] on the 0..time_scale scale the time embedding reads.

        timesteps False: t is the floating [0, 1] time (flow-matching sigma, or timestep / T), multiplied by
        `time_scale`. diffusers' FlowMatchEulerDiscreteScheduler timesteps are floats on the 0..1000 scale,
        so pass `timestep / 1000` (or the sigma), not the timestep. timesteps True: t already holds timesteps
        on the 0..time_scale scale (e.g. integers 0..999) and is used as it is.
        """
        t = t.expand(batch_size) if t.dim() == 0 else t
        if timesteps:
            return t.float()
        if not t.is_floating_point():
            raise ValueError(f"t: integer {t.dtype} times; pass the [0, 1] time, or timesteps=True for timesteps")
        return t * self.config.time_scale

    def condition(self, cond: torch.Tensor, keep: torch.Tensor, drop_cond: torch.Tensor) -> torch.Tensor:
        """The condition the decoder sees, [B, R, token_dim]: null tokens at positions >= keep, and everywhere
        for samples with drop_cond.

        Args:
            cond: tokens [B, K, token_dim], K <= R (a prefix is padded with null tokens).
            keep: [B] (or scalar) integer prefix lengths k; positions >= k become null tokens.
            drop_cond: [B] bool; True replaces the whole condition of that sample (CFG).
        """
        B, K, T = cond.shape
        R = self.config.num_registers
        if K > R or T != self.config.token_dim:
            raise ValueError(f"condition tokens {list(cond.shape)} do not fit [B, <= {R}, {self.config.token_dim}]")
        null = self.null_cond.to(cond.dtype)  # [R, T]
        if K < R:
            cond = torch.cat([cond, null[K:].expand(B, -1, -1)], dim=1)  # [B, R, T]
        keep = keep.expand(B) if keep.dim() == 0 else keep
        dropped = torch.arange(R, device=cond.device)[None] >= keep[:, None]  # [B, R]
        dropped = dropped | drop_cond.to(torch.bool)[:, None]
        return torch.where(dropped[..., None], null[None], cond)

    def null_condition(self, batch_size: int) -> torch.Tensor:
        """The unconditional input [B, R, token_dim]: every position its null token."""
        return self.null_cond[None].expand(batch_size, -1, -1)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, keep: torch.Tensor,
                drop_cond: torch.Tensor, timesteps: bool = False) -> torch.Tensor:
        """Predict the target of `config.prediction` for noised latents.

        Args:
            x_t: noised normalised latents [B, C, H, W].
            t: [B] or scalar; the floating [0, 1] time, or timesteps when `timesteps` (see `time_input`).
            cond: tokens [B, K, token_dim], K <= R.
            keep: [B] prefix lengths (tokens at positions >= keep are replaced by null tokens).
            drop_cond: [B] bool; True nulls the whole condition (CFG dropout / unconditional pass).

        Returns:
            [B, C, H, W] velocity (or epsilon / x0).
        """
        return self.forward_with_hidden(x_t, t, cond, keep, drop_cond, layer=0, timesteps=timesteps)[0]

    def forward_with_hidden(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, keep: torch.Tensor,
                            drop_cond: torch.Tensor, layer: int, timesteps: bool = False
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward`, also returning the patch tokens' hidden state after block `layer` (1-based; 0: the
        embedded input), [B, N, dec_width] row-major over the patch grid (what REPA-style alignment reads)."""
        cfg = self.config
        if not 0 <= layer <= len(self.blocks):
            raise ConfigError(f"layer: {layer} is not in 0..{len(self.blocks)} (decoder blocks)")
        B, C, H, W = x_t.shape
        h, w = cfg.grid
        N = cfg.num_patches
        c_tokens = self.condition(cond, keep, drop_cond)  # [B, R, T]
        x = self.x_embedder(x_t) + self.pos_embed  # [B, N, D]
        c_tokens = c_tokens.to(x.dtype)
        r = self.cond_embedder(c_tokens) + self.cond_pos_embed  # [B, R, D]
        if self.cond_embedder_pos is not None:
            r = r + self.cond_embedder_pos(c_tokens)
        x = torch.cat([x, r], dim=1)  # [B, N+R, D]: in-context condition after the patches
        c = self.t_embedder(self.time_input(t, B, timesteps))  # [B, D]: adaLN is driven by the timestep only
        hidden = x[:, :N]
        for i, block in enumerate(self.blocks, start=1):
            if cfg.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, c, use_reentrant=False)
            else:
                x = block(x, c)  # full attention
            if i == layer:
                hidden = x[:, :N]
        x = self.final_layer(x[:, :N], c)  # [B, N, p*p*C]: only patch outputs are read
        return unpatchify(x, C, h, w, cfg.patch_size), hidden  # [B, C, H, W], [B, N, D]


# ----------------------------------------------------------------------------------------------------
# The tokenizer
# ----------------------------------------------------------------------------------------------------


class LoSTTokenizer(nn.Module, Pretrained):
    """Encoder + decoder + per-channel latent statistics; saved as config.json + model.safetensors.

    The model API is `encode(z) -> tokens` and `decode(tokens, keep, x_t, t, drop)` (one decoder evaluation;
    `flow.sample_latents` runs the sampler on it). Both take latents that are already normalised
    (`normalize`); the training task draws keep (`sample_keep`), CFG drops (`sample_drop`), time and noise,
    and owns the loss.
    """

    def __init__(self, config: LoSTConfig, preset: str | None = None) -> None:
        super().__init__()
        self.config = cfg = config
        self.preset = preset  # recorded in config.json
        self.extra_config: dict[str, Any] = {}  # run config, data, etc. (filled by the trainer / loader)
        C = cfg.latent_shape[0]
        self.register_buffer("latent_mean", torch.zeros(C))  # [C] dataset statistics (saved)
        self.register_buffer("latent_std", torch.ones(C))  # [C]
        self.encoder = LoSTEncoder(cfg)
        self.decoder = LoSTDecoder(cfg)

    @property
    def num_registers(self) -> int:
        return self.config.num_registers

    @property
    def keep_choices(self) -> list[int]:
        """Prefix lengths nested dropout draws from (see `keep_choices`)."""
        return keep_choices(self.config.num_registers)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- latent statistics --------------------------------------------------------------------------

    def set_latent_stats(self, mean: list[float] | torch.Tensor, std: list[float] | torch.Tensor) -> None:
        """Store the per-channel statistics `normalize` applies (saved with the weights)."""
        mean, std = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
        C = self.config.latent_shape[0]
        if mean.shape != (C,) or std.shape != (C,):
            raise ConfigError(f"latent stats have {list(mean.shape)}/{list(std.shape)} channels, the tokenizer {C}")
        self.latent_mean.copy_(mean)
        self.latent_std.copy_(std.clamp(min=1e-6))

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents [B, C, H, W] -> per-channel standardised latents."""
        return (z - self.latent_mean.view(1, -1, 1, 1)) / self.latent_std.view(1, -1, 1, 1)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Inverse of `normalize` (decoder outputs -> the shape VAE's latent space)."""
        return z * self.latent_std.view(1, -1, 1, 1) + self.latent_mean.view(1, -1, 1, 1)

    # -- tokens -------------------------------------------------------------------------------------

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents z [B, C, H, W] -> ordered tokens [B, R, token_dim] (each z-scored)."""
        if tuple(z.shape[1:]) != tuple(self.config.latent_shape) or z.dim() != 4:
            raise ConfigError(f"latent shape {list(z.shape[1:])} does not fit the tokenizer "
                              f"({list(self.config.latent_shape)})")
        return self.encoder(z)

    def condition(self, tokens: torch.Tensor, keep: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's condition: tokens [B, K <= R, T] -> [B, R, T] with positions >= keep[b] (nested
        dropout) and every position of a sample with drop[b] (CFG; None: no sample) set to the null tokens."""
        return self.decoder.condition(tokens, keep, self._drop_flags(tokens, drop))

    def null_condition(self, batch_size: int) -> torch.Tensor:
        """The unconditional decoder input [B, R, token_dim] (all null tokens)."""
        return self.decoder.null_condition(batch_size)

    def sample_keep(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        nested: bool = True,
        device: torch.device | str | None = None,
        mode: str = "pow2",
    ) -> torch.Tensor:
        """Prefix lengths [B] (int64): uniform over `keep_choices` ("pow2", the paper's) or over 1..R ("uniform",
        FlexTok's other mode); all R when `nested` is False (the first `nest_after` epochs train every register
        while the causal mask stays on).
        """
        R = self.config.num_registers
        if not nested:
            return torch.full((batch_size,), R, dtype=torch.long, device=device)
        if mode not in KEEP_MODES:
            raise ConfigError(f"tokenizer.keep_sampling: {mode!r} is not one of {list(KEEP_MODES)}")
        where = generator.device if generator is not None else torch.device("cpu")
        choices = torch.tensor(self.keep_choices if mode == "pow2" else list(range(1, R + 1)), dtype=torch.long,
                               device=where)
        idx = torch.randint(len(choices), (batch_size,), generator=generator, device=where)
        return choices[idx].to(device or where)

    def sample_drop(
        self, batch_size: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """CFG dropout flags [B] bool, each True with probability `cfg_drop_prob`."""
        where = generator.device if generator is not None else torch.device("cpu")
        u = torch.rand(batch_size, generator=generator, device=where)
        return (u < self.config.cfg_drop_prob).to(device or where)

    # -- decoding -----------------------------------------------------------------------------------

    @staticmethod
    def _drop_flags(tokens: torch.Tensor, drop: torch.Tensor | None) -> torch.Tensor:
        """CFG drop flags [B] bool: `drop`, or all False when None (no sample's condition is dropped)."""
        return torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device) if drop is None else drop

    def decode(self, tokens: torch.Tensor, keep: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
               drop: torch.Tensor | None = None, timesteps: bool = False) -> torch.Tensor:
        """One decoder evaluation given the first `keep` tokens: the `config.prediction` target [B, C, H, W].

        Args:
            tokens: [B, K <= R, T] (from `encode`, or a prefix of them).
            keep: [B] (or one) prefix lengths; positions >= keep are read as null tokens.
            x_t: noised normalised latents [B, C, H, W].
            t: [B] or scalar floating [0, 1] time (timesteps=True: timesteps on the 0..time_scale scale).
            drop: [B] bool CFG flags (True: the sample's whole condition is null); None: no sample.

        A sampler (`flow.sample_latents`) calls this once per step (on a doubled batch with CFG).
        """
        return self.decoder(x_t, t, tokens, keep, self._drop_flags(tokens, drop), timesteps)

    def decode_with_hidden(self, tokens: torch.Tensor, keep: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                           drop: torch.Tensor | None, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`decode`, also returning the patch tokens' hidden state after decoder block `layer` (1-based; 0: the
        embedded input), [B, N, dec_width] (what REPA-style alignment reads)."""
        return self.decoder.forward_with_hidden(x_t, t, tokens, keep, self._drop_flags(tokens, drop), layer)

    # -- persistence --------------------------------------------------------------------------------

    # `save_pretrained` / `from_pretrained` (an export folder or a run directory holding `export/`): `Pretrained`
    config_class = LoSTConfig
    pretrained_what = "LoST tokenizer"
    pretrained_keys = ("class", "preset", "config", "latent_stats")  # + latent_mean / latent_std in config.json


# ----------------------------------------------------------------------------------------------------
# Presets (parameter counts from `python -m lostcli.models.lost`)
# ----------------------------------------------------------------------------------------------------

PRESETS: dict[str, LoSTConfig] = {
    # tiny triplane [8, 8, 24], p=2: 48 patches + 32 registers (32 x 32 = 1024 numbers for a 1536-number
    # latent). Sized for a CPU: 0.24 s per training step at batch 32 on 2 idle threads (without the semantic
    # loss). A 192 x 6 decoder (4.2M) took 3.4x longer per step and, at the same wall time, reconstructed
    # val latents worse (NMSE 0.48 after 500 steps vs 0.26 for this one after 1000).
    "lost_tiny": LoSTConfig(latent_shape=[8, 8, 24], patch_size=2, enc_width=128, enc_depth=4, enc_heads=4,
                            num_registers=32, dec_width=128, dec_depth=4, dec_heads=4),
    # the same latent with 64 registers and a wider decoder (57 GFLOP per forward at batch 32).
    # Encoder 0.81M, decoder 4.18M; 4.99M total.
    "lost_small": LoSTConfig(latent_shape=[8, 8, 24], patch_size=1, enc_width=128, enc_depth=4, enc_heads=4,
                             num_registers=64, dec_width=192, dec_depth=6, dec_heads=6),
    # Direct3D triplane [16, 32, 96], p=2: 768 patches + 512 registers (paper). Decoder DiT-L/2 (paper: depth
    # 24, width 1024, 16 heads); encoder ViT-B (our choice: the paper gives no size; Semanticist uses ViT-B).
    # Encoder 85.52M, decoder 457.47M; 543.00M total.
    "lost_paper": LoSTConfig(latent_shape=[16, 32, 96], patch_size=2, enc_width=768, enc_depth=12, enc_heads=12,
                             num_registers=512, dec_width=1024, dec_depth=24, dec_heads=16),
    # TRELLIS stage-1 latent [8, 16, 16, 16] as [8, 64, 64], p=2: 1024 patches + 512 registers; same sizes.
    # Encoder 85.50M, decoder 457.41M; 542.91M total.
    "lost_trellis": LoSTConfig(latent_shape=[8, 64, 64], patch_size=2, enc_width=768, enc_depth=12, enc_heads=12,
                               num_registers=512, dec_width=1024, dec_depth=24, dec_heads=16),
}


def build_tokenizer(preset: str, device: torch.device | str | None = None, **overrides: Any) -> LoSTTokenizer:
    """A fresh tokenizer from a preset name plus config field overrides (e.g. `latent_shape=[8, 8, 24]`).

    Raises:
        ConfigError: unknown preset or field, or an invalid resulting config.
    """
    check_preset(preset, PRESETS, LoSTConfig, overrides)
    cfg = from_dict(LoSTConfig, {**to_dict(PRESETS[preset]), **overrides})  # type checks + a fresh copy
    if device is None:
        return LoSTTokenizer(cfg, preset=preset)
    with torch.device(device):  # e.g. "meta": build without allocating
        return LoSTTokenizer(cfg, preset=preset)


def count_params(preset: str) -> dict[str, int]:
    """Parameters of a preset's encoder, decoder and total (built on the meta device, no memory)."""
    model = build_tokenizer(preset, device="meta")
    enc = sum(p.numel() for p in model.encoder.parameters())
    dec = sum(p.numel() for p in model.decoder.parameters())
    return {"encoder": enc, "decoder": dec, "total": enc + dec}


if __name__ == "__main__":  # pragma: no cover - prints the size table
    for name, cfg in PRESETS.items():
        n = count_params(name)
        print(f"{name}: {cfg.num_patches} patches + {cfg.num_registers} registers; encoder "
              f"{n['encoder'] / 1e6:.2f}M, decoder {n['decoder'] / 1e6:.2f}M, total {n['total'] / 1e6:.2f}M")
