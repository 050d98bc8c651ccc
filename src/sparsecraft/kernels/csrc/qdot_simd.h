// AVX-512 and AVX2 row dot products for qdot.h (same layouts, same results up to float summation
// order). Included from qdot.h only.
#pragma once

namespace sc {

#if SCQ_AVX512
inline __m512 cvt_u8x16(__m128i b) { return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b)); }

// 64 codes of the kept inputs of one 64-input word, expanded into their lanes (0 elsewhere). int4:
// the nibbles (c0 | c1 << 4, c2 | c3 << 4, ...) are split with AND / shift and put back in order
// with one byte permute (vpcompressb would do it too, but costs ~35 cycles on AMD Zen 4).
inline __m512i sparse_word_codes(const uint8_t*& stream, uint64_t m, int bits) {
  const int n = __builtin_popcountll(m);
  __m512i compact;
  if (bits == 8) {
    compact = _mm512_loadu_si512(stream);
    stream += n;
  } else {
    static const __m512i order = [] {
      alignas(64) uint8_t idx[64];
      for (int k = 0; k < 64; ++k) idx[k] = (uint8_t)((k & 1) ? 32 + k / 2 : k / 2);
      return _mm512_load_si512(idx);
    }();
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(stream));
    const __m256i lo4 = _mm256_set1_epi8(0x0F);
    const __m256i lo = _mm256_and_si256(b, lo4), hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), lo4);
    compact = _mm512_permutexvar_epi8(order, _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1));
    stream += (n + 1) / 2;
  }
  return _mm512_maskz_expand_epi8(m, compact);
}

template <int N>
void rows_avx512(const QLinear& L, const float* x, int64_t ldx, int64_t r0, int64_t r1, float* out) {
  const int64_t nr = r1 - r0, in = L.in;
  for (int64_t r = r0; r < r1; ++r) {
    __m512 acc[N], t0[N], t1[N];
    for (int n = 0; n < N; ++n) acc[n] = t0[n] = t1[n] = _mm512_setzero_ps();
    if (L.kind == kF32Dense) {
      const float* wr = L.w + r * in;
      int64_t k = 0;
      for (; k + 32 <= in; k += 32) {
        const __m512 w0 = _mm512_loadu_ps(wr + k), w1 = _mm512_loadu_ps(wr + k + 16);
        for (int n = 0; n < N; ++n) {
          t0[n] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + n * ldx + k), t0[n]);
          t1[n] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + n * ldx + k + 16), t1[n]);
        }
      }
      for (; k < in; k += 16) {
        const __mmask16 mk = (__mmask16)((in - k) >= 16 ? 0xFFFF : ((1u << (in - k)) - 1));
        const __m512 w0 = _mm512_maskz_loadu_ps(mk, wr + k);
        for (int n = 0; n < N; ++n) t0[n] = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(mk, x + n * ldx + k), t0[n]);
      }
      for (int n = 0; n < N; ++n) acc[n] = _mm512_add_ps(t0[n], t1[n]);
    } else if (L.kind == kF32Bitmap) {
      const float* p = L.vals + L.rowoff[r];
      for (int64_t w = 0; w * 64 < in; ++w) {
        const uint64_t m = L.masks[r * L.mstride + w];
        for (int i = 0; i < 4 && 64 * w + 16 * i < in; ++i) {
          const __mmask16 mi = (__mmask16)(m >> (16 * i));
          if (!mi) continue;
          const __m512 wv = _mm512_maskz_expand_ps(mi, _mm512_loadu_ps(p));
          p += __builtin_popcount(mi);
          for (int n = 0; n < N; ++n)
            t0[n] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(mi, x + n * ldx + 64 * w + 16 * i), t0[n]);
        }
      }
      for (int n = 0; n < N; ++n) acc[n] = t0[n];
    } else if (L.kind == kQDense) {
      const int64_t ng = in / L.G;
      const uint16_t* sr = L.scales + r * ng;
      const uint8_t* zr = L.zeros + r * ng;
      const uint8_t* row = L.codes + r * L.cstride;
      const __m128i lo4 = _mm_set1_epi8(0x0F);
      int64_t k = 0;
      for (int64_t gi = 0; gi < ng; ++gi) {
        const __m512 z = _mm512_set1_ps((float)zr[gi]);
        const int64_t kend = k + L.G;
        if (L.bits == 8) {
          for (; k < kend; k += 16) {
            const __m512 wz = _mm512_sub_ps(cvt_u8x16(_mm_loadu_si128((const __m128i*)(row + k))), z);
            for (int n = 0; n < N; ++n) t0[n] = _mm512_fmadd_ps(wz, _mm512_loadu_ps(x + n * ldx + k), t0[n]);
          }
        } else if (L.blk == 32) {
          for (; k < kend; k += 32) {
            const __m128i b = _mm_loadu_si128((const __m128i*)(row + k / 2));
            const __m512 w0 = _mm512_sub_ps(cvt_u8x16(_mm_and_si128(b, lo4)), z);
            const __m512 w1 = _mm512_sub_ps(cvt_u8x16(_mm_and_si128(_mm_srli_epi16(b, 4), lo4)), z);
            for (int n = 0; n < N; ++n) {
              t0[n] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + n * ldx + k), t0[n]);
              t1[n] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + n * ldx + k + 16), t1[n]);
            }
          }
        } else {
          for (; k < kend; k += 16) {
            uint64_t v;
            std::memcpy(&v, row + k / 2, 8);
            const __m128i b = _mm_set_epi64x((long long)((v >> 4) & 0x0F0F0F0F0F0F0F0Full),
                                             (long long)(v & 0x0F0F0F0F0F0F0F0Full));
            const __m512 wz = _mm512_sub_ps(cvt_u8x16(b), z);
            for (int n = 0; n < N; ++n) t0[n] = _mm512_fmadd_ps(wz, _mm512_loadu_ps(x + n * ldx + k), t0[n]);
          }
        }
        const __m512 s = _mm512_set1_ps(half_to_float(sr[gi]));
        for (int n = 0; n < N; ++n) {
          acc[n] = _mm512_fmadd_ps(s, _mm512_add_ps(t0[n], t1[n]), acc[n]);
          t0[n] = t1[n] = _mm512_setzero_ps();
        }
      }
    } else {  // kQSparse
      const int64_t ng = in / L.G;
      const uint16_t* sr = L.scales + r * ng;
      const uint8_t* zr = L.zeros + r * ng;
      const uint8_t* stream = L.codes + L.rowoff[r];
      int64_t gi = 0, gend = L.G;  // current quantization group and where it ends (no division)
      for (int64_t w = 0; w * 64 < in; ++w) {
        const uint64_t m = keep_mask(L, r, w);
        const __m512i lanes = m ? sparse_word_codes(stream, m, L.bits) : _mm512_setzero_si512();
        const __m128i part[4] = {_mm512_castsi512_si128(lanes), _mm512_extracti32x4_epi32(lanes, 1),
                                 _mm512_extracti32x4_epi32(lanes, 2), _mm512_extracti32x4_epi32(lanes, 3)};
        for (int i = 0; i < 4; ++i) {
          const int64_t col = 64 * w + 16 * i;
          if (col >= in) break;
          const __mmask16 mi = (__mmask16)(m >> (16 * i));
          if (mi) {
            const __m512 wz = _mm512_maskz_sub_ps(mi, cvt_u8x16(part[i]), _mm512_set1_ps((float)zr[gi]));
            for (int n = 0; n < N; ++n) {
              if (i & 1) t1[n] = _mm512_fmadd_ps(wz, _mm512_loadu_ps(x + n * ldx + col), t1[n]);
              else t0[n] = _mm512_fmadd_ps(wz, _mm512_loadu_ps(x + n * ldx + col), t0[n]);
            }
          }
          if (col + 16 == gend) {
            const __m512 s = _mm512_set1_ps(half_to_float(sr[gi]));
            for (int n = 0; n < N; ++n) {
              acc[n] = _mm512_fmadd_ps(s, _mm512_add_ps(t0[n], t1[n]), acc[n]);
              t0[n] = t1[n] = _mm512_setzero_ps();
            }
            ++gi;
            gend += L.G;
          }
        }
      }
    }
    for (int n = 0; n < N; ++n)
      out[n * nr + (r - r0)] = _mm512_reduce_add_ps(acc[n]) + (L.bias ? L.bias[r] : 0.f);
  }
}
#endif  // SCQ_AVX512

#if SCQ_AVX2
inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline __m256 cvt_u8x8(uint64_t v) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)v))); }

// AVX2: float32 dense and quantized dense rows (8 lanes; the int4 codes of 16 inputs at a time).
template <int N>
void rows_avx2(const QLinear& L, const float* x, int64_t ldx, int64_t r0, int64_t r1, float* out) {
  const int64_t nr = r1 - r0, in = L.in;
  for (int64_t r = r0; r < r1; ++r) {
    __m256 acc[N], t[N];
    for (int n = 0; n < N; ++n) acc[n] = t[n] = _mm256_setzero_ps();
    if (L.kind == kF32Dense) {
      const float* wr = L.w + r * in;
      for (int64_t k = 0; k < in; k += 8) {  // in % 16 == 0
        const __m256 wv = _mm256_loadu_ps(wr + k);
        for (int n = 0; n < N; ++n) acc[n] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + n * ldx + k), acc[n]);
      }
    } else {
      const int64_t ng = in / L.G;
      const uint8_t* row = L.codes + r * L.cstride;
      int64_t k = 0;
      for (int64_t gi = 0; gi < ng; ++gi) {
        const __m256 z = _mm256_set1_ps((float)L.zeros[r * ng + gi]);
        for (const int64_t kend = k + L.G; k < kend; k += 16) {
          uint64_t a, b;
          if (L.bits == 8) {
            std::memcpy(&a, row + k, 8);
            std::memcpy(&b, row + k + 8, 8);
          } else {  // the 16 codes starting at k: blocks of blk inputs, byte j = c[j] | c[j + blk/2] << 4
            const int64_t base = (k / L.blk) * (L.blk / 2), off = k % L.blk, half = L.blk / 2;
            uint64_t v0, v1;
            std::memcpy(&v0, row + base + (off < half ? off : off - half), 8);
            std::memcpy(&v1, row + base + (off < half ? off : off - half) + 8, 8);
            if (half == 8) { a = v0 & 0x0F0F0F0F0F0F0F0Full; b = (v0 >> 4) & 0x0F0F0F0F0F0F0F0Full; }
            else if (off < half) { a = v0 & 0x0F0F0F0F0F0F0F0Full; b = v1 & 0x0F0F0F0F0F0F0F0Full; }
            else { a = (v0 >> 4) & 0x0F0F0F0F0F0F0F0Full; b = (v1 >> 4) & 0x0F0F0F0F0F0F0F0Full; }
          }
          const __m256 w0 = _mm256_sub_ps(cvt_u8x8(a), z), w1 = _mm256_sub_ps(cvt_u8x8(b), z);
          for (int n = 0; n < N; ++n) {
            t[n] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + n * ldx + k), t[n]);
            t[n] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + n * ldx + k + 8), t[n]);
          }
        }
        const __m256 s = _mm256_set1_ps(half_to_float(L.scales[r * ng + gi]));
        for (int n = 0; n < N; ++n) { acc[n] = _mm256_fmadd_ps(s, t[n], acc[n]); t[n] = _mm256_setzero_ps(); }
      }
    }
    for (int n = 0; n < N; ++n) out[n * nr + (r - r0)] = hsum256(acc[n]) + (L.bias ? L.bias[r] : 0.f);
  }
}
#endif  // SCQ_AVX2

}  // namespace sc
