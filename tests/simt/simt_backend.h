// The Backend of csrc/cuda/device_common.cuh on the SIMT emulator of simt.h: include it before
// csrc/cuda's headers.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "simt.h"

namespace simt {

// Tensors on the CPU, outputs and scratch buffers filled with NaN (bytes 0xff: NaN in every float
// type, -1 in every int) as uninitialised memory might be, each buffer its own allocation so that
// ASan sees overruns.
class Backend {
 public:
  static constexpr c10::DeviceType kDevice = c10::DeviceType::CPU;

  explicit Backend(const at::Device&) {}

  at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
    return at::empty(sizes, options).fill_(NAN);
  }

  std::vector<void*> allocate(const std::vector<size_t>& bytes) {
    std::vector<void*> pointers;
    for (size_t size : bytes) {
      buffers_.emplace_back(new uint8_t[size]);
      std::memset(buffers_.back().get(), 0xff, size);
      pointers.push_back(buffers_.back().get());
    }
    return pointers;
  }

  void zero(void* ptr, size_t bytes) { std::memset(ptr, 0, bytes); }

  template <typename... Params, typename... Args>
  void launch(void (*kernel)(Params...), dim3 grid, dim3 block, Args&&... args) {
    std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
    run_grid(grid, block, [kernel, &params] { std::apply(kernel, params); });
  }

  // cub::DeviceRadixSort::SortPairs: stable, on the key bits [0, end_bit).
  template <typename Key>
  void sort_pairs(const Key* keys_in, Key* keys_out, const int32_t* values_in,
                  int32_t* values_out, int n, int end_bit) {
    std::vector<int> order(n);
    std::iota(order.begin(), order.end(), 0);
    for (int i = 0; i < n; ++i) {
      if (end_bit < int(8 * sizeof(Key)) && keys_in[i] >> end_bit != 0) {
        fail("sort key %llu of item %d has bits above end_bit %d",
             static_cast<unsigned long long>(keys_in[i]), i, end_bit);
      }
    }
    std::stable_sort(order.begin(), order.end(),
                     [&](int a, int b) { return keys_in[a] < keys_in[b]; });
    for (int i = 0; i < n; ++i) {
      keys_out[i] = keys_in[order[i]];
      values_out[i] = values_in[order[i]];
    }
  }

 private:
  std::vector<std::unique_ptr<uint8_t[]>> buffers_;
};

}  // namespace simt

// Mutant builds (tests/test_simt_mutants.py): the ops for float64 only, a third faster to compile.
#ifdef SIMT_FLOAT64_ONLY
#include <ATen/Dispatch.h>
#undef AT_DISPATCH_FLOATING_TYPES_AND2
#define AT_DISPATCH_FLOATING_TYPES_AND2(half, bfloat16, TYPE, NAME, ...) \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kDouble, __VA_ARGS__))
#endif
