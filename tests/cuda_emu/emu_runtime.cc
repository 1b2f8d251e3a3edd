#include "tests/cuda_emu/emu_runtime.h"

#include <ucontext.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

namespace cuda_emu {
namespace {

constexpr size_t kStackBytes = 256 * 1024;
constexpr int kWarpSize = 32;

enum class Status { kRunnable, kAtBarrier, kInCollective, kDone };

struct Thread {
  ucontext_t context;
  std::unique_ptr<char[]> stack;
  ThreadState state;
  Status status = Status::kRunnable;
};

struct Warp {
  const void* in[kWarpSize];
  void* out[kWarpSize];
  int arrived = 0;
  CollectiveOp op = nullptr;
};

struct Block {
  std::vector<Thread> threads;
  std::vector<Warp> warps;
  ucontext_t scheduler;
  int current = -1;
  int live = 0, at_barrier = 0;
  const std::function<void()>* body = nullptr;
  char* smem = nullptr;
};

Block* g_block = nullptr;
ThreadState g_host;
int64_t g_collectives = 0;

[[noreturn]] void Fail(const char* what) {
  std::fprintf(stderr, "cuda emulation: %s\n", what);
  std::abort();
}

Thread& Running() {
  if (g_block == nullptr || g_block->current < 0) Fail("a device intrinsic was called outside a kernel");
  return g_block->threads[g_block->current];
}

// Back to the scheduler; returns when this thread is resumed.
void Yield() {
  Thread& t = Running();
  if (swapcontext(&t.context, &g_block->scheduler) != 0) Fail("swapcontext failed");
}

void Trampoline(int index) {
  Block& b = *g_block;
  (*b.body)();
  b.threads[index].status = Status::kDone;
  --b.live;
  // Returning resumes uc_link: the scheduler.
}

struct AlignedFree {
  void operator()(char* p) const { std::free(p); }
};

}  // namespace

ThreadState& Current() {
  if (g_block != nullptr && g_block->current >= 0) return g_block->threads[g_block->current].state;
  return g_host;
}

char* DynamicSmem() {
  if (g_block == nullptr) Fail("dynamic shared memory outside a kernel");
  return g_block->smem;
}

int64_t CollectiveCount() { return g_collectives; }

void SyncThreads() {
  Thread& t = Running();
  t.status = Status::kAtBarrier;
  ++g_block->at_barrier;
  Yield();
}

void WarpCollective(const void* in, void* out, CollectiveOp op) {
  Thread& t = Running();
  Warp& w = g_block->warps[t.state.warp];
  if (w.arrived > 0 && w.op != op) Fail("lanes of one warp are in different collectives (divergence)");
  w.op = op;
  w.in[t.state.lane] = in;
  w.out[t.state.lane] = out;
  if (++w.arrived < kWarpSize) {
    t.status = Status::kInCollective;
    Yield();
    return;
  }
  ++g_collectives;
  op(w.in, w.out);
  w.arrived = 0;
  w.op = nullptr;
  const int first = t.state.warp * kWarpSize;
  for (int l = 0; l < kWarpSize; ++l) {
    Thread& other = g_block->threads[first + l];
    if (other.status == Status::kInCollective) other.status = Status::kRunnable;
  }
}

void SyncWarp() {
  static const CollectiveOp nothing = [](const void* const*, void* const*) {};
  WarpCollective(nullptr, nullptr, nothing);
}

void RunGrid(Dim3 grid, Dim3 block, size_t dynamic_smem, const std::function<void()>& body) {
  const int nthreads = static_cast<int>(block.x * block.y * block.z);
  if (nthreads <= 0 || nthreads % kWarpSize != 0) Fail("threads per block must be a positive multiple of 32");
  if (g_block != nullptr) Fail("nested kernel launch");
  Block b;
  b.threads.resize(nthreads);
  b.warps.resize(nthreads / kWarpSize);
  for (Thread& t : b.threads) t.stack.reset(new char[kStackBytes]);
  const size_t smem_bytes = std::max<size_t>(128, (dynamic_smem + 127) / 128 * 128);
  std::unique_ptr<char, AlignedFree> smem(static_cast<char*>(std::aligned_alloc(128, smem_bytes)));
  b.smem = smem.get();
  b.body = &body;
  g_block = &b;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        std::memset(b.smem, 0xff, smem_bytes);
        b.live = nthreads;
        b.at_barrier = 0;
        for (Warp& w : b.warps) w.arrived = 0, w.op = nullptr;
        for (int i = 0; i < nthreads; ++i) {
          Thread& t = b.threads[i];
          t.status = Status::kRunnable;
          t.state.block_idx = {bx, by, bz};
          t.state.grid_dim = grid;
          t.state.block_dim = block;
          t.state.thread_idx = {static_cast<unsigned>(i % block.x), static_cast<unsigned>(i / block.x % block.y),
                                static_cast<unsigned>(i / (block.x * block.y))};
          t.state.lane = i % kWarpSize;
          t.state.warp = i / kWarpSize;
          if (getcontext(&t.context) != 0) Fail("getcontext failed");
          t.context.uc_stack.ss_sp = t.stack.get();
          t.context.uc_stack.ss_size = kStackBytes;
          t.context.uc_link = &b.scheduler;
          makecontext(&t.context, reinterpret_cast<void (*)()>(&Trampoline), 1, i);
        }
        while (b.live > 0) {
          bool ran = false;
          for (int i = 0; i < nthreads; ++i) {
            if (b.threads[i].status != Status::kRunnable) continue;
            ran = true;
            b.current = i;
            if (swapcontext(&b.scheduler, &b.threads[i].context) != 0) Fail("swapcontext failed");
            b.current = -1;
          }
          if (b.live > 0 && b.at_barrier == b.live) {
            for (Thread& t : b.threads)
              if (t.status == Status::kAtBarrier) t.status = Status::kRunnable;
            b.at_barrier = 0;
          } else if (!ran && b.live > 0) {
            Fail("deadlock: threads wait at a barrier or collective that others never reach");
          }
        }
      }
  g_block = nullptr;
}

}  // namespace cuda_emu
