#!/usr/bin/env bash
# The GPU check of the CUDA backend, in two halves, because the GPU machine
# has no Rust toolchain and the build machine no GPU:
#
#   scripts/gpu-check.sh build   # here: builds the CUDA test and bench binaries into gpu-check/
#   scripts/gpu-check.sh run     # on the GPU machine, in a copy of the repository with gpu-check/:
#                                # the backend conformance suite and the gradient checks on
#                                # cuda:0, then W1 and W3 train/infer samples/s of Kallista's
#                                # CUDA backend (and W1 on its CPU one with GPU_CHECK_CPU=1)
#                                # beside PyTorch on the same card
#
# `run` writes its log and one JSON line per measurement under $OUT (or
# gpu-check/out); each part has its own time limit, so one that hangs cannot
# take the others' time.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=gpu-check

build() {
    rm -rf "$dir" && mkdir -p "$dir/bin"
    cargo test --release -p kallista-ops --features cuda --test backend_conformance --test gradcheck \
        --test gradcheck_vision --test keras_parity --test vision_keras_parity \
        --no-run --message-format=json >"$dir/artifacts.json"
    cargo bench -p kallista-ops --features cuda --bench w1 --bench w3 --no-run --message-format=json >>"$dir/artifacts.json"
    python3 - "$dir/bin" "$dir/artifacts.json" <<'PY'
import json, shutil, sys
for line in open(sys.argv[2]):
    if not line.startswith("{"):
        continue
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in (
            "backend_conformance", "gradcheck", "gradcheck_vision", "keras_parity", "vision_keras_parity", "w1", "w3"):
        shutil.copy(m["executable"], f"{sys.argv[1]}/{m['target']['name']}")
        print("built", m["target"]["name"])
PY
    strip --strip-debug "$dir"/bin/*  # what travels to the GPU machine is capped
    cp scripts/gpu/torch_w1.py scripts/gpu/torch_w3.py "$dir/"
    # The parity tests find their fixtures under the checkout they were built in.
    pwd >"$dir/built-in"
    du -sh "$dir"
}

# Folders holding the CUDA 13 libraries that cudarc loads (driver, cuBLAS, NVRTC).
cuda_library_path() {
    local found=""
    for lib in libcuda.so.1 libcublas.so.13 libnvrtc.so.13; do
        local path
        path=$(find /usr/local/nvidia /usr/local/cuda* /usr/lib /opt -name "$lib" 2>/dev/null | head -1 || true)
        [ -n "$path" ] && found+="$(dirname "$path"):"
    done
    echo "${found}${LD_LIBRARY_PATH:-}"
}

run() {
    local out="${OUT:-$dir/out}"
    mkdir -p "$out"
    exec > >(tee "$out/gpu-check.log") 2>&1
    export LD_LIBRARY_PATH
    LD_LIBRARY_PATH=$(cuda_library_path)
    echo "== $(date -u) on $(hostname): $(nproc) cores"
    nvidia-smi -L || true
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    local status=0
    echo "== backend conformance, CPU and cuda:0"
    timeout 120 "$dir/bin/backend_conformance" --include-ignored --test-threads 1 || status=1
    echo "== gradient checks on cuda:0 (finite differences; the vision ones' convolutions are products too)"
    KALLISTA_DEVICE=cuda:0 timeout 120 "$dir/bin/gradcheck" --test-threads 1 || status=1
    KALLISTA_DEVICE=cuda:0 timeout 180 "$dir/bin/gradcheck_vision" --test-threads 1 || status=1
    echo "== Keras parity fixtures on cuda:0"
    local built_in
    built_in=$(cat "$dir/built-in")
    if [ ! -e "$built_in/ops/tests/fixtures" ]; then
        mkdir -p "$(dirname "$built_in")" && ln -sfn "$PWD" "$built_in"
    fi
    KALLISTA_DEVICE=cuda:0 timeout 60 "$dir/bin/keras_parity" --test-threads 1 || status=1
    KALLISTA_DEVICE=cuda:0 timeout 120 "$dir/bin/vision_keras_parity" --test-threads 1 || status=1
    echo "== W1: Kallista on the CPU backend, on the CUDA backend, and PyTorch on the card"
    export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-$(nproc)}"
    # The CPU backend of the GPU machine only when asked (GPU_CHECK_CPU=1): device time is short.
    if [ -n "${GPU_CHECK_CPU:-}" ]; then
        KALLISTA_DEVICE=cpu W1_STEPS=10 W1_INFER_STEPS=10 timeout 150 "$dir/bin/w1" --bench | tee -a "$out/w1.jsonl" || status=1
    fi
    KALLISTA_DEVICE=cuda:0 W1_STEPS=10 W1_INFER_STEPS=10 timeout 150 "$dir/bin/w1" --bench | tee -a "$out/w1.jsonl" || status=1
    timeout 120 python3 "$dir/torch_w1.py" | tee -a "$out/w1.jsonl" || status=1
    echo "== W3: the seed model on raw frames (frozen InceptionV3), Kallista's CUDA backend and PyTorch"
    KALLISTA_DEVICE=cuda:0 W3_STEPS=5 W3_INFER_STEPS=5 timeout 150 "$dir/bin/w3" --bench | tee -a "$out/w3.jsonl" || status=1
    timeout 120 python3 "$dir/torch_w3.py" | tee -a "$out/w3.jsonl" || status=1
    echo "== done: status $status"
    return $status
}

case "${1:-}" in
    build) build ;;
    run) run ;;
    *) echo "usage: $0 build|run" >&2; exit 2 ;;
esac
