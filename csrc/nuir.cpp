// The operator schemas, declared once. Device kernels register themselves in csrc/cpu and
// csrc/cuda; autograd and fake (meta) kernels are registered from Python (nuir/ops.py).
#include <torch/library.h>

TORCH_LIBRARY(nuir, m) {
  // image [B, C, H, W], weight [B, H, W] from points [B, N, 2], values [B, N, C],
  // cov3 [B, N, 3] = (sxx, sxy, syy), weights [B, N].
  m.def(
      "gmm_forward(Tensor points, Tensor values, Tensor cov3, Tensor weights, int height, "
      "int width, float cutoff, float fill) -> (Tensor, Tensor)");
  // Gradients with respect to points, values, cov3 and weights. A kernel may skip the work of a
  // gradient whose output_mask entry is false; that output is then all zeros.
  m.def(
      "gmm_backward(Tensor grad_image, Tensor? grad_weight, Tensor image, Tensor weight, "
      "Tensor points, Tensor values, Tensor cov3, Tensor weights, float cutoff, "
      "bool[4] output_mask=[True, True, True, True]) -> (Tensor, Tensor, Tensor, Tensor)");
}
