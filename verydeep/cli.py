"""``verydeep <command>``: each wing registers its commands; heavy imports happen only inside the
handler that runs, so ``verydeep serve`` never loads torch."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    from service import commands as service_commands
    from training import commands as training_commands
    from training import transfer as transfer_commands

    parser = argparse.ArgumentParser(
        prog="verydeep",
        description="Train, export and serve VGG ConvNets with the paper's dense test protocol.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    training_commands.register(commands)
    service_commands.register(commands)
    transfer_commands.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
