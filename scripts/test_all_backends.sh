#!/usr/bin/env bash
# Runs the whole suite once per backend, each in its own process (Keras fixes
# its backend at import), then Keras's own trainer, callback, model and
# regularizer tests routed to loops.Trainer (scripts/keras_conformance.sh,
# SUITE=ci) per backend, then the declared version floors in a venv of their
# own (scripts/test_floors.sh). Runs everything, then fails if anything
# failed. Extra arguments go to the project suite's pytest.
#
# Workers: each pytest run spreads its tests over TEST_WORKERS processes
# (pytest-xdist, --dist worksteal; default: the machine's cores, at most 4;
# 1 runs them in this process), each with one intra-op thread
# (OMP_NUM_THREADS=1, unless set): the suites spend much of their time in
# single-threaded Python, tracing and XLA's compiler, so two workers on CI's
# 2 cores cut the jax suite from 28 to 16 min without oversubscribing torch.
#
# Time: the three backends' suites run first, and each later part
# (conformance slices, floors) starts only while the script has run less
# than EXTRAS_BEFORE_S seconds (default 3600); a part skipped for time is
# named with the command that runs it alone. FULL=1 runs every part whatever
# the time.
set -uo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=2
status=0
budget="${EXTRAS_BEFORE_S:-3600}"
if ! [[ "$budget" =~ ^[0-9]+$ ]]; then
  echo "EXTRAS_BEFORE_S must be whole seconds (e.g. 3600), got '$budget'; FULL=1 runs every part regardless." >&2
  exit 2
fi
# (the cores this process may use where the OS says so, as nproc; else all of them: macOS)
workers="${TEST_WORKERS:-$(python -c 'import os; n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(); print(min(n or 1, 4))')}"
if ! [[ "$workers" =~ ^[1-9][0-9]*$ ]]; then
  echo "TEST_WORKERS must be a whole number of processes (1 runs the tests in one), got '$workers'." >&2
  exit 2
fi
parallel=()
if [ "$workers" -gt 1 ]; then
  if python -c "import xdist" 2>/dev/null; then
    parallel=(-n "$workers" --dist worksteal)
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # (one intra-op thread per worker: no oversubscription)
  else
    echo "(pytest-xdist is not installed: the tests run in one process; the .[test] extra installs it)"
  fi
fi
skipped=()
extra() {  # extra NAME COMMAND...: runs a later part unless the time is spent
  local name="$1"; shift
  if [ -z "${FULL:-}" ] && [ "$SECONDS" -ge "$budget" ]; then
    echo "=== SKIPPED for time ($SECONDS s elapsed, EXTRAS_BEFORE_S=$budget): $name; run it alone: $(printf '%q ' "$@")==="
    skipped+=("$name")
    return 0
  fi
  echo "=== $name ==="
  "$@" || status=1
}
echo "=== mypy (types of loops/ and backends/, as installed) ==="
bash scripts/typecheck.sh || status=1
for backend in jax tensorflow torch; do
  echo "=== KERAS_BACKEND=$backend ($SECONDS s elapsed) ==="
  KERAS_BACKEND=$backend python -m pytest -q -p no:cacheprovider "${parallel[@]}" tests "$@" || status=1
done
# (CI's conformance slice for time: the layer and optimizer tests run in scripts/keras_conformance.sh alone)
for backend in jax tensorflow torch; do
  extra "Keras conformance slice, $backend" env SUITE=ci BACKENDS=$backend bash scripts/keras_conformance.sh -k "not quantize" "${parallel[@]}"
done
extra "the declared version floors (constraints-floor.txt, jax)" bash scripts/test_floors.sh "${parallel[@]}"
echo "=== done in $SECONDS s; skipped for time: ${skipped[*]:-nothing} ==="
exit $status
