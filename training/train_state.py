"""The state a run checkpoints every epoch and resumes from, bit for bit: the model, optimiser,
schedule and GradScaler, the step counters, the history of epochs and every rank's RNG states
(the ``training`` section of a ``training.checkpoint`` file)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from model_store import Preprocessing
from training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from training.errors import TrainError
from training.model_setup import make_optimizer
from training.options import RESUME_OVERRIDES, TrainOptions
from training.run_setup import Run, resolve_input_std
from training.schedule import PlateauSchedule
from training.vgg import VGG

log = logging.getLogger("training.train")  # one logger for the whole of `verydeep train`

LAST = "last.pt"
BEST = "best.pt"


@dataclass
class EpochTotals:
    """Sums over the steps of the epoch so far (a checkpoint can fall mid-epoch)."""

    loss: float = 0.0
    correct: float = 0.0
    count: float = 0.0
    seconds: float = 0.0
    masked: float = 0.0  # localisation: crops whose box the crop cut off (not in count)

    def add(
        self, loss: float, correct: float, count: float, seconds: float, masked: float = 0.0
    ) -> None:
        self.loss += loss
        self.correct += correct
        self.count += count
        self.seconds += seconds
        self.masked += masked


@dataclass
class TrainState:
    """What changes as a run trains, and all its checkpoint needs to resume bit for bit."""

    model: VGG
    net: nn.Module  # what runs forward: the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.SGD
    schedule: PlateauSchedule
    scaler: torch.amp.GradScaler
    epoch: int = 0  # epochs done
    step_in_epoch: int = 0  # steps done in the current epoch
    global_step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)  # a record per epoch done
    best_acc: float = -1.0  # the best validation accuracy so far
    partial: EpochTotals = field(default_factory=EpochTotals)


def new_state(run: Run, resume: Checkpoint | None) -> TrainState:
    """The initial model and optimiser, or with ``resume`` the checkpoint's state."""
    opts, d = run.opts, run.d
    model = run.task.build_model(opts, run.data.labels, d, pretrained=resume is None)
    # Channels-last, the model here and every batch: the layout of cuDNN's tensor-core
    # convolutions, which mixed precision runs on.
    model.to(run.device, memory_format=torch.channels_last)
    optimizer = make_optimizer(model, opts, opts.initial_lr)
    schedule = PlateauSchedule(
        optimizer,
        patience=opts.patience,
        warmup_steps=round(opts.warmup_epochs * run.steps_per_epoch),
    )
    scaler = torch.amp.GradScaler("cuda", enabled=run.amp)
    state = TrainState(model, model, optimizer, schedule, scaler)
    if resume is not None:
        restore(state, resume, run)
    else:
        torch.manual_seed(opts.seed + 1 + d.rank)  # dropout masks differ across ranks
    if d.enabled:
        device = run.device
        state.net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return state


def restore(state: TrainState, resume: Checkpoint, run: Run) -> None:
    """Load a checkpoint's training state into ``state``; the RNG states too when the number of
    processes is the checkpoint's."""
    t = resume.training
    state.model.load_state_dict(resume.state_dict)
    state.optimizer.load_state_dict(t["optimizer"])
    state.schedule.load_state_dict(t["schedule"])
    if run.amp and t.get("scaler"):
        state.scaler.load_state_dict(t["scaler"])
    state.epoch, state.step_in_epoch = t["epoch"], t["step_in_epoch"]
    state.global_step = t["global_step"]
    state.history = list(t["history"])
    state.best_acc = float(t["best_acc"])
    state.partial = EpochTotals(**t["partial"])
    d, rng = run.d, t["rng"]
    if len(rng) == d.world:
        _set_rng_state(rng[d.rank], run.device)
    else:
        log.warning("resuming with %d processes instead of %d: not bit-exact", d.world, len(rng))
        torch.manual_seed(run.opts.seed + 1000 * (state.global_step + 1) + d.rank)
    if d.main:
        log.info(
            "resumed %s at epoch %d, step %d", run.opts.resume, state.epoch + 1, state.global_step
        )


def save(run: Run, state: TrainState, path: Path) -> None:
    """Write the model and the whole training state (rank 0; every rank gives its RNG state)."""
    rngs = run.d.gather_objects(_rng_state(run.device))
    if not run.d.main:
        return
    training = {
        "options": run.opts.to_dict(),
        "epoch": state.epoch,
        "step_in_epoch": state.step_in_epoch,
        "global_step": state.global_step,
        "optimizer": state.optimizer.state_dict(),
        "schedule": state.schedule.state_dict(),
        "scaler": state.scaler.state_dict() if run.amp else {},
        "rng": rngs,
        "history": state.history,
        "best_acc": state.best_acc,
        "partial": dataclasses.asdict(state.partial),
        "rgb_stats": run.stats.to_dict(),
        "metrics": _metrics(state.history, run, state.global_step),
        "world_size": run.d.world,
    }
    save_checkpoint(_checkpoint(run, state.model, training), path)


def _checkpoint(run: Run, model: VGG, training: dict[str, Any]) -> Checkpoint:
    opts, stats = run.opts, run.stats
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return Checkpoint(
        config=opts.config,
        num_classes=model.num_classes,  # K, or a box regressor's 4 x K or 4
        width=opts.width,
        fc_width=opts.fc_width,
        labels=run.data.labels,
        preprocessing=Preprocessing(
            color_order="RGB",
            scale=1.0,
            mean=stats.mean,
            std=resolve_input_std(opts.input_std, stats),
        ),
        train_scale=run.train_scale,
        state_dict=state,
        training=training,
        localization=run.task.checkpoint_localization(),
    )


def _metrics(history: list[dict[str, float]], run: Run, step: int) -> dict[str, Any]:
    """The run's summary, which an export copies into the manifest's provenance."""
    if not history:
        return {"steps": step}
    error = f"val_{run.task.error_key}"
    best = min(history, key=lambda h: h[error])
    return {
        error: round(best[error], 6),
        "val_loss": round(best["val_loss"], 6),
        "val_method": run.task.metrics_method(run.test_scale),
        "best_epoch": int(best["epoch"]) + 1,
        "epochs": len(history),
        "steps": step,
        "train_loss": round(history[-1]["train_loss"], 6),
    }


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
