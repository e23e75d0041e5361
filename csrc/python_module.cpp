// The mtl_fast._C Python module. Importing it runs the operator registrations (csrc/ops.cpp, csrc/cpu, csrc/cuda).
//
// It also has one function that skips the dispatcher: qp_weights, the CPU kernel of mtl_fast::qp_weights. At
// K = 16 the whole weights(G) of MGDA or DualProj takes about a microsecond, and a call through torch.ops costs
// about two more (argument boxing, dispatch keys, profiling hooks), so the eager CPU path of the aggregators calls
// the kernel here instead (mtl_fast/_qp.py). torch.compile, other devices and tensor subclasses take the op.
#include <Python.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include <optional>

#include "cpu/nonneg_qp.h"

namespace {

// qp_weights(gram: Tensor, pref: Optional[Tensor], method: str, regularization: float, tol: float,
//            max_iter: int) -> Tensor, with the arguments of the op of the same name.
PyObject* qp_weights(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 6) {
    PyErr_Format(PyExc_TypeError, "qp_weights: expected 6 arguments, got %zd", nargs);
    return nullptr;
  }
  if (!THPVariable_Check(args[0])) {
    PyErr_SetString(PyExc_TypeError, "gram: expected a Tensor");
    return nullptr;
  }
  std::optional<at::Tensor> pref;
  if (args[1] != Py_None) {
    if (!THPVariable_Check(args[1])) {
      PyErr_SetString(PyExc_TypeError, "pref: expected a Tensor or None");
      return nullptr;
    }
    pref = THPVariable_Unpack(args[1]);
  }
  Py_ssize_t method_size = 0;
  const char* method = PyUnicode_AsUTF8AndSize(args[2], &method_size);
  const double regularization = PyFloat_AsDouble(args[3]);
  const double tol = PyFloat_AsDouble(args[4]);
  const long long max_iter = PyLong_AsLongLong(args[5]);
  if (PyErr_Occurred()) return nullptr;  // a str, two floats and an int were not what came
  return THPVariable_Wrap(mtl_fast::qp_weights_cpu(THPVariable_Unpack(args[0]), pref,
                                                   c10::string_view(method, method_size), regularization, tol,
                                                   max_iter));
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"qp_weights", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(qp_weights)), METH_FASTCALL,
     "The CPU kernel of mtl_fast::qp_weights, called directly (no dispatcher)."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef mtl_fast_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&mtl_fast_module); }
