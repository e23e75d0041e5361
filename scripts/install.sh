#!/usr/bin/env bash
# Installs mtl_fast from this checkout (editable), building its C++ kernels, and its CUDA kernels where a CUDA
# torch and the toolkit are present, against the torch that is installed. Installs torch only when there is
# none (MTL_FAST_TORCH_SPEC, default torch==2.13.0); an existing torch is never replaced.
#   bash scripts/install.sh            the library and what the demo needs (scikit-learn, matplotlib)
#   bash scripts/install.sh test       the same and the test dependencies (pytest, hypothesis, lightning, ...)
#   bash scripts/install.sh bench      the same and the benchmark peers (TorchJD)
# It prints a line per step with its duration, and the compiler's progress; pip's full output goes to
# build/install.log. A second call does not rebuild an up-to-date extension: it skips the build when nothing
# under csrc/, setup.py or pyproject.toml changed since the last install from this checkout with the same
# Python, torch, extras and build switches (MTL_FAST_REBUILD=1 forces the build). When the build does run, ninja
# recompiles only the sources a change affects (setup.py keeps the objects under build/).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd -P)
PY=${PYTHON:-python}
mkdir -p build
log=build/install.log
stamp=build/install.stamp
constraint=build/installed-torch.txt
# One install at a time in this checkout: concurrent builds would share build/.
exec 9>build/install.lock
flock 9
: > "$log"

started=$SECONDS
step_started=$SECONDS
step() { step_started=$SECONDS; echo "[$1] $2"; }
finished() { echo "      $1 ($((SECONDS - step_started)) s)"; }
fail() { echo "install.sh: $1. The end of $log:" >&2; tail -n 40 "$log" >&2; exit 1; }

step 1/4 "torch"
torch_info() { "$PY" -c "import os, sys, torch; print(torch.__version__, sys.prefix, os.path.dirname(torch.__file__))"; }
if info=$(torch_info 2> /dev/null); then
  torch_version=${info%% *}
  finished "torch $torch_version is installed: kept as it is"
else
  spec=${MTL_FAST_TORCH_SPEC:-torch==2.13.0}
  echo "      none is installed: pip install $spec"
  "$PY" -m pip install "$spec" || fail "installing $spec failed"  # pip's own progress, on the terminal
  info=$(torch_info)
  torch_version=${info%% *}
  finished "torch $torch_version installed"
fi
# Every later pip call is held to this torch, so no dependency can replace it.
echo "torch==$torch_version" > "$constraint"

step 2/4 "build requirements"
# The build runs without isolation (it must see this torch), so its own requirements come first.
"$PY" -m pip install -c "$constraint" "setuptools>=64" wheel ninja pybind11 numpy tqdm >> "$log" 2>&1 \
  || fail "installing the build requirements failed"
finished "setuptools, wheel, ninja, pybind11, numpy, tqdm"

extras=demo
[ $# -gt 0 ] && extras="demo,$1"
# What the extension was built for: the torch (its version, environment and location), and the switches setup.py
# reads.
build_key="$info|${MTL_FAST_NO_EXTENSION:-}|${MTL_FAST_FORCE_CUDA:-}|${TORCH_CUDA_ARCH_LIST:-}|${CUDA_HOME:-}"

up_to_date() {
  [ -z "${MTL_FAST_REBUILD:-}" ] && [ -f "$stamp" ] || return 1
  [ "$(sed -n 1p "$stamp")" = "$build_key" ] || return 1
  local installed_extras extra
  installed_extras=$(sed -n 2p "$stamp")
  for extra in ${extras//,/ }; do
    case ",$installed_extras," in *",$extra,"*) ;; *) return 1 ;; esac
  done
  [ -z "$(find csrc setup.py pyproject.toml -newer "$stamp" -print -quit)" ] || return 1
  # and this Python imports this checkout's package, with its compiled extension unless it was built without
  (cd / && "$PY" - "$root" << 'EOF'
import os, sys
import mtl_fast
if os.path.realpath(os.path.dirname(mtl_fast.__file__)) != os.path.join(sys.argv[1], "mtl_fast"):
    sys.exit(1)
if os.environ.get("MTL_FAST_NO_EXTENSION", "").strip().lower() not in ("1", "true", "yes", "on"):
    import mtl_fast._C
EOF
  ) > /dev/null 2>&1
}

step 3/4 "mtl_fast[$extras]"
if up_to_date; then
  finished "up to date: nothing under csrc/, setup.py or pyproject.toml changed since the last install, no rebuild"
else
  echo "      building the extension against torch $torch_version and installing the dependencies"
  previous_extras=""
  [ -f "$stamp" ] && [ "$(sed -n 1p "$stamp")" = "$build_key" ] && previous_extras=$(sed -n 2p "$stamp")
  rm -f "$stamp"  # a failed build leaves none, so the next call builds again
  # pip -v passes ninja's progress lines through: shown here as [done/total] and the source being compiled
  "$PY" -m pip install -v -c "$constraint" --no-build-isolation -e ".[$extras]" 2>&1 | tee -a "$log" \
    | awk -v root="$root/" 'match($0, /\[[0-9]+\/[0-9]+\] /) {
        source = "a source"
        n = split(substr($0, RSTART + RLENGTH), words, " ")
        for (i = 1; i < n; i++) if (words[i] == "-c") source = words[i + 1]
        sub(root, "", source)
        print "      " substr($0, RSTART, RLENGTH) "compiling " source; fflush()
      }' || fail "pip install -e .[$extras] failed"
  all_extras=$(echo "$previous_extras,$extras" | tr , '\n' | sed '/^$/d' | sort -u | paste -sd , -)
  printf '%s\n%s\n' "$build_key" "$all_extras" > "$stamp"
  finished "installed"
fi

step 4/4 "check"
(cd / && "$PY" -c "import mtl_fast; print('      mtl_fast', mtl_fast.__version__, 'installed; backend:', mtl_fast.backend())")
echo "done in $((SECONDS - started)) s"
