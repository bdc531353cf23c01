"""The errors table of docs/serving.md is the code's: every (status, code) the service can answer
with appears in it exactly once, nothing else does, and the retryable ones say Retry-After."""

from __future__ import annotations

import re
from pathlib import Path

from model_store.imaging import ImageError
from service.core.errors import ServiceError
from service.http import handlers
from service.http.security import UNAUTHORIZED_CODE

DOC = Path(__file__).resolve().parents[2] / "docs" / "serving.md"
ROW = re.compile(r"^\| (\d{3}|other) \| `([a-z_]+)` \| (.*) \|$")


def subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *subclasses(sub)]
    return found


def documented() -> dict[str, tuple[str, str]]:
    """``{code: (status, when)}`` of the table under "## Errors"."""
    section = DOC.read_text().split("## Errors", 1)[1].split("\n## ", 1)[0]
    rows = [ROW.match(line) for line in section.splitlines() if line.startswith("| ")]
    table = [m.groups() for m in rows if m]
    codes = [code for _, code, _ in table]
    assert len(codes) == len(set(codes)), f"a code is listed twice: {codes}"
    return {code: (status, when) for status, code, when in table}


def test_every_error_code_is_documented_with_its_status() -> None:
    refusals = [c for c in subclasses(ServiceError) + [ImageError, *subclasses(ImageError)]]
    raised = {c.code: (str(c.status), c.retryable) for c in refusals}
    framework = {code: (str(status), False) for status, code in handlers._HTTP_CODES.items()}
    answered = {
        **framework,
        **raised,
        UNAUTHORIZED_CODE: ("401", False),
        "internal_error": ("500", False),
        "http_error": ("other", False),
    }
    table = documented()
    assert sorted(table) == sorted(answered)
    for code, (status, retryable) in answered.items():
        assert table[code][0] == status, code
        assert ("Retry-After" in table[code][1]) == retryable, code
