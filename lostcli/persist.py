"""Persistence in one place: atomic writes, safe weight reading, strict loading and the model folder format.

Atomic writes. A file is written under a temporary sibling name (`.NAME.tmp-PID`), flushed to disk and renamed
over the target (`atomic_path`, `atomic_write_bytes/text/json`), so a reader sees the old file or the new one,
never half of one. A folder is written under `.NAME.tmp-PID` and swapped in with `replace_dir` (`atomic_dir`).

Weights. Released checkpoints come as safetensors files or as torch pickles wrapping the state dict
(Direct3D's `vae.ckpt` is `{"vae": state_dict}`, Lightning files hold `"state_dict"`). Pickles are only read
with `weights_only=True`, so a file cannot run code when it is opened (`read_state_dict`); `load_strict`
loads a state dict only when keys and shapes match exactly.

Model folders. Every model of the toolkit is saved as an HF-style folder:

    FOLDER/config.json          {"class": NAME, "preset": ..., "config": {...}, ...extras}, written last
    FOLDER/model.safetensors    the state dict
    FOLDER/<other>.json         optional extra files (a teacher's open_clip_config.json)

`Pretrained` gives a model class `save_pretrained(dir, extra_config)` and `from_pretrained(folder_or_run, device)`
over that format; a training run directory holding `export/` is accepted wherever a folder is.

This module sits below everything else in the package: it imports only `errors` (and `config` inside functions),
and torch only where weights are handled.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from safetensors import SafetensorError

from .errors import CheckpointError, DataError

if TYPE_CHECKING:  # torch is imported where weights are handled, so file writes stay light (dataset workers)
    import torch
    import torch.nn as nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
EXPORT_DIR = "export"  # a run directory's export folder, accepted in place of the folder itself
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
WRAPPER_KEYS = ("vae", "state_dict", "model")  # searched in this order in a checkpoint dict
STRIP_PREFIXES = ("module.", "model.")  # DDP / Lightning wrappers, stripped when every key has one


# ----------------------------------------------------------------------------------------------------
# Atomic writes
# ----------------------------------------------------------------------------------------------------


def tmp_path_for(path: str | Path) -> Path:
    """The temporary sibling a file or folder is written under before its rename: `.NAME.tmp-PID`."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def publish(tmp: str | Path, path: str | Path, fsync: bool = True) -> None:
    """Rename a completely written temporary file over `path` (after flushing it to disk)."""
    if fsync:
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    os.replace(tmp, path)


@contextmanager
def atomic_path(path: str | Path, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write a file to; when the block ends without an error the file
    replaces `path` in one rename, otherwise it is removed. For writers that want a file name (safetensors,
    PIL, zip); `atomic_write_bytes` / `_text` / `_json` cover data already in memory."""
    path = Path(path)
    tmp = tmp_path_for(path)
    try:
        yield tmp
        publish(tmp, path, fsync)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes, fsync: bool = True) -> None:
    """Write `data` to `path` atomically (temporary sibling, flushed, renamed)."""
    with atomic_path(path, fsync) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str, fsync: bool = True) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"), fsync)


def json_default(obj: Any) -> Any:
    """Let JSON records carry numpy scalars / small arrays and paths."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def atomic_write_json(path: str | Path, obj: Any, indent: int = 2, fsync: bool = True) -> None:
    """Write `obj` as indented JSON plus a newline, atomically (numpy values and paths allowed)."""
    text = json.dumps(obj, default=json_default, indent=indent, ensure_ascii=False) + "\n"
    atomic_write_text(path, text, fsync)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write a resolved config dataclass (`config.to_dict`) as YAML, atomically (a run's config.yaml)."""
    import yaml

    from .config import to_dict

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def replace_dir(tmp: str | Path, final: str | Path) -> None:
    """Swap a completely written folder `tmp` into place as `final`; an old `final` is moved aside first and
    removed only once the new one is in place."""
    tmp, final = Path(tmp), Path(final)
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)


@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder path beside `final` (not created: `shutil.copytree` may make it); when
    the block ends without an error the folder replaces `final` (`replace_dir`), otherwise it is removed."""
    final = Path(final)
    tmp = tmp_path_for(final)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
        replace_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------
# Reading weights and JSON safely
# ----------------------------------------------------------------------------------------------------


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _unwrap(obj: Any, path: Path, key: str | None) -> dict[str, Any]:
    """The state dict inside a loaded checkpoint object."""
    import torch

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


def _load_weights_object(path: Path, mmap: bool = False) -> Any:
    """What a .safetensors or .ckpt/.pt/.pth/.bin file holds (pickles weights only; `mmap`: map a zip-format
    pickle instead of reading it, so a multi-GB checkpoint costs no memory until its tensors are used)."""
    import torch
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(e)})") from None
    if suffix not in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path}: unsupported weights format '{suffix}' (expected .safetensors, {', '.join(PICKLE_SUFFIXES)})"
        )
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) pickles: no mmap
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


def _tensors_only(sd: dict[str, Any], where: str) -> dict[str, torch.Tensor]:
    """`sd` with wrapper prefixes stripped, once every entry is known to be a tensor (CheckpointError if not)."""
    import torch

    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{where}: entry '{bad[0]}' is a {type(sd[bad[0]]).__name__}, not a tensor")
    if not sd:
        raise CheckpointError(f"{where}: holds no tensors")
    return _strip_prefixes(dict(sd))


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
    return _tensors_only(_unwrap(_load_weights_object(path), path, key), str(path))


def read_state_dict_parts(path: str | Path, parts: tuple[str, ...]) -> dict[str, dict[str, torch.Tensor]]:
    """The state dicts a combined checkpoint holds under each of `parts`, read in one pass (memory-mapped).

    Direct3D's `model.ckpt` is `{"vae": state_dict, "dit": state_dict}` (4.3 GB); a part the file lacks is left
    out of the result, so the caller decides whether that is an error.

    Raises:
        CheckpointError: missing, unreadable or unsafe file, not a dict, or a part holding something else than
            a non-empty dict of tensors.
    """
    path = Path(path)
    obj = _load_weights_object(path, mmap=True)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of state dicts, found {type(obj).__name__}")
    out = {}
    for part in parts:
        if part not in obj:
            continue
        if not isinstance(obj[part], dict):
            raise CheckpointError(f"{path}: '{part}' is a {type(obj[part]).__name__}, not a state dict")
        out[part] = _tensors_only(obj[part], f"{path} [{part}]")
    return out


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of one of our own `model.safetensors` files (on CPU), as written by `save_model_folder`.

    Raises:
        CheckpointError: "<path>: weights file not found" or "<path>: unreadable (...)".
    """
    from safetensors.torch import load_file

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


# ----------------------------------------------------------------------------------------------------
# Strict loading
# ----------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------
# Model folders
# ----------------------------------------------------------------------------------------------------


def save_model_folder(directory: str | Path, module: nn.Module, meta: dict[str, Any],
                      json_files: dict[str, Any] | None = None) -> Path:
    """Write a model folder: `model.safetensors`, any extra JSON files, then `config.json` (= `meta`).

    Every file is written atomically and `config.json` comes last, so a folder whose config exists is
    complete. Tensors are saved as contiguous CPU copies (safetensors refuses views and shared storage).
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp))
    for name, data in {**(json_files or {}), CONFIG_NAME: meta}.items():
        atomic_write_json(directory / name, data)
    return directory


def find_model_folder(path: str | Path, what: str) -> Path:
    """The folder holding `config.json`: `path` itself or, for a run directory, `path/export`.

    Raises:
        CheckpointError: neither holds a config.json.
    """
    path = Path(path)
    folder = next((f for f in (path, path / EXPORT_DIR) if (f / CONFIG_NAME).is_file()), None)
    if folder is None:
        raise CheckpointError(f"{path}: no {CONFIG_NAME} here or in {path / EXPORT_DIR} "
                              f"(expected a {what} export or run directory)")
    return folder


def read_model_folder(path: str | Path, class_name: str, config_type: type, what: str) -> tuple[Path, dict, Any]:
    """Find and parse the `config.json` of a model folder (or of a run directory's `export/`).

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
    from .config import from_dict
    from .errors import ConfigError

    folder = find_model_folder(path, what)
    try:
        meta = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
        if meta.get("class") != class_name:
            raise ConfigError(f"class is {meta.get('class')!r}, not {class_name}")
        config = from_dict(config_type, meta["config"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError,
            ConfigError) as e:
        raise CheckpointError(f"{folder / CONFIG_NAME}: not a {what} config ({e})") from None
    return folder, meta, config


class Pretrained:
    """`save_pretrained` / `from_pretrained` over the model folder format, for an `nn.Module` subclass.

    A class sets `config_class` (the dataclass stored under "config") and `pretrained_what` (its name in error
    messages), and overrides a hook where its folder differs:

        pretrained_meta()      the config.json entries the class owns (default: class, preset, config, and
                               latent_stats from the `latent_mean` / `latent_std` buffers when it is a key)
        pretrained_module()    the module whose state dict is the weights file (default: self)
        pretrained_files()     extra JSON files written beside config.json (default: none)
        build_pretrained()     the untrained model for a parsed config (default: cls(config, preset=...))
        loaded_from()          called once the weights are in (default: keep the other entries as extra_config)

    `pretrained_keys` names the owned entries: `extra_config` may not use them, and they are not extras when
    loading. `pretrained_frozen` makes `from_pretrained` turn gradients off.
    """

    config_class: ClassVar[type]
    pretrained_what: ClassVar[str]
    pretrained_keys: ClassVar[tuple[str, ...]] = ("class", "preset", "config")
    pretrained_frozen: ClassVar[bool] = False

    @classmethod
    def pretrained_class(cls) -> str:
        """The "class" field of the config.json (default: the class name)."""
        return cls.__name__

    def pretrained_meta(self) -> dict[str, Any]:
        from .config import to_dict

        meta = {"class": self.pretrained_class(), "preset": getattr(self, "preset", None),
                "config": to_dict(self.config)}
        if "latent_stats" in self.pretrained_keys:  # a model that normalises latents records their statistics
            meta["latent_stats"] = {"mean": self.latent_mean.tolist(), "std": self.latent_std.tolist()}
        return meta

    def pretrained_module(self) -> nn.Module:
        return self  # type: ignore[return-value]

    def pretrained_files(self) -> dict[str, Any]:
        return {}

    def save_pretrained(self, directory: str | Path, extra_config: dict[str, Any] | None = None) -> Path:
        """Write `config.json` (the class's entries, its `extra_config` and `extra_config`) and
        `model.safetensors` into `directory` (see `save_model_folder`); the folder.

        Raises:
            ConfigError: an extra entry uses one of the class's own keys.
        """
        from .errors import ConfigError

        extra = {**getattr(self, "extra_config", {}), **(extra_config or {})}
        clash = [k for k in extra if k in self.pretrained_keys]
        if clash:
            raise ConfigError(f"{directory}: extra_config may not use the reserved keys {clash}")
        meta = {**self.pretrained_meta(), **extra}
        return save_model_folder(directory, self.pretrained_module(), meta, self.pretrained_files())

    @classmethod
    def build_pretrained(cls, config: Any, meta: dict[str, Any]) -> Any:
        return cls(config, preset=meta.get("preset"))

    def loaded_from(self, folder: Path, meta: dict[str, Any]) -> None:
        self.extra_config = {k: v for k, v in meta.items() if k not in self.pretrained_keys}

    @classmethod
    def from_pretrained(cls, path: str | Path, device: torch.device | str = "cpu") -> Any:
        """Load a folder written by `save_pretrained`, or a run directory holding `export/`: weights loaded
        strictly (keys and shapes), returned on `device` in eval mode.

        Raises:
            CheckpointError: no config.json, another class, a config that does not parse, a missing or
                unreadable weights file, or weights that do not fit the config exactly.
        """
        from .errors import ConfigError

        folder, meta, config = read_model_folder(path, cls.pretrained_class(), cls.config_class, cls.pretrained_what)
        try:
            model = cls.build_pretrained(config, meta)
        except ConfigError as e:
            raise CheckpointError(f"{folder / CONFIG_NAME}: not a {cls.pretrained_what} config ({e})") from None
        weights = folder / WEIGHTS_NAME
        load_strict(model.pretrained_module(), read_safetensors(weights), str(weights))
        model.loaded_from(folder, meta)
        model = model.to(device).eval()
        return model.requires_grad_(False) if cls.pretrained_frozen else model



def bind_settings(path: Path, settings: dict[str, Any], made: str, write: bool) -> None:
    """Bind an output folder to one set of settings: `path` (settings.json) is written on the first run and
    compared on every later one, so a resumed batch job never mixes products of different settings.

    Args:
        made: what the folder holds, for the message ("images made", "shapes lifted").
        write: whether this process writes the file when it is absent (rank 0 only under Accelerate).

    Raises:
        DataError: the folder was made with other settings (names the first that differs).
    """
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        for key, value in settings.items():
            if old.get(key) != value:
                raise DataError(f"{path}: {made} with {key} {old.get(key)!r}, not {value!r}; "
                                "use another --out or the same settings")
    elif write:
        atomic_write_json(path, settings)
