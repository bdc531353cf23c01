"""Command-line handlers of the service wing. Importing this module imports no torch, fastapi or
onnxruntime: they load inside the handler that runs."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(commands: Any) -> None:
    """Add the service wing's subcommands to the ``verydeep`` parser."""
    p = commands.add_parser(
        "serve",
        help="serve the models of a store over HTTP",
        description="Serve a model store over HTTP. Settings come from VERYDEEP_* environment "
        "variables; these flags override them.",
    )
    p.add_argument("--store", help="model store directory (VERYDEEP_MODEL_STORE)")
    p.add_argument("--host", help="bind address (VERYDEEP_HOST)")
    p.add_argument("--port", type=int, help="port (VERYDEEP_PORT)")
    p.set_defaults(handler=_serve)

    p = commands.add_parser(
        "evaluate",
        help="top-1 and top-5 error on a labelled image folder, as the paper's tables",
        description="Evaluate models and their ensemble on an ImageFolder-layout folder with the "
        "code that serves /classify. Several models are evaluated one by one and as their "
        "ensemble; a named ensemble likewise.",
    )
    p.add_argument("--store", help="model store directory (default: VERYDEEP_MODEL_STORE)")
    p.add_argument("--model", required=True, help="NAME[,NAME...] or an ensemble name")
    p.add_argument("--data", required=True, help="folder of <class>/<image> files")
    p.add_argument(
        "--method",
        choices=["dense", "multicrop", "combined", "all"],
        default="dense",
        help="all: dense, multi-crop and both (Table 5)",
    )
    p.add_argument(
        "--scales",
        default="default",
        help="Q,Q,...; 'single' for the paper's single-scale rule (Q = S, or (S_min+S_max)/2); "
        "default: each model's test_scales",
    )
    p.add_argument("--no-flip", dest="flip", action="store_false", help="no flipped views")
    p.add_argument("--limit", type=int, help="N images only, in turn from each class")
    p.add_argument(
        "--class-match",
        choices=["name", "index"],
        default="name",
        help="name: class folders are named by labels; index: sorted folders are the classes "
        "in label order (ILSVRC synset folders)",
    )
    p.add_argument("--json", help="write the results to this file")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(handler=_evaluate)


def _serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from service.settings import Settings

    overrides = {
        field: value
        for field, value in (("model_store", args.store), ("host", args.host), ("port", args.port))
        if value is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as err:
        print(f"verydeep serve: invalid settings:\n{err}", file=sys.stderr)
        return 2

    import uvicorn

    from service.http.app import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=settings.shutdown_timeout,
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from model_store import ModelStore
    from service.core.evaluate import (
        EvaluationError,
        evaluate,
        format_table,
        parse_scales,
        write_json,
    )
    from service.settings import Settings

    settings = Settings()
    methods = ["dense", "multicrop", "combined"] if args.method == "all" else [args.method]
    try:
        scales = parse_scales(args.scales, settings.max_scale)
        rows = evaluate(
            ModelStore(args.store or settings.model_store),
            args.model,
            args.data,
            methods=methods,
            scales=scales,
            flip=args.flip,
            limit=args.limit,
            class_match=args.class_match,
            settings=settings,
            progress=args.progress,
        )
    except EvaluationError as err:
        print(f"verydeep evaluate: error: {err}", file=sys.stderr)
        return 2
    print(format_table(rows))
    if args.json:
        write_json(rows, args.json)
        print(f"wrote {args.json}")
    return 0
