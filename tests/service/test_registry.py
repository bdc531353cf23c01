"""Start-up from a store with broken entries: the rest is served, the broken ones are listed with
their reasons; and the resolution of the ``model`` parameter."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from model_store import ModelStore
from service.core.errors import InvalidParameter, UnknownModel
from service.core.registry import Registry
from tests.service.helpers import settings_for


@pytest.fixture
def store_copy(service_store: ModelStore, tmp_path: Path) -> Path:
    root = tmp_path / "store"
    shutil.copytree(service_store.root, root)
    return root


def load(root: Path, **overrides: object) -> Registry:
    registry = Registry(settings_for(root, warmup=False, **overrides))
    registry.load()
    return registry


def edit_manifest(root: Path, entry: str, **changes: object) -> None:
    path = root / entry / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def reasons(registry: Registry) -> dict[str, str]:
    return {s.name: s.reason for s in registry.skipped}


def test_broken_entries_are_skipped_with_reasons(store_copy: Path) -> None:
    with open(store_copy / "tiny-e" / "model.onnx", "ab") as f:
        f.write(b"tampered")
    edit_manifest(store_copy, "tiny-a-bgr", config="Z")
    registry = load(store_copy)
    assert registry.ready
    assert sorted(registry.models) == ["tiny-d"]
    why = reasons(registry)
    assert "sha256 mismatch" in why["tiny-e"]
    assert "invalid manifest" in why["tiny-a-bgr"] and "config" in why["tiny-a-bgr"]
    assert why["tiny-de"].startswith("missing members: tiny-e (sha256 mismatch")
    assert "tiny-a-bgr (invalid manifest" in why["tiny-mixed"]
    assert registry.ensembles == {}
    assert {s.kind for s in registry.skipped if s.name.startswith("tiny-")} == {
        "model",
        "ensemble",
    }


def test_ensemble_problems(store_copy: Path) -> None:
    shutil.copytree(store_copy / "tiny-d", store_copy / "tiny-d-other")
    edit_manifest(store_copy, "tiny-d-other", name="tiny-d-other", labels=list("vwxyz"))
    ModelStore(store_copy).write_ensembles(
        {
            "ghostly": ["tiny-d", "ghost"],
            "tiny-e": ["tiny-d", "tiny-a-bgr"],
            "twice": ["tiny-d", "tiny-d"],
            "babel": ["tiny-d", "tiny-d-other"],
            "fine": ["tiny-a-bgr", "tiny-e"],
        }
    )
    registry = load(store_copy)
    why = reasons(registry)
    assert why["ghostly"] == "missing members: ghost (not in the store)"
    assert "also the name of a model" in why["tiny-e"]
    assert "listed twice" in why["twice"]
    assert "different labels" in why["babel"]
    assert registry.ensembles == {"fine": ["tiny-a-bgr", "tiny-e"]}
    assert "tiny-e" in registry.models


def test_malformed_ensembles_file_keeps_the_models(store_copy: Path) -> None:
    (store_copy / "ensembles.json").write_text("{not json")
    registry = load(store_copy)
    assert registry.ready and len(registry.models) == 3
    assert "unreadable" in reasons(registry)["ensembles.json"]


def test_no_loadable_model_is_a_failed_start(tmp_path: Path) -> None:
    missing = load(tmp_path / "nowhere")
    assert missing.state == "failed" and "not a directory" in (missing.problem or "")
    (tmp_path / "empty").mkdir()
    empty = load(tmp_path / "empty")
    assert empty.state == "failed" and "no loadable model" in (empty.problem or "")
    with pytest.raises(UnknownModel):
        empty.resolve(None)


def test_default_model(store_copy: Path) -> None:
    assert load(store_copy).default == "tiny-a-bgr"
    assert load(store_copy, default_model="tiny-de").default == "tiny-de"
    broken = load(store_copy, default_model="nope")
    assert broken.ready and broken.default is None
    assert "default model 'nope' is not available" in (broken.problem or "")
    with pytest.raises(UnknownModel, match="default model 'nope'"):
        broken.resolve(None)


def test_resolve(registry: Registry) -> None:
    assert registry.resolve(None).name == "tiny-d"
    single = registry.resolve("tiny-e")
    assert (single.name, [m.name for m in single.members]) == ("tiny-e", ["tiny-e"])
    named = registry.resolve("tiny-mixed")
    assert [m.name for m in named.members] == ["tiny-d", "tiny-a-bgr"]
    adhoc = registry.resolve(" tiny-e , tiny-d ")
    assert (adhoc.name, [m.name for m in adhoc.members]) == ("tiny-e,tiny-d", ["tiny-e", "tiny-d"])
    assert adhoc.labels == ["circle", "square", "triangle", "star", "cross"]
    assert adhoc.num_classes == 5


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        ("nope", UnknownModel, "unknown model 'nope'; available: tiny-a-bgr, tiny-d, tiny-e"),
        ("tiny-d,nope", UnknownModel, "unknown model 'nope'"),
        ("../etc", UnknownModel, "unknown model"),
        ("tiny-d,,tiny-e", InvalidParameter, "empty name"),
        ("tiny-d,tiny-d", InvalidParameter, "listed twice"),
        ("tiny-d,tiny-de", InvalidParameter, "is an ensemble"),
    ],
)
def test_resolve_errors(registry: Registry, spec: str, error: type, message: str) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(")):
        registry.resolve(spec)
