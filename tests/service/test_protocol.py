"""The protocol module on its own: batching (one network call per scale and kind of view), crop
grid, view counts, averaging order, cancellation; with numpy stand-ins for the networks."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import pytest

from model_store import Manifest, Preprocessing
from model_store.imaging import rescale, to_input
from service.core.protocol import (
    Cancelled,
    Classification,
    MemberResult,
    classify,
    crop_offsets,
    dense_posteriors,
    model_posterior,
    multicrop_posteriors,
    softmax,
    top_k,
    views_per_scale,
)
from tests.service.helpers import sample_image

K = 4


@dataclass
class FakeModel:
    """Scores each input by fixed linear maps of its channel means; records every call."""

    name: str = "fake"
    classes: int = K
    test_scales: list[int] = field(default_factory=lambda: [224, 256])
    preprocessing: Preprocessing = field(default_factory=lambda: Preprocessing(mean=(0, 0, 0)))
    calls: list[tuple[int, ...]] = field(default_factory=list)

    @property
    def manifest(self) -> Manifest:
        return _manifest(self.name, self.classes, self.test_scales, self.preprocessing)

    def scores(self, batch: np.ndarray, cancel: threading.Event | None = None) -> np.ndarray:
        self.calls.append(batch.shape)
        n, _, h, w = batch.shape
        left = batch[:, :, :, : w // 2].mean(axis=(2, 3))
        right = batch[:, :, :, w // 2 :].mean(axis=(2, 3))
        features = np.concatenate([left, right], axis=1) / 40.0
        weights = np.random.default_rng(7).normal(size=(6, self.classes))
        logits = features @ weights
        return np.broadcast_to(
            logits[:, :, None, None], (n, self.classes, h // 32 - 6, w // 32 - 6)
        )


def _manifest(name: str, classes: int, scales: list[int], pre: Preprocessing) -> Manifest:
    return Manifest.model_validate(
        {
            "schema_version": 1,
            "name": name,
            "config": "D",
            "weight_layers": 16,
            "parameters": 1,
            "num_classes": classes,
            "labels": [f"c{i}" for i in range(classes)],
            "preprocessing": pre.model_dump(),
            "train_scale": {"min": 256, "max": 256},
            "test_scales": scales,
            "onnx": {"sha256": "0" * 64, "opset": 17},
            "provenance": {"source": "test", "created": "2026-01-01T00:00:00Z"},
        }
    )


def test_crop_offsets_touch_both_borders() -> None:
    assert crop_offsets(224) == [0, 0, 0, 0, 0]
    assert crop_offsets(229) == [0, 1, 2, 3, 5]
    assert crop_offsets(424) == [0, 50, 100, 150, 200]
    with pytest.raises(ValueError):
        crop_offsets(223)


def test_views_per_scale() -> None:
    assert views_per_scale("dense", True) == 2
    assert views_per_scale("dense", False) == 1
    assert views_per_scale("multicrop", True) == 50
    assert views_per_scale("multicrop", False) == 25
    assert views_per_scale("combined", True) == 52


def test_softmax_is_stable_and_normalized() -> None:
    p = softmax(np.array([[1000.0, 1000.0, 0.0], [0.0, 0.0, 0.0]], dtype=np.float32))
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(p[0], [0.5, 0.5, 0.0], atol=1e-12)


def test_dense_is_one_call_with_the_mirror_in_the_batch() -> None:
    model = FakeModel()
    x = np.random.default_rng(0).normal(size=(3, 256, 300)).astype(np.float32)
    views = dense_posteriors(model, x, flip=True)
    assert model.calls == [(2, 3, 256, 300)]
    assert views.shape == (2, K)
    mirrored = dense_posteriors(model, np.ascontiguousarray(x[:, :, ::-1]), flip=False)
    np.testing.assert_allclose(views[1], mirrored[0])


def test_multicrop_is_one_call_of_fifty_crops() -> None:
    model = FakeModel()
    x = np.random.default_rng(1).normal(size=(3, 260, 300)).astype(np.float32)
    views = multicrop_posteriors(model, x, flip=True)
    assert model.calls == [(50, 3, 224, 224)]
    first = dense_posteriors(model, np.ascontiguousarray(x[:, :224, :224]), flip=True)
    last = dense_posteriors(model, np.ascontiguousarray(x[:, 260 - 224 :, 300 - 224 :]), flip=True)
    np.testing.assert_allclose(views[[0, 25]], first)
    np.testing.assert_allclose(views[[24, 49]], last)


def test_model_posterior_means_views_then_combined_means_methods() -> None:
    image = sample_image()
    model = FakeModel()
    dense = model_posterior(model, image, [224, 256], flip=True, method="dense")
    crops = model_posterior(model, image, [224, 256], flip=True, method="multicrop")
    both = model_posterior(model, image, [224, 256], flip=True, method="combined")
    np.testing.assert_allclose(both.posterior, (dense.posterior + crops.posterior) / 2)
    assert (dense.views, crops.views, both.views) == (4, 100, 104)

    views = [
        dense_posteriors(model, to_input(rescale(image, q), model.preprocessing), True)
        for q in (224, 256)
    ]
    np.testing.assert_allclose(dense.posterior, np.concatenate(views).mean(axis=0))
    assert dense.posterior.sum() == pytest.approx(1.0)


def test_classify_batches_per_scale_and_averages_members() -> None:
    image = sample_image()
    a = FakeModel("a", test_scales=[224, 256])
    b = FakeModel("b", test_scales=[288], preprocessing=Preprocessing(mean=(9, 9, 9)))
    result = classify([a, b], image, None, flip=True, method="combined")
    assert a.calls == [(2, 3, 224, 258), (50, 3, 224, 224), (2, 3, 256, 295), (50, 3, 224, 224)]
    assert b.calls == [(2, 3, 288, 332), (50, 3, 224, 224)]
    assert isinstance(result, Classification)
    assert [(m.name, m.scales, m.views) for m in result.members] == [
        ("a", (224, 256), 104),
        ("b", (288,), 52),
    ]
    assert result.scales == [224, 256, 288]
    assert result.views == 104
    np.testing.assert_allclose(
        result.posterior, (result.members[0].posterior + result.members[1].posterior) / 2
    )
    given = classify([a, b], image, [240], flip=False)
    assert given.scales == [240] and given.views == 1


def test_classify_refuses_members_with_different_class_counts() -> None:
    with pytest.raises(ValueError, match="number of classes"):
        classify([FakeModel("a"), FakeModel("b", classes=3)], sample_image())


def test_cancel_stops_before_the_next_network_call() -> None:
    cancel = threading.Event()
    model = FakeModel()

    def scores_then_cancel(batch: np.ndarray, _: threading.Event | None = None) -> np.ndarray:
        cancel.set()
        return FakeModel.scores(model, batch)

    model.scores = scores_then_cancel  # type: ignore[method-assign]
    with pytest.raises(Cancelled):
        classify([model], sample_image(), [224, 256, 288], cancel=cancel)
    assert len(model.calls) == 1


def test_top_k_orders_by_probability_and_keeps_ties_stable() -> None:
    posterior = np.array([0.1, 0.4, 0.1, 0.4])
    assert top_k(posterior, 3) == [(1, 0.4), (3, 0.4), (0, 0.1)]
    assert isinstance(MemberResult("m", (224,), 2, posterior).posterior, np.ndarray)
