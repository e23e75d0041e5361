#!/usr/bin/env bash
# Builds the whole extension (CPU kernels, CUDA kernels and their bindings) against a CUDA build of torch on a
# machine with no GPU, imports it, checks that every mtl_fast op has a CUDA kernel in the dispatcher, and runs
# the test suite under that torch (the CUDA-marked tests skip without a GPU).
#
# The CUDA torch lives in its own venv (MTL_FAST_CUDA_VENV, created when missing, with MTL_FAST_CUDA_TORCH_SPEC)
# so the torch of the main environment is never replaced. The build runs in a copy of this working tree, so the
# CPU build in the checkout is left alone.
#
#   scripts/cuda_build_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
VENV="${MTL_FAST_CUDA_VENV:-$HOME/.cache/mtl_fast/cuda-venv}"
TORCH_SPEC="${MTL_FAST_CUDA_TORCH_SPEC:-torch==2.14.1}"
started=$SECONDS
step() { echo "[cuda_build_check $((SECONDS - started))s] $*"; }

if [[ ! -x "$VENV/bin/python" ]]; then
  step "creating $VENV with $TORCH_SPEC"
  python -m venv "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)' 2>/dev/null; then
  "$PY" -m pip install --quiet "$TORCH_SPEC"
fi
"$PY" -m pip install --quiet "setuptools>=64" wheel ninja pybind11 numpy tqdm "pytest>=7" "pytest-benchmark>=4" \
  hypothesis

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# Tracked and untracked files, not the ignored ones (build outputs, the checkout's own extension).
git ls-files -z --cached --others --exclude-standard | tar --null -T - --ignore-failed-read -cf - 2>/dev/null \
  | tar -xf - -C "$work"
cd "$work"

step "building against $("$PY" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)')"
# CUDA_HOME is not set here on purpose: setup.py has to find the toolkit by itself.
if ! env -u CUDA_HOME MAX_JOBS="${MAX_JOBS:-2}" "$PY" setup.py build_ext --inplace >"$work/build.log" 2>&1; then
  tail -n 40 "$work/build.log" >&2
  echo "cuda_build_check: build failed" >&2
  exit 1
fi
grep '^mtl_fast setup:' "$work/build.log"

step "checking the dispatcher"
"$PY" - <<'PYEOF'
import torch

import mtl_fast

# Ops that are CPU-only by design, and why; an entry that gains a CUDA kernel must leave this list.
CPU_ONLY = {"mtl_fast::gradvac_weights": "GradVac's CUDA path is its torch-ops loop (csrc/cpu/gradvac.cpp)"}

ops = sorted(name for name in torch._C._dispatch_get_all_op_names() if name.startswith("mtl_fast::"))
assert ops, "no mtl_fast op is registered: the extension did not load"
has_cuda = {name: torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA") for name in ops}
missing = [name for name in ops if not has_cuda[name] and name not in CPU_ONLY]
stale = [name for name in CPU_ONLY if has_cuda.get(name, True)]
print(f"cuda_build_check: {sum(has_cuda.values())} of {len(ops)} mtl_fast ops have a CUDA kernel; CPU-only by "
      f"design: {', '.join(f'{name} ({why})' for name, why in CPU_ONLY.items())}")
if missing:
    raise SystemExit("cuda_build_check: no CUDA kernel for " + ", ".join(missing))
if stale:
    raise SystemExit("cuda_build_check: listed as CPU-only but registered with a CUDA kernel or gone: "
                     + ", ".join(stale))
print("cuda_build_check: mtl_fast.backend() here says", repr(mtl_fast.backend()))
PYEOF

step "test suite under the CUDA torch"
"$PY" -m pytest -q -x -p no:cacheprovider
step "passed"
