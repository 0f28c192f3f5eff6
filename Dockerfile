# SeedVR2 RunPod serverless worker.
#
#   docker build --platform linux/amd64 -t seedvr2-worker .                          # weights at run time
#   docker build --platform linux/amd64 --build-arg MODELS=3b -t seedvr2-worker:3b . # weights baked in
#   docker build ... --build-arg FLASH_ATTN=<flash-attn wheel URL for this torch/CUDA/Python>
#
# Weights: baked into /app/ckpts with MODELS=3b|7b|7b-sharp|all (several separated by spaces), or read
# from a RunPod network volume by setting SEEDVR_CKPT_DIR=/runpod-volume/ckpts on the endpoint (fill it
# once with scripts/download_models.py from a pod, where the volume is /workspace). SEEDVR_DOWNLOAD_MODELS
# makes the worker fetch missing files into SEEDVR_CKPT_DIR when it starts.

FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG FLASH_ATTN=""
ARG MODELS=""

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    RUNPOD_LOG_LEVEL=INFO \
    HF_HUB_DISABLE_TELEMETRY=1 \
    SEEDVR_CKPT_DIR=/app/ckpts

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /app

# torch first, from the CUDA index, at the version requirements.txt pins; then the rest (PyAV ships ffmpeg).
COPY requirements.txt .
RUN pip install "$(grep -E '^torch==' requirements.txt)" --index-url "$TORCH_INDEX_URL" \
    && pip install -r requirements.txt \
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
