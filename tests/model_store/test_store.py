"""The store contract: round trip, atomic writes and each refusal with its message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import model_store.store as store_module
from model_store import (
    EntryError,
    Manifest,
    ModelStore,
    OnnxInfo,
    Preprocessing,
    Provenance,
    StoreError,
    TrainScale,
    sha256_file,
)


def manifest_for(name: str, onnx_file: Path, **changes: object) -> Manifest:
    fields = dict(
        schema_version=1,
        name=name,
        config="D",
        weight_layers=16,
        parameters=1234,
        num_classes=2,
        labels=["cat", "dog"],
        preprocessing=Preprocessing(mean=(1.0, 2.0, 3.0)),
        train_scale=TrainScale(min=256, max=512),
        test_scales=[256, 384, 512],
        onnx=OnnxInfo(sha256=sha256_file(onnx_file), opset=17),
        provenance=Provenance(source="test", created="2026-11-22T12:00:00Z"),
    )
    fields.update(changes)
    return Manifest(**fields)


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    path = tmp_path / "source.onnx"
    path.write_bytes(b"not really onnx, but the store only checks bytes")
    return path


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "store")


def test_round_trip(store: ModelStore, onnx_file: Path) -> None:
    written = store.write(manifest_for("m1", onnx_file), onnx_file)
    assert written.path == store.root / "m1"
    entry = store.read("m1")
    assert entry.manifest == written.manifest
    assert entry.onnx_path.read_bytes() == onnx_file.read_bytes()
    assert store.names() == ["m1"]
    on_disk = json.loads((store.root / "m1" / "manifest.json").read_text())
    assert on_disk["schema_version"] == 1 and on_disk["onnx"]["file"] == "model.onnx"


def test_names_ignore_non_entries(store: ModelStore, onnx_file: Path) -> None:
    store.write(manifest_for("m1", onnx_file), onnx_file)
    (store.root / "__pycache__").mkdir()
    (store.root / ".tmp-x-123").mkdir()
    (store.root / "notes").mkdir()
    (store.root / "__init__.py").write_text("")
    assert store.names() == ["m1"]


def test_existing_entry_needs_overwrite(store: ModelStore, onnx_file: Path) -> None:
    store.write(manifest_for("m1", onnx_file), onnx_file)
    with pytest.raises(StoreError, match="already exists"):
        store.write(manifest_for("m1", onnx_file), onnx_file)
    onnx_file.write_bytes(b"new bytes")
    store.write(manifest_for("m1", onnx_file), onnx_file, overwrite=True)
    assert store.read("m1").onnx_path.read_bytes() == b"new bytes"
    assert sorted(p.name for p in store.root.iterdir()) == ["m1"]


def test_failed_write_leaves_nothing(
    store: ModelStore, onnx_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(path: Path, data: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(store_module, "_write_json", crash)
    with pytest.raises(OSError, match="disk full"):
        store.write(manifest_for("m1", onnx_file), onnx_file)
    assert list(store.root.iterdir()) == []


def test_failed_overwrite_keeps_old_entry(
    store: ModelStore, onnx_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.write(manifest_for("m1", onnx_file), onnx_file)
    monkeypatch.setattr(store_module, "_fsync_path", lambda p: (_ for _ in ()).throw(OSError("io")))
    with pytest.raises(OSError):
        store.write(manifest_for("m1", onnx_file), onnx_file, overwrite=True)
    assert store.read("m1").manifest.name == "m1"
    assert sorted(p.name for p in store.root.iterdir()) == ["m1"]


def test_write_refuses_sha_that_does_not_match(store: ModelStore, onnx_file: Path) -> None:
    manifest = manifest_for("m1", onnx_file)
    onnx_file.write_bytes(b"changed after hashing")
    with pytest.raises(EntryError, match="does not match"):
        store.write(manifest, onnx_file)
    assert list(store.root.iterdir()) == []


def _write_raw(store: ModelStore, onnx_file: Path, entry: str, **changes: object) -> None:
    store.write(manifest_for(entry, onnx_file), onnx_file)
    path = store.root / entry / "manifest.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_unknown_schema_version_refused(store: ModelStore, onnx_file: Path) -> None:
    _write_raw(store, onnx_file, "future", schema_version=2)
    with pytest.raises(EntryError, match=r"'future'.*unknown schema_version 2") as err:
        store.read("future")
    assert err.value.name == "future"


def test_sha_mismatch_refused(store: ModelStore, onnx_file: Path) -> None:
    store.write(manifest_for("m1", onnx_file), onnx_file)
    (store.root / "m1" / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(EntryError, match=r"'m1'.*sha256 mismatch"):
        store.read("m1")
    assert store.read("m1", verify=False).name == "m1"


def test_missing_onnx_refused(store: ModelStore, onnx_file: Path) -> None:
    store.write(manifest_for("m1", onnx_file), onnx_file)
    (store.root / "m1" / "model.onnx").unlink()
    with pytest.raises(EntryError, match=r"'m1'.*missing ONNX file"):
        store.read("m1")


def test_missing_manifest_refused(store: ModelStore, onnx_file: Path) -> None:
    store.write(manifest_for("m1", onnx_file), onnx_file)
    (store.root / "m1" / "manifest.json").unlink()
    assert store.names() == ["m1"]
    with pytest.raises(EntryError, match=r"'m1'.*missing manifest.json"):
        store.read("m1")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"labels": ["only one"]}, "labels has 1 entries but num_classes is 2"),
        ({"config": "F"}, "config"),
        ({"weight_layers": 19}, "config D has 16 weight layers"),
        ({"test_scales": [128]}, "test_scales must all be >= 224"),
        ({"name": "other"}, "differs from directory name"),
        ({"extra_field": 1}, "extra_field"),
    ],
)
def test_invalid_manifest_refused(
    store: ModelStore, onnx_file: Path, changes: dict, message: str
) -> None:
    _write_raw(store, onnx_file, "bad", **changes)
    with pytest.raises(EntryError, match=message):
        store.read("bad")


def test_unreadable_manifest(store: ModelStore, onnx_file: Path) -> None:
    store.write(manifest_for("m1", onnx_file), onnx_file)
    (store.root / "m1" / "manifest.json").write_text("{not json")
    with pytest.raises(EntryError, match="unreadable manifest.json"):
        store.read("m1")


def test_scan_separates_broken_entries(store: ModelStore, onnx_file: Path) -> None:
    store.write(manifest_for("good", onnx_file), onnx_file)
    store.write(manifest_for("bad", onnx_file), onnx_file)
    (store.root / "bad" / "model.onnx").write_bytes(b"tampered")
    entries, broken = store.scan()
    assert list(entries) == ["good"]
    assert list(broken) == ["bad"] and "sha256 mismatch" in broken["bad"]


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "", "x" * 65, "sp ace"])
def test_names_that_are_not_one_path_component_refused(store: ModelStore, name: str) -> None:
    with pytest.raises(StoreError, match="invalid model name"):
        store.read(name)


def test_ensembles_round_trip_and_validation(store: ModelStore) -> None:
    assert store.ensembles() == {}
    store.write_ensembles({"de": ["d", "e"]})
    assert store.ensembles() == {"de": ["d", "e"]}
    (store.root / "ensembles.json").write_text(json.dumps({"de": []}))
    with pytest.raises(StoreError, match="non-empty list"):
        store.ensembles()
    (store.root / "ensembles.json").write_text(json.dumps({"de": ["../x"]}))
    with pytest.raises(StoreError, match="invalid model name"):
        store.ensembles()
    (store.root / "ensembles.json").write_text("[")
    with pytest.raises(StoreError, match="unreadable"):
        store.ensembles()
