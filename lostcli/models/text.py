"""The text encoder that conditions LoST-GPT: an OpenCLIP text tower, frozen, captions -> one embedding.

Sources (`load_text_encoder(spec)`):

- the built-in teacher (`lost teacher train`'s run or export folder): its text tower, trained offline on the
  dataset's own captions. Saved into a bundle as a full copy (`ClipTeacher.save_pretrained`), so the bundle
  works without the teacher run.
- `open_clip:MODEL/TAG` (hub), `open_clip:MODEL@WEIGHTS_FILE` or `open_clip:FOLDER`: a pretrained OpenCLIP
  model through `models.teacher.load_teacher`. Saved as a `config.json` that records the spec, and loaded
  from it again (the weights stay where the spec points: the hub cache or the local file).
- a folder written by `TextEncoder.save_into` (a bundle's `text_encoder/`, a GPT run's `text_encoder/`).

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
from .teacher import BUILTIN_CLASS, CONFIG_NAME, ClipTeacher, OpenClipTeacher, load_teacher

CLASS = "TextEncoder"  # the "class" of a config.json that records an OpenCLIP spec
SPEC_HELP = ("a built-in teacher folder (lost teacher train's run or export), open_clip:MODEL/TAG, "
             "open_clip:MODEL@WEIGHTS_FILE, open_clip:FOLDER, or a saved text_encoder/ folder")
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
        """Write the encoder as a folder: a weights copy (built-in) or a config.json naming the spec."""
        folder = Path(folder)
        info = self.describe()
        if isinstance(self.tower, ClipTeacher):
            return self.tower.save_pretrained(folder, extra_config={"text_encoder": info})
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / (CONFIG_NAME + ".tmp")
        tmp.write_text(json.dumps({"class": CLASS, "text_encoder": info}, indent=2) + "\n")
        tmp.replace(folder / CONFIG_NAME)
        return folder

    @classmethod
    def from_folder(cls, folder: str | Path, device: str | torch.device = "cpu") -> TextEncoder:
        """Load a folder written by `save_into`.

        Raises:
            CheckpointError: no or malformed config.json, weights that do not fit, an OpenCLIP spec that
                cannot be loaded here, or a model whose width differs from the recorded one.
        """
        folder = Path(folder)
        info = read_info(folder)
        if info["kind"] == "builtin":
            teacher: OpenClipTeacher = ClipTeacher.from_pretrained(folder, device=device)
        else:
            teacher = _open_clip_tower(info["spec"], device)
        encoder = cls(teacher, info["spec"])
        if encoder.width != info["width"]:
            raise CheckpointError(f"{folder / CONFIG_NAME}: records width {info['width']}, "
                                  f"{info['spec']} gives {encoder.width}")
        return encoder


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


def _open_clip_tower(spec: str, device: str | torch.device) -> OpenClipTeacher:
    tower = load_teacher(spec, device=device)
    if not isinstance(tower, OpenClipTeacher):
        raise CheckpointError(f"{spec}: has no text tower (a text encoder is {SPEC_HELP})")
    return tower


def load_text_encoder(spec: str | Path, device: str | torch.device = "cpu") -> TextEncoder:
    """Resolve a text encoder spec (see the module docstring) into a frozen `TextEncoder`.

    Raises:
        ConfigError: an empty spec. CheckpointError: one line: a timm model (no text tower), no such
            folder, unknown OpenCLIP model, missing or misfitting weights, unreachable hub.
    """
    s = str(spec).strip()
    if not s:
        raise ConfigError(f"--text-encoder: empty spec (expected {SPEC_HELP})")
    if s.startswith("timm:"):
        raise CheckpointError(f"{s}: a timm model has no text tower (expected {SPEC_HELP})")
    path = Path(s).expanduser()
    if path.is_dir() and not (path / CONFIG_NAME).is_file() and (path / "export" / CONFIG_NAME).is_file():
        path = path / "export"  # a `lost teacher train` run directory
    if path.is_dir() and (path / CONFIG_NAME).is_file():
        try:
            meta = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path / CONFIG_NAME}: unreadable JSON ({e})") from None
        if isinstance(meta, dict) and isinstance(meta.get("text_encoder"), dict):
            return TextEncoder.from_folder(path, device=device)  # saved by save_into
        if not isinstance(meta, dict) or meta.get("class") != BUILTIN_CLASS:
            raise CheckpointError(f"{path}: not a built-in teacher or text encoder folder "
                                  f"(class {meta.get('class') if isinstance(meta, dict) else None!r}; "
                                  f"expected {SPEC_HELP})")
        s = str(path)
    tower = _open_clip_tower(s, device)
    return TextEncoder(tower, tower.spec or s)
