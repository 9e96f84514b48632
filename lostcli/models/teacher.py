"""Semantic teachers: image networks that give a global embedding and patch tokens per rendered view.

One interface, three sources:

- `TimmTeacher`: a timm ViT, e.g. DINOv2 (`vit_base_patch14_dinov2.lvd142m`, with or without registers),
  from the hub or from a local weights file. Global = the model's pooled pre-logits (the CLS token for
  DINOv2); patch tokens = `forward_features` output with the CLS and register tokens dropped.
- `OpenClipTeacher`: an OpenCLIP image tower (hub tag, local file or local folder). Global = the image
  embedding; patch tokens = the tower's token outputs (`output_tokens=True`, after `ln_post`), projected
  by the tower's `proj` into the same space as the global (as MaskCLIP does), so both are `embed_dim`.
  It also exposes the text tower: `encode_text` and per-token `text_tokens`.
- `ClipTeacher`: the built-in teacher, a small OpenCLIP-architecture model built from `ClipTeacherConfig`
  and trained by `lost teacher train`; saved as config.json + model.safetensors (plus an
  open_clip_config.json, so `open_clip.create_model("local-dir:FOLDER")` loads it too).

Views are the dataset's renders, uint8 [B, V, H, W, 3] (V = 4: front, right, back, left). Patch grids are
row-major from the image's top-left corner: patches[b, v, i, j] covers image row block i, column block j.
`load_teacher(spec)` resolves the spec strings users pass on the command line.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import from_dict, to_dict
from ..errors import CheckpointError, ConfigError, LostError
from ..latent.checkpoint import load_strict, read_json_object, read_safetensors, save_model_folder

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # timm / DINOv2 preprocessing
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP preprocessing (OpenCLIP's default)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
OPEN_CLIP_CONFIG_NAME = "open_clip_config.json"
BUILTIN_CLASS = "ClipTeacher"  # the "class" field of a built-in teacher's config.json


# ----------------------------------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------------------------------


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, size, size] in [0, 1] (bicubic; antialiased when shrinking)."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [N, H, W, 3], got {images.dtype} {tuple(images.shape)}")
    x = images.permute(0, 3, 1, 2).float() / 255.0
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        x = x.clamp(0.0, 1.0)  # bicubic overshoots at edges
    return x


def resize_images_u8(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> uint8 [N, size, size, 3] with the teachers' resampling (for caching renders)."""
    return (resize_images(images, size) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


# ----------------------------------------------------------------------------------------------------
# The interface
# ----------------------------------------------------------------------------------------------------


class Teacher(nn.Module):
    """A frozen image network over rendered views. Subclasses implement `encode_images`.

    Attributes:
        name: what reports call it, e.g. "vit_base_patch14_dinov2.lvd142m (timm)".
        spec: the spec it was loaded from (`load_teacher`), or "" when built in memory.
        embed_dim: D of the global embedding and of the patch tokens.
        grid: g0, the side of the patch grid.
        image_size: S, renders are resized to S x S.
    """

    name: str
    spec: str
    embed_dim: int
    grid: int
    image_size: int

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(3, 1, 1), persistent=False)
        self.spec = ""

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> normalised float [N, 3, S, S]: resize to S, then (x - mean) / std."""
        x = resize_images(images.to(self.device), self.image_size)
        return (x - self.mean) / self.std

    def encode_images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised [N, 3, S, S] -> (global [N, D], patches [N, g0, g0, D]). Gradients flow."""
        raise NotImplementedError

    @torch.no_grad()
    def forward_views(self, images: torch.Tensor, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed every view of every shape, in eval mode, `batch_size` images per forward pass.

        Args:
            images: uint8 [B, V, H, W, 3] renders (any H = W; resized to `image_size`).
            batch_size: images per forward pass.

        Returns:
            (global [B, V, D], patches [B, V, g0, g0, D]), float32 on the teacher's device; not normalised.
        """
        if images.dim() != 5:
            raise ValueError(f"expected uint8 views [B, V, H, W, 3], got {tuple(images.shape)}")
        B, V = images.shape[:2]
        flat = images.reshape(B * V, *images.shape[2:])
        was_training = self.training
        self.eval()
        try:
            outs = [self.encode_images(self.preprocess(flat[i:i + batch_size]))
                    for i in range(0, B * V, batch_size)]
        finally:
            self.train(was_training)
        g = torch.cat([o[0] for o in outs]).float()
        p = torch.cat([o[1] for o in outs]).float()
        return g.view(B, V, -1), p.view(B, V, *p.shape[1:])

    def describe(self) -> dict[str, Any]:
        """What reports and stats.json record about the teacher."""
        return {"name": self.name, "spec": self.spec, "embed_dim": self.embed_dim, "grid": self.grid,
                "image_size": self.image_size, "mean": self.mean.flatten().tolist(),
                "std": self.std.flatten().tolist()}


# ----------------------------------------------------------------------------------------------------
# timm (DINOv2 and other ViTs)
# ----------------------------------------------------------------------------------------------------


class TimmTeacher(Teacher):
    """A timm ViT: global = pooled pre-logits (CLS for DINOv2), patches = tokens after the prefix tokens."""

    def __init__(self, model: nn.Module, name: str) -> None:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        super().__init__(tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD)))
        patch_embed = getattr(model, "patch_embed", None)
        if patch_embed is None or not hasattr(model, "num_prefix_tokens"):
            raise CheckpointError(f"timm:{name}: not a ViT (no patch_embed / prefix tokens); pick a ViT teacher")
        gh, gw = patch_embed.grid_size
        ih, iw = patch_embed.img_size
        if gh != gw or ih != iw:
            raise CheckpointError(f"timm:{name}: the teacher needs a square input, got {ih}x{iw}")
        self.model = model.eval().requires_grad_(False)
        self.name = f"{name} (timm)"
        self.embed_dim = int(model.num_features)
        self.grid = int(gh)  # = img_size / patch size (14 for DINOv2)
        self.image_size = int(ih)
        self.num_prefix_tokens = int(model.num_prefix_tokens)  # CLS + registers

    def encode_images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.model.forward_features(x)  # [N, prefix + g0*g0, D], final norm applied
        glob = self.model.forward_head(tokens, pre_logits=True)  # [N, D]
        patches = tokens[:, self.num_prefix_tokens:]  # [N, g0*g0, D]
        N, K, D = patches.shape
        if K != self.grid * self.grid:
            raise RuntimeError(f"{self.name}: {K} patch tokens do not form a {self.grid}x{self.grid} grid")
        return glob, patches.reshape(N, self.grid, self.grid, D)


# ----------------------------------------------------------------------------------------------------
# OpenCLIP (image and text towers)
# ----------------------------------------------------------------------------------------------------


class OpenClipTeacher(Teacher):
    """An OpenCLIP model with a ViT image tower; the text tower is kept for `encode_text`/`text_tokens`.

    Args:
        model: an `open_clip.CLIP` whose `visual` is open_clip's VisionTransformer.
        name: for reports.
        mean, std: image normalisation (the model's preprocess config).
        tokenizer: callable list[str] -> LongTensor [B, L]; default: open_clip's BPE tokenizer with the
            model's context length.
    """

    def __init__(self, model: nn.Module, name: str, mean: tuple[float, ...] = CLIP_MEAN,
                 std: tuple[float, ...] = CLIP_STD, tokenizer: Any = None) -> None:
        super().__init__(tuple(mean), tuple(std))
        visual = getattr(model, "visual", None)
        if visual is None or not hasattr(visual, "output_tokens") or not hasattr(visual, "grid_size"):
            raise CheckpointError(f"{name}: only OpenCLIP models with a ViT image tower can be teachers")
        gh, gw = visual.grid_size
        if gh != gw:
            raise CheckpointError(f"{name}: the teacher needs a square patch grid, got {gh}x{gw}")
        visual.output_tokens = True  # visual(x) -> (pooled, tokens); set once here, never in forward
        self.model = model.eval().requires_grad_(False)
        self.name = name
        self.embed_dim = int(visual.output_dim)
        self.grid = int(gh)
        self.image_size = int(visual.image_size[0])
        self.context_length = int(model.context_length)
        self._tokenizer = tokenizer

    def encode_images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, tokens = self.model.visual(x)  # [N, D] projected, [N, g0*g0, W] after ln_post
        proj = self.model.visual.proj
        if proj is not None:
            tokens = tokens @ proj  # [N, g0*g0, D]: the same space as the global embedding
        N, K, D = tokens.shape
        return pooled, tokens.reshape(N, self.grid, self.grid, D)

    # --- text tower ----------------------------------------------------------------------------

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Captions -> BPE ids LongTensor [B, L] (SOT ... EOT, zero padded, truncated to L)."""
        if self._tokenizer is None:
            from open_clip.tokenizer import SimpleTokenizer

            self._tokenizer = SimpleTokenizer(context_length=self.context_length)
        return self._tokenizer(list(texts)).to(self.device)

    def encode_text_ids(self, ids: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """BPE ids [B, L] -> text embedding [B, D] (EOT-pooled, projected). Gradients flow."""
        z = self.model.encode_text(ids.to(self.device))
        return F.normalize(z, dim=-1) if normalize else z

    @torch.no_grad()
    def encode_text(self, texts: list[str], normalize: bool = True) -> torch.Tensor:
        """Captions -> text embeddings [B, D] (L2-normalised unless `normalize=False`)."""
        return self.encode_text_ids(self.tokenize(texts), normalize=normalize).float()

    @torch.no_grad()
    def text_tokens(self, texts: list[str]) -> torch.Tensor:
        """Captions -> per-token features [B, L, W] of the text transformer (after ln_final, unprojected).

        Positions after the EOT token are padding; `tokenize(texts) != 0` marks the real ones.
        """
        m = self.model
        ids = self.tokenize(texts)
        x = m.token_embedding(ids) + m.positional_embedding  # [B, L, W]
        x = m.transformer(x, attn_mask=m.attn_mask)  # causal
        return m.ln_final(x).float()

    @property
    def text_width(self) -> int:
        """W of `text_tokens`."""
        return int(self.model.token_embedding.weight.shape[1])


# ----------------------------------------------------------------------------------------------------
# The built-in teacher
# ----------------------------------------------------------------------------------------------------


@dataclass
class ClipTeacherConfig:
    embed_dim: int = 128  # joint image-text embedding D
    image_size: int = 128  # renders (224 px) are resized to this
    patch_size: int = 16  # 128 / 16 = 8 x 8 patch grid
    vision_width: int = 128  # image transformer width
    vision_layers: int = 3  # image transformer depth
    vision_heads: int = 4  # image attention heads (head width = vision_width / vision_heads)
    text_context: int = 32  # BPE tokens per caption (SOT, text, EOT; longer captions are truncated)
    text_width: int = 128  # text transformer width W (`text_tokens` feature size)
    text_layers: int = 2  # text transformer depth
    text_heads: int = 4  # text attention heads
    mlp_ratio: float = 4.0  # MLP hidden = mlp_ratio * width, both towers
    mean: list[float] = field(default_factory=lambda: list(CLIP_MEAN))  # image normalisation
    std: list[float] = field(default_factory=lambda: list(CLIP_STD))

    def __post_init__(self) -> None:
        checks = [
            ("image_size", self.image_size % self.patch_size == 0, "must be a multiple of patch_size"),
            ("vision_width", self.vision_width % self.vision_heads == 0, "must be divisible by vision_heads"),
            ("text_width", self.text_width % self.text_heads == 0, "must be divisible by text_heads"),
            ("text_context", self.text_context >= 3, "must be >= 3 (SOT, a token, EOT)"),
            ("mean", len(self.mean) == 3 and len(self.std) == 3, "mean and std need 3 values"),
        ]
        for key, ok, why in checks:
            if not ok:
                raise ConfigError(f"{key}: {why}")


def open_clip_model_cfg(cfg: ClipTeacherConfig) -> dict[str, Any]:
    """The OpenCLIP model config (`open_clip.CLIP(**model_cfg)`) of a built-in teacher."""
    return {
        "embed_dim": cfg.embed_dim,
        "vision_cfg": {"image_size": cfg.image_size, "patch_size": cfg.patch_size, "width": cfg.vision_width,
                       "layers": cfg.vision_layers, "head_width": cfg.vision_width // cfg.vision_heads,
                       "mlp_ratio": cfg.mlp_ratio},
        "text_cfg": {"context_length": cfg.text_context, "vocab_size": 49408, "width": cfg.text_width,
                     "heads": cfg.text_heads, "layers": cfg.text_layers, "mlp_ratio": cfg.mlp_ratio},
    }


def _preprocess_cfg(cfg: ClipTeacherConfig) -> dict[str, Any]:
    return {"size": cfg.image_size, "mean": list(cfg.mean), "std": list(cfg.std), "interpolation": "bicubic",
            "resize_mode": "shortest"}


class ClipTeacher(OpenClipTeacher):
    """The built-in teacher: `open_clip.CLIP` from a `ClipTeacherConfig`, trainable, saved as a folder."""

    def __init__(self, cfg: ClipTeacherConfig, name: str = "lost-clip (built-in)") -> None:
        import open_clip
        from open_clip.model import CLIPTextCfg, CLIPVisionCfg

        mc = open_clip_model_cfg(cfg)
        model = open_clip.CLIP(mc["embed_dim"], CLIPVisionCfg(**mc["vision_cfg"]), CLIPTextCfg(**mc["text_cfg"]))
        super().__init__(model, name, tuple(cfg.mean), tuple(cfg.std))
        self.config = cfg
        self.model.train().requires_grad_(True)  # trainable until frozen by the caller

    def save_pretrained(self, directory: str | Path, extra_config: dict[str, Any] | None = None) -> Path:
        """Write config.json, open_clip_config.json and model.safetensors (the open_clip.CLIP state dict)."""
        open_clip_meta = {"model_cfg": open_clip_model_cfg(self.config),
                          "preprocess_cfg": _preprocess_cfg(self.config)}
        meta = {"class": BUILTIN_CLASS, "name": self.name, "config": to_dict(self.config),
                "open_clip": open_clip_meta, **(extra_config or {})}
        return save_model_folder(directory, self.model, meta, {OPEN_CLIP_CONFIG_NAME: open_clip_meta})

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> ClipTeacher:
        """Load a folder written by `save_pretrained` (strict key and shape match), frozen, in eval mode."""
        directory = Path(directory)
        meta = read_json_object(directory / CONFIG_NAME)
        if meta.get("class") != BUILTIN_CLASS or not isinstance(meta.get("config"), dict):
            raise CheckpointError(f"{directory / CONFIG_NAME}: not a built-in teacher (class {meta.get('class')!r})")
        try:
            cfg = from_dict(ClipTeacherConfig, meta["config"])
        except ConfigError as e:
            raise CheckpointError(f"{directory / CONFIG_NAME}: config.{e}") from None
        weights = directory / WEIGHTS_NAME
        state = read_safetensors(weights)
        teacher = cls(cfg, name=str(meta.get("name", "lost-clip (built-in)")))
        load_strict(teacher.model, state, str(weights))
        teacher.spec = str(directory.resolve())
        return teacher.to(device).eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------------
# Loading from a spec
# ----------------------------------------------------------------------------------------------------

SPEC_HELP = ("a built-in teacher folder (lost teacher train's export), timm:NAME[@WEIGHTS_FILE], "
             "open_clip:NAME/TAG, open_clip:NAME@WEIGHTS_FILE or open_clip:FOLDER (with open_clip_config.json)")


def _hub_error(spec: str, e: Exception) -> CheckpointError:
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false")
    hint = (" HF_HUB_OFFLINE is set: download the weights elsewhere and pass NAME@/path/to/weights" if offline
            else "")
    first = " ".join(str(e).split()).split(". ")[0][:160]  # the first sentence
    return CheckpointError(f"{spec}: could not load pretrained weights ({type(e).__name__}: {first}).{hint}")


def _split_file(rest: str, spec: str) -> tuple[str, Path | None]:
    name, _, file = rest.partition("@")
    if not name:
        raise CheckpointError(f"{spec}: no model name (expected {SPEC_HELP})")
    if not file:
        return name, None
    path = Path(file).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found (teacher spec {spec})")
    return name, path


def _load_timm(rest: str, spec: str, image_size: int | None, overrides: dict[str, Any]) -> TimmTeacher:
    import timm

    name, file = _split_file(rest, spec)
    if not timm.is_model(name):
        raise CheckpointError(f"{spec}: unknown timm model {name!r} (e.g. vit_base_patch14_dinov2.lvd142m)")
    kwargs: dict[str, Any] = {"num_classes": 0, **overrides}
    if image_size is not None:
        kwargs["img_size"] = image_size  # timm resamples the position embedding when loading
    if file is not None:
        kwargs["pretrained_cfg_overlay"] = {"file": str(file)}
    try:
        model = timm.create_model(name, pretrained=True, **kwargs)
    except (RuntimeError, ValueError, KeyError) as e:
        if file is not None:  # a local file that does not fit the architecture
            raise CheckpointError(f"{file}: does not fit timm:{name} ({str(e).splitlines()[0][:200]})") from None
        raise _hub_error(spec, e) from None
    except Exception as e:  # hub: offline, missing, no access
        if file is not None:
            raise CheckpointError(f"{file}: unreadable for timm:{name} ({type(e).__name__})") from None
        raise _hub_error(spec, e) from None
    teacher = TimmTeacher(model, name)
    teacher.spec = f"timm:{name}@{file.resolve()}" if file is not None else spec
    return teacher


def _load_open_clip(rest: str, spec: str, image_size: int | None, overrides: dict[str, Any]) -> OpenClipTeacher:
    import open_clip

    kwargs: dict[str, Any] = dict(overrides)
    if image_size is not None:
        kwargs["force_image_size"] = image_size
    folder = Path(rest).expanduser()
    if folder.is_dir():
        if not (folder / OPEN_CLIP_CONFIG_NAME).is_file():
            raise CheckpointError(f"{folder}: no {OPEN_CLIP_CONFIG_NAME} in this folder")
        model_name, pretrained, file = f"local-dir:{folder.resolve()}", None, None
        resolved = f"open_clip:{folder.resolve()}"
    elif rest.startswith("hf-hub:"):
        model_name, pretrained, file, resolved = rest, None, None, spec
    else:
        name, file = _split_file(rest, spec)
        if file is not None:
            model_name, pretrained, resolved = name, str(file), f"open_clip:{name}@{file.resolve()}"
        else:
            model_name, _, pretrained = name.partition("/")
            if not pretrained:
                raise CheckpointError(f"{spec}: name the weights: open_clip:NAME/TAG or open_clip:NAME@FILE")
            resolved = spec
        if open_clip.get_model_config(model_name.replace("/", "-")) is None:
            raise CheckpointError(f"{spec}: unknown OpenCLIP model {model_name!r} (see open_clip.list_models())")
    logging.disable(logging.ERROR)  # open_clip logs a failed download on the root logger: keep errors one line
    try:
        model = open_clip.create_model(model_name, pretrained=pretrained, **kwargs)
    except Exception as e:  # hub download, unknown tag, weights that do not fit
        if file is not None or folder.is_dir():
            where = file if file is not None else folder
            raise CheckpointError(f"{where}: cannot load as OpenCLIP {model_name} "
                                  f"({' '.join(str(e).split())[:200]})") from None
        raise _hub_error(spec, e) from None
    finally:
        logging.disable(logging.NOTSET)
    pp = getattr(model.visual, "preprocess_cfg", None) or {}
    try:
        tokenizer = open_clip.get_tokenizer(model_name)
    except Exception:  # e.g. an HF tokenizer that needs the network: BPE with the model's context length
        tokenizer = None
    label = folder.name if folder.is_dir() else rest.split("@")[0]
    teacher = OpenClipTeacher(model, f"{label} (open_clip)", tuple(pp.get("mean", CLIP_MEAN)),
                              tuple(pp.get("std", CLIP_STD)), tokenizer=tokenizer)
    teacher.spec = resolved
    return teacher


def load_teacher(spec: str | Path, *, image_size: int | None = None, overrides: dict[str, Any] | None = None,
                 device: str | torch.device = "cpu") -> Teacher:
    """Resolve a teacher spec into a frozen `Teacher` in eval mode.

    Args:
        spec: a built-in teacher folder; `timm:NAME` (hub) or `timm:NAME@/path/weights.safetensors`;
            `open_clip:NAME/TAG` (hub), `open_clip:NAME@/path/weights`, `open_clip:hf-hub:ORG/REPO`, or
            `open_clip:FOLDER` holding open_clip_config.json + weights.
        image_size: input size S for timm / OpenCLIP models (default: the model's own, 518 for DINOv2;
            224 gives DINOv2 a 16 x 16 grid). Ignored for built-in teachers, which keep their size.
        overrides: extra constructor arguments (timm `create_model` kwargs, e.g. depth=1 for tests;
            OpenCLIP `create_model` kwargs).
        device: where the model lives.

    Raises:
        CheckpointError: one line: unknown model, missing or misfitting weights, or a hub that cannot be
            reached (e.g. HF_HUB_OFFLINE=1).
    """
    s = str(spec)
    overrides = dict(overrides or {})
    try:
        if s.startswith("timm:"):
            teacher: Teacher = _load_timm(s[len("timm:"):], s, image_size, overrides)
        elif s.startswith("open_clip:"):
            teacher = _load_open_clip(s[len("open_clip:"):], s, image_size, overrides)
        else:
            path = Path(s).expanduser()
            if path.is_dir() and (path / CONFIG_NAME).is_file():
                teacher = ClipTeacher.from_pretrained(path)
            elif path.is_dir() and (path / OPEN_CLIP_CONFIG_NAME).is_file():
                teacher = _load_open_clip(str(path), s, image_size, overrides)
            elif path.exists():
                raise CheckpointError(f"{path}: not a teacher folder (expected {SPEC_HELP})")
            else:
                raise CheckpointError(f"{s}: no such teacher folder, and no timm:/open_clip: prefix "
                                      f"(expected {SPEC_HELP})")
    except LostError:
        raise
    except ImportError as e:
        raise CheckpointError(f"{s}: cannot import the model library ({e})") from None
    return teacher.to(device).eval()
