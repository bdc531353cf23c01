"""Rank 0's records of a run in ``--out``: ``steps.csv`` (per step), ``metrics.csv`` (per
epoch), ``tensorboard/`` and ``curves.png`` (drawn when the run ends)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from training.tasks import ClassificationTask


class Logs:
    """Rank 0's CSV files and TensorBoard writer."""

    STEP_FIELDS = ("step", "epoch", "lr", "loss", "acc", "images_per_s")
    EPOCH_FIELDS = (
        "epoch", "step", "lr", "train_loss", "train_top1_error", "val_loss", "val_top1_error",
        "val_scale", "epoch_seconds", "images_per_s",
    )  # fmt: skip

    def __init__(
        self,
        out: Path,
        enabled: bool,
        tensorboard: bool,
        start_step: int,
        task: ClassificationTask | None = None,
    ) -> None:
        self.enabled = enabled
        self.out = out
        self.writer = None
        # A task's own names: localisation logs loc_error and the masked crops.
        self.error = "top1_error" if task is None else task.error_key
        self.error_label = "top-1 error" if task is None else task.error_label
        self.val_method = "dense" if task is None else task.val_method
        if task is not None:
            self.STEP_FIELDS = task.step_fields
            self.EPOCH_FIELDS = (
                tuple(f.replace("top1_error", self.error) for f in Logs.EPOCH_FIELDS)
                + task.extra_epoch_fields
            )
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
            self.writer.add_scalar(f"train/{self.error}", 1 - row["acc"], s)
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
            for key in ("train_loss", f"train_{self.error}", "val_loss", f"val_{self.error}", "lr"):
                self.writer.add_scalar(f"epoch/{key}", row[key], s)
            self.writer.flush()

    def close(self, history: list[dict[str, float]]) -> None:
        if not self.enabled:
            return
        self.steps_file.close()
        if self.writer:
            self.writer.close()
        if history:
            plot_curves(
                history, self.out / "curves.png", self.error, self.error_label, self.val_method
            )


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


def plot_curves(
    history: list[dict[str, float]],
    path: Path,
    error: str = "top1_error",
    error_label: str = "top-1 error",
    val_method: str = "dense",
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] + 1 for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    axes[0].plot(epochs, [h["val_loss"] for h in history], "o-", label=f"val ({val_method})")
    axes[0].set(title="loss", xlabel="epoch")
    axes[1].plot(epochs, [100 * h[f"train_{error}"] for h in history], "o-", label="train")
    axes[1].plot(
        epochs, [100 * h[f"val_{error}"] for h in history], "o-", label=f"val ({val_method})"
    )
    axes[1].set(title=f"{error_label} (%)", xlabel="epoch")
    axes[2].semilogy(epochs, [h["lr"] for h in history], "o-")
    axes[2].set(title="learning rate", xlabel="epoch")
    for ax in axes[:2]:
        ax.legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
