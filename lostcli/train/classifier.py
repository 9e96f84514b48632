"""The render-classifier stage: supervised category classification on renders of the TRAIN split only.

Each step takes a batch of shapes, picks one of the 4 views of each at random and applies light
augmentation (horizontal flip, a small translation on white), all from torch's global RNG so a resumed
run reproduces them. Cross-entropy against the shape's category. After training, `train_classifier`
measures the export on real renders of the held-out split and stores that accuracy beside the weights
(export/eval.json), so every accuracy the classifier later gives can be reported beside its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..config import OptimConfig, TrainConfig, to_dict
from ..data.store import DatasetStore
from ..errors import DataError
from ..models.classifier import (EVAL_NAME, PIXEL_MEAN, PIXEL_STD, RenderClassifier, RenderClassifierConfig,
                                 evaluate_classifier)
from ..models.teacher import resize_images_u8
from ..persist import atomic_write_json
from .loop import Task, TrainResult, seed_everything, train


@dataclass
class ClassifierDataConfig:
    cache: bool = True  # keep the resized renders of every item in memory after the first read
    flip: bool = True  # random horizontal flips (a mirrored object keeps its category)
    shift: int = 6  # max random translation in pixels at the classifier's input size (white fill)


@dataclass
class ClassifierRunConfig:
    model: RenderClassifierConfig = field(default_factory=RenderClassifierConfig)
    data: ClassifierDataConfig = field(default_factory=ClassifierDataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-3, weight_decay=0.05, warmup_steps=30))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=500, batch_size=64, ema_decay=0.0,
                                                                   log_every=25, save_every=250))
    split: str = "train"  # dataset split to train on (never the split it is evaluated on)
    eval_split: str = "test"  # real renders its reported accuracy is measured on


class RenderLabelDataset(Dataset):
    """Shapes of one split as {"renders": uint8 [4, S, S, 3], "label": long, "index": long}.

    Args:
        root: prepared dataset directory (table `items` with `renders` and a category per record).
        split: split to read.
        categories: class names; an item of another category is an error.
        image_size: S (renders are resized once per item, with the teachers' resampling).
        cache: keep resized items in memory (1008 shapes at S = 96: about 110 MB).
    """

    def __init__(self, root: str | Path, split: str, categories: list[str], image_size: int,
                 cache: bool = True) -> None:
        self.store = DatasetStore(Path(root))
        self.records = self.store.records(split=split)
        if not self.records:
            raise DataError(f"{root}: no items in split {split!r}")
        index = {c: i for i, c in enumerate(categories)}
        bad = [r for r in self.records if r.get("category") not in index]
        if bad:
            raise DataError(f"{root}: item {bad[0]['id']!r} has category {bad[0].get('category')!r}, not one of "
                            f"the classifier's {len(categories)} ({len(bad)} such items)")
        self.labels = [index[r["category"]] for r in self.records]
        self.image_size = image_size
        self.cache: dict[int, torch.Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        renders = self.cache.get(index) if self.cache is not None else None
        if renders is None:
            raw = self.store.load(self.records[index]["id"], keys=["renders"])["renders"]
            renders = resize_images_u8(torch.from_numpy(np.ascontiguousarray(raw)), self.image_size)
            if self.cache is not None:
                self.cache[index] = renders
        return {"renders": renders, "label": torch.tensor(self.labels[index]), "index": torch.tensor(index)}


def dataset_categories(root: str | Path, split: str) -> list[str]:
    """Sorted category names of a split (the class order of a classifier trained on it)."""
    cats = sorted({r["category"] for r in DatasetStore(Path(root)).records(split=split) if r.get("category")})
    if len(cats) < 2:
        raise DataError(f"{root}: split {split!r} has {len(cats)} categories; a classifier needs at least 2")
    return cats


def augment(x: torch.Tensor, flip: bool, shift: int) -> torch.Tensor:
    """Random horizontal flip and integer translation (white fill) per image of x [B, 3, S, S] (normalised)."""
    B, _, S, _ = x.shape
    if flip:
        mirror = torch.rand(B, device=x.device) < 0.5
        x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
    if shift > 0:
        white = (1.0 - PIXEL_MEAN) / PIXEL_STD
        padded = F.pad(x, (shift, shift, shift, shift), value=white)  # [B, 3, S + 2s, S + 2s]
        dy, dx = torch.randint(0, 2 * shift + 1, (2, B)).tolist()
        x = torch.stack([padded[b, :, dy[b]:dy[b] + S, dx[b]:dx[b] + S] for b in range(B)])
    return x


class ClassifierTask(Task):
    """Cross-entropy of one random, augmented view per shape."""

    find_unused_parameters = False  # every parameter gets a gradient each step

    def __init__(self, classifier: RenderClassifier, data: ClassifierDataConfig,
                 run_config: dict | None = None) -> None:
        super().__init__()
        self.classifier = classifier
        self.data = data
        self.run_config = run_config or {}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        renders, y = batch["renders"], batch["label"]  # uint8 [B, V, S, S, 3], long [B]
        B, V = renders.shape[:2]
        view = torch.randint(0, V, (B,)).to(renders.device)  # one random view per shape
        x = self.classifier.preprocess(renders[torch.arange(B, device=renders.device), view])  # [B, 3, S, S]
        logits = self.classifier(augment(x, self.data.flip, self.data.shift))  # [B, C]
        loss = F.cross_entropy(logits, y)
        acc = (logits.detach().argmax(dim=-1) == y).float().mean()
        return {"loss": loss, "acc": acc}

    def export(self, out_dir: Path) -> None:
        self.classifier.save_pretrained(out_dir, extra_config={"run": self.run_config})


@dataclass
class ClassifierRun:
    result: TrainResult
    evaluation: dict  # evaluate_classifier on cfg.eval_split (real renders)
    train_items: int


def train_classifier(cfg: ClassifierRunConfig, root: str | Path, out_dir: str | Path, resume: bool = False,
                     progress: bool = True, eval_progress: Callable | None = None) -> ClassifierRun:
    """Train through the shared loop, then measure the export on real renders of `cfg.eval_split`.

    Writes OUT/export (weights), OUT/eval.json and OUT/export/eval.json (the same accuracy record).
    """
    if cfg.split == cfg.eval_split:
        raise DataError(f"{root}: the classifier must be evaluated on another split than it trains on "
                        f"(both {cfg.split!r})")
    if not cfg.model.categories:
        cfg = replace(cfg, model=replace(cfg.model, categories=dataset_categories(root, cfg.split)))
    dataset = RenderLabelDataset(root, cfg.split, cfg.model.categories, cfg.model.image_size, cache=cfg.data.cache)
    seed_everything(cfg.train.seed)
    classifier = RenderClassifier(cfg.model)
    task = ClassifierTask(classifier, cfg.data, run_config=to_dict(cfg))
    result = train(task, dataset, cfg.train, cfg.optim, Path(out_dir), resume=resume, run_config=to_dict(cfg),
                   progress=progress)
    from accelerate import PartialState

    if not PartialState().is_main_process:  # under `accelerate launch` the main process measures and writes
        return ClassifierRun(result, {}, len(dataset))
    trained = RenderClassifier.from_pretrained(result.export_dir)
    evaluation = {**evaluate_classifier(trained, root, split=cfg.eval_split, progress=eval_progress),
                  "train_split": cfg.split, "train_items": len(dataset), "steps": result.steps}
    for folder in (Path(out_dir), result.export_dir):
        atomic_write_json(folder / EVAL_NAME, evaluation)
    return ClassifierRun(result, evaluation, len(dataset))
