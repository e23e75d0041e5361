// Operator schemas of the mtl_fast namespace. Implementations register per dispatch key at the bottom of
// csrc/cpu/*.cpp and csrc/cuda/*.cpp; fake (meta) kernels and autograd live in mtl_fast/_ops.py.
#include <torch/library.h>

TORCH_LIBRARY(mtl_fast, m) {
  // G = J J^T over all chunks, each chunk of shape (K, ...). Always float64: the products of float32
  // gradients between 1e-30 and 1e30 stay finite and nonzero only in double.
  m.def("gram(Tensor[] jac) -> Tensor");
  // PCGrad weights w (K,) float64 with sum_i g_i^PC = sum_j w_j g_j; orders (K, K-1) int64: row i is the
  // order in which task i visits the other tasks.
  m.def("pcgrad_weights(Tensor gram, Tensor orders) -> Tensor");
  // Batched min_z 1/2 z^T M z + q_b^T z s.t. z >= 0 (and sum(z) = 1 when simplex) for every row q_b of q (B, K),
  // M (K, K) positive definite: block principal pivoting with relative KKT tolerance tol, which flips one index
  // at a time after patience steps without fewer violations (Murty's rule), and after max_iter steps without
  // settling at most max_iter steps of an active-set method. Returns (B, K) in q's dtype (computed in float64).
  m.def("nonneg_qp(Tensor M, Tensor q, bool simplex, float tol, int max_iter, int patience) -> Tensor");
  // weights(G) (K,) float64 of method 'mgda' | 'dualproj' | 'upgrad' on M = G / trace(G) + regularization * I,
  // pref the preference vector (None: the mean); the QPs as in nonneg_qp. A G with a non-finite entry gives NaN
  // weights.
  m.def("qp_weights(Tensor gram, Tensor? pref, str method, float regularization, float tol, int max_iter, "
        "int patience) -> Tensor");
  // out_c = sum_k w_k J_c[k] for every chunk c; each output has its chunk's shape without the K dim.
  m.def("combine(Tensor[] jac, Tensor weights) -> Tensor[]");
  // The same, accumulated in place onto existing tensors (the parameters' .grad).
  m.def("combine_into(Tensor[] jac, Tensor weights, Tensor(a!)[] out) -> ()");
}
