"""`lost app`: the local web page (registered by `app.py`; the page itself is `lostcli.web`)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import ConfigError
from .common import console, require_dir


def app(
    model: Annotated[Path, typer.Option("--model", "-m", help="Model bundle (lost demo's OUT/bundle, or lost tokenizer export).")],
    host: Annotated[str, typer.Option("--host", help="Address to listen on (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 7860,
    device: Annotated[Optional[str], typer.Option("--device", help="cpu or cuda (default: cuda when available).")] = None,
    low_memory: Annotated[bool, typer.Option("--low-memory", help="Keep only the component in use on the accelerator (load, run, release).")] = False,
    resolution: Annotated[int, typer.Option("--resolution", help="Marching-cubes grid of every decode.")] = 128,
    max_faces: Annotated[int, typer.Option("--max-faces", help="Refuse uploads with more triangles.")] = 500_000,
    workdir: Annotated[Optional[Path], typer.Option("--workdir", help="Folder for tokens, decodes and samples (default: a temporary one).")] = None,
) -> None:
    """A local web page: generate from text, tokenize a mesh and slide over its prefixes, complete a shape.

    Needs the web extra: pip install -e ".[app]". Runs offline; stop it with Ctrl-C.

    Example: lost app --model runs/demo/bundle --port 7860
    """
    from ..web.server import require_gradio

    require_gradio()
    require_dir(model, "model bundle")
    if device not in (None, "cpu", "cuda"):
        raise ConfigError(f"--device {device}: expected cpu or cuda")
    if resolution < 16 or max_faces < 1:
        raise ConfigError(f"--resolution {resolution} / --max-faces {max_faces}: need >= 16 and >= 1")
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible")
    from ..pipeline import LostPipeline
    from ..web.server import check_port, serve
    from ..web.session import AppSession
    from ..web.ui import build_app

    check_port(host, port)  # before minutes of loading
    pipe = LostPipeline.from_pretrained(model, device=device, low_memory=low_memory)
    work = workdir or Path(tempfile.mkdtemp(prefix="lost-app-"))
    session = AppSession(pipe, work, resolution=resolution, max_faces=max_faces)
    server = serve(build_app(session), host=host, port=port, files=work)
    console.print(f"lost app: {server.url} (model {pipe.model_id[:12]}, {pipe.num_tokens} tokens, "
                  f"device {pipe.device}{', low memory' if low_memory else ''}; files in {work}); Ctrl-C stops it")
    server.wait()
