"""The LoST-GPT stage: run config, the tokens + caption-embeddings dataset, the Task, and the bundle export.

Training data of one shape: its first L cached tokens (table `tokens`, written by `lost dataset tokens
DIR --model BUNDLE` with the same bundle) and the embeddings of its captions. Captions are the stored
caption, any `meta.captions` list, and for built-in shapes `data.caption_variants` re-phrasings of the same
facts (from the generator parameters kept in `meta.params`). Every distinct caption is embedded ONCE per run
by the frozen text encoder and cached in RUN/text_cache/ (keyed by the encoder spec, checked against the
encoder's weights fingerprint), so resuming reuses the exact same embeddings.

One training step on a batch of B shapes:

    c    = text[b, k_b]               k_b drawn uniformly among shape b's captions (torch RNG: resumable)
    loss = LoSTGPT(x[:, :L], c)       teacher forcing; c -> learned null condition with p = cond_drop_prob;
                                      per-token DiffLoss, each target repeated `repeats` times (MAR)

The run directory holds, besides the loop's files, `text_encoder/` (what `lost gpt export` copies into the
bundle) and `export/` (the GPT with EMA weights, its sampling defaults and the tokens' model id).
"""

from __future__ import annotations

import hashlib
import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset

from ..bundle import gpt_entry, read_bundle, write_bundle, write_components
from ..config import OptimConfig, TrainConfig, to_dict
from ..data.store import DatasetStore
from ..errors import CheckpointError, ConfigError, DataError
from ..models.gpt import LoSTGPT, build_gpt
from ..models.text import TextEncoder, read_info
from ..persist import atomic_path, atomic_write_json
from .loop import EXPORT_DIR, Task

TOKENS = "tokens"
TEXT_DIR = "text_encoder"  # RUN/text_encoder: the encoder the run was conditioned on
CACHE_DIR = "text_cache"  # RUN/text_cache: caption embeddings
SCHEDULES = ("constant", "linear")


# ----------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------


@dataclass
class GPTModelConfig:
    preset: str = "gpt_tiny"  # gpt_tiny, gpt_small or gpt_paper (models/gpt.py)
    overrides: dict[str, Any] = field(default_factory=dict)  # GPTConfig overrides (token_dim, cond_dim: from the data)


@dataclass
class GPTDataConfig:
    caption_variants: int = 4  # extra phrasings per built-in shape (from its generator parameters); 0: stored only
    cache: bool = True  # hold the split's tokens in memory (806 x 32 x 32 floats: 3.3 MB; paper scale: off)
    text_batch_size: int = 256  # captions per text-encoder forward pass when filling the cache


@dataclass
class GPTSamplingConfig:
    guidance: float = 3.0  # classifier-free guidance scale on the diffusion head (1 = none)
    guidance_schedule: str = "constant"  # "constant" or "linear" (1 -> guidance over the positions, MAR)
    temperature: float = 1.0  # scale of the head's starting noise


@dataclass
class GPTRunConfig:
    model: GPTModelConfig = field(default_factory=GPTModelConfig)
    data: GPTDataConfig = field(default_factory=GPTDataConfig)
    sampling: GPTSamplingConfig = field(default_factory=GPTSamplingConfig)  # defaults stored with the export
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-4, weight_decay=0.05, warmup_steps=50))
    train: TrainConfig = field(default_factory=TrainConfig)
    split: str = "train"  # dataset split to train on
    bundle: Optional[str] = None  # model bundle whose tokens the data holds (`--model` sets it)
    text_encoder: Optional[str] = None  # text encoder spec (`--text-encoder` sets it)


def check_run(cfg: GPTRunConfig) -> None:
    """Reject settings the stage cannot use, naming the dotted path."""
    s, d = cfg.sampling, cfg.data
    checks = [
        ("bundle", cfg.bundle is not None, "no model bundle (pass --model BUNDLE)"),
        ("text_encoder", cfg.text_encoder is not None, "no text encoder (pass --text-encoder SPEC)"),
        ("sampling.guidance", s.guidance >= 0, f"must be >= 0 (got {s.guidance})"),
        ("sampling.guidance_schedule", s.guidance_schedule in SCHEDULES,
         f"must be one of {list(SCHEDULES)} (got {s.guidance_schedule!r})"),
        ("sampling.temperature", s.temperature > 0, f"must be > 0 (got {s.temperature})"),
        ("data.caption_variants", d.caption_variants >= 0, f"must be >= 0 (got {d.caption_variants})"),
        ("data.text_batch_size", d.text_batch_size >= 1, f"must be >= 1 (got {d.text_batch_size})"),
    ]
    for path, ok, why in checks:
        if not ok:
            raise ConfigError(f"{path}: {why}")


# ----------------------------------------------------------------------------------------------------
# Tokens and captions
# ----------------------------------------------------------------------------------------------------


def open_tokens(root: str | Path, split: str | None, model_id: str, bundle: str = "BUNDLE") -> tuple[list[str], dict]:
    """Ids of the split's shapes in the `tokens` table, and the table's stats.json.

    Raises:
        DataError: no tokens table, no stats, tokens of another model than `model_id`, or an empty split.
    """
    root = Path(root)
    store = DatasetStore(root)
    if not store.has_table(TOKENS):
        raise DataError(f"{root}: no '{TOKENS}' table (run `lost dataset tokens {root} --model {bundle}` first)")
    stats = store.read_stats(TOKENS)
    theirs = stats.get("model_id")
    if theirs != model_id:
        raise DataError(f"{root / TOKENS}: holds tokens of model {str(theirs)[:12]}, not of {bundle} "
                        f"({model_id[:12]}); delete the table and run `lost dataset tokens {root} --model {bundle}`")
    for key in ("num_tokens", "token_dim"):
        if not isinstance(stats.get(key), int) or stats[key] < 1:
            raise DataError(f"{root / TOKENS / 'stats.json'}: no positive integer '{key}'")
    ids = store.ids(split=split, table=TOKENS)
    if not ids:
        raise DataError(f"{root / TOKENS}: no shapes of split {split!r}")
    return ids, stats


def shape_captions(record: dict, variants: int) -> list[str]:
    """Distinct captions of one prepared item, the stored one first.

    Built-in shapes (category of the procedural set and `meta.params`) add `variants` re-phrasings of the
    same facts, each from an rng seeded by (item id, k): the same every run.
    """
    from ..data.synth import CATEGORIES, caption_from_params

    meta = record.get("meta") if isinstance(record.get("meta"), dict) else {}
    extra = meta.get("captions")
    found = [record.get("caption"), *(extra if isinstance(extra, list) else [])]
    params, category = meta.get("params"), record.get("category")
    if variants > 0 and isinstance(params, dict) and category in CATEGORIES:
        seed = zlib.crc32(str(record["id"]).encode("utf-8"))
        for k in range(variants):
            try:
                found.append(caption_from_params(category, params, np.random.default_rng([seed, k])))
            except (KeyError, TypeError, ValueError, IndexError):
                break  # parameters not of this generator: keep the stored captions
    out: list[str] = []
    for c in found:
        if isinstance(c, str) and c.strip() and c.strip() not in out:
            out.append(c.strip())
    return out


def caption_lists(root: str | Path, ids: list[str], variants: int) -> list[list[str]]:
    """Captions of each shape in `ids` (from the `items` records).

    Raises:
        DataError: an id without an items record, or a shape without any caption.
    """
    records = {r["id"]: r for r in DatasetStore(Path(root)).records()}
    out = []
    for i in ids:
        if i not in records:
            raise DataError(f"{Path(root) / TOKENS}: shape {i!r} has tokens but no record in the items table")
        captions = shape_captions(records[i], variants)
        if not captions:
            raise DataError(f"{root}: item {i!r} has no caption")
        out.append(captions)
    return out


def _digest(texts: list[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()


def text_bank(encoder: TextEncoder, captions: list[list[str]], cache_dir: Path | None = None,
              batch_size: int = 256) -> tuple[torch.Tensor, list[list[int]]]:
    """Embed every distinct caption once: (bank [U, width] float32 CPU, rows: per shape its bank rows).

    With `cache_dir`, the bank is read from / written to `cache_dir/<sha of spec>.safetensors` (atomic);
    a cache made by another encoder (fingerprint) or for other captions is recomputed and replaced.
    """
    unique = sorted({c for cs in captions for c in cs})
    index = {c: i for i, c in enumerate(unique)}
    rows = [[index[c] for c in cs] for cs in captions]
    want = {"spec": encoder.spec, "fingerprint": encoder.fingerprint(), "captions": _digest(unique),
            "count": str(len(unique)), "width": str(encoder.width)}
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{hashlib.sha256(encoder.spec.encode('utf-8')).hexdigest()[:16]}.safetensors"
        bank = _read_cache(path, want)
        if bank is not None:
            return bank, rows
    bank = encoder.encode(unique, batch_size=batch_size).cpu().contiguous()  # [U, W]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file({"embeddings": bank}, str(tmp), metadata=want)
        atomic_write_json(path.with_suffix(".json"), {**want, "texts": unique}, indent=1)
    return bank, rows


def _read_cache(path: Path, want: dict[str, str]) -> torch.Tensor | None:
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}) != want:
                return None
            return f.get_tensor("embeddings")
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return None  # damaged: recomputed


# ----------------------------------------------------------------------------------------------------
# The dataset
# ----------------------------------------------------------------------------------------------------


class GPTDataset(Dataset):
    """Shapes as {"tokens": [L, D], "text": [K, W], "text_mask": bool [K], "index"}.

    "text" holds the embeddings of the shape's captions, zero-padded to K (the most captions any shape has);
    the Task picks one per step. Deterministic: item i is the same every time it is read.

    Args:
        root: prepared dataset directory with a `tokens` table.
        ids: the shapes, in order (from `open_tokens`).
        num_tokens: L, the prefix of each shape's tokens that is kept.
        bank: caption embeddings [U, W]; rows: per shape, its rows of `bank`.
        cache: read every shape's tokens once (streamed shard by shard) and keep them in memory.
    """

    def __init__(self, root: str | Path, ids: list[str], num_tokens: int, bank: torch.Tensor,
                 rows: list[list[int]], cache: bool = True) -> None:
        if len(rows) != len(ids):
            raise ValueError(f"{len(rows)} caption lists for {len(ids)} shapes")
        self.root, self.ids, self.num_tokens = Path(root), list(ids), int(num_tokens)
        self.store = DatasetStore(self.root)
        self.bank = bank.float()
        K = max(len(r) for r in rows)
        self.rows = torch.zeros(len(ids), K, dtype=torch.long)  # [N, K] bank rows, padded with 0
        self.mask = torch.zeros(len(ids), K, dtype=torch.bool)  # [N, K] True: a real caption
        for i, r in enumerate(rows):
            self.rows[i, :len(r)] = torch.tensor(r)
            self.mask[i, :len(r)] = True
        self.tokens: torch.Tensor | None = None
        if cache:
            position = {i: n for n, i in enumerate(self.ids)}
            first = None
            for rec, arrays in self.store.iter_table(TOKENS, keys=["tokens"]):
                if rec["id"] not in position:
                    continue
                t = self._check(rec["id"], arrays["tokens"])
                if first is None:
                    first = torch.zeros(len(self.ids), *t.shape)
                first[position[rec["id"]]] = t
            self.tokens = first

    def _check(self, id: str, a: np.ndarray) -> torch.Tensor:
        if a.ndim != 2 or a.shape[0] < self.num_tokens:
            raise DataError(f"{self.root / TOKENS}: shape {id!r} holds tokens {list(a.shape)}, "
                            f"fewer than the {self.num_tokens} the GPT reads")
        return torch.from_numpy(np.asarray(a[: self.num_tokens], dtype=np.float32).copy())

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self.tokens is not None:
            tokens = self.tokens[index]
        else:
            tokens = self._check(self.ids[index], self.store.load(self.ids[index], ["tokens"], table=TOKENS)["tokens"])
        return {"tokens": tokens, "text": self.bank[self.rows[index]] * self.mask[index, :, None],
                "text_mask": self.mask[index], "index": torch.tensor(index)}

    @property
    def num_captions(self) -> int:
        """Distinct captions embedded for this split."""
        return int(self.bank.shape[0])


# ----------------------------------------------------------------------------------------------------
# The model and the Task
# ----------------------------------------------------------------------------------------------------


def build_gpt_for(cfg: GPTRunConfig, token_dim: int, cond_dim: int, available: int) -> LoSTGPT:
    """A fresh GPT: preset + overrides, the data's token width and the text encoder's width.

    Raises:
        ConfigError: naming `model.overrides.<field>` when an override contradicts the data or encoder, or
            when the GPT reads more tokens than the table holds per shape.
    """
    want = {"token_dim": int(token_dim), "cond_dim": int(cond_dim)}
    for key, value in want.items():
        if key in cfg.model.overrides and cfg.model.overrides[key] != value:
            raise ConfigError(f"model.overrides.{key}: {cfg.model.overrides[key]!r} contradicts {value!r} "
                              "(from the tokens table / the text encoder)")
    gpt = build_gpt(cfg.model.preset, **{**cfg.model.overrides, **want})
    if gpt.config.num_tokens > available:
        raise ConfigError(f"model.overrides.num_tokens: the GPT reads {gpt.config.num_tokens} tokens per shape, "
                          f"the tokens table holds {available}")
    return gpt


class GPTTask(Task):
    """Trains LoST-GPT on batches {"tokens": [B, L, D], "text": [B, K, W], "text_mask": [B, K]}.

    Args:
        gpt: the model to train.
        sampling: generation defaults stored with the export.
        info: provenance stored with the export: {"model_id", "bundle", "text_encoder": {...}}.
        run_config: the resolved run config, stored in the export.
    """

    def __init__(self, gpt: LoSTGPT, sampling: GPTSamplingConfig, info: dict[str, Any],
                 run_config: dict | None = None) -> None:
        super().__init__()
        self.gpt = gpt
        self.sampling = sampling
        self.info = info
        self.run_config = run_config or {}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["tokens"].float()  # [B, L, D]
        text, mask = batch["text"].float(), batch["text_mask"]  # [B, K, W], [B, K]
        B = x.shape[0]
        pick = torch.multinomial(mask.float(), 1).squeeze(1)  # [B]: one of each shape's own captions
        cond = text[torch.arange(B, device=x.device), pick]  # [B, W]
        out = self.gpt(x, cond, self.gpt.sample_drop(B, x.device))
        return {"loss": out["loss"], "drop_frac": out["drop_frac"].detach().float()}

    def sampling_defaults(self) -> dict[str, Any]:
        """What generation uses unless told otherwise (config.json "sampling", bundle.json "gpt")."""
        c = self.gpt.config
        return {"num_tokens": c.num_tokens, "guidance": self.sampling.guidance,
                "guidance_schedule": self.sampling.guidance_schedule, "temperature": self.sampling.temperature,
                "sample_steps": c.diffloss.sample_steps}

    def export(self, out_dir: Path) -> None:
        self.gpt.save_pretrained(out_dir, extra_config={
            "sampling": self.sampling_defaults(), "tokens": {"model_id": self.info["model_id"],
                                                             "bundle": self.info.get("bundle")},
            "text_encoder": self.info["text_encoder"], "run": self.run_config})


# ----------------------------------------------------------------------------------------------------
# A run: data, text cache and task
# ----------------------------------------------------------------------------------------------------


def check_text_encoder(out: Path, encoder: TextEncoder) -> None:
    """A run keeps the text encoder it started with: resuming with another one is refused."""
    folder = Path(out) / TEXT_DIR
    if not (folder / "config.json").is_file():
        return
    old = read_info(folder)
    if old.get("fingerprint") != encoder.fingerprint():
        raise ConfigError(f"{out}: was trained with text encoder {old['spec']}; {encoder.spec} has other "
                          "weights (use a new --out)")


def prepare_data(cfg: GPTRunConfig, root: str | Path, ids: list[str], encoder: TextEncoder, num_tokens: int,
                 out: Path | None = None, progress: Callable[[str], None] | None = None) -> GPTDataset:
    """The shapes' first `num_tokens` tokens and their cached caption embeddings as a `GPTDataset`.

    Args:
        ids: shapes of the split (`open_tokens`).
        out: the run directory; its `text_cache/` holds the caption embeddings (None: no cache).
        progress: called with one line before the captions are embedded.

    Raises:
        DataError: see `caption_lists`, or a shape with fewer tokens than `num_tokens`.
    """
    captions = caption_lists(root, ids, cfg.data.caption_variants)
    if progress:
        progress(f"text embeddings of {len({c for cs in captions for c in cs})} captions ({encoder.spec})")
    bank, rows = text_bank(encoder, captions, None if out is None else Path(out) / CACHE_DIR,
                           batch_size=cfg.data.text_batch_size)
    return GPTDataset(root, ids, num_tokens, bank, rows, cache=cfg.data.cache)


def build_task(cfg: GPTRunConfig, stats: dict, encoder_info: dict, model_id: str) -> GPTTask:
    """The GPT (token width from the table, condition width from the encoder) inside its Task.

    Seed (`train.loop.seed_everything`) before calling: the initial weights follow the seed.
    """
    check_run(cfg)
    gpt = build_gpt_for(cfg, stats["token_dim"], encoder_info["width"], stats["num_tokens"])
    info = {"model_id": model_id, "bundle": cfg.bundle, "text_encoder": encoder_info}
    return GPTTask(gpt, cfg.sampling, info, run_config=to_dict(cfg))


# ----------------------------------------------------------------------------------------------------
# Export into a bundle
# ----------------------------------------------------------------------------------------------------


def _num_params(model: torch.nn.Module) -> int:
    n = getattr(model, "num_params", None)
    n = n() if callable(n) else n
    return int(n) if n is not None else sum(p.numel() for p in model.parameters())


def _run_folders(run: Path) -> tuple[Path, Path]:
    """(GPT export folder, text encoder folder) of a run directory or of its export/ folder."""
    if (run / EXPORT_DIR / "config.json").is_file():
        return run / EXPORT_DIR, run / TEXT_DIR
    if (run / "config.json").is_file() and (run.parent / TEXT_DIR / "config.json").is_file():
        return run, run.parent / TEXT_DIR
    raise CheckpointError(f"{run}: no finished GPT run here (expected {run / EXPORT_DIR} and {run / TEXT_DIR}; "
                          "run lost gpt train first)")


def export_gpt(run: str | Path, bundle: str | Path) -> dict[str, Any]:
    """Copy a GPT run's export and text encoder into a bundle as `gpt/` and `text_encoder/`.

    bundle.json gains the two components and a "gpt" entry with the sampling defaults; every other
    component (vae, tokenizer, ...) is kept.

    Returns:
        the bundle.json content written.

    Raises:
        CheckpointError: not a finished run, unloadable parts, a GPT trained on another model's tokens, or
            widths that disagree with the bundle / text encoder.
    """
    run, bundle = Path(run), Path(bundle)
    meta = read_bundle(bundle)
    gpt_dir, text_dir = _run_folders(run)
    gpt = LoSTGPT.from_pretrained(gpt_dir)  # validates the weights
    extra = gpt.extra_config  # config.json's entries besides class, preset and config
    text = read_info(text_dir)
    trained_on = (extra.get("tokens") or {}).get("model_id")
    if trained_on != meta["model_id"]:
        raise CheckpointError(f"{run}: the GPT was trained on tokens of model {str(trained_on)[:12]}, {bundle} "
                              f"holds model {meta['model_id'][:12]}")
    c = gpt.config
    if c.token_dim != meta.get("token_dim") or c.num_tokens > int(meta.get("num_tokens", 0)):
        raise CheckpointError(f"{run}: GPT tokens {c.num_tokens} x {c.token_dim} do not fit {bundle} "
                              f"({meta.get('num_tokens')} x {meta.get('token_dim')})")
    if c.cond_dim != text["width"]:
        raise CheckpointError(f"{text_dir}: text width {text['width']}, the GPT reads {c.cond_dim}")
    write_components(bundle, {"gpt": lambda tmp: shutil.copytree(gpt_dir, tmp),
                              "text_encoder": lambda tmp: shutil.copytree(text_dir, tmp)})
    sampling = extra.get("sampling") if isinstance(extra.get("sampling"), dict) else {}
    meta["components"] = {**meta["components"], "gpt": "gpt", "text_encoder": "text_encoder"}
    meta["gpt"] = gpt_entry(c, sampling, trained_on, text["spec"], _num_params(gpt))
    meta["sources"] = {**(meta.get("sources") or {}), "gpt": str(run)}
    return write_bundle(bundle, meta)
