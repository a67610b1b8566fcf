// The two ops of csrc/cuda compiled for the SIMT emulator (emulated_forward.cpp,
// emulated_backward.cpp), with the schemas' signatures.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>

namespace harness {

std::tuple<at::Tensor, at::Tensor> emulated_forward(const at::Tensor& points,
                                                    const at::Tensor& values,
                                                    const at::Tensor& cov3,
                                                    const at::Tensor& weights, int64_t height,
                                                    int64_t width, double cutoff, double fill);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> emulated_backward(
    const at::Tensor& grad_image, const std::optional<at::Tensor>& grad_weight,
    const at::Tensor& image, const at::Tensor& weight_map, const at::Tensor& points,
    const at::Tensor& values, const at::Tensor& cov3, const at::Tensor& weights, double cutoff,
    std::array<bool, 4> output_mask);

}  // namespace harness
