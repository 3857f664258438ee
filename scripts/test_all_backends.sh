#!/usr/bin/env bash
# Runs the whole suite once per backend, each in its own process (Keras fixes
# its backend at import), then Keras's own trainer, callback, model and
# regularizer tests routed to loops.Trainer (scripts/keras_conformance.sh,
# SUITE=ci), then the declared version
# floors in a venv of their own (scripts/test_floors.sh). Runs everything, then
# fails if anything failed. Extra arguments go to the project suite's pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=2
status=0
echo "=== mypy (types of loops/ and backends/, as installed) ==="
bash scripts/typecheck.sh || status=1
for backend in jax tensorflow torch; do
  echo "=== KERAS_BACKEND=$backend ==="
  KERAS_BACKEND=$backend python -m pytest -q -p no:cacheprovider tests "$@" || status=1
  # (CI's slice for time: the layer and optimizer tests run in scripts/keras_conformance.sh alone)
  SUITE=ci BACKENDS=$backend bash scripts/keras_conformance.sh -k "not quantize" || status=1
done
echo "=== the declared version floors (constraints-floor.txt, jax) ==="
bash scripts/test_floors.sh || status=1
exit $status
