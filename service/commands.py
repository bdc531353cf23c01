"""Command-line handlers of the service wing. Importing this module imports no torch, fastapi or
onnxruntime: they load inside the handler that runs."""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.settings import Settings

STORE_VARIABLE = "VERYDEEP_MODEL_STORE"
DEFAULT_STORE = "./model_store"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
"""The defaults of ``service.settings.Settings`` as the help shows them (a test holds them to
it): the parser is built without importing the settings' dependencies."""


def from_env(variable: str, fallback: object) -> str:
    """How an option that defaults to an environment variable says so in its help, with the
    variable's current value when it is set."""
    value = os.environ.get(variable)
    now = f" (set: {value!r})" if value is not None else ""
    return f"{variable}{now}, else {fallback}".replace("%", "%%")


def register(commands: Any) -> None:
    """Add the service wing's subcommands to the ``verydeep`` parser."""
    _register_serve(commands)
    _register_evaluate(commands)
    _register_features(commands)


def _register_serve(commands: Any) -> None:
    p = commands.add_parser(
        "serve",
        help="serve the models of a store over HTTP",
        description="Serve a model store over HTTP (docs/serving.md). Settings come from "
        "VERYDEEP_* environment variables; these flags override them. A store that does not "
        "exist or holds no model entry, or an address that cannot be listened on, is refused "
        "before anything loads.",
    )
    _store_option(p)
    p.add_argument(
        "--host",
        help=f"bind address; 0.0.0.0 for every interface (default: "
        f"{from_env('VERYDEEP_HOST', DEFAULT_HOST)})",
    )
    p.add_argument(
        "--port", type=int, help=f"port (default: {from_env('VERYDEEP_PORT', DEFAULT_PORT)})"
    )
    p.set_defaults(handler=_serve)


def _register_evaluate(commands: Any) -> None:
    p = commands.add_parser(
        "evaluate",
        help="top-1 and top-5 error on a labelled image folder, as the paper's tables",
        description="Evaluate models and their ensemble on an ImageFolder-layout folder with the "
        "code that serves /classify (docs/evaluation.md). Several models are evaluated one by "
        "one and as their ensemble; a named ensemble likewise. With --task localization, a "
        "localization model's top-1 and top-5 localisation error by the code that serves "
        "/localize, and its central-crop error (Tables 8 and 9). Settings such as "
        "VERYDEEP_DEVICE and VERYDEEP_MAX_SCALE apply as in serve.",
    )
    _store_option(p)
    _localization_options(p)
    p.add_argument(
        "--model",
        required=True,
        metavar="NAME[,NAME...]",
        help="a model, several models (each alone and their ensemble) or an ensemble name "
        "(required)",
    )
    p.add_argument(
        "--data",
        required=True,
        metavar="DIR",
        help="folder of <class>/<image> files (required)",
    )
    p.add_argument(
        "--method",
        choices=["dense", "multicrop", "combined", "all"],
        default="dense",
        help="all: dense, multi-crop and both combined (Table 5) (default: %(default)s)",
    )
    p.add_argument(
        "--scales",
        default="default",
        metavar="Q,Q,...",
        help="test scales; 'single' for the paper's single-scale rule (Q = S, or "
        "(S_min+S_max)/2); 'default': each model's test_scales (default: %(default)s)",
    )
    p.add_argument(
        "--no-flip",
        dest="flip",
        action="store_false",
        help="no flipped views (default: each image and its mirror image, as /classify)",
    )
    p.add_argument(
        "--limit",
        type=int,
        metavar="N",
        help="N images only, taken in turn from each class (default: every image)",
    )
    p.add_argument(
        "--class-match",
        choices=["name", "index"],
        default="name",
        help="name: class folders are named by labels; index: sorted folders are the classes "
        "in label order (ILSVRC synset folders) (default: %(default)s)",
    )
    p.add_argument(
        "--json",
        metavar="FILE",
        help="also write the results to this JSON file (default: the table only)",
    )
    p.add_argument(
        "--maps",
        metavar="DIR",
        help="also draw each image's dense score maps into DIR/<model>/<class>/<image>.png: "
        "the heat of its true class beside its top-1's (default: none)",
    )
    _progress_option(p)
    p.set_defaults(handler=_evaluate)


def _localization_options(p: argparse.ArgumentParser) -> None:
    """evaluate's options of --task localization."""
    p.add_argument(
        "--task",
        choices=["classification", "localization"],
        default="classification",
        help="localization: --model is a localization model, or a comma list of them whose "
        "box sets are merged together (default: %(default)s)",
    )
    p.add_argument(
        "--classify-with",
        metavar="NAME[,NAME...]",
        help="--task localization: the classifier that ranks the classes (default: the "
        "localization model's manifest's localization.classifier)",
    )
    p.add_argument(
        "--boxes",
        metavar="DIR",
        help="--task localization: ILSVRC's VOC XML box files (default: DATA/annotations.json)",
    )
    p.add_argument(
        "--draw",
        metavar="DIR",
        help="--task localization: also draw each image into DIR/<class>/<image>.png with its "
        "truth (green), top-1 (red) and central-crop (dashed blue) boxes (default: none)",
    )


def _register_features(commands: Any) -> None:
    p = commands.add_parser(
        "features",
        help="the paper's image descriptors of a folder (Appendix B), as POST /features",
        description="Compute the descriptor of every image of a folder (<class>/<image> or "
        "flat) with the code that answers POST /features, and write them to a .npz file.",
    )
    _store_option(p)
    p.add_argument("--model", required=True, help="NAME[,NAME...] or an ensemble name")
    p.add_argument("--data", required=True, help="folder of <class>/<image> files, or of images")
    p.add_argument("--out", required=True, help="the .npz file to write")
    p.add_argument(
        "--scales", default="default", help="Q,Q,... (default: each model's test_scales)"
    )
    p.add_argument(
        "--pool",
        choices=["mean", "stack"],
        default="mean",
        help="mean: the scales' descriptors averaged; stack: concatenated in ascending Q "
        "(default: %(default)s)",
    )
    p.add_argument("--no-flip", dest="flip", action="store_false", help="no mirrored views")
    _progress_option(p)
    p.set_defaults(handler=_features)


def _store_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store",
        metavar="DIR",
        help=f"model store directory (default: {from_env(STORE_VARIABLE, DEFAULT_STORE)})",
    )


def _progress_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress output (default: progress on stderr)",
    )


def settings_or_none(command: str, flags: dict[str, tuple[str, object]]) -> Settings | None:
    """``Settings`` from the environment with the command's ``flags`` (``{field: (flag,
    value)}``, None values left out) over it; None after printing what is wrong, each problem
    under the name the user typed: ``VERYDEEP_PORT`` or ``--port``, never the field name."""
    from pydantic import ValidationError

    from service.settings import Settings

    overrides = {field: value for field, (_, value) in flags.items() if value is not None}
    try:
        return Settings(**overrides)
    except ValidationError as err:
        # Only now: the message helper lives with the HTTP error handlers (one voice for both).
        from service.http.handlers import validation_message

        lines = []
        for error in err.errors():
            field = str(error["loc"][0]) if error.get("loc") else ""
            name = flags[field][0] if field in overrides else f"VERYDEEP_{field.upper()}"
            lines.append(f"  {name}: {validation_message(error)}")
        print(f"verydeep {command}: invalid settings:\n" + "\n".join(lines), file=sys.stderr)
        return None


def cannot_listen(host: str, port: int) -> str | None:
    """Why the server could not listen on ``host:port``, or None. Checked before the store
    loads, as uvicorn will bind it (every address the host resolves to, SO_REUSEADDR)."""
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        addresses = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as err:
        return f"cannot listen on {shown}: {getattr(err, 'strerror', None) or err}"
    for family, kind, proto, _, address in addresses:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
        except OSError as err:
            reason = err.strerror or str(err)
            if err.errno == errno.EADDRINUSE:
                return (
                    f"cannot listen on {shown}: {reason.lower()}; another server is running "
                    "there: stop it, or choose another port with --port or VERYDEEP_PORT"
                )
            return f"cannot listen on {shown}: {reason.lower()}"
    return None


def _serve(args: argparse.Namespace) -> int:
    settings = settings_or_none(
        "serve",
        {
            "model_store": ("--store", args.store),
            "host": ("--host", args.host),
            "port": ("--port", args.port),
        },
    )
    if settings is None:
        return 2

    from model_store import ModelStore
    from service.core.registry import unservable_store

    problem = unservable_store(ModelStore(settings.model_store))
    if problem:
        print(
            f"verydeep serve: error: {problem}; name the store with --store or {STORE_VARIABLE}",
            file=sys.stderr,
        )
        return 2
    problem = cannot_listen(settings.host, settings.port)
    if problem:
        print(f"verydeep serve: error: {problem}", file=sys.stderr)
        return 1

    import uvicorn

    from service.http.app import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=settings.shutdown_timeout,
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    settings = settings_or_none("evaluate", {"model_store": ("--store", args.store)})
    if settings is None:
        return 2
    if args.task == "localization":
        return _evaluate_localization(args, settings)
    for flag, value in (
        ("--classify-with", args.classify_with), ("--boxes", args.boxes), ("--draw", args.draw)
    ):  # fmt: skip
        if value is not None:
            print(f"verydeep evaluate: error: {flag} is for --task localization", file=sys.stderr)
            return 2

    from model_store import ModelStore
    from service.core.evaluate import (
        EvaluationError,
        evaluate,
        format_table,
        parse_scales,
        write_json,
    )

    methods = ["dense", "multicrop", "combined"] if args.method == "all" else [args.method]
    try:
        scales = parse_scales(args.scales, settings.max_scale)
        rows = evaluate(
            ModelStore(settings.model_store),
            args.model,
            args.data,
            methods=methods,
            scales=scales,
            flip=args.flip,
            limit=args.limit,
            class_match=args.class_match,
            settings=settings,
            progress=args.progress,
            maps_dir=args.maps,
        )
    except EvaluationError as err:
        print(f"verydeep evaluate: error: {err}", file=sys.stderr)
        return 2
    print(format_table(rows))
    if args.json:
        write_json(rows, args.json)
        print(f"wrote {args.json}")
    if args.maps:
        print(f"score maps drawn in {args.maps}")
    return 0


def _evaluate_localization(args: argparse.Namespace, settings: Settings) -> int:
    from model_store import ModelStore
    from service.core.evaluate import EvaluationError, parse_scales, write_json
    from service.core.evaluate_localization import evaluate_localization, format_table

    for flag, given in (("--method", args.method != "dense"), ("--maps", args.maps is not None)):
        if given:
            print(
                f"verydeep evaluate: error: {flag} is for --task classification (localization "
                "is dense)",
                file=sys.stderr,
            )
            return 2
    try:
        row = evaluate_localization(
            ModelStore(settings.model_store),
            args.model,
            args.data,
            classify_with=args.classify_with,
            boxes_dir=args.boxes,
            scales=parse_scales(args.scales, settings.max_scale),
            flip=args.flip,
            limit=args.limit,
            class_match=args.class_match,
            settings=settings,
            progress=args.progress,
            draw_dir=args.draw,
        )
    except EvaluationError as err:
        print(f"verydeep evaluate: error: {err}", file=sys.stderr)
        return 2
    print(format_table([row]))
    if args.draw:
        print(f"boxes drawn in {args.draw}")
    if args.json:
        write_json([row], args.json)
        print(f"wrote {args.json}")
    return 0


def _features(args: argparse.Namespace) -> int:
    settings = settings_or_none("features", {"model_store": ("--store", args.store)})
    if settings is None:
        return 2

    from model_store import ModelStore
    from service.core.evaluate import EvaluationError, parse_scales
    from service.core.extract import extract

    try:
        scales = parse_scales(args.scales, settings.max_scale)
        if scales == "single":
            raise EvaluationError("--scales: 'single' is for evaluate; give Q values")
        out = extract(
            ModelStore(settings.model_store),
            args.model,
            args.data,
            args.out,
            scales=None if scales == "default" else scales,
            flip=args.flip,
            pool=args.pool,
            settings=settings,
            progress=args.progress,
        )
    except EvaluationError as err:
        print(f"verydeep features: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0
