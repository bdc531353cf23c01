"""The image built for real with a container engine (skipped without one): the CPU image builds
with nothing but the package index, the build's index and certificate settings reach pip and
stay out of the runtime image, and the runtime holds what it should and no more."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.deploy import engine as eng

pytestmark = pytest.mark.container

CPU_IMAGE_MAX_MB = 800  # 682 MB measured on the stand-in base (docs/deployment.md)


def _ca_body(pem: str) -> list[str]:
    """The base64 lines of a PEM certificate: what would betray it anywhere in an image."""
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


def test_cpu_image_size(cpu_image: str) -> None:
    size = eng.size_mb(cpu_image)
    assert size < CPU_IMAGE_MAX_MB, f"{size:.0f} MB"


def _demo_store_entries() -> list[str]:
    """What the image's /models must hold: the committed demo store (model_store/ less its Python
    package), as the build context's .dockerignore lets it in."""
    store = Path(__file__).resolve().parents[2] / "model_store"
    return sorted(p.name for p in store.iterdir() if p.name.startswith("demo-")) + [
        "ensembles.json"
    ]


def test_runtime_holds_the_venv_and_the_models_only(cpu_image: str) -> None:
    script = (
        "import importlib.util, os, pathlib;"
        "print(importlib.util.find_spec('torch') is None,"
        " importlib.util.find_spec('onnxruntime') is not None,"
        " sorted(p.name for p in pathlib.Path('/models').iterdir()),"
        " [p for p in ('/src', '/wheels', '/etc/pip.conf', '/etc/ssl/build-ca-bundle.pem',"
        "  '/root/.cache/pip') if os.path.exists(p)],"
        " os.getuid())"
    )
    out = eng.docker("run", "--rm", "--entrypoint", "python", cpu_image, "-c", script).stdout
    assert out.split(" ", 2)[:2] == ["True", "True"], out  # no torch, onnxruntime there
    assert str(_demo_store_entries()) in out and "store.py" not in out, out
    assert out.strip().endswith("[] 10001"), out  # no build leftovers; UID 10001


def test_the_extra_ca_is_trusted_in_the_build_only(
    cpu_image: str, build_args: eng.BuildArgs, tmp_path: Path
) -> None:
    """The throwaway CA the image was built with is in the build stage's bundle and pip's
    configuration, and nowhere in the runtime image: not in its files, its configuration or its
    history. (The runtime stage deletes nothing, so no lower layer hides a file.)"""
    body = _ca_body(build_args.extra_ca_cert)
    env_image = eng.tag("build-env")
    eng.build(env_image, build_args, "--target", "build-env")
    bundle = eng.docker("run", "--rm", env_image, "cat", "/etc/ssl/build-ca-bundle.pem").stdout
    assert all(line in bundle for line in body)
    conf = eng.docker("run", "--rm", env_image, "pip", "config", "list").stdout
    assert "global.cert='/etc/ssl/build-ca-bundle.pem'" in conf, conf
    assert f"global.index-url='{build_args.pip_index_url}'" in conf, conf

    marker = max(body, key=len)
    found = eng.files_containing(cpu_image, marker)
    assert not found, f"the build's CA is in the runtime image: {found}"
    # The search is live: it finds the build stage's bundle.
    assert eng.files_containing(env_image, marker) == ["/etc/ssl/build-ca-bundle.pem"]
    metadata = eng.docker("image", "inspect", cpu_image).stdout
    metadata += eng.docker("history", "--no-trunc", cpu_image).stdout
    assert marker not in metadata
    assert "EXTRA_CA_CERT" not in metadata and "PIP_INDEX_URL" not in metadata


def test_pip_index_url_reaches_the_build(build_args: eng.BuildArgs) -> None:
    image = eng.tag("build-env-index")
    args = eng.BuildArgs(
        build_args.python_image, "https://pypi.mirror.invalid/simple", extra_ca_cert=""
    )
    eng.build(image, args, "--target", "build-env")
    conf = eng.docker("run", "--rm", image, "pip", "config", "list").stdout
    assert "global.index-url='https://pypi.mirror.invalid/simple'" in conf, conf
    # The builder's venv pip reads the same file.
    result = eng.docker(
        "run", "--rm", image, "sh", "-c",
        "python -m venv /tmp/v && /tmp/v/bin/pip download --no-deps --retries 0 --timeout 5"
        " -d /tmp/d six 2>&1",
        check=False, timeout=180,
    )  # fmt: skip
    assert result.returncode != 0 and "pypi.mirror.invalid" in result.stdout, result.stdout


def test_extra_ca_cert_gets_pip_through_a_proxy_that_re_signs_tls(
    build_args: eng.BuildArgs,
) -> None:
    """Where this machine reaches the index through a proxy that re-signs TLS (its own CAs in
    /usr/local/share/ca-certificates), a base without them cannot reach the index, and the same
    base with them passed as EXTRA_CA_CERT can."""
    local = sorted(Path("/usr/local/share/ca-certificates").glob("**/*.crt"))
    if not local:
        pytest.skip("this machine trusts no CA of its own: no re-signing proxy to get through")
    bare = eng.tag("base-without-local-cas")
    eng.docker(
        "build", "-t", bare, "--build-arg", f"BASE={build_args.python_image}", "-",
        input="ARG BASE\nFROM ${BASE}\n"
        "RUN rm -rf /usr/local/share/ca-certificates/* && update-ca-certificates --fresh\n",
        timeout=300,
    )  # fmt: skip
    eng.remember(bare)
    download = ["pip", "download", "--no-deps", "--retries", "1", "-d", "/tmp/d", "six"]

    def build_env(extra_ca: str, name: str) -> subprocess.CompletedProcess[str]:
        image = eng.tag(name)
        eng.build(
            image,
            eng.BuildArgs(bare, build_args.pip_index_url, extra_ca),
            "--target",
            "build-env",
        )
        return eng.docker("run", "--rm", image, *download, check=False, timeout=180)

    without = build_env("", "build-env-no-ca")
    if without.returncode == 0:
        pytest.skip("pip reaches the index without this machine's CAs: nothing re-signs TLS")
    assert "CERTIFICATE_VERIFY_FAILED" in without.stdout + without.stderr, without.stderr
    with_ca = build_env("\n".join(p.read_text().strip() for p in local), "build-env-local-ca")
    assert with_ca.returncode == 0, with_ca.stdout + with_ca.stderr
