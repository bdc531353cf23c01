"""Images/s and GPU memory by test scale (GPU suite), and the answers against the CPU provider.

For each served model and each Q in 256, 384, 512, a fresh process
(``python -m bench.suites.scales``) loads the model with the service's ``Engine`` and classifies
the 640x480 photo with the service's ``classify`` (dense, flip: two views at Q; rescaling and
normalising included, JPEG decoding not), then reports its images/s and the GPU memory that
nvidia-smi gives for it. A fresh process per Q makes the memory that of this Q alone:
onnxruntime's arena keeps its largest allocation.

The peer is the float32 export of the same net on the CPU provider (the same seed gives the same
weights), run on the same photo: its images/s beside the GPU's, and the largest differences of the
posteriors and of the class scores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.context import Context
from bench.models import ensure_store
from bench.report import Figure
from bench.stats import median, ratio

NAME = "scales"
SCALES = (256, 384, 512)
REPO = Path(__file__).resolve().parents[2]
CPU_REPS = 2


def worker(store: Path, model: str, photo: Path, q: int, device: str, reps: int) -> dict:
    """Run the measurement in a fresh process and return what it printed."""
    command = [sys.executable, "-m", "bench.suites.scales"]
    command += [str(store), model, str(photo), str(q), device, str(reps)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(served: dict, reference: dict) -> dict:
    p, p_ref = np.asarray(served["posterior"]), np.asarray(reference["posterior"])
    s, s_ref = np.asarray(served["scores"]), np.asarray(reference["scores"])
    top5 = np.argsort(-p)[:5]
    top5_ref = np.argsort(-p_ref)[:5]
    return {
        "max_abs_posterior_diff": float(np.max(np.abs(p - p_ref))),
        "max_posterior": float(np.max(p_ref)),
        "max_abs_score_diff": float(np.max(np.abs(s - s_ref))),
        "max_abs_score": float(np.max(np.abs(s_ref))),
        "top1_same": bool(top5[0] == top5_ref[0]),
        "top5_overlap": len(set(top5.tolist()) & set(top5_ref.tolist())),
    }


def run(ctx: Context) -> tuple[list[Figure], dict]:
    from bench import machine

    store = ctx.store()
    reference = ensure_store(ctx.cache_dir, [s.with_dtype("float32") for s in ctx.served])
    photo = ctx.request_jpeg_path()
    figures, details = [], {}
    for spec in ctx.served:
        for q in SCALES:
            idle_mib = machine.gpu_memory_mib() if ctx.cuda else None
            served = worker(store.root, spec.name, photo, q, ctx.device, ctx.mode.reps)
            cpu = worker(reference.root, spec.name, photo, q, "cpu", CPU_REPS)
            agreement = compare(served, cpu)
            memory = served["gpu_memory_mib"]
            if memory is None and served["gpu_used_mib"] is not None and idle_mib is not None:
                memory = served["gpu_used_mib"] - idle_mib
            provider = served["provider"].removesuffix("ExecutionProvider")
            images_s = 1 / median(served["seconds"])
            cpu_images_s = 1 / median(cpu["seconds"])
            figures.append(
                Figure(
                    benchmark=NAME,
                    label=f"{spec.name} {spec.dtype} on {provider}, dense+flip, "
                    f"Q={q} ({served['input'][1]}x{served['input'][0]})",
                    value=images_s,
                    unit="images/s",
                    peer_label="float32 on CPU provider",
                    peer=cpu_images_s,
                    ratio=ratio(images_s, cpu_images_s),
                    ratio_label="images/s vs CPU",
                    note=(f"GPU {memory:,.0f} MiB; " if memory is not None else "")
                    + f"max |dp| {agreement['max_abs_posterior_diff']:.1e}, "
                    f"top-1 {'same' if agreement['top1_same'] else 'DIFFERS'}",
                    details={"gpu_memory_mib": memory, **agreement},
                )
            )
            details[f"{spec.name}@{q}"] = {
                "provider": served["provider"],
                "input": served["input"],
                "seconds": served["seconds"],
                "cpu_seconds": cpu["seconds"],
                "gpu_memory_mib": memory,
                "gpu_memory_source": "process" if served["gpu_memory_mib"] is not None else "delta",
                "gpu_used_mib": served["gpu_used_mib"],
                "gpu_idle_mib": idle_mib,
                **agreement,
            }
    return figures, details


def measure(store: Path, model: str, photo: Path, q: int, device: str, reps: int) -> dict:
    """What ``worker`` runs in its own process."""
    from bench import machine
    from bench.common import service_settings
    from model_store import ModelStore
    from model_store.imaging import decode
    from service.core.engine import Engine
    from service.core.protocol import ScaledImages, classify

    entry = ModelStore(store).read(model, verify=False)
    options = service_settings({"VERYDEEP_DEVICE": device}).engine_options()
    engine = Engine(entry, options)
    image = decode(photo.read_bytes(), max_scale=q).image
    x = ScaledImages(image).get(q, engine)
    scores = engine.scores(x[None]).mean(axis=(2, 3), dtype=np.float64)[0]
    result = classify([engine], image, scales=[q], flip=True)  # warm-up and the answer
    seconds = []
    for _ in range(reps):
        started = time.perf_counter()
        classify([engine], image, scales=[q], flip=True)
        seconds.append(time.perf_counter() - started)
    on_gpu = engine.provider == "CUDAExecutionProvider"
    return {
        "provider": engine.provider,
        "input": list(x.shape[1:]),
        "seconds": seconds,
        "posterior": result.posterior.tolist(),
        "scores": scores.tolist(),
        "gpu_memory_mib": machine.gpu_memory_mib(os.getpid()) if on_gpu else None,
        "gpu_used_mib": machine.gpu_memory_mib() if on_gpu else None,
    }


if __name__ == "__main__":
    store_arg, model_arg, photo_arg, q_arg, device_arg, reps_arg = sys.argv[1:7]
    print(
        json.dumps(
            measure(
                Path(store_arg), model_arg, Path(photo_arg), int(q_arg), device_arg, int(reps_arg)
            )
        )
    )
