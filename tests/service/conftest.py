"""Service fixtures: one store of tiny models for the session, a loaded registry, a client, and
the paper's test protocol written independently with torch, to hold /classify against. What the
tests share besides fixtures is in ``tests/service/helpers.py``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from PIL import Image

from model_store import ModelStore, TrainScale
from service.core.registry import Registry
from service.http.app import create_app
from tests.conftest import TINY_LABELS
from tests.service.helpers import (
    ENSEMBLES,
    MODELS,
    PaperProtocol,
    TestClient,
    encode,
    localization_store,
    peaked_vgg,
    sample_image,
    settings_for,
)
from training.export import export_to_store
from training.fully_conv import to_fully_convolutional


@pytest.fixture(scope="session")
def service_store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    store = ModelStore(tmp_path_factory.mktemp("service") / "store")
    for name, (config, seed, (s_min, s_max), preprocessing) in MODELS.items():
        export_to_store(
            peaked_vgg(config, seed),
            store,
            name,
            labels=TINY_LABELS,
            preprocessing=preprocessing,
            train_scale=TrainScale(min=s_min, max=s_max),
            source="test",
        )
    store.write_ensembles(ENSEMBLES)
    return store


@pytest.fixture(scope="session")
def registry(service_store: ModelStore) -> Registry:
    """The session store, loaded and warmed up once; apps under test share it."""
    reg = Registry(settings_for(service_store.root, default_model="tiny-d"))
    reg.load()
    assert reg.ready, reg.problem
    return reg


@pytest.fixture(scope="session")
def client(registry: Registry) -> Iterator[TestClient]:
    with TestClient(create_app(registry.settings, registry=registry)) as c:
        yield c


@pytest.fixture
def make_client(registry: Registry) -> Iterator:
    """``make_client(**settings)``: a client of an app with other limits over the shared
    registry."""
    opened: list[TestClient] = []

    def make(**overrides: object) -> TestClient:
        settings = settings_for(registry.settings.model_store, **overrides)
        c = TestClient(create_app(settings, registry=registry))
        c.__enter__()
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.__exit__(None, None, None)


@pytest.fixture(scope="session")
def image() -> Image.Image:
    return sample_image()


@pytest.fixture(scope="session")
def png(image: Image.Image) -> bytes:
    return encode(image)


@pytest.fixture(scope="session")
def paper(service_store: ModelStore) -> PaperProtocol:
    models = {}
    for name, (config, seed, _, preprocessing) in MODELS.items():
        fcn = to_fully_convolutional(peaked_vgg(config, seed)).eval()
        models[name] = (fcn, preprocessing, service_store.read(name).manifest.test_scales)
    return PaperProtocol(models)


@pytest.fixture(scope="session")
def loc_registry(service_store: ModelStore, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """The localization store of ``helpers.localization_store``, loaded once."""
    store = localization_store(tmp_path_factory.mktemp("localize") / "store", service_store)
    reg = Registry(settings_for(store.root, warmup=False))
    reg.load()
    assert reg.ready, reg.problem
    return reg


@pytest.fixture(scope="session")
def loc_client(loc_registry: Registry) -> Iterator[TestClient]:
    with TestClient(create_app(loc_registry.settings, registry=loc_registry)) as c:
        yield c


class ReportsCuda:
    """A real CPU session that says it runs on CUDA, to take the engine's CUDA-only paths."""

    def __init__(self, session: object) -> None:
        self._session = session

    def get_providers(self) -> list[str]:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    def __getattr__(self, name: str) -> object:
        return getattr(self._session, name)


@pytest.fixture
def sessions_report_cuda(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every session the engine opens is a CPU session reporting CUDA (``ReportsCuda``); the
    list holds the real sessions, in the order opened."""
    import service.core.sessions as sessions_module

    real_open = sessions_module.open_session
    opened: list[object] = []

    def open_reporting_cuda(*args: object) -> ReportsCuda:
        opened.append(real_open(*args))  # type: ignore[arg-type]
        return ReportsCuda(opened[-1])

    monkeypatch.setattr(sessions_module, "open_session", open_reporting_cuda)
    return opened
