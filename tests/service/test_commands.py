"""``verydeep serve`` for real: a subprocess on a free port; and its import path without torch."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from model_store import ModelStore
from service import commands as service_commands
from service.settings import Settings
from verydeep.cli import build_parser, main

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
    assert "VERYDEEP_MAX_SCALE: 12 out of range" in result.stderr
    assert "Traceback" not in result.stderr


def subcommand(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return commands.choices[name]


@pytest.mark.parametrize("name", ["serve", "evaluate"])
def test_help_shows_every_default(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every option has help text, and it says what happens without the option: its default,
    the variable it defaults to, or that it is required."""
    for variable in ("VERYDEEP_MODEL_STORE", "VERYDEEP_HOST", "VERYDEEP_PORT"):
        monkeypatch.delenv(variable, raising=False)
    parser = subcommand(name)
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert options
    for action in options:
        assert action.help, action.option_strings
        assert "default" in action.help or action.required, action.option_strings
    text = parser.format_help()
    assert "(default: VERYDEEP_MODEL_STORE, else ./model_store)" in " ".join(text.split())
    if name == "serve":
        flat = " ".join(text.split())
        assert "(default: VERYDEEP_HOST, else 127.0.0.1)" in flat
        assert "(default: VERYDEEP_PORT, else 8000)" in flat
    else:
        assert "(default: dense)" in text and "(default: name)" in text


def test_help_defaults_are_the_settings_defaults() -> None:
    fields = Settings.model_fields
    assert str(fields["model_store"].default) == str(Path(service_commands.DEFAULT_STORE))
    assert fields["host"].default == service_commands.DEFAULT_HOST
    assert fields["port"].default == service_commands.DEFAULT_PORT


def test_help_says_the_store_variable_in_force(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VERYDEEP_MODEL_STORE", "/srv/models")
    text = " ".join(subcommand("serve").format_help().split())
    assert "VERYDEEP_MODEL_STORE (set: '/srv/models'), else ./model_store" in text


def test_evaluate_store_defaults_to_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``evaluate`` finds its store as ``serve`` does: --store, else VERYDEEP_MODEL_STORE, else
    ./model_store."""
    import service.core.evaluate

    seen: list[Path] = []

    def fake_evaluate(store: ModelStore, *args: object, **kwargs: object) -> list:
        seen.append(store.root)
        return []

    monkeypatch.setattr(service.core.evaluate, "evaluate", fake_evaluate)
    monkeypatch.setattr(service.core.evaluate, "format_table", lambda rows: "")
    for variable in [v for v in os.environ if v.startswith("VERYDEEP_")]:
        monkeypatch.delenv(variable)
    argv = ["evaluate", "--model", "m", "--data", str(tmp_path)]
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 0
    monkeypatch.setenv("VERYDEEP_MODEL_STORE", "/srv/models")
    assert main(argv) == 0
    assert main([*argv, "--store", "/elsewhere"]) == 0
    assert seen == [Path("model_store"), Path("/srv/models"), Path("/elsewhere")]


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
