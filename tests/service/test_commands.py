"""``verydeep serve`` for real: a subprocess on a free port; and its import path without torch."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx

from model_store import ModelStore

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERYDEEP_")}
    env["VERYDEEP_INTRA_OP_THREADS"] = "1"
    env["VERYDEEP_DEFAULT_MODEL"] = "tiny-de"
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_verydeep_serve_subprocess(service_store: ModelStore, png: bytes) -> None:
    port = free_port()
    command = [sys.executable, "-m", "verydeep.cli", "serve", "--store", str(service_store.root)]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(
        command, env=serve_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.2)
        response = httpx.post(
            f"{base}/classify",
            params={"scales": "224,256"},
            content=png,
            headers={"content-type": "image/png"},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == "tiny-de" and body["members"] == ["tiny-d", "tiny-e"]
        assert body["views"] == 4 and len(body["predictions"]) == 5
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
    # uvicorn shuts down gracefully, then re-raises the signal it caught
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output
    assert '"route": "/classify", "status": 200' in output


def test_serve_refuses_invalid_settings(tmp_path: Path) -> None:
    env = serve_env() | {"VERYDEEP_MAX_SCALE": "12"}
    result = subprocess.run(
        [sys.executable, "-m", "verydeep.cli", "serve", "--store", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "max_scale" in result.stderr and "Traceback" not in result.stderr


def test_serving_never_imports_torch(tmp_path: Path, service_store: ModelStore) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        import service.commands
        from verydeep.cli import build_parser
        assert "fastapi" not in sys.modules and "onnxruntime" not in sys.modules
        build_parser().parse_args(["serve", "--port", "1"])
        import service.http.app
        from service.core.registry import Registry
        from service.settings import Settings
        settings = Settings(model_store={str(service_store.root)!r}, warmup=False)
        registry = Registry(settings)
        registry.load()
        assert registry.ready, registry.problem
        service.http.app.create_app(settings, registry=registry)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))
        assert not heavy, heavy
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=serve_env(),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
