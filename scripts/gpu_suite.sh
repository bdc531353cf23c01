#!/usr/bin/env bash
# The GPU measurements of docs/gpu.md in one command, for a lent GPU machine that has Python
# 3.12, torch and onnx but not onnxruntime-gpu nor the serving packages (docs/gpu.md,
# "Measuring on a lent GPU machine"): install the wheels that scripts/gpu_wheels.sh prepared,
# then run the steps below in order of importance until SECONDS (default 540) have passed, and
# pack everything into $OUT (at most 8 files come back from such a machine).
#
#   scripts/gpu_suite.sh [SECONDS]
#
# Each step has a budget of its own and is stopped at it. $OUT/summary.txt lists each step with
# its exit status (124: stopped at its budget) and seconds, $OUT/targets.md the GPU targets
# met or missed (bench/gpu_targets.py), $OUT/results.tgz holds
# bench/results-gpu/ (the JSON and Markdown of every run), $OUT/logs.tgz every step's output.
# INSTALL=0 installs nothing (a GPU host with the project installed: make bench-gpu, PYTHON set).
# DRY=1 runs the same steps on this machine's CPU with a narrow D instead of VGG-16 and without
# installing anything, to check the script itself (2.5 to 4.5 minutes on 2 cores).
set -uo pipefail
cd "$(dirname "$0")/.."
total=${1:-540}
started=$(date +%s)
deadline=$((started + total - 20)) # the last seconds pack the results
out=${OUT:-/tmp/gpu-suite-out}
work=${WORK:-/tmp/verydeep-gpu}
results=${RESULTS:-bench/results-gpu}
python=${PYTHON:-python3}
mkdir -p "$out" "$work/logs" "$results"
: >"$out/steps.tsv"

pack() {
  # The GPU targets of docs/gpu.md from whatever ran (a second).
  "$python" -m bench.gpu_targets "$results" --out "$out/targets.md" >"$work/logs/targets.log" 2>&1
  tar -czf "$out/results.tgz" "$results" 2>/dev/null
  tar -czf "$out/logs.tgz" -C "$work" logs 2>/dev/null
  {
    echo "gpu_suite.sh: $(($(date +%s) - started)) s of $total; step, exit status, seconds:"
    cat "$out/steps.tsv"
  } >"$out/summary.txt"
  cat "$out/summary.txt"
  [[ -f $out/targets.md ]] && cat "$out/targets.md"
}
trap pack EXIT

# step NAME BUDGET_S COMMAND...: run COMMAND for at most BUDGET_S seconds (fewer when the
# deadline is nearer), its output in $work/logs/NAME.log; a step with no time left is skipped.
step() {
  local name=$1 budget=$2 left status t0
  shift 2
  left=$((deadline - $(date +%s)))
  if ((left < 15)); then
    printf '%s\tskipped\t0\n' "$name" >>"$out/steps.tsv"
    return
  fi
  ((budget > left)) && budget=$left
  echo "== $name (up to ${budget} s)"
  t0=$(date +%s)
  timeout --kill-after=10 "$budget" "$@" >"$work/logs/$name.log" 2>&1
  status=$?
  printf '%s\t%s\t%s\n' "$name" "$status" "$(($(date +%s) - t0))" >>"$out/steps.tsv"
  tail -n 2 "$work/logs/$name.log"
}

# The wheels: .device/ort-part-K came with earlier calls (and were copied to /tmp there too),
# .device/small with this one.
install_wheels() {
  local wheels=/tmp/verydeep-wheels
  mkdir -p "$wheels"
  cp .device/ort-part-* .device/small/* "$wheels"/ 2>/dev/null
  (cd "$wheels" && cat ort-part-? >"$(cut -d' ' -f3 onnxruntime-gpu.sha256)" &&
    sha256sum -c onnxruntime-gpu.sha256) &&
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site "$wheels"/*.whl
}

if [[ ${DRY:-0} == 1 ]]; then
  device=cpu model=tiny-d pair=tiny-d probe_model=(--model tiny) repeats=2
else
  device=cuda model=vgg16 pair=vgg16,vgg19 probe_model=() repeats=5
  if [[ ${INSTALL:-1} == 1 ]]; then
    t0=$(date +%s)
    install_wheels >"$work/logs/install.log" 2>&1
    printf 'install\t%s\t%s\n' "$?" "$(($(date +%s) - t0))" >>"$out/steps.tsv"
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  nvidia-smi >"$out/nvidia-smi.txt" 2>&1
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
"$python" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
bench=("$python" -m bench.run --quick --device $device --models $model)
shared=(env VERYDEEP_CUDA_SHARED_WEIGHTS=true VERYDEEP_CUDA_SESSIONS=128)
wide=(env VERYDEEP_MAX_CONCURRENCY=16 VERYDEEP_MAX_QUEUE=64)
stream=(--only stream --stream-levels 1,8,16 --stream-requests 6)
by_q=(--only stream --stream-levels 1,16 --stream-requests 6 --stream-scales 256,384,512)
probe=("$python" bench/probes/new_shape_gpu.py --device $device "${probe_model[@]}")
day=$(date +%F)

# 0. The random-weight exports (cached in bench/.cache for every later step).
step export 240 "$python" -c "
from bench.models import TINY_D, VGG16, ensure_store
from bench.context import DEFAULT_CACHE
spec = {'vgg16': VGG16, 'tiny-d': TINY_D}['$model']
for dtype in ('float32', 'float16'):
    print(ensure_store(DEFAULT_CACHE, [spec.with_dtype(dtype)]).root, flush=True)"
# The steps come in order of what docs/gpu.md's targets need, since a lent machine's minutes
# rarely reach the last ones: first the chosen design (sessions sharing one copy of the
# weights, one opened per new input shape up to 128; 16 requests computing at once), then
# what it was chosen against.
# 1. The photo stream, default protocol, at 1, 8 and 16 clients: float32, then float16.
step stream-fp32-shared 100 "${shared[@]}" "${wide[@]}" "${bench[@]}" --out "$results/shared" \
  "${stream[@]}" --stream-scales default
step stream-fp16-shared 100 "${shared[@]}" "${wide[@]}" "${bench[@]}" --fp16 \
  --out "$results/shared" "${stream[@]}" --stream-scales default
# 2. One dense view's serving overhead against the bare call, float32 and float16.
step overhead-fp32 60 "${bench[@]}" --out "$results/overhead" --only overhead,engine
step overhead-fp16 60 "${bench[@]}" --fp16 --out "$results/overhead" --only overhead,engine
# 3. The stream at each Q (float16 against float32), at its most clients.
step stream-q-fp32 120 "${shared[@]}" "${wide[@]}" "${bench[@]}" --out "$results/shared-q" \
  "${by_q[@]}"
step stream-q-fp16 120 "${shared[@]}" "${wide[@]}" "${bench[@]}" --fp16 \
  --out "$results/shared-q" "${by_q[@]}"
# 4. Correctness on CUDA: the service against the CPU, float16, the pool, OOM, the graph.
step test-cuda 120 "$python" -m pytest -q -p no:cacheprovider tests/service/test_cuda.py
# 5. What the design was chosen against: the service's defaults (a pool of 4 sessions, each
#    with its own weights; 2 requests computing at once), the shared sessions with 2 computing,
#    and float16 channels-first (one copy of the weights; channels-last sessions each keep a
#    transposed copy, docs/gpu.md).
step stream-fp32-pool4 100 "${bench[@]}" --out "$results/pool4" "${stream[@]}" \
  --stream-scales default
step stream-fp32-shared-c2 100 "${shared[@]}" "${bench[@]}" --out "$results/shared-c2" \
  "${stream[@]}" --stream-scales default
step stream-fp16-pool4 100 "${bench[@]}" --fp16 --out "$results/pool4" "${stream[@]}" \
  --stream-scales default
step stream-fp16-shared-nchw 100 env VERYDEEP_CUDA_LAYOUT=nchw "${shared[@]}" "${wide[@]}" \
  "${bench[@]}" --fp16 --out "$results/shared-nchw" "${stream[@]}" --stream-scales default
# 6. What makes a new shape cheap: bare sessions, 8 shapes in turn, four ways of keeping them.
step new-shape-fp32 120 "${probe[@]}" "$results/$day-new-shape-$device.json"
step new-shape-fp16 90 "${probe[@]}" --fp16 "$results/$day-new-shape-$device-fp16.json"
# 7. Preprocessing on the GPU: the graph against Pillow, then through the stream.
step preprocess-probe 120 "$python" bench/probes/preprocess_graph_gpu.py --device $device \
  --repeats $repeats "$results/$day-preprocess-graph-$device.json"
step stream-graph-fp32 100 env VERYDEEP_PREPROCESS=graph "${shared[@]}" "${wide[@]}" \
  "${bench[@]}" --out "$results/shared-graph" "${stream[@]}" --stream-scales default
# 8. Cross-request batching on the GPU: a window of 2 ms.
step stream-window2-fp32 100 env VERYDEEP_BATCH_WINDOW_MS=2 "${shared[@]}" "${wide[@]}" \
  "${bench[@]}" --out "$results/shared-window2" "${stream[@]}" --stream-scales default
# 9. VGG-19 beside VGG-16, and their ensemble: each request runs both (model=vgg16,vgg19).
step stream-ensemble-fp32 150 "${shared[@]}" "${wide[@]}" "$python" -m bench.run --quick \
  --device $device --models "$pair" --out "$results/shared-ensemble" "${stream[@]}" \
  --stream-scales default --stream-ensemble
echo "done in $(($(date +%s) - started)) s"
