from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from model_store import Localization, Manifest, OnnxInfo, Preprocessing, TrainScale

REPO = Path(__file__).resolve().parents[2]


def test_default_test_scales_follow_the_paper() -> None:
    assert TrainScale(min=256, max=256).default_test_scales() == [224, 256, 288]
    assert TrainScale(min=384, max=384).default_test_scales() == [352, 384, 416]
    assert TrainScale(min=256, max=512).default_test_scales() == [256, 384, 512]


@pytest.mark.parametrize(
    ("s_min", "s_max", "expected"),
    [
        (224, 224, [224, 256]),  # S - 32 would be below the crop, and 224 is S itself
        (240, 240, [224, 240, 272]),  # S - 32 = 208 is raised to the crop
        (256, 256, [224, 256, 288]),
        (224, 256, [224, 240, 256]),
        (224, 320, [224, 272, 320]),
        (224, 226, [224, 225, 226]),
        (224, 225, [224, 225]),  # no mid of its own
    ],
)
def test_default_test_scales_never_repeat_a_scale(s_min: int, s_max: int, expected: list) -> None:
    scales = TrainScale(min=s_min, max=s_max).default_test_scales()
    assert scales == expected
    assert len(set(scales)) == len(scales) and scales == sorted(scales) and min(scales) >= 224
    _manifest(test_scales=scales)  # and the validator takes them


def test_single_test_scale_follows_the_paper() -> None:
    assert TrainScale(min=384, max=384).single_test_scale() == 384
    assert TrainScale(min=256, max=512).single_test_scale() == 384


def test_train_scale_refuses_reversed_and_small() -> None:
    with pytest.raises(ValidationError, match="max 256 < min 512"):
        TrainScale(min=512, max=256)
    with pytest.raises(ValidationError):
        TrainScale(min=200, max=256)


def test_preprocessing_refuses_zero_std() -> None:
    with pytest.raises(ValidationError, match="std values must be positive"):
        Preprocessing(mean=(0, 0, 0), std=(1, 0, 1))


@pytest.mark.parametrize("file", ["../model.onnx", "a/b.onnx", ".."])
def test_onnx_file_stays_inside_the_entry(file: str) -> None:
    with pytest.raises(ValidationError, match="plain file name"):
        OnnxInfo(file=file, sha256="0" * 64, opset=17)


def test_a_repeated_test_scale_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"test_scales lists 224 more than once"):
        _manifest(test_scales=[224, 224, 256])


def test_the_committed_demo_manifests_validate() -> None:
    paths = sorted((REPO / "model_store").glob("demo-*/manifest.json"))
    assert paths
    for path in paths:
        manifest = Manifest.model_validate_json(path.read_text())
        assert len(set(manifest.test_scales)) == len(manifest.test_scales), path


def test_an_entry_exported_before_the_features_output_loads_without_it() -> None:
    path = REPO / "model_store" / "demo-d" / "manifest.json"
    raw = json.loads(path.read_text())
    raw["onnx"].pop("features", None)
    assert Manifest.model_validate(raw).onnx.features is None


def test_the_features_output_round_trips() -> None:
    manifest = _manifest(onnx=OnnxInfo(sha256="a" * 64, opset=17, features="features"))
    dumped = manifest.model_dump(mode="json")
    assert dumped["onnx"]["features"] == "features"
    again = Manifest.model_validate_json(json.dumps(dumped))
    assert again == manifest and again.onnx.features == "features"
    assert _manifest().model_dump(mode="json")["onnx"]["features"] is None


@pytest.mark.parametrize("name", ["", "scores", "image"])
def test_the_features_output_has_a_name_of_its_own(name: str) -> None:
    with pytest.raises(ValidationError, match="onnx.features must name an output of its own"):
        OnnxInfo(sha256="a" * 64, opset=17, features=name)


def test_summary_has_every_field_but_labels() -> None:
    fields = set(Manifest.model_fields) - {"labels"}
    assert set(_manifest().summary()) == fields


def _manifest(**changes: object) -> Manifest:
    values: dict = dict(
        schema_version=1,
        name="m",
        config="E",
        weight_layers=19,
        parameters=1,
        num_classes=1,
        labels=["x"],
        preprocessing=Preprocessing(mean=(0, 0, 0)),
        train_scale=TrainScale(min=256, max=256),
        test_scales=[256],
        onnx=OnnxInfo(sha256="a" * 64, opset=17),
        provenance={"source": "t", "created": "2026-01-01T00:00:00Z"},
    )
    return Manifest(**{**values, **changes})


def test_task_defaults_to_classification_and_old_manifests_load() -> None:
    manifest = _manifest()
    assert manifest.task == "classification" and manifest.localization is None
    data = json.loads((REPO / "model_store" / "demo-d" / "manifest.json").read_text())
    data.pop("task", None)
    assert Manifest.model_validate(data).task == "classification"


def test_a_localization_entry_needs_its_localization_field_and_only_it() -> None:
    loc = Localization(regression="per-class", tuned="fc", classifier="demo-de")
    manifest = _manifest(task="localization", localization=loc, onnx=OnnxInfo(
        sha256="a" * 64, opset=17, output="boxes", features="features"))  # fmt: skip
    assert manifest.summary()["localization"] == {
        "regression": "per-class", "tuned": "fc", "classifier": "demo-de"
    }  # fmt: skip
    assert loc.box_channels(8) == 32
    assert Localization(regression="single").box_channels(8) == 4
    with pytest.raises(ValidationError, match="needs its 'localization' field"):
        _manifest(task="localization")
    with pytest.raises(ValidationError, match="needs its 'localization' field"):
        _manifest(localization=loc)
    with pytest.raises(ValidationError):
        Localization(regression="pcr")
    with pytest.raises(ValidationError, match="invalid model name"):
        Localization(regression="single", classifier="../x")


@pytest.mark.parametrize(
    ("dtype", "input_dtype"), [("float32", "float32"), ("float16", "float16"), ("int8", "float32")]
)
def test_input_dtype_is_what_the_graph_takes(dtype: str, input_dtype: str) -> None:
    """An int8 graph quantises its float32 input inside; a float16 export takes float16."""
    onnx = OnnxInfo(sha256="a" * 64, opset=17, dtype=dtype)
    assert onnx.input_dtype == input_dtype
    assert "input_dtype" not in onnx.model_dump()  # not a field of the manifest
