"""Frechet distance / KID of render features (eval/fd.py): closed-form Gaussian cases, identical sets, networks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg
from torch import nn

from lostcli.errors import CheckpointError, DataError
from lostcli.models.classifier import RenderClassifier, RenderClassifierConfig
from lostcli.eval.fd import (FD_WARN_SHAPES, RenderDistance, RenderFeatures, classifier_features, feature_network,
                             frechet_distance, kernel_distance, local_inception_weights, teacher_features)

pytestmark = pytest.mark.usefixtures("one_thread")


def fd_closed_form(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) in float64 with scipy's matrix square root."""
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def colour_features() -> RenderFeatures:
    """A transparent 'network': the mean colour of each channel, in [0, 1] (features [N, 3])."""
    return RenderFeatures("mean-colour", nn.Identity(), lambda x: x.float().mean(dim=(1, 2)) / 255.0, 3,
                          torch.device("cpu"))


def flat_views(colours: np.ndarray, size: int = 4) -> np.ndarray:
    """uint8 [B, V, size, size, 3]: each view one flat colour, colours [B, V, 3]."""
    return np.broadcast_to(colours[:, :, None, None, :], (*colours.shape[:2], size, size, 3)).astype(np.uint8).copy()


def test_fd_matches_the_closed_form_on_sample_statistics():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 4, generator=g) @ torch.tensor([[1.0, 0.3, 0, 0], [0, 1.0, 0.2, 0], [0, 0, 0.5, 0],
                                                         [0.1, 0, 0, 2.0]])
    b = 0.7 * torch.randn(250, 4, generator=g) + torch.tensor([0.5, -1.0, 0.0, 2.0])
    A, B = a.double().numpy(), b.double().numpy()
    expected = fd_closed_form(A.mean(0), np.cov(A, rowvar=False), B.mean(0), np.cov(B, rowvar=False))
    assert expected > 5.0  # a real difference, not a trivially small number
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6, abs=1e-8)


def test_fd_of_two_gaussians_approaches_the_population_value():
    # N(0, I) vs N(m, 4 I) in 3-D: |m|^2 + 3 (1 + 4 - 2 * 2) = 3 + 3 = 6 for m = (1, 1, 1)
    g = torch.Generator().manual_seed(1)
    a = torch.randn(20000, 3, generator=g)
    b = 2.0 * torch.randn(20000, 3, generator=g) + 1.0
    assert frechet_distance(a, b) == pytest.approx(6.0, abs=0.15)


def test_identical_sets_give_zero_fd_and_near_zero_kid():
    a = torch.randn(400, 5, generator=torch.Generator().manual_seed(2))
    assert abs(frechet_distance(a, a.clone())) < 1e-6
    kid, std, size = kernel_distance(a, a.clone(), subsets=20, subset_size=200)
    assert size == 200 and abs(kid) < 3 * std + 1e-3
    far = a + 3.0
    assert kernel_distance(a, far, subsets=20, subset_size=200)[0] > 0.5  # a shifted set is far away


def test_kid_is_seeded_and_caps_the_subset_size():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(60, 4, generator=g), torch.randn(40, 4, generator=g) + 0.5
    first = kernel_distance(a, b, subsets=10, seed=7)
    assert first == kernel_distance(a, b, subsets=10, seed=7) and first[2] == 40  # capped at the smaller set
    assert first[0] != kernel_distance(a, b, subsets=10, seed=8)[0]


def test_render_distance_over_views_counts_and_warns():
    rng = np.random.default_rng(0)
    real = flat_views(rng.integers(0, 256, (30, 4, 3)))
    dist = RenderDistance(colour_features(), kid_subsets=10)
    dist.update(real[:20], real=True)
    dist.update(real[20:], real=True)  # several calls accumulate
    dist.update(real, real=False)
    same = dist.compute()
    assert abs(same.fd) < 1e-6 and same.images_real == same.images_fake == 120
    assert (same.shapes_real, same.shapes_fake, same.metric, same.kid_subset_size) == (30, 30, "FD-mean-colour", 120)
    assert same.warning is not None and str(FD_WARN_SHAPES) in same.warning

    # a darker generated set: FD = the closed form on the per-view colour features
    fake = flat_views((rng.integers(0, 256, (25, 4, 3)) * 0.5).astype(np.uint8))
    other = RenderDistance(colour_features(), kid_subsets=10)
    other.update(real, real=True)
    other.update(fake, real=False)
    r = other.compute()
    fr, ff = real[:, :, 0, 0].reshape(-1, 3) / 255.0, fake[:, :, 0, 0].reshape(-1, 3) / 255.0
    expected = fd_closed_form(fr.mean(0), np.cov(fr, rowvar=False), ff.mean(0), np.cov(ff, rowvar=False))
    assert r.fd == pytest.approx(expected, rel=1e-5) and r.fd > 0.05
    assert r.kid > same.kid


def test_rows_sharing_one_reference_match_separate_distances():
    rng = np.random.default_rng(1)
    real, fake_a, fake_b = (flat_views(rng.integers(0, 256, (n, 4, 3))) for n in (12, 10, 8))
    ref = RenderDistance(colour_features(), kid_subsets=5)
    row_a, row_b = ref.sharing_reference(), ref.sharing_reference()
    ref.update(real[:6], real=True)
    row_a.update(fake_a, real=False)
    ref.update(real[6:], real=True)  # a reference update after the fork reaches every row
    row_b.update(fake_b, real=False)
    for row, fake in ((row_a, fake_a), (row_b, fake_b)):
        alone = RenderDistance(colour_features(), kid_subsets=5)
        alone.update(real, real=True)
        alone.update(fake, real=False)
        got, want = row.compute(), alone.compute()
        assert got.fd == pytest.approx(want.fd, rel=1e-9) and got.kid == pytest.approx(want.kid, rel=1e-9)
        assert (got.shapes_real, got.shapes_fake) == (12, len(fake))
    assert row_a.compute().fd != pytest.approx(row_b.compute().fd)


def test_too_few_images_is_a_data_error():
    dist = RenderDistance(colour_features())
    dist.update(flat_views(np.zeros((1, 1, 3))), real=True)
    dist.update(flat_views(np.zeros((3, 1, 3))), real=False)
    with pytest.raises(DataError, match="at least 2 images"):
        dist.compute()


def test_classifier_and_teacher_features_shapes():
    torch.manual_seed(0)
    cls = RenderClassifier(RenderClassifierConfig(image_size=32, stem_width=8, widths=[16, 32], categories=["a", "b"]))
    feats = classifier_features(cls.eval())
    imgs = torch.randint(0, 256, (5, 40, 40, 3), dtype=torch.uint8)
    out = feats(imgs, batch_size=2)
    assert out.shape == (5, 32) and feats.num_features == 32 and torch.isfinite(out).all()
    assert torch.allclose(out[3], feats(imgs[3:4])[0], atol=1e-5)  # batching does not change a row
    assert feature_network("classifier", cls).metric_name == "FD-render-classifier"
    with pytest.raises(CheckpointError, match="--classifier"):
        feature_network("classifier", None)

    from lostcli.models.teacher import ClipTeacher, ClipTeacherConfig

    teacher = ClipTeacher(ClipTeacherConfig(embed_dim=32, image_size=32, patch_size=8, vision_width=32,
                                            vision_layers=1, vision_heads=2, text_context=16, text_width=32,
                                            text_layers=1, text_heads=2)).eval()
    tf = teacher_features(teacher)
    assert tf(imgs).shape == (5, 32) and tf.metric_name.startswith("FD-lost-clip")


def test_inception_only_with_local_weights():
    if local_inception_weights() is not None:
        pytest.skip("Inception weights are installed here")
    with pytest.raises(CheckpointError, match="inception"):
        feature_network("inception")
    torch.manual_seed(0)
    cls = RenderClassifier(RenderClassifierConfig(image_size=32, stem_width=8, widths=[16], categories=["a", "b"]))
    assert feature_network("auto", cls).name == "render-classifier"  # auto falls back, names the network
