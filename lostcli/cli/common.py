"""Shared CLI plumbing: option aliases, consoles, recipe loading, run directories."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Optional, TypeVar

import typer
from rich.console import Console

from ..config import load_config
from ..errors import ConfigError, LostError
from ..persist import save_config

T = TypeVar("T")

console = Console(soft_wrap=True)  # results and progress (stdout); soft wrap: never break a result line
err_console = Console(stderr=True, soft_wrap=True)  # warnings (stderr)

# Option aliases shared by every command group (huggingface_hub CLI style).
RecipeOpt = Annotated[Optional[Path], typer.Option("--recipe", "-r", help="YAML recipe (recipes/**/*.yaml).")]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a recipe value: dotted.key=value (repeatable)."),
]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output directory.")]
DataOpt = Annotated[Path, typer.Option("--data", "-d", help="Prepared dataset directory (lost dataset prepare).")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint in --out.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]


def resolve_config(cls: type[T], recipe: Optional[Path], sets: Optional[list[str]], base: dict | None = None) -> T:
    """Defaults <- recipe <- --set overrides, with typed checks (ConfigError names the dotted path)."""
    return load_config(cls, recipe, list(sets or []), base=base)


def start_run(out: Path, cfg) -> Path:
    """Create the run directory and store the resolved config and the command line in it."""
    require_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    (out / "command.txt").write_text(" ".join(["lost", *sys.argv[1:]]) + "\n")
    return out


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise LostError(f"{path}: {what} directory not found")
    return path


# ----------------------------------------------------------------------------------------------------
# Option checks: each raises ConfigError with one line that starts with the option and its value
# ----------------------------------------------------------------------------------------------------


def require_int_range(option: str, value: Optional[int], least: int, most: Optional[int] = None) -> None:
    """`value` (None: not given) must lie in [least, most] (no upper bound when `most` is None)."""
    if value is None or (value >= least and (most is None or value <= most)):
        return
    need = f">= {least}" if most is None else f"between {least} and {most}"
    raise ConfigError(f"{option} {value}: must be {need}")


def require_finite(option: str, value: float) -> None:
    """`value` must be a finite number (not nan or +-inf)."""
    if not math.isfinite(value):
        raise ConfigError(f"{option} {value}: must be a finite number")


def require_nonnegative(option: str, value: Optional[float]) -> None:
    """`value` (None: not given) must be a finite number >= 0."""
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{option}: must be a finite number >= 0, got {value}")


def require_choice(option: str, value: Optional[str], choices: Iterable[str]) -> None:
    """`value` (None: not given) must be one of `choices`."""
    choices = list(choices)
    if value is not None and value not in choices:
        raise ConfigError(f"{option} {value}: must be one of {', '.join(choices)}")


def _blocking_file(path: Path) -> Optional[Path]:
    """The nearest existing ancestor of `path` when it is not a folder (nothing can be created below it)."""
    for parent in path.absolute().parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def require_out_file(option: str, path: Path, suffixes: Iterable[str]) -> None:
    """`path` must end in one of `suffixes` and be writable as a file: not a folder, no file in its way."""
    suffixes = list(suffixes)
    if path.suffix.lower() not in suffixes:
        raise ConfigError(f"{option} {path}: must end in {', '.join(suffixes)}")
    if path.is_dir():
        raise ConfigError(f"{option} {path}: is a folder, not a file")
    blocker = _blocking_file(path)
    if blocker is not None:
        raise ConfigError(f"{option} {path}: cannot be written ({blocker} is a file, not a folder)")


def require_out_dir(path: Path, option: str = "--out") -> None:
    """`path` must be a folder or creatable as one: not an existing file, no file in its way."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path}: is a file, not a folder")
    blocker = _blocking_file(path)
    if blocker is not None:
        raise ConfigError(f"{option} {path}: cannot be created ({blocker} is a file, not a folder)")


# ----------------------------------------------------------------------------------------------------
# Progress and processes, shared by the commands that run over a dataset store
# ----------------------------------------------------------------------------------------------------


def process_info():
    """(rank, world_size, barrier) from Accelerate when launched with several processes."""

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch
        from accelerate import PartialState

        # Without cpu=True, Accelerate starts no process group on a machine without CUDA: every process
        # would think it is alone and do all the work.
        state = PartialState(cpu=not torch.cuda.is_available())
        return state.process_index, state.num_processes, state.wait_for_everyone
    return 0, 1, lambda: None


class ProgressBar:
    """A rich progress bar that hands the library a `progress(done, total, label)` callback."""

    def __init__(self, what: str, total: int | None, enabled: bool = True):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.enabled = enabled
        self.bar = Progress(TextColumn(f"[bold]{what}[/bold]"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("{task.description}"), console=console,
                            transient=False, disable=not enabled)
        self.task = self.bar.add_task("", total=total)

    def __enter__(self):
        self.bar.start()

        def tick(done: int, total: int | None = None, label: str = "") -> None:
            self.bar.update(self.task, completed=done, total=total, description=str(label)[:40])

        return tick

    def __exit__(self, *exc):
        self.bar.stop()
        return False
