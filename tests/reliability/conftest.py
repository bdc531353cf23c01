"""Reliability fixtures: the service tests' tiny store, registry and clients, shared by import;
and a real ``verydeep serve`` subprocess on a free 127.0.0.1 port."""

from __future__ import annotations

from tests.service.conftest import (  # noqa: F401  (pytest fixtures, registered by import)
    client,
    image,
    make_client,
    png,
    registry,
    service_store,
)
