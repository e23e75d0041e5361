"""Builds the mtl_fast._C extension against the torch that is installed.

Always builds the C++ CPU kernels. Adds the CUDA kernels when this torch is a CUDA build and the CUDA
toolkit is present (no visible GPU needed). Environment switches:
  MTL_FAST_NO_EXTENSION=1  build nothing: the package runs on its pure-PyTorch path
  MTL_FAST_FORCE_CUDA=1    build the CUDA kernels even if the checks above say no
  TORCH_CUDA_ARCH_LIST     the GPU architectures to build for (default here: 8.0;9.0; a value set by the user is
                           used as it is)
"""
import glob
import os
import sys

from setuptools import setup


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _extensions():
    if _env_flag("MTL_FAST_NO_EXTENSION"):
        return [], {}
    import torch
    from torch.utils import cpp_extension

    here = os.path.dirname(os.path.abspath(__file__))
    sources = ["csrc/ops.cpp", "csrc/python_module.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    # The C++ standard is left to torch's own default; SIMD width is chosen at run time (csrc/cpu/simd.h).
    # at::parallel_for is inlined into our code and only runs in parallel when compiled with OpenMP (the
    # runtime is torch's own libgomp). -Wno-psabi: GCC notes that the AVX-512 vector helpers of csrc/cpu/simd.h
    # would pass vectors differently across a call; they are always inlined into their clone, so no call exists.
    extra = {"cxx": ["-O3", "-fopenmp", "-Wno-psabi"]}
    link = ["-fopenmp"]

    with_cuda = _env_flag("MTL_FAST_FORCE_CUDA") or bool(torch.version.cuda and cpp_extension.CUDA_HOME)
    # Torch-free kernels (nvcc) plus their ATen bindings (host compiler, CUDA headers).
    cuda_sources = sorted(glob.glob("csrc/kernels/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
    if with_cuda and cuda_sources:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
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
