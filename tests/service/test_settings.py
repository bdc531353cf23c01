"""Settings come from VERYDEEP_* variables, with the documented defaults."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("VERYDEEP_"):
            monkeypatch.delenv(name)
    s = Settings()
    assert s.model_store == Path("./model_store")
    assert s.default_model is None
    assert (s.device, s.host, s.port) == ("auto", "127.0.0.1", 8000)
    assert s.max_upload_bytes == 20 * 1024 * 1024
    assert s.max_image_pixels == 40_000_000
    assert (s.max_scale, s.max_concurrency) == (1024, 2)
    assert s.max_batch_pixels == 8 * 1024 * 1024 and s.shutdown_timeout == 20.0
    assert s.api_key is None and s.cors_origins == []
    assert s.forwarded_allow_ips == ["127.0.0.1", "::1"]


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VERYDEEP_MODEL_STORE", "/srv/models")
    monkeypatch.setenv("VERYDEEP_DEFAULT_MODEL", "vgg16")
    monkeypatch.setenv("VERYDEEP_DEVICE", "cuda")
    monkeypatch.setenv("VERYDEEP_MAX_UPLOAD_BYTES", "1000")
    monkeypatch.setenv("VERYDEEP_MAX_SCALE", "640")
    monkeypatch.setenv("VERYDEEP_PORT", "9000")
    s = Settings()
    assert s.model_store == Path("/srv/models") and s.default_model == "vgg16"
    assert (s.device, s.max_upload_bytes, s.max_scale, s.port) == ("cuda", 1000, 640, 9000)
    assert Settings(port=9100).port == 9100  # arguments override the environment
    monkeypatch.setenv("VERYDEEP_DEFAULT_MODEL", "")
    assert Settings().default_model is None
    monkeypatch.setenv("VERYDEEP_FORWARDED_ALLOW_IPS", " 10.0.0.0/8, 192.168.1.5,fd00::/8 ")
    assert Settings().forwarded_allow_ips == ["10.0.0.0/8", "192.168.1.5", "fd00::/8"]
    monkeypatch.setenv("VERYDEEP_FORWARDED_ALLOW_IPS", "*")
    assert Settings().forwarded_allow_ips == ["*"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DEVICE", "tpu"),
        ("MAX_SCALE", "100"),
        ("MAX_CONCURRENCY", "0"),
        ("PORT", "70000"),
        ("CPU_PARALLEL_RUNS", "0"),
        ("CPU_MEM_ARENA", "maybe"),
        ("FORWARDED_ALLOW_IPS", "proxy.internal"),
        ("FORWARDED_ALLOW_IPS", "10.0.0.0/33"),
    ],
)
def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(f"VERYDEEP_{name}", value)
    with pytest.raises(ValidationError):
        Settings()


SERVING_DOC = Path(__file__).resolve().parents[2] / "docs" / "serving.md"
_ROW = re.compile(r"^\| `([A-Z_0-9]+)` \| ([^|]+) \|", re.MULTILINE)


def documented_settings() -> dict[str, str]:
    """``{NAME: default cell}`` of the settings table in docs/serving.md, section "Settings"
    (up to the next section of the same level)."""
    text = SERVING_DOC.read_text()
    start = text.index("\n## Settings\n")
    end = text.find("\n## ", start + 1)
    table = text[start : end if end != -1 else len(text)]
    return {name: cell.strip().strip("`") for name, cell in _ROW.findall(table)}


def test_every_setting_is_documented_with_its_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("VERYDEEP_"):
            monkeypatch.delenv(name)
    documented = documented_settings()
    fields = Settings.model_fields
    assert set(documented) == {name.upper() for name in fields}
    defaults = Settings()
    for name in fields:
        value, cell = getattr(defaults, name), documented[name.upper()]
        if value is None:
            assert cell in ("unset", "first loaded model by name"), name
        elif isinstance(value, bool):
            assert cell == str(value).lower(), name
        elif isinstance(value, int | float):
            assert float(cell) == value, name
        elif isinstance(value, list):
            assert cell == (",".join(value) or "empty"), name
        else:
            assert cell == str(value) or Path(cell) == value, name
