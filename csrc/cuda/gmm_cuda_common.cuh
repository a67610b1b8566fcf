// Pieces shared by the CUDA kernels of nuir::gmm_forward (gmm_forward.cu) and nuir::gmm_backward
// (gmm_backward.cu). The per-point maths itself lives in csrc/gmm_math.h, shared with the CPU.
//
// Only c10/cuda headers are used (not ATen/cuda/CUDAContext.h, which pulls in cuBLAS / cuSPARSE
// headers): c10::cuda::getCurrentCUDAStream is the function at::cuda::getCurrentCUDAStream names.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "gmm_math.h"

namespace nuir {
namespace cuda_detail {

// float16 / bfloat16 / float32 accumulate in float32, float64 in float64.
template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// exp(-m2 / 2). float: one MUFU.EX2-based exp2f (max 2 ulp) on a pre-scaled argument;
// double: the correctly handled double exp.
__device__ __forceinline__ float exp_neg_half(float m2) {
  return exp2f(m2 * -0.72134752044448170368f);  // -log2(e) / 2
}
__device__ __forceinline__ double exp_neg_half(double m2) { return exp(-0.5 * m2); }

// Sum over the 32 lanes of a warp by a fixed butterfly: the same inputs give the same bits.
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Largest coordinate the kernels index with 32-bit ints (with room for a loop step past the end).
constexpr int64_t kMaxSide = (int64_t(1) << 30);

inline void check_inputs_cuda(const at::Tensor& points, const at::Tensor& values,
                              const at::Tensor& cov3, const at::Tensor& weights) {
  TORCH_CHECK(points.dim() == 3 && points.size(2) == 2, "nuir: points must be [B, N, 2]");
  TORCH_CHECK(
      values.dim() == 3 && values.size(0) == points.size(0) && values.size(1) == points.size(1),
      "nuir: values must be [B, N, C] matching points");
  TORCH_CHECK(cov3.dim() == 3 && cov3.size(2) == 3 && cov3.size(0) == points.size(0) &&
                  cov3.size(1) == points.size(1),
              "nuir: cov3 must be [B, N, 3] matching points");
  TORCH_CHECK(
      weights.dim() == 2 && weights.size(0) == points.size(0) && weights.size(1) == points.size(1),
      "nuir: weights must be [B, N] matching points");
  TORCH_CHECK(points.is_cuda(), "nuir: the CUDA kernel needs CUDA tensors");
  for (const auto* t : {&values, &cov3, &weights}) {
    TORCH_CHECK(t->scalar_type() == points.scalar_type(), "nuir: all inputs must share a dtype");
    TORCH_CHECK(t->device() == points.device(), "nuir: all inputs must be on one device");
  }
  const auto dtype = points.scalar_type();
  TORCH_CHECK(
      dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
      "nuir: the CUDA kernel takes float16, bfloat16, float32 or float64");
  TORCH_CHECK(values.size(2) >= 1, "nuir: values need at least one channel");
  TORCH_CHECK(points.size(0) * points.size(1) < std::numeric_limits<int32_t>::max(),
              "nuir: too many points (B * N must be < 2^31)");
}

// Calls fn(std::integral_constant<int, kC>) with kC = C for C in {1, 3, 4}, else kC = 0
// (the generic path, which handles channels in groups of four).
template <typename Fn>
void dispatch_channels(int64_t channels, Fn&& fn) {
  switch (channels) {
    case 1:
      fn(std::integral_constant<int, 1>{});
      break;
    case 3:
      fn(std::integral_constant<int, 3>{});
      break;
    case 4:
      fn(std::integral_constant<int, 4>{});
      break;
    default:
      fn(std::integral_constant<int, 0>{});
  }
}

// One device allocation carved into aligned pieces: fewer trips to the caching allocator.
class Workspace {
 public:
  void add(size_t bytes) { offsets_.push_back(total_), total_ += round_up(bytes); }
  void allocate(const at::Tensor& like) {
    buffer_ = at::empty({int64_t(total_ > 0 ? total_ : 1)}, like.options().dtype(at::kByte));
  }
  void* raw(size_t index) const {
    return static_cast<uint8_t*>(buffer_.data_ptr()) + offsets_[index];
  }
  template <typename T>
  T* get(size_t index) const {
    return static_cast<T*>(raw(index));
  }

 private:
  static size_t round_up(size_t bytes) { return (bytes + 255) / 256 * 256; }
  std::vector<size_t> offsets_;
  size_t total_ = 0;
  at::Tensor buffer_;
};

// Blocks for one thread per item, capped: kernels that may see more items loop grid-stride.
inline unsigned grid_for(int64_t items, int threads, int64_t cap = int64_t(1) << 20) {
  const int64_t blocks = (items + threads - 1) / threads;
  return unsigned(blocks < 1 ? 1 : (blocks > cap ? cap : blocks));
}

}  // namespace cuda_detail
}  // namespace nuir
