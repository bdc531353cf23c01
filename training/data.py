"""Training and validation data: image folders, the training-set RGB statistics, samplers.

- ``image_folder(root)``: torchvision's ``ImageFolder`` (class per sub-folder), images decoded
  by ``model_store.imaging.load_rgb``: the very decoding of the service (EXIF orientation, alpha
  over white, 16-bit grey scaled), so a model trains on the pixels it is served.
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
- ``load_data(opts, d)``: the training and validation sets a ``verydeep train`` run names
  (``--data``, ``--val-data``, ``--dataset shapes``), and ``step_batches``, which groups a loader's
  micro-batches into optimiser steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, DistributedSampler, Subset
from torchvision.datasets import ImageFolder

from model_store.imaging import load_rgb
from model_store.progress import progress_bar
from training.errors import TrainError, UserFacingError

if TYPE_CHECKING:
    from training.distributed import Dist
    from training.options import TrainOptions

STATS_SIDE = 128  # images are reduced to at most this side before their pixels are counted
STATS_MAX_IMAGES = 2000


class DataError(UserFacingError):
    pass


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
    for path in progress_bar(chosen, desc="mean RGB and PCA", enabled=progress, leave=False):
        image = load_rgb(path, max_scale=STATS_SIDE)
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


@dataclass
class Data:
    """A run's images before any transform: class names, training and validation sets."""

    labels: list[str]
    train_base: Dataset
    train_paths: list[str]
    val_base: Dataset


def shapes_folders(opts: TrainOptions, d: Dist) -> tuple[Path, Path]:
    """Generate (once; rank 0) the shapes training and validation folders in the cache."""
    from training.shapes import is_complete, write_shapes

    cache = Path(opts.data_cache or Path.home() / ".cache" / "verydeep").expanduser()
    train_seed, val_seed = opts.shapes_seed, opts.shapes_seed + 1
    train_dir = cache / f"shapes-{opts.shapes_per_class}-seed{train_seed}"
    val_dir = cache / f"shapes-{opts.shapes_val_per_class}-seed{val_seed}"
    if d.main:
        for root, n, seed in (
            (train_dir, opts.shapes_per_class, train_seed),
            (val_dir, opts.shapes_val_per_class, val_seed),
        ):
            if not is_complete(root, n, seed):
                write_shapes(root, n, seed, progress=opts.progress, overwrite=True)
    d.barrier()
    return train_dir, val_dir


def load_data(opts: TrainOptions, d: Dist) -> Data:
    """``--data`` (with ``--val-data``, or a held-out ``--val-fraction``) or the shapes."""
    if (opts.data is None) == (opts.dataset is None):
        raise TrainError("give exactly one of --data DIR and --dataset shapes")
    if opts.dataset is not None and opts.dataset != "shapes":
        raise TrainError(f"unknown --dataset {opts.dataset!r} (the built-in one is 'shapes')")
    if opts.dataset == "shapes":
        train_dir, val_dir = shapes_folders(opts, d)
        if opts.val_data:
            val_dir = Path(opts.val_data)
    else:
        train_dir = Path(opts.data)
        val_dir = Path(opts.val_data) if opts.val_data else None
    train_folder = image_folder(train_dir)
    labels = list(train_folder.classes)
    if val_dir is None:
        return _held_out(train_folder, train_dir, labels, opts)
    val_folder = image_folder(val_dir)
    if val_folder.classes != labels:
        raise TrainError(
            f"validation classes {val_folder.classes} differ from training classes {labels}"
        )
    return Data(labels, train_folder, [p for p, _ in train_folder.samples], val_folder)


def _held_out(folder: ImageFolder, root: Path, labels: list[str], opts: TrainOptions) -> Data:
    train_idx, val_idx = split_holdout(folder.targets, opts.val_fraction, opts.seed)
    if not val_idx:
        raise TrainError("too few images to hold out a validation set; give --val-data")
    train_paths = [folder.samples[i][0] for i in train_idx]
    return Data(labels, Subset(folder, train_idx), train_paths, Subset(image_folder(root), val_idx))


def step_batches(
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]], micro_per_step: int, steps: int
) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Group micro-batches into optimiser steps; stop after ``steps`` full steps."""
    group: list[tuple[torch.Tensor, torch.Tensor]] = []
    done = 0
    for batch in loader:
        group.append(batch)
        if len(group) == micro_per_step:
            yield group
            group = []
            done += 1
            if done == steps:
                return
