"""``SparseKVCache``: a transformers ``Cache`` that keeps the newest ``window`` tokens dense and
every older K and V vector magnitude-pruned and compressed (Mustafar, arXiv 2505.22913).

The rule, per layer, batch row, KV head and token: when a token stops being one of the newest
``window`` tokens it is pruned to exactly ``floor(sparsity * head_dim)`` zeros (largest |x| kept,
ties to the lower index) and stored in the tile format of :mod:`sparsecraft.kv.tiles`. A query at
position t therefore sees key/value j dense when ``t - j < window`` and pruned otherwise -- for
*every* query, also inside a multi-token forward (a prefill or a perplexity window). That is what
feeding the tokens one at a time would give; pruning only at chunk boundaries would let the
tokens of a chunk see each other dense and understate the loss.

Two ways to use it:

* ``SparseKVCache(0.7, 128, model=model)`` (recommended): checks the model family and switches
  the model's attention to ``"sparsecraft_kv"`` (:mod:`sparsecraft.kv.attention`), which applies
  the rule exactly for any number of new tokens and, at decode (one new token, CPU), runs the C++
  kernel on the compressed cache directly. The attention falls back to SDPA for any other cache,
  so the switched model still works with a plain ``DynamicCache``.
* ``SparseKVCache(0.7, 128)``: works with any attention implementation by handing it a dense copy
  of the pruned cache (slow); a multi-token forward in which tokens leave the window cannot be
  expressed that way and raises (pass ``model=``).

``cache.nbytes()`` is the bytes the cache holds: bitmaps + packed values (with their spare
capacity, grown by at most max(8 tokens, 1/64)) + the dense window.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import Cache, CacheLayerMixin

from sparsecraft.errors import SparsecraftError
from sparsecraft.kv.tiles import check_sparsity, keep_count, n_tiles, pack, unpack

#: model families whose attention calls ``cache.update`` then the attention interface (no
#: sliding-window or linear layers): the only ones the exact rule is implemented for.
SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
KERNELS = ("auto", "cpp", "torch")


def check_window(window: Any) -> int:
    if isinstance(window, bool) or not isinstance(window, int):
        raise SparsecraftError(f"KV window must be an integer >= 0 (tokens kept dense), got {window!r}")
    if window < 0:
        raise SparsecraftError(f"KV window must be >= 0 (tokens kept dense), got {window}")
    return window


def check_family(config: Any) -> None:
    """One-line error unless ``config`` is a supported decoder without sliding-window layers."""
    family = getattr(config, "model_type", None)
    if family not in SUPPORTED_FAMILIES:
        raise SparsecraftError(f"SparseKVCache does not support model family {family!r}; "
                               f"supported: {', '.join(SUPPORTED_FAMILIES)}")
    types = getattr(config, "layer_types", None) or []
    sliding = any(t != "full_attention" for t in types)
    if family == "mistral" and getattr(config, "sliding_window", None) is not None:
        sliding = True
    if sliding:
        raise SparsecraftError(f"SparseKVCache does not support sliding-window layers ({family} config "
                               "with sliding_window set); use a config with full attention in every layer")


def _check_dtype(dtype: Any) -> torch.dtype | None:
    if dtype is None:
        return None
    if isinstance(dtype, str) and dtype in STORAGE_DTYPES:
        return STORAGE_DTYPES[dtype]
    if dtype in STORAGE_DTYPES.values():
        return dtype
    raise SparsecraftError(f"KV storage dtype must be one of {', '.join(STORAGE_DTYPES)} or None, got {dtype!r}")


def use_cpp(kernel: str, device: torch.device) -> bool:
    """Whether to run the C++ kernels: ``cpp`` always (error if unavailable), ``auto`` on CPU
    when the extension builds, ``torch`` never."""
    if kernel == "torch" or device.type != "cpu":
        if kernel == "cpp" and device.type != "cpu":
            raise SparsecraftError(f"kernel='cpp' runs on CPU only; the cache is on {device}")
        return False
    from sparsecraft.kernels.extension import extension_status

    ok, reason = extension_status()
    if kernel == "cpp" and not ok:
        raise SparsecraftError(f"kernel='cpp' requested but the C++ kernels are unavailable: {reason}")
    return ok


class KVView:
    """What one ``update`` tells the ``sparsecraft_kv`` attention, attached to the keys it returns
    (the dense keys/values of tokens ``[c0, total)``: window before the update + new tokens): the
    layer whose compressed store holds the pruned tokens ``[0, c1)``. It holds no tensor, so the
    attribute makes no reference cycle."""

    def __init__(self, layer: SparseKVLayer, c0: int, c1: int, total: int) -> None:
        self.layer, self.c0, self.c1, self.total = layer, c0, c1, total

    def pruned(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense copies (compute dtype) of the pruned keys/values ``[0, c1)``."""
        return self.layer.pruned_dense(self.c1)


class SparseKVLayer(CacheLayerMixin):
    """One decoder layer's sparse KV cache (see the module docstring)."""

    is_compileable = False
    is_croppable = False
    is_sliding = False

    def __init__(self, sparsity: float = 0.7, window: int = 128, dtype: torch.dtype | None = None,
                 kernel: str = "auto", config: Any = None) -> None:
        super().__init__()
        self.sparsity = check_sparsity(sparsity)
        self.window = check_window(window)
        self.storage_dtype = dtype
        self.kernel = kernel
        self.config = config
        self.length = 0  #: tokens seen
        self.n_comp = 0  #: tokens pruned and compressed (always max(0, length - window))
        self.kbits = self.kvals = self.vbits = self.vvals = None

    # ------------------------------------------------------------------ storage
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, d = key_states.shape
        self.device = key_states.device
        self.compute_dtype = key_states.dtype
        self.dtype = self.storage_dtype or key_states.dtype
        self.head_dim, self.n_keep, self.nt = d, keep_count(self.sparsity, d), n_tiles(d)
        self.cpp = use_cpp(self.kernel, self.device)
        self.keys = key_states.new_zeros(b, h, 0, d, dtype=self.dtype)
        self.values = value_states.new_zeros(b, h, 0, d, dtype=self.dtype)
        self.kbits = torch.zeros(b, h, 0, self.nt, dtype=torch.int64, device=self.device)
        self.vbits = self.kbits.clone()
        self.kvals = torch.zeros(b, h, 0, self.n_keep, dtype=self.dtype, device=self.device)
        self.vvals = self.kvals.clone()
        self.is_initialized = True

    def capacity(self) -> int:
        return 0 if self.kbits is None else self.kbits.shape[2]

    def _reserve(self, n: int) -> None:
        """Room for ``n`` more compressed tokens: exact on the first fill, then grown by
        max(8, capacity / 64) tokens so a long decode reallocates rarely and wastes < 2% past 400 tokens."""
        need, cap = self.n_comp + n, self.capacity()
        if need <= cap:
            return
        new = need if cap == 0 else max(need, cap + max(8, cap // 64))
        for name in ("kbits", "vbits", "kvals", "vvals"):
            old = getattr(self, name)
            grown = old.new_zeros(*old.shape[:2], new, old.shape[3])
            grown[:, :, : self.n_comp] = old[:, :, : self.n_comp]
            setattr(self, name, grown)

    def _compress(self, k: torch.Tensor, v: torch.Tensor) -> None:
        n = k.shape[2]
        self._reserve(n)
        c = self.n_comp
        if self.cpp:
            from sparsecraft.kernels.extension import ops

            ops().kv_pack(k.contiguous(), self.n_keep, self.kbits, self.kvals, c)
            ops().kv_pack(v.contiguous(), self.n_keep, self.vbits, self.vvals, c)
        else:
            for x, bits, vals in ((k, self.kbits, self.kvals), (v, self.vbits, self.vvals)):
                b_, v_ = pack(x, self.n_keep)
                bits[:, :, c : c + n] = b_
                vals[:, :, c : c + n] = v_
        self.n_comp = c + n

    def pruned_dense(self, upto: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense (compute dtype) copies of the compressed keys/values ``[0, upto)``."""
        n = self.n_comp if upto is None else upto
        k = unpack(self.kbits[:, :, :n], self.kvals[:, :, :n], self.head_dim)
        v = unpack(self.vbits[:, :, :n], self.vvals[:, :, :n], self.head_dim)
        return k.to(self.compute_dtype), v.to(self.compute_dtype)

    # ------------------------------------------------------------------ Cache layer API
    def exact_attention(self) -> bool:
        """True when the model runs the ``sparsecraft_kv`` attention (set by ``model=``)."""
        from sparsecraft.kv.attention import ATTN_NAME

        return self.config is not None and getattr(self.config, "_attn_implementation", None) == ATTN_NAME

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n_new = key_states.shape[-2]
        c0, total = self.n_comp, self.length + n_new
        live_k = torch.cat([self.keys, key_states.to(self.dtype)], dim=-2)
        live_v = torch.cat([self.values, value_states.to(self.dtype)], dim=-2)
        c1 = max(c0, total - self.window)
        if c1 > c0:
            self._compress(live_k[:, :, : c1 - c0], live_v[:, :, : c1 - c0])
        self.keys = live_k[:, :, c1 - c0 :].clone()
        self.values = live_v[:, :, c1 - c0 :].clone()
        self.length = total
        if self.exact_attention():
            keys, values = live_k.to(self.compute_dtype), live_v.to(self.compute_dtype)
            keys._sparsecraft_kv = KVView(self, c0, c1, total)
            return keys, values
        if n_new > 1 and c1 > c0 and self.n_keep < self.head_dim:
            raise SparsecraftError(
                f"SparseKVCache: in this {n_new}-token forward {c1 - c0} tokens leave the {self.window}-token "
                "window, which a plain attention cannot apply per query; build the cache with "
                "SparseKVCache(..., model=model) (switches the model to the exact 'sparsecraft_kv' attention)")
        kp, vp = self.pruned_dense(c1)
        return (torch.cat([kp, self.keys.to(self.compute_dtype)], dim=-2),
                torch.cat([vp, self.values.to(self.compute_dtype)], dim=-2))

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.keys = self.values = None
        self.kbits = self.kvals = self.vbits = self.vvals = None
        self.length = self.n_comp = 0
        self.is_initialized = False

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove != 0:
            raise SparsecraftError("SparseKVCache cannot be cropped: pruned tokens cannot be restored "
                                   "(assisted decoding and rollbacks need a dense cache)")

    def offload(self) -> None:
        raise SparsecraftError("SparseKVCache does not support offloading")

    def prefetch(self) -> None:
        raise SparsecraftError("SparseKVCache does not support offloading")

    def _batch_apply(self, fn) -> None:  # noqa: ANN001
        if not self.is_initialized:
            return
        for name in ("keys", "values", "kbits", "kvals", "vbits", "vvals"):
            setattr(self, name, fn(getattr(self, name)))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._batch_apply(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._batch_apply(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._batch_apply(lambda t: t[indices, ...])

    def nbytes(self, allocated: bool = True) -> int:
        """Bytes held: bitmaps + values (``allocated``: with spare capacity) + dense window."""
        if not self.is_initialized:
            return 0
        n = self.capacity() if allocated else self.n_comp
        per_token = 2 * (self.nt * 8 + self.n_keep * self.kvals.element_size())
        b, h = self.kbits.shape[:2]
        return b * h * n * per_token + self.keys.nbytes + self.values.nbytes


class SparseKVCache(Cache):
    """A ``transformers`` cache pruning every K/V vector that leaves the newest ``window`` tokens
    to ``floor(sparsity * head_dim)`` zeros, stored as 64-bit tile bitmaps + packed values.

    Args:
        sparsity: fraction of each pruned vector's entries set to zero, in [0, 1).
        window: newest tokens kept dense (>= 0).
        model: the Llama-style model it serves (recommended): checks the family and switches its
            attention to the exact per-token rule + C++ decode kernel (``"sparsecraft_kv"``).
        dtype: storage dtype (``None`` = the model's; ``float16``/``bfloat16`` store half-size).
        kernel: ``auto`` (C++ on CPU when it builds), ``cpp`` (required) or ``torch``.
    """

    def __init__(self, sparsity: float = 0.7, window: int = 128, *, model: nn.Module | None = None,
                 dtype: torch.dtype | str | None = None, kernel: str = "auto") -> None:
        sparsity = check_sparsity(sparsity)
        window = check_window(window)
        dtype = _check_dtype(dtype)
        if kernel not in KERNELS:
            raise SparsecraftError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
        if kernel == "cpp":
            use_cpp("cpp", torch.device("cpu"))
        self.sparsity, self.window, self.kernel = sparsity, window, kernel
        config = None
        if model is not None:
            from sparsecraft.kv.attention import enable

            config = enable(model)
        make = partial(SparseKVLayer, sparsity, window, dtype, kernel, config)
        if config is None:
            super().__init__(layer_class_to_replicate=make)
        else:
            super().__init__(layers=[make() for _ in range(config.num_hidden_layers)])

    def nbytes(self, allocated: bool = True) -> int:
        """True bytes held by the cache: bitmaps + packed values + dense windows, all layers."""
        return sum(layer.nbytes(allocated) for layer in self.layers if isinstance(layer, SparseKVLayer))

    def dense_nbytes(self, itemsize: int = 2) -> int:
        """Bytes a dense K+V cache of the same tokens would take at ``itemsize`` bytes per value."""
        total = 0
        for layer in self.layers:
            if isinstance(layer, SparseKVLayer) and layer.is_initialized:
                b, h = layer.kbits.shape[:2]
                total += 2 * b * h * layer.length * layer.head_dim * itemsize
        return total

    def __repr__(self) -> str:
        return f"SparseKVCache(sparsity={self.sparsity}, window={self.window}, layers={len(self.layers)})"
