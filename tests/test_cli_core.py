"""The `lost` root: --version, --help, `lost info`, one-line user errors, --debug, the torchvision shim."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import typer

from lostcli import __version__
from lostcli.cli.app import app

from conftest import cli

REPO = Path(__file__).resolve().parents[1]


def run_lost(*args: str) -> subprocess.CompletedProcess:
    """Run `python -m lostcli ARGS` in a fresh interpreter (real exit code and stderr)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "lostcli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)


def test_version(capsys):
    code, out, err = cli(capsys, "--version")
    assert code == 0
    assert out == f"lost {__version__}\n"
    assert err == ""


def command_tree() -> dict[tuple[str, ...], list[str]]:
    """Every command path of the real `lost` app, from the root down -> the names of its subcommands ([] for a
    command that is not a group)."""
    tree: dict[tuple[str, ...], list[str]] = {}

    def walk(cmd, path: tuple[str, ...]) -> None:
        ctx = typer.Context(cmd, info_name=path[-1])
        names = list(cmd.list_commands(ctx)) if hasattr(cmd, "list_commands") else []
        tree[path] = names
        for name in names:
            walk(cmd.get_command(ctx, name), (*path, name))

    walk(typer.main.get_command(app), ("lost",))
    return tree


COMMANDS = command_tree()
GROUPS = [path for path, names in COMMANDS.items() if names]


def test_the_tree_holds_every_group():
    top = COMMANDS[("lost",)]
    assert {"dataset", "vae", "teacher", "rida", "tokenizer", "gpt", "eval", "info", "train-tokenizer", "tokenize",
            "decode", "generate", "bench", "demo"} <= set(top)
    assert len(COMMANDS) >= 41 and ("lost", "vae", "reconstruct") in COMMANDS  # the walk reached the leaves


@pytest.mark.parametrize("path", GROUPS, ids=" ".join)
def test_group_help_lists_its_commands(capsys, path):
    code, out, err = cli(capsys, *path[1:], "--help")
    assert code == 0, err
    assert f"Usage: {' '.join(path)} " in out, out
    for name in COMMANDS[path]:
        assert f" {name} " in out, f"{name} missing from {' '.join(path)} --help"


@pytest.mark.parametrize("path", [p for p in COMMANDS if p != ("lost",)], ids=" ".join)
def test_every_command_help_exits_0_with_its_usage(capsys, path):
    code, out, err = cli(capsys, *path[1:], "--help")
    assert code == 0, err
    assert f"Usage: {' '.join(path)} " in out, out


def test_info_json(capsys):
    code, out, err = cli(capsys, "info", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["lost"] == __version__
    assert data["packages"]["torch"] == str(torch.__version__)
    assert data["threads"] == torch.get_num_threads()
    if not torch.cuda.is_available():
        assert data["device"] == "cpu" and data["precision"] == "fp32" and data["cuda_devices"] == 0
    assert isinstance(data["weights"], list) and data["weights"]
    for w in data["weights"]:
        assert {"name", "what", "where"} <= set(w)
        assert w["where"] is None or Path(w["where"]).exists()


def test_info_table(capsys):
    code, out, _ = cli(capsys, "info")
    assert code == 0
    assert f"lost {__version__}" in out and "torch threads:" in out and "LOST_WEIGHTS" in out


def test_user_error_is_one_line_and_exit_2(tmp_path):
    """A config typo through the real entry point: exit code 2, one stderr line naming the dotted key."""
    out = tmp_path / "P"
    proc = run_lost("dataset", "prepare", tmp_path, "--out", out, "--set", "occupancy.n_unform=3")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: occupancy.n_unform: unknown key")
    assert "n_uniform" in lines[0]  # the known keys are listed
    assert "Traceback" not in proc.stderr
    assert not out.exists()  # nothing written before the config was valid


def test_debug_shows_the_traceback(capsys, tmp_path):
    code, _, err = cli(capsys, "--debug", "dataset", "prepare", tmp_path, "--out", tmp_path / "P",
                       "--set", "occupancy.n_unform=3")
    assert code == 2
    assert "Traceback" in err and "ConfigError" in err
    assert err.splitlines()[-1].startswith("error: occupancy.n_unform: unknown key")
    # Without --debug the same error is one line: the flag does not leak between invocations.
    code, _, err = cli(capsys, "dataset", "prepare", tmp_path, "--out", tmp_path / "P",
                       "--set", "occupancy.n_unform=3")
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err


def test_usage_error_exits_nonzero(capsys):
    code, _, err = cli(capsys, "dataset", "no-such-command")
    assert code == 2
    assert "no-such-command" in err


def test_torchvision_shim_lets_timm_and_open_clip_import():
    """The .pth in the venv loads the shim at start-up; timm and open_clip then import on a CPU torch."""
    code = (
        "import sys\n"
        "assert 'lostcli._torchvision_shim' in sys.modules, 'the .pth did not load the shim'\n"
        "assert 'torchvision' not in sys.modules\n"
        "import timm, open_clip, torchvision.extension\n"
        "import lostcli._torchvision_shim as shim\n"
        "assert callable(timm.create_model) and callable(open_clip.create_model_and_transforms)\n"
        "print(shim.applied, torchvision.extension._has_ops())\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    applied, native_ops = proc.stdout.split()
    # The shim steps in exactly when torchvision's compiled ops cannot load (a CUDA wheel on CPU torch).
    assert applied == str(native_ops == "False")
