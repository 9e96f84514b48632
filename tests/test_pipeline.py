"""The model bundle, `LostPipeline` and tokens files, on a tiny VAE + tiny tokenizer (seconds on a CPU)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from safetensors.torch import save_file

from lostcli.bundle import export_bundle, read_bundle
from lostcli.data.mesh import normalize_mesh
from lostcli.errors import CheckpointError, ConfigError, DataError, LostError
from lostcli.latent.direct3d import TriplaneVAE
from lostcli.latent.extract import query_grid
from lostcli.models.lost import build_tokenizer
from lostcli.pipeline import (
    LostPipeline,
    Tokens,
    load_tokens,
    save_tokens,
    to_source_frame,
)

R = 8  # registers of the test tokenizer
STEPS = 2  # sampler steps in tests


def tiny_parts(seed: int = 0, surface: bool = True) -> tuple[TriplaneVAE, torch.nn.Module]:
    """A tiny VAE (latent [8, 4, 12]) and a tiny tokenizer on that latent.

    With `surface`, the VAE's last occupancy bias is shifted so decoded fields cross 0 (an untrained VAE's
    logits sit around -0.1 everywhere); without, shifted far below 0 so nothing decodes to a surface.
    """
    torch.manual_seed(seed)
    vae = TriplaneVAE.from_preset("tiny", triplane_res=4)
    tok = build_tokenizer("lost_tiny", latent_shape=list(vae.latent_shape), enc_width=32, enc_depth=1, enc_heads=2,
                          num_registers=R, dec_width=32, dec_depth=1, dec_heads=2)
    tok.set_latent_stats(torch.linspace(-0.1, 0.1, 8), torch.linspace(0.5, 1.5, 8))
    with torch.no_grad():  # adaLN-Zero makes a fresh decoder ignore its condition: stand in for training
        for p in tok.decoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    last = vae.occ_decoder.net[-1]
    with torch.no_grad():
        if surface:
            pipe = LostPipeline(vae, tok, "probe")
            z = pipe.decode_latents(torch.randn(R, 32), steps=STEPS, seed=0)
            vol = query_grid(vae.mesh_query(z), 8)
            last.bias -= float(np.median(vol))
        else:
            last.bias -= 100.0
    return vae, tok


def make_bundle(root: Path, surface: bool = True) -> Path:
    vae, tok = tiny_parts(surface=surface)
    vae.save_pretrained(root / "vae")
    tok.save_pretrained(root / "run" / "export", extra_config={"sampling": {"steps": STEPS, "guidance": 2.0}})
    export_bundle(root / "run", root / "vae", root / "bundle")
    return root / "bundle"


def box_mesh() -> trimesh.Trimesh:
    """A box far from the unit frame: extents 2 x 4 x 6 centred at (10, -3, 5)."""
    mesh = trimesh.creation.box((2.0, 4.0, 6.0))
    mesh.apply_translation((10.0, -3.0, 5.0))
    return mesh


pytestmark = pytest.mark.usefixtures("one_thread_module")  # tiny models: one thread beats two spin-waiting


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("pipe"))


@pytest.fixture(scope="module")
def pipe(bundle) -> LostPipeline:
    return LostPipeline.from_pretrained(bundle, device="cpu")


def one_line_error(exc: pytest.ExceptionInfo, path: Path) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(str(path)), msg
    return msg


# ----------------------------------------------------------------------------------------------------
# Bundle
# ----------------------------------------------------------------------------------------------------


def test_bundle_layout_and_model_id(bundle, pipe):
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["format"] == 1 and meta["components"] == {"vae": "vae", "tokenizer": "tokenizer"}
    weights = (bundle / "tokenizer" / "model.safetensors").read_bytes()
    assert meta["model_id"] == hashlib.sha256(weights).hexdigest() == pipe.model_id
    # the export's defaults; an export that names no time shift samples unshifted (exports before the key)
    assert meta["tokenizer"] == {"steps": STEPS, "guidance": 2.0, "scheduler": "flow", "shift": 1.0,
                                 "temperature": 1.0}
    assert (meta["num_tokens"], meta["token_dim"], meta["latent_shape"]) == (R, 32, [8, 4, 12])
    for part in ("vae", "tokenizer"):
        assert {p.name for p in (bundle / part).iterdir()} >= {"config.json", "model.safetensors"}
    assert pipe.num_tokens == R and pipe.token_dim == 32 and pipe.sampling["steps"] == STEPS
    assert torch.allclose(pipe.tokenizer.latent_std, torch.linspace(0.5, 1.5, 8))  # stats travel with the bundle


def test_reexport_keeps_other_components_and_is_deterministic(tmp_path):
    bundle = make_bundle(tmp_path)
    (bundle / "gpt").mkdir()
    (bundle / "gpt" / "config.json").write_text("{}")
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["components"]["gpt"] = "gpt"
    (bundle / "bundle.json").write_text(json.dumps(meta))
    again = export_bundle(tmp_path / "run", tmp_path / "vae", bundle)
    assert again["components"]["gpt"] == "gpt" and (bundle / "gpt" / "config.json").is_file()
    assert again["model_id"] == meta["model_id"]  # same weights, same id
    assert sorted(p.name for p in bundle.iterdir()) == ["bundle.json", "gpt", "tokenizer", "vae"]  # no temp left
    (bundle / "bundle.json").write_text("{damaged")  # an interrupted write: re-export repairs it
    export_bundle(tmp_path / "run", tmp_path / "vae", bundle)
    assert read_bundle(bundle)["components"] == {"vae": "vae", "tokenizer": "tokenizer"}


def test_export_refuses_a_tokenizer_of_another_latent(tmp_path):
    vae, _ = tiny_parts()
    vae.save_pretrained(tmp_path / "vae")
    other = build_tokenizer("lost_tiny", latent_shape=[8, 8, 24], enc_width=32, enc_depth=1, enc_heads=2,
                            num_registers=4, dec_width=32, dec_depth=1, dec_heads=2)
    other.save_pretrained(tmp_path / "tok")
    with pytest.raises(ConfigError, match=r"latent \[8, 8, 24\] does not match the VAE's \[8, 4, 12\]"):
        export_bundle(tmp_path / "tok", tmp_path / "vae", tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize("damage", ["no_vae", "no_tokenizer_config", "no_bundle_json", "bad_json"])
def test_bundle_with_a_missing_part_is_one_line(bundle, tmp_path, damage):
    broken = tmp_path / "b"
    shutil.copytree(bundle, broken)
    target = {"no_vae": broken / "vae", "no_tokenizer_config": broken / "tokenizer" / "config.json",
              "no_bundle_json": broken / "bundle.json", "bad_json": None}[damage]
    if damage == "bad_json":
        (broken / "bundle.json").write_text("{not json")
    elif target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink()
    with pytest.raises(CheckpointError) as exc:
        LostPipeline.from_pretrained(broken)
    one_line_error(exc, broken)


def test_bundle_with_missing_weights_names_the_file(bundle, tmp_path):
    broken = tmp_path / "b"
    shutil.copytree(bundle, broken)
    (broken / "vae" / "model.safetensors").unlink()
    with pytest.raises(LostError, match="model.safetensors"):
        LostPipeline.from_pretrained(broken)


# ----------------------------------------------------------------------------------------------------
# Tokenize
# ----------------------------------------------------------------------------------------------------


def test_tokenize_mesh_records_the_frame_and_prefixes_agree(pipe):
    mesh = box_mesh()
    full = pipe.tokenize(mesh, seed=3)
    four = pipe.tokenize(mesh, k=4, seed=3, source="box.obj")
    assert full.tokens.shape == (R, 32) and four.tokens.shape == (4, 32) and four.k == 4
    assert torch.equal(four.tokens, full.tokens[:4])  # a prefix of the same encoding
    assert torch.allclose(full.tokens.mean(-1), torch.zeros(R), atol=1e-5)  # z-scored tokens
    _, norm = normalize_mesh(mesh)
    assert np.allclose(four.normalization["matrix"], norm.matrix) and four.source == "box.obj"
    assert four.model_id == pipe.model_id
    other_seed = pipe.tokenize(mesh, seed=4)
    assert not torch.equal(other_seed.tokens, full.tokens)  # surface sampling is seeded


def test_tokenize_points_path_matches_the_batched_call(pipe):
    g = np.random.default_rng(0)
    pts = g.uniform(-0.9, 0.9, (256, 3)).astype(np.float32)
    nrm = pts / np.linalg.norm(pts, axis=1, keepdims=True)
    one = pipe.tokenize((pts, nrm), k=R)
    batch = pipe.tokenize_points(torch.from_numpy(np.stack([pts, pts[::-1].copy()])),
                                 torch.from_numpy(np.stack([nrm, nrm[::-1].copy()])))
    assert one.normalization is None and batch.shape == (2, R, 32)
    assert torch.allclose(one.tokens, batch[0], atol=1e-5)
    assert torch.allclose(batch[0], batch[1], atol=1e-4)  # the point encoder is order-invariant
    with pytest.raises(ConfigError, match="k=9"):
        pipe.tokenize((pts, nrm), k=R + 1)


def test_save_load_gives_identical_tokens(pipe, tmp_path):
    t = pipe.tokenize(box_mesh(), k=5, source="/data/box.obj")
    path = save_tokens(tmp_path / "t.safetensors", t)
    back = load_tokens(path, pipeline=pipe)
    assert torch.equal(back.tokens, t.tokens) and back.k == 5 and back.model_id == pipe.model_id
    assert back.source == "/data/box.obj" and back.normalization == t.normalization
    plain = save_tokens(tmp_path / "p.safetensors", Tokens(t.tokens, 5, None, None, pipe.model_id))
    assert load_tokens(plain).normalization is None and load_tokens(plain).source is None


# ----------------------------------------------------------------------------------------------------
# Tokens file validation
# ----------------------------------------------------------------------------------------------------


def _write_raw(path: Path, tokens: torch.Tensor, **meta: str) -> Path:
    base = {"format": "lost-tokens/1", "k": str(tokens.shape[0]), "token_dim": str(tokens.shape[-1]),
            "model_id": "x" * 64}
    save_file({"tokens": tokens.contiguous()}, str(path), metadata={**base, **meta})
    return path


@pytest.mark.parametrize("case, pattern", [
    ("missing", "tokens file not found"),
    ("garbage", "not a readable tokens file"),
    ("truncated", "not a readable tokens file"),
    ("wrong_dim", "tokens have dimension 16, the model's have 32"),
    ("too_many", "holds 9 tokens, more than the 8 the model has"),
    ("other_model", "tokens of model xxxxxxxxxxxx, not of this model"),
    ("nan", "NaN or inf"),
    ("meta_mismatch", "metadata says 3 tokens of dimension 32, the tensor is \\[4, 32\\]"),
    ("no_format", "not a LoST tokens file"),
    ("three_d", "expected float \\[K, token_dim\\]"),
    ("bad_norm", "damaged normalization"),
])
def test_bad_tokens_files_give_one_line(pipe, tmp_path, case, pattern):
    path = tmp_path / f"{case}.safetensors"
    ok = pipe.tokenize(box_mesh(), k=4)
    mid = {"model_id": pipe.model_id}
    if case == "garbage":
        path.write_bytes(b"\x00\x01 definitely not safetensors" * 10)
    elif case == "truncated":
        save_tokens(path, ok)
        path.write_bytes(path.read_bytes()[:-40])
    elif case == "wrong_dim":
        _write_raw(path, torch.randn(4, 16), **mid)
    elif case == "too_many":
        _write_raw(path, torch.randn(R + 1, 32), **mid)
    elif case == "other_model":
        _write_raw(path, torch.randn(4, 32))
    elif case == "nan":
        _write_raw(path, torch.full((4, 32), float("nan")), **mid)
    elif case == "meta_mismatch":
        _write_raw(path, torch.randn(4, 32), k="3", **mid)
    elif case == "no_format":
        _write_raw(path, torch.randn(4, 32), format="something-else", **mid)
    elif case == "three_d":
        _write_raw(path, torch.randn(1, 4, 32), **mid)
    elif case == "bad_norm":
        _write_raw(path, torch.randn(4, 32), normalization=json.dumps({"matrix": [[1, 2]]}), **mid)
    with pytest.raises(DataError, match=pattern) as exc:
        load_tokens(path, pipeline=pipe)
    one_line_error(exc, path)


# ----------------------------------------------------------------------------------------------------
# Decode
# ----------------------------------------------------------------------------------------------------


def test_decode_is_deterministic_per_seed_and_reads_only_the_prefix(pipe):
    tokens = pipe.tokenize(box_mesh()).tokens  # [R, 32]
    a = pipe.decode_latents(tokens, k=2, steps=STEPS, seed=0)
    b = pipe.decode_latents(tokens, k=2, steps=STEPS, seed=0)
    c = pipe.decode_latents(tokens, k=2, steps=STEPS, seed=1)
    assert a.shape == (1, 8, 4, 12) and torch.equal(a, b) and not torch.allclose(a, c)
    prefix_only = pipe.decode_latents(tokens[:2], steps=STEPS, seed=0)  # k defaults to the 2 given
    assert torch.allclose(a, prefix_only, atol=1e-6)  # tokens past k are never read
    full = pipe.decode_latents(tokens, steps=STEPS, seed=0)
    assert not torch.allclose(a, full)  # a shorter prefix is a different condition
    assert torch.isfinite(full).all()


def test_decode_latents_are_raw_vae_latents(pipe):
    tokens = pipe.tokenize(box_mesh()).tokens
    z = pipe.decode_latents(tokens, steps=STEPS, seed=0)
    from lostcli.models.flow import sample_latents

    g = torch.Generator().manual_seed(0)
    z_norm = sample_latents(pipe.tokenizer, tokens[None], torch.tensor([R]), steps=STEPS, guidance=2.0, generator=g)
    assert torch.allclose(z, pipe.tokenizer.denormalize(z_norm), atol=1e-6)  # bundle default guidance 2.0


def test_decode_batch_and_per_sample_prefixes(pipe):
    tokens = torch.stack([pipe.tokenize(box_mesh(), seed=s).tokens for s in (0, 1)])  # [2, R, 32]
    meshes = pipe.decode(tokens, k=[1, R], steps=STEPS, seed=0, resolution=16)
    assert len(meshes) == 2
    for m in meshes:
        assert m is not None and len(m.faces) > 0
        assert np.abs(m.vertices).max() <= 1.0 + 1e-6  # unit frame
    with pytest.raises(ConfigError, match="2 prefix lengths for 1"):
        pipe.decode_latents(tokens[:1], k=[1, 2], steps=STEPS)
    with pytest.raises(ConfigError, match="k=0"):
        pipe.decode_latents(tokens, k=0, steps=STEPS)
    with pytest.raises(ConfigError, match="resolution"):
        pipe.decode(tokens, steps=STEPS, resolution=0)


def test_decode_empty_surface_returns_none(tmp_path):
    empty = LostPipeline.from_pretrained(make_bundle(tmp_path, surface=False), device="cpu")
    assert empty.decode(torch.randn(R, 32), steps=STEPS, resolution=8) == [None]


def test_to_source_frame_inverts_the_normalisation(pipe):
    mesh = box_mesh()
    unit, norm = normalize_mesh(mesh)
    back = to_source_frame(unit, norm.to_dict())
    assert np.allclose(back.vertices, mesh.vertices, atol=1e-9)
    assert np.allclose(to_source_frame(unit, None).vertices, unit.vertices)


def test_read_bundle_on_a_plain_folder(tmp_path):
    with pytest.raises(CheckpointError, match="not a model bundle"):
        read_bundle(tmp_path)
