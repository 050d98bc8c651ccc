// sparsecraft CPU sparse x dense kernels (fp32), registered as torch.ops.sparsecraft_kernels.*.
//
// y[N, out] = x[N, in] @ W^T for a sparse weight W[out, in] stored in one of three packed
// formats (see sparsecraft/kernels/backend_native.py for the packing):
//   csr16_mm  : CSR with uint16 column indices (6 bytes per nonzero instead of 8 for int32);
//               batch 1: scalar or gather loop, measured per machine (csr16_dot.h); batch > 1: x transposed to
//               xT[in, Np] so the inner loop runs over the batch with vector FMAs.
//   bitmap_mm : one bit per weight (uint64 words of 64 columns) + the kept values packed per
//               row; batch 1: AVX-512 expand-load of the kept values into their lanes,
//               masked load of x, FMA ((1-s)*4 + 1/8 bytes per weight).
//   nm24_mm   : 2:4 -- per 4 columns, 2 kept values + two 2-bit positions; per 32 columns,
//               16 values and one uint32 of positions; x lanes are picked with permutex2var.
// Rows are split across threads on sparsecraft's pool (sc_pool.h: a call never waits for a
// descheduled helper thread); bitmap_mm's batch > 1 path and very wide batches use at::parallel_for.
// Every kernel has a portable scalar path when AVX-512 is not available at compile time.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "sc_pool.h"
#include "simd_util.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#define SC_AVX512 1
#else
#define SC_AVX512 0
#endif

#include "csr16_dot.h"

namespace {

constexpr int64_t kGrain = 16;  // rows per parallel task at minimum

// Rows per parallel task so that each task does at least ~64K multiply-adds: small layers
// run on one thread (a thread wake-up costs more than the work, and on a busy machine a
// descheduled helper thread stalls the whole call).
int64_t grain_for(int64_t rows, int64_t work) {
  constexpr int64_t kMinWork = 1 << 16;
  if (work <= 0) return rows > 0 ? rows : 1;
  const int64_t g = (rows * kMinWork + work - 1) / work;
  return std::max<int64_t>(kGrain, std::min<int64_t>(g, rows > 0 ? rows : 1));
}

void check_x(const at::Tensor& x, int64_t in) {
  TORCH_CHECK(x.dim() == 2, "sparsecraft: x must be 2-D [N, in]");
  TORCH_CHECK(x.scalar_type() == at::kFloat, "sparsecraft: x must be float32");
  TORCH_CHECK(x.size(1) == in, "sparsecraft: x has ", x.size(1), " features, weight expects ", in);
}

// ---------------------------------------------------------------- CSR, uint16 columns
// Batch 1: csr16_dot.h.

// out[0:16*NV] = sum_k v[k] * xT[c[k], 0:16*NV]: NV zmm accumulators over the batch.
template <int NV>
void csr16_tile(const float* v, const uint16_t* c, int64_t n, const float* xT, int64_t ld,
                float* out) {
#if SC_AVX512
  __m512 a[NV];
  for (int j = 0; j < NV; ++j) a[j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < n; ++k) {
    const __m512 vk = _mm512_set1_ps(v[k]);
    const float* xr = xT + (int64_t)c[k] * ld;
    for (int j = 0; j < NV; ++j) a[j] = _mm512_fmadd_ps(vk, _mm512_loadu_ps(xr + 16 * j), a[j]);
  }
  for (int j = 0; j < NV; ++j) _mm512_storeu_ps(out + 16 * j, a[j]);
#else
  float a[16 * NV];
  for (int j = 0; j < 16 * NV; ++j) a[j] = 0.f;
  for (int64_t k = 0; k < n; ++k) {
    const float vk = v[k];
    const float* xr = xT + (int64_t)c[k] * ld;
    for (int j = 0; j < 16 * NV; ++j) a[j] += vk * xr[j];
  }
  for (int j = 0; j < 16 * NV; ++j) out[j] = a[j];
#endif
}

// Batch <= 8: one 8-wide accumulator (xT rows of 8 floats).
void csr16_tile8(const float* v, const uint16_t* c, int64_t n, const float* xT, float* out) {
#if defined(__AVX2__) && defined(__FMA__)
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 2 <= n; k += 2) {
    a0 = _mm256_fmadd_ps(_mm256_set1_ps(v[k]), _mm256_loadu_ps(xT + 8 * (int64_t)c[k]), a0);
    a1 = _mm256_fmadd_ps(_mm256_set1_ps(v[k + 1]), _mm256_loadu_ps(xT + 8 * (int64_t)c[k + 1]), a1);
  }
  if (k < n) a0 = _mm256_fmadd_ps(_mm256_set1_ps(v[k]), _mm256_loadu_ps(xT + 8 * (int64_t)c[k]), a0);
  _mm256_storeu_ps(out, _mm256_add_ps(a0, a1));
#else
  float a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t k = 0; k < n; ++k)
    for (int j = 0; j < 8; ++j) a[j] += v[k] * xT[8 * (int64_t)c[k] + j];
  for (int j = 0; j < 8; ++j) out[j] = a[j];
#endif
}

at::Tensor csr16_mm(const at::Tensor& values, const at::Tensor& cols, const at::Tensor& rowptr,
                    const at::Tensor& x_in, int64_t in_features) {
  check_x(x_in, in_features);
  TORCH_CHECK(values.scalar_type() == at::kFloat && cols.scalar_type() == at::kShort &&
                  rowptr.scalar_type() == at::kLong,
              "sparsecraft.csr16_mm: want float32 values, int16 cols, int64 rowptr");
  const int64_t out = rowptr.numel() - 1, N = x_in.size(0);
  at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty({N, out}, x.options());
  const float* v = values.data_ptr<float>();
  const uint16_t* c = reinterpret_cast<const uint16_t*>(cols.data_ptr<int16_t>());
  const int64_t* rp = rowptr.data_ptr<int64_t>();
  float* yp = y.data_ptr<float>();
  const int64_t grain = grain_for(out, values.numel() * N);
  sc::sync_threads();
  std::vector<c10::IValue> keep{values, cols, rowptr, x, y};
  if (N == 1) {
    const float* xp = x.data_ptr<float>();
    const bool gather = csr16_use_gather();
    sc::parallel_rows(out, 1, yp, grain, [=](int64_t b, int64_t e, float* buf) {
      for (int64_t r = b; r < e; ++r) buf[r - b] = csr16_dot(v + rp[r], c + rp[r], rp[r + 1] - rp[r], xp, gather);
    }, keep);
    return y;
  }
  // xT[in, ld]: the batch padded with zeros to 8 (N <= 8) or to a multiple of 16.
  const int64_t ld = N <= 8 ? 8 : (N + 15) / 16 * 16;
  at::Tensor xT = at::zeros({in_features, ld}, x.options());
  xT.narrow(1, 0, N).copy_(x.t());
  const float* xt = xT.data_ptr<float>();
  auto rows = [=](int64_t b, int64_t e, float* res) {  // res[j * (e - b) + (r - b)] = y[j, r]
    alignas(64) float buf[64];
    const int64_t nr = e - b;
    for (int64_t r = b; r < e; ++r) {
      const float* vr = v + rp[r];
      const uint16_t* cr = c + rp[r];
      const int64_t n = rp[r + 1] - rp[r];
      if (ld == 8) {
        csr16_tile8(vr, cr, n, xt, buf);
        for (int64_t j = 0; j < N; ++j) res[j * nr + (r - b)] = buf[j];
        continue;
      }
      for (int64_t t = 0; t < ld;) {
        const int64_t nv = std::min<int64_t>(4, (ld - t) / 16);
        switch (nv) {
          case 4: csr16_tile<4>(vr, cr, n, xt + t, ld, buf); break;
          case 3: csr16_tile<3>(vr, cr, n, xt + t, ld, buf); break;
          case 2: csr16_tile<2>(vr, cr, n, xt + t, ld, buf); break;
          default: csr16_tile<1>(vr, cr, n, xt + t, ld, buf); break;
        }
        for (int64_t j = 0; j < 16 * nv && t + j < N; ++j) res[(t + j) * nr + (r - b)] = buf[j];
        t += 16 * nv;
      }
    }
  };
  keep.emplace_back(xT);
  sc::parallel_rows_any(out, N, yp, grain, rows, keep);
  return y;
}

// ---------------------------------------------------------------- bitmap
// masks[out, ceil(in/64)] (bit j of word w = column 64w + j kept), values packed row by row
// and padded with 16 zeros (full-width loads stay in bounds), rowoff[out + 1] = row starts.
float bitmap_dot(const uint64_t* M, int64_t words, const float* p, const float* x, int64_t in) {
  float s = 0.f;
#if SC_AVX512
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  __m512 a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
  for (int64_t w = 0; w < words; ++w) {
    const uint64_t m = M[w];
    const float* xb = x + 64 * w;
    _mm_prefetch((const char*)(p + kPrefetch), _MM_HINT_T0);
    _mm_prefetch((const char*)(M + w + 8), _MM_HINT_T0);
    const __mmask16 m0 = (__mmask16)m, m1 = (__mmask16)(m >> 16);
    const __mmask16 m2 = (__mmask16)(m >> 32), m3 = (__mmask16)(m >> 48);
    const int c0 = __builtin_popcount(m0), c1 = __builtin_popcount(m1);
    const int c2 = __builtin_popcount(m2);
    // values are padded with 16 floats at the end, so a full unaligned load is always safe; x is read
    // whole (the expanded weights are 0 where not kept) except in a last partial word, where masked
    // loads keep the reads inside x (a masked load per chunk tripled the loop's time on AMD Zen 5)
    __m512 x0, x1, x2, x3;
    if (64 * w + 64 <= in) {
      x0 = _mm512_loadu_ps(xb), x1 = _mm512_loadu_ps(xb + 16);
      x2 = _mm512_loadu_ps(xb + 32), x3 = _mm512_loadu_ps(xb + 48);
    } else {
      x0 = _mm512_maskz_loadu_ps(m0, xb), x1 = _mm512_maskz_loadu_ps(m1, xb + 16);
      x2 = _mm512_maskz_loadu_ps(m2, xb + 32), x3 = _mm512_maskz_loadu_ps(m3, xb + 48);
    }
    a0 = _mm512_fmadd_ps(_mm512_maskz_expand_ps(m0, sc::in_reg(_mm512_loadu_ps(p))), x0, a0);
    a1 = _mm512_fmadd_ps(_mm512_maskz_expand_ps(m1, sc::in_reg(_mm512_loadu_ps(p + c0))), x1, a1);
    a2 = _mm512_fmadd_ps(_mm512_maskz_expand_ps(m2, sc::in_reg(_mm512_loadu_ps(p + c0 + c1))), x2, a2);
    a3 = _mm512_fmadd_ps(_mm512_maskz_expand_ps(m3, sc::in_reg(_mm512_loadu_ps(p + c0 + c1 + c2))), x3, a3);
    p += __builtin_popcountll(m);
  }
  s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
#else
  for (int64_t w = 0; w < words; ++w) {
    uint64_t m = M[w];
    while (m) {
      const int j = __builtin_ctzll(m);
      s += *p++ * x[64 * w + j];
      m &= m - 1;
    }
  }
#endif
  (void)in;
  return s;
}

// Expand one packed row into dense[in] (zeros elsewhere).
void bitmap_expand(const uint64_t* M, int64_t words, const float* p, float* dense, int64_t in) {
  for (int64_t i = 0; i < in; ++i) dense[i] = 0.f;
  for (int64_t w = 0; w < words; ++w) {
    uint64_t m = M[w];
    while (m) {
      const int j = __builtin_ctzll(m);
      dense[64 * w + j] = *p++;
      m &= m - 1;
    }
  }
}

#if SC_AVX512
// y[t, r] for T batch rows: each 16-column block's kept values are expanded once and used by
// T register accumulators (one per batch row).
template <int T>
void bitmap_tile(const uint16_t* M16, int64_t blocks, const float* p, const float* x, int64_t ldx,
                 float* y, int64_t ldy, int64_t in) {
  __m512 acc[T];
  for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t k = 0; k < blocks; ++k) {
    const __mmask16 m = M16[k];  // little-endian: uint16 k of the row's uint64 words
    const __m512 vv = _mm512_maskz_expand_ps(m, sc::in_reg(_mm512_loadu_ps(p)));
    p += __builtin_popcount(m);
    const bool whole = 16 * k + 16 <= in;  // x read whole where in bounds (see bitmap_dot)
    for (int t = 0; t < T; ++t)
      acc[t] = _mm512_fmadd_ps(vv, whole ? _mm512_loadu_ps(x + t * ldx + 16 * k)
                                         : _mm512_maskz_loadu_ps(m, x + t * ldx + 16 * k), acc[t]);
  }
  for (int t = 0; t < T; ++t) y[t * ldy] = _mm512_reduce_add_ps(acc[t]);
}
#endif

at::Tensor bitmap_mm(const at::Tensor& values, const at::Tensor& masks, const at::Tensor& rowoff,
                     const at::Tensor& x_in, int64_t in_features) {
  check_x(x_in, in_features);
  TORCH_CHECK(values.scalar_type() == at::kFloat && masks.scalar_type() == at::kLong &&
                  rowoff.scalar_type() == at::kLong,
              "sparsecraft.bitmap_mm: want float32 values, int64 masks and rowoff");
  const int64_t out = masks.size(0), words = masks.size(1), N = x_in.size(0);
  TORCH_CHECK(words * 64 >= in_features, "sparsecraft.bitmap_mm: mask too narrow");
  TORCH_CHECK(values.numel() >= rowoff[out].item<int64_t>() + 16,
              "sparsecraft.bitmap_mm: values must be padded with 16 floats");
  at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty({N, out}, x.options());
  const float* v = values.data_ptr<float>();
  const uint64_t* M = reinterpret_cast<const uint64_t*>(masks.data_ptr<int64_t>());
  const int64_t* ro = rowoff.data_ptr<int64_t>();
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t grain = grain_for(out, (values.numel() + out * words * 4) * N);
  if (N == 1) {
    sc::sync_threads();
    sc::parallel_rows(out, 1, yp, grain, [=](int64_t b, int64_t e, float* buf) {
      for (int64_t r = b; r < e; ++r) buf[r - b] = bitmap_dot(M + r * words, words, v + ro[r], xp, in_features);
    }, {values, masks, rowoff, x, y});
    return y;
  }
#if SC_AVX512
  const int64_t blocks = (in_features + 15) / 16;
  at::parallel_for(0, out, grain, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const uint16_t* M16 = reinterpret_cast<const uint16_t*>(M + r * words);
      for (int64_t i0 = 0; i0 < N;) {
        const int64_t rem = N - i0;
        const float* xr = xp + i0 * in_features;
        float* yr = yp + i0 * out + r;
        if (rem >= 8) { bitmap_tile<8>(M16, blocks, v + ro[r], xr, in_features, yr, out, in_features); i0 += 8; }
        else if (rem >= 4) { bitmap_tile<4>(M16, blocks, v + ro[r], xr, in_features, yr, out, in_features); i0 += 4; }
        else if (rem >= 2) { bitmap_tile<2>(M16, blocks, v + ro[r], xr, in_features, yr, out, in_features); i0 += 2; }
        else { bitmap_tile<1>(M16, blocks, v + ro[r], xr, in_features, yr, out, in_features); i0 += 1; }
      }
    }
  });
#else
  at::parallel_for(0, out, grain, [&](int64_t b, int64_t e) {
    std::vector<float> dense(in_features);
    for (int64_t r = b; r < e; ++r) {
      bitmap_expand(M + r * words, words, v + ro[r], dense.data(), in_features);
      const float* d = dense.data();
      for (int64_t i = 0; i < N; ++i) {
        const float* xr = xp + i * in_features;
        float s = 0.f;
        for (int64_t k = 0; k < in_features; ++k) s += d[k] * xr[k];
        yp[i * out + r] = s;
      }
    }
  });
#endif
  return y;
}

// ---------------------------------------------------------------- 2:4
// values[out, in/2] (2 kept per group of 4, in column order), pos[out, in/32] uint32 words:
// bits 2i..2i+1 of word k = position (0..3) inside its group of value 16k + i.
inline int nm24_col(uint32_t word, int i) { return (int)((word >> (2 * i)) & 3u) + 4 * (i / 2); }

at::Tensor nm24_mm(const at::Tensor& values, const at::Tensor& pos, const at::Tensor& x_in,
                   int64_t in_features) {
  check_x(x_in, in_features);
  TORCH_CHECK(in_features % 32 == 0, "sparsecraft.nm24_mm: in_features must be a multiple of 32");
  TORCH_CHECK(values.scalar_type() == at::kFloat && pos.scalar_type() == at::kInt,
              "sparsecraft.nm24_mm: want float32 values, int32 positions");
  const int64_t out = values.size(0), blocks = in_features / 32, N = x_in.size(0);
  at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty({N, out}, x.options());
  const float* v = values.data_ptr<float>();
  const uint32_t* P = reinterpret_cast<const uint32_t*>(pos.data_ptr<int32_t>());
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  auto rows = [=](int64_t b, int64_t e, float* res) {  // res[i * (e - b) + (r - b)] = y[i, r]
    const int64_t nr = e - b;
#if SC_AVX512
    const __m512i shifts = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i base = _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28);
    const __m512i three = _mm512_set1_epi32(3);
    constexpr int64_t T = 8;  // batch rows per register tile
    for (int64_t r = b; r < e; ++r) {
      const float* vr = v + r * blocks * 16;
      const uint32_t* pr = P + r * blocks;
      for (int64_t i0 = 0; i0 < N; i0 += T) {
        const int64_t nb = std::min<int64_t>(T, N - i0);
        __m512 acc[T];
        for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
        for (int64_t k = 0; k < blocks; ++k) {
          const __m512i w = _mm512_set1_epi32((int)pr[k]);
          const __m512i idx = _mm512_add_epi32(_mm512_and_si512(_mm512_srlv_epi32(w, shifts), three), base);
          const __m512 vv = _mm512_loadu_ps(vr + 16 * k);
          for (int64_t t = 0; t < nb; ++t) {
            const float* xb = xp + (i0 + t) * in_features + 32 * k;
            const __m512 g = _mm512_permutex2var_ps(_mm512_loadu_ps(xb), idx, _mm512_loadu_ps(xb + 16));
            acc[t] = _mm512_fmadd_ps(vv, g, acc[t]);
          }
        }
        for (int64_t t = 0; t < nb; ++t) res[(i0 + t) * nr + (r - b)] = _mm512_reduce_add_ps(acc[t]);
      }
    }
#else
    for (int64_t r = b; r < e; ++r) {
      const float* vr = v + r * blocks * 16;
      const uint32_t* pr = P + r * blocks;
      for (int64_t i = 0; i < N; ++i) {
        const float* xr = xp + i * in_features;
        float s = 0.f;
        for (int64_t k = 0; k < blocks; ++k)
          for (int j = 0; j < 16; ++j) s += vr[16 * k + j] * xr[32 * k + nm24_col(pr[k], j)];
        res[i * nr + (r - b)] = s;
      }
    }
#endif
  };
  const int64_t grain = grain_for(out, values.numel() * N);
  if (N <= sc::kBufFloats) sc::sync_threads();
  sc::parallel_rows_any(out, N, yp, grain, rows, {values, pos, x, y});
  return y;
}

bool has_avx512() { return SC_AVX512; }

}  // namespace

TORCH_LIBRARY(sparsecraft_kernels, m) {
  m.def("csr16_mm(Tensor values, Tensor cols, Tensor rowptr, Tensor x, int in_features) -> Tensor");
  m.def("bitmap_mm(Tensor values, Tensor masks, Tensor rowoff, Tensor x, int in_features) -> Tensor");
  m.def("nm24_mm(Tensor values, Tensor pos, Tensor x, int in_features) -> Tensor");
  m.def("has_avx512", has_avx512);
  m.def("csr16_variant", csr16_variant);
}

TORCH_LIBRARY_IMPL(sparsecraft_kernels, CPU, m) {
  m.impl("csr16_mm", csr16_mm);
  m.impl("bitmap_mm", bitmap_mm);
  m.impl("nm24_mm", nm24_mm);
}
