"""scripts/transfer_example.py in miniature: 2 new shapes classes x 3 images, demo-d only; the
table has every method's row, with accuracy and mAP as fractions (docs/evaluation.md,
"Transfer")."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "transfer_example.py"

ROWS = [
    "raw pixels 7x6x3",
    "demo-d centre crop 224 of S=256 (torchvision)",
    "demo-d dense Q=256, flip",
    "demo-d dense Q={224,272,320}, flip, mean",
    "demo-d dense Q={224,272,320}, flip, stack",
]
DIMENSIONS = [126, 128, 128, 128, 384]


def _table(printed: str) -> list[list[str]]:
    lines = [line for line in printed.splitlines() if line.startswith("|")]
    assert lines[0] == "| method | dimension | accuracy | mAP | seconds |"
    assert set(lines[1]) <= set("|-:")
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def test_the_example_prints_every_row(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--models", "demo-d", "--classes", "arrow,crescent",
         "--per-class", "3", "--test-per-class", "3", "--workers", "1",
         "--work", str(tmp_path / "work"), "--json", str(tmp_path / "rows.json")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    rows = _table(run.stdout)
    assert [r[0] for r in rows] == ROWS
    assert [int(r[1]) for r in rows] == DIMENSIONS
    for _, _, accuracy, ap, seconds in rows:
        assert 0 <= float(accuracy) <= 1 and 0 <= float(ap) <= 1 and float(seconds) >= 0
    assert "total " in run.stdout.splitlines()[-1]
    saved = json.loads((tmp_path / "rows.json").read_text())
    assert [r["method"] for r in saved["rows"]] == ROWS
    assert sorted(p.name for p in (tmp_path / "work" / "test").iterdir() if p.is_dir()) == [
        "arrow",
        "crescent",
    ]


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch):
    spec = importlib.util.spec_from_file_location("transfer_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "transfer_example", module)  # for its dataclass
    spec.loader.exec_module(module)
    return module


def test_raw_pixels_match_the_descriptor_dimension(example) -> None:
    assert example.pixel_grid(128) == (7, 6)  # 126, the closest to 128 (8 x 6 x 3 = 144)
    assert example.pixel_grid(256) == (9, 9)  # 243
    for d in (64, 128, 256, 384, 4096):
        w, h = example.pixel_grid(d)
        assert abs(3 * w * h - d) <= 3 * (w + 1)
