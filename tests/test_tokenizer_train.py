"""The tokenizer stage: training lowers the denoise loss, nested dropout switches on at nest_after, the
semantic loss (frozen RIDA student), recipes, and `lost tokenizer train` on a tiny store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lostcli.cli import tokenizer as tokenizer_cli
from lostcli.config import load_config
from lostcli.data.latents import open_latents
from lostcli.data.store import DatasetStore, ShardWriter
from lostcli.errors import ConfigError, DataError
from lostcli.models.flow import noised, predict_x0, sample_u
from lostcli.models.lost import LoSTConfig, LoSTTokenizer, build_tokenizer
from lostcli.models.rida import build_student
from lostcli.train.tokenizer import (TokenizerObjectiveConfig, TokenizerRunConfig, TokenizerTask, build_task,
                                     semantic_loss)

REPO = Path(__file__).resolve().parents[1]
SHAPE = [4, 4, 12]  # a tiny triplane: three 4 x 4 planes side by side
TINY = dict(latent_shape=SHAPE, patch_size=2, enc_width=32, enc_depth=1, enc_heads=2, num_registers=8,
            token_dim=8, dec_width=32, dec_depth=2, dec_heads=2)
STUDENT = dict(latent_channels=4, plane_res=4, width=32, depth=1, heads=2, out_dim=16)


pytestmark = pytest.mark.usefixtures("one_thread")


def _latents(n: int = 16, seed: int = 0) -> torch.Tensor:
    """Raw latents [n, 4, 4, 12] with structure (a few prototypes) and a non-trivial per-channel offset."""
    gen = torch.Generator().manual_seed(seed)
    protos = torch.randn(4, *SHAPE, generator=gen)
    z = protos[torch.arange(n) % 4] + 0.3 * torch.randn(n, *SHAPE, generator=gen)
    scale, shift = torch.tensor([1.0, 2.0, 0.5, 1.5]), torch.tensor([0.5, -1.0, 0.0, 2.0])
    return z * scale.view(1, 4, 1, 1) + shift.view(1, 4, 1, 1)


def _stats(z: torch.Tensor) -> tuple[list[float], list[float]]:
    flat = z.permute(1, 0, 2, 3).reshape(z.shape[1], -1)
    return flat.mean(1).tolist(), flat.std(1).tolist()


def _task(z: torch.Tensor, semantic_weight: float = 0.0, nest_after: int = 0, **objective) -> TokenizerTask:
    torch.manual_seed(0)
    tokenizer = LoSTTokenizer(LoSTConfig(**TINY))
    tokenizer.set_latent_stats(*_stats(z))
    student = None
    if semantic_weight > 0:
        student = build_student("rida_tiny", **STUDENT)
        student.set_latent_stats([0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 1.0, 2.0])  # its own normalisation
    obj = TokenizerObjectiveConfig(semantic_weight=semantic_weight, nest_after=nest_after, **objective)
    return TokenizerTask(tokenizer, obj, student)


def _eval_denoise(task: TokenizerTask, z: torch.Tensor) -> float:
    """Denoise loss under fixed draws (noise, t, keep, drop), averaged over a few repeats."""
    torch.manual_seed(123)
    with torch.no_grad():
        return float(sum(task({"z": z})["denoise"] for _ in range(4)) / 4)


@pytest.mark.parametrize("semantic_weight", [0.0, 1.0])
def test_thirty_steps_lower_the_denoise_loss(semantic_weight):
    z = _latents(16)
    task = _task(z, semantic_weight=semantic_weight)
    before = _eval_denoise(task, z)
    opt = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=5e-3)
    torch.manual_seed(1)
    for step in range(30):
        task.on_step_start(step, epoch=step // 4)
        out = task({"z": z})
        assert torch.isfinite(out["loss"])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    after = _eval_denoise(task, z)
    assert after < 0.9 * before, (before, after)
    assert ("semantic" in out) == (semantic_weight > 0)


def test_nested_dropout_starts_at_nest_after():
    z = _latents(64)
    task = _task(z, nest_after=2)
    R = task.tokenizer.num_registers
    for step, epoch, nested in ((0, 0, False), (9, 1, False), (10, 2, True), (50, 7, True)):
        task.on_step_start(step, epoch)
        torch.manual_seed(step)
        with torch.no_grad():
            keep_mean = float(task({"z": z})["keep_mean"])
        if nested:
            assert keep_mean < R - 1  # a mix of prefix lengths from {1, 2, 4, 8}
        else:
            assert keep_mean == R  # every register kept; the causal mask stays in the encoder
    # the draws themselves: uniform over {1, 2, 4, 8} once nested
    torch.manual_seed(0)
    keep = task.tokenizer.sample_keep(4000, nested=True)
    counts = torch.stack([(keep == k).float().mean() for k in (1, 2, 4, 8)])
    assert set(keep.unique().tolist()) == {1, 2, 4, 8} and (counts - 0.25).abs().max() < 0.03


def test_semantic_loss_values_and_gradients():
    z = _latents(6)
    task = _task(z, semantic_weight=1.0)
    tok, student = task.tokenizer, task.student
    x0 = tok.normalize(z)
    assert float(semantic_loss(student, tok, x0.clone(), x0)) == pytest.approx(0.0, abs=1e-6)
    other = tok.normalize(_latents(6, seed=5))
    value = float(semantic_loss(student, tok, other, x0, form="global"))
    # the student reads ITS normalisation of the raw latents, not the tokenizer-normalised ones
    with torch.no_grad():
        a = student.embed(student.normalize(tok.denormalize(other)))
        b = student.embed(student.normalize(z))
    assert value == pytest.approx(float((1 - (a * b).sum(-1)).mean()), abs=1e-5) and 0.0 < value <= 2.0
    with torch.no_grad():
        wrong = float((1 - (student.embed(other) * student.embed(x0)).sum(-1)).mean())
    assert abs(wrong - value) > 1e-4
    # the default (the authors' form): 1 - cos per spatial token of the student, averaged over tokens
    spatial = float(semantic_loss(student, tok, other, x0))
    with torch.no_grad():
        _, pa = student.forward_features(student.normalize(tok.denormalize(other)))
        _, pb = student.forward_features(student.normalize(z))
    by_hand = 1 - (pa * pb).sum(-1) / (pa.norm(dim=-1) * pb.norm(dim=-1))  # [B, N]
    assert pa.shape[1] > 1 and spatial == pytest.approx(float(by_hand.mean()), abs=1e-5)
    assert abs(spatial - value) > 1e-4

    # the full task: gradient into the tokenizer, none into the frozen student, student stays in eval
    with torch.no_grad():  # off the adaLN-Zero / zero-output init, so the condition reaches the output
        for p in tok.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    task.train()
    assert task.tokenizer.training and not student.training
    torch.manual_seed(0)
    out = task({"z": z})
    out["loss"].backward()
    assert all(p.grad is None for p in student.parameters())
    assert task.tokenizer.encoder.to_tokens.weight.grad.abs().sum() > 0
    # the semantic term alone sends gradient to the decoder (through x0_hat)
    task.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    x0 = tok.normalize(z)
    x_t, t, _ = noised("flow", x0, torch.randn_like(x0), torch.full((6,), 0.5))
    pred = tok.decode(tok.encode(x0), torch.full((6,), 8), x_t, t)
    semantic_loss(student, tok, predict_x0("flow", x_t, t, pred), x0).backward()
    assert task.tokenizer.decoder.final_layer.linear.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in student.parameters())
    trainable = {id(p) for p in task.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in tok.parameters()}  # the optimizer sees the tokenizer only


def test_semantic_batch_scores_the_first_n_samples():
    z = _latents(8)
    whole, part = _task(z, semantic_weight=1.0), _task(z, semantic_weight=1.0, semantic_batch=3)
    with torch.no_grad():  # off the zero-output init, so x0_hat depends on the sample
        for p in whole.tokenizer.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    part.load_state_dict(whole.state_dict())
    tok, student = whole.tokenizer, whole.student
    outs = []
    for task in (whole, part):
        torch.manual_seed(0)  # the same keep / drop / time / noise draws in both
        outs.append(task({"z": z}))
    # reproduce the draws: the semantic term of `part` is the loss of the batch's first 3 samples alone
    torch.manual_seed(0)
    x0 = tok.normalize(z)
    tokens = tok.encode(x0)
    keep, drop = tok.sample_keep(8, nested=True), tok.sample_drop(8)
    u = sample_u(8, "logit_normal", shift=1.0)
    x_t, t, _ = noised("flow", x0, torch.randn_like(x0), u)
    with torch.no_grad():
        x0_hat = predict_x0("flow", x_t, t, tok.decode(tokens, keep, x_t, t, drop))
        first3 = float(semantic_loss(student, tok, x0_hat[:3], x0[:3]))
        all8 = float(semantic_loss(student, tok, x0_hat, x0))
    assert float(outs[1]["semantic"]) == pytest.approx(first3, abs=1e-6)
    assert float(outs[0]["semantic"]) == pytest.approx(all8, abs=1e-6) and abs(first3 - all8) > 1e-5
    assert float(outs[0]["denoise"]) == pytest.approx(float(outs[1]["denoise"]), abs=1e-7)  # denoise: whole batch
    with pytest.raises(ConfigError, match="tokenizer.semantic_batch"):
        _task(z, semantic_weight=1.0, semantic_batch=-1)


def test_task_checks():
    z = _latents(4)
    with pytest.raises(ConfigError, match="tokenizer.semantic_weight"):
        TokenizerTask(LoSTTokenizer(LoSTConfig(**TINY)), TokenizerObjectiveConfig(semantic_weight=1.0), None)
    with pytest.raises(ConfigError, match="tokenizer.prediction"):  # a velocity decoder under a DDPM objective
        TokenizerTask(LoSTTokenizer(LoSTConfig(**TINY)), TokenizerObjectiveConfig(scheduler="ddpm", semantic_weight=0))
    with pytest.raises(ConfigError, match="tokenizer.nest_after"):
        _task(z, nest_after=-1)
    task = TokenizerTask(LoSTTokenizer(LoSTConfig(**{**TINY, "prediction": "epsilon"})),
                         TokenizerObjectiveConfig(scheduler="ddpm", semantic_weight=0))
    out = task({"z": z})
    assert torch.isfinite(out["loss"]) and set(out) == {"loss", "denoise", "keep_mean"}


# -- recipes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,preset,registers", [("tiny", "lost_tiny", 32), ("paper", "lost_paper", 512),
                                                    ("trellis", "lost_trellis", 512)])
def test_recipes_load_and_build(name, preset, registers):
    cfg = load_config(TokenizerRunConfig, REPO / "recipes" / name / "tokenizer.yaml")
    # the paper's lambda = 1 at paper scale; the tiny recipe scales it down (its gradient dwarfs the denoising one)
    assert cfg.model.preset == preset and cfg.tokenizer.semantic_weight == (0.1 if name == "tiny" else 1.0)
    assert cfg.tokenizer.semantic_form == "spatial"  # the authors' form
    assert cfg.tokenizer.scheduler == "flow"
    if name == "tiny":  # measured on the built-in set: a cold, short, unguided decode (the paper's: 25, 1.0, > 1)
        assert (cfg.tokenizer.sample_steps, cfg.tokenizer.sample_temperature, cfg.tokenizer.guidance) == (5, 0.0, 1.0)
    else:
        assert cfg.tokenizer.guidance > 1.0 and cfg.tokenizer.sample_temperature == 1.0
    model = build_tokenizer(cfg.model.preset, device="meta", **cfg.model.overrides)
    assert model.num_registers == registers and model.config.token_dim == 32
    if name == "paper":  # DiT-L/2 decoder, 250 epochs with the first 50 un-nested, effective batch 256 on 8 GPUs
        c = model.config
        assert (c.dec_depth, c.dec_width, c.dec_heads, c.patch_size) == (24, 1024, 16, 2)
        assert cfg.tokenizer.nest_after == 50 and cfg.train.batch_size * 8 * cfg.train.grad_accum == 256
        assert cfg.train.steps == 250 * (300_000 // 256)
    if name == "tiny":
        assert 0 < cfg.tokenizer.nest_after < cfg.train.steps // (806 // cfg.train.batch_size)


# -- the command --------------------------------------------------------------------------------------


def _write_store(root: Path, n: int = 32) -> Path:
    z = _latents(n, seed=3)
    splits = ["train"] * 24 + ["test"] * (n - 24)
    with ShardWriter(root, "items", shard_size=16) as w:
        for i in range(n):
            w.add(f"s{i:03d}", {"dummy": np.zeros(1, np.float32)}, {"split": splits[i]})
    with ShardWriter(root, "latents", shard_size=16) as w:
        for i in range(n):
            w.add(f"s{i:03d}", {"z": z[i].numpy()}, {"split": splits[i]})
    mean, std = _stats(z[:24])
    DatasetStore(root).write_stats("latents", {"mean": mean, "std": std, "latent_shape": SHAPE})
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return _write_store(tmp_path_factory.mktemp("tok") / "data")


@pytest.fixture(scope="module")
def rida_export(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    student = build_student("rida_tiny", **STUDENT)
    student.set_latent_stats([0.5, -1.0, 0.0, 2.0], [1.0, 2.0, 0.5, 1.5])
    out = tmp_path_factory.mktemp("rida") / "export"
    student.save_pretrained(out, extra_config={"objective": "rida", "teacher": {"name": "synthetic"}})
    return out


def _run(*args) -> str:
    result = CliRunner().invoke(tokenizer_cli.app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


COMMON = ["--recipe", REPO / "recipes" / "tiny" / "tokenizer.yaml",
          "--set", "model.overrides={enc_width: 32, enc_depth: 1, enc_heads: 2, num_registers: 8, token_dim: 8, "
                   "dec_width: 32, dec_depth: 1, dec_heads: 2}",
          "--set", "train.batch_size=8", "--set", "train.steps=4", "--set", "train.log_every=1",
          "--set", "train.save_every=0", "--set", "optim.warmup_steps=0", "--set", "tokenizer.nest_after=1"]


def test_cli_train_writes_an_export(store, rida_export, tmp_path):
    out = _run("train", "--data", store, "--rida", rida_export, "--out", tmp_path / "run", *COMMON)
    assert "export" in out
    export = tmp_path / "run" / "export"
    meta = json.loads((export / "config.json").read_text())
    assert meta["sampling"] == {"scheduler": "flow", "steps": 5, "guidance": 1.0, "temperature": 0.0,
                                "num_train_timesteps": 1000,
                                "shift": 3.0}  # the sampler shifts times as training did
    assert meta["rida"]["path"] == str(rida_export) and meta["rida"]["teacher"] == {"name": "synthetic"}
    assert meta["run"]["tokenizer"]["semantic_weight"] == 0.1 and meta["config"]["latent_shape"] == SHAPE
    mean, std = _stats(_latents(32, seed=3)[:24])
    np.testing.assert_allclose(meta["latent_stats"]["mean"], mean, rtol=1e-5)
    model = LoSTTokenizer.from_pretrained(tmp_path / "run")
    assert model.num_registers == 8 and model.config.prediction == "velocity"
    assert not any(k.startswith("student") for k in model.state_dict())  # the student is not exported
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(np.isfinite(r["semantic"]) for r in rows)
    assert [r["keep_mean"] for r in rows[:3]] == [8.0] * 3  # epoch 0 (3 steps of 8 of 24 items): all kept
    assert rows[3]["epoch"] == 1 and all(np.isfinite(r["denoise"]) for r in rows)


def test_cli_without_semantic_loss_needs_no_rida(store, tmp_path):
    # the tiny recipe's semantic loss has two terms (the gated denoising one and the full-noise one): both off
    with pytest.raises(ConfigError, match="tokenizer.semantic_x0_weight: 0.1 needs the RIDA student"):
        CliRunner().invoke(tokenizer_cli.app, ["train", "--data", str(store), "--out", str(tmp_path / "half"),
                                               *map(str, COMMON), "--set", "tokenizer.semantic_weight=0"],
                           catch_exceptions=False)
    _run("train", "--data", store, "--out", tmp_path / "plain", *COMMON, "--set", "tokenizer.semantic_weight=0",
         "--set", "tokenizer.semantic_x0_weight=0")
    rows = [json.loads(line) for line in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and "semantic" not in rows[0] and "semantic_x0" not in rows[0] and "denoise" in rows[0]
    meta = json.loads((tmp_path / "plain" / "export" / "config.json").read_text())
    assert meta["rida"] is None


def test_cli_errors(store, rida_export, tmp_path):
    with pytest.raises(ConfigError, match="--rida"):  # and no run directory is left behind
        CliRunner().invoke(tokenizer_cli.app, ["train", "--data", str(store), "--out", str(tmp_path / "a"),
                                               *map(str, COMMON)], catch_exceptions=False)
    assert not (tmp_path / "a").exists()
    with pytest.raises(ConfigError, match="tokenizer.scheduler"):
        CliRunner().invoke(tokenizer_cli.app, ["train", "--data", str(store), "--out", str(tmp_path / "b"),
                                               "--set", "tokenizer.scheduler=edm"], catch_exceptions=False)
    bare = tmp_path / "bare"
    with ShardWriter(bare, "items") as w:
        w.add("a", {"dummy": np.zeros(1, np.float32)}, {"split": "train"})
    with pytest.raises(DataError, match="no 'latents' table"):
        open_latents(bare)
    wrong = tmp_path / "wrong_rida"
    build_student("rida_tiny", **{**STUDENT, "plane_res": 2}).save_pretrained(wrong)
    with pytest.raises(ConfigError, match="RIDA student reads latents"):
        CliRunner().invoke(tokenizer_cli.app, ["train", "--data", str(store), "--rida", str(wrong), "--out",
                                               str(tmp_path / "c"), *map(str, COMMON)], catch_exceptions=False)


def test_killed_run_resumes_to_the_same_weights(store, rida_export, tmp_path):
    """Checkpoints carry the frozen student too; nested dropout after resume follows the epoch."""
    from conftest import Killed, kill_before_step
    from lostcli.train.loop import seed_everything, train

    cfg = load_config(TokenizerRunConfig, REPO / "recipes" / "tiny" / "tokenizer.yaml",
                      [str(s) for s in COMMON[3::2]] + ["train.steps=5", "train.save_every=2", f"rida={rida_export}"])
    dataset, stats = open_latents(store)

    def run(out: Path, kill_at: int | None = None, **kw):
        seed_everything(cfg.train.seed)
        task = build_task(cfg, dataset, stats)
        if kill_at is not None:
            kill_before_step(task, kill_at)
        train(task, dataset, cfg.train, cfg.optim, out, progress=False, **kw)
        return LoSTTokenizer.from_pretrained(out).state_dict() if (out / "export").is_dir() else None

    whole = run(tmp_path / "whole")
    with pytest.raises(Killed):
        run(tmp_path / "cut", kill_at=3)  # killed after step 3; newest checkpoint: step 2
    resumed = run(tmp_path / "cut", resume=True)
    for k, v in whole.items():
        torch.testing.assert_close(resumed[k], v, msg=k)
    rows = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5] and rows[4]["keep_mean"] < 8
