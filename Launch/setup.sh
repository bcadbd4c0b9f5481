#!/usr/bin/env bash
# Installs what SwiftDDP needs on Debian/Ubuntu (only the packages that are missing: running it again
# changes nothing), then builds the release binary .build/release/ddp.
#   Launch/setup.sh                 install + build
#   SWIFTDDP_SKIP_BUILD=1 Launch/setup.sh   install only
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(libopenmpi-dev openmpi-bin libhdf5-dev libopenblas-dev pkg-config)
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

if [ "${SWIFTDDP_SKIP_BUILD:-0}" != 1 ]; then
  swift build -c release --product ddp
  echo "setup: built $(swift build -c release --show-bin-path)/ddp"
fi
