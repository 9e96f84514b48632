"""`lost tokenizer export`, `lost tokenize`, `lost decode` and `lost dataset tokens` end to end on a tiny
bundle (tiny VAE + tiny tokenizer from test_pipeline), through the real `main` and its error handling."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
import typer
from PIL import Image
from safetensors.torch import save_file

from lostcli.cli import app as app_module
from lostcli.cli import tokens as tokens_cli
from lostcli.data.mesh import load_mesh, normalize_mesh
from lostcli.data.render import LABEL_HEIGHT
from lostcli.data.store import DatasetStore, ShardWriter
from lostcli.pipeline import LostPipeline, load_tokens

from conftest import cli, one_error
from test_pipeline import R, STEPS, box_mesh, tiny_parts

FAST = ["--steps", STEPS, "--resolution", 16]


def _registered() -> bool:
    """True once app.py registers the commands (the lead does); until then the tests mount them themselves."""
    group = typer.main.get_command(app_module.app)
    names = set(group.commands)
    tok = group.commands.get("tokenizer")
    return {"tokenize", "decode"} <= names and tok is not None and "export" in getattr(tok, "commands", {})


def _test_app() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)
    tokenizer, dataset = typer.Typer(), typer.Typer()
    tokenizer.command("export")(tokens_cli.tokenizer_export)
    dataset.command("tokens")(tokens_cli.dataset_tokens)
    app.command("tokenize")(tokens_cli.tokenize)
    app.command("decode")(tokens_cli.decode)
    app.add_typer(tokenizer, name="tokenizer")
    app.add_typer(dataset, name="dataset")
    return app


@pytest.fixture(scope="module", autouse=True)
def _setup():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread beats two spin-waiting on a loaded CPU
    patch = pytest.MonkeyPatch()
    if not _registered():
        patch.setattr(app_module, "app", _test_app())
    yield
    patch.undo()
    torch.set_num_threads(before)


def _parts(root: Path, surface: bool = True) -> tuple[Path, Path]:
    vae, tok = tiny_parts(surface=surface)
    vae.save_pretrained(root / "vae")
    tok.save_pretrained(root / "run" / "export")
    return root / "run", root / "vae"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A bundle made by `lost tokenizer export`, a box mesh file and its 6 tokens made by `lost tokenize`."""
    root = tmp_path_factory.mktemp("cli_tokens")
    run, vae = _parts(root)
    box_mesh().export(root / "box.obj")
    for args in (["tokenizer", "export", run, "--vae", vae, "--out", root / "bundle"],
                 ["tokenize", root / "box.obj", "--model", root / "bundle", "--tokens", 6,
                  "--out", root / "box.safetensors"]):
        try:
            app_module.main([str(a) for a in args])
        except SystemExit as e:
            assert e.code in (0, None), f"lost {' '.join(map(str, args))} exited with {e.code}"
    return root


def test_export_prints_the_bundle(tmp_path, capsys):
    run, vae = _parts(tmp_path)
    code, out, err = cli(capsys, "tokenizer", "export", run, "--vae", vae, "--out", tmp_path / "b")
    assert code == 0, err
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert f"model id {meta['model_id'][:12]}" in out and f"{R} tokens x 32" in out
    code, _, err = cli(capsys, "tokenizer", "export", tmp_path / "nope", "--vae", vae, "--out", tmp_path / "c")
    assert code == 2 and "nope" in one_error(err)


def test_tokenize_writes_what_the_pipeline_computes(work):
    pipe = LostPipeline.from_pretrained(work / "bundle", device="cpu")
    saved = load_tokens(work / "box.safetensors", pipeline=pipe)
    mesh = load_mesh(work / "box.obj")
    direct = pipe.tokenize(mesh, k=6, seed=0)
    assert saved.k == 6 and torch.equal(saved.tokens, direct.tokens)  # save -> load is exact
    assert saved.source == str(work / "box.obj") and saved.model_id == pipe.model_id
    assert np.allclose(saved.normalization["matrix"], normalize_mesh(mesh)[1].matrix)


def test_tokenize_errors_are_one_line(work, tmp_path, capsys):
    code, _, err = cli(capsys, "tokenize", tmp_path / "missing.obj", "--model", work / "bundle")
    assert code == 2 and one_error(err, tmp_path / "missing.obj")
    code, _, err = cli(capsys, "tokenize", work / "box.obj", "--model", work / "bundle", "--tokens", R + 1,
                       "--out", tmp_path / "t.safetensors")
    assert code == 2 and "--tokens 9" in one_error(err, work / "bundle")
    assert not (tmp_path / "t.safetensors").exists()


def test_decode_writes_the_mesh_in_the_source_frame(work, tmp_path, capsys):
    out, unit = tmp_path / "shape.glb", tmp_path / "unit.ply"
    code, stdout, err = cli(capsys, "decode", work / "box.safetensors", "--model", work / "bundle", "--tokens", 4,
                            "--out", out, "--preview", tmp_path / "shape.png", *FAST)
    assert code == 0 and err == "", err
    code, _, err = cli(capsys, "decode", work / "box.safetensors", "--model", work / "bundle", "--tokens", 4,
                       "--out", unit, "--unit-frame", *FAST)
    assert code == 0, err
    src = trimesh.load(out, force="mesh")
    u = trimesh.load(unit, force="mesh", process=False)
    assert np.abs(u.vertices).max() <= 1.0 + 1e-6  # the unit frame
    saved = load_tokens(work / "box.safetensors")
    _, norm = normalize_mesh(box_mesh())
    assert np.allclose(np.sort(norm.inverse(u.vertices), axis=0), np.sort(np.asarray(src.vertices), axis=0), atol=1e-4)
    assert src.bounds[0][0] > 5.0  # the box sits around x = 10: decoded back next to it, not at the origin
    record = json.loads((tmp_path / "shape.decode.json").read_text())
    assert record["ks"] == [4] and record["frame"] == "source" and record["model_id"] == saved.model_id
    assert record["outputs"][0]["mesh"] == str(out) and record["empty"] == []
    img = Image.open(tmp_path / "shape.png")
    assert img.size == (4 * 224, 224 + LABEL_HEIGHT)  # one strip of four views, labelled "k = 4"


def test_decode_is_deterministic_and_the_prefix_matters(work, tmp_path, capsys):
    def run(name: str, *extra) -> np.ndarray:
        code, _, err = cli(capsys, "decode", work / "box.safetensors", "--model", work / "bundle", "--out",
                           tmp_path / name, "--unit-frame", *FAST, *extra)
        assert code == 0, err
        return np.asarray(trimesh.load(tmp_path / name, process=False).vertices)

    a, b = run("a.ply", "--tokens", 2), run("b.ply", "--tokens", 2)
    c = run("c.ply", "--tokens", 2, "--seed", 5)
    full = run("full.ply")  # all 6 tokens in the file
    assert np.array_equal(a, b)
    assert a.shape != c.shape or not np.allclose(a, c)
    assert a.shape != full.shape or not np.allclose(a, full)


def test_progressive_writes_one_mesh_per_prefix_and_a_strip(work, tmp_path, capsys):
    out = tmp_path / "p.obj"
    code, stdout, err = cli(capsys, "decode", work / "box.safetensors", "--model", work / "bundle", "--out", out,
                            "--progressive", "1,2,all", *FAST)
    assert code == 0, err
    for k in (1, 2, 6):
        assert (tmp_path / f"p_k{k}.obj").is_file()
    assert not out.exists()
    img = Image.open(tmp_path / "p.png")
    assert img.size == (4 * 224, 3 * (224 + LABEL_HEIGHT))  # one labelled row per prefix
    record = json.loads((tmp_path / "p.decode.json").read_text())
    assert record["ks"] == [1, 2, 6] and len(record["outputs"]) == 3
    single = tmp_path / "single.obj"  # --tokens 2 decodes the same shape as progressive's k = 2
    cli(capsys, "decode", work / "box.safetensors", "--model", work / "bundle", "--out", single, "--tokens", 2, *FAST)
    assert np.array_equal(trimesh.load(single, process=False).vertices,
                          trimesh.load(tmp_path / "p_k2.obj", process=False).vertices)


def _bad_tokens(work: Path, tmp_path: Path, case: str) -> Path:
    path = tmp_path / f"{case}.safetensors"
    good = work / "box.safetensors"
    meta = {"format": "lost-tokens/1", "token_dim": "32"}
    mid = json.loads((work / "bundle" / "bundle.json").read_text())["model_id"]
    if case == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif case == "text":
        path.write_text("hello")
    elif case == "wrong_dim":
        save_file({"tokens": torch.randn(4, 16)}, str(path), metadata={**meta, "k": "4", "token_dim": "16", "model_id": mid})
    elif case == "too_many":
        save_file({"tokens": torch.randn(R + 2, 32)}, str(path), metadata={**meta, "k": str(R + 2), "model_id": mid})
    elif case == "other_model":
        save_file({"tokens": torch.randn(4, 32)}, str(path), metadata={**meta, "k": "4", "model_id": "0" * 64})
    return path


@pytest.mark.parametrize("case, words", [("truncated", "not a readable tokens file"),
                                         ("text", "not a readable tokens file"),
                                         ("wrong_dim", "dimension 16"),
                                         ("too_many", "holds 10 tokens, more than the 8"),
                                         ("other_model", "tokens of model 000000000000")])
def test_bad_tokens_files_exit_2_with_one_line(work, tmp_path, capsys, case, words):
    path = _bad_tokens(work, tmp_path, case)
    code, _, err = cli(capsys, "decode", path, "--model", work / "bundle", "--out", tmp_path / "x.glb", *FAST)
    assert code == 2 and words in one_error(err, path)
    assert not (tmp_path / "x.glb").exists()


def test_decode_argument_errors(work, tmp_path, capsys):
    args = ["decode", work / "box.safetensors", "--model", work / "bundle", *FAST]
    code, _, err = cli(capsys, *args, "--tokens", 7, "--out", tmp_path / "x.glb")
    assert code == 2 and "holds 6 tokens; --tokens 7" in one_error(err, work / "box.safetensors")
    code, _, err = cli(capsys, *args, "--progressive", "1,64", "--out", tmp_path / "x.glb")
    assert code == 2 and "[64]" in one_error(err, work / "box.safetensors")
    code, _, err = cli(capsys, *args, "--out", tmp_path / "x.stl")
    assert code == 2 and "--out must be a mesh file" in one_error(err, tmp_path / "x.stl")


def test_bundle_with_a_missing_part(work, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(work / "bundle", broken)
    shutil.rmtree(broken / "tokenizer")
    code, _, err = cli(capsys, "decode", work / "box.safetensors", "--model", broken, "--out", tmp_path / "x.glb")
    assert code == 2 and "component 'tokenizer' is missing" in one_error(err, broken / "tokenizer")
    code, _, err = cli(capsys, "tokenize", work / "box.obj", "--model", tmp_path / "nothing")
    assert code == 2 and one_error(err, tmp_path / "nothing")


def test_empty_surface_warns_records_and_exits_0(work, tmp_path, capsys):
    run, vae = _parts(tmp_path, surface=False)
    code, _, err = cli(capsys, "tokenizer", "export", run, "--vae", vae, "--out", tmp_path / "b")
    assert code == 0, err
    code, _, err = cli(capsys, "tokenize", work / "box.obj", "--model", tmp_path / "b", "--out", tmp_path / "t.safetensors")
    assert code == 0, err
    code, out, err = cli(capsys, "decode", tmp_path / "t.safetensors", "--model", tmp_path / "b", "--out",
                         tmp_path / "e.glb", "--progressive", "1,8", *FAST)
    assert code == 0
    warnings = err.splitlines()
    assert len(warnings) == 2 and all(w.startswith("warning: k = ") and "no surface" in w for w in warnings)
    assert "no mesh" in out and not list(tmp_path.glob("e_k*.glb"))
    record = json.loads((tmp_path / "e.decode.json").read_text())
    assert record["empty"] == [1, 8] and all(o["mesh"] is None for o in record["outputs"])
    assert Image.open(tmp_path / "e.png").size == (4 * 224, 2 * (224 + LABEL_HEIGHT))  # blank labelled rows


def _store(root: Path, n: int = 5) -> Path:
    """A tiny prepared store: items with seeded surface samples on spheres of different radii."""
    g = np.random.default_rng(0)
    with ShardWriter(root, "items", shard_size=3) as w:
        for i in range(n):
            p = g.normal(size=(300, 3)).astype(np.float32)
            p /= np.linalg.norm(p, axis=1, keepdims=True)
            w.add(f"s{i}", {"surface_points": p * (0.3 + 0.1 * i), "surface_normals": p},
                  {"split": "train" if i < 4 else "test", "category": "ball", "file": f"s{i}.obj"})
    return root


def test_dataset_tokens_is_resumable_and_matches_the_pipeline(work, tmp_path, capsys):
    data = _store(tmp_path / "data")
    pipe = LostPipeline.from_pretrained(work / "bundle", device="cpu")
    with ShardWriter(data, "tokens") as w:  # a previous, interrupted run finished s0 (sentinel zeros)
        w.add("s0", {"tokens": np.zeros((R, 32), np.float32)}, {"model_id": pipe.model_id})
    code, out, err = cli(capsys, "dataset", "tokens", data, "--model", work / "bundle", "--batch-size", 2,
                         "--points", 200)
    assert code == 0, err
    assert "tokenized 4 shapes, skipped 1 done" in out
    store = DatasetStore(data)
    assert store.ids(table="tokens") == [f"s{i}" for i in range(5)]
    assert not store.load("s0", table="tokens")["tokens"].any()  # resumed: not recomputed
    items = store.load("s3")
    expect = pipe.tokenize((items["surface_points"][:200], items["surface_normals"][:200])).tokens
    got = store.load("s3", table="tokens")["tokens"]
    assert got.shape == (R, 32) and np.allclose(got, expect.numpy(), atol=1e-5)
    stats = store.read_stats("tokens")
    assert stats["model_id"] == pipe.model_id and stats["points"] == 200
    code, out, err = cli(capsys, "dataset", "tokens", data, "--model", work / "bundle")
    assert code == 0 and "tokenized 0 shapes, skipped 5 done" in out


def test_dataset_tokens_refuses_another_models_table(work, tmp_path, capsys):
    data = _store(tmp_path / "data", n=2)
    (data / "tokens").mkdir()
    (data / "tokens" / "stats.json").write_text(json.dumps({"model_id": "f" * 64}))
    code, _, err = cli(capsys, "dataset", "tokens", data, "--model", work / "bundle")
    assert code == 2 and "holds tokens of model ffffffffffff" in one_error(err, data / "tokens")
    code, _, err = cli(capsys, "dataset", "tokens", tmp_path / "none", "--model", work / "bundle")
    assert code == 2 and one_error(err, tmp_path / "none")
