"""Class score maps in /classify (maps=top|all), held to the fully-convolutional net run
separately with torch on the same rescaled image (tests/service/helpers.PaperProtocol)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from tests.service.helpers import PaperProtocol
from tests.service.test_routes import classify, probabilities

TOL = 2e-4  # the maps are rounded to 5 decimals; float32 through two runtimes


def torch_map(paper: PaperProtocol, image: Image.Image, q: int, flip: bool) -> np.ndarray:
    """``(K, h, w)``: the view's map, or with flip the mean with the mirror's map mirrored back."""
    fcn, preprocessing, _ = paper.models["tiny-d"]
    x = paper.input(image, q, preprocessing)
    with torch.no_grad():
        plain = fcn(x[None])[0].double()
        if not flip:
            return plain.numpy()
        mirrored = fcn(x.flip(-1)[None])[0].double().flip(-1)
    return ((plain + mirrored) / 2).numpy()


def rows(entry: dict) -> np.ndarray:
    return np.asarray(entry["scores"]).reshape(len(entry["classes"]), entry["height"], -1)


def test_top_maps_with_flip_are_the_mean_of_the_view_and_its_mirror_mirrored_back(
    client: TestClient, png: bytes, image: Image.Image, paper: PaperProtocol
) -> None:
    body = classify(client, png, model="tiny-d", scales="256,320", top_k=3, maps="top")
    assert [(m["model"], m["scale"]) for m in body["maps"]] == [("tiny-d", 256), ("tiny-d", 320)]
    for entry in body["maps"]:
        q = entry["scale"]
        width, height = (int(q * 300 / 260), q)  # the 300x260 sample, short side q
        assert (entry["image_width"], entry["image_height"]) == (width, height)
        assert (entry["height"], entry["width"]) == (height // 32 - 6, width // 32 - 6)
        assert (entry["stride"], entry["window"]) == (32, 224)
        assert entry["classes"] == [p["index"] for p in body["predictions"]]
        want = torch_map(paper, image, q, flip=True)[entry["classes"]]
        np.testing.assert_allclose(rows(entry), want, atol=TOL)


def test_without_flip_the_softmax_of_a_maps_mean_is_the_views_posterior(
    client: TestClient, png: bytes, image: Image.Image, paper: PaperProtocol
) -> None:
    body = classify(client, png, model="tiny-d", scales="288", flip=False, maps="all")
    (entry,) = body["maps"]
    assert entry["classes"] == list(range(5))
    scores = rows(entry).mean(axis=(1, 2))
    posterior = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
    np.testing.assert_allclose(posterior, probabilities(body), atol=TOL)
    np.testing.assert_allclose(rows(entry), torch_map(paper, image, 288, flip=False), atol=TOL)
    assert (entry["height"], entry["width"]) == (288 // 32 - 6, int(288 * 300 / 260) // 32 - 6)


def test_an_ensemble_has_a_map_per_member_and_scale_and_combined_has_maps(
    client: TestClient, png: bytes
) -> None:
    body = classify(client, png, model="tiny-de", scales="256,288", maps="top", top_k=1)
    assert [(m["model"], m["scale"]) for m in body["maps"]] == [
        ("tiny-d", 256),
        ("tiny-d", 288),
        ("tiny-e", 256),
        ("tiny-e", 288),
    ]
    combined = classify(client, png, model="tiny-d", scales="256", method="combined", maps="top")
    assert len(combined["maps"]) == 1 and combined["views"] == 52


def test_no_maps_unless_asked(client: TestClient, png: bytes) -> None:
    assert "maps" not in classify(client, png, model="tiny-d", scales="256")
    assert "maps" not in classify(client, png, model="tiny-d", scales="256", maps="none")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"maps": "top", "method": "multicrop"}, "maps: score maps come from dense evaluation"),
        ({"maps": "some"}, "maps"),
        ({"maps": ["top", "all"]}, "maps: given 2 times"),
    ],
)
def test_bad_maps_requests_are_422(
    client: TestClient, png: bytes, params: dict, message: str
) -> None:
    response = client.post(
        "/classify",
        params={"model": "tiny-d", "scales": "256", **params},
        content=png,
        headers={"content-type": "image/png"},
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_parameter" and message in error["message"]


def test_maps_larger_than_the_limit_are_refused_before_inference(
    make_client: Callable[..., TestClient], png: bytes
) -> None:
    client = make_client(max_map_values=29)  # 5 classes x (2 x 3 cells) at Q=256: 30
    response = client.post(
        "/classify",
        params={"model": "tiny-d", "scales": "256", "maps": "all"},
        content=png,
        headers={"content-type": "image/png"},
    )
    assert response.status_code == 422
    message = response.json()["error"]["message"]
    assert "hold 30 numbers" in message and "VERYDEEP_MAX_MAP_VALUES" in message
    ok = client.post(
        "/classify",
        params={"model": "tiny-d", "scales": "256", "maps": "top", "top_k": 4},
        content=png,
        headers={"content-type": "image/png"},
    )
    assert ok.status_code == 200 and len(ok.json()["maps"][0]["scores"]) == 4


def test_openapi_describes_the_maps(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    parameters = {p["name"]: p for p in schema["paths"]["/classify"]["post"]["parameters"]}
    assert parameters["maps"]["schema"]["enum"] == ["none", "top", "all"]
    fields = schema["components"]["schemas"]["ScoreMap"]["properties"]
    assert set(fields) == {
        "model",
        "scale",
        "height",
        "width",
        "image_width",
        "image_height",
        "stride",
        "window",
        "classes",
        "scores",
    }
