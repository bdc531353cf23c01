"""The CPU Compose stack for real (`docker compose -f docker-compose.yml -f
docker-compose.cpu.yml up`, built on the chosen base): it turns healthy, answers the API on a
demo image, runs hardened, and answers every request in flight when it is stopped."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator

import pytest

from tests.deploy import engine as eng
from tests.deploy.support import COMPOSE, COMPOSE_CPU, go_seconds, merge_compose

pytestmark = pytest.mark.container


@pytest.fixture(scope="module")
def stack(
    compose: None,
    cpu_image: str,
    build_args: eng.BuildArgs,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[eng.Stack]:
    stack = eng.Stack(
        name=eng.tag("stack").replace(":", "-"),
        files=[COMPOSE, COMPOSE_CPU],
        workdir=tmp_path_factory.mktemp("stack"),
        args=build_args,
        image=cpu_image,
    )
    try:
        start = time.monotonic()
        stack.compose("build", timeout=900)  # the layers of cpu_image: a cache hit
        eng.remember(cpu_image)  # a new image when the sources changed since cpu_image
        eng.FIGURES["Compose build of the same image"] = (
            f"{time.monotonic() - start:.1f} s (a cache hit unless the sources changed meanwhile)"
        )
        start = time.monotonic()
        stack.compose("up", "-d", "--no-build")
        (container,) = stack.containers()
        eng.wait_healthy(container)
        eng.FIGURES["CPU stack healthy after `up -d`"] = f"{time.monotonic() - start:.1f} s"
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="module")
def address(stack: eng.Stack) -> tuple[str, int]:
    return stack.url()


def test_ready_and_healthy(address: tuple[str, int]) -> None:
    status, _, body = eng.request(address, "GET", "/readyz")
    assert status == 200, body
    status, _, _ = eng.request(address, "GET", "/healthz")
    assert status == 200


def test_models_lists_the_demo_store(address: tuple[str, int]) -> None:
    status, _, body = eng.request(address, "GET", "/models")
    assert status == 200
    models = json.loads(body)
    assert {m["name"] for m in models["models"]} >= {"demo-d", "demo-e"}
    assert {"name": "demo-de", "members": ["demo-d", "demo-e"]} in models["ensembles"]
    assert all(m["provider"] == "CPUExecutionProvider" for m in models["models"])


def test_classify_finds_the_star(address: tuple[str, int], star: bytes) -> None:
    status, _, body = eng.request(address, "POST", "/classify?model=demo-de&top_k=3", star)
    assert status == 200, body
    answer = json.loads(body)
    assert answer["predictions"][0]["label"] == "star", answer
    assert answer["members"] == ["demo-d", "demo-e"] and answer["views"] == 6


def test_metrics_count_what_was_served(address: tuple[str, int], star: bytes) -> None:
    eng.request(address, "POST", "/classify?scales=224&flip=false", star)
    status, headers, body = eng.request(address, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    text = body.decode()
    assert 'verydeep_requests_total{route="/classify",status="200"}' in text
    assert "verydeep_ready 1.0" in text


def test_runs_as_10001_on_a_read_only_root_without_capabilities(stack: eng.Stack) -> None:
    (container,) = stack.containers()
    info = eng.inspect(container)
    assert info["Config"]["User"] == "10001:10001"
    host = info["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert "no-new-privileges:true" in host["SecurityOpt"]
    # Every process in the container, the server included, as the kernel sees it.
    report = eng.exec_python(
        container,
        "import os, pathlib, json\n"
        "procs = {}\n"
        "for p in pathlib.Path('/proc').glob('[0-9]*'):\n"
        "    try: status = (p / 'status').read_text()\n"
        "    except OSError: continue\n"
        "    f = dict(l.split(':', 1) for l in status.splitlines() if ':' in l)\n"
        "    procs[f['Name'].strip()] = [f['Uid'].split()[0]] + [f[k].strip() for k in\n"
        "        ('CapEff', 'CapPrm', 'CapBnd', 'NoNewPrivs')]\n"
        "try: open('/models/x', 'w'); w = 'wrote'\n"
        "except OSError as e: w = e.strerror\n"
        "try: open('/opt/venv/x', 'w'); v = 'wrote'\n"
        "except OSError as e: v = e.strerror\n"
        "open('/tmp/x', 'w').write('ok')\n"
        "print(json.dumps({'procs': procs, 'models': w, 'venv': v}))\n",
    )
    found = json.loads(report)
    assert any("verydeep" in name for name in found["procs"]), found
    for name, (uid, *caps, no_new_privs) in found["procs"].items():
        assert uid == "10001", (name, uid)
        assert set(caps) == {"0000000000000000"}, (name, caps)
        assert no_new_privs == "1", name
    assert found["models"] == "Read-only file system" and found["venv"] == "Read-only file system"


def test_stop_answers_every_request_in_flight(stack: eng.Stack, star: bytes) -> None:
    """`docker compose stop` (SIGTERM) while six slow requests are in flight, two running and
    four queued: all six are answered, and the server shuts down cleanly within the grace period."""
    (container,) = stack.containers()
    address = stack.url()
    # About a second of work each on 2 cores: most are still running or queued at SIGTERM.
    path = "/classify?model=demo-de&scales=256,320,384,448&top_k=1"
    sent = threading.Barrier(7)
    answers: list[int | str] = []
    answered_at: list[float] = []

    def client() -> None:
        conn = http.client.HTTPConnection(*address, timeout=60)
        try:
            conn.request("POST", path, body=star, headers={"Content-Type": "image/jpeg"})
            sent.wait()
            response = conn.getresponse()
            response.read()
            answers.append(response.status)
            answered_at.append(time.monotonic())
        except (OSError, http.client.HTTPException) as err:
            answers.append(type(err).__name__)
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(6)]
    for thread in threads:
        thread.start()
    sent.wait(timeout=30)
    time.sleep(0.3)  # the server has accepted them
    start = time.monotonic()
    stack.compose("stop", "verydeep", timeout=120)
    stopped = time.monotonic() - start
    for thread in threads:
        thread.join(timeout=60)
    assert answers == [200] * 6, answers
    after = sum(1 for t in answered_at if t > start)
    assert after >= 2, f"only {after} of the 6 were still in flight at SIGTERM: a weak test"
    # uvicorn re-raises the SIGTERM once it has shut down cleanly: 143 through docker-init.
    state = eng.inspect(container)["State"]
    log = stack.logs("verydeep")
    assert state["ExitCode"] in (0, 143), log[-3000:]
    assert "Application shutdown complete" in log and "Cancel" not in log, log[-3000:]
    grace = go_seconds(
        merge_compose(COMPOSE, COMPOSE_CPU)["services"]["verydeep"]["stop_grace_period"]
    )
    assert stopped < grace
    eng.FIGURES["docker compose stop, 6 requests in flight"] = (
        f"6 of 6 answered ({after} after the SIGTERM), stopped in {stopped:.1f} s"
    )
