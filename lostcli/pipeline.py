"""`LostPipeline`: mesh -> ordered tokens -> any prefix -> latent -> mesh, loaded from a model bundle.

The bundle folder and its `bundle.json` (schema, defaults, `read_bundle`, `export_bundle`) are `bundle.py`'s.
The model id names the tokenizer weights: tokens only mean something to the tokenizer that wrote them,
so a tokens file records the id and loading it against another bundle fails.

Tokens files (`save_tokens` / `load_tokens`) are safetensors with one tensor "tokens" [K, token_dim]
and string metadata: format, k, token_dim, model_id, source file and the normalisation that mapped the
source mesh into the unit frame (so `lost decode` can put the decoded shape back where it came from).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import trimesh
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .bundle import GENERATION_DEFAULTS, SAMPLING_DEFAULTS, read_bundle
from .errors import CheckpointError, ConfigError, DataError
from .latent.base import ShapeVAE, load_vae
from .models.lost import LoSTTokenizer
from .persist import atomic_path

TOKENS_FORMAT = "lost-tokens/1"
DEFAULT_POINTS = 2048  # surface points fed to the VAE when its run config does not say


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
    with atomic_path(path) as tmp:
        save_file({"tokens": t}, str(tmp), metadata=meta)
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


@dataclass
class GenerateConfig:
    """How `LostPipeline.generate` samples; every None means the bundle's default."""

    guidance: float | None = None  # the GPT head's classifier-free guidance scale (1 = none; default 3.0)
    temperature: float | None = None  # GPT head sampling temperature (default 1.0)
    guidance_schedule: str | None = None  # CFG over the tokens: "constant" or "linear" (default "constant")
    num_tokens: int | None = None  # k tokens to generate (default and at most the GPT's length L)
    steps: int | None = None  # diffusion-head sampling steps per token (default: the GPT's)
    resolution: int = 128  # marching-cubes grid
    decode_steps: int | None = None  # tokenizer decoder sampling steps
    decode_guidance: float | None = None  # tokenizer decoder guidance scale


@dataclass
class GenerationResult:
    """What `LostPipeline.generate` made: B = len(prompts) * n samples, prompt-major (sample p * n + j)."""

    tokens: torch.Tensor  # [B, k, token_dim] float32, CPU: the generated (or kept + generated) tokens
    meshes: list[trimesh.Trimesh | None]  # B unit-frame meshes; None: the decoded latent holds no surface
    latents: torch.Tensor  # [B, C, H, W] raw VAE latents the meshes were extracted from, CPU
    prompts: list[str]  # [B] the prompt of each sample
    settings: dict[str, Any]  # seed, guidance, temperature, k, keep, steps, ... as used

    def sample_tokens(self, i: int, model_id: str) -> Tokens:
        """Sample i as a `Tokens` record (unit frame), e.g. to `save_tokens` and continue it with --prefix."""
        return Tokens(tokens=self.tokens[i].clone(), k=int(self.tokens.shape[1]), normalization=None,
                      source=f"generated: {self.prompts[i]}", model_id=model_id)


# ----------------------------------------------------------------------------------------------------
# Pipeline
# ----------------------------------------------------------------------------------------------------


class LostPipeline:
    """Shape VAE + LoST tokenizer of one bundle: `tokenize` meshes, `decode` token prefixes to meshes, and
    `generate` shapes from text (the bundle's gpt/ and text_encoder/, loaded on first use).

    Everything works in the unit frame ([-1, 1]^3, docs/protocols.md normalisation); `Tokens.normalization` maps back.
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
        # generation parts: loaded lazily from the bundle folder (or attached with `set_generator`)
        self.directory: Path | None = None  # the bundle folder, when loaded from one
        self.components: dict[str, str] = {}  # bundle.json "components"
        self.generation: dict[str, Any] = dict(GENERATION_DEFAULTS)  # bundle.json "gpt" sampling defaults
        self._gpt = None
        self._text_encoder = None
        # low-memory mode (`enable_offload`): components wait on the CPU, the one in use runs on this device
        self.offload_device: torch.device | None = None
        self.resident: str | None = None  # the component on the offload device right now (None between calls)
        self.moves: list[str] = []  # "vae", "tokenizer", ...: the components moved there, in order

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: torch.device | str | None = None,
                        low_memory: bool = False) -> LostPipeline:
        """Load a bundle folder (see `bundle.export_bundle`) onto `device` (default: CUDA when available).

        `low_memory`: the weights stay on the CPU and each component moves to `device` only while it runs
        (`enable_offload`): peak accelerator memory is the largest component, not their sum."""
        directory = Path(directory)
        meta = read_bundle(directory)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        comp = meta["components"]
        home = "cpu" if low_memory else device
        vae = load_vae(directory / comp["vae"], device=home)
        tokenizer = LoSTTokenizer.from_pretrained(directory / comp["tokenizer"], device=home)
        sampling = meta.get("tokenizer") if isinstance(meta.get("tokenizer"), dict) else None
        pipe = cls(vae, tokenizer, meta["model_id"], sampling)
        pipe.directory = directory
        pipe.components = {k: v for k, v in comp.items() if isinstance(v, str)}
        if isinstance(meta.get("gpt"), dict):
            pipe.generation.update(meta["gpt"])
        if low_memory:
            pipe.enable_offload(device)
        return pipe

    def enable_offload(self, device: torch.device | str) -> None:
        """Low-memory mode: keep every component on the CPU and move only the one in use to `device`
        (load, run, release), emptying the CUDA cache after each; slower, as weights cross the bus per call."""
        self.offload_device = torch.device(device)
        for module in (self.vae, self.tokenizer, self._gpt, self._text_encoder):
            if module is not None:
                module.to("cpu")

    @contextmanager
    def _running(self, name: str):
        """The component `name` ("vae", "tokenizer", "gpt", "text_encoder") on the offload device for the
        body of the `with`, back on the CPU after it; nothing moves without `enable_offload`."""
        module = self.vae if name == "vae" else self.tokenizer if name == "tokenizer" else getattr(self, name)
        if self.offload_device is None:
            yield module
            return
        module.to(self.offload_device)
        self.resident = name
        self.moves.append(name)
        try:
            yield module
        finally:
            module.to("cpu")
            self.resident = None
            if self.offload_device.type == "cuda":
                torch.cuda.empty_cache()

    @property
    def device(self) -> torch.device:
        """Where inputs go: the offload device in low-memory mode, else the tokenizer's."""
        return self.offload_device if self.offload_device is not None else self.tokenizer.latent_mean.device

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
        with self._running("vae") as vae:
            z = vae.encode(points.to(dev, torch.float32), normals.to(dev, torch.float32))  # [B, C, H, W] mean
        with self._running("tokenizer") as tokenizer:
            return tokenizer.encode(tokenizer.normalize(z.float())).float()

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
        temperature: float | None = None,
    ) -> torch.Tensor:
        """Token prefixes -> raw VAE latents z [B, C, H, W] by the tokenizer's guided diffusion sampler.

        Args:
            tokens: [K, token_dim] or [B, K, token_dim], K <= R.
            k: prefix length for every sample, one per sample, or None for all K.
            steps, guidance: sampler steps and CFG scale (None: the bundle's defaults, 25 and 3.0).
            temperature: scale of the sampler's starting noise (None: the bundle's default, 1.0 unless the
                tokenizer's export names another).
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
        with self._running("tokenizer") as tokenizer:
            z = sample_latents(tokenizer, tokens.to(dev, torch.float32), keep,
                               steps=int(steps if steps is not None else self.sampling["steps"]),
                               guidance=float(guidance if guidance is not None else self.sampling["guidance"]),
                               generator=generator, kind=self.sampling["scheduler"],
                               shift=float(self.sampling["shift"]),
                               temperature=float(temperature if temperature is not None
                                                 else self.sampling["temperature"]))
            return tokenizer.denormalize(z.float())

    def to_meshes(self, z: torch.Tensor, resolution: int = 128) -> list[trimesh.Trimesh | None]:
        """Raw VAE latents [B, C, H, W] -> one unit-frame mesh each (None: no surface), by marching cubes."""
        with self._running("vae") as vae:
            return [vae.to_mesh(zi, resolution=resolution) for zi in z]

    def decode(
        self,
        tokens: torch.Tensor,
        k: int | Sequence[int] | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int = 0,
        resolution: int = 128,
        temperature: float | None = None,
    ) -> list[trimesh.Trimesh | None]:
        """Token prefixes [K, D] or [B, K, D] -> one unit-frame mesh per sample (None: no surface found)."""
        if resolution < 1:
            raise ConfigError(f"resolution: must be >= 1, got {resolution}")
        z = self.decode_latents(tokens, k=k, steps=steps, guidance=guidance, seed=seed, temperature=temperature)
        return self.to_meshes(z, resolution)

    # -- generate -----------------------------------------------------------------------------------

    def set_generator(self, gpt, text_encoder) -> None:
        """Attach a LoST-GPT and its text encoder in memory (instead of the bundle's gpt/ and text_encoder/)."""
        self._check_gpt(gpt, "gpt")
        self._gpt, self._text_encoder = gpt.eval(), text_encoder

    def _component(self, name: str) -> Path:
        """The folder of an optional bundle component; CheckpointError naming the bundle when it is absent."""
        where = self.directory if self.directory is not None else "pipeline"
        sub = self.components.get(name)
        if self.directory is None or sub is None or not (self.directory / sub / "config.json").is_file():
            raise CheckpointError(f"{where}: component '{name}' is missing (run lost gpt export RUN --into "
                                  f"{self.directory if self.directory is not None else 'BUNDLE'})")
        return self.directory / sub

    def _check_gpt(self, gpt, where: str) -> None:
        cfg = gpt.config
        if cfg.token_dim != self.token_dim or cfg.num_tokens > self.num_tokens:
            raise CheckpointError(f"{where}: the GPT makes {cfg.num_tokens} tokens of dimension {cfg.token_dim}; "
                                  f"this tokenizer reads up to {self.num_tokens} of dimension {self.token_dim}")
        made_for = self.generation.get("model_id")
        if isinstance(made_for, str) and made_for and made_for != self.model_id:
            raise CheckpointError(f"{where}: the GPT was trained on tokens of model {made_for[:12]}, this bundle's "
                                  f"tokenizer is {self.model_id[:12]}; re-export it (lost gpt export)")

    @property
    def gpt(self):
        """The bundle's LoST-GPT (`models.gpt.LoSTGPT`), loaded on first use."""
        if self._gpt is None:
            from .models.gpt import LoSTGPT

            folder = self._component("gpt")
            gpt = LoSTGPT.from_pretrained(folder, device="cpu" if self.offload_device is not None else self.device)
            self._check_gpt(gpt, str(folder))
            self._gpt = gpt.eval()
        return self._gpt

    @property
    def text_encoder(self):
        """The bundle's text encoder (`models.text.TextEncoder`), loaded on first use."""
        if self._text_encoder is None:
            from .teachers import load_text_encoder_folder

            where = "cpu" if self.offload_device is not None else self.device
            self._text_encoder = load_text_encoder_folder(self._component("text_encoder"), device=where)
        return self._text_encoder

    @property
    def gpt_length(self) -> int:
        """L: the number of tokens the GPT was trained to generate."""
        return int(self.gpt.config.num_tokens)

    def _generation_args(self, prompts: list[str], n: int, config: GenerateConfig, prefix: Tokens | None,
                         keep: int | None) -> dict[str, Any]:
        """Checked settings of one `generate` call (ConfigError / DataError on a bad one)."""
        from .models.gpt import GUIDANCE_SCHEDULES

        guidance, temperature, num_tokens = config.guidance, config.temperature, config.num_tokens
        guidance_schedule = config.guidance_schedule

        if not prompts:
            raise ConfigError("prompt: no prompt given")
        empty = [i for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()]
        if empty:
            raise ConfigError(f"prompt: prompt {empty[0] + 1} of {len(prompts)} is empty")
        if n < 1:
            raise ConfigError(f"n: must be >= 1, got {n}")
        gen = self.generation
        guidance = float(gen["guidance"] if guidance is None else guidance)
        temperature = float(gen["temperature"] if temperature is None else temperature)
        schedule = str(gen["guidance_schedule"] if guidance_schedule is None else guidance_schedule)
        if schedule not in GUIDANCE_SCHEDULES:
            raise ConfigError(f"guidance_schedule: {schedule!r} is not one of {list(GUIDANCE_SCHEDULES)}")
        if not (np.isfinite(guidance) and guidance >= 0):
            raise ConfigError(f"guidance: must be a finite number >= 0, got {guidance}")
        if not (np.isfinite(temperature) and temperature > 0):
            raise ConfigError(f"temperature: must be > 0, got {temperature}")
        L = self.gpt_length
        where = self.directory if self.directory is not None else "model"
        k = L if num_tokens is None else int(num_tokens)
        if not 1 <= k <= L:
            raise ConfigError(f"{where}: --tokens {k} is outside 1..{L}, the GPT's length")
        if prefix is None:
            if keep is not None:
                raise ConfigError("keep: needs a prefix (--prefix tokens.safetensors)")
            kept = 0
        else:
            where = prefix.source or "prefix"
            if prefix.model_id != self.model_id:
                raise DataError(f"{where}: tokens of model {prefix.model_id[:12]}, not of this model "
                                f"({self.model_id[:12]})")
            if prefix.tokens.dim() != 2 or prefix.tokens.shape[1] != self.token_dim:
                raise DataError(f"{where}: prefix tokens {list(prefix.tokens.shape)}, expected [K, {self.token_dim}]")
            kept = prefix.k if keep is None else int(keep)
            if not 1 <= kept <= min(prefix.k, k):
                raise ConfigError(f"keep: {kept} is outside 1..{min(prefix.k, k)} (the prefix holds {prefix.k} "
                                  f"tokens, {k} are generated)")
        return {"guidance": guidance, "temperature": temperature, "guidance_schedule": schedule, "k": k,
                "keep": kept}

    @torch.no_grad()
    def generate(
        self,
        prompt: str | Sequence[str],
        n: int = 4,
        seed: int = 0,
        config: GenerateConfig | None = None,
        prefix: Tokens | None = None,
        keep: int | None = None,
    ) -> GenerationResult:
        """Text -> n shapes per prompt: LoST-GPT samples tokens, the tokenizer decodes them, marching cubes.

        Args:
            prompt: one prompt or a list; each gets n samples (result order: prompt-major).
            seed: one generator seeded with this draws every token of the batch, and the decoder's noise is
                seeded with it too: the same call gives identical tokens, latents and meshes.
            config: guidance, temperature, schedule and k of the GPT head, its sampling steps, the decoder's
                sampler and the marching-cubes grid (`GenerateConfig`; default: the bundle's settings, grid 128).
                Fewer tokens (`num_tokens` < L) is a coarse draft.
            prefix, keep: continue the first `keep` tokens of `prefix` (default all it holds), e.g. shape
                completion from a few tokens of a tokenized mesh; they are kept unchanged.

        Raises:
            CheckpointError: the bundle has no gpt/ or text_encoder/ (one line naming the bundle).
            ConfigError / DataError: an empty prompt, k outside 1..L, a prefix of another model, a bad keep.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        cfg = config if config is not None else GenerateConfig()
        steps, resolution = cfg.steps, cfg.resolution
        decode_steps, decode_guidance = cfg.decode_steps, cfg.decode_guidance
        if resolution < 1:
            raise ConfigError(f"resolution: must be >= 1, got {resolution}")
        args = self._generation_args(prompts, n, cfg, prefix, keep)
        _ = self.text_encoder, self.gpt  # both parts load before any work: a missing one fails first
        dev = self.device
        with self._running("text_encoder") as text:
            cond = text.encode(prompts).to(dev, torch.float32)  # [P, cond_dim]
        if cond.shape != (len(prompts), self.gpt.config.cond_dim):
            raise CheckpointError(f"{self.directory or 'text_encoder'}: the text encoder gives {list(cond.shape)} "
                                  f"embeddings, the GPT reads [P, {self.gpt.config.cond_dim}]")
        cond = cond.repeat_interleave(n, dim=0)  # [B, cond_dim], B = P * n
        B, k, kept = cond.shape[0], args["k"], args["keep"]
        first = (prefix.tokens[:kept].to(dev, torch.float32)[None].expand(B, -1, -1).contiguous()
                 if kept else None)  # [B, keep, D]
        generator = torch.Generator(device=dev).manual_seed(int(seed))
        if kept == k:
            tokens = first  # nothing left to generate: decode the kept prefix
        else:
            with self._running("gpt") as gpt:
                tokens = gpt.generate(cond, num_tokens=k, guidance=args["guidance"],
                                      guidance_schedule=args["guidance_schedule"], temperature=args["temperature"],
                                      prefix=first, generator=generator, sample_steps=steps)
        tokens = tokens.float()
        z = self.decode_latents(tokens, k=k, steps=decode_steps, guidance=decode_guidance, seed=seed)
        meshes = self.to_meshes(z, resolution)
        settings = {**args, "n": n, "seed": int(seed), "steps": steps, "resolution": resolution,
                    "decode_steps": decode_steps if decode_steps is not None else self.sampling["steps"],
                    "decode_guidance": decode_guidance if decode_guidance is not None else self.sampling["guidance"],
                    "gpt_length": self.gpt_length, "model_id": self.model_id}
        return GenerationResult(tokens=tokens.cpu(), meshes=meshes, latents=z.cpu(),
                                prompts=[p for p in prompts for _ in range(n)], settings=settings)
