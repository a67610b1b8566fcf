// The Backend (see device_common.cuh) that runs the launch sequences on a CUDA device: the
// tensors' device, its current stream, the caching allocator and cub's radix sort.
//
// Only c10/cuda headers are used (not ATen/cuda/CUDAContext.h, which pulls in cuBLAS / cuSPARSE
// headers): c10::cuda::getCurrentCUDAStream is the function at::cuda::getCurrentCUDAStream names.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <cub/device/device_radix_sort.cuh>
#include <utility>
#include <vector>

namespace nuir {

class CudaBackend {
 public:
  static constexpr c10::DeviceType kDevice = c10::DeviceType::CUDA;

  explicit CudaBackend(const at::Device& device)
      : guard_(device), stream_(c10::cuda::getCurrentCUDAStream(device.index())), device_(device) {}

  at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
    return at::empty(sizes, options);
  }

  // One allocation carved into 256-byte aligned pieces: one trip to the caching allocator.
  std::vector<void*> allocate(const std::vector<size_t>& bytes) {
    std::vector<size_t> offsets;
    size_t total = 0;
    for (size_t b : bytes) offsets.push_back(total), total += (b + 255) / 256 * 256;
    scratch_.push_back(at::empty({int64_t(total > 0 ? total : 1)},
                                 at::TensorOptions().dtype(at::kByte).device(device_)));
    std::vector<void*> pointers;
    for (size_t offset : offsets) {
      pointers.push_back(static_cast<uint8_t*>(scratch_.back().data_ptr()) + offset);
    }
    return pointers;
  }

  void zero(void* ptr, size_t bytes) { C10_CUDA_CHECK(cudaMemsetAsync(ptr, 0, bytes, stream_)); }

  template <typename... Params, typename... Args>
  void launch(void (*kernel)(Params...), dim3 grid, dim3 block, Args&&... args) {
    kernel<<<grid, block, 0, stream_>>>(std::forward<Args>(args)...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  template <typename Key>
  void sort_pairs(const Key* keys_in, Key* keys_out, const int32_t* values_in,
                  int32_t* values_out, int n, int end_bit) {
    size_t bytes = 0;
    C10_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, keys_in, keys_out, values_in,
                                                   values_out, n, 0, end_bit, stream_));
    void* temp = allocate({bytes})[0];
    C10_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, bytes, keys_in, keys_out, values_in,
                                                   values_out, n, 0, end_bit, stream_));
  }

 private:
  c10::cuda::CUDAGuard guard_;
  cudaStream_t stream_;
  at::Device device_;
  std::vector<at::Tensor> scratch_;  // freed with the backend, in stream order
};

}  // namespace nuir
