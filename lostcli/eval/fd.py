"""Frechet distance and KID between two sets of renders (docs/protocols.md "Frechet distance").

Features of every rendered view (4 per shape) of a generated / reconstructed set and of a reference set are
fitted with Gaussians and compared by torchmetrics' `FrechetInceptionDistance`; `KernelInceptionDistance`
(unbiased polynomial-kernel MMD^2 over random subsets) comes with it, since FD is biased at small sample
sizes. The feature network is named in every figure:

- "inception": torchmetrics' Inception-v3 (FID proper), only when `torch-fidelity` is installed and its
  weights already sit in the torch hub cache (nothing is ever downloaded);
- "classifier": the render classifier's penultimate features (global-average-pooled last stage);
- any teacher spec (`teachers.load_teacher`): its global image embedding (e.g. the built-in teacher).

The figure is called "FD-<network>" unless the network is Inception ("FID").

Features are computed once per image by `RenderFeatures`; the torchmetrics metrics are then given a
pass-through feature module over those features, so FD and KID see identical inputs.
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, DataError

FD_WARN_SHAPES = 500  # below this many shapes per set FD is biased: warn, and read KID beside it
INCEPTION_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"  # torch-fidelity's file in <torch hub>/checkpoints
KID_SUBSETS = 100  # torchmetrics' default
KID_SUBSET_SIZE = 1000  # torchmetrics' default; capped at the smaller set's image count


# ----------------------------------------------------------------------------------------------------
# Feature networks
# ----------------------------------------------------------------------------------------------------


class RenderFeatures(nn.Module):
    """A named, frozen image network: uint8 views [N, H, W, 3] -> features [N, num_features] (float32).

    Attributes:
        name: what reports call the network, e.g. "render-classifier".
        num_features: D.
    """

    def __init__(self, name: str, net: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor], num_features: int,
                 device: torch.device) -> None:
        super().__init__()
        self.name = name
        self.net = net.eval().requires_grad_(False)
        self._fn = fn
        self.num_features = int(num_features)
        self._device = device

    @property
    def metric_name(self) -> str:
        """"FID" for Inception, "FD-<network>" otherwise."""
        return "FID" if self.name == "inception" else f"FD-{self.name}"

    @torch.no_grad()
    def forward(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> float32 [N, D] on the CPU."""
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images [N, H, W, 3], got {images.dtype} {tuple(images.shape)}")
        out = [self._fn(images[i:i + batch_size].to(self._device)).float().cpu()
               for i in range(0, images.shape[0], batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.num_features)


def classifier_features(classifier: nn.Module, name: str = "render-classifier") -> RenderFeatures:
    """The render classifier's penultimate features: the pooled last stage [N, widths[-1]]."""

    def fn(images: torch.Tensor) -> torch.Tensor:
        x = classifier.blocks(classifier.stem(classifier.preprocess(images)))  # [N, C, s, s]
        return x.mean(dim=(2, 3))

    return RenderFeatures(name, classifier, fn, classifier.head.in_features, classifier.device)


def teacher_features(teacher: nn.Module) -> RenderFeatures:
    """A teacher's global image embedding [N, embed_dim] (not normalised)."""

    def fn(images: torch.Tensor) -> torch.Tensor:
        return teacher.encode_images(teacher.preprocess(images))[0]

    return RenderFeatures(teacher.name, teacher, fn, teacher.embed_dim, teacher.device)


def local_inception_weights() -> Path | None:
    """torch-fidelity's Inception weights when they are installed locally (never downloads), else None."""
    if importlib.util.find_spec("torch_fidelity") is None:
        return None
    path = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS
    return path if path.is_file() else None


def inception_features() -> RenderFeatures:
    """torchmetrics' FID Inception-v3 (2048-d pool features); CheckpointError when its weights are not local."""
    if local_inception_weights() is None:
        raise CheckpointError(f"inception: needs torch-fidelity and {INCEPTION_WEIGHTS} in "
                              f"{Path(torch.hub.get_dir()) / 'checkpoints'} (not downloaded offline); "
                              "use --fd-network classifier or a teacher spec")
    from torchmetrics.image.fid import NoTrainInceptionV3

    net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"])

    def fn(images: torch.Tensor) -> torch.Tensor:
        return net(images.permute(0, 3, 1, 2).contiguous())  # uint8 NCHW, resized to 299 inside

    return RenderFeatures("inception", net, fn, 2048, torch.device("cpu"))


def feature_network(spec: str, classifier: nn.Module | None = None,
                    device: str | torch.device = "cpu") -> RenderFeatures:
    """Resolve `--fd-network`: "auto", "inception", "classifier" or a teacher spec.

    "auto" is Inception when its weights are local, else the render classifier.

    Raises:
        CheckpointError: Inception without local weights, a teacher spec that does not load, or
            "classifier"/"auto" without a classifier.
    """
    if spec == "auto":
        spec = "inception" if local_inception_weights() is not None else "classifier"
    if spec == "inception":
        return inception_features()
    if spec == "classifier":
        if classifier is None:
            raise CheckpointError("--fd-network classifier: give the render classifier (--classifier) "
                                  "or name a teacher spec")
        return classifier_features(classifier)
    from ..teachers import load_teacher

    return teacher_features(load_teacher(spec, device=device))


# ----------------------------------------------------------------------------------------------------
# The distance
# ----------------------------------------------------------------------------------------------------


class _Passthrough(nn.Module):
    """torchmetrics feature module over precomputed features [N, D] (the metrics call it in `update`)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@dataclass
class DistanceResult:
    fd: float  # Frechet distance of the Gaussian fits
    kid: float | None  # KID mean over subsets (None when a set has < 2 images)
    kid_std: float | None  # its spread over subsets
    network: str  # the feature network's name
    metric: str  # "FID" or "FD-<network>"
    images_real: int  # renders in the reference set
    images_fake: int  # renders in the evaluated set
    shapes_real: int
    shapes_fake: int
    kid_subset_size: int
    warning: str | None  # small-sample warning (FD biased below FD_WARN_SHAPES shapes)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FD of two feature sets [N1, D], [N2, D] through torchmetrics (float64 statistics)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if real.shape[0] < 2 or fake.shape[0] < 2:
        raise DataError(f"Frechet distance needs at least 2 images per set, got {real.shape[0]} and {fake.shape[0]}")
    metric = FrechetInceptionDistance(feature=_Passthrough(real.shape[1]), normalize=True)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def kernel_distance(real: torch.Tensor, fake: torch.Tensor, subsets: int = KID_SUBSETS,
                    subset_size: int = KID_SUBSET_SIZE, seed: int = 0) -> tuple[float, float, int]:
    """KID (mean, std over subsets, subset size used) of two feature sets; subsets drawn with `seed`."""
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(subset_size, real.shape[0], fake.shape[0])
    with warnings.catch_warnings():  # "will save all extracted features in buffer": that is the point here
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(feature=_Passthrough(real.shape[1]), subsets=subsets, subset_size=size,
                                         normalize=True)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):  # torchmetrics draws subsets from the global generator
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std), size


def small_sample_warning(metric: str, n_fake: int, n_real: int) -> str | None:
    """The warning every FD figure from fewer than FD_WARN_SHAPES shapes per set carries (None above it)."""
    if min(n_fake, n_real) >= FD_WARN_SHAPES:
        return None
    return (f"{metric} from {n_fake} vs {n_real} shapes: below {FD_WARN_SHAPES} shapes FD is biased upwards; "
            "compare KID (unbiased)")


class RenderDistance:
    """Accumulate the renders of a reference ("real") and an evaluated ("fake") set, then FD + KID.

    Example:
        dist = RenderDistance(feature_network("classifier", classifier))
        dist.update(test_renders, real=True)      # uint8 [B, 4, H, W, 3], any number of calls
        dist.update(generated_renders, real=False)
        result = dist.compute()
    """

    def __init__(self, features: RenderFeatures, kid_subsets: int = KID_SUBSETS,
                 kid_subset_size: int = KID_SUBSET_SIZE, seed: int = 0) -> None:
        self.features = features
        self.kid_subsets = kid_subsets
        self.kid_subset_size = kid_subset_size
        self.seed = seed
        self._feats: dict[bool, list[torch.Tensor]] = {True: [], False: []}  # per set: [V * B, D] chunks
        self._shapes: dict[bool, list[int]] = {True: [], False: []}  # per set: shapes of each chunk

    def update(self, views: np.ndarray | torch.Tensor, real: bool) -> None:
        """Add shapes' renders: uint8 [B, V, H, W, 3] (or single images [N, H, W, 3], one shape each)."""
        x = torch.as_tensor(np.asarray(views) if isinstance(views, np.ndarray) else views)
        if x.dim() == 4:
            x = x[:, None]
        if x.dtype != torch.uint8 or x.dim() != 5 or x.shape[-1] != 3:
            raise ValueError(f"expected uint8 views [B, V, H, W, 3], got {x.dtype} {tuple(x.shape)}")
        self._feats[real].append(self.features(x.reshape(-1, *x.shape[2:])))
        self._shapes[real].append(x.shape[0])

    def sharing_reference(self) -> RenderDistance:
        """A new distance whose reference set IS this one's (later reference updates reach both) and whose
        evaluated set is empty: several evaluated sets (one per table row) against one reference."""
        other = RenderDistance(self.features, self.kid_subsets, self.kid_subset_size, self.seed)
        other._feats[True], other._shapes[True] = self._feats[True], self._shapes[True]
        return other

    def reset_fake(self) -> None:
        """Forget the evaluated set, keep the reference (evaluate several generated sets against one)."""
        self._feats[False], self._shapes[False] = [], []

    def compute(self) -> DistanceResult:
        """FD and KID between the two sets accumulated so far."""
        real = torch.cat(self._feats[True]) if self._feats[True] else torch.zeros(0, self.features.num_features)
        fake = torch.cat(self._feats[False]) if self._feats[False] else torch.zeros(0, self.features.num_features)
        fd = frechet_distance(real, fake)
        kid, kid_std, size = kernel_distance(real, fake, self.kid_subsets, self.kid_subset_size, self.seed)
        n_real, n_fake = sum(self._shapes[True]), sum(self._shapes[False])
        warning = small_sample_warning(self.features.metric_name, n_fake, n_real)
        return DistanceResult(fd=fd if math.isfinite(fd) else float("nan"), kid=kid, kid_std=kid_std,
                              network=self.features.name, metric=self.features.metric_name,
                              images_real=real.shape[0], images_fake=fake.shape[0],
                              shapes_real=n_real, shapes_fake=n_fake,
                              kid_subset_size=size, warning=warning)
