"""The options of ``verydeep train`` and what a run returns. No torch: the command line takes
its flags' defaults from ``TrainOptions`` without importing torch."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model_store import ConfigName

if TYPE_CHECKING:
    from training.init_from import LayerChoice
    from training.vgg import InitScheme

PAPER_LR = 1e-2
FINE_TUNE_LR = 1e-3  # paper §3.1: S = 384 initialised from S = 256 with a smaller lr
LOCALIZATION_LR = 1e-3  # paper Appendix A: the localisation nets' initial learning rate
# Options a resumed run may change; everything else comes from the checkpoint.
RESUME_OVERRIDES = ("epochs", "max_steps", "workers", "device", "progress", "tensorboard", "amp")
# The small-net recipe (docs/training.md, "A first run"): the demo models' settings, which
# `verydeep train` takes for the options not given when --width is below 1. There the paper's
# N(0, 1e-2) init on raw mean-subtracted pixels starts at a loss in the hundreds and diverges
# even at lr 1e-3; Glorot's init and dividing by the data's std together start at chance.
SMALL_NET_RECIPE: dict[str, Any] = {
    "init": "glorot",
    "input_std": "data",
    "clip_grad_norm": 5.0,
    "dropout": 0.0,
}
# What stops a divergence (the recipe but dropout, which is about the fc layers' capacity).
DIVERGENCE_CURES = ("init", "input_std", "clip_grad_norm")


def default_workers() -> int:
    """Data-loading processes: one per CPU core, at most 4 (more than the cores only slow the
    run down, and torch warns about them)."""
    return max(1, min(4, os.cpu_count() or 1))


@dataclass
class TrainOptions:
    out: str = "runs/train"
    config: ConfigName = "A"
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
    workers: int = field(default_factory=default_workers)
    init: InitScheme = "normal"
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
    # Localisation (paper Appendix A; docs/localization.md, "Training").
    task: str = "classification"  # or "localization"
    regression: str = "per-class"  # with task localization: "per-class" (PCR) or "single" (SCR)
    tune: str = "all"  # with task localization: "all" layers or "fc" (fc6, fc7, the regressor)
    boxes: str | None = None  # VOC XML boxes of --data (default: its annotations.json)
    val_boxes: str | None = None  # VOC XML boxes of --val-data (default: its annotations.json)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def initial_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        if self.task == "localization":
            return LOCALIZATION_LR
        return FINE_TUNE_LR if self.init_from else PAPER_LR

    def divergence_advice(self) -> str:
        """What to change after a nan or infinite loss: the recipe's flags not in effect."""
        missing = {k: SMALL_NET_RECIPE[k] for k in DIVERGENCE_CURES if not self._cured(k)}
        lower = f"a lower --lr than {self.initial_lr:g}"
        if not missing:
            return f"try {lower}"
        return (
            f'try {as_flags(missing)} (the small-net recipe, docs/training.md "A first run"), '
            f"or {lower}"
        )

    def _cured(self, key: str) -> bool:
        if key == "clip_grad_norm":  # any clipping already bounds the step; 0 is none
            return bool(self.clip_grad_norm)
        return bool(getattr(self, key) == SMALL_NET_RECIPE[key])


def as_flags(values: dict[str, Any]) -> str:
    """``{"clip_grad_norm": 5.0}`` as ``--clip-grad-norm 5``."""
    return " ".join(f"--{k.replace('_', '-')} {flag_value(v)}" for k, v in values.items())


def flag_value(value: Any) -> str:
    """A value as one would type it: ``5`` for 5.0, ``none`` for None."""
    if value is None:
        return "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass
class TrainResult:
    out: Path
    last: Path
    best: Path | None
    history: list[dict[str, float]] = field(default_factory=list)
    global_step: int = 0
    stopped: str = ""  # "plateau", "epochs", "max_steps" or "signal"
