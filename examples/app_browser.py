"""Drive `lost app` in a real (headless) Chromium: generate, tokenize a mesh and slide over its prefixes,
complete it; save a screenshot of each tab and time what a user waits for.

    pip install -e ".[app]" playwright      # playwright drives the Debian chromium package; no browser download
    python examples/app_browser.py --model runs/demo/bundle --mesh chair.glb --out docs/

It serves the bundle itself on a free 127.0.0.1 port. Writes OUT/app_generate.png,
OUT/app_tokenize.png, OUT/app_complete.png and OUT/app_browser.json: the seconds from the Tokenize upload to
the k = 1 decode on the page, from a slider move to a cached decode (median of a sweep over every prefix), from
the Generate click to its samples,
and every request the page made to a host other than the app's (an offline page makes none).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

CHROMIUM_ARGS = ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"]


def find_chromium() -> str | None:
    """The system Chromium (Debian: apt-get install chromium), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def _wait_text(where, text: str, timeout_s: float) -> float:
    """Seconds until `text` is visible in `where` (the page, or the open tab's panel)."""
    t0 = time.perf_counter()
    where.get_by_text(text).first.wait_for(state="visible", timeout=timeout_s * 1000)
    return time.perf_counter() - t0


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()
    page.wait_for_timeout(300)


def _generate(page, out: Path, timeout_s: float) -> float:
    _tab(page, "Generate")
    t0 = time.perf_counter()
    panel = page.get_by_role("tabpanel")
    panel.get_by_role("button", name="Generate").click()
    panel.get_by_text("sample(s),").first.wait_for(state="visible", timeout=timeout_s * 1000)
    seconds = time.perf_counter() - t0
    page.wait_for_timeout(3000)  # the 3D viewer draws after its file arrives
    page.screenshot(path=str(out / "app_generate.png"), full_page=True)
    return seconds


def _tokenize(page, mesh: Path, out: Path, num_tokens: int, timeout_s: float) -> dict:
    _tab(page, "Tokenize")
    panel = page.get_by_role("tabpanel")
    t0 = time.perf_counter()
    panel.locator("input[type=file]").first.set_input_files(str(mesh))
    k1 = _wait_text(panel, f"of {num_tokens} tokens", timeout_s)
    panel.get_by_role("row").filter(has_text=str(num_tokens)).last.wait_for(timeout=timeout_s * 1000)
    ladder = time.perf_counter() - t0
    slider = panel.locator("input[type=range]").first
    slider.focus()
    from lostcli.web.session import prefix_ladder

    ladder_ks = prefix_ladder(num_tokens)
    moves = []  # every prefix, decoded at upload: each move is answered from the cache
    for key, k in [*[("ArrowRight", k) for k in ladder_ks[1:]], ("Home", 1), ("End", num_tokens)]:
        t1 = time.perf_counter()
        slider.press(key)
        panel.get_by_text(f"k = {k} of {num_tokens} tokens").first.wait_for(timeout=timeout_s * 1000)
        moves.append(time.perf_counter() - t1)
    panel.get_by_text("from the cache").first.wait_for(timeout=timeout_s * 1000)
    page.wait_for_timeout(3000)
    page.screenshot(path=str(out / "app_tokenize.png"), full_page=True)
    return {"upload_to_k1_s": round(k1, 3), "upload_to_all_prefixes_s": round(ladder, 3),
            "slider_to_cached_decode_s": round(sorted(moves)[len(moves) // 2], 3),
            "slider_moves_s": [round(m, 3) for m in moves]}


def _complete(page, mesh: Path, out: Path, timeout_s: float) -> float:
    _tab(page, "Complete")
    panel = page.get_by_role("tabpanel")
    panel.locator("input[type=file]").first.set_input_files(str(mesh))
    page.wait_for_timeout(500)
    t0 = time.perf_counter()
    panel.get_by_role("button", name="Complete").click()
    panel.get_by_text("(kept ").first.wait_for(state="visible", timeout=timeout_s * 1000)
    seconds = time.perf_counter() - t0
    page.wait_for_timeout(3000)
    page.screenshot(path=str(out / "app_complete.png"), full_page=True)
    return seconds


def drive(url: str, mesh: Path, out: Path, num_tokens: int, chromium: str, timeout_s: float = 600) -> dict:
    """Open the page at `url` in headless Chromium, use each tab, screenshot it; the timings and any request
    that left the app's host."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    host = urlparse(url).netloc
    external: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("request", lambda r: external.append(r.url)
                if urlparse(r.url).scheme in ("http", "https", "ws", "wss") and urlparse(r.url).netloc != host
                else None)
        page.goto(url, wait_until="networkidle")
        page.get_by_text("Level-of-Semantics tokens").wait_for(timeout=60_000)
        print("page open; Generate ...", file=sys.stderr, flush=True)
        report = {"generate_s": round(_generate(page, out, timeout_s), 3)}
        print("Tokenize ...", file=sys.stderr, flush=True)
        report.update(_tokenize(page, mesh, out, num_tokens, timeout_s))
        print("Complete ...", file=sys.stderr, flush=True)
        report["complete_s"] = round(_complete(page, mesh, out, timeout_s), 3)
        browser.close()
    report["external_requests"] = external
    report["screenshots"] = [str(out / f"app_{t}.png") for t in ("generate", "tokenize", "complete")]
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="bundle to serve (e.g. runs/demo/bundle)")
    ap.add_argument("--mesh", type=Path, required=True, help="mesh to upload on the Tokenize and Complete tabs")
    ap.add_argument("--out", type=Path, default=Path("docs"))
    ap.add_argument("--resolution", type=int, default=128)
    args = ap.parse_args()
    chromium = find_chromium()
    if chromium is None:
        raise SystemExit("no chromium on PATH (Debian: apt-get install chromium)")
    from lostcli.pipeline import LostPipeline
    from lostcli.web.server import serve
    from lostcli.web.session import AppSession
    from lostcli.web.ui import build_app

    pipe = LostPipeline.from_pretrained(args.model)
    session = AppSession(pipe, args.out / ".app_work", resolution=args.resolution)
    server = serve(build_app(session), files=session.workdir)
    try:
        report = drive(server.url, args.mesh, args.out, pipe.num_tokens, chromium)
    finally:
        server.close()
    (args.out / "app_browser.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
