"""The built-in teacher stage: contrastive (CLIP) training on (render, caption) pairs of a prepared dataset.

Each step takes a batch of shapes, picks one of the 4 views of each at random (torch RNG, so resuming
reproduces it), and minimises the symmetric InfoNCE loss with a learned logit scale. Shapes whose
captions are identical are all counted as positives of each other (soft targets), so repeated captions
in a batch are not pushed apart. With `data.category_caption_prob` p > 0, each pair uses the short caption
"a CATEGORY" with probability p, so shapes of one category in a batch become positives. The export is the
built-in teacher folder that `teachers.load_teacher` reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..config import OptimConfig, TrainConfig
from ..data.store import DatasetStore
from ..errors import ConfigError, DataError
from ..models.teacher import ClipTeacher, ClipTeacherConfig, resize_images_u8
from .loop import Task

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's clamp on the learned temperature


@dataclass
class TeacherDataConfig:
    cache: bool = True  # keep the resized renders and token ids of every item in memory after the first read
    # P(a training pair uses the short caption CATEGORY_CAPTION instead of the shape's own caption). Shapes that
    # share it in a batch are positives of each other, which pulls one category's renders together.
    category_caption_prob: float = 0.0
    # weight of a view-consistency InfoNCE: a second view of each shape is the positive of the first (the other
    # shapes' views in the batch the negatives), so a shape's 4 views embed alike, as a 3-D semantic teacher's
    # should; 0: off (one view per shape, CLIP only)
    view_weight: float = 0.0


@dataclass
class TeacherRunConfig:
    model: ClipTeacherConfig = field(default_factory=ClipTeacherConfig)
    data: TeacherDataConfig = field(default_factory=TeacherDataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, weight_decay=0.1, warmup_steps=50))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(batch_size=64, ema_decay=0.0))
    split: str = "train"  # dataset split to train on


CATEGORY_CAPTION = "a {category}"  # the short caption of `data.category_caption_prob`


class RenderCaptionDataset(Dataset):
    """Shapes of one split as {"renders": uint8 [4, S, S, 3], "text": long [L], "text_category": long [L],
    "index": long}; "text_category" is CATEGORY_CAPTION (the caption itself for items without a category).

    Renders are resized to the teacher's input size S once per item (with the teachers' own resampling);
    with `cache=True` the result stays in memory (1008 shapes at S = 128: about 200 MB), so later epochs
    skip decompressing the 224 px renders.

    Args:
        root: prepared dataset directory (table `items` with `renders` and a caption per record).
        split: "train", "val", "test" or None for all.
        image_size: S.
        context_length: L of the BPE token ids.
        cache: keep items in memory after the first read.
    """

    def __init__(self, root: str | Path, split: str | None, image_size: int, context_length: int,
                 cache: bool = True) -> None:
        from open_clip.tokenizer import SimpleTokenizer

        self.store = DatasetStore(Path(root))
        self.records = self.store.records(split=split)
        if not self.records:
            raise DataError(f"{root}: no items in split {split!r}")
        missing = [r["id"] for r in self.records if not r.get("caption")]
        if missing:
            raise DataError(f"{root}: item {missing[0]!r} has no caption ({len(missing)} items without one)")
        self.image_size = image_size
        self.tokenizer = SimpleTokenizer(context_length=context_length)
        self.cache: dict[int, dict[str, torch.Tensor]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self.cache is not None and index in self.cache:
            item = self.cache[index]
        else:
            rec = self.records[index]
            renders = torch.from_numpy(np.ascontiguousarray(self.store.load(rec["id"], keys=["renders"])["renders"]))
            short = CATEGORY_CAPTION.format(category=rec["category"]) if rec.get("category") else rec["caption"]
            item = {"renders": resize_images_u8(renders, self.image_size),  # [4, S, S, 3]
                    "text": self.tokenizer([rec["caption"]])[0],  # [L]
                    "text_category": self.tokenizer([short])[0]}  # [L]
            if self.cache is not None:
                self.cache[index] = item
        return {**item, "index": torch.tensor(index)}


def clip_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor,
              same: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE between L2-normalised image [B, D] and text [B, D] embeddings.

    Args:
        logit_scale: log of the inverse temperature (clamped at log 100).
        same: optional bool [B, B], True where pair (i, j) are positives (identical captions); default the
            diagonal. Rows become uniform soft targets over their positives.

    Returns:
        (loss, logits [B, B]).
    """
    logits = logit_scale.clamp(max=MAX_LOGIT_SCALE).exp() * img @ txt.t()  # [B, B]
    if same is None:
        same = torch.eye(img.shape[0], dtype=torch.bool, device=img.device)
    target = same.float() / same.float().sum(dim=1, keepdim=True)  # symmetric: same == same.T
    loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
    return loss, logits


class ClipTask(Task):
    """CLIP training of a `ClipTeacher`: one random view per shape against its caption."""

    find_unused_parameters = False  # every parameter of both towers and the logit scale gets a gradient

    def __init__(self, teacher: ClipTeacher, run_config: dict | None = None,
                 category_caption_prob: float = 0.0, view_weight: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= category_caption_prob <= 1.0:
            raise ConfigError(f"data.category_caption_prob: must be in [0, 1] (got {category_caption_prob!r})")
        if view_weight < 0:
            raise ConfigError(f"data.view_weight: must be >= 0 (got {view_weight!r})")
        self.teacher = teacher
        self.category_caption_prob = category_caption_prob
        self.view_weight = view_weight
        self.run_config = run_config or {}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        renders, ids = batch["renders"], batch["text"]  # uint8 [B, V, S, S, 3], long [B, L]
        B, V = renders.shape[:2]
        if self.category_caption_prob > 0:  # torch RNG: a resumed run draws the same captions
            short = torch.rand(B, device=ids.device) < self.category_caption_prob
            ids = torch.where(short[:, None], batch["text_category"], ids)
        rows = torch.arange(B, device=renders.device)
        view = torch.randint(0, V, (B,), device=renders.device)  # one random view per shape
        img = self._embed(renders[rows, view])  # [B, D], normalised
        txt = self.teacher.encode_text_ids(ids)  # [B, D], normalised
        same = (ids[:, None, :] == ids[None, :, :]).all(dim=-1)  # [B, B] identical captions
        loss, logits = clip_loss(img, txt, self.teacher.model.logit_scale, same)
        with torch.no_grad():
            hit = same[rows, logits.argmax(dim=1)]
            acc = hit.float().mean()  # in-batch image -> text top-1
        out = {"acc_i2t": acc, "logit_scale": self.teacher.model.logit_scale.detach().exp()}
        if self.view_weight > 0:  # a different view of the same shape (torch RNG: resumable)
            other = (view + torch.randint(1, V, (B,), device=renders.device)) % V
            l_view, _ = clip_loss(img, self._embed(renders[rows, other]), self.teacher.model.logit_scale)
            loss = loss + self.view_weight * l_view
            out["l_view"] = l_view.detach()
        return {"loss": loss, **out}

    def _embed(self, views: torch.Tensor) -> torch.Tensor:
        """uint8 renders [B, S, S, 3] -> L2-normalised image embeddings [B, D]."""
        img, _ = self.teacher.model.visual(self.teacher.preprocess(views))
        return F.normalize(img, dim=-1)

    def export(self, out_dir: Path) -> None:
        self.teacher.save_pretrained(out_dir, extra_config={"run": self.run_config})
