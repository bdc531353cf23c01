"""Training and validation data: image folders, the training-set RGB statistics, samplers.

- ``image_folder(root)``: torchvision's ``ImageFolder`` (class per sub-folder), images decoded
  with EXIF orientation applied and converted to RGB, as the service decodes them.
- ``rgb_statistics(dataset)``: the training-set mean RGB (paper §2.1) and the PCA of RGB pixel
  values (AlexNet §4.1), computed from the data: from every image when the set is small, from a
  fixed random sample of ``max_images`` images when it is large; each image is reduced so that
  its longer side is at most 128 pixels before its pixels are counted.
- ``AugmentedDataset``: applies a transform with torch's generator seeded from
  ``(seed, epoch, index)``, so a sample's augmentation does not depend on the process, worker or
  rank that loads it: a single-process run and a torchrun run see the same crops, and a resumed
  run the same crops as an uninterrupted one.
- ``ResumableSampler``: ``DistributedSampler`` order (shuffled by ``seed + epoch``) that can start
  part-way through an epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset, DistributedSampler
from torchvision.datasets import ImageFolder
from tqdm import tqdm

from training.errors import UserFacingError

STATS_SIDE = 128  # images are reduced to at most this side before their pixels are counted
STATS_MAX_IMAGES = 2000


class DataError(UserFacingError):
    pass


def load_rgb(path: str | Path, draft: int | None = None) -> Image.Image:
    """Decode like the service: EXIF orientation applied, any mode converted to RGB. With
    ``draft``, a JPEG is decoded at a reduced size whose sides still reach ``draft``."""
    with open(path, "rb") as f:
        image = Image.open(f)
        if draft is not None:
            image.draft("RGB", (draft, draft))
        image = ImageOps.exif_transpose(image)
        return image.convert("RGB")


def image_folder(root: str | Path, transform: Callable | None = None) -> ImageFolder:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"no image folder at {root}")
    try:
        return ImageFolder(str(root), transform=transform, loader=load_rgb)
    except (FileNotFoundError, RuntimeError) as err:
        raise DataError(f"{root}: {err}") from None


@dataclass(frozen=True)
class RGBStats:
    """Mean RGB in 0..255 units; eigenvalues (descending) and eigenvectors (columns) of the
    covariance of RGB pixel values in [0, 1]."""

    mean: tuple[float, float, float]
    eigval: tuple[float, float, float]
    eigvec: tuple[tuple[float, float, float], ...]
    images: int
    pixels: int

    @property
    def std(self) -> tuple[float, float, float]:
        """Per-channel standard deviation in 0..255 units (from the covariance)."""
        v = np.asarray(self.eigvec) @ np.diag(self.eigval) @ np.asarray(self.eigvec).T
        return tuple(float(np.sqrt(max(d, 0.0)) * 255.0) for d in np.diag(v))

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": list(self.mean),
            "eigval": list(self.eigval),
            "eigvec": [list(r) for r in self.eigvec],
            "images": self.images,
            "pixels": self.pixels,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RGBStats:
        return cls(
            mean=tuple(float(v) for v in d["mean"]),
            eigval=tuple(float(v) for v in d["eigval"]),
            eigvec=tuple(tuple(float(v) for v in r) for r in d["eigvec"]),
            images=int(d["images"]),
            pixels=int(d["pixels"]),
        )


def rgb_statistics(
    paths: Sequence[str],
    *,
    max_images: int = STATS_MAX_IMAGES,
    seed: int = 0,
    progress: bool = False,
) -> RGBStats:
    """Mean RGB and RGB PCA over the images at ``paths`` (a fixed random sample if many)."""
    if not paths:
        raise DataError("no images to compute the mean RGB from")
    chosen = list(paths)
    if len(chosen) > max_images:
        rng = np.random.default_rng(seed)
        chosen = [chosen[i] for i in sorted(rng.choice(len(chosen), max_images, replace=False))]
    total = np.zeros(3)
    outer = np.zeros((3, 3))
    count = 0
    for path in tqdm(chosen, desc="mean RGB and PCA", disable=not progress, leave=False):
        image = load_rgb(path, draft=STATS_SIDE)
        image.thumbnail((STATS_SIDE, STATS_SIDE), Image.Resampling.BILINEAR)
        x = np.asarray(image, dtype=np.float64).reshape(-1, 3) / 255.0
        total += x.sum(axis=0)
        outer += x.T @ x
        count += len(x)
    mean = total / count
    cov = (outer - count * np.outer(mean, mean)) / max(count - 1, 1)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]
    eigval, eigvec = np.clip(eigval[order], 0, None), eigvec[:, order]
    return RGBStats(
        mean=tuple(float(v) for v in mean * 255.0),
        eigval=tuple(float(v) for v in eigval),
        eigvec=tuple(tuple(float(v) for v in row) for row in eigvec),
        images=len(chosen),
        pixels=int(count),
    )


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample's augmentation, from (seed, epoch, index)."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index]).generate_state(1, np.uint64)
    return int(state[0]) & ((1 << 63) - 1)


class AugmentedDataset(Dataset):
    """``base[index]`` (image, label) with ``transform`` applied under a per-sample seed.

    Call ``set_epoch(epoch)`` before each epoch (in the main process; DataLoader workers are
    started per epoch and pick it up). The caller's torch RNG state is left untouched.
    """

    def __init__(self, base: Dataset, transform: Callable, seed: int) -> None:
        self.base = base
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, self.epoch, index))
            x = self.transform(image)
        return torch.Tensor.as_subclass(x, torch.Tensor), label


class TransformedDataset(Dataset):
    """``base[index]`` with a deterministic transform (validation)."""

    def __init__(self, base: Dataset, transform: Callable) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[index]
        return torch.Tensor.as_subclass(self.transform(image), torch.Tensor), label


class ResumableSampler(DistributedSampler):
    """DistributedSampler (shuffle by ``seed + epoch``, rank's share) that can skip the first
    ``start`` of this rank's indices in the current epoch (a resumed run, part-way through)."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.start = 0

    def set_start(self, start: int) -> None:
        self.start = int(start)

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start :])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


def shard_indices(n: int, rank: int, world: int) -> list[int]:
    """Every index exactly once across ranks (no padding): validation counts stay exact."""
    return list(range(rank, n, world))


def split_holdout(
    targets: Sequence[int], fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """A per-class deterministic split of indices: (train, validation)."""
    if not 0 < fraction < 1:
        raise DataError(f"validation fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(int(t), []).append(i)
    train, val = [], []
    for idx in by_class.values():
        idx = list(rng.permutation(idx))
        k = max(1, math.floor(len(idx) * fraction)) if len(idx) > 1 else 0
        val += idx[:k]
        train += idx[k:]
    return sorted(int(i) for i in train), sorted(int(i) for i in val)
