"""The peer of a cold start, run as its own process: ``python -m bench.bare_load FILE.onnx ...``
imports onnxruntime, opens one CPU session per file with the service's options, and prints one
JSON line with its timings and memory (VmRSS, VmHWM) as soon as the sessions exist."""

from __future__ import annotations

import json
import os
import sys
import time


def main(argv: list[str]) -> int:
    started = time.perf_counter()
    import onnxruntime as ort

    from bench.server import proc_memory

    imported = time.perf_counter()
    sessions = []
    for path in argv:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = int(os.environ.get("VERYDEEP_INTRA_OP_THREADS", "0"))
        sessions.append(ort.InferenceSession(path, options, providers=["CPUExecutionProvider"]))
    loaded = time.perf_counter()
    memory = proc_memory(os.getpid())
    print(
        json.dumps(
            {"import_s": imported - started, "sessions_s": loaded - imported, "memory": memory}
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
