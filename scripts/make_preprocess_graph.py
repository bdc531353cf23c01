#!/usr/bin/env python
"""Write ``service/core/preprocess.onnx``, the preprocessing graph (rescale and normalise 8-bit
pixels, docs/gpu.md, "Preprocessing on the GPU"), from ``build_graph`` of
``service/core/preprocess_graph.py``. The file is committed so that serving needs no ``onnx``;
this script, which does (the ``train`` extra), regenerates it byte for byte.

    .venv/bin/python scripts/make_preprocess_graph.py           # (re)write the file
    .venv/bin/python scripts/make_preprocess_graph.py --check   # exit 1 if it is not up to date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.core.preprocess_graph import GRAPH_PATH, build_graph  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare only, write nothing")
    args = parser.parse_args(argv)
    data = build_graph("uint8", "nchw")
    current = GRAPH_PATH.read_bytes() if GRAPH_PATH.exists() else None
    if args.check:
        if current != data:
            print(f"{GRAPH_PATH} is not what build_graph() gives: run {sys.argv[0]}")
            return 1
        print(f"{GRAPH_PATH}: up to date ({len(data)} bytes)")
        return 0
    if current == data:
        print(f"{GRAPH_PATH}: unchanged ({len(data)} bytes)")
        return 0
    GRAPH_PATH.write_bytes(data)
    print(f"wrote {GRAPH_PATH} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
