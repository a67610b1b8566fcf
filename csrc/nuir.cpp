// The operator schemas, written once: in kSchemas below. nuir/ops.py reads these string literals
// and defines the ops from Python when nuir is imported, before any compiled code is loaded, with
// their fake (meta) and autograd kernels. Device kernels register themselves in csrc/cpu and
// csrc/cuda. The fragment below defines an op only where nothing has yet: in a Python process
// nuir/ops.py has; a program without Python (tests/simt's harness) gets the definitions here.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <string>

namespace {

// nuir/ops.py parses this array: C string literals and // comments only.
constexpr const char* kSchemas[] = {
    // image [B, C, H, W], weight [B, H, W] from points [B, N, 2], values [B, N, C],
    // cov3 [B, N, 3] = (sxx, sxy, syy), weights [B, N].
    "gmm_forward(Tensor points, Tensor values, Tensor cov3, Tensor weights, int height, "
    "int width, float cutoff, float fill) -> (Tensor, Tensor)",
    // Gradients with respect to points, values, cov3 and weights. A kernel may skip the work of a
    // gradient whose output_mask entry is false; that output is then all zeros.
    "gmm_backward(Tensor grad_image, Tensor? grad_weight, Tensor image, Tensor weight, "
    "Tensor points, Tensor values, Tensor cov3, Tensor weights, float cutoff, "
    "bool[4] output_mask=[True, True, True, True]) -> (Tensor, Tensor, Tensor, Tensor)",
};

}  // namespace

TORCH_LIBRARY_FRAGMENT(nuir, m) {
  for (const char* schema : kSchemas) {
    const std::string text(schema);
    const c10::OperatorName name("nuir::" + text.substr(0, text.find('(')), "");
    if (!c10::Dispatcher::singleton().findSchema(name).has_value()) m.def(schema);
  }
}
