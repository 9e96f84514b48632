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
    """Global options; `--debug` is read by the entry point before the app runs."""


app.command("info", help="Versions, device, threads and the pretrained weights this machine can see.")(info_cmd.info)


def _register() -> None:
    """Attach command groups; each lives in its own module (heavy imports happen inside the commands)."""
    from . import (dataset, dataset_images, dataset_models, demo, eval as eval_cmd, gpt, image3d, rida, teacher,
                   tokenizer, tokens, vae)

    dataset.app.command("images")(dataset_images.images)
    dataset.app.command("latents")(dataset_models.latents)
    dataset.app.command("lift")(image3d.lift)
    dataset.app.command("features")(teacher.features)
    dataset.app.command("tokens")(tokens.dataset_tokens)
    tokenizer.app.command("export")(tokens.tokenizer_export)
    app.add_typer(dataset.app, name="dataset", help="Build, prepare and inspect shape datasets.")
    app.add_typer(vae.app, name="vae", help="Shape VAEs (Direct3D triplane, TRELLIS stage 1): train, check, reconstruct.")
    app.add_typer(teacher.app, name="teacher", help="Semantic teachers: train the built-in one, evaluate retrieval.")
    app.add_typer(rida.app, name="rida", help="RIDA: align the 3D latent space with the teacher; retrieval table.")
    app.add_typer(tokenizer.app, name="tokenizer", help="The LoST tokenizer: train, export a model bundle.")
    app.add_typer(gpt.app, name="gpt", help="LoST-GPT: train text -> tokens, export into a model bundle.")
    app.add_typer(image3d.app, name="image3d", help="Image to 3D (Direct3D's DiT): train the tiny model on renders.")
    app.add_typer(eval_cmd.app, name="eval", help="Evaluation: render classifier, reconstruction table.")
    app.command("train-tokenizer", help="Alias of `lost tokenizer train`.")(tokenizer.train)
    app.command("tokenize", help="Mesh -> ordered LoST tokens (safetensors with metadata).")(tokens.tokenize)
    app.command("decode", help="Tokens (any prefix) -> mesh and preview; --progressive for several prefixes.")(tokens.decode)
    from .generate import generate as generate_cmd
    app.command("generate", help="Text -> shapes with LoST-GPT: a mesh + preview per sample, and a grid.")(generate_cmd)
    from .bench import bench as bench_cmd
    app.command("bench", help="Speed and memory: training-step samples/s, tokenize/decode/generate latency, MFU.")(bench_cmd)
    app.command("demo")(demo.demo)
    from .webapp import app as app_cmd
    app.command("app", help="A local web page: generate, tokenize with a prefix slider, complete (needs the app extra).")(app_cmd)


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
