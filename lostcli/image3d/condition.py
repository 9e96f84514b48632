"""Direct3D's image conditioning: preprocessing, then DINOv2 pixel tokens and CLIP semantic tokens of one image.

Follows the release (`direct3d/utils/image.py`, `direct3d/models/condition.py`), without its optional background
removal (rembg), as the LoST authors ran it on FLUX's white-background renders:
  * an image with alpha is cropped to the box of its pixels with alpha > 100 (no crop when fewer than 0.1 % are),
    padded to a square (white, alpha 0: centred, the odd pixel after), composited onto white in float64 and
    truncated back to uint8; an image without alpha is only padded;
  * a white margin of int(0.04 * side) pixels on every side;
  * both encoders see the same bilinear, antialiased resize to 224 x 224, each with its own normalisation;
  * pixel tokens: DINOv2's last hidden state (CLS + 256 patches, after its final LayerNorm);
  * semantic tokens: CLIP's vision last hidden state (CLS + 256 patches, BEFORE the post-LayerNorm), and the
    pooled embedding the DiT's `cond_proj` reads is its CLS token (not `pooler_output`, not `image_embeds`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ..errors import CheckpointError, DataError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DINO_MEAN = (0.485, 0.456, 0.406)
DINO_STD = (0.229, 0.224, 0.225)
ALPHA_THRESHOLD = 100  # alpha above this (of 255) is object when cropping
MIN_OBJECT_FRACTION = 0.001  # fewer object pixels than this: keep the whole image
MARGIN = 0.04  # white margin per side, as a fraction of the square's side
SEMANTIC_ENCODER = "openai/clip-vit-large-patch14"  # the release's encoders (hub ids)
PIXEL_ENCODER = "facebook/dinov2-large"

ImageLike = str | Path | Image.Image


# ----------------------------------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------------------------------


def open_image(image: ImageLike) -> Image.Image:
    """A PIL image from a path (read with PIL) or an image; DataError naming a missing or unreadable file."""
    if isinstance(image, Image.Image):
        return image
    path = Path(image)
    if not path.is_file():
        raise DataError(f"{path}: image not found")
    try:
        with Image.open(path) as im:
            im.load()
            return im
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: not a readable image ({type(e).__name__})") from None


def _as_array(image: Image.Image) -> np.ndarray:
    """uint8 [H, W, 4] for images with transparency, else [H, W, 3]."""
    alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info)
    arr = np.asarray(image.convert("RGBA" if alpha else "RGB"))
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"empty image ({image.size[0]} x {image.size[1]})")
    return arr


def crop_to_object(arr: np.ndarray) -> np.ndarray:
    """[H, W, 4] -> the box of pixels with alpha > 100 (whole image when almost none are); [H, W, 3] unchanged."""
    if arr.shape[2] == 3:
        return arr
    mask = arr[..., 3] > ALPHA_THRESHOLD
    if mask.sum() < mask.size * MIN_OBJECT_FRACTION:
        return arr
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return arr[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def pad_to_square(arr: np.ndarray) -> np.ndarray:
    """Centre [H, W, C] on a square: colour 255 around it, alpha 0; the odd pixel goes to the bottom/right."""
    h, w, c = arr.shape
    side = max(h, w)
    out = np.full((side, side, c), 255, dtype=np.uint8)
    if c == 4:
        out[..., 3] = 0
    top, left = (side - h) // 2, (side - w) // 2
    out[top:top + h, left:left + w] = arr
    return out


def preprocess(image: ImageLike) -> torch.Tensor:
    """One image -> float32 [3, S, S] in [0, 1]: cropped to the object, square, on white, with a 4 % margin."""
    arr = pad_to_square(crop_to_object(_as_array(open_image(image))))
    x = arr / 255.0  # float64, as the release
    if x.shape[2] == 4:
        x = x[..., :3] * x[..., 3:] + (1 - x[..., 3:])  # composite onto white
    rgb = (x * 255).astype(np.uint8)  # truncation, not rounding, as the release
    m = int(rgb.shape[1] * MARGIN)
    rgb = np.pad(rgb, ((m, m), (m, m), (0, 0)), constant_values=255)
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() / 255.0


def resize_batch(images: Sequence[torch.Tensor], size: int) -> torch.Tensor:
    """Preprocessed images [3, S_i, S_i] -> [B, 3, size, size] (bilinear, antialiased, torchvision's Resize)."""
    return torch.cat([F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False,
                                    antialias=True) for x in images])


def normalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> (x - mean) / std per channel."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device)[:, None, None]
    s = torch.tensor(std, dtype=x.dtype, device=x.device)[:, None, None]
    return (x - m) / s


# ----------------------------------------------------------------------------------------------------
# Encoders
# ----------------------------------------------------------------------------------------------------


@dataclass
class ImageCondition:
    """What the DiT reads of a batch of images."""

    pixel: torch.Tensor  # [B, Np, Dp] DINOv2 last hidden state
    semantic: torch.Tensor  # [B, Ns, Ds] CLIP vision last hidden state
    pooled: torch.Tensor  # [B, Ds] CLIP CLS token (= semantic[:, 0])

    def zeros_like(self) -> ImageCondition:
        """The unconditional input of classifier-free guidance: zeros in place of every condition."""
        return ImageCondition(self.pixel.new_zeros(self.pixel.shape), self.semantic.new_zeros(self.semantic.shape),
                              self.pooled.new_zeros(self.pooled.shape))

    @staticmethod
    def cat(first: ImageCondition, second: ImageCondition) -> ImageCondition:
        """Both batches, `first` then `second`."""
        return ImageCondition(torch.cat([first.pixel, second.pixel]), torch.cat([first.semantic, second.semantic]),
                              torch.cat([first.pooled, second.pooled]))


class ImageEncoders(nn.Module):
    """Frozen CLIP vision (semantic) and DINOv2 (pixel) towers: images [B, 3, S, S] in [0, 1] -> ImageCondition."""

    def __init__(self, semantic: nn.Module, pixel: nn.Module, image_size: int = 224) -> None:
        super().__init__()
        self.semantic, self.pixel, self.image_size = semantic, pixel, image_size
        self.requires_grad_(False).eval()

    @property
    def semantic_channels(self) -> int:
        return int(self.semantic.config.hidden_size)

    @property
    def pixel_channels(self) -> int:
        return int(self.pixel.config.hidden_size)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> ImageCondition:
        """images [B, 3, 224, 224] in [0, 1] (`preprocess` + `resize_batch`) -> the DiT's three conditions."""
        dtype = next(self.semantic.parameters()).dtype
        semantic = self.semantic(pixel_values=normalise(images, CLIP_MEAN, CLIP_STD).to(dtype)).last_hidden_state
        pixel = self.pixel(pixel_values=normalise(images, DINO_MEAN, DINO_STD).to(dtype)).last_hidden_state
        return ImageCondition(pixel=pixel, semantic=semantic, pooled=semantic[:, 0])

    def save_pretrained(self, directory: str | Path) -> None:
        """Both towers as transformers folders: DIR/semantic_encoder, DIR/pixel_encoder."""
        directory = Path(directory)
        self.semantic.save_pretrained(directory / "semantic_encoder")
        self.pixel.save_pretrained(directory / "pixel_encoder")


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No load reports or progress bars from transformers while a tower loads (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    logger = logging.getLogger("transformers")
    level, bars = logger.level, hf_logging.is_progress_bar_enabled()
    logger.setLevel(logging.ERROR)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        logger.setLevel(level)
        if bars:
            hf_logging.enable_progress_bar()


def load_tower(kind: str, spec: str | Path) -> nn.Module:
    """One encoder tower by spec: a hub id or a local transformers folder (config.json + weights).

    Args:
        kind: "semantic" (CLIP vision, `CLIPVisionModel`: also reads a whole CLIP checkpoint) or "pixel"
            (`Dinov2Model`).

    Raises:
        CheckpointError: one line naming the missing file, or the hub id that could not be fetched.
    """
    from transformers import CLIPVisionModel, Dinov2Model

    cls = {"semantic": CLIPVisionModel, "pixel": Dinov2Model}[kind]
    path = Path(spec)
    if path.exists():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path / 'config.json'}: not found (a {kind} encoder folder holds config.json "
                                  "and model.safetensors)")
        if not any((path / f).is_file() for f in ("model.safetensors", "pytorch_model.bin",
                                                  "model.safetensors.index.json")):
            raise CheckpointError(f"{path / 'model.safetensors'}: not found (the {kind} encoder's weights)")
    try:
        with _quiet_transformers():
            model = cls.from_pretrained(str(spec))
    except (OSError, ValueError, RuntimeError) as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        hint = " (HF_HUB_OFFLINE is set: download it elsewhere and pass the local folder)" if offline else ""
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{spec}: could not load the {kind} encoder ({first}){hint}") from None
    return model.float().eval()


def clip_vision_from_open_clip(visual: nn.Module) -> nn.Module:
    """An OpenCLIP ViT image tower as transformers' `CLIPVisionModel`, its weights copied exactly.

    The copy computes what the OpenCLIP tower computes: its last hidden state after `post_layernorm` is the
    tower's token output after `ln_post` (CLS first), so it can stand where Direct3D's pipeline reads CLIP ViT-L/14
    and be saved and loaded as any transformers tower (`load_tower("semantic", folder)`). The fused attention
    input projection is split into q / k / v; GELU and QuickGELU towers are both read. The projection to the
    joint embedding is not part of a CLIP vision tower and is dropped (Direct3D reads the unprojected width).

    Raises:
        CheckpointError: one line naming what this layout cannot hold (attention pooling, layer scale, a
            patch-embedding bias, no class token).
    """
    from transformers import CLIPVisionConfig, CLIPVisionModel

    blocks = list(getattr(getattr(visual, "transformer", None), "resblocks", []))
    unsupported = [("no transformer.resblocks", lambda: not blocks),
                   ("attention pooling", lambda: getattr(visual, "attn_pool", None) is not None),
                   ("no class token", lambda: getattr(visual, "class_embedding", None) is None),
                   ("a patch-embedding bias", lambda: visual.conv1.bias is not None),
                   ("layer scale", lambda: not isinstance(blocks[0].ls_1, nn.Identity))]
    for why, found in unsupported:  # in order: a later check reads what an earlier one vouched for
        if found():
            raise CheckpointError(f"OpenCLIP image tower: {why} has no place in a CLIP vision tower")
    width, patch = int(visual.conv1.out_channels), int(visual.conv1.kernel_size[0])
    act = "quick_gelu" if type(blocks[0].mlp.gelu).__name__ == "QuickGELU" else "gelu"
    config = CLIPVisionConfig(hidden_size=width, intermediate_size=int(blocks[0].mlp.c_fc.out_features),
                              num_hidden_layers=len(blocks), num_attention_heads=int(blocks[0].attn.num_heads),
                              image_size=int(visual.image_size[0]), patch_size=patch, hidden_act=act,
                              layer_norm_eps=float(blocks[0].ln_1.eps), projection_dim=width)
    model = CLIPVisionModel(config)
    ours = {"embeddings.class_embedding": visual.class_embedding,
            "embeddings.patch_embedding.weight": visual.conv1.weight,
            "embeddings.position_embedding.weight": visual.positional_embedding}
    for name, norm in (("pre_layrnorm", visual.ln_pre), ("post_layernorm", visual.ln_post)):
        ours.update({f"{name}.weight": norm.weight, f"{name}.bias": norm.bias})
    for i, block in enumerate(blocks):
        layer = f"encoder.layers.{i}."
        for name, w, b in zip(("q_proj", "k_proj", "v_proj"), block.attn.in_proj_weight.chunk(3),
                              block.attn.in_proj_bias.chunk(3)):
            ours.update({f"{layer}self_attn.{name}.weight": w, f"{layer}self_attn.{name}.bias": b})
        for ours_name, theirs in (("self_attn.out_proj", block.attn.out_proj), ("layer_norm1", block.ln_1),
                                  ("layer_norm2", block.ln_2), ("mlp.fc1", block.mlp.c_fc),
                                  ("mlp.fc2", block.mlp.c_proj)):
            ours.update({f"{layer}{ours_name}.weight": theirs.weight, f"{layer}{ours_name}.bias": theirs.bias})
    target = model.state_dict()
    prefix = next(k for k in target if k.endswith("embeddings.class_embedding"))[:-len("embeddings.class_embedding")]
    state = {prefix + k: v.detach().clone().float() for k, v in ours.items()}
    state.update({k: v for k, v in target.items() if k not in state and k.endswith("position_ids")})  # buffers
    model.load_state_dict(state, strict=True)
    return model.float().eval()


def load_encoders(semantic: str | Path = SEMANTIC_ENCODER, pixel: str | Path = PIXEL_ENCODER,
                  image_size: int = 224) -> ImageEncoders:
    """CLIP vision + DINOv2 towers by spec (hub ids or local folders), frozen, on the CPU."""
    return ImageEncoders(load_tower("semantic", semantic), load_tower("pixel", pixel), image_size)
