#!/usr/bin/env bash
# `async` against `sync` training of W1 (../shared/peers/WORKLOAD.md) at 2 and 4 workers, on the
# embedded cluster and on a cluster of processes, then Elephas's asynchronous mode on the same
# number of samples, in one invocation; prints samples/s of each and the ratios.
#
#   scripts/bench-async.sh            # needs WITH_ELEPHAS=1 ../shared/peers/setup.sh once
#   SYNC_STEPS=128 scripts/bench-async.sh
#
# Each Kallista run trains SYNC_STEPS steps of batch 32 (default 64: Elephas's 2048 samples) in one
# segment, 2 parameter servers for `async`. Elephas fits ELEPHAS_FITS times (default 4) in one Spark
# context; the first fit starts cold Python workers, so the warm fits are compared, by their median
# (one warm fit's speed moved between 98 and 244 samples/s from one invocation to the next here).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PEERS_SRC="${PEERS_SRC:-$ROOT/../shared/peers}"
PEERS_HOME="${PEERS_HOME:-$HOME/.cache/kallista-peers}"
EPY="$PEERS_HOME/.venv-elephas/bin/python"
STEPS="${SYNC_STEPS:-64}"
OUT="${OUT:-$(mktemp -d)/async.jsonl}"
[ -x "$EPY" ] || { echo "Elephas venv missing: run WITH_ELEPHAS=1 $PEERS_SRC/setup.sh" >&2; exit 1; }

cd "$ROOT"
cargo bench --workspace --bench engine_w1 --no-run 2>/dev/null
BENCH=$(cargo bench --workspace --bench engine_w1 --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m["target"]["name"]=="engine_w1" and m.get("executable"): print(m["executable"])' | tail -1)
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) ($(nproc) cores); load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
RUNS=sync_2_workers,async_2_workers,sync_4_workers,async_4_workers,sync_cluster,async_cluster,sync_cluster_4,async_cluster_4 \
  SYNC_STEPS="$STEPS" RAYON_NUM_THREADS=2 "$BENCH" >> "$OUT"
(cd "$PEERS_HOME" && "$EPY" "$PEERS_SRC/elephas_w1.py" --modes async --samples $((STEPS * 32)) --fits "${ELEPHAS_FITS:-4}" 2>/dev/null >> "$OUT")
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
python3 - "$OUT" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
runs = {r["run"]: r for r in rows if "run" in r and r["run"] != "in_process"}
elephas = [r for r in rows if r.get("peer") == "elephas-async" and r.get("train_samples_per_s")]
warm = [r for r in elephas if not r.get("cold_workers", False)]
speeds = sorted(r["train_samples_per_s"] for r in (warm or elephas))
el = (speeds[(len(speeds) - 1) // 2] + speeds[len(speeds) // 2]) / 2 if speeds else None
print(f"{'run':<18}{'samples/s':>11}{'vs sync':>9}{'vs Elephas async':>18}")
for name in ["sync_2_workers", "async_2_workers", "sync_4_workers", "async_4_workers",
             "sync_cluster", "async_cluster", "sync_cluster_4", "async_cluster_4"]:
    r = runs.get(name)
    if not r:
        continue
    twin = runs.get(name.replace("async", "sync"))
    vs_sync = f"{r['samples_per_s'] / twin['samples_per_s']:.2f}" if name.startswith("async") and twin else ""
    vs_el = f"{r['samples_per_s'] / el:.2f}" if el else ""
    print(f"{name:<18}{r['samples_per_s']:>11.1f}{vs_sync:>9}{vs_el:>18}")
print(f"Elephas async: median {el:.2f} samples/s of the warm fits {speeds}" if el else "Elephas async: no result")
print(f"all lines: {sys.argv[1]}")
PYEOF
