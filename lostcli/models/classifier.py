"""The render classifier: a small CNN that names the category of a shape from its four rendered views.

It grades generated and reconstructed shapes of the built-in dataset ("class accuracy"), so it is trained
on renders of the TRAIN split only (`lost eval classifier`, `train/classifier.py`) and kept apart from the
teacher: no metric grades its own teacher. Every accuracy it gives is reported beside its own test accuracy
on real renders (`eval.json` in its export folder; `eval/classifier.py` formats that for reports).

- `RenderClassifier`: stem + 3 stages of (strided conv, residual conv), BatchNorm, global average pooling,
  a linear head; `forward(x) -> logits`. Saved HF-style (config.json + model.safetensors).
- `classify_views` / `predict_renders`: uint8 views [N, V, H, W, 3] -> per-view logits / shape-level
  probabilities (softmax of the view-averaged logits).
- `evaluate_classifier`: per-view and shape-level accuracy on a split of a prepared dataset (training
  stores it as eval.json; the evaluation reports quote it).
- `load_classifier`: a run directory (uses RUN/export) or an export folder, plus its stored test accuracy.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError, DataError
from ..persist import CONFIG_NAME, Pretrained, read_json_object
from .blocks import map_views
from .teacher import resize_images

EVAL_NAME = "eval.json"  # test accuracy on real renders, stored beside the weights
PIXEL_MEAN = 0.5  # renders are grey shading on white: one fixed affine map to roughly [-2, 2]
PIXEL_STD = 0.25


@dataclass
class RenderClassifierConfig:
    image_size: int = 96  # renders (224 px) are resized to S x S
    stem_width: int = 24  # channels after the stride-2 stem (S/2)
    widths: list[int] = field(default_factory=lambda: [48, 96, 192])  # one stage each, each halves the grid
    dropout: float = 0.1  # before the linear head
    categories: list[str] = field(default_factory=list)  # class names, index = class id (from the train split)

    def __post_init__(self) -> None:
        checks = [
            ("image_size", self.image_size >= 16, "must be >= 16"),
            ("stem_width", self.stem_width >= 1, "must be >= 1"),
            ("widths", len(self.widths) >= 1 and min(self.widths) >= 1, "needs at least one positive width"),
            ("dropout", 0.0 <= self.dropout < 1.0, "must be in [0, 1)"),
            ("categories", len(set(self.categories)) == len(self.categories), "must be distinct"),
        ]
        for key, ok, why in checks:
            if not ok:
                raise ConfigError(f"{key}: {why}")


# ----------------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------------


class ConvBN(nn.Sequential):
    """3x3 conv (no bias) -> BatchNorm -> ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class Stage(nn.Module):
    """Strided conv (halves H, W) followed by a residual 3x3 conv."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.down = ConvBN(c_in, c_out, stride=2)
        self.conv = nn.Sequential(nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        return F.relu(x + self.conv(x))


class RenderClassifier(nn.Module, Pretrained):
    """Category logits from one rendered view."""

    def __init__(self, cfg: RenderClassifierConfig) -> None:
        super().__init__()
        if len(cfg.categories) < 2:
            raise ConfigError(f"categories: a classifier needs at least 2, got {cfg.categories}")
        self.config = cfg
        self.stem = ConvBN(3, cfg.stem_width, stride=2)
        widths = [cfg.stem_width, *cfg.widths]
        self.blocks = nn.Sequential(*[Stage(a, b) for a, b in zip(widths[:-1], widths[1:])])
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(widths[-1], len(cfg.categories))
        self.initialize_weights()

    def initialize_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for stage in self.blocks:
            nn.init.zeros_(stage.conv[1].weight)  # each residual branch starts as the identity
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    @property
    def categories(self) -> list[str]:
        return list(self.config.categories)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> normalised float [N, 3, S, S] (bicubic resize, antialiased)."""
        x = resize_images(images.to(self.device), self.config.image_size)
        return (x - PIXEL_MEAN) / PIXEL_STD

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images [N, 3, S, S] -> logits [N, num_categories]."""
        x = self.blocks(self.stem(x))  # [N, C, S / 2^(1+stages), same]
        return self.head(self.dropout(x.mean(dim=(2, 3))))

    # -- persistence -------------------------------------------------------------------------------

    # `save_pretrained` / `from_pretrained` (`Pretrained`): config.json {"class", "config", extras}; loaded frozen
    config_class = RenderClassifierConfig
    pretrained_what = "render classifier"
    pretrained_keys = ("class", "config")
    pretrained_frozen = True

    def pretrained_meta(self) -> dict[str, Any]:
        meta = super().pretrained_meta()
        del meta["preset"]  # the classifier has no presets
        return meta

    @classmethod
    def build_pretrained(cls, config: RenderClassifierConfig, meta: dict[str, Any]) -> RenderClassifier:
        return cls(config)

    def loaded_from(self, folder: Path, meta: dict[str, Any]) -> None:
        pass  # the run entries of config.json are not carried into a re-save


@dataclass
class LoadedClassifier:
    model: RenderClassifier
    path: Path  # the export folder it was loaded from
    test_eval: dict | None  # its eval.json (accuracy on real test renders), None when never evaluated

    @property
    def test_accuracy(self) -> float | None:
        """Shape-level accuracy on real renders of the test split, if known."""
        return None if self.test_eval is None else float(self.test_eval["shape_acc"])


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> LoadedClassifier:
    """A classifier from its export folder or from the run directory holding `export/`."""
    path = Path(path)
    folder = path / "export" if (path / "export" / CONFIG_NAME).is_file() else path
    if not (folder / CONFIG_NAME).is_file():
        raise CheckpointError(f"{path}: no render classifier here (expected {CONFIG_NAME} or export/{CONFIG_NAME}; "
                              "train one with lost eval classifier)")
    model = RenderClassifier.from_pretrained(folder, device=device)
    ev = folder / EVAL_NAME
    return LoadedClassifier(model, folder, read_json_object(ev) if ev.is_file() else None)


# ----------------------------------------------------------------------------------------------------
# Inference
# ----------------------------------------------------------------------------------------------------


@torch.no_grad()
def classify_views(classifier: RenderClassifier, images: torch.Tensor | np.ndarray,
                   batch_size: int = 64) -> torch.Tensor:
    """Per-view logits of rendered views.

    Args:
        images: uint8 [N, V, H, W, 3] (any H = W; resized to the classifier's input size).
        batch_size: images per forward pass.

    Returns:
        float32 logits [N, V, num_categories] on the CPU.
    """
    x = torch.as_tensor(np.asarray(images) if isinstance(images, np.ndarray) else images)
    logits, N, V = map_views(classifier, x, lambda batch: classifier(classifier.preprocess(batch)).float().cpu(),
                             batch_size)
    return torch.cat(logits).view(N, V, -1)


def shape_probabilities(view_logits: torch.Tensor) -> torch.Tensor:
    """Per-view logits [N, V, C] -> shape-level probabilities [N, C] (softmax of the view-mean logits)."""
    return view_logits.mean(dim=1).softmax(dim=-1)


def predict_renders(classifier: RenderClassifier, images: torch.Tensor | np.ndarray,
                    batch_size: int = 64) -> torch.Tensor:
    """Category probabilities [N, num_categories] of shapes from their uint8 views [N, V, H, W, 3]."""
    return shape_probabilities(classify_views(classifier, images, batch_size))


def label_indices(categories: list[str | None], classes: list[str]) -> np.ndarray:
    """Class index of each category name, -1 where the classifier does not know it: int64 [N]."""
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index.get(c, -1) if c is not None else -1 for c in categories], dtype=np.int64)


# ----------------------------------------------------------------------------------------------------
# Evaluation on real renders
# ----------------------------------------------------------------------------------------------------


def evaluate_classifier(classifier: RenderClassifier, root: str | Path, split: str = "test", batch_size: int = 16,
                        progress: Callable | None = None) -> dict[str, Any]:
    """Accuracy on the stored (real) renders of a split: per view and shape-level (view-averaged logits).

    Shapes whose category the classifier does not know are counted in `unknown` and left out.

    Returns:
        {"split", "n", "unknown", "per_view_acc", "view_acc" (per view name order), "shape_acc", "chance",
         "categories", "per_category_shape_acc"}.
    """
    from ..data.store import DatasetStore

    store = DatasetStore(Path(root))
    records = [r for r in store.records(split=split)]
    if not records:
        raise DataError(f"{root}: no items in split {split!r}")
    labels = label_indices([r.get("category") for r in records], classifier.categories)
    known = [(r, y) for r, y in zip(records, labels) if y >= 0]
    if not known:
        raise DataError(f"{root}: no {split} item has a category the classifier knows ({classifier.categories})")
    view_logits, ys = [], []
    for start in range(0, len(known), batch_size):
        chunk = known[start:start + batch_size]
        renders = np.stack([store.load(r["id"], keys=["renders"])["renders"] for r, _ in chunk])  # [B, V, H, W, 3]
        view_logits.append(classify_views(classifier, renders, batch_size=64))
        ys.extend(y for _, y in chunk)
        if progress:
            progress(start + len(chunk), len(known), chunk[-1][0]["id"])
    logits = torch.cat(view_logits)  # [N, V, C]
    y = torch.as_tensor(ys)
    view_hit = logits.argmax(dim=-1) == y[:, None]  # [N, V]
    shape_hit = shape_probabilities(logits).argmax(dim=-1) == y  # [N]
    cats = classifier.categories
    per_cat = {c: float(shape_hit[y == i].float().mean()) for i, c in enumerate(cats) if (y == i).any()}
    return {"split": split, "n": len(known), "unknown": len(records) - len(known),
            "per_view_acc": float(view_hit.float().mean()), "view_acc": view_hit.float().mean(dim=0).tolist(),
            "shape_acc": float(shape_hit.float().mean()), "chance": 1.0 / len(cats), "categories": cats,
            "per_category_shape_acc": per_cat}
