// The mtl_fast._C Python module. It has no functions: importing it loads this library, whose static initialisers
// register the operators (csrc/ops.cpp, csrc/cpu, csrc/cuda), which Python then reaches as torch.ops.mtl_fast.*.
#include <Python.h>

namespace {

PyModuleDef mtl_fast_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&mtl_fast_module); }
