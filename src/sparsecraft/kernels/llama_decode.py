"""The lean batch-1 decode path for Llama-style models: one C++ call per token.

``LlamaDecodePath.from_model(model)`` packs every linear layer of a ``LlamaForCausalLM`` (float,
masked, or quantized by :mod:`sparsecraft.quant`) into the kernel layouts of
:mod:`sparsecraft.kernels.quant_pack` and builds ``torch.classes.sparsecraft_kernels.LlamaDecoder``
(``csrc/llama_decode.cpp``): static KV cache, buffers allocated once, the whole decoder step in C++
on sparsecraft's thread pool. Greedy decoding then costs one call per token (``decode`` runs the
whole loop in C++), against transformers' ~30 Python-level modules and ~500 ATen ops per token.

Why a C++ loop and not ``torch.compile`` or a graph of the kernels (measured on the 2-core
benchmark machine, SmolLM2-135M fp32, see docs/results/cpu_decode.md): transformers' eager
``generate`` spends most of a token in Python and op dispatch (the dense model runs at ~16 tok/s
where its weights alone allow ~40); a per-layer Python loop over the kernels still pays ~5-10 us per
call x ~250 calls; ``torch.compile`` needs a compiler run of minutes on this machine, recompiles as
the cache grows unless the cache is static, and cannot fuse our custom kernels. The C++ step has no
per-token allocation or dispatch at all, and its kernels choose their own threads (``sc_pool.h``).

Kernel choice per layer (``kernels="auto"``): quantized layers run the dense quantized kernel
unless the sparse one (bitmap, or group bitmap for GQSA's groups) is measured at most 0.9x its time
on this machine, for the layer's shape (measured once per distinct shape, grid and sparsity);
float layers the same with the float32 dense / bitmap kernels. ``"dense"`` / ``"sparse"`` force
one side.

``input_bits=8`` (``sparsecraft generate --input-bits 8``): quantized layers whose groups are
multiples of 64 round their input to int8 per quantization group and multiply with integer dot
products (``csrc/qdot_x8.h``, AVX-512 VNNI), as llama.cpp multiplies its 4-bit weights with 8-bit
activation blocks. The outputs then differ from the float-input model by the input rounding (about
0.4% of a group's largest input per element); float layers keep float inputs.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.kernels import quant_pack as qp
from sparsecraft.kernels.arena import in_arena
from sparsecraft.kernels.backend_quant import group_size
from sparsecraft.kernels.extension import ops
from sparsecraft.kernels.sparse_linear import effective_weight
from sparsecraft.kernels.timing import time_blocks
from sparsecraft.quant.state import get_quant

KERNEL_CHOICES = ("auto", "dense", "sparse")
INPUT_BITS = (None, 8)
LAYER_NAMES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def candidates(linear: nn.Module, weight: torch.Tensor,
               input_bits: int | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """{"dense": packed, "sparse": packed (when the weight has zeros)} in kernel layouts; with
    ``input_bits=8`` the quantized ones that can take int8 inputs do."""
    st = get_quant(linear)
    out: dict[str, dict[str, torch.Tensor]] = {}
    nz = weight != 0
    if st is None:
        out["dense"] = qp.pack_f32_dense(weight)
        if not bool(nz.all()):
            out["sparse"] = qp.pack_f32_bitmap(weight)
        return out
    if st.spec.group % 16 or weight.shape[1] % st.spec.group:
        raise SparsecraftError(
            f"the decode kernels need quantization groups that are multiples of 16, got {st.spec.group}"
        )
    codes = st.codes(weight, "weight")
    out["dense"] = _inputs(qp.pack_q_dense(codes, st.scale, st.zero, st.spec.bits), codes, None, st.zero, input_bits)
    if not bool(nz.all()):
        g = group_size(nz, st.spec.bits)
        keep = nz if g is None else nz.reshape(nz.shape[0], -1, g).any(-1).repeat_interleave(g, 1)
        out["sparse"] = _inputs(qp.pack_q_sparse(codes, keep, st.scale, st.zero, st.spec.bits, g or 0),
                                codes, keep, st.zero, input_bits)
    return out


def _inputs(packed: dict[str, torch.Tensor], codes: torch.Tensor, keep: torch.Tensor | None, zero: torch.Tensor,
            input_bits: int | None) -> dict[str, torch.Tensor]:
    """The packed layer with int8 inputs when asked for and possible (else unchanged)."""
    if input_bits != 8 or qp.int8_inputs_unsupported(packed):
        return packed
    try:
        return qp.with_int8_inputs(packed, codes, keep, zero)
    except SparsecraftError:  # sparse int8 codes on an asymmetric grid: float inputs
        return packed


def time_packed(packs: dict[str, dict[str, torch.Tensor]], rounds: int = 5) -> dict[str, float]:
    """Seconds per batch-1 call of each packed candidate (block-wise, fastest block median)."""
    inp = int(next(iter(packs.values()))["meta"][2])
    x = torch.randn(1, inp)
    calls = {}
    for name, p in packs.items():
        parts, meta = qp.parts_of(p), p["meta"].tolist()
        calls[name] = lambda parts=parts, meta=meta: ops().packed_linear(x, parts, None, meta)
    blocks = time_blocks(calls, rounds=rounds, block=20, warmup=3, block_s=0.01)
    return {k: min(statistics.median(b) for b in v) for k, v in blocks.items()}


@dataclass
class LayerChoice:
    name: str
    kernel: str  #: "dense" or "sparse"
    layout: str  #: f32-dense, f32-bitmap, q4-dense, q4-bitmap, q4-group16, ...
    bytes: int
    times_us: dict[str, float] = field(default_factory=dict)


def _layout_name(p: dict[str, torch.Tensor]) -> str:
    kind, bits, g = int(p["meta"][0]), int(p["meta"][3]), int(p["meta"][5])
    sparse = f"q{bits}-" + (f"group{g}" if g else "bitmap")
    name = {0: "f32-dense", 1: "f32-bitmap", 2: f"q{bits}-dense", 3: sparse}[kind]
    return name + "-x8" if int(p["meta"][9]) == 8 else name


def _llama_parts(model: nn.Module) -> tuple[Any, nn.Module]:
    inner = getattr(model, "model", None)
    cfg = getattr(model, "config", None)
    ok = inner is not None and cfg is not None and hasattr(inner, "layers") and hasattr(inner, "embed_tokens") \
        and hasattr(inner, "norm") and hasattr(inner, "rotary_emb") and hasattr(model, "lm_head")
    if not ok or getattr(cfg, "hidden_act", "silu") != "silu":
        raise SparsecraftError(
            "the decode path runs Llama-style causal LMs (LlamaForCausalLM layout, SiLU MLP); "
            f"got {type(model).__name__}"
        )
    return cfg, inner


class LlamaDecodePath:
    """A packed Llama-style model and its C++ decoder (see the module docstring)."""

    def __init__(self, decoder: Any, choices: list[LayerChoice], threads: int) -> None:
        self.decoder = decoder
        self.choices = choices
        self.threads = threads

    @classmethod
    @torch.no_grad()
    def from_model(cls, model: nn.Module, kernels: str = "auto", max_positions: int = 2048,
                   threads: int | None = None, input_bits: int | None = None) -> LlamaDecodePath:
        if kernels not in KERNEL_CHOICES:
            raise SparsecraftError(f"kernels must be one of {', '.join(KERNEL_CHOICES)}, got {kernels!r}")
        if input_bits not in INPUT_BITS:
            raise SparsecraftError(f"input_bits must be None (float inputs) or 8, got {input_bits!r}")
        cfg, inner = _llama_parts(model)
        threads = threads or torch.get_num_threads()
        ops().set_threads(threads)
        hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        max_positions = min(max_positions, getattr(cfg, "max_position_embeddings", max_positions))
        tensors: list[torch.Tensor] = []
        metas: list[int] = []
        choices: list[LayerChoice] = []
        memo: dict[tuple, str] = {}

        def add(name: str, packed: dict[str, torch.Tensor], bias: torch.Tensor | None) -> None:
            tensors.extend(qp.parts_of(packed))
            metas.extend([*packed["meta"].tolist(), int(bias is not None)])  # 10 meta ints + has_bias
            if bias is not None:
                tensors.append(bias.detach().float().contiguous())

        def linear(name: str, module: nn.Module) -> None:
            weight = effective_weight(module).float().cpu()
            packs = candidates(module, weight, input_bits)
            pick, times = "dense", {}
            if "sparse" in packs and kernels != "dense":
                if kernels == "sparse":
                    pick = "sparse"
                else:
                    st = get_quant(module)
                    key = (tuple(weight.shape), None if st is None else st.spec,
                           round(float((weight == 0).float().mean()), 2), _layout_name(packs["sparse"]))
                    if key not in memo:
                        t = time_packed(packs)
                        memo[key] = "sparse" if t["sparse"] <= 0.9 * t["dense"] else "dense"
                        times = {k: round(v * 1e6, 1) for k, v in t.items()}
                    pick = memo[key]
            chosen = packs[pick]
            choices.append(LayerChoice(name, pick, _layout_name(chosen), qp.packed_bytes(chosen), times))
            add(name, chosen, module.bias if getattr(module, "bias", None) is not None else None)

        emb = inner.embed_tokens
        st = get_quant(emb)
        ew = emb.weight.detach().float().cpu()
        emb_pack = qp.pack_q_dense(st.codes(ew), st.scale, st.zero, st.spec.bits) if st else qp.pack_f32_dense(ew)
        add("embed_tokens", emb_pack, None)
        choices.append(LayerChoice("embed_tokens", "dense", _layout_name(emb_pack), qp.packed_bytes(emb_pack)))
        for i, block in enumerate(inner.layers):
            tensors.append(block.input_layernorm.weight.detach().float().contiguous())
            tensors.append(block.post_attention_layernorm.weight.detach().float().contiguous())
            for lname in LAYER_NAMES:
                linear(f"layers.{i}.{lname}", block.get_submodule(lname))
        tensors.append(inner.norm.weight.detach().float().contiguous())
        head = model.lm_head
        if head.weight is emb.weight:
            head_pack = _inputs(emb_pack, st.codes(ew), None, st.zero, input_bits) if st else emb_pack
            add("lm_head", head_pack, None)  # the embedding's tensors (+ csums with int8 inputs)
            extra = qp.packed_bytes(head_pack) - qp.packed_bytes(emb_pack)
            choices.append(LayerChoice("lm_head (tied)", "dense", _layout_name(head_pack), extra))
        else:
            linear("lm_head", head)
        pos = torch.arange(max_positions).unsqueeze(0)
        cos, sin = inner.rotary_emb(torch.zeros(1, 1, hd), pos)
        tensors.extend([cos[0].float().contiguous(), sin[0].float().contiguous()])
        ints = [len(inner.layers), cfg.hidden_size, cfg.num_attention_heads,
                getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads, hd, cfg.intermediate_size,
                cfg.vocab_size, max_positions]
        tensors, _ = in_arena(tensors)  # one buffer in huge pages: the loop streams it every token
        decoder = torch.classes.sparsecraft_kernels.LlamaDecoder(ints, [float(cfg.rms_norm_eps)], tensors, metas)
        return cls(decoder, choices, threads)

    @property
    def weight_bytes(self) -> int:
        """Bytes of packed weights one token reads (embedding row not counted; tied head once)."""
        return sum(c.bytes for c in self.choices if c.name != "embed_tokens") + \
            next((c.bytes for c in self.choices if c.name == "embed_tokens"), 0) * \
            int(any(c.name == "lm_head (tied)" for c in self.choices))

    def generate(self, prompt_ids: list[int], max_new_tokens: int, eos: int | None = None) -> GenerateResult:
        """Greedy decoding: prefill the prompt, then ``max_new_tokens - 1`` decode steps."""
        if max_new_tokens < 1:
            raise SparsecraftError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not prompt_ids:
            raise SparsecraftError("the prompt is empty")
        ops().set_threads(self.threads)
        self.decoder.reset()
        t0 = time.perf_counter()
        first = int(self.decoder.prefill(list(map(int, prompt_ids))))
        t1 = time.perf_counter()
        rest: list[int] = []
        if max_new_tokens > 1 and first != eos:
            rest = list(self.decoder.decode(first, max_new_tokens - 1, -1 if eos is None else int(eos)))
        t2 = time.perf_counter()
        return GenerateResult([first, *rest], t1 - t0, t2 - t1)


@contextlib.contextmanager
def int8_inputs_applied(model: nn.Module, path: LlamaDecodePath) -> Iterator[nn.Module]:
    """``model`` (transformers) with the decode path's int8 input rounding on every layer that runs
    with int8 inputs (forward pre-hooks: x -> rint(x / sx) * sx, sx = max|x| / 127 per quantization
    group): the float reference of an ``input_bits=8`` path, for its perplexity and token checks."""
    names = {c.name.replace(" (tied)", "") for c in path.choices if c.layout.endswith("-x8")}
    hooks = []
    for name, module in model.named_modules():
        if name.removeprefix("model.") in names:
            st = get_quant(module) or get_quant(model.get_input_embeddings())
            hooks.append(module.register_forward_pre_hook(_rounding_hook(st.spec.group)))
    try:
        yield model
    finally:
        for h in hooks:
            h.remove()


def _rounding_hook(group: int):
    def hook(module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        xg = x.reshape(*x.shape[:-1], -1, group)
        sx = xg.abs().amax(-1, keepdim=True) / 127.0
        safe = torch.where(sx > 0, sx, torch.ones_like(sx))
        q = torch.where(sx > 0, torch.round(xg / safe), torch.zeros_like(xg)).clamp(-127, 127)
        return ((q * sx).reshape(x.shape), *args[1:])

    return hook


@dataclass
class GenerateResult:
    tokens: list[int]
    prefill_s: float
    decode_s: float

    @property
    def decode_steps(self) -> int:
        return len(self.tokens) - 1

    @property
    def tokens_per_s(self) -> float:
        """Decode steps per second after the prompt (the first new token comes with the prefill)."""
        return self.decode_steps / self.decode_s if self.decode_s > 0 and self.decode_steps else 0.0
