"""The CUDA image for real (what `docker compose up` builds on a GPU host), built on the chosen
base and run on a host without a GPU: its build's library check passes, it holds onnxruntime's
CUDA provider, the CUDA and cuDNN user-space libraries and onnx (for
VERYDEEP_CUDA_SHARED_WEIGHTS) but no torch, and with no GPU it falls back to the CPU and serves.
Skipped without a container engine, like every container test."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator

import pytest

from tests.deploy import engine as eng

pytestmark = pytest.mark.container

CUDA_IMAGE_MAX_MB = 3000  # 2,650 MB measured on the stand-in base (docs/deployment.md)


@pytest.fixture(scope="module")
def cuda_image(build_args: eng.BuildArgs) -> str:
    image = eng.tag("cuda")
    seconds = eng.build(image, dataclasses.replace(build_args, extras="cuda"))
    eng.FIGURES["CUDA image build"] = f"{seconds:.1f} s on {build_args.python_image}"
    eng.FIGURES["CUDA image size"] = f"{eng.size_mb(image):.0f} MB"
    return image


def test_cuda_image_size(cuda_image: str) -> None:
    size = eng.size_mb(cuda_image)
    assert size < CUDA_IMAGE_MAX_MB, f"{size:.0f} MB"


def test_cuda_image_holds_the_cuda_provider_and_onnx_but_no_torch(cuda_image: str) -> None:
    script = (
        "import importlib.util, json, onnx, onnxruntime as ort;"
        "print(json.dumps([ort.get_available_providers(), onnx.__version__,"
        " importlib.util.find_spec('torch') is None]))"
    )
    out = eng.docker("run", "--rm", "--entrypoint", "python", cuda_image, "-c", script).stdout
    providers, onnx_version, no_torch = json.loads(out)
    assert "CUDAExecutionProvider" in providers and no_torch, out
    assert onnx_version  # the version the cuda extra pins (test_docker_image checks the pins)
    # The library check of the build, run again in the image: every CUDA and cuDNN library the
    # provider needs resolves inside the venv.
    check = eng.docker(
        "run", "--rm", "--entrypoint", "check-cuda-userspace", cuda_image,
        "/opt/venv/lib/python3.11/site-packages",
    )  # fmt: skip
    assert check.returncode == 0


@pytest.fixture(scope="module")
def cpu_fallback(cuda_image: str) -> Iterator[tuple[str, tuple[str, int]]]:
    """The CUDA image started as Compose would start it, on this host without a GPU, with the
    shared-weights setting on (it applies on CUDA only; on the CPU it must change nothing)."""
    container = eng.docker(
        "run", "-d", "-p", "127.0.0.1::8000", "-e", "VERYDEEP_CUDA_SHARED_WEIGHTS=true",
        "-e", "VERYDEEP_CUDA_SESSIONS=4", cuda_image,
    ).stdout.strip()  # fmt: skip
    try:
        start = time.monotonic()
        eng.wait_healthy(container, timeout=180)
        eng.FIGURES["CUDA image healthy on the CPU"] = f"{time.monotonic() - start:.1f} s"
        port = eng.docker("port", container, "8000/tcp").stdout.split(":")[-1].strip()
        yield container, ("127.0.0.1", int(port))
    finally:
        eng.docker("rm", "-f", container, check=False)


def test_without_a_gpu_it_serves_on_the_cpu(
    cpu_fallback: tuple[str, tuple[str, int]], star: bytes
) -> None:
    container, address = cpu_fallback
    status, _, body = eng.request(address, "GET", "/models")
    assert status == 200
    models = json.loads(body)["models"]
    assert models and all(m["provider"] == "CPUExecutionProvider" for m in models), models
    status, _, body = eng.request(address, "POST", "/classify?model=demo-de&top_k=3", star)
    assert status == 200, body
    assert json.loads(body)["predictions"][0]["label"] == "star", body
    logs = eng.docker("logs", container)
    assert "Traceback" not in logs.stdout + logs.stderr, (logs.stdout + logs.stderr)[-3000:]
