#!/bin/sh
# Checks the CUDA user space that the image carries for onnxruntime-gpu. The Dockerfile runs it
# at build time; tests/deploy runs it on a fresh virtual environment (slow test).
#
# onnxruntime's CUDA provider links cuBLAS, cuBLASLt, cuRAND and the CUDA runtime, and opens
# cuDNN 9 with dlopen when the first CUDA session starts. This fails unless all of them, and
# everything they link in turn, resolve through the dynamic loader with LD_LIBRARY_PATH as the
# image sets it, with one exception: libcuda.so.1, the driver's own library, which the NVIDIA
# Container Toolkit mounts from the host when a container starts with a GPU.
#
# Usage: check-cuda-userspace.sh SITE_PACKAGES
set -eu

site="${1:?usage: check-cuda-userspace.sh SITE_PACKAGES}"
provider="$site/onnxruntime/capi/libonnxruntime_providers_cuda.so"
if [ ! -f "$provider" ]; then
  echo "no CUDA provider at $provider (is onnxruntime-gpu installed there?)" >&2
  exit 1
fi

# cuDNN is no link-time dependency: look for it where dlopen will, on LD_LIBRARY_PATH.
cudnn_dir=""
old_ifs=$IFS
IFS=:
for dir in ${LD_LIBRARY_PATH:-}; do
  if [ -f "$dir/libcudnn.so.9" ]; then
    cudnn_dir=$dir
    break
  fi
done
IFS=$old_ifs
if [ -z "$cudnn_dir" ]; then
  echo "libcudnn.so.9 is not in any directory of LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}" >&2
  exit 1
fi

status=0
for lib in "$provider" "$cudnn_dir"/libcudnn*.so.9; do
  missing=$(ldd "$lib" | awk '/not found/ && $1 != "libcuda.so.1" { print $1 }')
  if [ -n "$missing" ]; then
    echo "$lib does not resolve: $missing" >&2
    status=1
  fi
  # A CUDA library found outside SITE_PACKAGES (a toolkit on the build host, say) would hide
  # one that the image lacks.
  stray=$(ldd "$lib" | awk -v site="$site" \
    '$1 ~ /^lib(cudart|cublas|curand|cufft|cusparse|cusolver|nvrtc|nvJitLink|cudnn)/ && $3 ~ /^\// && index($3, site) != 1 { print $1 " => " $3 }')
  if [ -n "$stray" ]; then
    echo "$lib resolves CUDA libraries outside $site: $stray" >&2
    status=1
  fi
done
if [ "$status" -eq 0 ]; then
  echo "CUDA user space complete: onnxruntime's CUDA provider and cuDNN 9 resolve" \
    "(libcuda.so.1 comes from the host driver at run time)"
fi
exit "$status"
