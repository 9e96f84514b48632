"""Teachers (timm DINOv2, OpenCLIP, built-in), the CLIP training task and the features job, on tiny models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from lostcli.batch.features import (extract_features, pool_tokens, retrieval_scores, shape_embeddings,
                                    teacher_retrieval)
from lostcli.data.store import DatasetStore, ShardWriter
from lostcli.errors import CheckpointError, ConfigError, DataError
from lostcli.models.teacher import (CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, ClipTeacher,
                                    ClipTeacherConfig, OpenClipTeacher, TimmTeacher)
from lostcli.teachers import load_teacher
from lostcli.train.teacher import ClipTask, RenderCaptionDataset, clip_loss

TINY = dict(embed_dim=32, image_size=32, patch_size=8, vision_width=32, vision_layers=1, vision_heads=2,
            text_context=16, text_width=32, text_layers=1, text_heads=2)
TIMM_TINY = dict(depth=1, embed_dim=48, num_heads=2)  # a real DINOv2 architecture, shrunk
COLORS = [(220, 40, 40), (40, 200, 40), (40, 40, 220)]
CATEGORIES = ["chair", "lamp", "car"]


def tiny_teacher() -> ClipTeacher:
    torch.manual_seed(0)
    return ClipTeacher(ClipTeacherConfig(**TINY))


def synthetic_renders(k: int, n: int, size: int = 32) -> np.ndarray:
    """uint8 [4, size, size, 3]: white, with a square of colour k whose size depends on n and the view."""
    img = np.full((4, size, size, 3), 255, np.uint8)
    for v in range(4):
        half = 4 + (n + v) % 4 * 2
        c = size // 2
        img[v, c - half:c + half, c - half:c + half] = COLORS[k % len(COLORS)]
    return img


def make_store(root: Path, per_category: int = 4, size: int = 32) -> Path:
    """A prepared-like dataset: items with renders, category, caption and split (last of each category: test)."""
    with ShardWriter(root, "items", shard_size=5) as w:
        for k, cat in enumerate(CATEGORIES):
            for n in range(per_category):
                split = "test" if n == per_category - 1 else "train"
                w.add(f"{cat}-{n}", {"renders": synthetic_renders(k, n, size)},
                      {"category": cat, "caption": f"a {['red', 'green', 'blue'][k]} {cat} number {n}",
                       "split": split})
    return root


# ----------------------------------------------------------------------------------------------------
# Preprocessing and timm
# ----------------------------------------------------------------------------------------------------


def _timm_weights(tmp_path: Path, name: str = "vit_small_patch14_reg4_dinov2", **kw):
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, img_size=56, num_classes=0, **{**TIMM_TINY, **kw}).eval()
    path = tmp_path / "dino_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


def test_timm_dinov2_with_registers_local_file(tmp_path):
    model, path = _timm_weights(tmp_path)
    teacher = load_teacher(f"timm:vit_small_patch14_reg4_dinov2@{path}", image_size=56, overrides=TIMM_TINY)
    assert isinstance(teacher, TimmTeacher)
    assert (teacher.grid, teacher.embed_dim, teacher.image_size, teacher.num_prefix_tokens) == (4, 48, 56, 5)
    assert teacher.mean.flatten().tolist() == pytest.approx(IMAGENET_MEAN)
    assert teacher.std.flatten().tolist() == pytest.approx(IMAGENET_STD)
    assert teacher.spec == f"timm:vit_small_patch14_reg4_dinov2@{path.resolve()}"
    images = torch.randint(0, 256, (2, 4, 40, 40, 3), dtype=torch.uint8)
    glob, patches = teacher.forward_views(images)
    assert glob.shape == (2, 4, 48) and patches.shape == (2, 4, 4, 4, 48)
    # the original model on the same preprocessed input: CLS + 4 registers + 16 patches
    x = teacher.preprocess(images.view(8, 40, 40, 3))
    with torch.no_grad():
        tokens = model.forward_features(x)
    assert tokens.shape == (8, 5 + 16, 48)
    torch.testing.assert_close(glob.view(8, 48), tokens[:, 0], atol=1e-5, rtol=1e-5)  # CLS after the norm
    torch.testing.assert_close(patches.view(8, 16, 48), tokens[:, 5:], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(patches.view(8, 16, 48)[:, :4], tokens[:, 1:5])  # registers are not patches


def test_timm_without_registers_drops_only_cls(tmp_path):
    model, path = _timm_weights(tmp_path, "vit_small_patch14_dinov2")
    teacher = load_teacher(f"timm:vit_small_patch14_dinov2@{path}", image_size=56, overrides=TIMM_TINY)
    assert teacher.num_prefix_tokens == 1
    images = torch.randint(0, 256, (1, 4, 56, 56, 3), dtype=torch.uint8)
    _, patches = teacher.forward_views(images)
    with torch.no_grad():
        tokens = model.forward_features(teacher.preprocess(images[0]))
    torch.testing.assert_close(patches[0].reshape(4, 16, 48), tokens[:, 1:], atol=1e-5, rtol=1e-5)


def test_preprocess_known_values(tmp_path):
    _, path = _timm_weights(tmp_path)
    teacher = load_teacher(f"timm:vit_small_patch14_reg4_dinov2@{path}", image_size=56, overrides=TIMM_TINY)
    img = torch.empty(1, 56, 56, 3, dtype=torch.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 255, 128, 0
    x = teacher.preprocess(img)  # no resize at 56
    expect = [(1.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], (128 / 255 - IMAGENET_MEAN[1]) / IMAGENET_STD[1],
              (0.0 - IMAGENET_MEAN[2]) / IMAGENET_STD[2]]
    assert x.shape == (1, 3, 56, 56)
    for c in range(3):
        assert torch.allclose(x[0, c], torch.full((56, 56), expect[c]), atol=1e-6)
    # a 224 px render is resized to 56: a constant image stays that constant
    big = torch.full((1, 224, 224, 3), 200, dtype=torch.uint8)
    y = teacher.preprocess(big)
    assert y.shape == (1, 3, 56, 56)
    assert torch.allclose(y[0, 1], torch.full((56, 56), (200 / 255 - IMAGENET_MEAN[1]) / IMAGENET_STD[1]), atol=1e-5)
    # top half black, bottom half white: rows keep their order after resizing (no flip, no transpose)
    half = torch.full((1, 112, 112, 3), 255, dtype=torch.uint8)
    half[:, :56] = 0
    z = teacher.preprocess(half)[0, 0]
    assert z[:20].max() < z[-20:].min()
    assert torch.allclose(z[:, 0], z[:, -1])


def test_timm_wrong_weights_one_line(tmp_path):
    _, path = _timm_weights(tmp_path)
    with pytest.raises(CheckpointError) as e:  # the file holds depth 1, the model asks for depth 2
        load_teacher(f"timm:vit_small_patch14_reg4_dinov2@{path}", image_size=56,
                     overrides={**TIMM_TINY, "depth": 2})
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="weights file not found"):
        load_teacher(f"timm:vit_small_patch14_dinov2@{tmp_path / 'missing.safetensors'}")


@pytest.mark.parametrize("spec", ["timm:vit_base_patch14_dinov2.lvd142m", "open_clip:ViT-B-32/laion2b_s34b_b79k"])
def test_offline_hub_spec_fails_with_one_line(spec, monkeypatch, capfd):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError) as e:
        load_teacher(spec)
    msg = str(e.value)
    assert msg.startswith(spec) and "\n" not in msg and "HF_HUB_OFFLINE" in msg
    assert "ERROR" not in capfd.readouterr().err  # open_clip's root-logger error is silenced


def test_bad_specs():
    with pytest.raises(CheckpointError, match="unknown timm model"):
        load_teacher("timm:no_such_model_xyz")
    with pytest.raises(CheckpointError, match="name the weights"):
        load_teacher("open_clip:ViT-B-32")
    with pytest.raises(CheckpointError, match="no such teacher folder"):
        load_teacher("/no/such/folder")


# ----------------------------------------------------------------------------------------------------
# OpenCLIP
# ----------------------------------------------------------------------------------------------------


def _open_clip_folder(tmp_path: Path) -> tuple[Path, dict]:
    import open_clip

    cfg = {"embed_dim": 24, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1,
                                           "head_width": 16},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    folder = tmp_path / "oc"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": cfg, "preprocess_cfg": {"mean": list(CLIP_MEAN), "std": list(CLIP_STD)}}))
    torch.manual_seed(1)
    model = open_clip.create_model("local-dir:" + str(folder), pretrained=None, load_weights=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder, cfg


def test_open_clip_local_folder_and_file(tmp_path):
    import open_clip

    folder, cfg = _open_clip_folder(tmp_path)
    teacher = load_teacher(f"open_clip:{folder}")
    assert isinstance(teacher, OpenClipTeacher)
    assert (teacher.grid, teacher.embed_dim, teacher.image_size) == (4, 24, 32)
    images = torch.randint(0, 256, (2, 4, 32, 32, 3), dtype=torch.uint8)
    glob, patches = teacher.forward_views(images)
    assert glob.shape == (2, 4, 24) and patches.shape == (2, 4, 4, 4, 24)
    # the reference: a fresh open_clip model with the same weights
    ref = open_clip.create_model("local-dir:" + str(folder)).eval()
    x = teacher.preprocess(images.view(8, 32, 32, 3))
    with torch.no_grad():
        torch.testing.assert_close(glob.view(8, 24), ref.encode_image(x), atol=1e-5, rtol=1e-5)
        v = ref.visual
        tokens = v.ln_post(v.transformer(v._embeds(x)))[:, 1:] @ v.proj  # drop CLS, project
    torch.testing.assert_close(patches.view(8, 16, 24), tokens, atol=1e-5, rtol=1e-5)
    # text tower
    tok = open_clip.get_tokenizer("local-dir:" + str(folder))
    with torch.no_grad():
        ref_text = F.normalize(ref.encode_text(tok(["a chair", "a car"])), dim=-1)
    torch.testing.assert_close(teacher.encode_text(["a chair", "a car"]), ref_text, atol=1e-5, rtol=1e-5)
    # NAME@FILE with a registered architecture name
    (tmp_path / "cfgs").mkdir()
    (tmp_path / "cfgs" / "LostTinyTestViT.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "cfgs")
    by_file = load_teacher(f"open_clip:LostTinyTestViT@{folder / 'open_clip_model.safetensors'}")
    g2, p2 = by_file.forward_views(images)
    torch.testing.assert_close(g2, glob)
    torch.testing.assert_close(p2, patches)


# ----------------------------------------------------------------------------------------------------
# The built-in teacher
# ----------------------------------------------------------------------------------------------------


def test_builtin_interface_and_save_load(tmp_path):
    teacher = tiny_teacher().eval()
    assert (teacher.grid, teacher.embed_dim, teacher.image_size, teacher.text_width) == (4, 32, 32, 32)
    images = torch.randint(0, 256, (3, 4, 64, 64, 3), dtype=torch.uint8)
    glob, patches = teacher.forward_views(images, batch_size=5)  # batching across shapes must not matter
    assert glob.shape == (3, 4, 32) and patches.shape == (3, 4, 4, 4, 32)
    g1, _ = teacher.forward_views(images[1:2])
    torch.testing.assert_close(g1[0], glob[1], atol=1e-5, rtol=1e-5)
    texts = ["a red chair", "a tall lamp with a round base"]
    emb, tok = teacher.encode_text(texts), teacher.text_tokens(texts)
    assert emb.shape == (2, 32) and torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert tok.shape == (2, 16, 32)
    assert not torch.allclose(tok[0], tok[1])

    teacher.save_pretrained(tmp_path / "t", extra_config={"run": {"steps": 1}})
    assert {p.name for p in (tmp_path / "t").iterdir()} == {"config.json", "model.safetensors", "open_clip_config.json"}
    loaded = load_teacher(tmp_path / "t")
    assert isinstance(loaded, ClipTeacher) and loaded.config == teacher.config
    assert not any(p.requires_grad for p in loaded.parameters())
    g2, p2 = loaded.forward_views(images, batch_size=5)  # same batching: bit-identical
    assert torch.equal(g2, glob) and torch.equal(p2, patches)
    # frozen weights let nn.MultiheadAttention take its fused path: equal up to float rounding
    torch.testing.assert_close(loaded.encode_text(texts), emb, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(loaded.text_tokens(texts), tok, atol=1e-6, rtol=1e-5)


def test_builtin_corrupt_weights(tmp_path):
    tiny_teacher().save_pretrained(tmp_path / "t")
    other = ClipTeacher(ClipTeacherConfig(**{**TINY, "vision_width": 64}))
    save_file({k: v.contiguous() for k, v in other.model.state_dict().items()}, str(tmp_path / "t" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_teacher(tmp_path / "t")
    (tmp_path / "t" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_teacher(tmp_path / "t")


def test_config_checks():
    with pytest.raises(ConfigError, match="image_size"):
        ClipTeacherConfig(image_size=30, patch_size=8)


def test_clip_loss_analytic():
    e = torch.eye(2)
    loss, logits = clip_loss(e, e, torch.tensor(math.log(2.0)))
    assert torch.allclose(logits, 2 * e)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-5)
    # both captions identical: each row's target is uniform over the two
    loss, _ = clip_loss(e, e, torch.tensor(math.log(2.0)), same=torch.ones(2, 2, dtype=torch.bool))
    p = math.exp(2) / (math.exp(2) + 1)
    assert loss.item() == pytest.approx(-0.5 * (math.log(p) + math.log(1 - p)), rel=1e-5)
    # the learned scale is clamped at 100
    _, logits = clip_loss(e, e, torch.tensor(10.0))
    assert logits.max().item() == pytest.approx(100.0, rel=1e-5)


def test_task_loss_falls_on_synthetic_pairs(tmp_path):
    root = make_store(tmp_path / "ds")
    ds = RenderCaptionDataset(root, "train", image_size=32, context_length=16)
    assert len(ds) == 9
    item = ds[0]
    assert item["renders"].shape == (4, 32, 32, 3) and item["renders"].dtype == torch.uint8
    assert item["text"].shape == (16,) and item["text"][0].item() == 49406  # SOT
    assert ds[0]["renders"] is ds.cache[0]["renders"]  # cached after the first read
    batch = {k: torch.stack([ds[i][k] for i in range(len(ds))]) for k in ("renders", "text", "index")}
    task = ClipTask(tiny_teacher())
    opt = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(25):
        out = task(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert set(out) == {"loss", "acc_i2t", "logit_scale"}
    assert losses[0] > math.log(9)  # no better than chance at init
    # the colour (hence the category) is learnable, the number in the caption only partly: floor ~ log 3
    assert np.mean(losses[-3:]) < min(0.6 * losses[0], math.log(9) - 0.5)
    grads = [n for n, p in task.named_parameters() if p.requires_grad and p.grad is None]
    assert grads == []  # every parameter, logit scale included, was trained
    task.export(tmp_path / "export")
    loaded = load_teacher(tmp_path / "export")
    g_task, _ = task.teacher.eval().forward_views(batch["renders"][:2])
    g_loaded, _ = loaded.forward_views(batch["renders"][:2])
    torch.testing.assert_close(g_task, g_loaded)


def test_category_captions_make_one_category_positives(tmp_path):
    root = make_store(tmp_path / "ds")
    ds = RenderCaptionDataset(root, "train", image_size=32, context_length=16)
    item = ds[0]
    cat = ds.records[0]["category"]
    assert torch.equal(item["text_category"], ds.tokenizer([f"a {cat}"])[0])
    assert not torch.equal(item["text_category"], item["text"])
    batch = {k: torch.stack([ds[i][k] for i in range(len(ds))]) for k in ("renders", "text", "text_category")}
    B = batch["text"].shape[0]
    half = ClipTask(tiny_teacher(), category_caption_prob=0.5)
    plain = ClipTask(tiny_teacher())
    torch.manual_seed(3)
    out = half(batch)
    # replay: the task draws its caption choice first, then the views; the loss is CLIP on the mixed captions
    torch.manual_seed(3)
    short = torch.rand(B) < 0.5
    mixed = dict(batch, text=torch.where(short[:, None], batch["text_category"], batch["text"]))
    ref = plain(mixed)
    assert 0 < int(short.sum()) < B
    assert float(out["loss"].detach()) == pytest.approx(float(ref["loss"].detach()), abs=1e-6)
    # every caption short: a category's shapes share one caption, so they are each other's positives
    every_task = ClipTask(tiny_teacher(), category_caption_prob=1.0)  # (tiny_teacher reseeds: build first)
    torch.manual_seed(3)
    every = every_task(batch)
    torch.manual_seed(3)
    torch.rand(B)
    ref = plain(dict(batch, text=batch["text_category"]))
    assert float(every["loss"].detach()) == pytest.approx(float(ref["loss"].detach()), abs=1e-6)
    assert float(every["loss"].detach()) != pytest.approx(float(out["loss"].detach()), abs=1e-3)
    with pytest.raises(ConfigError, match="data.category_caption_prob"):
        ClipTask(tiny_teacher(), category_caption_prob=1.5)


def test_view_consistency_term_by_hand(tmp_path):
    root = make_store(tmp_path / "ds")
    ds = RenderCaptionDataset(root, "train", image_size=32, context_length=16)
    batch = {k: torch.stack([ds[i][k] for i in range(len(ds))]) for k in ("renders", "text")}
    B = batch["text"].shape[0]
    task = ClipTask(tiny_teacher(), view_weight=0.5)
    plain = ClipTask(tiny_teacher())
    torch.manual_seed(7)
    out = task(batch)
    torch.manual_seed(7)  # replay: the first view, then the offset to a different second view
    view = torch.randint(0, 4, (B,))
    other = (view + torch.randint(1, 4, (B,))) % 4
    assert bool((other != view).all())
    torch.manual_seed(7)
    ref = plain(batch)  # CLIP on the first view: the same draw
    rows = torch.arange(B)
    with torch.no_grad():
        a = task._embed(batch["renders"][rows, view])
        b = task._embed(batch["renders"][rows, other])
        logits = task.teacher.model.logit_scale.exp() * a @ b.T
        target = torch.arange(B)
        want = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    assert float(out["l_view"]) == pytest.approx(float(want), abs=1e-5)
    assert float(out["loss"].detach()) == pytest.approx(float(ref["loss"].detach()) + 0.5 * float(want), abs=1e-5)
    with pytest.raises(ConfigError, match="data.view_weight"):
        ClipTask(tiny_teacher(), view_weight=-1.0)


# ----------------------------------------------------------------------------------------------------
# Features and retrieval
# ----------------------------------------------------------------------------------------------------


def test_pool_tokens_block_means():
    x = torch.arange(2 * 4 * 4 * 3, dtype=torch.float32).view(2, 4, 4, 3)
    y = pool_tokens(x, 2)
    assert y.shape == (2, 2, 2, 3)
    torch.testing.assert_close(y[1, 0, 1], x[1, 0:2, 2:4].mean(dim=(0, 1)))
    torch.testing.assert_close(pool_tokens(x, 4), x)


def test_features_job_values_and_resume(tmp_path):
    root = make_store(tmp_path / "ds")
    teacher = tiny_teacher().eval().requires_grad_(False)
    teacher.save_pretrained(tmp_path / "t")
    teacher = load_teacher(tmp_path / "t")
    half = extract_features(root, teacher, grid=2, batch_size=4, rank=0, world_size=2)  # as if interrupted
    assert (half.done, half.skipped) == (6, 0)
    rest = extract_features(root, teacher, grid=2, batch_size=4)
    assert (rest.done, rest.skipped) == (6, 6)
    again = extract_features(root, teacher, grid=2)
    assert (again.done, again.skipped) == (0, 12)
    store = DatasetStore(root)
    assert sorted(store.ids(table="features")) == sorted(store.ids())
    stats = store.read_stats("features")
    assert stats["grid"] == 2 and stats["teacher_grid"] == 4 and stats["teacher"]["spec"] == str((tmp_path / "t").resolve())
    a = store.load("lamp-2", table="features")
    assert a["global_views"].shape == (4, 32) and a["global"].shape == (32,) and a["spatial"].shape == (4, 2, 2, 32)
    assert np.allclose(np.linalg.norm(a["global_views"], axis=-1), 1, atol=1e-5)
    assert np.linalg.norm(a["global"]) == pytest.approx(1, abs=1e-5)
    mean = a["global_views"].mean(0)
    assert np.allclose(a["global"], mean / np.linalg.norm(mean), atol=1e-5)
    renders = torch.from_numpy(store.load("lamp-2", keys=["renders"])["renders"])[None]
    glob, patches = teacher.forward_views(renders)
    assert np.allclose(a["global_views"], F.normalize(glob[0], dim=-1).numpy(), atol=1e-5)
    block = patches[0, 3, 2:4, 0:2].mean(dim=(0, 1)).numpy()  # left view, bottom-left 2x2 block
    assert np.allclose(a["spatial"][3, 1, 0].astype(np.float32), block, atol=2e-3, rtol=2e-3)
    with pytest.raises(DataError, match="delete the table"):
        extract_features(root, teacher, grid=1)
    with pytest.raises(ConfigError, match="grid"):
        extract_features(root, teacher, grid=5)


def test_retrieval_scores_with_repeated_captions():
    captions = ["a chair", "a lamp", "a chair", "a car"]
    categories = ["chair", "lamp", "chair", "car"]
    shape = torch.eye(4)
    # caption 0 retrieves shape 2 (same caption: a hit), caption 1 retrieves shape 3 (miss), others correct
    text = torch.eye(4)[[2, 3, 2, 3]]
    s = retrieval_scores(text, shape, captions, categories)
    assert s["text_to_render_top1"] == pytest.approx(3 / 4)
    assert s["text_to_render_category_top1"] == pytest.approx(3 / 4)
    # best caption per shape (ties -> the first): shape 0 -> caption 0 (hit), 1 -> 0 (miss), 2 -> 0 ("a chair",
    # a hit), 3 -> 1 (miss)
    assert s["render_to_text_top1"] == pytest.approx(0.5)
    assert s["render_to_text_category_top1"] == pytest.approx(0.5)
    assert s["chance_top1"] == 0.25
    assert s["chance_category_top1"] == pytest.approx((4 + 1 + 1) / 16)


def test_teacher_retrieval_end_to_end(tmp_path):
    root = make_store(tmp_path / "ds")
    teacher = tiny_teacher().eval().requires_grad_(False)
    r = teacher_retrieval(root, teacher, split="test")
    assert r["n"] == 3 and r["chance_top1"] == pytest.approx(1 / 3) and r["categories"] == 3
    ids = DatasetStore(root).ids(split="test")
    emb = shape_embeddings(root, teacher, ids)
    assert emb.shape == (3, 32) and torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    with pytest.raises(DataError, match="no items"):
        teacher_retrieval(root, teacher, split="val")


def test_quiet_logging_drops_only_the_packages_records_and_only_inside_the_block(caplog):
    import logging
    import os

    import open_clip

    from lostcli.teachers import quiet_logging

    inside = os.path.join(os.path.dirname(open_clip.__file__), "factory.py")

    def emit(logger: logging.Logger, pathname: str, what: str, level: int = logging.WARNING) -> None:
        if logger.isEnabledFor(level):
            logger.handle(logger.makeRecord(logger.name, level, pathname, 1, what, (), None))

    root, child = logging.getLogger(), logging.getLogger("open_clip.factory")
    caplog.set_level(logging.INFO)
    before, filters = logging.getLogger("open_clip").level, list(root.filters)
    with quiet_logging("open_clip"):
        assert logging.root.manager.disable == logging.NOTSET  # nothing process-wide
        emit(root, inside, "open_clip via logging.warning")
        emit(child, inside, "open_clip's own logger")
        emit(root, __file__, "someone else on the root logger")
        emit(logging.getLogger("elsewhere"), __file__, "another logger")
        emit(root, inside, "open_clip, critical", logging.CRITICAL)
    emit(root, inside, "open_clip after the block")
    assert [r.getMessage() for r in caplog.records] == [
        "someone else on the root logger", "another logger", "open_clip, critical", "open_clip after the block"]
    assert logging.getLogger("open_clip").level == before and root.filters == filters
