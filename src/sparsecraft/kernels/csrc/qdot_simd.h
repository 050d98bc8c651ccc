// AVX-512 and AVX2 row dot products for qdot.h (same layouts, same results up to float summation
// order). Included from qdot.h only.
#pragma once

namespace sc {

#if SCQ_AVX512
SC_HOT __m512 cvt_u8x16(__m128i b) { return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b)); }

// int4: the 16 dequantized values s * (k - z), k = 0..15, of one quantization group in a register;
// a code is then one permute away from its float (k * s - s * z is exact: see quant/grid.py).
SC_HOT __m512 int4_lut(float s, float z) {
  const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  return _mm512_fmsub_ps(iota, _mm512_set1_ps(s), _mm512_set1_ps(s * z));
}
SC_HOT __m512 lut16(__m128i codes, __m512 lut) { return _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(codes), lut); }

// 64 codes of the kept inputs of one 64-input word, expanded into their lanes (0 elsewhere). int4:
// the bytes (c0 | c1 << 4, c2 | c3 << 4, ...) are widened to 16 bits and (w | w << 4) & 0x0F0F puts
// c0, c1, c2, ... in byte order (one cross-lane widen; an AND / shift split needs a byte permute after
// it). The expand is vpexpandb (vpcompressb on the inputs would do it too, but costs ~35 cycles on
// AMD Zen 5, family 1Ah).
SC_HOT __m512i q4_compact(const uint8_t* p) {  // 64 nibbles at p -> 64 bytes, in order
  const __m512i w = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_and_si512(_mm512_or_si512(w, _mm512_slli_epi16(w, 4)), _mm512_set1_epi16(0x0F0F));
}
// The word with `fill` in the bytes of dropped inputs.
SC_HOT __m512i sparse_word_codes_filled(const uint8_t*& stream, uint64_t m, int bits, __m512i fill) {
  const unsigned n = (unsigned)__builtin_popcountll(m);
  __m512i compact;
  if (bits == 8) {
    compact = in_reg(_mm512_loadu_si512(stream));
    stream += n;
  } else {
    compact = q4_compact(stream);
    stream += (n + 1) >> 1;
  }
  return _mm512_mask_expand_epi8(fill, m, compact);
}
SC_HOT __m512i sparse_word_codes(const uint8_t*& stream, uint64_t m, int bits) {
  return sparse_word_codes_filled(stream, m, bits, _mm512_setzero_si512());
}

// Kept groups of 16 or 8 inputs of row r: the set bits of the row's group bitmap (one loop exit
// per 64 groups to mispredict, not one branch per chunk), codes decoded in registers, x read
// contiguously at the group's columns; each group's codes are scaled by its quantization group.
template <int N>
inline void group_rows(const QLinear& L, int64_t r, const float* x, int64_t ldx, __m512* acc) {
  const int g = L.g, ratio = L.G / g;
  const bool pow2 = (ratio & (ratio - 1)) == 0;
  const int sh = __builtin_ctz((unsigned)ratio);
  const int64_t ng = L.in / L.G;
  const uint16_t* sr = L.scales + r * ng;
  const uint8_t* zr = L.zeros + r * ng;
  const uint64_t* gb = L.masks + r * L.mstride;
  const uint8_t* p = L.codes + L.rowoff[r];
  const int64_t step = (int64_t)g * L.bits / 8;
  __m256 acc8[N];
  for (int n = 0; n < N; ++n) acc8[n] = _mm256_setzero_ps();
  for (int64_t wi = 0; wi < L.mstride; ++wi) {
    prefetch_ahead(gb + wi, 8);
    for (uint64_t bits = gb[wi]; bits; bits &= bits - 1) {
      prefetch_ahead(p, 1);  // one line: a group's codes are 4-16 bytes
      const int64_t j = wi * 64 + __builtin_ctzll(bits), col = j * g, qg = pow2 ? (j >> sh) : j / ratio;
      const float s = half_to_float(sr[qg]), z = (float)zr[qg];
      if (g == 16) {
        __m128i b;
        if (L.bits == 8) {
          b = _mm_loadu_si128((const __m128i*)p);
        } else {
          uint64_t v;
          std::memcpy(&v, p, 8);
          const __m128i lo = _mm_cvtsi64_si128((long long)(v & 0x0F0F0F0F0F0F0F0Full));
          const __m128i hi = _mm_cvtsi64_si128((long long)((v >> 4) & 0x0F0F0F0F0F0F0F0Full));
          b = _mm_unpacklo_epi8(lo, hi);  // c0 c1 ... c15
        }
        const __m512 w = _mm512_mul_ps(_mm512_sub_ps(cvt_u8x16(b), _mm512_set1_ps(z)), _mm512_set1_ps(s));
        for (int n = 0; n < N; ++n) acc[n] = _mm512_fmadd_ps(w, _mm512_loadu_ps(x + n * ldx + col), acc[n]);
      } else {
        uint64_t v = 0;
        if (L.bits == 8) {
          std::memcpy(&v, p, 8);
        } else {
          uint32_t u;
          std::memcpy(&u, p, 4);
          const uint64_t lo = u & 0x0F0F0F0Fu, hi = (u >> 4) & 0x0F0F0F0Fu;
          v = (uint64_t)_mm_cvtsi128_si64(_mm_unpacklo_epi8(_mm_cvtsi32_si128((int)lo), _mm_cvtsi32_si128((int)hi)));
        }
        const __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)v)));
        const __m256 w = _mm256_mul_ps(_mm256_sub_ps(q, _mm256_set1_ps(z)), _mm256_set1_ps(s));
        for (int n = 0; n < N; ++n) acc8[n] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + n * ldx + col), acc8[n]);
      }
      p += step;
    }
  }
  for (int n = 0; n < N; ++n)
    acc[n] = _mm512_add_ps(acc[n], _mm512_zextps256_ps512(acc8[n]));
}

template <int N>
void rows_avx512(const QLinear& L, const float* x, int64_t ldx, int64_t r0, int64_t r1, float* out) {
  const int64_t nr = r1 - r0, in = L.in;
  for (int64_t r = r0; r < r1; ++r) {
    // four independent FMA chains at batch 1 (an FMA's latency is 4 cycles: one chain caps a core
    // at 16 weights per 4 cycles), two otherwise (the batch rows are independent chains already)
    constexpr bool kW = N == 1;
    __m512 acc[N], t0[N], t1[N], t2[N], t3[N];
    for (int n = 0; n < N; ++n) acc[n] = t0[n] = t1[n] = t2[n] = t3[n] = _mm512_setzero_ps();
    auto fold = [&](const __m512& s) SC_HOT_LAMBDA {
      for (int n = 0; n < N; ++n) {
        __m512 t = _mm512_add_ps(t0[n], t1[n]);
        if (kW) t = _mm512_add_ps(t, _mm512_add_ps(t2[n], t3[n]));
        acc[n] = _mm512_fmadd_ps(s, t, acc[n]);
        t0[n] = t1[n] = t2[n] = t3[n] = _mm512_setzero_ps();
      }
    };
    if (L.kind == kF32Dense) {
      const float* wr = L.w + r * in;
      int64_t k = 0;
      for (; kW && k + 64 <= in; k += 64) {
        prefetch_ahead(wr + k, 256);
        t0[0] = _mm512_fmadd_ps(_mm512_loadu_ps(wr + k), _mm512_loadu_ps(x + k), t0[0]);
        t1[0] = _mm512_fmadd_ps(_mm512_loadu_ps(wr + k + 16), _mm512_loadu_ps(x + k + 16), t1[0]);
        t2[0] = _mm512_fmadd_ps(_mm512_loadu_ps(wr + k + 32), _mm512_loadu_ps(x + k + 32), t2[0]);
        t3[0] = _mm512_fmadd_ps(_mm512_loadu_ps(wr + k + 48), _mm512_loadu_ps(x + k + 48), t3[0]);
      }
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
      fold(_mm512_set1_ps(1.f));
    } else if (L.kind == kF32Bitmap) {
      const float* p = L.vals + L.rowoff[r];
      for (int64_t w = 0; w * 64 < in; ++w) {
        const uint64_t m = L.masks[r * L.mstride + w];
        prefetch_ahead(p, 128);  // up to 64 values a word: two lines (no data-dependent branch)
        if ((w & 7) == 0) prefetch_ahead(L.masks + r * L.mstride + w, 64);
        for (int i = 0; i < 4 && 64 * w + 16 * i < in; ++i) {
          const __mmask16 mi = (__mmask16)(m >> (16 * i));
          if (!mi) continue;
          const __m512 wv = _mm512_maskz_expand_ps(mi, in_reg(_mm512_loadu_ps(p)));
          p += __builtin_popcount(mi);
          for (int n = 0; n < N; ++n) {
            const float* xp = x + n * ldx + 64 * w + 16 * i;  // whole where in bounds: masked loads are slow
            const __m512 xv = 64 * w + 16 * i + 16 <= in ? _mm512_loadu_ps(xp) : _mm512_maskz_loadu_ps(mi, xp);
            if (i & 1) t1[n] = _mm512_fmadd_ps(wv, xv, t1[n]);
            else t0[n] = _mm512_fmadd_ps(wv, xv, t0[n]);
          }
        }
      }
      fold(_mm512_set1_ps(1.f));
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
        prefetch_ahead(row + k * L.bits / 8, L.G * L.bits / 8);
        if (L.bits == 8) {
          for (; k + 32 <= kend; k += 32) {
            const __m512 w0 = _mm512_sub_ps(cvt_u8x16(_mm_loadu_si128((const __m128i*)(row + k))), z);
            const __m512 w1 = _mm512_sub_ps(cvt_u8x16(_mm_loadu_si128((const __m128i*)(row + k + 16))), z);
            for (int n = 0; n < N; ++n) {
              t0[n] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + n * ldx + k), t0[n]);
              if (kW) t2[n] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + n * ldx + k + 16), t2[n]);
              else t1[n] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + n * ldx + k + 16), t1[n]);
            }
          }
          for (; k < kend; k += 16) {
            const __m512 wz = _mm512_sub_ps(cvt_u8x16(_mm_loadu_si128((const __m128i*)(row + k))), z);
            for (int n = 0; n < N; ++n) t1[n] = _mm512_fmadd_ps(wz, _mm512_loadu_ps(x + n * ldx + k), t1[n]);
          }
        } else if (L.blk == 32) {
          const __m512 lut = int4_lut(half_to_float(sr[gi]), (float)zr[gi]);
          for (; kW && k + 64 <= kend; k += 64) {  // two blocks: four chains
            const __m128i b0 = _mm_loadu_si128((const __m128i*)(row + k / 2));
            const __m128i b1 = _mm_loadu_si128((const __m128i*)(row + k / 2 + 16));
            const __m512 w0 = lut16(_mm_and_si128(b0, lo4), lut);
            const __m512 w1 = lut16(_mm_and_si128(_mm_srli_epi16(b0, 4), lo4), lut);
            const __m512 w2 = lut16(_mm_and_si128(b1, lo4), lut);
            const __m512 w3 = lut16(_mm_and_si128(_mm_srli_epi16(b1, 4), lo4), lut);
            t0[0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + k), t0[0]);
            t1[0] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + k + 16), t1[0]);
            t2[0] = _mm512_fmadd_ps(w2, _mm512_loadu_ps(x + k + 32), t2[0]);
            t3[0] = _mm512_fmadd_ps(w3, _mm512_loadu_ps(x + k + 48), t3[0]);
          }
          for (; k < kend; k += 32) {
            const __m128i b = _mm_loadu_si128((const __m128i*)(row + k / 2));
            const __m512 w0 = lut16(_mm_and_si128(b, lo4), lut);
            const __m512 w1 = lut16(_mm_and_si128(_mm_srli_epi16(b, 4), lo4), lut);
            for (int n = 0; n < N; ++n) {
              t0[n] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + n * ldx + k), t0[n]);
              t1[n] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + n * ldx + k + 16), t1[n]);
            }
          }
        } else {
          const __m512 lut = int4_lut(half_to_float(sr[gi]), (float)zr[gi]);
          for (; k < kend; k += 16) {
            uint64_t v;
            std::memcpy(&v, row + k / 2, 8);
            const __m128i b = _mm_set_epi64x((long long)((v >> 4) & 0x0F0F0F0F0F0F0F0Full),
                                             (long long)(v & 0x0F0F0F0F0F0F0F0Full));
            const __m512 wz = lut16(b, lut);
            for (int n = 0; n < N; ++n) {
              if ((k / 16) & 1) t1[n] = _mm512_fmadd_ps(wz, _mm512_loadu_ps(x + n * ldx + k), t1[n]);
              else t0[n] = _mm512_fmadd_ps(wz, _mm512_loadu_ps(x + n * ldx + k), t0[n]);
            }
          }
        }
        // int8: the scale applies per group; int4: the LUT holds s, so the chains run on across groups
        if (L.bits == 8) fold(_mm512_set1_ps(half_to_float(sr[gi])));
      }
      if (L.bits == 4) fold(_mm512_set1_ps(1.f));
    } else if (L.g == 16 || L.g == 8) {  // group bitmap: visit the kept groups only
      group_rows<N>(L, r, x, ldx, acc);
    } else {  // kQSparse, element bitmap (or groups of 4)
      const int64_t ng = in / L.G;
      const uint16_t* sr = L.scales + r * ng;
      const uint8_t* zr = L.zeros + r * ng;
      const uint8_t* stream = L.codes + L.rowoff[r];
      int64_t gi = 0, gend = L.G;  // current quantization group and where it ends (no division)
      const bool q4 = L.bits == 4;
      __m512 lut = q4 ? int4_lut(half_to_float(sr[0]), (float)zr[0]) : _mm512_setzero_ps();
      const int64_t nwords = (in + 63) / 64;
      for (int64_t w = 0; w * 64 < in; ++w) {
        prefetch_ahead(stream, 1);  // a word's codes are at most 64 bytes: one line
        if ((w & 7) == 0) prefetch_ahead(L.masks + r * L.mstride + w * L.mstride / nwords, 64);  // g > 0: fewer
        const uint64_t m = keep_mask(L, r, w);
        const __m512i lanes = sparse_word_codes(stream, m, L.bits);
        const __m128i part[4] = {_mm512_castsi512_si128(lanes), _mm512_extracti32x4_epi32(lanes, 1),
                                 _mm512_extracti32x4_epi32(lanes, 2), _mm512_extracti32x4_epi32(lanes, 3)};
        for (int i = 0; i < 4; ++i) {
          const int64_t col = 64 * w + 16 * i;
          if (col >= in) break;
          // no branch on the chunk's mask: a data-dependent branch mispredicts on half the chunks
          // of group-sparse weights; empty chunks just add zeros
          const __mmask16 mi = (__mmask16)(m >> (16 * i));
          const __m512 wz = q4 ? _mm512_maskz_permutexvar_ps(mi, _mm512_cvtepu8_epi32(part[i]), lut)
                               : _mm512_maskz_sub_ps(mi, cvt_u8x16(part[i]), _mm512_set1_ps((float)zr[gi]));
          for (int n = 0; n < N; ++n) {
            const __m512 xv = _mm512_loadu_ps(x + n * ldx + col);
            if (kW && i == 2) t2[n] = _mm512_fmadd_ps(wz, xv, t2[n]);
            else if (kW && i == 3) t3[n] = _mm512_fmadd_ps(wz, xv, t3[n]);
            else if (i & 1) t1[n] = _mm512_fmadd_ps(wz, xv, t1[n]);
            else t0[n] = _mm512_fmadd_ps(wz, xv, t0[n]);
          }
          if (col + 16 == gend) {
            if (!q4) fold(_mm512_set1_ps(half_to_float(sr[gi])));  // int4: the LUT holds s (no fold)
            ++gi;
            if (q4 && gi < ng) lut = int4_lut(half_to_float(sr[gi]), (float)zr[gi]);
            gend += L.G;
          }
        }
      }
      if (q4) fold(_mm512_set1_ps(1.f));
    }
    for (int n = 0; n < N; ++n)
      out[n * nr + (r - r0)] = _mm512_reduce_add_ps(acc[n]) + (L.bias ? L.bias[r] : 0.f);
  }
}
#endif  // SCQ_AVX512

#if SCQ_AVX2
SC_HOT float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
SC_HOT __m256 cvt_u8x8(uint64_t v) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)v))); }

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
