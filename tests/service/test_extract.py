"""verydeep features: the /features descriptor of every image of a folder, in a .npz file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from model_store import ModelStore
from tests.conftest import TINY_FC
from tests.service.helpers import encode, sample_image
from verydeep.cli import main


@pytest.fixture
def folder(tmp_path: Path, service_store: ModelStore) -> Path:
    labels = service_store.read("tiny-d").manifest.labels
    root = tmp_path / "data"
    for k, label in enumerate(labels[:2]):
        (root / label).mkdir(parents=True)
        for i in range(2):
            (root / label / f"{i}.png").write_bytes(encode(sample_image(300, 260, seed=10 * k + i)))
    return root


def test_the_folders_descriptors_are_those_of_the_api(
    folder: Path, service_store: ModelStore, client: TestClient, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("VERYDEEP_INTRA_OP_THREADS", "1")
    out = tmp_path / "f.npz"
    args = ["features", "--store", str(service_store.root), "--model", "tiny-de"]
    args += ["--data", str(folder), "--out", str(out), "--scales", "256,288", "--no-progress"]
    assert main(args) == 0
    with np.load(out, allow_pickle=False) as data:
        features, files, labels = data["features"], list(data["files"]), list(data["labels"])
        classes = list(data["classes"])
    assert features.shape == (4, 2 * TINY_FC) and features.dtype == np.float32
    assert files == sorted(files) and len(set(labels)) == 2 and classes == sorted(set(labels))
    for vector, name in zip(features, files, strict=True):
        response = client.post(
            "/features",
            params={"model": "tiny-de", "scales": "256,288"},
            content=(folder / name).read_bytes(),
            headers={"content-type": "image/png"},
        )
        np.testing.assert_allclose(vector, response.json()["features"], atol=1e-6)


def test_a_flat_folder_has_no_labels(
    folder: Path, service_store: ModelStore, tmp_path: Path
) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, png in enumerate(sorted(folder.rglob("*.png"))):
        (flat / f"{i}.png").write_bytes(png.read_bytes())
    out = tmp_path / "flat.npz"
    args = ["features", "--store", str(service_store.root), "--model", "tiny-d", "--data"]
    assert (
        main([*args, str(flat), "--out", str(out), "--pool", "stack", "--scales", "256,288"]) == 0
    )
    with np.load(out, allow_pickle=False) as data:
        assert data["features"].shape == (4, 2 * TINY_FC) and "labels" not in data


def test_errors_are_told_not_raised(
    folder: Path, service_store: ModelStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["features", "--store", str(service_store.root), "--data", str(folder)]
    args += ["--out", str(tmp_path / "x.npz")]
    assert main([*args, "--model", "nope"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert main([*args, "--model", "tiny-d", "--scales", "2_56"]) == 2
    assert "not a comma-separated list" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()
