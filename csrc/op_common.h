// What the CPU (csrc/cpu) and CUDA (csrc/cuda) implementations of the two ops share on the host:
// the accumulation type, the argument checks and the dispatch over channel counts.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <type_traits>
#include <utility>

namespace nuir {

// float16 / bfloat16 / float32 accumulate in float32, float64 in float64. The weight map is
// returned in this type: a half-precision total would lose the digits the backward divides by.
template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

inline at::ScalarType acc_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

struct PointTensors {
  at::Tensor points, values, cov3, weights;
};

// The arguments both ops take, checked, the tensors made contiguous. `device`: where the kernels
// run; `half`: whether they take float16 / bfloat16. Invalid point data (NaN positions,
// covariances that are not positive definite) is not checked here, which would cost a pass over
// the data (and on a GPU a host synchronisation): the kernels give such points an empty box
// (gmm_math.h cutoff_box).
inline PointTensors checked_inputs(const at::Tensor& points, const at::Tensor& values,
                                   const at::Tensor& cov3, const at::Tensor& weights,
                                   double cutoff, c10::DeviceType device, bool half) {
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
  TORCH_CHECK(values.size(2) >= 1, "nuir: values need at least one channel");
  TORCH_CHECK(points.device().type() == device, "nuir: this kernel takes ",
              c10::DeviceTypeName(device), " tensors, got ", points.device());
  for (const auto* t : {&values, &cov3, &weights}) {
    TORCH_CHECK(t->scalar_type() == points.scalar_type(), "nuir: all inputs must share a dtype");
    TORCH_CHECK(t->device() == points.device(), "nuir: all inputs must be on one device");
  }
  const auto dtype = points.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble ||
                  (half && (dtype == at::kHalf || dtype == at::kBFloat16)),
              "nuir: the ", c10::DeviceTypeName(device), " kernel takes ",
              half ? "float16, bfloat16, float32 or float64" : "float32 or float64", ", got ",
              dtype);
  TORCH_CHECK(cutoff > 0.0, "nuir: cutoff must be > 0 (inf for none), got ", cutoff);
  return {points.contiguous(), values.contiguous(), cov3.contiguous(), weights.contiguous()};
}

// gmm_backward's other tensors against the forward's inputs; returns grad_image, image, weight
// and grad_weight (undefined if absent) contiguous, the weight map in the accumulation type.
struct BackwardTensors {
  at::Tensor grad_image, image, weight_map, grad_weight;
};

inline BackwardTensors backward_tensors(const at::Tensor& grad_image,
                                        const std::optional<at::Tensor>& grad_weight,
                                        const at::Tensor& image, const at::Tensor& weight_map,
                                        const at::Tensor& points, const at::Tensor& values) {
  TORCH_CHECK(
      image.dim() == 4 && image.size(0) == points.size(0) && image.size(1) == values.size(2),
      "nuir: image must be [B, C, H, W] matching values");
  TORCH_CHECK(weight_map.dim() == 3 && weight_map.size(0) == image.size(0) &&
                  weight_map.size(1) == image.size(2) && weight_map.size(2) == image.size(3),
              "nuir: weight must be [B, H, W] matching image");
  TORCH_CHECK(grad_image.sizes() == image.sizes(), "nuir: grad_image must match image");
  const bool has_gw = grad_weight.has_value() && grad_weight->defined();
  TORCH_CHECK(!has_gw || grad_weight->sizes() == weight_map.sizes(),
              "nuir: grad_weight must match weight");
  for (const auto* t : {&grad_image, &image, &weight_map}) {
    TORCH_CHECK(t->device() == points.device(), "nuir: all inputs must be on one device");
  }
  TORCH_CHECK(!has_gw || grad_weight->device() == points.device(),
              "nuir: all inputs must be on one device");
  const auto dtype = points.scalar_type();
  const auto acc = acc_dtype(dtype);
  return {grad_image.contiguous().to(dtype), image.contiguous().to(dtype),
          weight_map.contiguous().to(acc),
          has_gw ? grad_weight->contiguous().to(dtype) : at::Tensor()};
}

// Calls fn(std::integral_constant<int, kC>) with kC = C for C in {1, 3, 4}, else kC = 0 (the
// generic path, which takes the channel count at run time).
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

}  // namespace nuir
