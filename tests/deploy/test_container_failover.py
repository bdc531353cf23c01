"""Replicas behind nginx for real (`docker compose -f docker-compose.yml -f docker-compose.cpu.yml
-f deploy/compose.scale.yml up --scale verydeep=3`, with the chosen nginx): under a steady stream
of requests, stopping, killing, restarting and scaling replicas one at a time loses no request
(docs/deployment.md, "What a client sees during a rollout")."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from bench.server import access_lines
from tests.deploy import engine as eng
from tests.deploy.support import COMPOSE, COMPOSE_CPU, COMPOSE_SCALE

pytestmark = pytest.mark.container

REPLICAS = 3
# One view of the star: cheap enough for three replicas and a stream of two clients on 2 cores.
PATH = "/classify?scales=224&flip=false&top_k=1"


@pytest.fixture(scope="module")
def scaled(
    compose: None,
    cpu_image: str,
    build_args: eng.BuildArgs,
    nginx_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[eng.Stack]:
    stack = eng.Stack(
        name=eng.tag("scaled").replace(":", "-"),
        files=[COMPOSE, COMPOSE_CPU, COMPOSE_SCALE],
        workdir=tmp_path_factory.mktemp("scaled"),
        args=build_args,
        image=cpu_image,
        nginx_image=nginx_image,
    )
    try:
        start = time.monotonic()
        stack.compose("up", "-d", "--no-build", "--scale", f"verydeep={REPLICAS}")
        for container in stack.containers():
            eng.wait_healthy(container)
        replicas = time.monotonic() - start
        (proxy,) = stack.containers("proxy")
        eng.wait_healthy(proxy)
        eng.FIGURES[f"{REPLICAS} replicas and nginx healthy after `up -d`"] = (
            f"{time.monotonic() - start:.1f} s (replicas {replicas:.1f} s)"
        )
        yield stack
    finally:
        stack.down()


def _wait_serving(container: str, timeout: float = 30) -> float:
    """Seconds until ``container`` has answered a /classify that came through nginx."""
    start = time.monotonic()
    while eng.requests_served(container) == 0:
        assert time.monotonic() - start < timeout, f"nginx sends {container} nothing"
        time.sleep(0.2)
    return time.monotonic() - start


def test_replicas_log_the_client_and_the_request_id_nginx_passes(
    scaled: eng.Stack, star: bytes
) -> None:
    """The replicas believe nginx's X-Forwarded-For (VERYDEEP_FORWARDED_ALLOW_IPS=* in the scale
    file): the logged client is this test's address as nginx saw it, not nginx's own; the
    X-Request-ID the client gets back is the one the replica logged (docs/deployment.md)."""
    status, headers, body = eng.request(scaled.url("proxy"), "POST", PATH, star)
    assert status == 200, body
    rid = {k.lower(): v for k, v in headers.items()}["x-request-id"]
    assert len(rid) == 32 and int(rid, 16) >= 0  # nginx's $request_id
    (proxy,) = scaled.containers("proxy")
    networks = eng.inspect(proxy)["NetworkSettings"]["Networks"].values()
    nginx_addresses = {n["IPAddress"] for n in networks}
    deadline = time.monotonic() + 10
    while True:
        lines = [ln for ln in access_lines(scaled.logs("verydeep")) if ln.get("request_id") == rid]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    (line,) = lines
    assert line["route"] == "/classify" and line["status"] == 200
    assert line["client"] and line["client"] not in nginx_addresses, (line, nginx_addresses)
    eng.FIGURES["client logged behind nginx"] = f"{line['client']} (nginx {nginx_addresses})"


def test_stop_kill_restart_and_scale_lose_no_request(scaled: eng.Stack, star: bytes) -> None:
    address = scaled.url("proxy")
    first, second, third = scaled.containers()
    rejoined: list[float] = []
    with eng.Stream(address, PATH, star, clients=2) as stream:
        stream.wait_for(20)

        eng.docker("stop", first, timeout=60)  # SIGTERM, as `docker compose stop` sends
        stream.wait_for(20)
        eng.docker("start", first)
        eng.wait_healthy(first)
        rejoined.append(_wait_serving(first))

        eng.docker("kill", second)  # SIGKILL: requests in flight there are cut
        stream.wait_for(20)
        if eng.inspect(second)["State"]["Status"] != "running":
            eng.docker("start", second)
        eng.wait_healthy(second)
        rejoined.append(_wait_serving(second))

        eng.docker("restart", third, timeout=60)
        eng.wait_healthy(third)
        rejoined.append(_wait_serving(third))

        scaled.compose("up", "-d", "--no-build", "--no-recreate", "--scale", "verydeep=4")
        (fourth,) = set(scaled.containers()) - {first, second, third}
        eng.wait_healthy(fourth)
        rejoined.append(_wait_serving(fourth))
        stream.wait_for(20)
        scaled.compose("up", "-d", "--no-build", "--no-recreate", "--scale", f"verydeep={REPLICAS}")
        assert len(scaled.containers()) == REPLICAS
        stream.wait_for(20)

    lost = stream.lost()
    log = scaled.logs("proxy")
    retried = dict(eng.nginx_errors(log))
    eng.FIGURES["failover (stop, kill, restart, scale 3-4-3)"] = (
        f"{stream.summary()}; nginx retried {retried or 'nothing'}; a restarted or added replica "
        f"served again {max(rejoined):.1f} s at most after turning healthy"
    )
    assert not lost, f"{stream.summary()}: {lost[:5]}\nnginx: {retried}"


def test_with_every_replica_gone_the_proxy_answers_503_with_retry_after(
    scaled: eng.Stack, star: bytes
) -> None:
    address = scaled.url("proxy")
    scaled.compose("stop", "-t", "10", "verydeep", timeout=120)
    try:
        start = time.monotonic()
        status, headers, body = eng.request(address, "POST", PATH, star)
        waited = time.monotonic() - start
        assert status == 503, body
        assert headers.get("Retry-After") == "1"
        assert json.loads(body)["error"]["code"] == "unavailable"
        assert waited < 5, f"{waited:.1f} s"
        eng.FIGURES["every replica stopped"] = (
            f"nginx answered 503 with Retry-After in {waited:.2f} s"
        )
    finally:
        scaled.compose("start", "verydeep", timeout=120)
    for container in scaled.containers():
        eng.wait_healthy(container)
    deadline = time.monotonic() + 15
    while True:  # nginx has a replica again within a few seconds of one turning healthy
        status, _, body = eng.request(address, "POST", PATH, star)
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert status == 200, body
