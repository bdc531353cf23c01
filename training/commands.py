"""Command-line handlers of the training wing. Importing this module does not import torch."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from model_store import StoreError

TORCHVISION_ARCHS = ("vgg11", "vgg13", "vgg16", "vgg19")


def register(commands: Any) -> None:
    """Add the training wing's subcommands to the ``verydeep`` parser."""
    p = commands.add_parser(
        "export", help="export a training checkpoint to a fully-convolutional ONNX store entry"
    )
    p.add_argument("checkpoint", help="checkpoint written by `verydeep train`")
    _store_args(p)
    p.set_defaults(handler=_export)

    p = commands.add_parser(
        "import-torchvision", help="import torchvision VGG weights into the model store"
    )
    p.add_argument("arch", choices=TORCHVISION_ARCHS)
    p.add_argument(
        "--weights",
        help="a torchvision state-dict file (.pth); without it the official file is downloaded",
    )
    _store_args(p)
    p.set_defaults(handler=_import_torchvision)


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", required=True, help="model store directory")
    p.add_argument("--name", required=True, help="name of the new entry")
    p.add_argument(
        "--test-scales",
        type=_scales,
        help="comma-separated default test scales Q (default: from the training scale, paper §4.2)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing entry")


def _scales(text: str) -> list[int]:
    try:
        scales = [int(q) for q in text.split(",")]
    except ValueError:
        msg = f"not a comma-separated list of integers: {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if any(q < 224 for q in scales):
        raise argparse.ArgumentTypeError("every test scale must be >= 224")
    return scales


def _fail_cleanly(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        from training.errors import UserFacingError

        try:
            return run(args)
        except (UserFacingError, StoreError) as err:
            print(f"verydeep {args.command}: error: {err}", file=sys.stderr)
            return 2

    return handler


@_fail_cleanly
def _export(args: argparse.Namespace) -> int:
    from training.export_checkpoint import export_checkpoint

    entry = export_checkpoint(
        args.checkpoint, args.store, args.name, test_scales=args.test_scales, overwrite=args.force
    )
    print(f"wrote {entry.path} ({entry.manifest.parameters:,} parameters)")
    return 0


@_fail_cleanly
def _import_torchvision(args: argparse.Namespace) -> int:
    from training.torchvision_import import import_torchvision

    entry = import_torchvision(
        args.arch,
        args.store,
        args.name,
        weights=args.weights,
        test_scales=args.test_scales,
        overwrite=args.force,
    )
    print(f"wrote {entry.path} ({entry.manifest.parameters:,} parameters)")
    return 0
