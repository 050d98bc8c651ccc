// int8-input row dot products for the quantized layouts of qdot.h (``xbits = 8``): the layer input
// is rounded to int8 once per call, one float scale per quantization group of G inputs (as
// llama.cpp's Q8 vectors do), and the int4/int8 codes are multiplied with integer dot products
// (AVX-512 VNNI vpdpbusd: 64 multiply-adds per instruction instead of 16 float FMAs).
//
// Per input row n and quantization group g (G a multiple of 64):
//   sx = max|x| / 127,  xq = rint(x / sx) in [-127, 127]  (0 when the group is all zeros),
//   y[n, r] = sum_g  s[r, g] * sx[n, g] * sum_{kept k in g} xq_k * (q_k - z[r, g]).
// The integer sum is exact; vpdpbusd takes one unsigned and one signed byte operand, so x is stored
// as xu = xq + 128 and the kernel corrects with per-group integers:
//   int4, and sparse int8 (q - z in a signed byte): dp = sum_kept xu (q-z),  result = dp - 128 C
//   dense int8 (q ^ 0x80 = q - 128, signed):        dp = sum xu (q-128),     result = dp + (128-z) SU - 128 C
// (subtracting z in the bytes, not through z SU, keeps the lanes small: a large correction would
// cancel in float32 and cost ~1e-5 relative error instead of ~1e-6; the remaining error comes from
// the +128 offset each lane carries until the per-group correction, far below the input rounding).
// with SU = sum_g xu (per call) and C[r, g] = sum_{kept k in g} (q_k - z) (the ``csums`` part,
// computed when packing, int16). Dense int4 reads its codes in the nibble order of the blk-32 layout, so
// its xu is stored in that order: inputs [0:16, 32:48, 16:32, 48:64] of every 64.
// Included from qdot.h only.
#pragma once

#include <cmath>

#if SCQ_AVX512 && defined(__AVX512VNNI__)
#define SCQ_VNNI 1
#else
#define SCQ_VNNI 0
#endif

namespace sc {

struct XQ {  // a layer's input prepared once per call (qlinear.h prepared_input)
  const uint8_t* xu = nullptr;  // [n][in] xq + 128, in the layer's order
  const float* sx = nullptr;    // [n][ng]
  const int32_t* su = nullptr;  // [n][ng] sum of xu over the group
  const float* xl = nullptr;    // float input in lanes order (qdot_lanes.h)
};

inline bool x8_nibble_order(const QLinear& L) { return L.kind == kQDense && L.bits == 4; }

inline int64_t x8_slot(int64_t k, bool nibble) {  // where input k is stored
  if (!nibble) return k;
  const int64_t j = k & 63, base = k - j;
  return base + (j >= 16 && j < 32 ? j + 16 : (j >= 32 && j < 48 ? j - 16 : j));
}

// xu (n * in bytes), sx and su (n * ng each) for rows x[0:n] (row stride ldx). The AVX-512 path
// rounds exactly as the scalar one (IEEE division, round-to-nearest-even conversion).
inline void quantize_x8(const QLinear& L, const float* x, int64_t ldx, int n, uint8_t* xu, float* sx, int32_t* su) {
  const int64_t in = L.in, G = L.G, ng = in / G;
  const bool nib = x8_nibble_order(L);
  for (int r = 0; r < n; ++r) {
    const float* xr = x + r * ldx;
    uint8_t* ur = xu + r * in;
    for (int64_t g = 0; g < ng; ++g) {
#if SCQ_AVX512
      if (isa_level() >= 2) {
        __m512 mx = _mm512_setzero_ps();
        for (int64_t k = g * G; k < (g + 1) * G; k += 16) mx = _mm512_max_ps(mx, _mm512_abs_ps(_mm512_loadu_ps(xr + k)));
        const float s = _mm512_reduce_max_ps(mx) / 127.f;
        const __m512 sv = _mm512_set1_ps(s > 0.f ? s : 1.f);
        const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127), off = _mm512_set1_epi32(128);
        __m512i sum = _mm512_setzero_si512();
        for (int64_t k = g * G; k < (g + 1) * G; k += 16) {
          __m512i q = _mm512_cvtps_epi32(_mm512_div_ps(_mm512_loadu_ps(xr + k), sv));
          q = s > 0.f ? _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(q, lo), hi), off) : off;
          sum = _mm512_add_epi32(sum, q);
          _mm_storeu_si128(reinterpret_cast<__m128i*>(ur + x8_slot(k, nib)), _mm512_cvtepi32_epi8(q));
        }
        sx[r * ng + g] = s;
        su[r * ng + g] = _mm512_reduce_add_epi32(sum);
        continue;
      }
#endif
      float amax = 0.f;
      for (int64_t k = g * G; k < (g + 1) * G; ++k) amax = std::max(amax, std::fabs(xr[k]));
      const float s = amax / 127.f;
      int32_t sum = 0;
      for (int64_t k = g * G; k < (g + 1) * G; ++k) {
        int q = s > 0.f ? (int)std::nearbyint(xr[k] / s) : 0;
        q = std::min(127, std::max(-127, q));
        ur[x8_slot(k, nib)] = (uint8_t)(q + 128);
        sum += q + 128;
      }
      sx[r * ng + g] = s;
      su[r * ng + g] = sum;
    }
  }
}

// The per-group integer correction (see the header comment).
inline int32_t x8_correction(const QLinear& L, int32_t su, int32_t z, int32_t c) {
  if (L.kind == kQSparse || L.bits == 4) return -128 * c;
  return (128 - z) * su - 128 * c;
}

template <int N>
void rows_x8_scalar(const QLinear& L, const XQ& X, int64_t r0, int64_t r1, float* out) {
  const int64_t nr = r1 - r0, in = L.in, G = L.G, ng = in / G;
  const bool nib = x8_nibble_order(L);
  for (int64_t r = r0; r < r1; ++r) {
    const uint16_t* sr = L.scales + r * ng;
    const uint8_t* zr = L.zeros + r * ng;
    const uint8_t* row = L.codes + (L.kind == kQDense ? r * L.cstride : L.rowoff[r]);
    float acc[N] = {};
    int64_t idx = 0;  // sparse: position in the row's code stream (int4: nibbles, words start on a byte)
    for (int64_t g = 0; g < ng; ++g) {
      int64_t dp[N] = {};
      for (int64_t w = g * G / 64; w < (g + 1) * G / 64; ++w) {
        const uint64_t m = L.kind == kQSparse ? keep_mask(L, r, w) : ~0ull;
        for (int j = 0; j < 64; ++j) {
          const int64_t k = 64 * w + j;
          if (!((m >> j) & 1)) continue;
          int q;
          if (L.kind == kQDense) {
            q = L.bits == 8 ? row[k] : nibble_code(row + (k / 32) * 16, k % 32, 16);
          } else {
            q = L.bits == 8 ? row[idx] : nibble_seq(row, idx);
            ++idx;
          }
          for (int n = 0; n < N; ++n) dp[n] += (int64_t)((int)X.xu[n * in + x8_slot(k, nib)] - 128) * (q - zr[g]);
        }
        if (L.kind == kQSparse && L.bits == 4) idx = (idx + 1) / 2 * 2;
      }
      for (int n = 0; n < N; ++n) acc[n] += (float)dp[n] * (half_to_float(sr[g]) * X.sx[n * ng + g]);
    }
    for (int n = 0; n < N; ++n) out[n * nr + (r - r0)] = acc[n] + (L.bias ? L.bias[r] : 0.f);
  }
}

#if SCQ_VNNI
// P vectors handled together (P rows of a batch-1 call: independent work to overlap with the
// dependency chain of each row's reduction).
template <int P>
struct Lanes {
  __m512i v[P];
};
template <int P, class Op>
SC_HOT Lanes<P> lanes_map(const Lanes<P>& a, const Lanes<P>& b, Op op) {
  Lanes<P> r;
  for (int p = 0; p < P; ++p) r.v[p] = op(a.v[p], b.v[p]);
  return r;
}

// Lane j of result p = the sum of the 16 lanes of f(j).v[p], j = 0..15: a transpose-and-add tree (~2
// shuffles and an add per vector instead of a horizontal reduction each), evaluated in the order the
// tree consumes its inputs so that at most five partial vectors per p are live (16 at once spilled).
template <int P, class F>
SC_HOT Lanes<P> sum16_stream(F&& f) {
  auto l1 = [&](int j) SC_HOT_LAMBDA {
    const Lanes<P> x = f(j), y = f(j + 1);  // in this order: the sparse streams advance
    return lanes_map<P>(x, y, [](__m512i a, __m512i b) SC_HOT_LAMBDA {
      return _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b)); });
  };
  auto l2 = [&](int j) SC_HOT_LAMBDA {
    const Lanes<P> x = l1(j), y = l1(j + 2);  // in this order: the sparse streams advance
    return lanes_map<P>(x, y, [](__m512i a, __m512i b) SC_HOT_LAMBDA {
      return _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b)); });
  };
  auto l3 = [&](int j) SC_HOT_LAMBDA {
    const Lanes<P> x = l2(j), y = l2(j + 4);  // in this order: the sparse streams advance
    return lanes_map<P>(x, y, [](__m512i a, __m512i b) SC_HOT_LAMBDA {
      return _mm512_add_epi32(_mm512_shuffle_i32x4(a, b, 0x88), _mm512_shuffle_i32x4(a, b, 0xDD)); });
  };
  const Lanes<P> c0 = l3(0), c1 = l3(8);
  return lanes_map<P>(c0, c1, [](__m512i a, __m512i b) SC_HOT_LAMBDA {
    return _mm512_add_epi32(_mm512_shuffle_i32x4(a, b, 0x88), _mm512_shuffle_i32x4(a, b, 0xDD)); });
}

// Word decoders, one per layout: word(k, zv) is the 64 signed weight bytes of the inputs at k (codes minus
// the zero point, 0 where not kept; int8 dense: codes ^ 0x80, see the header comment). The loops are
// instantiated per decoder, so no layout test runs per word and the accumulators stay in registers.
struct X8DenseQ4 {
  const uint8_t* row;
  X8DenseQ4() = default;
  X8DenseQ4(const QLinear& L, int64_t r) : row(L.codes + r * L.cstride) {}
  SC_HOT void prefetch(int64_t k, int64_t n) const { prefetch_ahead(row + k / 2, n / 2); }
  SC_HOT __m512i operator()(int64_t k, __m512i zv) const {
    const __m256i lo4 = _mm256_set1_epi8(0x0F);
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + k / 2));
    return _mm512_sub_epi8(_mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(b, lo4)),
                                              _mm256_and_si256(_mm256_srli_epi16(b, 4), lo4), 1), zv);
  }
};
struct X8DenseQ8 {
  const uint8_t* row;
  X8DenseQ8() = default;
  X8DenseQ8(const QLinear& L, int64_t r) : row(L.codes + r * L.cstride) {}
  SC_HOT void prefetch(int64_t k, int64_t n) const { prefetch_ahead(row + k, n); }
  SC_HOT __m512i operator()(int64_t k, __m512i) const {
    return _mm512_xor_si512(_mm512_loadu_si512(row + k), _mm512_set1_epi8((char)0x80));
  }
};
// Element bitmap (kG 0) or group bitmap (groups of kG = 4 / 8 / 16 inputs kept or dropped together:
// the word's mask is spread from the group bits); the code stream is the same for both.
template <int BITS, int kG>
struct X8Sparse {
  const uint64_t* masks;
  const uint8_t* stream;
  X8Sparse() = default;
  X8Sparse(const QLinear& l, int64_t row) : masks(l.masks + row * l.mstride), stream(l.codes + l.rowoff[row]) {}
  SC_HOT void prefetch(int64_t k, int64_t n) const {  // the next n inputs' masks (the codes: per word)
    const int64_t per = kG ? kG : 1;  // inputs per mask bit
    prefetch_ahead(reinterpret_cast<const uint8_t*>(masks) + k / per / 8, std::max<int64_t>(64, n / per / 8));
  }
  SC_HOT __m512i operator()(int64_t k, __m512i zv) {
    const int64_t w = (uint64_t)k >> 6;
    const uint64_t m = word_mask<kG>(masks, w);
    prefetch_ahead(stream, 1);  // a word's codes are at most 64 bytes: one line, no data-dependent branch
    return _mm512_maskz_sub_epi8(m, sparse_word_codes(stream, m, BITS), zv);
  }
};

// Batch 1: the integer sums of 16 groups are reduced together (sum16_stream), then corrected, converted
// and scaled as one vector -- a group of 64 inputs is only ~8 instructions of codes and dot product, and
// per-group work (convert, broadcast scale, FMA: measured 10-30% slower) would add a third to it. P rows
// at a time (P = 2 for all but an odd last row).
template <class Word, bool kInt8Dense, bool kG64, int P>
SC_HOT void x8_b1_row_block(const QLinear& L, const XQ& X, int64_t r, float* out) {
  const int64_t G = L.G, ng = L.in / G;
  const uint16_t* sr[P];
  const uint8_t* zr[P];
  const int16_t* cr[P];
  Word word[P];
  __m512 acc[P];
  for (int p = 0; p < P; ++p) {
    word[p] = Word(L, r + p);
    sr[p] = L.scales + (r + p) * ng;
    zr[p] = L.zeros + (r + p) * ng;
    cr[p] = L.csum + (r + p) * ng;
    acc[p] = _mm512_setzero_ps();
  }
  for (int64_t g0 = 0; g0 < ng; g0 += 16) {
    const int nb = (int)std::min<int64_t>(16, ng - g0);
    const __mmask16 mb = (__mmask16)((1u << nb) - 1);
    for (int p = 0; p < P; ++p) word[p].prefetch(g0 * G, 16 * G);  // the block's bytes, 4 KiB ahead
    for (int p = 0; p < P; ++p) {  // and the block's scales, zero points and csums (with hardware prefetch
      prefetch_ahead(sr[p] + g0, 32);  // alone, DRAM-cycled calls waited on them)
      prefetch_ahead(zr[p] + g0, 16);
      prefetch_ahead(cr[p] + g0, 32);
    }
    auto group = [&](int j) SC_HOT_LAMBDA {  // per row, the 16 int32 lanes summing to group g0 + j's dot product
      Lanes<P> a;
      for (int p = 0; p < P; ++p) {
        a.v[p] = _mm512_setzero_si512();
        if (j >= nb) continue;
        const __m512i zv = _mm512_set1_epi8((char)zr[p][g0 + j]);
        const int64_t k0 = (g0 + j) * G;
        if (kG64) {
          a.v[p] = _mm512_dpbusd_epi32(a.v[p], _mm512_loadu_si512(X.xu + k0), word[p](k0, zv));
        } else {
          for (int64_t k = k0; k < k0 + G; k += 64)
            a.v[p] = _mm512_dpbusd_epi32(a.v[p], _mm512_loadu_si512(X.xu + k), word[p](k, zv));
        }
      }
      return a;
    };
    const Lanes<P> sums = sum16_stream<P>(group);
    for (int p = 0; p < P; ++p) {
      __m512i s = _mm512_sub_epi32(sums.v[p], _mm512_slli_epi32(
          _mm512_cvtepi16_epi32(_mm256_maskz_loadu_epi16(mb, cr[p] + g0)), 7));  // - 128 C
      if (kInt8Dense) {  // + (128 - z) SU
        const __m512i z = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mb, zr[p] + g0));
        s = _mm512_add_epi32(s, _mm512_mullo_epi32(_mm512_sub_epi32(_mm512_set1_epi32(128), z),
                                                   _mm512_maskz_loadu_epi32(mb, X.su + g0)));
      }
      const __m512 scale = _mm512_mul_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mb, sr[p] + g0)),
                                         _mm512_maskz_loadu_ps(mb, X.sx + g0));
      acc[p] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, acc[p]);
    }
  }
  for (int p = 0; p < P; ++p) out[p] = _mm512_reduce_add_ps(acc[p]) + (L.bias ? L.bias[r + p] : 0.f);
}

template <class Word, bool kInt8Dense, bool kG64>
void x8_b1_rows(const QLinear& L, const XQ& X, int64_t r0, int64_t r1, float* out) {
  int64_t r = r0;
  for (; r + 2 <= r1; r += 2) x8_b1_row_block<Word, kInt8Dense, kG64, 2>(L, X, r, out + (r - r0));
  if (r < r1) x8_b1_row_block<Word, kInt8Dense, kG64, 1>(L, X, r, out + (r - r0));
}

// Batch 2..8: one integer accumulator per input row and group, corrected and scaled per group.
template <class Word, int N>
void x8_batch_rows(const QLinear& L, const XQ& X, int64_t r0, int64_t r1, float* out) {
  const int64_t nr = r1 - r0, in = L.in, G = L.G, ng = in / G;
  for (int64_t r = r0; r < r1; ++r) {
    const uint16_t* sr = L.scales + r * ng;
    const uint8_t* zr = L.zeros + r * ng;
    const int16_t* cr = L.csum + r * ng;
    Word word(L, r);
    // batch 2: two float accumulators per input row (an FMA chain has 4 cycles latency); larger
    // batches have enough independent chains
    constexpr int C = N == 2 ? 2 : 1;
    __m512 acc[C * N];
    for (int i = 0; i < C * N; ++i) acc[i] = _mm512_setzero_ps();
    for (int64_t g = 0, k = 0; g < ng; ++g) {
      __m512 * const a = acc + (g % C) * N;
      __m512i ia[N];
      for (int n = 0; n < N; ++n) ia[n] = _mm512_setzero_si512();
      const int32_t z = zr[g];
      const __m512i zv = _mm512_set1_epi8((char)z);
      word.prefetch(k, G);
      for (const int64_t kend = k + G; k < kend; k += 64) {
        const __m512i w = word(k, zv);
        for (int n = 0; n < N; ++n) ia[n] = _mm512_dpbusd_epi32(ia[n], _mm512_loadu_si512(X.xu + n * in + k), w);
      }
      if ((g & 15) == 0) {
        prefetch_ahead(sr + g, 32);
        prefetch_ahead(zr + g, 16);
        prefetch_ahead(cr + g, 32);
      }
      const float s = half_to_float(sr[g]);
      for (int n = 0; n < N; ++n) {
        const int32_t corr = x8_correction(L, X.su[n * ng + g], z, cr[g]);
        const __m512i fixed = _mm512_mask_add_epi32(ia[n], 1, ia[n], _mm512_set1_epi32(corr));
        a[n] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(fixed), _mm512_set1_ps(s * X.sx[n * ng + g]), a[n]);
      }
    }
    for (int c = 1; c < C; ++c)
      for (int n = 0; n < N; ++n) acc[n] = _mm512_add_ps(acc[n], acc[c * N + n]);
    for (int n = 0; n < N; ++n) out[n * nr + (r - r0)] = _mm512_reduce_add_ps(acc[n]) + (L.bias ? L.bias[r] : 0.f);
  }
}

template <class Word, bool kInt8Dense, int N>
void x8_rows(const QLinear& L, const XQ& X, int64_t r0, int64_t r1, float* out) {
  if constexpr (N == 1) {
    if (L.G == 64) x8_b1_rows<Word, kInt8Dense, true>(L, X, r0, r1, out);
    else x8_b1_rows<Word, kInt8Dense, false>(L, X, r0, r1, out);
  } else {
    x8_batch_rows<Word, N>(L, X, r0, r1, out);
  }
}

template <int N>
void rows_x8_vnni(const QLinear& L, const XQ& X, int64_t r0, int64_t r1, float* out) {
  if (L.kind == kQSparse) {
    with_group(L.g, [&](auto G) {
      if (L.bits == 4) x8_rows<X8Sparse<4, decltype(G)::value>, false, N>(L, X, r0, r1, out);
      else x8_rows<X8Sparse<8, decltype(G)::value>, false, N>(L, X, r0, r1, out);
    });
  } else if (L.bits == 4) {
    x8_rows<X8DenseQ4, false, N>(L, X, r0, r1, out);
  } else {
    x8_rows<X8DenseQ8, true, N>(L, X, r0, r1, out);
  }
}
#endif

template <int N>
void rows_x8(const QLinear& L, const XQ& X, int64_t r0, int64_t r1, float* out) {
#if SCQ_VNNI
  if (isa_level() >= 2) {
    rows_x8_vnni<N>(L, X, r0, r1, out);
    return;
  }
#endif
  rows_x8_scalar<N>(L, X, r0, r1, out);
}

inline void rows_x8_n(int n, const QLinear& L, const XQ& X, int64_t r0, int64_t r1, float* out) {
  with_batch(n, [&](auto N) { rows_x8<decltype(N)::value>(L, X, r0, r1, out); });
}

}  // namespace sc
