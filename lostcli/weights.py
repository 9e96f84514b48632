"""Where pretrained weights come from: a local path, the local cache of a hub, or (online) the hub.

Research clusters are often offline. Every loader in the toolkit accepts either a local file/folder or a
hub name; this module only answers "what can this machine see without a network?" for `lost info`,
and resolves local weight folders given by the `LOST_WEIGHTS` environment variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# Hub repositories the toolkit knows how to use, with what they provide.
KNOWN_WEIGHTS: dict[str, str] = {
    "timm/vit_base_patch14_dinov2.lvd142m": "DINOv2 ViT-B/14 teacher and metric network",
    "timm/vit_large_patch14_reg4_dinov2.lvd142m": "DINOv2 ViT-L/14 (registers) teacher",
    "timm/vit_small_patch16_224.dino": "DINO ViT-S/16 metric network",
    "laion/CLIP-ViT-B-32-laion2B-s34B-b79K": "OpenCLIP ViT-B/32 text and image towers",
    "laion/CLIP-ViT-H-14-laion2B-s32B-b79K": "OpenCLIP ViT-H/14 text and image towers",
    "DreamTechAI/Direct3D": "Direct3D triplane VAE (vae.ckpt)",
    "microsoft/TRELLIS-image-large": "TRELLIS stage-1 sparse-structure VAE (ckpts/ss_*_conv3d_16l8_fp16)",
}


@dataclass
class WeightsEntry:
    name: str  # hub repo id or local path
    what: str  # what the toolkit uses it for
    where: str | None  # local folder holding it, None if not on this machine


def weights_home() -> Path:
    """Folder of manually downloaded weights (`LOST_WEIGHTS`, default ~/.cache/lost/weights)."""
    return Path(os.environ.get("LOST_WEIGHTS", Path.home() / ".cache" / "lost" / "weights")).expanduser()


def _hub_cache() -> Path:
    if "HF_HUB_CACHE" in os.environ:
        return Path(os.environ["HF_HUB_CACHE"])
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return home / "hub"


def find_local(repo_id: str) -> Path | None:
    """A local copy of `repo_id`: under LOST_WEIGHTS/<owner>/<name>, or a snapshot in the HF hub cache."""
    manual = weights_home() / repo_id
    if manual.is_dir() and any(manual.iterdir()):
        return manual
    snapshots = _hub_cache() / ("models--" + repo_id.replace("/", "--")) / "snapshots"
    if snapshots.is_dir():
        for snap in sorted(snapshots.iterdir()):
            if any(snap.iterdir()):
                return snap
    return None


def visible_weights() -> list[WeightsEntry]:
    """Every known repo with the local folder that holds it (if any)."""
    out = []
    for name, what in KNOWN_WEIGHTS.items():
        where = find_local(name)
        out.append(WeightsEntry(name, what, str(where) if where else None))
    return out
