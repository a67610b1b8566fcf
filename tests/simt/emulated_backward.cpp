// nuir::gmm_backward of csrc/cuda (kernels, launch sequence, op) on the SIMT emulator.
#include "emulated_ops.h"
#include "simt_backend.h"  // before the CUDA headers: it stands in for the CUDA runtime
#include "cuda/backward.cuh"

namespace harness {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> emulated_backward(
    const at::Tensor& grad_image, const std::optional<at::Tensor>& grad_weight,
    const at::Tensor& image, const at::Tensor& weight_map, const at::Tensor& points,
    const at::Tensor& values, const at::Tensor& cov3, const at::Tensor& weights, double cutoff,
    std::array<bool, 4> output_mask) {
  return nuir::gmm_backward_device<simt::Backend>(grad_image, grad_weight, image, weight_map,
                                                  points, values, cov3, weights, cutoff,
                                                  output_mask);
}

}  // namespace harness
