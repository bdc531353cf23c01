"""Progress bars: redrawn on a terminal, a few plain lines anywhere else (docs/training.md,
"Progress")."""

from __future__ import annotations

import io
import subprocess
import sys
import time

import model_store.progress as progress
from model_store.progress import progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_a_loop_of_1000_items_writes_a_few_lines() -> None:
    stream = io.StringIO()
    for _ in progress_bar(range(1000), desc="work", unit="img", file=stream):
        pass
    text = stream.getvalue()
    lines = text.splitlines()
    assert "\r" not in text
    assert 1 <= len(lines) <= 3, lines
    assert lines[-1].startswith("work: 100%") and "1000/1000" in lines[-1]


def test_off_a_terminal_a_line_at_most_every_interval(monkeypatch) -> None:
    monkeypatch.setattr(progress, "QUIET_INTERVAL", 0.1)
    stream = io.StringIO()
    bar = progress_bar(total=50, desc="slow", file=stream, leave=False)
    for _ in range(50):  # 0.5 s: about five lines, and the last
        time.sleep(0.01)
        bar.set_postfix(loss="1.0", refresh=False)
        bar.update()
    bar.close()
    lines = stream.getvalue().splitlines()
    assert 3 <= len(lines) <= 10, lines
    assert "50/50" in lines[-1] and "loss=1.0" in lines[-1]  # kept even with leave=False


def test_on_a_terminal_the_bar_redraws_in_place() -> None:
    stream = Terminal()
    for _ in progress_bar(range(10), desc="tty", file=stream):
        pass
    assert stream.getvalue().count("\r") >= 2 and stream.getvalue().count("\n") == 1


def test_disabled_writes_nothing() -> None:
    stream = io.StringIO()
    for _ in progress_bar(range(10), file=stream, enabled=False):
        pass
    assert stream.getvalue() == ""


def test_the_helper_imports_no_torch() -> None:
    code = "import sys, model_store.progress; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
