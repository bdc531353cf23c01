"""``python -m bench.run [--quick|--full] [--device cuda [--fp16]] [--only NAME,...] [--out DIR]
[--models vgg16,vgg19] [--stream-scales default,256,...] [--stream-levels 1,4,...]
[--stream-requests N] [--stream-ensemble]``: run the benchmarks, print the table, write
``<out>/<date>-<machine>.json`` (``<date>-<machine>[-cuda-fp32|-cuda-fp16|-fp16][-full].json``)
and the table as Markdown and its picture (``bench/plot.py``, PNG) beside it.

``--device cuda`` runs the GPU suite: the server, the bare peers and torch eager on the GPU, plus
batched views and images/s and GPU memory by scale; JPEG decoding (CPU work, the same in both
suites) is left to the CPU suite.

A missed target prints MISS; the command still exits 0 (a measurement, not a test). It exits 1
only when a benchmark could not run at all.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
import traceback
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from bench import machine
from bench.context import DEFAULT_CACHE, MODES, Context, Mode, ort_threads
from bench.models import TINY_D, VGG16, VGG19, ModelSpec
from bench.report import Figure, markdown_table, results_document, text_table, write_json
from bench.suites import (
    batched,
    coldstart,
    decode,
    eager,
    efficiency,
    int8,
    load,
    multicrop,
    overhead,
    scales,
    stream,
)

log = logging.getLogger("bench")

BENCHMARKS = {
    "coldstart": coldstart,  # first: the shared server's start is the cold start it reports
    "overhead": overhead,
    "engine": eager,
    "multicrop": multicrop,
    "efficiency": efficiency,
    "decode": decode,
    "int8": int8,  # CPU only: int8 against float32, and OpenVINO on the same files
    "batched": batched,
    "scales": scales,
    "stream": stream,
    "load": load,  # last: it queues the server up to its 503s
}
CPU_SUITE = [n for n in BENCHMARKS if n not in ("batched", "scales")]
CUDA_SUITE = [n for n in BENCHMARKS if n not in ("decode", "int8")]
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--quick",
        dest="mode",
        action="store_const",
        const="quick",
        help="make bench: one scale for multi-crop, few repetitions (default)",
    )
    group.add_argument(
        "--full",
        dest="mode",
        action="store_const",
        const="full",
        help="make bench-full: three scales, 150 crops, more repetitions, 503 ramp",
    )
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="execution provider of the server and its peers (default cpu)",
    )
    p.add_argument(
        "--fp16", action="store_true", help="float16 exports of the models (with --device cuda)"
    )
    p.add_argument("--only", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    p.add_argument(
        "--stream-scales",
        type=_names,
        help="the stream's scale choices instead of the mode's: 'default' (each model's test "
        "scales) or a Q, comma-separated (quick: 256; full: default,256,384,512)",
    )
    p.add_argument(
        "--stream-levels",
        type=_counts,
        help="the stream's closed-loop client counts instead of the mode's, comma-separated",
    )
    p.add_argument(
        "--stream-ensemble",
        action="store_true",
        help="the stream asks for every served model as one ensemble (--models vgg16,vgg19)",
    )
    p.add_argument(
        "--stream-requests",
        type=int,
        help="requests of a stream level per 2 clients instead of the mode's (quick: 12)",
    )
    p.add_argument(
        "--models",
        type=_served,
        default=(VGG16, VGG19),
        help="the served models, comma-separated: vgg16, vgg19 (default both; the benchmarked "
        "model is the first), or tiny-d (a narrow D, to check a command quickly)",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="exported models, photos")
    args = p.parse_args(argv)
    args.mode = args.mode or "quick"
    suite = CUDA_SUITE if args.device == "cuda" else CPU_SUITE
    names = [n.strip() for n in args.only.split(",")] if args.only else suite
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
    if args.stream_requests is not None and args.stream_requests < 1:
        p.error("--stream-requests must be at least 1")
    args.names = names
    return args


def _served(text: str) -> tuple[ModelSpec, ...]:
    known = {spec.name: spec for spec in (VGG16, VGG19, TINY_D)}  # tiny-d: dry runs
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose models from {', '.join(known)}, not {text!r}")
    return tuple(known[n] for n in dict.fromkeys(names))


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    for name in names:
        if name != "default" and not (name.isdigit() and int(name) >= 224):
            raise argparse.ArgumentTypeError(f"{name!r} is neither 'default' nor a Q >= 224")
    if not names:
        raise argparse.ArgumentTypeError("no scale choice given")
    return names


def _counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(n) for n in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of integers") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("client counts must be at least 1")
    return counts


def run_mode(args: argparse.Namespace) -> Mode:
    """The mode of ``--quick``/``--full`` with the stream's overrides applied."""
    mode = MODES[args.mode]
    if args.stream_scales:
        mode = replace(mode, stream_scales=args.stream_scales)
    if args.stream_levels:
        mode = replace(mode, stream_levels=args.stream_levels)
    if args.stream_requests:
        mode = replace(mode, stream_requests=args.stream_requests)
    if args.stream_ensemble:
        mode = replace(mode, stream_ensemble=True)
    return mode


def thread_settings(ctx: Context) -> dict[str, object]:
    import torch

    s = ctx.settings()
    return {
        "onnxruntime_intra_op_threads_setting": s.intra_op_threads,
        "onnxruntime_threads_effective": s.intra_op_threads or ort_threads(),
        "torch_num_threads": torch.get_num_threads(),
        "service_max_concurrency": s.max_concurrency,
        "service_max_queue": s.max_queue,
        "service_queue_timeout_s": s.queue_timeout,
    }


def run(names: list[str], ctx: Context, out: Path, command: str) -> tuple[list[Figure], dict, Path]:
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    figures: list[Figure] = []
    per_benchmark: dict[str, object] = {}
    load_info: dict[str, object] = {"before": machine.load_snapshot()}
    failed = []
    try:
        for name in names:
            module = BENCHMARKS[name]
            log.info("== %s", name)
            t0 = time.perf_counter()
            before = machine.load_average()
            try:
                found, details = module.run(ctx)
            except Exception as err:
                log.error("%s failed: %s", name, err)
                failed.append(name)
                per_benchmark[name] = {
                    "error": f"{type(err).__name__}: {err}",
                    "traceback": traceback.format_exc(),
                }
                continue
            figures += found
            per_benchmark[name] = {
                "seconds": round(time.perf_counter() - t0, 1),
                "loadavg_before": before,
                "loadavg_after": machine.load_average(),
                **details,
            }
            for f in found:
                log.info("%s: %s", f.status, f.label)
    finally:
        ctx.close()
    if "server_start" in ctx.shared:
        per_benchmark["shared_server"] = ctx.shared["server_start"]
    load_info["after"] = machine.load_snapshot()
    document = results_document(
        figures,
        mode=ctx.mode.name,
        machine=machine.describe(thread_settings(ctx)),
        load=load_info,
        started=started_at.isoformat(timespec="seconds"),
        duration_s=time.perf_counter() - started,
        command=command,
        benchmarks=per_benchmark,
    )
    document["failed"] = failed
    name = machine.slug(ctx.device)
    if ctx.cuda:
        name += "-cuda-fp16" if ctx.dtype == "float16" else "-cuda-fp32"
    elif ctx.dtype == "float16":  # the CPU's float16 run must not overwrite its float32 one
        name += "-fp16"
    name += "" if ctx.mode.quick else f"-{ctx.mode.name}"
    path = write_json(document, out, started_at.strftime("%Y-%m-%d"), name)
    path.with_suffix(".md").write_text(markdown_table(figures) + "\n")
    picture(document, path.with_suffix(".png"))
    return figures, document, path


def picture(document: dict, path: Path) -> None:
    """Draw the results beside them (``bench/plot.py``). Without matplotlib (the GPU machines
    have none) or when drawing fails, the run's results stand and the log says how to draw them
    later."""
    path.unlink(missing_ok=True)  # no earlier run's picture beside these results
    try:
        from bench import plot

        plot.draw(document, path)
    except Exception as err:  # a picture is not worth a run's results
        log.warning(
            "picture not drawn (%s: %s); python -m bench.plot %s draws it",
            type(err).__name__, err, path.with_suffix(".json"),
        )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    dtype = "float16" if args.fp16 else "float32"
    ctx = Context(
        mode=run_mode(args),
        cache_dir=args.cache,
        device=args.device,
        model=args.models[0].with_dtype(dtype),
        served=tuple(spec.with_dtype(dtype) for spec in args.models),
        server_env={"VERYDEEP_DEVICE": args.device},
    )
    command = " ".join(["python -m bench.run", *map(shlex.quote, (argv or sys.argv[1:]))])
    log.info(
        "mode %s on %s (%s); load average %s; %d CPUs",
        args.mode,
        args.device,
        dtype,
        machine.load_average(),
        os.cpu_count(),
    )
    figures, document, path = run(args.names, ctx, args.out, command)
    print()
    print(text_table(figures))
    print()
    counts = document["summary"]
    print(
        f"{counts['PASS']} PASS, {counts['MISS']} MISS, {counts['INFO']} INFO; "
        f"load average {document['load']['before']['loadavg_1_5_15']} -> "
        f"{document['load']['after']['loadavg_1_5_15']}; results: {path}"
    )
    if path.with_suffix(".png").exists():
        print(f"picture: {path.with_suffix('.png')}")
    if document["failed"]:
        print(f"benchmarks that could not run: {', '.join(document['failed'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
