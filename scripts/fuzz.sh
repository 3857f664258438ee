#!/usr/bin/env bash
# Long differential fuzzing (tests/test_fuzz.py) with fresh randomness: many
# more examples than CI's bounded, derandomized run. A failure prints the
# shrunk configuration: add it to REGRESSIONS in tests/test_fuzz.py.
#   EXAMPLES=200 BACKENDS="jax torch" bash scripts/fuzz.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=2 LOOPS_FUZZ_FRESH=1 LOOPS_FUZZ_EXAMPLES="${EXAMPLES:-100}"
status=0
for backend in ${BACKENDS:-jax tensorflow torch}; do
  echo "=== fuzzing on $backend: $LOOPS_FUZZ_EXAMPLES valid, $((LOOPS_FUZZ_EXAMPLES * 5 / 2)) invalid examples ==="
  KERAS_BACKEND=$backend python -m pytest -q -p no:cacheprovider tests/test_fuzz.py "$@" || status=1
done
exit $status
