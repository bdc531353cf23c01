"""Why a request cannot be served, as plain exceptions: no web framework in sight.

Each class carries the HTTP ``status`` and the ``code`` a client is answered with
(``{"error": {"code", "message"}}``, docs/serving.md, "Errors"), and ``retryable`` when the
answer says ``Retry-After`` (the service is loading, busy, or a device call failed). The image
errors of ``model_store.imaging`` carry the same three attributes, so the HTTP layer maps every
refusal by reading them, in one place (``service.http.handlers``).
"""

from __future__ import annotations


class ServiceError(Exception):
    """A request that cannot be served; ``status`` and ``code`` say how the client is told."""

    status = 500
    code = "internal_error"
    retryable = False

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ServiceError):
    status, code = 400, "bad_request"


class UnknownModel(ServiceError):
    status, code = 404, "unknown_model"


class PayloadTooLarge(ServiceError):
    """The body is over the byte limit. The connection is closed after the answer: the rest of
    the body (which may never end) is not read."""

    status, code = 413, "payload_too_large"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Connection": "close"})


class TooLargeForDevice(ServiceError):
    """The views of the request would need a larger network batch than the device is allowed."""

    status, code = 413, "too_large_for_device"


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


class InvalidParameter(ServiceError):
    status, code = 422, "invalid_parameter"


class UnsupportedModel(ServiceError):
    """The model cannot do what was asked (an entry exported before its ONNX file had the
    ``features`` output); the message names the way out."""

    status, code = 422, "unsupported_model"


class NotReady(ServiceError):
    status, code, retryable = 503, "not_ready", True


class Overloaded(ServiceError):
    status, code, retryable = 503, "overloaded", True


class InferenceFailed(ServiceError):
    """onnxruntime failed while running a loaded model (out of device memory, a kernel error).
    What it said is logged; the client learns which model, not why."""

    status, code, retryable = 503, "inference_failed", True

    def __init__(self, model: str) -> None:
        super().__init__(f"inference failed on model {model!r}; the request can be retried")
        self.model = model


class OutOfMemory(ServiceError):
    status, code, retryable = 503, "out_of_memory", True


class TimedOut(ServiceError):
    status, code = 504, "timeout"
