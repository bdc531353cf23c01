#!/usr/bin/env bash
# Prepare here the wheels that a lent GPU machine lacks for scripts/gpu_suite.sh (docs/gpu.md,
# "Measuring on a lent GPU machine"), into .device/ (ignored by git):
#
#   .device/ort-part-1 ... ort-part-N   onnxruntime-gpu, cut in parts of PART_BYTES, because a
#                                       device call carries 64 MiB with the working tree (about
#                                       11 MB) and the wheel is 256 MB: one part a call
#   .device/small/                      the serving packages the machine has not got (FastAPI,
#                                       uvicorn, pydantic and theirs), about 4 MB, and the
#                                       joined wheel's name and sha256
#
# Versions are the serving lock's (requirements/serving.lock); the machine runs CPython 3.12 on
# x86-64 Linux (/work/.library/device/KINDS.md), hence --python-version and the platforms.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.device
python=${PYTHON:-.venv/bin/python}
py_version=${PY_VERSION:-3.12}
part_bytes=${PART_BYTES:-52000000}
lock=requirements/serving.lock
# Packages of the serving lock that the machine's image does not hold (the others, numpy,
# pillow, anyio, h11, click, protobuf, prometheus-client, tqdm..., it has).
missing=(fastapi fastapi-offline starlette uvicorn pydantic pydantic-core pydantic-settings
  python-dotenv python-multipart annotated-types typing-inspection typing-extensions)

pin() {
  local found
  found=$(grep -i "^$1==" "$lock") || { echo "$1 is not in $lock" >&2; exit 1; }
  echo "$found"
}

download() {
  "$python" -m pip download --quiet --no-deps --only-binary=:all: --implementation cp \
    --python-version "$py_version" --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$1" "$2"
}

rm -rf "$dest/small" "$dest"/ort-part-* "$dest/ort"
mkdir -p "$dest/small" "$dest/ort"
for name in "${missing[@]}"; do
  download "$dest/small" "$(pin "$name")"
done
download "$dest/ort" "$(pin onnxruntime-gpu)"
wheel=$(ls "$dest"/ort/onnxruntime_gpu-*.whl)
split --bytes="$part_bytes" --numeric-suffixes=1 --suffix-length=1 "$wheel" "$dest/ort-part-"
# The joined wheel's name and checksum travel with the small wheels (sha256sum -c there).
(cd "$dest/ort" && sha256sum onnxruntime_gpu-*.whl) >"$dest/small/onnxruntime-gpu.sha256"
rm -rf "$dest/ort"
ls -l "$dest"/ort-part-* "$dest/small"
echo "carry one .device/ort-part-K per call; the last call carries .device/small too"
