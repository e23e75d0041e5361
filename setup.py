"""Builds the mtl_fast._C extension against the torch that is installed.

Always builds the C++ CPU kernels. Adds the CUDA kernels when this torch is a CUDA build and the CUDA
toolkit is present (no visible GPU needed). Environment switches:
  MTL_FAST_NO_EXTENSION=1  build nothing: the package runs on its pure-PyTorch path
  MTL_FAST_FORCE_CUDA=1    build the CUDA kernels even if the checks above say no
  CUDA_HOME                the CUDA toolkit to use (otherwise the one nvcc reports, then /usr/local/cuda)
  TORCH_CUDA_ARCH_LIST     the GPU architectures to build for (default here: 8.0;9.0+PTX, so GPUs newer than
                           sm_90 run the PTX; a value set by the user is used as it is)
"""
import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import setup

DEFAULT_TOOLKIT = "/usr/local/cuda"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _log(message: str) -> None:
    print(f"mtl_fast setup: {message}", flush=True)


def _toolkit_reported_by_nvcc():
    # The nvcc on PATH may be a wrapper script outside the toolkit, so the folder above it proves nothing;
    # nvcc's dry run prints the toolkit it really belongs to (a line "#$ TOP=<toolkit>/bin/..", or the toolkit).
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        result = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"^#\$ TOP=(.+)$", result.stdout + result.stderr, re.MULTILINE)
    return os.path.normpath(match.group(1).strip()) if match else None


def _find_cuda_toolkit():
    """(toolkit folder, how it was found), or (None, why none was found)."""
    candidates = []
    if os.environ.get("CUDA_HOME"):
        candidates.append((os.environ["CUDA_HOME"], "CUDA_HOME"))
    reported = _toolkit_reported_by_nvcc()
    if reported:
        candidates.append((reported, "reported by nvcc --dryrun"))
    candidates.append((DEFAULT_TOOLKIT, "the standard folder"))
    rejected = []
    for folder, origin in candidates:
        if os.path.isfile(os.path.join(folder, "include", "cuda_runtime.h")):
            passed_over = f", passing over {'; '.join(rejected)}" if rejected else ""
            return os.path.realpath(folder), origin + passed_over
        rejected.append(f"{folder} ({origin}: no include/cuda_runtime.h)")
    return None, "; ".join(rejected)


def _use_cuda(torch):
    """Whether to build the CUDA kernels; sets CUDA_HOME for torch's build helpers when they are built."""
    forced = _env_flag("MTL_FAST_FORCE_CUDA")
    if not torch.version.cuda and not forced:
        _log(f"CUDA kernels skipped: torch {torch.__version__} is not a CUDA build")
        return False
    toolkit, origin = _find_cuda_toolkit()
    if toolkit is None:
        if forced:
            raise RuntimeError(f"MTL_FAST_FORCE_CUDA=1 but no CUDA toolkit was found: {origin}")
        _log(f"CUDA kernels skipped: no CUDA toolkit found: {origin}")
        return False
    # torch.utils.cpp_extension reads CUDA_HOME once, when it is first imported.
    os.environ["CUDA_HOME"] = toolkit
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    _log(f"building the CUDA kernels with the toolkit at {toolkit} ({origin}) for torch {torch.__version__} "
         f"(CUDA {torch.version.cuda}), TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}")
    return True


def _extensions():
    if _env_flag("MTL_FAST_NO_EXTENSION"):
        _log("MTL_FAST_NO_EXTENSION=1: no extension built, the package runs on its pure-PyTorch path")
        return [], {}
    import torch

    with_cuda = _use_cuda(torch)
    from torch.utils import cpp_extension

    here = os.path.dirname(os.path.abspath(__file__))
    sources = ["csrc/ops.cpp", "csrc/python_module.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    # The C++ standard is left to torch's own default; SIMD width is chosen at run time (csrc/cpu/simd.h).
    # at::parallel_for is inlined into our code and only runs in parallel when compiled with OpenMP (the
    # runtime is torch's own libgomp). -Wno-psabi: GCC notes that the AVX-512 vector helpers of csrc/cpu/simd.h
    # would pass vectors differently across a call; they are always inlined into their clone, so no call exists.
    extra = {"cxx": ["-O3", "-fopenmp", "-Wno-psabi"]}
    link = ["-fopenmp"]

    # Torch-free kernels (nvcc) plus their ATen bindings (host compiler, CUDA headers).
    cuda_sources = sorted(glob.glob("csrc/kernels/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
    if with_cuda and cuda_sources:
        extra["nvcc"] = ["-O3", "-std=c++17"]
        ext = cpp_extension.CUDAExtension(
            "mtl_fast._C", sources + cuda_sources, include_dirs=[os.path.join(here, "csrc")],
            extra_compile_args=extra, extra_link_args=link)
    else:
        ext = cpp_extension.CppExtension(
            "mtl_fast._C", sources, include_dirs=[os.path.join(here, "csrc")], extra_compile_args=extra,
            extra_link_args=link)

    class BuildExtension(cpp_extension.BuildExtension):
        """Compiles into a fixed folder under build/, one per Python and torch: pip's editable install hands
        the build a new temporary folder each time, where ninja would find no earlier objects and recompile
        every source."""

        def finalize_options(self):
            super().finalize_options()
            python = f"cp{sys.version_info.major}{sys.version_info.minor}"
            self.build_temp = os.path.join(here, "build", f"temp-{python}-torch-{torch.__version__}")

    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
