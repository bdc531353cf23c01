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

The loop is here: ``train_epoch`` and ``validate_epoch`` advance a ``TrainState`` (what a checkpoint
holds, ``training.train_state``) within a ``Run`` (what stays fixed, ``training.run_setup``). The
run's task (``training.tasks``) gives the datasets, the model, a batch's loss and the validation:
classification as above, or ``--task localization`` (paper Appendix A: a box regressor for fc8,
Euclidean loss, central-crop validation; docs/localization.md, "Training").
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from model_store.progress import progress_bar
from training.checkpoint import Checkpoint
from training.data import step_batches
from training.distributed import Dist, StopFlag, setup_distributed, worker_init
from training.errors import TrainError
from training.options import TrainOptions, TrainResult
from training.run_logs import Logs
from training.run_setup import Run, setup_run
from training.train_state import (
    BEST,
    LAST,
    EpochTotals,
    TrainState,
    new_state,
    resolve_resume,
    save,
)
from training.validation import autocast
from training.vgg import count_parameters

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]


def train(opts: TrainOptions, overrides: Sequence[str] | None = None) -> TrainResult:
    """Run (or with ``opts.resume``, continue) a training run; see the module docstring."""
    opts, resume = resolve_resume(opts, overrides)
    d = setup_distributed(opts.device)
    try:
        return _train(opts, resume, d)
    finally:
        d.close()


def _train(opts: TrainOptions, resume: Checkpoint | None, d: Dist) -> TrainResult:
    run = setup_run(opts, resume, d)
    state = new_state(run, resume)
    _log_start(run, state)
    logs = Logs(run.out, d.main, opts.tensorboard, state.global_step, task=run.task)
    stop = StopFlag()
    stop.install()
    try:
        stopped = run_epochs(run, state, logs, stop)
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
                run.out,
            )
    finally:
        stop.restore()
        logs.close(state.history)
    if stopped == "signal" and d.main:
        log.info("stopped by a signal; resume with: verydeep train --out %s --resume", run.out)
    best = run.out / BEST
    return TrainResult(
        out=run.out,
        last=run.out / LAST,
        best=best if best.exists() else None,
        history=state.history,
        global_step=state.global_step,
        stopped=stopped,
    )


def _log_start(run: Run, state: TrainState) -> None:
    if not run.d.main:
        return
    opts, scale = run.opts, run.train_scale
    log.info(
        "config %s, width %g, fc %d: %s parameters; S %s, Q %d; lr %g; batch %d = %d x %d "
        "micro-batches x %d processes; device %s%s",
        opts.config, opts.width, opts.fc_width, f"{count_parameters(state.model):,}",
        f"{scale.min}" if scale.fixed else f"[{scale.min}, {scale.max}]", run.test_scale,
        state.schedule.lr, opts.batch_size, run.micro, run.micro_per_step, run.d.world,
        run.device, " (mixed precision)" if run.amp else "",
    )  # fmt: skip


def run_epochs(run: Run, state: TrainState, logs: Logs, stop: StopFlag) -> str:
    """Train and validate epoch after epoch; returns why training stopped."""
    while state.epoch < run.opts.epochs and not state.schedule.finished:
        started = time.perf_counter()
        stopped = train_epoch(run, state, logs, stop)
        if stopped:
            save(run, state, run.out / LAST)
            return stopped
        val_acc = validate_epoch(run, state, started)
        if end_epoch(run, state, logs, val_acc):
            return "plateau"
    return "plateau" if state.schedule.finished else "epochs"


def train_epoch(run: Run, state: TrainState, logs: Logs, stop: StopFlag) -> str:
    """The epoch's remaining steps; returns "max_steps" or "signal" when it stopped before the
    end of the epoch (with the state of a batch boundary), "" otherwise."""
    opts = run.opts
    loader = _train_loader(run, state)
    state.net.train()
    bar = _progress(run, state)
    stopped = ""
    for group in step_batches(
        loader, run.micro_per_step, run.steps_per_epoch - state.step_in_epoch
    ):
        row = train_step(run, state, group)
        logs.step(row)
        if bar is not None:
            _show(bar, state)
        if not math.isfinite(row["loss"]):
            raise TrainError(
                f"loss is {row['loss']} at step {state.global_step}: training diverged; "
                + opts.divergence_advice()
            )
        reached_max = opts.max_steps is not None and state.global_step >= opts.max_steps
        if run.d.any(stop.signum is not None) or reached_max:
            stopped = "max_steps" if reached_max and stop.signum is None else "signal"
            break
    if bar is not None:
        bar.close()
    return stopped


def _train_loader(run: Run, state: TrainState) -> DataLoader:
    """This epoch's order (seed, epoch) and crops (seed, epoch, index), from the step reached."""
    run.train_set.set_epoch(state.epoch)
    run.sampler.set_epoch(state.epoch)
    run.sampler.set_start(state.step_in_epoch * run.per_rank)
    return DataLoader(
        run.train_set,
        batch_size=run.micro,
        sampler=run.sampler,
        num_workers=run.opts.workers,
        worker_init_fn=worker_init if run.opts.workers else None,
        pin_memory=run.device.type == "cuda",
        generator=torch.Generator(),  # leaves the global RNG (dropout) untouched
        persistent_workers=False,
    )


def train_step(run: Run, state: TrainState, group: list[Batch]) -> dict[str, float]:
    """One optimiser step over the micro-batches of ``group``; returns its steps.csv row."""
    t0 = time.perf_counter()
    state.schedule.warmup(state.global_step)
    state.optimizer.zero_grad(set_to_none=True)
    step_loss, step_correct, step_count = _accumulate(run, state, group)
    if run.opts.clip_grad_norm:
        state.scaler.unscale_(state.optimizer)
        nn.utils.clip_grad_norm_(state.model.parameters(), run.opts.clip_grad_norm)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    loss_sum, correct, count, images = run.d.all_sum(
        [step_loss, step_correct, step_count, float(run.per_rank)]
    )
    masked = images - count  # localisation: crops whose box the crop cut off
    state.global_step += 1
    state.step_in_epoch += 1
    seconds = time.perf_counter() - t0
    state.partial.add(loss_sum, correct, count, seconds, masked)
    row = {
        "step": state.global_step,
        "epoch": state.epoch + 1,
        "lr": state.schedule.lr,
        "loss": loss_sum / max(count, 1),
        "acc": correct / max(count, 1),
        "images_per_s": images / seconds,
    }
    if "masked" in run.task.step_fields:
        row["masked"] = masked
    return row


def _accumulate(run: Run, state: TrainState, group: list[Batch]) -> tuple[float, float, float]:
    """Forward and backward passes over the micro-batches: the gradient of the step's loss
    summed over its images divided by ``per_rank`` (for localisation, masked crops add 0);
    returns this rank's (loss sum, correct, images that count)."""
    step_loss = step_correct = step_count = 0.0
    task = run.task
    for k, (x, y) in enumerate(group):
        x = x.to(run.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = task.to_device(y, run.device)
        # DDP averages the gradients over the ranks once, after the step's last micro-batch.
        sync = k == len(group) - 1 or not run.d.enabled
        with nullcontext() if sync else state.net.no_sync(), autocast(run.device, run.amp):
            outputs = state.net(x)
            loss_sum, correct, count = task.loss(outputs, y)
            loss = loss_sum / run.per_rank
        state.scaler.scale(loss).backward()
        step_loss += float(loss.detach()) * run.per_rank
        step_correct += correct
        step_count += count
    return step_loss, step_correct, step_count


def validate_epoch(run: Run, state: TrainState, started: float) -> float:
    """The task's validation at Q (classification: dense; localisation: central crop);
    appends the epoch's record to the history and returns the validation accuracy."""
    partial, task = state.partial, run.task
    val, val_acc = task.val_record(run.d.all_sum(task.evaluate(state.model, run)))
    error = task.error_key
    record = {
        "epoch": state.epoch,
        "step": state.global_step,
        "lr": state.schedule.lr,
        "train_loss": partial.loss / max(partial.count, 1),
        f"train_{error}": 1 - partial.correct / max(partial.count, 1),
        **val,
        "val_scale": run.test_scale,
        "epoch_seconds": partial.seconds + 0.0,
        "images_per_s": (partial.count + partial.masked) / max(partial.seconds, 1e-9),
        "wall_seconds": time.perf_counter() - started,
    }
    if "train_masked" in task.extra_epoch_fields:
        record["train_masked"] = partial.masked
    state.history.append(record)
    if run.d.main:
        log.info(
            "epoch %d: train loss %.4f, %s %.2f%%; val (%s, Q=%d) loss %.4f, %s %.2f%%; lr %g",
            state.epoch + 1, record["train_loss"], task.error_label,
            100 * record[f"train_{error}"], task.val_method, run.test_scale, record["val_loss"],
            task.error_label, 100 * record[f"val_{error}"], state.schedule.lr,
        )  # fmt: skip
        if "train_masked" in record:
            log.info(
                "epoch %d: %d of %d training crops had their object cut off (loss masked out)",
                state.epoch + 1, partial.masked, partial.masked + partial.count,
            )  # fmt: skip
    return val_acc


def end_epoch(run: Run, state: TrainState, logs: Logs, val_acc: float) -> bool:
    """The schedule's step, the checkpoints (best.pt when validation improved) and the epoch's
    logs; returns True when the schedule has ended training."""
    finished = state.schedule.step(val_acc)
    state.epoch += 1
    state.step_in_epoch = 0
    state.partial = EpochTotals()
    improved = val_acc > state.best_acc
    state.best_acc = max(state.best_acc, val_acc)
    save(run, state, run.out / LAST)
    if improved:
        save(run, state, run.out / BEST)
    logs.epoch(state.history)
    if finished and run.d.main:
        log.info("validation accuracy stopped improving after 3 lr reductions: done")
    return finished


def _progress(run: Run, state: TrainState) -> Any:
    if not (run.d.main and run.opts.progress):
        return None
    return progress_bar(
        total=run.steps_per_epoch,
        initial=state.step_in_epoch,
        desc=f"epoch {state.epoch + 1}/{run.opts.epochs}",
        unit="step",
    )


def _show(bar: Any, state: TrainState) -> None:
    """The epoch's running means on the progress bar."""
    p = state.partial
    bar.set_postfix(
        loss=f"{p.loss / max(p.count, 1):.3f}",
        acc=f"{p.correct / max(p.count, 1):.3f}",
        img_s=f"{(p.count + p.masked) / p.seconds:.1f}",
        lr=f"{state.schedule.lr:.2g}",
        refresh=False,  # the bar redraws when its interval has passed (docs/training.md)
    )
    bar.update()
