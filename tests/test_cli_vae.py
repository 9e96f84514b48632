"""`lost vae ...` and `lost dataset latents` end to end on a tiny prepared dataset and a 4-step VAE run."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from safetensors.torch import save_file

from lostcli.config import load_config
from lostcli.data.mesh import load_mesh, normalize_mesh
from lostcli.data.sampling import sample_surface
from lostcli.data.store import DatasetStore
from lostcli.data.synth import synth_dataset
from lostcli.eval.vae_roundtrip import roundtrip
from lostcli.latent.base import load_vae
from lostcli.latent.direct3d import TriplaneVAE
from lostcli.latent.extract import query_grid
from lostcli.latent.hub import check_checkpoint
from lostcli.train.vae import VaeRunConfig

from conftest import shared_path, cli, cli_ok, one_error

REPO = Path(__file__).resolve().parents[1]
PENGUIN = REPO / "tests" / "data" / "penguin.glb"
FIXTURES = Path(shared_path("fixtures", "direct3d_vae_state_dict.json")).parent
PREP = ["--set", "surface_points=512", "--set", "occupancy.n_uniform=512", "--set", "occupancy.n_near=512",
        "--set", "render_size=32"]
TRAIN = ["--recipe", REPO / "recipes" / "tiny" / "vae.yaml", "--set", "train.batch_size=2",
         "--set", "loss.points=128", "--set", "loss.queries=128", "--set", "train.log_every=1",
         "--set", "train.save_every=2"]
LATENT = (8, 8, 24)  # the tiny preset's [C, R, 3R]
UNPICKLED: list[str] = []  # what Evil's reduce would record if a checkpoint reader ever ran it


def metrics_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _record_unpickle(tag: str) -> str:
    UNPICKLED.append(tag)
    return tag


class Evil:
    """An object whose unpickling would call a function: a safe reader must refuse it."""

    def __reduce__(self):
        return (_record_unpickle, ("ran",))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vae_data")
    synth_dataset(root / "S", n=12, seed=0)
    cli_ok("dataset", "prepare", root / "S", "--out", root / "P", *PREP)
    return root / "P"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, prepared) -> Path:
    out = tmp_path_factory.mktemp("vae_run") / "R"
    cli_ok("vae", "train", "--data", prepared, "--out", out, *TRAIN, "--set", "train.steps=4")
    return out


# ----------------------------------------------------------------------------------------------------
# train, resume, export
# ----------------------------------------------------------------------------------------------------


def test_train_writes_config_metrics_checkpoints_and_export(run_dir):
    cfg = load_config(VaeRunConfig, run_dir / "config.yaml")
    assert (cfg.train.steps, cfg.train.batch_size, cfg.loss.points, cfg.model.preset) == (4, 2, 128, "tiny")
    rows = metrics_rows(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and 0.3 < r["loss"] < 1.5 for r in rows)  # BCE of a near-0.5 field
    assert all(r["loss"] == pytest.approx(r["bce"] + 1e-4 * r["kl"], rel=1e-5) for r in rows)
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"step-0000002", "step-0000004"}
    assert {p.name for p in (run_dir / "export").iterdir()} >= {"config.json", "model.safetensors"}
    meta = json.loads((run_dir / "export" / "config.json").read_text())
    assert meta["class"] == "TriplaneVAE" and meta["preset"] == "tiny"


def test_export_loads_with_its_run_config(run_dir):
    vae = load_vae(run_dir / "export")
    assert isinstance(vae, TriplaneVAE) and vae.latent_shape == LATENT and not vae.training
    run = vae.extra_config["run"]
    assert run["loss"]["points"] == 128 and run["train"]["steps"] == 4 and run["model"]["arch"] == "triplane"
    assert run == json.loads((run_dir / "export" / "run_config.json").read_text())


def test_resume_continues_from_step_4(run_dir, prepared, tmp_path, capsys):
    run = tmp_path / "R"
    shutil.copytree(run_dir, run)  # resume a copy: the module's run stays at step 4
    before = (run / "metrics.jsonl").read_text().splitlines()
    code, out, err = cli(capsys, "vae", "train", "--data", prepared, "--out", run, *TRAIN, "--set", "train.steps=6",
                         "--resume")
    assert code == 0, err
    assert "trained 6 steps" in out
    rows = metrics_rows(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert (run / "metrics.jsonl").read_text().splitlines()[:4] == before  # appended, not rewritten
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert rows[4]["lr"] > rows[3]["lr"] > 0  # warm-up schedule went on from step 4, not from 0
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"step-0000004", "step-0000006"}
    invocations = json.loads((run / "run.json").read_text())["invocations"]
    assert [i["start_step"] for i in invocations] == [0, 4]
    assert load_vae(run / "export").extra_config["run"]["train"]["steps"] == 6


def test_fresh_train_into_a_used_run_dir_is_refused(run_dir, prepared, tmp_path, capsys):
    run = tmp_path / "R"
    shutil.copytree(run_dir, run)
    code, _, err = cli(capsys, "vae", "train", "--data", prepared, "--out", run, *TRAIN, "--set", "train.steps=6")
    assert code == 2
    assert "already holds checkpoints" in one_error(err) and str(run) in err
    assert [r["step"] for r in metrics_rows(run)] == [1, 2, 3, 4]


def test_train_config_errors_are_one_line(prepared, tmp_path, capsys):
    code, _, err = cli(capsys, "vae", "train", "--data", prepared, "--out", tmp_path / "R", *TRAIN,
                       "--set", "model.preset=huge")
    assert code == 2 and "model.preset: 'huge'" in one_error(err)
    code, _, err = cli(capsys, "vae", "train", "--data", prepared, "--out", tmp_path / "R2", *TRAIN,
                       "--set", "model.overrides={bogus: 1}")
    assert code == 2 and "model.overrides.bogus: unknown key" in one_error(err)


# ----------------------------------------------------------------------------------------------------
# reconstruct
# ----------------------------------------------------------------------------------------------------


def test_reconstruct_json_default_threshold(run_dir, tmp_path, capsys):
    out = tmp_path / "rec.obj"
    code, stdout, err = cli(capsys, "vae", "reconstruct", PENGUIN, "--vae", run_dir / "export", "--json",
                            "--resolution", 24, "--out", out)
    assert code == 0, err
    m = json.loads(stdout)
    assert {"chamfer", "fscore_0.01", "fscore_0.02", "failed"} <= set(m)
    assert all(isinstance(m[k], float) for k in ("chamfer", "fscore_0.01", "fscore_0.02"))
    if m["failed"]:  # an untrained field may never cross 0: reported as a failure, nothing written
        assert math.isnan(m["chamfer"]) and m["fscore_0.01"] == 0.0 and not out.exists()
    else:
        assert m["chamfer"] > 0 and 0 <= m["fscore_0.01"] <= m["fscore_0.02"] <= 1 and out.is_file()


def test_reconstruct_writes_the_surface_in_the_input_frame(run_dir, tmp_path, capsys):
    # Choose the iso-level as the median logit of exactly the grid the command evaluates, so the
    # untrained field is guaranteed to cross it and a surface must come out.
    vae = load_vae(run_dir / "export")
    normalised, norm = normalize_mesh(load_mesh(PENGUIN))
    pts, nrm = sample_surface(normalised, 128, seed=0)  # as the command does: run's loss.points, --seed 0
    with torch.no_grad():
        z = vae.encode(torch.from_numpy(pts)[None], torch.from_numpy(nrm)[None])
        logits = query_grid(vae.mesh_query(z), 24)
    threshold = float(np.median(logits))
    out = tmp_path / "rec.obj"
    code, stdout, err = cli(capsys, "vae", "reconstruct", PENGUIN, "--vae", run_dir / "export", "--json",
                            "--resolution", 24, "--threshold", threshold, "--out", out)
    assert code == 0, err
    m = json.loads(stdout)
    assert m["failed"] is False
    assert math.isfinite(m["chamfer"]) and m["chamfer"] > 0
    assert 0 <= m["fscore_0.01"] <= m["fscore_0.02"] <= 1
    rec = trimesh.load(out, process=False, force="mesh")
    assert len(rec.faces) > 0
    # written in the penguin's own frame (normalisation scale 0.65 there): mapped back to the normalised
    # frame it is exactly the surface extracted there, inside the [-1, 1] box
    assert norm.scale == pytest.approx(0.6499, abs=1e-3)
    back = norm.apply(np.asarray(rec.vertices, dtype=np.float64))
    want = roundtrip(vae, normalised, 128, resolution=24, threshold=threshold, seed=0)
    assert np.abs(back).max() <= 1.0 + 1e-4 and len(back) == len(want.vertices)
    assert np.allclose(np.sort(back, axis=0), np.sort(np.asarray(want.vertices), axis=0), atol=1e-4)


# ----------------------------------------------------------------------------------------------------
# option validation: every bad value is one line naming the option, exit code 2, nothing written
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory) -> Path:
    """An untrained tiny-preset export: loads in milliseconds, enough to reach every option's use."""
    torch.manual_seed(0)
    return TriplaneVAE.from_preset("tiny").save_pretrained(tmp_path_factory.mktemp("tiny_vae") / "export")


RECONSTRUCT_BAD = [
    (["--resolution", "0"], "--resolution"),
    (["--resolution", "-3"], "--resolution"),
    (["--resolution", "5000"], "--resolution"),
    (["--points", "0"], "--points"),
    (["--points", "-5"], "--points"),
    (["--threshold", "nan"], "--threshold"),
    (["--threshold", "inf"], "--threshold"),
    (["--up", "x"], "--up"),
    (["--seed", "-1"], "--seed"),
    (["--out", "{tmp}/rec.txt"], "--out"),
    (["--out", "{tmp}/a_file/rec.obj"], "--out"),
    (["--preset", "bogus"], "--preset"),
]


@pytest.mark.parametrize("bad, option", RECONSTRUCT_BAD, ids=[" ".join(b) for b, _ in RECONSTRUCT_BAD])
def test_reconstruct_bad_option_is_one_line(tiny_export, tmp_path, capsys, bad, option):
    (tmp_path / "a_file").write_text("a file, not a folder\n")
    good_out = tmp_path / "rec.obj"
    args = [a.format(tmp=tmp_path) for a in bad]  # given after the good values: the last one wins
    code, stdout, err = cli(capsys, "vae", "reconstruct", PENGUIN, "--vae", tiny_export, "--json",
                            "--resolution", 16, "--out", good_out, *args)
    assert code == 2, (stdout, err)
    line = one_error(err)  # one line, no traceback
    assert option in line, line
    assert stdout == "" and not good_out.exists() and not (tmp_path / "rec.txt").exists()


def test_reconstruct_good_edge_values_run(tiny_export, tmp_path, capsys):
    # the bounds themselves are accepted: resolution 1, one encoder point, seed 0, a large threshold
    code, stdout, err = cli(capsys, "vae", "reconstruct", PENGUIN, "--vae", tiny_export, "--json", "--resolution",
                            1, "--points", 1, "--seed", 0, "--threshold", -1e30, "--out", tmp_path / "r.ply")
    assert code == 0, err
    assert set(json.loads(stdout)) >= {"chamfer", "failed"}


EVAL_BAD = [
    (["--resolution", "0"], "--resolution"),
    (["--resolution", "2000"], "--resolution"),
    (["--limit", "0"], "--limit"),
    (["--limit", "1"], "--limit"),
    (["--limit", "-1"], "--limit"),
    (["--seed", "-1"], "--seed"),
    (["--split", "nope"], "--split"),
    (["--preset", "bogus"], "--preset"),
    (["--out", "{tmp}/a_file"], "--out"),
]


@pytest.mark.parametrize("bad, option", EVAL_BAD, ids=[" ".join(b) for b, _ in EVAL_BAD])
def test_eval_bad_option_is_one_line(tiny_export, prepared, tmp_path, capsys, bad, option):
    (tmp_path / "a_file").write_text("a file, not a folder\n")
    args = [a.format(tmp=tmp_path) for a in bad]
    code, _, err = cli(capsys, "vae", "eval", "--vae", tiny_export, "--data", prepared, "--out", tmp_path / "ev",
                       "--split", "train", "--resolution", 8, "--limit", 2, *args)
    assert code == 2, err
    assert option in one_error(err)
    assert not (tmp_path / "ev").exists()


def test_check_and_train_bad_options_are_one_line(prepared, tmp_path, capsys):
    from lostcli.cli.vae import PRESETS
    from lostcli.latent.hub import PRESET_CLASS

    assert set(PRESETS) == set(PRESET_CLASS)  # --preset accepts exactly what the loader knows
    code, _, err = cli(capsys, "vae", "check", PENGUIN, "--preset", "bogus")
    assert code == 2 and "--preset" in one_error(err)
    a_file = tmp_path / "a_file"
    a_file.write_text("a file, not a folder\n")
    code, _, err = cli(capsys, "vae", "train", "--data", prepared, "--out", a_file, *TRAIN, "--set", "train.steps=1")
    assert code == 2 and "--out" in one_error(err) and str(a_file) in err
    code, _, err = cli(capsys, "vae", "train", "--data", a_file, "--out", tmp_path / "R", *TRAIN)
    assert code == 2 and str(a_file) in one_error(err)
    assert not (tmp_path / "R").exists()


# ----------------------------------------------------------------------------------------------------
# dataset latents
# ----------------------------------------------------------------------------------------------------


def test_dataset_latents_stores_z_and_stats_and_resumes(run_dir, prepared, tmp_path, capsys):
    data = tmp_path / "P"
    shutil.copytree(prepared, data)  # the module's dataset stays without a latents table
    code, out, err = cli(capsys, "dataset", "latents", data, "--vae", run_dir / "export")
    assert code == 0, err
    assert "encoded 12 shapes, skipped 0 done" in out
    store = DatasetStore(data)
    assert store.ids(table="latents") == store.ids() and len(store.ids()) == 12
    zs = {rec["id"]: arrays["z"] for rec, arrays in store.iter_table("latents", keys=["z"])}
    assert all(z.shape == LATENT and np.isfinite(z).all() for z in zs.values())
    # z is the export's posterior mean of the first loss.points (128) stored surface samples
    vae = load_vae(run_dir / "export")
    item = store.load("synth-000002", keys=["surface_points", "surface_normals"])
    with torch.no_grad():
        want = vae.encode(torch.from_numpy(item["surface_points"][:128])[None],
                          torch.from_numpy(item["surface_normals"][:128].astype(np.float32))[None])[0]
    assert np.allclose(zs["synth-000002"], want.numpy(), atol=1e-5)

    stats = json.loads((data / "latents" / "stats.json").read_text())
    train = store.ids(split="train")
    assert stats["latent_shape"] == list(LATENT) and stats["split"] == "train" and stats["items"] == len(train)
    assert len(stats["mean"]) == len(stats["std"]) == LATENT[0]
    flat = np.stack([zs[i] for i in train]).transpose(1, 0, 2, 3).reshape(LATENT[0], -1)  # [C, items * H * W]
    assert np.allclose(stats["mean"], flat.mean(1), atol=1e-5)
    assert np.allclose(stats["std"], flat.std(1), atol=1e-5) and min(stats["std"]) > 0

    code, out, err = cli(capsys, "dataset", "latents", data, "--vae", run_dir / "export")
    assert code == 0, err
    assert "encoded 0 shapes, skipped 12 done" in out
    again = {rec["id"]: arrays["z"] for rec, arrays in DatasetStore(data).iter_table("latents", keys=["z"])}
    assert again.keys() == zs.keys() and all(np.array_equal(again[k], zs[k]) for k in zs)


# ----------------------------------------------------------------------------------------------------
# check and --vae resolution errors
# ----------------------------------------------------------------------------------------------------


def test_check_tiny_ckpt_ok_then_missing_and_misshapen(tmp_path, capsys):
    torch.manual_seed(0)
    sd = TriplaneVAE.from_preset("tiny").state_dict()
    good = tmp_path / "vae.ckpt"
    torch.save({"vae": sd, "epoch": 3}, good)  # Direct3D's layout: the state dict under "vae"
    code, out, err = cli(capsys, "vae", "check", good, "--preset", "tiny")
    assert code == 0, err
    assert "vae: matches" in out and "loads strictly as preset tiny" in out

    keys = list(sd)
    gone, bent = keys[3], "pre_latent.weight"
    bad_sd = {k: v for k, v in sd.items() if k != gone}
    want_shape = list(sd[bent].shape)
    bad_sd[bent] = torch.zeros(want_shape[0] + 1, *want_shape[1:])
    bad = tmp_path / "bad.ckpt"
    torch.save({"vae": bad_sd}, bad)
    code, out, err = cli(capsys, "vae", "check", bad, "--preset", "tiny")
    assert code == 2
    assert f"missing: {gone}" in out
    assert f"shape mismatch: {bent} expects {want_shape}, file has {[want_shape[0] + 1, *want_shape[1:]]}" in out
    assert "unexpected" not in out
    assert str(bad) in one_error(err) and "does not fit preset tiny" in err


def test_check_refuses_pickled_objects(tmp_path, capsys):
    path = tmp_path / "evil.ckpt"
    torch.save({"vae": TriplaneVAE.from_preset("tiny").state_dict(), "hook": Evil()}, path)
    code, out, err = cli(capsys, "vae", "check", path, "--preset", "tiny")
    assert code == 2
    line = one_error(err)
    assert str(path) in line and "refuses to unpickle" in line and "_record_unpickle" in line
    assert UNPICKLED == []  # the object's code never ran


def test_check_combined_model_ckpt_names_bad_keys_per_part(tmp_path, capsys):
    """Direct3D's image-to-3D model.ckpt {"vae": ..., "dit": ...}: both parts checked, each bad key named."""
    from lostcli.latent.direct3d_dit import Direct3DDiT

    torch.manual_seed(0)
    vae, dit = TriplaneVAE.from_preset("tiny").state_dict(), Direct3DDiT.from_preset("tiny").state_dict()
    good = tmp_path / "model.ckpt"
    torch.save({"vae": vae, "dit": dit}, good)
    code, out, err = cli(capsys, "vae", "check", good, "--preset", "tiny")
    assert code == 0, err
    assert "vae: matches" in out and "dit: matches" in out and "loads strictly as preset tiny" in out

    bad_dit = {k: v for k, v in dit.items() if k != "transformer_blocks.1.attn2.to_k.bias"}
    bad_dit["proj_out.weight"] = torch.zeros(31, 32)
    bad_dit["pos_embed.pos_embed"] = torch.zeros(1, 48, 32)  # the buffer is computed, never stored
    bad_vae = {k: v for k, v in vae.items() if k != "pre_latent.bias"}
    bad = tmp_path / "bad.ckpt"
    torch.save({"vae": bad_vae, "dit": bad_dit}, bad)
    code, out, err = cli(capsys, "vae", "check", bad, "--preset", "tiny")
    assert code == 2
    vae_part, dit_part = out.split("dit:", 1)
    assert "missing: pre_latent.bias" in vae_part and "transformer_blocks" not in vae_part
    assert "missing: transformer_blocks.1.attn2.to_k.bias" in dit_part
    assert "unexpected: pos_embed.pos_embed" in dit_part
    assert "shape mismatch: proj_out.weight expects [32, 32], file has [31, 32]" in dit_part
    assert str(bad) in one_error(err) and "2 part(s) with mismatches" in err

    torch.save({"dit": dit}, tmp_path / "no_vae.ckpt")  # the VAE half absent: all of its keys missing
    reports = check_checkpoint(tmp_path / "no_vae.ckpt", "tiny")
    assert reports["dit"].ok and sorted(reports["vae"].missing) == sorted(vae)
    torch.save({"vae": vae}, tmp_path / "vae.ckpt")  # Direct3D's vae.ckpt: the VAE alone, as before
    assert list(check_checkpoint(tmp_path / "vae.ckpt", "tiny")) == ["vae"]


def test_vae_missing_path_is_one_line(tmp_path, prepared, capsys):
    missing = tmp_path / "nowhere" / "export"
    code, _, err = cli(capsys, "vae", "reconstruct", PENGUIN, "--vae", missing, "--json")
    assert code == 2 and str(missing) in one_error(err) and "no such file or folder" in err
    code, _, err = cli(capsys, "dataset", "latents", prepared, "--vae", missing)
    assert code == 2 and str(missing) in one_error(err)
    assert not (prepared / "latents").exists()


def test_hub_id_offline_is_one_line(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = cli(capsys, "vae", "reconstruct", PENGUIN, "--vae", "DreamTechAI/Direct3D", "--json")
    assert code == 2
    line = one_error(err)
    assert "DreamTechAI/Direct3D" in line and "HF_HUB_OFFLINE" in line


# ----------------------------------------------------------------------------------------------------
# TRELLIS release layout, full size
# ----------------------------------------------------------------------------------------------------


def _write_trellis(folder: Path, kind: str, edit=None) -> None:
    """ss_{kind}_conv3d_16l8_fp16.{json,safetensors} with the fixture's keys and shapes, zero fp16 values."""
    fx = json.loads((FIXTURES / f"trellis_ss_{kind}_state_dict.json").read_text())
    name = "SparseStructureEncoder" if kind == "enc" else "SparseStructureDecoder"
    (folder / f"ss_{kind}_conv3d_16l8_fp16.json").write_text(json.dumps({"name": name,
                                                                          "args": fx["constructor_args"]}))
    sd = {k: torch.zeros(s, dtype=torch.float16) for k, s, _ in fx["state_dict"]}  # calloc: cheap
    if edit is not None:
        edit(sd)
    save_file(sd, str(folder / f"ss_{kind}_conv3d_16l8_fp16.safetensors"))


def test_check_trellis_full_size_release_layout(tmp_path, capsys):
    # Zero fp16 tensors of the real shapes (119 MB + 147 MB, written in well under a second) prove the
    # preset matches the release key for key; a second decoder with three edits must name exactly those.
    folder = tmp_path / "ckpts"
    folder.mkdir()
    try:
        _write_trellis(folder, "enc")
        _write_trellis(folder, "dec")
        reports = check_checkpoint(tmp_path, "trellis")  # finds ckpts/ like TRELLIS-image-large
        assert set(reports) == {"encoder", "decoder"} and all(r.ok for r in reports.values())
        code, out, err = cli(capsys, "vae", "check", folder, "--preset", "trellis")
        assert code == 0, err
        assert "encoder: matches" in out and "decoder: matches" in out

        def edit(sd):
            sd["blocks.2.conv.weight"] = sd["blocks.2.conv.weight"][:-1].clone()  # [1024, 512, 3,3,3] -> 1023
            del sd["out_layer.0.bias"]
            sd["extra.weight"] = torch.zeros(2)

        _write_trellis(folder, "dec", edit)
        reports = check_checkpoint(folder, "trellis")
        assert reports["encoder"].ok
        dec = reports["decoder"]
        assert dec.missing == ["out_layer.0.bias"] and dec.unexpected == ["extra.weight"]
        assert dec.mismatched == [("blocks.2.conv.weight", (1024, 512, 3, 3, 3), (1023, 512, 3, 3, 3))]
        code, out, err = cli(capsys, "vae", "check", folder, "--preset", "trellis")
        assert code == 2 and "1 part(s)" in one_error(err)
        assert "missing: out_layer.0.bias" in out and "unexpected: extra.weight" in out
        assert "shape mismatch: blocks.2.conv.weight expects [1024, 512, 3, 3, 3], file has [1023, 512, 3, 3, 3]" in out
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # 266 MB: do not leave it in pytest's kept temp dirs


# ----------------------------------------------------------------------------------------------------
# lost vae eval
# ----------------------------------------------------------------------------------------------------


def test_derangement_has_no_fixed_point():
    from lostcli.eval.vae_eval import derangement

    for n in (2, 3, 10):
        perm = derangement(n, seed=n)
        assert sorted(perm.tolist()) == list(range(n)) and not (perm == np.arange(n)).any()


def test_vae_eval_writes_report_and_baseline(prepared, run_dir, tmp_path):
    from lostcli.eval.vae_eval import evaluate_vae

    vae = load_vae(run_dir / "export")
    result = evaluate_vae(vae, prepared, split=None, resolution=16, n_points=2000, limit=4,
                          out_dir=tmp_path / "ev", grid=2)
    s = result.summary
    assert s["n"] == 4 and len(result.rows) == 4
    # the baseline compares every shape with a different one: positive distances, never itself
    assert all(r["baseline_id"] != r["id"] and r["baseline_chamfer"] > 0 for r in result.rows)
    assert s["median_baseline_chamfer"] == pytest.approx(np.median([r["baseline_chamfer"] for r in result.rows]))
    report = json.loads((tmp_path / "ev" / "vae_eval.json").read_text())
    assert report["summary"]["n"] == 4 and (tmp_path / "ev" / "recon_grid.png").stat().st_size > 0
    assert "random other shape" in (tmp_path / "ev" / "vae_eval.md").read_text()
