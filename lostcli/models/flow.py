"""Noise schedules and the sampler of the LoST decoder, on top of diffusers' schedulers.

Two kinds, chosen by `tokenizer.scheduler` in a recipe:

- "flow" (default): rectified flow / flow matching as FlexTok and SD3. With sigma in [0, 1],
  x_t = (1 - sigma) x0 + sigma noise (`FlowMatchEulerDiscreteScheduler.scale_noise`). Training draws sigma
  logit-normal (sigmoid of N(0, 1), FlexTok / SD3) or uniform, optionally shifted towards noise; sampling
  integrates Euler from sigma = 1 to 0 with the SAME shift (the scheduler's `shift`), so the sampler spends
  its steps where training did.
- "ddpm": `DDPMScheduler` (1000 steps, linear betas, as Semanticist / DiT and the LoST authors' ADM code)
  for training, sampled with `DDIMScheduler` (eta 0) built from the same config, so 25 steps suffice.

What the decoder output means (`LoSTConfig.prediction`) is a second, independent choice:
- "velocity" (flow): v = noise - x0; "epsilon" (ddpm): the noise. These are the schedulers' native targets.
- "sample" (either kind): x0 itself. Near pure noise a velocity / epsilon network must copy its noisy input
  to the output to be right, an identity a small decoder learns slowly; an x0 network only has to read the
  tokens there. For sampling, an x0 prediction is turned into the kind's native one (v = (x_t - x0) / sigma
  for flow; DDIM takes "sample" directly).

The decoder always receives a floating time t01 in [0, 1]: sigma for "flow", timestep / num_train_timesteps
for "ddpm" (the decoder multiplies it by `LoSTConfig.time_scale`), identically in training and sampling.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler

from ..errors import ConfigError

if TYPE_CHECKING:
    from .lost import LoSTTokenizer

KINDS = ("flow", "ddpm")
PREDICTION = {"flow": "velocity", "ddpm": "epsilon"}  # each kind's native decoder target
PREDICTIONS = {"flow": ("velocity", "sample"), "ddpm": ("epsilon", "sample")}  # targets each kind can train
TIME_SAMPLING = ("logit_normal", "uniform")


# ----------------------------------------------------------------------------------------------------
# Schedulers
# ----------------------------------------------------------------------------------------------------


def check_kind(kind: str) -> str:
    """Return `kind` if it is a known scheduler kind, else raise ConfigError naming `tokenizer.scheduler`."""
    if kind not in KINDS:
        raise ConfigError(f"tokenizer.scheduler: {kind!r} is not one of {list(KINDS)}")
    return kind


def check_prediction(kind: str, prediction: str) -> str:
    """Return `prediction` if scheduler `kind` can train it, else raise ConfigError naming `tokenizer.prediction`."""
    check_kind(kind)
    if prediction not in PREDICTIONS[kind]:
        raise ConfigError(f"tokenizer.prediction: {prediction!r} is not one of {list(PREDICTIONS[kind])} "
                          f"for tokenizer.scheduler {kind!r}")
    return prediction


def make_scheduler(kind: str = "flow", num_train_timesteps: int = 1000, for_sampling: bool = False,
                   shift: float = 1.0, prediction: str | None = None):
    """A fresh diffusers scheduler.

    Args:
        kind: "flow" (FlowMatchEulerDiscreteScheduler) or "ddpm" (DDPMScheduler).
        num_train_timesteps: length of the training chain.
        for_sampling: "ddpm" only: return the DDIMScheduler that samples the same chain (eta 0).
        shift: "flow" only: the sampler's time shift sigma -> s sigma / (1 + (s - 1) sigma), the same map
            `sample_u` applies to training times.
        prediction: "ddpm" only: the decoder target ("epsilon" default, or "sample").
    """
    check_kind(kind)
    if kind == "flow":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, shift=float(shift))
    # clip_sample off: normalised latents are not confined to [-1, 1] as pixels are
    ddpm = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="linear",
                         prediction_type=prediction or "epsilon", clip_sample=False)
    return DDIMScheduler.from_config(ddpm.config) if for_sampling else ddpm


@lru_cache(maxsize=8)
def _alphas_cumprod(num_train_timesteps: int) -> torch.Tensor:
    """alpha-bar [T] of the "ddpm" training chain (read only)."""
    return make_scheduler("ddpm", num_train_timesteps).alphas_cumprod.float()


def _expand(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, 1, 1, 1] in x's dtype and device (broadcasts over a latent batch)."""
    return t.to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.dim() - 1)))


# ----------------------------------------------------------------------------------------------------
# Training: time draws, forward process, x0 from a prediction
# ----------------------------------------------------------------------------------------------------


def sample_u(batch_size: int, mode: str = "logit_normal", device: torch.device | str | None = None,
             generator: torch.Generator | None = None, shift: float = 1.0) -> torch.Tensor:
    """Training times u [B] in (0, 1): sigmoid(N(0, 1)) ("logit_normal") or U(0, 1) ("uniform").

    `shift` s > 1 moves the draws towards the noisy end, u -> s u / (1 + (s - 1) u) (SD3's timestep shift):
    near pure noise the decoder can only succeed by reading its condition, so the encoder's tokens get a
    stronger training signal (measured on the tiny recipe: val decode NMSE 0.26 -> 0.18 with s = 3).
    Drawn with torch's global RNG unless a generator is given (checkpoints restore the global RNG).
    """
    if mode not in TIME_SAMPLING:
        raise ConfigError(f"tokenizer.time_sampling: {mode!r} is not one of {list(TIME_SAMPLING)}")
    where = generator.device if generator is not None else torch.device("cpu")
    if mode == "logit_normal":
        u = torch.sigmoid(torch.randn(batch_size, generator=generator, device=where))
    else:
        u = torch.rand(batch_size, generator=generator, device=where)
    if shift != 1.0:
        u = shift * u / (1.0 + (shift - 1.0) * u)
    return u.to(device or where)


def noised(kind: str, x0: torch.Tensor, noise: torch.Tensor, u: torch.Tensor,
           num_train_timesteps: int = 1000, prediction: str | None = None
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward process at times u.

    Args:
        kind: "flow" or "ddpm".
        x0: clean normalised latents [B, C, H, W].
        noise: N(0, I) of the same shape.
        u: [B] in [0, 1]: sigma for "flow"; for "ddpm" the timestep floor(u T) (clamped to T - 1).
        prediction: the decoder target (None: the kind's native one, `PREDICTION`).

    Returns:
        (x_t [B, C, H, W], t01 [B] float in [0, 1] for the decoder, target [B, C, H, W]):
        flow: x_t = (1 - sigma) x0 + sigma noise, target v = noise - x0 (or x0 for "sample");
        ddpm: x_t = sqrt(abar) x0 + sqrt(1 - abar) noise (`DDPMScheduler.add_noise`), target noise (or x0).
    """
    prediction = check_prediction(kind, prediction or PREDICTION[kind])
    u = u.to(x0.device)
    if kind == "flow":
        sigma = u.to(x0.dtype)
        s = _expand(sigma, x0)
        return (1.0 - s) * x0 + s * noise, sigma, x0 if prediction == "sample" else noise - x0
    T = num_train_timesteps
    timesteps = (u * T).long().clamp(0, T - 1)  # [B] integer timesteps
    abar = _expand(_alphas_cumprod(T).to(x0.device)[timesteps], x0)
    x_t = abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise  # = DDPMScheduler.add_noise
    return x_t, timesteps.to(x0.dtype) / T, x0 if prediction == "sample" else noise


def predict_x0(kind: str, x_t: torch.Tensor, t01: torch.Tensor, pred: torch.Tensor,
               num_train_timesteps: int = 1000, prediction: str | None = None) -> torch.Tensor:
    """The clean latents a prediction implies: flow x_t - sigma v; ddpm (x_t - sqrt(1 - abar) eps) / sqrt(abar);
    a "sample" prediction is x0 already.

    Args:
        x_t: noised latents [B, C, H, W]; t01: [B] times as `noised` returns them; pred: the decoder output.
        prediction: what `pred` means (None: the kind's native target).

    Returns:
        x0_hat [B, C, H, W] (differentiable in pred).
    """
    prediction = check_prediction(kind, prediction or PREDICTION[kind])
    if prediction == "sample":
        return pred
    if kind == "flow":
        return x_t - _expand(t01, x_t) * pred
    T = num_train_timesteps
    timesteps = (t01.to(x_t.device).float() * T).round().long().clamp(0, T - 1)
    abar = _expand(_alphas_cumprod(T).to(x_t.device)[timesteps], x_t)
    return (x_t - (1.0 - abar).sqrt() * pred) / abar.sqrt()


# ----------------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------------


Denoiser = Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor]


def guided_sample(denoise: Denoiser, x: torch.Tensor, scheduler: Any, kind: str, guidance: float,
                  num_train_timesteps: int = 1000, x0_prediction: bool = False) -> torch.Tensor:
    """Run a sampler from the starting noise x with classifier-free guidance (the decoder's and the GPT
    head's sampling loop).

    Each step calls `denoise(x_in, t01_in, guided)`: guided (guidance != 1) with x_in = [x ; x] and t01_in
    [2B], where the callee conditions the first half and leaves the second unconditioned, and the step mixes
    out = out_u + guidance (out_c - out_u) in float32; guidance 1 runs the conditional pass alone
    (x_in = x, t01_in [B], guided False).

    Args:
        denoise: the network with its condition bound, as above.
        x: starting noise [B, ...] (on the device the steps run on).
        scheduler: a sampling scheduler from `make_scheduler`, its timesteps already set.
        kind: "flow" (t01 = the step's sigma) or "ddpm" (t01 = timestep / num_train_timesteps).
        x0_prediction: "flow" only: the network predicts x0, turned into the velocity the Euler step takes.

    Returns:
        the sample, shaped as x.
    """
    device, B = x.device, x.shape[0]
    guided = guidance != 1.0
    for i, t in enumerate(scheduler.timesteps):
        if kind == "flow":
            t01 = scheduler.sigmas[i].to(device=device, dtype=torch.float32)  # sigma of this step
        else:
            t01 = t.to(device=device, dtype=torch.float32) / num_train_timesteps
        if guided:  # [cond ; uncond] batched together, both halves at the same x_t
            out_c, out_u = denoise(torch.cat([x, x]), t01.expand(2 * B), True).float().chunk(2)
            out = out_u + guidance * (out_c - out_u)
        else:
            out = denoise(x, t01.expand(B), False).float()
        if x0_prediction:  # x0 -> the velocity the Euler step takes
            out = (x - out) / t01.clamp(min=1e-6)
        x = scheduler.step(out, t, x).prev_sample
    return x


@torch.no_grad()
def sample_latents(
    tokenizer: LoSTTokenizer,
    tokens: torch.Tensor,
    keep: torch.Tensor | int,
    steps: int = 25,
    guidance: float = 3.0,
    generator: torch.Generator | None = None,
    kind: str = "flow",
    num_train_timesteps: int = 1000,
    shift: float = 1.0,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Decode token prefixes into normalised latents with classifier-free guidance.

    Each step evaluates the conditional and the unconditional (all-null) condition in one batch and mixes
    out = out_u + guidance (out_c - out_u) in the decoder's own target space (velocity, epsilon or x0: the
    mix is the same affine combination in each, since they are affine in one another at fixed x_t and t);
    guidance 1 runs the conditional pass alone (the loop is `guided_sample`).

    Args:
        tokenizer: a `LoSTTokenizer`; `config.prediction` says what its decoder outputs.
        tokens: [B, K, token_dim], K <= R.
        keep: [B] (or one int) prefix lengths; positions >= keep are null tokens.
        steps: scheduler steps.
        guidance: CFG scale (1 = no guidance).
        generator: seeds the starting noise (same seed, same output).
        kind: "flow" or "ddpm" (sampled with DDIM).
        shift: "flow": the time shift training used (`tokenizer.time_shift`), so the steps fall where the
            decoder was trained.
        temperature: scales the starting noise (1: the sampler as trained; below 1 the deterministic flow
            steps start nearer the centre of the noise and land nearer the decoder's mean reconstruction).

    Returns:
        z_norm [B, C, H, W] (`tokenizer.denormalize` maps it to the VAE's latent space).
    """
    prediction = tokenizer.config.prediction
    if prediction not in PREDICTIONS[check_kind(kind)]:
        raise ConfigError(f"tokenizer.scheduler: {kind!r} cannot sample a decoder predicting {prediction!r} "
                          f"(it takes {list(PREDICTIONS[kind])})")
    if steps < 1:
        raise ConfigError(f"steps: must be >= 1, got {steps}")
    device = tokens.device
    B = tokens.shape[0]
    keep = torch.as_tensor(keep, dtype=torch.long, device=device)
    keep = keep.expand(B) if keep.dim() == 0 else keep
    where = generator.device if generator is not None else device
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ConfigError(f"temperature: must be a finite number >= 0, got {temperature}")
    x = torch.randn(B, *tokenizer.config.latent_shape, generator=generator, device=where).to(device) * temperature
    scheduler = make_scheduler(kind, num_train_timesteps, for_sampling=True, shift=shift, prediction=prediction)
    scheduler.set_timesteps(steps, device=device)
    cond2, keep2 = torch.cat([tokens, tokens]), torch.cat([keep, keep])  # [cond ; null] for guided steps
    drop2 = torch.arange(2 * B, device=device) >= B  # [2B]: False for the cond half, True for the null half

    def denoise(x_in: torch.Tensor, t01: torch.Tensor, guided: bool) -> torch.Tensor:
        if guided:
            return tokenizer.decode(cond2, keep2, x_in, t01, drop2)
        return tokenizer.decode(tokens, keep, x_in, t01)

    return guided_sample(denoise, x, scheduler, kind, guidance, num_train_timesteps,
                         x0_prediction=kind == "flow" and prediction == "sample")
