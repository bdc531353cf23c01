"""The bodies of ``/classify``, ``/features`` and ``/localize`` answers, each built in one place
from what the core computed."""

from __future__ import annotations

import io

import numpy as np

from model_store.imaging import rescaled_size
from service.core import protocol
from service.core.classify import Outcome
from service.core.describe import FeaturesOutcome
from service.core.localize_request import LocalizeOutcome
from service.core.registry import Resolved
from service.http.params import ClassifyParams, FeaturesParams, LocalizeParams
from service.http.schemas import (
    ClassifyResponse,
    FeaturesResponse,
    ImageSize,
    LocalizedPrediction,
    LocalizeResponse,
    LocalizerScales,
    LocalizeTiming,
    Prediction,
    ScoreMap,
    Timing,
)


def classify_response(
    resolved: Resolved, params: ClassifyParams, outcome: Outcome, k: int, total_s: float
) -> ClassifyResponse:
    result, decoded, labels = outcome.result, outcome.decoded, resolved.labels
    predictions = [
        Prediction(index=i, label=labels[i], probability=p)
        for i, p in protocol.top_k(result.posterior, k)
    ]
    return ClassifyResponse(
        model=resolved.name,
        members=[m.name for m in result.members],
        method=params.method,
        scales=result.scales,
        flip=params.flip,
        views=result.views,
        predictions=predictions,
        image=ImageSize(width=decoded.width, height=decoded.height),
        maps=score_maps(outcome, predictions, params) if params.maps != "none" else None,
        timing_ms=Timing(
            decode=milliseconds(outcome.decode_s),
            inference=milliseconds(outcome.inference_s),
            total=milliseconds(total_s),
        ),
    )


def score_maps(
    outcome: Outcome, predictions: list[Prediction], params: ClassifyParams
) -> list[ScoreMap]:
    """One entry per member and scale; raw scores rounded to 5 decimals (docs/serving.md,
    "Score maps")."""
    entries = []
    for member in outcome.result.members:
        assert member.maps is not None
        for q, score_map in member.maps.items():
            classes = (
                [p.index for p in predictions] if params.maps == "top" else range(len(score_map))
            )
            width, height = rescaled_size(*outcome.decoded.image.size, q)
            rows = np.round(score_map[list(classes)].reshape(len(classes), -1).astype(float), 5)
            entries.append(
                ScoreMap(
                    model=member.name,
                    scale=q,
                    height=score_map.shape[1],
                    width=score_map.shape[2],
                    image_width=width,
                    image_height=height,
                    classes=list(classes),
                    scores=rows.tolist(),
                )
            )
    return entries


NPY = "application/x-npy"


def features_response(
    resolved: Resolved, params: FeaturesParams, outcome: FeaturesOutcome, total_s: float
) -> FeaturesResponse:
    descriptor, decoded = outcome.descriptor, outcome.decoded
    return FeaturesResponse(
        model=resolved.name,
        members=[name for name, _ in descriptor.members],
        scales=descriptor.scales,
        flip=params.flip,
        pool=params.pool,
        dimension=len(descriptor.vector),
        features=descriptor.vector.tolist(),
        image=ImageSize(width=decoded.width, height=decoded.height),
        timing_ms=Timing(
            decode=milliseconds(outcome.decode_s),
            inference=milliseconds(outcome.inference_s),
            total=milliseconds(total_s),
        ),
    )


def localize_response(
    model: str,
    classifier: Resolved,
    params: LocalizeParams,
    outcome: LocalizeOutcome,
    total_s: float,
) -> LocalizeResponse:
    result, decoded, labels = outcome.result, outcome.decoded, classifier.labels
    return LocalizeResponse(
        model=model,
        classified_by=classifier.name,
        members=list(result.members),
        localizers=[LocalizerScales(model=name, scales=list(qs)) for name, qs in result.localizers],
        scales=list(result.scales),
        flip=params.flip,
        boxes_per_class=result.boxes_per_class,
        predictions=[
            LocalizedPrediction(
                index=p.index,
                label=labels[p.index],
                probability=p.probability,
                box=list(p.box),
                box_score=p.box_score,
            )
            for p in result.predictions
        ],
        image=ImageSize(width=decoded.width, height=decoded.height),
        timing_ms=LocalizeTiming(
            decode=milliseconds(outcome.decode_s),
            inference=milliseconds(outcome.inference_s),
            merge=milliseconds(result.merge_s),
            total=milliseconds(total_s),
        ),
    )


def npy_bytes(vector: np.ndarray) -> bytes:
    """``vector`` as a NumPy ``.npy`` file (float32), for clients that ask for it."""
    buffer = io.BytesIO()
    np.save(buffer, vector.astype(np.float32), allow_pickle=False)
    return buffer.getvalue()


def milliseconds(seconds: float) -> float:
    return round(seconds * 1000, 3)
