// sparsecraft KV-cache kernels (Mustafar, arXiv 2505.22913): per-vector magnitude pruning into the
// 64-element tile format, and batch-1..B decode attention that reads the compressed cache directly.
//
// Format of one pruned K or V vector of head_dim D (NT = ceil(D / 64) tiles):
//   bits[NT]  : uint64 per tile, bit p of tile j set <=> element 64*j + p is kept;
//   vals[K]   : the K kept values, in increasing element order (tile by tile, bit by bit).
// Every vector keeps the same K = D - floor(sparsity * D) values, so vector i's values start at
// i * K: no per-tile offsets are stored (a tile's offset is the popcount of the tiles before it).
//
//   kv_pack(x, n_keep, bits, vals, offset): prunes x[B, H, n, D] (keep the n_keep largest |x|,
//       ties -> the lower index) into bits[B, H, C, NT] / vals[B, H, C, K] at token offset.
//   kv_decode_attention(q, kbits, kvals, vbits, vvals, n_comp, kwin, vwin, mask, scale):
//       softmax(scale * q . k_t + mask_t) weighted sum of v_t over the n_comp compressed tokens
//       followed by the W dense window tokens; q[B, Hq, D] (Hq = G * Hkv, grouped-query heads
//       share their KV head), output [B, Hq, D] float32. Each compressed vector is expanded
//       into a D-float stack buffer (AVX-512: a masked load and a register expand per 16 lanes) and used at
//       once (for float storage and head_dim 32/64/128 with few query heads per KV head, straight
//       into registers); the cache is never materialised densely. Work is split over (batch, KV head,
//       chunk of tokens) with per-chunk softmax partials (max, sum, accumulator) merged at the end.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>

#include "simd_util.h"
#define KV_AVX512 1
#else
#define KV_AVX512 0
#endif

namespace {

constexpr int64_t kTile = 64;
constexpr int64_t kChunk = 128;  // tokens per parallel task of the decode attention

// Scores sc[0:len] of one chunk -> exp(sc - max) in place; m = the max, l = the sum (0 and 0 for a
// chunk whose scores are all -inf).
inline void chunk_softmax(float* sc, int64_t len, float& m, float& l) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < len; ++i) mx = std::max(mx, sc[i]);
  float sum = 0.f;
  for (int64_t i = 0; i < len; ++i) {
    const float p = std::isinf(mx) && mx < 0 ? 0.f : std::exp(sc[i] - mx);
    sc[i] = p;
    sum += p;
  }
  m = mx;
  l = sum;
}

// ------------------------------------------------------------------------------- pruning
template <typename T>
void pack_row(const T* x, int64_t D, int64_t n_keep, int64_t nt, int64_t* bits, T* vals,
              std::vector<int>& idx, std::vector<float>& mag) {
  for (int64_t i = 0; i < D; ++i) {
    const float a = std::fabs(static_cast<float>(x[i]));
    mag[i] = std::isnan(a) ? std::numeric_limits<float>::infinity() : a;
  }
  std::iota(idx.begin(), idx.begin() + D, 0);
  auto larger = [&](int a, int b) { return mag[a] > mag[b] || (mag[a] == mag[b] && a < b); };
  if (n_keep < D) std::nth_element(idx.begin(), idx.begin() + n_keep, idx.begin() + D, larger);
  for (int64_t j = 0; j < nt; ++j) bits[j] = 0;
  for (int64_t k = 0; k < n_keep; ++k) {
    const int p = idx[k];
    bits[p / kTile] = static_cast<int64_t>(static_cast<uint64_t>(bits[p / kTile]) | (uint64_t{1} << (p % kTile)));
  }
  int64_t o = 0;
  for (int64_t j = 0; j < nt; ++j) {
    uint64_t w = static_cast<uint64_t>(bits[j]);
    while (w) {
      vals[o++] = x[j * kTile + __builtin_ctzll(w)];
      w &= w - 1;
    }
  }
}

void kv_pack(const at::Tensor& x_in, int64_t n_keep, at::Tensor bits, at::Tensor vals, int64_t offset) {
  TORCH_CHECK(x_in.dim() == 4, "sparsecraft.kv_pack: x must be [B, H, n, D]");
  TORCH_CHECK(bits.dim() == 4 && vals.dim() == 4, "sparsecraft.kv_pack: bits/vals must be 4-D");
  TORCH_CHECK(bits.scalar_type() == at::kLong, "sparsecraft.kv_pack: bits must be int64");
  TORCH_CHECK(vals.scalar_type() == x_in.scalar_type(), "sparsecraft.kv_pack: vals dtype must match x");
  TORCH_CHECK(bits.is_contiguous() && vals.is_contiguous(), "sparsecraft.kv_pack: bits/vals must be contiguous");
  const at::Tensor x = x_in.contiguous();
  const int64_t B = x.size(0), H = x.size(1), n = x.size(2), D = x.size(3);
  const int64_t nt = (D + kTile - 1) / kTile, C = bits.size(2);
  TORCH_CHECK(bits.size(0) == B && bits.size(1) == H && bits.size(3) == nt, "sparsecraft.kv_pack: bits shape");
  TORCH_CHECK(vals.size(0) == B && vals.size(1) == H && vals.size(2) == C && vals.size(3) == n_keep,
              "sparsecraft.kv_pack: vals shape");
  TORCH_CHECK(n_keep >= 0 && n_keep <= D, "sparsecraft.kv_pack: n_keep out of range");
  TORCH_CHECK(offset >= 0 && offset + n <= C, "sparsecraft.kv_pack: offset + n exceeds the capacity");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "kv_pack", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    int64_t* bp = bits.data_ptr<int64_t>();
    scalar_t* vp = vals.data_ptr<scalar_t>();
    at::parallel_for(0, B * H * n, 64, [&](int64_t b0, int64_t b1) {
      std::vector<int> idx(D);
      std::vector<float> mag(D);
      for (int64_t r = b0; r < b1; ++r) {
        const int64_t bh = r / n, t = r % n, dst = bh * C + offset + t;
        pack_row<scalar_t>(xp + r * D, D, n_keep, nt, bp + dst * nt, vp + dst * n_keep, idx, mag);
      }
    });
  });
}

// ------------------------------------------------------------------------------- attention
inline float dot(const float* a, const float* b, int64_t n) {
  int64_t i = 0;
  float s = 0.f;
#if KV_AVX512
  __m512 acc = _mm512_setzero_ps();
  for (; i + 16 <= n; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
  s = _mm512_reduce_add_ps(acc);
#endif
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

inline void axpy(float p, const float* x, float* y, int64_t n) {
  int64_t i = 0;
#if KV_AVX512
  const __m512 pv = _mm512_set1_ps(p);
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(y + i, _mm512_fmadd_ps(pv, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
#endif
  for (; i < n; ++i) y[i] += p * x[i];
}

// Dense float copy of one compressed vector into out[nt * 64] (elements past D stay zero).
template <typename T>
inline void expand(const int64_t* bits, const T* vals, int64_t nt, float* out) {
  for (int64_t j = 0; j < nt; ++j) {
    uint64_t w = static_cast<uint64_t>(bits[j]);
    float* o = out + j * kTile;
    for (int64_t i = 0; i < kTile; ++i) o[i] = 0.f;
    while (w) {
      o[__builtin_ctzll(w)] = static_cast<float>(*vals++);
      w &= w - 1;
    }
  }
}

#if KV_AVX512
template <>
inline void expand<float>(const int64_t* bits, const float* vals, int64_t nt, float* out) {
  for (int64_t j = 0; j < nt; ++j) {
    const uint64_t w = static_cast<uint64_t>(bits[j]);
    for (int s = 0; s < 4; ++s) {
      const __mmask16 m = static_cast<__mmask16>((w >> (16 * s)) & 0xFFFFu);
      _mm512_storeu_ps(out + j * kTile + 16 * s, sc::expand_load_ps(m, vals));
      vals += __builtin_popcount(static_cast<unsigned>(m));
    }
  }
}
#endif

// Pointer to token t's vector as floats: expanded from the compressed store, or the window row
// (converted into buf unless it already is float).
template <typename T>
inline const float* token_vec(int64_t t, int64_t n_comp, const int64_t* bits, const T* vals, int64_t nt,
                              int64_t K, const T* win, int64_t D, float* buf) {
  if (t < n_comp) {
    expand<T>(bits + t * nt, vals + t * K, nt, buf);
    return buf;
  }
  const T* w = win + (t - n_comp) * D;
  if constexpr (std::is_same<T, float>::value) {
    return w;
  } else {
    for (int64_t i = 0; i < D; ++i) buf[i] = static_cast<float>(w[i]);
    return buf;
  }
}

#if KV_AVX512
// Register-resident fast path (float storage, D = 16 * NV, G query heads per KV head): the G query
// vectors (pre-scaled), one expanded key / value and the G accumulators stay in zmm registers.
template <int NV>
inline void load_vec(int64_t t, int64_t n_comp, const int64_t* bits, const float* vals, int64_t K,
                     const float* win, __m512* out) {
  constexpr int64_t D = 16 * NV, NT = (D + kTile - 1) / kTile;
  if (t < n_comp) {
    const int64_t* b = bits + t * NT;
    const float* p = vals + t * K;
    for (int j = 0; j < NV; ++j) {
      const uint64_t w = static_cast<uint64_t>(b[j / 4]);
      const __mmask16 mk = static_cast<__mmask16>((w >> (16 * (j % 4))) & 0xFFFFu);
      out[j] = sc::expand_load_ps(mk, p);
      p += __builtin_popcount(static_cast<unsigned>(mk));
    }
  } else {
    const float* r = win + (t - n_comp) * D;
    for (int j = 0; j < NV; ++j) out[j] = _mm512_loadu_ps(r + 16 * j);
  }
}

template <int NV, int G>
void chunk_fast(const float* qh, const int64_t* kbh, const float* kvh, const int64_t* vbh, const float* vvh,
                const float* kwh, const float* vwh, const float* maskb, int64_t n_comp, int64_t K, int64_t t0,
                int64_t len, float scale, float* sc, float* m, float* l, float* acc) {
  constexpr int64_t D = 16 * NV;
  __m512 qv[G][NV];
  const __m512 sv = _mm512_set1_ps(scale);
  for (int g = 0; g < G; ++g)
    for (int j = 0; j < NV; ++j) qv[g][j] = _mm512_mul_ps(_mm512_loadu_ps(qh + g * D + 16 * j), sv);
  for (int64_t i = 0; i < len; ++i) {
    const int64_t t = t0 + i;
    __m512 kv[NV];
    load_vec<NV>(t, n_comp, kbh, kvh, K, kwh, kv);
    const float add = maskb ? maskb[t] : 0.f;
    for (int g = 0; g < G; ++g) {
      __m512 a = _mm512_mul_ps(qv[g][0], kv[0]);
      for (int j = 1; j < NV; ++j) a = _mm512_fmadd_ps(qv[g][j], kv[j], a);
      sc[g * kChunk + i] = _mm512_reduce_add_ps(a) + add;
    }
  }
  for (int g = 0; g < G; ++g) chunk_softmax(sc + g * kChunk, len, m[g], l[g]);
  __m512 ac[G][NV];
  for (int g = 0; g < G; ++g)
    for (int j = 0; j < NV; ++j) ac[g][j] = _mm512_setzero_ps();
  for (int64_t i = 0; i < len; ++i) {
    __m512 vv[NV];
    load_vec<NV>(t0 + i, n_comp, vbh, vvh, K, vwh, vv);
    for (int g = 0; g < G; ++g) {
      const __m512 p = _mm512_set1_ps(sc[g * kChunk + i]);
      for (int j = 0; j < NV; ++j) ac[g][j] = _mm512_fmadd_ps(p, vv[j], ac[g][j]);
    }
  }
  for (int g = 0; g < G; ++g)
    for (int j = 0; j < NV; ++j) _mm512_storeu_ps(acc + g * D + 16 * j, ac[g][j]);
}

using FastChunk = void (*)(const float*, const int64_t*, const float*, const int64_t*, const float*, const float*,
                           const float*, const float*, int64_t, int64_t, int64_t, int64_t, float, float*, float*,
                           float*, float*);

// The instantiated (head_dim, group) pairs: NV * G <= 16 keeps everything in registers.
FastChunk fast_chunk_for(int64_t D, int64_t G) {
  if (D == 64) {
    if (G == 1) return &chunk_fast<4, 1>;
    if (G == 2) return &chunk_fast<4, 2>;
    if (G == 3) return &chunk_fast<4, 3>;
    if (G == 4) return &chunk_fast<4, 4>;
  } else if (D == 32) {
    if (G == 1) return &chunk_fast<2, 1>;
    if (G == 2) return &chunk_fast<2, 2>;
    if (G == 3) return &chunk_fast<2, 3>;
    if (G == 4) return &chunk_fast<2, 4>;
  } else if (D == 128) {
    if (G == 1) return &chunk_fast<8, 1>;
    if (G == 2) return &chunk_fast<8, 2>;
  }
  return nullptr;
}
#endif

template <typename T>
void decode_impl(const float* q, const int64_t* kb, const T* kv, const int64_t* vb, const T* vv,
                 const T* kw, const T* vw, const float* mask, float* out, int64_t B, int64_t Hkv,
                 int64_t G, int64_t D, int64_t C, int64_t K, int64_t n_comp, int64_t W, float scale) {
  const int64_t nt = (D + kTile - 1) / kTile, T_all = n_comp + W;
  const int64_t nchunks = std::max<int64_t>(1, (T_all + kChunk - 1) / kChunk);
  const int64_t tasks = B * Hkv * nchunks;
  std::vector<float> pm(tasks * G), pl(tasks * G), pacc(tasks * G * D);
#if KV_AVX512
  FastChunk fast = std::is_same<T, float>::value ? fast_chunk_for(D, G) : nullptr;
#endif
  at::parallel_for(0, tasks, 1, [&](int64_t a0, int64_t a1) {
    std::vector<float> buf(nt * kTile + D), sc(G * kChunk);
    for (int64_t task = a0; task < a1; ++task) {
      const int64_t bh = task / nchunks, c = task % nchunks, b = bh / Hkv;
      const int64_t t0 = c * kChunk, t1 = std::min(T_all, t0 + kChunk), len = std::max<int64_t>(0, t1 - t0);
      const int64_t* kbh = kb + bh * C * nt;
      const int64_t* vbh = vb + bh * C * nt;
      const T* kvh = kv + bh * C * K;
      const T* vvh = vv + bh * C * K;
      const T* kwh = kw + bh * W * D;
      const T* vwh = vw + bh * W * D;
      const float* qh = q + bh * G * D;  // the G query heads of KV head h are consecutive
#if KV_AVX512
      if (fast) {
        fast(qh, kbh, reinterpret_cast<const float*>(kvh), vbh, reinterpret_cast<const float*>(vvh),
             reinterpret_cast<const float*>(kwh), reinterpret_cast<const float*>(vwh),
             mask ? mask + b * T_all : nullptr, n_comp, K, t0, len, scale, sc.data(), pm.data() + task * G,
             pl.data() + task * G, pacc.data() + task * G * D);
        continue;
      }
#endif
      for (int64_t i = 0; i < len; ++i) {
        const int64_t t = t0 + i;
        const float* k = token_vec<T>(t, n_comp, kbh, kvh, nt, K, kwh, D, buf.data());
        const float add = mask ? mask[b * T_all + t] : 0.f;
        for (int64_t g = 0; g < G; ++g) sc[g * kChunk + i] = dot(qh + g * D, k, D) * scale + add;
      }
      float* m = pm.data() + task * G;
      float* l = pl.data() + task * G;
      float* acc = pacc.data() + task * G * D;
      for (int64_t g = 0; g < G; ++g) {
        chunk_softmax(sc.data() + g * kChunk, len, m[g], l[g]);
        for (int64_t d = 0; d < D; ++d) acc[g * D + d] = 0.f;
      }
      for (int64_t i = 0; i < len; ++i) {
        const float* v = token_vec<T>(t0 + i, n_comp, vbh, vvh, nt, K, vwh, D, buf.data());
        for (int64_t g = 0; g < G; ++g) {
          const float p = sc[g * kChunk + i];
          if (p != 0.f) axpy(p, v, acc + g * D, D);
        }
      }
    }
  });
  // merge the chunks: out = sum_c e^(m_c - M) acc_c / sum_c e^(m_c - M) l_c
  for (int64_t bh = 0; bh < B * Hkv; ++bh) {
    for (int64_t g = 0; g < G; ++g) {
      float M = -std::numeric_limits<float>::infinity();
      for (int64_t c = 0; c < nchunks; ++c) M = std::max(M, pm[(bh * nchunks + c) * G + g]);
      float* o = out + (bh * G + g) * D;
      for (int64_t d = 0; d < D; ++d) o[d] = 0.f;
      if (std::isinf(M) && M < 0) continue;
      float L = 0.f;
      for (int64_t c = 0; c < nchunks; ++c) {
        const int64_t task = bh * nchunks + c;
        const float mc = pm[task * G + g];
        if (std::isinf(mc) && mc < 0) continue;
        const float w = std::exp(mc - M);
        L += w * pl[task * G + g];
        axpy(w, pacc.data() + (task * G + g) * D, o, D);
      }
      const float inv = 1.f / L;
      for (int64_t d = 0; d < D; ++d) o[d] *= inv;
    }
  }
}

at::Tensor kv_decode_attention(const at::Tensor& q_in, const at::Tensor& kbits, const at::Tensor& kvals,
                               const at::Tensor& vbits, const at::Tensor& vvals, int64_t n_comp,
                               const at::Tensor& kwin_in, const at::Tensor& vwin_in,
                               const c10::optional<at::Tensor>& mask_in, double scale) {
  TORCH_CHECK(q_in.dim() == 3 && q_in.scalar_type() == at::kFloat, "sparsecraft.kv_decode_attention: q must be float32 [B, Hq, D]");
  const at::Tensor q = q_in.contiguous();
  const at::Tensor kwin = kwin_in.contiguous(), vwin = vwin_in.contiguous();
  const int64_t B = q.size(0), Hq = q.size(1), D = q.size(2);
  const int64_t Hkv = kbits.size(1), C = kbits.size(2), K = kvals.size(3), W = kwin.size(2);
  const int64_t nt = (D + kTile - 1) / kTile;
  TORCH_CHECK(Hkv > 0 && Hq % Hkv == 0, "sparsecraft.kv_decode_attention: query heads must be a multiple of KV heads");
  TORCH_CHECK(kbits.dim() == 4 && kbits.size(0) == B && kbits.size(3) == nt && kbits.scalar_type() == at::kLong &&
                  kbits.is_contiguous() && vbits.sizes() == kbits.sizes() && vbits.scalar_type() == at::kLong &&
                  vbits.is_contiguous(),
              "sparsecraft.kv_decode_attention: bits must be contiguous int64 [B, Hkv, C, ceil(D/64)]");
  TORCH_CHECK(kvals.dim() == 4 && kvals.size(0) == B && kvals.size(1) == Hkv && kvals.size(2) == C &&
                  kvals.is_contiguous() && vvals.sizes() == kvals.sizes() && vvals.is_contiguous() &&
                  vvals.scalar_type() == kvals.scalar_type(),
              "sparsecraft.kv_decode_attention: vals must be contiguous [B, Hkv, C, K]");
  TORCH_CHECK(kwin.dim() == 4 && kwin.size(0) == B && kwin.size(1) == Hkv && kwin.size(3) == D &&
                  vwin.sizes() == kwin.sizes() && kwin.scalar_type() == kvals.scalar_type() &&
                  vwin.scalar_type() == kvals.scalar_type(),
              "sparsecraft.kv_decode_attention: windows must be [B, Hkv, W, D] in the values' dtype");
  TORCH_CHECK(n_comp >= 0 && n_comp <= C, "sparsecraft.kv_decode_attention: n_comp exceeds the capacity");
  at::Tensor mask;
  if (mask_in.has_value() && mask_in->defined()) {
    mask = mask_in->to(at::kFloat).contiguous();
    TORCH_CHECK(mask.dim() == 2 && mask.size(0) == B && mask.size(1) == n_comp + W,
                "sparsecraft.kv_decode_attention: mask must be [B, n_comp + W]");
  }
  at::Tensor out = at::empty({B, Hq, D}, q.options());
  const float* mp = mask.defined() ? mask.data_ptr<float>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, kvals.scalar_type(), "kv_decode_attention", [&] {
    decode_impl<scalar_t>(q.data_ptr<float>(), kbits.data_ptr<int64_t>(), kvals.data_ptr<scalar_t>(),
                          vbits.data_ptr<int64_t>(), vvals.data_ptr<scalar_t>(), kwin.data_ptr<scalar_t>(),
                          vwin.data_ptr<scalar_t>(), mp, out.data_ptr<float>(), B, Hkv, Hq / Hkv, D, C, K,
                          n_comp, W, static_cast<float>(scale));
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(sparsecraft_kernels, m) {
  m.def("kv_pack(Tensor x, int n_keep, Tensor(a!) bits, Tensor(b!) vals, int offset) -> ()");
  m.def("kv_decode_attention(Tensor q, Tensor kbits, Tensor kvals, Tensor vbits, Tensor vvals, int n_comp, "
        "Tensor kwin, Tensor vwin, Tensor? mask, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(sparsecraft_kernels, CPU, m) {
  m.impl("kv_pack", &kv_pack);
  m.impl("kv_decode_attention", &kv_decode_attention);
}
