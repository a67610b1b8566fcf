// A SIMT emulator that runs the CUDA kernels and launch sequences of csrc/cuda on the CPU, for the
// tests (tests/test_simt.py). Include it before csrc/cuda's headers, in place of the CUDA runtime.
//
// Every CUDA thread of a block is a ucontext fiber with its own stack; one block runs at a time.
// A fiber runs until it reaches a synchronisation point: __syncthreads waits until every live
// thread of the block has arrived at the same call site; a warp operation (__shfl*_sync,
// __ballot_sync) waits until every lane its mask names has arrived at the same call site with the
// same mask, and fails if one has exited or waits at a barrier instead. The scheduler runs the
// warps of a block, and the lanes of a warp, in a pseudo-random order, each as far as it can
// before the next: a missing barrier or warp operation shows up as stale data. __shared__
// variables are static storage. Anything that would be undefined on a GPU (a mask that leaves a
// caller out, a deadlock, a launch over the hardware limits, a sort key wider than end_bit) stops
// the program with "simt error: ...". Built with -fsanitize=address, the fiber switches are
// announced to ASan.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <random>
#include <tuple>
#include <utility>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define SIMT_ASAN 1
#else
#define SIMT_ASAN 0
#endif

// --- CUDA's vocabulary on the host --------------------------------------------------------------

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static  // one block at a time: static storage is the block's shared memory

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
inline int atomicAdd(int* address, int value) {  // one OS thread: nothing can interleave
  const int old = *address;
  *address = old + value;
  return old;
}

namespace simt {

[[noreturn]] inline void fail(const char* format, ...) {
  std::fprintf(stderr, "simt error: ");
  va_list args;
  va_start(args, format);
  std::vfprintf(stderr, format, args);
  va_end(args);
  std::fprintf(stderr, "\n");
  std::fflush(stderr);
  std::_Exit(3);
}

enum class State { Ready, AtBarrier, AtWarpOp, Done };
enum class WarpOp { Shfl, ShflUp, ShflDown, ShflXor, Ballot };
constexpr const char* kWarpOpNames[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync",
                                        "__shfl_xor_sync", "__ballot_sync"};

struct Thread {
  dim3 idx;
  State state = State::Done;
  const char* file = nullptr;  // the call site it waits at
  int line = 0;
  WarpOp op = WarpOp::Shfl;
  unsigned mask = 0;
  uint64_t value = 0, result = 0;  // operand and result bits
  size_t size = 0;                 // operand size in bytes
  int arg = 0;                     // source lane, delta or lane mask
  ucontext_t context;
  char* stack = nullptr;
  void* fake_stack = nullptr;  // ASan's, while switched out
};

constexpr size_t kStackBytes = 256 << 10;
constexpr size_t kGuardBytes = 4096;  // below each stack, PROT_NONE: an overflow faults

struct Machine {
  std::vector<Thread> threads;  // the running block's are the first `active`, x fastest
  size_t active = 0;
  Thread* current = nullptr;
  ucontext_t scheduler;
  const void* scheduler_stack = nullptr;
  size_t scheduler_stack_size = 0;
  void* scheduler_fake_stack = nullptr;
  std::function<void()> body;  // the kernel with its arguments
  dim3 block_idx, block_dim, grid_dim;
  std::mt19937 rng{uint32_t(std::getenv("SIMT_SEED") ? std::atoi(std::getenv("SIMT_SEED")) : 1)};
};

inline Machine& machine() {
  static Machine m;
  return m;
}

inline Thread& current_thread() {
  Thread* t = machine().current;
  if (t == nullptr) fail("a device built-in was used outside a kernel");
  return *t;
}

// Back to the scheduler; `done`: the fiber has finished and will not be resumed.
inline void yield(bool done = false) {
  Machine& m = machine();
  Thread& t = *m.current;
#if SIMT_ASAN
  __sanitizer_start_switch_fiber(done ? nullptr : &t.fake_stack, m.scheduler_stack,
                                 m.scheduler_stack_size);
#endif
  swapcontext(&t.context, &m.scheduler);
#if SIMT_ASAN
  __sanitizer_finish_switch_fiber(t.fake_stack, nullptr, nullptr);
#endif
}

inline void fiber_entry() {
  Machine& m = machine();
#if SIMT_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &m.scheduler_stack, &m.scheduler_stack_size);
#endif
  m.body();
  m.current->state = State::Done;
  yield(/*done=*/true);
}

inline void resume(Thread& t) {
  Machine& m = machine();
  m.current = &t;
#if SIMT_ASAN
  __sanitizer_start_switch_fiber(&m.scheduler_fake_stack, t.stack, kStackBytes);
#endif
  swapcontext(&m.scheduler, &t.context);
#if SIMT_ASAN
  __sanitizer_finish_switch_fiber(m.scheduler_fake_stack, nullptr, nullptr);
#endif
  m.current = nullptr;
}

inline const char* describe(const Thread& t) {
  static char text[160];
  const Machine& m = machine();
  std::snprintf(text, sizeof(text), "thread (%u, %u, %u) of block (%u, %u, %u)", t.idx.x, t.idx.y,
                t.idx.z, m.block_idx.x, m.block_idx.y, m.block_idx.z);
  return text;
}

// --- synchronisation ----------------------------------------------------------------------------

inline void syncthreads(const char* file, int line) {
  Thread& t = current_thread();
  t.state = State::AtBarrier, t.file = file, t.line = line;
  yield();
}

template <typename T>
T warp_op(WarpOp op, const char* file, int line, unsigned mask, T value, int arg, int width = 32) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "warp operands are at most 64 bits");
  Thread& t = current_thread();
  if (width != 32) fail("%s:%d: width %d: only whole warps are emulated", file, line, width);
  t.state = State::AtWarpOp, t.file = file, t.line = line, t.op = op, t.mask = mask, t.arg = arg;
  t.value = 0, t.size = sizeof(T);
  std::memcpy(&t.value, &value, sizeof(T));
  yield();
  T result;
  std::memcpy(&result, &t.result, sizeof(T));
  return result;
}

inline unsigned ballot(const char* file, int line, unsigned mask, bool predicate) {
  return warp_op<uint32_t>(WarpOp::Ballot, file, line, mask, predicate ? 1u : 0u, 0);
}

// Lane `lane` of the warp whose first thread is threads[base], or null past the block's end.
inline Thread* lane_thread(size_t base, int lane) {
  Machine& m = machine();
  return base + lane < m.active ? &m.threads[base + lane] : nullptr;
}

inline bool same_site(const Thread& a, const Thread& b) {
  return a.line == b.line && std::strcmp(a.file, b.file) == 0;
}

// Completes the warp operations of the warp at threads[base] whose lanes have all arrived.
// Returns whether one completed.
inline bool complete_warp_ops(size_t base) {
  bool completed = false;
  for (int lane = 0; lane < 32; ++lane) {
    Thread* t = lane_thread(base, lane);
    if (t == nullptr || t->state != State::AtWarpOp) continue;
    const char* name = kWarpOpNames[int(t->op)];
    if (!(t->mask >> lane & 1u)) {
      fail("%s:%d: %s with mask %08x leaves out its caller, %s", t->file, t->line, name, t->mask,
           describe(*t));
    }
    for (int other = 0; other < 32; ++other) {
      if (!(t->mask >> other & 1u)) continue;
      const Thread* o = lane_thread(base, other);
      if (o == nullptr || o->state == State::Done) {
        fail("%s:%d: %s with mask %08x names lane %d, which has exited or does not exist (%s)",
             t->file, t->line, name, t->mask, other, describe(*t));
      }
      if (o->state == State::AtBarrier) {
        fail("%s:%d: %s of %s waits for lane %d, which waits at __syncthreads (%s:%d)", t->file,
             t->line, name, describe(*t), other, o->file, o->line);
      }
      if (o->state == State::Ready) return completed;  // cannot happen: ready lanes run first
      if (!same_site(*o, *t) || o->op != t->op || o->mask != t->mask || o->size != t->size) {
        fail("lanes %d and %d of a warp diverge: %s at %s:%d (mask %08x) against %s at %s:%d "
             "(mask %08x), %s",
             lane, other, name, t->file, t->line, t->mask, kWarpOpNames[int(o->op)], o->file,
             o->line, o->mask, describe(*t));
      }
    }
    uint32_t votes = 0;
    for (int other = 0; other < 32; ++other) {
      if (t->mask >> other & 1u && lane_thread(base, other)->value != 0) votes |= 1u << other;
    }
    for (int other = 0; other < 32; ++other) {
      if (!(t->mask >> other & 1u)) continue;
      Thread* o = lane_thread(base, other);
      int source = other;
      switch (t->op) {
        case WarpOp::Shfl:
          source = o->arg & 31;
          break;
        case WarpOp::ShflUp:
          source = other >= o->arg ? other - o->arg : other;
          break;
        case WarpOp::ShflDown:
          source = other + o->arg < 32 ? other + o->arg : other;
          break;
        case WarpOp::ShflXor:
          source = other ^ (o->arg & 31);
          break;
        case WarpOp::Ballot:
          break;
      }
      if (!(t->mask >> source & 1u)) {
        fail("%s:%d: %s: lane %d reads lane %d, outside the mask %08x", t->file, t->line, name,
             other, source, t->mask);
      }
      o->result = t->op == WarpOp::Ballot ? votes : lane_thread(base, source)->value;
    }
    for (int other = 0; other < 32; ++other) {
      if (t->mask >> other & 1u) lane_thread(base, other)->state = State::Ready;
    }
    completed = true;
  }
  return completed;
}

// --- blocks and launches ------------------------------------------------------------------------

inline std::vector<int> shuffled(int n) {
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), machine().rng);
  return order;
}

inline char* new_stack() {
  void* memory = mmap(nullptr, kStackBytes + kGuardBytes, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) fail("cannot map a fiber stack");
  mprotect(memory, kGuardBytes, PROT_NONE);
  return static_cast<char*>(memory) + kGuardBytes;
}

inline void run_block() {
  Machine& m = machine();
  const size_t n = m.active;
  for (size_t i = 0; i < n; ++i) {
    Thread& t = m.threads[i];
    if (t.stack == nullptr) t.stack = new_stack();
    t.idx = dim3(unsigned(i % m.block_dim.x), unsigned(i / m.block_dim.x % m.block_dim.y),
                 unsigned(i / (size_t(m.block_dim.x) * m.block_dim.y)));
    t.state = State::Ready;
    getcontext(&t.context);
    t.context.uc_stack.ss_sp = t.stack;
    t.context.uc_stack.ss_size = kStackBytes;
    t.context.uc_link = nullptr;
    makecontext(&t.context, fiber_entry, 0);
  }
  const int warps = int((n + 31) / 32);
  while (true) {
    // Each warp in turn, as far as it goes: its lanes run to their next synchronisation point,
    // its warp operations complete, until every lane waits at the barrier or has exited.
    for (int warp : shuffled(warps)) {
      const size_t base = size_t(warp) * 32;
      const int lanes = int(std::min<size_t>(32, n - base));
      bool moved = true;
      while (moved) {
        moved = false;
        for (int lane : shuffled(lanes)) {
          Thread& t = m.threads[base + lane];
          if (t.state == State::Ready) resume(t), moved = true;
        }
        moved = complete_warp_ops(base) || moved;
      }
    }
    const Thread* first = nullptr;
    for (size_t i = 0; i < n; ++i) {
      const Thread& t = m.threads[i];
      if (t.state == State::AtWarpOp) {
        fail("%s:%d: %s of %s never completes", t.file, t.line, kWarpOpNames[int(t.op)],
             describe(t));
      }
      if (t.state != State::AtBarrier) continue;
      if (first == nullptr) first = &t;
      if (!same_site(t, *first)) {
        fail("threads wait at different barriers: %s at %s:%d, and %s:%d", describe(t), t.file,
             t.line, first->file, first->line);
      }
    }
    if (first == nullptr) return;  // every thread has exited
    for (size_t i = 0; i < n; ++i) {
      if (m.threads[i].state == State::AtBarrier) m.threads[i].state = State::Ready;
    }
  }
}

// kernel<<<grid, block>>>(args...): the blocks in a pseudo-random order, one at a time.
inline void run_grid(dim3 grid, dim3 block, std::function<void()> body) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || threads == 0) {
    fail("empty launch: grid (%u, %u, %u), block (%u, %u, %u)", grid.x, grid.y, grid.z, block.x,
         block.y, block.z);
  }
  if (threads > 1024 || block.z > 64 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) {
    fail("launch over the limits: grid (%u, %u, %u), block (%u, %u, %u)", grid.x, grid.y, grid.z,
         block.x, block.y, block.z);
  }
  Machine& m = machine();
  m.body = std::move(body);
  m.block_dim = block, m.grid_dim = grid;
  if (m.threads.size() < threads) m.threads.resize(threads);  // stacks are kept for reuse
  m.active = threads;
  const uint64_t blocks = uint64_t(grid.x) * grid.y * grid.z;
  std::vector<uint64_t> order(blocks);
  std::iota(order.begin(), order.end(), uint64_t(0));
  std::shuffle(order.begin(), order.end(), m.rng);
  for (uint64_t b : order) {
    m.block_idx = dim3(unsigned(b % grid.x), unsigned(b / grid.x % grid.y),
                       unsigned(b / (uint64_t(grid.x) * grid.y)));
    run_block();
  }
}

// The Backend of csrc/cuda/device_common.cuh on the emulator: tensors on the CPU, outputs and
// scratch buffers filled with NaN (bytes 0xff: NaN in every float type, -1 in every int) as
// uninitialised memory might be, each buffer its own allocation so that ASan sees overruns.
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

#define threadIdx (::simt::current_thread().idx)
#define blockIdx (::simt::machine().block_idx)
#define blockDim (::simt::machine().block_dim)
#define gridDim (::simt::machine().grid_dim)
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
