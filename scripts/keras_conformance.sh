#!/usr/bin/env bash
# Keras's own tests (as the installed wheel ships them), run unchanged against
# loops.Trainer: tests/conformance/plugin.py routes model.compile ->
# loops.Trainer(model, ...) and fit/evaluate/predict/*_on_batch to the trainer;
# tests/conformance/skips.py lists, with reasons, the few that do not apply.
# One process per backend; extra arguments go to pytest.
#   bash scripts/keras_conformance.sh                 # all three backends (CI runs it)
#   BACKENDS=torch bash scripts/keras_conformance.sh -k early_stopping
#   SUITE=layers bash scripts/keras_conformance.sh    # also every Keras layer's test (each
#                                                     # trains the layer with fit: long)
#   SUITE=ci ...                                      # CI's slice: trainer, callbacks, models, regularizers
# The default set: Keras's trainer and callback tests, and the model, core and
# normalization layer, regularizer and optimizer tests (they train with fit).
set -uo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=2
KERAS_SRC=$(python -c "import importlib.util, os; print(os.path.join(os.path.dirname(importlib.util.find_spec('keras').origin), 'src'))")
paths=("$KERAS_SRC/trainers/trainer_test.py" "$KERAS_SRC/callbacks" "$KERAS_SRC/models" "$KERAS_SRC/layers/core"
       "$KERAS_SRC/layers/normalization" "$KERAS_SRC/regularizers" "$KERAS_SRC/optimizers")
if [ "${SUITE:-}" = "layers" ]; then
  # (six preprocessing test files import grain, an optional package: collected without them)
  paths=("$KERAS_SRC/trainers/trainer_test.py" "$KERAS_SRC/callbacks" "$KERAS_SRC/models" "$KERAS_SRC/layers"
         "$KERAS_SRC/regularizers" "$KERAS_SRC/optimizers" --continue-on-collection-errors)
elif [ "${SUITE:-}" = "ci" ]; then  # CI's slice (time): the trainer, callback, model and regularizer tests
  paths=("$KERAS_SRC/trainers/trainer_test.py" "$KERAS_SRC/callbacks" "$KERAS_SRC/models" "$KERAS_SRC/regularizers")
fi
status=0
for backend in ${BACKENDS:-jax tensorflow torch}; do
  echo "=== Keras conformance (keras's own tests on loops.Trainer), KERAS_BACKEND=$backend ==="
  KERAS_BACKEND=$backend python -m pytest -c tests/conformance/pytest.ini --rootdir=. -q -p no:warnings \
    "${paths[@]}" "$@" || status=1
done
exit $status
