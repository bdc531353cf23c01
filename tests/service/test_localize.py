"""POST /localize (paper Appendix A) against the procedure computed by hand: both nets run with
onnxruntime directly on the rescaled views, every cell's box decoded, mirrored back, scaled and
clipped here, weighed by the classifier's per-cell softmax, and merged by the rule as written
(tests/service/test_merging.reference); the errors, the defaults and the metrics."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from model_store import ModelStore
from service.core.localize import cell_boxes
from service.core.localize import localize as localize_procedure
from service.core.localize_request import boxes_per_class
from service.core.registry import Registry
from service.http.app import create_app
from tests.service.helpers import PaperProtocol, encode, sample_image, settings_for
from tests.service.test_merging import reference

TOL = 1e-4


def post(client: TestClient, data: bytes, route: str = "/localize", **params: object):
    return client.post(route, params=params, content=data, headers={"content-type": "image/png"})


def localize(client: TestClient, data: bytes, **params: object) -> dict:
    response = post(client, data, **params)
    assert response.status_code == 200, response.text
    return response.json()


def error(response) -> dict:
    return response.json()["error"]


class ByHand:
    """The procedure of service/core/localize.py, written from its docstring with onnxruntime
    sessions of the store's files and none of the service's code."""

    def __init__(self, store: ModelStore, paper: PaperProtocol) -> None:
        self.store, self.paper = store, paper
        self.sessions: dict[str, ort.InferenceSession] = {}

    def session(self, name: str) -> ort.InferenceSession:
        if name not in self.sessions:
            self.sessions[name] = ort.InferenceSession(
                str(self.store.root / name / "model.onnx"), providers=["CPUExecutionProvider"]
            )
        return self.sessions[name]

    def run(self, name: str, image: Image.Image, q: int, flip: bool) -> np.ndarray:
        """The net's output maps of the views at ``q`` (the image's, then its mirror's)."""
        manifest = self.store.read(name).manifest
        x = self.paper.input(image, q, manifest.preprocessing).numpy()
        views = np.stack([x, x[:, :, ::-1]] if flip else [x])
        return self.session(name).run([manifest.onnx.output], {"image": views})[0]

    def rescaled(self, image: Image.Image, q: int) -> tuple[int, int]:
        _, h_q, w_q = self.paper.input(
            image, q, self.store.read("tiny-d").manifest.preprocessing
        ).shape
        return w_q, h_q

    def localize(
        self,
        locnet: str | Sequence[tuple[str, Sequence[int]]],
        classifiers: Sequence[str],
        image: Image.Image,
        scales: Sequence[int],
        flip: bool,
        k: int,
        mirror_back: bool = True,
    ) -> tuple[np.ndarray, list[tuple[int, np.ndarray, float]]]:
        """``locnet``: a net's name or a comma list of them, each at ``scales``; or pairs of
        a net and its own scales, the classifier then at every scale of any of them."""
        if isinstance(locnet, str):
            nets = [(name, list(scales)) for name in locnet.split(",")]
        else:
            nets = [(name, list(qs)) for name, qs in locnet]
        every_q = sorted({q for _, qs in nets for q in qs})
        width, height = image.size
        posteriors: dict[str, list[np.ndarray]] = {m: [] for m in classifiers}
        cells = {}
        for q in every_q:
            weights = 0.0
            for m in classifiers:
                scores = self.run(m, image, q, flip).astype(np.float64)
                mean = scores.mean(axis=(2, 3))
                posteriors[m] += list(np.exp(mean) / np.exp(mean).sum(1, keepdims=True))
                weights = weights + np.exp(scores) / np.exp(scores).sum(1, keepdims=True)
            cells[q] = weights / len(classifiers)
        views = []  # (box map, cell weights (K, h, w), mirrored, W_Q, H_Q, per class)
        for name, qs in nets:
            manifest = self.store.read(name).manifest
            per_class = manifest.localization.regression == "per-class"  # type: ignore[union-attr]
            for q in qs:
                box_maps = self.run(name, image, q, flip).astype(np.float64)
                w_q, h_q = self.rescaled(image, q)
                for v in range(len(box_maps)):
                    views.append((box_maps[v], cells[q][v], v == 1, w_q, h_q, per_class))
        posterior = np.mean([np.mean(p, axis=0) for p in posteriors.values()], axis=0)
        answers = []
        for cls in np.argsort(-posterior, kind="stable")[:k]:
            boxes, votes = [], []
            for box_map, weights, mirrored, w_q, h_q, per_class in views:
                p = box_map[4 * cls : 4 * cls + 4] if per_class else box_map[0:4]
                for i in range(p.shape[1]):
                    for j in range(p.shape[2]):
                        cx, cy = p[0, i, j] * 224 + 32 * j, p[1, i, j] * 224 + 32 * i
                        bw, bh = max(p[2, i, j], 0) * 224, max(p[3, i, j], 0) * 224
                        x0, x1 = cx - bw / 2, cx + bw / 2
                        if mirrored and mirror_back:
                            x0, x1 = w_q - x1, w_q - x0
                        box = np.array(
                            [
                                x0 * width / w_q,
                                (cy - bh / 2) * height / h_q,
                                x1 * width / w_q,
                                (cy + bh / 2) * height / h_q,
                            ]
                        )
                        boxes.append(np.clip(box, 0, [width, height, width, height]))
                        votes.append(weights[cls, i, j])
            clusters = reference(np.array(boxes), np.array(votes))
            heaviest = max(clusters, key=lambda c: c[1])
            answers.append((int(cls), heaviest[0], heaviest[1] / sum(c[1] for c in clusters)))
        return posterior, answers


@pytest.fixture(scope="module")
def by_hand(loc_registry: Registry, paper: PaperProtocol) -> ByHand:
    return ByHand(loc_registry.store, paper)


def check(body: dict, want: tuple[np.ndarray, list]) -> None:
    posterior, answers = want
    assert [p["index"] for p in body["predictions"]] == [cls for cls, _, _ in answers]
    for p, (cls, box, score) in zip(body["predictions"], answers, strict=True):
        assert p["probability"] == pytest.approx(posterior[cls], abs=1e-5)
        np.testing.assert_allclose(p["box"], box, atol=TOL * 100)
        assert p["box_score"] == pytest.approx(score, abs=TOL)


@pytest.mark.parametrize(
    ("model", "classifiers", "params", "scales", "flip"),
    [
        ("loc-pcr", ["tiny-d"], {"scales": "256,288"}, [256, 288], True),
        ("loc-pcr", ["tiny-d"], {"scales": "320", "flip": False, "top_k": 2}, [320], False),
        ("loc-scr", ["tiny-d", "tiny-e"], {"scales": "256"}, [256], True),
        (
            "loc-pcr",
            ["tiny-d", "tiny-e"],
            {"classify_with": "tiny-d,tiny-e"},
            [224, 256, 288],
            True,
        ),
        # Two nets, the union of their box sets merged (paper Appendix A).
        ("loc-pcr,loc-scr", ["tiny-d"], {"classify_with": "tiny-d", "scales": "256"}, [256], True),
        (
            "loc-scr,loc-pcr",
            ["tiny-d", "tiny-e"],
            {"classify_with": "tiny-de", "scales": "224,288", "top_k": 3},
            [224, 288],
            True,
        ),
    ],
)
def test_boxes_are_the_procedure_computed_by_hand(
    loc_client: TestClient,
    png: bytes,
    image: Image.Image,
    by_hand: ByHand,
    model: str,
    classifiers: list[str],
    params: dict,
    scales: list[int],
    flip: bool,
) -> None:
    body = localize(loc_client, png, model=model, **params)
    k = params.get("top_k", 5)
    assert body["model"] == model and body["scales"] == scales and body["flip"] is flip
    assert body["localizers"] == [{"model": n, "scales": scales} for n in model.split(",")]
    assert body["members"] == classifiers and len(body["predictions"]) == k
    check(body, by_hand.localize(model, classifiers, image, scales, flip, k))
    assert body["image"] == {"width": 300, "height": 260}
    for p in body["predictions"]:
        x0, y0, x1, y1 = p["box"]
        assert 0 <= x0 <= x1 <= 300 and 0 <= y0 <= y1 <= 260 and 0 < p["box_score"] <= 1


def test_one_cell_gives_one_box_per_class_with_all_the_evidence(
    loc_client: TestClient, by_hand: ByHand
) -> None:
    square = sample_image(224, 224, seed=3)
    body = localize(loc_client, encode(square), model="loc-pcr", scales="224", flip=False)
    assert body["boxes_per_class"] == 1
    box_map = by_hand.run("loc-pcr", square, 224, flip=False)[0]
    for p in body["predictions"]:
        cx, cy, w, h = box_map[4 * p["index"] : 4 * p["index"] + 4, 0, 0].astype(float) * 224
        want = np.clip([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 0, 224)
        np.testing.assert_allclose(p["box"], want, atol=1e-3)
        assert p["box_score"] == 1.0


def test_the_mirrored_views_boxes_are_mirrored_back(
    loc_client: TestClient, png: bytes, image: Image.Image, by_hand: ByHand
) -> None:
    """The mirrored view's boxes count in the unflipped image: left as the mirrored view has
    them, the answer would be another one."""
    body = localize(loc_client, png, model="loc-pcr", scales="288", top_k=3)
    check(body, by_hand.localize("loc-pcr", ["tiny-d"], image, [288], True, 3))
    unmirrored = by_hand.localize("loc-pcr", ["tiny-d"], image, [288], True, 3, False)
    differences = [
        np.max(np.abs(np.array(p["box"]) - box))
        for p, (_, box, _) in zip(body["predictions"], unmirrored[1], strict=True)
    ]
    assert max(differences) > 1.0


class WithTestScales:
    """An engine whose manifest says other test scales, to run two nets at scales of their own."""

    def __init__(self, engine: object, scales: list[int]) -> None:
        self._engine = engine
        self.manifest = engine.manifest.model_copy(update={"test_scales": scales})  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._engine, name)


def test_each_net_runs_at_its_own_scales_and_the_classifier_at_all(
    loc_registry: Registry, image: Image.Image, by_hand: ByHand
) -> None:
    """The paper's submission merged nets trained at S = 256 and S = 384: by default each net
    runs at its own test scales, the classifier at every one of them, and each box votes with
    the classifier's posterior at its own cell and scale."""
    models = loc_registry.models
    nets = [WithTestScales(models["loc-pcr"], [256]), WithTestScales(models["loc-scr"], [288])]
    result = localize_procedure(nets, [models["tiny-d"]], image, image.size, None, True, 4)
    assert result.scales == (256, 288) and result.views == 4
    assert result.localizers == (("loc-pcr", (256,)), ("loc-scr", (288,)))
    plan = [("loc-pcr", [256]), ("loc-scr", [288])]
    posterior, answers = by_hand.localize(plan, ["tiny-d"], image, [], True, 4)
    np.testing.assert_allclose(result.posterior, posterior, atol=1e-6)
    for got, (cls, box, score) in zip(result.predictions, answers, strict=True):
        assert got.index == cls and got.box_score == pytest.approx(score, abs=TOL)
        np.testing.assert_allclose(got.box, box, atol=TOL * 100)
    assert result.boxes_per_class == sum(boxes_per_class(image.size, qs, True) for _, qs in plan)


def test_the_union_of_two_nets_is_counted_and_limited(loc_registry: Registry, png: bytes) -> None:
    settings = settings_for(loc_registry.settings.model_store, max_localize_boxes=35)
    with TestClient(create_app(settings, registry=loc_registry)) as client:
        one = localize(client, png, model="loc-pcr", scales="256", classify_with="tiny-d")
        both = localize(client, png, model="loc-pcr,loc-scr", scales="256", classify_with="tiny-d")
        assert both["boxes_per_class"] == 2 * one["boxes_per_class"] == 24
        response = post(
            client, png, model="loc-pcr,loc-scr", scales="256,288", classify_with="tiny-d"
        )
        assert response.status_code == 422
        assert "72 boxes per class to merge of 2 localization nets" in error(response)["message"]
        before = client.get("/metrics").text
        localize(client, png, model="loc-pcr,loc-scr", scales="256", classify_with="tiny-d")
        after = client.get("/metrics").text
    for model in ("loc-pcr", "loc-scr", "tiny-d"):
        line = f'verydeep_views_total{{model="{model}"}}'
        assert metric(after, line) - metric(before, line) == 2, model


def metric(text: str, prefix: str) -> float:
    lines = [x for x in text.splitlines() if x.startswith(prefix)]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_cell_boxes_decode_mirror_scale_and_clip_a_hand_made_map(
    loc_registry: Registry,
) -> None:
    manifest = loc_registry.store.read("loc-pcr").manifest
    box_map = np.zeros((20, 1, 2), np.float32)
    box_map[4:8, 0, 0] = [0.5, 0.5, 0.25, 0.5]  # class 1, cell (0, 0): 56 x 112 about (112, 112)
    box_map[4:8, 0, 1] = [0.5, 0.5, 2.0, 2.0]  # cell (0, 1): 448 x 448 about (144, 112)
    got = cell_boxes(box_map, 1, manifest, (256, 224), (512, 448), mirrored=False)
    np.testing.assert_allclose(got[0], [168, 112, 280, 336])
    np.testing.assert_allclose(got[1], [0, 0, 512, 448])  # (-160, -224, 736, 672) clipped
    mirrored = cell_boxes(box_map, 1, manifest, (256, 224), (512, 448), mirrored=True)
    np.testing.assert_allclose(mirrored[0], [2 * (256 - 140), 112, 2 * (256 - 84), 336])


def test_the_ranking_is_the_classifiers_dense_posterior(loc_client: TestClient, png: bytes) -> None:
    body = localize(loc_client, png, model="loc-pcr", scales="256,288", top_k=5)
    classified = post(loc_client, png, "/classify", model="tiny-d", scales="256,288").json()
    assert [p["index"] for p in body["predictions"]] == [
        p["index"] for p in classified["predictions"]
    ]
    for a, b in zip(body["predictions"], classified["predictions"], strict=True):
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-9)
        assert a["label"] == b["label"]


def test_defaults_are_the_manifests(loc_client: TestClient, png: bytes) -> None:
    body = localize(loc_client, png, model="loc-scr")
    assert body["classified_by"] == "tiny-de" and body["members"] == ["tiny-d", "tiny-e"]
    assert body["scales"] == [224, 256, 288] and body["flip"] is True
    assert len(body["predictions"]) == 5 and set(body["timing_ms"]) == {
        "decode",
        "inference",
        "merge",
        "total",
    }


def test_the_only_localization_model_is_the_default(
    loc_registry: Registry, tmp_path: Path, png: bytes
) -> None:
    root = tmp_path / "store"
    for name in ("tiny-d", "loc-pcr"):
        shutil.copytree(loc_registry.store.root / name, root / name)
    registry = Registry(settings_for(root, warmup=False))
    registry.load()
    assert registry.ready and registry.default == "tiny-d"
    with TestClient(create_app(registry.settings, registry=registry)) as client:
        body = localize(client, png, scales="256")
        assert body["model"] == "loc-pcr" and body["classified_by"] == "tiny-d"
        assert post(client, png, "/classify", scales="256").json()["model"] == "tiny-d"


def test_models_lists_task_and_localization(loc_client: TestClient) -> None:
    listing = loc_client.get("/models").json()
    models = {m["name"]: m for m in listing["models"]}
    assert models["tiny-d"]["task"] == "classification" and models["tiny-d"]["localization"] is None
    assert models["loc-pcr"]["task"] == "localization"
    assert models["loc-pcr"]["localization"] == {
        "regression": "per-class",
        "tuned": "all",
        "classifier": "tiny-d",
    }
    assert models["loc-pcr"]["onnx"]["output"] == "boxes"
    assert listing["default"] == "tiny-d"
    (skipped,) = [s for s in listing["skipped"] if s["name"] == "with-loc"]
    assert skipped["kind"] == "ensemble" and "loc-pcr is a localization model" in skipped["reason"]
    assert [e["name"] for e in listing["ensembles"]] == ["tiny-de"]


@pytest.mark.parametrize(
    ("route", "params", "status", "code", "message"),
    [
        ("/localize", {"model": "nope"}, 404, "unknown_model", "unknown model 'nope'"),
        ("/localize", {"model": "tiny-d"}, 422, "unsupported_model", "is a classification model"),
        ("/localize", {"model": "tiny-de"}, 422, "invalid_parameter", "is an ensemble"),
        (
            "/localize",
            {"model": "loc-pcr,loc-scr"},
            422,
            "invalid_parameter",
            "name different classifiers ('loc-pcr': 'tiny-d', 'loc-scr': 'tiny-de')",
        ),
        ("/localize", {"model": "loc-pcr,tiny-d"}, 422, "unsupported_model", "'tiny-d' is a cl"),
        ("/localize", {"model": "loc-pcr,loc-other"}, 422, "invalid_parameter", "different lab"),
        ("/localize", {"model": "loc-pcr,loc-pcr"}, 422, "invalid_parameter", "listed twice"),
        ("/localize", {}, 422, "invalid_parameter", "loc-gone, loc-none, loc-other, loc-pcr"),
        ("/localize", {"model": "loc-other"}, 422, "invalid_parameter", "other labels"),
        ("/localize", {"model": "loc-none"}, 422, "invalid_parameter", "pass classify_with"),
        ("/localize", {"model": "loc-gone"}, 422, "invalid_parameter", "'gone', is not served"),
        (
            "/localize",
            {"model": "loc-pcr", "classify_with": "loc-scr"},
            422,
            "unsupported_model",
            "classify_with: 'loc-scr', a localization model",
        ),
        ("/localize", {"model": "loc-pcr", "classify_with": "nope"}, 404, "unknown_model", "nope"),
        ("/localize", {"model": "loc-pcr", "scales": "2_56"}, 422, "invalid_parameter", "scales"),
        ("/localize", {"model": "loc-pcr", "scales": "100"}, 422, "invalid_parameter", "scales"),
        ("/localize", {"model": "loc-pcr", "top_k": 6}, 422, "invalid_parameter", "exceeds the 5"),
        ("/localize", {"model": "loc-pcr", "top_k": "+3"}, 422, "invalid_parameter", "top_k"),
        (
            "/localize",
            {"model": "loc-pcr", "flip": ["true", "false"]},
            422,
            "invalid_parameter",
            "flip: given 2 times",
        ),
        (
            "/localize",
            {"model": "loc-pcr", "method": "dense"},
            422,
            "invalid_parameter",
            "unknown query parameter 'method'; this endpoint takes model, classify_with,",
        ),
        ("/classify", {"model": "loc-pcr"}, 422, "unsupported_model", "POST /localize"),
        ("/classify", {"model": "tiny-d,loc-pcr"}, 422, "unsupported_model", "/localize"),
        ("/classify", {"model": "with-loc"}, 404, "unknown_model", "localization model"),
        ("/features", {"model": "loc-scr"}, 422, "unsupported_model", "/localize"),
    ],
)
def test_bad_requests_get_the_services_errors(
    loc_client: TestClient, png: bytes, route: str, params: dict, status: int, code: str,
    message: str,
) -> None:  # fmt: skip
    response = post(loc_client, png, route, **params)
    assert response.status_code == status, response.text
    assert error(response)["code"] == code and message in error(response)["message"]


def test_an_undecodable_image_is_a_400(loc_client: TestClient) -> None:
    response = post(loc_client, b"not an image at all", model="loc-pcr")
    assert response.status_code == 400 and error(response)["code"] == "undecodable_image"


def test_more_boxes_than_the_limit_is_a_422_before_any_network(
    loc_registry: Registry, png: bytes
) -> None:
    settings = settings_for(loc_registry.settings.model_store, max_localize_boxes=35)
    with TestClient(create_app(settings, registry=loc_registry)) as client:
        calls = loc_registry.models["loc-pcr"].network_calls
        response = post(client, png, model="loc-pcr", scales="256,288")
        assert response.status_code == 422
        assert "36 boxes per class" in error(response)["message"]
        assert "VERYDEEP_MAX_LOCALIZE_BOXES" in error(response)["message"]
        assert loc_registry.models["loc-pcr"].network_calls == calls
        assert post(client, png, model="loc-pcr", scales="256").status_code == 200


def test_localizations_are_counted(loc_client: TestClient, png: bytes) -> None:
    value = metric
    before = loc_client.get("/metrics").text
    localize(loc_client, png, model="loc-pcr", scales="256,288")
    assert post(loc_client, png, model="nope").status_code == 404
    after = loc_client.get("/metrics").text
    for prefix, delta in (
        ('verydeep_views_total{model="loc-pcr"}', 4),
        ('verydeep_views_total{model="tiny-d"}', 4),
        ('verydeep_requests_total{route="/localize",status="200"}', 1),
        ('verydeep_requests_total{route="/localize",status="404"}', 1),
        ('verydeep_network_calls_total{model="loc-pcr"}', 2),
    ):
        assert value(after, prefix) - value(before, prefix) == delta, prefix
    assert value(after, 'verydeep_classify_seconds_count{phase="total"}') > value(
        before, 'verydeep_classify_seconds_count{phase="total"}'
    )


def test_the_openapi_document_describes_localize(loc_client: TestClient) -> None:
    document = loc_client.get("/openapi.json").json()
    operation = document["paths"]["/localize"]["post"]
    names = {p["name"] for p in operation["parameters"]}
    assert names == {"model", "classify_with", "scales", "flip", "top_k"}
    schema = json.dumps(document["components"]["schemas"]["LocalizedPrediction"])
    assert "box_score" in schema


def test_a_localization_past_the_request_timeout_is_a_504(
    loc_registry: Registry, png: bytes
) -> None:
    settings = settings_for(loc_registry.settings.model_store, request_timeout=0.001)
    with TestClient(create_app(settings, registry=loc_registry)) as client:
        response = post(client, png, model="loc-pcr", scales="256,288")
        assert response.status_code == 504 and error(response)["code"] == "timeout"
