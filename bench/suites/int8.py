"""11. int8 on the CPU: the served model's int8 twin (``bench.models.ensure_int8_store``: its very
ONNX file quantised by ``training/quantize.py``, as ``verydeep export --int8`` does) against the
float32 file, on bare onnxruntime sessions with the service's options, for one dense view at
Q=256 and for the default protocol's network calls (Q = 256, 384, 512, each a batch of the image
and its mirror: 6 views). Then OpenVINO's CPU runtime on the very same two files with the same
thread count (float32 forced: its default on CPUs with bfloat16 is bfloat16), as a peer; a
missing ``openvino`` or a graph it cannot read is reported as skipped, with the reason. Last,
the agreement of the two files through the service's engine and protocol
(``service.core.engine.open_engine``, ``service.core.protocol.classify``) on photos of several
sizes that the calibration never saw: top-1 and the largest posterior difference.

All timings of one figure are interleaved (A B C D A B C D ...) in one run; ratios are of medians.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench import images
from bench.common import bare_session, interleaved, preprocessed
from bench.context import Context, ort_threads
from bench.models import cache_root, ensure_int8_store
from bench.report import Figure, Target
from bench.stats import median, ratio, summary

NAME = "int8"
Q = 256
PROTOCOL_SCALES = (256, 384, 512)
ONE_VIEW_TARGET = Target(">=", 1.8)
PROTOCOL_TARGET = Target(">=", 1.6)
PROTOCOL_REPS = {"quick": 3, "full": 7}
PROTOCOL_WARMUP = 1
ACCURACY_PHOTOS = {"quick": 60, "full": 120}
ACCURACY_SIZES = ((640, 480), (480, 640), (800, 800), (1024, 768), (1280, 720), (1000, 1500))
ACCURACY_SEED = 7000  # calibration photos are seeds 5000 + i (bench.models)
ACCURACY_SCALES = (Q,)
ACCURACY_FLIP = True

Feeds = list[np.ndarray]


def one_view_feeds(ctx: Context, entry) -> Feeds:
    return [preprocessed(ctx.request_jpeg(), entry, Q)[None]]


def protocol_feeds(ctx: Context, entry) -> Feeds:
    """Dense evaluation's network calls for the request photo: at each Q, the image and its
    mirror in one batch (as ``service.core.protocol.dense_views`` stacks them)."""
    feeds = []
    for q in PROTOCOL_SCALES:
        x = preprocessed(ctx.request_jpeg(), entry, q)
        feeds.append(np.ascontiguousarray(np.stack([x, x[:, :, ::-1]])))
    return feeds


def ort_runner(session, feeds: Feeds) -> Callable[[], list[np.ndarray]]:
    name = session.get_inputs()[0].name
    output = session.get_outputs()[0].name

    def call() -> list[np.ndarray]:
        return [session.run([output], {name: x})[0] for x in feeds]

    return call


def openvino_config(threads: int) -> dict[str, Any]:
    """OpenVINO's CPU plugin at the onnxruntime sessions' thread count, one stream, latency
    mode, and float32 arithmetic (its default is bfloat16 where the CPU has it)."""
    return {
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
    }


def import_openvino():  # -> the openvino module, or raises
    import openvino

    return openvino


def openvino_peer(threads: int) -> tuple[Any, str | None]:
    """``(openvino.Core(), None)``, or ``(None, reason)`` when it cannot be imported."""
    try:
        ov = import_openvino()
        return ov.Core(), None
    except Exception as err:  # ImportError, or a broken install
        return None, f"openvino not importable ({type(err).__name__}: {err})"


def openvino_compile(core, path, threads: int):
    """The model at ``path`` compiled by OpenVINO's CPU plugin (with the dynamic shapes the
    ONNX file declares, as onnxruntime runs it)."""
    return core.compile_model(str(path), "CPU", openvino_config(threads))


def openvino_runner(compiled, feeds: Feeds) -> Callable[[], list[np.ndarray]]:
    """``compiled`` run on ``feeds`` by one infer request."""
    request = compiled.create_infer_request()
    output = compiled.outputs[0]

    def call() -> list[np.ndarray]:
        out = []
        for x in feeds:
            request.infer({0: x})
            out.append(np.array(request.get_tensor(output).data, copy=True))
        return out

    return call


def _max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))


def _posteriors(scores: list[np.ndarray]) -> np.ndarray:
    means = np.concatenate([s.mean(axis=(2, 3), dtype=np.float64) for s in scores])
    e = np.exp(means - means.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def timing_figures(
    ctx: Context,
    label: str,
    calls: dict[str, Callable[[], object]],
    reps: int,
    warmup: int,
    target: Target,
    skipped: dict[str, str],
) -> tuple[list[Figure], dict[str, Any]]:
    """int8 against float32 on onnxruntime (the target), then onnxruntime against OpenVINO for
    each dtype, all from one interleaved run of ``calls`` (``ort_float32``, ``ort_int8``,
    ``ov_float32``, ``ov_int8``, those present)."""
    times = interleaved(calls, reps=reps, warmup=warmup)
    med = {name: median(t) for name, t in times.items()}
    figures = [
        Figure(
            benchmark=NAME,
            label=f"onnxruntime int8, {label}",
            value=med["ort_int8"] * 1e3,
            unit="ms",
            peer_label="onnxruntime float32, same file pair",
            peer=med["ort_float32"] * 1e3,
            ratio=ratio(med["ort_float32"], med["ort_int8"]),
            ratio_label="float32/int8",
            target=target,
        )
    ]
    for dtype in ("float32", "int8"):
        ours, peer = med[f"ort_{dtype}"], med.get(f"ov_{dtype}")
        figures.append(
            Figure(
                benchmark=NAME,
                label=f"onnxruntime {dtype}, {label}",
                value=ours * 1e3,
                unit="ms",
                peer_label=f"OpenVINO {dtype} (CPU plugin), same file"
                if peer is not None
                else f"OpenVINO {dtype}: skipped",
                peer=peer * 1e3 if peer is not None else float("nan"),
                ratio=ratio(ours, peer) if peer is not None else float("nan"),
                ratio_label="onnxruntime/OpenVINO",
                note="" if peer is not None else f"skipped: {skipped.get(dtype, 'not measured')}",
            )
        )
    return figures, {name: summary(t) for name, t in times.items()}


def accuracy_photos(ctx: Context, count: int) -> list[bytes]:
    """``count`` photo-like JPEGs of ``ACCURACY_SIZES`` in turn, cached."""
    folder = cache_root(ctx.cache_dir) / f"int8-accuracy-seed{ACCURACY_SEED}"
    folder.mkdir(exist_ok=True)
    out = []
    for i in range(count):
        w, h = ACCURACY_SIZES[i % len(ACCURACY_SIZES)]
        path = folder / f"photo-{i:03d}-{w}x{h}.jpg"
        if not path.exists():
            path.write_bytes(images.jpeg(w, h, seed=ACCURACY_SEED + i, quality=90))
        out.append(path.read_bytes())
    return out


def accuracy(ctx: Context, float_store, int8_store, float_name: str, int8_name: str, n: int):
    """Agreement of the float32 and int8 entries through the service's engine and protocol on
    ``n`` photos: ``(figure, details)``."""
    from model_store.imaging import decode
    from service.core.engine import open_engine
    from service.core.protocol import classify

    options = ctx.engine_options()
    reference = open_engine(float_store, float_name, options)
    quantised = open_engine(int8_store, int8_name, options)
    agree, diffs, peaks, margins = 0, [], [], []
    started = time.perf_counter()
    for data in accuracy_photos(ctx, n):
        image = decode(data, max_scale=max(ACCURACY_SCALES)).image
        want = classify([reference], image, list(ACCURACY_SCALES), ACCURACY_FLIP).posterior
        got = classify([quantised], image, list(ACCURACY_SCALES), ACCURACY_FLIP).posterior
        agree += int(np.argmax(want) == np.argmax(got))
        diffs.append(float(np.max(np.abs(want - got))))
        top2 = np.sort(want)[-2:]
        peaks.append(float(top2[1]))
        margins.append(float(top2[1] - top2[0]))
    seconds = time.perf_counter() - started
    share = agree / n
    views = len(ACCURACY_SCALES) * (2 if ACCURACY_FLIP else 1)
    figure = Figure(
        benchmark=NAME,
        label=(
            f"int8 top-1 agreement with float32, {n} photos of {len(ACCURACY_SIZES)} sizes, "
            f"Q={','.join(map(str, ACCURACY_SCALES))}{', flip' if ACCURACY_FLIP else ''}, "
            "service engine"
        ),
        value=agree,
        unit="photos",
        peer_label="photos compared",
        peer=n,
        ratio=share,
        ratio_label="top-1 agreement",
        note=(
            f"largest |posterior diff| {max(diffs):.3g} (median {median(diffs):.3g}); "
            f"float32 top-1 posterior median {median(peaks):.3g}, top-1 - top-2 median "
            f"{median(margins):.3g}"
        ),
    )
    details = {
        "photos": n,
        "sizes": [list(s) for s in ACCURACY_SIZES],
        "seed": ACCURACY_SEED,
        "scales": list(ACCURACY_SCALES),
        "flip": ACCURACY_FLIP,
        "views_per_photo": views,
        "top1_agreement": share,
        "max_abs_posterior_diff": max(diffs),
        "median_abs_posterior_diff": median(diffs),
        "float32_top1_posterior": summary(peaks),
        "float32_top1_margin": summary(margins),
        "seconds": seconds,
    }
    return figure, details


def run(ctx: Context) -> tuple[list[Figure], dict]:
    if ctx.cuda:
        raise RuntimeError("the int8 suite measures the CPU provider; run it without --device cuda")
    float_entry = ctx.model_entry()
    started = time.perf_counter()
    int8_store = ensure_int8_store(ctx.cache_dir, float_entry)
    int8_name = f"{float_entry.name}-int8"
    int8_entry = int8_store.read(int8_name, verify=False)
    prepare_s = time.perf_counter() - started
    settings = ctx.settings()
    threads = settings.intra_op_threads or ort_threads()
    sessions = {
        "float32": bare_session(float_entry, settings),
        "int8": bare_session(int8_entry, settings),
    }
    paths = {"float32": float_entry.onnx_path, "int8": int8_entry.onnx_path}
    compiled, skipped, ov_info = _openvino_models(paths, threads)
    figures: list[Figure] = []
    details: dict[str, Any] = {
        "model": float_entry.name,
        "int8_entry": int8_name,
        "int8_store": str(int8_store.root),
        "int8_metrics": int8_entry.manifest.provenance.metrics,
        "int8_prepare_s": prepare_s,
        "file_mib": {k: p.stat().st_size / 2**20 for k, p in paths.items()},
        "threads": threads,
        "openvino": ov_info,
    }
    runs = (
        ("one_view", one_view_feeds, ctx.mode.reps, ctx.mode.warmup, ONE_VIEW_TARGET),
        ("protocol", protocol_feeds, PROTOCOL_REPS[ctx.mode.name], PROTOCOL_WARMUP,
         PROTOCOL_TARGET),
    )  # fmt: skip
    for key, make_feeds, reps, warmup, target in runs:
        feeds = make_feeds(ctx, float_entry)
        calls: dict[str, Callable[[], list[np.ndarray]]] = {
            f"ort_{dtype}": ort_runner(sessions[dtype], feeds) for dtype in sessions
        }
        calls.update(_openvino_calls(compiled, feeds, skipped))
        found, details[key] = _measure(ctx, key, feeds, calls, (reps, warmup, target), skipped)
        figures += found
    if skipped:
        ov_info["skipped_dtypes"] = skipped
    del sessions, compiled, calls
    figure, details["accuracy"] = accuracy(
        ctx, ctx.store(), int8_store, float_entry.name, int8_name, ACCURACY_PHOTOS[ctx.mode.name]
    )
    figures.append(figure)
    return figures, details


def _openvino_models(
    paths: dict[str, Path], threads: int
) -> tuple[dict[str, Any], dict[str, str], dict[str, Any]]:
    """OpenVINO's compiled float32 and int8 graphs where it is installed and takes them, the
    reason for each it does not run, and what to record of it."""
    core, ov_reason = openvino_peer(threads)
    skipped: dict[str, str] = {}
    compiled: dict[str, Any] = {}
    ov_info: dict[str, Any] = {"threads": threads}
    if core is None:
        ov_info["skipped"] = ov_reason
        return compiled, {"float32": ov_reason, "int8": ov_reason}, ov_info
    ov_info["version"] = import_openvino().__version__
    ov_info["config"] = openvino_config(threads)
    for dtype, path in paths.items():
        try:
            compiled[dtype] = openvino_compile(core, path, threads)
        except Exception as err:  # a graph OpenVINO cannot read or compile
            skipped[dtype] = f"OpenVINO failed on it ({type(err).__name__}: {err})"[:300]
    return compiled, skipped, ov_info


def _openvino_calls(
    compiled: dict[str, Any], feeds: list[np.ndarray], skipped: dict[str, str]
) -> dict[str, Callable[[], list[np.ndarray]]]:
    """A runner of ``feeds`` per compiled graph that runs them once; one that fails moves
    from ``compiled`` to ``skipped``."""
    calls: dict[str, Callable[[], list[np.ndarray]]] = {}
    for dtype, model in list(compiled.items()):
        try:
            call = openvino_runner(model, feeds)
            call()  # runs the graph once at these shapes
        except Exception as err:  # a graph OpenVINO compiled but cannot run
            del compiled[dtype]
            skipped[dtype] = f"OpenVINO failed on it ({type(err).__name__}: {err})"[:300]
            continue
        calls[f"ov_{dtype}"] = call
    return calls


def _measure(
    ctx: Context,
    key: str,
    feeds: list[np.ndarray],
    calls: dict[str, Callable[[], list[np.ndarray]]],
    plan: tuple[int, int, float],
    skipped: dict[str, str],
) -> tuple[list[Figure], dict[str, Any]]:
    """The timing figures of ``calls`` on ``feeds`` (``plan``: reps, warm-up, target), and each
    call's agreement with onnxruntime's float32 scores."""
    reps, warmup, target = plan
    views = sum(x.shape[0] for x in feeds)
    if key == "one_view":
        label = f"1 dense view, Q={Q} ({feeds[0].shape[2]}x{feeds[0].shape[3]})"
    else:
        label = (
            f"default protocol, Q={','.join(map(str, PROTOCOL_SCALES))} + flip "
            f"({views} views, {len(feeds)} calls)"
        )
    outputs = {name: fn() for name, fn in calls.items()}
    reference = outputs["ort_float32"]
    agreement = {
        name: {
            "max_abs_score_diff": _max_diff(out, reference),
            "max_abs_posterior_diff": float(
                np.max(np.abs(_posteriors(out) - _posteriors(reference)))
            ),
        }
        for name, out in outputs.items()
        if name != "ort_float32"
    }
    found, times = timing_figures(ctx, label, calls, reps, warmup, target, skipped)
    return found, {
        "input_shapes": [list(x.shape) for x in feeds],
        "views": views,
        "reps": reps,
        "warmup": warmup,
        "seconds": times,
        "against_ort_float32": agreement,
        "max_abs_score": float(max(np.max(np.abs(s)) for s in reference)),
    }
