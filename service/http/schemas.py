"""Response bodies, as pydantic models so that the OpenAPI document (/docs) is exact."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from model_store import Localization, OnnxInfo, Preprocessing, Provenance, TrainScale


class Prediction(BaseModel):
    index: int = Field(description="class index in the model's output")
    label: str
    probability: float = Field(ge=0, le=1)


class ImageSize(BaseModel):
    width: int = Field(description="width of the upload after EXIF orientation")
    height: int


class Timing(BaseModel):
    decode: float = Field(description="decoding and conversion to RGB, milliseconds")
    inference: float = Field(description="rescaling, normalization and the networks, milliseconds")
    total: float = Field(description="from the request's arrival to the response, milliseconds")


class ScoreMap(BaseModel):
    """One member's dense class score map at one scale (docs/serving.md, "Score maps")."""

    model: str = Field(description="the member whose map this is")
    scale: int = Field(description="the test scale Q")
    height: int = Field(description="rows of the map: floor(image_height / 32) - 6")
    width: int = Field(description="columns of the map: floor(image_width / 32) - 6")
    image_width: int = Field(description="width of the image rescaled to Q, pixels")
    image_height: int = Field(description="height of the image rescaled to Q, pixels")
    stride: int = Field(32, description="pixels between neighbouring cells")
    window: int = Field(224, description="side of the square window each cell scores")
    classes: list[int] = Field(description="the class indices of the rows of scores")
    scores: list[list[float]] = Field(
        description="raw class scores (before softmax), one row per class, each row-major "
        "height x width: cell (i, j) scores the window at (stride * j, stride * i) of the "
        "rescaled image; with flip the mean of the image's and the mirrored view's maps"
    )


class ClassifyResponse(BaseModel):
    model: str = Field(description="the model, ensemble or comma list that was asked for")
    members: list[str] = Field(description="the models whose posteriors were averaged")
    method: Literal["dense", "multicrop", "combined"]
    scales: list[int] = Field(
        description="the test scales Q; when each member used its own test_scales and these "
        "differ, every Q used by some member, ascending"
    )
    flip: bool
    views: int = Field(
        description="network evaluations per member (the largest, when members used different "
        "numbers of scales)"
    )
    predictions: list[Prediction] = Field(description="top_k classes, most probable first")
    image: ImageSize
    timing_ms: Timing
    maps: list[ScoreMap] | None = Field(
        None,
        description="with maps=top or all: the dense class score maps, one per member and "
        "scale (absent otherwise)",
    )


class FeaturesResponse(BaseModel):
    model: str = Field(description="the model, ensemble or comma list that was asked for")
    members: list[str] = Field(description="the models whose descriptors were concatenated")
    scales: list[int] = Field(description="every Q used by some member, ascending")
    flip: bool
    pool: Literal["mean", "stack"]
    dimension: int = Field(description="length of features")
    features: list[float] = Field(
        description="the L2-normalised descriptor: per member, fc7's maps averaged over space "
        "(and the mirror), over scales (mean) or concatenated in ascending Q (stack); members "
        "concatenated in order and normalised again"
    )
    image: ImageSize
    timing_ms: Timing


class LocalizedPrediction(Prediction):
    box: list[float] = Field(
        min_length=4,
        max_length=4,
        description="[x0, y0, x1, y1] in the uploaded image's pixels (after EXIF orientation), "
        "x1 and y1 exclusive: the merged box of largest weight",
    )
    box_score: float = Field(
        ge=0,
        le=1,
        description="the box's weight over the class's total: the share of the classifier's "
        "evidence for the class (its posterior at each cell of each view) that voted for it",
    )


class LocalizeTiming(Timing):
    merge: float = Field(description="greedy merging of the classes' boxes, milliseconds")


class LocalizerScales(BaseModel):
    model: str = Field(description="a localization model whose boxes were merged")
    scales: list[int] = Field(description="the test scales Q it ran at")


class LocalizeResponse(BaseModel):
    model: str = Field(
        description="the localization model whose boxes these are, or the comma list of those "
        "whose box sets were merged together"
    )
    classified_by: str = Field(
        description="the model, ensemble or comma list that ranked the classes and weighed "
        "the boxes"
    )
    members: list[str] = Field(description="the classification models whose posteriors averaged")
    localizers: list[LocalizerScales] = Field(
        description="the localization models, in order, each with the scales it ran at"
    )
    scales: list[int] = Field(
        description="the test scales Q the classifier ran at: every scale of a localization model"
    )
    flip: bool
    boxes_per_class: int = Field(
        description="boxes merged per class: map cells x views, over the localization models"
    )
    predictions: list[LocalizedPrediction] = Field(
        description="top_k classes, most probable first, each with its box"
    )
    image: ImageSize
    timing_ms: LocalizeTiming


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable, e.g. unknown_model, image_too_large")
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ModelInfo(BaseModel):
    """The manifest's fields but the labels, plus the execution provider that runs the model."""

    schema_version: int
    name: str
    config: str
    weight_layers: int
    parameters: int
    num_classes: int
    preprocessing: Preprocessing
    train_scale: TrainScale
    test_scales: list[int]
    crop_size: int
    onnx: OnnxInfo
    provenance: Provenance
    task: Literal["classification", "localization"] = Field(
        description="localization: the net regresses boxes, for POST /localize"
    )
    localization: Localization | None = Field(
        None, description="for a localization model: regression, tuned layers, classifier"
    )
    provider: str = Field(description="e.g. CUDAExecutionProvider or CPUExecutionProvider")
    int8_note: str | None = Field(
        default=None,
        description="for an int8 model, when it runs slowly or loses accuracy here (a CPU "
        "without VNNI) or is not measured (CUDA); null otherwise",
    )


class EnsembleInfo(BaseModel):
    name: str
    members: list[str]


class SkippedInfo(BaseModel):
    name: str
    kind: Literal["model", "ensemble"]
    reason: str


class ModelsResponse(BaseModel):
    default: str | None = Field(description="what a request without `model` runs")
    models: list[ModelInfo]
    ensembles: list[EnsembleInfo]
    skipped: list[SkippedInfo] = Field(description="store entries that are not served, and why")
    changed_on_disk: dict[str, str] = Field(
        default_factory=dict,
        description="served models whose ONNX file changed on disk after loading, and how; "
        "they still answer from the verified copy loaded at start-up",
    )


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    ready: bool
    state: Literal["loading", "ready", "failed"]
    models: list[str] = Field(description="loaded and warmed-up models")
    ensembles: list[str]
    skipped: list[SkippedInfo]
    changed_on_disk: dict[str, str] = Field(
        default_factory=dict,
        description="served models whose ONNX file changed on disk after loading, and how",
    )
    problem: str | None = Field(None, description="why not ready, or what is amiss though ready")
    error: ErrorDetail | None = Field(None, description="set with status 503")
