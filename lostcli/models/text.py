"""The text encoder that conditions LoST-GPT: an OpenCLIP text tower, frozen, captions -> one embedding.

Sources (`teachers.load_text_encoder(spec)`, one level above the models, resolves them):

- the built-in teacher (`lost teacher train`'s run or export folder): its text tower, trained offline on the
  dataset's own captions. Saved into a bundle as a full copy (`ClipTeacher.save_pretrained`), so the bundle
  works without the teacher run.
- `open_clip:MODEL/TAG` (hub), `open_clip:MODEL@WEIGHTS_FILE` or `open_clip:FOLDER`: a pretrained OpenCLIP
  model through `teachers.load_teacher`. Saved as a `config.json` that records the spec, and loaded
  from it again (the weights stay where the spec points: the hub cache or the local file).
- a folder written by `TextEncoder.save_into` (a bundle's `text_encoder/`, a GPT run's `text_encoder/`),
  read back by `teachers.load_text_encoder_folder`.

`encode(texts)` returns the EOT-pooled, projected text embedding, L2-normalised: [B, width] float32, with
width = the CLIP joint embedding size (128 for the built-in teacher, 768 for ViT-L/14, 1024 for ViT-H/14).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..persist import CONFIG_NAME, atomic_write_json
from .teacher import BUILTIN_CLASS, ClipTeacher, OpenClipTeacher

CLASS = "TextEncoder"  # the "class" of a config.json that records an OpenCLIP spec
KINDS = ("builtin", "open_clip")


class TextEncoder(nn.Module):
    """A frozen OpenCLIP text tower (eval mode, no gradients).

    Args:
        tower: the loaded model (`OpenClipTeacher`; a `ClipTeacher` for the built-in teacher).
        spec: where it came from (resolved: absolute paths), recorded in saved folders and reports.

    Attributes:
        kind: "builtin" (saved as a weights copy) or "open_clip" (saved as its spec).
        width: size of the embedding `encode` returns.
    """

    def __init__(self, tower: OpenClipTeacher, spec: str) -> None:
        super().__init__()
        self.tower = tower.eval().requires_grad_(False)
        self.spec = str(spec)
        self.kind = "builtin" if isinstance(tower, ClipTeacher) else "open_clip"
        self._fingerprint: str | None = None

    @property
    def width(self) -> int:
        return int(self.tower.embed_dim)

    @property
    def device(self) -> torch.device:
        return self.tower.device

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(False)  # frozen: never in training mode (no dropout in the embeddings)
        return self

    @torch.no_grad()
    def encode(self, texts: str | Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Captions -> L2-normalised text embeddings [B, width] float32 on the encoder's device.

        Args:
            texts: one caption or a list (B >= 0); longer captions are truncated to the context length.
            batch_size: captions per forward pass.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            return torch.zeros(0, self.width, device=self.device)
        if batch_size < 1:
            raise ConfigError(f"batch_size: must be >= 1, got {batch_size}")
        out = [self.tower.encode_text(texts[i:i + batch_size], normalize=True)
               for i in range(0, len(texts), batch_size)]
        return torch.cat(out).float()

    def fingerprint(self) -> str:
        """sha256 of the text tower's tensors (image tower excluded): names embeddings it can produce."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for name, t in self.tower.model.state_dict().items():
                if name.startswith("visual.") or name.startswith("logit_"):
                    continue  # the image tower and CLIP's temperature do not shape text embeddings
                t = t.detach().to("cpu")
                h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
                h.update((t.float() if t.is_floating_point() else t).contiguous().numpy().tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        """What runs, exports and reports record about the text encoder."""
        return {"spec": self.spec, "name": self.tower.name, "kind": self.kind, "width": self.width,
                "context_length": int(self.tower.context_length), "fingerprint": self.fingerprint()}

    # -- persistence --------------------------------------------------------------------------------

    def save_into(self, folder: str | Path) -> Path:
        """Write the encoder as a folder: a weights copy (built-in) or a config.json naming the spec
        (`teachers.load_text_encoder_folder` reads it back)."""
        folder = Path(folder)
        info = self.describe()
        if isinstance(self.tower, ClipTeacher):
            return self.tower.save_pretrained(folder, extra_config={"text_encoder": info})
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / CONFIG_NAME, {"class": CLASS, "text_encoder": info})
        return folder


def read_info(folder: str | Path) -> dict[str, Any]:
    """The `text_encoder` record of a saved folder: {"spec", "name", "kind", "width", "context_length",
    "fingerprint"} (without loading any weights).

    Raises:
        CheckpointError: no config.json, malformed, or not a text encoder folder.
    """
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {CONFIG_NAME} (not a text encoder folder)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable JSON ({e})") from None
    meta = meta if isinstance(meta, dict) else {}
    info = meta.get("text_encoder")
    if meta.get("class") not in (CLASS, BUILTIN_CLASS) or not isinstance(info, dict):
        raise CheckpointError(f"{path}: not a text encoder folder (class {meta.get('class')!r} "
                              "without a 'text_encoder' record)")
    if info.get("kind") not in KINDS or not isinstance(info.get("spec"), str) or not isinstance(info.get("width"), int):
        raise CheckpointError(f"{path}: 'text_encoder' record needs kind in {list(KINDS)}, a spec and a width")
    if (info["kind"] == "builtin") != (meta["class"] == BUILTIN_CLASS):
        raise CheckpointError(f"{path}: kind {info['kind']!r} does not match class {meta['class']!r}")
    return info
