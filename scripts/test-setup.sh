#!/usr/bin/env bash
# Test set-up, idempotent (does nothing for what is already there):
# - the fixtures too large to commit (scripts/make-test-fixtures.sh);
# - the S3-compatible server of the multi-host tests: `s3s-fs` from
#   crates.io, built once into ~/.cache/kallista/tools (about 5 minutes on 2
#   cores); the tests start it themselves on a loopback port.
#
#   scripts/test-setup.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
"$ROOT/scripts/make-test-fixtures.sh"
TOOLS="${KALLISTA_TOOLS:-$HOME/.cache/kallista/tools}"
if [ -x "$TOOLS/bin/s3s-fs" ]; then
  echo "S3 test server present in $TOOLS"
else
  # 0.14.1: the newest release that builds with the machine's rustc (1.95).
  cargo install --quiet --root "$TOOLS" --target-dir "${KALLISTA_TOOLS_TARGET:-$HOME/.cache/kallista/tools-target}" \
    s3s-fs@0.14.1 --features binary --locked
  echo "S3 test server installed in $TOOLS"
fi
