"""What a training run sets up once and keeps: the checked options, the data, its RGB
statistics (paper §2.1: the training set's mean RGB; AlexNet's PCA colour shift), the augmented
training set, the validation set at the single test scale Q and the sampler."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from model_store import CONFIGS, TrainScale
from model_store.scales import CROP_SIZE
from training.checkpoint import Checkpoint
from training.data import (
    AugmentedDataset,
    Data,
    ResumableSampler,
    RGBStats,
    load_data,
    rgb_statistics,
    shard_indices,
)
from training.distributed import Dist
from training.errors import TrainError
from training.init_from import LAYER_CHOICES
from training.options import TrainOptions
from training.tasks import ClassificationTask, make_task

log = logging.getLogger("training.train")  # one logger for the whole of `verydeep train`


@dataclass
class Run:
    """What stays fixed while a run trains."""

    opts: TrainOptions
    d: Dist
    task: ClassificationTask  # classification or localization (training.tasks)
    amp: bool  # mixed precision (CUDA only)
    out: Path
    data: Data
    stats: RGBStats
    train_scale: TrainScale
    train_set: AugmentedDataset
    val_set: Dataset
    val_indices: list[int]  # this rank's share of the validation set
    sampler: ResumableSampler
    per_rank: int  # images per process in an optimiser step
    micro: int  # images per forward pass
    steps_per_epoch: int

    @property
    def device(self) -> torch.device:
        return self.d.device

    @property
    def test_scale(self) -> int:
        return self.train_scale.single_test_scale()

    @property
    def micro_per_step(self) -> int:
        return self.per_rank // self.micro


def setup_run(opts: TrainOptions, resume: Checkpoint | None, d: Dist) -> Run:
    """Check the options, load the data, and build the datasets and the sampler."""
    per_rank, micro = validate_options(opts, d.world)
    task = make_task(opts)
    if task.name == "localization" and not opts.init_from and resume is None:
        raise TrainError(
            "--task localization needs --init-from: the classification net (checkpoint or "
            "store entry) whose last layer the box regressor replaces"
        )
    out = Path(opts.out)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
    data = load_data(opts, d)
    if resume is not None and resume.labels != data.labels:
        raise TrainError(f"the checkpoint's classes {resume.labels} differ from the data's")
    stats = _rgb_stats(opts, data, resume, d)
    train_scale = TrainScale(min=opts.scale_min, max=opts.scale_max)
    input_std = resolve_input_std(opts.input_std, stats)
    train_set, val_set = task.datasets(
        opts, data, stats, input_std, train_scale.single_test_scale()
    )
    sampler = ResumableSampler(train_set, d.world, d.rank, opts.seed)
    steps_per_epoch = sampler.num_samples // per_rank
    if steps_per_epoch < 1:
        raise TrainError(
            f"{len(train_set)} training images make no full batch of {opts.batch_size}"
        )
    return Run(
        opts=opts,
        d=d,
        task=task,
        amp=d.device.type == "cuda" and opts.amp is not False,  # default: on for CUDA
        out=out,
        data=data,
        stats=stats,
        train_scale=train_scale,
        train_set=train_set,
        val_set=val_set,
        val_indices=shard_indices(len(val_set), d.rank, d.world),
        sampler=sampler,
        per_rank=per_rank,
        micro=micro,
        steps_per_epoch=steps_per_epoch,
    )


def _rgb_stats(opts: TrainOptions, data: Data, resume: Checkpoint | None, d: Dist) -> RGBStats:
    """The resumed run's statistics, or rank 0's, computed from the training images."""
    if resume is not None:
        stats = RGBStats.from_dict(resume.training["rgb_stats"])
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
    return stats


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
        if path and not Path(path).is_file() and not (flag == "--init-from" and is_entry(path)):
            raise TrainError(f"{flag}: no checkpoint at {path}")
    _validate_localization(opts)
    return per_rank, micro


def _validate_localization(opts: TrainOptions) -> None:
    from training.localization import REGRESSIONS, TUNINGS
    from training.tasks import TASKS

    if opts.task not in TASKS:
        raise TrainError(f"unknown --task {opts.task!r}; use {' or '.join(TASKS)}")
    if opts.regression not in REGRESSIONS:
        raise TrainError(f"unknown --regression {opts.regression!r}; use per-class or single")
    if opts.tune not in TUNINGS:
        raise TrainError(f"unknown --tune {opts.tune!r}; use all or fc")
    if opts.task != "localization":
        for flag, value, default in (
            ("--boxes", opts.boxes, None),
            ("--val-boxes", opts.val_boxes, None),
            ("--regression", opts.regression, "per-class"),
            ("--tune", opts.tune, "all"),
        ):
            if value != default:
                raise TrainError(f"{flag} is for --task localization")
        return
    if opts.init_from_a:
        raise TrainError("--task localization starts from --init-from, not --init-from-a")
    if opts.val_flip:
        raise TrainError(
            "--val-flip is for classification: localisation is validated on the central crop "
            "alone (paper Table 8)"
        )
    if opts.val_boxes and not opts.val_data:
        raise TrainError("--val-boxes is for --val-data (a held-out split uses --boxes)")
    for flag, path in (("--boxes", opts.boxes), ("--val-boxes", opts.val_boxes)):
        if path and not Path(path).is_dir():
            raise TrainError(f"{flag}: no folder at {path}")


def is_entry(path: str) -> bool:
    from training.from_onnx import is_store_entry

    return is_store_entry(path)


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
