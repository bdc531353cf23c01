"""What the service tests share besides fixtures (those are in ``conftest.py``): the tiny models
of the session store, settings and a test client, sample images, a ``verydeep serve`` subprocess
with the tests' settings (the server under test of ``bench/server.py``), and the paper's test
protocol written independently with torch, to hold /classify against."""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from bench.server import Server
from model_store import ModelStore, Preprocessing, TrainScale
from service.settings import Settings
from tests.conftest import TINY_LABELS, TINY_PREPROCESSING, tiny_vgg
from training.export import export_to_store
from training.fully_conv import FullyConvVGG

with warnings.catch_warnings():
    # Starlette asks for httpx2 instead of httpx; the pinned dev tools have httpx.
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient  # noqa: F401 (for the tests)

ROOT = Path(__file__).resolve().parents[2]
"""The repository."""

BGR_PREPROCESSING = Preprocessing(
    color_order="BGR", scale=1 / 255, mean=(0.41, 0.46, 0.49), std=(0.23, 0.22, 0.24)
)
# name: (config, seed, train scale, preprocessing). tiny-a-bgr has other test scales
# ([224, 256, 288]) and another color order than tiny-d and tiny-e ([256, 384, 512]).
MODELS = {
    "tiny-d": ("D", 1, (256, 512), TINY_PREPROCESSING),
    "tiny-e": ("E", 2, (256, 512), TINY_PREPROCESSING),
    "tiny-a-bgr": ("A", 3, (256, 256), BGR_PREPROCESSING),
}
ENSEMBLES = {"tiny-de": ["tiny-d", "tiny-e"], "tiny-mixed": ["tiny-d", "tiny-a-bgr"]}
LOGIT_GAIN = 100.0
"""fc8 is scaled so that random-weight posteriors are far from uniform: views then disagree
enough that any slip in the protocol shows far above the comparison tolerance."""


def peaked_vgg(config: str, seed: int) -> torch.nn.Module:
    model = tiny_vgg(config, seed)
    with torch.no_grad():
        model.classifier[6].weight.mul_(LOGIT_GAIN)
    return model


def variants_store(
    root: Path, seed: int, dtypes: dict[str, str], calibration: Path | None = None
) -> ModelStore:
    """A store at ``root`` with one peaked tiny D exported once per ``{name: dtype}``
    (``calibration``: the images of the int8 exports)."""
    store = ModelStore(root)
    model = peaked_vgg("D", seed)
    for name, dtype in dtypes.items():
        export_to_store(
            model,
            store,
            name,
            labels=TINY_LABELS,
            preprocessing=TINY_PREPROCESSING,
            train_scale=TrainScale(min=256, max=256),
            source="test",
            dtype=dtype,
            calibration=calibration if dtype == "int8" else None,
        )
    return store


def full_and_half_store(root: Path, seed: int) -> ModelStore:
    """``full`` in float32 and ``half`` in float16 (``verydeep export --fp16``)."""
    return variants_store(root, seed, {"full": "float32", "half": "float16"})


class IsolatedSettings(Settings):
    """Settings from arguments only: a developer's VERYDEEP_* variables do not leak in."""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, **sources):  # type: ignore[override]
        return (init_settings,)


def settings_for(store: Path, **overrides: object) -> Settings:
    """Test settings: one onnxruntime thread (spinning thread pools crawl on a shared machine),
    the store loaded before the app takes requests, whatever else ``overrides`` says."""
    values: dict[str, object] = {
        "model_store": store,
        "intra_op_threads": 1,
        "background_load": False,
        **overrides,
    }
    return IsolatedSettings(**values)  # type: ignore[arg-type]


def sample_image(width: int = 300, height: int = 260, seed: int = 0) -> Image.Image:
    """A non-square RGB image with structure (gradients, blocks) and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 / width, y * 255 / height, (x + y) % 97 * 2.5], axis=-1)
    pixels[height // 4 : height // 2, width // 5 : width // 2] = (250, 30, 60)
    pixels += rng.normal(0, 25, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def encode(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def server_for(
    store: Path, log: Path, *, python_code: str | None = None, **overrides: object
) -> Server:
    """A ``verydeep serve`` subprocess of ``store`` (not started: ``with server_for(...) as s``)
    with the settings of :func:`settings_for`'s tests: a developer's ``VERYDEEP_*`` variables left
    out, one onnxruntime thread, and also ``tiny-d`` as the default model and no warm-up;
    ``overrides`` are settings by name (``MAX_QUEUE=2`` is ``VERYDEEP_MAX_QUEUE=2``); its output
    goes to ``log``."""
    env: dict[str, object] = {
        "VERYDEEP_INTRA_OP_THREADS": 1,
        "VERYDEEP_DEFAULT_MODEL": "tiny-d",
        "VERYDEEP_WARMUP": "false",
    }
    env |= {f"VERYDEEP_{name}": value for name, value in overrides.items()}
    return Server(
        store,
        env,
        log_path=log,
        inherit_settings=False,
        python_code=python_code,
        ready_timeout=90,
    )


class PaperProtocol:
    """Paper §3.2 with torch, one view per forward pass: torchvision's Resize on the PIL image,
    dense evaluation (score map averaged over space, softmax), 5x5 crops with flips, mean of
    posteriors per model and over the ensemble."""

    def __init__(self, models: dict[str, tuple[FullyConvVGG, Preprocessing, list[int]]]) -> None:
        self.models = models

    def posterior(
        self,
        names: Sequence[str],
        image: Image.Image,
        scales: Sequence[int] | None = None,
        flip: bool = True,
        method: str = "dense",
    ) -> np.ndarray:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.no_grad():
                return self._posterior(names, image, scales, flip, method)
        finally:
            torch.set_num_threads(threads)

    def _posterior(
        self,
        names: Sequence[str],
        image: Image.Image,
        scales: Sequence[int] | None,
        flip: bool,
        method: str,
    ) -> np.ndarray:
        per_model = []
        for name in names:
            fcn, preprocessing, test_scales = self.models[name]
            dense, crops = [], []
            for q in scales or test_scales:
                x = self.input(image, q, preprocessing)
                if method != "multicrop":
                    dense += [self.view(fcn, v) for v in self.mirrors(x, flip)]
                if method == "dense":
                    continue
                _, h, w = x.shape
                for i in range(5):
                    for j in range(5):
                        left, top = i * (w - 224) // 4, j * (h - 224) // 4
                        crop = x[:, top : top + 224, left : left + 224]
                        crops += [self.view(fcn, v) for v in self.mirrors(crop, flip)]
            parts = [torch.stack(views).mean(0) for views in (dense, crops) if views]
            per_model.append(torch.stack(parts).mean(0))
        return torch.stack(per_model).mean(0).numpy()

    @staticmethod
    def input(image: Image.Image, q: int, preprocessing: Preprocessing) -> torch.Tensor:
        resized = TF.resize(image, q, interpolation=InterpolationMode.BILINEAR)
        x = TF.pil_to_tensor(resized).double()
        if preprocessing.color_order == "BGR":
            x = x[[2, 1, 0]]
        mean = torch.tensor(preprocessing.mean, dtype=torch.float64).view(3, 1, 1)
        std = torch.tensor(preprocessing.std, dtype=torch.float64).view(3, 1, 1)
        return ((x * preprocessing.scale - mean) / std).float()

    @staticmethod
    def mirrors(x: torch.Tensor, flip: bool) -> list[torch.Tensor]:
        return [x, x.flip(-1)] if flip else [x]

    @staticmethod
    def view(fcn: FullyConvVGG, x: torch.Tensor) -> torch.Tensor:
        scores = fcn(x[None]).double().mean(dim=(2, 3))
        return torch.softmax(scores, dim=1)[0]


LOC_LABELS = TINY_LABELS
BOX_PRIOR = (0.5, 0.5, 0.6, 0.6)
"""The (cx, cy, w, h) the random box regressor's biases say: boxes of 134 pixels about each
window's centre, so that neighbouring cells' boxes overlap and merge."""
BOX_SPREAD = 0.15
"""The standard deviation of the regressed numbers around ``BOX_PRIOR`` (by the fc8 gain)."""


def box_vgg(seed: int, channels: int) -> torch.nn.Module:
    """A tiny A whose last layer regresses ``channels`` box numbers near ``BOX_PRIOR``."""
    from training.vgg import build_vgg

    torch.manual_seed(seed)
    model = build_vgg("A", channels, width=0.125, fc_width=32, init="glorot").eval()
    fc8 = model.classifier[6]
    with torch.no_grad():
        x = torch.randn(64, 3, 224, 224)
        spread = float(model(x).std())
        fc8.weight.mul_(BOX_SPREAD / spread)
        fc8.bias.copy_(torch.tensor(BOX_PRIOR).repeat(channels // 4))
    return model


def localization_store(root: Path, classifiers: ModelStore) -> ModelStore:
    """A store with ``tiny-d`` and ``tiny-e`` (copied from ``classifiers``), the ensemble
    ``tiny-de``, and localization entries: ``loc-pcr`` (per-class, ranked by tiny-d),
    ``loc-scr`` (single, ranked by tiny-de), ``loc-none`` (naming no classifier),
    ``loc-gone`` (naming one that is not in the store) and ``loc-other`` (other labels)."""
    import json
    import shutil

    from model_store import Localization

    store = ModelStore(root)
    for name in ("tiny-d", "tiny-e"):
        shutil.copytree(classifiers.root / name, root / name)
    k = len(LOC_LABELS)
    for name, regression, classifier, seed in (
        ("loc-pcr", "per-class", "tiny-d", 11),
        ("loc-scr", "single", "tiny-de", 12),
    ):
        loc = Localization(regression=regression, classifier=classifier)  # type: ignore[arg-type]
        export_to_store(
            box_vgg(seed, loc.box_channels(k)),
            store,
            name,
            labels=LOC_LABELS,
            preprocessing=TINY_PREPROCESSING,
            train_scale=TrainScale(min=256, max=256),
            source="test",
            localization=loc,
        )
    for name, classifier, labels in (
        ("loc-none", None, LOC_LABELS),
        ("loc-gone", "gone", LOC_LABELS),
        ("loc-other", "tiny-d", [f"other-{i}" for i in range(k)]),
    ):
        shutil.copytree(root / "loc-pcr", root / name)
        path = root / name / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest.update(name=name, labels=labels)
        manifest["localization"]["classifier"] = classifier
        path.write_text(json.dumps(manifest))
    store.write_ensembles({"tiny-de": ["tiny-d", "tiny-e"], "with-loc": ["tiny-d", "loc-pcr"]})
    return store
