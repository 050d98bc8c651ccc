"""Greedy text generation at batch 1 through sparsecraft's C++ decode path, with tokens/s.

Example::

    sparsecraft prune --model smollm2-135m --method sparsegpt --sparsity 0.5 --quantize 4 \
        --group-size 64 --out runs/w4s50
    sparsecraft generate --model runs/w4s50 --prompt "To be, or not to be" --max-new-tokens 48 --threads 2

``--model`` is a built-in name (``smollm2-135m``), a Hugging Face directory (dense, or sparse with
packed / quantized weights), or the run folder ``sparsecraft prune --out`` wrote. Every linear layer
runs the packed kernels (quantized layers their int4/int8 kernels; ``--kernels auto`` takes a sparse
kernel only where it is measured faster than the dense one), the whole decoder step in one C++ call
(:mod:`sparsecraft.kernels.llama_decode`). The tokens are those of greedy decoding with the same
(masked / dequantized) model through ``transformers``.

Printed: the prompt and the generated text, then tokens/s = decode steps per second after the
prompt (48 new tokens = the prefill's token + 47 steps). ``--json`` prints ``text``, ``new_tokens``,
``tokens_per_s`` and the details.
"""

from __future__ import annotations

import argparse

from sparsecraft.cli.common import print_json
from sparsecraft.errors import SparsecraftError

NAME = "generate"
HELP = "greedy generation at batch 1 through the C++ decode path (prints text and tokens/s)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m", help="built-in name, HF directory, or a prune run folder")
    p.add_argument("--prompt", required=True, help="the prompt text")
    p.add_argument("--max-new-tokens", type=int, default=48, help="tokens to generate (default 48)")
    p.add_argument("--threads", type=int, default=None, help="threads of the kernels (default: torch's)")
    p.add_argument("--kernels", default="auto", choices=["auto", "dense", "sparse"],
                   help="auto: sparse kernels only where measured faster (default)")
    p.add_argument("--max-positions", type=int, default=1024, help="KV cache length (default 1024)")
    p.add_argument("--input-bits", type=int, default=None, choices=[8],
                   help="8: quantized layers round their inputs to int8 per group and use integer dot products "
                        "(AVX-512 VNNI; outputs differ by the input rounding, as llama.cpp's do). Measure "
                        "before choosing it: on the benchmark machine the two are within a few percent "
                        "(docs/results/cpu_decode.md)")
    p.add_argument("--stop-at-eos", action="store_true", help="stop at the end-of-sequence token")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def load_for_decode(name_or_dir: str):
    """(model with masks / quantization state, tokenizer) of a built-in name or a directory."""
    from pathlib import Path

    from sparsecraft.formats.hf import load_sparse_model, resolve_dir
    from sparsecraft.models.sources import BUILTIN_MODELS, resolve_model_dir

    if name_or_dir.lower() in BUILTIN_MODELS:
        path = resolve_model_dir(name_or_dir)
    elif Path(name_or_dir).exists():
        path = resolve_dir(name_or_dir)
    else:
        raise SparsecraftError(f"model {name_or_dir!r} is neither a built-in name ({', '.join(BUILTIN_MODELS)}) "
                               "nor an existing directory")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except Exception:
        raise SparsecraftError(f"{path} has no tokenizer files; generate needs them") from None
    return load_sparse_model(path), tok


def run(args: argparse.Namespace) -> int:
    if args.max_new_tokens < 1:
        raise SparsecraftError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.threads is not None and args.threads < 1:
        raise SparsecraftError(f"--threads must be >= 1, got {args.threads}")
    import torch

    from sparsecraft.kernels.llama_decode import LlamaDecodePath

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_for_decode(args.model)
    ids = tok(args.prompt, add_special_tokens=False)["input_ids"]
    if not ids:
        raise SparsecraftError("the prompt encodes to no tokens")
    if len(ids) + args.max_new_tokens > args.max_positions:
        raise SparsecraftError(f"prompt ({len(ids)} tokens) + {args.max_new_tokens} new tokens exceed "
                               f"--max-positions {args.max_positions}")
    path = LlamaDecodePath.from_model(model, kernels=args.kernels, max_positions=args.max_positions,
                                      threads=args.threads, input_bits=args.input_bits)
    eos = tok.eos_token_id if args.stop_at_eos else None
    res = path.generate(ids, args.max_new_tokens, eos)
    text = tok.decode(res.tokens, skip_special_tokens=True)
    out = {
        "text": text, "new_tokens": len(res.tokens), "tokens_per_s": round(res.tokens_per_s, 2),
        "decode_steps": res.decode_steps, "decode_s": round(res.decode_s, 4), "prefill_s": round(res.prefill_s, 4),
        "prompt_tokens": len(ids), "threads": path.threads, "tokens": res.tokens,
        "weight_bytes_per_token": path.weight_bytes,
        "kernels": {c.layout: sum(1 for d in path.choices if d.layout == c.layout) for c in path.choices},
    }
    if args.json:
        print_json(out)
        return 0
    print(args.prompt + text)
    print(f"-- {out['new_tokens']} new tokens, {out['tokens_per_s']:.1f} tokens/s ({path.threads} threads; "
          f"prefill {res.prefill_s * 1e3:.0f} ms; kernels " + ", ".join(f"{k}: {v}" for k, v in out["kernels"].items())
          + ")")
    return 0
