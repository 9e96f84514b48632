"""The render classifier: model, training task through the shared loop, export round trip, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lostcli.cli import app as app_module
from lostcli.cli import eval as eval_cli
from lostcli.config import OptimConfig, TrainConfig, load_config
from lostcli.data.store import ShardWriter
from lostcli.errors import CheckpointError, ConfigError, DataError
from lostcli.models.classifier import (RenderClassifier, RenderClassifierConfig, classify_views, evaluate_classifier,
                                       label_indices, load_classifier, predict_renders, shape_probabilities)
from lostcli.train.classifier import (ClassifierDataConfig, ClassifierRunConfig, ClassifierTask, RenderLabelDataset,
                                      augment, dataset_categories, train_classifier)
from lostcli.train.loop import seed_everything, train

from conftest import cli  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = dict(image_size=32, stem_width=8, widths=[16, 32], dropout=0.0)
TINY_SETS = ["--set", "model.image_size=32", "--set", "model.stem_width=8", "--set", "model.widths=[16,32]",
             "--set", "train.steps=40", "--set", "train.batch_size=6", "--set", "train.log_every=5",
             "--set", "train.save_every=10", "--set", "optim.warmup_steps=0", "--set", "optim.lr=1e-2",
             "--set", "optim.schedule=constant", "--set", "data.shift=2"]

# The lead registers the group in cli/app.py; attach it here too until then (idempotent).
if not any(g.name == "eval" for g in app_module.app.registered_groups):
    app_module.app.add_typer(eval_cli.app, name="eval")


def renders(kind: int, n: int, size: int = 32) -> np.ndarray:
    """uint8 [4, size, size, 3] grey-on-white: kind 0 a small square, kind 1 a wide bar (jittered by n, view)."""
    img = np.full((4, size, size, 3), 255, np.uint8)
    c = size // 2
    for v in range(4):
        shade = 90 + 20 * ((n + v) % 3)
        if kind == 0:
            h = 4 + (n + v) % 2
            img[v, c - h:c + h, c - h:c + h] = shade
        else:
            img[v, c - 3:c + 3, 3:size - 3] = shade
    return img


def make_store(root: Path, per_class: int = 6, size: int = 32) -> Path:
    """Two categories ("cube", "bar"); the last two shapes of each are the test split."""
    with ShardWriter(root, "items", shard_size=5) as w:
        for kind, cat in enumerate(["cube", "bar"]):
            for n in range(per_class):
                split = "test" if n >= per_class - 2 else "train"
                w.add(f"{cat}-{n}", {"renders": renders(kind, n, size)}, {"category": cat, "split": split})
    return root


def tiny_classifier(categories=("bar", "cube")) -> RenderClassifier:
    torch.manual_seed(0)
    return RenderClassifier(RenderClassifierConfig(**TINY, categories=list(categories)))


# ----------------------------------------------------------------------------------------------------
# Model and inference
# ----------------------------------------------------------------------------------------------------


def test_forward_shapes_identity_residuals_and_every_parameter_gets_a_gradient():
    model = tiny_classifier(("a", "b", "c")).train()
    x = torch.randn(5, 3, 32, 32)
    stage = model.blocks[0]
    h = stage.down(model.stem(x))
    assert torch.equal(stage(model.stem(x)), torch.relu(h))  # zero-initialised residual branch
    with torch.no_grad():  # give the residual branches a non-zero scale so every weight is on the path
        for s in model.blocks:
            s.conv[1].weight.fill_(0.5)
    logits = model(x)
    assert logits.shape == (5, 3) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0, 1])).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_predictions_shape_and_view_averaging():
    model = tiny_classifier(("a", "b", "c")).eval()
    images = torch.from_numpy(np.stack([renders(0, 0, 40), renders(1, 1, 40)]))  # [2, 4, 40, 40, 3]
    logits = classify_views(model, images, batch_size=3)  # batches straddle shapes
    assert logits.shape == (2, 4, 3)
    direct = model(model.preprocess(images.reshape(8, 40, 40, 3))).view(2, 4, 3)
    assert torch.allclose(logits, direct, atol=1e-5)
    probs = predict_renders(model, images.numpy())
    assert probs.shape == (2, 3)
    assert torch.allclose(probs.sum(dim=1), torch.ones(2), atol=1e-6)
    assert torch.allclose(probs, logits.mean(dim=1).softmax(dim=-1), atol=1e-6)
    assert torch.allclose(shape_probabilities(logits), probs)
    with pytest.raises(ValueError):
        classify_views(model, images.float())


def test_label_indices_marks_unknown():
    assert label_indices(["b", None, "z", "a"], ["a", "b"]).tolist() == [1, -1, -1, 0]


def test_config_checks():
    with pytest.raises(ConfigError, match="categories"):
        RenderClassifier(RenderClassifierConfig(**TINY, categories=["only"]))
    with pytest.raises(ConfigError, match="categories"):
        RenderClassifierConfig(categories=["a", "a"])
    with pytest.raises(ConfigError, match="dropout"):
        RenderClassifierConfig(dropout=1.0)


def test_augment_keeps_shape_and_is_identity_when_off():
    x = torch.randn(6, 3, 16, 16)
    assert torch.equal(augment(x, flip=False, shift=0), x)
    torch.manual_seed(1)
    y = augment(x, flip=True, shift=3)
    assert y.shape == x.shape
    white = (1.0 - 0.5) / 0.25
    # every output image is a flipped or unflipped shift of its input: its centre pixels come from x
    for b in range(6):
        found = any(torch.equal(y[b, :, 3:13, 3:13], src[:, 3 + dy:13 + dy, 3 + dx:13 + dx])
                    for src in (x[b], x[b].flip(-1)) for dy in range(-3, 4) for dx in range(-3, 4))
        assert found
    assert (y == white).any()  # some fill came in (shifts are random, 6 images)


# ----------------------------------------------------------------------------------------------------
# Training task and export
# ----------------------------------------------------------------------------------------------------


def test_task_loss_falls_through_the_shared_loop(tmp_path):
    root = make_store(tmp_path / "ds")
    cats = dataset_categories(root, "train")
    assert cats == ["bar", "cube"]
    ds = RenderLabelDataset(root, "train", cats, image_size=32)
    assert len(ds) == 8 and ds[0]["renders"].shape == (4, 32, 32, 3) and ds[0]["renders"].dtype == torch.uint8
    seed_everything(0)
    task = ClassifierTask(RenderClassifier(RenderClassifierConfig(**TINY, categories=cats)),
                          ClassifierDataConfig(shift=2))
    result = train(task, ds, TrainConfig(steps=30, batch_size=8, ema_decay=0.0, log_every=5, save_every=0),
                   OptimConfig(lr=1e-2, warmup_steps=0, schedule="constant"), tmp_path / "run", progress=False)
    assert len(result.losses) == 6
    assert result.losses[0] > 0.5  # ~ln 2 at the start
    assert result.losses[-1] < 0.5 * result.losses[0]
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["acc"] > 0.8
    loaded = RenderClassifier.from_pretrained(result.export_dir)
    ev = evaluate_classifier(loaded, root, split="test")
    assert ev["n"] == 4 and ev["shape_acc"] == 1.0 and ev["chance"] == 0.5


def test_export_load_round_trip(tmp_path):
    model = tiny_classifier(("bar", "cube", "mug")).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics must survive too
        model.stem[1].running_mean.uniform_(-0.5, 0.5)
    model.save_pretrained(tmp_path / "export", extra_config={"run": {"note": 1}})
    loaded = RenderClassifier.from_pretrained(tmp_path / "export")
    assert loaded.categories == ["bar", "cube", "mug"] and not loaded.training
    images = torch.from_numpy(np.stack([renders(0, 2), renders(1, 3)]))
    assert torch.equal(classify_views(model, images), classify_views(loaded, images))
    meta = json.loads((tmp_path / "export" / "config.json").read_text())
    assert meta["class"] == "RenderClassifier" and meta["run"] == {"note": 1}

    # a run directory resolves to its export; eval.json is carried along
    (tmp_path / "export" / "eval.json").write_text(json.dumps({"shape_acc": 0.75, "per_view_acc": 0.6}))
    lc = load_classifier(tmp_path)
    assert lc.path == tmp_path / "export" and lc.test_accuracy == 0.75

    with pytest.raises(CheckpointError, match="no render classifier"):
        load_classifier(tmp_path / "nowhere")
    (tmp_path / "export" / "model.safetensors").write_bytes(b"broken")
    with pytest.raises(CheckpointError, match="model.safetensors: unreadable"):
        RenderClassifier.from_pretrained(tmp_path / "export")
    other = tiny_classifier(("a", "b"))
    other.save_pretrained(tmp_path / "other")
    cfg = json.loads((tmp_path / "other" / "config.json").read_text())
    cfg["config"]["widths"] = [16, 64]
    (tmp_path / "other" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not fit"):
        RenderClassifier.from_pretrained(tmp_path / "other")


def test_train_classifier_refuses_bad_splits_and_categories(tmp_path):
    root = make_store(tmp_path / "ds")
    cfg = ClassifierRunConfig(model=RenderClassifierConfig(**TINY), eval_split="train")
    with pytest.raises(DataError, match="another split"):
        train_classifier(cfg, root, tmp_path / "run", progress=False)
    with pytest.raises(DataError, match="category 'cube'"):
        RenderLabelDataset(root, "train", ["bar", "mug"], image_size=32)


# ----------------------------------------------------------------------------------------------------
# Recipe and CLI
# ----------------------------------------------------------------------------------------------------


def test_recipe_loads_and_builds():
    cfg = load_config(ClassifierRunConfig, REPO / "recipes" / "tiny" / "classifier.yaml")
    assert cfg.split == "train" and cfg.eval_split == "test" and cfg.model.image_size == 96
    model = RenderClassifier(RenderClassifierConfig(**{**vars(cfg.model), "categories": ["a", "b"]}))
    assert model(torch.zeros(1, 3, 96, 96)).shape == (1, 2)


def test_cli_trains_and_reports_test_accuracy(tmp_path, capsys):
    root = make_store(tmp_path / "ds")
    out = tmp_path / "cls"
    code, stdout, err = cli(capsys, "eval", "classifier", "--data", root, "--out", out, *TINY_SETS)
    assert code == 0, err
    assert "test accuracy on real renders (4 shapes, 2 categories)" in stdout
    ev = json.loads((out / "eval.json").read_text())
    assert json.loads((out / "export" / "eval.json").read_text()) == ev
    assert ev["split"] == "test" and ev["train_split"] == "train" and ev["train_items"] == 8
    assert set(ev) >= {"per_view_acc", "shape_acc", "view_acc", "chance", "categories", "per_category_shape_acc"}
    assert len(ev["view_acc"]) == 4 and 0.0 <= ev["per_view_acc"] <= 1.0
    assert ev["shape_acc"] >= 0.75  # easy two-class data
    assert (out / "config.yaml").is_file() and (out / "command.txt").is_file()
    assert load_classifier(out).test_accuracy == ev["shape_acc"]

    code, _, err = cli(capsys, "eval", "classifier", "--data", tmp_path / "missing", "--out", tmp_path / "x")
    assert code == 2 and err.count("\n") == 1 and "missing" in err
