"""`LostPipeline.generate` and `lost generate` on a tiny bundle (tiny VAE + tokenizer from test_pipeline) with a
tiny untrained LoST-GPT and a tiny built-in text encoder exported into it (seconds on a CPU)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from lostcli.data.mesh import largest_part_share
from lostcli.errors import CheckpointError, ConfigError, DataError
from lostcli.models.gpt import build_gpt
from lostcli.models.teacher import ClipTeacher, ClipTeacherConfig
from lostcli.models.text import TextEncoder
from lostcli.pipeline import GenerateConfig, LostPipeline, Tokens, load_tokens, save_tokens
from lostcli.train.gpt import export_gpt

from conftest import cli, one_error
from test_pipeline import R, make_bundle

L = 6  # GPT length (< R = 8 registers of the tokenizer)
TEXT = dict(embed_dim=32, image_size=32, patch_size=8, vision_width=32, vision_layers=1, vision_heads=2,
            text_context=16, text_width=32, text_layers=1, text_heads=2)
FAST = ["--steps", 2, "--resolution", 16]


def tiny_generator(seed: int = 0) -> tuple[torch.nn.Module, TextEncoder]:
    """An untrained tiny GPT (weights jittered so its output depends on the prompt) and a tiny text encoder."""
    torch.manual_seed(seed)
    gpt = build_gpt("gpt_tiny", num_tokens=L, cond_dim=32, width=32, depth=1, heads=2, dropout=0.0,
                    diffloss={"width": 32, "depth": 1, "sample_steps": 2})
    with torch.no_grad():  # zero-initialised output layers would make the head ignore its condition
        for p in gpt.parameters():
            p.add_(0.1 * torch.randn_like(p))
    text = TextEncoder(ClipTeacher(ClipTeacherConfig(**TEXT)), spec="tiny built-in (test)")
    return gpt, text


def add_generator(bundle: Path, work: Path) -> Path:
    """Export a tiny GPT run (export/ + text_encoder/) into `bundle` with `lost gpt export`'s library call."""
    gpt, text = tiny_generator()
    model_id = json.loads((bundle / "bundle.json").read_text())["model_id"]
    run = work / "gpt_run"
    gpt.save_pretrained(run / "export", extra_config={"tokens": {"model_id": model_id, "bundle": str(bundle)},
                                                      "sampling": {"guidance": 2.0, "temperature": 1.0}})
    text.save_into(run / "text_encoder")
    export_gpt(run, bundle)
    return bundle


pytestmark = pytest.mark.usefixtures("one_thread_module")  # tiny models: one thread beats two spin-waiting


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gen")
    return add_generator(make_bundle(root), root)


@pytest.fixture(scope="module")
def pipe(bundle) -> LostPipeline:
    return LostPipeline.from_pretrained(bundle, device="cpu")


# ----------------------------------------------------------------------------------------------------
# Pipeline
# ----------------------------------------------------------------------------------------------------


def fast(**kw) -> GenerateConfig:
    """Two diffusion-head steps per token and a 16^3 grid, unless `kw` says otherwise."""
    return GenerateConfig(**{"steps": 2, "resolution": 16, **kw})


def test_generate_shapes_and_lazy_loading(bundle, pipe):
    assert pipe._gpt is None and pipe._text_encoder is None  # nothing loaded until generation
    assert pipe.generation["guidance"] == 2.0  # the export's sampling defaults reach the pipeline
    res = pipe.generate(["a chair", "a tall lamp"], n=2, seed=0, config=fast())
    assert res.tokens.shape == (4, L, 32) and res.latents.shape == (4, 8, 4, 12)
    assert res.prompts == ["a chair", "a chair", "a tall lamp", "a tall lamp"]
    assert len(res.meshes) == 4 and all(isinstance(m, trimesh.Trimesh) and len(m.faces) for m in res.meshes)
    assert torch.isfinite(res.tokens).all()
    assert res.settings["guidance"] == 2.0 and res.settings["k"] == L and res.settings["keep"] == 0
    assert not torch.allclose(res.tokens[0], res.tokens[1])  # two draws of one prompt differ
    assert pipe.gpt_length == L


def test_same_seed_same_tokens_latents_meshes(pipe):
    a = pipe.generate("a chair", n=2, seed=5, config=fast())
    b = pipe.generate("a chair", n=2, seed=5, config=fast())
    c = pipe.generate("a chair", n=2, seed=6, config=fast())
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.latents, b.latents)
    for ma, mb in zip(a.meshes, b.meshes):
        assert np.array_equal(ma.vertices, mb.vertices) and np.array_equal(ma.faces, mb.faces)
    assert not torch.allclose(a.tokens, c.tokens)
    other = pipe.generate("a red sports car with big wheels", n=2, seed=5, config=fast())
    assert not torch.allclose(a.tokens, other.tokens)  # the prompt conditions the GPT


def test_guidance_and_schedule_change_the_tokens(pipe):
    base = pipe.generate("a chair", n=1, seed=1, config=fast(guidance=1.0, resolution=8))
    strong = pipe.generate("a chair", n=1, seed=1, config=fast(guidance=4.0, resolution=8))
    linear = pipe.generate("a chair", n=1, seed=1, config=fast(guidance=4.0, guidance_schedule="linear", resolution=8))
    assert not torch.allclose(base.tokens, strong.tokens)
    # linear: token 0 gets scale 1 + 3 / L, not 4: it differs from the constant schedule's first token
    assert not torch.allclose(strong.tokens[:, 0], linear.tokens[:, 0])


def test_short_drafts_and_prefix_continuation(pipe):
    draft = pipe.generate("a chair", n=2, seed=0, config=fast(num_tokens=2))
    assert draft.tokens.shape == (2, 2, 32) and draft.settings["k"] == 2
    full = pipe.generate("a chair", n=2, seed=0, config=fast())
    assert torch.allclose(draft.tokens, full.tokens[:, :2], atol=1e-5)  # the first tokens do not depend on k

    prefix = Tokens(tokens=torch.randn(R, 32), k=R, normalization=None, source="mesh.glb", model_id=pipe.model_id)
    cont = pipe.generate(["a chair", "a lamp"], n=2, seed=0, prefix=prefix, keep=3, config=fast())
    assert cont.tokens.shape == (4, L, 32) and cont.settings["keep"] == 3
    assert torch.equal(cont.tokens[:, :3], prefix.tokens[:3].expand(4, -1, -1))  # kept unchanged
    assert not torch.allclose(cont.tokens[0, 3:], cont.tokens[1, 3:])  # the rest is sampled per draw
    only = pipe.generate("a chair", n=1, seed=0, prefix=prefix, keep=4, config=fast(num_tokens=4))
    assert torch.equal(only.tokens[0], prefix.tokens[:4])  # nothing left to generate: the prefix is decoded


@pytest.mark.parametrize("kwargs, error, match", [
    ({"prompt": ""}, ConfigError, "prompt 1 of 1 is empty"),
    ({"prompt": ["a chair", "  "]}, ConfigError, "prompt 2 of 2 is empty"),
    ({"prompt": []}, ConfigError, "no prompt"),
    ({"num_tokens": L + 1}, ConfigError, f"--tokens {L + 1} is outside 1..{L}"),
    ({"num_tokens": 0}, ConfigError, "outside"),
    ({"n": 0}, ConfigError, "n: must be >= 1"),
    ({"keep": 2}, ConfigError, "needs a prefix"),
    ({"guidance_schedule": "cosine"}, ConfigError, "guidance_schedule"),
    ({"temperature": 0.0}, ConfigError, "temperature"),
])
def test_bad_arguments(pipe, kwargs, error, match):
    args = {"prompt": "a chair", "n": 1, "steps": 2, "resolution": 8, **kwargs}
    fields = {f.name for f in dataclasses.fields(GenerateConfig)}
    config = GenerateConfig(**{k: v for k, v in args.items() if k in fields})
    with pytest.raises(error, match=match) as exc:
        pipe.generate(config=config, **{k: v for k, v in args.items() if k not in fields})
    assert "\n" not in str(exc.value)


def test_prefix_of_another_model_or_too_short(pipe):
    other = Tokens(tokens=torch.randn(4, 32), k=4, normalization=None, source="x.safetensors", model_id="f" * 64)
    with pytest.raises(DataError, match=r"^x.safetensors: tokens of model ffffffffffff"):
        pipe.generate("a chair", n=1, prefix=other)
    short = Tokens(tokens=torch.randn(2, 32), k=2, normalization=None, source="s.safetensors", model_id=pipe.model_id)
    with pytest.raises(ConfigError, match=r"keep: 3 is outside 1..2"):
        pipe.generate("a chair", n=1, prefix=short, keep=3)


@pytest.mark.parametrize("part", ["gpt", "text_encoder"])
def test_missing_component_is_one_line(bundle, tmp_path, part):
    broken = tmp_path / "b"
    shutil.copytree(bundle, broken)
    shutil.rmtree(broken / part)
    pipe = LostPipeline.from_pretrained(broken, device="cpu")  # tokenize / decode still work without them
    with pytest.raises(CheckpointError) as exc:
        pipe.generate("a chair", n=1)
    assert str(exc.value) == f"{broken}: component '{part}' is missing (run lost gpt export RUN --into {broken})"


def test_in_memory_pipeline_needs_set_generator(pipe):
    bare = LostPipeline(pipe.vae, pipe.tokenizer, pipe.model_id, pipe.sampling)
    with pytest.raises(CheckpointError, match="component 'gpt' is missing"):
        bare.generate("a chair", n=1)
    gpt, text = tiny_generator()
    bare.set_generator(gpt, text)
    res = bare.generate("a chair", n=1, seed=5, config=fast(guidance=2.0))
    assert torch.equal(res.tokens, pipe.generate("a chair", n=1, seed=5, config=fast()).tokens)
    wrong = build_gpt("gpt_tiny", num_tokens=R + 1, token_dim=32, cond_dim=32, width=32, depth=1, heads=2)
    with pytest.raises(CheckpointError, match="this tokenizer reads up to 8"):
        bare.set_generator(wrong, text)


# ----------------------------------------------------------------------------------------------------
# lost generate
# ----------------------------------------------------------------------------------------------------


def test_cli_writes_meshes_previews_grid_and_is_reproducible(bundle, tmp_path, capsys):
    outs = []
    for name in ("a", "b"):
        code, out, err = cli(capsys, "generate", "a round table with a single pedestal leg", "--model", bundle,
                             "-n", 2, "--seed", 0, "--cfg", 3.0, "--out", tmp_path / name, *FAST)
        assert code == 0, err
        assert "2 samples (1 prompt(s) x 2)" in out and f"{L} tokens" in out and "cfg 3.0" in out
        outs.append(tmp_path / name)
    for i in range(2):
        for ext in ("glb", "png", "safetensors"):
            assert (outs[0] / f"sample_{i}.{ext}").is_file()
        ma = trimesh.load(outs[0] / f"sample_{i}.glb", force="mesh")
        mb = trimesh.load(outs[1] / f"sample_{i}.glb", force="mesh")
        assert len(ma.faces) > 0 and np.array_equal(ma.vertices, mb.vertices)  # same seed, same mesh
        assert (outs[0] / f"sample_{i}.glb").read_bytes() == (outs[1] / f"sample_{i}.glb").read_bytes()
    grid = Image.open(outs[0] / "grid.png")
    assert grid.size[0] == 2 * 224  # two 2 x 2 tiles of 112 px views side by side
    preview = Image.open(outs[0] / "sample_0.png")
    assert preview.size[0] == 4 * 224  # the four views in a row
    rec = json.loads((outs[0] / "generate.json").read_text())
    assert rec["settings"]["seed"] == 0 and rec["settings"]["guidance"] == 3.0 and len(rec["samples"]) == 2
    assert rec["samples"][1]["draw"] == 1 and rec["samples"][0]["mesh"].endswith("sample_0.glb")
    # each sample's share of surface in its largest part, from its own mesh; the count printed
    shares = [largest_part_share(trimesh.load(outs[0] / f"sample_{i}.glb", force="mesh")) for i in range(2)]
    assert [s["largest_part"] for s in rec["samples"]] == pytest.approx(shares)
    assert f"{sum(x >= 0.95 for x in shares)} of 2 samples in one piece" in out
    tokens = load_tokens(outs[0] / "sample_1.safetensors")
    assert tokens.k == L and tokens.source.startswith("generated: a round table")


def test_cli_prompts_file_format_prefix_keep(bundle, pipe, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a chair\n\n# a comment\na tall lamp\n")
    prefix = save_tokens(tmp_path / "p.safetensors", Tokens(tokens=torch.randn(4, 32), k=4, normalization=None,
                                                           source="p.glb", model_id=pipe.model_id))
    code, out, err = cli(capsys, "generate", "--prompts", prompts, "--model", bundle, "-n", 1, "--format", "obj",
                         "--prefix", prefix, "--keep", 2, "--tokens", 4, "--out", tmp_path / "o", *FAST)
    assert code == 0, err
    assert "2 samples (2 prompt(s) x 1), 4 tokens (kept 2)" in out
    assert (tmp_path / "o" / "sample_1.obj").is_file()
    rec = json.loads((tmp_path / "o" / "generate.json").read_text())
    assert [s["prompt"] for s in rec["samples"]] == ["a chair", "a tall lamp"]
    written = load_tokens(tmp_path / "o" / "sample_0.safetensors").tokens
    assert written.shape == (4, 32) and torch.equal(written[:2], load_tokens(prefix).tokens[:2])


@pytest.mark.parametrize("case", ["empty", "too_many_tokens", "no_gpt", "no_text_encoder", "both_prompts",
                                  "empty_file", "keep_without_prefix", "bad_format"])
def test_cli_bad_arguments_one_line(bundle, tmp_path, capsys, case):
    model = bundle
    args: list = ["a chair"]
    if case == "empty":
        args = [""]
    elif case == "too_many_tokens":
        args += ["--tokens", L + 1]
    elif case in ("no_gpt", "no_text_encoder"):
        model = tmp_path / "b"
        shutil.copytree(bundle, model)
        shutil.rmtree(model / case[3:])
    elif case == "both_prompts":
        (tmp_path / "p.txt").write_text("a lamp\n")
        args += ["--prompts", tmp_path / "p.txt"]
    elif case == "empty_file":
        (tmp_path / "p.txt").write_text("\n# nothing\n")
        args = ["--prompts", tmp_path / "p.txt"]
    elif case == "keep_without_prefix":
        args += ["--keep", 2]
    elif case == "bad_format":
        args += ["--format", "stl"]
    code, out, err = cli(capsys, "generate", *args, "--model", model, "-n", 1, "--out", tmp_path / "o", *FAST)
    line = one_error(err)
    assert code == 2 and not (tmp_path / "o").exists()
    expected = {"empty": "prompt: empty", "too_many_tokens": f"--tokens {L + 1} is outside 1..{L}",
                "no_gpt": f"{model}: component 'gpt' is missing", "both_prompts": "exactly one",
                "no_text_encoder": f"{model}: component 'text_encoder' is missing",
                "empty_file": f"{tmp_path / 'p.txt'}: no prompts", "keep_without_prefix": "--keep: needs --prefix",
                "bad_format": "--format stl"}[case]
    assert expected in line, line


def test_generate_and_eval_gen_read_a_prompt_file_alike(tmp_path):
    """One reader for prompt files: `lost generate --prompts` drops the CATEGORY<TAB> column that
    `lost eval gen --prompts` grades with, instead of generating from "chair\ta wooden chair"."""
    from lostcli.cli.generate import read_prompts
    from lostcli.data.prompts import read_prompt_file

    path = tmp_path / "prompts.txt"
    path.write_text("# graded\nchair\ta wooden chair\n\na plain lamp\n", encoding="utf-8")
    assert read_prompt_file(path) == [("chair", "a wooden chair"), (None, "a plain lamp")]
    assert read_prompts(None, path) == ["a wooden chair", "a plain lamp"]
