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
  // out_c = sum_k w_k J_c[k] for every chunk c; each output has its chunk's shape without the K dim.
  m.def("combine(Tensor[] jac, Tensor weights) -> Tensor[]");
  // The same, accumulated in place onto existing tensors (the parameters' .grad).
  m.def("combine_into(Tensor[] jac, Tensor weights, Tensor(a!)[] out) -> ()");
  // The Gram engine's per-layer product: G (K, K) float64, G_ij = <A^T delta_i, A^T delta_j> for A (R, d) and
  // delta (K, R, m), through A A^T (mtl_fast/engine.py).
  m.def("ghost_gram(Tensor A, Tensor delta) -> Tensor");
}
