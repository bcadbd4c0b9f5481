#!/usr/bin/env bash
# `ddp bench step` against PyTorch's reference (Tests/Reference/bench_step_ref.py) on workloads W1, W2 and W3 (--workloads
# "1 2 3", Configs/bench-wN.yaml), alternating ddp and PyTorch in one session so they share the machine's noise. Prints every run, then per case the medians and ratios.
# W4 (--workloads 4) is GPT-2 small against transformers' GPT2LMHeadModel (--hf-gpt2; PY must import transformers too);
# a step takes seconds there, so give fewer --steps (default 10, after 2 warm-up steps; --steps 3 --warmup 1 for W4).
# W3 (encoder-only): ddp's training step sends only the chosen (labelled) positions through the masked-LM head (BERT's
# own gather_indexes); PyTorch's reference runs the head over every position, as Hugging Face's BertForMaskedLM does,
# unless --mlm-gather is given, which makes it gather too. Both GFLOP/s figures still count the head at every position.
#
#   Launch/bench-step.sh [--rounds R] [--threads "1 2"] [--workloads "1 2 3"] [--steps S] [--warmup W] [--python PY|none] [--baseline DDP] [--mlm-gather]
#       one process at each thread count: tokens/s of ddp and PyTorch, ratio ddp / PyTorch. With --baseline, another
#       ddp binary (say, the previous main's release build) runs in the same rounds too, and its ratio to ddp is
#       printed: how a change moved the speed, measured under the same noise. `--python none` leaves PyTorch out.
#   Launch/bench-step.sh --ranks N [--rounds R] [--workloads "1 2 3"] [--python PY] [--mlm-gather]
#       data parallel, 1 thread per rank: 1 process and N ranks of each (ddp under Launch/mpirun.sh, PyTorch DDP under
#       torchrun with gloo), tokens/s of all ranks, efficiency = N-rank tokens/s / (N x 1-rank tokens/s), and ddp's
#       share of the step spent waiting for communication.
# PY must import torch (a virtual environment outside the repository: pip install torch).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
rounds=3 threads="1 2" workloads="1 2 3" steps=10 warmup=2 ranks=1 mlm_gather="" python="${TORCH_PYTHON:-python3}" torch_ref="$root/Tests/Reference/bench_step_ref.py" baseline=""
while (($#)); do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --workloads) workloads="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --warmup) warmup="$2"; shift 2 ;;
    --ranks) ranks="$2"; shift 2 ;;
    --python) python="$2"; shift 2 ;;
    --baseline) baseline="$2"; shift 2 ;;
    --mlm-gather) mlm_gather="--mlm-gather"; shift ;;
    *) echo "bench-step.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ "$ranks" =~ ^[1-9][0-9]*$ ]] || { echo "bench-step.sh: --ranks needs a positive number, got '$ranks'" >&2; exit 2; }
if [ "$python" = none ]; then
  (( ranks == 1 )) || { echo "bench-step.sh: --ranks compares with PyTorch DDP; it needs --python" >&2; exit 2; }
else
  "$python" -c "import torch" 2>/dev/null || { echo "bench-step.sh: $python cannot import torch (use --python, or --python none)" >&2; exit 1; }
fi
[ -z "$baseline" ] || [ -x "$baseline" ] || { echo "bench-step.sh: --baseline $baseline is not an executable" >&2; exit 2; }
[ -x "$root/.build/release/ddp" ] || "$root/Launch/setup.sh"
ddp="$root/.build/release/ddp"

[[ "$steps" =~ ^[1-9][0-9]*$ && "$warmup" =~ ^[0-9]+$ ]] || { echo "bench-step.sh: --steps and --warmup take numbers" >&2; exit 2; }
# What each side is told: the step counts, and W4's reference model (transformers' GPT-2).
counts="--steps $steps --warmup $warmup"
reference() { case "$1" in 4) echo "$counts --hf-gpt2" ;; 3) echo "$counts $mlm_gather" ;; *) echo "$counts" ;; esac; }

results=$(mktemp)
trap 'rm -f "$results"' EXIT
# Each line: IMPLEMENTATION WORKLOAD THREADS RANKS JSON
record() { echo "$1 $2 $3 $4 $5" | tee -a "$results"; }
for round in $(seq "$rounds"); do
  if (( ranks == 1 )); then
    for t in $threads; do
      for w in $workloads; do
        record ddp "W$w" "$t" 1 "$("$ddp" bench step --config "$root/Configs/bench-w$w.yaml" --threads "$t" $counts --json)"
        [ -z "$baseline" ] || record baseline "W$w" "$t" 1 \
          "$("$baseline" bench step --config "$root/Configs/bench-w$w.yaml" --threads "$t" $counts --json)"
        [ "$python" = none ] || record torch "W$w" "$t" 1 "$(OMP_NUM_THREADS=$t "$python" "$torch_ref" "$root/Configs/bench-w$w.yaml" --threads "$t" $(reference "$w") 2>/dev/null)"
      done
    done
  else
    for w in $workloads; do
      record ddp "W$w" 1 1 "$("$ddp" bench step --config "$root/Configs/bench-w$w.yaml" --threads 1 $counts --json)"
      record ddp "W$w" 1 "$ranks" "$("$root/Launch/mpirun.sh" -np "$ranks" --threads 1 bench step \
        --config "$root/Configs/bench-w$w.yaml" --threads 1 $counts --json)"
      record torch "W$w" 1 1 "$(OMP_NUM_THREADS=1 "$python" "$torch_ref" "$root/Configs/bench-w$w.yaml" --threads 1 $(reference "$w") 2>/dev/null)"
      record torch "W$w" 1 "$ranks" "$(OMP_NUM_THREADS=1 "$python" -m torch.distributed.run --nproc_per_node="$ranks" \
        "$torch_ref" "$root/Configs/bench-w$w.yaml" --threads 1 $(reference "$w") --ddp 2>/dev/null | grep '^{')"
    done
  fi
done
python3 - "$results" "$ranks" <<'PY'
import collections, json, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    impl, workload, threads, ranks, text = line.split(None, 4)
    runs[(workload, int(threads), int(ranks), impl)].append(json.loads(text))
median = lambda key, field: statistics.median(r[field] for r in runs[key])
kernels = lambda key: "/".join(sorted({r.get("blas_kernels", "unknown") for r in runs[key]}))
ranks = int(sys.argv[2])
for workload in sorted({w for w, *_ in runs}):
    if ranks == 1:
        for threads in sorted({t for w, t, _, _ in runs if w == workload}):
            ddp = median((workload, threads, 1, "ddp"), "tokens_per_s")
            line = f"{workload} {threads} thread(s): ddp {ddp:.1f} tokens/s (OpenBLAS {kernels((workload, threads, 1, 'ddp'))} kernels)"
            if runs[(workload, threads, 1, "torch")]:
                torch = median((workload, threads, 1, "torch"), "tokens_per_s")
                line += f", PyTorch {torch:.1f} tokens/s, ratio {ddp / torch:.2f}"
                memory = [median((workload, threads, 1, impl), "peak_rss_bytes") / 2**20 for impl in ("ddp", "torch")]
                line += f"; peak RSS ddp {memory[0]:.0f} MiB, PyTorch {memory[1]:.0f} MiB"
            if runs[(workload, threads, 1, "baseline")]:
                baseline = median((workload, threads, 1, "baseline"), "tokens_per_s")
                line += f", baseline {baseline:.1f} tokens/s, ddp / baseline {ddp / baseline:.3f}"
            print(f"{line} (median of {len(runs[(workload, threads, 1, 'ddp')])} rounds)")
    else:
        line = [workload]
        for impl, name in (("ddp", "ddp"), ("torch", "PyTorch DDP")):
            alone, together = median((workload, 1, 1, impl), "tokens_per_s"), median((workload, 1, ranks, impl), "tokens_per_s")
            line.append(f"{name} {alone:.1f} -> {together:.1f} tokens/s on {ranks} ranks, efficiency {together / (ranks * alone):.3f}")
        wait = median((workload, 1, ranks, "ddp"), "communication_wait_share")
        together = [median((workload, 1, ranks, impl), "tokens_per_s") for impl in ("ddp", "torch")]
        memory = [median((workload, 1, ranks, impl), "peak_rss_bytes") / 2**20 for impl in ("ddp", "torch")]
        print(f"{line[0]}: {line[1]} (communication wait {wait * 100:.1f}%, OpenBLAS {kernels((workload, 1, ranks, 'ddp'))} kernels); {line[2]}; ratio {together[0] / together[1]:.2f}; "
              f"peak RSS of rank 0 ddp {memory[0]:.0f} MiB, PyTorch {memory[1]:.0f} MiB "
              f"(medians of {len(runs[(workload, 1, ranks, 'ddp')])} rounds)")
PY
