"""`lost teacher train/eval` and `lost dataset features` end to end on a tiny synthetic dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lostcli.cli import app as app_module
from lostcli.cli import dataset as dataset_cli
from lostcli.cli import teacher as teacher_cli
from lostcli.config import load_config
from lostcli.data.store import DatasetStore, ShardWriter
from lostcli.train.teacher import TeacherRunConfig

from conftest import cli, cli_ok, one_error

REPO = Path(__file__).resolve().parents[1]
TINY = ["--set", "model.embed_dim=32", "--set", "model.image_size=32", "--set", "model.patch_size=8",
        "--set", "model.vision_width=32", "--set", "model.vision_layers=1", "--set", "model.vision_heads=2",
        "--set", "model.text_context=16", "--set", "model.text_width=32", "--set", "model.text_layers=1",
        "--set", "model.text_heads=2", "--set", "train.steps=6", "--set", "train.batch_size=4",
        "--set", "train.log_every=2", "--set", "train.save_every=3", "--set", "optim.warmup_steps=0"]

# The lead attaches these in cli/app.py; attach them here too until then (idempotent).
if not any(g.name == "teacher" for g in app_module.app.registered_groups):
    app_module.app.add_typer(teacher_cli.app, name="teacher")
if not any(c.name == "features" for c in dataset_cli.app.registered_commands):
    dataset_cli.app.command("features")(teacher_cli.features)


def make_store(root: Path) -> Path:
    """12 shapes in 3 colour-coded categories (renders 32 px, white background); one test shape each."""
    colors = {"chair": (220, 40, 40), "lamp": (40, 200, 40), "car": (40, 40, 220)}
    with ShardWriter(root, "items", shard_size=5) as w:
        for cat, rgb in colors.items():
            for n in range(4):
                img = np.full((4, 32, 32, 3), 255, np.uint8)
                img[:, 8:24 - n, 8:24 - n] = rgb
                w.add(f"{cat}-{n}", {"renders": img},
                      {"category": cat, "caption": f"a {cat} of size {n}", "split": "test" if n == 3 else "train"})
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(dataset, run dir) after a 6-step `lost teacher train` run."""
    root = make_store(tmp_path_factory.mktemp("ds"))
    run = tmp_path_factory.mktemp("run") / "teacher"
    cli_ok("teacher", "train", "--recipe", REPO / "recipes" / "tiny" / "teacher.yaml", "--data", root, "--out", run,
           *TINY)
    return root, run


def test_recipes_load():
    cfg = load_config(TeacherRunConfig, REPO / "recipes" / "tiny" / "teacher.yaml")
    assert cfg.model.image_size // cfg.model.patch_size == 8 and cfg.train.batch_size == 64
    from lostcli.batch.features import FeaturesConfig

    paper = load_config(FeaturesConfig, REPO / "recipes" / "paper" / "teacher-dinov2.yaml")
    assert paper.teacher.startswith("timm:vit_base_patch14_dinov2") and paper.image_size == 224 and paper.grid == 4


def test_train_writes_export_and_metrics(trained):
    _, run = trained
    export = run / "export"
    assert {"config.json", "model.safetensors", "open_clip_config.json", "run_config.json"} <= {
        p.name for p in export.iterdir()}
    meta = json.loads((export / "config.json").read_text())
    assert meta["class"] == "ClipTeacher" and meta["config"]["image_size"] == 32
    assert meta["run"]["train"]["steps"] == 6
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6]
    assert all(np.isfinite(r["loss"]) and 0.0 <= r["acc_i2t"] <= 1.0 for r in rows)
    assert (run / "config.yaml").is_file() and (run / "command.txt").is_file()


def test_eval_prints_and_writes_json(trained, capsys):
    root, run = trained
    code, out, err = cli(capsys, "teacher", "eval", "--teacher", run / "export", "--data", root, "--split", "test")
    assert code == 0, err
    assert "text->render top-1" in out and "chance 0.333" in out
    result = json.loads((run / "export" / "eval.json").read_text())
    assert result["n"] == 3 and result["split"] == "test" and result["chance_top1"] == pytest.approx(1 / 3)
    for key in ("text_to_render_top1", "render_to_text_top1", "text_to_render_category_top1"):
        assert result[key] in (0.0, 1 / 3, 2 / 3, 1.0)
    assert result["command"].startswith("lost teacher eval")


def test_features_command_and_resume(trained, capsys):
    root, run = trained
    code, out, err = cli(capsys, "dataset", "features", root, "--teacher", run / "export", "--grid", "2")
    assert code == 0, err
    assert "embedded 12 shapes, skipped 0" in out
    store = DatasetStore(root)
    a = store.load("car-1", table="features")
    assert a["global_views"].shape == (4, 32) and a["global"].shape == (32,) and a["spatial"].shape == (4, 2, 2, 32)
    assert np.allclose(np.linalg.norm(a["global_views"], axis=-1), 1.0, atol=1e-5)
    stats = store.read_stats("features")
    assert stats["items"] == 12 and stats["grid"] == 2 and stats["teacher"]["name"] == "lost-clip (built-in)"
    code, out, _ = cli(capsys, "dataset", "features", root, "--teacher", run / "export", "--grid", "2")
    assert code == 0 and "embedded 0 shapes, skipped 12" in out
    code, _, err = cli(capsys, "dataset", "features", root, "--teacher", run / "export", "--grid", "1")
    assert code == 2 and err.startswith(f"error: {root / 'features'}: holds features") and len(err.splitlines()) == 1


def test_offline_hub_teacher_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = make_store(tmp_path / "ds")
    code, out, err = cli(capsys, "dataset", "features", root, "--teacher", "timm:vit_base_patch14_dinov2.lvd142m")
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: timm:vit_base_patch14_dinov2.lvd142m: could not load pretrained weights")
    assert not (root / "features").exists()
    code, _, err = cli(capsys, "teacher", "eval", "--teacher", "timm:nope_model", "--data", root)
    assert code == 2 and err.startswith("error: timm:nope_model: unknown timm model") and len(err.splitlines()) == 1


def test_category_caption_prob_out_of_range_is_one_line_error(tmp_path, capsys):
    root = make_store(tmp_path / "ds")
    run = tmp_path / "run"
    code, _, err = cli(capsys, "teacher", "train", "--recipe", REPO / "recipes" / "tiny" / "teacher.yaml",
                       "--data", root, "--out", run, "--set", "data.category_caption_prob=1.5")
    assert code == 2 and "data.category_caption_prob: must be in [0, 1] (got 1.5)" in one_error(err)
    assert not run.exists()  # refused before the run directory is made
