#!/usr/bin/env bash
# `ddp bench decode` (W2 model, batch 1, context 256, key/value cache and without) against the same decoding in
# PyTorch (Tests/Reference/decode_ref.py, with its own key/value cache), alternating the two in one session.
# Prints every run, then the medians and the ratios ddp / PyTorch.
#   Launch/bench-decode.sh [--rounds R] [--threads T] [--python PY]
# PY must import torch (a virtual environment outside the repository: pip install torch).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
rounds=3 threads=1 python="${TORCH_PYTHON:-python3}"
while (($#)); do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --python) python="$2"; shift 2 ;;
    *) echo "bench-decode.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
"$python" -c "import torch" 2>/dev/null || { echo "bench-decode.sh: $python cannot import torch (use --python)" >&2; exit 1; }
[ -x "$root/.build/release/ddp" ] || "$root/Launch/setup.sh"

results=$(mktemp)
trap 'rm -f "$results"' EXIT
for round in $(seq "$rounds"); do
  echo "ddp $("$root/.build/release/ddp" bench decode --config "$root/Configs/bench-w2.yaml" --threads "$threads" --rounds 1 --json)" | tee -a "$results"
  echo "torch $(OMP_NUM_THREADS=$threads "$python" "$root/Tests/Reference/decode_ref.py" --threads "$threads" --rounds 1)" | tee -a "$results"
done
python3 - "$results" <<'PY'
import collections, json, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    impl, text = line.split(None, 1)
    runs[impl].append(json.loads(text))
for way in ("cached", "uncached"):
    ddp = statistics.median(r[f"{way}_tokens_per_s"] for r in runs["ddp"])
    torch = statistics.median(r[f"{way}_tokens_per_s"] for r in runs["torch"])
    print(f"W2 {way}: ddp {ddp:.1f} tokens/s, PyTorch {torch:.1f} tokens/s, ratio {ddp / torch:.2f} (median of {len(runs['ddp'])} rounds)")
print("same tokens both ways: ddp " + str(all(r["same_tokens"] for r in runs["ddp"])) + ", PyTorch " + str(all(r["same_tokens"] for r in runs["torch"])))
PY
