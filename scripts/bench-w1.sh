#!/usr/bin/env bash
# W1 (or W2) side by side: Kallista's bench and the peers of ../shared/peers (PyTorch eager with
# default and passive OpenMP waiting, torch.compile, Keras 3 on JAX, and Keras 3 on TensorFlow
# from the peers' .venv-elephas when it exists), interleaved over ROUNDS rounds so that the
# machine's drift hits every peer alike. First prints the CPU (model, vector flags), the
# machine's SGEMM peak (sgemm_peak.py: the best of OpenBLAS, MKL and XLA) and Kallista's GEMM
# kernels on the workload's shapes against that peak; then the median of each peer, train and
# inference, and the ratios of Kallista to the best peer. All at 2 threads.
#
#   scripts/bench-w1.sh                 # W1, ROUNDS=3; needs ../shared/peers/setup.sh run once
#   scripts/bench-w1.sh W2              # W2 (raw frames, small CNN); scripts/bench-w2.sh does this
#   ROUNDS=5 NO_COMPILE=1 scripts/bench-w1.sh
#   KALLISTA_CPU_KERNELS=avx2 scripts/bench-w1.sh   # Kallista on its AVX2 path on an AVX-512 host
set -euo pipefail
WORKLOAD="${1:-W1}"
case "$WORKLOAD" in W1|W2) ;; *) echo "usage: $0 [W1|W2]" >&2; exit 2 ;; esac
NAME="$(echo "$WORKLOAD" | tr 'A-Z' 'a-z')"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PEERS_SRC="${PEERS_SRC:-$ROOT/../shared/peers}"
PEERS_HOME="${PEERS_HOME:-$HOME/.cache/kallista-peers}"
PY="$PEERS_HOME/.venv/bin/python"
PY_TF="$PEERS_HOME/.venv-elephas/bin/python"
ROUNDS="${ROUNDS:-3}"
OUT="${OUT:-$(mktemp -d)/$NAME.jsonl}"
[ -x "$PY" ] || { echo "peers venv missing: run $PEERS_SRC/setup.sh" >&2; exit 1; }

cd "$ROOT"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(nproc) cores" >&2
echo "vector flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|avx512[a-z_0-9]*|amx[a-z_0-9]*)$' | tr '\n' ' ')" >&2
echo "kallista cpu kernels: ${KALLISTA_CPU_KERNELS:-auto}" >&2
PEAK=$(cd "$PEERS_HOME" && env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$PY" "$PEERS_SRC/sgemm_peak.py" --sizes 1024,2048 2>/dev/null \
  | "$PY" -c 'import json,sys
print(max((json.loads(l).get("peak_gflops") or 0) for l in sys.stdin if l.startswith("{")))')
echo "sgemm peak of this machine (2 threads, best library): $PEAK GFLOP/s" >&2
cargo bench --workspace --bench gemm --no-run 2>/dev/null
RAYON_NUM_THREADS=2 cargo bench --workspace --bench gemm 2>/dev/null | PEAK="$PEAK" "$PY" -c 'import os,re,sys
peak = float(os.environ["PEAK"])
for l in sys.stdin:
    l = l.rstrip()
    m = re.match(r"(.{28})\s+([\d.]+)\s+([\d.]+)", l)
    print(l + (f"   kallista 2t = {100 * float(m.group(3)) / peak:.0f}% of peak" if m and "GFLOP" in l else ""))' >&2
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
  if [ -x "$PY_TF" ]; then
    (cd "$PEERS_HOME" && KERAS_BACKEND=tensorflow "$PY_TF" "$PEERS_SRC/keras_w.py" --workload "$WORKLOAD" 2>/dev/null >> "$OUT") || true
  fi
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
PEAK="$PEAK" "$PY" - "$OUT" <<'PYEOF'
import json, os, statistics, sys
peak = float(os.environ["PEAK"])
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
by = {}
for r in rows:
    by.setdefault(r["peer"], []).append(r)
print(f"workload {rows[0]['workload']}, {len(rows)} runs")
print(f"{'peer':<26}{'train/s (median)':>18}{'runs':>22}{'train GFLOP/s':>15}{'infer/s':>10}{'runs':>22}{'infer GFLOP/s':>15}")
med, imed = {}, {}
for p, rs in by.items():
    tr = [r["train_samples_per_s"] for r in rs]
    inf = [r["infer_samples_per_s"] for r in rs]
    med[p], imed[p] = statistics.median(tr), statistics.median(inf)
    gf = statistics.median(r["train_gflops"] for r in rs)
    igf = statistics.median(r.get("infer_gflops") or 0 for r in rs)
    print(f"{p:<26}{med[p]:>18.1f}{str([round(t) for t in tr]):>22}{gf:>9.1f} ({100 * gf / peak:.0f}%)"
          f"{imed[p]:>10.1f}{str([round(t) for t in inf]):>22}{igf:>9.1f} ({100 * igf / peak:.0f}%)")
print(f"(GFLOP/s as % of the machine's sgemm peak, {peak} GFLOP/s)")
peers = {p: v for p, v in med.items() if p != "kallista"}
best = max(peers, key=peers.get)
ipeers = {p: v for p, v in imed.items() if p != "kallista"}
ibest = max(ipeers, key=ipeers.get)
print(f"\ntrain: ratio kallista / best peer ({best}): {med['kallista'] / peers[best]:.2f}")
print(f"infer: ratio kallista / best peer ({ibest}): {imed['kallista'] / ipeers[ibest]:.2f}   (results: {sys.argv[1]})")
PYEOF
