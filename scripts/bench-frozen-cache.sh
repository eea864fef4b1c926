#!/usr/bin/env bash
# Frozen-feature caching, measured: the talk's job (jobs/video_qa_inception, frozen InceptionV3
# on 75x75 frames) trained through the CNN and from cached features, side by side on one
# machine and one dataset. Prints each run's training throughput (samples/s, from results.json),
# its wall time (the cached run's includes computing the features once) and a second cached
# run's, which reuses the caches.
#
#   scripts/bench-frozen-cache.sh            # VIDEOS=300 STEPS=20; the Keras-written InceptionV3
#                                            # weights of the test fixtures (scripts/test-setup.sh)
#   VIDEOS=600 STEPS=40 WEIGHTS=inception_v3.weights.h5 scripts/bench-frozen-cache.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VIDEOS="${VIDEOS:-300}"
STEPS="${STEPS:-20}"
WEIGHTS="${WEIGHTS:-$HOME/.cache/kallista/fixtures/inception_v3/inception_v3.weights.h5}"
[ -f "$WEIGHTS" ] || { echo "$WEIGHTS missing: run scripts/test-setup.sh" >&2; exit 1; }
cd "$ROOT"
cargo build --release --quiet --bin kallista
BIN="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/kallista"
WORK="$(mktemp -d)"
cp "$WEIGHTS" "$WORK/inception_v3.weights.h5"
job() { # NAME CACHE_FROZEN
  sed -e "s/videos: 2000/videos: $VIDEOS/" \
      -e "s|file: ../video_qa/prepare.sql|file: $ROOT/jobs/video_qa/prepare.sql|" \
      -e "s|\${job_dir}/dataset|$WORK/data|g" \
      -e "s/cache_frozen: true/cache_frozen: $2/" jobs/video_qa_inception/job.yaml > "$WORK/$1.yaml"
}
job through false
job cached true
run() { # NAME JOB_DIR LOG
  local start=$SECONDS
  "$BIN" run "$WORK/$1.yaml" --job-dir "$2" --max-steps "$STEPS" > "$3.out" 2> "$3.log"
  echo "$((SECONDS - start))"
}
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; $VIDEOS videos, $STEPS steps" >&2
"$BIN" data make-video-qa --out "$WORK/data" --videos "$VIDEOS" --frames 8 --size 75 --seed 1234 > /dev/null 2>&1
through_s=$(run through "$WORK/through" "$WORK/through")
cached_s=$(run cached "$WORK/cached" "$WORK/cached")
cp "$WORK/cached/results.json" "$WORK/cached-results.json"   # the reusing run rewrites the job dir's
again_s=$(run cached "$WORK/cached" "$WORK/cached-again")
grep -q "train features of '[a-z_0-9]*' (cached)" "$WORK/cached-again.log" \
  || { echo "the second cached run did not reuse the caches: $WORK/cached-again.log" >&2; exit 1; }
WORK="$WORK" through_s="$through_s" cached_s="$cached_s" again_s="$again_s" python3 - <<'PY'
import json, os, re
w = os.environ["WORK"]
def rate(results):
    return json.load(open(f"{w}/{results}"))["samples_per_s"]
built = re.findall(r"train features of '\w+' \(computed in ([\d.]+) s\)", open(f"{w}/cached.log").read())
a, b = rate("through/results.json"), rate("cached-results.json")
print(f"through the CNN : {a:8.1f} samples/s, wall {os.environ['through_s']} s")
print(f"cached features : {b:8.1f} samples/s, wall {os.environ['cached_s']} s (train features computed in {built[0] if built else '?'} s)")
print(f"cached, reused  : wall {os.environ['again_s']} s")
print(f"training speed-up: {b / a:.1f}x")
PY
echo "runs in $WORK" >&2
