"""The RIDA stage: run config, the latents+features dataset, the RIDA losses (paper eq. 1-5) and the Task.

L_RIDA = w_global L_global + w_rank L_rank + w_spatial L_spatial (paper: 1.0, 1.0, 0.5), all computed over
the (gathered) batch B of n shapes:

- L_global, multi-positive InfoNCE. Teacher cosine s_t(i, j) of the view-averaged global embeddings mines,
  for anchor i, positives P(i) = {j != i : s_t(i, j) >= pos_threshold}; an anchor with none takes its
  `pos_topk` most teacher-similar shapes instead (so every anchor contributes). All other j != i are
  negatives. With student logits l_ij = cos_s(i, j) / temperature:
  L_global = mean_i -log( sum_{j in P(i)} exp l_ij / sum_{j != i} exp l_ij ).
- L_rank, eq. 1-2. c_i = cosines of anchor i to the n' = n - 1 other shapes (student and teacher), each
  row z-scored with its mean and POPULATION standard deviation (divide by n', plus 1e-6), then
  L_rank = mean_i || c~_i^s - c~_i^t ||^2, the squared norm summed over j as in eq. 2 (rank_reduce="sum"),
  which equals mean_i 2 n' (1 - Pearson(c_i^s, c_i^t)). rank_reduce="mean" divides by n' (a per-entry
  MSE, 2 (1 - Pearson)), keeping the term on the scale of the other two at large batches.
- L_spatial, eq. 3-4. Per shape, K = V g^2 tokens: the teacher's patch tokens of the V = 4 views pooled to
  g x g, and the student's tokens of the plane each view faces (flipped as the camera sees it, see
  `models.rida.VIEW_PLANES`) pooled to the same grid. A[k, l] = <S_k, S_l> of L2-normalised tokens,
  a_k = softmax_l(A[k, l] / spatial_temperature), L_spatial = mean_{i,k} KL(a^t_{i,k} || a^s_{i,k}).

`objective: regression` is the paper's direct-regression baseline on the same backbone: a linear head to
the teacher width, L = w_global MSE(global, teacher global) + w_spatial MSE(pooled tokens, teacher
patch tokens), targets L2-normalised per vector as the relational losses see them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..config import OptimConfig, TrainConfig
from ..data.store import DatasetStore
from ..errors import ConfigError, DataError
from ..models.rida import RidaStudent, build_student, pool_grid, view_grids
from .loop import Task

LATENTS, FEATURES = "latents", "features"
OBJECTIVES = ("rida", "regression")
VAL_K = 3  # validation metric: mAP@3 (`lost rida train` scores it with the retrieval table's code)


# ----------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------


@dataclass
class RidaModelConfig:
    preset: str = "rida_tiny"  # rida_tiny or rida_paper (models/rida.py); latent shape is taken from the data
    overrides: dict[str, Any] = field(default_factory=dict)  # RidaConfig field overrides on top of the preset


@dataclass
class RidaLossConfig:
    objective: str = "rida"  # "rida" (eq. 5) or "regression" (direct MSE baseline, same backbone)
    w_global: float = 1.0  # lambda_global (regression: weight of the global MSE)
    w_rank: float = 1.0  # lambda_rank
    w_spatial: float = 0.5  # lambda_spatial (regression: weight of the patch-token MSE)
    temperature: float = 0.1  # InfoNCE temperature on student cosines
    pos_threshold: float = 0.8  # teacher cosine at or above which j is a positive of anchor i
    pos_topk: int = 1  # positives of an anchor with none above the threshold: its top-k teacher neighbours
    rank_reduce: str = "sum"  # "sum" over the n-1 entries of a row (eq. 2 as printed) or "mean"
    spatial_temperature: float = 0.1  # softmax temperature of the K x K affinity rows (cosines in [-1, 1])
    gather: bool = True  # under DDP, compute the batch losses over the batch gathered from every process
    input_noise: float = 0.0  # training only: std of Gaussian noise added to the normalised latents (augmentation)


@dataclass
class RidaRunConfig:
    model: RidaModelConfig = field(default_factory=RidaModelConfig)
    rida: RidaLossConfig = field(default_factory=RidaLossConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, weight_decay=0.05, warmup_steps=20))
    train: TrainConfig = field(default_factory=TrainConfig)
    split: str = "train"  # dataset split to train on
    # held-out split scored every train.eval_every steps: mAP@3 of the student's neighbours against the teacher's
    # (the retrieval table's metric); the export is the best-scoring weights (early stopping on val)
    val_split: str = "val"


def check_loss_config(cfg: RidaLossConfig) -> None:
    """Reject settings the losses cannot use, naming the dotted path."""
    checks = [
        ("rida.objective", cfg.objective in OBJECTIVES, f"must be one of {list(OBJECTIVES)}"),
        ("rida.rank_reduce", cfg.rank_reduce in ("sum", "mean"), "must be sum or mean"),
        ("rida.temperature", cfg.temperature > 0, "must be > 0"),
        ("rida.spatial_temperature", cfg.spatial_temperature > 0, "must be > 0"),
        ("rida.pos_topk", cfg.pos_topk >= 1, "must be >= 1"),
        ("rida.w_global", cfg.w_global >= 0, "must be >= 0"),
        ("rida.w_rank", cfg.w_rank >= 0, "must be >= 0"),
        ("rida.w_spatial", cfg.w_spatial >= 0, "must be >= 0"),
        ("rida.input_noise", cfg.input_noise >= 0, "must be >= 0"),
        ("rida", cfg.w_global + cfg.w_rank + cfg.w_spatial > 0, "at least one loss weight must be > 0"),
    ]
    for path, ok, msg in checks:
        if not ok:
            raise ConfigError(f"{path}: {msg}")


# ----------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------


def _off_diagonal(m: torch.Tensor) -> torch.Tensor:
    """[n, n] -> [n, n-1]: row i without its diagonal entry, the other entries in order."""
    n = m.shape[0]
    return m.flatten()[1:].view(n - 1, n + 1)[:, :-1].reshape(n, n - 1)


def mine_positives(teacher_sim: torch.Tensor, threshold: float, topk: int) -> torch.Tensor:
    """Bool [n, n] positives from teacher cosines [n, n]: s >= threshold off the diagonal, else the row's top-k."""
    n = teacher_sim.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=teacher_sim.device)
    pos = (teacher_sim >= threshold) & ~eye
    empty = ~pos.any(dim=1)
    if empty.any():
        k = min(topk, n - 1)
        top = teacher_sim.masked_fill(eye, float("-inf")).topk(k, dim=1).indices  # [n, k]
        fallback = torch.zeros_like(pos).scatter_(1, top, True)
        pos = torch.where(empty[:, None], fallback, pos)
    return pos


def global_infonce(student: torch.Tensor, teacher: torch.Tensor, temperature: float, threshold: float,
                   topk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-positive InfoNCE with teacher-mined positives.

    Args:
        student: [n, D] student global embeddings (normalised here).
        teacher: [n, Dt] teacher global embeddings (normalised here).

    Returns:
        (loss scalar, mean number of positives per anchor).
    """
    s, t = F.normalize(student, dim=-1), F.normalize(teacher, dim=-1)
    n = s.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=s.device)
    pos = mine_positives(t @ t.T, threshold, topk)
    logits = (s @ s.T / temperature).masked_fill(eye, float("-inf"))  # [n, n]
    log_den = torch.logsumexp(logits, dim=1)
    log_num = torch.logsumexp(logits.masked_fill(~pos, float("-inf")), dim=1)
    return (log_den - log_num).mean(), pos.sum(1).float().mean()


def zscore_rows(c: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Row-wise (c - mean) / (population std + eps) of [n, m]."""
    mu = c.mean(dim=1, keepdim=True)
    sigma = c.std(dim=1, unbiased=False, keepdim=True)
    return (c - mu) / (sigma + eps)


def rank_loss(student: torch.Tensor, teacher: torch.Tensor, reduce: str = "sum") -> tuple[torch.Tensor, torch.Tensor]:
    """L_rank (eq. 1-2) between per-anchor z-scored cosine rows; student [n, D], teacher [n, Dt].

    Returns:
        (loss scalar, mean Pearson correlation of the rows, detached).
    """
    s, t = F.normalize(student, dim=-1), F.normalize(teacher, dim=-1)
    per_row, corr = rank_rows(_off_diagonal(s @ s.T), _off_diagonal(t @ t.T), reduce)  # rows [n, n-1]
    return per_row.mean(), corr.mean()


def rank_rows(cs: torch.Tensor, ct: torch.Tensor, reduce: str = "sum") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ||z(cs_i) - z(ct_i)||^2 (summed, or averaged over the m entries) and Pearson r (detached)
    of similarity rows cs, ct [n, m]. Population z-scores make the sum equal 2 m (1 - r_i)."""
    zs, zt = zscore_rows(cs), zscore_rows(ct)
    per_row = (zs - zt).pow(2).sum(dim=1)
    if reduce == "mean":
        per_row = per_row / cs.shape[1]
    with torch.no_grad():
        corr = (zs * zt).mean(dim=1)
    return per_row, corr


def spatial_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """L_spatial (eq. 3-4): mean_{i,k} KL(softmax(A^t[k]) || softmax(A^s[k])); student [n, K, D], teacher [n, K, Dt]."""
    s, t = F.normalize(student, dim=-1), F.normalize(teacher, dim=-1)
    log_as = F.log_softmax(s @ s.transpose(1, 2) / temperature, dim=-1)  # [n, K, K]
    log_at = F.log_softmax(t @ t.transpose(1, 2) / temperature, dim=-1)
    return (log_at.exp() * (log_at - log_as)).sum(dim=-1).mean()


def student_view_tokens(student: RidaStudent, tokens: torch.Tensor, g: int) -> torch.Tensor:
    """Spatial tokens [B, N, D] -> per-view tokens pooled to the teacher grid, [B, 4, g, g, D]."""
    return pool_grid(view_grids(student.plane_grid(tokens)), g)


def _gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate [b, ...] over DDP processes keeping gradients (identity without a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    # Its backward sums every process's gradient into the local slice; DDP's averaging over the W
    # processes then yields exactly the gradient of the loss over the gathered batch (tested).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated in favour of a private API
        return torch.cat(all_gather(x), dim=0)


# ----------------------------------------------------------------------------------------------------
# Data: latents joined with teacher features
# ----------------------------------------------------------------------------------------------------


class RidaDataset(Dataset):
    """Items of one split holding both a latent (`latents` table) and teacher features (`features` table).

    Each item: z [C, H, W] raw latent, global [Dt] teacher embedding (mean over views), patches
    [V, g, g, Dt] teacher patch tokens, index.

    Args:
        root: dataset directory.
        split: "train", "val", "test", or None for every item (e.g. an out-of-distribution folder).
    """

    def __init__(self, root: str | Path, split: str | None = "train") -> None:
        self.root = Path(root)
        self.store = DatasetStore(self.root)
        for table, how in ((LATENTS, "lost dataset latents DIR --vae VAE"),
                           (FEATURES, "lost dataset features DIR --teacher TEACHER")):
            if not self.store.has_table(table):
                raise DataError(f"{self.root}: no '{table}' table (run `{how}` first)")
        have = set(self.store.ids(split=split, table=FEATURES))
        self.ids = [i for i in self.store.ids(split=split, table=LATENTS) if i in have]
        if not self.ids:
            raise DataError(f"{self.root}: no items of split {split!r} with both latents and features")
        self.latent_stats = self.store.read_stats(LATENTS)
        feat_path = self.root / FEATURES / "stats.json"
        self.feature_stats = self.store.read_stats(FEATURES) if feat_path.is_file() else {}
        self.patch_key = patch_key(self.store)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i = self.ids[index]
        z = self.store.load(i, keys=["z"], table=LATENTS)["z"]
        feats = self.store.load(i, keys=["global", self.patch_key], table=FEATURES)
        return {"z": torch.from_numpy(np.asarray(z, dtype=np.float32)),
                "global": torch.from_numpy(np.asarray(feats["global"], dtype=np.float32)),
                "patches": torch.from_numpy(np.asarray(feats[self.patch_key], dtype=np.float32)),
                "index": torch.tensor(index)}

    def teacher_info(self) -> dict:
        """Teacher name, spec, pooled grid g and width D as `features/stats.json` records them."""
        return teacher_info(self.feature_stats)


def patch_key(store: DatasetStore) -> str:
    """The features table's array of pooled patch tokens [V, g, g, D]: "spatial" (`lost dataset features`)
    or "patches"."""
    rec = store.records(table=FEATURES)[0]
    for key in ("spatial", "patches"):
        if key in rec["keys"]:
            return key
    raise DataError(f"{store.root / FEATURES}: item {rec['id']!r} has no pooled patch tokens ('spatial'); "
                    f"has {rec['keys']}")


def teacher_info(stats: dict) -> dict:
    """{"name", "spec", "grid", "embed_dim"} from features/stats.json (whose "teacher" is a describe() dict)."""
    teacher = stats.get("teacher", {})
    teacher = teacher if isinstance(teacher, dict) else {"name": str(teacher)}
    info = {"name": teacher.get("name", "unknown teacher"), "spec": teacher.get("spec")}
    return {**info, **{k: stats[k] for k in ("grid", "embed_dim") if k in stats}}


def build_student_for(cfg: RidaRunConfig, dataset: RidaDataset) -> RidaStudent:
    """The student for this run: preset + overrides, latent shape and statistics from the data.

    The regression baseline gets a linear head to the teacher width reading all patch tokens in order
    (`global_pool="flatten"` unless the recipe sets it): a direct linear regression of the teacher feature from
    the backbone's tokens. Chosen on the val split of the built-in dataset, where it beat the CLS-token head
    (mAP@3 0.356 vs 0.307; raw latents 0.346); RIDA keeps the CLS token (0.425 vs 0.403 flattened)."""
    C, H, W = (int(v) for v in dataset[0]["z"].shape)
    if W % H:
        raise DataError(f"{dataset.root}: latent [C, H, W] = {[C, H, W]} is not P square planes side by side")
    overrides: dict[str, Any] = {"latent_channels": C, "plane_res": H, "planes": W // H, **cfg.model.overrides}
    if cfg.rida.objective == "regression":
        overrides.update(out_dim=int(dataset[0]["global"].shape[-1]), head="linear")
        overrides.setdefault("global_pool", "flatten")
    student = build_student(cfg.model.preset, **overrides)
    stats = dataset.latent_stats
    student.set_latent_stats(stats["mean"], stats["std"])
    if (cfg.rida.w_spatial > 0) and student.config.planes != 3:
        raise ConfigError(f"rida.w_spatial: the spatial loss needs a triplane latent, {dataset.root} has "
                          f"{student.config.planes} plane(s); set rida.w_spatial=0")
    return student


# ----------------------------------------------------------------------------------------------------
# The Task
# ----------------------------------------------------------------------------------------------------


class RidaTask(Task):
    """Trains the student on (latent, teacher features) batches with the RIDA or the regression objective."""

    def __init__(self, student: RidaStudent, loss: RidaLossConfig, run_config: dict | None = None,
                 teacher: dict | None = None, val_score: Callable[[RidaStudent], float] | None = None) -> None:
        super().__init__()
        check_loss_config(loss)
        self.student = student
        self.cfg = loss
        self.run_config = run_config or {}
        self.teacher = teacher or {}
        self.val_score = val_score  # the student -> its held-out score, higher is better (train.eval_every > 0)

    def validate(self) -> float:
        """The held-out score of the current weights (`lost rida train`: val mAP@3 against the teacher's
        neighbours, the retrieval table's metric)."""
        if self.val_score is None:
            raise ConfigError("train.eval_every: validating the RIDA student needs a held-out score "
                              "(RidaTask(val_score=...))")
        return float(self.val_score(self.student))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        z = self.student.normalize(batch["z"])  # [B, C, H, W]
        if self.training and self.cfg.input_noise > 0:  # torch RNG: restored exactly on --resume
            z = z + self.cfg.input_noise * torch.randn_like(z)
        g_s, tokens = self.student.forward_features(z)  # [B, D], [B, N, D]
        patches = batch["patches"]  # [B, V, g, g, Dt]
        B, V, g = patches.shape[:3]
        s_tok = student_view_tokens(self.student, tokens, g).reshape(B, V * g * g, -1)  # [B, K, D]
        t_tok = patches.reshape(B, V * g * g, -1)  # [B, K, Dt]
        if self.cfg.objective == "regression":
            return self._regression(g_s, batch["global"], s_tok, t_tok)
        c = self.cfg
        emb, t_glob = (_gather(g_s), _gather(batch["global"])) if c.gather else (g_s, batch["global"])
        l_global, n_pos = global_infonce(emb, t_glob, c.temperature, c.pos_threshold, c.pos_topk)
        l_rank, corr = rank_loss(emb, t_glob, c.rank_reduce)
        l_spatial = spatial_kl(s_tok, t_tok, c.spatial_temperature)
        loss = c.w_global * l_global + c.w_rank * l_rank + c.w_spatial * l_spatial
        return {"loss": loss, "l_global": l_global.detach(), "l_rank": l_rank.detach(),
                "l_spatial": l_spatial.detach(), "rank_corr": corr, "positives": n_pos}

    def _regression(self, g_s: torch.Tensor, t_glob: torch.Tensor, s_tok: torch.Tensor,
                    t_tok: torch.Tensor) -> dict[str, torch.Tensor]:
        mse_global = F.mse_loss(g_s, F.normalize(t_glob, dim=-1))
        mse_spatial = F.mse_loss(s_tok, F.normalize(t_tok, dim=-1))
        loss = self.cfg.w_global * mse_global + self.cfg.w_spatial * mse_spatial
        with torch.no_grad():  # how well the prediction ranks neighbours (comparable with RIDA's log)
            _, corr = rank_loss(g_s, t_glob)
        return {"loss": loss, "mse_global": mse_global.detach(), "mse_spatial": mse_spatial.detach(),
                "rank_corr": corr}

    def export(self, out_dir: Path) -> None:
        self.student.save_pretrained(out_dir, extra_config={
            "objective": self.cfg.objective, "teacher": self.teacher, "run": self.run_config})
