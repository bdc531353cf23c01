"""``verydeep train``: the paper's training protocol (VGG §3.1).

Mini-batch SGD with momentum 0.9, weight decay 5e-4, batch 256 (reached by gradient accumulation
over micro-batches where memory is short), dropout 0.5 on fc6 and fc7, lr 1e-2 divided by 10 when
validation accuracy stops improving (three times, then stop); random 224 crops of images
rescaled to S (fixed or jittered), random flips, PCA colour shift, mean RGB subtraction.
Validation is the paper's single-scale dense evaluation: the fully-convolutional net over the
whole image rescaled to Q = S (fixed) or (S_min + S_max) / 2 (jittered), class scores averaged
over the score map.

One process on CPU or one GPU (mixed precision with autocast + GradScaler on CUDA), or several
GPUs / nodes under ``torchrun`` with DistributedDataParallel: each rank takes ``batch / world``
images of every batch (DistributedSampler), so the averaged gradients are those of the whole
batch, as on one device (paper §3.3).

Reproducibility: the order of samples depends on (seed, epoch) and each sample's augmentation on
(seed, epoch, index), not on workers or ranks; the RNG states, optimiser, GradScaler and schedule
are checkpointed every epoch, and on SIGINT / SIGTERM at the next batch boundary, so ``--resume``
continues bit for bit where the run stopped.

Outputs in ``--out``: ``last.pt`` and ``best.pt`` (``training.checkpoint`` format), ``metrics.csv``
(per epoch), ``steps.csv`` (per step), ``tensorboard/`` and ``curves.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset

from model_store import CONFIGS, Preprocessing, TrainScale
from training.augment import eval_transform, train_transform
from training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from training.data import (
    AugmentedDataset,
    ResumableSampler,
    RGBStats,
    TransformedDataset,
    image_folder,
    rgb_statistics,
    shard_indices,
    split_holdout,
)
from training.errors import UserFacingError
from training.fully_conv import to_fully_convolutional
from training.init_from import LAYER_CHOICES, LayerChoice, init_from_a, init_from_checkpoint
from training.schedule import PlateauSchedule
from training.vgg import CROP_SIZE, VGG, build_vgg, count_parameters

log = logging.getLogger(__name__)

LAST = "last.pt"
BEST = "best.pt"
PAPER_LR = 1e-2
FINE_TUNE_LR = 1e-3  # paper §3.1: S = 384 initialised from S = 256 with a smaller lr
# Options a resumed run may change; everything else comes from the checkpoint.
RESUME_OVERRIDES = ("epochs", "max_steps", "workers", "device", "progress", "tensorboard", "amp")


class TrainError(UserFacingError):
    pass


@dataclass
class TrainOptions:
    out: str = "runs/train"
    config: str = "A"
    data: str | None = None
    dataset: str | None = None  # "shapes": generated into data_cache
    val_data: str | None = None
    val_fraction: float = 0.05
    shapes_per_class: int = 500
    shapes_val_per_class: int = 100
    shapes_seed: int = 0
    data_cache: str | None = None
    width: float = 1.0
    fc_width: int = 4096
    scale_min: int = 256
    scale_max: int = 256
    epochs: int = 74
    lr: float | None = None  # PAPER_LR, or FINE_TUNE_LR with init_from
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    micro_batch: int | None = None
    dropout: float = 0.5
    color_shift: float = 0.1
    input_std: str = "1"  # "1": the paper's (pixel - mean); "data": also / training-set std
    patience: int = 2
    warmup_epochs: float = 0.0
    clip_grad_norm: float | None = None
    max_steps: int | None = None
    val_flip: bool = False
    workers: int = 4
    init: str = "normal"
    init_from: str | None = None
    init_from_a: str | None = None
    a_layers: LayerChoice = "paper"  # with init_from_a: "paper" (4 convs + FC) or "all" (Net2Net)
    seed: int = 0
    device: str = "auto"
    amp: bool | None = None  # default: on for CUDA
    resume: str | None = None  # a checkpoint path, or "auto" for <out>/last.pt
    stats_images: int = 2000
    progress: bool = True
    tensorboard: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    out: Path
    last: Path
    best: Path | None
    history: list[dict[str, float]] = field(default_factory=list)
    global_step: int = 0
    stopped: str = ""  # "finished", "plateau", "epochs", "max_steps", "signal"


# --------------------------------------------------------------------------------------------
# Processes and devices


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_sum(self, values: list[float]) -> list[float]:
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self._collective_device)
        dist.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        return bool(self.all_sum([float(flag)])[0] > 0)

    def broadcast_object(self, obj: Any) -> Any:
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self._collective_device)
        return box[0]

    def gather_objects(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    @property
    def _collective_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainError(f"--device {name}: CUDA is not available on this machine")
    return device


def setup_distributed(device_name: str) -> Dist:
    """One process, or a torchrun rank (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR from env)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world <= 1:
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)
        return Dist(device=device)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://")
    return Dist(rank=rank, world=world, local_rank=local_rank, device=device)


# --------------------------------------------------------------------------------------------
# Signals


class StopFlag:
    """SIGINT / SIGTERM ask for a checkpoint at the next batch boundary; a second SIGINT
    interrupts at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        name = signal.Signals(signum).name
        print(f"\n{name}: saving a checkpoint at the end of this batch", file=sys.stderr)

    def install(self) -> None:
        if not _main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _worker_init(worker_id: int) -> None:
    # Ctrl-C reaches the whole process group: workers leave it to the main process, which stops
    # at a batch boundary. SIGTERM keeps its default (the DataLoader stops workers with it).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------
# Data


@dataclass
class Data:
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
                write_shapes(root, n, seed, progress=opts.progress)
    d.barrier()
    return train_dir, val_dir


def load_data(opts: TrainOptions, d: Dist) -> Data:
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
    if val_dir is not None:
        val_folder = image_folder(val_dir)
        if val_folder.classes != labels:
            raise TrainError(
                f"validation classes {val_folder.classes} differ from training classes {labels}"
            )
        train_base: Dataset = train_folder
        train_paths = [p for p, _ in train_folder.samples]
        val_base: Dataset = val_folder
    else:
        train_idx, val_idx = split_holdout(train_folder.targets, opts.val_fraction, opts.seed)
        if not val_idx:
            raise TrainError("too few images to hold out a validation set; give --val-data")
        train_base = Subset(train_folder, train_idx)
        train_paths = [train_folder.samples[i][0] for i in train_idx]
        val_base = Subset(image_folder(train_dir), val_idx)
    return Data(labels, train_base, train_paths, val_base)


# --------------------------------------------------------------------------------------------
# Model and optimiser


def build_model(opts: TrainOptions, num_classes: int, d: Dist, *, pretrained: bool = True) -> VGG:
    """The initial model: ``--init``, then ``--init-from`` or ``--init-from-a`` (unless
    ``pretrained`` is False: a resumed run loads its own weights next)."""
    torch.manual_seed(opts.seed)  # the same initial weights on every rank
    model = build_vgg(
        opts.config, num_classes, width=opts.width, fc_width=opts.fc_width, init=opts.init
    )
    if pretrained and opts.init_from:
        init_from_checkpoint(model, _checkpoint_for_init(opts.init_from, opts, "--init-from"))
        if d.main:
            log.info("initialised every layer from %s", opts.init_from)
    elif pretrained and opts.init_from_a:
        ckpt = load_checkpoint(opts.init_from_a)
        _check_labels(ckpt.num_classes, num_classes, "--init-from-a")
        copied = init_from_a(model, ckpt.state_dict, ckpt.config, opts.a_layers)
        if d.main:
            log.info("initialised %s from %s", ", ".join(copied), opts.init_from_a)
            if opts.a_layers == "all":
                log.info("the convs A does not have start as the identity (Net2Net deepening)")
    set_dropout(model, opts.dropout)
    return model


def _check_labels(theirs: int, ours: int, flag: str) -> None:
    if theirs != ours:
        raise TrainError(f"{flag} checkpoint has {theirs} classes, the training data {ours}")


def _checkpoint_for_init(path: str, opts: TrainOptions, flag: str) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(path)
    if ckpt.config != opts.config:
        raise TrainError(f"{flag} checkpoint is config {ckpt.config}, not {opts.config}")
    return ckpt.state_dict


def set_dropout(model: nn.Module, p: float) -> None:
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = p


def make_optimizer(model: nn.Module, opts: TrainOptions, lr: float) -> torch.optim.SGD:
    return torch.optim.SGD(
        model.parameters(), lr=lr, momentum=opts.momentum, weight_decay=opts.weight_decay
    )


# --------------------------------------------------------------------------------------------
# Validation: dense evaluation at the single test scale


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
    channels_last: bool = False,
) -> tuple[float, float, float]:
    """Sums over ``indices`` of (cross-entropy, correct, count) of the dense posteriors.

    The fully-convolutional net runs on each whole rescaled image (batch 1: images differ in
    size); the score map is averaged over space and softmax gives the posterior, averaged with
    the flipped image's when ``flip``.
    """
    fcn = to_fully_convolutional(model).eval().to(device)
    if channels_last:
        fcn = fcn.to(memory_format=torch.channels_last)
    loader = DataLoader(
        Subset(dataset, indices),
        batch_size=1,
        num_workers=workers,
        worker_init_fn=_worker_init if workers else None,
        pin_memory=device.type == "cuda",
    )
    loss = correct = count = 0.0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        views = [x, x.flip(-1)] if flip else [x]
        probs = 0
        for v in views:
            with _autocast(device, amp):
                scores = fcn(v)
            probs = probs + F.softmax(scores.float().mean(dim=(2, 3)), dim=1)
        probs = probs / len(views)
        loss += float(F.nll_loss(probs.clamp_min(1e-12).log(), y, reduction="sum"))
        correct += float((probs.argmax(1) == y).sum())
        count += len(y)
    return loss, correct, count


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return nullcontext()


# --------------------------------------------------------------------------------------------
# Logs


class Logs:
    """Rank 0's CSV files and TensorBoard writer."""

    STEP_FIELDS = ("step", "epoch", "lr", "loss", "acc", "images_per_s")
    EPOCH_FIELDS = (
        "epoch", "step", "lr", "train_loss", "train_top1_error", "val_loss", "val_top1_error",
        "val_scale", "epoch_seconds", "images_per_s",
    )  # fmt: skip

    def __init__(self, out: Path, enabled: bool, tensorboard: bool, start_step: int) -> None:
        self.enabled = enabled
        self.out = out
        self.writer = None
        if not enabled:
            return
        self.steps_path = out / "steps.csv"
        _truncate_steps(self.steps_path, start_step, self.STEP_FIELDS)
        self.steps_file = open(self.steps_path, "a", newline="")  # noqa: SIM115
        self.steps_csv = csv.writer(self.steps_file)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=start_step or None)

    def step(self, row: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.steps_csv.writerow([_fmt(row[k]) for k in self.STEP_FIELDS])
        self.steps_file.flush()
        if self.writer:
            s = int(row["step"])
            self.writer.add_scalar("train/loss", row["loss"], s)
            self.writer.add_scalar("train/top1_error", 1 - row["acc"], s)
            self.writer.add_scalar("train/lr", row["lr"], s)
            self.writer.add_scalar("train/images_per_s", row["images_per_s"], s)

    def epoch(self, history: list[dict[str, float]]) -> None:
        if not self.enabled:
            return
        with open(self.out / "metrics.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(self.EPOCH_FIELDS)
            for row in history:
                w.writerow([_fmt(row.get(k, "")) for k in self.EPOCH_FIELDS])
        if self.writer:
            row = history[-1]
            s = int(row["step"])
            for key in ("train_loss", "train_top1_error", "val_loss", "val_top1_error", "lr"):
                self.writer.add_scalar(f"epoch/{key}", row[key], s)
            self.writer.flush()

    def close(self, history: list[dict[str, float]]) -> None:
        if not self.enabled:
            return
        self.steps_file.close()
        if self.writer:
            self.writer.close()
        if history:
            plot_curves(history, self.out / "curves.png")


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v


def _truncate_steps(path: Path, start_step: int, fields: tuple[str, ...]) -> None:
    """Keep the header and the rows of steps <= start_step (a resumed run rewrites the rest)."""
    rows: list[list[str]] = []
    if start_step and path.exists():
        with open(path, newline="") as f:
            rows = [r for r in list(csv.reader(f))[1:] if r and int(r[0]) <= start_step]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        w.writerows(rows)


def plot_curves(history: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] + 1 for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    axes[0].plot(epochs, [h["val_loss"] for h in history], "o-", label="val (dense)")
    axes[0].set(title="loss", xlabel="epoch")
    axes[1].plot(epochs, [100 * h["train_top1_error"] for h in history], "o-", label="train")
    axes[1].plot(epochs, [100 * h["val_top1_error"] for h in history], "o-", label="val (dense)")
    axes[1].set(title="top-1 error (%)", xlabel="epoch")
    axes[2].semilogy(epochs, [h["lr"] for h in history], "o-")
    axes[2].set(title="learning rate", xlabel="epoch")
    for ax in axes[:2]:
        ax.legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# The loop


def _batches(
    loader: DataLoader, micro_per_step: int, steps: int
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


def resolve_input_std(spec: str, stats: RGBStats) -> tuple[float, float, float]:
    """``"1"`` (paper: mean subtraction only), ``"data"`` (the training set's per-channel std)
    or one number for all channels."""
    if spec == "data":
        return stats.std
    try:
        value = float(spec)
    except ValueError:
        raise TrainError(f"--input-std must be 'data' or a positive number, got {spec!r}") from None
    if value <= 0:
        raise TrainError(f"--input-std must be positive, got {value}")
    return (value, value, value)


def _checkpoint(
    opts: TrainOptions,
    model: VGG,
    data: Data,
    stats: RGBStats,
    train_scale: TrainScale,
    training: dict[str, Any],
) -> Checkpoint:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return Checkpoint(
        config=opts.config,
        num_classes=len(data.labels),
        width=opts.width,
        fc_width=opts.fc_width,
        labels=data.labels,
        preprocessing=Preprocessing(
            color_order="RGB",
            scale=1.0,
            mean=stats.mean,
            std=resolve_input_std(opts.input_std, stats),
        ),
        train_scale=train_scale,
        state_dict=state,
        training=training,
    )


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def resolve_resume(
    opts: TrainOptions, overrides: Sequence[str] | None = None
) -> tuple[TrainOptions, Checkpoint | None]:
    """With ``--resume``: the checkpoint, and the options it was trained with, but for
    ``overrides`` (default: RESUME_OVERRIDES), which are taken from ``opts``."""
    if not opts.resume:
        return opts, None
    path = Path(opts.out) / LAST if opts.resume == "auto" else Path(opts.resume)
    ckpt = load_checkpoint(path)
    saved = ckpt.training.get("options")
    if not saved or "epoch" not in ckpt.training:
        raise TrainError(f"{path} holds no training state to resume from")
    merged = TrainOptions(**{k: v for k, v in saved.items() if k in TrainOptions.__annotations__})
    for key in RESUME_OVERRIDES if overrides is None else overrides:
        if key not in RESUME_OVERRIDES:
            raise ValueError(f"{key} cannot change on resume")
        setattr(merged, key, getattr(opts, key))
    merged.out = opts.out
    merged.resume = str(path)
    return merged, ckpt


def validate_options(opts: TrainOptions, world: int) -> tuple[int, int]:
    """Check the options; return (images per rank per step, micro-batch)."""
    if opts.config not in CONFIGS:
        raise TrainError(f"unknown --config {opts.config!r}; choose one of {', '.join(CONFIGS)}")
    if opts.init_from and opts.init_from_a:
        raise TrainError("give at most one of --init-from and --init-from-a")
    if opts.a_layers not in LAYER_CHOICES:
        raise TrainError(f"unknown --a-layers {opts.a_layers!r}; use {' or '.join(LAYER_CHOICES)}")
    if not CROP_SIZE <= opts.scale_min <= opts.scale_max:
        raise TrainError(
            f"training scale must satisfy {CROP_SIZE} <= S_min <= S_max, "
            f"got [{opts.scale_min}, {opts.scale_max}]"
        )
    if opts.batch_size % world:
        raise TrainError(f"--batch-size {opts.batch_size} is not divisible by {world} processes")
    per_rank = opts.batch_size // world
    micro = opts.micro_batch or per_rank
    if micro < 1 or per_rank % micro:
        raise TrainError(
            f"--micro-batch {micro} must divide the per-process batch {per_rank} "
            f"(--batch-size {opts.batch_size} over {world} processes)"
        )
    if opts.epochs < 1:
        raise TrainError("--epochs must be >= 1")
    for flag, path in (("--init-from", opts.init_from), ("--init-from-a", opts.init_from_a)):
        if path and not Path(path).is_file():
            raise TrainError(f"{flag}: no checkpoint at {path}")
    return per_rank, micro


def train(opts: TrainOptions, overrides: Sequence[str] | None = None) -> TrainResult:
    """Run (or with ``opts.resume``, continue) a training run; see the module docstring."""
    opts, resume = resolve_resume(opts, overrides)
    d = setup_distributed(opts.device)
    try:
        return _train(opts, resume, d)
    finally:
        if d.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _train(opts: TrainOptions, resume: Checkpoint | None, d: Dist) -> TrainResult:
    per_rank, micro = validate_options(opts, d.world)
    micro_per_step = per_rank // micro
    device = d.device
    amp = device.type == "cuda" if opts.amp is None else (opts.amp and device.type == "cuda")
    channels_last = True
    out = Path(opts.out)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)

    data = load_data(opts, d)
    train_scale = TrainScale(min=opts.scale_min, max=opts.scale_max)
    test_scale = train_scale.single_test_scale()

    if resume is not None:
        stats = RGBStats.from_dict(resume.training["rgb_stats"])
        if resume.labels != data.labels:
            raise TrainError(f"the checkpoint's classes {resume.labels} differ from the data's")
    else:
        stats = None
        if d.main:
            stats = rgb_statistics(
                data.train_paths, max_images=opts.stats_images, seed=opts.seed, progress=False
            )
        stats = d.broadcast_object(stats)
    if d.main:
        log.info(
            "%d training images, %d validation images, %d classes; mean RGB %s",
            len(data.train_base),  # type: ignore[arg-type]
            len(data.val_base),  # type: ignore[arg-type]
            len(data.labels),
            ", ".join(f"{m:.1f}" for m in stats.mean),
        )

    input_std = resolve_input_std(opts.input_std, stats)
    train_set = AugmentedDataset(
        data.train_base,
        train_transform(
            opts.scale_min,
            opts.scale_max,
            stats.mean,
            stats.eigval,
            stats.eigvec,
            std=input_std,
            color_shift_std=opts.color_shift,
        ),
        seed=opts.seed,
    )
    val_set = TransformedDataset(data.val_base, eval_transform(test_scale, stats.mean, input_std))
    sampler = ResumableSampler(train_set, d.world, d.rank, opts.seed)
    steps_per_epoch = sampler.num_samples // per_rank
    if steps_per_epoch < 1:
        raise TrainError(
            f"{len(train_set)} training images make no full batch of {opts.batch_size}"
        )

    model = build_model(opts, len(data.labels), d, pretrained=resume is None)
    lr = opts.lr if opts.lr is not None else (FINE_TUNE_LR if opts.init_from else PAPER_LR)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, opts, lr)
    schedule = PlateauSchedule(
        optimizer,
        patience=opts.patience,
        warmup_steps=round(opts.warmup_epochs * steps_per_epoch),
    )
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    epoch, step_in_epoch, global_step = 0, 0, 0
    history: list[dict[str, float]] = []
    best_acc = -1.0
    partial = {"loss": 0.0, "correct": 0.0, "count": 0.0, "seconds": 0.0}
    if resume is not None:
        t = resume.training
        model.load_state_dict(resume.state_dict)
        optimizer.load_state_dict(t["optimizer"])
        schedule.load_state_dict(t["schedule"])
        if amp and t.get("scaler"):
            scaler.load_state_dict(t["scaler"])
        epoch, step_in_epoch, global_step = t["epoch"], t["step_in_epoch"], t["global_step"]
        history = list(t["history"])
        best_acc = float(t["best_acc"])
        partial = dict(t["partial"])
        rng = t["rng"]
        if len(rng) == d.world:
            _set_rng_state(rng[d.rank], device)
        else:
            log.warning(
                "resuming with %d processes instead of %d: not bit-exact", d.world, len(rng)
            )
            torch.manual_seed(opts.seed + 1000 * (global_step + 1) + d.rank)
        if d.main:
            log.info("resumed %s at epoch %d, step %d", opts.resume, epoch + 1, global_step)
    else:
        torch.manual_seed(opts.seed + 1 + d.rank)  # dropout masks differ across ranks
    if d.main:
        log.info(
            "config %s, width %g, fc %d: %s parameters; S %s, Q %d; lr %g; batch %d = %d x %d "
            "micro-batches x %d processes; device %s%s",
            opts.config, opts.width, opts.fc_width, f"{count_parameters(model):,}",
            f"{opts.scale_min}" if train_scale.fixed else f"[{opts.scale_min}, {opts.scale_max}]",
            test_scale, schedule.lr, opts.batch_size, micro, micro_per_step, d.world, device,
            " (mixed precision)" if amp else "",
        )  # fmt: skip

    net: nn.Module = model
    if d.enabled:
        net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    logs = Logs(out, d.main, opts.tensorboard, global_step)
    stop = StopFlag()
    stop.install()
    result = TrainResult(out=out, last=out / LAST, best=None, history=history)
    val_indices = shard_indices(len(val_set), d.rank, d.world)

    def save(path: Path) -> None:
        rngs = d.gather_objects(_rng_state(device))
        if not d.main:
            return
        training = {
            "options": opts.to_dict(),
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "global_step": global_step,
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "scaler": scaler.state_dict() if amp else {},
            "rng": rngs,
            "history": history,
            "best_acc": best_acc,
            "partial": partial,
            "rgb_stats": stats.to_dict(),
            "metrics": _metrics(history, test_scale, global_step),
            "world_size": d.world,
        }
        save_checkpoint(_checkpoint(opts, model, data, stats, train_scale, training), path)

    stopped = ""
    try:
        while epoch < opts.epochs and not schedule.finished:
            train_set.set_epoch(epoch)
            sampler.set_epoch(epoch)
            sampler.set_start(step_in_epoch * per_rank)
            loader = DataLoader(
                train_set,
                batch_size=micro,
                sampler=sampler,
                num_workers=opts.workers,
                worker_init_fn=_worker_init if opts.workers else None,
                pin_memory=device.type == "cuda",
                generator=torch.Generator(),  # leaves the global RNG (dropout) untouched
                persistent_workers=False,
            )
            net.train()
            bar = _progress(d, opts, steps_per_epoch, step_in_epoch, epoch)
            t_epoch = time.perf_counter()
            for group in _batches(loader, micro_per_step, steps_per_epoch - step_in_epoch):
                t0 = time.perf_counter()
                schedule.warmup(global_step)
                optimizer.zero_grad(set_to_none=True)
                step_loss = step_correct = 0.0
                for k, (x, y) in enumerate(group):
                    x = x.to(device, non_blocking=True)
                    y = y.to(device, non_blocking=True)
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    sync = k == len(group) - 1 or not d.enabled
                    with nullcontext() if sync else net.no_sync(), _autocast(device, amp):
                        logits = net(x)
                        loss = F.cross_entropy(logits.float(), y, reduction="sum") / per_rank
                    scaler.scale(loss).backward()
                    step_loss += float(loss.detach()) * per_rank
                    step_correct += float((logits.detach().argmax(1) == y).sum())
                if opts.clip_grad_norm:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), opts.clip_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                loss_sum, correct, count = d.all_sum([step_loss, step_correct, float(per_rank)])
                global_step += 1
                step_in_epoch += 1
                seconds = time.perf_counter() - t0
                partial["loss"] += loss_sum
                partial["correct"] += correct
                partial["count"] += count
                partial["seconds"] += seconds
                row = {
                    "step": global_step,
                    "epoch": epoch + 1,
                    "lr": schedule.lr,
                    "loss": loss_sum / count,
                    "acc": correct / count,
                    "images_per_s": count / seconds,
                }
                logs.step(row)
                if bar is not None:
                    bar.set_postfix(
                        loss=f"{partial['loss'] / partial['count']:.3f}",
                        acc=f"{partial['correct'] / partial['count']:.3f}",
                        img_s=f"{partial['count'] / partial['seconds']:.1f}",
                        lr=f"{schedule.lr:.2g}",
                    )
                    bar.update()
                if not math.isfinite(row["loss"]):
                    raise TrainError(
                        f"loss is {row['loss']} at step {global_step}: lower --lr or use "
                        "--warmup-epochs"
                    )
                reached_max = opts.max_steps is not None and global_step >= opts.max_steps
                if d.any(stop.signum is not None) or reached_max:
                    stopped = "max_steps" if reached_max and stop.signum is None else "signal"
                    break
            if bar is not None:
                bar.close()
            del loader
            if stopped:
                save(out / LAST)
                break

            val_loss, val_correct, val_count = d.all_sum(
                list(
                    evaluate_dense(
                        model, val_set, val_indices, device, flip=opts.val_flip, amp=amp,
                        workers=min(opts.workers, 2), channels_last=channels_last,
                    )
                )
            )  # fmt: skip
            val_acc = val_correct / max(val_count, 1)
            record = {
                "epoch": epoch,
                "step": global_step,
                "lr": schedule.lr,
                "train_loss": partial["loss"] / max(partial["count"], 1),
                "train_top1_error": 1 - partial["correct"] / max(partial["count"], 1),
                "val_loss": val_loss / max(val_count, 1),
                "val_top1_error": 1 - val_acc,
                "val_scale": test_scale,
                "epoch_seconds": partial["seconds"] + 0.0,
                "images_per_s": partial["count"] / max(partial["seconds"], 1e-9),
                "wall_seconds": time.perf_counter() - t_epoch,
            }
            history.append(record)
            if d.main:
                log.info(
                    "epoch %d: train loss %.4f, top-1 error %.2f%%; val (dense, Q=%d) loss %.4f, "
                    "top-1 error %.2f%%; lr %g",
                    epoch + 1, record["train_loss"], 100 * record["train_top1_error"],
                    test_scale, record["val_loss"], 100 * record["val_top1_error"], schedule.lr,
                )  # fmt: skip
            finished = schedule.step(val_acc)
            epoch += 1
            step_in_epoch = 0
            partial = {"loss": 0.0, "correct": 0.0, "count": 0.0, "seconds": 0.0}
            improved = val_acc > best_acc
            best_acc = max(best_acc, val_acc)
            save(out / LAST)
            if improved:
                save(out / BEST)
                result.best = out / BEST
            logs.epoch(history)
            if finished:
                stopped = "plateau"
                if d.main:
                    log.info("validation accuracy stopped improving after 3 lr reductions: done")
        if not stopped:
            stopped = "plateau" if schedule.finished else "epochs"
    except RuntimeError:
        # SIGTERM sent to the whole process group also stops the data-loading workers, and the
        # DataLoader raises in the middle of a step: nothing consistent to save since last.pt.
        if stop.signum is None:
            raise
        stopped = "signal"
        if d.main:
            log.warning(
                "the signal also stopped the data-loading workers: no new checkpoint; "
                "--resume continues from the last one in %s (send SIGTERM to the main process "
                "only for a checkpoint at the next batch)",
                out,
            )
    finally:
        stop.restore()
        logs.close(history)
    if stopped == "signal" and d.main:
        log.info("stopped by a signal; resume with: verydeep train --out %s --resume", out)
    if (out / BEST).exists():
        result.best = out / BEST
    result.history = history
    result.global_step = global_step
    result.stopped = stopped
    return result


def _metrics(history: list[dict[str, float]], test_scale: int, step: int) -> dict[str, Any]:
    if not history:
        return {"steps": step}
    best = min(history, key=lambda h: h["val_top1_error"])
    return {
        "val_top1_error": round(best["val_top1_error"], 6),
        "val_loss": round(best["val_loss"], 6),
        "val_method": f"dense, single scale Q={test_scale}",
        "best_epoch": int(best["epoch"]) + 1,
        "epochs": len(history),
        "steps": step,
        "train_loss": round(history[-1]["train_loss"], 6),
    }


def _progress(d: Dist, opts: TrainOptions, total: int, start: int, epoch: int):
    if not (d.main and opts.progress):
        return None
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=start,
        desc=f"epoch {epoch + 1}/{opts.epochs}",
        unit="step",
        dynamic_ncols=True,
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
    )
