"""The manifest schema of a store entry (docs/training.md, "The model store"), validated on
every load."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from model_store.scales import CROP_SIZE

SCHEMA_VERSION = 1
ConfigName = Literal["A", "A-LRN", "B", "C", "D", "E"]
"""The configurations of the paper's Table 1: the one list of their names."""
CONFIGS: tuple[ConfigName, ...] = get_args(ConfigName)
WEIGHT_LAYERS: dict[ConfigName, int] = {"A": 11, "A-LRN": 11, "B": 13, "C": 16, "D": 16, "E": 19}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def validate_name(name: str) -> str:
    """A store name is one path component: letters, digits, '.', '_', '-', no leading dot."""
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"invalid model name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Preprocessing(_Strict):
    """How pixels become network input: ``(pixel * scale - mean) / std`` in ``color_order``."""

    color_order: Literal["RGB", "BGR"] = "RGB"
    scale: float = Field(1.0, gt=0)
    mean: tuple[float, float, float]
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @field_validator("std")
    @classmethod
    def _positive_std(cls, std: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(s <= 0 for s in std):
            raise ValueError("std values must be positive")
        return std


class TrainScale(_Strict):
    """The training scale S: fixed when ``min == max``, jittered in [min, max] otherwise."""

    min: int = Field(ge=CROP_SIZE)
    max: int = Field(ge=CROP_SIZE)

    @model_validator(mode="after")
    def _ordered(self) -> TrainScale:
        if self.max < self.min:
            raise ValueError(f"train_scale max {self.max} < min {self.min}")
        return self

    @property
    def fixed(self) -> bool:
        return self.min == self.max

    def default_test_scales(self) -> list[int]:
        """Paper §4.2: {S-32, S, S+32} for fixed S, {S_min, mid, S_max} for jittered S, in
        ascending order and never a Q twice (docs/training.md, "The model store"). No Q is below
        the 224 crop: for fixed S below 256, S-32 becomes 224, and disappears at S = 224
        ([224, 256]); S_max = S_min + 1 has no mid of its own (224..225: [224, 225])."""
        if self.fixed:
            scales = [max(CROP_SIZE, self.min - 32), self.min, self.min + 32]
        else:
            scales = [self.min, (self.min + self.max) // 2, self.max]
        return sorted(set(scales))

    def single_test_scale(self) -> int:
        """Paper §4.1: Q = S for fixed S, Q = (S_min + S_max) / 2 for jittered S."""
        return (self.min + self.max) // 2


class OnnxInfo(_Strict):
    file: str = "model.onnx"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    opset: int = Field(ge=7)
    input: str = "image"
    output: str = "scores"
    # int8: a statically quantised (QDQ) graph whose input and outputs stay float32
    # (docs/training.md, "int8 export").
    dtype: Literal["float32", "float16", "int8"] = "float32"
    # The second output, fc7's activations after its ReLU (docs/training.md, "The features
    # output"); None for entries exported before it existed, which keep loading and classifying.
    features: str | None = None

    @field_validator("file")
    @classmethod
    def _plain_file(cls, file: str) -> str:
        if "/" in file or "\\" in file or file in ("", ".", ".."):
            raise ValueError(f"onnx.file must be a plain file name inside the entry, got {file!r}")
        return file

    @property
    def input_dtype(self) -> str:
        """The dtype the graph's ``input`` takes: ``float16`` for a float16 export, else
        ``float32`` (an int8 graph quantises its float32 input inside)."""
        return "float16" if self.dtype == "float16" else "float32"

    @model_validator(mode="after")
    def _distinct_names(self) -> OnnxInfo:
        if self.features is not None and self.features in ("", self.input, self.output):
            raise ValueError(
                f"onnx.features must name an output of its own, got {self.features!r} "
                f"(input {self.input!r}, output {self.output!r})"
            )
        return self


class Provenance(_Strict):
    source: str
    checkpoint_sha256: str | None = None
    created: datetime
    metrics: dict[str, Any] = Field(default_factory=dict)


Task = Literal["classification", "localization"]
Regression = Literal["per-class", "single"]


class Localization(_Strict):
    """What a localisation entry's ``boxes`` output is (paper Appendix A; docs/localization.md).

    ``regression``: ``per-class`` (PCR, 4 x K channels, class k's box in channels 4k..4k+3) or
    ``single`` (SCR, 4 channels, one box for every class), each box ``(cx, cy, w, h)`` relative
    to the 224 window (``model_store.boxes``). ``tuned``: the layers fine-tuned from the
    classification net, ``all`` or ``fc`` (fc6 and fc7). ``classifier``: the store's model or
    ensemble that ranks the classes when a request names none (``classify_with``)."""

    regression: Regression
    tuned: Literal["all", "fc"] = "all"
    classifier: str | None = None

    @field_validator("classifier")
    @classmethod
    def _valid_classifier(cls, name: str | None) -> str | None:
        return None if name is None else validate_name(name)

    def box_channels(self, num_classes: int) -> int:
        return 4 * num_classes if self.regression == "per-class" else 4


class Manifest(_Strict):
    schema_version: int
    name: str
    config: ConfigName
    weight_layers: int = Field(ge=11, le=19)
    parameters: int = Field(gt=0)
    num_classes: int = Field(ge=1)
    labels: list[str]
    preprocessing: Preprocessing
    train_scale: TrainScale
    test_scales: list[int] = Field(min_length=1)
    crop_size: Literal[224] = 224
    onnx: OnnxInfo
    provenance: Provenance
    task: Task = "classification"
    localization: Localization | None = None

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, version: int) -> int:
        if version != SCHEMA_VERSION:
            raise ValueError(
                f"unknown schema_version {version}; this verydeep reads schema_version "
                f"{SCHEMA_VERSION} only"
            )
        return version

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        return validate_name(name)

    @field_validator("test_scales")
    @classmethod
    def _scales_at_least_crop(cls, scales: list[int]) -> list[int]:
        if any(q < CROP_SIZE for q in scales):
            raise ValueError(f"test_scales must all be >= {CROP_SIZE}, got {scales}")
        repeated = sorted({q for q in scales if scales.count(q) > 1})
        if repeated:
            raise ValueError(
                f"test_scales lists {', '.join(map(str, repeated))} more than once, got {scales}; "
                "each Q must appear once"
            )
        return scales

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if len(self.labels) != self.num_classes:
            raise ValueError(
                f"labels has {len(self.labels)} entries but num_classes is {self.num_classes}"
            )
        if self.weight_layers != WEIGHT_LAYERS[self.config]:
            raise ValueError(
                f"config {self.config} has {WEIGHT_LAYERS[self.config]} weight layers, "
                f"not {self.weight_layers}"
            )
        if (self.task == "localization") != (self.localization is not None):
            raise ValueError(
                "a localization entry needs its 'localization' field, and only it has one "
                f"(task {self.task!r}, localization {self.localization!r})"
            )
        return self

    def summary(self) -> dict[str, Any]:
        """Every field but the labels, as JSON-ready values (what GET /models lists)."""
        return self.model_dump(mode="json", exclude={"labels"})
