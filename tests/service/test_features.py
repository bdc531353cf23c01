"""POST /features (paper Appendix B) against fc7 of the fully-convolutional net run separately
with torch: dense over the rescaled image, mirrored view averaged, scales pooled, L2-normalised,
ensembles concatenated; the binary answer, the errors, and an entry without the output."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from model_store import ModelStore
from service.core.registry import Registry
from service.http.app import create_app
from tests.conftest import TINY_FC
from tests.service.helpers import PaperProtocol, settings_for

TOL = 1e-5


def post(client: TestClient, png: bytes, headers: dict | None = None, **params: object):
    return client.post(
        "/features",
        params=params,
        content=png,
        headers={"content-type": "image/png", **(headers or {})},
    )


def features(client: TestClient, png: bytes, **params: object) -> dict:
    response = post(client, png, **params)
    assert response.status_code == 200, response.text
    return response.json()


def torch_descriptor(
    paper: PaperProtocol, name: str, image: Image.Image, scales: Sequence[int], flip: bool, pool
) -> np.ndarray:
    fcn, preprocessing, _ = paper.models[name]
    fc7 = torch.nn.Sequential(fcn.features, *fcn.head[:5])  # fc6, ReLU, dropout, fc7, ReLU
    per_scale = []
    with torch.no_grad():
        for q in sorted(scales) if pool == "stack" else scales:
            x = paper.input(image, q, preprocessing)[None]
            views = [x, x.flip(-1)] if flip else [x]
            per_scale.append(torch.stack([fc7(v)[0].double().mean((1, 2)) for v in views]).mean(0))
    pooled = torch.stack(per_scale).mean(0) if pool == "mean" else torch.cat(per_scale)
    return (pooled / pooled.norm()).numpy()


@pytest.mark.parametrize(
    ("scales", "flip", "pool"),
    [("256,320", True, "mean"), ("320,256", False, "stack"), ("288", True, "mean")],
)
def test_a_models_descriptor_is_fc7_pooled_and_normalised(
    client: TestClient, png: bytes, image: Image.Image, paper: PaperProtocol, scales, flip, pool
) -> None:
    body = features(client, png, model="tiny-d", scales=scales, flip=flip, pool=pool)
    qs = [int(q) for q in scales.split(",")]
    want = torch_descriptor(paper, "tiny-d", image, qs, flip, pool)
    assert (
        body["dimension"] == len(body["features"]) == TINY_FC * (len(qs) if pool == "stack" else 1)
    )
    assert body["scales"] == sorted(qs) and body["pool"] == pool and body["flip"] is flip
    np.testing.assert_allclose(body["features"], want, atol=TOL)
    assert np.linalg.norm(body["features"]) == pytest.approx(1.0, abs=1e-5)


def test_an_ensembles_descriptor_concatenates_its_members(
    client: TestClient, png: bytes, image: Image.Image, paper: PaperProtocol
) -> None:
    body = features(client, png, model="tiny-de", scales="256")
    assert body["members"] == ["tiny-d", "tiny-e"] and body["dimension"] == 2 * TINY_FC
    parts = [torch_descriptor(paper, n, image, [256], True, "mean") for n in ("tiny-d", "tiny-e")]
    both = np.concatenate(parts)
    np.testing.assert_allclose(body["features"], both / np.linalg.norm(both), atol=TOL)


def test_default_scales_are_each_models_test_scales(
    client: TestClient, png: bytes, service_store: ModelStore
) -> None:
    body = features(client, png, model="tiny-d")
    assert body["scales"] == sorted(service_store.read("tiny-d").manifest.test_scales)


def test_the_binary_answer_is_the_same_vector_as_npy(client: TestClient, png: bytes) -> None:
    response = post(client, png, {"accept": "application/x-npy"}, model="tiny-d", scales="256")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-npy"
    vector = np.load(io.BytesIO(response.content), allow_pickle=False)
    assert vector.dtype == np.float32 and vector.shape == (TINY_FC,)
    body = features(client, png, model="tiny-d", scales="256")
    np.testing.assert_allclose(vector, body["features"], atol=1e-7)


@pytest.mark.parametrize(
    ("params", "status", "code", "message"),
    [
        ({"pool": "max"}, 422, "invalid_parameter", "pool"),
        ({"scales": "2_56"}, 422, "invalid_parameter", "not a comma-separated list"),
        ({"pool": ["mean", "stack"]}, 422, "invalid_parameter", "pool: given 2 times"),
        ({"top_k": "3"}, 422, "invalid_parameter", "unknown query parameter 'top_k'"),
        ({"model": "nope"}, 404, "unknown_model", "unknown model 'nope'"),
    ],
)
def test_bad_requests_get_the_services_errors(
    client: TestClient, png: bytes, params: dict, status: int, code: str, message: str
) -> None:
    response = (
        post(client, png, model="tiny-d", **params)
        if "model" not in params
        else post(client, png, **params)
    )
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and message in error["message"]


def test_an_entry_exported_without_the_output_is_unsupported(
    service_store: ModelStore, tmp_path: Path, png: bytes
) -> None:
    root = tmp_path / "store"
    shutil.copytree(service_store.root / "tiny-d", root / "old-d")
    manifest_path = root / "old-d" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["name"] = "old-d"
    manifest["onnx"].pop("features", None)  # as written before the output existed
    manifest_path.write_text(json.dumps(manifest))
    registry = Registry(settings_for(root))
    registry.load()
    assert registry.ready, registry.problem
    with TestClient(create_app(registry.settings, registry=registry)) as client:
        response = post(client, png, model="old-d", scales="256")
        assert response.status_code == 422
        error = response.json()["error"]
        assert error["code"] == "unsupported_model" and "export it again" in error["message"]
        classified = client.post(
            "/classify",
            params={"scales": "256"},
            content=png,
            headers={"content-type": "image/png"},
        )
        assert classified.status_code == 200  # it still classifies


def test_features_are_counted_like_classifications(client: TestClient, png: bytes) -> None:
    before = client.get("/metrics").text
    features(client, png, model="tiny-d", scales="256,288", flip=True)
    after = client.get("/metrics").text

    def views(text: str) -> float:
        (line,) = [
            x for x in text.splitlines() if x.startswith('verydeep_views_total{model="tiny-d"}')
        ]
        return float(line.split()[-1])

    assert views(after) - views(before) == 4
