#!/usr/bin/env python3
"""Container health probe: ``verydeep-healthcheck [PATH]`` exits 0 when
``http://127.0.0.1:$VERYDEEP_PORT/PATH`` answers 200, 1 otherwise.

The slim image has no curl or wget; this needs only the standard library, so the Dockerfile's
HEALTHCHECK and Compose's healthcheck share it. PATH defaults to ``/readyz`` (200 once every model
is loaded and warmed up); ``/healthz`` asks only whether the process is up.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else "/readyz"
    port = os.environ.get("VERYDEEP_PORT", "8000")
    timeout = float(os.environ.get("VERYDEEP_HEALTHCHECK_TIMEOUT", "4"))
    url = f"http://127.0.0.1:{port}/{path.lstrip('/')}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as err:  # 503 while loading, for instance
        status = err.code
    except (OSError, ValueError) as err:  # refused, timed out, bad port
        print(f"{url}: {err}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"{url}: HTTP {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
