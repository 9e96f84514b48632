"""models/flow.py: the forward process agrees with diffusers, x0 inversion, and the CFG sampler."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from lostcli.errors import ConfigError
from lostcli.models.flow import _alphas_cumprod, make_scheduler, noised, predict_x0, sample_latents, sample_u
from lostcli.models.lost import LoSTConfig, LoSTTokenizer

TINY = dict(latent_shape=[4, 4, 8], patch_size=2, enc_width=32, enc_depth=1, enc_heads=2, num_registers=8,
            token_dim=8, dec_width=32, dec_depth=2, dec_heads=2)


pytestmark = pytest.mark.usefixtures("one_thread")


def _tokenizer(**overrides) -> LoSTTokenizer:
    """A tiny tokenizer moved off its zero init so the decoder output depends on x_t, t and the condition."""
    torch.manual_seed(0)
    model = LoSTTokenizer(LoSTConfig(**{**TINY, **overrides})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


# -- forward process ----------------------------------------------------------------------------------


def test_flow_noised_matches_diffusers_scale_noise_and_step():
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    sched.set_timesteps(10)
    x0, noise = torch.randn(3, 4, 4, 8), torch.randn(3, 4, 4, 8)
    idx = torch.tensor([0, 4, 8])
    timesteps = sched.timesteps[idx]
    sigma = sched.sigmas[idx]
    x_t, t01, target = noised("flow", x0, noise, sigma)
    torch.testing.assert_close(x_t, sched.scale_noise(x0, timesteps, noise))
    torch.testing.assert_close(t01, timesteps / 1000)  # the decoder's time is sigma = timestep / T
    torch.testing.assert_close(target, noise - x0)
    # an Euler step with the exact velocity lands on the forward process at the next sigma
    sched._step_index = 4
    prev = sched.step(target[1:2], timesteps[1], x_t[1:2]).prev_sample
    want, _, _ = noised("flow", x0[1:2], noise[1:2], sched.sigmas[5:6])
    torch.testing.assert_close(prev, want, atol=1e-5, rtol=0)


def test_ddpm_noised_matches_add_noise():
    sched = make_scheduler("ddpm")
    x0, noise = torch.randn(4, 4, 4, 8), torch.randn(4, 4, 4, 8)
    u = torch.tensor([0.0, 0.2505, 0.7, 0.9999])
    x_t, t01, target = noised("ddpm", x0, noise, u)
    timesteps = torch.tensor([0, 250, 700, 999])
    torch.testing.assert_close(x_t, sched.add_noise(x0, noise, timesteps))
    torch.testing.assert_close(t01, timesteps.float() / 1000)
    assert torch.equal(target, noise)
    assert not sched.config.clip_sample
    assert make_scheduler("ddpm", for_sampling=True).config.prediction_type == "epsilon"


@pytest.mark.parametrize("kind", ["flow", "ddpm"])
def test_predict_x0_inverts_the_target(kind):
    x0, noise = torch.randn(5, 4, 4, 8), torch.randn(5, 4, 4, 8)
    u = torch.tensor([0.01, 0.3, 0.5, 0.8, 0.95])
    x_t, t01, target = noised(kind, x0, noise, u)
    torch.testing.assert_close(predict_x0(kind, x_t, t01, target), x0, atol=2e-4, rtol=0)
    off = predict_x0(kind, x_t, t01, target + 0.1)
    assert (off - x0).abs().mean() > 0.01  # a wrong prediction does not give x0 back


def test_time_draws_and_bad_kinds():
    torch.manual_seed(0)
    u = sample_u(20000)
    assert 0 < float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.01 and float(u.std()) < 0.25  # logit-normal: peaked at 0.5
    assert float(sample_u(20000, "uniform").std()) == pytest.approx(12 ** -0.5, abs=0.01)
    with pytest.raises(ConfigError, match="tokenizer.scheduler"):
        make_scheduler("edm")
    with pytest.raises(ConfigError, match="tokenizer.time_sampling"):
        sample_u(3, "cosine")


def test_time_shift_moves_draws_towards_noise():
    g = torch.Generator().manual_seed(0)
    u = sample_u(5000, "uniform", generator=g)
    shifted = sample_u(5000, "uniform", generator=torch.Generator().manual_seed(0), shift=3.0)
    assert torch.allclose(shifted, 3 * u / (1 + 2 * u))  # SD3: s u / (1 + (s - 1) u)
    assert float(shifted.median()) == pytest.approx(0.75, abs=0.02)  # the median 0.5 maps to 1.5 / 2
    assert torch.equal(sample_u(7, generator=torch.Generator().manual_seed(1), shift=1.0),
                       sample_u(7, generator=torch.Generator().manual_seed(1)))


# -- sampling -----------------------------------------------------------------------------------------


class _Oracle:
    """A decoder stand-in that knows the answer: it predicts the target that leads to `g * x0` when
    conditioned and to 0 when the condition is dropped (so CFG with scale g must return g * x0)."""

    def __init__(self, x0: torch.Tensor, kind: str) -> None:
        self.x0, self.kind = x0, kind
        self.config = LoSTConfig(**{**TINY, "prediction": "velocity" if kind == "flow" else "epsilon"})
        self.calls: list[int] = []

    def decode(self, cond, keep, x_t, t, drop_cond=None):
        self.calls.append(x_t.shape[0])
        B = x_t.shape[0]
        x0 = self.x0.repeat(B // self.x0.shape[0], 1, 1, 1)
        if drop_cond is not None:
            x0 = torch.where(drop_cond.view(-1, 1, 1, 1), torch.zeros_like(x0), x0)
        if self.kind == "flow":
            return (x_t - x0) / t.view(-1, 1, 1, 1)  # v = noise - x0 with noise = (x_t - (1-s) x0) / s
        abar = _alphas_cumprod(1000)[(t * 1000).round().long()].view(-1, 1, 1, 1)
        return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()


@pytest.mark.parametrize("kind", ["flow", "ddpm"])
def test_sampler_reaches_the_oracle_target_and_mixes_cfg(kind):
    x0 = torch.randn(2, 4, 4, 8)
    tokens, keep = torch.randn(2, 8, 8), torch.tensor([8, 2])
    oracle = _Oracle(x0, kind)
    out = sample_latents(oracle, tokens, keep, steps=6, guidance=1.0, kind=kind,
                         generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)
    assert oracle.calls == [2] * 6  # guidance 1: the conditional pass alone
    oracle.calls.clear()
    out = sample_latents(oracle, tokens, keep, steps=6, guidance=2.5, kind=kind,
                         generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, 2.5 * x0, atol=1e-4, rtol=0)  # v_u + g (v_c - v_u) targets g x0
    assert oracle.calls == [4] * 6  # cond and null batched together


def test_sampler_is_seeded_and_guidance_one_is_the_conditional_sampler():
    model = _tokenizer()
    tokens, keep = torch.randn(2, 5, 8), torch.tensor([5, 1])
    a = sample_latents(model, tokens, keep, steps=4, guidance=3.0, generator=torch.Generator().manual_seed(7))
    b = sample_latents(model, tokens, keep, steps=4, guidance=3.0, generator=torch.Generator().manual_seed(7))
    c = sample_latents(model, tokens, keep, steps=4, guidance=3.0, generator=torch.Generator().manual_seed(8))
    assert a.shape == (2, 4, 4, 8) and torch.isfinite(a).all()
    assert torch.equal(a, b) and (a - c).abs().mean() > 1e-3

    # guidance 1 == a plain conditional Euler sampler written out by hand
    got = sample_latents(model, tokens, keep, steps=4, guidance=1.0, generator=torch.Generator().manual_seed(7))
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)
    sched.set_timesteps(4)
    x = torch.randn(2, 4, 4, 8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        for i in range(4):
            s, s_next = sched.sigmas[i], sched.sigmas[i + 1]
            x = x + (s_next - s) * model.decode(tokens, keep, x, s.expand(2))
    torch.testing.assert_close(got, x, atol=1e-5, rtol=0)
    assert (got - a).abs().mean() > 1e-3  # guidance 3 is something else


class _Still:
    """A velocity decoder that predicts 0 everywhere: the flow sampler returns its starting noise unchanged."""

    config = LoSTConfig(**{**TINY, "prediction": "velocity"})

    def decode(self, cond, keep, x_t, t, drop_cond=None):
        return torch.zeros_like(x_t)


def test_temperature_scales_the_starting_noise():
    tokens, keep = torch.randn(2, 8, 8), torch.tensor([8, 3])
    noise = torch.randn(2, 4, 4, 8, generator=torch.Generator().manual_seed(3))
    for temperature in (1.0, 0.5, 0.0):
        out = sample_latents(_Still(), tokens, keep, steps=3, guidance=2.0, temperature=temperature,
                             generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(out, noise * temperature)
    for bad in (-0.1, float("nan")):
        with pytest.raises(ConfigError, match="temperature"):
            sample_latents(_Still(), tokens, keep, steps=3, temperature=bad)


def test_sampler_rejects_a_decoder_of_the_other_kind():
    with pytest.raises(ConfigError, match="epsilon"):
        sample_latents(_tokenizer(), torch.randn(1, 8, 8), torch.tensor([8]), steps=2, kind="ddpm")
    eps_model = _tokenizer(prediction="epsilon")
    out = sample_latents(eps_model, torch.randn(1, 8, 8), torch.tensor([8]), steps=3, kind="ddpm",
                         generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 4, 4, 8) and torch.isfinite(out).all()
