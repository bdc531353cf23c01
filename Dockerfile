# verydeep serving image: `verydeep serve` on onnxruntime-gpu 1.31.1, which PyPI ships built
# against CUDA 13.0 and cuDNN 9. No torch: the runtime stage holds the serving dependencies only.
#
#   build-env  the base with pip pointed at the package index (PIP_INDEX_URL, EXTRA_CA_CERT below)
#   builder  builds the project wheel (`pip wheel --no-deps .`) and installs it, with its serving
#            dependencies and the `cuda` extra (the CUDA 13.0 / cuDNN 9 user-space libraries
#            from NVIDIA's pip wheels, pinned in pyproject.toml), into the venv /opt/venv.
#   runtime  the same Python base, /opt/venv and the demo model store; no pip cache, no build
#            tree, non-root.
#
# Host requirements: an NVIDIA driver of the R580 branch or newer (CUDA 13.x needs >= 580) and
# the NVIDIA Container Toolkit, which mounts the driver's libcuda.so.1 into the container; GPUs of
# compute capability 7.5 (Turing) or newer, as CUDA 13 supports no older ones.
#
# Size: about 2.6 GB uncompressed, 1.5 GB compressed in a registry: python slim 0.13 GB, the venv
# 2.43 GB (cuBLAS, cuRAND, CUDA runtime and NVRTC 0.97 GB, cuDNN 0.97 GB, onnxruntime-gpu 0.35 GB,
# the rest 0.14 GB); measured on the venv this file builds. `--build-arg VERYDEEP_EXTRAS=` builds
# a CPU-only image of about 0.6 GB (0.35 GB compressed); onnxruntime-gpu runs its CPU provider.
#
# CUDA 12 hosts (driver < 580): since 1.27 PyPI's onnxruntime-gpu is a CUDA 13 build and CUDA 12
# builds are no longer published there, so no build argument here switches to CUDA 12; see
# docs/deployment.md ("Drivers older than R580") for the options.

# Builds with nothing reachable but the package index: no `# syntax=` line (it would make BuildKit
# fetch a frontend image from Docker Hub first; the built-in frontend reads this file), and build
# arguments for the base image, the package index and a certificate authority to trust while
# building (docs/deployment.md, "Building behind a proxy or without Docker Hub"):
#
#   PYTHON_IMAGE   the base of both stages (below)
#   PIP_INDEX_URL  the index pip installs from (default PyPI), for instance a mirror or a proxy
#   EXTRA_CA_CERT  PEM text of certificate authorities to trust beside the base's own, for a
#                  proxy that re-signs TLS: --build-arg EXTRA_CA_CERT="$(cat corp-ca.pem)"
#
# The last two apply to the build stages only: the runtime stage copies the venv and the models
# out of them and never sees the index URL, the certificate or the pip configuration.

# The base is pinned by its full tag (Python patch release and Debian release), not by digest: the
# tag is rebuilt by Docker Official Images with Debian security fixes, which a digest would freeze
# out, and its contents (CPython 3.11.15 on Debian 12, glibc 2.36 >= the manylinux_2_28 that
# onnxruntime-gpu needs) are what this file relies on. For bit-for-bit reproducible release builds
# pass `--build-arg PYTHON_IMAGE=python:3.11.15-slim-bookworm@sha256:<digest>` (digest from
# `docker buildx imagetools inspect`) and let a bot bump it. Any other base must be Debian-like
# with CPython 3.11 as `python` and the ca-certificates bundle (LD_LIBRARY_PATH below names
# python3.11); both stages use the same one, since the venv is copied from one to the other.
ARG PYTHON_IMAGE=python:3.11.15-slim-bookworm

# ---------------------------------------------------------------------------------------------
# build-env: pip's settings for the build, alone in a stage so that they can be checked alone.
FROM ${PYTHON_IMAGE} AS build-env

ARG PIP_INDEX_URL=https://pypi.org/simple
ARG EXTRA_CA_CERT=

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# /etc/pip.conf (read by every pip of the later build stages, the venv's too) names the index (an
# empty PIP_INDEX_URL means PyPI) and the bundle of certificate authorities: the base's own, plus
# EXTRA_CA_CERT when given.
RUN set -eu; \
    bundle=/etc/ssl/build-ca-bundle.pem; \
    cat /etc/ssl/certs/ca-certificates.crt > "$bundle"; \
    if [ -n "$EXTRA_CA_CERT" ]; then printf '%s\n' "$EXTRA_CA_CERT" >> "$bundle"; fi; \
    printf '[global]\nindex-url = %s\ncert = %s\n' \
        "${PIP_INDEX_URL:-https://pypi.org/simple}" "$bundle" > /etc/pip.conf

# ---------------------------------------------------------------------------------------------
FROM build-env AS builder

WORKDIR /src
# Only what the wheel is built from (pyproject names README.md as the long description).
COPY pyproject.toml README.md ./
COPY verydeep/ verydeep/
COPY model_store/ model_store/
COPY service/ service/
COPY training/ training/
RUN pip wheel --no-deps --wheel-dir /wheels .

# Extras of the project to install beside the serving dependencies: "cuda" (default) adds the CUDA
# user space; empty gives a CPU-only image.
ARG VERYDEEP_EXTRAS=cuda
RUN python -m venv /opt/venv \
    && wheel="$(echo /wheels/verydeep-*.whl)" \
    && /opt/venv/bin/pip install "${wheel}${VERYDEEP_EXTRAS:+[${VERYDEEP_EXTRAS}]}" \
    && /opt/venv/bin/pip check

# The demo store (model_store/ holds both the store's Python package and the committed demo
# models): keep the models, drop the code. Compose and Kubernetes can mount another store here.
RUN mkdir /models \
    && cp -R model_store/. /models/ \
    && find /models \( -name '*.py' -o -name '__pycache__' \) -prune -exec rm -rf {} +

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG VERYDEEP_EXTRAS=cuda

LABEL org.opencontainers.image.title="verydeep" \
      org.opencontainers.image.description="VGG ConvNets over REST, dense multi-scale test" \
      org.opencontainers.image.licenses="Apache-2.0"

# LD_LIBRARY_PATH: onnxruntime finds the pip-installed CUDA libraries through it (the dynamic
# loader does not look inside site-packages); check-cuda-userspace.sh below proves the paths.
# NVIDIA_DRIVER_CAPABILITIES: what the NVIDIA Container Toolkit mounts from the host driver.
# NVIDIA_VISIBLE_DEVICES is left unset on purpose: GPUs come from `--gpus`, Compose's device
# reservation or the Kubernetes device plugin, never to a container that did not ask for one.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LD_LIBRARY_PATH=/opt/venv/lib/python3.11/site-packages/nvidia/cu13/lib:/opt/venv/lib/python3.11/site-packages/nvidia/cudnn/lib \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    VERYDEEP_HOST=0.0.0.0 \
    VERYDEEP_PORT=8000 \
    VERYDEEP_MODEL_STORE=/models

# A fixed UID: file ownership on mounted stores and Kubernetes' securityContext rely on it.
RUN groupadd --system --gid 10001 verydeep \
    && useradd --system --no-log-init --uid 10001 --gid verydeep --create-home \
       --shell /usr/sbin/nologin verydeep

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /models /models
COPY --chmod=0755 deploy/docker/healthcheck.py /usr/local/bin/verydeep-healthcheck
COPY --chmod=0755 deploy/docker/check-cuda-userspace.sh /usr/local/bin/check-cuda-userspace

# Fail the build, not the first request, when the CUDA user space is incomplete (a missing
# `cuda` extra, a Python upgrade that moved site-packages, ...).
RUN if [ -n "${VERYDEEP_EXTRAS}" ]; then \
        check-cuda-userspace /opt/venv/lib/python3.11/site-packages; \
    fi

# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /home/verydeep
EXPOSE 8000

# Healthy = ready: /readyz answers 200 once every model is loaded and warmed up. Loading and
# warming big models takes a while, hence the start period.
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["verydeep-healthcheck", "/readyz"]

# Arguments after the image name are passed on: `docker run IMAGE --port 9000`.
ENTRYPOINT ["verydeep", "serve"]
