"""Helpers of the container tests (tests/deploy/test_container_*.py): the docker CLI, the images
the tests build, Compose projects, and a steady stream of requests that counts what it loses.

The tests build on stand-in base images where the machine has them (docs/deployment.md,
"Container tests"): `local/python-base:3.11-bookworm` for Docker Hub's Python and
`local/nginx:stand-in` for its nginx. Those are test doubles: their names are used here only,
never pushed and never given the official names. Everything the tests build is tagged
``verydeep-test:*-<pid>`` and removed at the end of the session.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.deploy.support import COMPOSE, COMPOSE_SCALE, DOCKERFILE, REPO

STANDIN_PYTHON = "local/python-base:3.11-bookworm"
STANDIN_NGINX = "local/nginx:stand-in"
THROWAWAY_CA = Path(__file__).parent / "data" / "throwaway-ca.pem"
TAG_PREFIX = "verydeep-test"

# What the container tests measured, printed at the end of the run (conftest.py).
FIGURES: dict[str, str] = {}
# The IDs of the images this session built: a rebuild under the same tag (the sources changed
# between two builds) leaves the previous one untagged, and it must go too.
BUILT: set[str] = set()


class DockerError(RuntimeError):
    pass


def docker(
    *args: str,
    timeout: float = 120,
    check: bool = True,
    input: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``docker ARGS``; raises DockerError with its output when it fails and ``check``."""
    result = subprocess.run(
        ["docker", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        env=env,
        cwd=REPO,
    )
    if check and result.returncode != 0:
        raise DockerError(
            f"docker {' '.join(args)[:300]} exited {result.returncode}:\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def engine_problem() -> str | None:
    """Why no container test can run here, or None when `docker info` answers."""
    if shutil.which("docker") is None:
        return "no container engine: the docker command is not installed"
    try:
        result = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        return "the container engine does not answer (docker info timed out)"
    if result.returncode != 0:
        first = (result.stderr.strip().splitlines() or ["no output"])[0]
        return f"the container engine does not answer (docker info: {first})"
    return None


def image_exists(name: str) -> bool:
    return docker("image", "inspect", name, check=False, timeout=30).returncode == 0


def pull_problem(name: str) -> str | None:
    """None when ``name`` is here or could be pulled; else why not."""
    if image_exists(name):
        return None
    result = docker("pull", name, check=False, timeout=300)
    if result.returncode == 0:
        return None
    return (result.stderr.strip().splitlines() or ["no output"])[-1]


def dockerfile_default(arg: str) -> str:
    from tests.deploy.support import parse_dockerfile

    global_args, _ = parse_dockerfile(DOCKERFILE.read_text())
    return global_args[arg]


def compose_image(service: str) -> str:
    from tests.deploy.support import merge_compose

    return merge_compose(COMPOSE, COMPOSE_SCALE)["services"][service]["image"]


def tag(name: str) -> str:
    """A tag of this session: removed by :func:`cleanup`."""
    return f"{TAG_PREFIX}:{name}-{os.getpid()}"


def size_mb(image: str) -> float:
    return int(docker("image", "inspect", "-f", "{{.Size}}", image).stdout) / 1e6


def remember(image: str) -> None:
    BUILT.add(docker("image", "inspect", "-f", "{{.Id}}", image).stdout.strip())


def cleanup() -> list[str]:
    """Remove this session's containers and images, then unused build cache; what failed."""
    problems = []
    pid = str(os.getpid())
    for project in docker("compose", "ls", "-a", "-q", check=False).stdout.split():
        if project.startswith(TAG_PREFIX) and project.endswith(pid):
            result = docker(
                "compose", "-p", project, "down", "-v", "-t", "5", check=False, timeout=120
            )
            if result.returncode:
                problems.append(result.stderr.strip())
    images = docker(
        "image", "ls", "--format", "{{.Repository}}:{{.Tag}}", TAG_PREFIX, check=False
    ).stdout.split()
    mine = [i for i in images if i.endswith(f"-{pid}")]
    for image in mine:  # containers left by a test that failed half-way
        for container in docker("ps", "-aq", "--filter", f"ancestor={image}").stdout.split():
            docker("rm", "-f", container, check=False)
    present = docker("image", "ls", "-q", "--no-trunc", check=False).stdout.split()
    mine += [i for i in BUILT if i in present]
    if mine:
        result = docker("image", "rm", "-f", *mine, check=False, timeout=120)
        if result.returncode and "No such image" not in result.stderr:
            problems.append(result.stderr.strip())
    docker("builder", "prune", "-f", check=False, timeout=300)
    return problems


# --- images ------------------------------------------------------------------------------------


@dataclass
class BuildArgs:
    """The build arguments of every image the tests build, the Compose builds included, so that
    those find the same layers in the build cache."""

    python_image: str
    pip_index_url: str
    extra_ca_cert: str
    extras: str = ""  # the CPU image

    def as_dict(self) -> dict[str, str]:
        return {
            "PYTHON_IMAGE": self.python_image,
            "PIP_INDEX_URL": self.pip_index_url,
            "EXTRA_CA_CERT": self.extra_ca_cert,
            "VERYDEEP_EXTRAS": self.extras,
        }

    def flags(self) -> list[str]:
        return [f for k, v in self.as_dict().items() for f in ("--build-arg", f"{k}={v}")]


def build(image: str, args: BuildArgs, *extra: str, timeout: float = 900) -> float:
    """``docker build`` of the project's Dockerfile; the seconds it took."""
    start = time.monotonic()
    docker("build", "--progress=plain", *args.flags(), *extra, "-t", image, ".", timeout=timeout)
    seconds = time.monotonic() - start
    remember(image)
    return seconds


_SEARCH = """
import json, os, sys
needle = os.environ["NEEDLE"].encode()
found = []
for top, dirs, files in os.walk("/"):
    if top == "/":
        dirs[:] = [d for d in dirs if d not in ("proc", "sys", "dev")]
    for name in files:
        path = os.path.join(top, name)
        if os.path.islink(path) or not os.path.isfile(path):
            continue
        tail = b""
        with open(path, "rb") as f:
            while chunk := f.read(8 << 20):
                if needle in tail + chunk:
                    found.append(path)
                    break
                tail = chunk[-len(needle):]
print(json.dumps(found))
"""


def files_containing(image: str, needle: str) -> list[str]:
    """Every file of ``image``'s filesystem in which ``needle`` occurs, searched as root in a
    container without network. Not through `docker export` or `docker save`: with Engine 26 on
    overlay2 both leave the image's layers behind in /var/lib/docker after it is removed."""
    out = docker(
        "run", "--rm", "--user", "0", "--network", "none", "--env", f"NEEDLE={needle}",
        "--entrypoint", "python", image, "-c", _SEARCH,
        timeout=300,
    ).stdout  # fmt: skip
    return json.loads(out)


# --- Compose -----------------------------------------------------------------------------------


@dataclass
class Stack:
    """One Compose project of this session: the shipped files plus a test override that builds
    on the stand-in base with :class:`BuildArgs` and names this session's image."""

    name: str
    files: list[Path]
    workdir: Path
    args: BuildArgs
    image: str
    nginx_image: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        override: dict[str, Any] = {
            "services": {"verydeep": {"image": self.image, "build": {"args": self.args.as_dict()}}}
        }
        if self.nginx_image:
            override["services"]["proxy"] = {"image": self.nginx_image}
        path = self.workdir / f"{self.name}.override.yml"
        path.write_text(json.dumps(override, indent=2))  # JSON is YAML
        self.files = [*self.files, path]
        env_file = self.workdir / f"{self.name}.env"
        env_file.write_text("")  # never the developer's .env
        # The shell's VERYDEEP_* and COMPOSE_* would reach the files' interpolation: not here.
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("VERYDEEP_", "COMPOSE_"))
        }
        self.env["VERYDEEP_PUBLISH"] = "127.0.0.1:"  # a free port of the loopback
        self._base = ["compose", "-p", self.name, "--env-file", str(env_file)]
        for f in self.files:
            self._base += ["-f", str(f)]

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> str:
        return docker(*self._base, *args, timeout=timeout, check=check, env=self.env).stdout

    def containers(self, service: str = "verydeep") -> list[str]:
        """Names of the service's containers, running or not, by replica number."""
        names = self.compose("ps", "-a", "--format", "{{.Name}}", service).split()
        return sorted(names, key=lambda n: int(n.rsplit("-", 1)[1]))

    def url(self, service: str = "verydeep") -> tuple[str, int]:
        host, _, port = self.compose("port", service, "8000").strip().rpartition(":")
        return host, int(port)

    def logs(self, service: str) -> str:
        return self.compose("logs", "--no-color", service, check=False)

    def down(self) -> None:
        self.compose("down", "-v", "-t", "10", check=False, timeout=180)


def inspect(container: str) -> dict[str, Any]:
    return json.loads(docker("inspect", container).stdout)[0]


def health(container: str) -> str:
    state = inspect(container)["State"]
    return state.get("Health", {}).get("Status") or state["Status"]


def wait_healthy(container: str, timeout: float = 120) -> float:
    """Seconds until Docker calls ``container`` healthy; fails on an exit or the timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        state = inspect(container)["State"]
        if state.get("Health", {}).get("Status") == "healthy":
            return time.monotonic() - start
        if state["Status"] in ("exited", "dead"):
            raise AssertionError(f"{container} exited with {state['ExitCode']}")
        time.sleep(0.2)
    raise AssertionError(f"{container} not healthy within {timeout} s: {health(container)}")


def exec_python(container: str, code: str) -> str:
    """Run Python code inside a running container as its own user; its standard output."""
    return docker("exec", container, "python", "-c", code).stdout


# --- requests ----------------------------------------------------------------------------------


def demo_image(folder: Path) -> bytes:
    """The star that `verydeep make-shapes` draws (the README's example image)."""
    verydeep = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin" / "verydeep"
    command = [str(verydeep)] if verydeep.exists() else ["verydeep"]
    subprocess.run(
        [*command, "make-shapes", str(folder), "--per-class", "1", "--seed", "7", "--workers", "1"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return (folder / "star" / "star_00000.jpg").read_bytes()


def request(
    address: tuple[str, int],
    method: str,
    path: str,
    body: bytes | None = None,
    timeout: float = 60,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(*address, timeout=timeout)
    try:
        headers = {"Content-Type": "image/jpeg"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


@dataclass
class Outcome:
    started: float
    status: int | str  # the last answer's status, or the exception's name
    retries: int  # 503 with Retry-After, retried
    seconds: float
    detail: str = ""


class Stream:
    """``clients`` threads that each send ``path`` back to back over a keep-alive connection, as
    a client would: a 503 with Retry-After is retried after that many seconds (at most
    ``max_retries`` times); anything else but 200 (another status, a 503 without Retry-After,
    a broken connection) is a lost request."""

    def __init__(
        self,
        address: tuple[str, int],
        path: str,
        body: bytes,
        clients: int = 2,
        max_retries: int = 5,
    ) -> None:
        self.address, self.path, self.body = address, path, body
        self.clients, self.max_retries = clients, max_retries
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def __enter__(self) -> Stream:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def _send(self, conn: http.client.HTTPConnection) -> tuple[int, str | None, bytes]:
        conn.request("POST", self.path, body=self.body, headers={"Content-Type": "image/jpeg"})
        response = conn.getresponse()
        return response.status, response.getheader("Retry-After"), response.read()

    def _run(self) -> None:
        conn = http.client.HTTPConnection(*self.address, timeout=60)
        while not self._stop.is_set():
            started = time.monotonic()
            retries = 0
            while True:
                try:
                    status, retry_after, data = self._send(conn)
                except (OSError, http.client.HTTPException) as err:
                    outcome = Outcome(started, type(err).__name__, retries, 0.0, str(err))
                    conn.close()
                    conn = http.client.HTTPConnection(*self.address, timeout=60)
                    break
                if status == 503 and retry_after is not None and retries < self.max_retries:
                    retries += 1
                    time.sleep(float(retry_after))
                    continue
                outcome = Outcome(
                    started, status, retries, 0.0, data[:200].decode(errors="replace")
                )
                break
            outcome.seconds = time.monotonic() - started
            with self._lock:
                self.outcomes.append(outcome)
        conn.close()

    def count(self) -> int:
        with self._lock:
            return len(self.outcomes)

    def wait_for(self, more: int, timeout: float = 60) -> None:
        """Until ``more`` further requests are answered (the stream is flowing)."""
        target = self.count() + more
        deadline = time.monotonic() + timeout
        while self.count() < target:
            assert time.monotonic() < deadline, f"the stream stalled at {self.count()} requests"
            time.sleep(0.05)

    def lost(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != 200]

    def summary(self) -> str:
        total = len(self.outcomes)
        statuses = Counter(str(o.status) for o in self.outcomes)
        retried = sum(1 for o in self.outcomes if o.retries)
        slowest = max((o.seconds for o in self.outcomes), default=0.0)
        return (
            f"lost {len(self.lost())} of {total} (answers {dict(statuses)}, "
            f"{retried} after a 503 with Retry-After, slowest {slowest:.2f} s)"
        )


def requests_served(container: str) -> float:
    """verydeep_requests_total of one replica for /classify, read inside its container."""
    text = exec_python(
        container,
        "import urllib.request;"
        "print(urllib.request.urlopen('http://127.0.0.1:8000/metrics').read().decode())",
    )
    total = 0.0
    for line in text.splitlines():
        if line.startswith("verydeep_requests_total{") and "/classify" in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def nginx_errors(log: str) -> Counter[str]:
    """nginx's upstream errors in its log, by kind."""
    kinds = re.findall(
        r"\[error\] .*?(connect\(\) failed \([^)]*\)|upstream timed out|no live upstreams"
        r"|recv\(\) failed \([^)]*\)|upstream prematurely closed connection)",
        log,
    )
    return Counter(kinds)
