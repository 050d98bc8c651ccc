// Float-input rows of the int4 / int8 bitmap layouts (kQSparse: element bitmap or groups of 4 / 8 / 16)
// and of the dense int4 layout (blk 32), quantization groups of 64 * 2^k inputs, on float32 FMAs with the codes turned into weights
// in the dword lanes they arrive in:
//   - bitmap: a word's codes are expanded to one byte per input (vpexpandb), dropped inputs filled
//     with the group's zero point z (so that their weight, s * (z - z), is 0); dword lane i holds the
//     codes of inputs 4i .. 4i+3, and shifting it right by 8j puts input 4i+j's code in the low byte;
//   - dense int4: the word's 32 bytes widened as 16-bit pairs to dword lanes (four nibbles each),
//     shifting right by 4j puts the j-th nibble in the low 4 bits;
//   - so four vectors of 16 weights come from three shifts, no cross-lane shuffle per vector; the
//     input is permuted once per call to match (lanes_of_input): xl[64 w + 16 j + i] = x[64 w +
//     lane_input(j, i)];
//   - int4: vpermps reads the low 4 bits of each index lane, so the shifted vector indexes a 16-entry
//     table of s * (c - z) directly (exact: c - z has at most 5 bits, s 11; the table is one FMA,
//     iota * s + (-z s), from 16 groups' scales and zero points loaded at a time);
//   - int8: the exponent trick, float(0x4B000000 | c) = 2^23 + c exactly, minus 2^23 + z gives c - z
//     exactly (one vpternlogd for the AND and OR, one subtraction); the group's sum is scaled once.
// The result is the float32 dot product of x with the dequantized weights s * (c - z): the input is
// not rounded. Two rows per step at batch 1. It replaced a loop on
// bfloat16 dot products (the input in three bfloat16 parts, two table permutes and six vdpbf16ps per
// 64 inputs; docs/quantization.md). Included from qdot.h.
#pragma once

namespace sc {

inline bool lanes_input(const QLinear& L) {  // whether this layer's float input goes in lanes order
  const bool layout = L.kind == kQSparse || (L.kind == kQDense && L.bits == 4 && L.blk == 32);
  return SCQ_AVX512 && layout && L.G % 64 == 0 && ((L.G / 64) & (L.G / 64 - 1)) == 0 && L.xbits == 0 &&
         isa_level() >= 2;
}

// The input (0..63 within its word) whose weight lane i of vector j carries.
inline int lane_input(bool dense, int j, int i) {
  if (!dense) return 4 * i + j;
  const int byte = 2 * i + (j >> 1);  // j even: low nibble, odd: high nibble of the byte
  return 32 * (byte / 16) + byte % 16 + 16 * (j & 1);  // blocks of 32: byte b = c[b] | c[b + 16] << 4
}

#if SCQ_AVX512
// xl (n * in floats) from rows x[0:n] (row stride ldx); in % 64 == 0.
inline void lanes_of_input(const float* x, int64_t ldx, int n, int64_t in, bool dense, float* xl) {
  __m512i idx[4];
  __mmask16 high[4];  // lanes whose input is in the word's second half
  for (int j = 0; j < 4; ++j) {
    alignas(64) int32_t t[16];
    for (int i = 0; i < 16; ++i) t[i] = lane_input(dense, j, i);
    idx[j] = _mm512_load_si512(t);
    high[j] = _mm512_cmpge_epi32_mask(idx[j], _mm512_set1_epi32(32));
  }
  for (int r = 0; r < n; ++r)
    for (int64_t k = 0; k < in; k += 64) {
      const float* xk = x + r * ldx + k;
      const __m512 a0 = _mm512_loadu_ps(xk), a1 = _mm512_loadu_ps(xk + 16), a2 = _mm512_loadu_ps(xk + 32),
                   a3 = _mm512_loadu_ps(xk + 48);
      for (int j = 0; j < 4; ++j) {  // permutex2var reads the low 5 bits of the index
        const __m512 lo = _mm512_permutex2var_ps(a0, idx[j], a1), hi = _mm512_permutex2var_ps(a2, idx[j], a3);
        _mm512_storeu_ps(xl + r * in + k + 16 * j, _mm512_mask_mov_ps(lo, high[j], hi));
      }
    }
}

// Word decoders: codes(w, fill) is the word's codes in dword lanes, the next code kShift bits up.
// Bitmap: the row's code stream expanded, dropped inputs filled with the bytes of `fill`.
template <int BITS, int kG>
struct LanesBitmap {
  static constexpr int kShift = 8;
  static constexpr bool kFill = true;  // codes() takes the fill bytes
  const uint64_t* mrow = nullptr;
  const uint8_t* stream = nullptr;
  LanesBitmap() = default;
  LanesBitmap(const QLinear& l, int64_t row) : mrow(l.masks + row * l.mstride), stream(l.codes + l.rowoff[row]) {}
  SC_HOT __m512i codes(int64_t w, __m512i fill) {
    prefetch_ahead(stream, 1);  // a word's codes are at most 64 bytes: one line
    if ((w & 7) == 0) prefetch_ahead(mrow + (kG ? w / kG : w), 64);  // the masks of the next 8 words and more
    const uint64_t m = word_mask<kG>(mrow, w);
    return sparse_word_codes_filled(stream, m, BITS, fill);
  }
};
struct LanesDenseQ4 {
  static constexpr int kShift = 4;
  static constexpr bool kFill = false;
  const uint8_t* row = nullptr;
  LanesDenseQ4() = default;
  LanesDenseQ4(const QLinear& l, int64_t r) : row(l.codes + r * l.cstride) {}
  SC_HOT __m512i codes(int64_t w, __m512i) {
    if ((w & 1) == 0) prefetch_ahead(row + 32 * w, 64);
    return _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 32 * w)));
  }
};

// Scales and zero points of 16 quantization groups at a time, broadcast one group after the other.
struct GroupParams {
  __m512 s16, zs16;  // int4: s and -z s; int8: s and 2^23 + z
  __m512i zbytes, next;  // z of group k in byte k; k in every byte of `next` (vpermps reads the low 4 bits)
  template <int BITS>
  SC_HOT void load(const uint16_t* sr, const uint8_t* zr, int64_t g0, int64_t ng) {
    const __mmask16 mb = (__mmask16)((1u << std::min<int64_t>(16, ng - g0)) - 1);
    s16 = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mb, sr + g0));
    const __m512i z16 = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mb, zr + g0));
    zbytes = _mm512_castsi128_si512(_mm512_cvtepi32_epi8(z16));
    zs16 = BITS == 4 ? _mm512_mul_ps(_mm512_cvtepi32_ps(z16), _mm512_sub_ps(_mm512_setzero_ps(), s16))
                     : _mm512_cvtepi32_ps(_mm512_add_epi32(z16, _mm512_set1_epi32(1 << 23)));
    next = _mm512_setzero_si512();
  }
  // the next group's zero point in every byte (`fill`, where kFill), its scale and its zs in every lane
  template <bool kFill>
  SC_HOT void take(__m512i& fill, __m512& s, __m512& zs) {
    if (kFill) fill = _mm512_permutexvar_epi8(next, zbytes);
    s = _mm512_permutexvar_ps(next, s16);
    zs = _mm512_permutexvar_ps(next, zs16);
    next = _mm512_add_epi8(next, _mm512_set1_epi8(1));
  }
};

// P rows r..r+P-1 for N input rows (P = 2 at batch 1).
template <class Word, int BITS, int N, int P>
SC_HOT void lanes_row_block(const QLinear& L, const float* xl, int64_t r, int64_t nr, float* out) {
  const int64_t ng = L.in / L.G, words = L.in / 64, in = L.in;
  const int64_t wlast = L.G / 64 - 1;  // words per group - 1 (a power of two minus 1)
  const int wshift = __builtin_ctzll((uint64_t)(L.G / 64));
  // int4: accumulators per lane vector j where registers allow (an FMA chain has 4 cycles of latency)
  constexpr int A = BITS == 4 ? (N * P <= 2 ? 4 : (N <= 2 ? 2 : 1)) : 1;
  const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i lo8 = _mm512_set1_epi32(0xFF), expo = _mm512_set1_epi32(0x4B000000);
  const uint16_t* sr[P];
  const uint8_t* zr[P];
  Word word[P];
  GroupParams gp[P];
  __m512i fill[P] = {};
  __m512 table[P], scale[P], zs[P], acc[P][N][A], t[P][N][2];
  for (int q = 0; q < P; ++q) {
    word[q] = Word(L, r + q);
    sr[q] = L.scales + (r + q) * ng;
    zr[q] = L.zeros + (r + q) * ng;
    for (int n = 0; n < N; ++n) {
      t[q][n][0] = t[q][n][1] = _mm512_setzero_ps();
      for (int a = 0; a < A; ++a) acc[q][n][a] = _mm512_setzero_ps();
    }
  }
  for (int64_t w = 0; w < words; ++w) {
    // one row after the other within the word (interleaving the two rows' steps was slower on the
    // dense layout: more values live at once than registers)
    for (int q = 0; q < P; ++q) {
      if ((w & wlast) == 0) {  // a group starts
        const int64_t gi = w >> wshift;
        if ((gi & 15) == 0) {
          prefetch_ahead(sr[q] + gi, 32);  // the scales and zero points of 16 groups, 4 KiB ahead (with
          prefetch_ahead(zr[q] + gi, 16);  // hardware prefetch alone, DRAM-cycled calls waited on them)
          gp[q].template load<BITS>(sr[q], zr[q], gi, ng);
        }
        gp[q].template take<Word::kFill>(fill[q], scale[q], zs[q]);
        if (BITS == 4) table[q] = _mm512_fmadd_ps(iota, scale[q], zs[q]);
      }
      const __m512i v = word[q].codes(w, fill[q]);
      for (int j = 0; j < 4; ++j) {
        const __m512i l = j ? _mm512_srli_epi32(v, Word::kShift * j) : v;
        __m512 wj;
        if (BITS == 4) {
          wj = _mm512_permutexvar_ps(l, table[q]);
        } else {
          const __m512i e = j == 3 ? _mm512_or_si512(l, expo) : _mm512_ternarylogic_epi32(l, lo8, expo, 0xEA);
          wj = _mm512_sub_ps(_mm512_castsi512_ps(e), zs[q]);  // c - z
        }
        for (int n = 0; n < N; ++n) {
          const __m512 xv = _mm512_loadu_ps(xl + n * in + 64 * w + 16 * j);
          if (BITS == 4) acc[q][n][j % A] = _mm512_fmadd_ps(wj, xv, acc[q][n][j % A]);
          else t[q][n][j >> 1] = _mm512_fmadd_ps(wj, xv, t[q][n][j >> 1]);  // two chains of two
        }
      }
    }
    if (BITS == 8 && (w & wlast) == wlast) {  // the group's sum, scaled
      for (int q = 0; q < P; ++q)
        for (int n = 0; n < N; ++n) {
          acc[q][n][0] = _mm512_fmadd_ps(scale[q], _mm512_add_ps(t[q][n][0], t[q][n][1]), acc[q][n][0]);
          t[q][n][0] = t[q][n][1] = _mm512_setzero_ps();
        }
    }
  }
  for (int q = 0; q < P; ++q)
    for (int n = 0; n < N; ++n) {
      __m512 s = acc[q][n][0];
      for (int a = 1; a < A; ++a) s = _mm512_add_ps(s, acc[q][n][a]);
      out[n * nr + q] = _mm512_reduce_add_ps(s) + (L.bias ? L.bias[r + q] : 0.f);
    }
}

template <class Word, int BITS, int N>
void lanes_rows(const QLinear& L, const float* xl, int64_t r0, int64_t r1, float* out) {
  const int64_t nr = r1 - r0;
  int64_t r = r0;
  if (N == 1)
    for (; r + 2 <= r1; r += 2) lanes_row_block<Word, BITS, N, 2>(L, xl, r, nr, out + (r - r0));
  for (; r < r1; ++r) lanes_row_block<Word, BITS, N, 1>(L, xl, r, nr, out + (r - r0));
}
template <int N>
void rows_lanes(const QLinear& L, const float* xl, int64_t r0, int64_t r1, float* out) {
  if (L.kind == kQDense) {
    lanes_rows<LanesDenseQ4, 4, N>(L, xl, r0, r1, out);
    return;
  }
  with_group(L.g, [&](auto G) {
    if (L.bits == 4) lanes_rows<LanesBitmap<4, decltype(G)::value>, 4, N>(L, xl, r0, r1, out);
    else lanes_rows<LanesBitmap<8, decltype(G)::value>, 8, N>(L, xl, r0, r1, out);
  });
}
#else
inline void lanes_of_input(const float*, int64_t, int, int64_t, bool, float*) {}
#endif  // SCQ_AVX512

inline void rows_lanes_n(int n, const QLinear& L, const float* xl, int64_t r0, int64_t r1, float* out) {
#if SCQ_AVX512
  with_batch(n, [&](auto N) { rows_lanes<decltype(N)::value>(L, xl, r0, r1, out); });
#else
  (void)n; (void)L; (void)xl; (void)r0; (void)r1; (void)out;
#endif
}

}  // namespace sc
