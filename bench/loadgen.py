"""The load generator, run as its own process: ``python -m bench.loadgen --url URL --body FILE
[--body FILE ...] --concurrency C --requests N --duration S [--burst] [--out FILE]``.

Closed loop: C clients (one keep-alive connection each, asyncio + httpx) each send a request, wait
for its answer, and send the next, until N requests were sent in all or S seconds passed. With
several ``--body`` files each request sends one drawn at random (``--seed``: the same draws on
every run; the record says which). With
``--burst`` every client sends exactly one request at the same moment (C requests in all), which
shows what the server does with more simultaneous requests than it can run or queue. Every
request's start, latency, status and (for errors) error code and message are written as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import sys
import time
from pathlib import Path

import httpx


async def _client(
    worker: int,
    client: httpx.AsyncClient,
    args: argparse.Namespace,
    bodies: list[bytes],
    state: dict,
    t0: float,
) -> None:
    draw = random.Random(args.seed * 1000 + worker)
    deadline = t0 + args.duration
    while True:
        if not args.burst and (state["sent"] >= args.requests or time.perf_counter() >= deadline):
            return
        state["sent"] += 1
        index = draw.randrange(len(bodies))
        start = time.perf_counter()
        record: dict = {"worker": worker, "start_s": start - t0, "body": index}
        try:
            r = await client.post(
                args.url,
                params=args.params,
                content=bodies[index],
                headers={"Content-Type": args.content_type},
            )
            record["status"] = r.status_code
            if r.status_code != 200:
                try:
                    error = r.json().get("error", {})
                    record["error"] = {"code": error.get("code"), "message": error.get("message")}
                except ValueError:
                    record["error"] = {"code": None, "message": r.text[:200]}
                if "retry-after" in r.headers:
                    record["retry_after"] = r.headers["retry-after"]
        except httpx.HTTPError as err:
            record["status"] = None
            record["error"] = {"code": type(err).__name__, "message": str(err)[:200]}
        record["latency_s"] = time.perf_counter() - start
        state["records"].append(record)
        if args.burst:
            return


async def _main(args: argparse.Namespace) -> dict:
    bodies = [Path(b).read_bytes() for b in args.body]
    state: dict = {"sent": 0, "records": []}
    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )
    async with httpx.AsyncClient(timeout=args.timeout, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(
            *(_client(w, client, args, bodies, state, t0) for w in range(args.concurrency))
        )
        wall = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "concurrency": args.concurrency,
        "burst": args.burst,
        "params": args.params,
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "records": sorted(state["records"], key=lambda r: r["start_s"]),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument(
        "--body",
        action="append",
        required=True,
        help="file sent as the request body (repeat: each request sends one at random)",
    )
    p.add_argument("--seed", type=int, default=0, help="of the random choice of --body")
    p.add_argument("--content-type", default="image/jpeg")
    p.add_argument("--param", action="append", default=[], help="KEY=VALUE query parameter")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--requests", type=int, default=10, help="total requests (closed loop)")
    p.add_argument("--duration", type=float, default=60.0, help="stop sending after this")
    p.add_argument("--timeout", type=float, default=300.0, help="per-request timeout")
    p.add_argument("--burst", action="store_true", help="one request per client, all at once")
    p.add_argument("--out", help="JSON output file (default: stdout)")
    args = p.parse_args(argv)
    if args.concurrency < 1 or args.requests < 1:
        p.error("--concurrency and --requests must be positive")
    if not args.url.startswith(("http://127.0.0.1", "http://localhost", "http://[::1]")):
        p.error("the load generator only targets loopback servers")
    args.params = dict(kv.split("=", 1) for kv in args.param)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = asyncio.run(_main(args))
    text = json.dumps(result)
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
