"""Zero-shot accuracy (lm-evaluation-harness, local Shakespeare tasks) next to perplexity for
SmolLM2-135M dense and pruned with magnitude / Wanda / SparseGPT at 50% and 2:4.

Pruning: benchmarks/_pruned.py (Shakespeare protocol, 8 calibration windows of 512 tokens, seed 0;
checkpoints cached and shared with bench_recovery.py). Each model is handed to the harness as
the object in memory (``sparsecraft.integrations.harness.evaluate``). Columns:

* perplexity: the field's protocol (the first 16 non-overlapping 512-token windows of the
  held-out 10% of the tokens, each scored on its own, exp of the mean token NLL);
* rolling word ppl: the harness's ``loglikelihood_rolling`` on the ``shakespeare_rolling``
  documents, exp(total NLL / number of words);
* next-line acc / acc_norm (4 choices, chance 25%) and cloze acc / ppl of the last word of a speech.

Rows are kept as JSON beside the pruned checkpoints (``<cache>/eval-rows``), so a rerun resumes and
several ``--only`` processes can share the work; the table lists every stored row made with the
same settings. Run::

    python benchmarks/bench_eval.py [--n-docs 100] [--n-rolling 4] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _env  # noqa: E402
import _pruned  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "results" / "eval.md"
TASKS = ["shakespeare_nextline", "shakespeare_cloze", "shakespeare_rolling"]


def fmt(v: float | None, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def render(rows: list[dict], args: argparse.Namespace, threads: int, load0: float, done: bool, n: dict) -> str:
    status = "complete" if done else (f"PARTIAL: {len(rows)} of {len(_pruned.CONFIGS) + 1} models; the others did not "
                                      "finish in the time this run had (see the note below the table)")
    lines = _env.header("Zero-shot tasks next to perplexity: SmolLM2-135M, dense and one-shot pruned",
                        "bench_eval.py", threads, note=f"Status: {status}.")
    lines += [_env.load_line(load0, _env.load()), "",
              f"Tasks (lm-evaluation-harness {args.harness_version}, offline, generated from the held-out 10% of the "
              f"Shakespeare tokens): next-line multiple choice ({n.get('shakespeare_nextline', '?')} documents, 4 "
              f"choices, chance 0.25), cloze on the last word of a speech ({n.get('shakespeare_cloze', '?')} "
              f"documents), rolling word perplexity ({n.get('shakespeare_rolling', '?')} documents). Pruning: "
              f"`sparsecraft.prune(model, 0.5, ...)` on every Linear of the 30 blocks, calibrated on "
              f"{_pruned.N_CALIB} windows of 512 tokens (the reduced protocol of the `smollm2-quick` recipe; "
              "docs/results/oneshot.md has the 32-window numbers).", "",
              "| model | true sparsity | perplexity (16 x 512) | rolling word ppl | next-line acc | next-line acc_norm "
              "| cloze acc | cloze ppl | eval time (s) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        res = r["results"]
        nl, cz, ro = res.get(TASKS[0], {}), res.get(TASKS[1], {}), res.get(TASKS[2], {})
        lines.append(f"| {r['config']} | {r['true_sparsity']:.4f} | {r['perplexity']:.2f} | "
                     f"{fmt(ro.get('word_perplexity'), 2)} | {fmt(nl.get('acc'))} +- {fmt(nl.get('acc_stderr'))} | "
                     f"{fmt(nl.get('acc_norm'))} | {fmt(cz.get('acc'))} +- {fmt(cz.get('acc_stderr'))} | "
                     f"{fmt(cz.get('perplexity'), 1)} | {r['eval_s']:.0f} |")
    dense = next((r for r in rows if r["config"] == "dense"), None)
    word = dense and dense["results"].get(TASKS[2], {}).get("word_perplexity")
    ratio = f"{math.log(word) / math.log(dense['perplexity']):.2f}" if word else "(no dense row yet)"
    missing = [c for c in ["dense"] + [_pruned.label(a, pt) for a, pt in _pruned.CONFIGS]
               if c not in {r["config"] for r in rows}]
    if missing:
        lines += ["", f"**Not measured yet: {', '.join(missing)}.** This run shared its 2 cores with many other "
                  "processes (load average above) and had a deadline; `python benchmarks/bench_eval.py --threads 1` "
                  "adds the missing rows (finished rows are kept and reused)."]
    lines += ["", "+- is the harness's standard error of the mean over documents.", "",
              "**Two perplexities.** The field's perplexity (SparseGPT, Wanda, OWL tables; "
              "`sparsecraft.evaluation.perplexity`) cuts the held-out text into non-overlapping windows of the "
              "model's context length (here 512 tokens, as in docs/results/oneshot.md; 2048 or 4096 for LLaMA "
              "papers), scores every window on its own with no context carried over, and reports exp(mean NLL per "
              "*token*). The harness's `loglikelihood_rolling` (WikiText task) scores each *document* from its "
              "start, after an end-of-text token, in windows of the model's full context, and reports exp(total "
              "NLL / number of *words*) (also per byte). Word perplexity is roughly the token perplexity to the "
              "power tokens-per-word (1.3-1.5 for modern English; here log(rolling word ppl) / log(perplexity) = "
              f"{ratio} for the dense model: the plays' spelling and names split into more tokens), and it depends "
              "on the tokenizer only through the NLL, which makes it comparable across tokenizers; the two numbers "
              "are not interchangeable, and neither matches a paper that used the other.", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-docs", type=int, default=100)
    p.add_argument("--n-rolling", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--cache", type=Path, default=_pruned.DEFAULT_CACHE)
    p.add_argument("--wait", action="store_true", help="wait for `python benchmarks/_pruned.py` to fill the cache")
    p.add_argument("--only", default=None, help="comma list of configs to run (e.g. 'dense,wanda 50%%'; 'none' only "
                   "rewrites the table from the stored rows)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import importlib.metadata

    from sparsecraft import atomic
    from sparsecraft.evaluation.perplexity import perplexity
    from sparsecraft.integrations.harness import evaluate
    from sparsecraft.models import load_model

    args.harness_version = importlib.metadata.version("lm_eval")
    load0 = _env.load()
    tok = load_model("smollm2-135m").tokenizer
    protos: list = []  # built on first use (tokenizing the plays takes a while): not when only re-rendering
    todo = [("dense", None)] + [(_pruned.label(a, pt), (a, pt)) for a, pt in _pruned.CONFIGS]
    only = set(args.only.split(",")) if args.only else None
    settings = {"n_docs": args.n_docs, "n_rolling": args.n_rolling, "n_calib": _pruned.N_CALIB}
    store = args.cache / "eval-rows"  # one JSON per model: parallel --only runs and reruns share them

    def saved(name: str) -> dict | None:
        f = store / f"{name.replace(' ', '_').replace(':', 'of').replace('%', 'pct')}.json"
        row = json.loads(f.read_text()) if f.is_file() else None
        return row if row and row.get("settings") == settings else None

    def write() -> None:
        rows = [r for r in (saved(name) for name, _ in todo) if r]
        n_docs = rows[0]["n_samples"] if rows else {}
        _env.write_atomic(OUT, render(rows, args, torch.get_num_threads(), load0, len(rows) == len(todo), n_docs))

    for name, cfg in todo:
        if (only and name not in only) or saved(name):
            continue
        proto = protos[0] if protos else protos.append(_pruned.protocol(tok)) or protos[0]
        if cfg is None:
            model, info = load_model("smollm2-135m").model, {"config": "dense", "true_sparsity": 0.0}
        else:
            model, info = _pruned.pruned(*cfg, args.cache, proto.calib, wait=args.wait)
        t0 = time.perf_counter()
        ppl = perplexity(model, proto.eval, batch_size=4, progress=False)
        out = evaluate(model, tok, TASKS, batch_size=args.batch_size, n_docs=args.n_docs, n_rolling=args.n_rolling)
        row = {**info, "perplexity": ppl, "results": out["results"], "n_samples": out["n_samples"],
               "eval_s": time.perf_counter() - t0, "settings": settings}
        atomic.write_json(store / f"{name.replace(' ', '_').replace(':', 'of').replace('%', 'pct')}.json", row)
        print(name, f"ppl {ppl:.2f}", out["results"], flush=True)
        write()
        del model
    write()

if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
