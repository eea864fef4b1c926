#!/usr/bin/env bash
# W1 through the embedded cluster with data and job dir on a local S3 server
# (s3s-fs, installed by scripts/test-setup.sh), each run right after the same
# run on local files, in one invocation (engine_w1's `"store"` field).
#
#   scripts/bench-w1-s3.sh                 # RUNS=default,average_1_worker ROUNDS=1 by default
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SERVER="${KALLISTA_S3_SERVER:-${KALLISTA_TOOLS:-$HOME/.cache/kallista/tools}/bin/s3s-fs}"
[ -x "$SERVER" ] || "$ROOT/scripts/test-setup.sh"
DATA="$(mktemp -d)"
mkdir -p "$DATA/bench"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$SERVER" --host 127.0.0.1 --port "$PORT" --access-key bench --secret-key bench-secret "$DATA" >/dev/null 2>&1 &
PID=$!
trap 'kill $PID; rm -rf "$DATA"' EXIT
export AWS_ENDPOINT="http://127.0.0.1:$PORT" AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
cd "$ROOT"
W1_S3=s3://bench/w1 RUNS="${RUNS:-default,average_1_worker}" cargo bench --workspace --bench engine_w1
