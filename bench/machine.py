"""What the figures were measured on: CPU, cores, memory, versions, thread settings, and how busy
the machine was (load average, other CPU-heavy processes) while they were measured."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = (
    "verydeep",
    "onnxruntime-gpu",
    "torch",
    "numpy",
    "pillow",
    "fastapi",
    "uvicorn",
    "httpx",
)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    match = re.search(r"^flags\s*:\s*(.+)$", text, re.MULTILINE)
    wanted = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
    flags = set(match.group(1).split()) if match else set()
    return [f for f in wanted if f in flags]


def memory_gib() -> float | None:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    match = re.search(r"^MemTotal:\s*(\d+) kB", text, re.MULTILINE)
    return round(int(match.group(1)) / 2**20, 1) if match else None


def slug(device: str = "cpu") -> str:
    """A short machine name for the results file: ``amd-epyc-2c``, or the GPU's for a CUDA run:
    ``nvidia-h100-80gb-hbm3``."""
    found = gpus() if device == "cuda" else []
    if found:
        return "-".join(re.findall(r"[a-z0-9]+", found[0]["name"].lower())) or "gpu"
    model = re.sub(r"\(.*?\)|\bcpu\b|@.*$|\d+-core processor", "", cpu_model(), flags=re.I)
    words = re.findall(r"[a-z0-9]+", model.lower())[:4]
    return "-".join([*words, f"{os.cpu_count()}c"]) or "machine"


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def busy_processes(limit: int = 5, exclude: set[int] | None = None) -> list[dict[str, object]]:
    """The most CPU-hungry processes of others (recent %CPU as ps reports it)."""
    exclude = exclude or set()
    out = _output(["ps", "-eo", "pid,ni,pcpu,args", "--sort=-pcpu", "--no-headers"])
    found = []
    for line in out.splitlines():
        parts = line.split(None, 3)
        if len(parts) < 4 or int(parts[0]) in exclude or float(parts[2]) < 5.0:
            continue
        found.append(
            {
                "pid": int(parts[0]),
                "nice": int(parts[1]),
                "cpu_percent": float(parts[2]),
                "command": parts[3][:120],
            }
        )
        if len(found) >= limit:
            break
    return found


def training_processes() -> int:
    out = _output(["pgrep", "-f", "verydeep train"])
    return len([p for p in out.split() if p.strip() and int(p) != os.getpid()])


def _output(command: list[str]) -> str:
    """A command's standard output; empty when it cannot run (no ps or pgrep on the machine)."""
    try:
        return subprocess.run(
            command, capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def gpus() -> list[dict[str, str]]:
    """The NVIDIA GPUs nvidia-smi lists (name, driver, memory); empty without one."""
    fields = ("name", "driver_version", "memory.total", "compute_cap")
    out = _output(
        ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"]
    )
    return [
        dict(zip(fields, (v.strip() for v in line.split(",")), strict=False))
        for line in out.splitlines()
        if line.strip()
    ]


def gpu_memory_mib(pid: int | None = None) -> float | None:
    """GPU memory in MiB that nvidia-smi reports for process ``pid``, or in use on GPU 0 when
    ``pid`` is None (or nvidia-smi cannot see the process, as inside some containers)."""
    if pid is not None:
        out = _output(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
        )
        for line in out.splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 2 and parts[0] == str(pid) and parts[1].isdigit():
                return float(parts[1])
        return None
    out = _output(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"])
    first = out.strip().splitlines()[0].strip() if out.strip() else ""
    return float(first) if first.replace(".", "", 1).isdigit() else None


class GpuUtilization:
    """``with GpuUtilization() as u: ...; u.summary()``: nvidia-smi's utilisation of GPU 0 (the
    share of time a kernel ran), sampled every ``interval_ms`` while the block runs; the summary
    is None where there is no nvidia-smi (the CPU suite)."""

    def __init__(self, interval_ms: int = 100, command: list[str] | None = None) -> None:
        self.command = command or [
            "nvidia-smi",
            "--id=0",
            "--query-gpu=utilization.gpu",
            "--format=csv,noheader,nounits",
            f"-lms={interval_ms}",
        ]
        self.samples: list[float] = []
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> GpuUtilization:
        try:
            self._process = subprocess.Popen(
                self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
            )
        except OSError:
            self._process = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is None:
            return
        self._process.terminate()
        out, _ = self._process.communicate(timeout=5)
        self.samples = [float(v) for v in out.split() if v.replace(".", "", 1).isdigit()]

    def summary(self) -> dict[str, float] | None:
        if not self.samples:
            return None
        values = sorted(self.samples)
        return {
            "samples": len(values),
            "mean_percent": sum(values) / len(values),
            "median_percent": values[len(values) // 2],
            "max_percent": values[-1],
        }


def load_snapshot() -> dict[str, object]:
    """How busy the machine is right now."""
    return {
        "loadavg_1_5_15": load_average(),
        "verydeep_train_processes": training_processes(),
        "busy_processes": busy_processes(exclude={os.getpid()}),
    }


def describe(threads: dict[str, object]) -> dict[str, object]:
    """Everything about the machine and the software a reader needs to judge the figures."""
    return {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": memory_gib(),
        "gpus": gpus(),
        "platform": platform.platform(),
        "python_executable": sys.executable,
        "versions": versions(),
        "threads": threads,
        "thread_env": {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ},
        "verydeep_env": {k: v for k, v in os.environ.items() if k.startswith("VERYDEEP_")},
    }
