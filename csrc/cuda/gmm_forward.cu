// nuir::gmm_forward on CUDA: the kernels and launch sequence of forward.cuh on the CUDA backend.
#include <torch/library.h>

#include "cuda_backend.cuh"
#include "forward.cuh"

TORCH_LIBRARY_IMPL(nuir, CUDA, m) {
  m.impl("gmm_forward", &nuir::gmm_forward_device<nuir::CudaBackend>);
}
