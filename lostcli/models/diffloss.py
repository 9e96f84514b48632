"""A per-token diffusion head (MAR's DiffLoss): a small adaLN MLP that models one continuous token given
the hidden state of the autoregressive model at that position.

Reads top to bottom: the config, the residual adaLN MLP (`DiffHead`, MAR's SimpleMLPAdaLN), and `DiffLoss`,
which owns the head and its noise schedule: `forward(target, cond)` returns the training loss and
`sample(cond, temperature, guidance)` returns tokens.

Shapes: N rows (tokens, flattened over batch and positions), D = `token_dim` channels, C = `cond_dim`.
The noise schedules, forward process and samplers are diffusers' (through `models/flow.py`): "flow"
predicts the velocity noise - x0 and integrates Euler from sigma = 1 to 0; "ddpm" predicts epsilon and
samples with DDIM (eta 0). Both samplers are deterministic given the starting noise, so `temperature`
scales that starting noise (the only randomness of a draw) instead of MAR's per-step DDPM noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import ConfigError
from .blocks import LN_EPS, TimestepEmbedder, xavier_init_linears
from .flow import KINDS, guided_sample, make_scheduler, noised, sample_u

TIME_SCALE = 1000.0  # t01 in [0, 1] -> the 0..1000 scale the sinusoidal time features are made for
TIME_SAMPLING = "uniform"  # training times: uniform over (0, 1), as MAR draws timesteps and SiT draws t


# ----------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------


@dataclass
class DiffLossConfig:
    token_dim: int = 32  # channels of one token (LoSTGPT forces its own token_dim)
    cond_dim: int = 256  # width of the hidden state that conditions the head (LoSTGPT forces its width)
    width: int = 128  # MLP width (MAR: 1024+; tiny presets stay small for the CPU)
    depth: int = 2  # residual adaLN MLP blocks
    repeats: int = 4  # training: each target repeated with fresh noise and time (MAR diffusion_batch_mul)
    scheduler: str = "flow"  # "flow" (velocity, Euler) or "ddpm" (epsilon, DDIM sampling): models/flow.py KINDS
    num_train_timesteps: int = 1000  # length of the training chain
    sample_steps: int = 25  # default sampler steps per token

    def __post_init__(self) -> None:
        for name in ("token_dim", "cond_dim", "width", "depth", "repeats", "num_train_timesteps", "sample_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"diffloss.{name}: must be >= 1, got {getattr(self, name)}")
        if self.scheduler not in KINDS:
            raise ConfigError(f"diffloss.scheduler: {self.scheduler!r} is not one of {list(KINDS)}")


# ----------------------------------------------------------------------------------------------------
# The MLP (MAR SimpleMLPAdaLN)
# ----------------------------------------------------------------------------------------------------


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Row-wise adaLN: x [N, W] * (1 + scale [N, W]) + shift [N, W]."""
    return x * (1 + scale) + shift


class ResBlock(nn.Module):
    """LayerNorm -> adaLN(shift, scale) from y -> MLP -> gated residual (the identity at init)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=LN_EPS)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x [N, W], y [N, W] -> [N, W]."""
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(_modulate(self.norm(x), shift, scale))


class FinalLayer(nn.Module):
    """adaLN(shift, scale) from y, then Linear to the token channels (outputs 0 at init)."""

    def __init__(self, width: int, out_dim: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=LN_EPS)
        self.linear = nn.Linear(width, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x [N, W], y [N, W] -> [N, D]."""
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(_modulate(self.norm_final(x), shift, scale))


class DiffHead(nn.Module):
    """Denoiser of one token: input_proj(x_t), y = t_embedder(t) + cond_embed(c) drives every adaLN."""

    def __init__(self, token_dim: int, cond_dim: int, width: int, depth: int) -> None:
        super().__init__()
        self.input_proj = nn.Linear(token_dim, width)
        self.t_embedder = TimestepEmbedder(width)  # sinusoidal(256) -> MLP -> width
        self.cond_embed = nn.Linear(cond_dim, width)
        self.blocks = nn.ModuleList([ResBlock(width) for _ in range(depth)])
        self.final_layer = FinalLayer(width, token_dim)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier linears, N(0, 0.02) time MLP, zero adaLN modulations and output (MAR)."""
        xavier_init_linears(self)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for layer in [b.adaLN_modulation[-1] for b in self.blocks] + [self.final_layer.adaLN_modulation[-1],
                                                                       self.final_layer.linear]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x_t: torch.Tensor, t01: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x_t [N, D], t01 [N] in [0, 1], cond [N, C] -> prediction [N, D] (velocity or epsilon)."""
        x = self.input_proj(x_t)  # [N, W]
        y = self.t_embedder(t01 * TIME_SCALE) + self.cond_embed(cond)  # [N, W]
        for block in self.blocks:
            x = block(x, y)
        return self.final_layer(x, y)


# ----------------------------------------------------------------------------------------------------
# Loss and sampler
# ----------------------------------------------------------------------------------------------------


class DiffLoss(nn.Module):
    """The head plus its schedule: `forward` is the denoising loss, `sample` draws tokens."""

    def __init__(self, cfg: DiffLossConfig) -> None:
        super().__init__()
        self.config = cfg
        self.net = DiffHead(cfg.token_dim, cfg.cond_dim, cfg.width, cfg.depth)

    def forward(self, target: torch.Tensor, cond: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Denoising loss of clean tokens given their conditions (scalar).

        Each row is repeated `repeats` times with its own time u ~ U(0, 1) and noise (global RNG), noised
        with `flow.noised`; the loss is the MSE to the scheduler's target (velocity or epsilon).

        Args:
            target: clean tokens [N, D].
            cond: hidden states [N, C] (gradients flow into them).
            mask: [N], 1 = the row counts, 0 = ignored; None counts every row.
        """
        cfg = self.config
        r = cfg.repeats
        x0 = target.repeat(r, 1)  # [rN, D]
        c = cond.repeat(r, 1)  # [rN, C]
        u = sample_u(x0.shape[0], TIME_SAMPLING, device=x0.device)  # [rN]
        noise = torch.randn_like(x0)
        x_t, t01, want = noised(cfg.scheduler, x0, noise, u, cfg.num_train_timesteps)
        per_row = (self.net(x_t, t01, c) - want).pow(2).mean(dim=-1)  # [rN]
        if mask is None:
            return per_row.mean()
        m = mask.to(per_row.dtype).repeat(r)  # [rN]
        return (per_row * m).sum() / m.sum().clamp(min=1.0)

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, temperature: float = 1.0, guidance: float = 1.0,
               steps: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw one token per condition row.

        Args:
            cond: [N, C] when guidance == 1; otherwise [2N, C] = [cond ; uncond], and every step mixes
                out_u + guidance (out_c - out_u) (both halves see the same x_t; `flow.guided_sample`).
            temperature: scales the starting noise (0 = the deterministic mode-seeking draw).
            guidance: classifier-free guidance scale (1 = none).
            steps: sampler steps (default `config.sample_steps`).
            generator: seeds the starting noise (same seed, same output).

        Returns:
            tokens [N, D].
        """
        cfg = self.config
        steps = cfg.sample_steps if steps is None else steps
        if steps < 1:
            raise ConfigError(f"steps: must be >= 1, got {steps}")
        guided = guidance != 1.0
        if guided and cond.shape[0] % 2:
            raise ValueError(f"guided sampling needs [cond ; uncond] rows, got an odd count {cond.shape[0]}")
        N, device = cond.shape[0] // (2 if guided else 1), cond.device
        where = generator.device if generator is not None else device
        x = torch.randn(N, cfg.token_dim, generator=generator, device=where).to(device) * temperature  # [N, D]
        scheduler = make_scheduler(cfg.scheduler, cfg.num_train_timesteps, for_sampling=True)
        scheduler.set_timesteps(steps, device=device)
        return guided_sample(lambda x_in, t01, _: self.net(x_in, t01, cond), x, scheduler, cfg.scheduler, guidance,
                             cfg.num_train_timesteps)
