"""The body of a ``/classify`` answer, built in one place from what the core computed."""

from __future__ import annotations

from service.core import protocol
from service.core.classify import Outcome
from service.core.registry import Resolved
from service.http.params import ClassifyParams
from service.http.schemas import ClassifyResponse, ImageSize, Prediction, Timing


def classify_response(
    resolved: Resolved, params: ClassifyParams, outcome: Outcome, k: int, total_s: float
) -> ClassifyResponse:
    result, decoded, labels = outcome.result, outcome.decoded, resolved.labels
    return ClassifyResponse(
        model=resolved.name,
        members=[m.name for m in result.members],
        method=params.method,
        scales=result.scales,
        flip=params.flip,
        views=result.views,
        predictions=[
            Prediction(index=i, label=labels[i], probability=p)
            for i, p in protocol.top_k(result.posterior, k)
        ],
        image=ImageSize(width=decoded.width, height=decoded.height),
        timing_ms=Timing(
            decode=milliseconds(outcome.decode_s),
            inference=milliseconds(outcome.inference_s),
            total=milliseconds(total_s),
        ),
    )


def milliseconds(seconds: float) -> float:
    return round(seconds * 1000, 3)
