"""Percentile-bootstrap intervals over the shapes of a split (ours; docs/protocols.md gives point estimates only).

Evaluation splits of the built-in dataset hold about 100 shapes, so a table's gaps can be smaller than the
noise of which shapes were drawn. Every report that uses this resamples the shapes (queries) with replacement,
`draws` times from a fixed seed, recomputes its statistic, and reports the central 95% range. When two
methods or two rows are compared, both are computed on the same resampled shapes (a paired interval), which
cancels the shared per-shape difficulty.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

DRAWS = 2000  # resamples behind each interval
SEED = 0
LEVEL = 0.95


def bootstrap_indices(n: int, draws: int = DRAWS, seed: int = SEED) -> torch.Tensor:
    """[draws, n] indices into n shapes drawn with replacement (seeded; reuse them for paired intervals)."""
    return torch.randint(n, (draws, n), generator=torch.Generator().manual_seed(seed))


def interval(samples: torch.Tensor | np.ndarray, level: float = LEVEL) -> list[float]:
    """[lo, hi]: the central `level` percentile range of bootstrap samples [draws] (NaN samples ignored)."""
    x = np.asarray(samples, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return [float("nan"), float("nan")]
    lo, hi = np.quantile(x, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


def median_intervals(values: np.ndarray, draws: int = DRAWS, seed: int = SEED) -> tuple[list, list, list]:
    """Intervals of per-column medians of values [n shapes, m rows] (NaN = no value, e.g. a failed mesh).

    Returns:
        ci: [m] intervals of each column's median (NaN-skipping, as the table's medians).
        change: [m - 1] differences median(column j) - median(column j - 1) on all the shapes.
        change_ci: [m - 1] paired intervals of those differences (the same resampled shapes in both columns).
    """
    values = np.asarray(values, dtype=np.float64)
    idx = bootstrap_indices(values.shape[0], draws, seed).numpy()
    with warnings.catch_warnings():  # a resample where a column has no value gives NaN, dropped by `interval`
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(values[idx], axis=1)  # [draws, m]
        point = np.nanmedian(values, axis=0)  # [m]
    ci = [interval(med[:, j]) for j in range(values.shape[1])]
    change = [float(point[j] - point[j - 1]) for j in range(1, values.shape[1])]
    change_ci = [interval(med[:, j] - med[:, j - 1]) for j in range(1, values.shape[1])]
    return ci, change, change_ci


def shape_change_intervals(values: np.ndarray, draws: int = DRAWS, seed: int = SEED) -> tuple[list, list, list]:
    """Per-shape relative changes between consecutive columns of values [n shapes, m rows] (NaN = no value).

    The difference of two medians (`median_intervals`) moves with whichever shape sits at the median, so on ~70
    shapes a change every shape shares can hide inside its interval. This pairs each shape with itself: the
    statistic is the median over shapes of column j / column j - 1 - 1 (shapes with both values only).

    Returns:
        change: [m - 1] median per-shape relative changes (-0.01: the typical shape's value fell by 1%).
        change_ci: [m - 1] their percentile-bootstrap intervals over the shapes.
        fall: [m - 1] the share of shapes whose value fell.
    """
    values = np.asarray(values, dtype=np.float64)
    idx = bootstrap_indices(values.shape[0], draws, seed).numpy()
    change, change_ci, fall = [], [], []
    for j in range(1, values.shape[1]):
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = values[:, j] / values[:, j - 1] - 1.0  # [n]; NaN where a value is missing
        rel[~np.isfinite(rel)] = np.nan
        with warnings.catch_warnings():  # a resample of missing values only gives NaN, dropped by `interval`
            warnings.simplefilter("ignore", RuntimeWarning)
            change.append(float(np.nanmedian(rel)) if np.isfinite(rel).any() else float("nan"))
            change_ci.append(interval(np.nanmedian(rel[idx], axis=1)))
        ok = np.isfinite(rel)
        fall.append(float((rel[ok] < 0).mean()) if ok.any() else float("nan"))
    return change, change_ci, fall


def mean_change_interval(a: np.ndarray, b: np.ndarray, draws: int = DRAWS, seed: int = SEED) -> tuple[float, list[float]]:
    """mean(b) - mean(a) of paired per-item values [n] (e.g. 0/1 hits of the same prompt and seed under two
    settings), and its paired percentile-bootstrap interval over the items."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    idx = bootstrap_indices(len(a), draws, seed).numpy()
    return float(b.mean() - a.mean()), interval((b[idx] - a[idx]).mean(axis=1))
