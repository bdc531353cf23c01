"""Validation: the paper's dense evaluation at a single test scale (VGG §3.2), the
fully-convolutional net over each whole rescaled image."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from training.distributed import worker_init
from training.fully_conv import to_fully_convolutional
from training.vgg import VGG


@torch.no_grad()
def evaluate_dense(
    model: VGG,
    dataset: Dataset,
    indices: list[int],
    device: torch.device,
    *,
    flip: bool = False,
    amp: bool = False,
    workers: int = 0,
) -> tuple[float, float, float]:
    """Sums over ``indices`` of (cross-entropy, correct, count) of the dense posteriors.

    The fully-convolutional net runs on each whole rescaled image (batch 1: images differ in
    size); the score map is averaged over space and softmax gives the posterior, averaged with
    the flipped image's when ``flip``. Channels-last, as in training
    (``training.train_state.new_state``).
    """
    fcn = to_fully_convolutional(model).eval().to(device, memory_format=torch.channels_last)
    loader = DataLoader(
        Subset(dataset, indices),
        batch_size=1,
        num_workers=workers,
        worker_init_fn=worker_init if workers else None,
        pin_memory=device.type == "cuda",
    )
    loss = correct = count = 0.0
    for x, y in loader:
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = y.to(device)
        views = [x, x.flip(-1)] if flip else [x]
        probs = 0
        for v in views:
            with autocast(device, amp):
                scores = fcn(v)
            probs = probs + F.softmax(scores.float().mean(dim=(2, 3)), dim=1)
        probs = probs / len(views)
        loss += float(F.nll_loss(probs.clamp_min(1e-12).log(), y, reduction="sum"))
        correct += float((probs.argmax(1) == y).sum())
        count += len(y)
    return loss, correct, count


def autocast(device: torch.device, amp: bool) -> AbstractContextManager:
    """float16 autocast with ``amp`` on CUDA; nothing otherwise."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return nullcontext()
