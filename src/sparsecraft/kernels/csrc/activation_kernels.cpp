// sparsecraft activation-sparse CPU kernels (fp32), registered as torch.ops.sparsecraft_kernels.*.
//
//   act_sparse_mm(x[N, H], wt[H, D]) -> y[N, D] = x @ wt
//       The MLP down projection y = a W_down^T for an activation a with exact zeros (CETT
//       thresholds, top-k): wt = W_down^T is the column-major copy of W_down (row i of wt =
//       column i of W_down, contiguous), built once. For each group of up to 8 rows of x the
//       kernel lists the columns i where any row is nonzero and reads only those rows of wt:
//       memory traffic (1 - sparsity) of the dense weight. The output columns are split into
//       chunks of 16*NV floats held in NV*B AVX-512 registers (B = rows in the group), chunks
//       in parallel (at::parallel_for), so no reduction between threads is needed.
//   cett_prefix_norms(a_sorted[N, H], order[N, H], wt[H, D]) -> norms[N, H] (float64)
//       norms[j, k] = || sum_{m <= k} a_sorted[j, m] * wt[order[j, m], :] ||: the norms of the
//       partial sums of a token's neuron contributions, neurons taken in the given order
//       (ascending neuron norm for CETT, Sparsing Law). Accumulated in double; tokens in parallel;
//       AVX-512: the running sum of 128 output columns at a time lives in registers.
// Every kernel has a portable scalar path when AVX-512 is not available at compile time.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#define SCA_AVX512 1
#else
#define SCA_AVX512 0
#endif

namespace {

constexpr int64_t kMaxGroup = 8;  // rows of x handled together (the decode batch sizes 1..8)

// Columns with a nonzero entry in any of the B rows of xg (row stride H), and their values
// packed as vals[k * B + b].
int64_t active_columns(const float* xg, int64_t B, int64_t H, std::vector<int32_t>& idx,
                       std::vector<float>& vals) {
  idx.clear();
  vals.clear();
  for (int64_t i = 0; i < H; ++i) {
    bool any = false;
    for (int64_t b = 0; b < B; ++b) any |= xg[b * H + i] != 0.f;
    if (!any) continue;
    idx.push_back(static_cast<int32_t>(i));
    for (int64_t b = 0; b < B; ++b) vals.push_back(xg[b * H + i]);
  }
  return static_cast<int64_t>(idx.size());
}

#if SCA_AVX512
// y[b, d0 : d0 + width] for the B rows: NV zmm accumulators per row (width <= 16 * NV; the
// last vectors of a short chunk are masked).
template <int B, int NV>
void chunk_avx512(const int32_t* idx, const float* vals, int64_t K, const float* wt, int64_t D,
                  int64_t d0, int64_t width, float* y) {
  __m512 acc[B][NV];
  __mmask16 mask[NV];
  for (int j = 0; j < NV; ++j) {
    const int64_t lanes = std::max<int64_t>(0, std::min<int64_t>(16, width - 16 * j));
    mask[j] = (__mmask16)((1u << lanes) - 1u);
    for (int b = 0; b < B; ++b) acc[b][j] = _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < K; ++k) {
    if (k + 4 < K) {
      const char* nxt = reinterpret_cast<const char*>(wt + (int64_t)idx[k + 4] * D + d0);
      for (int j = 0; j < NV; ++j) _mm_prefetch(nxt + 64 * j, _MM_HINT_T0);
    }
    const float* row = wt + (int64_t)idx[k] * D + d0;
    __m512 w[NV];
    for (int j = 0; j < NV; ++j) w[j] = _mm512_maskz_loadu_ps(mask[j], row + 16 * j);
    for (int b = 0; b < B; ++b) {
      const __m512 ab = _mm512_set1_ps(vals[k * B + b]);
      for (int j = 0; j < NV; ++j) acc[b][j] = _mm512_fmadd_ps(ab, w[j], acc[b][j]);
    }
  }
  for (int b = 0; b < B; ++b)
    for (int j = 0; j < NV; ++j) _mm512_mask_storeu_ps(y + b * D + d0 + 16 * j, mask[j], acc[b][j]);
}

// Accumulator registers per row: B * NV <= 24 leaves room for the weight vectors.
constexpr int nv_for(int B) { return B <= 4 ? 6 : (B <= 6 ? 4 : 3); }

template <int B>
void group_avx512(const int32_t* idx, const float* vals, int64_t K, const float* wt, int64_t D,
                  float* y) {
  constexpr int NV = nv_for(B);
  constexpr int64_t CH = 16 * NV;
  const int64_t chunks = (D + CH - 1) / CH;
  const int64_t work = K * D * B;
  const int64_t grain = work < (1 << 16) ? chunks : 1;  // small calls: one thread
  at::parallel_for(0, chunks, grain, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t d0 = c * CH;
      chunk_avx512<B, NV>(idx, vals, K, wt, D, d0, std::min<int64_t>(CH, D - d0), y);
    }
  });
}
#endif

void group_scalar(const int32_t* idx, const float* vals, int64_t K, int64_t B, const float* wt,
                  int64_t D, float* y) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t d = 0; d < D; ++d) y[b * D + d] = 0.f;
  for (int64_t k = 0; k < K; ++k) {
    const float* row = wt + (int64_t)idx[k] * D;
    for (int64_t b = 0; b < B; ++b) {
      const float ab = vals[k * B + b];
      float* yb = y + b * D;
      for (int64_t d = 0; d < D; ++d) yb[d] += ab * row[d];
    }
  }
}

at::Tensor act_sparse_mm(const at::Tensor& x_in, const at::Tensor& wt_in) {
  TORCH_CHECK(x_in.dim() == 2 && wt_in.dim() == 2, "sparsecraft.act_sparse_mm: x [N, H] and wt [H, D]");
  TORCH_CHECK(x_in.scalar_type() == at::kFloat && wt_in.scalar_type() == at::kFloat,
              "sparsecraft.act_sparse_mm: float32 only");
  TORCH_CHECK(x_in.size(1) == wt_in.size(0), "sparsecraft.act_sparse_mm: x has ", x_in.size(1),
              " features, wt has ", wt_in.size(0), " rows");
  TORCH_CHECK(wt_in.is_contiguous(), "sparsecraft.act_sparse_mm: wt must be contiguous (H, D)");
  const at::Tensor x = x_in.contiguous();
  const int64_t N = x.size(0), H = x.size(1), D = wt_in.size(1);
  at::Tensor y = at::zeros({N, D}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wt = wt_in.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  std::vector<int32_t> idx;
  std::vector<float> vals;
  idx.reserve(H);
  vals.reserve(H * kMaxGroup);
  for (int64_t r0 = 0; r0 < N; r0 += kMaxGroup) {
    const int64_t B = std::min<int64_t>(kMaxGroup, N - r0);
    const int64_t K = active_columns(xp + r0 * H, B, H, idx, vals);
    float* yg = yp + r0 * D;
    if (K == 0) continue;  // y stays zero
#if SCA_AVX512
    switch (B) {
      case 1: group_avx512<1>(idx.data(), vals.data(), K, wt, D, yg); break;
      case 2: group_avx512<2>(idx.data(), vals.data(), K, wt, D, yg); break;
      case 3: group_avx512<3>(idx.data(), vals.data(), K, wt, D, yg); break;
      case 4: group_avx512<4>(idx.data(), vals.data(), K, wt, D, yg); break;
      case 5: group_avx512<5>(idx.data(), vals.data(), K, wt, D, yg); break;
      case 6: group_avx512<6>(idx.data(), vals.data(), K, wt, D, yg); break;
      case 7: group_avx512<7>(idx.data(), vals.data(), K, wt, D, yg); break;
      default: group_avx512<8>(idx.data(), vals.data(), K, wt, D, yg); break;
    }
#else
    group_scalar(idx.data(), vals.data(), K, B, wt, D, yg);
#endif
  }
  return y;
}

at::Tensor act_sparse_mm_scalar(const at::Tensor& x_in, const at::Tensor& wt_in) {
  // the portable path, callable on any machine (tests compare it with the vector path)
  TORCH_CHECK(x_in.scalar_type() == at::kFloat && wt_in.scalar_type() == at::kFloat && wt_in.is_contiguous(),
              "sparsecraft.act_sparse_mm_scalar: float32, contiguous wt");
  const at::Tensor x = x_in.contiguous();
  const int64_t N = x.size(0), H = x.size(1), D = wt_in.size(1);
  at::Tensor y = at::zeros({N, D}, x.options());
  std::vector<int32_t> idx;
  std::vector<float> vals;
  for (int64_t r0 = 0; r0 < N; r0 += kMaxGroup) {
    const int64_t B = std::min<int64_t>(kMaxGroup, N - r0);
    const int64_t K = active_columns(x.data_ptr<float>() + r0 * H, B, H, idx, vals);
    group_scalar(idx.data(), vals.data(), K, B, wt_in.data_ptr<float>(), D, y.data_ptr<float>() + r0 * D);
  }
  return y;
}

// ---------------------------------------------------------------- CETT partial sums
#if SCA_AVX512
// One token, output columns [d0, d0 + width): the running sum s of this slice stays in NV zmm
// registers (8 doubles each) while the neurons are added in order; sq[k] += ||s after neuron k||^2
// restricted to the slice (the squared norm is a sum over slices).
template <int NV>
void prefix_slice_avx512(const float* a, const int64_t* order, const float* wt, int64_t H, int64_t D,
                         int64_t d0, int64_t width, double* sq) {
  __m512d s[NV];
  __mmask8 mask[NV];
  for (int j = 0; j < NV; ++j) {
    const int64_t lanes = std::max<int64_t>(0, std::min<int64_t>(8, width - 8 * j));
    mask[j] = (__mmask8)((1u << lanes) - 1u);
    s[j] = _mm512_setzero_pd();
  }
  for (int64_t k = 0; k < H; ++k) {
    const float* row = wt + order[k] * D + d0;
    if (k + 2 < H) {
      const char* nxt = reinterpret_cast<const char*>(wt + order[k + 2] * D + d0);
      for (int j = 0; j < NV; j += 2) _mm_prefetch(nxt + 32 * j, _MM_HINT_T0);
    }
    const __m512d ak = _mm512_set1_pd(static_cast<double>(a[k]));
    __m512d q[4] = {_mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd()};
    for (int j = 0; j < NV; ++j) {
      const __m512d w = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(mask[j], row + 8 * j));
      s[j] = _mm512_fmadd_pd(ak, w, s[j]);
      q[j & 3] = _mm512_fmadd_pd(s[j], s[j], q[j & 3]);
    }
    sq[k] += _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(q[0], q[1]), _mm512_add_pd(q[2], q[3])));
  }
}
#endif

void prefix_token_scalar(const float* a, const int64_t* order, const float* wt, int64_t H, int64_t D,
                         double* sq, std::vector<double>& s) {
  std::fill(s.begin(), s.end(), 0.0);
  for (int64_t k = 0; k < H; ++k) {
    const double ak = a[k];
    const float* row = wt + order[k] * D;
    double n = 0.0;
    for (int64_t d = 0; d < D; ++d) {
      s[d] += ak * row[d];
      n += s[d] * s[d];
    }
    sq[k] = n;
  }
}

at::Tensor prefix_norms_impl(const at::Tensor& a_in, const at::Tensor& order_in, const at::Tensor& wt_in,
                             bool vector_path) {
  TORCH_CHECK(a_in.dim() == 2 && order_in.sizes() == a_in.sizes(),
              "sparsecraft.cett_prefix_norms: a_sorted and order must both be [N, H]");
  TORCH_CHECK(a_in.scalar_type() == at::kFloat && wt_in.scalar_type() == at::kFloat &&
                  order_in.scalar_type() == at::kLong,
              "sparsecraft.cett_prefix_norms: float32 a and wt, int64 order");
  TORCH_CHECK(wt_in.dim() == 2 && wt_in.size(0) == a_in.size(1), "sparsecraft.cett_prefix_norms: wt must be [H, D]");
  const at::Tensor a = a_in.contiguous(), order = order_in.contiguous(), wt = wt_in.contiguous();
  const int64_t N = a.size(0), H = a.size(1), D = wt.size(1);
  at::Tensor out = at::zeros({N, H}, a.options().dtype(at::kDouble));
  const float* ap = a.data_ptr<float>();
  const int64_t* op = order.data_ptr<int64_t>();
  const float* wp = wt.data_ptr<float>();
  double* outp = out.data_ptr<double>();
  for (int64_t j = 0; j < N * H; ++j)
    TORCH_CHECK(op[j] >= 0 && op[j] < H, "sparsecraft.cett_prefix_norms: order out of range");
  at::parallel_for(0, N, 1, [&](int64_t t0, int64_t t1) {
    std::vector<double> s(D);
    for (int64_t j = t0; j < t1; ++j) {
      double* sq = outp + j * H;
#if SCA_AVX512
      if (vector_path) {
        constexpr int NV = 16;  // 128 doubles of the running sum in registers
        for (int64_t d0 = 0; d0 < D; d0 += 8 * NV)
          prefix_slice_avx512<NV>(ap + j * H, op + j * H, wp, H, D, d0, std::min<int64_t>(8 * NV, D - d0), sq);
      } else {
        prefix_token_scalar(ap + j * H, op + j * H, wp, H, D, sq, s);
      }
#else
      (void)vector_path;
      prefix_token_scalar(ap + j * H, op + j * H, wp, H, D, sq, s);
#endif
      for (int64_t k = 0; k < H; ++k) sq[k] = std::sqrt(sq[k]);
    }
  });
  return out;
}

at::Tensor cett_prefix_norms(const at::Tensor& a, const at::Tensor& order, const at::Tensor& wt) {
  return prefix_norms_impl(a, order, wt, true);
}

at::Tensor cett_prefix_norms_scalar(const at::Tensor& a, const at::Tensor& order, const at::Tensor& wt) {
  return prefix_norms_impl(a, order, wt, false);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(sparsecraft_kernels, m) {
  m.def("act_sparse_mm(Tensor x, Tensor wt) -> Tensor");
  m.def("act_sparse_mm_scalar(Tensor x, Tensor wt) -> Tensor");
  m.def("cett_prefix_norms(Tensor a_sorted, Tensor order, Tensor wt) -> Tensor");
  m.def("cett_prefix_norms_scalar(Tensor a_sorted, Tensor order, Tensor wt) -> Tensor");
}

TORCH_LIBRARY_IMPL(sparsecraft_kernels, CPU, m) {
  m.impl("act_sparse_mm", act_sparse_mm);
  m.impl("act_sparse_mm_scalar", act_sparse_mm_scalar);
  m.impl("cett_prefix_norms", cett_prefix_norms);
  m.impl("cett_prefix_norms_scalar", cett_prefix_norms_scalar);
}
