"""scripts/gpu_wheels.sh and scripts/gpu_suite.sh, the GPU measurements for a lent machine
(docs/gpu.md, "Measuring on a lent GPU machine"): what they carry fits one device call, the
packages they bring are the serving lock's, and the suite runs through on the CPU (DRY=1)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WHEELS = ROOT / "scripts" / "gpu_wheels.sh"
SUITE = ROOT / "scripts" / "gpu_suite.sh"
CALL_LIMIT = 64 * 2**20  # what one device call carries: the working tree and its carried paths
SMALL_WHEELS = 4 * 10**6  # .device/small, measured 3.7 MB
ORT_WHEEL = 255_569_273  # onnxruntime-gpu 1.31.1, cp312 manylinux_2_28


def tracked_bytes() -> int:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    return sum(
        (ROOT / name).stat().st_size
        for name in listed.decode().split("\0")
        if name and (ROOT / name).is_file()
    )


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="no git")
def test_each_call_of_the_wheels_fits_the_device_limit() -> None:
    part = int(re.search(r"part_bytes=\$\{PART_BYTES:-(\d+)\}", WHEELS.read_text())[1])
    tree = tracked_bytes()
    assert tree + part < CALL_LIMIT, f"the tree ({tree} bytes) leaves no room for a part"
    last = ORT_WHEEL - part * (ORT_WHEEL // part)
    assert tree + last + SMALL_WHEELS < CALL_LIMIT
    assert -(-ORT_WHEEL // part) <= 6  # parts, one call each, inside the 30 s warm window


def test_the_wheels_brought_are_pinned_by_the_serving_lock() -> None:
    text = WHEELS.read_text()
    missing = re.search(r"missing=\(([^)]*)\)", text)[1].split()
    lock = (ROOT / "requirements" / "serving.lock").read_text()
    pinned = {line.split("==")[0] for line in lock.splitlines() if "==" in line}
    assert {"fastapi", "uvicorn", "pydantic", "pydantic-core"} <= set(missing)
    assert set(missing) <= pinned


def test_the_suite_names_only_real_benchmarks_and_options() -> None:
    from bench import run as bench_run

    text = SUITE.read_text()
    for only in re.findall(r"--only ([\w,]+)", text):
        assert set(only.split(",")) <= set(bench_run.BENCHMARKS), only
    for choice in re.findall(r"--stream-scales ([\w,]+)", text):
        bench_run.parse_args(["--stream-scales", choice])
    for var in re.findall(r"VERYDEEP_(\w+)=", text):
        from service.settings import Settings

        assert var.lower() in Settings.model_fields, var


@pytest.mark.slow
def test_the_suite_runs_through_on_the_cpu(tmp_path: Path) -> None:
    env = os.environ | {
        "DRY": "1",
        "PYTHON": sys.executable,
        "OUT": str(tmp_path / "out"),
        "WORK": str(tmp_path / "work"),
        "RESULTS": str(tmp_path / "results"),
    }
    done = subprocess.run(
        ["bash", str(SUITE), "900"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    steps = [line.split("\t") for line in (tmp_path / "out" / "steps.tsv").read_text().splitlines()]
    assert len(steps) >= 14 and all(status == "0" for _, status, _ in steps), steps
    with tarfile.open(tmp_path / "out" / "results.tgz") as packed:
        names = packed.getnames()
    assert any(n.endswith("shared/" + Path(n).name) and n.endswith(".json") for n in names)
    assert any("new-shape-cpu.json" in n for n in names)
    # The targets, judged from what ran (bench/gpu_targets.py), come back beside them.
    targets = (tmp_path / "out" / "targets.md").read_text()
    for target in ("mixed", "bare", "fp16", "overhead"):  # DRY: no ensemble (one narrow D)
        assert f"| {target} | " in targets, targets
