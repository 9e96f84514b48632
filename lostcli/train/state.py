"""Where a run stands: which samples a step sees, and which checkpoints hold which step.

Both are pure functions of the optimizer step, so a run killed anywhere resumes at exactly the data and
state of its newest checkpoint, on any number of processes:

- Data order. Epoch e is `torch.randperm(N)` drawn from a generator seeded with (seed, e). Optimizer
  step s takes the global batch of G = batch_size * world_size * grad_accum indices at position
  s mod steps_per_epoch of that permutation (the last incomplete global batch is dropped). Micro-batch m
  of the step is the m-th run of batch_size * world_size indices, and rank r takes its r-th contiguous
  slice of batch_size. Epochs derive from the step: epoch_of(s) = s // steps_per_epoch.
- Run files. `run.json` records the run config and every invocation's command line; `metrics.jsonl`
  holds one JSON line per logged step, cut back to the resumed step when a killed run is resumed.
- Checkpoints. `out_dir/checkpoints/step-{step:07d}/` holds Accelerate's `save_state` files plus a small
  `state.json`; it is written as `step-....tmp` and renamed, so a directory without the suffix is complete.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Sampler

from ..errors import DataError
from ..persist import atomic_write_json, replace_dir

CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
RUN_FILE = "run.json"
STATE_FILE = "state.json"
_CKPT_RE = re.compile(r"^step-(\d{7,})$")


# ----------------------------------------------------------------------------------------------------
# Data order
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSchedule:
    """How optimizer steps map onto a dataset of `num_items` samples."""

    num_items: int  # N, samples in the dataset
    batch_size: int  # samples per process per micro-batch
    world_size: int  # processes
    grad_accum: int  # micro-batches per optimizer step
    seed: int  # seeds the per-epoch permutations

    @property
    def global_batch(self) -> int:
        """Samples consumed by one optimizer step over all processes."""
        return self.batch_size * self.world_size * self.grad_accum

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per pass over the data (the incomplete tail is dropped)."""
        return self.num_items // self.global_batch

    def epoch_of(self, step: int) -> int:
        """Epoch that 0-based optimizer step `step` belongs to."""
        return step // self.steps_per_epoch

    def permutation(self, epoch: int) -> torch.Tensor:
        """[N] int64: the sample order of `epoch`, identical on every process and every run."""
        # SeedSequence mixes (seed, epoch) into one well-spread 32-bit seed (no collisions such as
        # seed=1, epoch=0 vs seed=0, epoch=1 that a plain sum would give).
        mixed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0])
        gen = torch.Generator().manual_seed(mixed)
        return torch.randperm(self.num_items, generator=gen)

    def step_indices(self, step: int) -> torch.Tensor:
        """[G] int64: the global batch of optimizer step `step`, micro-batch-major then rank-major."""
        spe = self.steps_per_epoch
        pos = (step % spe) * self.global_batch
        return self.permutation(step // spe)[pos : pos + self.global_batch]

    def micro_batch(self, step: int, micro: int, rank: int) -> list[int]:
        """Indices (batch_size of them) that process `rank` loads for micro-batch `micro` of `step`."""
        return self._slice(self.step_indices(step), micro, rank)

    def _slice(self, indices: torch.Tensor, micro: int, rank: int) -> list[int]:
        start = (micro * self.world_size + rank) * self.batch_size
        return indices[start : start + self.batch_size].tolist()


def make_schedule(
    num_items: int, batch_size: int, world_size: int, grad_accum: int, seed: int
) -> DataSchedule:
    """Build a `DataSchedule`, checking that the dataset holds at least one global batch.

    Raises:
        DataError: the dataset is smaller than one global batch.
    """
    sched = DataSchedule(num_items, batch_size, world_size, grad_accum, seed)
    if sched.steps_per_epoch < 1:
        raise DataError(
            f"dataset has {num_items} items, fewer than one global batch of {sched.global_batch} "
            f"(batch_size {batch_size} x {world_size} processes x grad_accum {grad_accum})"
        )
    return sched


class StepBatchSampler(Sampler[list[int]]):
    """Batch sampler for one process: yields its micro-batches for steps [start_step, end_step).

    Pass it as `DataLoader(dataset, batch_sampler=...)`; it yields `grad_accum` lists per optimizer step.
    """

    def __init__(self, schedule: DataSchedule, rank: int, start_step: int, end_step: int) -> None:
        self.schedule = schedule  # the shared step -> indices map
        self.rank = rank  # this process's index in [0, world_size)
        self.start_step = start_step  # first optimizer step to yield (resume point)
        self.end_step = end_step  # one past the last optimizer step

    def __iter__(self) -> Iterator[list[int]]:
        sched = self.schedule
        perm, perm_epoch = None, -1
        for step in range(self.start_step, self.end_step):
            epoch = sched.epoch_of(step)
            if epoch != perm_epoch:  # one randperm per epoch, not per step
                perm, perm_epoch = sched.permutation(epoch), epoch
            pos = (step % sched.steps_per_epoch) * sched.global_batch
            indices = perm[pos : pos + sched.global_batch]
            for micro in range(sched.grad_accum):
                yield sched._slice(indices, micro, self.rank)

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step) * self.schedule.grad_accum


# ----------------------------------------------------------------------------------------------------
# Checkpoint directories
# ----------------------------------------------------------------------------------------------------


def checkpoint_root(out_dir: Path) -> Path:
    """`out_dir/checkpoints`."""
    return Path(out_dir) / CHECKPOINT_DIR


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    """`out_dir/checkpoints/step-{step:07d}`."""
    return checkpoint_root(out_dir) / f"step-{step:07d}"


def list_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints as (step, dir), oldest first; `*.tmp` and dirs without state.json are skipped."""
    root = checkpoint_root(out_dir)
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        m = _CKPT_RE.match(d.name)
        if m and d.is_dir() and (d / STATE_FILE).is_file():
            found.append((int(m.group(1)), d))
    return sorted(found)


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint directory, or None."""
    found = list_checkpoints(out_dir)
    return found[-1][1] if found else None


def read_state(ckpt: Path) -> dict:
    """The `state.json` of a checkpoint (step, epoch, loss, data layout)."""
    return json.loads((Path(ckpt) / STATE_FILE).read_text())


def write_state(ckpt: Path, state: dict) -> None:
    """Write `state.json` into a (temporary) checkpoint directory."""
    (Path(ckpt) / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")


def tmp_dir_for(final: Path) -> Path:
    """The temporary name a checkpoint is written under before its atomic rename."""
    return final.with_name(final.name + ".tmp")


def remove_stale_tmp(out_dir: Path) -> None:
    """Delete half-written `*.tmp` checkpoints left by a killed run."""
    root = checkpoint_root(out_dir)
    if root.is_dir():
        for d in root.glob("*.tmp"):
            shutil.rmtree(d, ignore_errors=True)


def commit_checkpoint(tmp: Path, final: Path) -> None:
    """Atomically publish a fully written checkpoint (replacing one of the same step, if any)."""
    replace_dir(tmp, final)


def rotate_checkpoints(out_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` complete checkpoints; returns the deleted dirs."""
    found = list_checkpoints(out_dir)
    doomed = [d for _, d in found[: max(0, len(found) - keep)]]
    for d in doomed:
        shutil.rmtree(d)
    return doomed


# ----------------------------------------------------------------------------------------------------
# Run files
# ----------------------------------------------------------------------------------------------------


def record_invocation(out_dir: Path, run_config: dict | None, loop_config: dict, invocation: dict) -> None:
    """Write run.json: the run config, the loop settings and the list of invocations (this one appended
    to those of earlier calls when resuming, i.e. when `invocation["resumed_from"]` is set)."""
    path = Path(out_dir) / RUN_FILE
    history = []
    if invocation["resumed_from"] is not None and path.is_file():
        history = json.loads(path.read_text())["invocations"]
    doc = {"argv": invocation["argv"], "run_config": run_config, "loop": loop_config,
           "invocations": history + [invocation]}
    atomic_write_json(path, doc)


def truncate_metrics(out_dir: Path, start_step: int) -> None:
    """Keep only metric lines with step <= `start_step` (a killed run may have logged steps past its
    last checkpoint; a fresh start keeps none)."""
    path = Path(out_dir) / METRICS_FILE
    if not path.is_file():
        return
    keep = []
    for ln in path.read_text().splitlines():
        try:
            if json.loads(ln)["step"] <= start_step:
                keep.append(ln)
        except (json.JSONDecodeError, KeyError, TypeError):
            pass  # a line cut short by the kill
    path.write_text("".join(ln + "\n" for ln in keep))


def append_metrics(out_dir: Path, row: dict) -> None:
    """Append one metric line (opened per line, so a kill loses at most the line being written)."""
    with (Path(out_dir) / METRICS_FILE).open("a") as f:
        f.write(json.dumps(row) + "\n")
