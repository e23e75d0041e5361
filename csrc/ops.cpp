// Operator schemas of the mtl_fast namespace, all of them. Implementations register per dispatch key at the
// bottom of csrc/cpu/*.cpp and csrc/cuda/*.cpp; fake kernels and autograd sit beside the Python wrappers
// (mtl_fast/_ops.py, _qp.py, _gradvac_op.py, nn/_heads_ops.py).
#include <torch/library.h>

TORCH_LIBRARY(mtl_fast, m) {
  // G = J J^T over all chunks, each chunk of shape (K, ...). Always float64: the products of float32
  // gradients between 1e-30 and 1e30 stay finite and nonzero only in double.
  m.def("gram(Tensor[] J) -> Tensor");
  // PCGrad weights w (K,) float64 with sum_i g_i^PC = sum_j w_j g_j; orders (K, K-1) int64: row i is the
  // order in which task i visits the other tasks.
  m.def("pcgrad_weights(Tensor gram, Tensor orders) -> Tensor");
  // One GradVac step: the (K,) float64 weights w with sum_i g_i^GV = sum_j w_j g_j, and the (K, K) float64 EMA
  // targets after the step; gram (K, K), orders (K, K-1) int64 as for pcgrad_weights, phi_hat (K, K) the EMA
  // targets before it, beta the EMA rate.
  m.def("gradvac_weights(Tensor gram, Tensor orders, Tensor phi_hat, float beta) -> (Tensor, Tensor)");
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
  m.def("combine(Tensor[] J, Tensor weights) -> Tensor[]");
  // The same, accumulated in place onto existing tensors (the parameters' .grad).
  m.def("combine_into(Tensor[] J, Tensor weights, Tensor(a!)[] out) -> ()");
  // Per-task losses of K heads whose outputs lie side by side in logits (B, sum of sizes), task k owning
  // sizes[k] columns: softmax cross-entropy against its row of class_targets (K_classification, B) int64 with
  // F.cross_entropy's ignore_index, or, where regression[k], squared error against its columns of
  // value_targets (B, sum of regression sizes). Returns the losses, (K,) for 'mean' and 'sum', (K, B) per
  // sample for 'none', in the accumulation dtype (float32 for float16/bfloat16 logits), and their gradient
  // with respect to the logits (softmax - onehot, over N for 'mean') in the logits' dtype, for all tasks in
  // one pass.
  m.def(
      "heads_loss(Tensor logits, Tensor class_targets, Tensor value_targets, int[] sizes, bool[] regression, "
      "int ignore_index, str reduction) -> (Tensor, Tensor)");
  // The backward of heads_loss: grad's columns of task k scaled by grad_losses[k] (or, per sample, [k, b]).
  m.def("heads_loss_backward(Tensor grad_losses, Tensor grad, int[] sizes) -> Tensor");
  // The Gram engine's per-layer product: G (K, K) float64, G_ij = <A^T delta_i, A^T delta_j> for A (R, d) and
  // delta (K, R, m), through A A^T (mtl_fast/engine.py).
  m.def("ghost_gram(Tensor A, Tensor delta) -> Tensor");
}
