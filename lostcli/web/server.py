"""Start and stop the page: `serve` launches a built app on HOST:PORT in this process and returns a handle."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

MISSING = ("lost app needs the web extra, which is not installed: pip install -e \".[app]\" "
           "(or pip install \"lostcli[app]\")")


def require_gradio():
    """The gradio module, or a ConfigError with the install command when the `app` extra is missing."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    try:
        import gradio
    except ImportError:
        raise ConfigError(MISSING) from None
    return gradio


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def check_port(host: str, port: int) -> None:
    """ConfigError when HOST:PORT cannot be bound (taken, or not an address of this machine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise ConfigError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})") from None


@dataclass
class Server:
    app: object  # the gr.Blocks
    url: str

    def close(self) -> None:
        """Stop serving: the port is free again when this returns."""
        self.app.close()

    def wait(self) -> None:
        """Serve until interrupted (Ctrl-C), then close."""
        try:
            self.app.block_thread()
        finally:
            self.close()


def serve(app, host: str = "127.0.0.1", port: int | None = None, files: str | os.PathLike | None = None,
          max_file_mb: int = 200, quiet: bool = True) -> Server:
    """Launch `app` (`ui.build_app`) without blocking; uploads above `max_file_mb` are refused by the server.

    `files`: the session's work folder. Gradio serves only files under the working directory, the system's
    temporary folder and the paths it is given, so a `--workdir` elsewhere must be named here."""
    from .ui import PAGE_CSS

    port = free_port(host) if port is None else int(port)
    check_port(host, port)
    _, url, _ = app.launch(css=PAGE_CSS, server_name=host, server_port=port, prevent_thread_lock=True, quiet=quiet,
                           show_error=True, ssr_mode=False, max_file_size=f"{int(max_file_mb)}mb", share=False,
                           inbrowser=False, footer_links=["api"],
                           allowed_paths=[str(Path(files).resolve())] if files is not None else None)
    return Server(app, url.rstrip("/") + "/" if url else f"http://{host}:{port}/")
