#!/usr/bin/env bash
# The Triton kernels' parity tests (interpreter, CPU) against a second Triton release, each run
# twice: with every launch's programs in reversed and in shuffled order (tests/program_order.py),
# so that a kernel whose programs depend on each other (a race on a GPU) fails here. The main
# test run covers the grid order.
#
# The project must already be installed in the Python that runs this script (with its test
# extras). That Python's own Triton is left alone: the requested release is installed into a
# throwaway directory put first on PYTHONPATH, so it shadows the installed one for this run only,
# and everything else (torch, numpy, cdt_fast itself) comes from the existing environment.
#
#   tools/ci_triton_matrix.sh                      # Triton 3.9.0 with `python`
#   tools/ci_triton_matrix.sh --triton 3.6.0 --python .venv/bin/python -- -x
#
# Arguments after `--` go to pytest. Exit status: pytest's (pip's on a failed install).
set -euo pipefail

triton_version=3.9.0
python=python
pytest_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --triton) triton_version="$2"; shift 2 ;;
    --python) python="$2"; shift 2 ;;
    --) shift; pytest_args=("$@"); break ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "ci_triton_matrix.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
site="$(mktemp -d "${TMPDIR:-/tmp}/cdt_fast_triton_${triton_version}.XXXXXX")"
trap 'rm -rf "$site"' EXIT

# --no-deps: Triton's wheels need nothing beyond the standard library, and pip must not replace
# the environment's torch.
"$python" -m pip install --quiet --disable-pip-version-check --no-deps --target "$site" \
  "triton==${triton_version}"

export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
export TRITON_INTERPRET=1
got="$("$python" -c 'import triton; print(triton.__version__)')"
if [[ "$got" != "$triton_version" ]]; then
  echo "ci_triton_matrix.sh: asked for triton $triton_version, the tests would import $got" >&2
  exit 1
fi
echo "kernel parity tests under the Triton $got interpreter, programs reversed and shuffled"

# The extension's tests in these files (mark `cpp`) run no Triton: the main run covers them.
"$python" -m pytest -q -m "not slow and not cpp" -p no:cacheprovider \
  --program-order reversed,shuffled \
  tests/test_program_order.py \
  tests/test_causal_conv3d.py \
  tests/test_channel_norm.py \
  tests/test_linear_attention.py \
  tests/test_time_resample.py \
  tests/test_denoise.py \
  tests/test_temporal_attention.py \
  tests/test_int64_offsets.py \
  tests/test_sm90_launch_path.py \
  tests/test_launch_grids.py \
  ${pytest_args[@]+"${pytest_args[@]}"}
