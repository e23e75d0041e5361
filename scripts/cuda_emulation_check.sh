#!/usr/bin/env bash
# Builds the CUDA kernels (csrc/kernels/*.cu, unchanged) with the host compiler against the CPU emulator of the
# CUDA execution model (csrc/emulation/), then runs their tests (tests/emulation/) against mtl_fast.reference and
# the CPU ops. Exit 0 when every test passes.
#
#   scripts/cuda_emulation_check.sh [--sanitize address|thread] [pytest arguments]
#
# --sanitize address: AddressSanitizer + UndefinedBehaviorSanitizer (out-of-bounds device memory, shared memory
# overruns, undefined behaviour); --sanitize thread: ThreadSanitizer (shared-memory races such as a missing
# __syncthreads). The sanitizer runtime is preloaded into Python, which loads the kernels with ctypes.
set -euo pipefail
cd "$(dirname "$0")/.."
sanitize=none
if [[ "${1:-}" == "--sanitize" ]]; then
  sanitize="${2:-}"
  shift 2
fi
CXX="${CXX:-g++}"
PY="${PYTHON:-python}"
flags=(-std=c++20 -fPIC -pthread -g -Wall -Wextra -Werror -Wno-unknown-pragmas -Icsrc/emulation/include -Icsrc)
preload=""
case "$sanitize" in
  none) flags+=(-O2) ;;
  address)
    flags+=(-O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all)
    preload="$("$CXX" -print-file-name=libasan.so)"
    export ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:${ASAN_OPTIONS:-}"
    export UBSAN_OPTIONS="print_stacktrace=1:${UBSAN_OPTIONS:-}"
    ;;
  thread)
    flags+=(-O1 -fsanitize=thread)
    preload="$("$CXX" -print-file-name=libtsan.so)"
    export TSAN_OPTIONS="halt_on_error=1:${TSAN_OPTIONS:-}"
    # torch's own OpenMP threads (libgomp is not instrumented) would show TSan races that are not ours.
    export OMP_NUM_THREADS=1
    ;;
  *)
    echo "usage: $0 [--sanitize address|thread] [pytest arguments]" >&2
    exit 2
    ;;
esac

out="build/emulation-$sanitize"
mkdir -p "$out"
started=$SECONDS
# The .cu files are C++ to the host compiler: the stand-in CUDA headers of csrc/emulation/include come first.
# Objects newer than their source, every header and this script are kept.
newest_header="$(ls -t csrc/*.h csrc/kernels/*.h csrc/kernels/*.cuh csrc/emulation/*.h csrc/emulation/include/*.h \
  | head -n 1)"
stale=()
for src in csrc/kernels/*.cu csrc/emulation/emulated_kernels.cpp; do
  obj="$out/$(basename "$src").o"
  if [[ ! -f "$obj" || "$src" -nt "$obj" || "$newest_header" -nt "$obj" || "$0" -nt "$obj" ]]; then
    stale+=("$src")
  fi
done
if (( ${#stale[@]} > 0 )); then
  printf '%s\0' "${stale[@]}" \
    | xargs -0 -P "${MAX_JOBS:-2}" -I{} sh -c '"$0" "$@" -x c++ -c "{}" -o "'"$out"'/$(basename "{}").o"' \
      "$CXX" "${flags[@]}"
fi
"$CXX" "${flags[@]}" -shared "$out"/*.o -o "$out/libmtl_emulated_kernels.so"
echo "cuda_emulation_check: built $out/libmtl_emulated_kernels.so ($sanitize) in $((SECONDS - started))s"

export MTL_FAST_EMULATION_LIB="$PWD/$out/libmtl_emulated_kernels.so"
# The interpreter itself, not a launcher script (pyenv's shims crash with TSan preloaded). --capture=sys: a
# sanitizer's report goes to the real stderr, which pytest would otherwise hold until a test ends, and a sanitizer
# that stops the process leaves no test to end.
interpreter="$("$PY" -c 'import sys; print(sys.executable)')"
LD_PRELOAD="$preload" "$interpreter" -m pytest -q -p no:cacheprovider --capture=sys tests/emulation "$@"
