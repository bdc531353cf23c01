"""Paper §3.1 schedule: lr / 10 when validation accuracy stops improving, three times, then stop."""

from __future__ import annotations

import pytest
import torch

from training.schedule import PlateauSchedule


def _schedule(**kwargs) -> PlateauSchedule:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-2, momentum=0.9)
    return PlateauSchedule(opt, **kwargs)


def test_three_reductions_then_stop() -> None:
    s = _schedule(patience=1)
    lrs, stops = [], []
    accuracies = [0.1, 0.2, 0.3, 0.3, 0.3, 0.35, 0.35, 0.35, 0.35, 0.35, 0.35, 0.35]
    for acc in accuracies:
        stops.append(s.step(acc))
        lrs.append(s.lr)
        if stops[-1]:
            break
    # Improving: lr kept. Each plateau of patience + 1 epochs: lr / 10.
    assert lrs[:3] == [1e-2] * 3
    assert lrs[4] == pytest.approx(1e-3)
    assert lrs[6] == pytest.approx(1e-3)  # 0.35 improved: the count restarted
    assert lrs[7] == pytest.approx(1e-4)
    assert lrs[9] == pytest.approx(1e-5)
    assert s.reductions == 3
    assert stops == [False] * 11 + [True]
    assert s.lr == pytest.approx(1e-5)  # the fourth plateau stops training, lr unchanged


def test_no_plateau_no_reduction() -> None:
    s = _schedule(patience=0)
    for i in range(10):
        assert not s.step(0.1 * i)
    assert s.lr == 1e-2 and s.reductions == 0


def test_state_round_trip() -> None:
    a = _schedule(patience=0)
    for acc in (0.5, 0.5, 0.5):
        a.step(acc)
    b = _schedule(patience=0)
    b.load_state_dict(a.state_dict())
    assert b.reductions == a.reductions == 2
    b.optimizer.param_groups[0]["lr"] = a.lr
    assert a.step(0.5) == b.step(0.5)
    assert a.lr == b.lr


def test_warmup_ramps_to_the_base_lr() -> None:
    s = _schedule(warmup_steps=4)
    seen = []
    for step in range(6):
        s.warmup(step)
        seen.append(s.lr)
    assert seen == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2, 1e-2])
