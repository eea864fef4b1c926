#!/usr/bin/env bash
# Eval accuracy of the video-QA job (jobs/video_qa/job.yaml's model and optimizer) trained in
# `sync` mode with 2 workers and in `async` mode with 2 and 4 workers on 2 parameter servers,
# for the same number of samples seen; prints the final and best eval accuracy of each and the
# async runs' mean staleness. Data: VIDEOS clips of 4 frames of 64x64 (default 4000), EPOCHS
# epochs (default 8), batch 32, made once in DIR (default /tmp/kallista-compare-async).
#
#   scripts/compare-async.sh
#   VIDEOS=2000 EPOCHS=16 scripts/compare-async.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
K="${KALLISTA_BIN:-$ROOT/target/release/kallista}"
[ -x "$K" ] || K="$(cargo metadata --format-version 1 --no-deps --manifest-path "$ROOT/Cargo.toml" | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/kallista"
VIDEOS="${VIDEOS:-4000}"
EPOCHS="${EPOCHS:-8}"
DIR="${DIR:-/tmp/kallista-compare-async}"
mkdir -p "$DIR"
if [ ! -d "$DIR/data/prepared/train" ]; then
  "$K" data make-video-qa --out "$DIR/data" --videos "$VIDEOS" --frames 4 --size 64 --seed 11 >/dev/null
  "$K" sql -f "$ROOT/jobs/video_qa/prepare.sql" --set data="$DIR/data" --set out="$DIR/data/prepared" >/dev/null
fi
job() { # name, scaling lines
  sed -e "s#^job_dir: .*#job_dir: $DIR/$1#" -e 's/shape: \[8, 64, 64, 3\]/shape: [4, 64, 64, 3]/' \
      -e "s#\${job_dir}/dataset/prepared#$DIR/data/prepared#" -e 's/batch_size: 16/batch_size: 32/' \
      -e "s/epochs: 7/epochs: $EPOCHS/" -e 's/eval_every_steps: 1000/eval_every_steps: 100/' \
      -e '/^# How `kallista run`/,$d' -e '/^scaling:/,$d' "$ROOT/jobs/video_qa/job.yaml" > "$DIR/$1.yaml"
  printf 'scaling:\n%b' "$2" >> "$DIR/$1.yaml"
}
job sync_2 '  workers: 2\n  mode: sync\n  shards: 4\n'
job async_2 '  workers: 2\n  mode: async\n  parameter_servers: 2\n  shards: 4\n'
job async_4 '  workers: 4\n  mode: async\n  parameter_servers: 2\n  shards: 4\n'
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) ($(nproc) cores); $VIDEOS videos, $EPOCHS epochs" >&2
for name in sync_2 async_2 async_4; do
  rm -rf "${DIR:?}/$name"
  start=$SECONDS
  "$K" train "$DIR/$name.yaml" > "$DIR/$name.log" 2>&1
  echo "$name: $((SECONDS - start)) s" >&2
done
python3 - "$DIR" <<'PYEOF'
import json, sys
d = sys.argv[1]
print(f"{'run':<9}{'samples':>9}{'eval acc (final)':>18}{'best':>7}{'eval rows':>10}{'mean staleness':>16}{'samples/s':>11}")
for name in ["sync_2", "async_2", "async_4"]:
    lines = [json.loads(l) for l in open(f"{d}/{name}/metrics.jsonl")]
    train = [l for l in lines if l["kind"] == "train"]
    evals = [l for l in lines if l["kind"] == "eval" and l["split"] == "eval"]
    res = json.load(open(f"{d}/{name}/results.json"))
    samples = sum(l["rows"] for l in train)
    ws = [w for l in train for w in l.get("workers", [])]
    pushes = sum(w["pushes"] for w in ws)
    stale = sum(w["mean_staleness"] * w["pushes"] for w in ws) / pushes if pushes else None
    stale_s = f"{stale:.2f}" if stale is not None else "-"
    print(f"{name:<9}{samples:>9}{evals[-1]['accuracy']:>18.4f}{res['best_eval_accuracy']:>7.4f}"
          f"{res['eval']['overall']['rows']:>10}{stale_s:>16}{res['samples_per_s']:>11.1f}")
PYEOF
