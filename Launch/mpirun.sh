#!/usr/bin/env bash
# Runs ddp under mpirun with the settings a CPU run wants:
#   - Open MPI's run-as-root permission when run as root (containers, CI);
#   - --oversubscribe when a node has more ranks than cores;
#   - each rank bound to its own cores, and BLAS/compute threads per rank = cores / ranks per node (at least 1),
#     so ranks x threads never exceeds a node's cores;
#   - the thread settings, PATH and LD_LIBRARY_PATH (and any --env VAR) forwarded to every rank, local or remote.
#
# Usage: Launch/mpirun.sh [-np N] [--threads T] [--hostfile FILE] [--network SUBNET] [--rsh-agent PROGRAM]
#                         [--env VAR ...] [--no-bind] [--mpi-arg ARG ...] [--] DDP-ARGUMENTS...
#   --hostfile FILE      nodes and slots ("node01 slots=2"); ranks per node = N / nodes (filled in order)
#   --network SUBNET     keep MPI's traffic (data and control) on this subnet or interface, e.g. 10.1.0.0/16 or eth1
#   --rsh-agent PROGRAM  start remote daemons with PROGRAM instead of ssh (Launch/test-cluster.sh uses this)
#   --no-bind            do not bind ranks to cores (nodes that share cores, as test-cluster hosts do)
#   Launch/mpirun.sh -np 2 bench allreduce --size-mb 64
#   Launch/mpirun.sh -np 4 --hostfile hosts --network eth1 train --config Configs/base.yaml
# Environment: DDP_BIN (default .build/release/ddp), MPIRUN (default mpirun). Cores per node are this machine's
# (nproc) unless --threads says otherwise.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

cores=$(nproc)
ranks=$cores
threads=""
hostfile=""
bind=true
extra=()
forward=(OPENBLAS_NUM_THREADS OMP_NUM_THREADS SWIFTDDP_THREADS)
while (($#)); do
  # An option that takes a value, given last without one, is an error naming it (not bash's "unbound variable").
  # So is one followed by another option in place of its value (--mpi-arg's value is an mpirun option itself).
  case "$1" in
    -np|-n|--threads|--hostfile|--network|--rsh-agent|--env|--mpi-arg)
      (($# >= 2)) || { echo "mpirun.sh: $1 needs a value" >&2; exit 2; }
      [[ "$1" == --mpi-arg || "$2" != -* ]] || { echo "mpirun.sh: $1 needs a value, not the option $2" >&2; exit 2; } ;;
  esac
  case "$1" in
    -np|-n) ranks="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --hostfile) hostfile="$2"; shift 2 ;;
    --network) extra+=(--mca btl_tcp_if_include "$2" --mca oob_tcp_if_include "$2"); shift 2 ;;
    --rsh-agent) extra+=(--mca plm_rsh_agent "$2"); shift 2 ;;
    --env) forward+=("$2"); shift 2 ;;
    --no-bind) bind=false; shift ;;
    --mpi-arg) extra+=("$2"); shift 2 ;;
    --) shift; break ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) break ;;
  esac
done
[[ "$ranks" =~ ^[1-9][0-9]*$ ]] || { echo "mpirun.sh: -np needs a positive number, got '$ranks'" >&2; exit 2; }
nodes=1
if [ -n "$hostfile" ]; then
  [ -r "$hostfile" ] || { echo "mpirun.sh: cannot read hostfile '$hostfile'" >&2; exit 2; }
  nodes=$(grep -cEv '^[[:space:]]*(#|$)' "$hostfile" || true)
  (( nodes >= 1 )) || { echo "mpirun.sh: hostfile '$hostfile' lists no nodes" >&2; exit 2; }
  extra+=(--hostfile "$hostfile")
  # A node that stops answering (a cut link, a dead machine) gives no TCP reset, so without keepalives mpirun
  # waits ~8 minutes to notice. Probe idle control connections after 10 s, every 5 s, 3 misses: a lost node
  # ends the job within ~25 s.
  extra+=(--mca oob_tcp_keepalive_time 10 --mca oob_tcp_keepalive_intvl 5 --mca oob_tcp_keepalive_probes 3)
fi
per_node=$(( (ranks + nodes - 1) / nodes ))
if [ -z "$threads" ]; then
  threads=$(( cores / per_node ))
  (( threads >= 1 )) || threads=1
fi
[[ "$threads" =~ ^[1-9][0-9]*$ ]] || { echo "mpirun.sh: --threads needs a positive number, got '$threads'" >&2; exit 2; }

binary="${DDP_BIN:-$root/.build/release/ddp}"
[ -x "$binary" ] || { echo "mpirun.sh: $binary is not built; run Launch/setup.sh first" >&2; exit 1; }

options=(-np "$ranks")
if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
if (( per_node * threads > cores )); then
  # More work than cores: binding would stack ranks on the same core; let the OS spread them.
  options+=(--oversubscribe --bind-to none)
elif $bind; then
  options+=(--map-by "slot:PE=$threads" --bind-to core)
else
  options+=(--bind-to none)
fi
# ddp's own pool runs T compute threads, each calling single-threaded OpenBLAS on fixed tiles (results do not depend
# on T); OpenBLAS and OpenMP must not start threads of their own, which would also split work by their count.
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 SWIFTDDP_THREADS="$threads"
for name in "${forward[@]}" PATH LD_LIBRARY_PATH; do
  [ -n "${!name+set}" ] && options+=(-x "$name")
done

exec "${MPIRUN:-mpirun}" "${options[@]}" "${extra[@]}" "$binary" "$@"
