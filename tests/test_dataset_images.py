"""`lost dataset images` on a tiny random FLUX pipeline built here from configs (no hub): images, manifest,
seeds, resume after a kill, failures, sharding, dev/schnell detection and the one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import lostcli.batch.images as images_mod
from lostcli.batch.images import (BARE, WRAPPER, default_device, dtype_for, generate_images, identify_flux,
                                  merge_manifest, prompt_seed, resolve_settings, wrap)
from lostcli.data.prompts import read_prompt_lines
from lostcli.errors import CheckpointError, ConfigError

from conftest import cli, one_error

pytestmark = pytest.mark.usefixtures("one_thread_module")

PROMPTS = ["a red chair", "a blue lamp", "an old wooden table"]
FAST = ["--size", 32, "--steps", 2, "--max-seq-len", 16, "--seed", 7]
REAL_LOAD = images_mod.load_flux  # before any test wraps it
WORDS = ("3d render of a an the red blue old wooden chair lamp table , . isometric view trending on artstation "
         "unreal engine 5 v-ray clean model white background hyperrealistic high detail poison glitch").split()


def _tokenizer(max_len: int):
    """A word-level tokenizer over WORDS, built locally (stands in for CLIP's BPE and T5's sentencepiece)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(dict.fromkeys(["<pad>", "<unk>", "<s>", "</s>", *WORDS]))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", model_max_length=max_len), len(vocab)


def build_tiny_flux(folder: Path, guidance_embeds: bool = True) -> Path:
    """A one-layer FLUX pipeline (CLIP and T5 of one layer, a one-block VAE with scale factor 1) saved as a
    diffusers folder; guidance_embeds=True makes it a FLUX.1-dev look-alike, False a schnell one."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tokenizer, vocab = _tokenizer(77)
    tokenizer_2, _ = _tokenizer(512)
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
                                         guidance_embeds=guidance_embeds)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                        num_attention_heads=4, projection_dim=32, max_position_embeddings=77,
                                        pad_token_id=0, bos_token_id=2, eos_token_id=3))
    t5 = T5EncoderModel(T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=37, num_layers=1, num_heads=4,
                                 pad_token_id=0, eos_token_id=3, decoder_start_token_id=0))
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
                        latent_channels=1, norm_num_groups=1, sample_size=32, use_quant_conv=False,
                        use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=clip, tokenizer=tokenizer,
                        text_encoder_2=t5, tokenizer_2=tokenizer_2, transformer=transformer)
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def flux(tmp_path_factory) -> Path:
    return build_tiny_flux(tmp_path_factory.mktemp("flux") / "tiny-flux")


@pytest.fixture
def prompts(tmp_path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    return path


class Watch:
    """Counts pipeline loads and calls made through `load_flux`; `hook(texts)` runs before each call and may
    raise (a kill, a bad prompt); `poison_nan` words make that prompt's image NaN."""

    def __init__(self, monkeypatch, hook=None, poison_nan: str | None = None):
        self.loads, self.calls = 0, []
        self.hook, self.poison_nan = hook, poison_nan

        def load(spec, device, offload=None):
            self.loads += 1
            pipe = REAL_LOAD(spec, device, offload)

            def call(texts, **kwargs):
                self.calls.append(list(texts))
                if self.hook is not None:
                    self.hook(texts)
                result = pipe(texts, **kwargs)
                for k, text in enumerate(texts):
                    if self.poison_nan and self.poison_nan in text:
                        result.images[k] = np.nan
                return result

            return call

        monkeypatch.setattr(images_mod, "load_flux", load)


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "images.jsonl").read_text().splitlines()]


def _pixels(out: Path, index: int) -> np.ndarray:
    return np.asarray(Image.open(out / "images" / f"{index:06d}.png"))


# ----------------------------------------------------------------------------------------------------
# End to end
# ----------------------------------------------------------------------------------------------------


def test_three_prompts_give_three_pngs_and_a_manifest(flux, prompts, tmp_path, capsys, monkeypatch):
    watch = Watch(monkeypatch)
    out = tmp_path / "out"
    code, stdout, err = cli(capsys, "dataset", "images", prompts, "--model", flux, "--out", out, *FAST,
                            "--batch-size", 2)
    assert code == 0, err
    assert "FLUX.1-dev: drew 3 new, skipped 0 done, 0 failed" in stdout and "holds 3 of 3 prompts" in stdout
    assert watch.loads == 1 and [len(c) for c in watch.calls] == [2, 1]
    rows = _rows(out)
    assert [r["index"] for r in rows] == [0, 1, 2] and [r["line"] for r in rows] == [1, 2, 3]
    assert [r["prompt"] for r in rows] == PROMPTS
    assert [r["seed"] for r in rows] == [prompt_seed(7, i) for i in range(3)]
    assert rows[2]["text"].startswith("3D render of an old wooden table, isometric view, trending on ArtStation")
    assert {(r["variant"], r["steps"], r["guidance"], r["size"], r["max_seq_len"], r["dtype"]) for r in rows} == {
        ("dev", 2, 3.5, 32, 16, dtype_for(default_device()))}  # float32 on the CPU
    pixels = [_pixels(out, i) for i in range(3)]
    assert all(p.shape == (32, 32, 3) and p.dtype == np.uint8 for p in pixels)
    assert all(r["bytes"] == (out / r["file"]).stat().st_size for r in rows)
    assert not np.array_equal(pixels[0], pixels[1]) and not np.array_equal(pixels[1], pixels[2])
    settings = json.loads((out / "settings.json").read_text())
    assert settings["seed"] == 7 and settings["model"] == str(flux.resolve()) and settings["wrapper"] == WRAPPER
    assert not list((out / "parts").glob("*.jsonl"))  # merged into images.jsonl

    # A re-run draws nothing and never loads the model; the PNGs are untouched.
    mtimes = [(out / r["file"]).stat().st_mtime_ns for r in rows]
    watch = Watch(monkeypatch)
    code, stdout, err = cli(capsys, "dataset", "images", prompts, "--model", flux, "--out", out, *FAST)
    assert code == 0, err
    assert "drew 0 new, skipped 3 done" in stdout
    assert watch.loads == 0 and watch.calls == []
    assert [(out / r["file"]).stat().st_mtime_ns for r in _rows(out)] == mtimes
    assert _rows(out) == rows

    # A PNG cut short or deleted after the run no longer counts: exactly those two are drawn again.
    before = [_pixels(out, i) for i in range(3)]
    (out / rows[1]["file"]).write_bytes((out / rows[1]["file"]).read_bytes()[:40])
    (out / rows[2]["file"]).unlink()
    watch = Watch(monkeypatch)
    code, stdout, err = cli(capsys, "dataset", "images", prompts, "--model", flux, "--out", out, *FAST)
    assert code == 0, err
    assert watch.calls == [[r["text"] for r in rows[1:]]] and "drew 2 new, skipped 1 done" in stdout
    # Per-prompt seeds: the redrawn images are the same pictures. Prompt 2 was drawn alone and is now batched
    # with prompt 1, so float rounding may move a pixel by a level (diffusers 0.42 / transformers 5 on CPU).
    assert all(np.abs(_pixels(out, i).astype(int) - before[i].astype(int)).max() <= 2 for i in range(3))
    assert [{k: v for k, v in r.items() if k != "bytes"} for r in _rows(out)] == [
        {k: v for k, v in r.items() if k != "bytes"} for r in rows]

    # Other settings in the same folder: refused before any work.
    code, _, err = cli(capsys, "dataset", "images", prompts, "--model", flux, "--out", out, *FAST, "--steps", 3)
    assert code == 2 and "images made with steps 2, not 3" in one_error(err, out / "settings.json")


def test_a_killed_run_resumes_and_draws_the_same_images(flux, prompts, tmp_path, capsys, monkeypatch):
    ref = tmp_path / "ref"
    Watch(monkeypatch)
    assert cli(capsys, "dataset", "images", prompts, "--model", flux, "--out", ref, *FAST, "--batch-size", 1)[0] == 0

    def kill_on_second_call(texts):
        if len(watch.calls) == 2:
            raise KeyboardInterrupt

    out = tmp_path / "out"
    watch = Watch(monkeypatch, hook=kill_on_second_call)
    code, _, err = cli(capsys, "dataset", "images", prompts, "--model", flux, "--out", out, *FAST, "--batch-size", 1)
    assert code == 130, err  # as Ctrl-C ends a run
    assert not (out / "images.jsonl").exists() and sorted(p.name for p in (out / "images").iterdir()) == ["000000.png"]
    first = (out / "images" / "000000.png").stat().st_mtime_ns
    # What a hard kill can leave besides: a torn row, and a PNG in place whose row was never written.
    with open(out / "parts" / "r000.jsonl", "a") as f:
        f.write('{"index": 1, "file": "images/000001.png", "by')
    (out / "images" / "000002.png").write_bytes(b"\x89PNG half")

    watch = Watch(monkeypatch)
    code, stdout, err = cli(capsys, "dataset", "images", prompts, "--model", flux, "--out", out, *FAST,
                            "--batch-size", 1)
    assert code == 0, err
    assert "drew 2 new, skipped 1 done" in stdout
    assert watch.calls == [[wrap(PROMPTS[1], WRAPPER)], [wrap(PROMPTS[2], WRAPPER)]]
    assert (out / "images" / "000000.png").stat().st_mtime_ns == first
    assert _rows(out) == _rows(ref)  # same seeds, files and sizes
    for i in range(3):
        assert np.array_equal(_pixels(out, i), _pixels(ref, i)), i


def test_a_failing_prompt_is_recorded_and_the_rest_is_written(flux, tmp_path, capsys, monkeypatch):
    path = tmp_path / "prompts.txt"
    path.write_text("a red chair\npoison lamp\na blue lamp\nglitch table\n", encoding="utf-8")

    def poison(texts):
        if any("poison" in t for t in texts):
            raise ValueError("refused by the test")

    out = tmp_path / "out"
    watch = Watch(monkeypatch, hook=poison, poison_nan="glitch")
    code, stdout, err = cli(capsys, "dataset", "images", path, "--model", flux, "--out", out, *FAST,
                            "--batch-size", 4)
    assert code == 0, err
    assert "drew 2 new, skipped 0 done, 2 failed" in stdout and "holds 2 of 4 prompts" in stdout
    assert [len(c) for c in watch.calls] == [4, 1, 1, 1, 1]  # the raising batch, then one prompt at a time
    assert [r["index"] for r in _rows(out)] == [0, 2]
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000000.png", "000002.png"]
    failures = [json.loads(line) for line in (out / "failures" / "r000.jsonl").read_text().splitlines()]
    assert [(f["file"], f["index"]) for f in failures] == [(f"{path}:2", 1), (f"{path}:4", 3)]
    assert failures[0]["reason"] == "ValueError: refused by the test"
    assert failures[1]["reason"] == "the image holds NaN or inf values"
    assert f"failed: {path}:2: ValueError" in err

    # A re-run retries exactly the failed prompts.
    watch = Watch(monkeypatch)
    code, stdout, err = cli(capsys, "dataset", "images", path, "--model", flux, "--out", out, *FAST)
    assert code == 0, err
    assert watch.calls == [[wrap("poison lamp", WRAPPER), wrap("glitch table", WRAPPER)]]
    assert [r["index"] for r in _rows(out)] == [0, 1, 2, 3]


def test_processes_share_the_prompts_and_merge_one_manifest(flux, tmp_path, monkeypatch):
    """Process r of 2 draws prompts i % 2 == r; the merged manifest and the pixels equal a one-process run."""
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS + ["a wooden lamp", "the old chair"]) + "\n", encoding="utf-8")
    items = read_prompt_lines(path).items
    settings = resolve_settings(str(flux.resolve()), "dev", seed=3, dtype="float32", steps=2, size=32, max_seq_len=16)
    watch = Watch(monkeypatch)
    one, two = tmp_path / "one", tmp_path / "two"
    generate_images(items, one, settings, source=path, device="cpu", batch_size=5)
    merge_manifest(one)
    drawn = []
    for rank in (0, 1):
        result = generate_images(items, two, settings, source=path, device="cpu", batch_size=5, rank=rank,
                                 world_size=2)
        drawn.append(result.done)
        assert sorted(p.name for p in (two / "parts").iterdir())[-1] == f"r{rank:03d}.jsonl"
    assert drawn == [3, 2] and [len(c) for c in watch.calls] == [5, 3, 2]
    assert merge_manifest(two) == 5
    assert _rows(two) == _rows(one)
    for i in range(5):
        assert np.array_equal(_pixels(two, i), _pixels(one, i)), i


@pytest.mark.slow
def test_accelerate_launch_splits_the_prompts_across_two_processes(flux, prompts, tmp_path, capsys):
    """Two CPU processes (gloo) through `accelerate launch`: each draws its share, rank 0 merges one manifest
    equal to a one-process run's (before `process_info` asked for cpu=True, each process drew everything)."""
    import os
    import subprocess
    import sys

    one, two = tmp_path / "one", tmp_path / "two"
    assert cli(capsys, "dataset", "images", prompts, "--model", flux, "--out", one, *FAST)[0] == 0
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--num_cpu_threads_per_process", "1", "--main_process_port", "29517",
           "-m", "lostcli", "dataset", "images", str(prompts), "--model", str(flux), "--out", str(two),
           *map(str, FAST)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "drew 2 new, skipped 0 done" in run.stdout and "holds 3 of 3 prompts" in run.stdout  # rank 0: 0 and 2
    assert _rows(two) == _rows(one)
    for i in range(3):
        assert np.array_equal(_pixels(two, i), _pixels(one, i)), i


# ----------------------------------------------------------------------------------------------------
# Prompt files and models: what is accepted, the one-line errors
# ----------------------------------------------------------------------------------------------------


def test_empty_lines_are_skipped_and_counted(flux, tmp_path, capsys, monkeypatch):
    path = tmp_path / "prompts.txt"
    path.write_text("1. a red chair\n\n   \n# a comment\n2. a blue lamp\n\n", encoding="utf-8")
    Watch(monkeypatch)
    out = tmp_path / "out"
    code, stdout, err = cli(capsys, "dataset", "images", path, "--model", flux, "--out", out, *FAST, "--no-wrapper")
    assert code == 0, err
    assert f"skipped 3 empty lines in {path}" in err
    rows = _rows(out)
    assert [(r["line"], r["prompt"], r["text"]) for r in rows] == [(1, "a red chair", "a red chair"),
                                                                  (5, "a blue lamp", "a blue lamp")]
    assert json.loads((out / "settings.json").read_text())["wrapper"] == BARE


@pytest.mark.parametrize("case", ["missing", "empty", "blank_only"])
def test_bad_prompt_files_are_one_line_errors(flux, tmp_path, capsys, case):
    path = tmp_path / "prompts.txt"
    if case != "missing":
        path.write_text({"empty": "", "blank_only": "\n  \n\n"}[case], encoding="utf-8")
    code, _, err = cli(capsys, "dataset", "images", path, "--model", flux, "--out", tmp_path / "out", *FAST)
    want = {"missing": "prompt file not found", "empty": "no prompts (empty file",
            "blank_only": "no prompts (3 blank and 0 comment lines"}[case]
    assert code == 2 and want in one_error(err, path)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["no_transformer", "no_tokenizer_2", "not_flux", "no_index", "no_such_path"])
def test_an_incomplete_model_folder_is_a_one_line_error(flux, prompts, tmp_path, capsys, case):
    model = tmp_path / "model"
    if case != "no_such_path":
        shutil.copytree(flux, model)
    if case in ("no_transformer", "no_tokenizer_2"):
        shutil.rmtree(model / case.removeprefix("no_"))
    elif case == "not_flux":
        index = json.loads((model / "model_index.json").read_text())
        (model / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionPipeline"}))
    elif case == "no_index":
        (model / "model_index.json").unlink()
    code, _, err = cli(capsys, "dataset", "images", prompts, "--model", model, "--out", tmp_path / "out", *FAST)
    want = {"no_transformer": f"{model}: FLUX pipeline folder without transformer/",
            "no_tokenizer_2": f"{model}: FLUX pipeline folder without tokenizer_2/",
            "not_flux": f"{model / 'model_index.json'}: a StableDiffusionPipeline folder, not a FluxPipeline",
            "no_index": f"{model}: not a diffusers pipeline folder (no model_index.json)",
            "no_such_path": f"{model}: no such folder"}[case]
    assert code == 2 and want in one_error(err)


def test_options_out_of_range_are_one_line_errors(flux, prompts, tmp_path, capsys):
    for args, want in ((["--size", 40], "--size 40: must be a multiple of 16"),
                       (["--max-seq-len", 600], "--max-seq-len 600: must be between 1 and 512"),
                       (["--steps", 0], "--steps 0: must be >= 1"),
                       (["--batch-size", 0], "--batch-size 0: must be >= 1"),
                       (["--offload", "disk"], "--offload disk: must be one of model, sequential")):
        code, _, err = cli(capsys, "dataset", "images", prompts, "--model", flux, "--out", tmp_path / "o", *args)
        assert code == 2 and want in one_error(err), args
    if not __import__("torch").cuda.is_available():
        code, _, err = cli(capsys, "dataset", "images", prompts, "--model", flux, "--out", tmp_path / "o", *FAST,
                           "--offload", "model")
        assert code == 2 and "--offload model: needs a GPU" in one_error(err)


# ----------------------------------------------------------------------------------------------------
# dev vs schnell, settings, seeds, the wrapper
# ----------------------------------------------------------------------------------------------------


def test_dev_and_schnell_are_told_by_name_or_transformer_config(flux, tmp_path, prompts, capsys, monkeypatch):
    assert identify_flux("black-forest-labs/FLUX.1-dev") == ("black-forest-labs/FLUX.1-dev", "dev")
    assert identify_flux("black-forest-labs/FLUX.1-schnell") == ("black-forest-labs/FLUX.1-schnell", "schnell")
    assert identify_flux(str(flux)) == (str(flux.resolve()), "dev")  # guidance_embeds: true
    schnell = tmp_path / "FLUX.1-dev-but-really-schnell"
    shutil.copytree(flux, schnell)
    config = json.loads((schnell / "transformer" / "config.json").read_text())
    (schnell / "transformer" / "config.json").write_text(json.dumps({**config, "guidance_embeds": False}))
    assert identify_flux(str(schnell))[1] == "schnell"  # the config wins over the folder's name
    with pytest.raises(CheckpointError, match="cannot read transformer/config.json"):
        identify_flux("nobody/some-flux-finetune")  # offline, not cached: neither name nor config tells

    Watch(monkeypatch)
    out = tmp_path / "out"
    code, stdout, err = cli(capsys, "dataset", "images", prompts, "--model", schnell, "--out", out, "--size", 32,
                            "--steps", 2)
    assert code == 0, err
    assert "FLUX.1-schnell: drew 3 new" in stdout
    assert {(r["variant"], r["guidance"], r["max_seq_len"]) for r in _rows(out)} == {("schnell", 0.0, 256)}


def test_settings_follow_the_variant_and_overrides():
    dev = resolve_settings("m", "dev", seed=0, dtype="bfloat16")
    assert (dev.steps, dev.guidance, dev.size, dev.max_seq_len, dev.wrapper) == (50, 3.5, 512, 512, WRAPPER)
    schnell = resolve_settings("m", "schnell", seed=0, dtype="bfloat16")
    assert (schnell.steps, schnell.guidance, schnell.size, schnell.max_seq_len) == (4, 0.0, 512, 256)
    custom = resolve_settings("m", "schnell", seed=0, dtype="float32", wrapper=False, steps=8, guidance=1,
                              size=256, max_seq_len=None)
    assert (custom.steps, custom.guidance, custom.size, custom.max_seq_len, custom.wrapper) == (8, 1.0, 256, 256, BARE)
    with pytest.raises(ConfigError, match="--guidance nan"):
        resolve_settings("m", "dev", seed=0, dtype="float32", guidance=float("nan"))


def test_seeds_are_stable_and_distinct_and_the_wrapper_keeps_a_prompts_article():
    seeds = [prompt_seed(s, i) for s in range(3) for i in range(100)]
    assert len(set(seeds)) == 300 and all(0 <= s < 2**32 for s in seeds)
    assert prompt_seed(0, 5) == prompt_seed(0, 5) == 161328693  # fixed forever: resumed sets depend on it
    assert wrap("An owl", WRAPPER).startswith("3D render of An owl, isometric view")
    assert wrap("the Eiffel tower", WRAPPER).startswith("3D render of the Eiffel tower,")
    assert wrap("antique vase", WRAPPER) == WRAPPER.format(prompt="antique vase")  # the authors' text as is
    assert wrap("another vase", WRAPPER).startswith("3D render of a another vase,")
    assert wrap("a red chair", BARE) == "a red chair"
