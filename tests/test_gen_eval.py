"""`lost eval gen` (eval/gen.py): prompts per category, class accuracy, FD/KID rows per guidance scale, the report
files, on the tiny generation bundle of test_generate and a tiny render classifier (seconds on a CPU)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lostcli.data.render import LABEL_HEIGHT, TITLE_HEIGHT
from lostcli.data.store import ShardWriter
from lostcli.data.synth import CATEGORIES
from lostcli.errors import CheckpointError, ConfigError, DataError
from lostcli.models.classifier import RenderClassifier, RenderClassifierConfig, load_classifier
from lostcli.eval.gen import GenEvalConfig, category_prompts, evaluate_gen, parse_cfgs, render_markdown
from lostcli.pipeline import LostPipeline

from conftest import cli, one_error
from test_generate import add_generator
from test_pipeline import make_bundle

CATS = ["chair", "lamp", "widget"]  # two built-in categories and one the built-in generator does not know
FAST = dict(prompts_per_category=2, seeds=2, resolution=16, batch_size=4, kid_subsets=5, fd_network="classifier")


def make_store(root: Path) -> Path:
    """3 categories x 3 shapes (2 test, 1 train), 32 px grey-on-white renders of different sizes."""
    with ShardWriter(root, "items", shard_size=4) as w:
        for k, cat in enumerate(CATS):
            for n in range(3):
                img = np.full((4, 32, 32, 3), 255, np.uint8)
                img[:, 8 + k:24 - n, 10:22 + k] = 80 + 40 * n
                w.add(f"{cat}-{n}", {"renders": img}, {"category": cat, "caption": f"a {cat} of kind {n}",
                                                        "split": "train" if n == 0 else "test"})
    return root


def always(root: Path, category: str) -> Path:
    """A classifier export that names `category` for every image (its head is a constant), with eval.json."""
    torch.manual_seed(0)
    model = RenderClassifier(RenderClassifierConfig(image_size=32, stem_width=8, widths=[16, 32], categories=CATS))
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([10.0 if c == category else 0.0 for c in CATS]))
    model.save_pretrained(root)
    (root / "eval.json").write_text(json.dumps({"shape_acc": 0.5, "per_view_acc": 0.4}))
    return root


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("geneval")
    bundle = add_generator(make_bundle(root), root)
    return bundle, make_store(root / "data"), always(root / "cls", "chair")


@pytest.fixture(scope="module")
def evaluated(setup, tmp_path_factory):
    bundle, data, cls = setup
    pipe = LostPipeline.from_pretrained(bundle, device="cpu")
    out = tmp_path_factory.mktemp("report")
    result = evaluate_gen(pipe, data, GenEvalConfig(cfgs=[1.0, 2.0], **FAST), classifier=load_classifier(cls),
                          out_dir=out, command="lost eval gen (test)")
    return pipe, result, out


def test_prompts_per_category():
    records = [{"category": c, "caption": f"a {c} of kind {n}"} for c in CATS for n in (2, 1)] + [{"caption": "x"}]
    items = category_prompts(records, 3, seed=0)
    assert [c for c, _ in items] == ["chair"] * 3 + ["lamp"] * 3 + ["widget"] * 3
    chair = [p for c, p in items if c == "chair"]
    assert len(set(chair)) == 3 and all("chair" in p or "seat" in p or "armchair" in p for p in chair), chair
    assert [p for c, p in items if c == "widget"] == ["a widget of kind 1", "a widget of kind 2", "a widget of kind 1"]
    assert items == category_prompts(records, 3, seed=0) and items != category_prompts(records, 3, seed=1)
    assert "chair" in CATEGORIES and "widget" not in CATEGORIES
    with pytest.raises(DataError, match="no shape of the split has a category"):
        category_prompts([{"caption": "x"}], 3)


def test_parse_cfgs_and_config_checks():
    assert parse_cfgs("1,3") == [1.0, 3.0] and parse_cfgs("1.5") == [1.5]
    for bad in ("", "a,b", "1,-2", "nan"):
        with pytest.raises(ConfigError, match="--cfg"):
            parse_cfgs(bad)
    with pytest.raises(ConfigError, match="seeds"):
        GenEvalConfig(seeds=0)


def test_rows_class_accuracy_fd_and_clip_score(setup, evaluated):
    pipe, result, _ = evaluated
    rep = result.report
    assert [r["cfg"] for r in result.rows] == [1.0, 2.0] and rep["rows"] == result.rows
    n = len(CATS) * 2 * 2  # categories x prompts x seeds
    for row in result.rows:
        assert {"cfg", "class_acc", "fd", "kid", "n"} <= set(row) and row["n"] == n and row["class_n"] == n
        samples = [s for s in rep["samples"] if s["cfg"] == row["cfg"]]
        assert len(samples) == n and row["failures"] == sum(s["failed"] for s in samples)
        # the classifier always says "chair": exactly the chair samples with a surface are right
        right = sum(s["category"] == "chair" and not s["failed"] for s in samples)
        assert row["class_acc"] == pytest.approx(right / n)
        assert all(s["predicted"] == "chair" for s in samples if not s["failed"])
        assert row["fd"] is not None and row["fd"] > 0 and row["kid"] is not None
        cos = np.array([s["text_sim"] for s in samples])  # CLIP score: the row is the mean over its samples
        assert np.all(np.abs(cos) <= 1 + 1e-5) and len(set(np.round(cos, 6))) > 1
        assert row["text_sim"] == pytest.approx(cos.mean())
        assert row["clip_score"] == pytest.approx((100 * np.clip(cos, 0, None)).mean())
    assert result.rows[0]["failures"] < n  # the tiny bundle decodes surfaces
    # one piece and the per-category breakdown, from the per-sample records
    for row in result.rows:
        samples = [s for s in rep["samples"] if s["cfg"] == row["cfg"]]
        shares = [s["largest_part"] for s in samples]
        assert all((x is None) == s["failed"] for x, s in zip(shares, samples))
        assert all(x is None or 0.0 < x <= 1.0 for x in shares)
        assert row["one_piece"] == pytest.approx(np.mean([x is not None and x >= 0.95 for x in shares]))
        assert list(row["by_category"]) == ["chair", "lamp", "widget"]
        for cat, got in row["by_category"].items():
            mine = [s for s in samples if s["category"] == cat]
            assert got["n"] == len(mine) == 4
            assert got["class_acc"] == pytest.approx(np.mean([s["correct"] for s in mine]))
            assert got["one_piece"] == pytest.approx(np.mean([s["largest_part"] is not None
                                                              and s["largest_part"] >= 0.95 for s in mine]))
        assert row["by_category"]["lamp"]["class_acc"] == 0.0  # the classifier always says "chair"
    # the paired change of class accuracy from the first guidance row, sample by sample
    hits = {g: np.array([s["category"] == "chair" and not s["failed"] for s in rep["samples"] if s["cfg"] == g],
                        dtype=float) for g in (1.0, 2.0)}
    second = result.rows[1]
    assert second["class_acc_change"] == pytest.approx(hits[2.0].mean() - hits[1.0].mean())
    lo, hi = second["class_acc_change_ci"]
    assert lo <= second["class_acc_change"] <= hi and "class_acc_change" not in result.rows[0]
    assert rep["chance"] == pytest.approx(1 / 3) and rep["classifier_test_acc"] == 0.5
    assert rep["fd_network"] == "render-classifier" and rep["fd_metric"] == "FD-render-classifier"
    assert rep["reference"] == {"split": "test", "shapes": 6, "images": 24, "render_size": 32}
    assert "below 500 shapes" in rep["fd_warning"]
    assert rep["settings"]["num_tokens"] == pipe.gpt_length and rep["settings"]["seeds"] == 2
    assert [p["category"] for p in rep["prompts"]] == ["chair", "chair", "lamp", "lamp", "widget", "widget"]

    # the real reference line: each test shape's renders against the prompts of its own category
    from lostcli.data.store import DatasetStore
    from lostcli.eval.gen import TextRenderSimilarity

    assert rep["text_network"] == pipe.text_encoder.tower.name
    store = DatasetStore(setup[1])
    sim = TextRenderSimilarity(pipe.text_encoder, [p["prompt"] for p in rep["prompts"]])
    recs = store.records(split="test")
    views = np.stack([store.load(r["id"], keys=["renders"])["renders"] for r in recs])
    rows = [[i for i, p in enumerate(rep["prompts"]) if p["category"] == r["category"]] for r in recs]
    img = torch.nn.functional.normalize(pipe.text_encoder.tower.forward_views(torch.from_numpy(views))[0], dim=-1)
    manual = [float((img[b] @ sim.text[rows[b]].T).mean()) for b in range(len(recs))]
    assert sim.score(views, rows) == pytest.approx(np.array(manual), abs=1e-6)
    assert rep["real_text_sim"]["text_sim"] == pytest.approx(float(np.mean(manual)), abs=1e-6)


def test_rows_differ_only_by_guidance_and_are_reproducible(setup, evaluated):
    bundle, data, cls = setup
    pipe, result, _ = evaluated
    again = evaluate_gen(pipe, data, GenEvalConfig(cfgs=[2.0], **FAST), classifier=load_classifier(cls))
    same = {k: v for k, v in result.rows[1].items() if not k.startswith("class_acc_change")}
    assert again.rows[0] == same  # same prompts, seeds and scale: the same row
    first = [s for s in result.report["samples"] if s["cfg"] == 1.0]
    second = [s for s in result.report["samples"] if s["cfg"] == 2.0]
    assert [(s["prompt"], s["seed"], s["draw"]) for s in first] == [(s["prompt"], s["seed"], s["draw"]) for s in second]
    assert result.rows[0]["fd"] != result.rows[1]["fd"]  # guidance changes the shapes


def test_report_files(evaluated):
    _, result, out = evaluated
    assert sorted(p.name for p in out.iterdir()) == ["gen.json", "gen.md", "gen_grid.png"]
    data = json.loads((out / "gen.json").read_text())
    assert data["rows"] == result.rows and data["command"] == "lost eval gen (test)"
    md = (out / "gen.md").read_text()
    assert ("| cfg | class acc | FD-render-classifier | KID (x10^3) | CLIP score | text-render cos | one piece | "
            "failures | n |") in md
    assert "By category (cfg 1 / cfg 2):" in md and "| category | samples | class acc | one piece |" in md
    chair = [r["by_category"]["chair"] for r in result.rows]
    assert (f"| chair | 4 | {chair[0]['class_acc']:.2f} / {chair[1]['class_acc']:.2f} | "
            f"{chair[0]['one_piece']:.2f} / {chair[1]['one_piece']:.2f} |") in md
    assert "| real test renders | - | - | - |" in md
    assert md == render_markdown(result.report) and "chance 0.333" in md and "Warning:" in md
    assert f"| 1 | {result.rows[0]['class_acc']:.3f} |" in md
    grid = Image.open(out / "gen_grid.png")
    assert grid.size == (3 * 128, TITLE_HEIGHT + 2 * (128 + LABEL_HEIGHT))  # one row per cfg, one tile per category


def test_cli_eval_gen_and_errors(setup, tmp_path, capsys):
    bundle, data, cls = setup
    code, out, err = cli(capsys, "eval", "gen", "--model", bundle, "--data", data, "--cfg", "1,2", "--classifier", cls,
                         "--prompts-per-category", 1, "--seeds", 2, "--resolution", 16, "--fd-network", "classifier",
                         "--cfg-schedule", "linear", "--out", tmp_path / "r")
    assert code == 0, err
    assert json.loads((tmp_path / "r" / "gen.json").read_text())["settings"]["guidance_schedule"] == "linear"
    assert "cfg 1: class acc" in out and "cfg 2: class acc" in out and "FD-render-classifier" in out
    assert "below 500 shapes" in err
    rows = json.loads((tmp_path / "r" / "gen.json").read_text())["rows"]
    assert [r["n"] for r in rows] == [6, 6]

    broken = tmp_path / "b"
    shutil.copytree(bundle, broken)
    shutil.rmtree(broken / "gpt")
    code, _, err = cli(capsys, "eval", "gen", "--model", broken, "--data", data, "--classifier", cls,
                       "--out", tmp_path / "r2")
    assert code == 2 and one_error(err) == f"error: {broken}: component 'gpt' is missing (run lost gpt export RUN " \
                                           f"--into {broken})"
    code, _, err = cli(capsys, "eval", "gen", "--model", bundle, "--data", data, "--cfg", "x", "--out", tmp_path / "r3")
    assert code == 2 and "--cfg x" in one_error(err)
    code, _, err = cli(capsys, "eval", "gen", "--model", bundle, "--data", data, "--cfg-schedule", "cosine",
                       "--out", tmp_path / "r3")
    assert code == 2 and "guidance_schedule: must be one of ['constant', 'linear']" in one_error(err)
    code, _, err = cli(capsys, "eval", "gen", "--model", bundle, "--data", data, "--fd-network", "classifier",
                       "--out", tmp_path / "r4")
    assert code == 2 and "--classifier" in one_error(err)

    # --prompts FILE (the form, with --ref): a graded line, an ungraded one, comments skipped
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# my prompts\nchair\ta wooden chair\n\na brass telescope\n")
    code, out, err = cli(capsys, "eval", "gen", "--model", bundle, "--prompts", prompts, "--ref", data, "--cfg", "1",
                         "--classifier", cls, "--seeds", 2, "--resolution", 16, "--fd-network", "classifier",
                         "--out", tmp_path / "r5")
    assert code == 0, err
    rep = json.loads((tmp_path / "r5" / "gen.json").read_text())
    assert rep["prompts"] == [{"category": "chair", "prompt": "a wooden chair"},
                              {"category": None, "prompt": "a brass telescope"}]
    row = rep["rows"][0]
    assert row["n"] == 4 and row["class_n"] == 2  # only the chair prompt's draws are graded
    assert row["class_acc"] == pytest.approx(sum(not s["failed"] for s in rep["samples"][:2]) / 2)
    assert row["clip_score"] is not None
    for text, why in (("", "no prompts"), ("chair\t  \n", "empty prompt")):
        prompts.write_text(text)
        code, _, err = cli(capsys, "eval", "gen", "--model", bundle, "--prompts", prompts, "--ref", data,
                           "--out", tmp_path / "r6")
        assert code == 2 and why in one_error(err) and str(prompts) in err


def test_missing_generator_fails_before_work(setup, tmp_path):
    bundle, data, cls = setup
    broken = tmp_path / "b"
    shutil.copytree(bundle, broken)
    shutil.rmtree(broken / "text_encoder")
    pipe = LostPipeline.from_pretrained(broken, device="cpu")
    with pytest.raises(CheckpointError, match="component 'text_encoder' is missing"):
        evaluate_gen(pipe, data, GenEvalConfig(**FAST), classifier=load_classifier(cls))
