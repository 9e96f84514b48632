"""The reconstruction table on a tiny bundle and a tiny prepared dataset (seconds on a CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from lostcli.cli import app as app_module
from lostcli.cli import eval as eval_cli
from lostcli.cli.app import main
from lostcli.data.mesh import normalize_mesh
from lostcli.data.render import render_views
from lostcli.data.sampling import sample_surface
from lostcli.data.store import ShardWriter
from lostcli.errors import ConfigError
from lostcli.models.classifier import RenderClassifier, RenderClassifierConfig, load_classifier
from lostcli.eval.geometry import mesh_metrics
from lostcli.eval.recon import ReconConfig, evaluate_recon, parse_tokens, resolve_ks
from lostcli.latent.direct3d import TriplaneVAE
from lostcli.latent.extract import query_grid
from lostcli.models.lost import build_tokenizer
from lostcli.models.teacher import ClipTeacher, ClipTeacherConfig
from lostcli.bundle import export_bundle
from lostcli.pipeline import LostPipeline

R = 8  # registers of the test tokenizer
SIZE = 32  # stored render size
POINTS = 2000  # surface samples per mesh for the metrics
CATEGORIES = ["box", "ball", "can"]

if not any(g.name == "eval" for g in app_module.app.registered_groups):
    app_module.app.add_typer(eval_cli.app, name="eval")


def shapes() -> list[tuple[str, trimesh.Trimesh]]:
    return [("box", trimesh.creation.box((1.0, 0.6, 0.8))), ("ball", trimesh.creation.icosphere(2)),
            ("can", trimesh.creation.cylinder(0.4, 1.2, sections=24)), ("box", trimesh.creation.box((0.5, 1.0, 0.5))),
            ("ball", trimesh.creation.icosphere(1, radius=0.7)), ("can", trimesh.creation.cylinder(0.3, 0.6))]


def make_store(root: Path) -> Path:
    """6 shapes in 3 categories; the first 3 are the test split, the rest train."""
    with ShardWriter(root, "items", shard_size=4) as w:
        for i, (cat, mesh) in enumerate(shapes()):
            unit, _ = normalize_mesh(mesh)
            pts, nrm = sample_surface(unit, 2048, seed=i)
            w.add(f"{cat}-{i}", {"surface_points": pts.astype(np.float32), "surface_normals": nrm.astype(np.float32),
                                 "mesh_vertices": np.asarray(unit.vertices, np.float32),
                                 "mesh_faces": np.asarray(unit.faces, np.int32),
                                 "renders": render_views(unit, size=SIZE).images},
                  {"category": cat, "split": "test" if i < 3 else "train"})
    return root


def make_bundle(root: Path) -> Path:
    """A tiny VAE + tokenizer bundle whose decoder depends on the tokens and whose decoded fields cross 0."""
    torch.manual_seed(0)
    vae = TriplaneVAE.from_preset("tiny", triplane_res=4)
    tok = build_tokenizer("lost_tiny", latent_shape=list(vae.latent_shape), enc_width=32, enc_depth=1, enc_heads=2,
                          num_registers=R, dec_width=32, dec_depth=1, dec_heads=2)
    with torch.no_grad():
        for p in tok.parameters():  # adaLN-Zero starts blind to the condition: wake the zeroed weights
            if not p.any():
                p.normal_(0.0, 0.05)
        z = LostPipeline(vae, tok, "probe").decode_latents(torch.randn(R, 32), steps=2, seed=0)
        vae.occ_decoder.net[-1].bias -= float(np.median(query_grid(vae.mesh_query(z), 8)))
    vae.save_pretrained(root / "vae")
    tok.save_pretrained(root / "run" / "export", extra_config={"sampling": {"steps": 2, "guidance": 2.0}})
    export_bundle(root / "run", root / "vae", root / "bundle")
    return root / "bundle"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("recon")
    data = make_store(root / "ds")
    bundle = make_bundle(root)
    torch.manual_seed(0)
    cls = RenderClassifier(RenderClassifierConfig(image_size=32, stem_width=8, widths=[16], categories=sorted(CATEGORIES)))
    cls.save_pretrained(root / "cls" / "export")
    (root / "cls" / "export" / "eval.json").write_text(json.dumps({"shape_acc": 0.9, "per_view_acc": 0.8}))
    return data, bundle, root / "cls"


def test_parse_and_resolve_tokens():
    assert parse_tokens("1, 4,16,all") == [1, 4, 16, "all"]
    assert resolve_ks([4, "all", 1, 8, 4], 8) == [1, 4, 8]
    assert resolve_ks([1, 4, 16, 64, "all"], 8) == [1, 4, 8]  # the paper's list on a model with R < 64
    for bad in ("", "0", "1,x", "-2"):
        with pytest.raises(ConfigError):
            parse_tokens(bad)
    with pytest.raises(ConfigError, match="1..8"):
        resolve_ks([16], 8)


def test_recon_table_values(setup, tmp_path):
    data, bundle, cls_dir = setup
    pipe = LostPipeline.from_pretrained(bundle, device="cpu")
    teacher = ClipTeacher(ClipTeacherConfig(embed_dim=32, image_size=32, patch_size=8, vision_width=32,
                                            vision_layers=1, vision_heads=2, text_context=16, text_width=32,
                                            text_layers=1, text_heads=2)).eval()
    cfg = ReconConfig(ks=[1, 4, "all"], steps=2, guidance=2.0, resolution=16, n_points=POINTS, batch_size=2, grid=2)
    ticks = []
    evaluate_recon(pipe, data, cfg, classifier=load_classifier(cls_dir), teacher=teacher, out_dir=tmp_path,
                   command="lost eval recon ...", progress=lambda d, t, label: ticks.append((d, t)))
    assert ticks == [(2, 3), (3, 3)]
    rep = json.loads((tmp_path / "recon.json").read_text())
    assert [r["k"] for r in rep["rows"]] == [1, 4, 8, "vae", "mean"]
    assert rep["chance"] == pytest.approx(1 / 3)
    assert rep["classifier_test_acc"] == 0.9 and rep["classifier_test_acc_per_view"] == 0.8
    assert rep["feature_network"] == teacher.name and rep["command"] == "lost eval recon ..."
    assert rep["n"] == 3 and rep["num_tokens"] == R and rep["mean_latent"] == {"split": "train", "shapes": 3}
    for row in rep["rows"]:
        assert {"k", "chamfer", "fscore_0.01", "class_acc", "n"} <= set(row)
        assert row["n"] == 3 and 0 <= row["failures"] <= 3
        assert row["chamfer"] is None or 0.0 < row["chamfer"] < 3.5  # raw, inside [-1, 1]^3
        assert 0.0 <= row["fscore_0.01"] <= row["fscore_0.02"] <= 1.0
        assert row["class_acc"] in (0.0, 1 / 3, 2 / 3, 1.0)
        assert -1.0 <= row["feature_sim"] <= 1.0 + 1e-6
        assert row["fd"] is not None and row["kid"] is not None
    assert any(r["chamfer"] is not None for r in rep["rows"])
    # the mean row's FD, by hand: the mean latent's 4 renders (once per test shape) against the 3 test shapes' stored
    # renders, in the classifier's features; Frechet distance of the two Gaussian fits computed here with numpy
    from lostcli.data.store import DatasetStore
    from lostcli.eval.fd import classifier_features
    from lostcli.eval.recon import mean_latent

    store = DatasetStore(data)
    z_mean, _ = mean_latent(store, pipe.vae, pipe.num_points, ReconConfig().mean_items)
    mean_mesh = pipe.vae.to_mesh(z_mean, resolution=cfg.resolution)
    mean_img = render_views(mean_mesh if mean_mesh is not None else trimesh.Trimesh(), size=SIZE).images
    test = store.records(split="test")
    real = np.concatenate([store.load(r["id"], keys=["renders"])["renders"] for r in test])  # [12, S, S, 3]
    fake = np.concatenate([mean_img] * len(test))
    features = classifier_features(load_classifier(cls_dir).model)
    a, b = (features(torch.from_numpy(x)).double().numpy() for x in (real, fake))
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_trace = np.sqrt(np.linalg.eigvals(cov_a @ cov_b).astype(complex)).real.sum()  # tr sqrt(cov_a cov_b)
    want = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * root_trace
    assert want > 1e-3  # a real distance: the mean shape renders unlike the test shapes
    assert rep["rows"][4]["k"] == "mean" and rep["rows"][4]["fd"] == pytest.approx(want, rel=1e-5)
    # FD/KID: the classifier's features (no local Inception), each row against the same real renders
    assert rep["fd_network"] == "render-classifier" and rep["fd_metric"] == "FD-render-classifier"
    assert "below 500 shapes" in rep["fd_warning"]

    # row statistics are the medians of the per-shape values stored beside them
    vae_row = rep["rows"][3]
    per = [s["vae"] for s in rep["shapes"]]
    ok = [p["chamfer"] for p in per if not p["failed"]]
    if ok:
        assert vae_row["chamfer"] == pytest.approx(float(np.median(ok)))
    assert vae_row["fscore_0.01"] == pytest.approx(float(np.median([p["fscore_0.01"] for p in per])))
    # one piece: the share of shapes whose decoded surface keeps >= 95% of its area in one part (failures count as
    # not); the mean-latent floor is a point set, so it has none
    for row in rep["rows"][:4]:
        shares = [s[str(row["k"])]["largest_part"] for s in rep["shapes"]]
        assert all(x is None or 0.0 < x <= 1.0 for x in shares)
        assert row["one_piece"] == pytest.approx(np.mean([x is not None and x >= 0.95 for x in shares]))
    assert rep["rows"][4]["one_piece"] is None
    # bootstrap intervals: around each median; the paired change of each k from the previous k
    for row in rep["rows"]:
        if row["chamfer"] is not None:
            lo, hi = row["chamfer_ci"]
            assert lo <= row["chamfer"] <= hi
    by_k = {r["k"]: r for r in rep["rows"]}
    assert "chamfer_change" not in by_k[1] and "chamfer_change" not in by_k["vae"]
    for k, prev in ((4, 1), (8, 4)):
        assert by_k[k]["chamfer"] is not None and by_k[prev]["chamfer"] is not None  # seeded: surfaces exist
        assert by_k[k]["chamfer_change"] == pytest.approx(by_k[k]["chamfer"] - by_k[prev]["chamfer"])
        lo, hi = by_k[k]["chamfer_change_ci"]
        assert lo <= hi
        # per shape: the median of CD_k / CD_prev - 1 over the shapes, from the values stored per shape
        rel = [s[str(k)]["chamfer"] / s[str(prev)]["chamfer"] - 1 for s in rep["shapes"]
               if not (s[str(k)]["failed"] or s[str(prev)]["failed"])]
        assert by_k[k]["chamfer_shape_change"] == pytest.approx(float(np.median(rel)))
        assert by_k[k]["chamfer_fall_share"] == pytest.approx(float(np.mean(np.array(rel) < 0)))
        lo, hi = by_k[k]["chamfer_shape_change_ci"]
        assert lo <= by_k[k]["chamfer_shape_change"] <= hi
    assert "chamfer_shape_change" not in by_k["vae"]

    # the VAE row is the VAE's own reconstruction, measured as PROTOCOLS says
    from lostcli.data.store import DatasetStore

    first = rep["shapes"][0]
    a = DatasetStore(data).load(first["id"], keys=["surface_points", "surface_normals", "mesh_vertices", "mesh_faces"])
    z = pipe.vae.encode(torch.from_numpy(a["surface_points"][None]), torch.from_numpy(a["surface_normals"][None]))
    mesh = pipe.vae.to_mesh(z[0], resolution=16)
    m = mesh_metrics(mesh, trimesh.Trimesh(a["mesh_vertices"], a["mesh_faces"], process=False), n=POINTS, seed=0)
    assert first["vae"]["failed"] == m.failed
    if not m.failed:
        assert first["vae"]["chamfer"] == pytest.approx(m.chamfer, rel=1e-3)  # batched encode: float noise

    # the mean row decodes one latent: every shape gets the same predicted category and rendering
    preds = {s["mean"].get("predicted") for s in rep["shapes"]}
    assert len(preds) == 1
    assert len({round(s["mean"]["feature_sim"], 4) for s in rep["shapes"]}) == 3  # vs different GT renders

    md = (tmp_path / "recon.md").read_text()
    assert "x10^-2" in md and "k = 8 (all)" in md and "mean latent (floor)" in md and "0.900" in md
    assert "| FD-render-classifier | KID (x10^3) | one piece | failures |" in md
    vae_row = rep["rows"][3]
    assert f"| {vae_row['one_piece']:.2f} | {vae_row['failures']}/3 |" in md and "| - | 0/3 |" in md  # mean: none
    assert "95% bootstrap interval" in md and "change from k = 1:" in md and "change from k = 4:" in md
    assert "; per shape " in md and "of shapes" in md
    for name in ("1", "4", "8", "vae", "mean", "curve"):
        assert (tmp_path / f"recon_{name}.png").stat().st_size > 1000


def test_recon_is_deterministic_and_k_changes_the_decode(setup):
    data, bundle, _ = setup
    pipe = LostPipeline.from_pretrained(bundle, device="cpu")
    cfg = ReconConfig(ks=[1, "all"], steps=2, guidance=2.0, resolution=16, n_points=500, batch_size=3, limit=2)
    a = evaluate_recon(pipe, data, cfg)
    b = evaluate_recon(pipe, data, cfg)
    assert a.rows == b.rows and a.shapes == b.shapes and a.report["n"] == 2
    # one token and all eight tokens condition the decoder differently: the decoded surfaces differ
    assert any(s["1"] != s["8"] for s in a.shapes)
    assert a.rows[0]["class_acc"] is None and a.report["chance"] is None
    assert a.rows[0]["fd"] is None and a.report["fd_network"] is None  # no classifier, teacher or Inception
    every = evaluate_recon(pipe, data, ReconConfig(split="all", ks=[1], steps=2, resolution=16, n_points=200,
                                                   batch_size=6, fd_network="none"))
    assert every.report["n"] == 6 and [s["id"] for s in every.shapes][:2] == ["ball-1", "ball-4"]
    assert a.files == []


def test_cli_recon(setup, tmp_path, capsys):
    data, bundle, cls_dir = setup
    out = tmp_path / "report"

    def run(*args):
        try:
            main([str(x) for x in args])
            code = 0
        except SystemExit as e:
            code = e.code
        return code, *capsys.readouterr()

    code, stdout, err = run("eval", "recon", "--model", bundle, "--data", data, "--tokens", "2,64,all",
                            "--classifier", cls_dir, "--out", out, "--steps", "2", "--resolution", "16",
                            "--points", "500", "--limit", "2")
    assert code == 0, err
    rep = json.loads((out / "recon.json").read_text())
    assert [r["k"] for r in rep["rows"]] == [2, 8, "vae", "mean"]
    assert rep["command"].startswith("lost ") and rep["settings"]["steps"] == 2
    assert rep["settings"]["temperature"] == 1.0  # the bundle's default
    assert "k=    2" in stdout and "chance 0.333" in stdout
    k8 = rep["rows"][1]  # the change from k = 2, with its interval, on the printed line
    assert f"(change {100 * k8['chamfer_change']:+.3f} [{100 * k8['chamfer_change_ci'][0]:+.3f}," in stdout
    assert rep["dropped_ks"] == [64] and "k = 64 skipped" in err and "k = 64 (longer than R = 8)" in (out / "recon.md").read_text()
    code, _, err = run("eval", "recon", "--model", bundle, "--data", data, "--tokens", "64", "--out", out)
    assert code == 2 and err.count("\n") == 1 and "1..8" in err
    code, _, err = run("eval", "recon", "--model", tmp_path, "--data", data, "--out", out)
    assert code == 2 and err.count("\n") == 1
    code, _, err = run("eval", "recon", "--model", bundle, "--data", data, "--temperature", "-0.5", "--out", out)
    assert code == 2 and err.count("\n") == 1 and "--temperature: must be a finite number >= 0, got -0.5" in err


def test_decoder_temperature_changes_the_decode_and_one_is_the_default(setup):
    data, bundle, _ = setup
    pipe = LostPipeline.from_pretrained(bundle, device="cpu")
    cfg = ReconConfig(ks=["all"], steps=2, guidance=1.0, resolution=16, n_points=500, limit=2, fd_network="none")
    default = evaluate_recon(pipe, data, cfg)
    cfg.temperature = 1.0
    assert evaluate_recon(pipe, data, cfg).shapes == default.shapes
    cfg.temperature = 0.0
    cold = evaluate_recon(pipe, data, cfg)
    assert cold.report["settings"]["temperature"] == 0.0 and cold.shapes != default.shapes


def test_steps_and_guidance_default_to_the_bundle(setup):
    data, bundle, _ = setup
    pipe = LostPipeline.from_pretrained(bundle, device="cpu")
    pipe.sampling.update(steps=2, guidance=1.0)
    cfg = ReconConfig(ks=["all"], resolution=16, n_points=500, limit=2, fd_network="none")
    default = evaluate_recon(pipe, data, cfg)
    assert default.report["settings"]["steps"] == 2 and default.report["settings"]["guidance"] == 1.0
    given = evaluate_recon(pipe, data, ReconConfig(ks=["all"], steps=2, guidance=1.0, resolution=16, n_points=500,
                                                   limit=2, fd_network="none"))
    assert given.shapes == default.shapes
    pipe.sampling.update(guidance=2.0)
    assert evaluate_recon(pipe, data, cfg).shapes != default.shapes


def test_compare_a_second_bundle_shape_by_shape(setup, tmp_path):
    """The same bundle compared with itself: identical rows, every paired change exactly 0; the report and the
    markdown carry the comparison."""
    data, bundle, cls_dir = setup
    pipe = LostPipeline.from_pretrained(bundle, device="cpu")
    twin = LostPipeline.from_pretrained(bundle, device="cpu")
    teacher = ClipTeacher(ClipTeacherConfig(embed_dim=32, image_size=32, patch_size=8, vision_width=32,
                                            vision_layers=1, vision_heads=2, text_context=16, text_width=32,
                                            text_layers=1, text_heads=2)).eval()
    cfg = ReconConfig(ks=[1, "all"], steps=2, guidance=2.0, resolution=16, n_points=500, batch_size=2, grid=1)
    res = evaluate_recon(pipe, data, cfg, classifier=load_classifier(cls_dir), teacher=teacher, out_dir=tmp_path,
                         compare=("twin", twin))
    by_k = {r["k"]: r for r in res.rows}
    assert list(by_k) == [1, 8, "vae", "mean", "twin:1", "twin:8"]
    for k in (1, 8):
        paired = ("k", "chamfer_change", "chamfer_shape", "chamfer_fall")  # changes from the previous k
        mine = {key: v for key, v in by_k[k].items() if not key.startswith(paired)}
        theirs = {key: v for key, v in by_k[f"twin:{k}"].items() if not key.startswith(paired)}
        assert mine == theirs  # same shapes, seeds and weights
    comp = res.report["comparison"]
    assert comp["name"] == "twin" and [r["k"] for r in comp["rows"]] == [1, 8]
    for row in comp["rows"]:
        assert row["class_acc"] == row["class_acc_other"] and row["class_acc_change"] == 0.0
        assert row["class_acc_change_ci"] == [0.0, 0.0] and row["feature_sim_change_ci"] == [0.0, 0.0]
        assert row["chamfer_change"] == 0.0 and row["chamfer_change_ci"] == [0.0, 0.0]
    md = (tmp_path / "recon.md").read_text()
    assert "against `twin`" in md and "twin: k = 1" in md
    assert (tmp_path / "recon_twin_1.png").is_file()


def test_cli_compare_needs_name_and_bundle(setup, tmp_path, capsys):
    data, bundle, _ = setup
    for bad in ("twin", "=x", "a:b=" + str(bundle)):
        try:
            main(["eval", "recon", "--model", str(bundle), "--data", str(data), "--compare", bad, "--out",
                  str(tmp_path / "r")])
            code = 0
        except SystemExit as e:
            code = e.code
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "--compare" in err
