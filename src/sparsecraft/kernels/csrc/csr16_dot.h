// Batch-1 row dot product of the csr16 layout (float32 values, uint16 columns): sum_k v[k] x[c[k]].
// Two loops, chosen once per process by timing both on a synthetic row (csr16_gather_faster):
//   scalar: 8 independent accumulators, three loads per nonzero (value, column, x[column]);
//   gather: 16 columns widened to 32 bits and one vgatherdps per 16 nonzeros.
// Which is faster depends on the core: on a Cascade Lake (the first benchmark machine) gathers were
// slower (2.16 against 1.57 cycles per nonzero, data in L2), on this repository's AMD Zen 5 (family
// 1Ah) they are faster (benchmarks/bench_quant_kernels.py, "f32 csr16 90%"), and Intel cores with the
// Gather Data Sampling mitigation make gathers several times slower again. The two loops add in a
// different order, so their results differ in the last bits; csr16_variant(0 / 1) forces one (tests,
// reproducibility), -1 returns to the measured choice. Included from sparse_kernels.cpp only.
#pragma once

#include <chrono>
#include <cstdint>
#include <vector>

namespace {

constexpr int64_t kPrefetch = 1024;  // elements ahead for software prefetch of the packed data

float csr16_dot_scalar(const float* v, const uint16_t* c, int64_t n, const float* x) {
  float a[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    if ((k & 15) == 0) __builtin_prefetch(v + k + kPrefetch);  // a line holds 16 values,
    if ((k & 31) == 0) __builtin_prefetch(c + k + kPrefetch);  // 32 columns
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) a[j] += v[k + j] * x[c[k + j]];
  }
  for (; k < n; ++k) a[0] += v[k] * x[c[k]];
  return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

#if SC_AVX512
float csr16_dot_gather(const float* v, const uint16_t* c, int64_t n, const float* x) {
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= n; k += 32) {
    _mm_prefetch(reinterpret_cast<const char*>(v + k + kPrefetch), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(v + k + 16 + kPrefetch), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c + k + kPrefetch), _MM_HINT_T0);
    const __m512i i0 = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + k)));
    const __m512i i1 = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + k + 16)));
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(v + k), _mm512_i32gather_ps(i0, x, 4), a0);
    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(v + k + 16), _mm512_i32gather_ps(i1, x, 4), a1);
  }
  float s = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
  for (; k < n; ++k) s += v[k] * x[c[k]];
  return s;
}

// Seconds for the loop over 64 rows of a 4096-column layer at 10% density (L2-resident), as the
// kernel calls it: independent rows, direct calls.
template <bool kGather>
double csr16_probe_time(const float* v, const uint16_t* c, int64_t nnz, int64_t rows, const float* x, float* out) {
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t r = 0; r < rows; ++r)
    out[r] = kGather ? csr16_dot_gather(v + r * nnz, c + r * nnz, nnz, x) : csr16_dot_scalar(v + r * nnz, c + r * nnz, nnz, x);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Times both loops (best of 7 rounds; ~1 ms once) and takes the gather loop only when it is at
// least 5% faster.
bool csr16_gather_faster() {
  constexpr int64_t kIn = 4096, kNnz = 410, kRows = 64;
  std::vector<float> v(kRows * kNnz), x(kIn), out(kRows);
  std::vector<uint16_t> c(kRows * kNnz);
  for (int64_t r = 0; r < kRows; ++r)
    for (int64_t k = 0; k < kNnz; ++k) {
      v[r * kNnz + k] = 0.5f + 0.001f * (float)k;
      c[r * kNnz + k] = (uint16_t)((k * 10 + (k * 7 + r) % 9) % kIn);
    }
  for (int64_t i = 0; i < kIn; ++i) x[i] = 0.25f + 0.0001f * (float)i;
  double best[2] = {1e30, 1e30};
  for (int round = 0; round < 7; ++round) {
    best[0] = std::min(best[0], csr16_probe_time<false>(v.data(), c.data(), kNnz, kRows, x.data(), out.data()));
    best[1] = std::min(best[1], csr16_probe_time<true>(v.data(), c.data(), kNnz, kRows, x.data(), out.data()));
  }
  return best[1] < 0.95 * best[0];
}
#endif

int& csr16_forced() {  // -1: the measured choice; 0 scalar; 1 gather
  static int v = -1;
  return v;
}

bool csr16_use_gather() {
#if SC_AVX512
  static const bool measured = csr16_gather_faster();
  return csr16_forced() < 0 ? measured : csr16_forced() == 1;
#else
  return false;
#endif
}

// Sets the batch-1 loop (-1 measured, 0 scalar, 1 gather: 0 where AVX-512 is not compiled) and
// returns the one now in use.
int64_t csr16_variant(int64_t v) {
  csr16_forced() = v < 0 ? -1 : (v > 0 && SC_AVX512 ? 1 : 0);
  return csr16_use_gather() ? 1 : 0;
}

// gather: csr16_use_gather(), read once per call by the caller (not per row).
float csr16_dot(const float* v, const uint16_t* c, int64_t n, const float* x, bool gather) {
#if SC_AVX512
  if (gather) return csr16_dot_gather(v, c, n, x);
#endif
  (void)gather;
  return csr16_dot_scalar(v, c, n, x);
}

}  // namespace
