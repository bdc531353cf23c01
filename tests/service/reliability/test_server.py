"""A real ``verydeep serve`` under overload, hostile connections and SIGTERM (127.0.0.1 only;
every loop is bounded in requests and time).

Figures asserted (tiny models, 2 cores): admitted requests of a burst finish within
``ADMITTED_LATENCY`` s, every request of a burst within ``CLIENT_TIMEOUT`` s; resident memory
after sustained load stays within ``RSS_BOUND`` of where it started; SIGTERM exits within
``SHUTDOWN_BOUND`` s after the last request in flight finished.
"""

from __future__ import annotations

import json
import os
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bench.server import Server, access_lines
from model_store import ModelStore
from tests.service.helpers import encode, sample_image, server_for
from tests.service.reliability.corpus import corpus

CLIENT_TIMEOUT = 30.0
QUEUE_TIMEOUT = 1.0
ADMITTED_LATENCY = QUEUE_TIMEOUT + 4.0
RSS_BOUND = 64 * 1024 * 1024
UPLOAD_LIMIT = 1024 * 1024
SHUTDOWN_BOUND = 5.0

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")


@pytest.fixture(scope="module")
def server(service_store: ModelStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("server") / "serve.log"
    with server_for(
        service_store.root,
        log,
        MAX_CONCURRENCY=1,
        MAX_QUEUE=2,
        QUEUE_TIMEOUT=QUEUE_TIMEOUT,
        REQUEST_TIMEOUT=10,
        RETRY_AFTER=2,
        MAX_UPLOAD_BYTES=UPLOAD_LIMIT,
    ) as s:
        yield s
    assert s.returncode in (0, -15), s.log()[-3000:]


@dataclass
class Outcome:
    status: int
    seconds: float
    retry_after: str | None = None
    code: str | None = None


def post(client: httpx.Client, url: str, data: bytes, **params: object) -> Outcome:
    started = time.perf_counter()
    response = client.post(
        f"{url}/classify",
        params=params,
        content=data,
        headers={"content-type": "image/png"},
    )
    seconds = time.perf_counter() - started
    code = None
    if response.status_code != 200:
        body = response.json()  # every answer is JSON, errors included
        assert set(body) == {"error"}, body
        code = body["error"]["code"]
    return Outcome(response.status_code, seconds, response.headers.get("retry-after"), code)


def burst(url: str, data: bytes, clients: int, per_client: int, **params: object) -> list[Outcome]:
    """``clients`` threads, each sending ``per_client`` requests back to back."""

    def one_client(_: int) -> list[Outcome]:
        with httpx.Client(timeout=CLIENT_TIMEOUT) as client:
            return [post(client, url, data, **params) for _ in range(per_client)]

    with ThreadPoolExecutor(clients) as pool:
        return [o for outcomes in pool.map(one_client, range(clients)) for o in outcomes]


def test_burst_gets_200_or_503_with_retry_after(server: Server) -> None:
    png = encode(sample_image(), "PNG")
    started = time.perf_counter()
    outcomes = burst(server.url, png, clients=16, per_client=4)
    elapsed = time.perf_counter() - started
    counts = Counter(o.status for o in outcomes)
    print(f"burst of 64 (16 clients x 4): {dict(counts)} in {elapsed:.1f} s")
    assert set(counts) <= {200, 503, 504}, counts
    assert counts[200] >= 4 and counts[503] >= 1, counts
    for o in outcomes:
        if o.status == 503:
            assert o.retry_after == "2" and o.code == "overloaded"
    admitted = [o.seconds for o in outcomes if o.status == 200]
    refused = [o.seconds for o in outcomes if o.status == 503]
    print(f"admitted latency max {max(admitted):.2f} s, refused max {max(refused):.2f} s")
    assert max(admitted) < ADMITTED_LATENCY
    assert max(refused) < QUEUE_TIMEOUT + 2.0
    server.wait_idle()
    assert httpx.get(f"{server.url}/readyz").status_code == 200


def test_memory_holds_under_sustained_load(server: Server) -> None:
    """About 20 s: a warm-up, then sustained mixed load; VmRSS must come back to within
    RSS_BOUND of its value after the warm-up, and no thread or file descriptor leaks."""
    report = sustained_load(server, warm_up=5.0, duration=15.0)
    print(json.dumps(report))
    assert report["errors_5xx"] == 0
    assert report["rss_after"] - report["rss_before"] < RSS_BOUND, report
    assert report["threads_after"] <= report["threads_before"] + 2, report
    assert report["fds_after"] <= report["fds_before"] + 4, report


def mixed_uploads() -> list[tuple[bytes, dict[str, object]]]:
    """Valid images of several sizes and protocols, and hostile ones from the corpus."""
    hostile = [u.data for u in corpus() if u.name.startswith(("bomb-", "truncated-", "bitflip-"))]
    big = encode(sample_image(1600, 1200, seed=9), "JPEG")
    return [
        (encode(sample_image(), "PNG"), {}),
        (big, {"scales": "224,448"}),
        (encode(sample_image(640, 480, seed=2), "PNG"), {"method": "combined", "scales": "256"}),
        *[(data, {"scales": "224"}) for data in hostile[:: max(1, len(hostile) // 12)]],
    ]


def sustained_load(server: Server, warm_up: float, duration: float, clients: int = 3) -> dict:
    """``clients`` threads (as many as the server admits) sending mixed uploads back to back,
    pausing briefly on 503."""
    uploads = mixed_uploads()
    statuses: Counter[int] = Counter()
    lock = threading.Lock()

    def run_for(seconds: float) -> None:
        stop = time.monotonic() + seconds

        def client_loop(index: int) -> None:
            with httpx.Client(timeout=CLIENT_TIMEOUT) as client:
                i = index
                while time.monotonic() < stop:
                    data, params = uploads[i % len(uploads)]
                    outcome = post(client, server.url, data, **params)
                    with lock:
                        statuses[outcome.status] += 1
                    if outcome.status == 503:
                        time.sleep(0.05)
                    i += clients

        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(client_loop, range(clients)))

    run_for(warm_up)
    server.wait_idle()
    before = server.rss_bytes(), server.threads(), server.open_fds()
    run_for(duration)
    server.wait_idle()
    time.sleep(0.5)
    after = server.rss_bytes(), server.threads(), server.open_fds()
    return {
        "requests": sum(statuses.values()),
        "statuses": dict(statuses),
        "errors_5xx": sum(n for s, n in statuses.items() if s >= 500 and s not in (503, 504)),
        "rss_before": before[0],
        "rss_after": after[0],
        "threads_before": before[1],
        "threads_after": after[1],
        "fds_before": before[2],
        "fds_after": after[2],
    }


def raw_request(port: int, head: str, body: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head.encode("latin-1") + body)
    return sock


def read_response(
    sock: socket.socket, timeout: float = 10, *, with_body: bool = True
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one HTTP/1.1 response (Content-Length bodies); without the
    body for the answer to a HEAD, whose Content-Length is the GET's (the bytes returned are then
    what arrived after the headers)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
    }
    length = int(headers.get("content-length", 0)) if with_body else 0
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def test_clients_that_disconnect_mid_upload_leak_nothing(server: Server) -> None:
    png = encode(sample_image(), "PNG")
    boundary = "xYzBoundary"
    part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    heads = {
        "raw": (
            "POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            f"Content-Length: {len(png)}\r\n\r\n",
            png[: len(png) // 3],
        ),
        "chunked": (
            "POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            "Transfer-Encoding: chunked\r\n\r\n",
            b"4000\r\n" + png[:0x4000] + b"\r\n",
        ),
        "multipart": (
            "POST /classify HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(png) + 500}\r\n\r\n",
            part + png[:5000],
        ),
        "headers-only": (
            "POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            "Content-Length: 100000\r\n\r\n",
            b"",
        ),
        "half-headers": ("POST /classify HTTP/1.1\r\nHost: x\r\nContent-Ty", b""),
    }
    for _ in range(5):
        for head, body in heads.values():
            sock = raw_request(server.port, head, body)
            time.sleep(0.02)
            sock.close()
    server.wait_idle(timeout=10)  # admitted, queued and in flight all back to 0
    # A burst of exactly max_concurrency + max_queue requests is all admitted: no slot leaked.
    outcomes = burst(server.url, png, clients=3, per_client=1)
    assert [o.status for o in outcomes] == [200, 200, 200], outcomes
    assert httpx.get(f"{server.url}/healthz").status_code == 200


NEVER_ENDING = {
    "raw": ("/classify", "image/png", 413, "payload_too_large"),
    "multipart": ("/classify", "multipart/form-data; boundary=b", 413, "payload_too_large"),
    "unknown-model": ("/classify?model=nope", "image/png", 404, "unknown_model"),
    "not-an-image-type": ("/classify", "text/plain", 415, "unsupported_media_type"),
}


@pytest.mark.parametrize("case", NEVER_ENDING)
def test_a_body_that_never_ends_is_cut_off(server: Server, case: str) -> None:
    """Chunked, no Content-Length, never finishing: the server answers once it has read about
    UPLOAD_LIMIT bytes (413), or at once when it refuses the request before reading (404, 415),
    says ``Connection: close`` and closes; its memory does not grow with what the client sends."""
    path, content_type, status, code = NEVER_ENDING[case]
    rss_before = server.rss_bytes()
    sock = raw_request(
        server.port,
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n",
    )
    if content_type.startswith("multipart"):
        preamble = b'--b\r\nContent-Disposition: form-data; name="image"; filename="x"\r\n\r\n'
        sock.sendall(f"{len(preamble):x}\r\n".encode() + preamble + b"\r\n")
    chunk = os.urandom(64 * 1024)
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent = 0
    deadline = time.monotonic() + 30
    sock.setblocking(False)
    while True:
        assert time.monotonic() < deadline, f"no answer after {sent} bytes"
        readable, writable, _ = select.select([sock], [sock], [], 1.0)
        if readable:
            break
        if writable:
            try:
                sent += sock.send(frame)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                time.sleep(0.01)
    sock.setblocking(True)
    answer, headers, body = read_response(sock)
    print(f"{case}: {answer} after {sent} bytes sent (limit {UPLOAD_LIMIT})")
    assert answer == status, body
    assert json.loads(body)["error"]["code"] == code
    assert headers.get("connection") == "close"
    assert sent < UPLOAD_LIMIT + 32 * 1024 * 1024  # the limit plus socket buffers
    sock.settimeout(10)
    try:
        while sock.recv(65536):  # the server closes the connection: recv ends with b""
            pass
    except ConnectionResetError:
        pass
    sock.close()
    assert server.rss_bytes() - rss_before < RSS_BOUND
    server.wait_idle()


def test_slow_uploads_cannot_pile_up(server: Server) -> None:
    """At most MAX_CONCURRENCY + MAX_QUEUE requests are admitted, uploads in progress included:
    the next one is refused at once with 503, before its body is read, so a flood of uploads
    cannot buffer more than that many bodies."""
    png = encode(sample_image(), "PNG")
    head = (
        "POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        f"Content-Length: {len(png)}\r\n\r\n"
    )
    slow = [raw_request(server.port, head, png[:1000]) for _ in range(3)]  # 1 + 2 admitted
    try:
        deadline = time.monotonic() + 10
        while server.metric("verydeep_classify_admitted") < 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with httpx.Client(timeout=CLIENT_TIMEOUT) as client:
            refused = post(client, server.url, png)
        assert refused.status == 503 and refused.code == "overloaded"
        assert refused.retry_after == "2" and refused.seconds < 1.0
        for sock in slow:  # the slow uploads finish and are served
            sock.sendall(png[1000:])
        answers = [read_response(sock, timeout=CLIENT_TIMEOUT)[0] for sock in slow]
        assert answers == [200, 200, 200]
    finally:
        for sock in slow:
            sock.close()
    server.wait_idle()


def test_a_declared_huge_body_is_refused_without_reading(server: Server) -> None:
    sock = raw_request(
        server.port,
        "POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        f"Content-Length: {10**12}\r\n\r\n",
        b"\x89PNG",
    )
    status, headers, body = read_response(sock)
    sock.close()
    assert status == 413 and headers.get("connection") == "close"
    assert json.loads(body)["error"]["code"] == "payload_too_large"


def test_malformed_http_is_refused_and_the_server_stays_up(server: Server) -> None:
    """Malformed HTTP never reaches the app: uvicorn (h11) answers a plain-text 400 and closes.
    Oversized request lines and headers are h11's to refuse (16 KiB while incomplete); one that
    arrives whole is parsed, and the app then answers as usual."""
    cases = {
        "not-http": ("GARBAGE\r\n\r\n", {0, 400}),
        "negative-length": ("POST /classify HTTP/1.1\r\nContent-Length: -1\r\n\r\n", {0, 400}),
        "two-lengths": (
            "POST /classify HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            {0, 400},
        ),
        "nul-in-target": ("GET /\x00 HTTP/1.1\r\n\r\n", {0, 400}),
        "long-query": (
            "GET /healthz?" + "a" * 20000 + " HTTP/1.1\r\nHost: x\r\n\r\n",
            {0, 200, 400},
        ),
        "long-header": (
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + "b" * 20000 + "\r\n\r\n",
            {0, 200, 400},
        ),
        "long-model": (
            "POST /classify?model=" + "m" * 12000 + " HTTP/1.1\r\nHost: x\r\n"
            "Content-Type: image/png\r\nContent-Length: 0\r\n\r\n",
            {0, 400, 422},
        ),
    }
    for name, (garbage, allowed) in cases.items():
        sock = raw_request(server.port, garbage)
        try:
            status, _, _ = read_response(sock)
        except (AssertionError, ConnectionResetError):
            status = 0  # closed without an answer
        sock.close()
        assert status in allowed, name
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    ok = httpx.post(
        f"{server.url}/classify?scales=224",
        content=encode(sample_image(), "PNG"),
        headers={"content-type": "image/png"},
        timeout=CLIENT_TIMEOUT,
    )
    assert ok.status_code == 200


def test_head_sends_headers_only_and_keeps_the_connection(server: Server) -> None:
    """uvicorn with HeadAsGet: HEAD /healthz carries the GET's Content-Length and no body, so
    the GET that follows on the same connection reads its own answer, not left-over bytes."""
    sock = raw_request(server.port, "HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        status, headers, rest = read_response(sock, with_body=False)
        assert status == 200, headers
        assert headers["content-length"] == "15" and rest == b""
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = read_response(sock)
        assert (status, json.loads(body)) == (200, {"status": "ok"})
        assert headers["content-length"] == "15"
    finally:
        sock.close()


@pytest.mark.parametrize("trusted", ["127.0.0.1", "10.9.9.9"])
def test_the_client_a_trusted_proxy_names_is_logged(
    service_store: ModelStore, tmp_path: Path, trusted: str
) -> None:
    """VERYDEEP_FORWARDED_ALLOW_IPS reaches uvicorn: X-Forwarded-For from a trusted address
    (this test's 127.0.0.1) names the client, from any other it is ignored; the request ID the
    proxy sent is logged and answered."""
    with server_for(service_store.root, tmp_path / "serve.log", FORWARDED_ALLOW_IPS=trusted) as s:
        headers = {"X-Forwarded-For": "203.0.113.7", "X-Request-ID": "nginx-5f1d"}
        answer = httpx.get(f"{s.url}/healthz", headers=headers)
        assert answer.status_code == 200 and answer.headers["x-request-id"] == "nginx-5f1d"
        deadline = time.monotonic() + 10
        while not access_lines(s.log()):
            assert time.monotonic() < deadline, s.log()[-2000:]
            time.sleep(0.05)
    (line,) = [line for line in access_lines(s.log()) if line["request_id"] == "nginx-5f1d"]
    assert line["client"] == ("203.0.113.7" if trusted == "127.0.0.1" else "127.0.0.1")


def test_sigterm_finishes_requests_in_flight_refuses_new_ones_and_exits(
    service_store: ModelStore, tmp_path: Path
) -> None:
    png = encode(sample_image(640, 480), "PNG")
    params = {"method": "combined", "scales": "224,256,288"}
    with server_for(
        service_store.root,
        tmp_path / "serve.log",
        MAX_CONCURRENCY=1,
        MAX_QUEUE=8,
        QUEUE_TIMEOUT=60,
        SHUTDOWN_TIMEOUT=30,
    ) as server:
        with httpx.Client(timeout=CLIENT_TIMEOUT) as client:
            single = post(client, server.url, png, **params)
        assert single.status == 200
        in_flight = 6
        with ThreadPoolExecutor(in_flight) as pool:
            futures = [
                pool.submit(burst, server.url, png, 1, 1, **params) for _ in range(in_flight)
            ]
            deadline = time.monotonic() + 20
            while server.metric("verydeep_classify_admitted") < in_flight:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            server.send()  # SIGTERM
            signalled = time.monotonic()
            refused = False
            while time.monotonic() < signalled + 5:
                try:
                    httpx.get(f"{server.url}/healthz", timeout=1)
                except httpx.ConnectError:
                    refused = True
                    break
                time.sleep(0.05)
            outcomes = [o for f in futures for o in f.result(timeout=60)]
            last_answer = time.monotonic()
        returncode = server.wait(timeout=30)
        exited = time.monotonic()
    print(
        f"SIGTERM with {in_flight} requests in flight ({single.seconds:.2f} s each): "
        f"all answered {last_answer - signalled:.2f} s after the signal, "
        f"exit {exited - last_answer:.2f} s after the last answer, code {returncode}"
    )
    assert refused, "new connections were still accepted after SIGTERM"
    assert [o.status for o in outcomes] == [200] * in_flight
    assert returncode in (0, -15)
    assert exited - last_answer < SHUTDOWN_BOUND
    log = server.log()
    assert "Application shutdown complete" in log and "Traceback" not in log


@pytest.mark.slow
def test_soak_memory_holds_for_minutes(server: Server) -> None:
    """Three minutes of mixed load: RSS sampled every 15 s must not keep growing."""
    samples, statuses = [], Counter()
    for _ in range(12):
        report = sustained_load(server, warm_up=0.0, duration=15.0)
        assert report["errors_5xx"] == 0, report
        samples.append(report["rss_after"])
        statuses.update({int(k): v for k, v in report["statuses"].items()})
    print(f"soak: {sum(statuses.values())} requests {dict(statuses)}")
    print("RSS MiB every 15 s:", [round(s / 2**20) for s in samples])
    assert max(samples[6:]) - max(samples[:6]) < RSS_BOUND / 2
    assert samples[-1] - samples[0] < RSS_BOUND
