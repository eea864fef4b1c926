#!/usr/bin/env bash
# W1 (or W2) side by side: Kallista's bench and the peers of ../shared/peers (PyTorch eager with
# default and passive OpenMP waiting, torch.compile, Keras 3 on JAX), interleaved over ROUNDS
# rounds so that the machine's drift hits every peer alike. Prints the median of each and the
# ratio of Kallista to the best peer. All at 2 threads.
#
#   scripts/bench-w1.sh                 # W1, ROUNDS=3; needs ../shared/peers/setup.sh run once
#   scripts/bench-w1.sh W2              # W2 (raw frames, small CNN); scripts/bench-w2.sh does this
#   ROUNDS=5 NO_COMPILE=1 scripts/bench-w1.sh
set -euo pipefail
WORKLOAD="${1:-W1}"
case "$WORKLOAD" in W1|W2) ;; *) echo "usage: $0 [W1|W2]" >&2; exit 2 ;; esac
NAME="$(echo "$WORKLOAD" | tr 'A-Z' 'a-z')"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PEERS_SRC="${PEERS_SRC:-$ROOT/../shared/peers}"
PEERS_HOME="${PEERS_HOME:-$HOME/.cache/kallista-peers}"
PY="$PEERS_HOME/.venv/bin/python"
ROUNDS="${ROUNDS:-3}"
OUT="${OUT:-$(mktemp -d)/$NAME.jsonl}"
[ -x "$PY" ] || { echo "peers venv missing: run $PEERS_SRC/setup.sh" >&2; exit 1; }

cd "$ROOT"
cargo bench --workspace --bench "$NAME" --no-run 2>/dev/null
BENCH=$(cargo bench --workspace --bench "$NAME" --no-run --message-format=json 2>/dev/null \
  | NAME="$NAME" "$PY" -c 'import json,os,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m["target"]["name"]==os.environ["NAME"] and m.get("executable"): print(m["executable"])' | tail -1)
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for r in $(seq "$ROUNDS"); do
  echo "== round $r/$ROUNDS" >&2
  RAYON_NUM_THREADS=2 "$BENCH" >> "$OUT"
  (cd "$PEERS_HOME" && "$PY" "$PEERS_SRC/torch_w.py" --workload "$WORKLOAD" --lstm nn 2>/dev/null >> "$OUT")
  (cd "$PEERS_HOME" && OMP_WAIT_POLICY=PASSIVE "$PY" "$PEERS_SRC/torch_w.py" --workload "$WORKLOAD" --lstm nn 2>/dev/null >> "$OUT")
  if [ -z "${NO_COMPILE:-}" ]; then
    (cd "$PEERS_HOME" && "$PY" "$PEERS_SRC/torch_w.py" --workload "$WORKLOAD" --lstm nn --compile 2>/dev/null >> "$OUT") || true
  fi
  (cd "$PEERS_HOME" && KERAS_BACKEND=jax "$PY" "$PEERS_SRC/keras_w.py" --workload "$WORKLOAD" 2>/dev/null >> "$OUT")
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"$PY" - "$OUT" <<'PYEOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
by = {}
for r in rows:
    by.setdefault(r["peer"], []).append(r)
print(f"workload {rows[0]['workload']}, {len(rows)} runs")
print(f"{'peer':<26}{'train/s (median)':>18}{'runs':>22}{'train GFLOP/s':>15}{'infer/s':>10}")
med = {}
for p, rs in by.items():
    tr = [r["train_samples_per_s"] for r in rs]
    inf = [r["infer_samples_per_s"] for r in rs]
    med[p] = statistics.median(tr)
    gf = statistics.median(r["train_gflops"] for r in rs)
    print(f"{p:<26}{med[p]:>18.1f}{str([round(t) for t in tr]):>22}{gf:>15.1f}{statistics.median(inf):>10.1f}")
peers = {p: v for p, v in med.items() if p != "kallista"}
best = max(peers, key=peers.get)
print(f"\nratio kallista / best peer ({best}): {med['kallista'] / peers[best]:.2f}   (results: {sys.argv[1]})")
PYEOF
