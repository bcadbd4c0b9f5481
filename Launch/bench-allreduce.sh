#!/usr/bin/env bash
# `ddp bench allreduce` against a plain C MPI_Allreduce (Tests/Reference/allreduce_ref.c) on the same
# buffer size and rank count, in the same session, alternating the two to share the machine's noise.
# Prints each round and the median bus bandwidths and their ratio (Swift / C).
#   Launch/bench-allreduce.sh [-np N] [--size-mb MB] [--iterations K] [--rounds R]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
ranks=2 size_mb=64 iterations=20 rounds=5
while (($#)); do
  case "$1" in
    -np) ranks="$2"; shift 2 ;;
    --size-mb) size_mb="$2"; shift 2 ;;
    --iterations) iterations="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    *) echo "bench-allreduce.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
reference="$root/.build/allreduce_ref"
mpicc -O2 -o "$reference" "$root/Tests/Reference/allreduce_ref.c"
[ -x "$root/.build/release/ddp" ] || "$root/Launch/setup.sh"

results=$(mktemp)
for round in $(seq "$rounds"); do
  swift_json=$("$root/Launch/mpirun.sh" -np "$ranks" bench allreduce --size-mb "$size_mb" --iterations "$iterations" --json)
  c_json=$(DDP_BIN="$reference" "$root/Launch/mpirun.sh" -np "$ranks" "$size_mb" "$iterations" 3)
  echo "swift $swift_json" | tee -a "$results"
  echo "c     $c_json" | tee -a "$results"
done
python3 - "$results" <<'PY'
import json, statistics, sys
rows = {"swift": [], "c": []}
for line in open(sys.argv[1]):
    kind, text = line.split(None, 1)
    rows[kind].append(json.loads(text))
def median(kind, key): return statistics.median(r[key] for r in rows[kind])
size = rows["c"][0]["bytes"] / 1048576
ranks = rows["c"][0]["ranks"]
key = "busbw_gbps" if ranks > 1 else "algbw_gbps"
swift, c = median("swift", key), median("c", key)
print(f"allreduce {size:.0f} MiB, {ranks} ranks, median of {len(rows['c'])} rounds: "
      f"ddp {key} {swift:.3f} GB/s, C MPI_Allreduce {c:.3f} GB/s, ratio {swift / c:.3f}")
PY
rm -f "$results"
