"""Fixtures of the container tests: the engine, the base images, the CPU image they build, the
demo image they classify. Without a container engine every test marked ``container`` skips with
the reason; `make image-test` runs them on purpose (docs/deployment.md, "Container tests")."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy import engine as eng


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "container: builds and runs the image with a container engine (skipped without one; "
        "make image-test)",
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if eng.FIGURES:
        terminalreporter.section("container figures")
        for name, value in eng.FIGURES.items():
            terminalreporter.write_line(f"{name}: {value}")


@pytest.fixture(scope="session")
def engine() -> Iterator[None]:
    """A container engine that answers; at the end of the session, what the tests built is
    removed (images, containers, unused build cache) unless VERYDEEP_TEST_KEEP_IMAGES=1."""
    problem = eng.engine_problem()
    if problem:
        pytest.skip(f"{problem}; the container tests need one (make image-test starts it)")
    yield
    if os.environ.get("VERYDEEP_TEST_KEEP_IMAGES") != "1":
        problems = eng.cleanup()
        assert not problems, problems


@pytest.fixture(scope="session")
def compose(engine: None) -> None:
    result = eng.docker("compose", "version", "--short", check=False)
    if result.returncode != 0:
        pytest.skip("Docker Compose v2 is not installed (docker compose version failed)")
    major, minor = (int(x) for x in result.stdout.strip().lstrip("v").split(".")[:2])
    if (major, minor) < (2, 24):
        pytest.skip(f"Docker Compose {result.stdout.strip()} is older than 2.24 (!reset)")


def _image_or_skip(variable: str, standin: str, official: str) -> str:
    """The image named by ``variable``, else the local stand-in, else the official one pulled;
    skip when none of them is to be had."""
    chosen = os.environ.get(variable)
    if chosen:
        problem = eng.pull_problem(chosen)
        if problem:
            pytest.fail(f"{variable}={chosen}: {problem}")
        return chosen
    if eng.image_exists(standin):
        return standin
    problem = eng.pull_problem(official)
    if problem:
        pytest.skip(
            f"no base image: neither the stand-in {standin} (container-engine.sh base|nginx) "
            f"nor {official} ({problem}); or name one in {variable}"
        )
    return official


@pytest.fixture(scope="session")
def python_base(engine: None) -> str:
    return _image_or_skip(
        "VERYDEEP_TEST_PYTHON_IMAGE", eng.STANDIN_PYTHON, eng.dockerfile_default("PYTHON_IMAGE")
    )


@pytest.fixture(scope="session")
def nginx_image(engine: None) -> str:
    return _image_or_skip(
        "VERYDEEP_TEST_NGINX_IMAGE", eng.STANDIN_NGINX, eng.compose_image("proxy")
    )


@pytest.fixture(scope="session")
def build_args(python_base: str) -> eng.BuildArgs:
    """The CPU image on the chosen base, trusting the throwaway CA in the build."""
    return eng.BuildArgs(
        python_image=python_base,
        pip_index_url=os.environ.get("VERYDEEP_TEST_PIP_INDEX_URL", "https://pypi.org/simple"),
        extra_ca_cert=eng.THROWAWAY_CA.read_text().strip(),
    )


@pytest.fixture(scope="session")
def cpu_image(build_args: eng.BuildArgs) -> str:
    image = eng.tag("cpu")
    seconds = eng.build(image, build_args)
    eng.FIGURES["CPU image build"] = (
        f"{seconds:.1f} s on {build_args.python_image} (a cache hit when under a few seconds)"
    )
    eng.FIGURES["CPU image size"] = f"{eng.size_mb(image):.0f} MB"
    return image


@pytest.fixture(scope="session")
def star(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return eng.demo_image(Path(tmp_path_factory.mktemp("shapes")) / "shapes")
