// nuir::gmm_forward of csrc/cuda (kernels, launch sequence, op) on the SIMT emulator.
#include "emulated_ops.h"
#include "simt_backend.h"  // before the CUDA headers: it stands in for the CUDA runtime
#include "cuda/forward.cuh"

namespace harness {

std::tuple<at::Tensor, at::Tensor> emulated_forward(const at::Tensor& points,
                                                    const at::Tensor& values,
                                                    const at::Tensor& cov3,
                                                    const at::Tensor& weights, int64_t height,
                                                    int64_t width, double cutoff, double fill) {
  return nuir::gmm_forward_device<simt::Backend>(points, values, cov3, weights, height, width,
                                                 cutoff, fill);
}

}  // namespace harness
