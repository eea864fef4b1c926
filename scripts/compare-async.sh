#!/usr/bin/env bash
# Eval accuracy of the video-QA job (jobs/video_qa/job.yaml's model and optimizer) trained in
# `sync` mode with 2 workers and in `async` mode with 2 and 4 workers on 2 parameter servers,
# for the same number of samples seen, over several seeds: this small set's learning curve
# has a plateau near 0.25 that a run leaves at a seed-dependent step (or not at all within
# the budget), in `sync` as in `async`, so one seed per mode says little. Prints each run's
# final and best eval accuracy and the async runs' mean staleness, then each mode's mean
# over the seeds. Data: VIDEOS clips of FRAMES frames of 64x64 (default 4000 and 4), EPOCHS
# epochs (default 8), batch BATCH (default 32), an eval every EVAL_EVERY steps (default 100),
# SEEDS (default "1 2 3"), data seed DATA_SEED (default 11), the data made once in DIR
# (default /tmp/kallista-compare-async-VIDEOS-FRAMES-DATA_SEED).
# ASYNC_EXTRA adds scaling lines to the async jobs; OPTIMIZER replaces every job's optimizer. FULL=1 is the job itself: its data
# (20,000 clips of 8 frames), batch 16, an eval every 1000 steps, its seed (or SEEDS) and its 11
# epochs (or EPOCHS: the figures of earlier notes are after 7).
#
#   scripts/compare-async.sh
#   VIDEOS=8000 EPOCHS=12 SEEDS="1 2 3 4" scripts/compare-async.sh
#   FULL=1 scripts/compare-async.sh        # about 45 minutes on 2 cores (SEEDS="1234 1 2": three times)
#   ASYNC_EXTRA='  compensate_momentum: false\n  divide_lr_by_staleness: true\n' scripts/compare-async.sh
#   OPTIMIZER='{name: adam, learning_rate: {schedule: cosine_decay, initial_learning_rate: 0.0001, decay_steps: 1000000, alpha: 1.0, warmup_target: 0.001, warmup_steps: 1000}}' FULL=1 scripts/compare-async.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
K="${KALLISTA_BIN:-$ROOT/target/release/kallista}"
[ -x "$K" ] || K="$(cargo metadata --format-version 1 --no-deps --manifest-path "$ROOT/Cargo.toml" | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/kallista"
if [ "${FULL:-0}" = 1 ]; then
  VIDEOS=20000 FRAMES=8 BATCH=16 EPOCHS="${EPOCHS:-11}" EVAL_EVERY=1000 SEEDS="${SEEDS:-1234}" DATA_SEED=1234
fi
VIDEOS="${VIDEOS:-4000}"
FRAMES="${FRAMES:-4}"
BATCH="${BATCH:-32}"
EPOCHS="${EPOCHS:-8}"
EVAL_EVERY="${EVAL_EVERY:-100}"
DIR="${DIR:-/tmp/kallista-compare-async-$VIDEOS-$FRAMES-${DATA_SEED:-11}}"
SEEDS="${SEEDS:-1 2 3}"
ASYNC_EXTRA="${ASYNC_EXTRA:-}"
OPTIMIZER="${OPTIMIZER:-}"
mkdir -p "$DIR"
if [ ! -d "$DIR/data/clips" ]; then
  "$K" data make-video-qa --out "$DIR/data" --videos "$VIDEOS" --frames "$FRAMES" --size 64 --seed "${DATA_SEED:-11}" >/dev/null
fi
job() { # name, seed, scaling lines
  sed -e "s#^job_dir: .*#job_dir: $DIR/$1#" -e "s/^  seed: .*/  seed: $2/" -e "s/shape: \[8, 64, 64, 3\]/shape: [$FRAMES, 64, 64, 3]/" \
      -e "s#file: prepare.sql#file: $ROOT/jobs/video_qa/prepare.sql#" -e "s#\${job_dir}/dataset#$DIR/data#g" \
      -e "s/batch_size: 16/batch_size: $BATCH/" \
      -e "s/epochs: [0-9]*/epochs: $EPOCHS/" -e "s/eval_every_steps: 1000/eval_every_steps: $EVAL_EVERY/" \
      -e '/^# How `kallista run`/,$d' -e '/^scaling:/,$d' "$ROOT/jobs/video_qa/job.yaml" > "$DIR/$1.yaml"
  if [ -n "$OPTIMIZER" ]; then sed -i "s#^  optimizer: .*#  optimizer: $OPTIMIZER#" "$DIR/$1.yaml"; fi
  printf 'scaling:\n%b' "$3" >> "$DIR/$1.yaml"
}
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) ($(nproc) cores); $VIDEOS videos of $FRAMES frames, batch $BATCH, $EPOCHS epochs, seeds $SEEDS" >&2
RUNS=()
for seed in $SEEDS; do
  job "sync_2-s$seed" "$seed" '  workers: 2\n  mode: sync\n  shards: 4\n'
  job "async_2-s$seed" "$seed" "  workers: 2\n  mode: async\n  parameter_servers: 2\n  shards: 4\n$ASYNC_EXTRA"
  job "async_4-s$seed" "$seed" "  workers: 4\n  mode: async\n  parameter_servers: 2\n  shards: 4\n$ASYNC_EXTRA"
  for name in "sync_2-s$seed" "async_2-s$seed" "async_4-s$seed"; do
    rm -rf "${DIR:?}/$name"
    start=$SECONDS
    "$K" train "$DIR/$name.yaml" > "$DIR/$name.log" 2>&1
    echo "$name: $((SECONDS - start)) s" >&2
    RUNS+=("$name")
  done
done
python3 - "$DIR" "${RUNS[@]}" <<'PYEOF'
import json, statistics, sys
d, names = sys.argv[1], sys.argv[2:]
by_mode = {}
print(f"{'run':<12}{'samples':>9}{'eval acc (final)':>18}{'best':>7}{'eval rows':>10}{'mean staleness':>16}{'samples/s':>11}")
for name in names:
    lines = [json.loads(l) for l in open(f"{d}/{name}/metrics.jsonl")]
    train = [l for l in lines if l["kind"] == "train"]
    evals = [l for l in lines if l["kind"] == "eval" and l["split"] == "eval"]
    res = json.load(open(f"{d}/{name}/results.json"))
    samples = sum(l["rows"] for l in train)
    ws = [w for l in train for w in l.get("workers", [])]
    pushes = sum(w["pushes"] for w in ws)
    stale = sum(w["mean_staleness"] * w["pushes"] for w in ws) / pushes if pushes else None
    stale_s = f"{stale:.2f}" if stale is not None else "-"
    print(f"{name:<12}{samples:>9}{evals[-1]['accuracy']:>18.4f}{res['best_eval_accuracy']:>7.4f}"
          f"{res['eval']['overall']['rows']:>10}{stale_s:>16}{res['samples_per_s']:>11.1f}")
    by_mode.setdefault(name.split("-s")[0], []).append((evals[-1]["accuracy"], stale))
print(f"\n{'mode':<9}{'seeds':>6}{'mean final eval acc':>21}{'min':>7}{'max':>7}{'mean staleness':>16}")
for mode, rs in by_mode.items():
    accs = [a for a, _ in rs]
    st = [s for _, s in rs if s is not None]
    st_s = f"{statistics.mean(st):.2f}" if st else "-"
    print(f"{mode:<9}{len(rs):>6}{statistics.mean(accs):>21.4f}{min(accs):>7.4f}{max(accs):>7.4f}{st_s:>16}")
PYEOF
