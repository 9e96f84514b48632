"""Reading weight files safely and loading them with exact key and shape matching.

Released checkpoints come as safetensors files or as torch pickles wrapping the state dict
(Direct3D's `vae.ckpt` is `{"vae": state_dict}`, Lightning files hold `"state_dict"`). Pickles are
only read with `weights_only=True`, so a file cannot run code when it is opened.
"""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import CheckpointError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
WRAPPER_KEYS = ("vae", "state_dict", "model")  # searched in this order in a checkpoint dict
STRIP_PREFIXES = ("module.", "model.")  # DDP / Lightning wrappers, stripped when every key has one


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _unwrap(obj: Any, path: Path, key: str | None) -> dict[str, Any]:
    """The state dict inside a loaded checkpoint object."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    if key is not None:
        if key not in obj or not isinstance(obj[key], dict):
            raise CheckpointError(f"{path}: no state dict under key '{key}' (top-level keys: {list(obj)[:8]})")
        return obj[key]
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj  # a bare state dict
    for k in WRAPPER_KEYS:
        if isinstance(obj.get(k), dict):
            return obj[k]
    return obj  # mixed content: the tensor check below names the first offending entry


def _strip_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = True
    while changed and sd:
        changed = False
        for prefix in STRIP_PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix) :]: v for k, v in sd.items()}
                changed = True
    return sd


def read_state_dict(path: str | Path, key: str | None = None) -> dict[str, torch.Tensor]:
    """Read a state dict from .safetensors, or from a .ckpt/.pt/.pth/.bin pickle (weights only).

    Args:
        path: the weights file.
        key: take the state dict under this top-level key (default: "vae", "state_dict" or "model"
            when present, else the whole dict).

    Returns:
        name -> tensor on CPU, with a "module."/"model." prefix removed when every key carries it.

    Raises:
        CheckpointError: missing, unreadable, unsafe (arbitrary pickled objects) or non-tensor content.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            obj: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(e)})") from None
    elif suffix in PICKLE_SUFFIXES:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            # The weights-only unpickler met a class or function: never run it, name it instead.
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
            if found:
                raise CheckpointError(
                    f"{path}: refuses to unpickle arbitrary objects (found {found.group(1)}; weights_only=True); "
                    "re-save the state dict as .safetensors or a plain dict of tensors"
                ) from None
            raise CheckpointError(f"{path}: not a readable torch checkpoint (corrupt or not a torch file)") from None
        except (RuntimeError, OSError, EOFError, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable torch checkpoint ({_first_line(e)})") from None
    else:
        raise CheckpointError(
            f"{path}: unsupported weights format '{suffix}' (expected .safetensors, {', '.join(PICKLE_SUFFIXES)})"
        )
    sd = _unwrap(obj, path, key)
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entry '{bad[0]}' is a {type(sd[bad[0]]).__name__}, not a tensor")
    if not sd:
        raise CheckpointError(f"{path}: holds no tensors")
    return _strip_prefixes(dict(sd))


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of one of our own `model.safetensors` files (on CPU), as written by `save_model_folder`.

    Raises:
        CheckpointError: "<path>: weights file not found" or "<path>: unreadable (...)".
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: unreadable ({_first_line(e)})") from None


def read_json_object(path: str | Path) -> dict[str, Any]:
    """A JSON file holding one object (a model folder's config.json, an eval.json).

    Raises:
        CheckpointError: missing file, malformed JSON, or not an object.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: malformed JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


@dataclass
class StateDictReport:
    """How a state dict differs from a module's: keys it lacks, extra keys, and shape mismatches."""

    missing: list[str] = field(default_factory=list)  # in the module, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the module
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)  # (key, want, got)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def lines(self) -> list[str]:
        """One human-readable line per differing key (empty when ok)."""
        out = [f"missing: {k}" for k in self.missing]
        out += [f"unexpected: {k}" for k in self.unexpected]
        out += [f"shape mismatch: {k} expects {list(w)}, file has {list(g)}" for k, w, g in self.mismatched]
        return out

    def summary(self) -> str:
        """One line naming the counts and the first offending keys."""
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing (first: {', '.join(self.missing[:3])})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected (first: {', '.join(self.unexpected[:3])})")
        if self.mismatched:
            k, w, g = self.mismatched[0]
            parts.append(f"{len(self.mismatched)} misshapen (first: {k} expects {list(w)}, file has {list(g)})")
        return "; ".join(parts) if parts else "matches"


def compare_state_dict(module: nn.Module, sd: dict[str, torch.Tensor]) -> StateDictReport:
    """Compare `sd` against `module.state_dict()` (parameters and persistent buffers), keys sorted."""
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in sd.items()}
    return StateDictReport(
        missing=sorted(want.keys() - got.keys()),
        unexpected=sorted(got.keys() - want.keys()),
        mismatched=[(k, want[k], got[k]) for k in sorted(want.keys() & got.keys()) if want[k] != got[k]],
    )


def load_strict(module: nn.Module, sd: dict[str, torch.Tensor], source: str, assign: bool = False) -> None:
    """Load `sd` into `module` only if keys and shapes match exactly (values cast to the module's dtype).

    Args:
        assign: adopt the tensors instead of copying (for modules built on the meta device).

    Raises:
        CheckpointError: "<source>: does not fit <Module>: N missing (first: ...); ..." on any mismatch.
    """
    report = compare_state_dict(module, sd)
    if not report.ok:
        raise CheckpointError(f"{source}: does not fit {type(module).__name__}: {report.summary()}")
    own = module.state_dict()
    cast = {}
    for k, v in sd.items():
        target = own[k]
        # float weights follow the module's dtype (fp16 release -> fp32 model); integer buffers stay exact
        cast[k] = v.to(target.dtype) if v.is_floating_point() and target.is_floating_point() else v
    module.load_state_dict(cast, strict=True, assign=assign)


def save_model_folder(directory: str | Path, module: nn.Module, meta: dict[str, Any],
                      json_files: dict[str, Any] | None = None) -> Path:
    """Write an HF-style model folder: `model.safetensors`, any extra JSON files, then `config.json`.

    Every file is written to a temporary name and renamed, and `config.json` comes last, so a folder whose
    config exists is complete. Tensors are saved as contiguous CPU copies (safetensors refuses views and
    shared storage).
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
    writes = [("model.safetensors", lambda p: save_file(state, str(p)))]
    for name, data in {**(json_files or {}), "config.json": meta}.items():
        writes.append((name, lambda p, data=data: p.write_text(json.dumps(data, indent=2) + "\n")))
    for name, write in writes:
        tmp = directory / (name + ".tmp")
        write(tmp)
        tmp.replace(directory / name)
    return directory


def load_model_folder(cls: type, path: str | Path, config_type: type, what: str, device: Any = "cpu",
                      own_keys: tuple[str, ...] = ("class", "preset", "config")) -> Any:
    """Build `cls(config, preset=...)` from an export folder (or a run directory's `export/`), load its weights
    strictly, keep the config.json entries other than `own_keys` as `extra_config`; returned in eval mode.

    Raises:
        CheckpointError: as `read_model_folder`, or weights that do not fit the config exactly.
    """
    folder, meta, config = read_model_folder(path, cls.__name__, config_type, what)
    model = cls(config, preset=meta.get("preset"))
    load_strict(model, read_state_dict(folder / "model.safetensors"), str(folder / "model.safetensors"))
    model.extra_config = {k: v for k, v in meta.items() if k not in own_keys}
    return model.to(device).eval()


def read_model_folder(path: str | Path, class_name: str, config_type: type, what: str) -> tuple[Path, dict, Any]:
    """Find and parse the `config.json` of an export folder (or of a run directory's `export/`).

    Args:
        path: the folder, or a run directory holding `export/`.
        class_name: the "class" field the config must carry (e.g. "LoSTTokenizer").
        config_type: the dataclass its "config" entry is read into (type-checked by `config.from_dict`).
        what: the model's name in error messages ("LoST tokenizer").

    Returns:
        (folder, meta, config): the folder holding config.json + model.safetensors, the whole parsed JSON and
        the typed config.

    Raises:
        CheckpointError: no config.json, unreadable JSON, another class, or a config that does not parse.
    """
    from ..config import from_dict
    from ..errors import ConfigError

    path = Path(path)
    folder = next((f for f in (path, path / "export") if (f / "config.json").is_file()), None)
    if folder is None:
        raise CheckpointError(f"{path}: no config.json here or in {path / 'export'} "
                              f"(expected a {what} export or run directory)")
    try:
        meta = json.loads((folder / "config.json").read_text())
        if meta.get("class") != class_name:
            raise ConfigError(f"class is {meta.get('class')!r}, not {class_name}")
        config = from_dict(config_type, meta["config"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError,
            ConfigError) as e:
        raise CheckpointError(f"{folder / 'config.json'}: not a {what} config ({e})") from None
    return folder, meta, config
