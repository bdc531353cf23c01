"""Prometheus metrics of one app, in a registry of its own (several apps can live in a process)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

PHASES = ("queue", "decode", "inference", "total")
_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """Requests by route and status, latency by phase, views computed per model."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "verydeep_requests",
            "HTTP requests by route and status code",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "verydeep_classify_seconds",
            "Latency of successful /classify, /features and /localize requests by phase: "
            "waiting for a slot, decoding, inference (rescaling and networks), and total",
            ["phase"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        # Every phase's series exists from the start at 0, so that a dashboard's rate() and a
        # scrape before the first request see the metric rather than no data.
        for phase in PHASES:
            self.latency.labels(phase)
        self.views = Counter(
            "verydeep_views",
            "Network evaluations (views) computed, by model",
            ["model"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "verydeep_classify_in_flight",
            "Requests decoding or inferring now",
            registry=self.registry,
        )
        self.admitted = Gauge(
            "verydeep_classify_admitted",
            "Requests admitted now: reading their upload, waiting for a slot or running",
            registry=self.registry,
        )
        self.queued = Gauge(
            "verydeep_classify_queued",
            "Requests waiting for a slot now",
            registry=self.registry,
        )
        self.models_loaded = Gauge(
            "verydeep_models_loaded", "Models loaded and warmed up", registry=self.registry
        )
        self.ready = Gauge("verydeep_ready", "1 once every model is loaded", registry=self.registry)

    def watch_network(self, engines: Callable[[], Mapping[str, NetworkCounts]]) -> None:
        """Serve ``verydeep_network_calls_total``, ``verydeep_network_views_total``,
        ``verydeep_session_shape_changes_total`` and ``verydeep_sessions`` per model from the
        engines' own counts, read at every scrape."""
        self.registry.register(_NetworkCollector(engines))

    def serving(self, models: Iterable[str], ready: bool) -> None:
        """What a scrape reads of the registry: the models loaded, each with its
        ``verydeep_views_total`` series (0 until its first request), and readiness."""
        names = list(models)
        for name in names:
            self.views.labels(name)
        self.models_loaded.set(len(names))
        self.ready.set(1 if ready else 0)

    def observe_phases(self, **seconds: float) -> None:
        """One observation per phase of ``PHASES``, each given in seconds."""
        if set(seconds) != set(PHASES):
            raise ValueError(f"phases must be {', '.join(PHASES)}, not {', '.join(seconds)}")
        for phase, value in seconds.items():
            self.latency.labels(phase).observe(value)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class NetworkCounts(Protocol):
    @property
    def network_calls(self) -> int: ...

    @property
    def network_views(self) -> int: ...

    @property
    def shape_changes(self) -> int: ...

    @property
    def sessions(self) -> int: ...


class _NetworkCollector(Collector):
    def __init__(self, engines: Callable[[], Mapping[str, NetworkCounts]]) -> None:
        self._engines = engines

    def collect(self) -> Iterator[Metric]:
        calls = CounterMetricFamily(
            "verydeep_network_calls",
            "onnxruntime calls since ready, by model (one call may hold several requests' views)",
            labels=["model"],
        )
        views = CounterMetricFamily(
            "verydeep_network_views",
            "Views computed by the network since ready, by model, each once (padding not counted)",
            labels=["model"],
        )
        changes = CounterMetricFamily(
            "verydeep_session_shape_changes",
            "Network calls since ready given a session that last ran another input shape, by "
            "model (on CUDA each makes cuDNN choose its convolution algorithms again; on the CPU "
            "they cost nothing)",
            labels=["model"],
        )
        sessions = GaugeMetricFamily(
            "verydeep_sessions", "onnxruntime sessions open, by model", labels=["model"]
        )
        for name, engine in sorted(self._engines().items()):
            calls.add_metric([name], engine.network_calls)
            views.add_metric([name], engine.network_views)
            changes.add_metric([name], engine.shape_changes)
            sessions.add_metric([name], engine.sessions)
        yield from (calls, views, changes, sessions)
