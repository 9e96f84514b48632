"""The `lost` command: one Typer app, one sub-app per command group."""

from __future__ import annotations

import sys
import traceback
from typing import Annotated, Optional

import typer

from .. import __version__
from ..errors import LostError
from . import info as info_cmd

app = typer.Typer(
    name="lost",
    help="LoST: Level-of-Semantics Tokenization for 3D shapes -- datasets, shape VAEs, RIDA, tokenizer, LoST-GPT.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        print(f"lost {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False,
) -> None:
    _state["debug"] = debug


app.command("info", help="Versions, device, threads and the pretrained weights this machine can see.")(info_cmd.info)


def _register() -> None:
    """Attach command groups; each lives in its own module and is imported lazily here."""
    from . import dataset, dataset_models, vae

    dataset.app.command("latents")(dataset_models.latents)

    app.add_typer(dataset.app, name="dataset", help="Build, prepare and inspect shape datasets.")
    app.add_typer(vae.app, name="vae", help="Shape VAEs (Direct3D triplane, TRELLIS stage 1): train, check, reconstruct.")


_register()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `lost` script: user errors become one line on stderr and exit code 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        app(args=args, prog_name="lost")
    except LostError as e:
        if debug:
            traceback.print_exc()
        message = " ".join(str(e).split())  # exactly one line
        sys.stderr.write(f"error: {message}\n")
        sys.stderr.flush()
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        raise SystemExit(130) from None
