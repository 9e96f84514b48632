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
The classes take built modules and tensors; `teachers.load_teacher(spec)`, a level above the models, resolves
the spec strings users pass on the command line (hub names, local weights files, folders).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import to_dict
from ..errors import CheckpointError, ConfigError
from ..persist import CONFIG_NAME, Pretrained  # noqa: F401 (CONFIG_NAME: imported from here by teachers.py)
from .blocks import map_views

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # timm / DINOv2 preprocessing
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP preprocessing (OpenCLIP's default)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

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
        outs, B, V = map_views(self, images, lambda batch: self.encode_images(self.preprocess(batch)), batch_size)
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


class ClipTeacher(OpenClipTeacher, Pretrained):
    """The built-in teacher: `open_clip.CLIP` from a `ClipTeacherConfig`, trainable, saved as a folder."""

    def __init__(self, cfg: ClipTeacherConfig, name: str = "lost-clip (built-in)") -> None:
        import open_clip
        from open_clip.model import CLIPTextCfg, CLIPVisionCfg

        mc = open_clip_model_cfg(cfg)
        model = open_clip.CLIP(mc["embed_dim"], CLIPVisionCfg(**mc["vision_cfg"]), CLIPTextCfg(**mc["text_cfg"]))
        super().__init__(model, name, tuple(cfg.mean), tuple(cfg.std))
        self.config = cfg
        self.model.train().requires_grad_(True)  # trainable until frozen by the caller

    # `save_pretrained` / `from_pretrained` (`Pretrained`): config.json {"class", "name", "config", "open_clip",
    # extras}, open_clip_config.json and model.safetensors (the open_clip.CLIP state dict); loaded frozen
    config_class = ClipTeacherConfig
    pretrained_what = "built-in teacher"
    pretrained_keys = ("class", "name", "config", "open_clip")
    pretrained_frozen = True

    @classmethod
    def pretrained_class(cls) -> str:
        return BUILTIN_CLASS

    def _open_clip_meta(self) -> dict[str, Any]:
        return {"model_cfg": open_clip_model_cfg(self.config), "preprocess_cfg": _preprocess_cfg(self.config)}

    def pretrained_meta(self) -> dict[str, Any]:
        return {"class": BUILTIN_CLASS, "name": self.name, "config": to_dict(self.config),
                "open_clip": self._open_clip_meta()}

    def pretrained_module(self) -> nn.Module:
        return self.model

    def pretrained_files(self) -> dict[str, Any]:
        return {OPEN_CLIP_CONFIG_NAME: self._open_clip_meta()}

    @classmethod
    def build_pretrained(cls, config: ClipTeacherConfig, meta: dict[str, Any]) -> ClipTeacher:
        return cls(config, name=str(meta.get("name", "lost-clip (built-in)")))

    def loaded_from(self, folder: Path, meta: dict[str, Any]) -> None:
        self.spec = str(folder.resolve())  # the run entries of config.json are not carried into a re-save
