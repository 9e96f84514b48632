"""PyTorch views of a prepared dataset store (deterministic: random draws happen in the tasks)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from .store import DatasetStore


class StoreDataset(Dataset):
    """Items of one split as dicts of tensors, read lazily from the shards.

    Args:
        root: prepared dataset directory.
        keys: arrays to load per item, e.g. ("surface_points", "surface_normals", "occ_points", "occ_sdf").
        split: "train", "val", "test" or None for all.
        table: "items" (prepare), or a derived table such as "latents".
        first: optional {key: n} keeping only the first n rows of an array (samples are i.i.d., so the
            first n are a uniform subset; keeps memory and I/O small).
    """

    def __init__(self, root: str | Path, keys: Sequence[str], split: str | None = "train", table: str = "items",
                 first: dict[str, int] | None = None):
        self.store = DatasetStore(Path(root))
        self.keys = tuple(keys)
        self.table = table
        self.first = dict(first or {})
        self.records = self.store.records(split=split, table=table)
        if not self.records:
            raise DataError(f"{root}: no items in split {split!r} of table {table!r}")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rec = self.records[index]
        arrays = self.store.load(rec["id"], keys=self.keys, table=self.table)
        out = {}
        for key in self.keys:
            a = arrays[key]
            if key in self.first:
                a = a[: self.first[key]]
            a = np.asarray(a)
            out[key] = torch.from_numpy(a.astype(np.float32) if a.dtype == np.float16 else a.copy())
        out["index"] = torch.tensor(index)
        return out
