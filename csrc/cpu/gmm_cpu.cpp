// CPU kernels of nuir::gmm_forward and nuir::gmm_backward.
//
// Forward: points are binned into bands of 16 output rows by a counting sort over (band, point)
// pairs, in point order; bands run in parallel, each accumulating its numerators and total weight
// in a local buffer, point after point in a fixed order. No atomics: bitwise reproducible.
// Backward: one pass over the pixels makes g/W and <g, v>/W - dL/dW; then every point gathers over
// the pixels of its cutoff box (points in parallel), again without atomics.
//
// The loops (gmm_cpu_kernels.h) are compiled once per instruction set, each in a file of its own
// (gmm_cpu_<isa>.cpp): for the build's target ("baseline": the portable flags of nuir/_backend.py,
// 16-byte registers), and with GCC on x86-64 also for x86-64-v3 ("avx2") and x86-64-v4
// ("avx512"). Each call runs the best variant this CPU supports, or the one NUIR_CPU_ISA names. Every variant does the same operations in the same
// order on every lane: avx2 and avx512 give the same bits; the baseline, without fused
// multiply-adds, differs from them in the last bits.
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>

#include "gmm_cpu_variant.h"

namespace nuir {
namespace {

enum class Isa { kBaseline, kAvx2, kAvx512 };
constexpr const char* kIsaNames[] = {"baseline", "avx2", "avx512"};
constexpr Isa kIsas[] = {Isa::kBaseline, Isa::kAvx2, Isa::kAvx512};

// Whether this build has the variant and this CPU (and its OS) runs it.
bool runs(Isa isa) {
#if NUIR_CPU_DISPATCH
  __builtin_cpu_init();
  switch (isa) {
    case Isa::kAvx2:
      return __builtin_cpu_supports("x86-64-v3");
    case Isa::kAvx512:
      return __builtin_cpu_supports("x86-64-v4");
    default:
      return true;
  }
#else
  return isa == Isa::kBaseline;
#endif
}

std::string runnable_names() {
  std::string names;
  for (Isa isa : kIsas)
    if (runs(isa)) names += (names.empty() ? "" : " ") + std::string(kIsaNames[int(isa)]);
  return names;
}

// The variant the kernels run: the one NUIR_CPU_ISA names, else ("auto" or unset) the best one.
// The variable is read at every call, so that a benchmark can compare variants in one process.
Isa chosen_isa() {
  const char* asked = std::getenv("NUIR_CPU_ISA");
  if (asked == nullptr || *asked == '\0' || std::strcmp(asked, "auto") == 0) {
    Isa best = Isa::kBaseline;
    for (Isa isa : kIsas)
      if (runs(isa)) best = isa;
    return best;
  }
  for (Isa isa : kIsas) {
    if (std::strcmp(asked, kIsaNames[int(isa)]) != 0) continue;
    TORCH_CHECK(runs(isa), "nuir: NUIR_CPU_ISA=", asked,
                " is not available on this CPU or in this build; available: ", runnable_names());
    return isa;
  }
  TORCH_CHECK(false, "nuir: NUIR_CPU_ISA must be auto or one of ", runnable_names(), ", got '",
              asked, "'");
  return Isa::kBaseline;
}

const CpuKernels& kernels_of(Isa isa) {
  switch (isa) {
#if NUIR_CPU_DISPATCH
    case Isa::kAvx512:
      return isa_avx512::kKernels;
    case Isa::kAvx2:
      return isa_avx2::kKernels;
#endif
    default:
      return isa_baseline::kKernels;
  }
}

std::tuple<at::Tensor, at::Tensor> gmm_forward_cpu(const at::Tensor& points,
                                                   const at::Tensor& values,
                                                   const at::Tensor& cov3,
                                                   const at::Tensor& weights, int64_t height,
                                                   int64_t width, double cutoff, double fill) {
  TORCH_CHECK(height > 0 && width > 0, "nuir: height and width must be positive");
  const PointTensors in =
      checked_inputs(points, values, cov3, weights, cutoff, at::kCPU, /*half=*/false);
  TORCH_CHECK(points.size(1) < std::numeric_limits<int32_t>::max(), "nuir: too many points");
  const int64_t batch = points.size(0), channels = values.size(2);
  auto image = at::empty({batch, channels, height, width}, in.values.options());
  auto weight_map = at::empty({batch, height, width}, in.values.options());
  const CpuKernels& kernels = kernels_of(chosen_isa());
  const int precision = in.points.scalar_type() == at::kDouble;  // float32 or float64 (checked)
  dispatch_channels(channels, [&](auto kc) {
    kernels.forward[precision][channel_slot(decltype(kc)::value)](
        in.points, in.values, in.cov3, in.weights, height, width, cutoff, fill, image,
        weight_map);
  });
  return {image, weight_map};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gmm_backward_cpu(
    const at::Tensor& grad_image, const std::optional<at::Tensor>& grad_weight,
    const at::Tensor& image, const at::Tensor& weight_map, const at::Tensor& points,
    const at::Tensor& values, const at::Tensor& cov3, const at::Tensor& weights, double cutoff,
    std::array<bool, 4> output_mask) {
  const PointTensors in =
      checked_inputs(points, values, cov3, weights, cutoff, at::kCPU, /*half=*/false);
  const BackwardTensors t =
      backward_tensors(grad_image, grad_weight, image, weight_map, points, values);
  // Points that reach no pixel are not visited: their gradients stay zero.
  auto g_points = at::zeros_like(in.points), g_values = at::zeros_like(in.values),
       g_cov3 = at::zeros_like(in.cov3), g_weights = at::zeros_like(in.weights);
  const at::Tensor* gw_ptr = t.grad_weight.defined() ? &t.grad_weight : nullptr;
  const CpuKernels& kernels = kernels_of(chosen_isa());
  const int precision = in.points.scalar_type() == at::kDouble;
  dispatch_channels(values.size(2), [&](auto kc) {
    kernels.backward[precision][channel_slot(decltype(kc)::value)](
        t.grad_image, gw_ptr, t.image, t.weight_map, in.points, in.values, in.cov3, in.weights,
        cutoff, output_mask, g_points, g_values, g_cov3, g_weights);
  });
  return {g_points, g_values, g_cov3, g_weights};
}

}  // namespace

TORCH_LIBRARY_IMPL(nuir, CPU, m) {
  m.impl("gmm_forward", &gmm_forward_cpu);
  m.impl("gmm_backward", &gmm_backward_cpu);
}

}  // namespace nuir

// For nuir/_backend.py (through ctypes): the variant the kernels run now, or nullptr where
// NUIR_CPU_ISA names none that runs here; and the variants that run here, best last.
extern "C" __attribute__((visibility("default"))) const char* nuir_cpu_isa() {
  try {
    return nuir::kIsaNames[int(nuir::chosen_isa())];
  } catch (const std::exception&) {
    return nullptr;
  }
}
extern "C" __attribute__((visibility("default"))) const char* nuir_cpu_isas() {
  static const std::string names = nuir::runnable_names();
  return names.c_str();
}
