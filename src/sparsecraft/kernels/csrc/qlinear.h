// Running one packed linear layer on the pool (shared by the packed_linear op and the decode loop).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <vector>

#include "qdot.h"
#include "sc_pool.h"

namespace sc {

struct LinearCtx {
  QLinear L;
  const float* x;
  int64_t ldx;
  float* y;
  int64_t rows_per;
  int n;
  XQ xq;  // the prepared input (prepared_input)
};

// The input as the layer's row loop reads it, prepared once per call: xbits 8, rounded to int8
// (qdot_x8.h); float input of an int4 dense or int4 / int8 bitmap layer, permuted into the order of
// its weight lanes (qdot_lanes.h).
// It goes to a per-thread scratch area that is never freed while the thread lives (a pool helper that
// comes back late may still read the previous call's bytes; it then throws its chunk away, see
// sc_pool.h), or to a tensor the job keeps alive when it does not fit. `used` is the scratch already
// taken by this job (q/k/v take three parts).
inline uint8_t* input_scratch(size_t need, std::vector<c10::IValue>& keep, size_t& used) {
  constexpr size_t kScratch = size_t(1) << 20;
  // 64-byte aligned: the row loops read the prepared input in whole 64-byte vectors, and a buffer from
  // new[] (16-byte aligned) split every such load over two cache lines in some processes and not in
  // others (a 30% swing of the bfloat16 loops between runs)
  struct Free {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  thread_local std::unique_ptr<uint8_t, Free> scratch(static_cast<uint8_t*>(std::aligned_alloc(64, kScratch)));
  need = (need + 63) / 64 * 64;
  if (scratch && used + need <= kScratch) {
    used += need;
    return scratch.get() + used - need;
  }
  at::Tensor buf = at::empty({(int64_t)need}, at::TensorOptions().dtype(at::kByte));
  keep.emplace_back(buf);
  return buf.data_ptr<uint8_t>();
}

inline bool same_prepared_input(const QLinear& a, const QLinear& b) {
  if (lanes_input(a) || lanes_input(b))
    return lanes_input(a) && lanes_input(b) && a.in == b.in && (a.kind == kQDense) == (b.kind == kQDense);
  return a.xbits == 8 && b.xbits == 8 && a.G == b.G && x8_nibble_order(a) == x8_nibble_order(b);
}

inline XQ prepared_input(const QLinear& L, const float* x, int64_t ldx, int n, std::vector<c10::IValue>& keep,
                         size_t& used) {
  if (lanes_input(L)) {
    float* xl = reinterpret_cast<float*>(input_scratch(4 * n * L.in, keep, used));
    lanes_of_input(x, ldx, n, L.in, L.kind == kQDense, xl);
    XQ out;
    out.xl = xl;
    return out;
  }
  if (L.xbits != 8) return XQ{};
  const int64_t ng = L.in / L.G;
  const size_t off = ((size_t)n * L.in + 63) / 64 * 64;
  uint8_t* base = input_scratch(off + (size_t)8 * n * ng, keep, used);
  float* sx = reinterpret_cast<float*>(base + off);
  int32_t* su = reinterpret_cast<int32_t*>(base + off + 4 * n * ng);
  quantize_x8(L, x, ldx, n, base, sx, su);
  XQ out;
  out.xu = base;
  out.sx = sx;
  out.su = su;
  return out;
}

inline void linear_chunk(const void* p, int64_t c, float* buf) {
  const auto& k = *static_cast<const LinearCtx*>(p);
  const int64_t r0 = c * k.rows_per, r1 = std::min(k.L.out, r0 + k.rows_per);
  if (k.L.xbits == 8) rows_x8_n(k.n, k.L, k.xq, r0, r1, buf);
  else if (k.xq.xl) rows_lanes_n(k.n, k.L, k.xq.xl, r0, r1, buf);
  else rows_dot_n(k.n, k.L, k.x, k.ldx, r0, r1, buf);
}

inline void linear_commit(const void* p, int64_t c, float* buf) {
  const auto& k = *static_cast<const LinearCtx*>(p);
  const int64_t r0 = c * k.rows_per, r1 = std::min(k.L.out, r0 + k.rows_per), nr = r1 - r0;
  for (int n = 0; n < k.n; ++n) std::copy(buf + n * nr, buf + (n + 1) * nr, k.y + n * k.L.out + r0);
}

inline int64_t rows_per_chunk(int64_t out, int n, int threads) {
  const int64_t cap = kBufFloats / std::max(1, n);
  const int64_t want = (out + 8 * threads - 1) / (8 * threads);
  return std::max<int64_t>(1, std::min<int64_t>(cap, std::max<int64_t>(16, want)));
}

// y[0:N, 0:out] (row stride out) = x[0:N] @ W^T through the pool; N <= 8.
inline void run_linear(const QLinear& L, const float* x, int64_t ldx, int n, float* y,
                       std::vector<c10::IValue> keep = {}, std::shared_ptr<void> owner = nullptr) {
  Pool& p = pool();
  size_t used = 0;
  XQ xq = prepared_input(L, x, ldx, n, keep, used);
  LinearCtx ctx{L, x, ldx, y, rows_per_chunk(L.out, n, p.threads()), n, xq};
  const int64_t chunks = (L.out + ctx.rows_per - 1) / ctx.rows_per;
  p.run(chunks, linear_chunk, linear_commit, ctx, std::move(keep), std::move(owner));
}

// Up to three layers reading the same input (q/k/v, gate/up) as one pool job, batch 1.
struct MultiCtx {
  QLinear L[3];
  XQ xq[3];
  float* y[3];
  const float* x;
  int count;
  int64_t rows_per[3];
  int64_t first[4];  // first chunk of each layer, first[count] = total
};

inline int multi_which(const MultiCtx& k, int64_t c) {
  int i = 0;
  while (i + 1 < k.count && c >= k.first[i + 1]) ++i;
  return i;
}

inline void multi_chunk(const void* p, int64_t c, float* buf) {
  const auto& k = *static_cast<const MultiCtx*>(p);
  const int i = multi_which(k, c);
  const int64_t r0 = (c - k.first[i]) * k.rows_per[i], r1 = std::min(k.L[i].out, r0 + k.rows_per[i]);
  if (k.L[i].xbits == 8) rows_x8<1>(k.L[i], k.xq[i], r0, r1, buf);
  else if (k.xq[i].xl) rows_lanes_n(1, k.L[i], k.xq[i].xl, r0, r1, buf);
  else rows_dot<1>(k.L[i], k.x, 0, r0, r1, buf);
}

inline void multi_commit(const void* p, int64_t c, float* buf) {
  const auto& k = *static_cast<const MultiCtx*>(p);
  const int i = multi_which(k, c);
  const int64_t r0 = (c - k.first[i]) * k.rows_per[i], r1 = std::min(k.L[i].out, r0 + k.rows_per[i]);
  std::copy(buf, buf + (r1 - r0), k.y[i] + r0);
}

inline void run_linears(const QLinear* const* Ls, float* const* ys, int count, const float* x,
                        std::shared_ptr<void> owner) {
  Pool& p = pool();
  MultiCtx ctx;
  ctx.x = x;
  ctx.count = count;
  ctx.first[0] = 0;
  std::vector<c10::IValue> keep;
  size_t used = 0;
  for (int i = 0; i < count; ++i) {
    ctx.L[i] = *Ls[i];
    int same = -1;  // q/k/v with the same group and code order share one prepared input
    for (int j = 0; j < i; ++j)
      if (same_prepared_input(*Ls[j], *Ls[i])) same = j;
    ctx.xq[i] = same >= 0 ? ctx.xq[same] : prepared_input(*Ls[i], x, 0, 1, keep, used);
    ctx.y[i] = ys[i];
    ctx.rows_per[i] = rows_per_chunk(Ls[i]->out, 1, p.threads());
    ctx.first[i + 1] = ctx.first[i] + (Ls[i]->out + ctx.rows_per[i] - 1) / ctx.rows_per[i];
  }
  p.run(ctx.first[count], multi_chunk, multi_commit, ctx, std::move(keep), std::move(owner));
}

inline QLinear make_linear(const std::vector<at::Tensor>& parts, at::IntArrayRef meta) {
  TORCH_CHECK(meta.size() >= 9, "sparsecraft.packed_linear: meta needs 9 entries");
  QLinear L;
  L.kind = (int)meta[0]; L.out = meta[1]; L.in = meta[2]; L.bits = (int)meta[3]; L.G = (int)meta[4];
  L.g = (int)meta[5]; L.blk = (int)meta[6]; L.mstride = meta[7]; L.cstride = meta[8];
  L.xbits = meta.size() > 9 ? (int)meta[9] : 0;
  auto need = [&](size_t i, at::ScalarType t, int64_t numel, const char* what) {
    TORCH_CHECK(parts.size() > i && parts[i].scalar_type() == t && parts[i].is_contiguous() &&
                    parts[i].numel() >= numel,
                "sparsecraft.packed_linear: part ", i, " (", what, ") has the wrong type or size");
    return parts[i].data_ptr();
  };
  TORCH_CHECK(L.out >= 0 && L.in > 0, "sparsecraft.packed_linear: bad shape");
  switch (L.kind) {
    case kF32Dense: L.w = (const float*)need(0, at::kFloat, L.out * L.in, "weight"); break;
    case kF32Bitmap:
      L.masks = (const uint64_t*)need(1, at::kLong, L.out * L.mstride, "masks");
      L.rowoff = (const int64_t*)need(2, at::kLong, L.out + 1, "rowoff");
      L.vals = (const float*)need(0, at::kFloat, (L.out ? L.rowoff[L.out] : 0) + 16, "values");
      break;
    case kQDense:
    case kQSparse: {
      TORCH_CHECK((L.bits == 4 || L.bits == 8) && L.G >= 16 && L.G % 16 == 0 && L.in % L.G == 0,
                  "sparsecraft.packed_linear: bits must be 4/8 and the group a multiple of 16 dividing in");
      TORCH_CHECK(L.blk == 16 || L.blk == 32, "sparsecraft.packed_linear: int4 block must be 16 or 32");
      L.scales = (const uint16_t*)need(1, at::kShort, L.out * (L.in / L.G), "scales");
      L.zeros = (const uint8_t*)need(2, at::kByte, L.out * (L.in / L.G), "zeros");
      if (L.kind == kQDense) {
        L.codes = (const uint8_t*)need(0, at::kByte, L.out * L.cstride, "codes");
      } else {
        TORCH_CHECK(L.g == 0 || L.g == 4 || L.g == 8 || L.g == 16, "sparsecraft.packed_linear: g must be 0/4/8/16");
        L.masks = (const uint64_t*)need(3, at::kLong, L.out * L.mstride, "masks");
        L.rowoff = (const int64_t*)need(4, at::kLong, L.out + 1, "rowoff");
        L.codes = (const uint8_t*)need(0, at::kByte, (L.out ? L.rowoff[L.out] : 0) + 64, "codes");
      }
      break;
    }
    default: TORCH_CHECK(false, "sparsecraft.packed_linear: unknown kind ", L.kind);
  }
  TORCH_CHECK(L.xbits == 0 || L.xbits == 8, "sparsecraft.packed_linear: xbits must be 0 or 8");
  if (L.xbits == 8) {
    TORCH_CHECK((L.kind == kQDense || L.kind == kQSparse) && L.G % 64 == 0 && L.blk == 32,
                "sparsecraft.packed_linear: int8 inputs need quantized codes and groups of 64k");
    const size_t ci = L.kind == kQDense ? 3 : 5;
    L.csum = (const int16_t*)need(ci, at::kShort, L.out * (L.in / L.G), "csums");
  }
  return L;
}

}  // namespace sc

