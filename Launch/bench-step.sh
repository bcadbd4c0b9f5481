#!/usr/bin/env bash
# `ddp bench step` against PyTorch's reference (torch_ref.py) on workloads W1 and W2, at 1 and 2 threads,
# alternating the two in one session so they share the machine's noise. Prints every run, then per case the
# median tokens/s of both and their ratio (ddp / PyTorch).
#   Launch/bench-step.sh [--rounds R] [--threads "1 2"] [--python PY] [--torch-ref PATH]
# PY must import torch (a virtual environment outside the repository: pip install torch).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
rounds=3 threads="1 2" python="${TORCH_PYTHON:-python3}" torch_ref="$root/../shared/bench/torch_ref.py"
while (($#)); do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --python) python="$2"; shift 2 ;;
    --torch-ref) torch_ref="$2"; shift 2 ;;
    *) echo "bench-step.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
"$python" -c "import torch" 2>/dev/null || { echo "bench-step.sh: $python cannot import torch (use --python)" >&2; exit 1; }
[ -f "$torch_ref" ] || { echo "bench-step.sh: no torch_ref.py at $torch_ref (use --torch-ref)" >&2; exit 1; }
[ -x "$root/.build/release/ddp" ] || "$root/Launch/setup.sh"

results=$(mktemp)
for round in $(seq "$rounds"); do
  for t in $threads; do
    for w in 1 2; do
      echo "ddp W$w $t $("$root/.build/release/ddp" bench step --config "$root/Configs/bench-w$w.yaml" --threads "$t" --json)" | tee -a "$results"
      echo "torch W$w $t $(OMP_NUM_THREADS=$t "$python" "$torch_ref" "W$w" --threads "$t" 2>/dev/null)" | tee -a "$results"
    done
  done
done
python3 - "$results" <<'PY'
import collections, json, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    impl, workload, threads, text = line.split(None, 3)
    runs[(workload, int(threads), impl)].append(json.loads(text)["tokens_per_s"])
for (workload, threads) in sorted({(w, t) for w, t, _ in runs}):
    ddp, torch = statistics.median(runs[(workload, threads, "ddp")]), statistics.median(runs[(workload, threads, "torch")])
    print(f"{workload} {threads} thread(s): ddp {ddp:.1f} tokens/s, PyTorch {torch:.1f} tokens/s, ratio {ddp / torch:.2f} "
          f"(median of {len(runs[(workload, threads, 'ddp')])} rounds)")
PY
rm -f "$results"
