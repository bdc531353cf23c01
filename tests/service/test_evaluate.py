"""`verydeep evaluate` measures what /classify answers: same code, same numbers."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model_store import ModelStore, TrainScale
from service.core.evaluate import (
    EvaluationError,
    class_balanced,
    evaluate,
    format_table,
    scan_folder,
    write_json,
)
from service.http.app import create_app
from tests.conftest import TINY_PREPROCESSING, tiny_vgg
from tests.service.helpers import LOGIT_GAIN, TestClient, settings_for
from training.export import export_to_store
from training.shapes import CLASSES, write_shapes
from verydeep.cli import main

PER_CLASS = 2


def shapes_vgg(config: str, seed: int) -> torch.nn.Module:
    model = tiny_vgg(config, seed, num_classes=len(CLASSES))
    with torch.no_grad():
        model.classifier[6].weight.mul_(LOGIT_GAIN)
    return model


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eval") / "shapes"
    write_shapes(root, PER_CLASS, seed=987, workers=1, progress=False)
    return root


@pytest.fixture(scope="module")
def eval_store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    store = ModelStore(tmp_path_factory.mktemp("eval") / "store")
    for name, config, seed, scale in [("d", "D", 11, (256, 512)), ("e", "E", 12, (256, 384))]:
        export_to_store(
            shapes_vgg(config, seed),
            store,
            name,
            labels=list(CLASSES),
            preprocessing=TINY_PREPROCESSING,
            train_scale=TrainScale(min=scale[0], max=scale[1]),
            source="test",
        )
    store.write_ensembles({"de": ["d", "e"]})
    return store


def api_posteriors(store: ModelStore, folder: Path, model: str, **params: str) -> dict[Path, dict]:
    """Each image's /classify answer with all K classes."""
    answers = {}
    with TestClient(create_app(settings_for(store.root))) as client:
        for path in sorted(folder.glob("*/*.jpg")):
            response = client.post(
                "/classify",
                params={"model": model, "top_k": str(len(CLASSES)), **params},
                files={"image": (path.name, path.read_bytes(), "image/jpeg")},
            )
            assert response.status_code == 200, response.text
            answers[path] = response.json()
    return answers


def error_rates(answers: dict[Path, dict]) -> tuple[float, float]:
    top1 = top5 = 0
    for path, answer in answers.items():
        ranked = [p["label"] for p in answer["predictions"]]
        top1 += ranked[0] != path.parent.name
        top5 += path.parent.name not in ranked[:5]
    return top1 / len(answers), top5 / len(answers)


def test_errors_equal_those_of_classify(eval_store: ModelStore, shapes_folder: Path) -> None:
    seen: dict[Path, dict] = {}
    rows = evaluate(
        eval_store,
        "d,e",
        shapes_folder,
        settings=settings_for(eval_store.root),
        progress=False,
        on_image=lambda path, posteriors: seen.__setitem__(path, posteriors),
    )
    assert [(r.model, r.method, r.scales) for r in rows] == [
        ("d", "dense", [256, 384, 512]),
        ("e", "dense", [256, 320, 384]),
        ("d,e", "dense", [256, 320, 384, 512]),
    ]
    for row in rows:
        answers = api_posteriors(eval_store, shapes_folder, row.model)
        assert row.images == len(answers) == PER_CLASS * len(CLASSES)
        assert (row.top1_error, row.top5_error) == error_rates(answers)
        for path, answer in answers.items():
            posterior = seen[path][(row.model, "dense")]
            for p in answer["predictions"]:
                assert posterior[p["index"]] == pytest.approx(p["probability"], abs=1e-9)


def test_ensemble_is_the_mean_of_members(eval_store: ModelStore, shapes_folder: Path) -> None:
    seen: list[dict] = []
    rows = evaluate(
        eval_store,
        "de",
        shapes_folder,
        methods=["dense", "multicrop", "combined"],
        scales=[256],
        limit=3,
        settings=settings_for(eval_store.root),
        progress=False,
        on_image=lambda path, posteriors: seen.append(posteriors),
    )
    assert [(r.model, r.method) for r in rows] == [
        (name, method) for name in ("d", "e", "de") for method in ("dense", "multicrop", "combined")
    ]
    assert all(r.images == 3 and r.scales == [256] for r in rows)
    for posteriors in seen:
        for method in ("dense", "multicrop", "combined"):
            members = [posteriors[(m, method)] for m in ("d", "e")]
            np.testing.assert_allclose(posteriors[("de", method)], np.mean(members, axis=0))
        for m in ("d", "e", "de"):
            both = [posteriors[(m, "dense")], posteriors[(m, "multicrop")]]
            np.testing.assert_allclose(posteriors[(m, "combined")], np.mean(both, axis=0))


def test_multicrop_matches_classify(eval_store: ModelStore, shapes_folder: Path) -> None:
    (row,) = evaluate(
        eval_store,
        "e",
        shapes_folder,
        methods=["multicrop"],
        scales=[224, 256],
        flip=False,
        settings=settings_for(eval_store.root),
        progress=False,
    )
    answers = api_posteriors(
        eval_store, shapes_folder, "e", method="multicrop", scales="224,256", flip="false"
    )
    assert (row.top1_error, row.top5_error) == error_rates(answers)


def test_single_scale_rule(eval_store: ModelStore, shapes_folder: Path) -> None:
    rows = evaluate(
        eval_store,
        "d,e",
        shapes_folder,
        scales="single",
        limit=1,
        settings=settings_for(eval_store.root),
        progress=False,
    )
    assert [r.scales for r in rows] == [[384], [320], [320, 384]]


def test_unknown_class_folder(eval_store: ModelStore, tmp_path: Path) -> None:
    (tmp_path / "circle").mkdir()
    (tmp_path / "dodecahedron").mkdir()
    with pytest.raises(EvaluationError, match=r"not labels of the model: 'dodecahedron'"):
        scan_folder(tmp_path, list(CLASSES))


def test_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match="has no class folders"):
        scan_folder(tmp_path, list(CLASSES))
    (tmp_path / "circle").mkdir()
    (tmp_path / "circle" / "notes.txt").write_text("not an image")
    with pytest.raises(EvaluationError, match="holds no images"):
        scan_folder(tmp_path, list(CLASSES))
    with pytest.raises(EvaluationError, match="no data folder"):
        scan_folder(tmp_path / "missing", list(CLASSES))


def test_index_matching(tmp_path: Path) -> None:
    for wnid in ("n01", "n02"):
        (tmp_path / wnid).mkdir()
        (tmp_path / wnid / "x.JPEG").write_bytes(b"")
    images = scan_folder(tmp_path, ["tench", "goldfish"], match="index")
    assert [(i.path.parent.name, i.label) for i in images] == [("n01", 0), ("n02", 1)]
    with pytest.raises(EvaluationError, match="2 class folders; the model has 3 classes"):
        scan_folder(tmp_path, ["a", "b", "c"], match="index")


def test_table_and_json(eval_store: ModelStore, shapes_folder: Path, tmp_path: Path) -> None:
    rows = evaluate(
        eval_store,
        "d",
        shapes_folder,
        limit=2,
        settings=settings_for(eval_store.root),
        progress=False,
    )
    table = format_table(rows).splitlines()
    assert table[0].split()[:3] == ["ConvNet", "train", "(S)"]
    assert table[2].split()[:5] == ["d", "[256;512]", "256,384,512", "dense", "yes"]
    write_json(rows, tmp_path / "r.json")
    (result,) = json.loads((tmp_path / "r.json").read_text())["results"]
    assert set(result) >= {
        "model",
        "members",
        "method",
        "scales",
        "flip",
        "images",
        "top1_error",
        "top5_error",
    }
    assert result["images"] == 2 and 0 <= result["top1_error"] <= 1


def test_command(
    eval_store: ModelStore, shapes_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results.json"
    args = ["evaluate", "--store", str(eval_store.root), "--data", str(shapes_folder)]
    assert main([*args, "--model", "de", "--limit", "2", "--json", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "top-1 err (%)" in printed and "de" in printed
    results = json.loads(out.read_text())["results"]
    assert [r["model"] for r in results] == ["d", "e", "de"]
    assert results[2]["members"] == ["d", "e"]

    assert main([*args, "--model", "nope"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert main([*args, "--model", "d", "--scales", "100"]) == 2


def test_limit_takes_images_in_turn_from_each_class(shapes_folder: Path) -> None:
    images = scan_folder(shapes_folder, list(CLASSES))
    balanced = class_balanced(images)
    assert sorted(balanced, key=images.index) == images  # the same images, reordered
    first = balanced[: len(CLASSES)]
    assert sorted(item.label for item in first) == list(range(len(CLASSES)))
    assert [item.path for item in first] == [
        images[PER_CLASS * k].path for k in range(len(CLASSES))
    ]


def test_limit_below_one_is_refused(eval_store: ModelStore, shapes_folder: Path) -> None:
    with pytest.raises(EvaluationError, match="--limit must be at least 1, not 0"):
        evaluate(eval_store, "d", shapes_folder, limit=0, settings=settings_for(eval_store.root))


@pytest.mark.parametrize(
    ("scales", "message"),
    [
        ("2_56", "'2_56' is not a comma-separated list of integers"),
        ("٢٥٦", "is not a comma-separated list of integers"),
        ("+256", "is not a comma-separated list of integers"),
        ("256,256", "lists a scale twice"),
        ("100", "out of range"),
    ],
)
def test_scales_are_read_as_classify_reads_them(
    eval_store: ModelStore,
    shapes_folder: Path,
    capsys: pytest.CaptureFixture[str],
    scales: str,
    message: str,
) -> None:
    args = ["evaluate", "--store", str(eval_store.root), "--data", str(shapes_folder)]
    assert main([*args, "--model", "d", "--scales", scales, "--no-progress"]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("d,d", "a model is listed twice"),
        ("d,,e", "empty name in the list"),
        ("de,d", "is an ensemble; a comma list names models only"),
        ("x" * 1100, "at most 1024"),
    ],
)
def test_model_specs_are_read_as_classify_reads_them(
    eval_store: ModelStore, shapes_folder: Path, spec: str, message: str
) -> None:
    with pytest.raises(EvaluationError, match=message):
        evaluate(eval_store, spec, shapes_folder, settings=settings_for(eval_store.root))


def test_evaluation_opens_each_model_once_from_the_bytes_it_hashes(
    eval_store: ModelStore, shapes_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ONNX file is read once, and the sha256 checked is that of the bytes onnxruntime gets:
    no hashing of the file first and reading it again (a window for a swapped file)."""
    import service.core.sessions as sessions_module
    from model_store import checksum

    given: list[bytes] = []
    real_open_session = sessions_module.open_session

    def recording(entry, model_bytes, *rest):  # type: ignore[no-untyped-def]
        given.append(model_bytes)
        return real_open_session(entry, model_bytes, *rest)

    def no_file_hash(path: object) -> str:
        raise AssertionError(f"{path} was hashed apart from the bytes that are loaded")

    monkeypatch.setattr(sessions_module, "open_session", recording)
    monkeypatch.setattr(checksum, "sha256_file", no_file_hash)
    monkeypatch.setattr("model_store.store.sha256_file", no_file_hash, raising=False)
    evaluate(
        eval_store,
        "d",
        shapes_folder,
        limit=1,
        settings=settings_for(eval_store.root),
        progress=False,
    )
    manifest = eval_store.read("d", verify=False).manifest
    assert len(given) == 1
    assert hashlib.sha256(given[0]).hexdigest() == manifest.onnx.sha256


def test_a_swapped_model_file_is_refused(eval_store: ModelStore, shapes_folder: Path) -> None:
    entry = eval_store.read("d", verify=False)
    original = entry.onnx_path.read_bytes()
    try:
        entry.onnx_path.write_bytes(original + b"\0")
        with pytest.raises(EvaluationError, match="sha256 mismatch"):
            evaluate(eval_store, "d", shapes_folder, settings=settings_for(eval_store.root))
    finally:
        entry.onnx_path.write_bytes(original)


def test_offline_evaluation_imports_no_web_framework() -> None:
    code = (
        "import sys, service.core.evaluate, service.commands, service.settings\n"
        "web = sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'starlette',"
        " 'uvicorn') or m.startswith('service.http'))\n"
        "print(web)\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_progress_off_a_terminal_is_not_a_line_per_image(
    eval_store: ModelStore, shapes_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Captured stderr is no terminal: the bar writes its first and last lines (and one per
    interval of model_store.progress, longer than this run), not one per image for the
    running error of its postfix."""
    rows = evaluate(eval_store, "d", shapes_folder, settings=settings_for(eval_store.root))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("evaluate")]
    assert rows[0].images == PER_CLASS * len(CLASSES) == 16
    assert 1 <= len(lines) <= 3, lines
    assert "16/16" in lines[-1] and "top-1 err" in lines[-1]
