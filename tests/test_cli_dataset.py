"""`lost dataset ...` end to end on tiny data: synth, prepare (with bad files), info, check, prompts, preview."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lostcli.data.prompts import generate_prompts
from lostcli.data.render import LABEL_HEIGHT
from lostcli.data.synth import CATEGORIES

from conftest import DATA, cli, cli_ok, one_error

TINY = ["--set", "surface_points=256", "--set", "occupancy.n_uniform=256", "--set", "occupancy.n_near=256",
        "--set", "render_size=32"]
# The bad files of the prepare source and a word their failure reason must contain.
BAD = {"corrupt.glb": "corrupt", "empty.obj": "empty", "text.glb": "corrupt", "nan_vertex.obj": "NaN"}


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "S"
    cli_ok("dataset", "synth", "--out", out, "--n", 20, "--seed", 0)
    return out


@pytest.fixture(scope="module")
def bad_src(tmp_path_factory, synth_dir) -> Path:
    """2 good synth glbs, one real open 2-part mesh, and the 4 files of `BAD`."""
    src = tmp_path_factory.mktemp("src") / "SRC"
    src.mkdir()
    for name in ("synth-000000.glb", "synth-000001.glb"):
        shutil.copy(synth_dir / name, src / name)
    shutil.copy(DATA / "avocado.glb", src / "avocado.glb")
    (src / "corrupt.glb").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (src / "empty.obj").write_bytes(b"")
    (src / "text.glb").write_text("this is a text file, not a binary glTF\n")
    (src / "nan_vertex.obj").write_text("v 0 0 0\nv 1 0 0\nv nan 1 0\nv 0 0 1\nf 1 2 3\nf 1 2 4\nf 1 3 4\nf 2 3 4\n")
    return src


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, bad_src) -> Path:
    out = tmp_path_factory.mktemp("prep") / "P"
    cli_ok("dataset", "prepare", bad_src, "--out", out, *TINY)
    return out


# ----------------------------------------------------------------------------------------------------
# synth
# ----------------------------------------------------------------------------------------------------


def test_synth_writes_meshes_and_metadata(synth_dir, capsys, tmp_path):
    glbs = sorted(p.name for p in synth_dir.glob("*.glb"))
    assert glbs == [f"synth-{i:06d}.glb" for i in range(20)]
    records = [json.loads(line) for line in (synth_dir / "metadata.jsonl").read_text().splitlines()]
    assert [r["file"] for r in records] == glbs
    assert {r["category"] for r in records} == set(CATEGORIES) and len(CATEGORIES) == 18
    assert {r["split"] for r in records} <= {"train", "val", "test"}
    assert all(r["caption"] for r in records)

    code, out, _ = cli(capsys, "dataset", "synth", "--out", tmp_path / "again", "--n", 20, "--seed", 0)
    assert code == 0 and "wrote 20 shapes in 18 categories" in out
    assert (tmp_path / "again" / "metadata.jsonl").read_bytes() == (synth_dir / "metadata.jsonl").read_bytes()
    code, _, _ = cli(capsys, "dataset", "synth", "--out", tmp_path / "other", "--n", 2, "--seed", 1)
    assert code == 0
    other = (tmp_path / "other" / "metadata.jsonl").read_text().splitlines()
    assert len(other) == 2 and other != (synth_dir / "metadata.jsonl").read_text().splitlines()[:2]


def test_synth_rejects_n_zero(capsys, tmp_path):
    code, out, err = cli(capsys, "dataset", "synth", "--out", tmp_path / "S", "--n", 0)
    assert code == 2
    assert "--n must be positive, got 0" in one_error(err)
    assert not (tmp_path / "S").exists()


# ----------------------------------------------------------------------------------------------------
# prepare and info
# ----------------------------------------------------------------------------------------------------


def test_prepare_keeps_good_items_and_records_each_bad_file(prepared, bad_src, capsys):
    code, out, err = cli(capsys, "dataset", "info", prepared, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["items"] == 3 and info["tables"] == {"items": 3}
    assert sum(info["splits"].values()) == 3
    failures = {Path(f["file"]).name: f["reason"] for f in info["failures"]}
    assert set(failures) == set(BAD)
    for name, word in BAD.items():
        reason = failures[name]
        assert reason.startswith(str(bad_src / name)), reason
        assert word in reason and "\n" not in reason
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["items"] == 3 and len(manifest["failures"]) == 4

    code, out, _ = cli(capsys, "dataset", "info", prepared)  # the table view lists the same
    assert code == 0 and "3 items" in out
    assert sum(line.startswith("failed ") for line in out.splitlines()) == 4


def test_prepare_rerun_redoes_nothing(prepared, bad_src, capsys):
    shards = sorted((prepared / "items").iterdir())
    assert any(p.suffix == ".npz" for p in shards)
    before = {p.name: p.stat().st_mtime_ns for p in shards}
    code, out, err = cli(capsys, "dataset", "prepare", bad_src, "--out", prepared, *TINY)
    assert code == 0, err
    assert "prepared 0 new, skipped 3 done, 0 failed, 4 known failures not retried" in out
    assert {p.name: p.stat().st_mtime_ns for p in (prepared / "items").iterdir()} == before
    assert "failed:" not in err


def test_prepare_prints_each_new_failure_once(bad_src, capsys, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(bad_src / "synth-000000.glb", src)
    shutil.copy(bad_src / "empty.obj", src)
    code, out, err = cli(capsys, "dataset", "prepare", src, "--out", tmp_path / "P", *TINY)
    assert code == 0
    assert "prepared 1 new, skipped 0 done, 1 failed" in out
    assert err.splitlines() == [f"  failed: {src / 'empty.obj'}: file is empty"]


def test_prepare_with_a_different_config_is_refused(prepared, bad_src, capsys):
    code, _, err = cli(capsys, "dataset", "prepare", bad_src, "--out", prepared, *TINY, "--set", "render_size=48")
    assert code == 2
    line = one_error(err)
    assert line.startswith(f"error: {prepared / 'config.json'}:") and "render_size" in line


def test_prepare_config_typo_names_the_dotted_key(bad_src, capsys, tmp_path):
    code, _, err = cli(capsys, "dataset", "prepare", bad_src, "--out", tmp_path / "P", "--set", "occupancy.n_unform=3")
    assert code == 2
    assert one_error(err).startswith("error: occupancy.n_unform: unknown key")
    assert not (tmp_path / "P").exists()
    code, _, err = cli(capsys, "--debug", "dataset", "prepare", bad_src, "--out", tmp_path / "P",
                       "--set", "occupancy.n_unform=3")
    assert code == 2 and "Traceback" in err and err.splitlines()[-1].startswith("error: occupancy.n_unform")


def test_prepare_missing_source(capsys, tmp_path):
    code, _, err = cli(capsys, "dataset", "prepare", tmp_path / "nowhere", "--out", tmp_path / "P")
    assert code == 2
    assert one_error(err).startswith(f"error: {tmp_path / 'nowhere'}:")


def test_info_on_missing_or_foreign_dir(capsys, tmp_path, synth_dir):
    code, out, err = cli(capsys, "dataset", "info", tmp_path / "nowhere")
    assert code == 2 and out == ""
    assert one_error(err).startswith(f"error: {tmp_path / 'nowhere'}: ")
    code, _, err = cli(capsys, "dataset", "info", synth_dir, "--json")  # meshes, not a prepared dataset
    assert code == 2
    assert one_error(err).startswith(f"error: {synth_dir}: not a prepared dataset")


# ----------------------------------------------------------------------------------------------------
# check: one mesh at a time
# ----------------------------------------------------------------------------------------------------


def test_check_prints_stats_of_good_meshes(bad_src, capsys):
    good, avocado = bad_src / "synth-000000.glb", bad_src / "avocado.glb"
    code, out, err = cli(capsys, "dataset", "check", good, avocado)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{good}: vertices ") and "watertight yes, components 1" in lines[0]
    assert lines[1].startswith(f"{avocado}: vertices ") and "watertight no, components 2" in lines[1]

    code, out, _ = cli(capsys, "dataset", "check", "--json", avocado)
    assert code == 0
    stats = json.loads(out)
    assert stats["file"] == str(avocado) and stats["components"] == 2 and stats["watertight"] is False
    assert stats["vertices"] > 0 and stats["faces"] > 0
    extent = max(hi - lo for lo, hi in zip(*stats["bbox"]))
    assert stats["scale"] * extent == pytest.approx(1.9, rel=1e-6)  # longest side -> 1.9


@pytest.mark.parametrize("name", sorted(BAD))
def test_check_stops_at_the_first_bad_mesh(bad_src, capsys, name):
    good, bad = bad_src / "synth-000000.glb", bad_src / name
    code, out, err = cli(capsys, "dataset", "check", good, bad, bad_src / "avocado.glb")
    assert code == 2
    line = one_error(err)
    assert line.startswith(f"error: {bad}: ") and BAD[name] in line
    assert out.startswith(f"{good}: vertices") and "avocado" not in out  # stopped at the bad one


def test_check_missing_file_and_bad_axis(capsys, tmp_path, bad_src):
    code, _, err = cli(capsys, "dataset", "check", tmp_path / "gone.glb")
    assert code == 2 and one_error(err) == f"error: {tmp_path / 'gone.glb'}: file not found"
    code, _, err = cli(capsys, "dataset", "check", "--up", "x", bad_src / "avocado.glb")
    assert code == 2 and "'x'" in one_error(err)


# ----------------------------------------------------------------------------------------------------
# prompts and preview
# ----------------------------------------------------------------------------------------------------


def test_prompts(capsys, tmp_path):
    code, out, _ = cli(capsys, "dataset", "prompts", "--n", 30, "--seed", 1)
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 30 and len(set(lines)) == 30 and all(line.strip() for line in lines)
    assert lines == generate_prompts(30, 1)
    code, out2, _ = cli(capsys, "dataset", "prompts", "--n", 30, "--seed", 2)
    assert out2.splitlines() != lines

    code, _, _ = cli(capsys, "dataset", "prompts", "--n", 30, "--seed", 1, "--out", tmp_path / "p.txt")
    assert code == 0 and (tmp_path / "p.txt").read_text().splitlines() == lines

    code, out, _ = cli(capsys, "dataset", "prompts", "--template", "--n", 50)
    assert code == 0 and "Write 50 prompts" in out and '"50."' in out


def test_preview_writes_a_png_grid(synth_dir, capsys, tmp_path):
    png = tmp_path / "g.png"
    code, out, err = cli(capsys, "dataset", "preview", synth_dir, "--out", png)
    assert code == 0, err
    assert f"wrote {png}" in out
    with Image.open(png) as im:
        assert im.format == "PNG"
        # 18 categories, 6 per row, 160 px tiles with a label strip under each.
        assert im.size == (6 * 160, 3 * (160 + LABEL_HEIGHT))
        tile = np.asarray(im.convert("RGB"))[:160, :160]
    assert (tile < 200).any(axis=-1).mean() > 0.02  # a shape was drawn, not a blank tile

    code, _, err = cli(capsys, "dataset", "preview", tmp_path, "--out", tmp_path / "x.png")
    assert code == 2 and one_error(err).startswith(f"error: {tmp_path}: neither a prepared dataset")
