"""The shared training loop: learning, exact resume, rotation, accumulation, schedules, export, data order."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import Dataset

from conftest import Killed, kill_before_step
from lostcli.config import OptimConfig, TrainConfig
from lostcli.errors import ConfigError, DataError
from lostcli.train import state as st
from lostcli.train.loop import Task, seed_everything, train


pytestmark = pytest.mark.usefixtures("one_thread")


class RegressionSet(Dataset):
    """y = x @ w + 0.05 noise, fixed at construction (deterministic per index)."""

    def __init__(self, n: int = 64) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.05 * torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


class MlpTask(Task):
    """A 2-layer MLP regression; `random=True` adds dropout and input noise (global torch RNG)."""

    def __init__(self, random: bool = False) -> None:
        super().__init__()
        self.random = random
        self.net = nn.Sequential(nn.Linear(4, 32), nn.GELU(), nn.Dropout(0.2 if random else 0.0), nn.Linear(32, 1))
        self.frozen = nn.Linear(4, 4)  # a frozen sub-model: no optimizer state, no EMA
        self.frozen.requires_grad_(False)
        self.calls: list[tuple[int, int]] = []

    def on_step_start(self, step: int, epoch: int) -> None:
        self.calls.append((step, epoch))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["x"]
        if self.random:
            x = x + 0.1 * torch.randn_like(x)
        pred = self.net(x + 0.0 * self.frozen(x))
        loss = ((pred - batch["y"]) ** 2).mean()
        return {"loss": loss, "mae": (pred - batch["y"]).abs().mean().detach()}

    def export(self, out_dir: Path) -> None:
        (out_dir / "config.json").write_text(json.dumps({"hidden": 32}))
        save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, str(out_dir / "model.safetensors"))


def make_task(seed: int = 0, random: bool = False) -> MlpTask:
    seed_everything(seed)
    return MlpTask(random)


def tcfg(**kw) -> TrainConfig:
    base = dict(steps=20, batch_size=8, log_every=1, save_every=0, keep_checkpoints=2, ema_decay=0.0,
                mixed_precision="no", seed=0)
    return TrainConfig(**{**base, **kw})


def ocfg(**kw) -> OptimConfig:
    return OptimConfig(**{**dict(lr=1e-2, warmup_steps=0, schedule="constant", grad_clip=1.0), **kw})


def params_of(task: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in task.state_dict().items()}


def metric_rows(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------------------------------


def test_loss_falls(tmp_path):
    res = train(make_task(), RegressionSet(), tcfg(steps=50), ocfg(), tmp_path, progress=False)
    assert res.steps == 50 and len(res.losses) == 50
    assert res.final_loss == res.losses[-1]
    assert res.final_loss < 0.3 * res.losses[0], res.losses


def test_exact_resume_matches_uninterrupted_run(tmp_path):
    cfg = tcfg(steps=20, save_every=5, ema_decay=0.9)
    ds = RegressionSet(40)  # 5 steps per epoch: the run crosses epochs
    full = make_task(random=True)
    train(full, ds, cfg, ocfg(weight_decay=0.1), tmp_path / "a", progress=False)

    part = kill_before_step(make_task(random=True), 13)  # dies after 13 steps
    with pytest.raises(Killed):
        train(part, ds, cfg, ocfg(weight_decay=0.1), tmp_path / "b", progress=False)
    assert [s for s, _ in st.list_checkpoints(tmp_path / "b")] == [5, 10]
    assert len(metric_rows(tmp_path / "b")) == 13  # steps 11..13 were logged but never saved
    with (tmp_path / "b" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 14, "lo')  # a line cut short by the kill

    # Different init and RNG state: everything must come from the checkpoint.
    resumed = make_task(seed=123, random=True)
    res = train(resumed, ds, cfg, ocfg(weight_decay=0.1), tmp_path / "b", resume=True, progress=False)
    assert res.steps == 20 and len(res.losses) == 10
    assert resumed.calls == [(s, s // 5) for s in range(10, 20)]  # hook sees step and derived epoch

    a, b = params_of(full), params_of(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ema_a = load_file(str(tmp_path / "a" / "export" / "model.safetensors"))
    ema_b = load_file(str(tmp_path / "b" / "export" / "model.safetensors"))
    for k in ema_a:
        assert torch.equal(ema_a[k], ema_b[k]), k
    assert not torch.equal(ema_a["0.weight"], a["net.0.weight"])  # the export holds EMA, not raw weights
    rows_a, rows_b = metric_rows(tmp_path / "a"), metric_rows(tmp_path / "b")
    assert [r["step"] for r in rows_b] == list(range(1, 21))
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]

    # The random draws matter: another seed gives other weights, so the equality above is not vacuous.
    other = make_task(random=True)
    train(other, ds, tcfg(steps=20, seed=1, ema_decay=0.9), ocfg(weight_decay=0.1), tmp_path / "c",
          progress=False)
    assert not torch.equal(params_of(other)["net.0.weight"], a["net.0.weight"])


def test_rotation_keeps_newest_and_no_tmp(tmp_path):
    stale = st.checkpoint_root(tmp_path) / "step-0000001.tmp"  # a half-written save of a killed run
    stale.mkdir(parents=True)
    train(make_task(), RegressionSet(), tcfg(steps=10, save_every=3, keep_checkpoints=2), ocfg(), tmp_path,
          progress=False)
    names = sorted(p.name for p in st.checkpoint_root(tmp_path).iterdir())
    assert names == ["step-0000009", "step-0000010"]
    state = st.read_state(st.latest_checkpoint(tmp_path))
    assert state["step"] == 10 and state["epoch"] == 1 and state["global_batch"] == 8
    assert math.isfinite(state["loss"])


def test_grad_accum_matches_larger_batch(tmp_path):
    ds = RegressionSet(48)
    init = make_task()
    big, acc = make_task(), make_task()
    train(big, ds, tcfg(steps=3, batch_size=8, grad_accum=1), ocfg(weight_decay=0.1), tmp_path / "a",
          progress=False)
    train(acc, ds, tcfg(steps=3, batch_size=4, grad_accum=2), ocfg(weight_decay=0.1), tmp_path / "b",
          progress=False)
    p_init, p_big, p_acc = params_of(init), params_of(big), params_of(acc)
    assert not torch.allclose(p_big["net.0.weight"], p_init["net.0.weight"])
    for k in p_big:
        assert torch.allclose(p_big[k], p_acc[k], atol=1e-6), k
    assert torch.equal(p_big["frozen.weight"], p_init["frozen.weight"])  # frozen stays frozen


def test_cosine_and_constant_schedules(tmp_path):
    peak, warm, steps = 1e-2, 4, 20
    train(make_task(), RegressionSet(), tcfg(steps=steps), ocfg(lr=peak, warmup_steps=warm, schedule="cosine"),
          tmp_path / "cos", progress=False)
    lrs = [r["lr"] for r in metric_rows(tmp_path / "cos")]  # lr used by steps 0..19
    assert lrs[0] == 0.0 and lrs[2] == pytest.approx(peak * 2 / warm)
    assert lrs[warm] == pytest.approx(peak)
    assert lrs[12] == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi * (12 - warm) / (steps - warm))))
    assert lrs[-1] < 0.02 * peak and all(a >= b for a, b in zip(lrs[warm:], lrs[warm + 1 :]))

    train(make_task(), RegressionSet(), tcfg(steps=8), ocfg(lr=peak, warmup_steps=2, schedule="constant"),
          tmp_path / "const", progress=False)
    lrs = [r["lr"] for r in metric_rows(tmp_path / "const")]
    assert lrs[:2] == [0.0, pytest.approx(peak / 2)] and lrs[2:] == [pytest.approx(peak)] * 6


def test_export_metrics_and_run_json(tmp_path):
    run_config = {"model": {"hidden": 32}, "train": {"steps": 7}}
    res = train(make_task(), RegressionSet(), tcfg(steps=7, log_every=3, ema_decay=0.5), ocfg(), tmp_path,
                run_config=run_config, progress=False)
    assert res.export_dir == tmp_path / "export"
    assert sorted(p.name for p in res.export_dir.iterdir()) == ["config.json", "model.safetensors",
                                                                "run_config.json"]
    assert json.loads((res.export_dir / "run_config.json").read_text()) == run_config
    assert set(load_file(str(res.export_dir / "model.safetensors"))) == {"0.weight", "0.bias", "3.weight", "3.bias"}
    rows = metric_rows(tmp_path)
    assert [r["step"] for r in rows] == [3, 6, 7]  # every log_every steps, and the last step
    for r in rows:
        assert {"loss", "lr", "grad_norm", "mae", "epoch", "samples_per_s", "seconds"} <= set(r)
        assert r["loss"] > 0 and r["grad_norm"] > 0 and r["lr"] == pytest.approx(1e-2)
    assert res.losses == [r["loss"] for r in rows]
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["argv"] == sys.argv and run["run_config"] == run_config
    assert run["loop"]["train"]["steps"] == 7 and len(run["invocations"]) == 1


def test_resume_edge_cases(tmp_path):
    cfg = tcfg(steps=6, save_every=3)
    # Resume with nothing to resume from: a fresh run.
    res = train(make_task(), RegressionSet(), cfg, ocfg(), tmp_path, resume=True, progress=False)
    assert res.steps == 6 and len(res.losses) == 6
    # A fresh run into a directory with checkpoints is refused, naming the directory.
    with pytest.raises(ConfigError, match=str(tmp_path)):
        train(make_task(), RegressionSet(), cfg, ocfg(), tmp_path, progress=False)
    # Resuming a finished run only re-exports.
    (tmp_path / "export" / "model.safetensors").unlink()
    before = sorted(p.name for p in st.checkpoint_root(tmp_path).iterdir())
    res2 = train(make_task(), RegressionSet(), cfg, ocfg(), tmp_path, resume=True, progress=False)
    assert res2.steps == 6 and res2.losses == [] and res2.final_loss == pytest.approx(res.final_loss)
    assert (tmp_path / "export" / "model.safetensors").is_file()
    assert sorted(p.name for p in st.checkpoint_root(tmp_path).iterdir()) == before
    assert len(metric_rows(tmp_path)) == 6
    assert len(json.loads((tmp_path / "run.json").read_text())["invocations"]) == 2


def test_bad_settings_fail_clearly(tmp_path):
    with pytest.raises(ConfigError, match=r"^train\.keep_checkpoints: must be >= 1"):
        train(make_task(), RegressionSet(), tcfg(keep_checkpoints=0), ocfg(), tmp_path, progress=False)
    with pytest.raises(ConfigError, match=r"^optim\.schedule"):
        train(make_task(), RegressionSet(), tcfg(), ocfg(schedule="linear"), tmp_path, progress=False)
    with pytest.raises(DataError, match="fewer than one global batch of 16"):
        train(make_task(), RegressionSet(10), tcfg(grad_accum=2), ocfg(), tmp_path, progress=False)


def test_sampler_splits_global_batch_between_ranks():
    sched = st.make_schedule(50, batch_size=3, world_size=2, grad_accum=2, seed=7)
    assert sched.global_batch == 12 and sched.steps_per_epoch == 4
    for step in range(8):
        glob = sched.step_indices(step).tolist()
        seen = []
        for micro in range(2):
            r0, r1 = sched.micro_batch(step, micro, 0), sched.micro_batch(step, micro, 1)
            assert len(r0) == len(r1) == 3 and not set(r0) & set(r1)
            seen += r0 + r1
        assert seen == glob  # disjoint per rank, together exactly the global batch, in order
    epoch0 = sum((sched.step_indices(s).tolist() for s in range(4)), [])
    assert len(set(epoch0)) == 48  # no repeats within an epoch; the incomplete tail (2) is dropped
    assert sched.step_indices(4).tolist() != sched.step_indices(0).tolist()  # a new permutation per epoch
    assert torch.equal(sched.permutation(1), st.make_schedule(50, 3, 2, 2, seed=7).permutation(1))
    assert not torch.equal(st.make_schedule(50, 3, 2, 2, seed=0).permutation(1),
                           st.make_schedule(50, 3, 2, 2, seed=1).permutation(0))

    # The per-rank sampler yields exactly these micro-batches, and starting at step s yields the tail.
    for rank in (0, 1):
        full = list(st.StepBatchSampler(sched, rank, 0, 8))
        assert full == [sched.micro_batch(s, m, rank) for s in range(8) for m in range(2)]
        assert list(st.StepBatchSampler(sched, rank, 5, 8)) == full[10:]
        assert len(st.StepBatchSampler(sched, rank, 5, 8)) == 6


def test_precision_can_change_between_runs_in_one_process(tmp_path):
    # fp32 then bf16 autocast (on CPU here, on GPU in real runs) in the same process, as `lost demo` does.
    r32 = train(make_task(), RegressionSet(), tcfg(steps=2), ocfg(), tmp_path / "fp32", progress=False)
    r16 = train(make_task(), RegressionSet(), tcfg(steps=2, mixed_precision="bf16"), ocfg(), tmp_path / "bf16",
                progress=False)
    assert json.loads((tmp_path / "bf16" / "run.json").read_text())["invocations"][0]["mixed_precision"] == "bf16"
    assert math.isfinite(r16.final_loss)
    assert r16.losses[0] == pytest.approx(r32.losses[0], rel=0.05)  # same data and init, bf16 rounding only
    assert r16.losses[0] != r32.losses[0]  # autocast really ran


class ScoredTask(MlpTask):
    """MlpTask with a scripted validation score per call (higher is better) and a record of the weights it saw;
    each validation draws random numbers, which must not change training."""

    def __init__(self, scores: list[float], random: bool = False) -> None:
        super().__init__(random)
        self.scores, self.seen = list(scores), []

    def validate(self) -> float:
        assert not self.training  # scored in eval mode
        torch.randn(3)  # a draw inside validation: the loop must leave training's RNG as it was
        self.seen.append({k: v.detach().clone() for k, v in self.net.state_dict().items()})
        return self.scores[len(self.seen) - 1]


def make_scored(scores: list[float], seed: int = 0) -> ScoredTask:
    seed_everything(seed)
    return ScoredTask(scores, random=True)


def test_validation_exports_the_best_weights_and_stops_after_patience(tmp_path):
    ds = RegressionSet(40)
    scores = [0.1, 0.5, 0.4, 0.3, 0.45, 0.2, 0.9]  # best at the 2nd validation (step 6); the 7th never comes
    task = make_scored(scores)
    res = train(task, ds, tcfg(steps=21, eval_every=3, patience=3, save_every=0), ocfg(), tmp_path / "a",
                progress=False)
    assert len(task.seen) == 5 and res.steps == 15  # 3 validations after the best without a better one
    record = json.loads((tmp_path / "a" / "validation.json").read_text())
    assert record["best_step"] == 6 and record["best_score"] == 0.5 and record["stopped_early"] is True
    assert [h["step"] for h in record["history"]] == [3, 6, 9, 12, 15]
    exported = load_file(str(tmp_path / "a" / "export" / "model.safetensors"))
    for k, v in task.seen[1].items():
        assert torch.equal(exported[k], v), k  # the weights of step 6, not step 15
    assert not torch.equal(exported["0.weight"], task.seen[-1]["0.weight"])
    assert [s for s, _ in st.list_checkpoints(tmp_path / "a")] == [15]  # the stop is saved: resume ends at once

    # validation does not disturb training: the first 15 steps equal a run without it (dropout + noise draws)
    plain = make_task(random=True)
    train(plain, ds, tcfg(steps=15), ocfg(), tmp_path / "plain", progress=False)
    assert torch.equal(params_of(plain)["net.0.weight"], params_of(task)["net.0.weight"])

    # a resumed stopped run trains nothing and keeps the best export
    again = make_scored(scores, seed=5)
    res = train(again, ds, tcfg(steps=21, eval_every=3, patience=3), ocfg(), tmp_path / "a", resume=True,
                progress=False)
    assert res.steps == 15 and again.seen == [] and json.loads((tmp_path / "a" / "validation.json").read_text()) == record

    # patience 0: every step runs; the best of all validations (the last step's included) is exported
    full = make_scored(scores)
    res = train(full, ds, tcfg(steps=21, eval_every=3), ocfg(), tmp_path / "b", progress=False)
    assert res.steps == 21 and len(full.seen) == 7
    assert json.loads((tmp_path / "b" / "validation.json").read_text())["best_step"] == 21


def test_validation_resumes_exactly_after_a_kill(tmp_path):
    ds = RegressionSet(40)
    scores = [0.1, 0.5, 0.4, 0.6, 0.3, 0.2, 0.1]
    cfg = tcfg(steps=21, eval_every=3, patience=2, save_every=4, ema_decay=0.9)
    whole = make_scored(scores)
    train(whole, ds, cfg, ocfg(), tmp_path / "a", progress=False)
    part = kill_before_step(make_scored(scores), 11)  # dies after step 11: validations at 3, 6, 9 were written
    with pytest.raises(Killed):
        train(part, ds, cfg, ocfg(), tmp_path / "b", progress=False)
    assert [h["step"] for h in json.loads((tmp_path / "b" / "validation.json").read_text())["history"]] == [3, 6, 9]
    resumed = make_scored(scores[2:], seed=7)  # from the step-8 checkpoint: validations 9, 12, ... replayed
    res = train(resumed, ds, cfg, ocfg(), tmp_path / "b", resume=True, progress=False)
    a, b = (json.loads((tmp_path / d / "validation.json").read_text()) for d in "ab")
    assert a == b and a["best_step"] == 12 and a["stopped_early"] and res.steps == 18
    ea, eb = (load_file(str(tmp_path / d / "export" / "model.safetensors")) for d in "ab")
    for k in ea:
        assert torch.equal(ea[k], eb[k]), k


def test_validation_settings_are_checked(tmp_path):
    for bad in (dict(eval_every=-1), dict(patience=-2)):
        with pytest.raises(ConfigError, match=f"train.{next(iter(bad))}"):
            train(make_task(), RegressionSet(), tcfg(**bad), ocfg(), tmp_path / "x", progress=False)
    # a task without `validate` ignores eval_every: the export is the last step's weights, no validation.json
    task = make_task()
    train(task, RegressionSet(), tcfg(steps=4, eval_every=2, patience=1), ocfg(), tmp_path / "y", progress=False)
    assert not (tmp_path / "y" / "validation.json").exists()
    assert torch.equal(load_file(str(tmp_path / "y" / "export" / "model.safetensors"))["0.weight"],
                       params_of(task)["net.0.weight"])
