#!/usr/bin/env bash
# Long context: W2's model (Configs/bench-w2.yaml, d_model 384, 6 layers, 6 heads) at contexts T = 256 ... 4096 with
# 2,048 tokens per step (batch 2048 / T; batch 1 from T = 2048 up, so 4,096 tokens at 4096), `ddp bench step` against nanoGPT's model in
# PyTorch (Tests/Reference/bench_step_ref.py --sdpa: F.scaled_dot_product_attention(is_causal=True), PyTorch's CPU
# flash-attention kernel), alternating in one session, 1 thread each. Prints every run, then per T the medians of
# tokens/s and peak resident memory of both, and the ratio ddp / PyTorch.
#
#   Launch/bench-context.sh [--rounds R] [--contexts "256 512 1024 2048 4096"] [--python PY|none] [--baseline DDP]
#       --baseline adds another ddp binary (say, the previous main's release build) to the same rounds.
# PY must import torch (a virtual environment outside the repository: pip install torch).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
rounds=3 contexts="256 512 1024 2048 4096" python="${TORCH_PYTHON:-python3}" baseline=""
while (($#)); do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --contexts) contexts="$2"; shift 2 ;;
    --python) python="$2"; shift 2 ;;
    --baseline) baseline="$2"; shift 2 ;;
    *) echo "bench-context.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || { echo "bench-context.sh: --rounds needs a positive number, got '$rounds'" >&2; exit 2; }
for t in $contexts; do
  [[ "$t" =~ ^[1-9][0-9]*$ ]] || { echo "bench-context.sh: --contexts takes positive numbers, got '$t'" >&2; exit 2; }
done
if [ "$python" != none ]; then
  "$python" -c "import torch" 2>/dev/null || { echo "bench-context.sh: $python cannot import torch (use --python, or --python none)" >&2; exit 1; }
fi
[ -z "$baseline" ] || [ -x "$baseline" ] || { echo "bench-context.sh: --baseline $baseline is not an executable" >&2; exit 2; }
# The release build of this checkout (setup.sh builds it, and rebuilds what changed).
"$root/Launch/setup.sh"
ddp="$root/.build/release/ddp"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# One config per context: W2's, with max_length and target_length T and batch_size max(1, 2048 / T). Both sides read it.
for t in $contexts; do
  python3 - "$root/Configs/bench-w2.yaml" "$t" > "$work/w2-$t.yaml" <<'PY'
import re, sys
text, t = open(sys.argv[1]).read(), int(sys.argv[2])
for key, value in (("max_length", t), ("target_length", t), ("batch_size", max(1, 2048 // t))):
    text, count = re.subn(rf"^(\s+{key}:).*$", rf"\g<1> {value}", text, flags=re.M)
    assert count == 1, f"{key} appears {count} times in {sys.argv[1]}"
print(text, end="")
PY
done

results="$work/results"
# Each line: IMPLEMENTATION T JSON; a run that printed no JSON object (it failed: out of memory, say) ends the script.
record() {
  [[ "$3" == "{"* ]] || { echo "bench-context.sh: $1 at T $2 failed (no result; rerun it alone to see why)" >&2; exit 1; }
  echo "$1 $2 $3" | tee -a "$results"
}
for round in $(seq "$rounds"); do
  for t in $contexts; do
    record ddp "$t" "$("$ddp" bench step --config "$work/w2-$t.yaml" --threads 1 --steps 5 --json)"
    [ -z "$baseline" ] || record baseline "$t" "$("$baseline" bench step --config "$work/w2-$t.yaml" --threads 1 --steps 5 --json)"
    [ "$python" = none ] || record torch "$t" \
      "$(OMP_NUM_THREADS=1 "$python" "$root/Tests/Reference/bench_step_ref.py" "$work/w2-$t.yaml" --threads 1 --steps 5 --sdpa 2>/dev/null)"
  done
done
python3 - "$results" <<'PY'
import collections, json, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    impl, t, text = line.split(None, 2)
    runs[(int(t), impl)].append(json.loads(text))
median = lambda key, field: statistics.median(r[field] for r in runs[key])
mib = lambda b: f"{b / 2**20:.0f} MiB"
print("| context T (batch) | ddp tokens/s | PyTorch tokens/s | ratio | peak RSS ddp | peak RSS PyTorch | ddp attention keeps |")
print("|---|---|---|---|---|---|---|")
for t in sorted({t for t, _ in runs}):
    ddp = median((t, "ddp"), "tokens_per_s")
    row = [f"{t} ({max(1, 2048 // t)})", f"{ddp:.0f}"]
    if runs[(t, "torch")]:
        torch = median((t, "torch"), "tokens_per_s")
        row += [f"{torch:.0f}", f"{ddp / torch:.2f}"]
    else:
        row += ["-", "-"]
    row.append(mib(median((t, "ddp"), "peak_rss_bytes")))
    row.append(mib(median((t, "torch"), "peak_rss_bytes")) if runs[(t, "torch")] else "-")
    row.append(mib(median((t, "ddp"), "attention_state_bytes")))
    print("| " + " | ".join(row) + " |")
    if runs[(t, "baseline")]:
        baseline = median((t, "baseline"), "tokens_per_s")
        print(f"  T {t}: baseline {baseline:.0f} tokens/s, peak {mib(median((t, 'baseline'), 'peak_rss_bytes'))}; "
              f"ddp / baseline {ddp / baseline:.2f}")
used = sorted({r.get("blas_kernels", "unknown") for (t, impl), rs in runs.items() if impl == "ddp" for r in rs})
print(f"ddp's GEMMs ran OpenBLAS's {'/'.join(used)} kernels")
PY
