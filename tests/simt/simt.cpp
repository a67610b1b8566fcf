// The machine behind simt.h: fibers, resident blocks, the scheduler, shared memory, and the hooks
// on the emulated code's memory accesses. Compiled with optimisation (the emulated code is not):
// the scheduler takes a third of the run time at -O0.
//
// The emulated ops are compiled with --param asan-instrumentation-with-call-threshold=0, so that
// ASan checks each load and store with a call to __asan_load<size> or __asan_store<size>, which
// the link redirects to __wrap___asan_... below (-Wl,--wrap=...): after ASan's own check, a
// kernel's access to global memory is checked for races, and a store yields. GCC leaves out the
// store check of a read-modify-write (`*p += v` checks the load only), so such a store is never
// a yield point; the race check sees it as a change of the value since the load.
#include "simt.h"

#include <sys/mman.h>
#include <ucontext.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <random>
#include <memory>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define SIMT_ASAN 1
#else
#define SIMT_ASAN 0
#endif

namespace simt {

void fail(const char* format, ...) {
  std::fprintf(stderr, "simt error: ");
  va_list args;
  va_start(args, format);
  std::vfprintf(stderr, format, args);
  va_end(args);
  std::fprintf(stderr, "\n");
  std::fflush(stderr);
  std::_Exit(3);
}

namespace {

enum class State { Ready, AtBarrier, AtWarpOp, Done };
constexpr const char* kWarpOpNames[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync",
                                        "__shfl_xor_sync", "__ballot_sync"};

struct Block;

struct Thread {
  dim3 idx;
  Block* block = nullptr;
  State state = State::Done;
  bool in_atomic = false;
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

struct Warp {
  uint32_t priority = 0;
  int runnable = 0;            // lanes in State::Ready, running or not
  std::vector<Thread*> ready;  // lanes waiting to run
};

constexpr size_t kStackBytes = 256 << 10;
constexpr size_t kGuardBytes = 4096;       // below each stack, PROT_NONE: an overflow faults
constexpr size_t kSharedLimit = 48 << 10;  // static shared memory per block, as in CUDA
constexpr size_t kSharedRedzone = 64;      // poisoned bytes after each variable
constexpr size_t kSharedArena = kSharedLimit + (16 << 10);  // with alignment and redzones
// Chances (of 2^32) that a yield re-draws the warp's priority; each block draws one.
constexpr uint32_t kSwitchChances[] = {0, 1u << 28, 0xffffffffu};

// A resident block: its threads (x fastest), warps and shared memory.
struct Block {
  dim3 idx;
  uint64_t linear = 0;  // x fastest
  uint32_t epoch = 0;   // barriers passed
  bool resident = false;
  std::vector<Thread> threads;
  size_t n_threads = 0, live = 0, at_barrier = 0;
  std::vector<Warp> warps;
  uint32_t switch_chance = 0;
  std::unique_ptr<uint8_t[]> shared;
  size_t shared_used = 0, shared_declared = 0;
  std::vector<std::pair<const void*, size_t>> shared_sites;  // declaration site, offset
};

// The last plain access to each global address in the current launch (atomics excepted).
struct Access {
  uintptr_t address = 0;
  uint64_t launch = 0;  // the slot is empty unless this is the current launch
  uint64_t value = 0;   // loads: the first bytes there before the load
  uint64_t block = 0;
  uint32_t thread = 0, epoch = 0;
  bool store = false, none = true;  // none: no access to remember (after an atomic)
};

class AccessTable {
 public:
  // The record of `address` in launch `launch`, a new one (none) if absent.
  Access& at(uintptr_t address, uint64_t launch) {
    if (launch != launch_) launch_ = launch, used_ = 0;
    if (2 * (used_ + 1) > slots_.size()) grow();
    for (size_t i = slot(address);; i = (i + 1) & (slots_.size() - 1)) {
      Access& a = slots_[i];
      if (a.launch == launch && a.address == address) return a;
      if (a.launch != launch) {
        a = Access{};
        a.address = address, a.launch = launch;
        ++used_;
        return a;
      }
    }
  }

 private:
  size_t slot(uintptr_t address) const {
    return size_t((address * 0x9e3779b97f4a7c15ull) >> shift_);
  }

  void grow() {
    std::vector<Access> old(std::max<size_t>(size_t(1) << 16, 2 * slots_.size()));
    old.swap(slots_);
    shift_ = 64 - __builtin_ctzll(slots_.size());
    for (const Access& a : old) {
      if (a.launch != launch_) continue;
      size_t i = slot(a.address);
      while (slots_[i].launch == launch_) i = (i + 1) & (slots_.size() - 1);
      slots_[i] = a;
    }
  }

  std::vector<Access> slots_;  // a power of two of them
  int shift_ = 64;
  uint64_t launch_ = 0;
  size_t used_ = 0;
};

struct Machine {
  std::vector<std::unique_ptr<Block>> slots;
  int resident = 4;  // blocks at once; set_schedule sets it and the seed
  Thread* current = nullptr;
  ucontext_t scheduler;
  const void* scheduler_stack = nullptr;
  size_t scheduler_stack_size = 0;
  void* scheduler_fake_stack = nullptr;
  std::function<void()> body;  // the kernel with its arguments
  dim3 block_dim, grid_dim;
  std::mt19937 rng{1};
  // The warp pick() chose last; `rescan`: a priority or a warp's readiness has changed since.
  Warp* best = nullptr;
  bool rescan = true;
  uint64_t launch = 0;
  AccessTable accesses;
};

Machine& machine() {
  static Machine m;
  return m;
}

Thread& current_thread() {
  Thread* t = machine().current;
  if (t == nullptr) fail("a device built-in was used outside a kernel");
  return *t;
}

// Back to the scheduler; `done`: the fiber has finished and will not be resumed.
void yield(bool done = false) {
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

void fiber_entry() {
  Machine& m = machine();
#if SIMT_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &m.scheduler_stack, &m.scheduler_stack_size);
#endif
  m.body();
  m.current->state = State::Done;
  yield(/*done=*/true);
}

void resume(Thread& t) {
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
  // ASan's swapcontext clears the shadow of the whole stack it switches to; once, at the
  // fiber's start, is enough (makecontext uses uc_stack, swapcontext does not).
  t.context.uc_stack.ss_size = 0;
}

// "thread (x, y, z) of block (x, y, z)" of the current launch, from linear indices (x fastest).
std::string describe(uint64_t block, uint32_t thread) {
  const dim3 g = machine().grid_dim, b = machine().block_dim;
  char text[160];
  std::snprintf(text, sizeof(text), "thread (%u, %u, %u) of block (%u, %u, %u)", thread % b.x,
                thread / b.x % b.y, thread / (b.x * b.y), unsigned(block % g.x),
                unsigned(block / g.x % g.y), unsigned(block / (uint64_t(g.x) * g.y)));
  return text;
}

uint32_t thread_of(const Thread& t) { return uint32_t(&t - t.block->threads.data()); }

std::string describe(const Thread& t) { return describe(t.block->linear, thread_of(t)); }

bool same_site(const Thread& a, const Thread& b) {
  return a.line == b.line && (a.file == b.file || std::strcmp(a.file, b.file) == 0);
}

// Lane `lane` of warp `warp` of block b, or null past the block's end.
Thread* lane_thread(Block& b, int warp, int lane) {
  const size_t i = size_t(warp) * 32 + lane;
  return i < b.n_threads ? &b.threads[i] : nullptr;
}

int warp_of(const Block& b, const Thread& t) { return int(&t - b.threads.data()) / 32; }

void make_ready(Block& b, Thread& t) {
  Warp& w = b.warps[warp_of(b, t)];
  t.state = State::Ready;
  ++w.runnable;
  w.ready.push_back(&t);
  machine().rescan = true;
}

// Completes the warp operations of warp `warp` of block b, none of whose lanes can run.
void complete_warp_ops(Block& b, int warp) {
  for (int lane = 0; lane < 32; ++lane) {
    Thread* t = lane_thread(b, warp, lane);
    if (t == nullptr || t->state != State::AtWarpOp) continue;
    const char* name = kWarpOpNames[int(t->op)];
    if (!(t->mask >> lane & 1u)) {
      fail("%s:%d: %s with mask %08x leaves out its caller, %s", t->file, t->line, name, t->mask,
           describe(*t).c_str());
    }
    for (int other = 0; other < 32; ++other) {
      if (!(t->mask >> other & 1u)) continue;
      const Thread* o = lane_thread(b, warp, other);
      if (o == nullptr || o->state == State::Done) {
        fail("%s:%d: %s with mask %08x names lane %d, which has exited or does not exist (%s)",
             t->file, t->line, name, t->mask, other, describe(*t).c_str());
      }
      if (o->state == State::AtBarrier) {
        fail("%s:%d: %s of %s waits for lane %d, which waits at __syncthreads (%s:%d)", t->file,
             t->line, name, describe(*t).c_str(), other, o->file, o->line);
      }
      if (!same_site(*o, *t) || o->op != t->op || o->mask != t->mask || o->size != t->size) {
        fail("lanes %d and %d of a warp diverge: %s at %s:%d (mask %08x) against %s at %s:%d "
             "(mask %08x), %s",
             lane, other, name, t->file, t->line, t->mask, kWarpOpNames[int(o->op)], o->file,
             o->line, o->mask, describe(*t).c_str());
      }
    }
    uint32_t votes = 0;
    for (int other = 0; other < 32; ++other) {
      if (t->mask >> other & 1u && lane_thread(b, warp, other)->value != 0) votes |= 1u << other;
    }
    for (int other = 0; other < 32; ++other) {
      if (!(t->mask >> other & 1u)) continue;
      Thread* o = lane_thread(b, warp, other);
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
      o->result = t->op == WarpOp::Ballot ? votes : lane_thread(b, warp, source)->value;
    }
    for (int other = 0; other < 32; ++other) {
      if (t->mask >> other & 1u) make_ready(b, *lane_thread(b, warp, other));
    }
  }
}

// Releases block b's barrier once every live thread waits at it, all at the same call site.
void release_barrier(Block& b) {
  if (b.at_barrier == 0 || b.at_barrier != b.live) return;
  const Thread* first = nullptr;
  for (size_t i = 0; i < b.n_threads; ++i) {
    const Thread& t = b.threads[i];
    if (t.state != State::AtBarrier) continue;
    if (first == nullptr) first = &t;
    if (!same_site(t, *first)) {
      fail("threads wait at different barriers: %s at %s:%d, and %s:%d", describe(t).c_str(),
           t.file, t.line, first->file, first->line);
    }
  }
  for (Warp& w : b.warps) w.priority = uint32_t(machine().rng());
  machine().rescan = true;
  for (size_t i = 0; i < b.n_threads; ++i) {
    if (b.threads[i].state == State::AtBarrier) make_ready(b, b.threads[i]);
  }
  b.at_barrier = 0;
  ++b.epoch;
}

char* new_stack() {
  void* memory = mmap(nullptr, kStackBytes + kGuardBytes, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) fail("cannot map a fiber stack");
  mprotect(memory, kGuardBytes, PROT_NONE);
  return static_cast<char*>(memory) + kGuardBytes;
}

// Block `index` (x fastest) of the launch into slot b, its threads ready at the kernel's start,
// its shared memory all poisoned.
void admit(Block& b, uint64_t index) {
  Machine& m = machine();
  const dim3 grid = m.grid_dim, block = m.block_dim;
  const size_t n = size_t(block.x) * block.y * block.z;
  b.idx = dim3(unsigned(index % grid.x), unsigned(index / grid.x % grid.y),
               unsigned(index / (uint64_t(grid.x) * grid.y)));
  b.linear = index, b.epoch = 0;
  b.resident = true;
  if (b.threads.size() < n) b.threads.resize(n);  // before makecontext: stacks are kept for reuse
  b.n_threads = n, b.live = n, b.at_barrier = 0;
  b.warps.resize((n + 31) / 32);
  for (Warp& w : b.warps) {
    w.priority = uint32_t(m.rng()), w.runnable = 0;
    w.ready.clear();  // keeps its capacity
  }
  b.switch_chance = kSwitchChances[m.rng() % std::size(kSwitchChances)];
  if (!b.shared) b.shared.reset(new uint8_t[kSharedArena]);
#if SIMT_ASAN
  ASAN_POISON_MEMORY_REGION(b.shared.get(), kSharedArena);
#endif
  b.shared_used = 0, b.shared_declared = 0;
  b.shared_sites.clear();
  for (size_t i = 0; i < n; ++i) {
    Thread& t = b.threads[i];
    if (t.stack == nullptr) t.stack = new_stack();
    t.idx = dim3(unsigned(i % block.x), unsigned(i / block.x % block.y),
                 unsigned(i / (size_t(block.x) * block.y)));
    t.block = &b;
    t.in_atomic = false;
    getcontext(&t.context);
    t.context.uc_stack.ss_sp = t.stack;
    t.context.uc_stack.ss_size = kStackBytes;
    t.context.uc_link = nullptr;
    makecontext(&t.context, fiber_entry, 0);
    make_ready(b, t);
  }
}

// The next fiber to run: a random ready lane of the highest-priority warp that has one.
Thread* pick() {
  Machine& m = machine();
  if (m.rescan || m.best == nullptr || m.best->ready.empty()) {
    m.best = nullptr, m.rescan = false;
    for (const auto& slot : m.slots) {
      if (!slot->resident) continue;
      for (Warp& w : slot->warps) {
        if (!w.ready.empty() && (m.best == nullptr || w.priority > m.best->priority)) m.best = &w;
      }
    }
  }
  Warp* best = m.best;
  if (best == nullptr) return nullptr;
  const size_t i = m.rng() % best->ready.size();
  Thread* t = best->ready[i];
  best->ready[i] = best->ready.back();
  best->ready.pop_back();
  return t;
}

[[noreturn]] void deadlock() {
  for (const auto& slot : machine().slots) {
    if (!slot->resident) continue;
    for (size_t i = 0; i < slot->n_threads; ++i) {
      const Thread& t = slot->threads[i];
      if (t.state == State::AtWarpOp) {
        fail("%s:%d: %s of %s never completes", t.file, t.line, kWarpOpNames[int(t.op)],
             describe(t).c_str());
      }
      if (t.state == State::AtBarrier) {
        fail("%s:%d: the barrier of %s never completes", t.file, t.line, describe(t).c_str());
      }
    }
  }
  fail("deadlock");
}

// The kernel's thread if the emulated code runs one and `address` is in global memory (not its
// stack, nor its block's shared memory), else null.
Thread* global_access(uintptr_t address) {
  Thread* t = machine().current;
  if (t == nullptr || t->in_atomic) return nullptr;
  const auto* p = reinterpret_cast<const char*>(address);
  if (p >= t->stack && p < t->stack + kStackBytes) return nullptr;
  const auto* shared = reinterpret_cast<const char*>(t->block->shared.get());
  if (p >= shared && p < shared + kSharedArena) return nullptr;
  return t;
}

// Fails if thread t's access to global memory at `address` races with the last one there: both
// in this launch, by two threads of different blocks, or of one block with no barrier between,
// and one of them a store. A store that ASan does not check (GCC leaves out the store check of a
// read-modify-write, `*p += v`) shows as a change of the value since the other thread's load.
void check_race(Thread& t, uintptr_t address, size_t size, bool store) {
  Machine& m = machine();
  const Block& b = *t.block;
  uint64_t now = 0;
  if (!store) std::memcpy(&now, reinterpret_cast<const void*>(address), std::min<size_t>(size, 8));
  Access& last = m.accesses.at(address, m.launch);
  const bool same_thread = last.block == b.linear && last.thread == thread_of(t);
  const bool ordered = last.block == b.linear && last.epoch != b.epoch;
  if (!last.none && !same_thread && !ordered) {
    const char* before = nullptr;
    if (last.store) {
      before = "stored to it";
    } else if (store) {
      before = "loaded it";
    } else if (now != last.value) {
      before = "loaded it and then stored to it (a read-modify-write that needs an atomic?)";
    }
    if (before != nullptr) {
#if SIMT_ASAN
      __sanitizer_print_stack_trace();
#endif
      fail("data race on global memory at %p: %s %s it, after %s %s, with no barrier between",
           reinterpret_cast<void*>(address), describe(t).c_str(), store ? "stores to" : "loads",
           describe(last.block, last.thread).c_str(), before);
    }
  }
  last.none = false, last.store = store, last.value = now;
  last.block = b.linear, last.thread = thread_of(t), last.epoch = b.epoch;
}

// Before each load and store of the emulated code: a kernel's access to global memory is checked
// for races; a store yields first.
void before_load(uintptr_t address, size_t size) {
  if (Thread* t = global_access(address)) check_race(*t, address, size, false);
}

void before_store(uintptr_t address, size_t size) {
  if (Thread* t = global_access(address)) {
    check_race(*t, address, size, true);
    yield();
  }
}

}  // namespace

dim3 thread_index() { return current_thread().idx; }
dim3 block_index() { return current_thread().block->idx; }
dim3 block_size() { return machine().block_dim; }
dim3 grid_size() { return machine().grid_dim; }

void syncthreads(const char* file, int line) {
  Thread& t = current_thread();
  t.state = State::AtBarrier, t.file = file, t.line = line;
  yield();
}

uint64_t warp_exchange(WarpOp op, const char* file, int line, unsigned mask, uint64_t value,
                       size_t size, int arg, int width) {
  Thread& t = current_thread();
  if (width != 32) fail("%s:%d: width %d: only whole warps are emulated", file, line, width);
  t.state = State::AtWarpOp, t.file = file, t.line = line, t.op = op, t.mask = mask, t.arg = arg;
  t.value = value, t.size = size;
  yield();
  return t.result;
}

void begin_atomic(const void* address) {
  Thread& t = current_thread();
  yield();
  t.in_atomic = true;
  Machine& m = machine();
  m.accesses.at(reinterpret_cast<uintptr_t>(address), m.launch).none = true;
}

void end_atomic() { current_thread().in_atomic = false; }

void* shared_bytes(const void* site, size_t size, size_t align) {
  Block& b = *current_thread().block;
  for (const auto& [s, offset] : b.shared_sites) {
    if (s == site) return b.shared.get() + offset;
  }
  b.shared_declared += size;
  if (b.shared_declared > kSharedLimit) {
    fail("block (%u, %u, %u) declares %zu bytes of shared memory, over %zu", b.idx.x, b.idx.y,
         b.idx.z, b.shared_declared, kSharedLimit);
  }
  align = std::max<size_t>(align, 16);
  const size_t offset = (b.shared_used + align - 1) / align * align;
  if (offset + size + kSharedRedzone > kSharedArena) fail("too many shared variables");
  b.shared_used = offset + size + kSharedRedzone;
  uint8_t* p = b.shared.get() + offset;
#if SIMT_ASAN
  ASAN_UNPOISON_MEMORY_REGION(p, size);
#endif
  std::memset(p, 0xff, size);
  b.shared_sites.emplace_back(site, offset);
  return p;
}

void set_schedule(uint32_t seed, int resident) {
  if (resident < 1) fail("resident blocks must be >= 1, got %d", resident);
  machine().rng.seed(seed);
  machine().resident = resident;
}

void run_grid(dim3 grid, dim3 block, std::function<void()> body) {
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
  ++m.launch;
  const uint64_t blocks = uint64_t(grid.x) * grid.y * grid.z;
  std::vector<uint64_t> order(blocks);
  std::iota(order.begin(), order.end(), uint64_t(0));
  std::shuffle(order.begin(), order.end(), m.rng);
  while (m.slots.size() < size_t(m.resident)) m.slots.push_back(std::make_unique<Block>());
  uint64_t next = 0;
  for (int s = 0; s < m.resident && next < blocks; ++s) admit(*m.slots[s], order[next++]);
  while (Thread* t = pick()) {
    resume(*t);
    Block& b = *t->block;
    const int warp = warp_of(b, *t);
    Warp& w = b.warps[warp];
    if (b.switch_chance != 0 && uint32_t(m.rng()) <= b.switch_chance) {
      w.priority = uint32_t(m.rng());
      m.rescan = true;
    }
    if (t->state == State::Ready) {  // an atomic or a store: it may run again at once
      w.ready.push_back(t);
      continue;
    }
    if (t->state == State::AtBarrier) ++b.at_barrier;
    if (t->state == State::Done) --b.live;
    if (--w.runnable == 0) complete_warp_ops(b, warp);
    release_barrier(b);
    if (b.live == 0) {
      b.resident = false;
      m.rescan = true;
      if (next < blocks) admit(b, order[next++]);
    }
  }
  for (const auto& slot : m.slots) {
    if (slot->resident) deadlock();
  }
}

}  // namespace simt

#if SIMT_ASAN

#define SIMT_HOOK(kind, size)                                                           \
  extern "C" void __real___asan_##kind##size(uintptr_t address);                        \
  extern "C" void __wrap___asan_##kind##size(uintptr_t address) {                       \
    __real___asan_##kind##size(address);                                                \
    simt::before_##kind(address, size);                                                 \
  }
#define SIMT_HOOKS(kind) \
  SIMT_HOOK(kind, 1)     \
  SIMT_HOOK(kind, 2)     \
  SIMT_HOOK(kind, 4)     \
  SIMT_HOOK(kind, 8)     \
  SIMT_HOOK(kind, 16)    \
  extern "C" void __real___asan_##kind##N(uintptr_t address, uintptr_t size);       \
  extern "C" void __wrap___asan_##kind##N(uintptr_t address, uintptr_t size) {      \
    __real___asan_##kind##N(address, size);                                         \
    simt::before_##kind(address, size);                                             \
  }

SIMT_HOOKS(load)
SIMT_HOOKS(store)

#endif
