"""3. Dense against multi-crop, both through the API on the same photo: measured time ratio
beside the theoretical multiply-add ratio counted from the layer list (dense: the whole rescaled
image once per view; multi-crop: 25 crops of 224 x 224 per scale, doubled with flip)."""

from __future__ import annotations

import httpx

from bench.common import interleaved
from bench.context import REQUEST_IMAGE, Context, post_image
from bench.models import CROP, spec_macs
from bench.report import Figure, Target
from bench.stats import median, ratio, summary

NAME = "multicrop"
TARGET = Target(">=", 4.0)


def theoretical_macs(spec, size: tuple[int, int], scales, flip: bool) -> dict[str, int]:
    """Multiply-adds of dense and multi-crop evaluation of a ``size = (width, height)`` image."""
    from model_store.imaging import rescaled_size

    views = 2 if flip else 1
    dense = crops = 0
    for q in scales:
        w, h = rescaled_size(*size, q)
        dense += views * spec_macs(spec, h, w)
        crops += views * 25 * spec_macs(spec, CROP, CROP)
    return {"dense": dense, "multicrop": crops}


def run(ctx: Context) -> tuple[list[Figure], dict]:
    mode = ctx.mode
    data = ctx.request_jpeg()
    scales = ",".join(str(q) for q in mode.multicrop_scales)
    flip = "true" if mode.multicrop_flip else "false"
    base = {"model": ctx.model.name, "scales": scales, "flip": flip, "top_k": "5"}
    url = ctx.classify_url()
    views: dict[str, int] = {}
    with httpx.Client(timeout=600.0) as client:

        def call(method: str):
            def go() -> None:
                r = post_image(client, url, data, {**base, "method": method})
                views[method] = r.json()["views"]

            return go

        times = interleaved(
            {"dense": call("dense"), "multicrop": call("multicrop")},
            reps=mode.multicrop_reps,
            warmup=1,
        )
    dense_s, crops_s = median(times["dense"]), median(times["multicrop"])
    macs = theoretical_macs(ctx.model, REQUEST_IMAGE, mode.multicrop_scales, mode.multicrop_flip)
    theory = ratio(macs["multicrop"], macs["dense"])
    measured = ratio(crops_s, dense_s)
    figure = Figure(
        benchmark=NAME,
        label=f"dense, Q={scales}, flip={flip} ({views.get('dense')} views)",
        value=dense_s * 1e3,
        unit="ms",
        peer_label=f"multi-crop ({views.get('multicrop')} crops)",
        peer=crops_s * 1e3,
        ratio=measured,
        ratio_label="multicrop/dense",
        target=TARGET,
        note=f"theory {theory:.1f}x by MACs",
        details={"theoretical_ratio": theory, "macs": macs},
    )
    details = {
        "scales": list(mode.multicrop_scales),
        "flip": mode.multicrop_flip,
        "views": views,
        "dense_s": summary(times["dense"]),
        "multicrop_s": summary(times["multicrop"]),
        "macs": macs,
        "theoretical_ratio": theory,
        "measured_ratio": measured,
        "measured_over_theory": ratio(measured, theory),
        "effective_gflops": {
            "dense": 2 * macs["dense"] / dense_s / 1e9,
            "multicrop": 2 * macs["multicrop"] / crops_s / 1e9,
        },
    }
    return [figure], details
