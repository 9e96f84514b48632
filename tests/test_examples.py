"""examples/: the API script runs against a tiny bundle and writes what it says; the shell scripts and cluster
configs parse, and every `lost ...` command they run (or document) parses with the real CLI."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import trimesh
import typer
import yaml

from test_generate import add_generator
from test_pipeline import make_bundle

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
SHELL_EXAMPLES = ["custom_meshes.sh", "real_weights.sh", "cluster/slurm_train.sbatch"]
# Click's UsageError (unknown command or option, missing or mistyped value), from whichever Click Typer runs on
# (recent Typer vendors its own copy): the base class of the BadParameter Typer re-exports.
UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def test_api_example_tokenizes_decodes_and_generates(tmp_path):
    bundle = add_generator(make_bundle(tmp_path), tmp_path)
    mesh = tmp_path / "box.glb"
    trimesh.creation.box((2.0, 1.0, 0.5)).apply_translation((5.0, 0.0, 0.0)).export(mesh)
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(EXAMPLES / "api_tokenize_decode.py"), "--model", str(bundle),
                           "--mesh", str(mesh), "--out", str(out), "--steps", "2", "--resolution", "16"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (out / "tokens.safetensors").is_file() and "tokens" in proc.stdout
    decoded = sorted(out.glob("decoded_k*.glb"))
    assert decoded, proc.stdout
    # decodes come back in the input's frame: centred near the box's centre x = 5, not at the origin
    for path in decoded:
        assert trimesh.load(path, force="mesh").bounds.mean(axis=0)[0] > 3.0
    assert sorted(out.glob("generated_*.glb")) and "generated_0.glb" in proc.stdout


@pytest.mark.parametrize("script", SHELL_EXAMPLES)
def test_shell_examples_parse(script):
    assert subprocess.run(["bash", "-n", str(EXAMPLES / script)], capture_output=True).returncode == 0


def lost_commands(text: str) -> list[list[str]]:
    """The argument lists of the `lost` commands a script runs (lines starting with `lost `) or documents (usage
    comments `sbatch ... slurm_train.sbatch ARGS`, whose ARGS are a lost command); backslash continuations joined."""
    code = re.sub(r"\\\n\s*", " ", text)  # code lines continued with a backslash
    docs = re.sub(r"\\\n#\s*", " ", text)  # comment lines continued on the next comment line
    commands = [shlex.split(line.strip(), comments=True)[1:] for line in code.splitlines()
                if line.strip().startswith("lost ")]
    for line in docs.splitlines():
        found = re.match(r"#\s+sbatch .*slurm_train\.sbatch (.+)$", line)
        if found:
            commands.append(shlex.split(found.group(1)))
    return commands


def parse_lost(args: list[str]):
    """Parse `lost ARGS` with the real command tree (nothing runs) and return the command's context: raises
    UsageError for an unknown command, an unknown option, a missing argument or a value of the wrong type."""
    from lostcli.cli.app import app

    cmd = typer.main.get_command(app)
    path, args = ["lost"], list(args)
    ctx = typer.Context(cmd, info_name="lost")
    while hasattr(cmd, "get_command"):  # a group: the next word names its command
        if not args or args[0].startswith("-"):
            raise UsageError(f"{' '.join(path)}: expected a command, got {args[:1]}")
        name = args.pop(0)
        sub = cmd.get_command(ctx, name)
        if sub is None:
            raise UsageError(f"{' '.join(path)}: no command {name!r}")
        cmd, path = sub, [*path, name]
        ctx = typer.Context(cmd, info_name=name, parent=ctx)
    return cmd.make_context(path[-1], args, parent=ctx.parent)


@pytest.mark.parametrize("script, least", [("custom_meshes.sh", 6), ("real_weights.sh", 13),
                                           ("cluster/slurm_train.sbatch", 2)])
def test_shell_examples_lost_commands_exist(script, least):
    commands = lost_commands((EXAMPLES / script).read_text())
    assert len(commands) >= least, commands  # the extraction found the commands (the test is not vacuous)
    for args in commands:
        try:
            parse_lost(args)
        except UsageError as e:
            pytest.fail(f"{script}: lost {shlex.join(args)}: {e.format_message()}")


def test_parse_lost_catches_renamed_options_and_commands():
    ctx = parse_lost(["vae", "reconstruct", "in.glb", "--vae", "v", "--resolution", "64"])
    assert ctx.command_path == "lost vae reconstruct" and ctx.params["resolution"] == 64
    for bad in (["vae", "reconstruct", "in.glb", "--vae", "v", "--grid-resolution", "64"],  # no such option
                ["vae", "reconstruct", "in.glb", "--vae", "v", "--resolution", "high"],  # not an int
                ["vae", "reconstruct", "--vae", "v"],  # missing MESH
                ["vae", "rebuild", "in.glb"], ["vae"]):  # no such command, no command
        with pytest.raises(UsageError):
            parse_lost(bad)


def test_accelerate_configs():
    for path in sorted((EXAMPLES / "cluster").glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        assert cfg["distributed_type"] == "MULTI_GPU" and cfg["mixed_precision"] == "no", path
        assert cfg["num_processes"] % cfg["num_machines"] == 0, path
