"""`lost tokenize`, `lost decode`, `lost tokenizer export` and `lost dataset tokens`: thin wrappers over
`lostcli.pipeline` and `lostcli.batch.tokens` (registered by `app.py`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import ConfigError, DataError
from .common import console, err_console, require_dir

ModelOpt = Annotated[Path, typer.Option("--model", "-m", help="Model bundle folder (lost tokenizer export).")]


def tokenizer_export(
    run: Annotated[Path, typer.Argument(help="Tokenizer run directory (or its export/ folder).")],
    vae: Annotated[str, typer.Option("--vae", help="The shape VAE the tokenizer was trained on (folder, weights file + --preset, hub id).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle folder to write or update.")],
    preset: Annotated[Optional[str], typer.Option("--preset", help="Preset of a bare VAE checkpoint.")] = None,
) -> None:
    """Write a model bundle (bundle.json + vae/ + tokenizer/) that lost tokenize / decode load.

    Example: lost tokenizer export runs/tokenizer --vae runs/vae/export --out models/lost-tiny
    """
    from ..bundle import export_bundle

    meta = export_bundle(run, vae, out, vae_preset=preset)
    console.print(f"bundle {out}: model id {meta['model_id'][:12]}, {meta['num_tokens']} tokens x "
                  f"{meta['token_dim']}, latent {meta['latent_shape']}; components {', '.join(meta['components'])}")


def tokenize(
    mesh: Annotated[Path, typer.Argument(help="Mesh file (.glb, .gltf, .obj, .ply, .stl, .off).")],
    model: ModelOpt,
    tokens: Annotated[Optional[int], typer.Option("--tokens", "-k", help="Tokens to keep (a prefix; default all R).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Tokens file (.safetensors).")] = Path("tokens.safetensors"),
    up: Annotated[str, typer.Option("--up", help="Up axis of the input: y or z.")] = "y",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the surface sampling.")] = 0,
) -> None:
    """Write a mesh as its first k ordered LoST tokens (plus its source frame, for lost decode).

    Example: lost tokenize chair.glb --model models/lost-tiny --tokens 16 --out chair.safetensors
    """
    from ..data.mesh import load_mesh, up_rotation
    from ..pipeline import LostPipeline, save_tokens

    up_rotation(up)  # a bad --up fails before any loading
    t0 = time.time()
    pipe = LostPipeline.from_pretrained(model)
    if tokens is not None and not 1 <= tokens <= pipe.num_tokens:
        raise ConfigError(f"{model}: the model writes 1 to {pipe.num_tokens} tokens, --tokens {tokens} is outside")
    result = pipe.tokenize(load_mesh(mesh), k=tokens, seed=seed, up=up, source=str(mesh))
    save_tokens(out, result)
    console.print(f"{mesh.name}: {result.k} of {pipe.num_tokens} tokens x {pipe.token_dim} -> {out} "
                  f"(model {pipe.model_id[:12]}, {time.time() - t0:.1f} s)")


def _prefixes(spec: str, available: int, path: Path) -> list[int]:
    """"1,4,16,all" -> [1, 4, 16, available]; each in 1..available."""
    try:
        ks = [available if s.strip() == "all" else int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--progressive {spec}: expected comma-separated token counts or 'all'") from None
    bad = [k for k in ks if not 1 <= k <= available]
    if not ks or bad:
        raise DataError(f"{path}: holds {available} tokens; --progressive {spec} asks for {bad or 'none'}")
    return ks


def decode(
    tokens_file: Annotated[Path, typer.Argument(help="Tokens file written by lost tokenize.")],
    model: ModelOpt,
    tokens: Annotated[Optional[int], typer.Option("--tokens", "-k", help="Decode the first k tokens (default all in the file).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Mesh to write (.glb, .obj or .ply).")] = Path("shape.glb"),
    preview: Annotated[Optional[Path], typer.Option("--preview", help="PNG of the four views (progressive: default OUT.png).")] = None,
    progressive: Annotated[Optional[str], typer.Option("--progressive", help="Prefixes to decode, e.g. 1,4,16,all: one mesh each + a PNG strip.")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Sampler steps (default: the bundle's, 25).")] = None,
    guidance: Annotated[Optional[float], typer.Option("--guidance", help="Classifier-free guidance scale (default: the bundle's, 3.0).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the starting noise.")] = 0,
    resolution: Annotated[int, typer.Option("--resolution", help="Marching-cubes grid resolution.")] = 128,
    unit_frame: Annotated[bool, typer.Option("--unit-frame", help="Keep the mesh in the unit frame, not the source mesh's.")] = False,
) -> None:
    """Decode a prefix of a tokens file back to a mesh (in the source mesh's frame when it is recorded).

    Example: lost decode chair.safetensors --model models/lost-tiny --tokens 4 --out chair4.glb --preview chair4.png
    """
    from ..batch.tokens import decode_to_files
    from ..data.mesh import EXPORTABLE
    from ..pipeline import LostPipeline, load_tokens

    if out.suffix.lower() not in EXPORTABLE:
        raise ConfigError(f"{out}: --out must be a mesh file ({', '.join(EXPORTABLE)})")
    if tokens is not None and progressive is not None:
        raise ConfigError("--tokens and --progressive: give one of them")
    pipe = LostPipeline.from_pretrained(model)
    loaded = load_tokens(tokens_file, pipeline=pipe)
    if tokens is not None and tokens < 1:
        raise ConfigError(f"--tokens {tokens}: must be >= 1")
    if tokens is not None and tokens > loaded.k:
        raise DataError(f"{tokens_file}: holds {loaded.k} tokens; --tokens {tokens} asks for more")
    ks = _prefixes(progressive, loaded.k, tokens_file) if progressive else [tokens or loaded.k]
    if progressive and preview is None:
        preview = out.with_suffix(".png")
    result = decode_to_files(pipe, loaded, ks, out, progressive=progressive is not None, preview=preview,
                             steps=steps, guidance=guidance, seed=seed, resolution=resolution,
                             source_frame=not unit_frame, tokens_file=str(tokens_file))
    for k in result.empty:
        err_console.print(f"warning: k = {k}: the decoded latent holds no surface; no mesh written "
                          f"(recorded in {result.record})", highlight=False)
    written = [o["mesh"] for o in result.outputs if o["mesh"]]
    console.print(f"decoded k = {', '.join(map(str, ks))} -> {', '.join(written) or 'no mesh'}"
                  f"{f'; preview {result.preview}' if result.preview else ''} ({result.seconds:.1f} s)")


def dataset_tokens(
    data: Annotated[Path, typer.Argument(help="Prepared dataset directory.")],
    model: ModelOpt,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Shapes per forward pass.")] = 16,
    points: Annotated[Optional[int], typer.Option("--points", help="Surface points per shape (default: as the VAE was trained).")] = None,
) -> None:
    """Cache all R tokens of every shape (table `tokens`) for LoST-GPT training; resumable.

    Example: lost dataset tokens prepared --model models/lost-tiny
    """
    from ..batch.tokens import tokenize_dataset
    from ..pipeline import LostPipeline
    from .common import ProgressBar, process_info

    require_dir(data, "dataset")
    rank, world, wait = process_info()
    device = None
    if world > 1:
        import torch

        device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    pipe = LostPipeline.from_pretrained(model, device=device)
    t0 = time.time()
    with ProgressBar("tokens", None, enabled=rank == 0) as tick:
        result = tokenize_dataset(data, pipe, points=points, batch_size=batch_size, rank=rank, world_size=world,
                                  bundle=str(model), progress=tick)
    wait()
    if rank == 0:
        failed = f", {len(result.failed)} failed (non-finite tokens, recorded)" if result.failed else ""
        console.print(f"tokenized {result.done} shapes, skipped {result.skipped} done{failed} "
                      f"({time.time() - t0:.1f} s); {pipe.num_tokens} tokens x {pipe.token_dim}, "
                      f"model {pipe.model_id[:12]}")
