"""The `latents` table of a dataset store: its name, the check that it exists, and opening it for training.

Written by `lost dataset latents` (`batch/latents.py`); read by the tokenizer stage (`train/tokenizer.py`)
and the token probe (`eval/token_probe.py`), which is why it lives down here in `data`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import DataError
from .loader import StoreDataset
from .store import DatasetStore

LATENTS = "latents"


def require_latents(store: DatasetStore) -> None:
    """DataError naming the dataset when it has no `latents` table yet."""
    if not store.has_table(LATENTS):
        raise DataError(f"{store.root}: no '{LATENTS}' table (run `lost dataset latents {store.root} --vae VAE` first)")


def open_latents(root: str | Path, split: str | None = "train") -> tuple[StoreDataset, dict]:
    """The `latents` table of a dataset as items {"z": raw [C, H, W], "index"}, and its stats.json.

    Raises:
        DataError: no latents table, no statistics, or no items of the split.
    """
    root = Path(root)
    store = DatasetStore(root)
    require_latents(store)
    stats = store.read_stats(LATENTS)
    for key in ("mean", "std"):
        if not isinstance(stats.get(key), list):
            raise DataError(f"{root / LATENTS / 'stats.json'}: no per-channel '{key}' list")
    return StoreDataset(root, ["z"], split=split, table=LATENTS), stats


def principal_axes(train_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [1, F], principal axes [min(N, F), F], rows by falling variance) of flattened latents [N, ...]."""
    y = train_x.flatten(1).double()
    mean = y.mean(dim=0, keepdim=True)
    return mean, torch.linalg.svd(y - mean, full_matrices=False).Vh
