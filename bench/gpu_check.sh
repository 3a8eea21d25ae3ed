#!/usr/bin/env bash
# One-shot GPU check: the encoder on CUDA (fp16, traced) and the dynamic batcher feeding it, in-process.
#
# Run from the repository root on a CUDA machine that has python3 with torch (CUDA build), sentence-transformers,
# transformers, tokenizers, numpy and pytest, but not the project or its service dependencies:
#
#     bash bench/gpu_check.sh          # results under $OUT when set, else a fresh folder under /tmp
#
# It expects the untracked folder .gpu/ next to it: .gpu/model (all-MiniLM-L6-v2 with float16 safetensors
# weights; its config loads them as float32 on the CPU) and .gpu/whl (cp312 wheels of what the machine lacks,
# structlog). Every stage runs even when an earlier one failed; the exit status is 1 when any stage failed.
# Stages are capped with timeout(1) so the whole script stays under about 5 minutes.
#
# Dry run on a machine without a GPU (tests skip, the cuda benchmark fails fast, the cpu one runs):
#
#     PATH=/work/main/.venv/bin:$PATH OUT=/tmp/gpucheck bash bench/gpu_check.sh

set -u

cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
if [ -z "${OUT:-}" ]; then
    OUT=$(mktemp -d /tmp/gpu_check.XXXXXX)
fi
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
MODEL_ARGS=()
if [ -d "$ROOT/.gpu/model" ]; then
    export CANDOR_GPU_MODEL_DIR=$ROOT/.gpu/model
    MODEL_ARGS=(--model-dir "$ROOT/.gpu/model")
else
    echo "WARNING: $ROOT/.gpu/model is missing; the bundled model package must be importable instead"
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
WHEELS=("$ROOT"/.gpu/whl/*.whl)
shopt -u nullglob
rc=0
if [ "$PYVER" != "3.12" ]; then
    echo "skipping wheel install: the wheels are for CPython 3.12, python3 is $PYVER"
elif [ ${#WHEELS[@]} -eq 0 ]; then
    echo "no wheels under .gpu/whl"
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

for dist in ("torch", "sentence-transformers", "transformers", "tokenizers", "numpy", "structlog", "pytest"):
    try:
        print(f"{dist:24s} {md.version(dist)}")
    except md.PackageNotFoundError:
        print(f"{dist:24s} NOT INSTALLED")
for module in ("structlog", "sentence_transformers", "retrieval.errors", "retrieval.batcher", "retrieval.encoder",
               "bench.hotpath"):
    importlib.import_module(module)
print("imports ok")
EOF
record imports $? $((SECONDS - t))

# -- 4. GPU tests --------------------------------------------------------------------------------------------------
t=$SECONDS
timeout -k 10 100 python3 -m pytest --noconftest -p no:cacheprovider -m gpu tests/gpu -q -rs 2>&1 \
    | tee "$OUT/gpu_tests.txt"
record gpu-tests "${PIPESTATUS[0]}" $((SECONDS - t))

# -- 5. hot-path benchmark on CUDA, then the same machine's CPU as a baseline ----------------------------------------
hotpath() {  # hotpath STAGE DEVICE SECONDS CAP OUTNAME
    local t=$SECONDS rc
    timeout -k 10 "$4" python3 -m bench.hotpath --device "$2" "${MODEL_ARGS[@]}" --seconds "$3" --concurrency 64 \
        >"$OUT/$5.json" 2>"$OUT/$5.err"
    rc=$?
    tail -n 5 "$OUT/$5.err"
    cat "$OUT/$5.json"
    record "$1" $rc $((SECONDS - t))
}
hotpath hotpath-cuda cuda 8 80 hotpath_cuda
hotpath hotpath-cpu cpu 4 75 hotpath_cpu_there

echo "=== summary ($((SECONDS - STARTED)) s in all; files in $OUT)"
printf '%s\n' "${SUMMARY[@]}" | tee "$OUT/summary.txt"
exit $FAILED
