"""`lost dataset lift` (images -> latents, meshes, previews in a dataset store) and the image-to-3D training stage
(`lost image3d train`, `train/image3d.py`), on tiny random networks and tiny generated images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import Killed, cli, kill_before_step, one_error
from lostcli.config import OptimConfig, TrainConfig
from lostcli.data.store import DatasetStore, ShardWriter
from lostcli.errors import ConfigError
from lostcli.image3d.condition import CLIP_MEAN, CLIP_STD, ImageEncoders
from lostcli.image3d.pipeline import ImageTo3D, ImageTo3DConfig
from lostcli.latent.direct3d import TriplaneVAE
from lostcli.latent.direct3d_dit import Direct3DDiT
from lostcli.train.image3d import (Image3DRunConfig, Image3DTask, RenderLatentPairs, TowerConfig, build_task,
                                   build_towers, latent_affine)
from lostcli.train.loop import seed_everything, train

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 28  # tower input side: 2 x 2 patches of 14


def _vae_with_surface() -> TriplaneVAE:
    """A random tiny VAE whose occupancy logits straddle 0 (a random one is empty everywhere)."""
    torch.manual_seed(0)
    vae = TriplaneVAE.from_preset("tiny")
    with torch.no_grad():
        logits = vae.occupancy(torch.randn(2, 8, 8, 24), torch.rand(2, 4096, 3) * 2 - 1)
        vae.occ_decoder.net[4].bias -= logits.median()
    return vae


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny random image-to-3D folder (save_pretrained layout)."""
    torch.manual_seed(0)
    semantic, pixel = build_towers(TowerConfig(layers=1), SIZE)
    dit = Direct3DDiT.from_preset("tiny")
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # off the zero-output init
    pipe = ImageTo3D(_vae_with_surface(), dit, ImageEncoders(semantic, pixel, SIZE),
                     ImageTo3DConfig(steps=2, guidance=2.0, image_size=SIZE, mc_threshold=0.0))
    return pipe.save_pretrained(tmp_path_factory.mktemp("model") / "pipe")


def _write_images(folder: Path) -> list[str]:
    """An RGBA object on transparency, an RGB image and a JPEG: 3 good images."""
    folder.mkdir(parents=True, exist_ok=True)
    a = np.zeros((40, 30, 4), dtype=np.uint8)
    a[8:30, 5:25] = (200, 40, 40, 255)
    Image.fromarray(a).save(folder / "red_box.png")
    b = np.full((32, 32, 3), 255, dtype=np.uint8)
    b[4:20, 10:28] = (30, 30, 200)
    Image.fromarray(b).save(folder / "blue.png")
    Image.fromarray(b[::-1].copy()).save(folder / "sub_blue.jpg")
    return ["blue", "red_box", "sub_blue"]


def _lift(capsys, images: Path, model: Path, out: Path, *extra) -> tuple[int, str, str]:
    return cli(capsys, "dataset", "lift", images, "--model", model, "--out", out, "--steps", "2", "--resolution",
               "16", "--batch-size", "2", *extra)


def test_lift_writes_a_store_that_dataset_info_reads_and_a_rerun_redoes_nothing(capsys, tmp_path, model_dir):
    ids = _write_images(tmp_path / "images")
    code, out, err = _lift(capsys, tmp_path / "images", model_dir, tmp_path / "lifted")
    assert code == 0, err
    root = tmp_path / "lifted"
    store = DatasetStore(root)
    assert store.ids() == ids and store.ids(table="latents") == ids
    for id in ids:
        arrays = store.load(id)
        assert arrays["renders"].shape == (4, 224, 224, 3) and arrays["renders"].min() < 255  # something drawn
        assert len(arrays["mesh_faces"]) > 0 and arrays["surface_points"].shape == (16384, 3)
        assert store.load(id, table="latents")["z"].shape == (8, 8, 24)
        assert (root / "meshes" / f"{id}.glb").stat().st_size > 0
        assert Image.open(root / "previews" / f"{id}.png").size == (4 * 224, 224)
    assert store.records()[1]["caption"] == "a 3D model of a red box"
    assert json.loads((root / "latents" / "stats.json").read_text())["items"] == 3
    code, out, _ = cli(capsys, "dataset", "info", root)
    assert code == 0 and "3 items" in out
    # Re-run: nothing is sampled or written again.
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    code, out, err = _lift(capsys, tmp_path / "images", model_dir, root)
    assert code == 0 and "lifted 0 new, skipped 3 done" in out, out + err
    after = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    assert after == before
    # Other settings into the same folder: refused, one line.
    code, _, err = _lift(capsys, tmp_path / "images", model_dir, root, "--seed", "5")
    assert code != 0 and "seed" in one_error(err, root / "settings.json")


def test_bad_images_are_recorded_failures_and_the_rest_is_lifted(capsys, tmp_path, model_dir):
    images = tmp_path / "images"
    _write_images(images)
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (images / "empty.png").write_bytes(b"")
    Image.new("RGB", (1, 1), (0, 0, 0)).save(images / "dot.png")
    code, out, err = _lift(capsys, images, model_dir, tmp_path / "lifted")
    assert code == 0, err
    store = DatasetStore(tmp_path / "lifted")
    assert store.ids() == ["blue", "red_box", "sub_blue"]
    reasons = {f["file"]: f["reason"] for f in store.info()["failures"]}
    assert set(reasons) == {"corrupt.png", "empty.png", "dot.png"}
    assert "0 bytes" in reasons["empty.png"] and "1 x 1" in reasons["dot.png"]
    assert "not a readable image" in reasons["corrupt.png"]
    code, out, err = _lift(capsys, images, model_dir, tmp_path / "lifted")  # failed files unchanged: not retried
    assert code == 0 and "lifted 0 new, skipped 3 done and 3 known failures, 0 failed" in out, out


def test_manifest_captions_and_one_line_errors(capsys, tmp_path, model_dir):
    images = tmp_path / "flux"
    (images / "images").mkdir(parents=True)
    Image.new("RGB", (32, 32), (250, 250, 250)).save(images / "images" / "000007.png")
    row = {"index": 7, "file": "images/000007.png", "prompt": "a wooden chair", "category": "chair", "bytes": 1}
    (images / "images.jsonl").write_text(json.dumps(row) + "\n")
    code, _, err = _lift(capsys, images, model_dir, tmp_path / "lifted")
    assert code == 0, err
    rec = DatasetStore(tmp_path / "lifted").records()[0]
    assert (rec["id"], rec["caption"], rec["category"]) == ("000007", "a wooden chair", "chair")
    # A model folder missing a component, a missing images folder: one line naming the file.
    broken = tmp_path / "broken"
    broken.mkdir()
    for part in ("vae", "semantic_encoder", "pixel_encoder"):
        (broken / part).symlink_to(model_dir / part)
    (broken / "dit").mkdir()
    (broken / "config.json").write_text((model_dir / "config.json").read_text())
    code, _, err = _lift(capsys, images, broken, tmp_path / "other")
    assert code != 0 and one_error(err, broken / "dit")
    code, _, err = _lift(capsys, tmp_path / "nowhere", model_dir, tmp_path / "other2")
    assert code != 0 and one_error(err, tmp_path / "nowhere")


# ----------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------


def _tiny_store(root: Path, n: int = 6) -> None:
    """n shapes: 2-view renders (a dark square whose size is the shape) and latents that follow its size."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal((8, 8, 24)).astype(np.float32)
    with ShardWriter(root, "items") as items, ShardWriter(root, "latents") as latents:
        for k in range(n):
            img = np.full((2, 32, 32, 3), 255, dtype=np.uint8)
            img[:, 16 - 2 - 2 * k:16 + 2 + 2 * k, 16 - 2 - 2 * k:16 + 2 + 2 * k] = 40
            items.add(f"s{k}", {"renders": img}, {"category": "box", "split": "train"})
            latents.add(f"s{k}", {"z": base * (k - n / 2) / n}, {"split": "train"})
    DatasetStore(root).write_stats("latents", {"mean": [0.0] * 8, "std": [1.0] * 8})


def _cfg(vae: Path) -> Image3DRunConfig:
    cfg = Image3DRunConfig()
    cfg.model.vae, cfg.model.image_size, cfg.model.towers = str(vae), SIZE, TowerConfig(layers=1)
    cfg.train = TrainConfig(steps=4, batch_size=4, log_every=1, save_every=2, ema_decay=0.9)
    cfg.optim = OptimConfig(lr=3e-3, warmup_steps=0, schedule="constant")
    return cfg


def test_latent_affine_gives_unit_variance():
    scale, shift = latent_affine({"mean": [1.0, 3.0], "std": [2.0, 2.0]})
    assert shift == 2.0 and scale == pytest.approx(1 / np.sqrt(5.0))


def test_task_steps_lower_the_loss_on_a_fixed_batch(tmp_path):
    _tiny_store(tmp_path / "data")
    TriplaneVAE.from_preset("tiny").save_pretrained(tmp_path / "vae")
    seed_everything(0)
    task = build_task(_cfg(tmp_path / "vae"), tmp_path / "data")
    task.cfg.loss.cond_drop = 0.0
    data = RenderLatentPairs(tmp_path / "data", SIZE)
    assert len(data) == 12 and data[0]["image"].shape == (3, SIZE, SIZE)
    batch = {k: torch.stack([data[i][k] for i in range(8)]) for k in ("image", "z")}
    opt = torch.optim.Adam([p for p in task.parameters() if p.requires_grad], lr=3e-3)

    def loss_at_fixed_noise() -> float:
        state = torch.get_rng_state()
        torch.manual_seed(123)
        with torch.no_grad():
            value = task(batch)["loss"].item()
        torch.set_rng_state(state)
        return value

    first = loss_at_fixed_noise()
    for _ in range(40):
        out = task(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert loss_at_fixed_noise() < 0.8 * first
    frozen = [n for n, p in task.named_parameters() if n.startswith("vae.")]
    assert frozen and not any(p.requires_grad for n, p in task.named_parameters() if n.startswith("vae."))
    grads = [n for n, p in task.named_parameters() if p.requires_grad and p.grad is None]
    assert not grads, f"no gradient: {grads[:5]}"


def test_condition_dropout_zeroes_the_conditions(tmp_path):
    _tiny_store(tmp_path / "data")
    TriplaneVAE.from_preset("tiny").save_pretrained(tmp_path / "vae")
    task = build_task(_cfg(tmp_path / "vae"), tmp_path / "data")
    seen = []
    task.dit.register_forward_hook(lambda m, args, out: seen.append(args))
    data = RenderLatentPairs(tmp_path / "data", SIZE)
    batch = {k: torch.stack([data[i][k] for i in range(4)]) for k in ("image", "z")}
    task.cfg.loss.cond_drop = 1.0
    assert task(batch)["uncond"] == 1.0 and all(a.abs().sum() == 0 for a in seen[-1][2:])
    task.cfg.loss.cond_drop = 0.0
    assert task(batch)["uncond"] == 0.0 and all(a.abs().sum() > 0 for a in seen[-1][2:])


def test_training_resumes_after_a_kill_and_exports_a_pipeline(capsys, tmp_path):
    _tiny_store(tmp_path / "data")
    TriplaneVAE.from_preset("tiny").save_pretrained(tmp_path / "vae")
    cfg = _cfg(tmp_path / "vae")
    data = RenderLatentPairs(tmp_path / "data", SIZE)
    seed_everything(0)
    full = train(build_task(cfg, tmp_path / "data"), data, cfg.train, cfg.optim, tmp_path / "full", progress=False)
    seed_everything(0)
    with pytest.raises(Killed):
        train(kill_before_step(build_task(cfg, tmp_path / "data"), 3), data, cfg.train, cfg.optim, tmp_path / "run",
              progress=False)
    seed_everything(0)
    resumed = train(build_task(cfg, tmp_path / "data"), data, cfg.train, cfg.optim, tmp_path / "run", resume=True,
                    progress=False)
    assert resumed.steps == 4 and resumed.final_loss == pytest.approx(full.final_loss, rel=1e-5)
    pipe = ImageTo3D.from_pretrained(tmp_path / "run" / "export")
    assert pipe.config.image_size == SIZE and pipe.vae.config.latents_scale == pytest.approx(1.0)
    z = pipe([Image.new("RGB", (32, 32), "white")], steps=2, guidance=2.0)
    assert z.shape == (1, 8, 8, 24) and torch.isfinite(z).all()


def test_recipe_loads_and_the_cli_trains(capsys, tmp_path):
    _tiny_store(tmp_path / "data")
    TriplaneVAE.from_preset("tiny").save_pretrained(tmp_path / "vae")
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "image3d.yaml"
    code, out, err = cli(capsys, "image3d", "train", "--recipe", recipe, "--data", tmp_path / "data", "--out",
                         tmp_path / "run", "--set", f"model.vae={tmp_path / 'vae'}", "--set", "train.steps=2",
                         "--set", "train.batch_size=4", "--set", f"model.image_size={SIZE}",
                         "--set", "model.towers.patch_size=14")
    assert code == 0, err
    assert "trained 2 steps" in out and (tmp_path / "run" / "export" / "dit" / "config.json").is_file()
    code, _, err = cli(capsys, "image3d", "train", "--recipe", recipe, "--data", tmp_path / "data", "--out",
                       tmp_path / "run2", "--set", "train.steps=2")
    assert code != 0 and "model.vae" in one_error(err)


# ----------------------------------------------------------------------------------------------------
# A teacher's image tower as the frozen semantic tower (model.semantic_tower)
# ----------------------------------------------------------------------------------------------------


def _teacher(folder: Path, image_size: int = SIZE, quick_gelu: bool = False) -> Path:
    """A small random built-in teacher (weights moved off their init) saved as a folder."""
    from lostcli.models.teacher import ClipTeacher, ClipTeacherConfig

    torch.manual_seed(1)
    teacher = ClipTeacher(ClipTeacherConfig(embed_dim=16, image_size=image_size, patch_size=14, vision_width=48,
                                            vision_layers=2, vision_heads=2, text_width=32, text_layers=1,
                                            text_heads=2))
    if quick_gelu:
        from open_clip.transformer import QuickGELU

        for block in teacher.model.visual.transformer.resblocks:
            block.mlp.gelu = QuickGELU()
    with torch.no_grad():
        for p in teacher.model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    if quick_gelu:
        return teacher
    teacher.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("quick_gelu", [False, True])
def test_open_clip_tower_becomes_a_transformers_clip_tower_with_the_same_outputs(tmp_path, quick_gelu):
    from lostcli.image3d.condition import clip_vision_from_open_clip, load_tower
    from lostcli.teachers import load_teacher

    teacher = _teacher(tmp_path / "t", quick_gelu=quick_gelu)
    visual = (teacher if quick_gelu else load_teacher(tmp_path / "t")).model.visual
    tower = clip_vision_from_open_clip(visual)
    assert tower.config.hidden_act == ("quick_gelu" if quick_gelu else "gelu")
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        pooled, tokens = visual(x)  # [3, 16] projected CLS, [3, 4, 48] patches after ln_post
        hidden = tower(pixel_values=x).last_hidden_state  # [3, 5, 48] before post_layernorm
        after = tower.post_layernorm(hidden)
    assert hidden.shape == (3, 5, 48)
    assert torch.allclose(after[:, 1:], tokens, atol=1e-5)
    assert torch.allclose(after[:, 0] @ visual.proj, pooled, atol=1e-5)
    assert not torch.allclose(hidden, after, atol=1e-2)  # the DiT reads the state before the post-LayerNorm
    tower.save_pretrained(tmp_path / "semantic")
    with torch.no_grad():
        again = load_tower("semantic", tmp_path / "semantic")(pixel_values=x).last_hidden_state
    assert torch.equal(again, hidden)


def test_teacher_semantic_tower_is_frozen_read_by_the_dit_and_exported(tmp_path):
    from lostcli.teachers import load_teacher

    _tiny_store(tmp_path / "data")
    TriplaneVAE.from_preset("tiny").save_pretrained(tmp_path / "vae")
    cfg = _cfg(tmp_path / "vae")
    cfg.model.semantic_tower = str(_teacher(tmp_path / "teacher"))
    seed_everything(0)
    task = build_task(cfg, tmp_path / "data")
    assert task.dit.config.semantic_channels == 48 and task.dit.config.pixel_channels == 32
    assert not any(p.requires_grad for p in task.semantic.parameters())
    before = {k: v.clone() for k, v in task.semantic.state_dict().items()}
    data = RenderLatentPairs(tmp_path / "data", SIZE)
    result = train(task, data, cfg.train, cfg.optim, tmp_path / "run", progress=False)
    assert result.steps == 4 and np.isfinite(result.final_loss)
    assert all(torch.equal(before[k], v) for k, v in task.semantic.state_dict().items())
    pipe = ImageTo3D.from_pretrained(tmp_path / "run" / "export")
    image = data[0]["image"][None]
    visual = load_teacher(tmp_path / "teacher").model.visual
    with torch.no_grad():
        cond = pipe.encoders(image)
        _, tokens = visual((image - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None])
    assert torch.allclose(pipe.encoders.semantic.post_layernorm(cond.semantic)[:, 1:], tokens, atol=1e-5)

    cfg.model.image_size = 2 * SIZE
    with pytest.raises(ConfigError, match=r"model.image_size: 56 must equal the semantic tower's input side 28"):
        build_task(cfg, tmp_path / "data")
