"""Zero-shot accuracy through lm-evaluation-harness, offline (the model object is passed in directly).

Example::

    sparsecraft eval --model smollm2-135m --tasks shakespeare_nextline,shakespeare_cloze --json
    sparsecraft eval --model runs/prune-llm-x/model --tasks shakespeare --perplexity
    sparsecraft eval --model smollm2-135m --checkpoint pruned.safetensors --convert auto --tasks shakespeare

``--model`` is a built-in name (smollm2-135m), a Hugging Face folder, a sparse folder written by
``save_pretrained_sparse`` / ``sparsecraft compress`` (packed), a compressed-tensors sparse folder
(``sparse-bitmask`` / ``sparse-24-bitmask``), or a ``sparsecraft prune`` run folder (its ``model/``).
``--checkpoint`` loads a sparsecraft checkpoint (weights and masks) into it (a masked model);
``--convert BACKEND`` swaps its sparse Linear layers for sparse kernels first (a converted model).

``--tasks``: ``shakespeare`` (= ``shakespeare_nextline,shakespeare_cloze,shakespeare_rolling``,
generated from the held-out part of the installed plays), a local ``.jsonl`` multiple-choice file
(``query``/``choices``/``gold`` per line), a harness ``.yaml`` task, or a harness task name whose
data set is already in the local cache (nothing is downloaded). ``--perplexity`` adds the field's
perplexity (non-overlapping ``--seq-len`` windows of the held-out text, ``--n-eval`` of them).
Needs the extra ``sparsecraft[eval]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sparsecraft.cli.common import print_json

NAME = "eval"
HELP = "zero-shot tasks through lm-evaluation-harness (offline; local Shakespeare tasks or JSONL/YAML tasks)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m", help="built-in name, HF folder, sparse or compressed-tensors "
                   "folder, or a prune run folder")
    p.add_argument("--tasks", default="shakespeare", help="comma list (default: shakespeare = the three local tasks)")
    p.add_argument("--checkpoint", default=None, help="sparsecraft checkpoint (weights + masks) to load into the model")
    p.add_argument("--convert", default=None, metavar="BACKEND", help="convert sparse Linear layers first (auto, ...)")
    p.add_argument("--limit", type=int, default=None, help="documents per task (default: all)")
    p.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (default: the task's, 0)")
    p.add_argument("--n-docs", type=int, default=400, help="documents of each generated task (default 400)")
    p.add_argument("--batch-size", type=int, default=8, help="requests per forward (default 8)")
    p.add_argument("--perplexity", action="store_true", help="also the windowed perplexity of the held-out text")
    p.add_argument("--n-eval", type=int, default=16, help="perplexity windows (default 16)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per perplexity window (default 512)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", default=None, help="also write the result as JSON to this file")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def load_for_eval(name_or_dir: str) -> tuple[Any, Any, str]:
    """(model, tokenizer, how it was loaded) for any ``--model`` value (see the module doc)."""
    from sparsecraft.formats.compressed_tensors import is_compressed_tensors_dir
    from sparsecraft.formats.hf import SPARSE_WEIGHTS, load_pretrained_sparse
    from sparsecraft.models import load_model

    path = Path(name_or_dir)
    if path.is_dir() and not (path / "config.json").is_file() and (path / "model" / "config.json").is_file():
        path = path / "model"  # a `sparsecraft prune` run folder
    if path.is_dir() and ((path / SPARSE_WEIGHTS).is_file() or is_compressed_tensors_dir(path)):
        import torch
        from transformers import AutoTokenizer

        kind = "packed" if (path / SPARSE_WEIGHTS).is_file() else "compressed-tensors"
        model = load_pretrained_sparse(path, dtype=torch.float32).eval()
        try:
            tok = AutoTokenizer.from_pretrained(str(path))
        except Exception:
            tok = None
        return model, tok, kind
    lm = load_model(path if path.is_dir() else name_or_dir, kind="causal-lm")
    return lm.model, lm.tokenizer, "dense"


def run(args: argparse.Namespace) -> int:
    import torch

    import sparsecraft
    from sparsecraft.integrations.harness import evaluate, require_lm_eval

    require_lm_eval()  # before the minutes of loading: fail fast without the extra
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok, kind = load_for_eval(args.model)
    if args.checkpoint:
        sparsecraft.load(model, args.checkpoint)
        kind += " + masks"
    result: dict[str, Any] = {"model": args.model, "loaded_as": kind}
    if args.convert:
        rep = sparsecraft.convert(model, backend=args.convert)
        result["converted_layers"] = sum(1 for layer in rep.layers if layer.converted)
    from sparsecraft.oneshot.api import default_targets

    # zeros counted in the weights of the block Linear layers (masked or not: a reloaded packed
    # or compressed-tensors model has no masks, only its zeros)
    result["true_sparsity"] = sparsecraft.report(model, targets=default_targets(model)).listed_sparsity
    if args.perplexity:
        from sparsecraft.data.text import build_protocol
        from sparsecraft.evaluation.perplexity import perplexity

        proto = build_protocol(tok, "shakespeare", n_calib=0, n_eval=args.n_eval, seq_len=args.seq_len)
        result["perplexity"] = perplexity(model, proto.eval, batch_size=args.batch_size, progress=not args.json)
        result["perplexity_windows"] = [int(proto.eval.shape[0]), args.seq_len]
    tasks = [t for t in args.tasks.split(",") if t.strip()]
    result.update(evaluate(model, tok, tasks, batch_size=args.batch_size, limit=args.limit,
                           num_fewshot=args.num_fewshot, n_docs=args.n_docs, progress=not args.json))
    if args.out:
        sparsecraft.atomic.write_json(args.out, result)
    if args.json:
        print_json(result)
        return 0
    print(f"model          {args.model} ({kind}), block Linear sparsity {result['true_sparsity']:.4f}")
    if "perplexity" in result:
        print(f"perplexity     {result['perplexity']:.3f} ({result['perplexity_windows'][0]} x "
              f"{result['perplexity_windows'][1]} tokens)")
    for task, metrics in result["results"].items():
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if not k.endswith("_stderr"))
        print(f"{task:<26} {shown}")
    return 0
