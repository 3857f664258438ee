#!/usr/bin/env bash
# Proof on a GPU (issues 18, 19): the core test files on jax and torch, then
# the benchmark (Trainer.fit vs model.fit vs a native loop, with the loss gate,
# a ResNet-style CNN at batch 256 among the workloads), then startup and
# memory (first call, peak host and device memory per arm, the realistic
# workloads' throughput), in about 12 minutes.
#
#   bash benchmarks/gpu.sh          # on a CUDA machine: results in benchmarks/results/gpu.{md,json,png}
#   bash benchmarks/gpu.sh --dry    # the same code path on CPU, tiny sizes, a smoke test selection
#
# Where keras is not installed and a folder .whl/ holds wheels (keras, namex,
# optree for Python 3.12), they are installed under /tmp/site first (no
# registry needed); where `loops.backends` does not import, the checkout is
# installed editable (`pip install --no-deps --no-build-isolation -e .`: the
# top-level backends/ imports as loops.backends only through that mapping).
# Logs and results are copied to $OUT when it is set (at most 8 files there).
# Knobs (environment): GPU_BACKENDS (jax,torch), GPU_TESTS=0 / GPU_BENCH=0 to
# skip a phase, GPU_TEST_CAP_S (240: the test phase is stopped after this),
# GPU_BENCH_BUDGET_S (100 per backend: no workload starts after it),
# GPU_STARTUP=0 skips phase 3 (reports in benchmarks/results/gpu_startup/,
# and $OUT/startup.tgz), GPU_STARTUP_CAP_S (150: each of its three
# benchmarks is stopped after this, per backend), GPU_TEST_FILES (the core files),
# GPU_WORKLOADS (resnet,tiny_mlp,mlp,cnn,gan), GPU_PRECISION (highest: TF32
# off, or default), GPU_GATE_RTOL (1e-5), GPU_XDIST (3 pytest-xdist workers
# per backend when xdist is installed; 0 for none), GPU_TEST_TF32 (0: the
# tests run with TF32 off, as their float32 tolerances assume; 1: engine defaults),
# GPU_JUNIT=1 (junit reports beside the logs; always in a dry run), GPU_STARTUP_RUNS (phase 3's
# benchmarks, ';'-separated, e.g. "memory --repeats 1"), GPU_SCALING=1 adds phase 4: ms/step against
# batch size and width to 8192 (benchmarks.scaling, GPU_SCALING_ARGS, GPU_SCALING_CAP_S 150 per
# backend; reports in benchmarks/results/gpu_scaling/, and $OUT/scaling.tgz).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DRY=0
[[ "${1:-}" == "--dry" ]] && DRY=1
BACKENDS=${GPU_BACKENDS:-jax,torch}
PY=${PYTHON:-python3}
START=$SECONDS
# keras imports tensorflow under its default backend: the checks below use the first of ours.
export KERAS_BACKEND=${BACKENDS%%,*}
LOGS=${OUT:-$(mktemp -d /tmp/gpu_sh.XXXXXX)}
mkdir -p "$LOGS"
RUNLOG=$LOGS/run.log
say() { echo "[gpu.sh $((SECONDS - START))s] $*" | tee -a "$RUNLOG"; }

# ---------------------------------------------------------------- set-up
if [[ -d .whl ]] && ! "$PY" -c "import keras" 2>/dev/null; then
  say "installing $(ls .whl/*.whl | wc -l) wheels from .whl/ under /tmp/site"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >>"$RUNLOG" 2>&1 || { say "wheel install failed"; tail -20 "$RUNLOG"; exit 2; }
  export PYTHONPATH=/tmp/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}
fi
if ! "$PY" -c "import loops.backends" >/dev/null 2>&1; then
  say "installing the checkout editable (loops.backends maps to backends/)"
  "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e "$ROOT" >>"$RUNLOG" 2>&1 \
    || { say "pip install -e failed"; tail -20 "$RUNLOG"; exit 2; }
fi
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
# Tests and their subprocesses share the GPU: no process takes 75% of it up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
CUDA=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then CUDA=1; fi
{
  echo "dry=$DRY cuda=$CUDA backends=$BACKENDS python=$($PY -c 'import sys; print(sys.version.split()[0])')"
  [[ $CUDA == 1 ]] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" - <<'EOF'
import importlib
import importlib.util
print("  tensorflow:", "installed (not used)" if importlib.util.find_spec("tensorflow") else "absent")
for name in ("keras", "jax", "jaxlib", "torch", "optax", "numpy", "optree", "ml_dtypes", "h5py", "sklearn",
             "scipy", "pytest", "xdist", "matplotlib"):
    try:
        m = importlib.import_module(name)
        print(f"  {name} {getattr(m, '__version__', '?')}")
    except Exception as e:  # noqa: BLE001 (a report, not a check)
        print(f"  {name}: not importable ({type(e).__name__}: {str(e)[:80]})")
try:
    import jax
    print("  jax devices:", jax.devices())
except Exception as e:  # noqa: BLE001
    print("  jax devices: error", e)
try:
    import torch
    print("  torch cuda:", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")
except Exception as e:  # noqa: BLE001
    print("  torch cuda: error", e)
EOF
} 2>&1 | tee -a "$RUNLOG"
if ! "$PY" -c "import keras, loops" >>"$RUNLOG" 2>&1; then
  say "keras or loops does not import (run.log says why)"; tail -5 "$RUNLOG"; exit 2
fi
if [[ $DRY == 0 && $CUDA == 0 && "${GPU_FORCE:-0}" == 0 ]]; then  # GPU_FORCE=1: the real run's path on CPU
  say "no CUDA GPU here (nvidia-smi): use --dry on CPU"; exit 2
fi

status=0
# ---------------------------------------------------------------- (1) tests
FILES=${GPU_TEST_FILES:-"tests/test_classic.py tests/test_parity.py tests/test_compiled_steps.py tests/test_features.py
       tests/test_resume.py tests/test_steps_per_execution.py"}
if [[ "${GPU_TESTS:-1}" != 0 ]]; then
  pids=()
  if [[ "${GPU_TEST_TF32:-0}" == 0 ]]; then
    # The tests compare against float64 NumPy replays at float32 tolerances:
    # TF32 matmuls/convolutions (jax's GPU default; torch's for cuDNN) are off.
    export JAX_DEFAULT_MATMUL_PRECISION=highest NVIDIA_TF32_OVERRIDE=0
  fi
  have_tf=0
  "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('tensorflow') is None)" && have_tf=1
  for backend in ${BACKENDS//,/ }; do
    args=(-q -p no:cacheprovider -rfEs --durations=15)
    # junit reports in dry runs or on request: a real run's $OUT holds at most 8 files.
    [[ $DRY == 1 || "${GPU_JUNIT:-0}" == 1 ]] && args+=(--junitxml="$LOGS/junit-$backend.xml")
    # A checkpoint continued on the next backend: torch's next is tensorflow, not on the GPU machine.
    [[ $backend == torch && $have_tf == 0 ]] &&
      args+=(--deselect "tests/test_resume.py::test_checkpoint_continues_on_another_backend")
    if [[ $DRY == 1 ]]; then
      # CPU smoke: every file collects; a few quick tests, mixed precision among them.
      args+=(-k "string_aliases or mixed_precision_trains or finished_run_is_not_trained")
    elif [[ "${GPU_XDIST:-3}" != 0 ]] && "$PY" -c "import xdist" 2>/dev/null; then
      args+=(-n "${GPU_XDIST:-3}")
    fi
    say "tests on $backend: pytest ${args[*]}"
    # shellcheck disable=SC2086
    KERAS_BACKEND=$backend timeout -s INT -k 30 "${GPU_TEST_CAP_S:-240}" \
      "$PY" -m pytest "${args[@]}" $FILES >"$LOGS/tests-$backend.log" 2>&1 &
    pids+=("$!:$backend")
  done
  for p in "${pids[@]}"; do   # the backends' suites run side by side (16 cores, one GPU)
    wait "${p%%:*}"; rc=$?
    backend=${p#*:}
    [[ $rc == 0 ]] || status=1
    say "tests on $backend: exit $rc ($([[ $rc == 124 || $rc == 130 ]] && echo 'stopped at the cap, ')$(tail -1 "$LOGS/tests-$backend.log"))"
    grep -E "^(FAILED|ERROR) " "$LOGS/tests-$backend.log" | head -25 | cut -c1-300
  done
fi

# ---------------------------------------------------------------- (2) benchmark
if [[ "${GPU_BENCH:-1}" != 0 ]]; then
  if [[ $DRY == 1 ]]; then
    RESULTS=${GPU_RESULTS_DIR:-$LOGS}
    mode=(--dry)
  else
    RESULTS=${GPU_RESULTS_DIR:-$ROOT/benchmarks/results}
    mode=(--gpu --workloads "${GPU_WORKLOADS:-resnet,tiny_mlp,mlp,cnn,gan}" --budget-s "${GPU_BENCH_BUDGET_S:-100}")
  fi
  # The benchmark has the GPU to itself; its precision is --precision's.
  unset XLA_PYTHON_CLIENT_PREALLOCATE JAX_DEFAULT_MATMUL_PRECISION NVIDIA_TF32_OVERRIDE
  say "benchmark: python -m benchmarks ${mode[*]} --backends $BACKENDS"
  "$PY" -m benchmarks "${mode[@]}" --backends "$BACKENDS" --out "$RESULTS" \
    --precision "${GPU_PRECISION:-highest}" ${GPU_GATE_RTOL:+--gate-rtol "$GPU_GATE_RTOL"} >>"$RUNLOG" 2>&1
  rc=$?
  [[ $rc == 0 ]] || status=1
  stem=$([[ $DRY == 1 ]] && echo gpu_dry || echo gpu)
  say "benchmark: exit $rc"
  cat "$RESULTS/$stem.md" 2>/dev/null || tail -40 "$RUNLOG"
  if [[ -n "${OUT:-}" && "$RESULTS" != "$OUT" ]]; then
    cp "$RESULTS/$stem".{md,json,png} "$OUT"/ 2>/dev/null || true
  fi
fi
# ---------------------------------------------------------------- (3) startup and memory
if [[ "${GPU_STARTUP:-1}" != 0 ]]; then
  RESULTS=$([[ $DRY == 1 ]] && echo "$LOGS/startup" || echo "$ROOT/benchmarks/results/gpu_startup")
  mkdir -p "$RESULTS"
  unset XLA_PYTHON_CLIENT_PREALLOCATE JAX_DEFAULT_MATMUL_PRECISION NVIDIA_TF32_OVERRIDE
  cap=${GPU_STARTUP_CAP_S:-150}
  if [[ -n "${GPU_STARTUP_RUNS:-}" ]]; then
    IFS=';' read -r -a runs <<<"$GPU_STARTUP_RUNS"
  elif [[ $DRY == 1 ]]; then
    # CI runs this per backend: the realistic-workload path alone, two arms (device memory
    # columns included; memory, first_call and the native arms have their own tests).
    runs=("workloads_real --quick --size tiny --workloads resnet --arms trainer,keras --rounds 1 --block-s 0.05 --gate-steps 2 --warmup-steps 4")
  else
    runs=("memory --repeats 1" "first_call --repeats 1"
          "workloads_real --quick --size full --rounds 2 --block-s 0.3 --gate-steps 5")
  fi
  for run in "${runs[@]}"; do
    run="${run#"${run%%[![:space:]]*}"}"  # (entries of "a; b" start with a space; "a;;b" has an empty one)
    [[ -z "$run" ]] && continue
    for backend in ${BACKENDS//,/ }; do  # one backend at a time: a cap stops one report, not all
      say "startup and memory: python -m benchmarks.$run --backends $backend (cap ${cap} s)"
      # shellcheck disable=SC2086
      timeout -s INT -k 20 "$cap" "$PY" -m benchmarks.$run --backends "$backend" --out "$RESULTS/$backend" \
        --note "GPU (benchmarks/gpu.sh)" >>"$RUNLOG" 2>&1
      rc=$?
      [[ $rc == 0 ]] || status=1
      say "benchmarks.${run%% *} on $backend: exit $rc"
    done
  done
  for md in "$RESULTS"/*/memory*.md "$RESULTS"/*/first_call*.md "$RESULTS"/*/workloads_real*.md; do
    [[ -f $md ]] && { echo "== $md"; grep -E "^\|" "$md"; }
  done
  # One file back through $OUT (its limit is 8): the reports of this phase.
  [[ -n "${OUT:-}" && $DRY == 0 ]] && tar czf "$OUT/startup.tgz" -C "$RESULTS" .
fi
# ---------------------------------------------------------------- (4) scaling (opt-in: GPU_SCALING=1)
if [[ "${GPU_SCALING:-0}" != 0 ]]; then
  RESULTS=$([[ $DRY == 1 ]] && echo "$LOGS/scaling" || echo "$ROOT/benchmarks/results/gpu_scaling")
  unset XLA_PYTHON_CLIENT_PREALLOCATE JAX_DEFAULT_MATMUL_PRECISION NVIDIA_TF32_OVERRIDE
  if [[ $DRY == 1 ]]; then
    sizes=(--batches 16,32 --widths 8 --steps 3 --block-s 0.01 --rounds 1)
  else
    # A GPU's work per step must reach past its launch floor: the sweeps go to batch 8192 and width 8192.
    read -r -a sizes <<<"${GPU_SCALING_ARGS:---batches 32,256,2048,8192 --widths 64,512,2048,8192 --block-s 0.3 --rounds 2}"
  fi
  for backend in ${BACKENDS//,/ }; do  # one report per backend: a cap stops one, not both
    say "scaling: python -m benchmarks.scaling ${sizes[*]} --backends $backend (cap ${GPU_SCALING_CAP_S:-150} s)"
    timeout -s INT -k 20 "${GPU_SCALING_CAP_S:-150}" "$PY" -m benchmarks.scaling "${sizes[@]}" \
      --backends "$backend" --out "$RESULTS/$backend" --note "GPU (benchmarks/gpu.sh)" >>"$RUNLOG" 2>&1
    rc=$?
    [[ $rc == 0 ]] || status=1
    say "benchmarks.scaling on $backend: exit $rc"
    grep -E "^\||^Verdict" "$RESULTS/$backend/scaling.md" 2>/dev/null
  done
  [[ -n "${OUT:-}" && $DRY == 0 ]] && tar czf "$OUT/scaling.tgz" -C "$RESULTS" .
fi
say "done: exit $status; logs in $LOGS"
exit $status
