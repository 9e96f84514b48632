"""A real browser on `lost app`: headless Chromium (the Debian package, driven by playwright) opens the page,
generates, uploads a mesh on the Tokenize tab, moves the prefix slider to the cached longest prefix, completes a
shape, and screenshots each tab (examples/app_browser.py, which also makes the README's screenshots). Skipped
where Chromium or playwright is absent."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the app extra is not installed")
pytest.importorskip("playwright", reason="playwright is not installed (pip install playwright)")

REPO = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("app_browser", REPO / "examples" / "app_browser.py")
app_browser = importlib.util.module_from_spec(spec)
spec.loader.exec_module(app_browser)

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("one_thread_module"),
              pytest.mark.skipif(app_browser.find_chromium() is None, reason="no chromium (apt-get install chromium)")]


def test_browser_uses_every_tab(tmp_path):
    from lostcli.pipeline import LostPipeline
    from lostcli.web.server import serve
    from lostcli.web.session import AppSession
    from lostcli.web.ui import build_app

    from test_generate import add_generator
    from test_pipeline import box_mesh, make_bundle

    bundle = add_generator(make_bundle(tmp_path), tmp_path)
    mesh = tmp_path / "box.glb"
    box_mesh().export(mesh)
    session = AppSession(LostPipeline.from_pretrained(bundle, device="cpu"), tmp_path / "work", resolution=24,
                         chamfer_points=4000)
    server = serve(build_app(session), files=session.workdir)
    try:
        report = app_browser.drive(server.url, mesh, tmp_path / "shots", session.pipe.num_tokens,
                                   app_browser.find_chromium(), timeout_s=120)
    finally:
        server.close()
    assert report["external_requests"] == []  # nothing fetched from the internet
    assert len(session.uploads) == 1 and len(session.decodes) == 4  # the page uploaded and decoded 1, 2, 4, 8
    assert set(report) >= {"upload_to_k1_s", "slider_to_cached_decode_s", "generate_s", "complete_s"}
    assert len(report["slider_moves_s"]) == 5  # k = 2, 4, 8, then Home and End: each prefix shown on the page
    for shot in report["screenshots"]:
        img = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
        assert img.shape[1] == 1280 and img.std() > 10  # a drawn page, not a blank one
