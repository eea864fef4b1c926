#!/usr/bin/env bash
# Test set-up: fixtures too large to commit, written by the reference framework
# (Keras 3 on JAX, CPU) into $KALLISTA_FIXTURES (default ~/.cache/kallista/fixtures).
# Idempotent: does nothing when the fixtures are there. Needs python3 and PyPI.
#
#   scripts/make-test-fixtures.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${KALLISTA_FIXTURES:-$HOME/.cache/kallista/fixtures}"
DEST="$OUT/inception_v3"
QA="$OUT/video_qa_keras"
if [ -f "$DEST/inception_v3.weights.h5" ] && [ -f "$DEST/inception_v3_io.safetensors" ] \
  && [ -f "$QA/video_qa.weights.h5" ] && [ -f "$QA/video_qa_rows.safetensors" ]; then
  echo "test fixtures present in $OUT"
  exit 0
fi
VENV="${KALLISTA_FIXTURE_VENV:-$HOME/.cache/kallista/fixture-venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# The versions the fixtures were checked with (Keras's .weights.h5 layout is version-specific).
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
  keras==3.15.1 jax==0.10.2 jaxlib==0.10.2 numpy==2.4.6 h5py==3.16.0 safetensors==0.8.0 ml_dtypes==0.6.0
mkdir -p "$OUT"
# Each fixture is written to a temporary dir and moved into place whole.
make_fixture() { # SCRIPT DEST
  rm -rf "$2.tmp"
  KERAS_BACKEND=jax JAX_PLATFORMS=cpu "$VENV/bin/python" "$ROOT/ops/tests/fixtures/$1" "$2.tmp"
  rm -rf "$2"
  mv "$2.tmp" "$2"
}
[ -f "$DEST/inception_v3.weights.h5" ] && [ -f "$DEST/inception_v3_io.safetensors" ] \
  || make_fixture make_inception_h5.py "$DEST"
[ -f "$QA/video_qa.weights.h5" ] && [ -f "$QA/video_qa_rows.safetensors" ] \
  || make_fixture make_video_qa_h5.py "$QA"
echo "test fixtures written to $OUT"
