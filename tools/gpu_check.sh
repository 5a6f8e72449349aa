#!/usr/bin/env bash
# One-shot GPU check: versions, warm-up, CUDA parity tests and the model benchmark in one call of
# at most 9 minutes, on a bare H100/H200 (torch + Triton preinstalled, no internet).
#
#   bash tools/gpu_check.sh [--dry-run] [--cpu] [--budget S] [--phases a,b] [--phase-budget P=S]
#
# Phases, in order, each under its own time limit (the smaller of its budget and what is left of
# the total), so that a slow phase cannot starve the rest:
#   env       versions (python, torch, CUDA, cuDNN, Triton, device) and cdt_fast.backends()
#   warmup    python -m cdt_fast warmup --model small --size 256x256 --frames 17 --dtype bf16 --json
#   tests     pytest -m gpu tests, --timeout per test (pytest-timeout), junit XML
#   bench     benchmarks/run.py: CDT-base and CDT-small, encode + decode, 17x256x256 bf16;
#             reference eager NCDHW, reference channels_last_3d, engine
#   compiled  the same with torch.compile of the reference (small first; partial rows are kept)
#   bench720  the eager rows at 17x720x720, with whatever time is left
#
# Options
#   --dry-run          list the phases, budgets and commands; run nothing
#   --cpu              CPU mode (also CDT_FAST_GPU_CHECK_CPU=1): tiny sizes on this machine, for
#                      checking the script end to end without a GPU
#   --budget S         total seconds (default 540); the tool stops a command at 600
#   --phases a,b       run only these phases (e.g. a rerun of the ones that were cut)
#   --phase-budget P=S override one phase's budget (repeatable)
#
# Output, written as it goes ($OUT, else ./gpu_check_out): gpu_check.log (this console),
# summary.json (environment, results key, each phase's status/seconds/limit and what it
# produced), tests-junit.xml, bench-256.json, bench-compiled.json, bench-720.json.
# Bring them into the repository with: python tools/gpu_check.py ingest <folder>.
# Extra wheels (e.g. av) placed in .whl/ (git-ignored) are installed to a temporary folder first.
set -uo pipefail

die() { echo "gpu_check.sh: $*" >&2; exit 2; }
usage() { sed -n '2,/^set -uo/{/^set -uo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

PHASES=(env warmup tests bench compiled bench720)
declare -A BUDGET_OF=([env]=45 [warmup]=90 [tests]=120 [bench]=120 [compiled]=90 [bench720]=120)
DRY=0
CPU=0
TOTAL=540
ONLY=""
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
      [[ "${2:-}" =~ ^([a-z0-9]+)=([0-9]+)$ ]] || die "--phase-budget needs P=S, got '${2:-}'"
      [[ -n "${BUDGET_OF[${BASH_REMATCH[1]}]:-}" ]] \
        || die "--phase-budget: unknown phase '${BASH_REMATCH[1]}' (${PHASES[*]})"
      OVERRIDES+=("${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"); shift ;;
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
RESERVE=15   # kept back at the end for the summary
MIN_PHASE=10 # a phase is not started with less than this left of the total
KILL_AFTER=5

# -- what each phase runs --------------------------------------------------------------------------
RUN_PY=(benchmarks/run.py --no-progress --no-plot --no-peer --long-frames none --ops encode,decode)
# run.py's own results files go to a scratch folder (where the flag exists): the JSON kept is --out
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
grep -q -- '"--results-dir"' "$ROOT/benchmarks/run.py" && RUN_PY+=(--results-dir "$SCRATCH/results")
if (( CPU )); then
  MODE=cpu
  SIZE=(--tiny --device cpu --frames 5 --size 32 --dtype fp32 --warmup 0 --repeats 1 --threads 1)
  WARMUP_ARGS=(--model small --size 32x32 --frames 5 --dtype fp32 --json)
  BIG=(--tiny --device cpu --frames 5 --size 48 --dtype fp32 --warmup 0 --repeats 1 --threads 1)
  MODELS=small
  PER_TEST=60
  # tiny sizes: the phases take seconds; compiled keeps a short limit to show the time guard
  declare -A BUDGET_OF=([env]=30 [warmup]=30 [tests]=90 [bench]=60 [compiled]=20 [bench720]=40)
else
  MODE=gpu
  SIZE=(--frames 17 --size 256 --dtype bf16 --max-time 5)
  WARMUP_ARGS=(--model small --size 256x256 --frames 17 --dtype bf16 --json)
  BIG=(--frames 17 --size 720 --dtype bf16 --max-time 5)
  MODELS=base,small
  PER_TEST=60
fi
for (( i = 0; i < ${#OVERRIDES[@]}; i += 2 )); do
  BUDGET_OF[${OVERRIDES[i]}]=${OVERRIDES[i + 1]}
done

phase_cmd() {  # the command of phase $1, one word per line (for --dry-run and for running)
  case "$1" in
    env) echo "$PY tools/gpu_check.py env \$OUT/summary.json --mode $MODE" ;;
    warmup) echo "$PY -m cdt_fast warmup ${WARMUP_ARGS[*]}" ;;
    tests) echo "$PY -m pytest -m gpu tests -q -rfE -p no:cacheprovider" \
      "--continue-on-collection-errors$PER_TEST_ARG --junitxml \$OUT/tests-junit.xml" ;;
    bench) echo "$PY ${RUN_PY[*]} --models $MODELS --impls reference,reference-cl,engine" \
      "${SIZE[*]} --out \$OUT/bench-256.json" ;;
    compiled) echo "$PY ${RUN_PY[*]} --models ${MODELS/base,small/small,base}" \
      "--impls reference-compiled --compile-mode default ${SIZE[*]} --out \$OUT/bench-compiled.json" ;;
    bench720) echo "$PY ${RUN_PY[*]} --models $MODELS --impls reference,reference-cl,engine" \
      "${BIG[*]} --out \$OUT/bench-720.json" ;;
  esac
}

# the env phase always runs: the summary's results key comes from it
selected() { [[ -z "$ONLY" || "$ONLY" == *",$1,"* || $1 == env ]]; }
# one hung test must not take the whole phase (pytest-timeout is in the GPU image)
PER_TEST_ARG=""
"$PY" -c "import pytest_timeout" 2>/dev/null && PER_TEST_ARG=" --timeout $PER_TEST"

if (( DRY )); then
  echo "gpu_check.sh ($MODE mode): total budget ${TOTAL}s, ${RESERVE}s kept for the summary"
  for p in "${PHASES[@]}"; do
    selected "$p" || continue
    printf '%-9s %4ss  %s\n' "$p" "${BUDGET_OF[$p]}" "$(phase_cmd "$p")"
  done
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
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if (( CPU )); then
  export CUDA_VISIBLE_DEVICES=""
  unset TRITON_INTERPRET  # interpreted Triton would make the engine rows take minutes
else
  export CDT_FAST_TEST_DEVICE=cuda
fi
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SCRATCH/site" .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:$SCRATCH/site" || echo "warning: installing .whl/ failed"
fi

elapsed() { printf '[%4ds]' $(( SECONDS - T0 )); }

run_phase() {  # name artifact-flag artifact-path
  local name=$1 flag=${2:-} artifact=${3:-} limit left rc=0 t0=$SECONDS cmd
  left=$(( DEADLINE - SECONDS - RESERVE - KILL_AFTER ))
  limit=${BUDGET_OF[$name]}
  if (( left < MIN_PHASE )); then
    echo "$(elapsed) $name: not started, ${left}s of the total left"
    "$PY" tools/gpu_check.py record "$SUMMARY" --phase "$name" --rc - --limit 0 \
      --note "not started: total budget spent"
    return 0
  fi
  (( left < limit )) && limit=$left
  cmd=$(phase_cmd "$name")
  cmd=${cmd//\$OUT/$OUT_DIR}
  echo "$(elapsed) == $name (limit ${limit}s): $cmd"
  local capture=$SCRATCH/$name.stdout
  # word splitting of $cmd is intended: the phase commands hold no quoted arguments
  # shellcheck disable=SC2086
  # pytest writes its junit XML on SIGINT (not on TERM); run.py writes its rows so far on TERM
  local sig=TERM
  [[ $name == tests ]] && sig=INT
  timeout --signal=$sig --kill-after=$KILL_AFTER "$limit" $cmd > >(tee "$capture") 2>&1 || rc=$?
  sleep 0.2  # let tee flush the capture
  local note=""
  (( rc == 124 || rc == 137 )) && note="stopped by its ${limit}s limit"
  [[ $name == warmup && $rc != 0 ]] && grep -q "invalid choice: 'warmup'" "$capture" \
    && note="the warmup command is missing from this tree"
  echo "$(elapsed) $name: exit $rc after $(( SECONDS - t0 ))s${note:+ ($note)}"
  local extra=()
  [[ -n "$flag" && -s "$artifact" ]] && extra=("$flag" "$artifact")
  "$PY" tools/gpu_check.py record "$SUMMARY" --phase "$name" --rc "$rc" \
    --seconds $(( SECONDS - t0 )) --limit "$limit" --note "$note" "${extra[@]}" \
    || echo "warning: could not record $name in $SUMMARY"
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
rm -f "$SUMMARY"
for p in "${PHASES[@]}"; do
  selected "$p" || continue
  case "$p" in
    env) run_phase env ;;
    warmup) run_phase warmup --json "$SCRATCH/warmup.stdout" ;;
    tests) run_phase tests --junit "$OUT_DIR/tests-junit.xml" ;;
    bench) run_phase bench --bench "$OUT_DIR/bench-256.json" ;;
    compiled) run_phase compiled --bench "$OUT_DIR/bench-compiled.json" ;;
    bench720) run_phase bench720 --bench "$OUT_DIR/bench-720.json" ;;
  esac
done
exit 0
