#!/usr/bin/env bash
# Lock the serving install into requirements/serving.lock: every package that `pip install .`
# (the base install, no extras) resolves to, pinned, for pip-audit and for reproducible images.
#
# pyproject.toml pins the direct dependencies; this records the transitive ones as resolved
# today for this platform and Python (CPython 3.11, Linux x86_64). Nothing is installed: pip
# resolves with --dry-run --ignore-installed and writes its report. Re-run it when a pin in
# pyproject.toml changes (tests/service/reliability/test_security.py checks that the lock agrees).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
out=requirements/serving.lock
report=$(mktemp)
trap 'rm -f "$report"' EXIT

"$python" -m pip install --quiet --dry-run --ignore-installed --report "$report" . >/dev/null
mkdir -p "$(dirname "$out")"
"$python" - "$report" "$out" <<'PY'
import json
import sys

report = json.load(open(sys.argv[1]))
pins = sorted(
    (item["metadata"]["name"].lower().replace("_", "-"), item["metadata"]["version"])
    for item in report["install"]
    if item["metadata"]["name"].lower() != "verydeep"
)
env = report["environment"]
with open(sys.argv[2], "w") as f:
    f.write(
        "# The serving install (pip install .), resolved by scripts/lock_serving.sh for\n"
        f"# CPython {env['python_full_version']} on {env['sys_platform']} "
        f"{env['platform_machine']}. Generated: do not edit by hand.\n"
    )
    for name, version in pins:
        f.write(f"{name}=={version}\n")
print(f"wrote {len(pins)} pins to {sys.argv[2]}")
PY
