"""A real ``verydeep serve`` subprocess on a free 127.0.0.1 port, its log in a file (a pipe would
fill up under load and stall the server), its resident memory read from /proc."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``with Server(store, log, MAX_CONCURRENCY=1) as server: server.url``; stopped with SIGTERM
    (and killed if it does not exit) on the way out."""

    def __init__(self, store: Path, log: Path, *, python_code: str | None = None, **env: object):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("VERYDEEP_")}
        self.env |= {
            "PYTHONPATH": str(ROOT),
            "VERYDEEP_INTRA_OP_THREADS": "1",
            "VERYDEEP_DEFAULT_MODEL": "tiny-d",
            "VERYDEEP_WARMUP": "false",
        }
        self.env |= {f"VERYDEEP_{k}": str(v) for k, v in env.items()}
        args = ["serve", "--store", str(store), "--host", "127.0.0.1", "--port", str(self.port)]
        if python_code is None:
            self.command = [sys.executable, "-m", "verydeep.cli", *args]
        else:  # a wrapper that sets something up, then runs the same command line
            self.command = [sys.executable, "-c", python_code, *args]
        self.process: subprocess.Popen | None = None
        self.returncode: int | None = None

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 90) -> None:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            self.command, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT
        )
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, self.log()
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not become ready\n" + self.log()
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def rss_bytes(self) -> int:
        """Resident memory of the server process (VmRSS)."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        assert match, status
        return int(match.group(1)) * 1024

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        assert match, f"{name} not in /metrics"
        return float(match.group(1))

    def wait_idle(self, timeout: float = 10) -> None:
        """Until no request is admitted, queued or running (a leaked slot never gets there)."""
        deadline = time.monotonic() + timeout
        names = ("verydeep_classify_admitted", "verydeep_classify_queued")
        while any(self.metric(n) for n in (*names, "verydeep_classify_in_flight")):
            assert time.monotonic() < deadline, {n: self.metric(n) for n in names}
            time.sleep(0.05)

    def send(self, sig: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        self.returncode = self.process.wait(timeout)
        return self.returncode

    def stop(self, timeout: float = 30) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.returncode = self.process.returncode
        self._log.close()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""
