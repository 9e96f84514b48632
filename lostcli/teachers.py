"""Teachers and text encoders by spec: the strings users pass on the command line, resolved into models.

`models/teacher.py` and `models/text.py` hold the networks; they are built from modules and tensors and know
nothing of hubs or spec strings. This module sits one level above them and does the rest:

- `load_teacher(spec)`: a built-in teacher folder, `timm:NAME[@WEIGHTS_FILE]`, `open_clip:NAME/TAG`,
  `open_clip:NAME@WEIGHTS_FILE`, `open_clip:hf-hub:ORG/REPO` or `open_clip:FOLDER` -> a frozen `Teacher`.
- `load_text_encoder(spec)`: the same OpenCLIP specs, a built-in teacher run or export, or a saved
  `text_encoder/` folder -> a frozen `TextEncoder`; `load_text_encoder_folder(folder)` reads a saved folder.
- hub errors become one line, with a hint when `HF_HUB_OFFLINE` is set; third-party log records emitted while
  a model is created are dropped only for that call (`quiet_logging`), never for the whole process.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, ConfigError, LostError
from .models.teacher import (BUILTIN_CLASS, CLIP_MEAN, CLIP_STD, CONFIG_NAME, OPEN_CLIP_CONFIG_NAME, ClipTeacher,
                             OpenClipTeacher, Teacher, TimmTeacher)
from .models.text import TextEncoder, read_info

# ----------------------------------------------------------------------------------------------------
# Scoped quiet logging
# ----------------------------------------------------------------------------------------------------


class _PackageFilter(logging.Filter):
    """Drops records up to `level` that come from one package: its own loggers, or module-level `logging.*`
    calls made from its source files (which land on the root logger)."""

    def __init__(self, package: str, level: int) -> None:
        super().__init__()
        self.package, self.level = package, level
        module = sys.modules.get(package)
        file = getattr(module, "__file__", None)
        self.folder = os.path.dirname(os.path.abspath(file)) + os.sep if file else None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > self.level:
            return True
        ours = record.name == self.package or record.name.startswith(self.package + ".")
        if not ours and self.folder is not None:
            ours = os.path.abspath(record.pathname).startswith(self.folder)
        return not ours


@contextmanager
def quiet_logging(package: str, level: int = logging.ERROR) -> Iterator[None]:
    """While the block runs, drop log records of `package` at or below `level` (default: up to ERROR).

    Only that package's records are dropped, only until the block ends: the package's logger gets its level
    back and the root logger loses the filter again; other loggers, handlers and `logging.disable` are left
    as they are.
    """
    root, own = logging.getLogger(), logging.getLogger(package)
    filt = _PackageFilter(package, level)
    old_level = own.level
    root.addFilter(filt)  # module-level logging.info(...) calls of the package (open_clip makes those)
    own.setLevel(max(old_level, level + 1))  # the package's own loggers and their children
    try:
        yield
    finally:
        own.setLevel(old_level)
        root.removeFilter(filt)


# ----------------------------------------------------------------------------------------------------
# Teachers
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
    try:
        with quiet_logging("open_clip"):  # it logs a failed download on the root logger: keep errors one line
            model = open_clip.create_model(model_name, pretrained=pretrained, **kwargs)
    except Exception as e:  # hub download, unknown tag, weights that do not fit
        if file is not None or folder.is_dir():
            where = file if file is not None else folder
            raise CheckpointError(f"{where}: cannot load as OpenCLIP {model_name} "
                                  f"({' '.join(str(e).split())[:200]})") from None
        raise _hub_error(spec, e) from None
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


# ----------------------------------------------------------------------------------------------------
# Text encoders
# ----------------------------------------------------------------------------------------------------

TEXT_SPEC_HELP = ("a built-in teacher folder (lost teacher train's run or export), open_clip:MODEL/TAG, "
                  "open_clip:MODEL@WEIGHTS_FILE, open_clip:FOLDER, or a saved text_encoder/ folder")


def _open_clip_tower(spec: str, device: str | torch.device) -> OpenClipTeacher:
    tower = load_teacher(spec, device=device)
    if not isinstance(tower, OpenClipTeacher):
        raise CheckpointError(f"{spec}: has no text tower (a text encoder is {TEXT_SPEC_HELP})")
    return tower


def load_text_encoder_folder(folder: str | Path, device: str | torch.device = "cpu") -> TextEncoder:
    """Load a folder written by `TextEncoder.save_into`.

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
    encoder = TextEncoder(teacher, info["spec"])
    if encoder.width != info["width"]:
        raise CheckpointError(f"{folder / CONFIG_NAME}: records width {info['width']}, "
                              f"{info['spec']} gives {encoder.width}")
    return encoder


def load_text_encoder(spec: str | Path, device: str | torch.device = "cpu") -> TextEncoder:
    """Resolve a text encoder spec (see the module docstring) into a frozen `TextEncoder`.

    Raises:
        ConfigError: an empty spec. CheckpointError: one line: a timm model (no text tower), no such
            folder, unknown OpenCLIP model, missing or misfitting weights, unreachable hub.
    """
    s = str(spec).strip()
    if not s:
        raise ConfigError(f"--text-encoder: empty spec (expected {TEXT_SPEC_HELP})")
    if s.startswith("timm:"):
        raise CheckpointError(f"{s}: a timm model has no text tower (expected {TEXT_SPEC_HELP})")
    path = Path(s).expanduser()
    if path.is_dir() and not (path / CONFIG_NAME).is_file() and (path / "export" / CONFIG_NAME).is_file():
        path = path / "export"  # a `lost teacher train` run directory
    if path.is_dir() and (path / CONFIG_NAME).is_file():
        try:
            meta = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path / CONFIG_NAME}: unreadable JSON ({e})") from None
        if isinstance(meta, dict) and isinstance(meta.get("text_encoder"), dict):
            return load_text_encoder_folder(path, device=device)  # saved by save_into
        if not isinstance(meta, dict) or meta.get("class") != BUILTIN_CLASS:
            raise CheckpointError(f"{path}: not a built-in teacher or text encoder folder "
                                  f"(class {meta.get('class') if isinstance(meta, dict) else None!r}; "
                                  f"expected {TEXT_SPEC_HELP})")
        s = str(path)
    tower = _open_clip_tower(s, device)
    return TextEncoder(tower, tower.spec or s)
