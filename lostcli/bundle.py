"""The model bundle on disk: the `bundle.json` schema, its defaults, and reading and writing a bundle folder.

A bundle is one folder holding every model `lost` needs at inference, each a model folder
(`config.json` + `model.safetensors`, see `persist`):

    BUNDLE/bundle.json    {"format": 1, "model_id": <sha256 of tokenizer/model.safetensors>,
                           "components": {"vae": "vae", "tokenizer": "tokenizer", ...},
                           "tokenizer": {"steps": 25, "guidance": 3.0, "scheduler": "flow", "shift": 1.0},
                           "num_tokens": R, "token_dim": D, "latent_shape": [C, H, W],
                           "sources": {component: where it came from},
                           "gpt": {...generation defaults...}}        (the last one once a GPT joined)
    BUNDLE/vae/           the shape VAE (`ShapeVAE.save_pretrained`)
    BUNDLE/tokenizer/     the LoST tokenizer (`LoSTTokenizer.save_pretrained`)
    BUNDLE/gpt/, BUNDLE/text_encoder/   the LoST-GPT and its text encoder (`lost gpt export`)

The model id names the tokenizer weights: tokens only mean something to the tokenizer that wrote them,
so a tokens file records the id and loading it against another bundle fails.

`export_bundle` (`lost tokenizer export`) writes the vae and tokenizer; `lost gpt export` adds gpt and
text_encoder with `write_components` + `gpt_entry` + `write_bundle`. Components are swapped in whole and
bundle.json is replaced last, atomically.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import CheckpointError, ConfigError
from .persist import WEIGHTS_NAME, atomic_dir, atomic_write_json

BUNDLE_NAME = "bundle.json"
BUNDLE_FORMAT = 1
REQUIRED = ("vae", "tokenizer")  # components every bundle has; gpt / text_encoder are optional
# when the tokenizer export names none; "shift" is the flow sampler's time shift (exports before it: 1.0)
SAMPLING_DEFAULTS = {"steps": 25, "guidance": 3.0, "scheduler": "flow", "shift": 1.0, "temperature": 1.0}
# generation settings when bundle.json has no "gpt" entry, and those a GPT export does not name
GENERATION_DEFAULTS = {"guidance": 3.0, "temperature": 1.0, "guidance_schedule": "constant"}


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 16 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def read_bundle(directory: str | Path) -> dict[str, Any]:
    """The parsed and checked `bundle.json` of a bundle folder.

    Raises:
        CheckpointError: no bundle.json, malformed JSON, unknown format, or a required component missing.
    """
    directory = Path(directory)
    path = directory / BUNDLE_NAME
    if not path.is_file():
        what = "no such folder" if not directory.exists() else f"no {BUNDLE_NAME} (not a model bundle)"
        raise CheckpointError(f"{directory}: {what}; make one with lost tokenizer export")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable JSON ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("components"), dict):
        raise CheckpointError(f"{path}: expected an object with a 'components' mapping")
    if meta.get("format") != BUNDLE_FORMAT:
        raise CheckpointError(f"{path}: bundle format {meta.get('format')!r}, this lost reads {BUNDLE_FORMAT}")
    if not isinstance(meta.get("model_id"), str) or not meta["model_id"]:
        raise CheckpointError(f"{path}: no model_id")
    for name in REQUIRED:
        sub = meta["components"].get(name)
        if not isinstance(sub, str) or not (directory / sub / "config.json").is_file():
            raise CheckpointError(f"{directory / str(sub or name)}: component '{name}' is missing from the bundle")
    return meta


def _previous(path: Path) -> dict[str, Any]:
    """What a bundle.json being replaced held (damaged or partial ones count as empty)."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    if not isinstance(meta, dict):
        return {}
    return {k: meta[k] for k in ("components", "sources") if isinstance(meta.get(k), dict)}


def write_components(directory: str | Path, writers: dict[str, Callable[[Path], Any]]) -> None:
    """Write component folders: `writers[name](tmp)` fills a fresh temporary folder, which then replaces
    `directory/name` whole (a reader never sees half a component)."""
    for name, write in writers.items():
        with atomic_dir(Path(directory) / name) as tmp:
            write(tmp)


def write_bundle(directory: str | Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Replace `directory/bundle.json` with `meta` (atomically); `meta`."""
    atomic_write_json(Path(directory) / BUNDLE_NAME, meta)
    return meta


def sampling_defaults(extra_config: Any) -> dict[str, Any]:
    """The "tokenizer" entry: sampler settings a tokenizer export's extra config records (`sampling`, or the
    run's `tokenizer.scheduler`), the rest from `SAMPLING_DEFAULTS`."""
    extra = extra_config if isinstance(extra_config, dict) else {}
    out = dict(SAMPLING_DEFAULTS)
    run_tok = extra.get("run", {}).get("tokenizer", {}) if isinstance(extra.get("run"), dict) else {}
    if isinstance(run_tok, dict) and isinstance(run_tok.get("scheduler"), str):
        out["scheduler"] = run_tok["scheduler"]
    sampling = extra.get("sampling")
    if isinstance(sampling, dict):
        out.update({k: sampling[k] for k in SAMPLING_DEFAULTS if k in sampling})
    return out


def gpt_entry(config: Any, sampling: dict[str, Any], model_id: str, text_encoder: str, params: int) -> dict[str, Any]:
    """The "gpt" entry: the GPT's shape (`GPTConfig`), its sampling defaults (those of its export over
    `GENERATION_DEFAULTS`), the model id of the tokens it was trained on, its text encoder spec, its size."""
    return {"num_tokens": config.num_tokens, "token_dim": config.token_dim, "cond_dim": config.cond_dim,
            **GENERATION_DEFAULTS, "sample_steps": config.diffloss.sample_steps, **sampling,
            "model_id": model_id, "text_encoder": text_encoder, "params": params}


def export_bundle(
    tokenizer_run_or_export: str | Path, vae_dir: str | Path, out: str | Path, vae_preset: str | None = None
) -> dict[str, Any]:
    """Write (or update) a bundle from a tokenizer run/export and the shape VAE it was trained on.

    Components other than vae/tokenizer already in `out` (gpt, text_encoder) are kept.

    Args:
        tokenizer_run_or_export: a tokenizer export folder, or a run directory holding `export/`.
        vae_dir: anything `resolve_vae` accepts (our VAE export, a bare checkpoint with `vae_preset`, ...).
        out: the bundle folder.

    Returns:
        the bundle.json content written.

    Raises:
        CheckpointError / ConfigError: unloadable parts, or a tokenizer whose latent shape is not the VAE's.
    """
    from .latent.hub import resolve_vae
    from .models.lost import LoSTTokenizer

    out = Path(out)
    tokenizer = LoSTTokenizer.from_pretrained(tokenizer_run_or_export)
    vae = resolve_vae(str(vae_dir), preset=vae_preset)
    if list(tokenizer.config.latent_shape) != list(vae.latent_shape):
        raise ConfigError(f"{tokenizer_run_or_export}: tokenizer latent {list(tokenizer.config.latent_shape)} "
                          f"does not match the VAE's {list(vae.latent_shape)} ({vae_dir})")
    old: dict[str, Any] = {}
    if out.exists():
        if not out.is_dir():
            raise CheckpointError(f"{out}: exists and is not a folder")
        if (out / BUNDLE_NAME).is_file():
            old = _previous(out / BUNDLE_NAME)
        elif any(out.iterdir()):
            raise CheckpointError(f"{out}: folder exists, is not empty and holds no {BUNDLE_NAME}")
    out.mkdir(parents=True, exist_ok=True)
    write_components(out, {"vae": vae.save_pretrained, "tokenizer": tokenizer.save_pretrained})
    return write_bundle(out, {
        "format": BUNDLE_FORMAT,
        "model_id": file_sha256(out / "tokenizer" / WEIGHTS_NAME),
        "components": {**old.get("components", {}), "vae": "vae", "tokenizer": "tokenizer"},
        "tokenizer": sampling_defaults(tokenizer.extra_config),
        "num_tokens": tokenizer.num_registers,
        "token_dim": tokenizer.config.token_dim,
        "latent_shape": list(vae.latent_shape),
        "sources": {**old.get("sources", {}), "vae": str(vae_dir), "tokenizer": str(tokenizer_run_or_export)},
    })
