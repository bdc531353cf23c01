"""Service settings, read from ``VERYDEEP_*`` environment variables (docs/serving.md,
"Settings")."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from model_store.imaging import ImageLimits
from service.core.engine import ConvAlgoSearch, CudaLayout, Device, EngineOptions, Preprocess

_ORIGIN = re.compile(r"^https?://[^\s/?#]+$")


class Settings(BaseSettings):
    """Every limit the service enforces, with the environment variable that sets it."""

    model_config = SettingsConfigDict(
        env_prefix="VERYDEEP_", extra="ignore", protected_namespaces=(), frozen=True
    )

    model_store: Path = Field(Path("./model_store"), description="model store directory")
    default_model: str | None = Field(
        None,
        description="model, ensemble or comma list used when a request names none "
        "(unset: the first loaded model by name)",
    )
    device: Device = Field("auto", description="auto: CUDA when it loads, else CPU")
    cuda_mem_limit: int | None = Field(
        None, gt=0, description="bytes of GPU memory each model's CUDA arena may take"
    )
    cuda_sessions: int = Field(
        4,
        ge=1,
        description="onnxruntime sessions per model on CUDA, each kept for the input shape it "
        "ran last (cuDNN chooses its algorithms again at every change of shape: tens of ms in "
        "float32, up to a second in float16); each holds a copy of the weights on the GPU, "
        "unless CUDA_SHARED_WEIGHTS: then this is the most sessions, opened one per new input "
        "shape",
    )
    cuda_shared_weights: bool = Field(
        False,
        description="the CUDA sessions of a model use one copy of its weights on the GPU "
        "(onnxruntime's add_initializer), so that a session costs its activations only, opens "
        "in milliseconds when a new input shape comes, and CUDA_SESSIONS can cover every shape "
        "of the traffic; needs the onnx package (the cuda extra); off until measured on a GPU",
    )
    cudnn_conv_algo_search: ConvAlgoSearch = Field(
        "heuristic",
        description="how cuDNN picks convolution algorithms for a new input shape: heuristic "
        "(fast to choose, fast kernels), exhaustive (times them all: hundreds of ms per new "
        "shape), default (no search, slower kernels)",
    )
    cuda_layout: CudaLayout = Field(
        "auto",
        description="layout of CUDA convolutions: nhwc (channels last) or nchw; auto: nhwc for "
        "float16 models (cuDNN picks algorithms 100-1000x slower for some float16 nchw shapes), "
        "nchw for float32 ones",
    )
    preprocess: Preprocess = Field(
        "pillow",
        description="how an image is rescaled and normalized for each model: pillow (Pillow and "
        "numpy on the CPU) or graph (an ONNX graph on the model's device, within a pixel level "
        "of Pillow's; not faster on a CPU, not yet measured on a GPU)",
    )
    intra_op_threads: int = Field(
        0, ge=0, description="onnxruntime intra-op threads per model (0: onnxruntime decides)"
    )
    cpu_mem_arena: bool = Field(
        True,
        description="keep onnxruntime's CPU memory arena: the largest call's activations stay "
        "allocated (VGG-16: 1.5 GiB resident after a Q=512 flip pair, 0.8 GiB without), and "
        "calls of 1 to 10 views run 8-11% faster than with memory freed after each call",
    )
    cpu_parallel_runs: int = Field(
        1,
        ge=1,
        description="network calls running at once on the CPU provider, over all models; each "
        "call uses every intra-op thread, so more make them share the cores (two at once on 2 "
        "cores: 17-24% slower each); the other requests decode meanwhile",
    )
    warmup: bool = Field(True, description="run each model at its test scales before ready")
    background_load: bool = Field(
        True,
        description="load the store in a background thread (/healthz answers at once, /readyz "
        "says 503 until loaded); false: the server starts accepting requests once loaded",
    )

    max_upload_bytes: int = Field(20 * 1024 * 1024, gt=0, description="request body limit")
    max_image_pixels: int = Field(
        40_000_000, gt=0, description="width x height limit, checked before decoding"
    )
    min_image_side: int = Field(16, ge=1, description="smallest accepted image side, pixels")
    max_aspect_ratio: float = Field(
        6.0, ge=1.0, description="largest accepted long side / short side"
    )
    max_scale: int = Field(1024, ge=224, description="largest accepted test scale Q")
    max_scales_per_request: int = Field(8, ge=1, description="most Q values in one request")
    jpeg_draft: bool = Field(
        True,
        description="let libjpeg decode large JPEGs at 1/2, 1/4 or 1/8 size when the "
        "largest requested Q still fits",
    )

    max_batch: int = Field(
        10,
        ge=1,
        description="images per onnxruntime call: multi-crop's 25 or 50 crops of a scale run in "
        "chunks of this many (the memory arena keeps the largest call's activations for good)",
    )
    max_batch_pixels: int = Field(
        8 * 1024 * 1024,
        gt=0,
        description="largest N x H x W of one network call; a request whose views need more is "
        "refused with 413 before inference (bounds activation memory on the device)",
    )

    max_map_values: int = Field(
        1_000_000,
        gt=0,
        description="most numbers the score maps of one /classify answer may hold (classes x "
        "cells, over members and scales; about 10 bytes of JSON each); more is a 422",
    )
    max_localize_boxes: int = Field(
        4096,
        ge=1,
        description="most boxes one class of a /localize request may merge (map cells x views, "
        "over the scales); merging n boxes takes 4 n^2 bytes and time in n^2 (4,096: 64 MiB and "
        "about a second on 2 cores); more is a 422",
    )
    batch_window_ms: float = Field(
        0.0,
        ge=0,
        le=1000,
        description="milliseconds a network call waits for other requests' views of the same "
        "model and input shape to join it (0: no waiting; views that queue up behind a running "
        "call still share the next one); calls stay within max_batch and max_batch_pixels",
    )

    max_concurrency: int = Field(2, ge=1, description="requests decoding or inferring at once")
    max_queue: int = Field(
        32,
        ge=0,
        description="requests waiting for a slot before 503; at most max_concurrency + max_queue "
        "requests are admitted at once (reading their upload, waiting or running)",
    )
    queue_timeout: float = Field(10.0, ge=0, description="seconds a request waits for a slot")
    request_timeout: float = Field(
        120.0, gt=0, description="seconds for decoding and inference of one request"
    )
    retry_after: int = Field(1, ge=0, description="Retry-After seconds sent with 503")
    shutdown_timeout: float = Field(
        20.0,
        ge=0,
        description="seconds requests in flight may take to finish after SIGTERM before the "
        "server stops anyway",
    )

    api_key: SecretStr | None = Field(
        None,
        description="when set, every route but /healthz and /readyz needs "
        "'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated origins allowed by CORS (e.g. https://app.example.com), "
        "or '*'; empty: no cross-origin access",
    )

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    forwarded_allow_ips: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1", "::1"],
        description="comma-separated addresses or networks (CIDR) of the proxies whose "
        "X-Forwarded-For and X-Forwarded-Proto are believed, or '*' for any: the access log's "
        "client is then the address they name; uvicorn's default, this host's loopback",
    )

    @field_validator("default_model", "api_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("cors_origins", "forwarded_allow_ips", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip().rstrip("/") for part in value.split(",") if part.strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(
                    f"{origin!r} is not an origin: use scheme://host[:port] without a path, or '*'"
                )
        return origins

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxies(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            if entry != "*":
                try:
                    ipaddress.ip_network(entry, strict=False)
                except ValueError:
                    raise ValueError(
                        f"{entry!r} is not an IP address or network: use 10.0.0.5, "
                        "10.0.0.0/8 or '*'"
                    ) from None
        return entries

    def engine_options(self) -> EngineOptions:
        """How these settings run every model."""
        return EngineOptions(
            device=self.device,
            cuda_mem_limit=self.cuda_mem_limit,
            cuda_sessions=self.cuda_sessions,
            cuda_shared_weights=self.cuda_shared_weights,
            cudnn_conv_algo_search=self.cudnn_conv_algo_search,
            cuda_layout=self.cuda_layout,
            intra_op_threads=self.intra_op_threads,
            cpu_parallel_runs=self.cpu_parallel_runs,
            cpu_mem_arena=self.cpu_mem_arena,
            preprocess=self.preprocess,
            max_batch=self.max_batch,
            max_batch_pixels=self.max_batch_pixels,
            batch_window_ms=self.batch_window_ms,
        )

    def image_limits(self) -> ImageLimits:
        """What ``imaging.decode`` refuses under these settings."""
        return ImageLimits(
            max_pixels=self.max_image_pixels,
            min_side=self.min_image_side,
            max_aspect_ratio=self.max_aspect_ratio,
        )
