"""Percentile-bootstrap intervals (eval/bootstrap.py) on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lostcli.eval.bootstrap import bootstrap_indices, interval, median_intervals


def test_indices_are_seeded_and_in_range():
    a, b = bootstrap_indices(10, draws=50, seed=3), bootstrap_indices(10, draws=50, seed=3)
    assert a.shape == (50, 10) and torch.equal(a, b) and int(a.min()) >= 0 and int(a.max()) <= 9
    assert not torch.equal(a, bootstrap_indices(10, draws=50, seed=4))


def test_interval_is_the_central_percentile_range():
    assert interval(torch.full((100,), 0.3)) == pytest.approx([0.3, 0.3])
    assert interval(np.arange(1001.0)) == pytest.approx([25.0, 975.0])  # 2.5% and 97.5% quantiles of 0..1000
    assert interval(np.array([np.nan, 1.0, np.inf, 3.0]), level=1.0) == pytest.approx([1.0, 3.0])  # NaN/inf out
    assert all(np.isnan(interval(np.array([np.nan]))))


def test_median_intervals_see_a_shared_offset_as_exact_and_noise_as_uncertain():
    rng = np.random.default_rng(0)
    base = rng.lognormal(0.0, 0.5, size=101)  # per-shape difficulty, shared by every row
    cd = np.stack([base + 0.2, base + 0.1, base + 0.1 + rng.normal(0, 0.3, 101)], axis=1)  # [n, 3]
    ci, change, change_ci = median_intervals(cd, draws=500)
    for j in range(3):
        med = float(np.median(cd[:, j]))
        assert ci[j][0] <= med <= ci[j][1] and ci[j][1] - ci[j][0] > 0.05  # 101 skewed values: a wide range
    # row 1 = row 0 - 0.1 for every shape: the paired change is exactly -0.1 in every resample
    assert change[0] == pytest.approx(-0.1) and change_ci[0] == pytest.approx([-0.1, -0.1])
    # row 2 adds independent noise: its change interval is wide and spans 0
    assert change_ci[1][0] < 0.0 < change_ci[1][1]


def test_median_intervals_skip_failures():
    cd = np.array([[1.0, np.nan], [2.0, 2.5], [3.0, 3.5], [4.0, 4.5]])  # one failed reconstruction in row 1
    ci, change, _ = median_intervals(cd, draws=200)
    assert change[0] == pytest.approx(3.5 - 2.5)  # medians over the shapes that have a surface
    assert 1.0 <= ci[0][0] <= ci[0][1] <= 4.0 and 2.5 <= ci[1][0] <= ci[1][1] <= 4.5


def test_mean_change_interval_is_paired():
    from lostcli.eval.bootstrap import mean_change_interval

    a = np.array([0, 1, 0, 1, 1, 0, 0, 1], dtype=float)
    assert mean_change_interval(a, a) == (0.0, [0.0, 0.0])
    change, ci = mean_change_interval(a, 1 - a * 0)  # every item gains where it was 0: +0.5 on these items
    assert change == 0.5 and ci[0] < 0.5 < ci[1]
    change, ci = mean_change_interval(a, np.ones_like(a) + a)  # +1 on every item: no noise at all
    assert change == 1.0 and ci == [1.0, 1.0]


def test_shape_change_sees_a_shared_one_percent_fall_that_the_median_difference_cannot():
    from lostcli.eval.bootstrap import shape_change_intervals

    rng = np.random.default_rng(1)
    base = rng.lognormal(0.0, 0.6, size=72)  # per-shape difficulty, shared by every row
    k4 = base * 0.99 * np.exp(rng.normal(0, 0.002, 72))  # every shape falls by about 1%
    k16 = k4[rng.permutation(72)]  # the same values on other shapes: the medians agree, shapes do not
    cd = np.stack([base, k4, k16], axis=1)
    change, change_ci, fall = shape_change_intervals(cd, draws=500)
    assert change[0] == pytest.approx(-0.01, abs=0.002) and change_ci[0][1] < 0 and fall[0] == 1.0
    assert change_ci[1][0] < 0.0 < change_ci[1][1] and 0.2 < fall[1] < 0.8  # shuffled: no per-shape change
    _, _, median_ci = median_intervals(np.stack([base, base[rng.permutation(72)] * 0.99], axis=1), draws=500)
    assert median_ci[0][0] < 0.0 < median_ci[0][1]  # 1% of unpaired medians is lost in 72 shapes' noise


def test_shape_change_by_hand_and_missing_values():
    from lostcli.eval.bootstrap import shape_change_intervals

    cd = np.array([[2.0, 1.0], [4.0, 5.0], [1.0, np.nan], [8.0, 6.0]])  # one failed reconstruction
    change, change_ci, fall = shape_change_intervals(cd, draws=200)
    assert change[0] == pytest.approx(-0.25)  # median of -0.5, +0.25, -0.25 (the failed shape left out)
    assert fall[0] == pytest.approx(2 / 3)
    assert -0.5 <= change_ci[0][0] <= change_ci[0][1] <= 0.25
