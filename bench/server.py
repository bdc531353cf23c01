"""A real ``verydeep serve`` subprocess on 127.0.0.1: started, timed to ``/readyz`` 200, its
memory read from ``/proc/<pid>/status``, and stopped."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

HOST = "127.0.0.1"
POLL_S = 0.05
"""Interval of the /readyz polls: fine enough for cold starts of seconds, light on the server."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def verydeep_command() -> list[str]:
    """The ``verydeep`` console script beside this interpreter (what ``make serve`` runs)."""
    script = Path(sys.executable).with_name("verydeep")
    if script.exists():
        return [str(script)]
    found = shutil.which("verydeep")
    if found:
        return [found]
    return [sys.executable, "-m", "verydeep.cli"]


def proc_memory(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (peak resident) of ``pid``, in bytes."""
    values: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return values
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            values[key] = int(rest.split()[0]) * 1024
    return values


class Server:
    """``with Server(store_dir, env) as s: s.url``: a ``verydeep serve`` process; ``ready_s`` is
    the time from spawning it to the first ``/readyz`` 200."""

    def __init__(
        self,
        store: Path,
        env: dict[str, str] | None = None,
        *,
        ready_timeout: float = 600.0,
        log_path: Path | None = None,
    ) -> None:
        self.store = Path(store)
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.extra_env = dict(env or {})
        self.ready_timeout = ready_timeout
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.ready_s: float | None = None
        self.ready_memory: dict[str, int] = {}
        self._log = None

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.extra_env)
        env["VERYDEEP_MODEL_STORE"] = str(self.store)
        env["VERYDEEP_HOST"] = HOST
        env["VERYDEEP_PORT"] = str(self.port)
        return env

    def start(self) -> Server:
        command = [
            *verydeep_command(),
            "serve",
            "--store",
            str(self.store),
            "--host",
            HOST,
            "--port",
            str(self.port),
        ]
        self._log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        started = time.perf_counter()
        self.process = subprocess.Popen(
            command, env=self.environment(), stdout=self._log, stderr=subprocess.STDOUT
        )
        self.ready_s = self._wait_ready(started)
        self.ready_memory = self.memory()
        return self

    def _wait_ready(self, started: float) -> float:
        assert self.process is not None
        deadline = started + self.ready_timeout
        with httpx.Client(timeout=2.0) as client:
            while time.perf_counter() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"verydeep serve exited with {self.process.returncode} before ready"
                        + (f"; see {self.log_path}" if self.log_path else "")
                    )
                try:
                    r = client.get(f"{self.url}/readyz")
                    if r.status_code == 200:
                        return time.perf_counter() - started
                    body = r.json()
                    if body.get("state") == "failed":
                        raise RuntimeError(f"the server cannot serve: {body.get('problem')}")
                except httpx.TransportError:
                    pass
                time.sleep(POLL_S)
        raise TimeoutError(f"verydeep serve not ready within {self.ready_timeout:g} s")

    def memory(self) -> dict[str, int]:
        return proc_memory(self.process.pid) if self.process else {}

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()  # type: ignore[union-attr]

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
