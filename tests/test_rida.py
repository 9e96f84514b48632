"""RIDA student, view <-> plane correspondence, the Task, and `lost rida train` / `lost rida eval` on a tiny store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from lostcli.cli import rida as rida_cli
from lostcli.config import load_config
from lostcli.data.render import VIEW_SPECS, VIEWS, pixel_to_view
from lostcli.data.store import DatasetStore, ShardWriter
from lostcli.errors import CheckpointError, ConfigError, DataError
from lostcli.latent.direct3d import PLANE_UV, sample_planes
from lostcli.models.rida import (PRESETS, VIEW_ORDER, VIEW_PLANES, RidaStudent, build_student, pool_grid,
                                 view_grids)
from lostcli.train.rida import RidaDataset, RidaLossConfig, RidaRunConfig, RidaTask

REPO = Path(__file__).resolve().parents[1]
TINY = dict(latent_channels=4, plane_res=4, width=32, depth=1, heads=2, out_dim=16)


# -- the view <-> plane correspondence ----------------------------------------------------------------


def _coordinate_planes(R: int) -> torch.Tensor:
    """[3, 2, R, R]: each plane cell carries its own (u, v) plane coordinates (align_corners=False centres)."""
    c = -1.0 + (torch.arange(R, dtype=torch.float64) + 0.5) * 2.0 / R
    u = c.view(1, R).expand(R, R)  # column j -> u
    v = c.view(R, 1).expand(R, R)  # row i -> v
    return torch.stack([u, v]).unsqueeze(0).expand(3, 2, R, R).clone()


def test_view_order_matches_the_renderer():
    assert VIEW_ORDER == VIEWS


@pytest.mark.parametrize("view", VIEWS)
def test_each_view_sees_its_plane_flipped_as_the_camera_sees_it(view):
    R = 6
    planes = _coordinate_planes(R)  # [3, 2, R, R]
    grids = view_grids(planes.permute(0, 2, 3, 1).unsqueeze(0))[0]  # [4, R, R, 2] image-aligned
    got = grids[VIEWS.index(view)].numpy()  # [R, R, 2] at pixel (row, col)
    spec = VIEW_SPECS[view]
    t = VIEW_PLANES[view][0]
    depth_axis = int(np.argmax(np.abs(spec.origin_dir)))
    assert depth_axis not in PLANE_UV[t]  # the plane faces the camera
    u_img, v_img = pixel_to_view(R)  # [R, R] each
    world = u_img[..., None] * np.array(spec.right) + v_img[..., None] * np.array(spec.up)  # [R, R, 3]
    expected = world[..., list(PLANE_UV[t])]  # the plane coordinates of the world point seen at each pixel
    np.testing.assert_allclose(got, expected, atol=1e-9)


def test_correspondence_agrees_with_the_vae_plane_sampler():
    R = 4
    planes = _coordinate_planes(R).float()  # [3, 2, R, R]
    grids = view_grids(planes.permute(0, 2, 3, 1).unsqueeze(0))[0]  # [4, R, R, 2]
    for k, view in enumerate(VIEWS):
        spec = VIEW_SPECS[view]
        u_img, v_img = pixel_to_view(R)
        xyz = u_img[..., None] * np.array(spec.right) + v_img[..., None] * np.array(spec.up)
        xyz = torch.from_numpy(xyz.reshape(1, -1, 3)).float()
        sampled = sample_planes(planes.unsqueeze(0), xyz)[0, VIEW_PLANES[view][0]]  # [R*R, 2] bilinear
        torch.testing.assert_close(sampled.view(R, R, 2), grids[k], atol=1e-5, rtol=0)


def test_pool_grid_averages_blocks():
    x = torch.arange(16.0).view(1, 1, 4, 4, 1)
    pooled = pool_grid(x, 2)[0, 0, ..., 0]
    assert pooled.tolist() == [[2.5, 4.5], [10.5, 12.5]]


# -- the student --------------------------------------------------------------------------------------


def test_student_shapes_gradients_and_normalised_embedding():
    student = build_student("rida_tiny", **TINY)
    z = torch.randn(3, 4, 4, 12)
    g, tokens = student.forward_features(z)
    assert g.shape == (3, 16) and tokens.shape == (3, 48, 16)
    assert student.plane_grid(tokens).shape == (3, 3, 4, 4, 16)
    assert torch.isfinite(g).all() and torch.isfinite(tokens).all()
    (g.pow(2).sum() + tokens.pow(2).sum()).backward()
    for name, p in student.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    e = student.embed(z)
    assert torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5)
    with pytest.raises(ConfigError, match="latent shape"):
        student.forward_features(torch.randn(1, 4, 4, 8))


def test_tokens_are_plane_major():
    student = build_student("rida_tiny", **TINY)
    with torch.no_grad():
        student.x_embedder.weight.zero_()
        student.x_embedder.weight[0, 0] = 1.0  # token dim 0 = latent channel 0
        student.x_embedder.bias.zero_()
        student.pos_embed.zero_()
        student.plane_embed.zero_()
    z = torch.randn(1, 4, 4, 12)
    x = student._patchify(z)  # [1, 48, 32]
    grid = x[0, :, 0].view(3, 4, 4)
    for t in range(3):
        torch.testing.assert_close(grid[t], z[0, 0, :, 4 * t:4 * t + 4])


def test_presets_build_and_patch_size_two():
    assert PRESETS["rida_paper"].num_tokens == 768 and PRESETS["rida_tiny"].num_tokens == 192
    student = build_student("rida_paper", width=32, depth=1, heads=2, out_dim=8, latent_channels=16)
    g, tokens = student.forward_features(torch.randn(1, 16, 32, 96))
    assert g.shape == (1, 8) and tokens.shape == (1, 768, 8)
    with pytest.raises(ConfigError, match="model.preset"):
        build_student("rida_huge")
    with pytest.raises(ConfigError, match="model.overrides.depht"):
        build_student("rida_tiny", depht=2)


def test_save_load_roundtrip(tmp_path):
    student = build_student("rida_tiny", **TINY)
    student.set_latent_stats([1.0, 2.0, 3.0, 4.0], [0.5, 1.0, 2.0, 4.0])
    student.save_pretrained(tmp_path / "run" / "export", extra_config={"objective": "rida"})
    loaded = RidaStudent.from_pretrained(tmp_path / "run")  # a run directory resolves to its export
    z = torch.randn(2, 4, 4, 12)
    torch.testing.assert_close(loaded.embed(loaded.normalize(z)), student.eval().embed(student.normalize(z)))
    assert loaded.latent_std.tolist() == [0.5, 1.0, 2.0, 4.0] and loaded.extra_config["objective"] == "rida"
    with pytest.raises(CheckpointError, match=str(tmp_path / "nothing")):
        RidaStudent.from_pretrained(tmp_path / "nothing")


# -- the task -----------------------------------------------------------------------------------------


def _synthetic(n: int, seed: int, C: int = 4, R: int = 4, D: int = 16, g: int = 2, classes: int = 4):
    """Latents with class structure, and teacher features that follow the class (plus noise)."""
    gen = torch.Generator().manual_seed(seed)
    label = torch.arange(n) % classes
    protos = torch.randn(classes, C, R, 3 * R, generator=gen)
    z = protos[label] + 0.8 * torch.randn(n, C, R, 3 * R, generator=gen)
    centers = torch.randn(classes, D, generator=gen)
    glob = F.normalize(centers[label] + 0.3 * torch.randn(n, D, generator=gen), dim=-1)
    patches = centers[label].view(n, 1, 1, 1, D) + torch.randn(n, 4, g, g, D, generator=gen)
    return z, glob, patches


@pytest.mark.parametrize("objective", ["rida", "regression"])
def test_a_few_steps_lower_the_loss(objective):
    torch.manual_seed(0)
    z, glob, patches = _synthetic(16, seed=1)
    out_dim = 16
    student = build_student("rida_tiny", **{**TINY, "out_dim": out_dim,
                                            "head": "linear" if objective == "regression" else "mlp"})
    task = RidaTask(student, RidaLossConfig(objective=objective, pos_threshold=0.7, temperature=0.2))
    batch = {"z": z, "global": glob, "patches": patches}
    opt = torch.optim.AdamW(task.parameters(), lr=3e-3)
    first = task(batch)
    keys = set(first)
    losses = []
    for _ in range(25):
        out = task(batch)
        assert set(out) == keys and torch.isfinite(out["loss"])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert losses[-1] < 0.6 * losses[0], losses
    if objective == "rida":
        assert {"l_global", "l_rank", "l_spatial", "rank_corr", "positives"} <= keys
        assert float(task(batch)["rank_corr"]) > float(first["rank_corr"])


def test_zero_weight_removes_a_term():
    z, glob, patches = _synthetic(8, seed=2)
    student = build_student("rida_tiny", **TINY)
    batch = {"z": z, "global": glob, "patches": patches}
    with torch.no_grad():
        full = RidaTask(student, RidaLossConfig())(batch)
        no_rank = RidaTask(student, RidaLossConfig(w_rank=0.0))(batch)
    expected = float(full["l_global"]) + 0.5 * float(full["l_spatial"])
    assert abs(float(no_rank["loss"]) - expected) < 1e-4
    assert abs(float(full["loss"]) - expected - float(full["l_rank"])) < 1e-3


def test_flatten_pool_reads_every_patch_token():
    torch.manual_seed(0)
    student = build_student("rida_tiny", **TINY, global_pool="flatten").eval()
    z = student.normalize(_synthetic(2, seed=4)[0])
    g, tokens = student(z)
    assert g.shape == (2, student.config.out_dim)
    w = student.global_head.fc1.weight
    assert w.shape[1] == student.config.num_tokens * student.config.width
    with pytest.raises(ConfigError, match="global_pool"):
        build_student("rida_tiny", **TINY, global_pool="mean")


def test_input_noise_and_dropout_act_in_training_only():
    z, glob, patches = _synthetic(8, seed=3)
    batch = {"z": z, "global": glob, "patches": patches}
    torch.manual_seed(0)
    plain = RidaTask(build_student("rida_tiny", **TINY), RidaLossConfig())
    noisy = RidaTask(plain.student, RidaLossConfig(input_noise=0.5))
    with torch.no_grad():
        base = float(plain.train()(batch)["loss"])
        a, b = float(noisy.train()(batch)["loss"]), float(noisy(batch)["loss"])
        assert a != b and base != a  # fresh noise each call, none without input_noise
        assert float(noisy.eval()(batch)["loss"]) == pytest.approx(float(plain.eval()(batch)["loss"]))
    dropped = build_student("rida_tiny", **TINY, dropout=0.5)
    dropped.load_state_dict(plain.student.state_dict())  # dropout adds no parameters
    x = dropped.normalize(z)
    with torch.no_grad():
        assert not torch.equal(dropped.train()(x)[0], dropped(x)[0])
        assert torch.equal(dropped.eval()(x)[0], plain.student.eval()(x)[0])
    with pytest.raises(ConfigError, match="input_noise"):
        RidaTask(plain.student, RidaLossConfig(input_noise=-1.0))
    with pytest.raises(ConfigError, match="dropout"):
        build_student("rida_tiny", **TINY, dropout=1.0)


# -- a tiny store and the CLI -------------------------------------------------------------------------


def _write_store(root: Path, n: int = 36, seed: int = 0) -> Path:
    z, glob, patches = _synthetic(n, seed=seed)
    splits = ["train"] * 24 + ["val"] * 4 + ["test"] * (n - 28)
    with ShardWriter(root, "items", shard_size=16) as w:
        for i in range(n):
            w.add(f"s{i:03d}", {"dummy": np.zeros(1, np.float32)}, {"split": splits[i], "category": f"c{i % 4}"})
    with ShardWriter(root, "latents", shard_size=16) as w:
        for i in range(n):
            w.add(f"s{i:03d}", {"z": z[i].numpy()}, {"split": splits[i]})
    with ShardWriter(root, "features", shard_size=16) as w:
        for i in range(n):
            views = glob[i].expand(4, -1).numpy()
            w.add(f"s{i:03d}", {"global": glob[i].numpy(), "global_views": views,
                                "spatial": patches[i].numpy().astype(np.float16)})
    store = DatasetStore(root)
    flat = z[:24].permute(1, 0, 2, 3).reshape(4, -1)
    store.write_stats("latents", {"mean": flat.mean(1).tolist(), "std": flat.std(1).tolist(),
                                  "latent_shape": [4, 4, 12]})
    store.write_stats("features", {"teacher": {"name": "synthetic", "spec": "synthetic-spec"}, "grid": 2,
                                   "embed_dim": 16})  # as lost dataset features writes it
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return _write_store(tmp_path_factory.mktemp("rida") / "data")


def test_dataset_joins_latents_and_features(store, tmp_path):
    ds = RidaDataset(store, split="train")
    item = ds[0]
    assert len(ds) == 24 and item["z"].shape == (4, 4, 12) and item["patches"].dtype == torch.float32
    assert item["patches"].shape == (4, 2, 2, 16)
    assert ds.teacher_info() == {"name": "synthetic", "spec": "synthetic-spec", "grid": 2, "embed_dim": 16}
    with pytest.raises(DataError, match="no 'features' table"):
        bare = tmp_path / "bare"
        with ShardWriter(bare, "latents") as w:
            w.add("a", {"z": np.zeros((1, 1, 3), np.float32)})
        RidaDataset(bare, split=None)


def _run(*args) -> str:
    result = CliRunner().invoke(rida_cli.app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_cli_train_and_eval(store, tmp_path):
    common = ["--recipe", REPO / "recipes" / "tiny" / "rida.yaml", "--data", store,
              "--set", "model.overrides={width: 32, depth: 1, heads: 2, out_dim: 16}", "--set", "train.batch_size=8",
              "--set", "train.steps=4", "--set", "train.log_every=1", "--set", "train.save_every=0",
              "--set", "optim.warmup_steps=0"]
    _run("train", *common, "--out", tmp_path / "rida")
    _run("train", *common, "--set", "rida.objective=regression", "--out", tmp_path / "reg")
    export = tmp_path / "rida" / "export"
    meta = json.loads((export / "config.json").read_text())
    assert meta["teacher"]["name"] == "synthetic" and meta["objective"] == "rida"
    assert len(meta["latent_stats"]["mean"]) == 4 and (export / "model.safetensors").is_file()
    reg = RidaStudent.from_pretrained(tmp_path / "reg")
    assert reg.config.head == "linear" and reg.config.out_dim == 16 and reg.config.global_pool == "flatten"
    assert RidaStudent.from_pretrained(tmp_path / "rida").config.global_pool == "cls"
    rows = [json.loads(line) for line in (tmp_path / "rida" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(np.isfinite(r["l_spatial"]) for r in rows)

    out = _run("eval", "--rida", tmp_path / "rida", "--regression", export.parent.parent / "reg", "--data", store,
               "--split", "test", "--ood", store, "--extra", f"again={export}", "--out", tmp_path / "report")
    assert "mAP@3" in out
    doc = json.loads((tmp_path / "report" / "retrieval.json").read_text())
    rows = doc["rows"]
    assert {(r["method"], r["split"], r["K"]) for r in rows} == {
        (m, s, k) for m in ("raw", "regression", "again", "rida") for s in ("test", "ood") for k in (3, 5)}
    assert all(0.0 <= r[m] <= 1.0 for r in rows for m in ("recall", "map", "jaccard"))
    by = {(r["method"], r["split"], r["K"]): r for r in rows}
    assert by[("again", "test", 3)] == {**by[("rida", "test", 3)], "method": "again"}  # same weights, same numbers
    assert by[("rida", "ood", 3)]["n"] == 36 and by[("rida", "test", 3)]["n"] == 8
    md = (tmp_path / "report" / "retrieval.md").read_text()
    assert "| mAP@3 |" in md and "synthetic" in md and doc["teacher"] == "synthetic"

    # `lost eval retrieval` is the same command: the same table from the same arguments
    from lostcli.cli import eval as eval_cli

    res = CliRunner().invoke(eval_cli.app, ["retrieval", "--rida", str(export), "--data", str(store), "--split", "test",
                                            "--out", str(tmp_path / "again")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    again = json.loads((tmp_path / "again" / "retrieval.json").read_text())["rows"]
    assert [r for r in again if r["method"] == "rida"] == [r for r in rows if r["method"] == "rida" and r["split"] == "test"]


def test_cli_train_keeps_the_best_validated_student(store, tmp_path):
    from lostcli.eval.retrieval import evaluate_embeddings, load_retrieval_set, student_embeddings

    common = ["--recipe", REPO / "recipes" / "tiny" / "rida.yaml", "--data", store,
              "--set", "model.overrides={width: 32, depth: 1, heads: 2, out_dim: 16}", "--set", "train.batch_size=8",
              "--set", "train.steps=6", "--set", "train.save_every=0", "--set", "optim.warmup_steps=0",
              "--set", "optim.lr=0.02", "--set", "train.eval_every=2", "--set", "train.patience=0"]
    out = _run("train", *common, "--set", "val_split=test", "--out", tmp_path / "rida")
    record = json.loads((tmp_path / "rida" / "validation.json").read_text())
    assert [h["step"] for h in record["history"]] == [2, 4, 6] and not record["stopped_early"]
    assert f"test mAP@3: best {record['best_score']:.4f} at step {record['best_step']}" in out
    # the export is the best-scoring student: its mAP@3 on the held-out split is the best score, by hand
    held = load_retrieval_set(store, "test", "test")
    emb = student_embeddings(RidaStudent.from_pretrained(tmp_path / "rida" / "export"), held.z)
    assert evaluate_embeddings(held.teacher, emb, ks=(3,))[3]["map"] == pytest.approx(record["best_score"])
    assert record["best_score"] == max(h["score"] for h in record["history"])
    with pytest.raises(DataError, match="unknown split 'nope'"):  # no held-out split: one line
        CliRunner().invoke(rida_cli.app, ["train", *map(str, common), "--set", "val_split=nope", "--out",
                                          str(tmp_path / "small")], catch_exceptions=False)
    assert not (tmp_path / "small").exists()  # refused before the run directory is made


def test_cli_eval_several_splits(store, tmp_path):
    common = ["--recipe", REPO / "recipes" / "tiny" / "rida.yaml", "--data", store,
              "--set", "model.overrides={width: 32, depth: 1, heads: 2, out_dim: 16}", "--set", "train.batch_size=8",
              "--set", "train.steps=2", "--set", "train.save_every=0", "--set", "optim.warmup_steps=0"]
    _run("train", *common, "--out", tmp_path / "rida")
    _run("eval", "--rida", tmp_path / "rida", "--data", store, "--split", "train,test", "--out", tmp_path / "rep")
    rows = json.loads((tmp_path / "rep" / "retrieval.json").read_text())["rows"]
    assert [(r["method"], r["split"]) for r in rows if r["K"] == 3] == [
        ("raw", "train"), ("rida", "train"), ("raw", "test"), ("rida", "test")]
    assert all("map_vs_raw" in r for r in rows if r["method"] == "rida")
    # --reference: the same student under another name differs from it by exactly 0, on every resample
    out = _run("eval", "--rida", tmp_path / "rida", "--extra", f"copy={tmp_path / 'rida'}", "--reference", "rida",
               "--data", store, "--split", "test", "--out", tmp_path / "ref")
    doc = json.loads((tmp_path / "ref" / "retrieval.json").read_text())
    copy = [r for r in doc["rows"] if r["method"] == "copy"]
    assert doc["reference"] == "rida" and len(copy) == 2
    assert all(r["map_minus_reference"] == 0.0 and r["map_minus_reference_ci"] == [0.0, 0.0] for r in copy)
    assert "+0.00 points vs rida [+0.00, +0.00]" in " ".join(out.split())  # whatever the console wraps
    assert "| mAP@3 - rida (points, paired 95% interval) | - | - | +0.00 [+0.00, +0.00] |" in (
        tmp_path / "ref" / "retrieval.md").read_text()  # columns raw, rida (the reference), copy
    with pytest.raises(ConfigError, match="--reference nope: not one of the students"):
        CliRunner().invoke(rida_cli.app, ["eval", "--rida", str(tmp_path / "rida"), "--data", str(store),
                                          "--reference", "nope", "--out", str(tmp_path / "r")], catch_exceptions=False)
    with pytest.raises(ConfigError, match="--split test,test"):
        CliRunner().invoke(rida_cli.app, ["eval", "--rida", str(tmp_path / "rida"), "--data", str(store),
                                          "--split", "test,test", "--out", str(tmp_path / "r")], catch_exceptions=False)


def test_cli_errors(store, tmp_path):
    with pytest.raises(ConfigError, match="rida.objective"):
        CliRunner().invoke(rida_cli.app, ["train", "--data", str(store), "--out", str(tmp_path / "x"),
                                          "--set", "rida.objective=mse"], catch_exceptions=False)
    with pytest.raises(CheckpointError):
        CliRunner().invoke(rida_cli.app, ["eval", "--rida", str(tmp_path / "none"), "--data", str(store),
                                          "--out", str(tmp_path / "r")], catch_exceptions=False)


def test_recipes_load():
    for name in ("tiny", "paper"):
        cfg = load_config(RidaRunConfig, REPO / "recipes" / name / "rida.yaml")
        assert cfg.rida.w_global == 1.0 and cfg.rida.w_rank == 1.0 and cfg.rida.w_spatial == 0.5
        assert cfg.model.preset == f"rida_{name}"
    tiny = load_config(RidaRunConfig, REPO / "recipes" / "tiny" / "rida.yaml")
    assert (tiny.train.eval_every, tiny.train.patience, tiny.val_split) == (25, 0, "val")  # best-on-val export
