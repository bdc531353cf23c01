"""Benchmark models: multiply-adds of the fully-convolutional nets counted analytically from
Table 1's layer lists, and exported stores of full-size VGG nets (random weights) cached under
``bench/.cache/`` keyed by everything that changes the exported file."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path

from model_store import ModelStore

log = logging.getLogger(__name__)

CACHE_VERSION = 2
"""Bump when the way benchmark stores are built changes."""

CROP = 224
FC6_KERNEL = 7

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """A store entry to build: config, widths, classes, seed, training scale."""

    name: str
    config: str
    width: float = 1.0
    fc_width: int = 4096
    num_classes: int = 1000
    seed: int = 0
    train_scale: int = 256
    dtype: str = "float32"  # of the ONNX export: "float32" or "float16" (verydeep export --fp16)

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def with_dtype(self, dtype: str) -> ModelSpec:
        """The same net (same seed, same weights) exported in ``dtype``."""
        return replace(self, dtype=dtype)


VGG16 = ModelSpec("vgg16", "D", seed=16)
VGG19 = ModelSpec("vgg19", "E", seed=19)
# Stand-ins for the demo store (reduced width, shapes-sized label set) when model_store/ has none.
SMALL_D = ModelSpec("small-d", "D", width=1 / 8, fc_width=256, num_classes=10, seed=1)
SMALL_E = ModelSpec("small-e", "E", width=1 / 8, fc_width=256, num_classes=10, seed=2)
TINY_D = ModelSpec("tiny-d", "D", width=1 / 16, fc_width=64, num_classes=5, seed=1)


# --- multiply-adds -----------------------------------------------------------------------------


def layer_list(config: str) -> list[int | tuple[int, int] | str]:
    from training.vgg import LAYERS  # the single source of Table 1

    return list(LAYERS[config])


def conv_macs(
    config: str,
    height: int,
    width: int,
    *,
    width_mult: float = 1.0,
    fc_width: int = 4096,
    num_classes: int = 1000,
) -> dict[str, int]:
    """Multiply-adds of the fully-convolutional net on one ``3 x height x width`` input, by part.

    A k x k conv producing ``C_out x H x W`` from ``C_in`` channels costs ``H W C_out C_in k^2``
    (biases, ReLU, pooling and LRN are not multiply-adds). 3x3 convs keep the size (padding 1),
    1x1 convs too, max-pools floor-halve it. fc6 is a 7x7 conv without padding on the last
    feature map, fc7 and fc8 1x1 convs on fc6's output map.
    """
    from training.vgg import scaled

    h, w, channels = height, width, 3
    features = 0
    for spec in layer_list(config):
        if spec == "M":
            h, w = h // 2, w // 2
        elif spec == "LRN":
            continue
        else:
            kernel, out = spec if isinstance(spec, tuple) else (3, spec)
            out = scaled(out, width_mult)
            features += h * w * out * channels * kernel * kernel
            channels = out
    oh, ow = h - FC6_KERNEL + 1, w - FC6_KERNEL + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"{height}x{width} is smaller than the {CROP}x{CROP} crop")
    positions = oh * ow
    fc6 = positions * fc_width * channels * FC6_KERNEL * FC6_KERNEL
    fc7 = positions * fc_width * fc_width
    fc8 = positions * num_classes * fc_width
    return {
        "features": features,
        "fc6": fc6,
        "fc7": fc7,
        "fc8": fc8,
        "total": features + fc6 + fc7 + fc8,
        "score_map": positions,
    }


def spec_macs(spec: ModelSpec, height: int, width: int) -> int:
    return conv_macs(
        spec.config,
        height,
        width,
        width_mult=spec.width,
        fc_width=spec.fc_width,
        num_classes=spec.num_classes,
    )["total"]


def torch_hook_macs(module: object, height: int, width: int) -> int:
    """Multiply-adds of every Conv2d/Linear in a torch module, counted with forward hooks on a
    real forward pass (the check on ``conv_macs``)."""
    import torch
    from torch import nn

    assert isinstance(module, nn.Module)
    total = 0

    def conv_hook(m: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(m, nn.Conv2d)
        kh, kw = m.kernel_size
        total += output.numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(m, nn.Linear)
        total += output.numel() * m.in_features

    handles = []
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        with torch.inference_mode():
            module.eval()(torch.zeros(1, 3, height, width))
    finally:
        for h in handles:
            h.remove()
    return total


# --- stores ------------------------------------------------------------------------------------


RELU_GAIN = 2**0.5
"""Glorot's uniform init halves the signal's variance at every ReLU: over 16 layers the class
scores would shrink 256-fold and every posterior be uniform to 1e-5. Scaling each weight by
sqrt(2) (He's gain) keeps activations near unit size, as in a trained net, so that top-1 answers
mean something and no activation drifts towards denormal floats."""


def build_torch(spec: ModelSpec):  # -> training.vgg.VGG
    """The spec's VGG with deterministic random weights (Glorot uniform x sqrt(2)): the same seed
    gives the same weights, so a torch copy of a cached ONNX export is rebuilt, not stored."""
    import torch
    from torch import nn

    from training.vgg import build_vgg

    torch.manual_seed(spec.seed)
    model = build_vgg(
        spec.config, spec.num_classes, width=spec.width, fc_width=spec.fc_width, init="glorot"
    ).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                m.weight.mul_(RELU_GAIN)
    return model


def _code_parts(packages: tuple[str, ...], source: str) -> list[str]:
    """What a cached artefact depends on: the versions of ``packages`` and the hash of the
    repository file ``source`` that makes it."""
    parts = []
    for pkg in packages:
        try:
            parts.append(f"{pkg}{metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{pkg}-none")
    path = Path(__file__).resolve().parent.parent / source
    if path.exists():
        parts.append(hashlib.sha256(path.read_bytes()).hexdigest()[:12])
    return parts


def _versions_key() -> str:
    parts = [
        f"cache{CACHE_VERSION}",
        *_code_parts(("verydeep", "torch", "onnx"), "training/export.py"),
    ]
    return "-".join(parts)


def cache_root(cache_dir: Path) -> Path:
    """``cache_dir``, created, with a ``.gitignore`` that keeps it out of git."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    ignore = cache_dir / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# benchmark cache: exported models and images, rebuilt on demand\n*\n")
    return cache_dir


def ensure_store(cache_dir: Path, specs: list[ModelSpec], *, verify: bool = True) -> ModelStore:
    """A store holding ``specs``, exported once and reused while nothing that shapes the export
    changed (versions of verydeep, torch, onnx, training/export.py, and the specs)."""
    key = hashlib.sha256((_versions_key() + "".join(s.key() for s in specs)).encode()).hexdigest()[
        :16
    ]
    names = "+".join(s.name + ("-fp16" if s.dtype == "float16" else "") for s in specs)
    root = cache_root(cache_dir) / f"store-{names}-{key}"
    done = root / ".complete"
    if done.exists():
        return ModelStore(root)
    if root.exists():
        shutil.rmtree(root)
    store = ModelStore(root)
    for spec in specs:
        _export(spec, store, verify=verify)
    done.write_text(json.dumps({"versions": _versions_key(), "specs": [asdict(s) for s in specs]}))
    for stale in root.parent.glob(f"store-{names}-*"):
        if stale != root:  # the same models exported by an older version: 1 GB each
            shutil.rmtree(stale, ignore_errors=True)
    return store


def _export(spec: ModelSpec, store: ModelStore, *, verify: bool) -> None:
    from model_store import Preprocessing, TrainScale
    from training.export import VERIFY_SIZES, export_to_store

    started = time.perf_counter()
    log.info(
        "exporting %s (config %s, width %g, %s) ...", spec.name, spec.config, spec.width, spec.dtype
    )
    export_to_store(
        build_torch(spec),
        store,
        spec.name,
        labels=[f"class-{i:04d}" for i in range(spec.num_classes)],
        preprocessing=Preprocessing(scale=1 / 255, mean=IMAGENET_MEAN, std=IMAGENET_STD),
        train_scale=TrainScale(min=spec.train_scale, max=spec.train_scale),
        source="bench (random Glorot weights)",
        verify_sizes=VERIFY_SIZES if verify else VERIFY_SIZES[:1],
        dtype=spec.dtype,
    )
    log.info("exported %s in %.1f s", spec.name, time.perf_counter() - started)


def onnx_bytes(store: ModelStore) -> int:
    return sum(p.stat().st_size for p in store.root.glob("*/*.onnx"))


# --- int8 twins of cached stores (bench/suites/int8.py) ----------------------------------------

INT8_CACHE_VERSION = 1
"""Bump when the way int8 twins are built changes."""

INT8_CALIBRATION_PHOTOS = 8  # training/quantize.py's minimum
INT8_CALIBRATION_SIZES = ((640, 480), (480, 640), (1024, 768), (800, 800), (1280, 720))
INT8_CALIBRATION_SEED = 5000  # photos of their own: the suite measures accuracy on other seeds


def _int8_key(float_entry) -> str:  # float_entry: model_store.StoreEntry
    parts = [f"int8cache{INT8_CACHE_VERSION}", float_entry.manifest.onnx.sha256]
    parts += _code_parts(("onnxruntime-gpu", "onnxruntime", "onnx"), "training/quantize.py")
    scales = float_entry.manifest.test_scales
    parts.append(json.dumps([INT8_CALIBRATION_PHOTOS, INT8_CALIBRATION_SIZES, scales]))
    parts.append(str(INT8_CALIBRATION_SEED))
    return hashlib.sha256("-".join(parts).encode()).hexdigest()[:16]


def int8_calibration_folder(cache_dir: Path) -> Path:
    """``INT8_CALIBRATION_PHOTOS`` photo-like JPEGs (``bench/images.py``) of several sizes."""
    from bench import images

    folder = cache_root(cache_dir) / f"int8-calibration-seed{INT8_CALIBRATION_SEED}"
    folder.mkdir(exist_ok=True)
    for i in range(INT8_CALIBRATION_PHOTOS):
        w, h = INT8_CALIBRATION_SIZES[i % len(INT8_CALIBRATION_SIZES)]
        path = folder / f"photo-{i:02d}-{w}x{h}.jpg"
        if not path.exists():
            path.write_bytes(images.jpeg(w, h, seed=INT8_CALIBRATION_SEED + i, quality=90))
    return folder


def ensure_int8_store(cache_dir: Path, float_entry) -> ModelStore:
    """A store holding ``<name>-int8``, the int8 twin of the cached float32 ``float_entry``:
    its very ONNX file quantised by ``training/quantize.py`` (QDQ, per-channel weights, MinMax,
    verified against the float32 graph) and calibrated as ``verydeep export --int8`` calibrates,
    on ``INT8_CALIBRATION_PHOTOS`` photos whole at the entry's test scales; built once
    (full-size VGG-16: 40 s on 2 cores) and reused while neither file nor quantiser changed."""
    import tempfile

    from model_store import OnnxInfo, sha256_file
    from training import quantize

    m = float_entry.manifest
    key = _int8_key(float_entry)
    root = cache_root(cache_dir) / f"store-{m.name}-int8-{key}"
    done = root / ".complete"
    if done.exists():
        return ModelStore(root)
    if root.exists():
        shutil.rmtree(root)
    started = time.perf_counter()
    folder = int8_calibration_folder(cache_dir)
    scales = list(m.test_scales)
    count, inputs = quantize.calibration_inputs(folder, m.preprocessing, scales)
    log.info("quantising %s to int8 on %d photos at Q=%s ...", m.name, count, scales)
    with tempfile.TemporaryDirectory(prefix="bench-int8-", dir=cache_root(cache_dir)) as tmp:
        int8_path = Path(tmp) / "model.onnx"
        check = quantize.quantize_verified(
            float_entry.onnx_path,
            int8_path,
            count,
            inputs,
            scales=scales,
            input_name=m.onnx.input,
            output_name=m.onnx.output,
            features_name=m.onnx.features,
        )
        manifest = m.model_copy(
            update={
                "name": f"{m.name}-int8",
                "onnx": OnnxInfo(
                    **{**m.onnx.model_dump(), "dtype": "int8", "sha256": sha256_file(int8_path)}
                ),
                "provenance": m.provenance.model_copy(
                    update={
                        "source": f"{m.provenance.source}, int8 twin (bench)",
                        "metrics": {
                            **m.provenance.metrics,
                            "int8_calibration_images": check.images,
                            "int8_calibration_scales": scales,
                            "int8_max_posterior_diff": round(check.max_posterior_diff, 6),
                            "int8_top1_agreement": check.top1_agreement,
                            "int8_reduce_range": check.reduce_range,
                        },
                    }
                ),
            }
        )
        store = ModelStore(root)
        store.write(manifest, int8_path)
    quantise_s = time.perf_counter() - started
    done.write_text(json.dumps({"key": key, "float": str(float_entry.path), "seconds": quantise_s}))
    log.info("quantised %s in %.1f s", m.name, quantise_s)
    for stale in root.parent.glob(f"store-{m.name}-int8-*"):
        if stale != root:
            shutil.rmtree(stale, ignore_errors=True)
    return store
