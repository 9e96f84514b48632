"""The LoST-GPT stage: captions and their variants, the text encoder and its embedding cache, the Task
(loss falls, one caption of each shape's own per step), exact resume, the tokens table checks and recipes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lostcli.config import load_config
from lostcli.data.store import DatasetStore, ShardWriter
from lostcli.data.synth import sample_params
from lostcli.errors import CheckpointError, ConfigError, DataError
from lostcli.models.gpt import LoSTGPT, build_gpt
from lostcli.models.teacher import ClipTeacher, ClipTeacherConfig
from lostcli.models.text import TextEncoder, read_info
from lostcli.teachers import load_text_encoder, load_text_encoder_folder
from lostcli.train.gpt import (GPTRunConfig, GPTSamplingConfig, GPTTask, build_task, caption_lists,
                               open_tokens, prepare_data, shape_captions, text_bank)

REPO = Path(__file__).resolve().parents[1]
TEXT = dict(embed_dim=16, image_size=32, patch_size=16, vision_width=32, vision_layers=1, vision_heads=2,
            text_context=16, text_width=32, text_layers=1, text_heads=2)
TINY_GPT = dict(num_tokens=4, token_dim=4, cond_dim=16, width=32, depth=2, heads=2, dropout=0.0,
                diffloss={"width": 32, "depth": 1, "repeats": 2})
MODEL_ID = "ab" * 32

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_text(seed: int = 0) -> TextEncoder:
    torch.manual_seed(seed)
    return TextEncoder(ClipTeacher(ClipTeacherConfig(**TEXT)), spec="tiny (test)")


# -- captions -----------------------------------------------------------------------------------------


def test_shape_captions_adds_distinct_deterministic_variants_of_built_in_shapes():
    params = sample_params("chair", np.random.default_rng(3))
    rec = {"id": "synth-000007", "category": "chair", "caption": "a chair", "meta": {"params": params}}
    caps = shape_captions(rec, variants=6)
    assert caps[0] == "a chair" and len(caps) == len(set(caps)) >= 3  # phrasings differ; duplicates dropped
    assert all("chair" in c for c in caps[1:])  # the same facts, re-phrased
    assert shape_captions(rec, variants=6) == caps  # seeded by the item id
    assert shape_captions({**rec, "id": "synth-000008"}, variants=6) != caps
    assert shape_captions(rec, variants=0) == ["a chair"]
    # user shapes: the stored caption and any meta.captions, never invented ones
    user = {"id": "u1", "category": "chair", "caption": " a red chair ",
            "meta": {"captions": ["a seat", "a red chair"]}}
    assert shape_captions(user, variants=4) == ["a red chair", "a seat"]
    # parameters that are not the generator's: only the stored caption
    assert shape_captions({**rec, "meta": {"params": {"nonsense": 1}}}, variants=4) == ["a chair"]


# -- the text encoder ---------------------------------------------------------------------------------


def test_text_encoder_embeddings_save_and_load(tmp_path):
    enc = tiny_text()
    e = enc.encode(["a chair with four legs", "a tall lamp", "a chair with four legs"])
    assert e.shape == (3, 16) and e.dtype == torch.float32
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3))
    assert torch.equal(e[0], e[2]) and (e[0] - e[1]).abs().max() > 1e-3
    assert enc.encode("a tall lamp").shape == (1, 16) and enc.encode([]).shape == (0, 16)
    # a built-in teacher export (or its run directory) is copied; the copy embeds identically
    enc.tower.save_pretrained(tmp_path / "teacher" / "export")
    loaded = load_text_encoder(tmp_path / "teacher")
    assert loaded.kind == "builtin" and loaded.width == 16
    assert loaded.spec == str((tmp_path / "teacher" / "export").resolve())
    loaded.save_into(tmp_path / "te")
    info = read_info(tmp_path / "te")
    assert info["kind"] == "builtin" and info["fingerprint"] == enc.fingerprint() and info["width"] == 16
    again = load_text_encoder_folder(tmp_path / "te")
    torch.testing.assert_close(again.encode(["a tall lamp"]), e[1:2], rtol=0, atol=1e-6)
    assert load_text_encoder(tmp_path / "te").fingerprint() == enc.fingerprint()  # a saved folder is a spec too
    assert tiny_text(seed=1).fingerprint() != enc.fingerprint()


@pytest.mark.parametrize("spec, words", [("timm:vit_small_patch16_224", "has no text tower"),
                                         ("missing_folder", "no such teacher folder"),
                                         ("open_clip:NoSuchModel/tag", "unknown OpenCLIP model"),
                                         ("", "empty spec")])
def test_bad_text_encoder_specs(spec, words):
    with pytest.raises((CheckpointError, ConfigError), match=words) as e:
        load_text_encoder(spec)
    assert "\n" not in str(e.value)


def test_open_clip_spec_is_recorded_not_copied(tmp_path):
    """An OpenCLIP folder spec (config + local weights) is saved as its spec and loaded from it again."""
    enc = tiny_text()
    enc.tower.save_pretrained(tmp_path / "clip")  # writes open_clip_config.json too

    open_clip_enc = load_text_encoder(f"open_clip:{tmp_path / 'clip'}")
    assert open_clip_enc.kind == "open_clip" and open_clip_enc.width == 16
    open_clip_enc.save_into(tmp_path / "te")
    assert sorted(p.name for p in (tmp_path / "te").iterdir()) == ["config.json"]
    assert read_info(tmp_path / "te")["spec"] == f"open_clip:{(tmp_path / 'clip').resolve()}"


# -- the embedding cache ------------------------------------------------------------------------------


def test_text_bank_embeds_each_caption_once_and_caches(tmp_path, monkeypatch):
    enc = tiny_text()
    captions = [["a chair", "a seat"], ["a lamp"], ["a seat", "a chair"]]
    bank, rows = text_bank(enc, captions, tmp_path / "cache")
    assert bank.shape == (3, 16) and rows[0] == rows[2][::-1] and len({r for rs in rows for r in rs}) == 3
    torch.testing.assert_close(bank[rows[1][0]], enc.encode("a lamp")[0])
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".safetensors")

    calls = []
    monkeypatch.setattr(enc, "encode", lambda *a, **k: calls.append(a) or torch.zeros(3, 16))
    cached, rows2 = text_bank(enc, captions, tmp_path / "cache")
    assert calls == [] and torch.equal(cached, bank) and rows2 == rows  # read back, not recomputed
    text_bank(enc, captions + [["a bed"]], tmp_path / "cache")  # other captions: recomputed
    assert len(calls) == 1
    other = tiny_text(seed=2)  # same spec, other weights: the fingerprint refuses the stale cache
    fresh, _ = text_bank(other, captions, tmp_path / "cache")
    assert (fresh - bank).abs().max() > 1e-3


# -- the Task -----------------------------------------------------------------------------------------


def _toy(n: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    """Two captions classes; tokens [n, 4, 4] around a class- and position-dependent mean."""
    g = torch.Generator().manual_seed(seed)
    cls = torch.arange(n) % 2
    means = torch.randn(2, 4, 4, generator=g) * 2
    tokens = means[cls] + 0.1 * torch.randn(n, 4, 4, generator=g)
    cond = torch.nn.functional.normalize(torch.randn(2, 16, generator=g), dim=-1)
    text = torch.zeros(n, 2, 16)
    text[:, 0] = cond[cls]
    return {"tokens": tokens, "text": text, "text_mask": torch.tensor([[True, False]] * n)}


def _task() -> GPTTask:
    torch.manual_seed(0)
    gpt = build_gpt("gpt_tiny", **TINY_GPT)
    return GPTTask(gpt, GPTSamplingConfig(), {"model_id": MODEL_ID, "text_encoder": {"width": 16}})


def _eval_loss(task: GPTTask, batch: dict) -> float:
    torch.manual_seed(123)
    task.eval()
    with torch.no_grad():
        loss = float(sum(task(batch)["loss"] for _ in range(4)) / 4)
    task.train()
    return loss


def test_forty_steps_lower_the_loss():
    batch = _toy()
    task = _task()
    before = _eval_loss(task, batch)
    opt = torch.optim.AdamW(task.parameters(), lr=3e-3)
    torch.manual_seed(1)
    for _ in range(40):
        out = task(batch)
        assert torch.isfinite(out["loss"]) and set(out) == {"loss", "drop_frac"}
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    after = _eval_loss(task, batch)
    assert after < 0.5 * before, (before, after)


def test_each_step_uses_one_of_the_shapes_own_captions(monkeypatch):
    task = _task()
    seen = []
    monkeypatch.setattr(task.gpt, "forward", lambda x, c, drop: seen.append(c) or {"loss": c.sum(), "drop_frac": c[0, 0]})
    text = torch.zeros(4, 3, 16)
    text[:, 0, 0], text[:, 1, 1] = 1.0, 1.0  # caption 0 -> e_0, caption 1 -> e_1; slot 2 is padding
    mask = torch.tensor([[True, True, False]] * 3 + [[True, False, False]])
    torch.manual_seed(0)
    for _ in range(50):
        task({"tokens": torch.zeros(4, 4, 4), "text": text, "text_mask": mask})
    picked = torch.stack(seen)  # [50, 4, 16]
    assert torch.equal(picked.sum(-1), torch.ones(50, 4))  # always a real caption, never the padding
    first = picked[:, :3, 0].mean()
    assert 0.35 < float(first) < 0.65  # uniform over the two captions of shapes 0-2
    assert torch.equal(picked[:, 3, 0], torch.ones(50))  # shape 3 has one caption


# -- data, resume, recipes ----------------------------------------------------------------------------


def write_store(root: Path, n: int = 12, model_id: str = MODEL_ID, R: int = 6, D: int = 4) -> Path:
    """Items with captions (built-in chairs / lamps with generator params) and a tokens table of `model_id`."""
    g = np.random.default_rng(0)
    cats = ["chair", "lamp"]
    with ShardWriter(root, "items", shard_size=5) as w:
        for i in range(n):
            cat = cats[i % 2]
            params = sample_params(cat, np.random.default_rng(i))
            w.add(f"synth-{i:06d}", {"dummy": np.zeros(1, np.float32)},
                  {"split": "train" if i < n - 2 else "test", "category": cat, "caption": f"a {cat}",
                   "meta": {"params": params}})
    with ShardWriter(root, "tokens", shard_size=5) as w:
        for i in range(n):
            w.add(f"synth-{i:06d}", {"tokens": (g.normal(size=(R, D)) + (i % 2)).astype(np.float32)},
                  {"model_id": model_id})
    DatasetStore(root).write_stats("tokens", {"model_id": model_id, "num_tokens": R, "token_dim": D})
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return write_store(tmp_path_factory.mktemp("gpt") / "data")


def test_dataset_items(store, tmp_path):
    ids, stats = open_tokens(store, "train", MODEL_ID)
    assert len(ids) == 10 and stats["num_tokens"] == 6
    cfg = GPTRunConfig()
    ds = prepare_data(cfg, store, ids, tiny_text(), num_tokens=4, out=tmp_path)
    lazy = prepare_data(cfg, store, ids, tiny_text(), num_tokens=4, out=tmp_path)
    lazy.tokens = None  # read from the shards item by item
    item, again = ds[3], lazy[3]
    raw = DatasetStore(store).load(ids[3], table="tokens")["tokens"]
    assert torch.equal(item["tokens"], torch.from_numpy(raw[:4])) and torch.equal(again["tokens"], item["tokens"])
    caps = caption_lists(store, ids, 4)[3]
    K = item["text"].shape[0]
    assert K >= len(caps) > 1 and int(item["text_mask"].sum()) == len(caps)
    assert torch.all(item["text"][len(caps):] == 0)  # padding
    torch.testing.assert_close(item["text"][: len(caps)], tiny_text().encode(caps))
    assert ds.num_captions == len({c for cs in caption_lists(store, ids, 4) for c in cs})


def test_tokens_table_checks(store, tmp_path):
    with pytest.raises(DataError, match=r"holds tokens of model cdcdcdcdcdcd, not of B \(abababababab\)") as e:
        open_tokens(write_store(tmp_path / "other", model_id="cd" * 32), "train", MODEL_ID, bundle="B")
    assert str(e.value).startswith(str(tmp_path / "other" / "tokens"))
    bare = tmp_path / "bare"
    with ShardWriter(bare, "items") as w:
        w.add("a", {"dummy": np.zeros(1, np.float32)}, {"split": "train", "caption": "x"})
    with pytest.raises(DataError, match="no 'tokens' table"):
        open_tokens(bare, "train", MODEL_ID)
    with pytest.raises(DataError, match="no shapes of split 'val'"):
        open_tokens(store, "val", MODEL_ID)
    cfg = load_config(GPTRunConfig, None, ["model.overrides={num_tokens: 8, width: 32, depth: 1, heads: 2}",
                                              "bundle=B", "text_encoder=T"])
    with pytest.raises(ConfigError, match="the GPT reads 8 tokens per shape, the tokens table holds 6"):
        build_task(cfg, {"num_tokens": 6, "token_dim": 4}, {"width": 16}, MODEL_ID)
    cfg = load_config(GPTRunConfig, None, ["model.overrides={cond_dim: 64}", "bundle=B", "text_encoder=T"])
    with pytest.raises(ConfigError, match="model.overrides.cond_dim: 64 contradicts 16"):
        build_task(cfg, {"num_tokens": 6, "token_dim": 4}, {"width": 16}, MODEL_ID)
    cfg = load_config(GPTRunConfig, None, ["bundle=B", "text_encoder=T", "sampling.guidance_schedule=cosine"])
    with pytest.raises(ConfigError, match="sampling.guidance_schedule"):
        build_task(cfg, {"num_tokens": 6, "token_dim": 4}, {"width": 16}, MODEL_ID)


def test_killed_run_resumes_to_the_same_weights(store, tmp_path):
    from conftest import Killed, kill_before_step
    from lostcli.train.loop import seed_everything, train

    overrides = ["model.overrides={num_tokens: 4, width: 32, depth: 1, heads: 2, diffloss: {width: 32, depth: 1}}",
                 "train.batch_size=4", "train.steps=5", "train.save_every=2", "train.log_every=1",
                 "optim.warmup_steps=0", "bundle=B", "text_encoder=T"]
    cfg = load_config(GPTRunConfig, REPO / "recipes" / "tiny" / "gpt.yaml", overrides)
    ids, stats = open_tokens(store, "train", MODEL_ID)
    enc = tiny_text()

    def run(out: Path, kill_at: int | None = None, **kw):
        seed_everything(cfg.train.seed)
        task = build_task(cfg, stats, enc.describe(), MODEL_ID)
        if kill_at is not None:
            kill_before_step(task, kill_at)
        data = prepare_data(cfg, store, ids, enc, task.gpt.config.num_tokens, out)
        train(task, data, cfg.train, cfg.optim, out, progress=False, **kw)
        return LoSTGPT.from_pretrained(out).state_dict() if (out / "export").is_dir() else None

    whole = run(tmp_path / "whole")
    with pytest.raises(Killed):
        run(tmp_path / "cut", kill_at=3)  # killed after step 3; newest checkpoint: step 2
    resumed = run(tmp_path / "cut", resume=True)
    for k, v in whole.items():
        torch.testing.assert_close(resumed[k], v, rtol=0, atol=0, msg=k)
    rows = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5] and all(np.isfinite(r["drop_frac"]) for r in rows)
    meta = json.loads((tmp_path / "whole" / "export" / "config.json").read_text())
    assert meta["tokens"]["model_id"] == MODEL_ID and meta["text_encoder"]["fingerprint"] == enc.fingerprint()
    assert meta["sampling"]["num_tokens"] == 4 and meta["sampling"]["guidance"] == cfg.sampling.guidance


@pytest.mark.parametrize("name", ["tiny", "paper"])
def test_recipes_load_and_build(name):
    cfg = load_config(GPTRunConfig, REPO / "recipes" / name / "gpt.yaml")
    with torch.device("meta"):
        gpt = build_gpt(cfg.model.preset, **cfg.model.overrides)
    c = gpt.config
    assert c.token_dim == 32 and c.diffloss.repeats == 4 and c.cond_drop_prob == 0.1
    assert cfg.sampling.guidance > 1.0
    if name == "tiny":  # the built-in set: 806 training shapes of 32 tokens
        assert cfg.sampling.guidance_schedule == "linear"  # measured: constant guidance 3 raised KID 429 -> 514
        assert c.num_tokens == 32 and (c.width, c.depth, c.heads) == (256, 6, 4)
        assert cfg.train.steps * cfg.train.batch_size >= 10 * 806 and cfg.data.caption_variants > 0
    else:  # GPT-L over 128 tokens; Semanticist eps-LlamaGen optimisation (global batch 2048, lr 1e-4 x 2048/256)
        assert (c.num_tokens, c.width, c.depth, c.heads) == (128, 1024, 24, 16)
        assert (c.diffloss.width, c.diffloss.depth) == (1536, 12)
        assert cfg.train.batch_size * 8 * cfg.train.grad_accum == 2048
        assert cfg.optim.lr == pytest.approx(8e-4) and cfg.optim.schedule == "constant"
        assert cfg.optim.grad_clip == 1.0
