// What the CPU kernels' variants share: the headers their loops need (included here, before any
// `#pragma GCC target`, so that every inline function of these headers is compiled for the
// baseline in every file), and each variant's table of entry points.
//
// gmm_cpu_<isa>.cpp compiles the loops (gmm_cpu_kernels.h) for one instruction set into its own
// namespace; gmm_cpu.cpp picks a table at run time.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

#include "gmm_math.h"
#include "op_common.h"

// GCC on x86-64 compiles AVX2 and AVX-512 variants besides the baseline; other compilers and
// architectures, the baseline only (NEON on aarch64).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define NUIR_CPU_DISPATCH 1
#else
#define NUIR_CPU_DISPATCH 0
#endif

namespace nuir {

using ForwardKernel = void (*)(const at::Tensor& points, const at::Tensor& values,
                               const at::Tensor& cov3, const at::Tensor& weights, int64_t height,
                               int64_t width, double cutoff, double fill, at::Tensor& image,
                               at::Tensor& weight_map);
using BackwardKernel = void (*)(const at::Tensor& grad_image, const at::Tensor* grad_weight,
                                const at::Tensor& image, const at::Tensor& weight_map,
                                const at::Tensor& points, const at::Tensor& values,
                                const at::Tensor& cov3, const at::Tensor& weights, double cutoff,
                                const std::array<bool, 4>& need, at::Tensor& g_points,
                                at::Tensor& g_values, at::Tensor& g_cov3, at::Tensor& g_weights);

// A variant's kernels, by [float32, float64][channel slot: C = 1, 3, 4, any other].
struct CpuKernels {
  ForwardKernel forward[2][4];
  BackwardKernel backward[2][4];
};

// The slot of the kernels compiled for kC channels (0: any count).
constexpr int channel_slot(int kC) { return kC == 1 ? 0 : kC == 3 ? 1 : kC == 4 ? 2 : 3; }

namespace isa_baseline {
extern const CpuKernels kKernels;
}
#if NUIR_CPU_DISPATCH
namespace isa_avx2 {
extern const CpuKernels kKernels;
}
namespace isa_avx512 {
extern const CpuKernels kKernels;
}
#endif

}  // namespace nuir
