#!/usr/bin/env bash
# GPU check (DESIGN.md section 8), for a machine with a CUDA GPU and a CUDA build of torch, no internet:
# builds the extension against that torch, runs the CUDA tests, runs the GPU benchmark and writes
# OUTDIR/gpu_check.json (device, torch, cuda, csrc_tree, cuda_tests_passed and counts,
# aggregate_bandwidth_fraction, per-scenario medians and ratios). Logs go beside it. Takes a few minutes.
#
#   scripts/gpu_check.sh OUTDIR
set -uo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
mkdir -p "$1"
OUT="$(cd "$1" && pwd)"
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
started=$SECONDS

step() { echo "[gpu_check $((SECONDS - started))s] $*"; }

# Only the GPU in this machine: one architecture builds in half the time of the default list.
if [[ -z "${TORCH_CUDA_ARCH_LIST:-}" ]]; then
  TORCH_CUDA_ARCH_LIST="$("$PYTHON" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')" \
    || { echo "gpu_check: torch sees no CUDA device" >&2; exit 1; }
  export TORCH_CUDA_ARCH_LIST
fi
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"

versions="$("$PYTHON" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)')"
step "building against torch $versions for sm ${TORCH_CUDA_ARCH_LIST}"
# --no-deps: nothing may be fetched here; torch and the build tools are already installed.
if ! "$PYTHON" -m pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1; then
  tail -n 40 "$OUT/build.log" >&2
  echo "gpu_check: build failed (log: $OUT/build.log)" >&2
  exit 1
fi

backend="$("$PYTHON" -c 'import mtl_fast as mf; print(mf.backend())' 2>>"$OUT/build.log")"
if [[ "$backend" != "cuda" ]]; then
  echo "gpu_check: mtl_fast.backend() is '$backend', expected 'cuda' (log: $OUT/build.log)" >&2
  exit 1
fi

step "CUDA tests"
timeout 360 "$PYTHON" -m pytest -m cuda tests/ -q -p no:cacheprovider --junitxml="$OUT/cuda_tests.xml" \
  >"$OUT/cuda_tests.log" 2>&1
tests_rc=$?
tail -n 5 "$OUT/cuda_tests.log"

# The git tree id of the csrc/ measured, computed from the files themselves (equal to `git rev-parse HEAD:csrc`
# for a clean checkout), so a copy of the tree without its .git still records which kernels it measured.
csrc_tree="$(tmp_git="$(mktemp -d)" && GIT_DIR="$tmp_git" git init -q && GIT_DIR="$tmp_git" git --work-tree=. add csrc \
  && GIT_DIR="$tmp_git" git --work-tree=. write-tree --prefix=csrc/; rm -rf "$tmp_git")" || csrc_tree=""

step "benchmark"
timeout 300 "$PYTHON" benchmarks/gpu_bench.py --out "$OUT/gpu_check.json" --junit "$OUT/cuda_tests.xml" \
  --csrc-tree "$csrc_tree" --time-limit 150 2>&1 | tee "$OUT/gpu_bench.log"
bench_rc=${PIPESTATUS[0]}

step "done: tests rc=$tests_rc, benchmark rc=$bench_rc, results in $OUT/gpu_check.json"
if [[ $tests_rc -ne 0 || $bench_rc -ne 0 ]]; then
  exit 1
fi
