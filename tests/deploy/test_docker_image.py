"""The Dockerfile, its build context and the helpers it copies into the image, checked without a
Docker engine: hadolint, then what the file must say (docs/deployment.md). The image built for
real is in test_container_image.py."""

from __future__ import annotations

import http.server
import os
import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.support import (
    DOCKER_DIR,
    DOCKERFILE,
    DOCKERIGNORE,
    REPO,
    DockerIgnore,
    Stage,
    dev_tool,
    exec_form,
    parse_dockerfile,
    substitute,
)

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
GLOBAL_ARGS, STAGES = parse_dockerfile(DOCKERFILE.read_text())
BY_NAME = {s.name: s for s in STAGES}
BUILD_ENV, BUILDER, RUNTIME = BY_NAME["build-env"], BY_NAME["builder"], STAGES[-1]


def _stage_args(stage: Stage) -> dict[str, str]:
    values = dict(GLOBAL_ARGS)
    for inst in stage.all("ARG"):
        key, _, default = inst.args.partition("=")
        values[key.strip()] = default.strip()
    return values


# --- hadolint ----------------------------------------------------------------------------------


def _hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(dev_tool("hadolint")), "--no-color", "--failure-threshold", "info", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_hadolint_finds_nothing() -> None:
    result = _hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_live(tmp_path: Path) -> None:
    """A Dockerfile with known faults fails, so a passing run above means something."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && pip install fastapi\n")
    result = _hadolint(bad)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3003", "DL3013"):  # :latest, cd, unpinned pip install
        assert rule in result.stdout, result.stdout


# --- structure ---------------------------------------------------------------------------------


def test_multi_stage_on_one_pinned_base() -> None:
    assert [s.name for s in STAGES] == ["build-env", "builder", "runtime"]
    base = GLOBAL_ARGS["PYTHON_IMAGE"]
    # A full tag: Python patch release and Debian release, never :latest or a bare minor.
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-[a-z]+", base), base
    # The build stages and the runtime on the one base argument (the venv moves between them).
    assert BUILD_ENV.base == RUNTIME.base == "${PYTHON_IMAGE}"
    assert BUILDER.base == "build-env"
    assert substitute(RUNTIME.base, GLOBAL_ARGS) == base
    python = re.match(r"python:(\d+\.\d+)", base).group(1)  # type: ignore[union-attr]
    requires = PYPROJECT["project"]["requires-python"]
    assert requires == ">=3.11" and tuple(map(int, python.split("."))) >= (3, 11)


def test_builds_with_nothing_but_the_package_index() -> None:
    """No parser directive that makes BuildKit fetch a frontend image (`# syntax=`) and the base
    image, the index and an extra CA as build arguments."""
    head = []
    for line in DOCKERFILE.read_text().splitlines():
        if not line.startswith("#"):
            break
        head.append(line)
    directives = [ln for ln in head if re.match(r"#\s*\w+\s*=", ln)]
    assert not directives, directives
    assert "PYTHON_IMAGE" in GLOBAL_ARGS
    args = _stage_args(BUILD_ENV)
    assert args["PIP_INDEX_URL"] == "https://pypi.org/simple"
    assert args["EXTRA_CA_CERT"] == ""
    (setup,) = BUILD_ENV.all("RUN")
    assert "/etc/pip.conf" in setup.args and "$EXTRA_CA_CERT" in setup.args
    assert "${PIP_INDEX_URL:-https://pypi.org/simple}" in setup.args


def test_index_and_ca_settings_stay_out_of_the_runtime() -> None:
    """The runtime stage neither declares the index arguments nor copies from build-env, and
    copies from the builder only the venv and the models (not /etc)."""
    declared = {i.args.partition("=")[0].strip() for i in RUNTIME.all("ARG")}
    assert not declared & {"PIP_INDEX_URL", "EXTRA_CA_CERT"}
    assert not [k for k in RUNTIME.env() if k.startswith("PIP_") or "CERT" in k]
    assert not [i for i in RUNTIME.all("COPY") if "--from=build-env" in i.args]
    # Nor deletes anything, so that a search of the image's files (test_container_image.py)
    # sees every layer's.
    assert not [i for i in RUNTIME.all("RUN") if re.search(r"\brm\b", i.args)]
    assert BUILDER.all("ARG") == [a for a in BUILDER.all("ARG") if "VERYDEEP_EXTRAS" in a.args]


def test_builder_builds_the_project_wheel_and_a_venv() -> None:
    runs = " ".join(i.args for i in BUILDER.all("RUN"))
    assert "pip wheel --no-deps" in runs
    assert "python -m venv /opt/venv" in runs
    # The wheel is installed with the extras of the VERYDEEP_EXTRAS build argument only.
    assert '/opt/venv/bin/pip install "${wheel}${VERYDEEP_EXTRAS:+[${VERYDEEP_EXTRAS}]}"' in runs


def test_extras_installed_exist_and_bring_no_torch() -> None:
    """The image's default extras are defined in pyproject.toml and pull in no training stack."""
    extras = PYPROJECT["project"].get("optional-dependencies", {})
    default = _stage_args(BUILDER)["VERYDEEP_EXTRAS"]
    assert _stage_args(RUNTIME)["VERYDEEP_EXTRAS"] == default
    wanted = [e for e in default.split(",") if e]
    assert "train" not in wanted and "dev" not in wanted
    for extra in wanted:
        assert extra in extras, (
            f"the Dockerfile installs the extra {extra!r}, which pyproject.toml does not define"
        )
        names = [re.split(r"[\[=<>~! ;]", req, maxsplit=1)[0].lower() for req in extras[extra]]
        assert not {"torch", "torchvision"} & set(names)
    base = [
        re.split(r"[\[=<>~! ;]", r, maxsplit=1)[0] for r in PYPROJECT["project"]["dependencies"]
    ]
    assert "torch" not in base and "onnxruntime-gpu" in base


def test_no_dependency_versions_outside_pyproject() -> None:
    """pyproject.toml is the one place for versions: the Dockerfile names no package pins."""
    runs = " ".join(i.args for s in STAGES for i in s.all("RUN"))
    assert not re.search(r"[\w\]]==\d", runs), runs


def test_runtime_stage_contract() -> None:
    env = RUNTIME.env()
    assert env["VERYDEEP_HOST"] == "0.0.0.0"
    assert env["VERYDEEP_PORT"] == "8000"
    assert env["VERYDEEP_MODEL_STORE"] == "/models"
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert "NVIDIA_VISIBLE_DEVICES" not in env  # GPUs only to containers that ask for them

    assert [i.args for i in RUNTIME.all("EXPOSE")] == ["8000"]
    assert exec_form(RUNTIME.all("ENTRYPOINT")[-1].args) == ["verydeep", "serve"]

    user = RUNTIME.all("USER")[-1].args
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) >= 1000 and (not gid or gid.isdigit()), user
    # Everything after USER runs unprivileged: nothing may need root there.
    after_user = RUNTIME.instructions[RUNTIME.instructions.index(RUNTIME.all("USER")[-1]) :]
    assert not [i for i in after_user if i.keyword in ("RUN", "COPY", "ADD")]

    healthcheck = RUNTIME.all("HEALTHCHECK")[-1].args
    options, _, command = healthcheck.partition(" CMD ")
    assert exec_form(command) == ["verydeep-healthcheck", "/readyz"]
    assert "--start-period=" in options


def test_runtime_copies_only_the_venv_the_models_and_the_helpers() -> None:
    copies = [i.args.split() for i in RUNTIME.all("COPY")]
    from_builder = [c[-2:] for c in copies if "--from=builder" in c]
    assert from_builder == [["/opt/venv", "/opt/venv"], ["/models", "/models"]]
    from_context = [c[-2] for c in copies if "--from=builder" not in c]
    assert from_context == ["deploy/docker/healthcheck.py", "deploy/docker/check-cuda-userspace.sh"]
    assert not RUNTIME.all("ADD")


def test_cuda_library_path_matches_the_venv_layout() -> None:
    """LD_LIBRARY_PATH points into the runtime's Python version and the nvidia-* wheels' folders
    for CUDA 13 (nvidia/cu13/lib, the consolidated layout) and cuDNN (nvidia/cudnn/lib)."""
    python = re.match(r"python:(\d+\.\d+)", GLOBAL_ARGS["PYTHON_IMAGE"]).group(1)  # type: ignore[union-attr]
    site = f"/opt/venv/lib/python{python}/site-packages"
    assert RUNTIME.env()["LD_LIBRARY_PATH"].split(":") == [
        f"{site}/nvidia/cu13/lib",
        f"{site}/nvidia/cudnn/lib",
    ]
    check = [i.args for i in RUNTIME.all("RUN") if "check-cuda-userspace" in i.args]
    assert check and site in check[0]


# --- build context -----------------------------------------------------------------------------


def test_every_copied_source_is_in_the_build_context() -> None:
    ignore = DockerIgnore(DOCKERIGNORE.read_text())
    sources = [
        src
        for inst in BUILDER.all("COPY") + RUNTIME.all("COPY")
        if "--from=" not in inst.args
        for src in inst.args.split()[:-1]
        if not src.startswith("--")
    ]
    assert "pyproject.toml" in sources and "service/" in sources
    for src in sources:
        path = REPO / src
        assert path.exists(), f"COPY {src}: no such file in the repository"
        files = [path] if path.is_file() else [p for p in path.rglob("*.py")]
        for f in files:
            rel = f.relative_to(REPO).as_posix()
            assert not ignore.excluded(rel), f"{rel} is copied but .dockerignore leaves it out"


def test_build_context_leaves_out_what_the_image_does_not_need() -> None:
    ignore = DockerIgnore(DOCKERIGNORE.read_text())
    for rel in (
        ".git/config",
        ".venv/bin/python",
        ".pytest_cache/v/cache/nodeids",
        ".ruff_cache/0.1/x",
        "runs/d/checkpoint.pt",
        "data/imagenet/train/n01440764/x.JPEG",
        "bench/results/latest.json",
        "tests/conftest.py",
        "docs_drafts/deployment.md",
        "service/__pycache__/app.cpython-311.pyc",
        "verydeep.egg-info/PKG-INFO",
        "model_store/.demo-d.tmp-1234/model.onnx",
        "model_store/vgg16/model.onnx",
        "model_store/my-vgg-d-int8/manifest.json",
        "Dockerfile",
        "docker-compose.yml",
    ):
        assert ignore.excluded(rel), f"{rel} would be sent to the Docker daemon"
    for rel in (
        "pyproject.toml",
        "README.md",
        "verydeep/cli.py",
        "service/settings.py",
        "training/vgg.py",
        "model_store/store.py",
        "model_store/demo-d/model.onnx",
        "model_store/demo-d/manifest.json",
        "model_store/demo-loc/model.onnx",
        "model_store/ensembles.json",
        "model_store/boxes.py",
        "deploy/docker/healthcheck.py",
    ):
        assert not ignore.excluded(rel), f"{rel} is needed but .dockerignore leaves it out"


# --- the helpers copied into the image ---------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    statuses = {"/readyz": 503, "/healthz": 200}

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        self.send_response(self.statuses.get(self.path, 404))
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_service() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _healthcheck(port: int, *args: str) -> int:
    env = {**os.environ, "VERYDEEP_PORT": str(port)}
    script = DOCKER_DIR / "healthcheck.py"
    return subprocess.run(
        [sys.executable, str(script), *args], env=env, capture_output=True, timeout=30
    ).returncode


def test_healthcheck_helper_follows_the_status(fake_service: int) -> None:
    assert _healthcheck(fake_service, "/healthz") == 0
    assert _healthcheck(fake_service, "/readyz") == 1  # 503: not ready yet
    assert _healthcheck(fake_service) == 1  # /readyz by default
    assert _healthcheck(fake_service, "/nowhere") == 1


def test_healthcheck_helper_fails_when_nothing_listens(fake_service: int) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    assert _healthcheck(free, "/healthz") == 1


def test_cuda_check_script_is_valid_posix_sh_and_refuses_an_empty_venv(tmp_path: Path) -> None:
    script = DOCKER_DIR / "check-cuda-userspace.sh"
    assert subprocess.run(["sh", "-n", str(script)], timeout=30).returncode == 0
    result = subprocess.run(
        ["sh", str(script), str(tmp_path)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1 and "no CUDA provider" in result.stderr
