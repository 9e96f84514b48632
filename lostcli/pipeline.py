"""The model bundle and `LostPipeline`: mesh -> ordered tokens -> any prefix -> latent -> mesh.

A bundle is one folder holding every model `lost` needs at inference, each an HF-style component
folder (`config.json` + `model.safetensors`):

    BUNDLE/bundle.json    {"format": 1, "model_id": <sha256 of tokenizer/model.safetensors>,
                           "components": {"vae": "vae", "tokenizer": "tokenizer", ...},
                           "tokenizer": {"steps": 25, "guidance": 3.0, "scheduler": "flow"}, ...}
    BUNDLE/vae/           the shape VAE (`ShapeVAE.save_pretrained`)
    BUNDLE/tokenizer/     the LoST tokenizer (`LoSTTokenizer.save_pretrained`)
    BUNDLE/gpt/, BUNDLE/text_encoder/   joined later by their own export commands

The model id names the tokenizer weights: tokens only mean something to the tokenizer that wrote them,
so a tokens file records the id and loading it against another bundle fails.

Tokens files (`save_tokens` / `load_tokens`) are safetensors with one tensor "tokens" [K, token_dim]
and string metadata: format, k, token_dim, model_id, source file and the normalisation that mapped the
source mesh into the unit frame (so `lost decode` can put the decoded shape back where it came from).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import trimesh
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import CheckpointError, ConfigError, DataError
from .latent.base import ShapeVAE, load_vae
from .models.lost import WEIGHTS_NAME, LoSTTokenizer

BUNDLE_NAME = "bundle.json"
BUNDLE_FORMAT = 1
REQUIRED = ("vae", "tokenizer")  # components every bundle has; gpt / text_encoder are optional
SAMPLING_DEFAULTS = {"steps": 25, "guidance": 3.0, "scheduler": "flow"}  # when the tokenizer export names none
TOKENS_FORMAT = "lost-tokens/1"
DEFAULT_POINTS = 2048  # surface points fed to the VAE when its run config does not say


# ----------------------------------------------------------------------------------------------------
# Bundle folder
# ----------------------------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 16 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def _sampling_defaults(tokenizer: LoSTTokenizer) -> dict[str, Any]:
    """Sampler settings the tokenizer's trainer recorded (`sampling` or the run's `tokenizer.scheduler`)."""
    extra = tokenizer.extra_config if isinstance(tokenizer.extra_config, dict) else {}
    out = dict(SAMPLING_DEFAULTS)
    run_tok = extra.get("run", {}).get("tokenizer", {}) if isinstance(extra.get("run"), dict) else {}
    if isinstance(run_tok, dict) and isinstance(run_tok.get("scheduler"), str):
        out["scheduler"] = run_tok["scheduler"]
    sampling = extra.get("sampling")
    if isinstance(sampling, dict):
        out.update({k: sampling[k] for k in SAMPLING_DEFAULTS if k in sampling})
    return out


def _replace_dir(tmp: Path, final: Path) -> None:
    """Swap a freshly written component folder into place (the old one is removed only after writing)."""
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)


def _previous(path: Path) -> dict[str, Any]:
    """What a bundle.json being replaced held (damaged or partial ones count as empty)."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    if not isinstance(meta, dict):
        return {}
    return {k: meta[k] for k in ("components", "sources") if isinstance(meta.get(k), dict)}


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
    for name, model in (("vae", vae), ("tokenizer", tokenizer)):
        tmp = out / f".{name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        _replace_dir(tmp, out / name)
    meta = {
        "format": BUNDLE_FORMAT,
        "model_id": file_sha256(out / "tokenizer" / WEIGHTS_NAME),
        "components": {**old.get("components", {}), "vae": "vae", "tokenizer": "tokenizer"},
        "tokenizer": _sampling_defaults(tokenizer),
        "num_tokens": tokenizer.num_registers,
        "token_dim": tokenizer.config.token_dim,
        "latent_shape": list(vae.latent_shape),
        "sources": {**old.get("sources", {}), "vae": str(vae_dir), "tokenizer": str(tokenizer_run_or_export)},
    }
    tmp = out / f".{BUNDLE_NAME}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out / BUNDLE_NAME)
    return meta


# ----------------------------------------------------------------------------------------------------
# Tokens and tokens files
# ----------------------------------------------------------------------------------------------------


@dataclass
class Tokens:
    """The first k tokens of one shape and where they came from."""

    tokens: torch.Tensor  # [K, token_dim] float32, CPU; K = k
    k: int  # number of tokens kept (a prefix of the tokenizer's R)
    normalization: dict | None  # `Normalization.to_dict()` source -> unit frame; None for normalised input
    source: str | None  # the mesh file the tokens describe
    model_id: str  # the bundle's model id (sha256 of the tokenizer weights)


def save_tokens(path: str | Path, tokens: Tokens) -> Path:
    """Write a tokens file (safetensors: "tokens" [K, D] + string metadata), atomically."""
    path = Path(path)
    t = tokens.tokens.detach().to("cpu", torch.float32).contiguous()
    meta = {"format": TOKENS_FORMAT, "k": str(tokens.k), "token_dim": str(t.shape[-1]), "model_id": tokens.model_id}
    if tokens.source is not None:
        meta["source"] = str(tokens.source)
    if tokens.normalization is not None:
        meta["normalization"] = json.dumps(tokens.normalization)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file({"tokens": t}, str(tmp), metadata=meta)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _read_tokens_file(path: Path) -> tuple[torch.Tensor, dict[str, str]]:
    if not path.is_file():
        raise DataError(f"{path}: tokens file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if "tokens" not in f.keys():
                raise DataError(f"{path}: no 'tokens' tensor (holds {sorted(f.keys())})")
            t = f.get_tensor("tokens")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        reason = " ".join(str(e).split())[:120]
        raise DataError(f"{path}: not a readable tokens file ({reason})") from None
    return t, meta


def load_tokens(path: str | Path, pipeline: "LostPipeline | None" = None) -> Tokens:
    """Read and validate a tokens file; with `pipeline`, also check it fits that model.

    Raises:
        DataError: one line naming the file: unreadable or damaged, not [K, D], NaN/inf, metadata that
            disagrees with the tensor, a token dimension or K the model does not have, another model's id.
    """
    path = Path(path)
    t, meta = _read_tokens_file(path)
    if meta.get("format") != TOKENS_FORMAT:
        raise DataError(f"{path}: not a LoST tokens file (format {meta.get('format')!r}, expected {TOKENS_FORMAT})")
    if t.dim() != 2 or t.shape[0] < 1 or not t.is_floating_point():
        raise DataError(f"{path}: tokens tensor is {str(t.dtype).replace('torch.', '')} {list(t.shape)}, "
                        "expected float [K, token_dim] with K >= 1")
    K, D = t.shape
    try:
        k, token_dim = int(meta["k"]), int(meta["token_dim"])
        norm = json.loads(meta["normalization"]) if "normalization" in meta else None
        model_id = meta["model_id"]
    except (KeyError, ValueError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: damaged metadata ({type(e).__name__}: {e})") from None
    if k != K or token_dim != D:
        raise DataError(f"{path}: metadata says {k} tokens of dimension {token_dim}, the tensor is [{K}, {D}]")
    if not torch.isfinite(t).all():
        raise DataError(f"{path}: tokens contain NaN or inf")
    if norm is not None:
        from .data.mesh import Normalization

        try:
            Normalization.from_dict(norm)
        except DataError as e:
            raise DataError(f"{path}: damaged {e}") from None
    if pipeline is not None:
        if D != pipeline.token_dim:
            raise DataError(f"{path}: tokens have dimension {D}, the model's have {pipeline.token_dim}")
        if K > pipeline.num_tokens:
            raise DataError(f"{path}: holds {K} tokens, more than the {pipeline.num_tokens} the model has")
        if model_id != pipeline.model_id:
            raise DataError(f"{path}: tokens of model {model_id[:12]}, not of this model ({pipeline.model_id[:12]}); "
                            "decode them with the bundle that made them")
    return Tokens(tokens=t.float(), k=K, normalization=norm, source=meta.get("source"), model_id=model_id)


def to_source_frame(mesh: trimesh.Trimesh, normalization: dict | None) -> trimesh.Trimesh:
    """A copy of a unit-frame mesh mapped back into its source file's frame (unchanged when None)."""
    from .data.mesh import Normalization

    out = mesh.copy()
    if normalization is not None:
        out.vertices = Normalization.from_dict(normalization).inverse(np.asarray(mesh.vertices, dtype=np.float64))
    return out


# ----------------------------------------------------------------------------------------------------
# Pipeline
# ----------------------------------------------------------------------------------------------------


class LostPipeline:
    """Shape VAE + LoST tokenizer of one bundle: `tokenize` meshes, `decode` token prefixes to meshes.

    Everything works in the unit frame ([-1, 1]^3, PROTOCOLS normalisation); `Tokens.normalization` maps back.
    """

    def __init__(self, vae: ShapeVAE, tokenizer: LoSTTokenizer, model_id: str,
                 sampling: dict[str, Any] | None = None) -> None:
        if list(tokenizer.config.latent_shape) != list(vae.latent_shape):
            raise ConfigError(f"tokenizer latent {list(tokenizer.config.latent_shape)} does not match the VAE's "
                              f"{list(vae.latent_shape)}")
        self.vae = vae.eval()
        self.tokenizer = tokenizer.eval()
        self.model_id = model_id
        self.sampling = {**SAMPLING_DEFAULTS, **(sampling or {})}  # steps, guidance, scheduler

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: torch.device | str | None = None) -> LostPipeline:
        """Load a bundle folder (see `export_bundle`) onto `device` (default: CUDA when available)."""
        directory = Path(directory)
        meta = read_bundle(directory)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        comp = meta["components"]
        vae = load_vae(directory / comp["vae"], device=device)
        tokenizer = LoSTTokenizer.from_pretrained(directory / comp["tokenizer"], device=device)
        sampling = meta.get("tokenizer") if isinstance(meta.get("tokenizer"), dict) else None
        return cls(vae, tokenizer, meta["model_id"], sampling)

    @property
    def device(self) -> torch.device:
        return self.tokenizer.latent_mean.device

    @property
    def num_tokens(self) -> int:
        """R: the most tokens a shape is written into."""
        return self.tokenizer.num_registers

    @property
    def token_dim(self) -> int:
        return self.tokenizer.config.token_dim

    @property
    def num_points(self) -> int:
        """Surface points per shape fed to the VAE encoder (as the VAE was trained)."""
        run = self.vae.extra_config.get("run", {}) if isinstance(self.vae.extra_config, dict) else {}
        loss = run.get("loss", {}) if isinstance(run, dict) else {}
        return int(loss.get("points", DEFAULT_POINTS)) if isinstance(loss, dict) else DEFAULT_POINTS

    def _check_k(self, k: int | None, available: int) -> int:
        k = available if k is None else int(k)
        if not 1 <= k <= available:
            raise ConfigError(f"k={k}: must be between 1 and the {available} tokens available")
        return k

    # -- tokenize -----------------------------------------------------------------------------------

    @torch.no_grad()
    def tokenize_points(self, points: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
        """Unit-frame surface samples points, normals [B, N, 3] -> all R tokens [B, R, token_dim] (float32)."""
        dev = self.device
        z = self.vae.encode(points.to(dev, torch.float32), normals.to(dev, torch.float32))  # [B, C, H, W] mean
        return self.tokenizer.encode(self.tokenizer.normalize(z.float())).float()

    def tokenize(
        self,
        mesh_or_points: trimesh.Trimesh | tuple[np.ndarray, np.ndarray],
        k: int | None = None,
        seed: int = 0,
        up: str = "y",
        source: str | None = None,
    ) -> Tokens:
        """One shape -> its first k tokens (all R when k is None).

        Args:
            mesh_or_points: a mesh in any frame (normalised here, `up` axis rotated to +Y; the transform is
                recorded), or (points, normals) arrays [N, 3] already in the unit frame (no transform).
            seed: seeds the surface sampling of a mesh.
            source: the file the shape came from, recorded in the tokens.
        """
        from .data.mesh import normalize_mesh
        from .data.sampling import sample_surface

        k = self._check_k(k, self.num_tokens)
        if isinstance(mesh_or_points, trimesh.Trimesh):
            unit, norm = normalize_mesh(mesh_or_points, up=up)
            points, normals = sample_surface(unit, self.num_points, seed=seed)
            normalization = norm.to_dict()
        else:
            points, normals = (np.asarray(a, dtype=np.float32) for a in mesh_or_points)
            normalization = None
        if points.ndim != 2 or points.shape[1] != 3 or normals.shape != points.shape:
            raise DataError(f"{source or 'points'}: expected points and normals [N, 3], got "
                            f"{list(points.shape)} and {list(normals.shape)}")
        tokens = self.tokenize_points(torch.from_numpy(points)[None], torch.from_numpy(normals)[None])
        return Tokens(tokens=tokens[0, :k].cpu(), k=k, normalization=normalization, source=source,
                      model_id=self.model_id)

    # -- decode -------------------------------------------------------------------------------------

    @torch.no_grad()
    def decode_latents(
        self,
        tokens: torch.Tensor,
        k: int | Sequence[int] | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int = 0,
    ) -> torch.Tensor:
        """Token prefixes -> raw VAE latents z [B, C, H, W] by the tokenizer's guided diffusion sampler.

        Args:
            tokens: [K, token_dim] or [B, K, token_dim], K <= R.
            k: prefix length for every sample, one per sample, or None for all K.
            steps, guidance: sampler steps and CFG scale (None: the bundle's defaults, 25 and 3.0).
            seed: the batch's noise comes from one generator seeded with this: same inputs, same latents.
        """
        from .models.flow import sample_latents

        tokens = tokens[None] if tokens.dim() == 2 else tokens
        B, K, D = tokens.shape
        if D != self.token_dim or K > self.num_tokens:
            raise ConfigError(f"tokens {list(tokens.shape)} do not fit the model ([B, <= {self.num_tokens}, "
                              f"{self.token_dim}])")
        if k is None or isinstance(k, (int, np.integer)):
            ks = [self._check_k(k, K)] * B
        else:
            ks = [self._check_k(x, K) for x in k]
        if len(ks) != B:
            raise ConfigError(f"k: {len(ks)} prefix lengths for {B} token sequences")
        dev = self.device
        keep = torch.tensor(ks, dtype=torch.long, device=dev)
        generator = torch.Generator(device=dev).manual_seed(int(seed))
        z = sample_latents(self.tokenizer, tokens.to(dev, torch.float32), keep,
                           steps=int(steps if steps is not None else self.sampling["steps"]),
                           guidance=float(guidance if guidance is not None else self.sampling["guidance"]),
                           generator=generator, kind=self.sampling["scheduler"])
        return self.tokenizer.denormalize(z.float())

    def decode(
        self,
        tokens: torch.Tensor,
        k: int | Sequence[int] | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int = 0,
        resolution: int = 128,
    ) -> list[trimesh.Trimesh | None]:
        """Token prefixes [K, D] or [B, K, D] -> one unit-frame mesh per sample (None: no surface found)."""
        if resolution < 1:
            raise ConfigError(f"resolution: must be >= 1, got {resolution}")
        z = self.decode_latents(tokens, k=k, steps=steps, guidance=guidance, seed=seed)
        return [self.vae.to_mesh(zi, resolution=resolution) for zi in z]
