// Code-generation helpers shared by the CPU kernels (qdot*.h, sparse_kernels.cpp).
#pragma once

#include <immintrin.h>

// Small helpers of the row loops are forced inline: GCC's unit-growth limits otherwise leave some
// out of line once a translation unit grows (a call per word or per group costs more than the work).
#define SC_HOT inline __attribute__((always_inline))
#define SC_HOT_LAMBDA __attribute__((always_inline))

namespace sc {

// The value in a register, so that the compiler cannot fold the load into the instruction that uses
// it. For the expands: vexpandps / vpexpandb with a memory operand take ~5 cycles per instruction
// on AMD Zen 5 (family 1Ah) against ~1-2 for the register form (measured; the float32 bitmap kernel spent 28
// cycles per 64 inputs in four of them).
#if defined(__AVX512F__)
SC_HOT __m512 in_reg(__m512 v) {
  __asm__("" : "+v"(v));
  return v;
}
SC_HOT __m512i in_reg(__m512i v) {
  __asm__("" : "+v"(v));
  return v;
}
// vexpandps' memory form without its cost: the popcount(m) floats at p (no read beyond them), spread
// to the lanes set in m.
SC_HOT __m512 expand_load_ps(__mmask16 m, const float* p) {
  const __mmask16 n = (__mmask16)((1u << __builtin_popcount((unsigned)m)) - 1u);
  return _mm512_maskz_expand_ps(m, in_reg(_mm512_maskz_loadu_ps(n, p)));
}
#endif

}  // namespace sc
