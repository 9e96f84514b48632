"""Test-wide settings (offline hubs, two threads, deterministic seeds) and the helpers several test files share.

Shared helpers are plain functions imported with `from conftest import cli, one_error, ...`; the one-thread
fixture is switched on per file with `pytestmark = pytest.mark.usefixtures("one_thread")`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

if TYPE_CHECKING:
    import trimesh

torch.set_num_threads(min(2, os.cpu_count() or 1))

DATA = Path(__file__).parent / "data"  # the small real meshes checked in beside the tests


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
    yield


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread avoids OpenMP hand-offs (slow, ~10x, on a shared, busy CPU)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def one_thread_module():
    """`one_thread` for a whole module, module-scoped fixtures (tiny bundles, evaluations) included."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")


VENDORED = os.path.join(os.path.dirname(__file__), "data")  # copies of the state-dict manifests (fixtures/)


def shared_path(*parts: str) -> str:
    """Path into ../shared (the fixtures and real meshes beside the checkout); the copy under tests/data when a
    bare clone has no ../shared."""
    path = os.path.abspath(os.path.join(SHARED, *parts))
    vendored = os.path.join(VENDORED, *parts)
    return path if os.path.exists(path) or not os.path.exists(vendored) else vendored


def cli(capsys, *args) -> tuple[int, str, str]:
    """Run `lost ARGS` in-process: (exit code, stdout, stderr)."""
    from lostcli.cli.app import main  # lazily: most test files never touch the CLI

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def cli_ok(*args) -> None:
    """`lost ARGS` for fixtures (no capsys there); fails on a non-zero exit."""
    from lostcli.cli.app import main

    try:
        main([str(a) for a in args])
    except SystemExit as e:
        assert e.code in (0, None), f"lost {' '.join(map(str, args))} exited with {e.code}"


def one_error(err: str, path=None) -> str:
    """The single stderr line of a user error (fails when there are more, or a traceback); it names `path`
    first when given."""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    if path is not None:
        assert lines[0].startswith(f"error: {path}"), lines[0]
    return lines[0]


def make_box(extents=(1.0, 1.0, 1.0), center=(0.0, 0.0, 0.0)) -> trimesh.Trimesh:
    """An axis-aligned closed box mesh with the given side lengths, centred at `center`."""
    import trimesh

    m = trimesh.creation.box(extents=extents)
    m.apply_translation(center)
    return m


class Killed(RuntimeError):
    """What `kill_before_step` raises: a training run dying mid-way, as a kill or a crash would."""


def kill_before_step(task, step: int):
    """Make `task` die when the loop reaches 0-based optimizer step `step` (after `step` steps are done and
    logged, before anything else is saved), through the `Task.on_step_start` hook every loop call makes.
    Returns the task; its own hook still runs on the steps before."""
    hook = getattr(task, "on_step_start", None)

    def on_step_start(s: int, epoch: int) -> None:
        if s == step:
            raise Killed(f"killed before step {step}")
        if hook is not None:
            hook(s, epoch)

    task.on_step_start = on_step_start
    return task
