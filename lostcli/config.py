"""Typed configs: nested dataclasses loaded from YAML recipes plus dotted `--set a.b=c` overrides.

Every stage describes its run as a dataclass tree (model, data, optim, train, ...). `load_config` builds
it from defaults, then a recipe file, then overrides, checking every key and type on the way; an unknown
key or a wrong type raises `ConfigError` naming the dotted path. `to_dict` gives the resolved config
that every run directory and every exported model stores.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import ConfigError

T = TypeVar("T")

# A file holding one integer: the CPU threads a parent process (`lost demo`) currently gives this stage. The
# training loop re-reads it when it changes (torch.set_num_threads), so a stage started beside others takes the
# whole CPU once they finish, and gives threads back when a new stage starts beside it.
THREADS_FILE_ENV = "LOST_THREADS_FILE"


# ----------------------------------------------------------------------------------------------------
# Shared training configs (the one training loop reads these)
# ----------------------------------------------------------------------------------------------------


@dataclass
class OptimConfig:
    lr: float = 1e-4  # peak learning rate (after warm-up)
    weight_decay: float = 0.0  # AdamW decoupled weight decay, applied to >= 2-D weights only
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])  # AdamW betas
    warmup_steps: int = 0  # linear warm-up from 0 to lr
    schedule: str = "cosine"  # "cosine" (to 0 at the last step) or "constant" (after warm-up)
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping


@dataclass
class TrainConfig:
    steps: int = 1000  # optimizer steps (not micro-batches)
    batch_size: int = 16  # samples per process per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    ema_decay: float = 0.999  # EMA of the weights; 0 disables EMA
    mixed_precision: str = "auto"  # "auto" (bf16 on GPU, fp32 on CPU), "no", "bf16" or "fp16"
    log_every: int = 10  # steps between metric lines in metrics.jsonl
    save_every: int = 200  # steps between resumable checkpoints; 0 saves only at the end
    keep_checkpoints: int = 2  # checkpoints kept on disk (oldest removed first)
    seed: int = 0  # seeds model init, data order and every random draw of the task
    num_workers: int = 0  # DataLoader worker processes (0 = load in the training process)
    # Validation and early stopping, for tasks that define `validate()` (a score, higher is better): every
    # `eval_every` steps (and at the last step) the EMA weights are scored; the export holds the best-scoring
    # weights, and training stops after `patience` validations without a better score (0: never stops early).
    eval_every: int = 0  # 0: no validation; the export is the last step's weights
    patience: int = 0


# ----------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check `value` against the annotation `tp` (recursing into dataclasses, lists, dicts, unions)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return _build(tp, value, path)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{path}: {value!r} does not fit {_type_name(tp)}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{path}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        _, val_tp = typing.get_args(tp) or (Any, Any)
        return {str(k): _coerce(v, val_tp, f"{path}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{path}: expected {tp.__name__}, got {value!r}")
    return value


def _build(cls: type[T], data: dict, path: str = "") -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            where = f"{path}.{key}" if path else key
            raise ConfigError(f"{where}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            where = f"{path}.{f.name}" if path else f.name
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], where)
    return cls(**kwargs)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into (["a", "b", "c"], value), the value parsed as YAML (so 3e-4, true, [1,2])."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected dotted.key=value")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set {text}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {text}: value is not valid YAML ({str(e).splitlines()[0]})") from None
    return key.strip().split("."), value


def read_recipe(path: str | Path) -> dict:
    """Read a YAML recipe as a plain dict (an empty file is an empty recipe)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping at the top level")
    return data


def load_config(
    cls: type[T],
    recipe: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict | None = None,
) -> T:
    """Build `cls` from its defaults, then `base`, then the recipe file, then `--set` overrides.

    Raises:
        ConfigError: naming the dotted path of the first unknown key or ill-typed value.
    """
    data: dict = dict(base or {})
    if recipe is not None:
        data = _merge(data, read_recipe(recipe))
    for text in overrides or []:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            nxt = node.get(k)
            if not isinstance(nxt, dict):
                nxt = {}
                node[k] = nxt
            node = nxt
        node[keys[-1]] = value
    return _build(cls, data)


def to_dict(cfg: Any) -> dict:
    """The resolved config as plain JSON-ready data."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def check_preset(preset: str, presets: dict[str, Any], config_type: type, overrides: dict[str, Any]) -> None:
    """A model builder's inputs: ConfigError naming `model.preset` or `model.overrides.KEY` when the preset is
    not in `presets` or an override is not a field of `config_type`."""
    if preset not in presets:
        raise ConfigError(f"model.preset: {preset!r} is not one of {sorted(presets)}")
    known = set(config_type.__dataclass_fields__)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"model.overrides.{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")


def from_dict(cls: type[T], data: dict) -> T:
    """Rebuild a config from `to_dict` output (e.g. a model's config.json), with the same checks."""
    return _build(cls, data)
