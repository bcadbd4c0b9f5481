#!/usr/bin/env bash
# A cluster of N "hosts" on this machine, for multi-node tests: each host is a network namespace with its own
# address, joined to the others by a veth pair and a bridge, so ranks on different hosts talk real TCP (and
# ranks on one host use shared memory). Open MPI starts its daemons on the other hosts with an rsh agent that
# runs `ip netns exec HOST ...` instead of ssh. Needs root and iproute2 (Launch/setup.sh installs it).
#
#   Launch/test-cluster.sh up [N] [--pin]   create hosts 1..N (default 2); idempotent (re-creates them). --pin:
#       host i runs on CPU core (i-1) mod cores, as separate machines each have their own (for benchmarks)
#   Launch/test-cluster.sh down          remove every host, link, the bridge and the state directory
#   Launch/test-cluster.sh status        list the hosts and their links
#   Launch/test-cluster.sh link HOST up|down       take a host's link down (a cut cable) or back up
#   Launch/test-cluster.sh shape HOST RATE|off [bridge|host] [--keep-gso]   rate-limit a host's link with tc tbf
#       (e.g. 1gbit) on the bridge side of its veth (what reaches it; the default) or on its own eth0 (what leaves
#       it). It also caps the link's TCP segmentation offload packets at 60000 bytes so that one fits the 64 KB
#       token bucket; --keep-gso leaves the kernel's 64 KB, and tbf then cuts every such packet into MTU-size ones
#       in software (a real NIC does that in hardware): 10-13% of all CPU time in softirq at 1 Gbit/s, not 1%.
#   Launch/test-cluster.sh mpirun [--slots S] -np N [Launch/mpirun.sh options] -- DDP-ARGUMENTS...
#       Launch/mpirun.sh started on host 1 with the cluster's hostfile (S slots per host, default 1), its rsh
#       agent, and TCP restricted to the cluster's subnet.
#
# Names: namespaces ddp-host1..N, bridge ddp-br0, veths ddp-vethN (bridge side) / eth0 (inside host N),
# addresses 10.231.77.N/24 (a private test subnet; SWIFTDDP_CLUSTER_SUBNET="10.231.77" changes it).
# State (hostfile, agent) lives in ${SWIFTDDP_CLUSTER_DIR:-/tmp/swiftddp-cluster}.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
subnet="${SWIFTDDP_CLUSTER_SUBNET:-10.231.77}"
state="${SWIFTDDP_CLUSTER_DIR:-/tmp/swiftddp-cluster}"
bridge=ddp-br0

need_root() {
  [ "$(id -u)" -eq 0 ] || { echo "test-cluster.sh: needs root (network namespaces)" >&2; exit 1; }
  command -v ip >/dev/null || { echo "test-cluster.sh: needs iproute2 (ip); run Launch/setup.sh" >&2; exit 1; }
}

hosts() { ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^ddp-host[0-9]+$' | sort -V || true; }

down() {
  for ns in $(hosts); do
    # Processes left in a host (a failed run) would keep it alive: end them first.
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E '^ddp-veth[0-9]+$' || true); do
    ip link del "$link" 2>/dev/null || true
  done
  ip link del "$bridge" 2>/dev/null || true
  rm -rf "$state"
}

up() {
  local count="$1" pin="$2"
  [[ "$count" =~ ^[1-9][0-9]*$ ]] && (( count <= 200 )) || { echo "test-cluster.sh: host count must be 1-200, got '$count'" >&2; exit 2; }
  down
  mkdir -p "$state"
  ip link add "$bridge" type bridge
  ip link set "$bridge" up
  : > "$state/hosts"
  for i in $(seq "$count"); do
    ns="ddp-host$i"
    ip netns add "$ns"
    ip link add "ddp-veth$i" type veth peer name eth0 netns "$ns"
    ip link set "ddp-veth$i" master "$bridge" up
    ip -n "$ns" addr add "$subnet.$i/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    # Give up on an unanswered TCP connection after ~13 s instead of ~15 min (tcp_retries2 15): a host whose link
    # is cut then ends the job promptly, as on a cluster tuned for fast failure detection (README.md).
    ip netns exec "$ns" sysctl -qw net.ipv4.tcp_retries2=5
    echo "$subnet.$i ddp-host$i" >> "$state/hosts"
  done
  # Each host also gets its own hostname (a UTS namespace), as real nodes have: Open MPI names its per-node
  # session directory and shared-memory files after it, and same-named hosts would collide there.
  # With --pin, a host's processes also get its own core (getconf, not nproc: the caller may itself be pinned).
  local on_core=""
  [ "$pin" = --pin ] && on_core='taskset -c $(( (${host#ddp-host} - 1) % $(getconf _NPROCESSORS_ONLN) ))'
  cat > "$state/in-host" <<INHOST
#!/bin/sh
# in-host HOST PROGRAM ARGS...: run PROGRAM inside HOST's network namespace, with HOST as its hostname.
host="\$1"; shift
exec $on_core ip netns exec "\$host" unshare --uts /bin/sh -c 'hostname "\$0" && exec "\$@"' "\$host" "\$@"
INHOST
  # Open MPI's rsh launcher calls: AGENT [ssh-style options] HOST COMMAND...; run COMMAND on that host.
  cat > "$state/rsh-agent" <<AGENT
#!/usr/bin/env bash
while [[ "\${1:-}" == -* ]]; do shift; done
host="\$1"; shift
ns=\$(awk -v h="\$host" '\$1 == h || \$2 == h {print \$2}' "$state/hosts")
[ -n "\$ns" ] || { echo "rsh-agent: unknown host \$host" >&2; exit 255; }
exec "$state/in-host" "\$ns" /bin/sh -c "\$*"
AGENT
  chmod +x "$state/rsh-agent" "$state/in-host"
  hostfile 1
  echo "test cluster: $count host(s) $subnet.1-$subnet.$count (namespaces ddp-host1..$count), state in $state"
}

hostfile() {
  awk -v slots="$1" '{print $1 " slots=" slots}' "$state/hosts" > "$state/hostfile"
}

host_index() {
  local host="$1"
  host="${host#ddp-host}"; host="${host##*.}"
  [[ "$host" =~ ^[0-9]+$ ]] && ip netns list | grep -q "^ddp-host$host\b" || { echo "test-cluster.sh: no host '$1'" >&2; exit 2; }
  echo "$host"
}

command="${1:-}"
shift || true
case "$command" in
  up)
    need_root
    count=2 pin=""
    for argument in "$@"; do
      case "$argument" in --pin) pin=--pin ;; *) count="$argument" ;; esac
    done
    up "$count" "$pin" ;;
  down) need_root; down; echo "test cluster removed" ;;
  status)
    [ -f "$state/hosts" ] || { echo "no test cluster (Launch/test-cluster.sh up N)"; exit 0; }
    while read -r address ns; do
      i="${ns#ddp-host}"
      shaper=$( (tc qdisc show dev "ddp-veth$i"; tc -n "$ns" qdisc show dev eth0) 2>/dev/null | grep -o 'tbf.*rate [^ ]*' || echo unshaped)
      echo "$ns  $address  link $(cat "/sys/class/net/ddp-veth$i/operstate" 2>/dev/null || echo missing)  $shaper  $(ip -d -n "$ns" link show eth0 | grep -o 'gso_max_size [0-9]*')"
    done < "$state/hosts"
    ! grep -q taskset "$state/in-host" || echo "hosts pinned: host i on CPU core (i-1) mod $(getconf _NPROCESSORS_ONLN)" ;;
  link)
    need_root
    i=$(host_index "${1:?host}")
    case "${2:-}" in up|down) ip link set "ddp-veth$i" "$2" ;; *) echo "test-cluster.sh: link HOST up|down" >&2; exit 2 ;; esac ;;
  shape)
    need_root
    i=$(host_index "${1:?host}")
    rate="${2:?rate or off}"
    side=bridge gso=60000
    for argument in "${@:3}"; do
      case "$argument" in
        --keep-gso) gso=65536 ;;
        bridge|host) side="$argument" ;;
        *) echo "test-cluster.sh: shape HOST RATE|off [bridge|host] [--keep-gso], got '$argument'" >&2; exit 2 ;;
      esac
    done
    [ "$rate" != off ] || gso=65536
    # bridge: the bridge end of the host's veth pair, shaping what reaches the host; host: the host's own eth0,
    # shaping what leaves it. Either way, with every host shaped, each direction of a path crosses one shaper.
    tc qdisc del dev "ddp-veth$i" root 2>/dev/null || true
    tc -n "ddp-host$i" qdisc del dev eth0 root 2>/dev/null || true
    # TCP sizes its offload packets by the sending device: cap both ends of the pair (65536 is the kernel default).
    ip link set dev "ddp-veth$i" gso_max_size "$gso"
    ip -n "ddp-host$i" link set dev eth0 gso_max_size "$gso"
    if [ "$rate" != off ]; then
      case "$side" in
        bridge) tc qdisc add dev "ddp-veth$i" root tbf rate "$rate" burst 64kb latency 50ms ;;
        host) tc -n "ddp-host$i" qdisc add dev eth0 root tbf rate "$rate" burst 64kb latency 50ms ;;
      esac
    fi ;;
  mpirun)
    need_root
    [ -f "$state/hosts" ] || { echo "test-cluster.sh: no test cluster; run 'Launch/test-cluster.sh up N' first" >&2; exit 1; }
    slots=1
    if [ "${1:-}" = "--slots" ]; then slots="$2"; shift 2; fi
    hostfile "$slots"
    exec "$state/in-host" ddp-host1 "$root/Launch/mpirun.sh" --hostfile "$state/hostfile" --rsh-agent "$state/rsh-agent" \
      --network "$subnet.0/24" --no-bind "$@" ;;
  *) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; [ -z "$command" ] || [ "$command" = help ] || exit 2 ;;
esac
