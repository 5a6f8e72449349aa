#!/usr/bin/env bash
# One-shot GPU check: install, preflight, a per-op smoke test, warm-up, CUDA tests and the model
# benchmark in one call of at most 9 minutes, on a bare H100/H200 (torch + Triton preinstalled,
# no internet).
#
#   bash tools/gpu_check.sh [--dry-run] [--cpu] [--budget S] [--phases a,b] [--phase-budget P=S]
#                           [--install editable|path] [--with-extension]
#
# Phases, in order, each under its own time limit (the smaller of its budget and what is left of
# the total), so that a slow phase cannot starve the rest. Each runs in its own process: a
# sticky CUDA error ends one phase, never the next.
#   install            pip install --no-deps --no-build-isolation --no-index -e . (extension not
#                      built unless --with-extension); if pip cannot, the checkout goes on
#                      PYTHONPATH and the log and summary say so
#   preflight          stops the check, in one line, if numpy, triton, pytest, pytest_timeout,
#                      this checkout's cdt_fast or any cdt_fast.kernels module does not import,
#                      torch sees no GPU, or TRITON_INTERPRET is set
#   env                versions (python, torch, CUDA, cuDNN, Triton, device), backends, results key
#   smoke              tools/gpu_smoke.py: every Triton op of a CDT-small and a CDT-base encode and
#                      decode (17x256x256), bf16 then fp32, against the torch op, one JSON record
#                      per op
#   warmup             python -m cdt_fast warmup: both presets, every benchmarked size, bf16
#   tests-kernels      pytest -m gpu on the kernel test modules, bf16 cases first
#   tests-model        pytest -m gpu on the other modules with GPU tests (engine, CUDA graphs,
#                      generation), CDT-small first
#   bench-reference    benchmarks/run.py, eager reference and channels-last, small then base,
#                      encode + decode, 17x256x256 bf16
#   bench-engine       the same for the engine (every available backend), in its own process
#   bench720-reference, bench720-engine   the same at 17x720x720
#   compiled           torch.compile of the reference at 17x256x256, with all the time that is left
#                      (at least its budget when the phases before kept to theirs)
#
# Options
#   --dry-run          list the phases, budgets and commands; run nothing
#   --cpu              CPU mode (also CDT_FAST_GPU_CHECK_CPU=1): tiny sizes on this machine, for
#                      checking the script end to end without a GPU (installs nothing: path)
#   --budget S         total seconds (default 540: inside a 600 s limit on one command)
#   --phases a,b       run only these phases after the setup ones (install, preflight, env)
#   --phase-budget P=S override one phase's budget (repeatable)
#   --install MODE     editable (pip, the GPU default) or path (the checkout on PYTHONPATH, the
#                      CPU default: pip would write into this machine's environment)
#   --with-extension   build the C++/CUDA extension in the install (minutes; its failure stops
#                      the check)
#
# Output, written as it goes ($OUT, else ./gpu_check_out), at most 6 files: gpu_check.log (this
# console), summary.json (each phase's status, seconds, limit and what it produced), smoke.json,
# tests-junit.xml (both test phases), bench-256.json (reference, engine and compiled rows),
# bench-720.json. Bring them into the repository with: python tools/gpu_check.py ingest <folder>.
# Extra wheels (e.g. av) placed in .whl/ (git-ignored) are installed to a temporary folder first.
set -uo pipefail

die() { echo "gpu_check.sh: $*" >&2; exit 2; }
usage() { sed -n '2,/^set -uo/{/^set -uo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

PHASES=(install preflight env smoke warmup tests-kernels tests-model bench-reference bench-engine
  bench720-reference bench720-engine compiled)
SETUP=",install,preflight,env,"  # run whatever --phases says: a rerun needs them
LAST=compiled  # gets what the others leave (its budget is what the plan counts on)
# preflight carries the machine's first (cold) import of torch, Triton and CUDA, and its timeout
# stops the whole check; env writes the results key that ingest needs. Their budgets are ceilings:
# time they do not use goes to the last phase.
declare -A BUDGET_OF=([install]=20 [preflight]=40 [env]=25 [smoke]=60 [warmup]=75
  [tests-kernels]=50 [tests-model]=40 [bench-reference]=45 [bench-engine]=45
  [bench720-reference]=35 [bench720-engine]=35 [compiled]=15)
DRY=0
CPU=0
TOTAL=540
ONLY=""
INSTALL=""
WITH_EXTENSION=0
OVERRIDES=()
case "${CDT_FAST_GPU_CHECK_CPU:-0}" in 1|true|yes) CPU=1 ;; 0|false|no|"") ;;
  *) die "CDT_FAST_GPU_CHECK_CPU must be 0 or 1, got '$CDT_FAST_GPU_CHECK_CPU'" ;; esac
while (( $# )); do
  case "$1" in
    --dry-run) DRY=1 ;;
    --cpu) CPU=1 ;;
    --budget) [[ "${2:-}" =~ ^[0-9]+$ ]] || die "--budget needs whole seconds, got '${2:-}'"
      TOTAL=$2; shift ;;
    --phases) [[ -n "${2:-}" ]] || die "--phases needs a comma list"; ONLY=",$2,"; shift ;;
    --phase-budget)
      [[ "${2:-}" =~ ^([a-z0-9-]+)=([0-9]+)$ ]] || die "--phase-budget needs P=S, got '${2:-}'"
      [[ -n "${BUDGET_OF[${BASH_REMATCH[1]}]:-}" ]] \
        || die "--phase-budget: unknown phase '${BASH_REMATCH[1]}' (${PHASES[*]})"
      OVERRIDES+=("${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"); shift ;;
    --install) [[ "${2:-}" == editable || "${2:-}" == path ]] \
        || die "--install needs editable or path, got '${2:-}'"
      INSTALL=$2; shift ;;
    --with-extension) WITH_EXTENSION=1 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1' (--help lists the options)" ;;
  esac
  shift
done
if [[ -n "$ONLY" ]]; then
  for p in ${ONLY//,/ }; do
    [[ -n "${BUDGET_OF[$p]:-}" ]] || die "--phases: unknown phase '$p' (${PHASES[*]})"
  done
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
RESERVE=15     # kept back at the end for the summary
KILL_AFTER=30  # after a phase's SIGTERM: time for the call in flight to end and results to land
MIN_PHASE=10   # a phase is not started with less than this left of the total
KERNEL_TESTS=(tests/test_causal_conv3d.py tests/test_channel_norm.py tests/test_linear_attention.py
  tests/test_time_resample.py tests/test_temporal_attention.py tests/test_causal_conv3d_history.py
  tests/test_denoise.py tests/test_cpp_extension.py)
# the other modules with GPU tests (engine, CUDA graphs, generation): named, so that pytest does not
# import every test module of the suite to find them
mapfile -t MODEL_TESTS < <(cd "$ROOT" && grep -l "pytest.mark.gpu" tests/test_*.py \
  | grep -v -x -F "${KERNEL_TESTS[@]/#/-e}")
NPROC=$(nproc 2>/dev/null || echo 1)
JOBS=$(( NPROC < 16 ? NPROC : 16 ))

# -- what each phase runs --------------------------------------------------------------------------
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
# $OUT and $SCRATCH stay literal in the phase commands (as --dry-run shows them) until they run
RUN_PY=(benchmarks/run.py --no-progress --no-plot --no-peer --long-frames none --ops encode,decode
  --results-dir '$SCRATCH/results')
# -v prints each test's id before it runs: a crash that loses the junit XML still names its test
PYTEST=(-m pytest -p tests.gpu_order -m gpu -v -rfE -p no:cacheprovider
  --continue-on-collection-errors)
if (( CPU )); then
  MODE=cpu
  INSTALL=${INSTALL:-path}
  SMOKE=(env TRITON_INTERPRET=1 "$PY" tools/gpu_smoke.py --device cpu --tiny --presets small
    --dtypes fp32 --size 16x16 --frames 1 --ops time_downsample,time_upsample,ddim_update)
  WARMUP=(--model small --size 32x32,48x48 --frames 5 --dtype fp32 --arch sm_90a --count-only)
  SIZE=(--tiny --device cpu --frames 5 --size 32 --dtype fp32 --warmup 0 --repeats 1 --threads 1)
  BIG=(--tiny --device cpu --frames 5 --size 48 --dtype fp32 --warmup 0 --repeats 1 --threads 1)
  MODELS=small
  # tiny sizes: each phase takes seconds to a minute on 2 busy cores
  declare -A BUDGET_OF=([install]=20 [preflight]=30 [env]=30 [smoke]=90 [warmup]=60
    [tests-kernels]=60 [tests-model]=60 [bench-reference]=40 [bench-engine]=60
    [bench720-reference]=30 [bench720-engine]=30 [compiled]=20)
  JOBS=2
else
  MODE=gpu
  INSTALL=${INSTALL:-editable}
  SMOKE=("$PY" tools/gpu_smoke.py --presets small,base --dtypes bf16,fp32 --size 256x256
    --frames 17 --jobs "$JOBS" --compile-timeout 20)
  WARMUP=(--model small,base --size 256x256,720x720 --frames 17 --dtype bf16 --jobs "$JOBS")
  SIZE=(--frames 17 --size 256 --dtype bf16 --max-time 5)
  BIG=(--frames 17 --size 720 --dtype bf16 --max-time 5)
  MODELS=small,base
fi
(( WITH_EXTENSION )) && [[ $INSTALL != editable ]] && die "--with-extension needs --install editable"
(( WITH_EXTENSION )) && BUDGET_OF[install]=300
for (( i = 0; i < ${#OVERRIDES[@]}; i += 2 )); do
  BUDGET_OF[${OVERRIDES[i]}]=${OVERRIDES[i + 1]}
done

time_budget() {  # run.py's own budget inside a phase limit of $1 s: it ends its round and writes
  local margin=$(( $1 / 6 ))
  (( margin < 8 )) && margin=8
  echo $(( $1 - margin > 1 ? $1 - margin : 1 ))
}

phase_cmd() {  # the command of phase $1 under a limit of $2 s (word-split: no quoted arguments)
  local bench=("$PY" "${RUN_PY[@]}" --models "$MODELS" --time-budget "$(time_budget "$2")")
  case "$1" in
    install)
      if [[ $INSTALL == path ]]; then echo "true"; return; fi
      local ext="CDT_FAST_SKIP_CPP_BUILD=1"
      (( WITH_EXTENSION )) && ext="CDT_FAST_FORCE_BUILD=1 MAX_JOBS=$JOBS"
      echo "env $ext $PY -m pip install --no-deps --no-build-isolation --no-index" \
        "--no-cache-dir -q -e ." ;;
    preflight) echo "$PY tools/gpu_check.py preflight \$OUT/summary.json --mode $MODE" ;;
    env) echo "$PY tools/gpu_check.py env \$OUT/summary.json --mode $MODE" ;;
    smoke) echo "${SMOKE[*]} --out \$OUT/smoke.json" ;;
    warmup) echo "$PY -m cdt_fast warmup ${WARMUP[*]} --json" ;;
    tests-kernels) echo "$PY ${PYTEST[*]}$(per_test_arg "$2") ${KERNEL_TESTS[*]}" \
      "--junitxml \$SCRATCH/tests-kernels.xml" ;;
    tests-model) echo "$PY ${PYTEST[*]}$(per_test_arg "$2") ${MODEL_TESTS[*]}" \
      "--junitxml \$SCRATCH/tests-model.xml" ;;
    bench-reference) echo "${bench[*]} --impls reference,reference-cl ${SIZE[*]}" \
      "--out \$SCRATCH/bench-reference.json" ;;
    bench-engine) echo "${bench[*]} --impls engine ${SIZE[*]} --out \$SCRATCH/bench-engine.json" ;;
    bench720-reference) echo "${bench[*]} --impls reference,reference-cl ${BIG[*]}" \
      "--out \$SCRATCH/bench720-reference.json" ;;
    bench720-engine) echo "${bench[*]} --impls engine ${BIG[*]}" \
      "--out \$SCRATCH/bench720-engine.json" ;;
    compiled) echo "${bench[*]} --impls reference-compiled --compile-mode default ${SIZE[*]}" \
      "--out \$SCRATCH/compiled.json" ;;
  esac
}

phase_artifact() {  # what record reads after phase $1: flag file [into]
  case "$1" in
    smoke) echo "--smoke \$OUT/smoke.json" ;;
    warmup) echo "--json \$SCRATCH/warmup.stdout" ;;
    tests-*) echo "--junit \$SCRATCH/$1.xml --into \$OUT/tests-junit.xml" ;;
    bench-*|compiled) echo "--bench \$SCRATCH/$1.json --into \$OUT/bench-256.json" ;;
    bench720-*) echo "--bench \$SCRATCH/$1.json --into \$OUT/bench-720.json" ;;
  esac
}

selected() { [[ -z "$ONLY" || "$ONLY" == *",$1,"* || "$SETUP" == *",$1,"* ]]; }
# one hung test must not take the whole phase: pytest-timeout (required on a GPU, see preflight)
# stops a test after half its phase's limit, so the rest of the phase still runs
PER_TEST=1
if (( CPU )) && ! "$PY" -c "import pytest_timeout" 2>/dev/null; then
  PER_TEST=0  # not installed on this machine; a GPU run's preflight requires it
fi
per_test_arg() {  # pytest's per-test limit inside a phase limit of $1 s (at least MIN_PHASE)
  (( PER_TEST )) && echo " --timeout $(( $1 / 2 ))"
}

if (( DRY )); then
  echo "gpu_check.sh ($MODE mode): total budget ${TOTAL}s: ${RESERVE}s kept for the summary," \
    "${KILL_AFTER}s for a stopped phase to end; install: $INSTALL"
  sum=0
  for p in "${PHASES[@]}"; do
    selected "$p" || continue
    more=" "
    [[ $p == "$LAST" ]] && more="+"
    printf '%-18s %4ss%s %s\n' "$p" "${BUDGET_OF[$p]}" "$more" "$(phase_cmd "$p" "${BUDGET_OF[$p]}")"
    sum=$(( sum + BUDGET_OF[$p] ))
  done
  fits="fits"
  (( sum + RESERVE + KILL_AFTER > TOTAL )) && fits="DOES NOT FIT: later phases get less"
  echo "phase budgets: ${sum}s + ${RESERVE}s + ${KILL_AFTER}s =" \
    "$(( sum + RESERVE + KILL_AFTER ))s of ${TOTAL}s ($fits)"
  rm -rf "$SCRATCH"
  exit 0
fi

command -v timeout >/dev/null || die "GNU timeout is needed (coreutils)"
command -v "$PY" >/dev/null || die "PYTHON '$PY' is not on PATH"
OUT_DIR=${OUT:-$ROOT/gpu_check_out}
mkdir -p "$OUT_DIR" || die "cannot create $OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
export OUT=$OUT_DIR
SUMMARY=$OUT_DIR/summary.json
LOG=$OUT_DIR/gpu_check.log
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!
T0=$SECONDS
DEADLINE=$(( T0 + TOTAL ))

cd "$ROOT"
export PYTHONUNBUFFERED=1
# Triton's cache for this run only: the warm-up fills it, every later phase reads it
export TRITON_CACHE_DIR=$SCRATCH/triton-cache
if (( CPU )); then
  export CUDA_VISIBLE_DEVICES=""
  unset TRITON_INTERPRET  # interpreted Triton would make the engine rows take minutes
else
  export CDT_FAST_TEST_DEVICE=cuda
fi
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SCRATCH/site" .whl/*.whl \
    && export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$SCRATCH/site" \
    || echo "warning: installing .whl/ failed"
fi

elapsed() { printf '[%4ds]' $(( SECONDS - T0 )); }
STOP=""  # set when a setup phase fails: the phases after it are recorded as not run

record() {  # name rc seconds limit note [artifact args...]
  local name=$1 rc=$2 seconds=$3 limit=$4 note=$5
  shift 5
  "$PY" tools/gpu_check.py record "$SUMMARY" --phase "$name" --rc "$rc" --seconds "$seconds" \
    --limit "$limit" --note "$note" "$@" || echo "warning: could not record $name in $SUMMARY"
}

run_phase() {  # name; sets PHASE_RC
  local name=$1 limit left t0=$SECONDS cmd note="" sig=TERM
  PHASE_RC=0
  if [[ -n "$STOP" ]]; then
    echo "$(elapsed) $name: not started ($STOP)"
    record "$name" - 0 0 "not started: $STOP"
    PHASE_RC=-1
    return 0
  fi
  left=$(( DEADLINE - SECONDS - RESERVE - KILL_AFTER ))
  limit=${BUDGET_OF[$name]}
  if (( left < MIN_PHASE )); then
    echo "$(elapsed) $name: not started, ${left}s of the total left"
    record "$name" - 0 0 "not started: total budget spent"
    PHASE_RC=-1
    return 0
  fi
  # the last phase takes all that is left; the others at most their budget
  (( left < limit )) || [[ $name == "$LAST" ]] && limit=$left
  cmd=$(phase_cmd "$name" "$limit")
  cmd=${cmd//\$OUT/$OUT_DIR}
  cmd=${cmd//\$SCRATCH/$SCRATCH}
  echo "$(elapsed) == $name (limit ${limit}s): $cmd"
  local capture=$SCRATCH/$name.stdout
  # pytest writes its junit XML on SIGINT (not on TERM); run.py and gpu_smoke.py write what they
  # have on TERM
  [[ $name == tests-* ]] && sig=INT
  # word splitting of $cmd is intended: the phase commands hold no quoted arguments
  # shellcheck disable=SC2086
  timeout --signal=$sig --kill-after=$KILL_AFTER "$limit" $cmd > >(tee "$capture") 2>&1 \
    || PHASE_RC=$?
  sleep 0.2  # let tee flush the capture
  (( PHASE_RC == 124 || PHASE_RC == 137 )) && note="stopped by its ${limit}s limit"
  [[ $name == warmup && $PHASE_RC != 0 ]] && grep -q "invalid choice: 'warmup'" "$capture" \
    && note="the warmup command is missing from this tree"
  if [[ $name == install && $PHASE_RC != 0 ]]; then
    if (( WITH_EXTENSION )); then
      STOP="the install with the extension failed (exit $PHASE_RC)"
      note=$STOP
    else
      note="pip install -e failed (exit $PHASE_RC): the checkout is on PYTHONPATH instead"
      export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
      PHASE_RC=0
    fi
  elif [[ $name == install && $INSTALL == path ]]; then
    note="the checkout is on PYTHONPATH (--install path): nothing installed"
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  elif [[ $name == install ]]; then
    note="pip install -e (editable)$( (( WITH_EXTENSION )) && echo ", with the extension")"
  fi
  if [[ $name == preflight && $PHASE_RC != 0 ]]; then
    STOP="preflight failed: $(grep -m1 '^preflight failed' "$capture" || echo "exit $PHASE_RC")"
    note=$STOP
  fi
  echo "$(elapsed) $name: exit $PHASE_RC after $(( SECONDS - t0 ))s${note:+ ($note)}"
  local artifact
  artifact=$(phase_artifact "$name")
  artifact=${artifact//\$OUT/$OUT_DIR}
  artifact=${artifact//\$SCRATCH/$SCRATCH}
  # shellcheck disable=SC2086
  record "$name" "$PHASE_RC" $(( SECONDS - t0 )) "$limit" "$note" $artifact
}

finish() {
  echo
  "$PY" tools/gpu_check.py show "$SUMMARY" 2>/dev/null || echo "no summary written"
  echo "gpu_check.sh: done in $(( SECONDS - T0 ))s; files in $OUT_DIR"
  rm -rf "$SCRATCH"
  exec >&- 2>&-
  wait "$TEE_PID" 2>/dev/null || true
}
trap finish EXIT

echo "gpu_check.sh ($MODE mode): total ${TOTAL}s, output $OUT_DIR, $(date -u +%FT%TZ)"
rm -f "$SUMMARY" "$OUT_DIR/smoke.json" "$OUT_DIR/tests-junit.xml" "$OUT_DIR"/bench-*.json
for p in "${PHASES[@]}"; do
  selected "$p" || continue
  run_phase "$p"
done
[[ -n "$STOP" ]] && exit 1
exit 0
