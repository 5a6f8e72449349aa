#!/usr/bin/env bash
# The lent-GPU runbook: one PHASE per `run` call of the device tool, each ending inside its budget
# (docs/benchmarks.md, "Running on a lent GPU").
#
#   bash benchmarks/gpu_session.sh [--dry-run] PHASE
#
# PHASE
#   setup         nvidia-smi, versions, editable install (CUDA extension for this GPU), backends
#   tests         CDT_FAST_TEST_DEVICE=cuda pytest -m gpu tests (junit XML; failures do not stop it)
#   kernels       every benchmarks/bench_*.py with --out (bench_causal_conv3d last: it takes what
#                 time is left)
#   models        run.py --models base --tag base, then --models small --tag small
#   models-base   run.py --models base only, with the whole budget
#   models-small  run.py --models small only, with the whole budget
#   all           setup + tests (at most CDT_FAST_GPU_TESTS_CAP s) + kernels
# Every phase installs the package first: a machine given back between calls starts bare, and on
# a warm one the build is incremental.
#
# Output: $OUT/<phase>.tar.gz (<phase>/manifest.json, results/, logs/) and $OUT/<phase>.log (this
# console); ./out/ when OUT is unset. Ingest with benchmarks/ingest_gpu_results.py.
#
# Environment
#   CDT_FAST_GPU_SESSION_DRY=1    as --dry-run: CPU, tiny run.py settings, tests only collected,
#                                 no install; for checking this script without a GPU
#   CDT_FAST_GPU_SESSION_BUDGET   seconds the whole call may take (default 540; the tool stops a
#                                 command at 600 and everything not yet packed is lost)
#   CDT_FAST_GPU_TESTS_CAP        seconds for the tests in `all` (default 240)
#   CDT_FAST_GPU_RUN_ARGS         run.py arguments of the models phases (default: "--impls
#                                 reference,engine,reference-compiled,reference-cl --max-time 20")
#   CDT_FAST_GIT_COMMIT           the commit under test, recorded in results (the device's copy of
#                                 the tree has no .git)
#   CDT_FAST_CUDA_ARCHS           passed to setup.py (default: this GPU's compute capability)
#   PYTHON                        the interpreter (default python3)
set -euo pipefail

PHASES="setup tests kernels models models-base models-small all"
die() { echo "gpu_session.sh: $*" >&2; exit 2; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

flag_on() {  # $1: a variable's value; $2: its name, for the error
  case "${1,,}" in 1|true|yes|on) return 0 ;; 0|false|no|off|"") return 1 ;;
    *) die "$2 must be 0 or 1, got '$1'" ;; esac
}

DRY=0
if flag_on "${CDT_FAST_GPU_SESSION_DRY:-0}" CDT_FAST_GPU_SESSION_DRY; then DRY=1; fi
PHASE=""
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option '$arg' (options: --dry-run, --help)" ;;
    *) [[ -z "$PHASE" ]] || die "one PHASE at a time, got '$PHASE' and '$arg'"; PHASE=$arg ;;
  esac
done
[[ -n "$PHASE" ]] || die "missing PHASE: one of $PHASES (--help for more)"
[[ " $PHASES " == *" $PHASE "* ]] || die "unknown PHASE '$PHASE': expected one of $PHASES"

whole_seconds() {  # $1: value, $2: name, $3: minimum
  [[ "$1" =~ ^[0-9]+$ ]] && (( $1 >= $3 )) || die "$2 must be whole seconds >= $3, got '$1'"
  echo "$1"
}
BUDGET=$(whole_seconds "${CDT_FAST_GPU_SESSION_BUDGET:-540}" CDT_FAST_GPU_SESSION_BUDGET 60)
TESTS_CAP=$(whole_seconds "${CDT_FAST_GPU_TESTS_CAP:-240}" CDT_FAST_GPU_TESTS_CAP 30)
DEFAULT_RUN_ARGS="--impls reference,engine,reference-compiled,reference-cl --max-time 20"
RUN_ARGS=${CDT_FAST_GPU_RUN_ARGS:-$DEFAULT_RUN_ARGS}
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || die "PYTHON '$PY' is not an executable on PATH"
command -v timeout >/dev/null || die "GNU timeout is needed (coreutils)"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT_DIR=${OUT:-$ROOT/out}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
LOG=$OUT_DIR/$PHASE.log
# The console goes to $OUT at once, so that it comes back even if the call is killed.
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!

STARTED=$(date +%s)
T0=$SECONDS
DEADLINE=$(( T0 + BUDGET ))
RESERVE=25   # kept back for the manifest and the tarball
MIN_STEP=15  # a step with less time than this is not started
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cdt_fast-gpu-session.XXXXXX")
STAGE=$WORK/$PHASE
mkdir -p "$STAGE/results" "$STAGE/logs"
: > "$STAGE/steps.tsv"
DEVKEY=unknown-device

cd "$ROOT"
# The checkout under test is what Python imports, installed or not; unbuffered, so that a step
# stopped by its time guard still leaves what it printed in its log.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

elapsed() { printf '%4ds' $(( SECONDS - T0 )); }
record() {  # name rc seconds artifact note
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4:--}" "${5:-}" >> "$STAGE/steps.tsv"
}
left() { echo $(( DEADLINE - SECONDS - RESERVE )); }

# run_step NAME CAP TAIL ARTIFACT CMD...: CMD with its output in logs/NAME.log under a time guard
# of CAP seconds (less when less of the budget is left); the last TAIL lines are echoed. A failing
# step is recorded, never fatal: the next steps and the tarball still happen.
run_step() {
  local name=$1 cap=$2 tail_lines=$3 artifact=$4 rc=0 t0=$SECONDS limit
  shift 4
  limit=$(left)
  (( cap < limit )) && limit=$cap
  if (( limit < MIN_STEP )); then
    echo "[$(elapsed)] $name: not started, $(left)s of the budget left"
    record "$name" - 0 "$artifact" "not started: budget spent"
    return 0
  fi
  echo "[$(elapsed)] $name (limit ${limit}s): $*"
  timeout --signal=TERM --kill-after=20 "$limit" "$@" > "$STAGE/logs/$name.log" 2>&1 || rc=$?
  if (( tail_lines > 0 )) || (( rc != 0 )); then
    tail -n $(( rc != 0 && tail_lines < 30 ? 30 : tail_lines )) "$STAGE/logs/$name.log" \
      | sed 's/^/    /'
  fi
  local note=""
  (( rc == 124 || rc == 137 )) && note="stopped by its ${limit}s time guard"
  echo "[$(elapsed)] $name: exit $rc after $(( SECONDS - t0 ))s${note:+ ($note)}"
  record "$name" "$rc" $(( SECONDS - t0 )) "$artifact" "$note"
}

skip_step() {  # name note
  echo "[$(elapsed)] $1: $2"
  record "$1" - 0 - "$2"
}

# -- install ---------------------------------------------------------------------------------------

gpu_archs() {  # this GPU's compute capability as setup.py wants it ("9.0" -> "90")
  nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' .\r'
}

# The editable install of this checkout: no network, no build isolation (the image has the build
# requirements), no dependencies (torch is the image's).
PIP_ARGS="-m pip install --no-index --no-build-isolation --no-deps -e ."
pip_install() {
  # shellcheck disable=SC2086  # PIP_ARGS is a word list (exported functions cannot see arrays)
  "$PY" $PIP_ARGS
}

install_package() {
  # Forced first, so that a CUDA build that fails says why here instead of quietly installing the
  # CPU-only extension; then setup.py's own fallbacks, so that the other phases can still run.
  # Exit 3: installed, but without what the forced build was to build (logs/install.log says why).
  CDT_FAST_FORCE_BUILD=1 pip_install && return 0
  echo "gpu_session.sh: the forced build failed (logs/install.log); installed with setup.py's" \
    "fallbacks (CPU-only extension or pure Python)"
  pip_install || return
  return 3
}

install_step() {
  if (( DRY )); then
    skip_step install "dry run: would run CDT_FAST_FORCE_BUILD=1 $PY $PIP_ARGS"
    return 0
  fi
  local archs=${CDT_FAST_CUDA_ARCHS:-$(gpu_archs || true)}
  export CDT_FAST_CUDA_ARCHS=${archs:-90} MAX_JOBS=${MAX_JOBS:-$(nproc)}
  export -f install_package pip_install
  export PY PIP_ARGS
  run_step install 300 6 logs/install.log bash -c install_package
}

# -- phases ----------------------------------------------------------------------------------------

setup_phase() {
  if command -v nvidia-smi >/dev/null; then
    local q=name,compute_cap,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit
    run_step nvidia-smi 30 40 - bash -c "nvidia-smi; nvidia-smi --format=csv --query-gpu=$q"
  else
    skip_step nvidia-smi "nvidia-smi not found (no NVIDIA driver here)"
  fi
  if command -v nvcc >/dev/null || [[ -x /usr/local/cuda/bin/nvcc ]]; then
    run_step nvcc 30 2 - bash -c 'nvcc --version 2>/dev/null || /usr/local/cuda/bin/nvcc --version'
  else
    skip_step nvcc "nvcc not found: setup.py builds the CPU-only extension"
  fi
  run_step environment 90 20 logs/environment.json "$PY" -m benchmarks.gpu_session environment \
    --out "$STAGE/logs/environment.json"
  install_step
  run_step backends 60 10 logs/backends.json "$PY" -m benchmarks.gpu_session backends \
    --out "$STAGE/logs/backends.json"
}

tests_phase() {  # cap
  local junit=$STAGE/logs/tests-junit.xml
  if (( DRY )); then
    run_step tests "$1" 5 - "$PY" -m pytest -m gpu -q tests --collect-only -p no:cacheprovider
    return 0
  fi
  local per_test=()
  # pytest-timeout, where installed, stops one hung test instead of the whole phase.
  "$PY" -c "import pytest_timeout" 2>/dev/null && per_test=(--timeout 180)
  run_step tests "$1" 25 logs/tests-junit.xml env CDT_FAST_TEST_DEVICE=cuda "$PY" -m pytest \
    -m gpu tests -v -ra --durations=15 -p no:cacheprovider --junitxml "$junit" "${per_test[@]}"
}

kernels_phase() {
  # bench_causal_conv3d last: its table is the longest and it prints rows as it goes, so it may
  # take whatever the others leave, and a cut still leaves its rows in the log.
  local benches=() last=() f
  for f in benchmarks/bench_*.py; do
    if [[ $f == */bench_causal_conv3d.py ]]; then last+=("$f"); else benches+=("$f"); fi
  done
  benches+=("${last[@]}")
  local n=${#benches[@]} i=0 name op extra
  for f in "${benches[@]}"; do
    name=$(basename "$f" .py)
    op=${name#bench_}
    extra=()
    # bench_cpp_ops defaults to seconds-long toy shapes; on the GPU the CDT shapes are the point.
    [[ $name == bench_cpp_ops ]] && (( ! DRY )) && extra=(--size cdt)
    # A fair share of what is left; what a quick benchmark does not use goes to the next ones.
    run_step "$name" $(( $(left) / (n - i) )) 30 "results/$op-$DEVKEY.json" \
      "$PY" "$f" --out "$STAGE/results/$op-$DEVKEY.json" "${extra[@]}"
    i=$(( i + 1 ))
  done
}

models_phase() {  # MODEL CAP
  local model=$1 args
  if (( DRY )); then
    args=(--tiny --device cpu --frames 5 --size 32 --long-frames none --warmup 0 --repeats 1
          --threads 1 --no-peer)
  else
    read -r -a args <<< "$RUN_ARGS"
  fi
  # run.py writes the rows measured so far when its time guard's TERM arrives (exit 3).
  run_step "models-$model" "$2" 12 "results/$DEVKEY$( (( DRY )) && echo -tiny)-$model.json" \
    "$PY" benchmarks/run.py --models "$model" --tag "$model" --results-dir "$STAGE/results" \
    --no-progress "${args[@]}"
}

# -- manifest, tarball ---------------------------------------------------------------------------

finish() {
  local rc=$? size tarball=$OUT_DIR/$PHASE.tar.gz
  set +e
  echo
  "$PY" -m benchmarks.gpu_session finish "$STAGE" --phase "$PHASE" --started "$STARTED" \
    --budget "$BUDGET" --device-key "$DEVKEY" $( (( DRY )) && echo --dry-run) \
    || echo "gpu_session.sh: no manifest (above); packing the staged files as they are"
  if tar -C "$WORK" -czf "$tarball.part" "$PHASE" && mv "$tarball.part" "$tarball"; then
    size=$(stat -c %s "$tarball")
    if (( size > 15 * 1024 * 1024 )); then
      # The tool returns files of at most 16 MiB: results matter more than logs.
      echo "gpu_session.sh: $tarball is $(( size >> 20 )) MiB; packing it again without logs/"
      tar -C "$WORK" -czf "$tarball.part" --exclude "$PHASE/logs" "$PHASE" \
        && mv "$tarball.part" "$tarball" && size=$(stat -c %s "$tarball")
    fi
    echo "wrote $tarball ($(( size >> 10 )) KiB) and $LOG$( (( rc )) \
      && echo "; gpu_session.sh itself failed, exit $rc")"
  else
    rc=1
    echo "gpu_session.sh: packing $STAGE failed (above); only $LOG comes back"
  fi
  rm -rf "$WORK"
  # Close our end of the pipe and let tee finish writing the log before the call returns.
  exec >&- 2>&-
  wait "$TEE_PID" 2>/dev/null || true
  exit "$rc"
}
trap finish EXIT

echo "gpu_session.sh $PHASE$( (( DRY )) && echo ' (DRY RUN: no GPU, tiny settings)'):" \
  "budget ${BUDGET}s, output $OUT_DIR, $(date -u +%FT%TZ)"
if ! git -C "$ROOT" rev-parse HEAD >/dev/null 2>&1 && [[ -z "${CDT_FAST_GIT_COMMIT:-}" ]]; then
  echo "warning: no .git here and CDT_FAST_GIT_COMMIT is unset: results will say commit unknown"
fi
if (( DRY )); then
  # CPU only, even on a GPU machine; and no Triton interpreter (inherited from a pytest run, it
  # would make run.py time engine-triton interpreted: minutes for a tiny model).
  export CUDA_VISIBLE_DEVICES=""
  unset TRITON_INTERPRET
fi
DEVKEY=$("$PY" -m benchmarks.gpu_session device-key 2> "$STAGE/logs/device-key.log") \
  || { DEVKEY=unknown-device; echo "warning: no device key (logs/device-key.log)"; }

case "$PHASE" in
  setup) setup_phase ;;
  tests) install_step; tests_phase "$(left)" ;;
  kernels) install_step; kernels_phase ;;
  models)
    install_step
    # CDT-base is about 4x CDT-small's work: a bit over half of what is left, the rest to small.
    models_phase base $(( $(left) * 55 / 100 ))
    models_phase small "$(left)" ;;
  models-base) install_step; models_phase base "$(left)" ;;
  models-small) install_step; models_phase small "$(left)" ;;
  all) setup_phase; tests_phase "$TESTS_CAP"; kernels_phase ;;
esac
