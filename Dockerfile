# SeedVR2 RunPod serverless worker.
#
#   docker build --platform linux/amd64 -t seedvr2-worker .                          # weights at run time
#   docker build --platform linux/amd64 --build-arg MODELS=3b -t seedvr2-worker:3b . # weights baked in
#   docker build ... --build-arg FLASH_ATTN=<flash-attn wheel URL for this torch/CUDA/Python>
#
# Weights, first found wins: the endpoint's cached model (RunPod puts ByteDance-Seed/SeedVR2-3B or -7B under
# /runpod-volume/huggingface-cache/hub before the worker starts; read in place), then SEEDVR_CKPT_DIR (baked
# into /app/ckpts with MODELS=3b|7b|7b-sharp|all, or a network volume: SEEDVR_CKPT_DIR=/runpod-volume/ckpts),
# then SEEDVR_DOWNLOAD_MODELS, fetched in the background at start. docs/deploy.md has the smoke test.
#
# torch is the default PyPI wheel, which on Linux is the CUDA build (torch 2.13.0: CUDA 13.0 runtime in pip
# packages, so the base image needs no CUDA of its own; the host driver must support 13.0: allowedCudaVersions).

FROM ubuntu:24.04

ARG FLASH_ATTN=""
ARG MODELS=""

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    RUNPOD_LOG_LEVEL=INFO \
    RUNPOD_INIT_TIMEOUT=600 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    SEEDVR_CKPT_DIR=/app/ckpts

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /app

# Every pin of requirements.txt, torch included (PyAV ships its own ffmpeg).
COPY requirements.txt .
RUN pip install -r requirements.txt \
    && if [ -n "$FLASH_ATTN" ]; then pip install --no-build-isolation "$FLASH_ATTN"; fi

COPY seedvr ./seedvr
COPY configs_3b ./configs_3b
COPY configs_7b ./configs_7b
COPY scripts ./scripts
COPY handler.py test_input.json ./

RUN mkdir -p "$SEEDVR_CKPT_DIR" \
    && if [ -n "$MODELS" ]; then python scripts/download_models.py --model $MODELS --dir "$SEEDVR_CKPT_DIR" --no-progress \
         && rm -rf "$SEEDVR_CKPT_DIR/.incomplete"; fi

CMD ["python", "-u", "handler.py"]
