// The mtl_fast._C Python module. Importing it runs the operator registrations (csrc/ops.cpp, csrc/cpu, csrc/cuda).
//
// It also has one function that skips the dispatcher: qp_weights, the CPU kernel of mtl_fast::qp_weights. At
// K = 16 the solve inside weights(G) of MGDA or DualProj takes 0.1-1.5 us, and a call through torch.ops costs
// about 1.3 us more than this one (argument boxing, dispatch keys, profiling hooks), so the eager CPU path of the
// aggregators calls the kernel here instead (mtl_fast/_qp.py). torch.compile, other devices, tensor subclasses,
// vmap and dispatch modes take the op.
#include <Python.h>
#include <ATen/PythonTorchFunctionTLS.h>
#include <c10/core/GradMode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/autograd/forward_grad.h>
#include <torch/csrc/autograd/variable.h>

#include <optional>
#include <utility>

#include "cpu/nonneg_qp.h"
#include "kernels/nonneg_qp.h"

namespace {

// Whether t carries a forward-mode AD tangent (forward_ad.dual_level): the kernel has no derivative, so such a
// tensor takes the caller's differentiable path. Most tensors have no autograd metadata at all.
bool has_forward_tangent(const at::Tensor& t) {
  // (impl::get_autograd_meta without its out-of-line call: this runs on every direct call)
  const auto* meta = static_cast<const torch::autograd::AutogradMeta*>(t.unsafeGetTensorImpl()->autograd_meta());
  return meta != nullptr && meta->fw_grad_ != nullptr && !meta->fw_grad_->empty();
}

// An exact torch.Tensor on the CPU that nothing around the call wants to see an op for:
//  - its dispatch keys are only the CPU kernel's and autograd/autocast bookkeeping (no fake, functional, vmapped,
//    batched-gradient or sparse tensor);
//  - it needs no gradient and has no forward-mode tangent (the kernel has no derivative: the caller then takes its
//    differentiable torch-ops path);
//  - the thread adds no dispatch keys of its own (the JIT tracer, functorch layers);
//  - no TorchDispatchMode or TorchFunctionMode is active, and it is no subclass with __torch_function__.
// Every other case goes through the dispatcher, where tracing, modes and autograd see the op.
bool is_plain_cpu(PyObject* obj) {
  if (!THPVariable_CheckExact(obj)) return false;
  static const c10::DispatchKeySet plain_tensor{c10::DispatchKey::CPU, c10::DispatchKey::ADInplaceOrView,
                                                c10::DispatchKey::AutogradCPU, c10::DispatchKey::AutocastCPU};
  static const c10::DispatchKeySet plain_thread{c10::DispatchKey::BackendSelect, c10::DispatchKey::ADInplaceOrView};
  const at::Tensor& t = THPVariable_Unpack(obj);
  const c10::DispatchKeySet keys = t.key_set();
  // "within the set": a set difference would keep the shared backend bits, so compare the union instead
  return keys.has(c10::DispatchKey::CPU) && (keys | plain_tensor) == plain_tensor &&
         !(t.requires_grad() && c10::GradMode::is_enabled()) && !has_forward_tangent(t) &&
         (c10::impl::tls_local_dispatch_key_set().included_ | plain_thread) == plain_thread &&
         c10::impl::TorchDispatchModeTLS::stack_len() == 0 && !at::impl::torch_function_mode_enabled();
}

// A square floating gram with K >= 1 and no pref or a floating (K,) one: what the op accepts.
bool is_well_formed(const at::Tensor& gram, const std::optional<at::Tensor>& pref) {
  const c10::IntArrayRef sizes = gram.sizes();  // inline, where size(d) is a call
  if (sizes.size() != 2 || sizes[0] != sizes[1] || sizes[0] < 1 || !at::isFloatingType(gram.scalar_type()))
    return false;
  return !pref.has_value() ||
         (pref->dim() == 1 && pref->sizes()[0] == sizes[0] && at::isFloatingType(pref->scalar_type()));
}

// Releases the GIL for its lifetime when asked to (and takes it back even when the solve throws).
class GilRelease {
 public:
  explicit GilRelease(bool release) : state_(release ? PyEval_SaveThread() : nullptr) {}
  ~GilRelease() {
    if (state_ != nullptr) PyEval_RestoreThread(state_);
  }
  GilRelease(const GilRelease&) = delete;
  GilRelease& operator=(const GilRelease&) = delete;

 private:
  PyThreadState* state_;
};

PyObject* is_plain_cpu_tensor(PyObject* /*module*/, PyObject* obj) {
  return PyBool_FromLong(is_plain_cpu(obj));
}

// qp_weights(gram: Tensor, pref: Optional[Tensor], method: str, regularization: float, tol: float,
//            max_iter: Optional[int]) -> Tensor, with the arguments of the op of the same name (max_iter None: the
// solver's default); NotImplemented when gram or pref is not a plain CPU tensor or not of a shape and dtype the
// op takes, or not a tensor at all (the caller then takes its own path, which checks them).
PyObject* qp_weights(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 6) {
    PyErr_Format(PyExc_TypeError, "qp_weights: expected 6 arguments, got %zd", nargs);
    return nullptr;
  }
  if (!is_plain_cpu(args[0]) || (args[1] != Py_None && !is_plain_cpu(args[1]))) Py_RETURN_NOTIMPLEMENTED;
  const at::Tensor& gram = THPVariable_Unpack(args[0]);
  std::optional<at::Tensor> pref;
  if (args[1] != Py_None) pref = THPVariable_Unpack(args[1]);
  // Malformed tensors are declined rather than reported: the caller's own checks then name its arguments.
  if (!is_well_formed(gram, pref)) Py_RETURN_NOTIMPLEMENTED;
  // A str, two floats and an int; each conversion is checked before the next may run Python code.
  Py_ssize_t method_size = 0;
  const char* method = PyUnicode_AsUTF8AndSize(args[2], &method_size);
  if (method == nullptr) return nullptr;
  const double regularization = PyFloat_AsDouble(args[3]);
  if (regularization == -1.0 && PyErr_Occurred()) return nullptr;
  const double tol = PyFloat_AsDouble(args[4]);
  if (tol == -1.0 && PyErr_Occurred()) return nullptr;
  long long max_iter = mtl_fast::nonneg_qp_default_max_iter(gram.sizes()[0]);
  if (args[5] != Py_None) {
    max_iter = PyLong_AsLongLong(args[5]);
    if (max_iter == -1 && PyErr_Occurred()) return nullptr;
  }
  at::Tensor weights;
  {
    // Other Python threads may run during a long solve (UPGrad at K = 64 takes most of a millisecond), as the
    // op path allows; a K = 16 problem takes microseconds, less than handing the GIL over would be worth.
    GilRelease release(gram.sizes()[0] >= 32);
    weights = mtl_fast::qp_weights_cpu(gram, pref, c10::string_view(method, method_size), regularization, tol,
                                       max_iter);
  }
  return THPVariable_Wrap(std::move(weights));
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"is_plain_cpu_tensor", is_plain_cpu_tensor, METH_O,
     "Whether the argument is an ordinary CPU tensor that no tracer, mode, wrapper or autograd needs to see."},
    {"qp_weights", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(qp_weights)), METH_FASTCALL,
     "The CPU kernel of mtl_fast::qp_weights, called directly (no dispatcher)."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef mtl_fast_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&mtl_fast_module); }
