// nuir::gmm_backward on CUDA: the kernels and launch sequence of backward.cuh on the CUDA backend.
#include <torch/library.h>

#include "backward.cuh"
#include "cuda_backend.cuh"

TORCH_LIBRARY_IMPL(nuir, CUDA, m) {
  m.impl("gmm_backward", &nuir::gmm_backward_device<nuir::CudaBackend>);
}
