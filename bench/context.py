"""What the benchmarks of one run share: the mode's sizes, the cached stores and images, one
``verydeep serve`` process (started on first use), and measurements that one benchmark reuses
from another (the bare dense time feeds the efficiency figure)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from bench import images
from bench.models import VGG16, VGG19, ModelSpec, cache_root, ensure_store
from bench.server import Server
from model_store import ModelStore

log = logging.getLogger(__name__)

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_CACHE = BENCH_DIR / ".cache"


@dataclass(frozen=True)
class Mode:
    """Repetitions and sizes of one mode (``quick`` for ``make bench``, ``full`` otherwise)."""

    name: str
    reps: int  # timed repetitions of single-view measurements
    warmup: int
    multicrop_scales: tuple[int, ...]
    multicrop_flip: bool
    multicrop_reps: int
    decode_reps: int
    decode_images: int  # 12-megapixel photos for the top-1 agreement
    load_levels: tuple[int, ...]
    load_requests: tuple[int, ...]  # per level, total requests
    load_seconds: float  # per level, at most
    ramp_offsets: tuple[int, ...]  # closed loops (2 requests per client) at onset + offset
    gemm_size: int
    stream_scales: tuple[str, ...]  # "default" (each model's test scales) or a Q
    stream_levels: tuple[int, ...]  # closed-loop clients
    stream_requests: int  # per level, times clients // 2 (at least 1)
    stream_bare_views: int  # views per bare call of the stream's peer
    stream_ensemble: bool = False  # the stream asks for every served model as one ensemble

    @property
    def quick(self) -> bool:
        return self.name == "quick"


QUICK = Mode(
    name="quick",
    reps=9,
    warmup=2,
    multicrop_scales=(256,),
    multicrop_flip=False,
    multicrop_reps=3,
    decode_reps=15,
    decode_images=1,
    load_levels=(1, 2, 4, 8),
    load_requests=(8, 8, 12, 16),
    load_seconds=45.0,
    ramp_offsets=(),
    gemm_size=2048,
    stream_scales=("256",),
    stream_levels=(1, 4),
    stream_requests=12,
    stream_bare_views=8,
)
FULL = Mode(
    name="full",
    reps=21,
    warmup=3,
    multicrop_scales=(256, 384, 512),
    multicrop_flip=True,
    multicrop_reps=3,
    decode_reps=31,
    decode_images=3,
    load_levels=(1, 2, 4, 8),
    load_requests=(24, 24, 40, 64),
    load_seconds=120.0,
    ramp_offsets=(-2, 2),
    gemm_size=3072,
    stream_scales=("default", "256", "384", "512"),
    stream_levels=(1, 2, 4, 8),
    stream_requests=24,
    stream_bare_views=32,
)
MODES = {"quick": QUICK, "full": FULL}

REQUEST_IMAGE = (640, 480)
"""The photo every latency figure classifies."""


@dataclass
class Context:
    mode: Mode
    cache_dir: Path = DEFAULT_CACHE
    device: str = "cpu"  # "cpu" or "cuda": the provider of the server and of every bare peer
    log_dir: Path | None = None
    model: ModelSpec = VGG16
    served: tuple[ModelSpec, ...] = (VGG16, VGG19)
    server_env: dict[str, str] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)
    _server: Server | None = None
    _store: ModelStore | None = None
    _jpeg: bytes | None = None

    def settings(self):  # -> service.settings.Settings
        """The settings the served process runs with."""
        from bench.common import service_settings

        return service_settings(self.server_env)

    def store(self) -> ModelStore:
        """The served store (VGG-16 and VGG-19 unless a test says otherwise)."""
        if self._store is None:
            self._store = ensure_store(self.cache_dir, list(self.served))
        return self._store

    def model_entry(self):  # -> model_store.StoreEntry
        return self.store().read(self.model.name, verify=False)

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    @property
    def dtype(self) -> str:
        return self.model.dtype

    def engine_options(self):  # -> service.core.engine.EngineOptions
        """The options of the service's ``Engine`` under this run's settings, on its device."""
        return replace(self.settings().engine_options(), device=self.device)

    def request_jpeg_path(self) -> Path:
        """The cached photo every latency figure classifies, written on first use."""
        path = cache_root(self.cache_dir) / "photo-640x480-q90-seed1.jpg"
        if not path.exists():
            path.write_bytes(images.jpeg(*REQUEST_IMAGE, seed=1, quality=90))
        return path

    def request_jpeg(self) -> bytes:
        if self._jpeg is None:
            self._jpeg = self.request_jpeg_path().read_bytes()
        return self._jpeg

    def server(self) -> Server:
        """The shared ``verydeep serve`` process, started on first use (its start is timed)."""
        if self._server is None:
            log_path = (self.log_dir or cache_root(self.cache_dir)) / "server.log"
            server = Server(self.store().root, self.server_env, log_path=log_path)
            log.info("starting verydeep serve on %s ...", server.url)
            server.start()
            log.info("ready in %.1f s", server.ready_s)
            self._server = server
            self.shared["server_start"] = {
                "models": [s.name for s in self.served],
                "ready_s": server.ready_s,
                "memory_at_ready": server.ready_memory,
            }
        return self._server

    def classify_url(self) -> str:
        return f"{self.server().url}/classify"

    def close(self) -> None:
        if self._server is not None:
            self.shared.setdefault("server_start", {})["memory_at_end"] = self._server.memory()
            self._server.stop()
            self._server = None


def post_image(
    client: httpx.Client, url: str, data: bytes, params: dict[str, Any]
) -> httpx.Response:
    """POST the image as a raw ``image/jpeg`` body; raises on anything but 200."""
    r = client.post(url, params=params, content=data, headers={"Content-Type": "image/jpeg"})
    if r.status_code != 200:
        raise RuntimeError(f"/classify answered {r.status_code}: {r.text[:300]}")
    return r


def ort_threads() -> int:
    """The intra-op threads onnxruntime uses when told 0 (as the service does by default): one
    per physical core."""
    physical = _physical_cores()
    return physical or os.cpu_count() or 1


def _physical_cores() -> int | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    cores = set()
    phys = core = None
    for line in text.splitlines() + [""]:
        if line.startswith("physical id"):
            phys = line.split(":")[1].strip()
        elif line.startswith("core id"):
            core = line.split(":")[1].strip()
        elif not line.strip():
            if core is not None:
                cores.add((phys, core))
            phys = core = None
    return len(cores) or None
