// A lean batch-1 decoder for Llama-style models (torch.classes.sparsecraft_kernels.LlamaDecoder):
// the whole decoder step in C++ -- embedding lookup, per layer RMSNorm, q/k/v projections, rotary
// embedding, a static KV cache, grouped-query attention, output projection, RMSNorm, SiLU-gated MLP,
// final norm, LM head and argmax -- with every buffer allocated once and each linear layer run by
// the packed kernels of qdot.h on sparsecraft's pool (q/k/v and gate/up as one job each, 4 jobs per
// layer). No Python and no ATen op per token. Numerics follow transformers' LlamaForCausalLM in
// float32 (same RMSNorm, rotate-half RoPE from the model's own cos/sin tables, softmax attention,
// scaling head_dim^-0.5); only the summation order differs.
//
// Construction (built by sparsecraft/kernels/llama_decode.py):
//   ints   = [layers, hidden, heads, kv_heads, head_dim, intermediate, vocab, max_positions]
//   floats = [rms_eps]
//   metas  = 11 ints per linear (kind, out, in, bits, G, g, blk, mstride, cstride, xbits, has_bias) for
//            embed, then per layer q, k, v, o, gate, up, down, then head
//   tensors= embedding parts, per layer [input norm, post-attention norm, the 7 layers' parts (+ bias)],
//            final norm, head parts (+ bias), cos table, sin table (max_positions x head_dim).
#include <ATen/ATen.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <cmath>
#include <memory>
#include <vector>

#include "qlinear.h"

namespace {

constexpr int kPerLayer = 7;  // q, k, v, o, gate, up, down

int parts_count(int kind, int xbits) {
  return (kind == sc::kF32Dense ? 1 : (kind == sc::kQSparse ? 5 : 3)) + (xbits == 8 ? 1 : 0);
}

struct DecoderState {
  int64_t layers, hidden, heads, kv, hd, inter, vocab, max_pos;
  float eps;
  std::vector<at::Tensor> tensors;  // everything read, owned here
  std::vector<sc::QLinear> lin;     // embed, layers x 7, head
  std::vector<const float*> norm_in, norm_post;
  const float* norm_final;
  const float *cos, *sin;
  at::Tensor kcache, vcache, buf;
  float *x, *h, *q, *k, *v, *att, *o, *gate, *up, *logits, *scores;
  int64_t pos = 0;
};

class LlamaDecoder : public torch::CustomClassHolder {
 public:
  LlamaDecoder(std::vector<int64_t> ints, std::vector<double> floats, std::vector<at::Tensor> tensors,
               std::vector<int64_t> metas) {
    TORCH_CHECK(ints.size() == 8 && floats.size() == 1, "LlamaDecoder: bad config");
    auto s = std::make_shared<DecoderState>();
    s->layers = ints[0]; s->hidden = ints[1]; s->heads = ints[2]; s->kv = ints[3]; s->hd = ints[4];
    s->inter = ints[5]; s->vocab = ints[6]; s->max_pos = ints[7]; s->eps = (float)floats[0];
    TORCH_CHECK(s->heads % s->kv == 0 && s->hd % 2 == 0, "LlamaDecoder: bad head configuration");
    const int64_t n_lin = 2 + kPerLayer * s->layers;
    TORCH_CHECK((int64_t)metas.size() == 11 * n_lin, "LlamaDecoder: need 11 meta ints per linear layer");
    for (auto& t : tensors) t = t.contiguous();
    s->tensors = tensors;
    size_t ti = 0;
    auto take = [&](int64_t numel) -> const float* {
      TORCH_CHECK(ti < tensors.size() && tensors[ti].scalar_type() == at::kFloat && tensors[ti].numel() == numel,
                  "LlamaDecoder: tensor ", ti, " must be float32 with ", numel, " elements");
      return tensors[ti++].data_ptr<float>();
    };
    auto linear = [&](int64_t li) {
      const int64_t* m = metas.data() + 11 * li;
      const int np = parts_count((int)m[0], (int)m[9]);
      TORCH_CHECK(ti + np <= tensors.size(), "LlamaDecoder: missing tensors for linear ", li);
      std::vector<at::Tensor> parts(tensors.begin() + ti, tensors.begin() + ti + np);
      ti += np;
      sc::QLinear L = sc::make_linear(parts, at::IntArrayRef(m, 10));
      if (m[10]) L.bias = take(L.out);
      s->lin.push_back(L);
    };
    linear(0);
    TORCH_CHECK(s->lin[0].kind == sc::kF32Dense || s->lin[0].kind == sc::kQDense, "LlamaDecoder: embedding must be dense");
    for (int64_t l = 0; l < s->layers; ++l) {
      s->norm_in.push_back(take(s->hidden));
      s->norm_post.push_back(take(s->hidden));
      for (int j = 0; j < kPerLayer; ++j) linear(1 + kPerLayer * l + j);
    }
    s->norm_final = take(s->hidden);
    linear(n_lin - 1);
    s->cos = take(s->max_pos * s->hd);
    s->sin = take(s->max_pos * s->hd);
    TORCH_CHECK(ti == tensors.size(), "LlamaDecoder: ", tensors.size() - ti, " unexpected tensors");
    const auto f32 = at::TensorOptions().dtype(at::kFloat);
    s->kcache = at::zeros({s->layers, s->kv, s->max_pos, s->hd}, f32);
    s->vcache = at::zeros({s->layers, s->kv, s->max_pos, s->hd}, f32);
    const int64_t qd = s->heads * s->hd, kd = s->kv * s->hd;
    const int64_t sizes[] = {s->hidden, s->hidden, qd, kd, kd, qd, s->hidden, s->inter, s->inter, s->vocab, s->max_pos};
    int64_t total = 0;
    for (int64_t n : sizes) total += (n + 15) / 16 * 16;
    s->buf = at::zeros({total}, f32);
    float* p = s->buf.data_ptr<float>();
    float** slots[] = {&s->x, &s->h, &s->q, &s->k, &s->v, &s->att, &s->o, &s->gate, &s->up, &s->logits, &s->scores};
    for (int i = 0; i < 11; ++i) { *slots[i] = p; p += (sizes[i] + 15) / 16 * 16; }
    state_ = s;
  }

  // Feed one token at the current position; returns the argmax of the next-token logits.
  int64_t step(int64_t token) {
    DecoderState& s = *state_;
    TORCH_CHECK(s.pos < s.max_pos, "LlamaDecoder: the KV cache is full (", s.max_pos, " positions)");
    TORCH_CHECK(token >= 0 && token < s.vocab, "LlamaDecoder: token id ", token, " out of range");
    embed(s, token);
    for (int64_t l = 0; l < s.layers; ++l) layer(s, l);
    rmsnorm(s, s.x, s.norm_final, s.h);
    run_one(s.lin.back(), s.h, s.logits);
    ++s.pos;
    int64_t best = 0;
    for (int64_t i = 1; i < s.vocab; ++i)
      if (s.logits[i] > s.logits[best]) best = i;
    return best;
  }

  // Feed the prompt; returns the argmax after its last token.
  int64_t prefill(std::vector<int64_t> ids) {
    TORCH_CHECK(!ids.empty(), "LlamaDecoder.prefill: empty prompt");
    int64_t next = 0;
    for (int64_t t : ids) next = step(t);
    return next;
  }

  // Greedy: feed `token`, then each argmax, `n` steps; returns the n argmaxes (stops after eos >= 0).
  std::vector<int64_t> decode(int64_t token, int64_t n, int64_t eos) {
    std::vector<int64_t> out;
    for (int64_t i = 0; i < n; ++i) {
      token = step(token);
      out.push_back(token);
      if (token == eos) break;
    }
    return out;
  }

  at::Tensor logits() { return state_->buf.narrow(0, state_->logits - state_->buf.data_ptr<float>(), state_->vocab).clone(); }
  int64_t position() { return state_->pos; }
  void reset() { state_->pos = 0; }

 private:
  void run_one(const sc::QLinear& L, const float* in, float* out) { sc::run_linear(L, in, 0, 1, out, {}, state_); }

  static void rmsnorm(const DecoderState& s, const float* in, const float* w, float* out) {
    float ss = 0.f;
    for (int64_t i = 0; i < s.hidden; ++i) ss += in[i] * in[i];
    const float r = 1.f / std::sqrt(ss / (float)s.hidden + s.eps);
    for (int64_t i = 0; i < s.hidden; ++i) out[i] = w[i] * (in[i] * r);
  }

  static void embed(DecoderState& s, int64_t token) {
    const sc::QLinear& E = s.lin[0];
    if (E.kind == sc::kF32Dense) {
      std::copy(E.w + token * s.hidden, E.w + (token + 1) * s.hidden, s.x);
      return;
    }
    // one dequantized row: the kernel on a one-hot input would read the whole table; decode directly
    const int64_t ng = s.hidden / E.G;
    const uint8_t* row = E.codes + token * E.cstride;
    for (int64_t k = 0; k < s.hidden; ++k) {
      int q = E.bits == 8 ? row[k] : sc::nibble_code(row + (k / E.blk) * (E.blk / 2), k % E.blk, E.blk / 2);
      const int64_t gi = token * ng + k / E.G;
      s.x[k] = sc::half_to_float(E.scales[gi]) * ((float)q - (float)E.zeros[gi]);
    }
  }

  static void rope(const DecoderState& s, float* v, int64_t nheads) {
    const float* c = s.cos + s.pos * s.hd;
    const float* sn = s.sin + s.pos * s.hd;
    const int64_t half = s.hd / 2;
    for (int64_t h = 0; h < nheads; ++h) {
      float* x = v + h * s.hd;
      for (int64_t i = 0; i < half; ++i) {
        const float a = x[i], b = x[i + half];
        x[i] = a * c[i] - b * sn[i];
        x[i + half] = b * c[i + half] + a * sn[i + half];
      }
    }
  }

  void layer(DecoderState& s, int64_t l) {
    const sc::QLinear* L = &s.lin[1 + kPerLayer * l];
    rmsnorm(s, s.x, s.norm_in[l], s.h);
    {
      const sc::QLinear* qkv[3] = {&L[0], &L[1], &L[2]};
      float* ys[3] = {s.q, s.k, s.v};
      sc::run_linears(qkv, ys, 3, s.h, state_);
    }
    rope(s, s.q, s.heads);
    rope(s, s.k, s.kv);
    float* kc = s.kcache.data_ptr<float>() + l * s.kv * s.max_pos * s.hd;
    float* vc = s.vcache.data_ptr<float>() + l * s.kv * s.max_pos * s.hd;
    for (int64_t j = 0; j < s.kv; ++j) {
      std::copy(s.k + j * s.hd, s.k + (j + 1) * s.hd, kc + (j * s.max_pos + s.pos) * s.hd);
      std::copy(s.v + j * s.hd, s.v + (j + 1) * s.hd, vc + (j * s.max_pos + s.pos) * s.hd);
    }
    const float scale = 1.f / std::sqrt((float)s.hd);
    const int64_t group = s.heads / s.kv, T = s.pos + 1;
    for (int64_t h = 0; h < s.heads; ++h) {
      const float* qh = s.q + h * s.hd;
      const float* K = kc + (h / group) * s.max_pos * s.hd;
      const float* V = vc + (h / group) * s.max_pos * s.hd;
      float mx = -INFINITY;
      for (int64_t t = 0; t < T; ++t) {
        float d = 0.f;
        for (int64_t i = 0; i < s.hd; ++i) d += qh[i] * K[t * s.hd + i];
        s.scores[t] = d * scale;
        mx = std::max(mx, s.scores[t]);
      }
      float sum = 0.f;
      for (int64_t t = 0; t < T; ++t) { s.scores[t] = std::exp(s.scores[t] - mx); sum += s.scores[t]; }
      float* out = s.att + h * s.hd;
      for (int64_t i = 0; i < s.hd; ++i) out[i] = 0.f;
      for (int64_t t = 0; t < T; ++t) {
        const float p = s.scores[t] / sum;
        for (int64_t i = 0; i < s.hd; ++i) out[i] += p * V[t * s.hd + i];
      }
    }
    run_one(L[3], s.att, s.o);
    for (int64_t i = 0; i < s.hidden; ++i) s.x[i] += s.o[i];
    rmsnorm(s, s.x, s.norm_post[l], s.h);
    {
      const sc::QLinear* gu[2] = {&L[4], &L[5]};
      float* ys[2] = {s.gate, s.up};
      sc::run_linears(gu, ys, 2, s.h, state_);
    }
    for (int64_t i = 0; i < s.inter; ++i) {
      const float g = s.gate[i];
      s.gate[i] = g / (1.f + std::exp(-g)) * s.up[i];
    }
    run_one(L[6], s.gate, s.o);
    for (int64_t i = 0; i < s.hidden; ++i) s.x[i] += s.o[i];
  }

  std::shared_ptr<DecoderState> state_;
};

}  // namespace

TORCH_LIBRARY_FRAGMENT(sparsecraft_kernels, m) {
  m.class_<LlamaDecoder>("LlamaDecoder")
      .def(torch::init<std::vector<int64_t>, std::vector<double>, std::vector<at::Tensor>, std::vector<int64_t>>())
      .def("step", &LlamaDecoder::step)
      .def("prefill", &LlamaDecoder::prefill)
      .def("decode", &LlamaDecoder::decode)
      .def("logits", &LlamaDecoder::logits)
      .def("position", &LlamaDecoder::position)
      .def("reset", &LlamaDecoder::reset);
}
