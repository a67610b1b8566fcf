// Pieces shared by the CUDA kernels of nuir::gmm_forward (forward.cuh) and nuir::gmm_backward
// (backward.cuh). The per-point maths itself lives in csrc/gmm_math.h, shared with the CPU.
//
// The kernels and their host launch sequences are plain headers: nvcc compiles them for the GPU
// (gmm_forward.cu, gmm_backward.cu), and the tests compile them with a host C++ compiler and a
// SIMT emulator (tests/simt). A launch sequence talks to the device only through a Backend:
//   Backend be(device);                       // device guard and current stream
//   be.empty(sizes, options)                  // an output tensor (uninitialised)
//   be.allocate({bytes, ...})                 // scratch buffers, alive as long as `be`
//   be.zero(ptr, bytes)                       // memset to 0, in stream order
//   be.launch(kernel, grid, block, args...)   // kernel<<<grid, block, 0, stream>>>(args...)
//   be.sort_pairs(keys_in, keys_out, values_in, values_out, n, end_bit)  // stable radix sort
// cuda_backend.cuh is the real one, tests/simt/simt.h the emulated one.
#pragma once

#include <array>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// NUIR_SHARED(name, type) declares `type name` in the block's shared memory, e.g.
// NUIR_SHARED(scratch, float[8]). The SIMT emulator (tests/simt) defines it first: there each
// block gets its own storage.
#ifndef NUIR_SHARED
#define NUIR_SHARED(name, ...) __shared__ ::std::type_identity_t<__VA_ARGS__> name
#endif

namespace nuir {
namespace cuda_detail {

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

// Blocks for one thread per item, capped: kernels that may see more items loop grid-stride.
inline unsigned grid_for(int64_t items, int threads, int64_t cap = int64_t(1) << 20) {
  const int64_t blocks = (items + threads - 1) / threads;
  return unsigned(blocks < 1 ? 1 : (blocks > cap ? cap : blocks));
}

template <typename... T, typename Backend, size_t... I>
std::tuple<T*...> allocate(Backend& be, const std::array<int64_t, sizeof...(T)>& counts,
                           std::index_sequence<I...>) {
  const std::vector<void*> pointers = be.allocate({size_t(counts[I]) * sizeof(T)...});
  return std::tuple<T*...>{static_cast<T*>(pointers[I])...};
}

// Scratch buffers of counts[i] elements of type T_i, from one be.allocate call.
template <typename... T, typename Backend>
std::tuple<T*...> allocate(Backend& be, const std::array<int64_t, sizeof...(T)>& counts) {
  return allocate<T...>(be, counts, std::index_sequence_for<T...>{});
}

}  // namespace cuda_detail
}  // namespace nuir
