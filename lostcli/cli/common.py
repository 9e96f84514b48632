"""Shared CLI plumbing: option aliases, consoles, recipe loading, run directories."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional, TypeVar

import typer
from rich.console import Console

from ..config import load_config, save_config
from ..errors import LostError

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
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    (out / "command.txt").write_text(" ".join(["lost", *sys.argv[1:]]) + "\n")
    return out


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise LostError(f"{path}: {what} directory not found")
    return path


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise LostError(f"{path}: {what} file not found")
    return path


def offline_default() -> None:
    """No hub is reachable from many research machines: default to offline unless the user opts in."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
