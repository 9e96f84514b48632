"""The one training loop. Every stage (shape VAE, teacher, RIDA, tokenizer, GPT, classifier) is a `Task`
trained by `train(task, dataset, train_cfg, optim_cfg, out_dir)`.

The loop owns everything that is not the model: Accelerate (fp32 / bf16, DDP, gradient accumulation),
AdamW with a diffusers warm-up schedule, gradient clipping, EMA, a step-indexed data order
(`state.DataSchedule`), metrics, periodic `save_state` with rotation, exact resume and the final export.

Seeding: call `seed_everything(seed)` BEFORE building the task so its initial weights follow the seed; the
loop then re-seeds the random draws of training itself with (seed + process index).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, is_initialized
from accelerate.utils import DistributedDataParallelKwargs, send_to_device, set_seed
from diffusers.optimization import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..config import THREADS_FILE_ENV, OptimConfig, TrainConfig, to_dict
from ..errors import CheckpointError, ConfigError, DataError
from ..persist import atomic_dir, atomic_write_json
from . import state as st

log = logging.getLogger(__name__)

EXPORT_DIR = "export"


# ----------------------------------------------------------------------------------------------------
# The contract between a stage and the loop
# ----------------------------------------------------------------------------------------------------


class Task(nn.Module):
    """A trainable stage: `forward(batch) -> {"loss": scalar tensor, **scalars to log}`.

    - Return the same keys on every step (they are averaged across processes at each log step).
    - Frozen sub-models live inside the task with `requires_grad=False`: they get no optimizer state,
      no EMA, no gradient, but are saved in checkpoints.
    - Random draws (noise, dropout, masks) use torch's global RNG, which checkpoints restore exactly.
    - Optional `export(self, out_dir: Path) -> None`: write the trained model as an HF-style folder
      (config.json + model.safetensors). Called once at the end, on the main process, with EMA weights.
    - Optional `validate(self) -> float`: a score of the current weights on held-out data, higher is better
      (e.g. val mAP). With `train.eval_every` > 0 the loop calls it on the main process with the EMA weights in
      eval mode (its random draws leave training's untouched), keeps the best-scoring weights as the export and
      stops after `train.patience` validations without a better score; `validation.json` records each score.
    - Optional `find_unused_parameters: bool` class attribute (default True) for DDP: set False when
      every trainable parameter gets a gradient on every step (saves a graph walk per step).
    """

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def on_step_start(self, step: int, epoch: int) -> None:
        """Called before each optimizer step (0-based `step`) on every process. Derive any state from
        (step, epoch) alone, e.g. `self.nest = epoch >= nest_after`, so resuming reproduces it."""


@dataclass
class TrainResult:
    steps: int  # optimizer steps completed (the run's global step)
    final_loss: float  # loss of the last logged step (from the checkpoint if nothing ran)
    losses: list[float] = field(default_factory=list)  # loss per logged step of this call
    export_dir: Path | None = None  # where task.export wrote, if the task can export
    seconds: float = 0.0  # wall time of this call


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices). Call before building a task."""
    set_seed(seed)


def resolve_mixed_precision(mode: str) -> str:
    """"auto" -> "bf16" with CUDA, else "no" (bf16 autocast is 2.5-3.5x slower than fp32 on CPUs)."""
    if mode == "auto":
        return "bf16" if torch.cuda.is_available() else "no"
    return mode


# ----------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------


def train(
    task: nn.Module,
    dataset: Dataset,
    train_cfg: TrainConfig,
    optim_cfg: OptimConfig,
    out_dir: Path,
    *,
    resume: bool = False,
    collate_fn: Callable | None = None,
    run_config: dict | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train `task` for `train_cfg.steps` optimizer steps, checkpointing into `out_dir`.

    A run that dies (killed, or an exception from the task) keeps its newest checkpoint; calling `train`
    again with `resume=True` continues from it exactly as if it had never stopped.

    Args:
        task: the stage; `task(batch)["loss"]` is minimised. Built (and seeded) by the caller.
        dataset: map-style and deterministic (item i is the same every time it is read).
        train_cfg, optim_cfg: loop and optimizer settings.
        out_dir: run directory: run.json, metrics.jsonl, checkpoints/, export/.
        resume: continue from the newest complete checkpoint in `out_dir` (fresh start if none).
        collate_fn: DataLoader collate function (default: torch's).
        run_config: the resolved run config, stored in run.json and export/run_config.json.
        progress: show a rich progress bar on the main process.

    Returns:
        TrainResult of this call.

    Raises:
        ConfigError: bad loop settings, or a fresh run into a directory that already holds checkpoints.
        DataError: the dataset has no length or holds less than one global batch.
        CheckpointError: the checkpoint to resume does not fit this task.
    """
    t_start = time.perf_counter()
    _validate(train_cfg, optim_cfg)
    cfg, out_dir = train_cfg, Path(out_dir)
    accelerator = _make_accelerator(task, cfg, out_dir)
    ckpt = _checkpoint_to_resume(out_dir, resume)

    # -- model, optimizer, schedule, EMA, then the checkpoint's state --------------------------------
    set_seed(cfg.seed, device_specific=True)  # training draws: seed + process index
    run = _prepare(accelerator, task, cfg, optim_cfg, out_dir)
    run.run_config = run_config
    start_step, last_loss = _load_checkpoint(run, ckpt)

    # -- data ------------------------------------------------------------------------------------
    schedule, loader = _make_loader(dataset, cfg, accelerator, start_step, collate_fn)
    if accelerator.is_main_process:
        _open_run_dir(run, schedule, ckpt, start_step, {"train": to_dict(cfg), "optim": to_dict(optim_cfg)},
                      run_config)
    accelerator.wait_for_everyone()

    # -- train, then export (with validation: the best weights were exported as they were found) ----
    run.validation = Validation.open(out_dir, cfg, task, start_step) if accelerator.is_main_process else None
    finished = start_step >= cfg.steps or (run.validation is not None and run.validation.exhausted())
    if start_step >= cfg.steps:
        log.info("%s: already at step %d of %d; only re-exporting", out_dir, start_step, cfg.steps)
    losses, last_loss, end_step = _run_steps(run, loader, schedule, start_step, last_loss, progress, t_start,
                                             finished=_agree(accelerator, finished))
    # a finite best score had its weights exported when it was found
    val = run.validation
    exported_best = val is not None and val.best is not None and (out_dir / EXPORT_DIR).is_dir()
    if _agree(accelerator, exported_best):
        accelerator.wait_for_everyone()
        export_dir = out_dir / EXPORT_DIR if getattr(task, "export", None) is not None else None
    else:
        export_dir = _export(accelerator, task, run.params, run.ema, out_dir, run_config)
    return TrainResult(
        steps=max(start_step, end_step),
        final_loss=last_loss,
        losses=losses,
        export_dir=export_dir,
        seconds=time.perf_counter() - t_start,
    )


@dataclass
class _Run:
    """What one `train` call builds once and then steps."""

    accelerator: Accelerator
    task: nn.Module  # the stage as the caller built it
    model: nn.Module  # the task as Accelerate prepared it (DDP-wrapped on several processes)
    optimizer: Any  # Accelerate's wrapper around the AdamW of `_build_optimizer`
    scheduler: Any  # lr schedule, stepped by the loop once per optimizer step
    ema: EMAModel | None  # EMA of `params` (None: train.ema_decay = 0)
    params: list[nn.Parameter]  # the task's trainable parameters
    cfg: TrainConfig
    grad_clip: float  # max gradient norm (math.inf: no clipping)
    out_dir: Path
    validation: Validation | None = None  # main process, when the task validates and train.eval_every > 0
    run_config: dict | None = None  # stored beside each export


def _run_steps(run: _Run, loader: DataLoader, schedule: st.DataSchedule, start_step: int, last_loss: float,
               progress: bool, t_start: float, finished: bool = False) -> tuple[list[float], float, int]:
    """Optimizer steps start_step..cfg.steps-1: log, validate, checkpoint; (loss per logged step, last logged
    loss, the step training ended at: cfg.steps, or earlier when validation stopped it)."""
    cfg, accelerator = run.cfg, run.accelerator
    main = accelerator.is_main_process
    hook = getattr(run.task, "on_step_start", None)
    losses: list[float] = []
    with ExitStack() as stack:
        bar = stack.enter_context(_Bar(progress and main, cfg.steps, start_step))
        tb = _tensorboard(run.out_dir, start_step) if main else None
        if tb is not None:
            stack.callback(tb.close)
        window = _Window(accelerator.device)
        threads = ThreadShare()
        data = iter(loader)
        run.model.train()
        validates = _validates(cfg, run.task)
        end_step = start_step if finished else cfg.steps
        for step in range(start_step, end_step):
            threads.poll()
            if hook is not None:
                hook(step, schedule.epoch_of(step))
            lr = run.optimizer.param_groups[0]["lr"]  # the lr this step's update uses
            window.add_step(_optimizer_step(run, data, window))
            done = step + 1
            bar.advance(1)
            if done % cfg.log_every == 0 or done == cfg.steps:
                means, n_steps, dt = window.flush(accelerator)  # collective: every process reaches it
                row = {"step": done, "epoch": schedule.epoch_of(step), "loss": means.pop("loss"), "lr": lr,
                       "grad_norm": means.pop("grad_norm"), **means,
                       "samples_per_s": schedule.global_batch * n_steps / dt,
                       "seconds": time.perf_counter() - t_start}
                last_loss = row["loss"]
                losses.append(last_loss)
                if main:
                    _log_row(run.out_dir, row, tb)
                bar.set_loss(last_loss)
            stop = False
            if validates and (done % cfg.eval_every == 0 or done == cfg.steps):
                stop = _agree(accelerator, _validate_now(run, done) if main else False)
            if (cfg.save_every > 0 and done % cfg.save_every == 0) or done == cfg.steps or stop:
                _save_checkpoint(accelerator, run.out_dir, done, schedule, last_loss, cfg.keep_checkpoints)
            if stop:
                end_step = done
                break
    return losses, last_loss, end_step


def _validates(cfg: TrainConfig, task: nn.Module) -> bool:
    """Whether this run scores held-out data: `train.eval_every` > 0 and the task defines `validate`."""
    return cfg.eval_every > 0 and callable(getattr(task, "validate", None))


def _agree(accelerator: Accelerator, flag: bool) -> bool:
    """The main process's `flag` on every process (a collective when several run)."""
    if accelerator.num_processes == 1:
        return bool(flag)
    from accelerate.utils import broadcast

    return bool(broadcast(torch.tensor([float(flag)], device=accelerator.device), from_process=0).item())


def _validate_now(run: _Run, step: int) -> bool:
    """Main process: score the EMA weights; export them when they beat every earlier score; True when
    `train.patience` validations in a row have not beaten the best."""
    task, params, ema = run.task, run.params, run.ema
    device = run.accelerator.device
    cuda = [device.index or 0] if device.type == "cuda" else []
    with _ema_weights(task, params, ema), torch.random.fork_rng(devices=cuda), torch.no_grad():
        score = float(task.validate())  # under fork_rng: training's random draws stay as they were
    val = run.validation
    if val.add(step, score):
        _export_main(task, params, ema, run.out_dir, run.run_config)
    val.save()
    log.info("%s: step %d validation score %.4f (best %.4f at step %d)", run.out_dir, step, score, val.best_score,
             val.best_step)
    return val.exhausted()


@dataclass
class Validation:
    """Validation scores of a run (`validation.json`): every (step, score), the best, and whether patience ran
    out. A resumed run keeps the scores up to its checkpoint's step and replays the rest exactly."""

    path: Path
    patience: int
    history: list[dict] = field(default_factory=list)  # [{"step", "score"}] in step order

    @classmethod
    def open(cls, out_dir: Path, cfg: TrainConfig, task: nn.Module, start_step: int) -> Validation | None:
        if not _validates(cfg, task):
            return None
        path = Path(out_dir) / "validation.json"
        history = []
        if start_step > 0 and path.is_file():
            history = [h for h in json.loads(path.read_text())["history"] if h["step"] <= start_step]
        return cls(path, cfg.patience, history)

    @property
    def best(self) -> dict | None:
        finite = [h for h in self.history if math.isfinite(h["score"])]
        return max(finite, key=lambda h: h["score"]) if finite else None  # the first of equal scores

    @property
    def best_score(self) -> float:
        return self.best["score"] if self.best is not None else float("nan")

    @property
    def best_step(self) -> int:
        return self.best["step"] if self.best is not None else 0

    def add(self, step: int, score: float) -> bool:
        """Record a score; True when it beats every earlier one (NaN never does)."""
        before = self.best_score if self.best is not None else -math.inf
        self.history.append({"step": int(step), "score": score})
        return math.isfinite(score) and not score <= before

    def exhausted(self) -> bool:
        """`patience` validations after the best one, none of them better."""
        if self.patience <= 0 or self.best is None:
            return False
        best_at = self.history.index(self.best)
        return len(self.history) - 1 - best_at >= self.patience

    def save(self) -> None:
        body = {"best_step": self.best_step, "best_score": self.best_score, "patience": self.patience,
                "stopped_early": self.exhausted(), "history": self.history}
        atomic_write_json(self.path, body)


class ThreadShare:
    """Follows the CPU share a parent gives this process through the file named by $LOST_THREADS_FILE (one
    integer, rewritten by `lost demo` when stages start or finish): `poll` sets torch's intra-op threads to it
    whenever the file changes. One stat per call; no file, no variable or a bad value: nothing changes."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path if path is not None else os.environ.get(THREADS_FILE_ENV) or None
        self.seen: int | None = None  # st_mtime_ns of the last file read

    def poll(self) -> int | None:
        """Apply the file's thread count if it changed since the last call; the count applied, else None."""
        if self.path is None:
            return None
        try:
            stamp = os.stat(self.path).st_mtime_ns
            if stamp == self.seen:
                return None
            self.seen = stamp
            n = int(Path(self.path).read_text().strip())
        except (OSError, ValueError):
            return None
        if n < 1 or n == torch.get_num_threads():
            return None
        torch.set_num_threads(n)
        return n


def _optimizer_step(run: _Run, data: Iterator, window: _Window) -> torch.Tensor:
    """One optimizer step over `train.grad_accum` micro-batches of `data`, then EMA; the gradient norm
    before clipping."""
    accelerator = run.accelerator
    for _ in range(run.cfg.grad_accum):
        batch = send_to_device(next(data), accelerator.device, non_blocking=True)
        with accelerator.accumulate(run.model):
            out = run.model(batch)
            if not isinstance(out, dict) or "loss" not in out:
                raise TypeError(f"{type(run.task).__name__}.forward must return a dict with a 'loss'")
            accelerator.backward(out["loss"])  # scaled by 1/grad_accum inside
            if accelerator.sync_gradients:
                grad_norm = accelerator.clip_grad_norm_(run.params, run.grad_clip)  # norm before clipping
            run.optimizer.step()  # no-op until the last micro-batch
            if accelerator.sync_gradients and not run.optimizer.step_was_skipped:
                run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
        window.add_micro(out)
    assert accelerator.sync_gradients, "accumulation out of step with the data"
    if run.ema is not None:
        run.ema.step(run.params)
    return grad_norm


def _log_row(out_dir: Path, row: dict, tb) -> None:
    """Main process: one metrics.jsonl line, and the same scalars to TensorBoard when it is installed."""
    st.append_metrics(out_dir, row)
    if tb is not None:
        for k, v in row.items():
            if k not in ("step", "epoch"):
                tb.add_scalar(k, v, row["step"])


# ----------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------


def _validate(train_cfg: TrainConfig, optim_cfg: OptimConfig) -> None:
    """Reject settings the loop cannot run, naming the dotted config path."""
    t, o = train_cfg, optim_cfg
    checks = [
        ("train.steps", t.steps >= 1, "must be >= 1"),
        ("train.batch_size", t.batch_size >= 1, "must be >= 1"),
        ("train.grad_accum", t.grad_accum >= 1, "must be >= 1"),
        ("train.ema_decay", 0.0 <= t.ema_decay < 1.0, "must be in [0, 1)"),
        ("train.mixed_precision", t.mixed_precision in ("auto", "no", "bf16", "fp16"),
         "must be one of auto, no, bf16, fp16"),
        ("train.log_every", t.log_every >= 1, "must be >= 1"),
        ("train.save_every", t.save_every >= 0, "must be >= 0"),
        ("train.keep_checkpoints", t.keep_checkpoints >= 1, "must be >= 1"),
        ("train.num_workers", t.num_workers >= 0, "must be >= 0"),
        ("train.eval_every", t.eval_every >= 0, "must be >= 0 (0: no validation)"),
        ("train.patience", t.patience >= 0, "must be >= 0 (0: never stop early)"),
        ("optim.lr", o.lr > 0, "must be > 0"),
        ("optim.weight_decay", o.weight_decay >= 0, "must be >= 0"),
        ("optim.betas", len(o.betas) == 2 and all(0.0 <= b < 1.0 for b in o.betas),
         "must be two numbers in [0, 1)"),
        ("optim.warmup_steps", o.warmup_steps >= 0, "must be >= 0"),
        ("optim.schedule", o.schedule in ("cosine", "constant"), "must be cosine or constant"),
        ("optim.grad_clip", o.grad_clip >= 0, "must be >= 0 (0 disables clipping)"),
    ]
    for path, ok, why in checks:
        if not ok:
            raise ConfigError(f"{path}: {why} (got {_get(t, o, path)!r})")
    if t.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.mixed_precision: fp16 needs a CUDA device (use no or bf16)")


def _get(t: TrainConfig, o: OptimConfig, path: str) -> Any:
    group, name = path.split(".")
    return getattr(t if group == "train" else o, name)


def _make_accelerator(task: nn.Module, cfg: TrainConfig, out_dir: Path) -> Accelerator:
    """The run's Accelerator: precision, gradient accumulation, DDP's unused-parameter search."""
    precision = resolve_mixed_precision(cfg.mixed_precision)
    _allow_precision(precision)
    return Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=cfg.grad_accum,
        project_dir=str(out_dir),
        kwargs_handlers=[DistributedDataParallelKwargs(
            find_unused_parameters=getattr(task, "find_unused_parameters", True))],
    )


def _allow_precision(precision: str) -> None:
    """Clear Accelerate's process-wide state when an earlier `train` in this process fixed another precision.

    Accelerate keeps one `AcceleratorState` per process, and `Accelerator(mixed_precision=...)` raises
    ValueError when the state already holds another precision ("restart your runtime"). It offers no public
    way to change or clear that state (checked for accelerate 1.16), so this is the one call into its private
    API in lostcli, the same call its own tests and transformers' `TrainingArguments` make. A process that
    trains with one precision (every `lost` command) never reaches it; only a second `train` call with
    another precision does (tests, notebooks).
    """
    if is_initialized() and AcceleratorState().mixed_precision != precision:
        AcceleratorState._reset_state()


def _checkpoint_to_resume(out_dir: Path, resume: bool) -> Path | None:
    """The newest complete checkpoint when resuming; ConfigError if a fresh run would overwrite one."""
    existing = st.latest_checkpoint(out_dir)
    if existing is not None and not resume:
        raise ConfigError(f"{out_dir}: already holds checkpoints ({existing.name}); resume, or use a new "
                          "output directory")
    if resume and existing is None:
        log.info("%s: no checkpoint to resume from; starting fresh", out_dir)
    return existing if resume else None


def _prepare(accelerator: Accelerator, task: nn.Module, cfg: TrainConfig, optim_cfg: OptimConfig,
             out_dir: Path) -> _Run:
    """Optimizer, lr schedule and EMA for the task's trainable parameters, prepared by Accelerate."""
    params = [p for p in task.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"{type(task).__name__}: has no trainable parameters")
    optimizer = _build_optimizer(task, optim_cfg)
    scheduler = _build_scheduler(optimizer, optim_cfg, cfg.steps)
    model, optimizer = accelerator.prepare(task, optimizer)
    # The scheduler is stepped by us once per optimizer step (Accelerate's wrapper would step it
    # num_processes times), so it means the same on any world size; it is checkpointed as a custom object.
    accelerator.register_for_checkpointing(scheduler)
    ema = None
    if cfg.ema_decay > 0:
        ema = EMAModel(params, decay=cfg.ema_decay, foreach=True)
        accelerator.register_for_checkpointing(ema)
    grad_clip = optim_cfg.grad_clip if optim_cfg.grad_clip > 0 else math.inf
    return _Run(accelerator, task, model, optimizer, scheduler, ema, params, cfg, grad_clip, out_dir)


def _load_checkpoint(run: _Run, ckpt: Path | None) -> tuple[int, float]:
    """Restore model, optimizer, schedule, EMA and RNG states from `ckpt`; (its step, its loss)."""
    if ckpt is None:
        return 0, float("nan")
    try:
        run.accelerator.load_state(str(ckpt))
    except (RuntimeError, ValueError, KeyError, FileNotFoundError) as e:
        raise CheckpointError(f"{ckpt}: cannot resume ({str(e).splitlines()[0]})") from None
    if run.ema is not None:
        run.ema.to(device=run.accelerator.device)  # Accelerate loads custom objects onto the CPU
    saved = st.read_state(ckpt)
    return int(saved["step"]), float(saved["loss"])


def _make_loader(dataset: Dataset, cfg: TrainConfig, accelerator: Accelerator, start_step: int,
                 collate_fn: Callable | None) -> tuple[st.DataSchedule, DataLoader]:
    """The step-indexed data order and this process's loader over its steps start_step..cfg.steps-1."""
    try:
        num_items = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise DataError(f"{type(dataset).__name__}: the training loop needs a dataset with a length") from None
    schedule = st.make_schedule(num_items, cfg.batch_size, accelerator.num_processes, cfg.grad_accum, cfg.seed)
    loader = DataLoader(
        dataset,
        batch_sampler=st.StepBatchSampler(schedule, accelerator.process_index, start_step, cfg.steps),
        num_workers=cfg.num_workers,
        collate_fn=collate_fn,
        pin_memory=accelerator.device.type == "cuda",
        # Its own generator: a DataLoader iterator otherwise draws its base seed from the global RNG,
        # which would shift every later random draw of a resumed run.
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    return schedule, loader


def _open_run_dir(run: _Run, schedule: st.DataSchedule, ckpt: Path | None, start_step: int, loop_cfg: dict,
                  run_config: dict | None) -> None:
    """Main process: create out_dir, drop what a killed run left past its checkpoint, record this call."""
    out_dir, accelerator = run.out_dir, run.accelerator
    out_dir.mkdir(parents=True, exist_ok=True)
    st.remove_stale_tmp(out_dir)
    st.truncate_metrics(out_dir, start_step)  # drop lines a killed run logged past its checkpoint
    st.record_invocation(out_dir, run_config, loop_cfg, {
        "argv": list(sys.argv),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "resumed_from": str(ckpt) if ckpt is not None else None,
        "start_step": start_step,
        "world_size": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "device": str(accelerator.device),
    })
    if ckpt is not None:
        _warn_if_layout_changed(st.read_state(ckpt), schedule)


def _build_optimizer(task: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices and kernels (ndim >= 2) only, never on biases, norms, embeddings' 1-D."""
    decay = [p for p in task.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in task.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def _build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps: int):
    """Linear warm-up from 0, then cosine to 0 at `steps` or constant (diffusers' schedules)."""
    if cfg.schedule == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, cfg.warmup_steps, steps)
    return get_constant_schedule_with_warmup(optimizer, cfg.warmup_steps)


class _Window:
    """Sums of the task's scalars since the last log line, kept on device (no per-step host sync)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}  # per-micro-batch scalars
        self.micro = 0  # micro-batches in the window
        self.grad_norm = torch.zeros((), device=device)  # sum over optimizer steps
        self.steps = 0  # optimizer steps in the window
        self.t0 = time.perf_counter()

    def add_micro(self, out: dict) -> None:
        for k, v in out.items():
            v = torch.as_tensor(v.detach() if torch.is_tensor(v) else v, device=self.device).float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.micro += 1

    def add_step(self, grad_norm: torch.Tensor) -> None:
        self.grad_norm = self.grad_norm + grad_norm.detach().float()
        self.steps += 1

    def flush(self, accelerator: Accelerator) -> tuple[dict[str, float], int, float]:
        """(window means averaged over processes, optimizer steps, seconds); resets the window."""
        keys = sorted(self.sums)
        vec = torch.stack([self.sums[k] / self.micro for k in keys] + [self.grad_norm / self.steps])
        vec = accelerator.reduce(vec, reduction="mean").tolist()
        means = dict(zip(keys, vec[:-1]))
        means["grad_norm"] = vec[-1]
        steps, dt = self.steps, max(time.perf_counter() - self.t0, 1e-9)
        self.__init__(self.device)
        return means, steps, dt


def _save_checkpoint(accelerator: Accelerator, out_dir: Path, step: int, schedule: st.DataSchedule,
                     loss: float, keep: int) -> None:
    """save_state into step-N.tmp on every process, then (main) state.json, atomic rename, rotation."""
    final = st.checkpoint_dir(out_dir, step)
    tmp = st.tmp_dir_for(final)
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        st.write_state(tmp, {
            "step": step, "epoch": schedule.epoch_of(step - 1), "loss": loss,
            "steps_per_epoch": schedule.steps_per_epoch, "global_batch": schedule.global_batch,
            "num_items": schedule.num_items, "world_size": schedule.world_size,
        })
        st.commit_checkpoint(tmp, final)
        st.rotate_checkpoints(out_dir, keep)
    accelerator.wait_for_everyone()


def _export(accelerator: Accelerator, task: nn.Module, params: list[torch.nn.Parameter],
            ema: EMAModel | None, out_dir: Path, run_config: dict | None) -> Path | None:
    """Main process: EMA weights in, `task.export(out_dir/export)` (written to a temp dir, then swapped), restore."""
    export = getattr(task, "export", None)
    accelerator.wait_for_everyone()
    if export is not None and accelerator.is_main_process:
        _export_main(task, params, ema, out_dir, run_config)
    accelerator.wait_for_everyone()
    return out_dir / EXPORT_DIR if export is not None else None


def _export_main(task: nn.Module, params: list[torch.nn.Parameter], ema: EMAModel | None, out_dir: Path,
                 run_config: dict | None) -> None:
    """`_export` on the calling process alone (no collective); nothing when the task cannot export."""
    export = getattr(task, "export", None)
    if export is None:
        return
    with _ema_weights(task, params, ema), atomic_dir(out_dir / EXPORT_DIR) as tmp:
        tmp.mkdir(parents=True)
        export(tmp)
        if run_config is not None:
            (tmp / "run_config.json").write_text(json.dumps(run_config, indent=2) + "\n")


@contextmanager
def _ema_weights(task: nn.Module, params: list[torch.nn.Parameter], ema: EMAModel | None):
    """The task in eval mode with its EMA weights (when there is an EMA); training weights and mode restored after."""
    was_training = task.training
    task.eval()
    if ema is not None:
        ema.store(params)
        ema.copy_to(params)
    try:
        yield
    finally:
        if ema is not None:
            ema.restore(params)
        task.train(was_training)


def _warn_if_layout_changed(saved: dict, schedule: st.DataSchedule) -> None:
    for key, now in (("num_items", schedule.num_items), ("global_batch", schedule.global_batch)):
        if saved.get(key, now) != now:
            log.warning("resuming with %s %s (checkpoint had %s): the data order will not continue exactly",
                        key, now, saved[key])


def _tensorboard(out_dir: Path, start_step: int):
    """A SummaryWriter under out_dir/tb when `tensorboard` is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(out_dir / "tb"), purge_step=start_step + 1)


class _Bar:
    """A rich progress bar (or nothing) with a running loss field."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self.progress = None
        if enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)
            self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(),
                                     TimeRemainingColumn())
            self.task_id = self.progress.add_task("train", total=total, completed=done, loss="-")

    def __enter__(self) -> _Bar:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def advance(self, n: int) -> None:
        if self.progress is not None:
            self.progress.advance(self.task_id, n)

    def set_loss(self, loss: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task_id, loss=f"{loss:.4g}")

