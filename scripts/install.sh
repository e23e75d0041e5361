#!/usr/bin/env bash
# Installs mtl_fast from this checkout (editable), building its C++ kernels, and its CUDA kernels where a CUDA
# torch and the toolkit are present, against the torch that is installed. Installs torch only when there is
# none (MTL_FAST_TORCH_SPEC, default torch==2.13.0); an existing torch is never replaced.
#   bash scripts/install.sh            the library
#   bash scripts/install.sh test       the library and its test dependencies
#   bash scripts/install.sh bench      the library and the benchmark peers (TorchJD)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install --quiet "${MTL_FAST_TORCH_SPEC:-torch==2.13.0}"
fi
# The build runs without isolation (it must see this torch), so its own requirements come first.
"$PY" -m pip install --quiet "setuptools>=64" wheel ninja pybind11 numpy tqdm
target="."
[ $# -gt 0 ] && target=".[$1]"
# One build at a time in this checkout: concurrent builds would share build/.
exec 9>"${TMPDIR:-/tmp}/mtl_fast_build.lock"
flock 9
"$PY" -m pip install --quiet --no-build-isolation -e "$target"
"$PY" -c "import mtl_fast; print('mtl_fast', mtl_fast.__version__, 'installed; backend:', mtl_fast.backend())"
