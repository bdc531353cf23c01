"""5. Large photos: decode + rescale of a 12-megapixel JPEG (4000x3000, quality 90) to Q=512 with
the service's draft-mode decode (libjpeg's DCT scaling) against a full decode followed by the same
rescale; then whether the answers agree: pixel differences of the two rescaled images and the
model's top-1 on each."""

from __future__ import annotations

import numpy as np

from bench import images
from bench.common import interleaved
from bench.context import Context
from bench.models import cache_root
from bench.report import Figure, Target
from bench.stats import median, ratio, summary

NAME = "decode"
SIZE = (4000, 3000)
Q = 512
TARGET = Target(">=", 3.0)


def photo_bytes(ctx: Context, seed: int) -> bytes:
    path = cache_root(ctx.cache_dir) / f"photo-{SIZE[0]}x{SIZE[1]}-q90-seed{seed}.jpg"
    if not path.exists():
        path.write_bytes(images.jpeg(*SIZE, seed=seed, quality=90))
    return path.read_bytes()


def run(ctx: Context) -> tuple[list[Figure], dict]:
    from model_store.imaging import decode, rescale

    seeds = list(range(100, 100 + ctx.mode.decode_images))
    photos = [photo_bytes(ctx, s) for s in seeds]
    data = photos[0]

    def draft(d: bytes = data):
        return rescale(decode(d, max_scale=Q).image, Q)

    def full(d: bytes = data):
        return rescale(decode(d, max_scale=None).image, Q)

    def floor(d: bytes = data):
        return _decode_at_one_eighth(d)

    times = interleaved(
        {"draft": draft, "full": full, "floor": floor}, reps=ctx.mode.decode_reps, warmup=1
    )
    draft_s, full_s, floor_s = median(times["draft"]), median(times["full"]), median(times["floor"])
    decoded_size = decode(data, max_scale=Q).image.size

    from service.core.engine import Engine, EngineOptions

    engine = Engine(ctx.model_entry(), EngineOptions(device="cpu"))
    agreement = [_agreement(engine, draft(d), full(d)) for d in photos]
    del engine
    top1 = sum(a["top1_equal"] for a in agreement)
    max_px = max(a["max_abs_pixel_diff"] for a in agreement)
    mean_px = float(np.mean([a["mean_abs_pixel_diff"] for a in agreement]))
    figure = Figure(
        benchmark=NAME,
        label=f"draft decode+rescale {SIZE[0]}x{SIZE[1]} q90 -> Q={Q}",
        value=draft_s * 1e3,
        unit="ms",
        peer_label="full decode+rescale",
        peer=full_s * 1e3,
        ratio=ratio(full_s, draft_s),
        ratio_label="full/draft",
        target=TARGET,
        note=(
            f"pixels max {max_px:.0f} / mean {mean_px:.2f}; top-1 agrees {top1}/{len(agreement)}; "
            f"libjpeg at 1/8 alone {floor_s * 1e3:.1f} ms"
        ),
        details={"agreement": agreement},
    )
    details = {
        "jpeg_bytes": [len(p) for p in photos],
        "draft_decoded_size": list(decoded_size),
        "draft_s": summary(times["draft"]),
        "full_s": summary(times["full"]),
        "one_eighth_decode_s": summary(times["floor"]),
        "agreement": agreement,
    }
    return [figure], details


def _decode_at_one_eighth(data: bytes) -> object:
    """libjpeg's decode at its smallest DCT scale, no rescale: nearly all of it is entropy
    decoding, which every scale pays in full. The floor under the draft decode's time."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (im.width // 8, im.height // 8))
        im.load()
        return im.size


def _agreement(engine, a, b) -> dict[str, object]:
    """Pixel differences of two rescaled images and the served model's dense answer on each."""
    from service.core.protocol import classify

    if a.size != b.size:
        return {
            "sizes": [a.size, b.size],
            "top1_equal": False,
            "max_abs_pixel_diff": 255,
            "mean_abs_pixel_diff": 255.0,
        }
    pa, pb = np.asarray(a, dtype=np.int16), np.asarray(b, dtype=np.int16)
    diff = np.abs(pa - pb)
    ra = classify([engine], a, [Q], flip=False).posterior
    rb = classify([engine], b, [Q], flip=False).posterior
    top5a, top5b = np.argsort(-ra)[:5], np.argsort(-rb)[:5]
    return {
        "size": list(a.size),
        "max_abs_pixel_diff": int(diff.max()),
        "mean_abs_pixel_diff": float(diff.mean()),
        "p99_abs_pixel_diff": float(np.percentile(diff, 99)),
        "top1_equal": bool(top5a[0] == top5b[0]),
        "top5_overlap": len(set(top5a.tolist()) & set(top5b.tolist())),
        "top1_probability": [float(ra[top5a[0]]), float(rb[top5b[0]])],
        "max_abs_posterior_diff": float(np.max(np.abs(ra - rb))),
    }
