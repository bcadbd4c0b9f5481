#!/usr/bin/env bash
# Everything the tests need, then every test (the multi-rank mpirun ones included).
#   Launch/test.sh [swift test arguments...]
set -euo pipefail
cd "$(dirname "$0")/.."

Launch/setup.sh

# h5py checks that our HDF5 files are what Python users read and write. Without it those tests skip and say so.
if ! python3 -c "import h5py, numpy" 2>/dev/null; then
  python3 -m pip install --quiet h5py numpy || echo "test.sh: could not install h5py; the h5py interop tests will skip"
fi

# TensorBoard's own event reader checks the event files training writes. Without it that test skips and says so.
if ! python3 -c "import tensorboard" 2>/dev/null; then
  python3 -m pip install --quiet tensorboard || echo "test.sh: could not install tensorboard; the event-file test will skip"
fi

# The tokenizers package checks that a Hugging Face tokenizer.json encodes to its ids. Without it that test skips and says so.
if ! python3 -c "import tokenizers" 2>/dev/null; then
  python3 -m pip install --quiet tokenizers || echo "test.sh: could not install tokenizers; the Hugging Face tokenizer test will skip"
fi

if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export OPENBLAS_NUM_THREADS=1

# The tests are XCTest; Swift Testing prints its own "0 tests" line last, so close with one plain summary.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
swift test "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -cE "^Test Case '.*' passed" "$log" || true)
failed=$(grep -cE "^Test Case '.*' failed" "$log" || true)
skipped=$(grep -cE "^Test Case '.*' skipped" "$log" || true)
echo "tests: $passed passed, $failed failed, $skipped skipped"
exit "$status"
