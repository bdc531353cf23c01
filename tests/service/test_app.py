"""The app as a whole: start-up in the background, a store with broken entries, metrics and the
one log line per request."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import pytest

from model_store import ModelStore
from service.http.app import create_app
from tests.service.helpers import TestClient, settings_for
from tests.service.test_errors import assert_error, post_raw


def wait_ready(client: TestClient, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.05)


def test_broken_entries_at_start_up(tiny_store: ModelStore, make_entry: Callable, png: bytes):
    """sha mismatch, invalid manifest, missing ensemble member: the rest is served, /models and
    /readyz say what was skipped and why."""
    root = tiny_store.root
    make_entry("tiny-c", "A", seed=5, store=tiny_store)
    onnx = root / "tiny-e" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    manifest = json.loads((root / "tiny-c" / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (root / "tiny-c" / "manifest.json").write_text(json.dumps(manifest))

    with TestClient(create_app(settings_for(root, warmup=False, background_load=True))) as client:
        wait_ready(client)
        ready = client.get("/readyz").json()
        assert ready["models"] == ["tiny-d"] and ready["ensembles"] == []
        skipped = {s["name"]: s for s in ready["skipped"]}
        assert set(skipped) == {"tiny-c", "tiny-e", "tiny-de"}
        assert "sha256 mismatch" in skipped["tiny-e"]["reason"]
        assert "unknown schema_version 99" in skipped["tiny-c"]["reason"]
        assert skipped["tiny-de"]["kind"] == "ensemble"
        assert "missing members: tiny-e" in skipped["tiny-de"]["reason"]

        models = client.get("/models").json()
        assert [m["name"] for m in models["models"]] == ["tiny-d"]
        assert models["default"] == "tiny-d"
        assert {s["name"]: s["reason"] for s in models["skipped"]} == {
            name: s["reason"] for name, s in skipped.items()
        }

        assert post_raw(client, png, scales="224").status_code == 200
        error = assert_error(post_raw(client, png, model="tiny-e"), 404, "unknown_model")
        assert "not available: sha256 mismatch" in error["message"]
        error = assert_error(post_raw(client, png, model="tiny-de"), 404, "unknown_model")
        assert "ensemble 'tiny-de' is not available: missing members" in error["message"]


def test_metrics_count_requests_phases_and_views(make_client: Callable, png: bytes) -> None:
    client = make_client()
    first = client.get("/metrics").text  # every series is there before the first request
    for phase in ("queue", "decode", "inference", "total"):
        assert f'verydeep_classify_seconds_count{{phase="{phase}"}} 0.0' in first
    served = [m["name"] for m in client.get("/models").json()["models"]]
    assert {"tiny-d", "tiny-e"} <= set(served)
    for model in served:
        assert f'verydeep_views_total{{model="{model}"}} 0.0' in first
    assert post_raw(client, png, model="tiny-de", scales="224").status_code == 200
    assert post_raw(client, png, model="nope").status_code == 404
    client.get("/nowhere/at/all")
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'verydeep_requests_total{route="/classify",status="200"} 1.0' in text
    assert 'verydeep_requests_total{route="/classify",status="404"} 1.0' in text
    assert 'verydeep_requests_total{route="unmatched",status="404"} 1.0' in text
    for phase in ("queue", "decode", "inference", "total"):
        assert f'verydeep_classify_seconds_count{{phase="{phase}"}} 1.0' in text
    assert 'verydeep_views_total{model="tiny-d"} 2.0' in text
    assert 'verydeep_views_total{model="tiny-e"} 2.0' in text
    assert "verydeep_models_loaded 3.0" in text
    assert "verydeep_ready 1.0" in text


def test_plain_routes_and_mounts_are_counted_by_their_template(make_client: Callable) -> None:
    """FastAPI names only its own routes in the scope; the OpenAPI document, the docs' assets
    and the page's files are counted under their template too, never by raw path."""
    client = make_client()
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/static/page.js").status_code == 200
    assert client.get("/static/no-such-file.js").status_code == 404
    text = client.get("/metrics").text
    assert 'verydeep_requests_total{route="/openapi.json",status="200"} 1.0' in text
    assert 'verydeep_requests_total{route="/static",status="200"} 1.0' in text
    assert 'verydeep_requests_total{route="unmatched",status="404"} 1.0' in text
    assert "page.js" not in text


def test_one_structured_log_line_per_request(
    client: TestClient, png: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="verydeep.access"):
        post_raw(client, png, model="tiny-e", scales="224,256", method="dense")
        post_raw(client, png, top_k="0")
        post_raw(client, b"junk", model="tiny-e")
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "verydeep.access"]
    assert len(lines) == 3
    ok, bad, junk = lines
    assert ok["status"] == 200 and ok["route"] == "/classify" and ok["method"] == "POST"
    assert ok["model"] == "tiny-e" and ok["protocol"] == "dense"
    assert ok["scales"] == {"tiny-e": [224, 256]}
    assert ok["views"] == {"tiny-e": 4} and ok["image"] == "300x260" and ok["bytes"] == len(png)
    assert {"duration_ms", "queue_ms", "decode_ms", "inference_ms", "top1"} <= set(ok)
    assert bad["status"] == 422 and "model" not in bad
    assert junk["status"] == 400 and junk["model"] == "tiny-e" and junk["bytes"] == 4


def test_each_request_has_an_id_in_its_answer_and_its_log_line(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The proxy's X-Request-ID when it is a short token (nginx's $request_id, a UUID), a new
    one otherwise: a client controls the header, so nothing else reaches the log."""
    sent = ["0f3a9c", "3f2b8c1e-7d4a-4e0b-9a51-1f2e3d4c5b6a", "a" * 129, "x y", "id\u00e9"]
    with caplog.at_level(logging.INFO, logger="verydeep.access"):
        answers = [client.get("/healthz", headers={"X-Request-ID": rid}) for rid in sent[:4]]
        answers.append(client.get("/healthz", headers={"X-Request-ID": sent[4].encode()}))
        answers += [client.get("/healthz"), client.get("/nowhere")]
    ids = [a.headers["x-request-id"] for a in answers]
    assert ids[:2] == sent[:2]
    for generated in ids[2:]:
        assert len(generated) == 32 and int(generated, 16) >= 0
    assert len(set(ids)) == len(ids)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "verydeep.access"]
    assert [line["request_id"] for line in lines] == ids


@pytest.mark.parametrize("background", [True, False])
def test_background_and_foreground_load(service_store: ModelStore, background: bool) -> None:
    settings = settings_for(service_store.root, warmup=False, background_load=background)
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
        if background:
            wait_ready(client)
        else:
            assert client.get("/readyz").status_code == 200
        assert client.get("/readyz").json()["models"] == ["tiny-a-bgr", "tiny-d", "tiny-e"]


def test_latency_is_observed_for_every_phase_or_none() -> None:
    from service.http.metrics import PHASES, Metrics

    metrics = Metrics()
    with pytest.raises(ValueError, match="phases must be queue, decode, inference, total"):
        metrics.observe_phases(queue=0.1, decode=0.2)
    metrics.observe_phases(**dict.fromkeys(PHASES, 0.5))
    text = metrics.render().decode()
    assert all(f'verydeep_classify_seconds_count{{phase="{p}"}} 1.0' in text for p in PHASES)
