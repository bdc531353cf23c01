"""The paper's localisation net in training (Appendix A; docs/localization.md, "Training").

- Boxes in the data: each training / validation image's ground-truth boxes of its class
  (``model_store.annotations.folder_annotations``: ``annotations.json`` or ``--boxes DIR``).
- Boxes under augmentation: the training crop (rescale to S, random 224 crop, flip) moves the
  image's boxes with it (:class:`BoxTrainTransform`); a box cut by the crop is clipped to it, and
  when nothing of it is left (the object outside the crop) the sample's ``valid`` flag is off and
  its loss is masked out. With several boxes of the class, the target is the one with the most
  area inside the crop.
- The net: the classification net whose last layer, fc8, is replaced by a box regressor
  (:func:`replace_regressor`) of 4 x K outputs (per-class regression, PCR) or 4 (single-class,
  SCR), weights from N(0, 0.001^2), biases zero; ``--tune fc`` freezes the convs
  (:func:`freeze_convs`).
- The loss (:func:`box_loss`): the Euclidean loss ``0.5 * ||p - t||^2`` of the 4 box parameters
  ``(cx, cy, w, h)`` relative to the 224 crop (``model_store.boxes.encode``), for PCR only the 4
  outputs of the crop's class.
- Validation (:func:`evaluate_central_crop`): the paper's protocol to compare variants (Table 8):
  the central 224 crop of the image rescaled to Q, the box of the ground-truth class, right when
  its IoU with a truth box of the image is at least 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from model_store import boxes as box_ops
from model_store.annotations import AnnotationError, folder_annotations
from model_store.scales import CROP_SIZE
from training.augment import (
    COLOR_SHIFT_STD,
    PCAColorShift,
    RandomIsotropicRescale,
    rescale,
    to_float_pixels,
)
from training.data import AugmentedDataset, DataError, sample_seed
from training.distributed import worker_init
from training.validation import autocast
from training.vgg import VGG

REGRESSIONS = ("per-class", "single")
TUNINGS = ("all", "fc")
REGRESSOR_STD = 1e-3  # the new last layer's weights: N(0, 0.001^2); biases zero
IOU_THRESHOLD = 0.5  # ILSVRC: a box is right when IoU >= 0.5 with a truth box

Target = dict[str, torch.Tensor]


# ----------------------------------------------------------------------------- box geometry


def rescale_boxes(boxes: np.ndarray, old: tuple[int, int], new: tuple[int, int]) -> np.ndarray:
    """``boxes (M, 4)`` of an ``old = (width, height)`` image in the ``new``-sized one."""
    sx, sy = new[0] / old[0], new[1] / old[1]
    return np.asarray(boxes, dtype=np.float64) * np.array([sx, sy, sx, sy])


def shift_boxes(boxes: np.ndarray, left: float, top: float) -> np.ndarray:
    """``boxes`` in the coordinates of a crop whose top-left corner is at ``(left, top)``."""
    return np.asarray(boxes, dtype=np.float64) - np.array([left, top, left, top])


def crop_target(boxes: np.ndarray, crop: int = CROP_SIZE) -> tuple[np.ndarray, bool]:
    """``(params (4,), valid)``: the regression target of a crop whose class's boxes are
    ``boxes (M, 4)`` in crop coordinates: the box with the most area inside the crop, clipped to
    it and encoded as ``(cx, cy, w, h) / crop``; ``valid`` is False when no box has any area in
    the crop (the target is then the empty box's encoding, and its loss is masked out)."""
    clipped = box_ops.clip(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), crop, crop)
    areas = box_ops.area(clipped)
    k = int(np.argmax(areas))
    params = box_ops.encode(clipped[k], np.zeros(2), crop)
    return params.astype(np.float32), bool(areas[k] > 0)


class BoxTrainTransform:
    """The training augmentation with the boxes moved along (VGG §3.1, Appendix A): rescale so
    the smallest side is S (fixed or jittered), a random ``crop`` x ``crop`` window, a random
    horizontal flip, then the float pixels' PCA colour shift and ``(pixel - mean) / std``.
    ``(image, boxes (M, 4))`` -> ``(x (3, crop, crop), target)``; the draws come from torch's
    global generator, which ``training.data`` seeds per sample."""

    def __init__(
        self,
        s_min: int,
        s_max: int,
        mean: Sequence[float],
        eigval: Sequence[float] | None = None,
        eigvec: Sequence[Sequence[float]] | None = None,
        *,
        std: Sequence[float] = (1.0, 1.0, 1.0),
        color_shift_std: float = COLOR_SHIFT_STD,
        crop_size: int = CROP_SIZE,
        flip: bool = True,
    ) -> None:
        self.rescale = RandomIsotropicRescale(s_min, s_max)
        self.crop = crop_size
        self.flip = flip
        steps: list[nn.Module] = [to_float_pixels()]
        if eigval is not None and eigvec is not None and color_shift_std > 0:
            steps.append(PCAColorShift(eigval, eigvec, color_shift_std))
        steps.append(v2.Normalize(mean=list(mean), std=list(std)))
        self.pixels = v2.Compose(steps)

    def __call__(self, image: Image.Image, boxes: np.ndarray) -> tuple[torch.Tensor, Target]:
        scaled = rescale(image, self.rescale.sample_scale())
        boxes = rescale_boxes(boxes, image.size, scaled.size)
        width, height = scaled.size
        top = int(torch.randint(0, height - self.crop + 1, ()).item())
        left = int(torch.randint(0, width - self.crop + 1, ()).item())
        window = scaled.crop((left, top, left + self.crop, top + self.crop))
        boxes = shift_boxes(boxes, left, top)
        if self.flip and bool(torch.rand(()) < 0.5):
            window = window.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            boxes = box_ops.mirror(boxes, self.crop)
        params, valid = crop_target(boxes, self.crop)
        target = {"box": torch.from_numpy(params), "valid": torch.tensor(valid)}
        return self.pixels(window), target


class BoxEvalTransform:
    """The paper's central-crop protocol (Table 8): smallest side Q, the central ``crop`` window
    (left ``(W - crop) // 2``, top ``(H - crop) // 2``), ``(pixel - mean) / std``. The target
    holds the loss's ``box`` / ``valid`` as in training and ``truth (max_truth, 4)``: every truth
    box in crop coordinates, not clipped, padded with empty boxes."""

    def __init__(
        self,
        scale: int,
        mean: Sequence[float],
        std: Sequence[float] = (1.0, 1.0, 1.0),
        *,
        max_truth: int = 1,
        crop_size: int = CROP_SIZE,
    ) -> None:
        self.scale, self.crop, self.max_truth = int(scale), crop_size, int(max_truth)
        self.pixels = v2.Compose([to_float_pixels(), v2.Normalize(mean=list(mean), std=list(std))])

    def __call__(self, image: Image.Image, boxes: np.ndarray) -> tuple[torch.Tensor, Target]:
        scaled = rescale(image, self.scale)
        width, height = scaled.size
        left, top = (width - self.crop) // 2, (height - self.crop) // 2
        window = scaled.crop((left, top, left + self.crop, top + self.crop))
        boxes = shift_boxes(rescale_boxes(boxes, image.size, scaled.size), left, top)
        params, valid = crop_target(boxes, self.crop)
        truth = np.zeros((self.max_truth, 4), dtype=np.float32)
        truth[: len(boxes)] = boxes[: self.max_truth]
        target = {
            "box": torch.from_numpy(params),
            "valid": torch.tensor(valid),
            "truth": torch.from_numpy(truth),
        }
        return self.pixels(window), target


# ----------------------------------------------------------------------------- datasets


def folder_files(base: Dataset) -> tuple[Path, list[str]]:
    """``(root, files)`` of an ImageFolder or a Subset of one: each sample's path relative to
    the root, ``<class>/<name>``, as annotations key them."""
    if isinstance(base, Subset):
        root, files = folder_files(base.dataset)
        return root, [files[i] for i in base.indices]
    if not isinstance(base, ImageFolder):
        raise DataError(f"boxes are read for image folders, not {type(base).__name__}")
    root = Path(base.root)
    return root, [Path(path).relative_to(root).as_posix() for path, _ in base.samples]


class BoxedFolder(Dataset):
    """``base[i]`` (image, label) with the image's truth boxes of its class: (image, label,
    boxes (M, 4)), read with ``folder_annotations`` (``annotations.json`` or ``boxes_dir``)."""

    def __init__(self, base: Dataset, boxes_dir: str | Path | None = None) -> None:
        self.base = base
        root, files = folder_files(base)
        try:
            found = folder_annotations(root, files, boxes_dir)
        except AnnotationError as err:
            raise DataError(str(err)) from None
        self.boxes: list[np.ndarray] = []
        for file in files:
            annotation = found[file]
            if annotation.label != Path(file).parent.name:
                raise DataError(
                    f"{file}: its box is of class {annotation.label!r}, its folder "
                    f"{Path(file).parent.name!r}"
                )
            self.boxes.append(np.asarray(annotation.boxes, dtype=np.float64).reshape(-1, 4))

    @property
    def max_boxes(self) -> int:
        return max((len(b) for b in self.boxes), default=1)

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, index: int) -> tuple[Image.Image, int, np.ndarray]:
        image, label = self.base[index]
        return image, label, self.boxes[index]


class BoxedAugmentedDataset(AugmentedDataset):
    """``AugmentedDataset`` of a :class:`BoxedFolder`: ``(x, target)`` with the boxes moved by
    the very crop and flip of the image, under the per-sample seed ``(seed, epoch, index)``."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:  # type: ignore[override]
        image, label, boxes = self.base[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, self.epoch, index))
            x, target = self.transform(image, boxes)
        target["label"] = torch.tensor(label)
        return torch.Tensor.as_subclass(x, torch.Tensor), target


class BoxedEvalDataset(Dataset):
    """A :class:`BoxedFolder` under the deterministic :class:`BoxEvalTransform`."""

    def __init__(self, base: BoxedFolder, transform: BoxEvalTransform) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        image, label, boxes = self.base[index]
        x, target = self.transform(image, boxes)
        target["label"] = torch.tensor(label)
        return torch.Tensor.as_subclass(x, torch.Tensor), target


# ----------------------------------------------------------------------------- the net


def box_outputs(regression: str, num_classes: int) -> int:
    """The regressor's outputs: 4 x K (PCR) or 4 (SCR)."""
    if regression not in REGRESSIONS:
        raise ValueError(f"unknown regression {regression!r}; use {' or '.join(REGRESSIONS)}")
    return 4 * num_classes if regression == "per-class" else 4


def replace_regressor(model: VGG, outputs: int, std: float = REGRESSOR_STD) -> nn.Linear:
    """Replace fc8 by a new ``fc_width -> outputs`` layer, weights N(0, std^2), biases zero
    (drawn from torch's global generator); returns it."""
    old = model.classifier[6]
    layer = nn.Linear(old.in_features, outputs)
    nn.init.normal_(layer.weight, 0.0, std)
    nn.init.zeros_(layer.bias)
    model.classifier[6] = layer
    return layer


def freeze_convs(model: VGG) -> list[str]:
    """``--tune fc``: the conv layers' parameters stop requiring gradients (the optimiser then
    leaves them out); returns their names. The conv stack has no dropout or batch norm, so
    train / eval mode changes nothing there."""
    frozen = []
    for name, p in model.features.named_parameters():
        p.requires_grad_(False)
        frozen.append(f"features.{name}")
    return frozen


def class_boxes(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(N, 4)``: each sample's box, the 4 outputs of its class for PCR (``outputs (N, 4K)``)
    or the only 4 for SCR (``outputs (N, 4)``)."""
    if outputs.shape[1] == 4:
        return outputs
    per_class = outputs.reshape(len(outputs), -1, 4)
    return per_class[torch.arange(len(outputs), device=outputs.device), labels]


def box_loss(outputs: torch.Tensor, target: Target) -> torch.Tensor:
    """The sum over the batch of ``0.5 * ||p - t||^2`` (Caffe's Euclidean loss, before its
    division by N), ``p`` the box of the sample's class, masked samples contributing 0."""
    pred = class_boxes(outputs.float(), target["label"])
    per_sample = 0.5 * ((pred - target["box"]) ** 2).sum(dim=1)
    return (per_sample * target["valid"].float()).sum()


def hits(pred: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    """Per sample, whether the box ``pred (N, 4)`` (crop-relative parameters) has IoU >= 0.5
    with one of the ``truth (N, M, 4)`` pixel boxes of the crop (``model_store.boxes.iou``)."""
    boxes = box_ops.decode(pred.detach().float().cpu().numpy(), np.zeros(2))
    overlap = box_ops.iou(boxes[:, None, :], truth.detach().cpu().numpy())
    return overlap.max(axis=1) >= IOU_THRESHOLD


def target_boxes(target: Target) -> torch.Tensor:
    """``(N, 1, 4)``: the training targets (clipped boxes) as pixel boxes of the crop."""
    return torch.from_numpy(box_ops.decode(target["box"].cpu().numpy(), np.zeros(2)))[:, None]


def target_to(target: Target, device: torch.device) -> Target:
    return {k: v.to(device, non_blocking=True) for k, v in target.items()}


@torch.no_grad()
def evaluate_central_crop(
    model: VGG,
    dataset: Dataset,
    indices: list[int],
    device: torch.device,
    *,
    batch_size: int = 32,
    amp: bool = False,
    workers: int = 0,
) -> list[float]:
    """Sums over ``indices`` of (Euclidean loss, right boxes, images, valid images) of the
    central-crop protocol (docs/localization.md, "Training"). ``model`` is put back in the mode
    it was in."""
    was_training = model.training
    model.eval()
    loader = DataLoader(
        Subset(dataset, indices),
        batch_size=batch_size,
        num_workers=workers,
        worker_init_fn=worker_init if workers else None,
        pin_memory=device.type == "cuda",
    )
    loss = right = count = valid = 0.0
    try:
        for x, target in loader:
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            target = target_to(target, device)
            with autocast(device, amp):
                outputs = model(x)
            loss += float(box_loss(outputs, target))
            pred = class_boxes(outputs.float(), target["label"])
            right += float(hits(pred, target["truth"]).sum())
            count += len(x)
            valid += float(target["valid"].sum())
    finally:
        model.train(was_training)
    return [loss, right, count, valid]
