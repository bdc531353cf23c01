from __future__ import annotations

import pytest
from pydantic import ValidationError

from model_store import Manifest, OnnxInfo, Preprocessing, TrainScale


def test_default_test_scales_follow_the_paper() -> None:
    assert TrainScale(min=256, max=256).default_test_scales() == [224, 256, 288]
    assert TrainScale(min=384, max=384).default_test_scales() == [352, 384, 416]
    assert TrainScale(min=256, max=512).default_test_scales() == [256, 384, 512]


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


def test_summary_has_every_field_but_labels() -> None:
    fields = set(Manifest.model_fields) - {"labels"}
    manifest = Manifest(
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
    assert set(manifest.summary()) == fields
