#!/usr/bin/env bash
# Two-host data-parallel throughput on the test cluster (Launch/test-cluster.sh): `ddp bench step` on W1 and W2 with
# 2 hosts x 1 rank x 1 thread, against 2 x the single-rank 1-thread figure, on the plain link and with each host's
# link shaped to RATE (tc tbf), uncompressed and with grad_compression bf16. With --python, PyTorch DDP (gloo,
# Tests/Reference/bench_step_ref.py --ddp) is measured the same way. Rounds alternate everything; prints every run,
# then medians and efficiencies. Needs root.
#   Launch/bench-cluster.sh [--rounds R] [--rate 1gbit] [--side bridge|host] [--verbatim] [--python PY]
# --side: where each host's shaper sits (Launch/test-cluster.sh shape): the bridge end of its veth, or its eth0.
# By default each host gets its own CPU core (test-cluster.sh up --pin) and the shaped links carry TCP offload
# packets whole (shape without --keep-gso), as separate machines with NICs would. --verbatim measures the bare
# emulation instead: unpinned hosts sharing both cores with the kernel's software segmentation of every packet.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
rounds=3 rate=1gbit side=bridge python="" torch_ref="$root/Tests/Reference/bench_step_ref.py" pin=--pin gso=""
while (($#)); do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --rate) rate="$2"; shift 2 ;;
    --side) side="$2"; shift 2 ;;
    --verbatim) pin="" gso=--keep-gso; shift ;;
    --python) python="$2"; shift 2 ;;
    *) echo "bench-cluster.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -x "$root/.build/release/ddp" ] || "$root/Launch/setup.sh"
ddp="$root/.build/release/ddp"
cluster="$root/Launch/test-cluster.sh"
results=$(mktemp)
trap '"$cluster" down >/dev/null 2>&1 || true; rm -f "$results"' EXIT
"$cluster" up 2 $pin

# Each line: IMPLEMENTATION WORKLOAD LINK COMPRESSION JSON
record() { echo "$1 $2 $3 $4 $5" | tee -a "$results"; }
torch_ddp() {  # config
  MASTER_ADDR=10.231.77.1 MASTER_PORT=$((29500 + RANDOM % 400)) GLOO_SOCKET_IFNAME=eth0 DDP_BIN="$python" \
    "$cluster" mpirun --env MASTER_ADDR --env MASTER_PORT --env GLOO_SOCKET_IFNAME -np 2 --threads 1 -- \
    "$torch_ref" "$1" --threads 1 --ddp 2>/dev/null | grep '^{'
}
for round in $(seq "$rounds"); do
  for w in W1 W2; do
    config="$root/Configs/bench-$(echo "$w" | tr 'W' 'w').yaml"
    record ddp "$w" alone none "$("$ddp" bench step --config "$config" --threads 1 --json)"
    [ -z "$python" ] || record torch "$w" alone none "$(OMP_NUM_THREADS=1 "$python" "$torch_ref" "$config" --threads 1 2>/dev/null)"
    for link in plain "$rate"; do
      if [ "$link" = plain ]; then shaping=off; else shaping="$rate"; fi
      "$cluster" shape 1 "$shaping" "$side" $gso; "$cluster" shape 2 "$shaping" "$side" $gso
      for compression in none bf16; do
        record ddp "$w" "$link" "$compression" "$("$cluster" mpirun -np 2 --threads 1 -- bench step --config "$config" --threads 1 \
          --json --set "training.grad_compression=$compression" | tail -1)"
      done
      [ -z "$python" ] || record torch "$w" "$link" none "$(torch_ddp "$config")"
    done
  done
done
python3 - "$results" <<'PY'
import collections, json, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    impl, workload, link, compression, text = line.split(None, 4)
    runs[(impl, workload, link, compression)].append(json.loads(text))
median = lambda key, field="tokens_per_s": statistics.median(r[field] for r in runs[key])
for (impl, workload, link, compression) in sorted(runs):
    if link == "alone":
        continue
    alone = median((impl, workload, "alone", "none"))
    together = median((impl, workload, link, compression))
    wait = f", communication wait {median((impl, workload, link, compression), 'communication_wait_share') * 100:.1f}%" if impl == "ddp" else ""
    print(f"{impl:5} {workload} {link:6} {compression:4}: 1 rank {alone:7.1f} -> 2 hosts {together:7.1f} tokens/s, "
          f"efficiency {together / (2 * alone):.3f}{wait} (median of {len(runs[(impl, workload, link, compression)])})")
PY
