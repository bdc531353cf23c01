"""The server under test: a real ``verydeep serve`` subprocess on a free 127.0.0.1 port, timed
from spawning it to its first ``/readyz`` 200, its log in a file (a pipe would fill up under load
and stall the server), its memory, threads and descriptors read from ``/proc/<pid>``, stopped with
SIGTERM (and killed if it does not exit).

One harness for the benchmarks (``bench/suites/``, docs/benchmarks.md) and the reliability tests
(``tests/service/reliability/``, docs/reliability.md). It lives here, in ``bench/``, because the
dependency may only run one way: ``python -m bench.run`` is a program of its own that must run
without the test suite (nothing under ``bench/`` imports ``tests``), while the tests already
import ``bench`` (``tests/bench/``). So it knows nothing of pytest or of the tests' tiny models:
it needs only the standard library and httpx, and a server that cannot start raises an exception
carrying the end of its log. The tests' defaults are ``tests.service.helpers.server_for``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
"""The repository: the server runs from it, with it first on its ``PYTHONPATH``."""
HOST = "127.0.0.1"
POLL_S = 0.05
"""Interval of the /readyz polls: fine enough for cold starts of seconds, light on the server."""
LOG_TAIL = 3000
"""Characters of the server's log that an error about its start quotes."""


ACCESS_LOGGER = "verydeep.access: "


def access_lines(log: str) -> list[dict]:
    """The access log's JSON lines in a server's output (``Server.log()``, ``docker logs``)."""
    return [
        json.loads(line.split(ACCESS_LOGGER, 1)[1])
        for line in log.splitlines()
        if ACCESS_LOGGER in line
    ]


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
    """VmRSS (resident now), VmHWM (peak resident), RssAnon and RssFile of ``pid``, in bytes;
    empty when ``/proc/<pid>/status`` cannot be read."""
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
    """``with Server(store, env, log_path=...) as s: s.url``: a ``verydeep serve`` process of
    ``store`` with the ``VERYDEEP_*`` variables of ``env`` on top of this environment's
    (``inherit_settings=False`` leaves this environment's ``VERYDEEP_*`` out, so that a
    developer's settings do not leak into a test). ``ready_s`` is the time from spawning it to
    the first ``/readyz`` 200 and ``ready_memory`` its memory then; ``python_code`` runs the same
    command line under ``python -c CODE`` (a wrapper that sets something up first)."""

    def __init__(
        self,
        store: Path,
        env: Mapping[str, object] | None = None,
        *,
        log_path: Path | None = None,
        inherit_settings: bool = True,
        python_code: str | None = None,
        ready_timeout: float = 600.0,
    ) -> None:
        self.store = Path(store)
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log_path = log_path
        self.ready_timeout = ready_timeout
        inherited = {
            k: v for k, v in os.environ.items() if inherit_settings or not k.startswith("VERYDEEP_")
        }
        self.env = inherited | {k: str(v) for k, v in (env or {}).items()}
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        self.env |= {
            "VERYDEEP_MODEL_STORE": str(self.store),
            "VERYDEEP_HOST": HOST,
            "VERYDEEP_PORT": str(self.port),
        }
        args = ["serve", "--store", str(self.store), "--host", HOST, "--port", str(self.port)]
        if python_code is None:
            self.command = [*verydeep_command(), *args]
        else:
            self.command = [sys.executable, "-c", python_code, *args]
        self.process: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self.ready_s: float | None = None
        self.ready_memory: dict[str, int] = {}
        self._log = None

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Server:
        """Spawn the server and wait for its first ``/readyz`` 200 (stopped again if it never
        comes: it exited, said it cannot serve, or took longer than ``ready_timeout``)."""
        self._log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        started = time.perf_counter()
        self.process = subprocess.Popen(
            self.command, env=self.env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT
        )
        try:
            self.ready_s = self._wait_ready(started)
        except BaseException:
            self.stop()
            raise
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
                        + self._log_tail()
                    )
                try:
                    r = client.get(f"{self.url}/readyz")
                    if r.status_code == 200:
                        return time.perf_counter() - started
                    body = r.json()
                    if body.get("state") == "failed":
                        raise RuntimeError(
                            f"the server cannot serve: {body.get('problem')}" + self._log_tail()
                        )
                except httpx.TransportError:
                    pass
                time.sleep(POLL_S)
        raise TimeoutError(
            f"verydeep serve not ready within {self.ready_timeout:g} s" + self._log_tail()
        )

    def _log_tail(self) -> str:
        text = self.log()
        return f"\n--- {self.log_path} ---\n{text[-LOG_TAIL:]}" if text else ""

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def memory(self) -> dict[str, int]:
        """:func:`proc_memory` of the server process (empty before it is started)."""
        return proc_memory(self.process.pid) if self.process else {}

    def rss_bytes(self) -> int:
        """Resident memory of the server process (VmRSS)."""
        memory = self.memory()
        if "VmRSS" not in memory:
            raise RuntimeError(f"no VmRSS for the server (pid {self.pid})")
        return memory["VmRSS"]

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def metric(self, name: str) -> float:
        """The value of an unlabelled sample ``name`` on ``/metrics``."""
        return self.metrics([name])[0]

    def metrics(self, names: list[str]) -> list[float]:
        """The values of the samples ``names`` (with their labels), from one scrape."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        values = []
        for name in names:
            match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
            if match is None:
                raise LookupError(f"{name} not in /metrics")
            values.append(float(match.group(1)))
        return values

    def wait_idle(self, timeout: float = 10) -> None:
        """Until no request is admitted, queued or running (a leaked slot never gets there)."""
        deadline = time.monotonic() + timeout
        names = ("verydeep_classify_admitted", "verydeep_classify_queued")
        while any(self.metric(n) for n in (*names, "verydeep_classify_in_flight")):
            if time.monotonic() >= deadline:
                left = {n: self.metric(n) for n in names}
                raise TimeoutError(f"not idle within {timeout:g} s: {left}")
            time.sleep(0.05)

    def send(self, sig: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        self.returncode = self.process.wait(timeout)
        return self.returncode

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(10)
            self.returncode = self.process.returncode
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()  # type: ignore[union-attr]
        self._log = None

    def log(self) -> str:
        """The server's output so far ("" without a log file)."""
        if self.log_path is None:
            return ""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""
