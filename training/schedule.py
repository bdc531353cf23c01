"""Paper §3.1 learning-rate schedule: divide by 10 when validation accuracy stops improving;
after three reductions, the next plateau ends training (as does the epoch limit).

Built on ``torch.optim.lr_scheduler.ReduceLROnPlateau(mode="max")``. An optional linear warm-up
over the first optimiser steps (off by default; the paper has none) helps narrow nets trained
from scratch at lr 1e-2.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

MAX_REDUCTIONS = 3
FACTOR = 0.1


class PlateauSchedule:
    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        patience: int = 2,
        threshold: float = 1e-3,
        max_reductions: int = MAX_REDUCTIONS,
        factor: float = FACTOR,
        warmup_steps: int = 0,
    ) -> None:
        self.optimizer = optimizer
        self.plateau = ReduceLROnPlateau(
            optimizer,
            mode="max",
            factor=factor,
            patience=patience,
            threshold=threshold,
            threshold_mode="abs",
        )
        self.max_reductions = max_reductions
        self.reductions = 0
        self.finished = False
        self.warmup_steps = int(warmup_steps)
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def warmup(self, step: int) -> None:
        """Before optimiser step ``step`` (0-based): scale lr linearly up to its base value."""
        if step < self.warmup_steps:
            for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
                group["lr"] = base * (step + 1) / self.warmup_steps
        elif step == self.warmup_steps and self.warmup_steps:
            for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
                group["lr"] = base

    def step(self, val_accuracy: float) -> bool:
        """Record an epoch's validation accuracy; returns True when training should stop."""
        before = [g["lr"] for g in self.optimizer.param_groups]
        self.plateau.step(val_accuracy)
        if self.lr < before[0]:
            if self.reductions >= self.max_reductions:
                # The plateau after the last allowed reduction: stop, keeping the last lr.
                for group, lr in zip(self.optimizer.param_groups, before, strict=True):
                    group["lr"] = lr
                self.finished = True
            else:
                self.reductions += 1
                self.base_lrs = [b * self.plateau.factor for b in self.base_lrs]
        return self.finished

    def state_dict(self) -> dict[str, Any]:
        return {
            "plateau": self.plateau.state_dict(),
            "reductions": self.reductions,
            "finished": self.finished,
            "warmup_steps": self.warmup_steps,
            "base_lrs": list(self.base_lrs),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plateau.load_state_dict(state["plateau"])
        self.reductions = int(state["reductions"])
        self.finished = bool(state["finished"])
        self.warmup_steps = int(state["warmup_steps"])
        self.base_lrs = [float(v) for v in state["base_lrs"]]
