"""`lost gpt train` and `lost gpt export` end to end through the real `main`: a tiny bundle (test_pipeline), a
tiny store with captions and a tokens table of that bundle, a tiny built-in teacher as the text encoder."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import cli, cli_ok, one_error
from lostcli.models.gpt import LoSTGPT
from lostcli.models.teacher import ClipTeacher, ClipTeacherConfig
from lostcli.models.text import TextEncoder
from lostcli.teachers import load_text_encoder_folder
from test_gpt_train import TEXT, write_store
from test_pipeline import R, make_bundle

REPO = Path(__file__).resolve().parents[1]
TINY = ["--recipe", REPO / "recipes" / "tiny" / "gpt.yaml",
        "--set", "model.overrides={num_tokens: 6, width: 32, depth: 1, heads: 2, diffloss: {width: 32, depth: 1}}",
        "--set", "train.batch_size=4", "--set", "train.steps=4", "--set", "train.log_every=1",
        "--set", "train.save_every=0", "--set", "optim.warmup_steps=0", "--set", "sampling.guidance=2.5"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """bundle/ (tiny VAE + tokenizer, R = 8 tokens of 32), data/ (12 shapes, tokens of that bundle), teacher/."""
    root = tmp_path_factory.mktemp("cli_gpt")
    bundle = make_bundle(root)
    model_id = json.loads((bundle / "bundle.json").read_text())["model_id"]
    write_store(root / "data", model_id=model_id, R=R, D=32)
    torch.manual_seed(0)
    ClipTeacher(ClipTeacherConfig(**TEXT)).save_pretrained(root / "teacher" / "export")
    return root


@pytest.fixture(scope="module")
def trained(work, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run") / "gpt"
    cli_ok(*train_args(work, run, work / "teacher"))
    return run


def train_args(work: Path, run: Path, text_encoder) -> list:
    return ["gpt", "train", "--data", work / "data", "--model", work / "bundle", "--text-encoder", text_encoder,
            "--out", run, *TINY]


def test_train_writes_the_run(work, trained):
    run = trained
    meta = json.loads((run / "export" / "config.json").read_text())
    bundle_id = json.loads((work / "bundle" / "bundle.json").read_text())["model_id"]
    assert meta["class"] == "LoSTGPT" and meta["config"]["num_tokens"] == 6 and meta["config"]["token_dim"] == 32
    assert meta["config"]["cond_dim"] == TEXT["embed_dim"]  # forced from the text encoder
    assert meta["tokens"] == {"model_id": bundle_id, "bundle": str(work / "bundle")}
    assert meta["sampling"] == {"num_tokens": 6, "guidance": 2.5, "guidance_schedule": "linear",
                                "temperature": 1.0, "sample_steps": 25}
    assert meta["text_encoder"]["kind"] == "builtin"
    assert meta["text_encoder"]["spec"] == str((work / "teacher" / "export").resolve())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in rows)
    cache = list((run / "text_cache").glob("*.safetensors"))
    assert len(cache) == 1
    texts = json.loads(cache[0].with_suffix(".json").read_text())["texts"]
    assert "a chair" in texts and "a lamp" in texts and len(texts) > 2  # stored captions + re-phrasings
    assert load_file(str(cache[0]))["embeddings"].shape == (len(texts), TEXT["embed_dim"])
    te = load_text_encoder_folder(run / "text_encoder")  # a full copy of the built-in teacher
    teacher = TextEncoder(ClipTeacher.from_pretrained(work / "teacher" / "export"), spec="teacher")
    assert te.fingerprint() == meta["text_encoder"]["fingerprint"] == teacher.fingerprint()
    assert "config.yaml" in {p.name for p in run.iterdir()}


def test_export_adds_gpt_and_text_encoder_and_keeps_the_rest(work, trained, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    shutil.copytree(work / "bundle", bundle)
    before = {k: v for k, v in _digests(bundle).items() if k.startswith(("vae/", "tokenizer/"))}
    code, out, err = cli(capsys, "gpt", "export", trained, "--into", bundle)
    assert code == 0, err
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["components"] == {"vae": "vae", "tokenizer": "tokenizer", "gpt": "gpt", "text_encoder": "text_encoder"}
    g = meta["gpt"]
    assert (g["num_tokens"], g["token_dim"], g["cond_dim"], g["guidance"], g["temperature"]) == (6, 32, 16, 2.5, 1.0)
    assert g["model_id"] == meta["model_id"] and g["guidance_schedule"] == "linear" and g["sample_steps"] == 25
    assert "gpt 6 tokens x 32" in out and "components vae, tokenizer, gpt, text_encoder" in out
    after = _digests(bundle)
    assert all(after[k] == v for k, v in before.items())  # vae/ and tokenizer/ untouched
    gpt = LoSTGPT.from_pretrained(bundle / "gpt")
    ref = LoSTGPT.from_pretrained(trained)
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in gpt.state_dict().items())
    text = load_text_encoder_folder(bundle / "text_encoder")
    teacher = ClipTeacher.from_pretrained(work / "teacher" / "export")
    torch.testing.assert_close(text.encode(["a chair"]), teacher.encode_text(["a chair"]), rtol=0, atol=1e-6)
    # exporting again replaces gpt/ in place and keeps everything else
    code, _, err = cli(capsys, "gpt", "export", trained / "export", "--into", bundle)
    assert code == 0, err
    again = _digests(bundle)
    assert again.pop("bundle.json") != after.pop("bundle.json") and again == after  # only sources.gpt changed
    assert json.loads((bundle / "bundle.json").read_text())["sources"]["gpt"] == str(trained / "export")


def test_resume_continues_the_run(work, trained, tmp_path, capsys):
    run = tmp_path / "gpt"
    shutil.copytree(trained, run)
    args = train_args(work, run, work / "teacher")
    code, _, err = cli(capsys, *args, "--set", "train.steps=6", "--resume")
    assert code == 0, err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    code, _, err = cli(capsys, *args, "--set", "train.steps=6")  # not --resume: refused, naming the run
    assert code == 2 and "already holds checkpoints" in one_error(err)
    # another text encoder on the same run: refused before anything is written
    torch.manual_seed(5)
    ClipTeacher(ClipTeacherConfig(**TEXT)).save_pretrained(tmp_path / "other_teacher")
    code, _, err = cli(capsys, *train_args(work, run, tmp_path / "other_teacher"), "--set", "train.steps=8",
                       "--resume")
    assert code == 2 and "was trained with text encoder" in one_error(err)


def test_tokens_of_another_model_fail_in_one_line(work, tmp_path, capsys):
    data = write_store(tmp_path / "data", model_id="cd" * 32, R=R, D=32)
    code, _, err = cli(capsys, "gpt", "train", "--data", data, "--model", work / "bundle", "--text-encoder",
                       work / "teacher", "--out", tmp_path / "run", *TINY)
    line = one_error(err)
    assert code == 2 and line.startswith(f"error: {data / 'tokens'}: holds tokens of model cdcdcdcdcdcd")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("spec, words", [("timm:vit_small_patch16_224", "has no text tower"),
                                         ("nowhere", "no such teacher folder"),
                                         ("open_clip:ViT-B-32", "name the weights")])
def test_bad_text_encoder_fails_in_one_line(work, tmp_path, capsys, spec, words):
    code, _, err = cli(capsys, "gpt", "train", "--data", work / "data", "--model", work / "bundle",
                       "--text-encoder", spec, "--out", tmp_path / "run", *TINY)
    assert code == 2 and words in one_error(err) and one_error(err).startswith(f"error: {spec}")
    assert not (tmp_path / "run").exists()


def test_missing_arguments_and_parts(work, trained, tmp_path, capsys):
    code, _, err = cli(capsys, "gpt", "train", "--data", work / "data", "--model", work / "bundle",
                       "--out", tmp_path / "run", *TINY)
    assert code == 2 and "text_encoder: no text encoder (pass --text-encoder SPEC)" in one_error(err)
    code, _, err = cli(capsys, "gpt", "train", "--data", work / "data", "--model", tmp_path / "nobundle",
                       "--text-encoder", work / "teacher", "--out", tmp_path / "run", *TINY)
    assert code == 2 and one_error(err).startswith(f"error: {tmp_path / 'nobundle'}")
    code, _, err = cli(capsys, "gpt", "export", tmp_path / "empty", "--into", work / "bundle")
    assert code == 2 and "no finished GPT run" in one_error(err)
    other = tmp_path / "other_bundle"  # a bundle whose tokenizer is not the one the GPT's tokens came from
    shutil.copytree(work / "bundle", other)
    meta = json.loads((other / "bundle.json").read_text())
    (other / "bundle.json").write_text(json.dumps({**meta, "model_id": "ef" * 32}))
    code, _, err = cli(capsys, "gpt", "export", trained, "--into", other)
    assert code == 2 and "trained on tokens of model" in one_error(err) and not (other / "gpt").exists()
