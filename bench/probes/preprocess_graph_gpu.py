#!/usr/bin/env python
"""Rescale + normalise on the GPU (issue 14 item 4; docs/gpu.md, "Preprocessing on the GPU"):
per photo size of the bench stream and scale Q, the time of

- ``pillow``: the service's CPU path, ``to_input(rescale(image, q), preprocessing)``;
- ``graph_uint8`` (the committed graph), ``graph_uint8_hwc``, ``graph_float32``,
  ``graph_float32_hwc``: service/core/preprocess_graph.py's ONNX graph (Resize ``antialias=1``
  on the 8-bit pixels, or cast to float first; on ``(1, 3, H, W)`` or on ``(H, W, 3)``) in
  onnxruntime on ``--device``, numpy in and out as the engine would feed it (``np.asarray`` of
  the PIL image included);
- ``torch`` / ``torch_to_host``: torchvision's ``transforms.v2.functional.resize(antialias=True)``
  on a uint8 tensor on ``--device``, plus the same normalisation, the result left on the
  device / copied back to a numpy array (the peer);

each input's largest difference from ``pillow`` in pixel levels (``|difference| * std / scale``)
and the fraction of values more than half a level off; then, on the demo store's ``demo-d``
and on a random-weight tiny D (dense, with flip, on ``--device``), the posteriors from each
graph's input against the Pillow path's: top-1 the same, largest posterior difference.

    python bench/probes/preprocess_graph_gpu.py --device cuda bench/results/preprocess-cuda.json
    python bench/probes/preprocess_graph_gpu.py --device cpu /tmp/preprocess-graph-cpu.json  # dry

``--device cpu`` is the dry mode: everything on the CPU (onnxruntime's CPU provider, torch on the
CPU), same JSON keys, so that the script is known to work before a GPU session runs it. On CUDA
each graph session is first opened with ``session.disable_cpu_ep_fallback`` (recorded as
``all_nodes_on_device``: false when some node, Resize with antialias for one, has no CUDA kernel;
the session is then opened without it and those nodes run on the CPU; a variant that fails to
run keeps its error in ``graphs`` and null figures). The variants other than ``uint8`` are built
with the ``onnx`` package (the train extra); without it their figures are null.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from bench import machine  # noqa: E402
from bench.images import STREAM_SIZES, photo  # noqa: E402
from model_store import ModelStore, Preprocessing  # noqa: E402
from model_store.imaging import rescale, rescaled_size, to_input  # noqa: E402
from service.core import preprocess_graph as pg  # noqa: E402

SCALES = (224, 256, 384, 512)
VARIANTS = {  # name: (resize dtype, layout); "uint8" is the committed graph
    "uint8": ("uint8", "nchw"),
    "uint8_hwc": ("uint8", "hwc"),
    "float32": ("float32", "nchw"),
    "float32_hwc": ("float32", "hwc"),
}
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# The figures compare against the demo model's preprocessing (RGB, scale 1, its mean and std).


def median_ms(repeats: int, fn, *args) -> float:
    """The median of ``repeats`` calls of ``fn(*args)``, in milliseconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 3)


def open_graphs(device: str) -> tuple[dict, dict]:
    """``{variant: PreprocessGraph or None}`` and ``{variant: what happened}``."""
    graphs, info = {}, {}
    for variant, (dtype, layout) in VARIANTS.items():
        entry = {
            "resize_dtype": dtype,
            "layout": layout,
            "provider": None,
            "all_nodes_on_device": None,
            "error": None,
        }
        graphs[variant], info[variant] = None, entry
        try:
            model = pg.graph_bytes() if variant == "uint8" else pg.build_graph(dtype, layout)
        except Exception as err:  # no onnx for the generated variants
            entry["error"] = f"cannot build: {err}"
            continue
        # No spinning of idle intra-op threads, which would slow the other paths timed between
        # graph calls on a CPU with few cores.
        options = pg.ort.SessionOptions()
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if device == "cuda":
            from service.core import sessions

            _, providers = sessions.session_setup("cuda")
            strict = pg.ort.SessionOptions()
            strict.log_severity_level = 3
            strict.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
            try:
                graph = pg.PreprocessGraph(providers, strict, model=model)
                entry["all_nodes_on_device"] = graph.provider == CUDA
            except pg.PreprocessFailed as err:
                entry["all_nodes_on_device"] = False
                entry["error"] = f"with disable_cpu_ep_fallback: {err}"[:2000]
                try:
                    graph = pg.PreprocessGraph(providers, options, model=model)
                except pg.PreprocessFailed as err2:
                    entry["error"] += f"; without: {err2}"[:2000]
                    continue
        else:
            graph = pg.PreprocessGraph([CPU], options, model=model)
        entry["provider"] = graph.provider
        graphs[variant] = graph
    return graphs, info


def torch_peer(device: str):
    """``(resize_fn, info)``: ``resize_fn(pixels, size, preprocessing, to_host)`` or None."""
    try:
        import torch
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as F
    except Exception as err:
        return None, {"available": False, "error": str(err), "device": None}
    if device == "cuda" and not torch.cuda.is_available():
        return None, {
            "available": False,
            "error": "torch.cuda.is_available() is False",
            "device": None,
        }
    dev = torch.device(device)

    constants = {}

    def run(pixels: np.ndarray, size: tuple[int, int], p: Preprocessing, to_host: bool):
        if p not in constants:
            constants[p] = [
                torch.tensor(v, dtype=torch.float32, device=dev)[:, None, None]
                for v in (p.mean, p.std)
            ]
        mean, std = constants[p]
        with warnings.catch_warnings():  # np.asarray of a PIL image is read-only; not written
            warnings.simplefilter("ignore", UserWarning)
            x = torch.from_numpy(pixels)
        x = x.to(dev).permute(2, 0, 1)
        if p.color_order == "BGR":
            x = x.flip(0)
        y = F.resize(x, list(size), interpolation=InterpolationMode.BILINEAR, antialias=True)
        out = ((y.float() * p.scale - mean) / std)[None]
        if to_host:
            return out.cpu().numpy()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return out

    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    return run, {"available": True, "error": None, "device": name, "torch": torch.__version__}


def pillow_path(image, q: int, p: Preprocessing) -> np.ndarray:
    return to_input(rescale(image, q), p)


def graph_path(graph: pg.PreprocessGraph, image, q: int, p: Preprocessing) -> np.ndarray:
    return graph.rescaled_input(np.asarray(image), q, p)


def torch_path(run, image, size: tuple[int, int], p: Preprocessing, to_host: bool):
    return run(np.asarray(image), size, p, to_host)


RANDOM_VGG = "tiny-d-random"
RANDOM_VGG_NOTE = (
    "config D at 1/16 width, random weights, fc8 x100 (tests/service/helpers.py peaked_vgg, "
    "seed 1): posteriors far from uniform, so that any change of input shows"
)


def random_vgg(device: str):
    """An engine of the tests' peaked tiny D, exported into a temporary store."""
    import tempfile

    from service.core.engine import EngineOptions, open_engine
    from tests.service.helpers import variants_store

    store = variants_store(
        Path(tempfile.mkdtemp(prefix="preprocess-probe-")), 1, {RANDOM_VGG: "float32"}
    )
    return open_engine(store, RANDOM_VGG, EngineOptions(device=device))


def posterior_row(dense_views, model, ref: np.ndarray, inputs: dict, width, height, q) -> dict:
    reference = dense_views(model, ref, True)[0].mean(axis=0)
    row = {"width": width, "height": height, "q": q}
    for variant in VARIANTS:
        x = inputs.get(variant)
        if x is None:
            row[f"top1_same_{variant}"] = row[f"max_posterior_diff_{variant}"] = None
            continue
        posterior = dense_views(model, np.ascontiguousarray(x), True)[0].mean(axis=0)
        row[f"top1_same_{variant}"] = bool(posterior.argmax() == reference.argmax())
        row[f"max_posterior_diff_{variant}"] = float(np.abs(posterior - reference).max())
    return row


def posterior_summary(rows: list[dict]) -> dict:
    summary = {}
    for variant in VARIANTS:
        same = [r[f"top1_same_{variant}"] for r in rows]
        diffs = [r[f"max_posterior_diff_{variant}"] for r in rows]
        known = rows and None not in same
        summary[f"top1_same_{variant}"] = all(same) if known else None
        summary[f"top1_differs_{variant}"] = same.count(False) if known else None
        summary[f"max_posterior_diff_{variant}"] = max(diffs) if known else None
    return summary


def difference(x: np.ndarray, ref: np.ndarray, p: Preprocessing) -> tuple[float, float]:
    """Largest |x - ref| in pixel levels, fraction of values more than half a level off."""
    units = np.asarray(p.std, dtype=np.float64)[:, None, None] / p.scale
    d = np.abs(x.reshape(ref.shape).astype(np.float64) - ref) * units
    return round(float(d.max()), 4), round(float((d > 0.5).mean()), 6)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="the JSON file to write")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed calls per figure (default: 20 on cuda, 5 on cpu)",
    )
    parser.add_argument(
        "--sizes", default=None, help="WxH,WxH,... (default: bench/images.py's STREAM_SIZES)"
    )
    parser.add_argument("--scales", default=",".join(map(str, SCALES)))
    parser.add_argument("--store", type=Path, default=ROOT / "model_store")
    parser.add_argument("--model", default="demo-d")
    parser.add_argument(
        "--no-random-vgg",
        action="store_true",
        help="skip the posteriors of a random-weight tiny D (exported with torch, the train extra)",
    )
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (20 if args.device == "cuda" else 5)
    args.sizes = (
        [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
        if args.sizes
        else list(STREAM_SIZES)
    )
    args.scales = [int(q) for q in args.scales.split(",")]
    return args


def open_models(args: argparse.Namespace) -> tuple[dict, str | None]:
    """The models whose posteriors are compared, ``{name: (engine, what)}``, the first the
    store's; and why the random-weight VGG is missing, if it is."""
    from service.core.engine import EngineOptions, open_engine

    engine = open_engine(ModelStore(args.store), args.model, EngineOptions(device=args.device))
    engines = {args.model: (engine, f"{args.store.name}/{args.model}")}
    if args.no_random_vgg:
        return engines, None
    try:
        engines[RANDOM_VGG] = (random_vgg(args.device), RANDOM_VGG_NOTE)
    except Exception as err:  # no torch, or the tests' helpers missing
        return engines, f"{type(err).__name__}: {err}"[:2000]
    return engines, None


def graph_figures(graphs: dict, graph_info: dict, image, q: int, p, ref, repeats: int):
    """Each graph variant's time and difference from Pillow (``ref``) for ``image`` at ``q``, and
    its network inputs; a variant that fails to run is dropped from ``graphs`` with its error."""
    row, inputs = {}, {}
    for variant in VARIANTS:
        row.update({f"graph_{variant}_{k}": None for k in ("ms", "max_diff", "frac_off")})
        graph = graphs[variant]
        if graph is None:
            continue
        try:
            x = graph.rescaled_input(image, q, p)  # warm-up, and the output compared
        except pg.PreprocessFailed as err:
            where = f"run at {image.width}x{image.height} Q={q}"
            graph_info[variant]["error"] = f"{where}: {err}"[:2000]
            graphs[variant] = None
            continue
        row[f"graph_{variant}_ms"] = median_ms(repeats, graph_path, graph, image, q, p)
        row[f"graph_{variant}_max_diff"], row[f"graph_{variant}_frac_off"] = difference(x, ref, p)
        inputs[variant] = x
    return row, inputs


def torch_figures(torch_run, image, size: tuple[int, int], p, ref, repeats: int) -> dict:
    """The torch peer's times (on the device, and copied back) and difference from Pillow."""
    keys = ("torch_ms", "torch_to_host_ms", "torch_max_diff", "torch_frac_off")
    if torch_run is None:
        return dict.fromkeys(keys)
    pixels = np.asarray(image)
    y = torch_run(pixels, size, p, True)
    torch_run(pixels, size, p, False)
    row = {
        key: median_ms(repeats, torch_path, torch_run, image, size, p, to_host)
        for key, to_host in (("torch_ms", False), ("torch_to_host_ms", True))
    }
    row["torch_max_diff"], row["torch_frac_off"] = difference(y, ref, p)
    return row


def summarise(rows: list[dict], posterior_rows: dict[str, list[dict]]) -> dict:
    def ratio(key: str) -> float | None:
        pairs = [(r["pillow_ms"], r[key]) for r in rows if r[key] is not None]
        if not pairs:
            return None
        return round(sum(a for a, _ in pairs) / sum(b for _, b in pairs), 3)

    def worst(key: str) -> float | None:
        values = [r[key] for r in rows if r[key] is not None]
        return max(values) if values else None

    def total(key: str) -> float | None:
        complete = rows and all(r[key] is not None for r in rows)
        return round(sum(r[key] for r in rows), 2) if complete else None

    graphs = [f"graph_{v}" for v in VARIANTS]
    return {
        "pillow_ms_total": round(sum(r["pillow_ms"] for r in rows), 2),
        **{f"{k}_total": total(k) for k in (*(f"{g}_ms" for g in graphs), "torch_ms")},
        "torch_to_host_ms_total": total("torch_to_host_ms"),
        # Pillow's total time over the candidate's (> 1: the candidate is faster).
        **{f"speedup_{k}": ratio(f"{k}_ms") for k in (*graphs, "torch", "torch_to_host")},
        **{f"max_diff_{k}": worst(f"{k}_max_diff") for k in (*graphs, "torch")},
        **{f"max_frac_off_{k}": worst(f"{k}_frac_off") for k in (*graphs, "torch")},
        # Posteriors of every model checked (per model under "posteriors").
        **posterior_summary([r for model_rows in posterior_rows.values() for r in model_rows]),
    }


def machine_info(device: str) -> dict:
    return {
        "slug": machine.slug(device),
        "cpu": machine.cpu_model(),
        "cores": len(__import__("os").sched_getaffinity(0)),
        "gpus": machine.gpus() if device == "cuda" else [],
        "load_average": machine.load_average(),
        "python": platform.python_version(),
        "versions": machine.versions(),
        "onnxruntime_providers": ort.get_available_providers(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    from service.core.protocol import dense_views

    engines, random_vgg_error = open_models(args)
    p = engines[args.model][0].manifest.preprocessing
    graphs, graph_info = open_graphs(args.device)
    torch_run, torch_info = torch_peer(args.device)
    rows, posterior_rows = [], {name: [] for name in engines}
    for index, (width, height) in enumerate(args.sizes):
        image = photo(width, height, seed=index)
        for q in args.scales:
            out_w, out_h = rescaled_size(width, height, q)
            row = {
                "width": width,
                "height": height,
                "q": q,
                "out_width": out_w,
                "out_height": out_h,
            }
            ref = to_input(rescale(image, q), p)
            row["pillow_ms"] = median_ms(args.repeats, pillow_path, image, q, p)
            figures, graph_inputs = graph_figures(
                graphs, graph_info, image, q, p, ref, args.repeats
            )
            row |= figures | torch_figures(torch_run, image, (out_h, out_w), p, ref, args.repeats)
            rows.append(row)
            for name, (model, _) in engines.items():
                mp = model.manifest.preprocessing
                if mp == p:
                    model_ref, inputs = ref, graph_inputs
                else:
                    model_ref = to_input(rescale(image, q), mp)
                    inputs = {v: graphs[v].rescaled_input(image, q, mp) for v in graph_inputs}
                posterior_rows[name].append(
                    posterior_row(dense_views, model, model_ref, inputs, width, height, q)
                )
        print(f"{width}x{height} done ({time.perf_counter() - started:.0f} s)", flush=True)
    summary = summarise(rows, posterior_rows)
    result = {
        "probe": "preprocess_graph_gpu",
        "device": args.device,
        "dry_run": args.device == "cpu",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(args.device),
        "repeats": args.repeats,
        "scales": args.scales,
        "preprocessing": p.model_dump(),
        "graphs": graph_info,
        "torch": torch_info,
        "posteriors": {
            "views": "dense with flip",
            "random_vgg_error": random_vgg_error,
            "models": {
                name: {
                    "what": what,
                    "provider": model.provider,
                    "preprocessing": model.manifest.preprocessing.model_dump(),
                    "rows": posterior_rows[name],
                    "summary": posterior_summary(posterior_rows[name]),
                }
                for name, (model, what) in engines.items()
            },
        },
        "rows": rows,
        "summary": summary,
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
