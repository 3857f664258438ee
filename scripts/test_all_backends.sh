#!/usr/bin/env bash
# Runs the whole suite once per backend, each in its own process (Keras fixes
# its backend at import). Runs all three, then fails if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=2
status=0
echo "=== mypy (types of loops/ and backends/) ==="
python -m mypy || status=1
for backend in jax tensorflow torch; do
  echo "=== KERAS_BACKEND=$backend ==="
  KERAS_BACKEND=$backend python -m pytest -q -p no:cacheprovider tests "$@" || status=1
done
exit $status
