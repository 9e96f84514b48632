"""The tokenizer's objective options: x0 prediction, the sampler's time shift, the semantic loss in the
authors' spatial form with its gating, the REPA-style alignment, and the register initialisation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lostcli.errors import ConfigError
from lostcli.models.flow import make_scheduler, noised, predict_x0, sample_latents, sample_u
from lostcli.models.lost import LoSTConfig, LoSTTokenizer
from lostcli.models.rida import build_student
from lostcli.train.tokenizer import (LatentMetric, TokenizerObjectiveConfig, TokenizerTask, semantic_loss,
                                     student_tokens_on_grid, uses_student_for)

SHAPE = [4, 4, 12]  # three 4 x 4 planes side by side
TINY = dict(latent_shape=SHAPE, patch_size=2, enc_width=32, enc_depth=1, enc_heads=2, num_registers=8,
            token_dim=8, dec_width=32, dec_depth=2, dec_heads=2)
STUDENT = dict(latent_channels=4, plane_res=4, width=32, depth=1, heads=2, out_dim=16)

pytestmark = pytest.mark.usefixtures("one_thread")


def _student(patch_size: int = 1):
    torch.manual_seed(1)
    student = build_student("rida_tiny", **STUDENT, patch_size=patch_size)
    student.set_latent_stats([0.0, 0.5, 0.0, -1.0], [1.0, 2.0, 1.0, 0.5])
    return student.requires_grad_(False).eval()


def _task(prediction: str = "auto", **objective) -> TokenizerTask:
    torch.manual_seed(0)
    obj = TokenizerObjectiveConfig(prediction=prediction, **{"semantic_weight": 0.0, "nest_after": 0, **objective})
    target = "velocity" if prediction == "auto" else prediction
    tokenizer = LoSTTokenizer(LoSTConfig(**TINY, prediction=target))
    with torch.no_grad():  # off the adaLN-Zero init, so the output depends on x_t, t and the tokens
        for p in tokenizer.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return TokenizerTask(tokenizer, obj, _student() if uses_student_for(obj) else None)


# -- x0 prediction and the sampler ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["flow", "ddpm"])
def test_sample_prediction_targets_x0_and_inverts_to_itself(kind):
    x0, noise = torch.randn(3, *SHAPE), torch.randn(3, *SHAPE)
    u = torch.tensor([0.1, 0.5, 0.99])
    x_t, t01, target = noised(kind, x0, noise, u, prediction="sample")
    assert torch.equal(target, x0)
    assert torch.equal(predict_x0(kind, x_t, t01, target, prediction="sample"), target)
    native_xt, _, native = noised(kind, x0, noise, u)
    assert torch.equal(native_xt, x_t) and not torch.equal(native, x0)  # same forward process, other target
    with pytest.raises(ConfigError, match="tokenizer.prediction"):
        noised(kind, x0, noise, u, prediction="velocity" if kind == "ddpm" else "epsilon")


class _Oracle(torch.nn.Module):
    """A decoder that knows the clean latent: outputs x0 ("sample") or the exact velocity for x_t."""

    def __init__(self, x0: torch.Tensor, prediction: str) -> None:
        super().__init__()
        self.x0, self.config = x0, LoSTConfig(**TINY, prediction=prediction)

    def decode(self, cond, keep, x_t, t, drop=None):
        x0 = self.x0.repeat(len(x_t) // len(self.x0), 1, 1, 1)
        if self.config.prediction == "sample":
            return x0
        sigma = t.view(-1, 1, 1, 1)
        return (x_t - x0) / sigma  # v = noise - x0 with noise = (x_t - (1 - sigma) x0) / sigma


@pytest.mark.parametrize("prediction,kind", [("sample", "flow"), ("velocity", "flow"), ("sample", "ddpm")])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_sampler_lands_on_x0_with_an_oracle_decoder(prediction, kind, shift):
    if kind == "ddpm" and shift != 1.0:
        pytest.skip("the shift is a flow setting")
    x0 = torch.randn(2, *SHAPE)
    oracle = _Oracle(x0, prediction)
    out = sample_latents(oracle, torch.zeros(2, 8, 8), 8, steps=6, guidance=3.0, kind=kind, shift=shift,
                         generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)  # guidance mixes equal outputs: still x0


def test_sampler_shift_is_the_training_shift():
    """The sampler's sigmas follow the map sample_u applies to training times (diffusers' `shift`)."""
    sched = make_scheduler("flow", shift=3.0, for_sampling=True)
    sched.set_timesteps(10)
    y = sched.sigmas[:-1].double()
    s = y / (3 - 2 * y)  # undo s -> 3 s / (1 + 2 s): an evenly spaced grid from 1 down
    assert float(s[0]) == pytest.approx(1.0) and float(sched.sigmas[-1]) == 0.0
    torch.testing.assert_close(s.diff(), s.diff()[:1].expand(9), atol=1e-6, rtol=0)
    assert float(y[5]) > float(s[5]) + 0.1  # the steps crowd towards noise
    torch.manual_seed(0)
    u1 = sample_u(1000, "uniform")
    torch.manual_seed(0)
    u3 = sample_u(1000, "uniform", shift=3.0)
    torch.testing.assert_close(u3, 3 * u1 / (1 + 2 * u1))


def test_x0_task_trains_on_x0_and_exports_its_shift():
    task = _task("sample", time_shift=3.0)
    z = torch.randn(4, *SHAPE)
    torch.manual_seed(0)
    out = task({"z": z})
    # replay the draws: the denoise term is the MSE between the decoder output and the clean latent
    tok = task.tokenizer
    torch.manual_seed(0)
    x0 = tok.normalize(z)
    tokens = tok.encode(x0)
    keep, drop = tok.sample_keep(4, nested=True), tok.sample_drop(4)
    u = sample_u(4, "logit_normal", shift=3.0)
    x_t, t, _ = noised("flow", x0, torch.randn_like(x0), u)
    with torch.no_grad():
        want = F.mse_loss(tok.decode(tokens, keep, x_t, t, drop), x0)
    assert float(out["denoise"]) == pytest.approx(float(want), abs=1e-6)
    assert task.sampling_defaults()["shift"] == 3.0
    with pytest.raises(ConfigError, match="tokenizer.prediction"):
        _task("epsilon")  # flow cannot train epsilon


# -- the semantic loss ----------------------------------------------------------------------------------


def test_spatial_semantic_loss_by_hand():
    """Authors' form: the mean over samples and spatial tokens of 1 - cos between student tokens."""
    student = _student()
    task = _task(semantic_weight=1.0)
    tok = task.tokenizer
    g = torch.Generator().manual_seed(3)
    x0, x0_hat = torch.randn(2, *SHAPE, generator=g), torch.randn(2, *SHAPE, generator=g)
    with torch.no_grad():
        a = student.forward_features(student.normalize(tok.denormalize(x0_hat)))[1]  # [2, N, D]
        b = student.forward_features(student.normalize(tok.denormalize(x0)))[1]
    a, b = a.numpy(), b.numpy()
    total = 0.0
    for i in range(2):
        for n in range(a.shape[1]):
            total += 1 - (a[i, n] @ b[i, n]) / ((a[i, n] @ a[i, n]) ** 0.5 * (b[i, n] @ b[i, n]) ** 0.5)
    want = total / (2 * a.shape[1])
    assert float(semantic_loss(student, tok, x0_hat, x0, "spatial")) == pytest.approx(want, abs=1e-5)
    glob = float(semantic_loss(student, tok, x0_hat, x0, "global"))
    assert abs(glob - want) > 1e-3  # the two forms differ
    assert float(semantic_loss(student, tok, x0.clone(), x0, "spatial")) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("max_t,skip_dropped", [(1.0, False), (0.5, False), (1.0, True), (0.6, True)])
def test_semantic_gating_scores_only_the_chosen_samples(max_t, skip_dropped):
    task = _task(semantic_weight=1.0, semantic_max_t=max_t, semantic_skip_dropped=skip_dropped,
                 time_sampling="uniform")
    tok, student = task.tokenizer, task.student
    tok.config.cfg_drop_prob = 0.5  # plenty of dropped samples
    z = torch.randn(16, *SHAPE)
    torch.manual_seed(4)
    out = task({"z": z})
    torch.manual_seed(4)  # replay the draws
    x0 = tok.normalize(z)
    tokens = tok.encode(x0)
    keep, drop = tok.sample_keep(16, nested=True), tok.sample_drop(16)
    u = sample_u(16, "uniform")
    x_t, t, _ = noised("flow", x0, torch.randn_like(x0), u)
    use = (t <= max_t) & (~drop if skip_dropped else torch.ones_like(drop))
    assert 0 < int(use.sum()) <= 16 and (int(use.sum()) < 16) == ((max_t, skip_dropped) != (1.0, False))
    with torch.no_grad():
        x0_hat = predict_x0("flow", x_t, t, tok.decode(tokens, keep, x_t, t, drop))
        want = semantic_loss(student, tok, x0_hat[use], x0[use])
        everyone = semantic_loss(student, tok, x0_hat, x0)
    assert float(out["semantic"]) == pytest.approx(float(want), abs=1e-6)
    if (max_t, skip_dropped) != (1.0, False):
        assert abs(float(want) - float(everyone)) > 1e-5
    with pytest.raises(ConfigError, match="tokenizer.semantic_max_t"):
        _task(semantic_weight=1.0, semantic_max_t=0.0)
    with pytest.raises(ConfigError, match="tokenizer.semantic_form"):
        _task(semantic_weight=1.0, semantic_form="pixels")


def test_semantic_loss_with_no_eligible_sample_is_zero_and_connected():
    task = _task(semantic_weight=1.0, semantic_max_t=1e-9)
    out = task({"z": torch.randn(4, *SHAPE)})
    assert float(out["semantic"]) == 0.0 and out["loss"].requires_grad


# -- full-noise regression -------------------------------------------------------------------------------


def _replay_full_noise(task: TokenizerTask, z: torch.Tensor, seed: int):
    """Replays a flow step's draws from `seed` (the denoising pass's, then the full-noise pass's noise) and returns
    the normalised latents, the CFG drops and the full-noise pass's clean-latent estimate (no gradient)."""
    tok, n = task.tokenizer, z.shape[0]
    torch.manual_seed(seed)
    x0 = tok.normalize(z)
    tokens = tok.encode(x0)
    keep, drop = tok.sample_keep(n, nested=True), tok.sample_drop(n)
    target = tok.config.prediction
    noised("flow", x0, torch.randn_like(x0), sample_u(n, "logit_normal"), prediction=target)
    noise = torch.randn_like(x0)
    with torch.no_grad():  # sigma = 1: x_t is the noise itself, x0_hat = noise - v (velocity) or the output
        pred = tok.decode(tokens, keep, noise, torch.ones(n), drop)
    return x0, drop, noise - pred if target == "velocity" else pred


@pytest.mark.parametrize("prediction", ["auto", "sample"])
def test_full_noise_regression_by_hand(prediction):
    task = _task(prediction, x0_weight=0.7)
    tok = task.tokenizer
    tok.config.cfg_drop_prob = 0.5  # some samples dropped: they are left out of the term
    z = torch.randn(8, *SHAPE)
    torch.manual_seed(3)
    out = task({"z": z})
    x0, drop, x0_hat = _replay_full_noise(task, z, seed=3)
    err = (x0_hat - x0).pow(2).flatten(1).mean(1)
    assert 0 < int(drop.sum()) < 8
    want = err[~drop].mean()
    assert float(out["x0_regress"]) == pytest.approx(float(want), rel=1e-5)
    assert abs(float(want) - float(err.mean())) > 1e-6  # dropped samples really are left out
    assert float(out["loss"].detach()) == pytest.approx(float(out["denoise"]) + 0.7 * float(want), rel=1e-5)
    out["loss"].backward()
    assert tok.encoder.to_tokens.weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="tokenizer.x0_weight"):
        _task(x0_weight=-1.0)
    with pytest.raises(ConfigError, match="tokenizer.sample_temperature: must be a finite number >= 0"):
        _task(sample_temperature=-0.5)
    assert _task(sample_temperature=0.25).sampling_defaults()["temperature"] == 0.25
    with pytest.raises(ConfigError, match="tokenizer.x0_weight"):  # epsilon at pure noise: ill-posed
        TokenizerTask(LoSTTokenizer(LoSTConfig(**TINY, prediction="epsilon")),
                      TokenizerObjectiveConfig(scheduler="ddpm", semantic_weight=0.0, x0_weight=1.0))


@pytest.mark.parametrize("x0_weight,first", [(0.0, 0), (0.4, 0), (0.4, 2)])
def test_semantic_loss_on_the_full_noise_estimate_by_hand(x0_weight, first):
    """semantic_x0_weight: the semantic loss on the full-noise pass's x0 estimate, dropped samples left out (and
    only the first `semantic_batch` of the rest when set); the pass runs for it alone when x0_weight is 0."""
    task = _task(x0_weight=x0_weight, semantic_x0_weight=0.3, semantic_batch=first)
    tok, student = task.tokenizer, task.student
    tok.config.cfg_drop_prob = 0.5
    z = torch.randn(8, *SHAPE)
    torch.manual_seed(5)
    out = task({"z": z})
    x0, drop, x0_hat = _replay_full_noise(task, z, seed=5)
    with torch.no_grad():
        idx = (~drop).nonzero().flatten()[:first or None]
        want = semantic_loss(student, tok, x0_hat[idx], x0[idx])
        everyone = semantic_loss(student, tok, x0_hat, x0)
        regress = (x0_hat - x0).pow(2).flatten(1).mean(1)[~drop].mean()
    assert 0 < int(drop.sum()) < 8 - max(first, 1) and abs(float(want) - float(everyone)) > 1e-5
    assert float(out["semantic_x0"]) == pytest.approx(float(want), rel=1e-5)
    assert ("x0_regress" in out) == (x0_weight > 0)
    total = float(out["denoise"]) + 0.3 * float(want) + x0_weight * float(regress)
    assert float(out["loss"].detach()) == pytest.approx(total, rel=1e-5)
    out["loss"].backward()
    assert tok.encoder.to_tokens.weight.grad.abs().sum() > 0
    tok.config.cfg_drop_prob = 1.0  # every sample dropped: 0, still in the graph
    out = task({"z": z})
    assert float(out["semantic_x0"]) == 0.0 and out["loss"].requires_grad
    with pytest.raises(ConfigError, match="tokenizer.semantic_x0_weight: must be >= 0"):
        _task(semantic_x0_weight=-0.1)
    with pytest.raises(ConfigError, match="tokenizer.semantic_x0_weight: 0.3 needs the RIDA student"):
        TokenizerTask(tok, TokenizerObjectiveConfig(semantic_weight=0.0, semantic_x0_weight=0.3))


# -- the spectral metric (loss_whiten) -----------------------------------------------------------------


def _axis_data(n: int = 4000) -> torch.Tensor:
    """Latents [n, 1, 1, 4] with independent coordinates of variance 16, 4, 1 and 1e-6 (the principal axes)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    x = (x - x.mean(0)) / x.std(0)  # exactly unit sample variance per coordinate
    return (x * torch.tensor([4.0, 2.0, 1.0, 1e-3])).view(n, 1, 1, 4)


def test_latent_metric_weights_by_hand():
    x = _axis_data()
    lam = torch.tensor([16.0, 4.0, 1.0, 1e-6])
    # 99% of the variance (21.0 in all) is reached at the third axis: the fourth weighs as the third
    floored = torch.tensor([16.0, 4.0, 1.0, 1.0])
    m = LatentMetric(x, power=0.5)
    w = floored.pow(-0.5)
    w = w * lam.sum() / (w * lam).sum()
    assert torch.allclose(m.variance, lam, rtol=1e-3, atol=1e-5)
    assert torch.allclose(m.weights, w, rtol=1e-3)
    assert float((m.weights * m.variance).sum()) == pytest.approx(float(lam.sum()), rel=1e-4)
    # the error along an axis weighs that axis' weight / D (the basis vectors are the axes, up to sign)
    e = torch.eye(4).view(4, 1, 1, 4)
    assert torch.allclose(m(e), w / 4, rtol=1e-3)
    # power 0: plain per-sample MSE for any error
    err = torch.randn(5, 1, 1, 4)
    assert torch.allclose(LatentMetric(x, 0.0)(err), err.pow(2).flatten(1).mean(1), rtol=1e-5, atol=1e-6)
    # the large direction weighs less than under MSE, the small ones more
    assert float(m.weights[0]) < 1.0 < float(m.weights[2])
    # fewer latents than dimensions: an error outside their span weighs as the floor direction
    few = LatentMetric(x[:3], power=0.5)  # three latents span two directions after centring
    assert float(few.weights[0]) < 0.9 * float(few.rest_weight)  # the large direction weighs less than the rest
    off = torch.linalg.qr(torch.cat([few.basis[:, :2], torch.randn(4, 2)], dim=1))[0][:, 2:]  # orthogonal to them
    assert torch.allclose(few(off.T.reshape(2, 1, 1, 4)), few.rest_weight.expand(2) / 4, rtol=1e-4)


def test_whitened_loss_in_the_task_by_hand():
    task0 = _task(x0_weight=1.0)
    z = torch.randn(256, *SHAPE)  # more latents than dimensions (192): the basis spans the space
    metric = LatentMetric(task0.tokenizer.normalize(z), power=0.5)
    torch.manual_seed(0)
    obj = TokenizerObjectiveConfig(semantic_weight=0.0, nest_after=0, x0_weight=1.0, loss_whiten=0.5)
    task = TokenizerTask(task0.tokenizer, obj, metric=metric)
    tok = task.tokenizer
    batch = z[:8]
    torch.manual_seed(3)
    out = task({"z": batch})
    torch.manual_seed(3)  # replay the denoising pass
    x0 = tok.normalize(batch)
    tokens = tok.encode(x0)
    keep, drop = tok.sample_keep(8, nested=True), tok.sample_drop(8)
    u = sample_u(8, "logit_normal")
    x_t, t, target = noised("flow", x0, torch.randn_like(x0), u, prediction="velocity")
    with torch.no_grad():
        pred = tok.decode(tokens, keep, x_t, t, drop)
        e = (pred - target).flatten(1) @ metric.basis
        want = (e.pow(2) * metric.weights).mean(1).mean()
        plain = (pred - target).pow(2).mean()
    assert float(out["denoise"]) == pytest.approx(float(want), rel=1e-5)
    assert abs(float(want) - float(plain)) > 1e-4 * float(plain)  # the metric changed the loss
    assert "metric.basis" not in task.state_dict()  # rebuilt from the data, never saved
    # terms "x0": the denoising term stays plain MSE, the full-noise term is measured with the metric
    obj_x0 = TokenizerObjectiveConfig(semantic_weight=0.0, nest_after=0, x0_weight=1.0, loss_whiten=0.5,
                                      loss_whiten_terms="x0")
    task_x0 = TokenizerTask(tok, obj_x0, metric=metric)
    torch.manual_seed(3)
    out_x0 = task_x0({"z": batch})
    assert float(out_x0["denoise"]) == pytest.approx(float(plain), rel=1e-5)
    assert float(out_x0["x0_regress"]) == pytest.approx(float(out["x0_regress"]), rel=1e-5)
    with pytest.raises(ConfigError, match="tokenizer.loss_whiten_terms"):
        _task(loss_whiten_terms="denoise")
    with pytest.raises(ConfigError, match="tokenizer.loss_whiten"):
        TokenizerTask(task0.tokenizer, TokenizerObjectiveConfig(semantic_weight=0.0, loss_whiten=0.5))
    with pytest.raises(ConfigError, match="tokenizer.loss_whiten: must be in"):
        _task(loss_whiten=1.5)


def test_full_noise_regression_on_the_first_n_samples():
    """tokenizer.x0_batch: the regression pass decodes the batch's first n samples only (its noise drawn for
    those n), dropped ones still left out; the denoising term is unchanged; negative values are refused."""
    task = _task(x0_weight=1.0, x0_batch=3)
    tok = task.tokenizer
    tok.config.cfg_drop_prob = 0.3
    z = torch.randn(8, *SHAPE)
    torch.manual_seed(5)
    out = task({"z": z})
    torch.manual_seed(5)
    x0 = tok.normalize(z)
    tokens = tok.encode(x0)
    keep, drop = tok.sample_keep(8, nested=True), tok.sample_drop(8)
    u = sample_u(8, "logit_normal")
    x_t, t, target = noised("flow", x0, torch.randn_like(x0), u)
    noise = torch.randn(3, *SHAPE)
    with torch.no_grad():
        denoise = F.mse_loss(tok.decode(tokens, keep, x_t, t, drop), target)
        pred = tok.decode(tokens[:3], keep[:3], noise, torch.ones(3), drop[:3])
        err = (noise - pred - x0[:3]).pow(2).flatten(1).mean(1)
    use = ~drop[:3]
    assert int(use.sum()) >= 1
    assert float(out["denoise"]) == pytest.approx(float(denoise), rel=1e-5)
    assert float(out["x0_regress"]) == pytest.approx(float(err[use].mean()), rel=1e-5)
    with pytest.raises(ConfigError, match="tokenizer.x0_batch"):
        _task(x0_weight=1.0, x0_batch=-2)


def test_token_noise_reaches_both_decoder_passes_with_its_std():
    """tokenizer.token_noise: the denoising and the full-noise passes read encode(x0) + N(0, s^2), the same
    draw in both; 0 leaves the tokens exact; the encoder still gets gradients; negative values are refused."""
    seen = []
    for std in (0.0, 0.7):
        task = _task(x0_weight=1.0, token_noise=std)
        tok = task.tokenizer
        decode = tok.decode
        calls = []

        def spy(tokens, keep, x_t, t, drop=None, timesteps=False):
            calls.append(tokens.detach().clone())
            return decode(tokens, keep, x_t, t, drop, timesteps)

        tok.decode = spy
        z = torch.randn(64, *SHAPE)
        out = task({"z": z})
        clean = tok.encode(tok.normalize(z)).detach()
        assert len(calls) == 2 and torch.equal(calls[0], calls[1])
        noise = calls[0] - clean
        seen.append(float(noise.std()))
        out["loss"].backward()
        assert tok.encoder.to_tokens.weight.grad.abs().sum() > 0
    assert seen[0] == 0.0
    assert seen[1] == pytest.approx(0.7, rel=0.05)  # 64 x 8 x 8 draws
    with pytest.raises(ConfigError, match="tokenizer.token_noise"):
        _task(token_noise=-0.1)


# -- REPA-style alignment --------------------------------------------------------------------------------


def test_student_tokens_land_on_the_decoder_grid():
    """Plane-major student tokens (plane t, row i, column j) -> row-major patches of the rolled-out latent,
    where plane t's column j sits at column t * w + j."""
    student = _student(patch_size=2)  # 2 x 2 tokens per plane
    B, D, h = 1, 3, 2
    tokens = torch.arange(B * 3 * h * h * D, dtype=torch.float32).view(B, 3 * h * h, D)
    grid = student_tokens_on_grid(student, tokens, (2, 6))  # decoder: 2 x 6 patches of [4, 4, 12] at p = 2
    for t in range(3):
        for i in range(2):
            for j in range(2):
                torch.testing.assert_close(grid[0, i * 6 + t * 2 + j], tokens[0, t * 4 + i * 2 + j])
    pooled = student_tokens_on_grid(student, tokens, (1, 3))  # coarser decoder grid: each plane averaged
    torch.testing.assert_close(pooled[0, 1], tokens[0, 4:8].mean(dim=0))


def test_repa_term_by_hand_and_its_gradients():
    task = _task(repa_weight=0.5, repa_layer=1)
    tok, student = task.tokenizer, task.student
    z = torch.randn(4, *SHAPE)
    torch.manual_seed(2)
    out = task({"z": z})
    torch.manual_seed(2)  # replay
    x0 = tok.normalize(z)
    tokens = tok.encode(x0)
    keep, drop = tok.sample_keep(4, nested=True), tok.sample_drop(4)
    u = sample_u(4, "logit_normal")
    x_t, t, _ = noised("flow", x0, torch.randn_like(x0), u)
    with torch.no_grad():
        _, hidden = tok.decode_with_hidden(tokens, keep, x_t, t, drop, layer=1)
        ref = student.forward_features(student.normalize(tok.denormalize(x0)))[1]  # [4, 48, D]: p = 1
        ref = student_tokens_on_grid(student, ref, tok.config.grid)  # pooled to 2 x 6 patches
        want = (1 - F.cosine_similarity(task.projector(hidden), ref, dim=-1)).mean()
    assert float(out["repa"]) == pytest.approx(float(want), abs=1e-6)
    assert float(out["loss"].detach()) == pytest.approx(float(out["denoise"]) + 0.5 * float(want), abs=1e-5)
    out["loss"].backward()
    assert task.projector.mlp[0].weight.grad.abs().sum() > 0
    assert tok.decoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in student.parameters())
    with pytest.raises(ConfigError, match="tokenizer.repa_layer"):
        _task(repa_weight=1.0, repa_layer=3)  # the decoder has 2 blocks


def test_decode_with_hidden_matches_decode():
    task = _task()
    tok = task.tokenizer
    x = torch.randn(2, *SHAPE)
    tokens, keep, t = tok.encode(x), torch.tensor([1, 8]), torch.tensor([0.3, 0.9])
    out, h0 = tok.decode_with_hidden(tokens, keep, x, t, None, layer=0)
    torch.testing.assert_close(out, tok.decode(tokens, keep, x, t))
    assert h0.shape == (2, 12, 32)


# -- registers -------------------------------------------------------------------------------------------


def test_wider_register_init_starts_the_tokens_apart():
    def mean_cosine(std: float) -> float:
        torch.manual_seed(0)
        model = LoSTTokenizer(LoSTConfig(latent_shape=[8, 8, 24], patch_size=2, enc_width=128, enc_depth=4,
                                         num_registers=32, dec_depth=1, register_init_std=std))  # the tiny encoder
        with torch.no_grad():
            tok = F.normalize(model.encode(torch.randn(8, 8, 8, 24)), dim=-1)
        sim = tok @ tok.transpose(1, 2)
        return float(sim[:, ~torch.eye(32, dtype=torch.bool)].mean())

    assert mean_cosine(0.02) > 0.9  # near-copies at init
    assert mean_cosine(0.5) < 0.8
    with pytest.raises(ConfigError, match="register_init_std"):
        LoSTConfig(**TINY, register_init_std=0.0)
