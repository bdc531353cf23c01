"""The service's HTTP-free core: protocol, engines and their sessions, the registry of loaded
models, admission of work, and offline evaluation. Nothing here imports a web framework; the
HTTP layer (``service.http``) is built on top of it."""
