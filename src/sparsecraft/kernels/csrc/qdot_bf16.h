// Float-input rows of the int4 bitmap layout (kQSparse, bits 4, g 0 or 4) and of the dense int4 layout
// (blk 32), quantization groups of 64 * 2^k inputs, on bfloat16 dot products (AVX512_BF16 vdpbf16ps: 32 products per instruction), exact up
// to float32 rounding:
//   - the input is split once per call into three bfloat16 parts, x = x1 + x2 + x3 + e with
//     x1 = bf16(x), x2 = bf16(x - x1), x3 = bf16(x - x1 - x2) (round to nearest even), |e| <= 2^-24 |x|:
//     the float32 input to float32 precision (vcvtneps2bf16 flushes float32 subnormals, so parts below
//     2^-126 are lost: an absolute error under 1.2e-38 per input; inputs beyond bfloat16's largest finite
//     value, 3.39e38, or not finite give NaN, where the float32 loops give +-inf or NaN);
//   - a code c of group g becomes the bfloat16 of c - z[g] through a table (vpermw, one per zero
//     point): |c - z| <= 15 is exact in bfloat16; dropped inputs get the code 16 (table entry 0);
//   - the products of bfloat16 values are exact in float32 and accumulate in float32; the group's
//     sum is scaled by s[g] as in the float32 loops.
// Per 64 inputs: one widen and one expand (as for int8 inputs; the dense layout: one widen), two table
// permutes (two halves of the word: vpermw reads the low 5 bits of each 16-bit lane), six vdpbf16ps;
// the permute-per-16 float32 loop (extract, widen, table permute, FMA per 16 weights) took about twice
// the time (benchmarks/bench_quant_kernels.py rows "q4 bitmap", "q4 dense").
// Input layout (bf16_parts_of_input): per row and word w, six vectors of 32 bfloat16: for part p, the
// word's two halves in the layout's code order. Included from qdot.h.
#pragma once

#if SCQ_AVX512 && defined(__AVX512BF16__)
#define SCQ_BF16 1
#else
#define SCQ_BF16 0
#endif

namespace sc {

constexpr int kBf16Parts = 3;
constexpr int64_t kBf16PerWord = 2 * kBf16Parts * 32;  // bfloat16 values per row and word

inline bool bf16_input(const QLinear& L) {  // whether this layer's float input goes in bf16 parts
  const bool layout = (L.kind == kQSparse && (L.g == 0 || L.g == 4)) || (L.kind == kQDense && L.blk == 32);
  return SCQ_BF16 && layout && L.bits == 4 && L.G % 64 == 0 && ((L.G / 64) & (L.G / 64 - 1)) == 0 &&
         L.xbits == 0 && isa_level() >= 2;
}

#if SCQ_BF16
inline uint16_t bf16_round(float v) {  // round to nearest even (no NaNs in the tables)
  uint32_t u;
  std::memcpy(&u, &v, 4);
  return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

// xb (n * in / 64 * kBf16PerWord values) from rows x[0:n] (row stride ldx); in % 64 == 0. vcvtneps2bf16
// rounds to nearest even; the remainder rest - float(bf16(rest)) is exact in float32. The word's two
// halves ("even", "odd") follow the layout's code order: bitmap, inputs 0, 2, .., 62 and 1, 3, .., 63;
// dense int4 (blocks of 32, byte j = c[j] | c[j + 16] << 4), inputs 0..15, 32..47 and 16..31, 48..63.
inline void bf16_parts_of_input(const float* x, int64_t ldx, int n, int64_t in, bool dense, uint16_t* xb) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  for (int r = 0; r < n; ++r) {
    for (int64_t k = 0; k < in; k += 64) {
      const float* xk = x + r * ldx + k;
      uint16_t* o = xb + (r * (in / 64) + k / 64) * kBf16PerWord;
      const __m512 a0 = _mm512_loadu_ps(xk), a1 = _mm512_loadu_ps(xk + 16), a2 = _mm512_loadu_ps(xk + 32),
                   a3 = _mm512_loadu_ps(xk + 48);
      // the word's halves, 16 inputs at a time: bitmap, the even inputs 0..30, 32..62 then the odd ones;
      // dense, inputs 0..15, 32..47 then 16..31, 48..63
      __m512 rest[4];
      if (dense) {
        rest[0] = a0;
        rest[1] = a2;
        rest[2] = a1;
        rest[3] = a3;
      } else {
        rest[0] = _mm512_permutex2var_ps(a0, even, a1);
        rest[1] = _mm512_permutex2var_ps(a2, even, a3);
        rest[2] = _mm512_permutex2var_ps(a0, odd, a1);
        rest[3] = _mm512_permutex2var_ps(a2, odd, a3);
      }
      for (int p = 0; p < kBf16Parts; ++p) {
        for (int q = 0; q < 4; ++q) {
          const __m256i h = (__m256i)_mm512_cvtneps_pbh(rest[q]);
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 64 * p + 16 * q), h);
          rest[q] = _mm512_sub_ps(rest[q], _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
        }
      }
    }
  }
}

// Table z (16-bit lanes): lane c < 16 holds the bfloat16 of c - z. Lanes 16..31: 0 for the bitmap
// layout (the code of dropped inputs is 16: the expand fills their bytes with 0x10), lane c - 16's
// value for the dense one (its index lanes carry the next nibble's low bit in bit 4).
template <bool kDense>
inline const __m512i* bf16_code_tables() {
  alignas(64) static uint16_t t[16][32];
  static const bool ready = [] {
    for (int z = 0; z < 16; ++z)
      for (int c = 0; c < 32; ++c) t[z][c] = c < 16 || kDense ? bf16_round((float)(c % 16 - z)) : 0;
    return true;
  }();
  (void)ready;
  return reinterpret_cast<const __m512i*>(t);
}

// Word decoders: codes(w) is a vector of 16-bit table indices for the word's "even" inputs, shifted
// right by kOddShift the indices of its "odd" ones (bf16_parts_of_input's orders).
template <bool kGroups>
struct Bf16Bitmap {
  static constexpr bool kDense = false;
  static constexpr int kOddShift = 8;
  const QLinear* L = nullptr;
  int64_t r = 0;
  const uint64_t* mrow = nullptr;
  const uint8_t* stream = nullptr;
  Bf16Bitmap() = default;
  Bf16Bitmap(const QLinear& l, int64_t row)
      : L(&l), r(row), mrow(l.masks + row * l.mstride), stream(l.codes + l.rowoff[row]) {}
  SC_HOT __m512i codes(int64_t w) {
    prefetch_ahead(stream, 1);  // a word's codes are at most 32 bytes: one line
    if (!kGroups && (w & 7) == 0) prefetch_ahead(mrow + w, 64);
    const uint64_t m = kGroups ? keep_mask(*L, r, w) : mrow[w];
    return sparse_word_codes_q4(stream, m, _mm512_set1_epi8(16));  // dropped inputs: code 16
  }
};
struct Bf16Dense {
  static constexpr bool kDense = true;
  static constexpr int kOddShift = 4;
  const uint8_t* row = nullptr;
  Bf16Dense() = default;
  Bf16Dense(const QLinear& l, int64_t r) : row(l.codes + r * l.cstride) {}
  SC_HOT __m512i codes(int64_t w) {
    if ((w & 1) == 0) prefetch_ahead(row + 32 * w, 64);
    return _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 32 * w)));
  }
};

// P rows r..r+P-1 (P = 2 at batch 1: the rows share the input's loads and overlap their chains).
template <class Word, int N, int P>
SC_HOT void bf16_row_block(const QLinear& L, const uint16_t* xb, int64_t r, int64_t nr, float* out) {
  const int64_t ng = L.in / L.G, words = L.in / 64;
  const int64_t wlast = L.G / 64 - 1;  // words per group - 1 (a power of two minus 1)
  const int wshift = __builtin_ctzll((uint64_t)(L.G / 64));
  const __m512i* tables = bf16_code_tables<Word::kDense>();
  const uint16_t* sr[P];
  const uint8_t* zr[P];
  Word word[P];
  __m512 acc[P][N], te[P][N], to[P][N];
  __m512i table[P];
  for (int q = 0; q < P; ++q) {
    word[q] = Word(L, r + q);
    sr[q] = L.scales + (r + q) * ng;
    zr[q] = L.zeros + (r + q) * ng;
    table[q] = _mm512_setzero_si512();
    for (int n = 0; n < N; ++n) acc[q][n] = te[q][n] = to[q][n] = _mm512_setzero_ps();
  }
  for (int64_t w = 0; w < words; ++w) {
    __m512bh even[P], odd[P];
    for (int q = 0; q < P; ++q) {
      if ((w & wlast) == 0) table[q] = _mm512_load_si512(tables + (zr[q][w >> wshift] & 15));
      const __m512i b = word[q].codes(w);
      even[q] = (__m512bh)_mm512_permutexvar_epi16(b, table[q]);
      odd[q] = (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(b, Word::kOddShift), table[q]);
    }
    for (int n = 0; n < N; ++n) {
      const uint16_t* xw = xb + (n * words + w) * kBf16PerWord;
      for (int p = 0; p < kBf16Parts; ++p) {
        const __m512bh xe = (__m512bh)_mm512_loadu_si512(xw + 64 * p), xo = (__m512bh)_mm512_loadu_si512(xw + 64 * p + 32);
        for (int q = 0; q < P; ++q) {
          te[q][n] = _mm512_dpbf16_ps(te[q][n], even[q], xe);
          to[q][n] = _mm512_dpbf16_ps(to[q][n], odd[q], xo);
        }
      }
    }
    if ((w & wlast) == wlast) {  // the group's sum, scaled
      for (int q = 0; q < P; ++q) {
        const __m512 s = _mm512_set1_ps(half_to_float(sr[q][w >> wshift]));
        for (int n = 0; n < N; ++n) {
          acc[q][n] = _mm512_fmadd_ps(s, _mm512_add_ps(te[q][n], to[q][n]), acc[q][n]);
          te[q][n] = to[q][n] = _mm512_setzero_ps();
        }
      }
    }
  }
  for (int q = 0; q < P; ++q)
    for (int n = 0; n < N; ++n)
      out[n * nr + q] = _mm512_reduce_add_ps(acc[q][n]) + (L.bias ? L.bias[r + q] : 0.f);
}

template <class Word, int N>
void bf16_rows(const QLinear& L, const uint16_t* xb, int64_t r0, int64_t r1, float* out) {
  const int64_t nr = r1 - r0;
  int64_t r = r0;
  if (N == 1)
    for (; r + 2 <= r1; r += 2) bf16_row_block<Word, N, 2>(L, xb, r, nr, out + (r - r0));
  for (; r < r1; ++r) bf16_row_block<Word, N, 1>(L, xb, r, nr, out + (r - r0));
}
template <int N>
void rows_bf16(const QLinear& L, const uint16_t* xb, int64_t r0, int64_t r1, float* out) {
  if (L.kind == kQDense) bf16_rows<Bf16Dense, N>(L, xb, r0, r1, out);
  else if (L.g) bf16_rows<Bf16Bitmap<true>, N>(L, xb, r0, r1, out);
  else bf16_rows<Bf16Bitmap<false>, N>(L, xb, r0, r1, out);
}
#else
inline void bf16_parts_of_input(const float*, int64_t, int, int64_t, bool, uint16_t*) {}
#endif  // SCQ_BF16

inline void rows_bf16_n(int n, const QLinear& L, const uint16_t* xb, int64_t r0, int64_t r1, float* out) {
#if SCQ_BF16
  with_batch(n, [&](auto N) { rows_bf16<decltype(N)::value>(L, xb, r0, r1, out); });
#else
  (void)n; (void)L; (void)xb; (void)r0; (void)r1; (void)out;
#endif
}

}  // namespace sc
