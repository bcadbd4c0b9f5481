#!/usr/bin/env bash
# Runs ddp under mpirun with the settings a CPU run wants:
#   - Open MPI's run-as-root permission when run as root (containers, CI);
#   - --oversubscribe when there are more ranks than cores;
#   - each rank bound to its own cores, and BLAS/compute threads per rank = cores / ranks (at least 1),
#     so ranks x threads never exceeds the cores.
#
# Usage: Launch/mpirun.sh [-np N] [--threads T] [--hostfile FILE] [--mpi-arg ARG ...] [--] DDP-ARGUMENTS...
#   Launch/mpirun.sh -np 2 bench allreduce --size-mb 64
# Environment: DDP_BIN (default .build/release/ddp), MPIRUN (default mpirun).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

cores=$(nproc)
ranks=$cores
threads=""
extra=()
while (($#)); do
  case "$1" in
    -np|-n) ranks="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --hostfile) extra+=(--hostfile "$2"); shift 2 ;;
    --mpi-arg) extra+=("$2"); shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) break ;;
  esac
done
[[ "$ranks" =~ ^[1-9][0-9]*$ ]] || { echo "mpirun.sh: -np needs a positive number, got '$ranks'" >&2; exit 2; }
if [ -z "$threads" ]; then
  threads=$(( cores / ranks ))
  (( threads >= 1 )) || threads=1
fi
[[ "$threads" =~ ^[1-9][0-9]*$ ]] || { echo "mpirun.sh: --threads needs a positive number, got '$threads'" >&2; exit 2; }

binary="${DDP_BIN:-$root/.build/release/ddp}"
[ -x "$binary" ] || { echo "mpirun.sh: $binary is not built; run Launch/setup.sh first" >&2; exit 1; }

options=(-np "$ranks")
if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
if (( ranks * threads > cores )); then
  # More work than cores: binding would stack ranks on the same core; let the OS spread them.
  options+=(--oversubscribe --bind-to none)
else
  options+=(--map-by "slot:PE=$threads" --bind-to core)
fi
export OPENBLAS_NUM_THREADS="$threads" OMP_NUM_THREADS="$threads" SWIFTDDP_THREADS="$threads"
options+=(-x OPENBLAS_NUM_THREADS -x OMP_NUM_THREADS -x SWIFTDDP_THREADS)

exec "${MPIRUN:-mpirun}" "${options[@]}" "${extra[@]}" "$binary" "$@"
