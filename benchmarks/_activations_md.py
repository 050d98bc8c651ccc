"""Markdown of benchmarks/bench_activations.py's quality section (kept apart: the script is long enough)."""

from __future__ import annotations

import torch
from _env import header, load, load_line


def pct(x: float) -> str:
    return f"{x:.2%}"


def section_header(title: str, threads: int, note: str = "") -> list[str]:
    """The shared header one level down: the file has one title, each part a section."""
    lines = header(title, "bench_activations.py", threads, note)
    return ["#" + lines[0], *lines[1:]]



def quality_md(r: dict, load0: float) -> str:
    s = r["setup"]
    lines = [*section_header("Quality: natural sparsity, PPL-p%, top-k, recovery", torch.get_num_threads()),
             f"SmolLM2-135M: {s['n_calib']} calibration and {s['n_eval']} evaluation windows of 512 Shakespeare tokens "
             f"(dense perplexity {r['smollm2_ppl_dense']:.3f}); MiniLM: {s['minilm_windows']} + {s['minilm_windows']} "
             f"windows of 128 tokens. Bisection: {s['steps']} steps on c in [0, 1]. Wall time {s['wall_s']} s. "
             + load_line(load0, load()), "",
             "### Natural sparsity of the MLP hidden activation (evaluation windows)", "",
             "| layer | SmolLM2 zeros | abs(a) <= 1e-3 | <= 1e-2 | token median <= 1e-2 | MiniLM zeros | <= 1e-3 "
             "| <= 1e-2 |",
             "|---|---|---|---|---|---|---|---|"]
    for i, a in enumerate(r["smollm2_natural"]):
        b = r["minilm_natural"][i] if i < len(r["minilm_natural"]) else None
        mb = f"{pct(b['zeros'])} | {pct(b['eps1e-3'])} | {pct(b['eps1e-2'])}" if b else "| |"
        lines.append(f"| {i} | {pct(a['zeros'])} | {pct(a['eps1e-3'])} | {pct(a['eps1e-2'])} | "
                     f"{pct(a['token_p50_1e-2'])} | {mb} |")
    lines += ["", "### PPL-p% (CETT thresholds from the dense model on the calibration windows)", "",
              "MiniLM has no perplexity: its target is a cosine similarity of the window embeddings to the dense "
              "model's of at least 1 - p (score = 1 - cos).", "",
              "| model | target | CETT c | bracket [c_lo, c_hi] | score at c_lo | score at c_hi | sparsity (eval) |",
              "|---|---|---|---|---|---|---|"]
    for model, rows, what in (("SmolLM2-135M", r["smollm2_pplp"], "ppl"), ("MiniLM", r["minilm_pplp"], "1-cos")):
        for x in rows:
            b = x["bracket"]
            hi = f"{b['score_hi']:.4f}" if b["score_hi"] is not None else "(c=1: all zeroed)"
            tgt = f"PPL-{x['p']:.0%} (ppl <= {x['limit']:.3f})" if what == "ppl" else f"cos >= {1 - x['limit']:.2f}"
            lines.append(f"| {model} | {tgt} | {x['cett']:.5f} | [{b['c_lo']:.5f}, {b['c_hi']:.5f}] | "
                         f"{x['score']:.4f} | {hi} | {pct(x['sparsity'])} |")
    lines += ["", "Per layer at SmolLM2 PPL-1% / PPL-5%: threshold t_l and sparsity on the evaluation windows.", "",
              "| layer | t (PPL-1%) | sparsity | t (PPL-5%) | sparsity |", "|---|---|---|---|---|"]
    one, five = r["smollm2_pplp"]
    for i in range(len(one["thresholds"])):
        lines.append(f"| {i} | {one['thresholds'][i]:.4g} | {pct(one['layer_sparsity'][i])} | "
                     f"{five['thresholds'][i]:.4g} | {pct(five['layer_sparsity'][i])} |")
    lines += ["", "### Sparsity vs perplexity", "", "![curve](activations.png)", "",
              "| model | CETT c | sparsity | score |", "|---|---|---|---|"]
    for model, pts, what in (("SmolLM2", r["smollm2_curve"], "perplexity"), ("MiniLM", r["minilm_curve"], "cos")):
        for a in pts:
            value = a["score"] if what == "perplexity" else 1 - a["score"]
            lines.append(f"| {model} | {a['c']:.5f} | {pct(a['sparsity'])} | {what} {value:.4f} |")
    lines += ["", "### SmolLM2 perplexity vs top-k (k of 1536 kept per token)", "",
              "| k | sparsity | ppl (by magnitude) | ppl (by value) |", "|---|---|---|---|"]
    for x in r["topk"]:
        lines.append(f"| {x['k']} | {pct(x['sparsity'])} | {x['magnitude']:.3f} | "
                     f"{x['value']:.3f} |" if "value" in x else
                     f"| {x['k']} | {pct(x['sparsity'])} | {x['magnitude']:.3f} | - |")
    lines += ["", f"Recovery: SquareHead distillation from the dense model (sparsecraft.oneshot.recovery.recover), "
              f"{s['recover_steps']} steps, lr {s['recover_lr']}, batch 1, the calibration windows cut to "
              f"{s['recover_seq_len']} tokens; the student trains through its rule. Sparsity: exact zeros of the MLP "
              "hidden activation on the evaluation windows.", "",
              "| transform | ppl before | ppl after recovery | sparsity | loss first -> last | time |",
              "|---|---|---|---|---|---|"]
    for x in r["recovery"]:
        lines.append(f"| {x['what']} | {x['ppl_before']:.3f} | {x['ppl_after']:.3f} | {pct(x['sparsity_after'])} | "
                     f"{x['first_loss']:.4f} -> {x['last_loss']:.4f} | {x['wall_time_s']:.0f} s |")
    return "\n".join(lines)
