// Row dot products of the packed linear layers the quantized kernels and the decode loop run:
// float32 dense / bitmap, and int4/int8 group-quantized dense / bitmap / group-bitmap weights,
// dequantized in registers (w = s * (q - z), never written to memory), for 1..8 input rows.
//
// Kernel layouts (built by sparsecraft/kernels/backend_quant.py from the codes):
//   qdense : codes (out, bytes_per_row). int8: one byte per code. int4: blocks of B = 32 inputs
//            (B = 16 when the quantization group G is an odd multiple of 16) in B/2 bytes, byte j =
//            code[j] | code[j + B/2] << 4, so one AND and one shift give the codes in order.
//   qsparse: per row, per 64-input word, a 64-bit keep mask (g = 0: one bit per input; g = 4/8/16:
//            one bit per group of g inputs, 64/g bits per word, expanded with pdep) and the codes of
//            the kept inputs: int8 one byte each; int4 ceil(n/2) bytes for n kept, byte j = c[2j] |
//            c[2j + 1] << 4. rowoff[r] = byte offset of row r; the stream is padded with 64 bytes.
//   scales: float16 bits (out, in / G); zeros: uint8 (out, in / G); kept inputs contribute
//   s * (q - z) * x, pruned ones 0.
// AVX-512 (F, BW, VBMI2 for the byte expand) where compiled, AVX2 for the dense formats, and a
// portable scalar path for all; isa_level() selects at run time (tests force each one).
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "simd_util.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VBMI2__) && defined(__BMI2__)
#define SCQ_AVX512 1
#else
#define SCQ_AVX512 0
#endif
#if defined(__AVX2__) && defined(__FMA__)
#define SCQ_AVX2 1
#else
#define SCQ_AVX2 0
#endif

namespace sc {

enum Kind : int { kF32Dense = 0, kF32Bitmap = 1, kQDense = 2, kQSparse = 3 };

inline int compiled_isa() { return SCQ_AVX512 ? 2 : (SCQ_AVX2 ? 1 : 0); }
inline int& isa_level() {  // 0 scalar, 1 AVX2, 2 AVX-512
  static int level = compiled_isa();
  return level;
}

struct QLinear {
  int kind = kF32Dense;
  int64_t out = 0, in = 0;
  int bits = 4, G = 64, g = 0, blk = 32;
  int64_t mstride = 0, cstride = 0;  // uint64 masks per row; qdense bytes per row
  const float* w = nullptr;          // f32 dense (out, in)
  const float* vals = nullptr;       // f32 bitmap values (row-packed, padded with 16)
  const uint64_t* masks = nullptr;   // bitmap / keep masks
  const int64_t* rowoff = nullptr;   // f32 bitmap: value offsets; qsparse: byte offsets
  const uint8_t* codes = nullptr;
  const uint16_t* scales = nullptr;  // float16 bits
  const uint8_t* zeros = nullptr;
  const float* bias = nullptr;
  int xbits = 0;                     // 8: int8 inputs and integer dot products (qdot_x8.h)
  const int16_t* csum = nullptr;     // xbits 8: per (row, group) sum of (q - z) over kept inputs
};

// ------------------------------------------------------------------ helpers
SC_HOT float half_to_float(uint16_t h) {
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  const uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 31, m = h & 1023;
  uint32_t bits;
  if (e == 0) {  // zero or subnormal: m * 2^-24
    float f = (float)m * 5.9604644775390625e-08f;
    std::memcpy(&bits, &f, 4);
    bits |= sign;
  } else if (e == 31) {
    bits = sign | 0x7f800000u | (m << 13);
  } else {
    bits = sign | ((e + 112) << 23) | (m << 13);
  }
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
#endif
}

SC_HOT int nibble_code(const uint8_t* base, int64_t j, int64_t half) {  // split-order nibble j
  return j < half ? (base[j] & 15) : (base[j - half] >> 4);
}
SC_HOT int nibble_seq(const uint8_t* base, int64_t j) { return (base[j >> 1] >> (4 * (j & 1))) & 15; }

inline uint64_t group_bits_to_mask(uint64_t bits, int g) {  // bit i -> g ones at g*i
  uint64_t m = 0;
  for (int i = 0; i < 64 / g; ++i)
    if ((bits >> i) & 1) m |= ((g == 64 ? ~0ull : ((1ull << g) - 1)) << (g * i));
  return m;
}

// Word w's keep mask from a row's bitmap, the group size G (0: element bitmap, 4 / 8 / 16: one bit per
// group of G inputs) known at compile time: G = 4 reads 16 bits, 8 a byte, 16 a nibble, and spreads
// them with pdep. (A generic form that read g from the layer and looked its constants up per word made
// a group bitmap run far behind an element bitmap in the same loop on AMD Zen 5; with the constants
// folded in it keeps up: results/quant_kernels.md, the "q4 group16" rows before and after.)
template <int G>
SC_HOT uint64_t word_mask(const uint64_t* row, int64_t w) {
  if constexpr (G == 0) {
    return row[w];
  } else {
    const uint8_t* b = reinterpret_cast<const uint8_t*>(row);  // little endian: bit i of the row at byte i / 8
    uint64_t bits;
    if constexpr (G == 4) {
      uint16_t h;
      std::memcpy(&h, b + 2 * w, 2);
      bits = h;
    } else if constexpr (G == 8) {
      bits = b[w];
    } else {
      static_assert(G == 16, "group bitmaps have groups of 4, 8 or 16 inputs");
      bits = (b[w >> 1] >> (4 * (w & 1))) & 15u;
    }
#if SCQ_AVX512
    constexpr uint64_t rep = G == 4 ? 0x1111111111111111ull : (G == 8 ? 0x0101010101010101ull : 0x0001000100010001ull);
    return _pdep_u64(bits, rep) * ((1ull << G) - 1);
#else
    return group_bits_to_mask(bits, G);
#endif
  }
}

// f(std::integral_constant<int, v>{}) for the first of the listed values equal to v (the last one when
// none is): loops templated on a small run-time parameter are dispatched once, outside the loop.
template <int First, int... Rest, class F>
SC_HOT void with_const(int v, F&& f) {
  if constexpr (sizeof...(Rest) == 0) {
    (void)v;
    f(std::integral_constant<int, First>{});
  } else if (v == First) {
    f(std::integral_constant<int, First>{});
  } else {
    with_const<Rest...>(v, f);
  }
}
// a bitmap's group size g (0, 4, 8, 16)
template <class F>
SC_HOT void with_group(int g, F&& f) { with_const<4, 8, 16, 0>(g, f); }

SC_HOT uint64_t keep_mask(const QLinear& L, int64_t r, int64_t w) {
  uint64_t m = 0;
  with_group(L.g, [&](auto G) SC_HOT_LAMBDA { m = word_mask<decltype(G)::value>(L.masks + r * L.mstride, w); });
  return m;
}

// Software prefetch kPrefetchAhead bytes ahead of a stream the loop is reading, spread over the loop
// (each step prefetches what it will consume 4 KiB later; one burst per row was measured 2x slower;
// variable-rate streams prefetch one line per step rather than loop on how far they got: that loop's
// data-dependent branch cost more than the redundant prefetches).
// The hardware prefetchers alone leave the decode loops waiting on memory: a 4096 x 4096 int4 50%
// bitmap layer with int8 inputs cycled through 96 MiB, 1 thread, 1190 -> 650 us per call.
constexpr int64_t kPrefetchAhead = 4096;
SC_HOT void prefetch_ahead(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p) + kPrefetchAhead;
  for (int64_t i = 0; i < bytes; i += 64) _mm_prefetch(c + i, _MM_HINT_T0);
}
// ------------------------------------------------------------------ scalar (portable)
template <int N>
void rows_scalar(const QLinear& L, const float* x, int64_t ldx, int64_t r0, int64_t r1, float* out) {
  const int64_t nr = r1 - r0, in = L.in, ng = in / (L.kind >= kQDense ? L.G : in);
  for (int64_t r = r0; r < r1; ++r) {
    double acc[N];
    for (int n = 0; n < N; ++n) acc[n] = 0.0;
    if (L.kind == kF32Dense) {
      const float* wr = L.w + r * in;
      for (int n = 0; n < N; ++n) {
        float s = 0.f;
        for (int64_t k = 0; k < in; ++k) s += wr[k] * x[n * ldx + k];
        acc[n] = s;
      }
    } else if (L.kind == kF32Bitmap) {
      const float* p = L.vals + L.rowoff[r];
      float s[N] = {};
      for (int64_t w = 0; w * 64 < in; ++w)
        for (uint64_t m = L.masks[r * L.mstride + w]; m; m &= m - 1) {
          const int64_t k = 64 * w + __builtin_ctzll(m);
          for (int n = 0; n < N; ++n) s[n] += *p * x[n * ldx + k];
          ++p;
        }
      for (int n = 0; n < N; ++n) acc[n] = s[n];
    } else {
      const uint16_t* sr = L.scales + r * ng;
      const uint8_t* zr = L.zeros + r * ng;
      float t[N] = {}, a[N] = {};
      auto code_dense = [&](int64_t k) -> int {
        const uint8_t* row = L.codes + r * L.cstride;
        if (L.bits == 8) return row[k];
        const int64_t b = k / L.blk, j = k % L.blk;
        return nibble_code(row + b * (L.blk / 2), j, L.blk / 2);
      };
      const uint8_t* stream = L.kind == kQSparse ? L.codes + L.rowoff[r] : nullptr;
      for (int64_t w = 0; w * 64 < in; ++w) {
        const uint64_t m = L.kind == kQSparse ? keep_mask(L, r, w) : ~0ull;
        const int64_t nk = __builtin_popcountll(m), half = (nk + 1) / 2;
        int64_t idx = 0;
        for (int64_t k = 64 * w; k < 64 * w + 64 && k < in; ++k) {
          const int64_t gi = k / L.G;
          if ((m >> (k - 64 * w)) & 1) {
            int q = L.kind == kQDense ? code_dense(k)
                                      : (L.bits == 8 ? stream[idx] : nibble_seq(stream, idx));
            ++idx;
            const float wq = (float)q - (float)zr[gi];
            for (int n = 0; n < N; ++n) t[n] += wq * x[n * ldx + k];
          }
          if ((k + 1) % L.G == 0) {
            for (int n = 0; n < N; ++n) { a[n] += half_to_float(sr[gi]) * t[n]; t[n] = 0.f; }
          }
        }
        if (L.kind == kQSparse) stream += L.bits == 8 ? nk : half;
      }
      for (int n = 0; n < N; ++n) acc[n] = a[n];
    }
    for (int n = 0; n < N; ++n) out[n * nr + (r - r0)] = (float)acc[n] + (L.bias ? L.bias[r] : 0.f);
  }
}

// a batch of n = 1..8 rows (the row loops are templates on it)
template <class F>
SC_HOT void with_batch(int n, F&& f) { with_const<1, 2, 3, 4, 5, 6, 7, 8>(n, f); }

}  // namespace sc

#include "qdot_simd.h"
#include "qdot_lanes.h"
#include "qdot_x8.h"

namespace sc {

template <int N>
void rows_dot(const QLinear& L, const float* x, int64_t ldx, int64_t r0, int64_t r1, float* out) {
  const int level = isa_level();
#if SCQ_AVX512
  if (level >= 2) { rows_avx512<N>(L, x, ldx, r0, r1, out); return; }
#endif
#if SCQ_AVX2
  if (level >= 1 && (L.kind == kQDense || L.kind == kF32Dense) && L.in % 16 == 0) { rows_avx2<N>(L, x, ldx, r0, r1, out); return; }
#endif
  (void)level;
  rows_scalar<N>(L, x, ldx, r0, r1, out);
}

inline void rows_dot_n(int n, const QLinear& L, const float* x, int64_t ldx, int64_t r0, int64_t r1, float* out) {
  with_batch(n, [&](auto N) { rows_dot<decltype(N)::value>(L, x, ldx, r0, r1, out); });
}

}  // namespace sc
