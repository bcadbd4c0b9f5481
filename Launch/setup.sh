#!/usr/bin/env bash
# Installs what SwiftDDP needs on Debian/Ubuntu (only the packages that are missing: running it again
# changes nothing), then builds the release binary .build/release/ddp.
#   Launch/setup.sh                 install + build
#   SWIFTDDP_SKIP_BUILD=1 Launch/setup.sh   install only
#   SWIFTDDP_TARGET_CPU=znver4 Launch/setup.sh  build for another CPU than this one ("none": baseline x86-64)
set -euo pipefail
cd "$(dirname "$0")/.."

# iproute2 (ip, tc) builds the multi-host test cluster of network namespaces (Launch/test-cluster.sh).
packages=(libopenmpi-dev openmpi-bin libhdf5-dev libopenblas-dev pkg-config iproute2)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y "${missing[@]}"
fi

command -v swift >/dev/null || { echo "setup: swift is not on PATH (Swift 6.1 or later is needed)" >&2; exit 1; }

# The kernels' SIMD code is only fast when the compiler may use this CPU's vector instructions (at baseline
# x86-64 some SIMD operations are scalarised and ~100x slower), as HPC codes build with -march=native.
cpu="${SWIFTDDP_TARGET_CPU:-native}"
cpu_flags=()
[ "$cpu" = "none" ] || cpu_flags=(-Xswiftc -target-cpu -Xswiftc "$cpu")
# The attention kernels' GEMMs fuse their multiply-adds only when the target CPU has FMA instructions (SWIFTDDP_FMA);
# without them a fused multiply-add is a library call per lane. x86-64: asked of the Swift toolchain's clang (its
# output is kept whole before it is searched: grep -q quitting early would fail the pipe under pipefail); 64-bit Arm
# always has them.
march="$cpu" fma=""; [ "$cpu" = "none" ] && march=x86-64
macros="$(clang -march="$march" -dM -E -x c /dev/null 2>/dev/null || true)"
if [ "$(uname -m)" = aarch64 ] || [[ "$macros" == *__FMA__* ]]; then
  cpu_flags+=(-Xswiftc -DSWIFTDDP_FMA) fma=", FMA"
fi

if [ "${SWIFTDDP_SKIP_BUILD:-0}" != 1 ]; then
  swift build -c release --product ddp "${cpu_flags[@]}"
  echo "setup: built $(swift build -c release --show-bin-path)/ddp (target CPU: $cpu$fma)"
fi
