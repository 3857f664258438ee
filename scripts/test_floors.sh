#!/usr/bin/env bash
# The declared version floors, tested: a virtual environment of their own
# (constraints-floor.txt: keras 3.10, jax 0.4.30, optax 0.2.0, tensorflow
# 2.16.1, numpy 1.26) and a representative slice of the suite on jax and on
# tensorflow. torch is not installed there: its tests skip. CI runs this after
# the three backends (~4 min).
set -uo pipefail
cd "$(dirname "$0")/.."
export KERAS_BACKEND=jax  # (keras 3.10 imported without it looks for tensorflow)
venv="${FLOOR_VENV:-/tmp/loops-floor-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check -c constraints-floor.txt \
  keras jax jaxlib optax tensorflow-cpu numpy h5py ml_dtypes scikit-learn pytest pytest-xdist || exit 1
"$venv/bin/pip" install -q --disable-pip-version-check --no-deps --no-build-isolation -e . 2>/dev/null \
  || "$venv/bin/pip" install -q --disable-pip-version-check --no-deps -e . || exit 1
status=0
"$venv/bin/python" -c "import keras, jax, tensorflow as tf; print(f'floors: keras {keras.__version__}, jax {jax.__version__}, tensorflow {tf.__version__}')"
KERAS_BACKEND=jax "$venv/bin/python" -m pytest -q -p no:cacheprovider \
  tests/test_classic.py tests/test_custom_step.py tests/test_api.py tests/test_keras_contract.py \
  tests/test_resume.py tests/test_keras_callbacks.py tests/test_steps_per_execution.py tests/test_features.py \
  tests/test_state.py tests/test_keras_private.py tests/test_callbacks.py tests/test_data.py tests/test_debug.py \
  tests/test_compiled_steps.py tests/test_errors.py tests/test_layout.py tests/test_checkpoint_trouble.py "$@" || status=1
KERAS_BACKEND=tensorflow "$venv/bin/python" -m pytest -q -p no:cacheprovider \
  tests/test_classic.py tests/test_custom_step.py tests/test_keras_contract.py tests/test_steps_per_execution.py \
  tests/test_errors.py tests/test_checkpoint_trouble.py "$@" || status=1
exit $status
