"""LoST-GPT: a LlamaGen-style decoder that writes a shape's continuous tokens one by one from a text
condition, each token drawn by a per-position MLP diffusion head (`models/diffloss.py`).

Reads top to bottom: the config, the blocks (RMSNorm from torch, SwiGLU, 1-D RoPE attention with a KV
cache), the model (training loss, generation, persistence), the guidance schedule, and the size table.

Sequence (as Semanticist's eps-LlamaGen, with LlamaGen's 1-D RoPE): position 0 is the condition prefix
Linear(cond_dim -> width)(text embedding), or the learned null condition when dropped (CFG); positions
1..L-1 are RMSNorm(Linear(x_0)) ... RMSNorm(Linear(x_{L-2})). Causal attention; the hidden state at
position i, after the final RMSNorm plus a learned per-position embedding, conditions the head for token
i. RoPE angles are the sequence positions, so the prefix (position 0) is not rotated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import check_preset, from_dict, to_dict
from ..errors import ConfigError
from ..persist import Pretrained
from .diffloss import DiffLoss, DiffLossConfig

CONFIG_NAME = "config.json"
GUIDANCE_SCHEDULES = ("constant", "linear")


# ----------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------


@dataclass
class GPTConfig:
    token_dim: int = 32  # tokenizer token channels
    num_tokens: int = 32  # L: sequence length generated (<= the tokenizer's R)
    cond_dim: int = 128  # text-embedding width (the text encoder's output)
    width: int = 256  # transformer width
    depth: int = 6  # transformer blocks
    heads: int = 4  # attention heads (head width must be even for RoPE)
    ffn_multiple_of: int = 64  # SwiGLU hidden = 8/3 * width rounded up to a multiple of this (LlamaGen)
    norm_eps: float = 1e-5  # RMSNorm eps
    rope_base: float = 10000.0  # 1-D RoPE base over sequence positions (the prefix, position 0, is unrotated)
    dropout: float = 0.1  # token-embedding, attention-output and FFN dropout (LlamaGen 0.1)
    cond_drop_prob: float = 0.1  # P(condition -> learned null condition) per training sample (CFG)
    diffloss: DiffLossConfig = field(default_factory=DiffLossConfig)  # head; token_dim, cond_dim forced here

    def __post_init__(self) -> None:
        for name in ("token_dim", "num_tokens", "cond_dim", "width", "depth", "heads", "ffn_multiple_of"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.width % self.heads or (self.width // self.heads) % 2:
            raise ConfigError(f"width: {self.width} must split into {self.heads} heads of even width (RoPE)")
        for name in ("dropout", "cond_drop_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name}: must be in [0, 1], got {getattr(self, name)}")
        if self.norm_eps <= 0 or self.rope_base <= 1:
            raise ConfigError(f"norm_eps/rope_base: need eps > 0 and base > 1, got {self.norm_eps}/{self.rope_base}")
        self.diffloss.token_dim = self.token_dim  # the head models the tokens the GPT reads
        self.diffloss.cond_dim = self.width  # and is conditioned on its hidden states

    @property
    def ffn_hidden(self) -> int:
        """SwiGLU hidden width: int(2/3 * 4 * width) rounded up to `ffn_multiple_of`."""
        h = int(2 * 4 * self.width / 3)
        return self.ffn_multiple_of * -(-h // self.ffn_multiple_of)


# ----------------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------------


def rope_tables(head_dim: int, length: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [length, head_dim / 2] of angle pos * base^(-2j / head_dim) (position 0: no rotation)."""
    freqs = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # [hd/2]
    angles = torch.arange(length, dtype=torch.float64)[:, None] * freqs[None]  # [length, hd/2]
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2j, 2j+1) of x [B, h, S, hd] by the angles of cos/sin [S, hd/2]."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # [B, h, S, hd/2] each
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.flatten(-2).to(x.dtype)


class KVCache:
    """Per-layer key/value buffers [B, h, S_max, hd], allocated on first write and filled left to right."""

    def __init__(self, depth: int, max_len: int) -> None:
        self.max_len = max_len
        self.k: list[torch.Tensor | None] = [None] * depth
        self.v: list[torch.Tensor | None] = [None] * depth
        self.length = 0  # positions written so far (advanced by the model after every layer has written)

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [B, h, S, hd] at positions length..length+S; return all keys/values so far."""
        if self.k[layer] is None:
            shape = (*k.shape[:2], self.max_len, k.shape[-1])
            self.k[layer], self.v[layer] = k.new_zeros(shape), v.new_zeros(shape)
        end = self.length + k.shape[2]
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class Attention(nn.Module):
    """Causal multi-head self-attention via SDPA with 1-D RoPE on q and k, optionally through a KV cache."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.wqkv = nn.Linear(width, 3 * width, bias=False)
        self.wo = nn.Linear(width, width, bias=False)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """x [B, S, W] at positions start..start+S (start = cache.length, else 0); cos/sin [S, hd/2] -> [B, S, W]."""
        B, S, W = x.shape
        q, k, v = self.wqkv(x).view(B, S, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)  # [B, h, S, hd]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        start = 0
        if cache is not None:
            start = cache.length
            k, v = cache.write(layer, k, v)  # [B, h, start+S, hd]
        if start == 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=S > 1)
        else:  # query at position start+i sees keys 0..start+i
            mask = torch.arange(start + S, device=x.device)[None] <= start + torch.arange(S, device=x.device)[:, None]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.resid_dropout(self.wo(out.transpose(1, 2).reshape(B, S, W)))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x), then dropout."""

    def __init__(self, width: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.w1 = nn.Linear(width, hidden, bias=False)
        self.w3 = nn.Linear(width, hidden, bias=False)
        self.w2 = nn.Linear(hidden, width, bias=False)
        self.ffn_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class TransformerBlock(nn.Module):
    """Pre-RMSNorm LLaMA block: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.attention_norm = nn.RMSNorm(cfg.width, eps=cfg.norm_eps)
        self.attention = Attention(cfg.width, cfg.heads, cfg.dropout)
        self.ffn_norm = nn.RMSNorm(cfg.width, eps=cfg.norm_eps)
        self.feed_forward = FeedForward(cfg.width, cfg.ffn_hidden, cfg.dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """x [B, S, W] -> [B, S, W]."""
        x = x + self.attention(self.attention_norm(x), cos, sin, cache, layer)
        return x + self.feed_forward(self.ffn_norm(x))


# ----------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------


class LoSTGPT(nn.Module, Pretrained):
    """Text-conditioned autoregressive model over continuous tokens; saved as config.json + model.safetensors."""

    def __init__(self, config: GPTConfig, preset: str | None = None) -> None:
        super().__init__()
        self.config = cfg = config
        self.preset = preset  # recorded in config.json
        self.extra_config: dict[str, Any] = {}  # run config, text encoder, sampling defaults (trainer / loader)
        L, W = cfg.num_tokens, cfg.width
        self.cond_embed = nn.Linear(cfg.cond_dim, W)  # text embedding -> the prefix token
        self.null_cond = nn.Parameter(torch.zeros(W))  # the learned null prefix (CFG)
        self.x_embedder = nn.Sequential(nn.Linear(cfg.token_dim, W), nn.RMSNorm(W, eps=cfg.norm_eps))
        self.tok_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([TransformerBlock(cfg) for _ in range(cfg.depth)])
        self.norm = nn.RMSNorm(W, eps=cfg.norm_eps)
        self.diffusion_pos_embed = nn.Parameter(torch.zeros(L, W))  # per-position offset of the head condition
        cos, sin = rope_tables(W // cfg.heads, L, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)  # [L, hd/2]
        self.register_buffer("rope_sin", sin, persistent=False)
        self.diffloss = DiffLoss(cfg.diffloss)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """LlamaGen: N(0, 0.02) linears and embeddings, zero biases; the head keeps its MAR init."""
        for m in self.modules():
            if isinstance(m, nn.Linear) and not any(m is h for h in self.diffloss.modules()):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.null_cond, std=0.02)
        nn.init.normal_(self.diffusion_pos_embed, std=0.02)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- sequence -----------------------------------------------------------------------------------

    def null_condition(self, batch_size: int) -> torch.Tensor:
        """The learned null prefix embedding, [B, width]."""
        return self.null_cond[None].expand(batch_size, -1)

    def _prefix(self, cond: torch.Tensor, drop: torch.Tensor | None) -> torch.Tensor:
        """cond [B, cond_dim], drop [B] bool or None -> prefix embeddings [B, W] (null where dropped)."""
        if cond.dim() != 2 or cond.shape[1] != self.config.cond_dim:
            raise ValueError(f"condition {list(cond.shape)} does not fit [B, {self.config.cond_dim}]")
        c = self.cond_embed(cond)
        if drop is None:
            return c
        return torch.where(drop.to(torch.bool)[:, None], self.null_cond.to(c.dtype)[None], c)

    def _run(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Sequence embeddings x [B, S, W] at positions start..start+S (start = cache.length, else 0) ->
        head conditions [B, S, W] (final norm + per-position embedding of those positions)."""
        start = cache.length if cache is not None else 0
        end = start + x.shape[1]
        if end > self.config.num_tokens:
            raise ValueError(f"sequence of {end} positions exceeds num_tokens {self.config.num_tokens}")
        cos, sin = self.rope_cos[start:end], self.rope_sin[start:end]
        x = self.tok_dropout(x)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, cache, i)
        if cache is not None:
            cache.length = end
        return self.norm(x) + self.diffusion_pos_embed[start:end].to(x.dtype)

    def hidden(self, tokens: torch.Tensor, cond: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced head conditions: row i predicts token i.

        Args:
            tokens: [B, L', token_dim], 1 <= L' <= L (only tokens[:, :L'-1] are read).
            cond: text embeddings [B, cond_dim].
            drop: [B] bool or None; True uses the null condition for that sample.

        Returns:
            [B, L', width].
        """
        prefix = self._prefix(cond, drop)[:, None]  # [B, 1, W]
        x = torch.cat([prefix, self.x_embedder(tokens[:, :-1])], dim=1)  # [B, L', W]
        return self._run(x)

    def sample_drop(self, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
        """CFG dropout flags [B] bool, each True with probability `cond_drop_prob` (global RNG)."""
        return torch.rand(batch_size, device=device) < self.config.cond_drop_prob

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor, drop: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training loss: tokens [B, L', token_dim], cond [B, cond_dim], drop [B] bool (True: that sample
        sees the null condition; training draws it with `sample_drop`) -> {"loss", "drop_frac"}."""
        B, Lp, D = tokens.shape
        h = self.hidden(tokens, cond, drop)  # [B, L', W]
        loss = self.diffloss(tokens.reshape(B * Lp, D), h.reshape(B * Lp, -1))
        return {"loss": loss, "drop_frac": drop.float().mean()}

    # -- generation ---------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, cond: torch.Tensor, num_tokens: int | None = None, guidance: float = 1.0,
                 guidance_schedule: str = "constant", temperature: float = 1.0,
                 prefix: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 use_cache: bool = True, sample_steps: int | None = None) -> torch.Tensor:
        """Sample tokens autoregressively (dropout off whatever the module's mode).

        Args:
            cond: text embeddings [B, cond_dim].
            num_tokens: tokens to return, 1..L (default L).
            guidance: CFG scale on the head (1 = none); cond and null rows are batched together.
            guidance_schedule: "constant" or "linear" (`guidance_scale`).
            temperature: scales each token's starting noise (see `DiffLoss.sample`).
            prefix: [B, P, token_dim] teacher-forced first tokens, P <= num_tokens (returned unchanged).
            generator: seeds every draw (same seed, same tokens).
            use_cache: KV cache; False recomputes the whole sequence for every token (same result).
            sample_steps: head sampler steps (default `diffloss.sample_steps`).

        Returns:
            tokens [B, num_tokens, token_dim].
        """
        n = self.config.num_tokens if num_tokens is None else num_tokens
        if not 1 <= n <= self.config.num_tokens:
            raise ConfigError(f"num_tokens: {n} is outside 1..{self.config.num_tokens} (the model's length)")
        if guidance_schedule not in GUIDANCE_SCHEDULES:
            raise ConfigError(f"guidance_schedule: {guidance_schedule!r} is not one of {list(GUIDANCE_SCHEDULES)}")
        B = cond.shape[0]
        D = self.config.token_dim
        if prefix is not None and (prefix.dim() != 3 or prefix.shape[0] != B or prefix.shape[2] != D):
            raise ConfigError(f"prefix: {list(prefix.shape)} does not fit [{B}, P, {D}]")
        out = [] if prefix is None else list(prefix.to(cond.dtype).unbind(1))  # P tensors [B, D]
        P = len(out)
        if P > n:
            raise ConfigError(f"prefix: {P} tokens is more than num_tokens {n}")
        guided = guidance != 1.0
        was_training = self.training
        self.eval()
        try:
            c = self._prefix(cond, None)  # [B, W]
            x = torch.stack([c] + [self.x_embedder(t.to(c.dtype)) for t in out], dim=1)  # [B, 1+P, W]
            if guided:  # rows [cond ; null]: only the prefix position differs
                x = torch.cat([x, torch.cat([self.null_condition(B)[:, None].to(x.dtype), x[:, 1:]], dim=1)])
            cache = KVCache(self.config.depth, n) if use_cache else None
            seq = x  # the positions to feed next: new ones with a cache, all of them without
            for i in range(P, n):
                h = self._run(seq, cache)[:, -1]  # [B', W]: the head condition for token i
                scale = guidance_scale(guidance, guidance_schedule, i, n)
                h = h[:B] if guided and scale == 1.0 else h  # a schedule at exactly 1: the plain pass
                out.append(self.diffloss.sample(h, temperature, scale, sample_steps, generator))  # [B, D]
                if i + 1 < n:
                    x = self.x_embedder(out[-1].to(h.dtype))[:, None]  # [B, 1, W]
                    x = torch.cat([x, x]) if guided else x
                    seq = x if cache is not None else torch.cat([seq, x], dim=1)
        finally:
            self.train(was_training)
        return torch.stack(out, dim=1)

    # -- persistence --------------------------------------------------------------------------------

    # `save_pretrained` / `from_pretrained` (an export folder or a run directory holding `export/`): `Pretrained`
    config_class = GPTConfig
    pretrained_what = "LoST-GPT"


# ----------------------------------------------------------------------------------------------------
# Guidance schedule
# ----------------------------------------------------------------------------------------------------


def guidance_scale(guidance: float, schedule: str, i: int, num_tokens: int) -> float:
    """CFG scale for token i of num_tokens: constant, or linear 1 + (guidance - 1) (i + 1) / num_tokens
    (MAR / Semanticist: weak guidance on the first tokens, full guidance on the last)."""
    if schedule == "constant":
        return float(guidance)
    if schedule == "linear":
        return 1.0 + (guidance - 1.0) * (i + 1) / num_tokens
    raise ConfigError(f"guidance_schedule: {schedule!r} is not one of {list(GUIDANCE_SCHEDULES)}")


# ----------------------------------------------------------------------------------------------------
# Presets (parameter counts from `python -m lostcli.models.gpt`)
# ----------------------------------------------------------------------------------------------------

PRESETS: dict[str, GPTConfig] = {
    # 32 tokens from the built-in teacher's 128-d text embedding; 5.16M (head 0.29M). Trains on a CPU: about
    # 1.0 s per forward+backward at batch 64 x 32 tokens (fp32, OMP_NUM_THREADS=1, the shared 2-core dev box;
    # ~2 s while it is busy; 70% of it matmuls); 4 samples x 32 tokens with CFG (25 head steps) take ~0.55 s.
    "gpt_tiny": GPTConfig(num_tokens=32, cond_dim=128, width=256, depth=6, heads=4,
                          diffloss=DiffLossConfig(width=128, depth=2)),
    # 64 tokens, a wider trunk and head (a GPU or a patient CPU); 27.41M (head 1.40M).
    "gpt_small": GPTConfig(num_tokens=64, cond_dim=512, width=512, depth=8, heads=8,
                           diffloss=DiffLossConfig(width=256, depth=3)),
    # Paper: LlamaGen GPT-L (24 blocks, 16 heads, width 1024, SwiGLU multiple_of 256), 128 tokens; head as
    # Semanticist's eps-LlamaGen (diffloss_d 12, diffloss_w 1536, 100 sampling steps). cond_dim is a
    # placeholder: the trainer sets it to the text encoder's width. 460.39M (head 150.84M; the trunk's 309.6M is
    # LlamaGen GPT-L's 343M less its 2 x 16.8M token embedding and logits layers).
    "gpt_paper": GPTConfig(num_tokens=128, cond_dim=1024, width=1024, depth=24, heads=16, ffn_multiple_of=256,
                           diffloss=DiffLossConfig(width=1536, depth=12, sample_steps=100)),
}


def build_gpt(preset: str, **overrides: Any) -> LoSTGPT:
    """A fresh LoST-GPT from a preset name plus config field overrides (`diffloss={...}` merges into the
    preset's head config).

    Raises:
        ConfigError: unknown preset or field, or an invalid resulting config.
    """
    check_preset(preset, PRESETS, GPTConfig, overrides)
    base = to_dict(PRESETS[preset])
    if isinstance(overrides.get("diffloss"), dict):
        overrides = {**overrides, "diffloss": {**base["diffloss"], **overrides["diffloss"]}}
    try:
        cfg = from_dict(GPTConfig, {**base, **overrides})  # type checks + a fresh copy
    except ConfigError as e:
        raise ConfigError(f"model.overrides.{e}") from None
    return LoSTGPT(cfg, preset=preset)


if __name__ == "__main__":  # pragma: no cover - prints the size table
    for name in PRESETS:
        with torch.device("meta"):
            m = build_gpt(name)
        print(f"{name}: {m.num_params / 1e6:.2f}M (head {sum(p.numel() for p in m.diffloss.parameters()) / 1e6:.2f}M)")
