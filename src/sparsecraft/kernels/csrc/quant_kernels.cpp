// Quantized (and float) packed linear layers for batch 1..8 on CPU, registered as
// torch.ops.sparsecraft_kernels.{packed_linear, set_threads, threads, set_isa, isa}.
//
// y[N, out] = x[N, in] @ W^T (+ bias) for W in one of the layouts of qdot.h: float32 dense, float32
// bitmap, int4/int8 group-quantized dense, and int4/int8 group-quantized sparse (element bitmap or
// group bitmap). The weights are dequantized in registers. Rows are split into chunks run on
// sparsecraft's own pool (sc_pool.h): dynamic chunks, and the calling thread finishes the job alone
// when a helper thread is descheduled, so a busy machine slows a call down to (at worst) one
// thread's speed instead of a scheduler quantum per call.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "qlinear.h"

namespace {

at::Tensor packed_linear(const at::Tensor& x_in, const std::vector<at::Tensor>& parts,
                         const c10::optional<at::Tensor>& bias, at::IntArrayRef meta) {
  sc::sync_threads();
  sc::QLinear L = sc::make_linear(parts, meta);
  TORCH_CHECK(x_in.dim() == 2 && x_in.scalar_type() == at::kFloat && x_in.size(1) == L.in,
              "sparsecraft.packed_linear: x must be float32 [N, ", L.in, "]");
  at::Tensor x = x_in.contiguous();
  at::Tensor b;
  if (bias.has_value() && bias->defined()) {
    b = bias->contiguous();
    TORCH_CHECK(b.scalar_type() == at::kFloat && b.numel() == L.out, "sparsecraft.packed_linear: bad bias");
    L.bias = b.data_ptr<float>();
  }
  const int64_t N = x.size(0);
  at::Tensor y = at::empty({N, L.out}, x.options());
  std::vector<c10::IValue> keep(parts.begin(), parts.end());
  keep.emplace_back(x);
  keep.emplace_back(y);
  if (b.defined()) keep.emplace_back(b);
  for (int64_t i0 = 0; i0 < N; i0 += 8) {
    const int n = (int)std::min<int64_t>(8, N - i0);
    sc::run_linear(L, x.data_ptr<float>() + i0 * L.in, L.in, n, y.data_ptr<float>() + i0 * L.out, keep);
  }
  return y;
}

int64_t set_threads(int64_t n) {
  sc::pool().resize((int)std::max<int64_t>(1, n));
  return sc::pool().threads();
}
int64_t threads() { return sc::pool().threads(); }
int64_t set_isa(int64_t level) {
  sc::isa_level() = (int)std::max<int64_t>(0, std::min<int64_t>(level, sc::compiled_isa()));
  return sc::isa_level();
}
int64_t isa() { return sc::isa_level(); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(sparsecraft_kernels, m) {
  m.def("packed_linear(Tensor x, Tensor[] parts, Tensor? bias, int[] meta) -> Tensor");
  m.def("set_threads", set_threads);
  m.def("threads", threads);
  m.def("set_isa", set_isa);
  m.def("isa", isa);
}

TORCH_LIBRARY_IMPL(sparsecraft_kernels, CPU, m) { m.impl("packed_linear", packed_linear); }
