"""RIDA losses (paper eq. 1-5) against hand computations on small tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lostcli.errors import ConfigError
from lostcli.train.rida import (RidaLossConfig, _off_diagonal, check_loss_config, global_infonce, mine_positives,
                                rank_loss, rank_rows, spatial_kl, zscore_rows)


def test_off_diagonal_keeps_row_order():
    m = torch.arange(16.0).view(4, 4)
    expected = torch.tensor([[1, 2, 3], [4, 6, 7], [8, 9, 11], [12, 13, 14]], dtype=torch.float32)
    assert torch.equal(_off_diagonal(m), expected)


# -- L_rank -------------------------------------------------------------------------------------------


def test_zscore_uses_population_std():
    z = zscore_rows(torch.tensor([[1.0, 2.0, 3.0, 6.0]]))
    x = np.array([1.0, 2.0, 3.0, 6.0])
    np.testing.assert_allclose(z.numpy()[0], (x - x.mean()) / x.std(ddof=0), rtol=1e-5)
    assert abs(float(z.pow(2).mean()) - 1.0) < 1e-4  # population z-scores have unit mean square


def test_rank_rows_zero_for_positive_affine_maps():
    g = torch.Generator().manual_seed(0)
    cs = torch.rand(5, 7, generator=g)
    a = torch.rand(5, 1, generator=g) * 3 + 0.1  # per-row positive scale
    b = torch.randn(5, 1, generator=g)  # per-row shift
    per_row, corr = rank_rows(cs, a * cs + b)
    assert float(per_row.max()) < 1e-6
    assert torch.allclose(corr, torch.ones(5), atol=1e-4)  # eps = 1e-6 in the std
    # a NEGATIVE affine map is the worst case: z-scores flip, ||2 z||^2 = 4 m
    per_row, _ = rank_rows(cs, -a * cs + b)
    assert torch.allclose(per_row, torch.full((5,), 4.0 * 7), rtol=1e-4)


def test_rank_rows_equals_two_m_one_minus_pearson():
    g = torch.Generator().manual_seed(1)
    cs, ct = torch.randn(4, 9, generator=g), torch.randn(4, 9, generator=g)
    per_row, corr = rank_rows(cs, ct)
    pearson = np.array([np.corrcoef(cs[i].numpy(), ct[i].numpy())[0, 1] for i in range(4)])
    np.testing.assert_allclose(per_row.numpy(), 2 * 9 * (1 - pearson), rtol=1e-4)
    np.testing.assert_allclose(corr.numpy(), pearson, rtol=1e-4)
    mean_rows, _ = rank_rows(cs, ct, reduce="mean")
    np.testing.assert_allclose(mean_rows.numpy(), 2 * (1 - pearson), rtol=1e-4)


def test_rank_loss_on_embeddings():
    g = torch.Generator().manual_seed(2)
    n = 6
    s = F.normalize(torch.randn(n, 5, generator=g), dim=-1)
    # teacher = [s, beta * 1]: cos_t = (s_i.s_j + beta^2) / (1 + beta^2), a positive affine map of cos_s
    t = torch.cat([s, torch.full((n, 1), 0.7)], dim=1)
    loss, corr = rank_loss(s, t)
    assert float(loss) < 1e-5 and abs(float(corr) - 1) < 1e-5
    # unrelated teacher: mean over anchors of 2 (n-1) (1 - r_i) with r_i the row Pearson correlations
    t2 = torch.randn(n, 8, generator=g)
    loss2, _ = rank_loss(s, t2)
    cs = (s @ s.T).numpy()
    tn = F.normalize(t2, dim=-1)
    ct = (tn @ tn.T).numpy()
    r = [np.corrcoef(np.delete(cs[i], i), np.delete(ct[i], i))[0, 1] for i in range(n)]
    assert math.isclose(float(loss2), float(np.mean([2 * (n - 1) * (1 - ri) for ri in r])), rel_tol=1e-4)


# -- L_spatial ----------------------------------------------------------------------------------------


def test_spatial_zero_for_identical_affinities():
    g = torch.Generator().manual_seed(3)
    s = torch.randn(2, 5, 4, generator=g)
    q, _ = torch.linalg.qr(torch.randn(6, 4, generator=g))  # [6, 4], orthonormal columns
    t = s @ q.T  # another width, the same inner products
    assert float(spatial_kl(s, t, 0.1)) < 1e-6
    assert float(spatial_kl(s, 3.0 * t, 0.1)) < 1e-6  # cosines: scale does not matter
    assert float(spatial_kl(s, torch.randn(2, 5, 6, generator=g), 0.1)) > 1e-2


def test_spatial_kl_hand_computed():
    tau = 0.5
    student = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # orthogonal tokens: A_s = I
    teacher = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])  # identical tokens: A_t = all ones -> rows (1/2, 1/2)
    a_self = math.exp(1 / tau) / (math.exp(1 / tau) + 1.0)  # student row: softmax([1, 0] / tau)
    kl = 0.5 * math.log(0.5 / a_self) + 0.5 * math.log(0.5 / (1 - a_self))
    assert math.isclose(float(spatial_kl(student, teacher, tau)), kl, rel_tol=1e-5)


# -- L_global -----------------------------------------------------------------------------------------


def test_mine_positives_threshold_and_topk_fallback():
    sim = torch.tensor([[1.0, 0.9, 0.2, 0.1],
                        [0.9, 1.0, 0.3, 0.85],
                        [0.2, 0.3, 1.0, 0.4],
                        [0.1, 0.85, 0.4, 1.0]])
    pos = mine_positives(sim, threshold=0.8, topk=1)
    expected = torch.tensor([[0, 1, 0, 0], [1, 0, 0, 1], [0, 0, 0, 1], [0, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(pos, expected)  # row 2 has none >= 0.8: its top-1 (index 3, 0.4) is the positive
    assert mine_positives(sim, threshold=0.8, topk=2)[2].tolist() == [False, True, False, True]


def test_global_infonce_hand_computed():
    tau = 0.5
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # cos: s01 = 0, s02 = -1, s12 = 0
    t = torch.tensor([[1.0, 0.0], [0.96, 0.28], [0.0, 1.0]])  # cos_t: t01 = .96, t02 = 0, t12 = .28
    loss, npos = global_infonce(s, t, temperature=tau, threshold=0.9, topk=1)
    # anchor 0: positive {1}; anchor 1: positive {0}; anchor 2: none >= 0.9 -> top-1 = {1}
    l0 = -math.log(math.exp(0 / tau) / (math.exp(0 / tau) + math.exp(-1 / tau)))
    l1 = -math.log(math.exp(0 / tau) / (math.exp(0 / tau) + math.exp(0 / tau)))
    l2 = -math.log(math.exp(0 / tau) / (math.exp(-1 / tau) + math.exp(0 / tau)))
    assert math.isclose(float(loss), (l0 + l1 + l2) / 3, rel_tol=1e-5)
    assert float(npos) == 1.0


def test_global_infonce_falls_when_positives_move_closer():
    g = torch.Generator().manual_seed(4)
    centers = F.normalize(torch.randn(3, 8, generator=g), dim=-1)
    label = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    teacher = centers[label] + 0.05 * torch.randn(8, 8, generator=g)  # same label: teacher cos > 0.9
    student = torch.randn(8, 16, generator=g)
    anchors = torch.randn(3, 16, generator=g)
    losses = []
    for alpha in (0.0, 0.5, 1.0, 3.0):  # pull each student embedding towards its class anchor
        loss, npos = global_infonce(student + alpha * 4 * anchors[label], teacher, 0.1, 0.9, 1)
        losses.append(float(loss))
    assert float(npos) > 1.0  # multi-positive: label 0 and 1 have 2 other members each
    assert all(a > b for a, b in zip(losses, losses[1:])), losses


def test_loss_config_checks_name_the_path():
    with pytest.raises(ConfigError, match="rida.objective"):
        check_loss_config(RidaLossConfig(objective="mse"))
    with pytest.raises(ConfigError, match="at least one loss weight"):
        check_loss_config(RidaLossConfig(w_global=0, w_rank=0, w_spatial=0))


# -- the batch losses under DDP ------------------------------------------------------------------------


def _ddp_worker(rank: int, world: int, init: str, queue) -> None:
    import torch.distributed as dist

    from lostcli.train.rida import _gather

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    g = torch.Generator().manual_seed(0)
    s_all, t_all = torch.randn(8, 5, generator=g), torch.randn(8, 6, generator=g)
    s = s_all[rank * 4:(rank + 1) * 4].clone().requires_grad_(True)
    es, et = _gather(s), _gather(t_all[rank * 4:(rank + 1) * 4])
    loss = global_infonce(es, et, 0.2, 0.3, 1)[0] + rank_loss(es, et)[0]
    loss.backward()
    queue.put((rank, float(loss.detach()), s.grad.tolist()))
    dist.destroy_process_group()


def test_gathered_losses_give_the_full_batch_gradient(tmp_path):
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    init = f"file://{tmp_path / 'pg'}"
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, init, queue)) for r in range(2)]
    for p in procs:
        p.start()
    res = sorted([queue.get(timeout=60) for _ in procs], key=lambda r: r[0])
    for p in procs:
        p.join(timeout=30)
    g = torch.Generator().manual_seed(0)
    s_all, t_all = torch.randn(8, 5, generator=g).requires_grad_(True), torch.randn(8, 6, generator=g)
    loss = global_infonce(s_all, t_all, 0.2, 0.3, 1)[0] + rank_loss(s_all, t_all)[0]
    loss.backward()
    assert all(math.isclose(r[1], float(loss.detach()), rel_tol=1e-5) for r in res)  # every process: the full-batch loss
    grad = torch.cat([torch.tensor(r[2]) for r in res]) / 2  # DDP averages parameter gradients over 2 processes
    torch.testing.assert_close(grad, s_all.grad, atol=1e-5, rtol=1e-4)
