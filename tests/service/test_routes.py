"""POST /classify against the paper's protocol written separately with torch (conftest), on
random-weight tiny models and a non-square 300x260 image; and the other routes' bodies."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

    from tests.service.helpers import PaperProtocol

TOL = 1e-4


def classify(client: TestClient, png: bytes, **params: object) -> dict:
    response = client.post(
        "/classify", params=params, files={"image": ("sample.png", png, "image/png")}
    )
    assert response.status_code == 200, response.text
    return response.json()


def probabilities(body: dict, k: int = 5) -> np.ndarray:
    """The returned posterior, back in class order (top_k = K returns every class)."""
    out = np.full(k, np.nan)
    for p in body["predictions"]:
        out[p["index"]] = p["probability"]
    return out


@pytest.mark.parametrize(
    ("scales", "flip"),
    [("256,384", True), ("256,384", False), ("224,320,448", True), ("300", False)],
)
def test_dense_matches_paper(
    client: TestClient, png: bytes, image: Image.Image, paper: PaperProtocol, scales, flip
) -> None:
    body = classify(client, png, model="tiny-d", scales=scales, flip=flip, method="dense")
    qs = [int(q) for q in scales.split(",")]
    want = paper.posterior(["tiny-d"], image, qs, flip, "dense")
    np.testing.assert_allclose(probabilities(body), want, atol=TOL)
    assert body["views"] == len(qs) * (2 if flip else 1)
    assert body["scales"] == qs
    assert body["flip"] is flip
    assert body["method"] == "dense"


@pytest.mark.parametrize(("flip", "views"), [(True, 50), (False, 25)])
def test_multicrop_matches_paper(
    client: TestClient, png: bytes, image: Image.Image, paper: PaperProtocol, flip, views
) -> None:
    body = classify(client, png, model="tiny-e", scales="256", flip=flip, method="multicrop")
    want = paper.posterior(["tiny-e"], image, [256], flip, "multicrop")
    np.testing.assert_allclose(probabilities(body), want, atol=TOL)
    assert body["views"] == views


def test_multicrop_two_scales_bgr_model(
    client: TestClient, png: bytes, image: Image.Image, paper: PaperProtocol
) -> None:
    body = classify(client, png, model="tiny-a-bgr", scales="224,288", method="multicrop")
    want = paper.posterior(["tiny-a-bgr"], image, [224, 288], True, "multicrop")
    np.testing.assert_allclose(probabilities(body), want, atol=TOL)
    assert body["views"] == 100


def test_combined_matches_paper(
    client: TestClient, png: bytes, image: Image.Image, paper: PaperProtocol
) -> None:
    body = classify(client, png, model="tiny-d", scales="256,320", method="combined")
    want = paper.posterior(["tiny-d"], image, [256, 320], True, "combined")
    np.testing.assert_allclose(probabilities(body), want, atol=TOL)
    assert body["views"] == 2 * (2 + 50)


def test_named_ensemble_with_default_scales(
    client: TestClient, png: bytes, image: Image.Image, paper: PaperProtocol
) -> None:
    body = classify(client, png, model="tiny-de")
    want = paper.posterior(["tiny-d", "tiny-e"], image, None, True, "dense")
    np.testing.assert_allclose(probabilities(body), want, atol=TOL)
    assert body["model"] == "tiny-de"
    assert body["members"] == ["tiny-d", "tiny-e"]
    assert body["scales"] == [256, 384, 512]
    assert body["views"] == 6


def test_on_the_fly_ensemble_members_use_their_own_test_scales(
    client: TestClient, png: bytes, image: Image.Image, paper: PaperProtocol
) -> None:
    """tiny-d tests at [256, 384, 512], tiny-a-bgr at [224, 256, 288]: each keeps its own, and
    ``scales`` reports every Q used, ascending."""
    body = classify(client, png, model="tiny-d,tiny-a-bgr")
    want = paper.posterior(["tiny-d", "tiny-a-bgr"], image, None, True, "dense")
    np.testing.assert_allclose(probabilities(body), want, atol=TOL)
    assert body["model"] == "tiny-d,tiny-a-bgr"
    assert body["members"] == ["tiny-d", "tiny-a-bgr"]
    assert body["scales"] == [224, 256, 288, 384, 512]
    assert body["views"] == 6


def test_on_the_fly_ensemble_with_given_scales_and_multicrop(
    client: TestClient, png: bytes, image: Image.Image, paper: PaperProtocol
) -> None:
    body = classify(client, png, model="tiny-e,tiny-d", scales="240", method="combined")
    want = paper.posterior(["tiny-e", "tiny-d"], image, [240], True, "combined")
    np.testing.assert_allclose(probabilities(body), want, atol=TOL)
    assert body["members"] == ["tiny-e", "tiny-d"]
    assert body["views"] == 52


def test_defaults_are_the_default_model_at_its_test_scales(
    client: TestClient, png: bytes, image: Image.Image, paper: PaperProtocol
) -> None:
    body = classify(client, png)
    want = paper.posterior(["tiny-d"], image, None, True, "dense")
    np.testing.assert_allclose(probabilities(body), want, atol=TOL)
    assert {k: body[k] for k in ("model", "members", "method", "scales", "flip", "views")} == {
        "model": "tiny-d",
        "members": ["tiny-d"],
        "method": "dense",
        "scales": [256, 384, 512],
        "flip": True,
        "views": 6,
    }
    assert len(body["predictions"]) == 5
    assert body["image"] == {"width": 300, "height": 260}
    assert set(body["timing_ms"]) == {"decode", "inference", "total"}
    assert body["timing_ms"]["total"] >= body["timing_ms"]["inference"] > 0


@pytest.mark.parametrize("k", [1, 2, 5])
def test_top_k_sorted_descending_with_labels(
    client: TestClient, png: bytes, image: Image.Image, paper: PaperProtocol, k: int
) -> None:
    body = classify(client, png, model="tiny-e", scales="256", top_k=k)
    want = paper.posterior(["tiny-e"], image, [256], True, "dense")
    order = np.argsort(-want)[:k]
    predictions = body["predictions"]
    assert [p["index"] for p in predictions] == order.tolist()
    probs = [p["probability"] for p in predictions]
    assert probs == sorted(probs, reverse=True)
    np.testing.assert_allclose(probs, want[order], atol=TOL)
    labels = ["circle", "square", "triangle", "star", "cross"]
    assert [p["label"] for p in predictions] == [labels[i] for i in order]


def test_raw_body_upload_equals_multipart(client: TestClient, png: bytes) -> None:
    params = {"model": "tiny-d", "scales": "256"}
    multipart = classify(client, png, **params)
    headers = {"content-type": "image/png"}
    raw = client.post("/classify", params=params, content=png, headers=headers)
    assert raw.status_code == 200, raw.text
    assert raw.json()["predictions"] == multipart["predictions"]


def test_the_reference_has_teeth(image: Image.Image, paper: PaperProtocol) -> None:
    """The comparisons above would catch a protocol slip: views, methods and scales differ by
    far more than the tolerance on these peaked random models."""
    base = paper.posterior(["tiny-d"], image, [256], True, "dense")
    for other in (
        paper.posterior(["tiny-d"], image, [256], False, "dense"),
        paper.posterior(["tiny-d"], image, [256], True, "multicrop"),
        paper.posterior(["tiny-d"], image, [288], True, "dense"),
        paper.posterior(["tiny-d"], image.transpose(Image.Transpose.ROTATE_90), [256], True),
    ):
        assert np.abs(base - other).max() > 50 * TOL


def test_models_lists_manifests_providers_ensembles(client: TestClient) -> None:
    body = client.get("/models").json()
    assert body["default"] == "tiny-d"
    assert [m["name"] for m in body["models"]] == ["tiny-a-bgr", "tiny-d", "tiny-e"]
    model = body["models"][1]
    assert model["provider"] == "CPUExecutionProvider"
    assert "labels" not in model
    assert model["test_scales"] == [256, 384, 512]
    assert model["onnx"]["input"] == "image" and model["num_classes"] == 5
    assert body["ensembles"] == [
        {"name": "tiny-de", "members": ["tiny-d", "tiny-e"]},
        {"name": "tiny-mixed", "members": ["tiny-d", "tiny-a-bgr"]},
    ]
    assert body["skipped"] == []


def test_health_and_ready(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["ready"] is True and body["state"] == "ready"
    assert body["models"] == ["tiny-a-bgr", "tiny-d", "tiny-e"]
    assert body["ensembles"] == ["tiny-de", "tiny-mixed"]
    assert body["error"] is None


def test_openapi_documents_the_upload_and_errors(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/classify"]["post"]
    content = {"multipart/form-data", "image/*", "application/octet-stream"}
    assert set(op["requestBody"]["content"]) == content
    names = {p["name"] for p in op["parameters"]}
    assert names == {"model", "scales", "flip", "method", "top_k", "maps"}
    assert {"200", "400", "404", "413", "415", "422", "503", "504"} <= set(op["responses"])
    assert op["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ErrorResponse"
    )
    assert client.get("/docs").status_code == 200
