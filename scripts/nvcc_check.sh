#!/usr/bin/env bash
# Compiles every torch-free CUDA kernel source (csrc/kernels/*.cu) with plain nvcc, as a machine with no GPU
# and a CPU build of torch can: proof that the kernels build without ATen/c10. Exits 0 with a note when nvcc
# is absent, non-zero when any source fails.
set -euo pipefail

cd "$(dirname "$0")/.."
NVCC="${NVCC:-$(command -v nvcc || true)}"
if [[ -z "$NVCC" ]]; then
  echo "nvcc_check: nvcc not found; kernel sources not compiled"
  exit 0
fi

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
shopt -s nullglob
sources=(csrc/kernels/*.cu)
if (( ${#sources[@]} == 0 )); then
  echo "nvcc_check: no csrc/kernels/*.cu found" >&2
  exit 1
fi
failed=0
for src in "${sources[@]}"; do
  if "$NVCC" -std=c++17 -arch=sm_90 -Icsrc -c "$src" -o "$out/$(basename "$src").o"; then
    echo "nvcc_check: ok      $src"
  else
    echo "nvcc_check: FAILED  $src" >&2
    failed=1
  fi
done
exit "$failed"
