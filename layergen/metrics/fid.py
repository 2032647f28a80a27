"""FID and KID of composites with clean-fid-style preprocessing (Text2Layer V-B).

Text2Layer measures the fidelity of composited images with Clean-FID (Parmar et al.):
images are quantised to uint8 as if saved to disk, then each channel is resized as float
to the Inception input size with PIL's antialiased ``BICUBIC`` filter (rather than the
aliasing bilinear resize of the original TensorFlow code) and fed as float, unquantised.
:func:`clean_resize` does the quantisation and that resize. The features then come from
torch-fidelity's Inception-v3 (the network torchmetrics uses), loaded from a **local**
weights file so that nothing is downloaded at run time; that network only accepts uint8,
so :class:`InceptionFeatures` rounds the resized image to uint8 once more (at most 0.5/255
per pixel): the one step where FID here differs from clean-fid's.

The statistics are torchmetrics' ``FrechetInceptionDistance`` / ``KernelInceptionDistance``
fed with precomputed features (:class:`PrecomputedFeatures`), so one Inception pass serves
every group of a breakdown (all samples, 2 layers, 3 layers, ...).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from layergen.layers import to_unit

logger = logging.getLogger(__name__)

INCEPTION_IMAGE_SIZE = 299
INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth"
)
INCEPTION_WEIGHTS_ENV = "LAYERGEN_INCEPTION_WEIGHTS"
ALL = "all"


class MissingWeightsError(FileNotFoundError):
    """Weights needed by a metric are not available locally; the message says what to get."""


def clean_resize(images: Tensor, size: int = INCEPTION_IMAGE_SIZE) -> Tensor:
    """Quantise and resize images the way clean-fid does (its ``"clean"`` resizer).

    The images are rounded to uint8 levels, then resized with torch's antialiased bicubic
    interpolation (``antialias=True``, ``align_corners=False``), which computes PIL's
    ``BICUBIC`` resize of each channel as a float image (mode ``"F"``, clean-fid's choice)
    up to float rounding (about 1e-6, tested), clamped to [0, 1] and not quantised again.
    Images already ``size x size`` are only quantised (PIL's resize is then the identity).

    Args:
        images: ``(N, 3, H, W)`` in [-1, 1].
        size: output side.

    Returns:
        ``(N, 3, size, size)`` float in [0, 1].
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected (N, 3, H, W), got {tuple(images.shape)}")
    quantised = torch.round(to_unit(images.float()).clamp(0, 1) * 255.0) / 255.0
    if quantised.shape[-2:] == (size, size):
        return quantised
    resized = F.interpolate(quantised, size=(size, size), mode="bicubic", antialias=True,
                            align_corners=False)
    return resized.clamp(0, 1)


def resolve_inception_weights(weights_path: str | os.PathLike | None) -> Path:
    """Find the Inception weights: the argument, else ``$LAYERGEN_INCEPTION_WEIGHTS``.

    Raises:
        MissingWeightsError: no such file, with the URL to download and where to put it.
    """
    candidate = weights_path or os.environ.get(INCEPTION_WEIGHTS_ENV)
    if candidate and Path(candidate).is_file():
        return Path(candidate)
    where = f"'{candidate}' does not exist" if candidate else "no weights path was given"
    raise MissingWeightsError(
        f"FID needs the Inception-v3 weights of torch-fidelity and {where}. Download "
        f"{INCEPTION_WEIGHTS_URL} on a machine with internet access, copy it here and pass "
        f"its path with --inception-weights (or set {INCEPTION_WEIGHTS_ENV})."
    )


class InceptionFeatures(nn.Module):
    """torch-fidelity's Inception-v3 pool features from a local weights file.

    Args:
        weights_path: the ``.pth`` file from :data:`INCEPTION_WEIGHTS_URL`.
        feature_dim: one of 64, 192, 768, 2048 (the pool3 features, 2048, for FID).

    ``forward(images (N, 3, S, S) in [0, 1]) -> (N, feature_dim)``. torch-fidelity's
    network accepts only uint8, so ``forward`` rounds the images to uint8 levels first
    (clean-fid feeds its Inception the unquantised float resize).
    """

    def __init__(self, weights_path: str | os.PathLike | None = None, feature_dim: int = 2048):
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        path = resolve_inception_weights(weights_path)
        # Refuse anything but plain tensors before torch-fidelity unpickles the file itself.
        torch.load(path, map_location="cpu", weights_only=True)
        self.inception = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=[str(feature_dim)],
            feature_extractor_weights_path=str(path),
        )
        self.num_features = feature_dim

    def forward(self, images: Tensor) -> Tensor:
        return self.inception(torch.round(images * 255.0).to(torch.uint8))


class PrecomputedFeatures(nn.Module):
    """Identity "feature extractor" so torchmetrics' statistics accept features directly."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


class FidelityMetrics:
    """FID (and optionally KID) of generated vs real images, overall and per group.

    Features are extracted once per image by ``feature`` and accumulated into one
    torchmetrics ``FrechetInceptionDistance`` (and ``KernelInceptionDistance``) per group.

    Args:
        feature: an injected extractor ``(N, 3, S, S) in [0, 1] -> (N, D)`` (tests, or the
            probe of the synthetic benchmark); ``None`` builds :class:`InceptionFeatures`.
        weights_path: Inception weights file when ``feature`` is ``None``.
        image_size: side ``S`` the images are clean-resized to before ``feature``.
        compute_kid: also compute KID (mean and std over subsets).
        kid_subset_size: KID subset size (capped at the smallest set size at compute time).
    """

    def __init__(
        self,
        feature: nn.Module | None = None,
        weights_path: str | os.PathLike | None = None,
        image_size: int = INCEPTION_IMAGE_SIZE,
        compute_kid: bool = False,
        kid_subset_size: int = 100,
    ) -> None:
        self.feature = feature if feature is not None else InceptionFeatures(weights_path)
        self.feature.eval()
        self.image_size = image_size
        self.compute_kid = compute_kid
        self.kid_subset_size = kid_subset_size
        self._features: dict[str, dict[bool, list[Tensor]]] = {}

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """``(N, 3, H, W)`` in [-1, 1] -> ``(N, D)`` float64 features."""
        device = next(self.feature.parameters(), torch.empty(0)).device
        resized = clean_resize(images, self.image_size).to(device)
        return self.feature(resized).double().cpu()

    def update(self, images: Tensor, real: bool, groups: Iterable[str] | None = None) -> None:
        """Add images to the ``"all"`` group and, per image, to its group (e.g. ``"3"``).

        Args:
            images: ``(N, 3, H, W)`` in [-1, 1].
            real: reference images (``True``) or generated ones.
            groups: one group name per image, or ``None``.
        """
        if images.shape[0] == 0:
            return
        feats = self.features(images)
        self._add(ALL, real, feats)
        if groups is not None:
            groups = list(groups)
            if len(groups) != len(feats):
                raise ValueError(f"groups: expected {len(feats)} names, got {len(groups)}")
            for name in sorted(set(groups)):
                index = torch.tensor([g == name for g in groups])
                self._add(name, real, feats[index])

    def _add(self, group: str, real: bool, feats: Tensor) -> None:
        self._features.setdefault(group, {True: [], False: []})[real].append(feats)

    def compute(self) -> dict[str, dict[str, float]]:
        """``{group: {"fid": ..., "kid_mean": ..., "kid_std": ...}}`` for groups with >= 2
        real and >= 2 generated images (others are logged and left out)."""
        results: dict[str, dict[str, float]] = {}
        for group, sets in self._features.items():
            num_real = sum(len(f) for f in sets[True])
            num_fake = sum(len(f) for f in sets[False])
            if num_real < 2 or num_fake < 2:
                logger.warning("FID: group %s has %d real / %d generated images, skipped",
                               group, num_real, num_fake)
                continue
            results[group] = fidelity_from_features(
                torch.cat(sets[True]), torch.cat(sets[False]), self.compute_kid,
                self.kid_subset_size)
        return results

    def reset(self) -> None:
        self._features.clear()


def fidelity_from_features(
    real: Tensor, fake: Tensor, compute_kid: bool = False, kid_subset_size: int = 100
) -> dict[str, float]:
    """FID (and KID) from two feature sets ``(N, D)`` with torchmetrics' estimators."""
    dim = real.shape[1]
    fid = FrechetInceptionDistance(feature=PrecomputedFeatures(dim)).double()
    fid.update(real, real=True)
    fid.update(fake, real=False)
    result = {"fid": float(fid.compute())}
    if compute_kid:
        subset = min(kid_subset_size, len(real), len(fake))
        kid = KernelInceptionDistance(feature=PrecomputedFeatures(dim), subset_size=subset)
        kid.update(real, real=True)
        kid.update(fake, real=False)
        mean, std = kid.compute()
        result.update(kid_mean=float(mean), kid_std=float(std))
    return result
