"""Command-line handlers of the service wing. Importing this module imports no torch."""

from __future__ import annotations

import argparse
from typing import Any


def register(commands: Any) -> None:
    """Add the service wing's subcommands to the ``verydeep`` parser."""
    p = commands.add_parser("serve", help="serve the models of a store over HTTP")
    p.add_argument("--store", help="model store directory (VERYDEEP_MODEL_STORE)")
    p.add_argument("--host", help="bind address (VERYDEEP_HOST)")
    p.add_argument("--port", type=int, help="port (VERYDEEP_PORT)")
    p.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    raise NotImplementedError("verydeep serve: being built (issue 3)")
