"""``verydeep serve`` refuses to start, with its reason and before anything loads, on what it
could never serve: a store that does not exist or holds no entry, an address it cannot listen on,
a bad setting (named as the user typed it). A store whose entries are all broken still starts
and says so at /readyz (docs/serving.md)."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from model_store import ModelStore
from service.core.registry import unservable_store
from tests.service.test_commands import serve_env

SERVE = [sys.executable, "-m", "verydeep.cli", "serve"]


def serve(*args: str, env: dict[str, str] | None = None, timeout: float = 60):
    return subprocess.run(
        [*SERVE, *args],
        env=serve_env() | (env or {}),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_missing_store_is_a_start_up_error(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    result = serve("--store", str(missing))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"verydeep serve: error: the model store {missing} does not exist; name the store with "
        "--store or VERYDEEP_MODEL_STORE"
    )
    assert result.stdout == ""


def test_default_store_missing_from_the_current_folder(tmp_path: Path) -> None:
    result = subprocess.run(
        SERVE, env=serve_env(), cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert f"the model store {tmp_path.resolve() / 'model_store'} does not exist" in result.stderr


@pytest.mark.parametrize("content", ["nothing", "files", "hidden"])
def test_store_without_entries_is_a_start_up_error(tmp_path: Path, content: str) -> None:
    store = tmp_path / "store"
    store.mkdir()
    if content == "files":
        (store / "ensembles.json").write_text("{}")
        (store / "notes").mkdir()
    if content == "hidden":  # an unfinished write of an entry (docs/training.md)
        (store / ".tmp-demo").mkdir()
        (store / ".tmp-demo" / "model.onnx").write_bytes(b"x")
    result = serve(env={"VERYDEEP_MODEL_STORE": str(store)})
    assert result.returncode == 2
    assert f"the model store {store} holds no model entry" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_file_is_no_store(tmp_path: Path) -> None:
    (tmp_path / "store").write_text("")
    assert "is not a directory" in (unservable_store(ModelStore(tmp_path / "store")) or "")


def test_broken_entries_are_no_start_up_error(tmp_path: Path) -> None:
    """Only broken entries: the service starts, and /readyz says why nothing is served."""
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{not json")
    assert unservable_store(ModelStore(tmp_path)) is None


def test_taken_port_is_one_clear_message(service_store: ModelStore, taken_port: int) -> None:
    result = serve("--store", str(service_store.root), "--port", str(taken_port))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"verydeep serve: error: cannot listen on 127.0.0.1:{taken_port}: address already in "
        "use; another server is running there: stop it, or choose another port with --port or "
        "VERYDEEP_PORT"
    )
    assert result.stdout == ""


def test_port_lost_after_the_check_is_no_loading_error(
    service_store: ModelStore, taken_port: int
) -> None:
    """Should the port be taken between the check and uvicorn's bind, uvicorn's own error is the
    only one: the background load it stops is a shutdown, logged as such, not a failure."""
    code = textwrap.dedent(
        """
        import sys
        import service.commands
        from verydeep.cli import main
        service.commands.cannot_listen = lambda host, port: None
        sys.exit(main(sys.argv[1:]))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "serve", "--store", str(service_store.root)]
        + ["--port", str(taken_port)],
        env=serve_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    errors = [line for line in output.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "address already in use" in errors[0], output
    assert "cannot serve" not in output


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ([], {"VERYDEEP_PORT": "http"}, "  VERYDEEP_PORT: 'http' is not an integer"),
        (
            [],
            {"VERYDEEP_MAX_SCALE": "12"},
            "  VERYDEEP_MAX_SCALE: 12 out of range; it must be at least 224",
        ),
        (["--port", "70000"], {}, "  --port: 70000 out of range; it must be at most 65535"),
        ([], {"VERYDEEP_DEVICE": "tpu"}, "  VERYDEEP_DEVICE: 'tpu' is not one of auto, cuda, cpu"),
        (
            [],
            {"VERYDEEP_FORWARDED_ALLOW_IPS": "10.0.0.1,proxy.internal"},
            "  VERYDEEP_FORWARDED_ALLOW_IPS: 'proxy.internal' is not an IP address or network: "
            "use 10.0.0.5, 10.0.0.0/8 or '*'",
        ),
    ],
)
def test_bad_setting_is_named_as_the_user_typed_it(
    tmp_path: Path, args: list[str], env: dict[str, str], expected: str
) -> None:
    result = serve("--store", str(tmp_path), *args, env=env)
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["verydeep serve: invalid settings:", expected]
