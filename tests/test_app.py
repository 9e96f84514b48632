"""`lost app`: the page served on 127.0.0.1 with a tiny bundle (tiny VAE + tokenizer + untrained GPT from
test_generate), called through its HTTP API with gradio_client: files with the right content, the decode cache,
bad uploads answered with one line while the server keeps serving, one request at a time, a clean stop.
Needs the `app` extra (.ci/run installs it); the browser check is in test_app_browser.py."""

from __future__ import annotations

import socket
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

gradio = pytest.importorskip("gradio", reason="the app extra (pip install -e '.[app]') is not installed")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from lostcli.pipeline import GenerateConfig, LostPipeline, load_tokens  # noqa: E402
from lostcli.web.server import free_port, serve  # noqa: E402
from lostcli.web.session import AppSession, prefix_ladder  # noqa: E402
from lostcli.web.ui import build_app  # noqa: E402

from conftest import cli, one_error  # noqa: E402
from test_generate import L, add_generator  # noqa: E402
from test_pipeline import R, box_mesh, make_bundle  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread_module")
MAX_FACES = 4000


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("app")
    return add_generator(make_bundle(root), root)


@pytest.fixture(scope="module")
def session(bundle, tmp_path_factory) -> AppSession:
    pipe = LostPipeline.from_pretrained(bundle, device="cpu")
    return AppSession(pipe, tmp_path_factory.mktemp("work"), resolution=24, max_faces=MAX_FACES, chamfer_points=4000)


@pytest.fixture(scope="module")
def server(session):
    srv = serve(build_app(session), host="127.0.0.1", files=session.workdir)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(server.url, verbose=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("uploads")
    out = {"box": d / "box.glb", "corrupt": d / "broken.glb", "empty": d / "empty.obj", "text": d / "notes.txt",
           "dense": d / "dense.stl"}
    box_mesh().export(out["box"])
    out["corrupt"].write_bytes(b"glTF" + bytes(range(200)))
    out["empty"].write_bytes(b"")
    out["text"].write_text("not a mesh\n")
    trimesh.creation.icosphere(subdivisions=4).export(out["dense"])  # 5120 faces > MAX_FACES
    return out


def value(x):
    """A component update (dict with 'value') or a plain value -> the value."""
    return x.get("value") if isinstance(x, dict) and "__type__" in x else x


def load(path) -> trimesh.Trimesh:
    return trimesh.load(value(path), force="mesh", process=False)


def test_prefix_ladder():
    assert prefix_ladder(32) == [1, 2, 4, 8, 16, 32]
    assert prefix_ladder(8) == [1, 2, 4, 8] and prefix_ladder(6) == [1, 2, 4, 6] and prefix_ladder(1) == [1]


def test_serves_on_localhost_with_local_assets(server):
    assert server.url.startswith("http://127.0.0.1:")
    html = urllib.request.urlopen(server.url, timeout=10).read().decode()
    assert "<html" in html.lower()
    import re

    external = [u for u in re.findall(r'(?:src|href)="(https?://[^"]+)"', html) if "127.0.0.1" not in u]
    assert not external, f"the page loads from the internet: {external}"


def test_tokenize_returns_tokens_decodes_and_chamfer(client, session, files):
    key, tokens_path, viewer, preview, note, first, strip, table = client.predict(handle_file(str(files["box"])),
                                                                                  api_name="/tokenize")
    tokens = load_tokens(tokens_path, pipeline=session.pipe)
    assert tokens.k == R and tokens.tokens.shape == (R, 32) and tokens.source == "box.glb"
    assert tokens.normalization is not None  # the source frame travels with the tokens
    one = load_tokens(first, pipeline=session.pipe)
    assert one.k == 1 and torch.equal(one.tokens, tokens.tokens[:1])
    mesh = load(viewer)
    assert len(mesh.faces) > 0
    assert np.abs(mesh.bounds).max() > 2.0  # in the input's frame (box centred at (10, -3, 5)), not the unit cube
    assert note.startswith("**k = 1** of 8 tokens") and "Chamfer" in note
    rows = table["data"]
    assert [r[0] for r in rows] == [1, 2, 4, 8]
    assert all(np.isfinite(r[1]) and r[1] > 0 for r in rows)
    assert Path(strip).stat().st_size > 0 and Path(preview).stat().st_size > 0
    assert len(key) == 64 and key in session.uploads


def test_slider_gives_other_meshes_for_other_k_from_the_cache(client, session, files):
    key = client.predict(handle_file(str(files["box"])), api_name="/tokenize")[0]
    calls = session.calls
    one = client.predict(key, 0, api_name="/prefix")
    last = client.predict(key, 3, api_name="/prefix")
    assert session.calls == calls  # every prefix was decoded once, at upload: no model call now
    assert "(from the cache)" in one[2] and last[2].startswith("**k = 8**")
    assert load_tokens(one[3]).k == 1 and load_tokens(last[3]).k == 8  # the prefix's own tokens file
    a, b = load(one[0]), load(last[0])
    assert len(a.vertices) != len(b.vertices) or not np.allclose(a.vertices, b.vertices)
    again = client.predict(key, 0, api_name="/prefix")
    assert np.allclose(load(again[0]).vertices, a.vertices)  # the cached decode is the same mesh


def test_generate_returns_meshes_in_three_formats_and_tokens(client):
    out = client.predict("a chair", 3, 2, 2.0, 1.0, L, api_name="/generate")
    viewers, grid, downloads, note = out[:4], out[4], out[5], out[6]
    assert [value(v) is not None for v in viewers] == [True, True, False, False]
    assert Image.open(grid).size[0] == 2 * 224  # one 2 x 2 tile of views per sample, two samples
    by_ext = {}
    for f in downloads:
        by_ext.setdefault(Path(f).suffix, []).append(f)
    assert {k: len(v) for k, v in by_ext.items()} == {".glb": 2, ".obj": 2, ".ply": 2, ".safetensors": 2}
    for f in by_ext[".glb"] + by_ext[".obj"] + by_ext[".ply"]:
        assert len(load(f).faces) > 0
    t = [load_tokens(f) for f in sorted(by_ext[".safetensors"])]
    assert t[0].k == L and not torch.allclose(t[0].tokens, t[1].tokens)  # two draws differ
    assert note.startswith("2 sample(s), 6 tokens (kept 0), guidance 2.0")


def test_complete_keeps_the_first_tokens(client, session, files):
    key, tokens_path = client.predict(handle_file(str(files["box"])), api_name="/tokenize")[:2]
    out = client.predict(handle_file(tokens_path), 2, "a chair", 1, 1, 2.0, 1.0, api_name="/complete")
    made = [f for f in out[5] if f.endswith(".safetensors")]
    assert len(made) == 1
    completed, given = load_tokens(made[0]), load_tokens(tokens_path)
    assert completed.k == L
    assert torch.allclose(completed.tokens[:2], given.tokens[:2])  # kept unchanged
    assert not torch.allclose(completed.tokens[2:L], given.tokens[2:L])  # the GPT wrote the rest
    assert "kept 2" in out[6]


@pytest.mark.parametrize("name, words", [("corrupt", "broken.glb: unreadable or corrupt glb"),
                                         ("empty", "empty.obj: file is empty"),
                                         ("text", "Invalid file type"),  # refused by the upload field itself
                                         ("dense", f"dense.stl: more than {MAX_FACES}")])
def test_bad_upload_is_one_line_and_the_server_goes_on(client, files, name, words):
    with pytest.raises(AppError) as e:
        client.predict(handle_file(str(files[name])), api_name="/tokenize")
    message = str(e.value)
    assert words in message and "\n" not in message and "/tmp" not in message
    ok = client.predict(handle_file(str(files["box"])), api_name="/tokenize")  # the next good request
    assert load_tokens(ok[1]).k == R


def test_session_refuses_other_files_and_other_models_tokens(session, files, tmp_path):
    from lostcli.errors import DataError
    from lostcli.pipeline import Tokens, save_tokens

    with pytest.raises(DataError, match=r"^notes.txt: not a mesh or tokens file"):
        session.tokenize(files["text"])
    other = save_tokens(tmp_path / "other.safetensors", Tokens(torch.zeros(3, 32), 3, None, None, "f" * 64))
    with pytest.raises(DataError, match=r"^other.safetensors: tokens of model ffffffffffff, not of this model"):
        session.tokenize(other)


def test_requests_queue_one_at_a_time(client, session, files):
    session.peak = 0
    jobs = [client.submit("a lamp", s, 1, 2.0, 1.0, L, api_name="/generate") for s in range(3)]
    jobs.append(client.submit(handle_file(str(files["box"])), api_name="/tokenize"))
    for job in jobs:
        job.result(timeout=120)
    assert session.peak == 1  # four requests at once reached the model one after another


def test_work_folder_outside_temp_and_cwd_is_served(session, files):
    """`lost app --workdir` anywhere: gradio serves only the cwd, the temp folder and the paths it is given."""
    import shutil
    import tempfile
    import uuid

    work = Path.home() / f".lost-app-test-{uuid.uuid4().hex[:8]}"
    if str(work).startswith((tempfile.gettempdir(), str(Path.cwd()))):
        pytest.skip("the home folder is inside the temp folder or the working directory")
    other = AppSession(session.pipe, work, resolution=24, chamfer_points=2000)
    srv = serve(build_app(other), files=other.workdir)
    try:
        out = Client(srv.url, verbose=False).predict(handle_file(str(files["box"])), api_name="/tokenize")
        assert load_tokens(out[1]).k == R and len(load(out[2]).faces) > 0
    finally:
        srv.close()
        shutil.rmtree(work, ignore_errors=True)


def test_server_stops_cleanly(session):
    srv = serve(build_app(session), host="127.0.0.1")
    port = int(srv.url.rstrip("/").rsplit(":", 1)[1])
    assert urllib.request.urlopen(srv.url, timeout=10).status == 200
    srv.close()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # nobody listens any more
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # and the port is free


def test_low_memory_moves_one_component_at_a_time(bundle):
    plain = LostPipeline.from_pretrained(bundle, device="cpu")
    low = LostPipeline.from_pretrained(bundle, device="cpu", low_memory=True)
    mesh = box_mesh()
    a, b = plain.tokenize(mesh), low.tokenize(mesh)
    assert torch.allclose(a.tokens, b.tokens)
    assert low.moves == ["vae", "tokenizer"] and low.resident is None and plain.moves == []
    low.decode(b.tokens, k=2, steps=2, resolution=16)
    assert low.moves[2:] == ["tokenizer", "vae"]
    out = low.generate("a chair", n=1, config=GenerateConfig(steps=2, resolution=16))
    assert low.moves[4:] == ["text_encoder", "gpt", "tokenizer", "vae"] and out.tokens.shape == (1, L, 32)


def test_cli_errors_are_one_line(capsys, bundle, monkeypatch, tmp_path):
    code, _, err = cli(capsys, "app", "--model", str(tmp_path / "nowhere"))
    assert code == 2 and "model bundle directory not found" in one_error(err, tmp_path / "nowhere")
    with socket.socket() as s:  # a port somebody else holds
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        code, _, err = cli(capsys, "app", "--model", str(bundle), "--port", str(taken))
    assert code == 2 and f"--port {taken}: cannot listen there" in err
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if the extra were not installed
    code, _, err = cli(capsys, "app", "--model", str(bundle))
    assert code == 2 and 'pip install -e ".[app]"' in err and err.count("\n") == 1


def test_cli_serves_until_interrupted(bundle, monkeypatch, tmp_path):
    """`lost app` loads the bundle, serves the page, and on Ctrl-C (a KeyboardInterrupt while it waits) stops
    the server and exits 130."""
    from lostcli.cli.app import main

    seen = {}

    def interrupted(self):
        seen["status"] = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).status
        raise KeyboardInterrupt

    monkeypatch.setattr(gradio.Blocks, "block_thread", interrupted)
    port = free_port()
    with pytest.raises(SystemExit) as e:
        main(["app", "--model", str(bundle), "--port", str(port), "--workdir", str(tmp_path / "w")])
    assert e.value.code == 130 and seen["status"] == 200
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # closed on the way out


def test_bundle_without_gpt_tokenizes_and_refuses_generation_in_one_line(tmp_path, files):
    """A bundle straight from `lost tokenizer export` (no gpt/): Tokenize works, Generate says what is missing."""
    plain = make_bundle(tmp_path)
    session = AppSession(LostPipeline.from_pretrained(plain, device="cpu"), tmp_path / "work", resolution=24,
                         chamfer_points=2000)
    srv = serve(build_app(session), files=session.workdir)
    try:
        c = Client(srv.url, verbose=False)
        assert load_tokens(c.predict(handle_file(str(files["box"])), api_name="/tokenize")[1]).k == R
        with pytest.raises(AppError) as e:
            c.predict("a chair", 0, 1, 2.0, 1.0, R, api_name="/generate")
        assert "component 'gpt' is missing" in str(e.value) and "\n" not in str(e.value)
    finally:
        srv.close()
