// sparsecraft's own thread pool for the batch-1 kernels: dynamic chunks, and a caller that never
// waits for a descheduled helper thread.
//
// Why not at::parallel_for (torch's OpenMP pool): a parallel region ends with a barrier that waits
// for *every* thread. On a machine where another process is busy, a helper thread is often
// descheduled for a whole scheduler quantum (~3-4 ms), and a 0.5 ms matrix-vector product then takes
// 4+ ms. Here:
//   * a job is cut into chunks; threads claim chunks with a compare-and-swap on a counter tagged
//     with the job's generation (a late thread can never claim a chunk of a newer job);
//   * every chunk computes into a private buffer and *commits* it (CAS on the chunk's state) before
//     copying it out; the caller, once no unclaimed chunk is left, re-executes every chunk that is
//     claimed but not committed -- so it finishes the job on its own when a helper is stuck, and a
//     helper that comes back late finds its chunk committed and throws its result away;
//   * a job's context and the tensors it reads are held by a shared_ptr that every thread working on
//     the job copies first, so a late helper never reads freed memory;
//   * helpers spin briefly for the next job, then sleep on a condition variable.
// The caller only ever waits for a chunk that is *being copied out* (a few stores).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/ivalue.h>
#include <immintrin.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <algorithm>
#include <vector>

namespace sc {

// fn(ctx, chunk, buf) computes chunk `chunk` into buf; commit(ctx, chunk, buf) copies buf out.
using ChunkFn = void (*)(const void* ctx, int64_t chunk, float* buf);

constexpr int64_t kMaxChunks = 4096;
constexpr int64_t kBufFloats = 8 * 512;  // private result buffer of every thread
constexpr size_t kCtxBytes = 768;

struct Job {
  ChunkFn fn = nullptr, commit = nullptr;
  uint64_t gen = 0;
  int64_t n = 0;
  alignas(64) unsigned char ctx[kCtxBytes];
  std::vector<c10::IValue> keep;  // tensors the job reads: alive while any thread works on it
  std::shared_ptr<void> owner;     // or one object that owns them all
};

class Pool {
 public:
  explicit Pool(int threads) { resize(threads); }
  ~Pool() { stop_workers(); }

  int threads() const { return nthreads_; }

  void resize(int threads) {
    if (threads < 1) threads = 1;
    if (threads == nthreads_) return;
    std::lock_guard<std::mutex> run_lock(run_mu_);
    stop_workers();
    nthreads_ = threads;
    stop_.store(false);
    for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { worker_loop(); });
  }

  // Run chunks [0, n); returns when every chunk is committed. `ctx` (trivially copyable, at most
  // kCtxBytes) is copied into the job.
  template <typename Ctx>
  void run(int64_t n, ChunkFn fn, ChunkFn commit, const Ctx& ctx, std::vector<c10::IValue> keep = {},
           std::shared_ptr<void> owner = nullptr) {
    static_assert(sizeof(Ctx) <= kCtxBytes, "chunk context too large");
    if (n <= 0) return;
    std::unique_lock<std::mutex> run_lock(run_mu_, std::try_to_lock);
    if (nthreads_ == 1 || n == 1 || n > kMaxChunks || !run_lock.owns_lock()) {
      float* buf = local_buf();
      for (int64_t c = 0; c < n; ++c) { fn(&ctx, c, buf); commit(&ctx, c, buf); }
      return;
    }
    auto job = std::make_shared<Job>();
    job->fn = fn; job->commit = commit; job->n = n; job->keep = std::move(keep); job->owner = std::move(owner);
    std::memcpy(job->ctx, &ctx, sizeof(Ctx));
    gen_ = (gen_ + 1) & 0x3fffffffu;
    if (gen_ == 0) gen_ = 1;
    const uint64_t gen = gen_;
    job->gen = gen;
    for (int64_t c = 0; c < n; ++c) state_[c].store(gen << 2, std::memory_order_relaxed);
    std::atomic_store_explicit(&job_, job, std::memory_order_release);
    next_.store(gen << 32, std::memory_order_release);
    if (sleepers_.load(std::memory_order_acquire) > 0) {
      std::lock_guard<std::mutex> lk(mu_);
      cv_.notify_all();
    }
    float* buf = local_buf();
    int64_t c;
    while ((c = claim(gen, n)) >= 0) execute(*job, c, buf);
    for (int64_t k = 0; k < n; ++k)  // steal back every chunk a helper has not committed yet
      if ((state_[k].load(std::memory_order_acquire) & 3) < kCopying) execute(*job, k, buf);
    for (int64_t k = 0; k < n; ++k)  // wait only for copies in flight
      while ((state_[k].load(std::memory_order_acquire) & 3) != kDone) _mm_pause();
  }

 private:
  static constexpr uint64_t kClaimed = 1, kCopying = 2, kDone = 3;

  static float* local_buf() {
    thread_local std::vector<float> buf(kBufFloats);
    return buf.data();
  }

  int64_t claim(uint64_t gen, int64_t n) {
    uint64_t v = next_.load(std::memory_order_acquire);
    while ((v >> 32) == gen && (int64_t)(v & 0xffffffffu) < n) {
      if (next_.compare_exchange_weak(v, v + 1, std::memory_order_acq_rel)) {
        const int64_t c = (int64_t)(v & 0xffffffffu);
        uint64_t s = gen << 2;
        state_[c].compare_exchange_strong(s, (gen << 2) | kClaimed, std::memory_order_acq_rel);
        return c;
      }
    }
    return -1;
  }

  // Compute chunk c and commit it unless another thread already did (then the result is dropped).
  void execute(const Job& job, int64_t c, float* buf) {
    job.fn(job.ctx, c, buf);
    const uint64_t gen = job.gen;
    uint64_t s = state_[c].load(std::memory_order_acquire);
    while ((s >> 2) == gen && (s & 3) < kCopying) {
      if (state_[c].compare_exchange_weak(s, (gen << 2) | kCopying, std::memory_order_acq_rel)) {
        job.commit(job.ctx, c, buf);
        state_[c].store((gen << 2) | kDone, std::memory_order_release);
        return;
      }
    }
  }

  void worker_loop() {
    float* buf = local_buf();
    uint64_t seen = 0;
    while (true) {
      uint64_t v = next_.load(std::memory_order_acquire);
      int spins = 0;
      while ((v >> 32) == seen && !stop_.load(std::memory_order_relaxed)) {
        if (++spins < (1 << 14)) { _mm_pause(); v = next_.load(std::memory_order_acquire); continue; }
        std::unique_lock<std::mutex> lk(mu_);
        sleepers_.fetch_add(1, std::memory_order_acq_rel);
        cv_.wait(lk, [&] { return (next_.load(std::memory_order_acquire) >> 32) != seen || stop_.load(); });
        sleepers_.fetch_sub(1, std::memory_order_acq_rel);
        v = next_.load(std::memory_order_acquire);
        spins = 0;
      }
      if (stop_.load()) return;
      seen = v >> 32;
      std::shared_ptr<Job> job = std::atomic_load_explicit(&job_, std::memory_order_acquire);
      if (!job || job->gen != seen) continue;  // already replaced by a newer job
      int64_t c;
      while ((c = claim(seen, job->n)) >= 0) execute(*job, c, buf);
    }
  }

  void stop_workers() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_.store(true);
      cv_.notify_all();
    }
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  int nthreads_ = 0;
  uint64_t gen_ = 0;
  std::shared_ptr<Job> job_;
  std::atomic<uint64_t> next_{0};
  std::atomic<uint64_t> state_[kMaxChunks];
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  std::mutex mu_, run_mu_;
  std::condition_variable cv_;
  std::vector<std::thread> workers_;
};

// The process-wide pool (helpers = threads - 1). Created with torch's thread count; the standalone
// kernel ops follow torch's count (sync_threads), the decode loop sets its own (set_threads).
inline Pool& pool() {
  static Pool p(std::max(1, at::get_num_threads()));
  return p;
}

inline void sync_threads() {
  const int want = std::max(1, at::get_num_threads());
  if (pool().threads() != want) pool().resize(want);
}

}  // namespace sc

namespace sc {

// Rows [0, out) of an (n, out) row-major result y, computed in chunks of `rows_per` rows by
// `f(r0, r1, buf)` (buf[j * (r1 - r0) + (r - r0)] = y[j, r]) on the pool. `f` must capture by value
// (a late helper may run it after the call returned: it must not read the caller's stack); the data
// it points to must be kept alive by `keep`.
template <class F>
struct RowsCtx {
  F f;
  float* y;
  int64_t out, rows_per;
  int n;
};

template <class F>
void rows_chunk(const void* p, int64_t c, float* buf) {
  const auto& k = *static_cast<const RowsCtx<F>*>(p);
  const int64_t r0 = c * k.rows_per;
  k.f(r0, std::min(k.out, r0 + k.rows_per), buf);
}

template <class F>
void rows_commit(const void* p, int64_t c, float* buf) {
  const auto& k = *static_cast<const RowsCtx<F>*>(p);
  const int64_t r0 = c * k.rows_per, nr = std::min(k.out, r0 + k.rows_per) - r0;
  for (int j = 0; j < k.n; ++j) std::copy(buf + j * nr, buf + (j + 1) * nr, k.y + j * k.out + r0);
}

// rows per chunk: at least `min_rows` (so a chunk is worth a thread wake-up), at most what the
// private buffer holds, about 8 chunks per thread for load balance.
inline int64_t chunk_rows(int64_t out, int n, int64_t min_rows, int threads) {
  const int64_t cap = std::max<int64_t>(1, kBufFloats / std::max(1, n));
  const int64_t want = std::max<int64_t>(min_rows, (out + 8 * threads - 1) / (8 * threads));
  return std::max<int64_t>(1, std::min(cap, want));
}

template <class F>
void parallel_rows(int64_t out, int n, float* y, int64_t min_rows, F f, std::vector<c10::IValue> keep) {
  static_assert(std::is_trivially_copyable<F>::value, "capture by value");
  Pool& p = pool();
  RowsCtx<F> ctx{f, y, out, chunk_rows(out, n, min_rows, p.threads()), n};
  p.run((out + ctx.rows_per - 1) / ctx.rows_per, rows_chunk<F>, rows_commit<F>, ctx, std::move(keep));
}

// parallel_rows, or torch's pool writing y directly when n rows are too wide for a chunk buffer.
template <class F>
void parallel_rows_any(int64_t out, int64_t n, float* y, int64_t min_rows, F f, std::vector<c10::IValue> keep) {
  if (n <= kBufFloats) {
    parallel_rows(out, (int)n, y, min_rows, f, std::move(keep));
    return;
  }
  at::parallel_for(0, out, min_rows, [&](int64_t b, int64_t e) {
    std::vector<float> res((e - b) * n);
    f(b, e, res.data());
    for (int64_t j = 0; j < n; ++j) std::copy(&res[j * (e - b)], &res[(j + 1) * (e - b)], y + j * out + b);
  });
}

}  // namespace sc
