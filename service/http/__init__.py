"""The HTTP layer: the FastAPI app, its routes, request parsing, responses, security, access log
and metrics, on top of ``service.core``."""
