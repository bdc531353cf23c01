"""The query parameters of ``POST /classify``, parsed once into ``ClassifyParams`` (a FastAPI
dependency, so that the OpenAPI document describes each parameter), and those of ``/features``
and ``/localize``.

A parameter given twice is ambiguous (proxies and frameworks disagree on which one counts): 422.
So is one the endpoint does not take: a misspelt ``scalez=512`` would otherwise answer with the
default scales and look like a measurement of Q = 512. The names an endpoint takes are the fields
of its parameters' dataclass, the same as its dependency's query arguments (a test holds the two
equal).
``scales`` goes through the one scales parser of the API and the command line
(``model_store.scales``); ``top_k`` must be plain ASCII digits (no ``2_0``, ``+3`` or ``٣``).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, fields
from typing import Annotated, Literal

from fastapi import Depends, Query, Request

from model_store.scales import ScalesError, parse_scales, quoted
from service.core.errors import InvalidParameter
from service.core.features import Pool
from service.core.protocol import Method
from service.settings import Settings

DEFAULT_TOP_K = 5
MapChoice = Literal["none", "top", "all"]
_DIGITS = re.compile(r"[0-9]{1,6}")


@dataclass(frozen=True)
class ClassifyParams:
    model: str | None
    scales: list[int] | None
    flip: bool
    method: Method
    top_k: int | None
    maps: MapChoice = "none"

    def map_classes(self, num_classes: int) -> int:
        """How many classes' score maps the answer carries."""
        return {"none": 0, "top": self.k(num_classes), "all": num_classes}[self.maps]

    def k(self, num_classes: int) -> int:
        """``top_k``, or its default, for a model of ``num_classes`` classes."""
        if self.top_k is None:
            return min(DEFAULT_TOP_K, num_classes)
        if self.top_k > num_classes:
            raise InvalidParameter(f"top_k: {self.top_k} exceeds the {num_classes} classes")
        return self.top_k


ModelQuery = Annotated[
    str | None, Query(description="model name, ensemble name, or comma-separated model names")
]
ScalesQuery = Annotated[
    str | None,
    Query(
        description="comma-separated test scales Q, each in [224, VERYDEEP_MAX_SCALE] "
        "(default: each model's test_scales)",
        examples=["256,384,512"],
    ),
]


# The request dependencies are coroutines although they do nothing asynchronous: FastAPI runs a
# plain ``def`` dependency in its thread pool, two thread hand-offs per request for parsing a
# query string. As coroutines a /classify of a narrow net took 0.7 ms less server CPU and wall
# time (docs/gpu.md, "Where one request's time goes").


async def app_settings(request: Request) -> Settings:
    return request.app.state.service.settings


async def classify_params(
    request: Request,
    settings: Annotated[Settings, Depends(app_settings)],
    model: ModelQuery = None,
    scales: ScalesQuery = None,
    flip: Annotated[bool, Query(description="add the horizontally flipped views")] = True,
    method: Annotated[Method, Query(description="dense, multicrop or combined")] = "dense",
    top_k: Annotated[
        int | None, Query(ge=1, description="1..K (default 5, or K when K < 5)")
    ] = None,
    maps: Annotated[
        MapChoice,
        Query(
            description="add the dense class score maps: top (the classes of predictions) or "
            "all (every class); method dense or combined only"
        ),
    ] = "none",
) -> ClassifyParams:
    check_names(request, ClassifyParams)
    if maps != "none" and method == "multicrop":
        raise InvalidParameter(
            "maps: score maps come from dense evaluation; use method=dense or combined"
        )
    check_top_k(request)
    return ClassifyParams(
        model=model,
        scales=None if scales is None else scale_list(scales, settings),
        flip=flip,
        method=method,
        top_k=top_k,
        maps=maps,
    )


def check_top_k(request: Request) -> None:
    raw_top_k = request.query_params.get("top_k")
    if raw_top_k is not None and not _DIGITS.fullmatch(raw_top_k.strip()):
        raise InvalidParameter(f"top_k: {quoted(raw_top_k)} is not a positive integer")


def scale_list(text: str, settings: Settings) -> list[int]:
    try:
        return parse_scales(
            text, max_scale=settings.max_scale, max_count=settings.max_scales_per_request
        )
    except ScalesError as err:
        raise InvalidParameter(f"scales: {err}") from None


def check_names(request: Request, params: type) -> None:
    """422 for a query parameter the endpoint does not take, or one given more than once."""
    names = [field.name for field in fields(params)]
    counts = Counter(key for key, _ in request.query_params.multi_items())
    unknown = [name for name in counts if name not in names]
    if unknown:
        raise InvalidParameter(
            f"unknown query parameter {quoted(unknown[0])}; this endpoint takes {', '.join(names)}"
        )
    repeated = [name for name in names if counts[name] > 1]
    if repeated:
        raise InvalidParameter(f"{repeated[0]}: given {counts[repeated[0]]} times; give it once")


@dataclass(frozen=True)
class FeaturesParams:
    model: str | None
    scales: list[int] | None
    flip: bool
    pool: Pool


async def features_params(
    request: Request,
    settings: Annotated[Settings, Depends(app_settings)],
    model: ModelQuery = None,
    scales: ScalesQuery = None,
    flip: Annotated[bool, Query(description="average each scale with its mirror")] = True,
    pool: Annotated[
        Pool,
        Query(description="mean: the scales' descriptors averaged; stack: concatenated"),
    ] = "mean",
) -> FeaturesParams:
    check_names(request, FeaturesParams)
    return FeaturesParams(
        model=model,
        scales=None if scales is None else scale_list(scales, settings),
        flip=flip,
        pool=pool,
    )


@dataclass(frozen=True)
class LocalizeParams:
    model: str | None
    classify_with: str | None
    scales: list[int] | None
    flip: bool
    top_k: int | None

    def k(self, num_classes: int) -> int:
        return ClassifyParams(None, None, True, "dense", self.top_k).k(num_classes)


async def localize_params(
    request: Request,
    settings: Annotated[Settings, Depends(app_settings)],
    model: Annotated[
        str | None,
        Query(
            description="a localization model, or a comma list of them whose box sets are "
            "merged together (default: the store's only one)"
        ),
    ] = None,
    classify_with: Annotated[
        str | None,
        Query(
            description="the classification model, ensemble or comma list that ranks the "
            "classes and weighs the boxes (default: the localization model's "
            "localization.classifier)"
        ),
    ] = None,
    scales: Annotated[
        str | None,
        Query(
            description="comma-separated test scales Q, each in [224, VERYDEEP_MAX_SCALE] "
            "(default: each localization model's test_scales)",
            examples=["256,384"],
        ),
    ] = None,
    flip: Annotated[bool, Query(description="add the horizontally flipped views")] = True,
    top_k: Annotated[
        int | None,
        Query(ge=1, description="classes to localize, 1..K (default 5, or K when K < 5)"),
    ] = None,
) -> LocalizeParams:
    check_names(request, LocalizeParams)
    check_top_k(request)
    return LocalizeParams(
        model=model,
        classify_with=classify_with,
        scales=None if scales is None else scale_list(scales, settings),
        flip=flip,
        top_k=top_k,
    )
