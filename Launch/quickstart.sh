#!/usr/bin/env bash
# The main job, from a fresh machine: set-up if needed, a built-in dataset (reverse strings of letters),
# data-parallel training on 2 ranks under mpirun, evaluation on the valid split, and where everything went.
#   Launch/quickstart.sh [RANKS]
set -euo pipefail
cd "$(dirname "$0")/.."
ranks="${1:-2}"

[ -x .build/release/ddp ] && command -v mpirun >/dev/null || Launch/setup.sh
if [ ! -f data/reverse/train-00000.h5 ]; then
  .build/release/ddp prepare --synthetic reverse --samples 20000 --max-length 16 --seed 1 --output data/reverse
fi
rm -rf runs/quickstart
Launch/mpirun.sh -np "$ranks" train --config Configs/reverse.yaml --run-dir runs/quickstart

echo
echo "run directory: runs/quickstart (checkpoints, latest, metrics.jsonl)"
echo "inspect the final checkpoint: .build/release/ddp inspect runs/quickstart/$(cat runs/quickstart/latest)"
