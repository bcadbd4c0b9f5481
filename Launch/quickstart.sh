#!/usr/bin/env bash
# The main job, from a fresh machine: set-up if needed, a built-in dataset (reverse strings of letters),
# data-parallel training on 2 ranks under mpirun, evaluation of the final checkpoint on the valid split, a few
# translations with it, and where everything went.
#   Launch/quickstart.sh [RANKS]
set -euo pipefail
cd "$(dirname "$0")/.."
ranks="${1:-2}"

[ -x .build/release/ddp ] && command -v mpirun >/dev/null || Launch/setup.sh
if [ ! -f data/reverse/train-00000.h5 ]; then
  .build/release/ddp prepare --synthetic reverse --samples 20000 --max-length 16 --seed 1 --output data/reverse
fi
# --overwrite: a second quickstart replaces the first one's checkpoints and metrics (and nothing else).
Launch/mpirun.sh -np "$ranks" train --config Configs/reverse.yaml --run-dir runs/quickstart --overwrite


echo
echo "evaluating the final checkpoint on the whole valid split (ddp eval, $ranks ranks):"
Launch/mpirun.sh -np "$ranks" eval --checkpoint runs/quickstart --data data/reverse
echo
echo "translating with it (ddp generate, beam search):"
printf 'swiftddp\nhello\nabcdefghijklmnop\n' | .build/release/ddp generate --checkpoint runs/quickstart --decode beam --beam-size 4 \
  | paste <(printf 'swiftddp\nhello\nabcdefghijklmnop\n') - | sed 's/\t/  ->  /'

echo
echo "run directory: runs/quickstart (checkpoints, latest, metrics.jsonl)"
echo "inspect the final checkpoint: .build/release/ddp inspect runs/quickstart"
