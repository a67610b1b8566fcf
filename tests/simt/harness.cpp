// Runs nuir's ops on cases read from a file and writes what they return (tests/test_simt.py):
//   harness CASES RESULTS
// CASES (torch.save of a list of dicts): name, op ("emulated": csrc/cuda on the SIMT emulator,
// or "cpu": csrc/cpu through the dispatcher), seed and resident (the emulator's schedule: its seed
// and how many blocks are resident at once), points, values, cov3, weights, height, width,
// cutoff, fill, grad_image, grad_weight (or None), masks, a list of output_masks for which to
// run the backward after the forward, and optionally backward_image and backward_weight, which
// the backward then takes instead of the forward's outputs. RESULTS (for torch.load): per case a
// dict with image, weight and grads (per mask, the four gradients), or error, the message of a
// failed check.
// The program is built with ASan and UBSan: a sanitizer report ends it.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/ivalue.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/jit/serialization/pickle.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "emulated_ops.h"
#include "simt.h"  // the emulator's schedule; last: it defines CUDA's vocabulary as macros

namespace {

using Forward = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                   const at::Tensor&, const at::Tensor&, int64_t,
                                                   int64_t, double, double);
using Backward = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double,
    std::array<bool, 4>);

std::tuple<at::Tensor, at::Tensor> cpu_forward(const at::Tensor& points, const at::Tensor& values,
                                               const at::Tensor& cov3, const at::Tensor& weights,
                                               int64_t height, int64_t width, double cutoff,
                                               double fill) {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("nuir::gmm_forward", "").typed<Forward>();
  return op.call(points, values, cov3, weights, height, width, cutoff, fill);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cpu_backward(
    const at::Tensor& grad_image, const std::optional<at::Tensor>& grad_weight,
    const at::Tensor& image, const at::Tensor& weight_map, const at::Tensor& points,
    const at::Tensor& values, const at::Tensor& cov3, const at::Tensor& weights, double cutoff,
    std::array<bool, 4> output_mask) {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("nuir::gmm_backward", "").typed<Backward>();
  return op.call(grad_image, grad_weight, image, weight_map, points, values, cov3, weights, cutoff,
                 output_mask);
}

c10::impl::GenericDict run_case(const c10::impl::GenericDict& c) {
  const bool emulated = c.at("op").toStringRef() == "emulated";
  const auto forward = emulated ? harness::emulated_forward : cpu_forward;
  const auto backward = emulated ? harness::emulated_backward : cpu_backward;
  const at::Tensor points = c.at("points").toTensor(), values = c.at("values").toTensor(),
                   cov3 = c.at("cov3").toTensor(), weights = c.at("weights").toTensor();
  const double cutoff = c.at("cutoff").toDouble();
  c10::impl::GenericDict out(c10::StringType::get(), c10::AnyType::get());
  try {
    const auto [image, weight] =
        forward(points, values, cov3, weights, c.at("height").toInt(), c.at("width").toInt(),
                cutoff, c.at("fill").toDouble());
    out.insert("image", image);
    out.insert("weight", weight);
    const bool given = c.contains("backward_image");
    const at::Tensor b_image = given ? c.at("backward_image").toTensor() : image;
    const at::Tensor b_weight = given ? c.at("backward_weight").toTensor() : weight;
    std::optional<at::Tensor> grad_weight;
    if (!c.at("grad_weight").isNone()) grad_weight = c.at("grad_weight").toTensor();
    c10::impl::GenericList grads(c10::AnyType::get());
    for (const c10::IValue& m : c.at("masks").toListRef()) {
      std::array<bool, 4> mask{};
      for (size_t i = 0; i < 4; ++i) mask[i] = m.toListRef().at(i).toBool();
      const auto [g_points, g_values, g_cov3, g_weights] =
          backward(c.at("grad_image").toTensor(), grad_weight, b_image, b_weight, points,
                   values, cov3, weights, cutoff, mask);
      grads.push_back(c10::List<at::Tensor>({g_points, g_values, g_cov3, g_weights}));
    }
    out.insert("grads", grads);
  } catch (const c10::Error& e) {
    out.insert("error", std::string(e.what_without_backtrace()));
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s CASES RESULTS\n", argv[0]);
    return 2;
  }
  c10::InferenceMode no_autograd;
  std::ifstream in(argv[1], std::ios::binary);
  const std::vector<char> bytes((std::istreambuf_iterator<char>(in)),
                                std::istreambuf_iterator<char>());
  const c10::IValue cases = torch::jit::pickle_load(bytes);
  c10::impl::GenericList results(c10::AnyType::get());
  for (const c10::IValue& item : cases.toListRef()) {
    const auto c = item.toGenericDict();
    const int64_t seed = c.at("seed").toInt(), resident = c.at("resident").toInt();
    // Context for reports, and how to run the case again alone.
    std::fprintf(stderr, "case %s (seed %lld, %lld resident)\n",
                 c.at("name").toStringRef().c_str(), static_cast<long long>(seed),
                 static_cast<long long>(resident));
    simt::set_schedule(uint32_t(seed), int(resident));
    const auto start = std::chrono::steady_clock::now();
    results.push_back(run_case(c));
    const std::chrono::duration<double> seconds = std::chrono::steady_clock::now() - start;
    std::fprintf(stderr, "  %.2f s\n", seconds.count());
  }
  const std::vector<char> data = torch::jit::pickle_save(c10::IValue(results));
  std::ofstream(argv[2], std::ios::binary).write(data.data(), std::streamsize(data.size()));
  return 0;
}
