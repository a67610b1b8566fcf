// A SIMT emulator that runs the CUDA kernels and launch sequences of csrc/cuda on the CPU, for the
// tests (tests/test_simt.py, tests/test_simt_mutants.py). Include it before csrc/cuda's headers,
// in place of the CUDA runtime (simt_backend.h adds the Backend); simt.cpp holds the machine.
//
// Every CUDA thread is a ucontext fiber with its own stack. Up to `resident` blocks of a launch
// (4 unless set_schedule says otherwise) run at once, admitted in a random order as others finish,
// and one seeded scheduler interleaves the threads of all of them. A thread runs until it yields:
//   - at __syncthreads, until every live thread of its block has arrived at the same call site;
//   - at a warp operation (__shfl*_sync, __ballot_sync), until every lane its mask names has
//     arrived at the same call site with the same mask (it fails if one has exited or waits at a
//     barrier instead);
//   - before an atomic, which then runs indivisibly;
//   - before each store to global memory (anything outside its stack and its block's shared
//     memory).
// The schedule: each resident warp has a random priority, and a random ready lane of the
// highest-priority warp that has one runs next. At each yield the warp re-draws its priority with
// a chance its block drew at admission, 0, 1/16 or 1: some blocks run warp by warp, one warp far
// ahead of the others (so a missing barrier before a write shows), others switch warps at every
// yield. Each barrier re-draws its block's priorities.
//
// Loads and stores of global memory are checked for data races (simt.cpp hooks ASan's checks of
// the emulated code): two accesses to one address in a launch, one a store, by threads of
// different blocks or of one block with no barrier between, stop the run. This catches a plain
// read-modify-write where an atomic is needed even when no schedule would lose an update.
//
// Shared memory is declared with NUIR_SHARED (csrc/cuda/device_common.cuh): each block gets its
// own, every byte 0xff (NaN in every float type, -1 in every int) when the block starts, so a read
// of shared memory the block has not written shows; ASan poisons the bytes between the variables.
// Anything that would be undefined on a GPU (a mask that leaves a caller out, a deadlock, a launch
// over the hardware limits, over 48 KiB of shared memory, a sort key wider than end_bit, a data
// race on global memory) stops the program with "simt error: ...". Built with
// -fsanitize=address; the fiber switches are announced to ASan.
#pragma once

#include <cmath>  // CUDA's math functions (exp2f, ...) for the kernels
#include <cstdint>
#include <cstring>
#include <functional>
#include <new>
#include <type_traits>

// --- CUDA's vocabulary on the host --------------------------------------------------------------

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// A static would be shared by all resident blocks: csrc/cuda declares shared memory with
// NUIR_SHARED(name, type), here a reference into the block's own. The lambda's static is one per
// declaration and template instantiation, as a __shared__ variable is.
#define __shared__ static_assert(false, "declare shared memory with NUIR_SHARED");
#define NUIR_SHARED(name, ...) \
  auto& name = ::simt::shared<__VA_ARGS__>([] { static const char site = 0; return &site; }())

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct int4 {
  int x, y, z, w;
};
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }

namespace simt {

[[noreturn]] void fail(const char* format, ...) __attribute__((format(printf, 1, 2)));

// The running thread's index and block index, and its launch's block and grid sizes (copies:
// the kernel's loads of them are its own).
dim3 thread_index();
dim3 block_index();
dim3 block_size();
dim3 grid_size();

void syncthreads(const char* file, int line);

enum class WarpOp { Shfl, ShflUp, ShflDown, ShflXor, Ballot };

// Waits for the lanes `mask` names (see above); returns this lane's result bits.
uint64_t warp_exchange(WarpOp op, const char* file, int line, unsigned mask, uint64_t value,
                       size_t size, int arg, int width);

template <typename T>
T warp_op(WarpOp op, const char* file, int line, unsigned mask, T value, int arg, int width = 32) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "warp operands are at most 64 bits");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = warp_exchange(op, file, line, mask, bits, sizeof(T), arg, width);
  T result;
  std::memcpy(&result, &bits, sizeof(T));
  return result;
}

inline unsigned ballot(const char* file, int line, unsigned mask, bool predicate) {
  return warp_op<uint32_t>(WarpOp::Ballot, file, line, mask, predicate ? 1u : 0u, 0);
}

// An atomic at `address`: begin_atomic yields (other threads may run first); until end_atomic,
// the thread's accesses are no yield points, nor checked for races.
void begin_atomic(const void* address);
void end_atomic();

template <typename T>
T atomic_add(T* address, T value) {
  begin_atomic(address);
  const T old = *address;
  *address = old + value;
  end_atomic();
  return old;
}

// The bytes of the current block's shared variable declared at `site`: the first thread there
// places them (ASan-poisoned bytes around) and fills them with 0xff.
void* shared_bytes(const void* site, size_t size, size_t align);

template <typename T>
T& shared(const void* site) {
  static_assert(std::is_trivially_default_constructible_v<T> && std::is_trivially_destructible_v<T>,
                "a shared variable cannot have a constructor or destructor");
  return *std::launder(static_cast<T*>(shared_bytes(site, sizeof(T), alignof(T))));
}

// The seed of the schedules from here on (else 1), and how many blocks are resident at once
// (else 4).
void set_schedule(uint32_t seed, int resident);

// kernel<<<grid, block>>>(args...): `body` calls the kernel.
void run_grid(dim3 grid, dim3 block, std::function<void()> body);

}  // namespace simt

inline int atomicAdd(int* address, int value) { return ::simt::atomic_add(address, value); }

#define threadIdx (::simt::thread_index())
#define blockIdx (::simt::block_index())
#define blockDim (::simt::block_size())
#define gridDim (::simt::grid_size())
#define __syncthreads() ::simt::syncthreads(__FILE__, __LINE__)
#define __ballot_sync(mask, predicate) ::simt::ballot(__FILE__, __LINE__, mask, predicate)
#define __shfl_sync(mask, ...) \
  ::simt::warp_op(::simt::WarpOp::Shfl, __FILE__, __LINE__, mask, __VA_ARGS__)
#define __shfl_up_sync(mask, ...) \
  ::simt::warp_op(::simt::WarpOp::ShflUp, __FILE__, __LINE__, mask, __VA_ARGS__)
#define __shfl_down_sync(mask, ...) \
  ::simt::warp_op(::simt::WarpOp::ShflDown, __FILE__, __LINE__, mask, __VA_ARGS__)
#define __shfl_xor_sync(mask, ...) \
  ::simt::warp_op(::simt::WarpOp::ShflXor, __FILE__, __LINE__, mask, __VA_ARGS__)
