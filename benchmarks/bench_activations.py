"""Activation sparsity of SmolLM2-135M and all-MiniLM-L6-v2: natural, PPL-p% (CETT), top-k, decode.

    python benchmarks/bench_activations.py --part quality
    flock /tmp/sparsecraft-heavy.lock python benchmarks/bench_activations.py --part decode

``quality`` (no timing): per-layer natural sparsity of both models on the evaluation windows;
CETT tables from the dense model on the calibration windows (Shakespeare protocol: first 90% of
the text for calibration, last 10% for evaluation); PPL-1% and PPL-5% by bisection
(:func:`sparsecraft.activations.search_cett`) with the final bracket; the sparsity-vs-perplexity
curve over a grid of CETT budgets (plot ``activations.png``); SmolLM2 perplexity vs top-k k, ReLU-
fication, and both after a short SquareHead recovery (:func:`sparsecraft.oneshot.recovery.recover`).
MiniLM is an encoder: its score is ``1 - cos`` of mean-pooled window embeddings vs the dense
model's, and "PPL-p%" becomes "similarity within p%".

``decode`` (timing, under the heavy lock): the PPL-1% thresholds found by ``quality`` installed on
SmolLM2, converted with ``sparsecraft.convert(backend="auto", batch=1)`` (``act-sparse`` where
measured faster) and forced ``act-sparse``; greedy decode tokens/s vs dense, same tokens as the
thresholded model. Each part rewrites its section of docs/results/activations.md and its raw
numbers in docs/results/activations.json; an interrupted quality run resumes at its last finished stage.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
from _activations_md import pct, quality_md, section_header
from _env import load, load_line, write_atomic

from sparsecraft.activations import (
    ActivationMeter,
    apply_transform,
    cett_tables,
    find_sites,
    restore,
    search_cett,
    unwrap,
)
from sparsecraft.activations.search import probe
from sparsecraft.data.text import build_protocol
from sparsecraft.evaluation.perplexity import perplexity
from sparsecraft.models.loader import load_model

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results" / "activations.md"
RAW = OUT.with_suffix(".json")
PLOT = OUT.with_suffix(".png")
PARTIAL = ROOT / "runs" / "bench_activations" / "partial.json"
PROMPT = "To be, or not to be, that is the question:"
CURVE_C = [j / 64 for j in (1, 2, 4, 6, 8, 12, 16, 24, 32)]


def write_section(name: str, body: str) -> None:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = OUT.read_text() if OUT.is_file() else "# Activation sparsity: SmolLM2-135M and all-MiniLM-L6-v2\n"
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    write_atomic(OUT, text)


def save_raw(part: str, data: dict) -> None:
    raw = json.loads(RAW.read_text()) if RAW.is_file() else {}
    raw[part] = data
    write_atomic(RAW, json.dumps(raw, indent=1))


# ----------------------------------------------------------------------------- scores
def embeddings(model, windows: torch.Tensor, bs: int = 8) -> torch.Tensor:
    with torch.no_grad():
        parts = [model(input_ids=windows[i:i + bs]).last_hidden_state.mean(1) for i in range(0, len(windows), bs)]
    return torch.cat(parts)


def minilm_score(dense_emb: torch.Tensor, windows: torch.Tensor):
    def score(model) -> float:  # 1 - mean cosine similarity to the dense embeddings
        return 1 - float(torch.nn.functional.cosine_similarity(embeddings(model, windows), dense_emb).mean())
    return score


def natural(model, windows, causal: bool, bs: int) -> tuple[list[dict], float | None]:
    meters = [ActivationMeter(model, eps).attach() for eps in (1e-3, 1e-2)]
    ppl = None
    if causal:
        ppl = perplexity(model, windows, bs, progress=False)
    else:
        embeddings(model, windows)
    for m in meters:
        m.detach()
    r3, r2 = (m.report() for m in meters)
    rows = [{"name": a.name, "zeros": a.zero_fraction, "eps1e-3": a.eps_fraction, "eps1e-2": b.eps_fraction,
             "token_p50_1e-2": b.per_token_eps["p50"], "dead_1e-2": b.dead_neurons}
            for a, b in zip(r3.layers, r2.layers)]
    return rows, (ppl if causal else None)


def search_rows(model, tables, score, dense: float, incs: list[float], rel: bool, steps: int,
                cache: dict) -> list[dict]:
    out = []
    for p in incs:
        limit = dense * (1 + p) if rel else p
        res = search_cett(model, tables, score, limit, dense, steps, cache=cache)
        out.append({"p": p, "limit": limit, "cett": res.lo.c, "score": res.lo.score, "sparsity": res.lo.sparsity,
                    "bracket": res.bracket, "thresholds": res.lo.thresholds, "layer_sparsity": res.lo.layer_sparsity,
                    "calib_sparsity": [t.sparsity(res.lo.c) for t in tables],
                    "probes": [p.to_dict() for p in res.probes]})
        print(f"  p={p}: c={res.lo.c:.5f} score={res.lo.score:.5f} sparsity={res.lo.sparsity:.4f} "
              f"bracket={res.bracket}", flush=True)
    return out


def curve(model, tables, score, cache: dict) -> list[dict]:
    """Score and sparsity at every CETT budget of the grid and every one the searches probed."""
    for c in CURVE_C:
        p = probe(model, tables, c, score, cache)
        print(f"  curve c={c:.4f}: sparsity {p.sparsity:.4f} score {p.score:.5f}", flush=True)
    unwrap(model)
    return [{"c": c, "score": p.score, "sparsity": p.sparsity} for c, p in sorted(cache.items())]


# ----------------------------------------------------------------------------- quality
def resume(args) -> dict:
    """The stages an interrupted quality run with the same settings finished (saved after every stage)."""
    keep = {k: v for k, v in vars(args).items() if k not in ("threads", "note", "part")}
    done = json.loads(PARTIAL.read_text()) if PARTIAL.is_file() else {}
    return done if done.get("args") == keep else {"args": keep}


def checkpoint(res: dict) -> None:
    PARTIAL.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(PARTIAL, json.dumps(res))


def quality(args) -> None:
    load0, t0 = load(), time.time()
    res = resume(args)
    lm = load_model("smollm2-135m")
    sm, tok = lm.model, lm.tokenizer
    proto = build_protocol(tok, "shakespeare", n_calib=args.n_calib, n_eval=args.n_eval, seq_len=512)
    score = lambda m: perplexity(m, proto.eval, args.batch_size, progress=False)  # noqa: E731
    if "smollm2_natural" not in res:
        print("SmolLM2 natural", flush=True)
        res["smollm2_natural"], res["smollm2_ppl_dense"] = natural(sm, proto.eval, True, args.batch_size)
        checkpoint(res)
    if "smollm2_curve" not in res:
        tables = cett_tables(sm, proto.calib, batch_size=args.batch_size, progress=True)
        cache: dict = {}
        res["smollm2_pplp"] = search_rows(sm, tables, score, res["smollm2_ppl_dense"], [0.01, 0.05], True,
                                          args.steps, cache)
        res["smollm2_curve"] = curve(sm, tables, score, cache)
        checkpoint(res)
    if "topk" not in res:
        print("SmolLM2 top-k", flush=True)
        hidden = find_sites(sm)[0].hidden
        res["topk"] = []
        for k in args.ks:
            row = {"k": k, "sparsity": 1 - k / hidden}
            for by in (["magnitude", "value"] if k in args.value_ks else ["magnitude"]):
                apply_transform(sm, "topk", k=k, by=by)
                row[by] = score(sm)
            unwrap(sm)
            res["topk"].append(row)
            print(f"  {row}", flush=True)
        checkpoint(res)
    if "recovery" not in res:
        res["recovery"] = recovery(sm, proto, score, args)
        checkpoint(res)
    del sm
    if "minilm_curve" not in res:
        print("MiniLM", flush=True)
        mini = load_model("all-minilm-l6-v2")
        mp = build_protocol(mini.tokenizer, "shakespeare", n_calib=args.minilm_windows, n_eval=args.minilm_windows,
                            seq_len=128)
        res["minilm_natural"], _ = natural(mini.model, mp.eval, False, 8)
        mscore = minilm_score(embeddings(mini.model, mp.eval), mp.eval)
        mtables = cett_tables(mini.model, mp.calib, batch_size=8)
        mcache: dict = {}
        res["minilm_pplp"] = search_rows(mini.model, mtables, mscore, 0.0, [0.01, 0.05], False, args.steps, mcache)
        res["minilm_curve"] = curve(mini.model, mtables, mscore, mcache)
    res.pop("args")
    res["setup"] = {"n_calib": args.n_calib, "n_eval": args.n_eval, "steps": args.steps,
                    "minilm_windows": args.minilm_windows, "recover_steps": args.recover_steps,
                    "recover_seq_len": args.recover_seq_len,
                    "recover_lr": args.recover_lr, "wall_s": round(time.time() - t0)}
    save_raw("quality", res)
    plot(res)
    write_section("quality", quality_md(res, load0))
    PARTIAL.unlink(missing_ok=True)


def recovery(model, proto, score, args) -> list[dict]:
    """Top-k and ReLU-fication, each fine-tuned with SquareHead against the dense model."""
    from sparsecraft.oneshot.recovery import recover

    out = []
    teacher = copy.deepcopy(model).eval()
    windows = proto.calib[:, : args.recover_seq_len]
    for name, spec in ((f"top-k k={args.recover_k}", {"type": "topk", "k": args.recover_k}),
                       ("ReLU-fication", {"type": "relu", "shift": 0.0})):
        student = copy.deepcopy(teacher)
        apply_transform(student, spec)
        with ActivationMeter(student, eps=0.0) as m:
            before = score(student)
        r = recover(student, windows, teacher=teacher, loss="squarehead", steps=args.recover_steps,
                    lr=args.recover_lr, progress=False)
        with ActivationMeter(student, eps=0.0) as m2:
            after = score(student)
        out.append({"what": name, "ppl_before": before, "ppl_after": after, "sparsity_before": m.report().zero_fraction,
                    "sparsity_after": m2.report().zero_fraction, **r.to_dict()})
        print(f"  {out[-1]}", flush=True)
        restore(student)
    return out


def plot(res: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sparsecraft.atomic import save_figure

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    c = sorted(res["smollm2_curve"], key=lambda p: p["sparsity"])
    a.plot([p["sparsity"] for p in c], [p["score"] for p in c], "o-", label="CETT thresholds")
    tk = res["topk"]
    a.plot([r["sparsity"] for r in tk], [r["magnitude"] for r in tk], "s--", label="top-k (magnitude)")
    for r in res["smollm2_pplp"]:
        a.plot(r["sparsity"], r["score"], "r*", ms=12)
        a.annotate(f"PPL-{r['p']:.0%}", (r["sparsity"], r["score"]), textcoords="offset points", xytext=(5, 5))
    a.axhline(res["smollm2_ppl_dense"], color="gray", lw=0.8, label="dense")
    a.set(xlabel="MLP hidden activation sparsity (eval windows)", ylabel="perplexity", yscale="log",
          title="SmolLM2-135M, Shakespeare")
    a.legend()
    m = sorted(res["minilm_curve"], key=lambda p: p["sparsity"])
    b.plot([p["sparsity"] for p in m], [1 - p["score"] for p in m], "o-")
    for r in res["minilm_pplp"]:
        b.plot(r["sparsity"], 1 - r["score"], "r*", ms=12)
    b.set(xlabel="MLP hidden activation sparsity", ylabel="embedding cosine similarity to dense",
          title="all-MiniLM-L6-v2 (CETT thresholds)")
    fig.tight_layout()
    save_figure(fig, PLOT, dpi=110)


# ----------------------------------------------------------------------------- decode
@torch.no_grad()
def decode_once(model, ids, n):
    t0 = time.perf_counter()
    out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                         attention_mask=torch.ones_like(ids), pad_token_id=0)
    return out[0, ids.shape[1]:], time.perf_counter() - t0


def decode(args) -> None:
    from sparsecraft.activations import Threshold
    from sparsecraft.kernels import convert, measure_backends

    torch.set_num_threads(args.threads)
    raw = json.loads(RAW.read_text()) if RAW.is_file() else {}
    if "quality" not in raw:
        raise SystemExit("run --part quality first: the decode part uses its PPL-1% thresholds")
    one = raw["quality"]["smollm2_pplp"][0]
    load0 = load()
    lm = load_model("smollm2-135m")
    ids = lm.tokenizer(PROMPT, return_tensors="pt").input_ids
    thr = copy.deepcopy(lm.model)
    Threshold(one["thresholds"], expected=one["calib_sparsity"]).apply(thr)
    auto, forced = copy.deepcopy(thr), copy.deepcopy(thr)
    rep = convert(auto, backend="auto", batch=1)
    convert(forced, backend="act-sparse", batch=1)
    models = {"dense": lm.model, "thresholded": thr, "converted (auto)": auto, "act-sparse (forced)": forced}
    toks = {k: decode_once(m, ids, args.new_tokens)[0] for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(args.repeats):
        for k, m in models.items():
            times[k].append(decode_once(m, ids, args.new_tokens)[1])
    tps = {k: args.new_tokens / statistics.median(v) for k, v in times.items()}
    acts = [x for x in rep.layers if x.input_sparsity is not None]
    lines = [*section_header("Decode: activation-sparse SmolLM2-135M, batch 1, CPU", args.threads, args.note),
             f"PPL-1% thresholds from the quality part (CETT c = {one['cett']:.5f}, eval sparsity "
             f"{pct(one['sparsity'])}). "
             f"Prompt {PROMPT!r}, {args.new_tokens} new tokens, median of {args.repeats} greedy decodes, models "
             f"interleaved. " + load_line(load0, load()), "",
             "| model | tokens/s | vs dense | same tokens as thresholded |", "|---|---|---|---|"]
    for k in models:
        lines.append(f"| {k} | {tps[k]:.2f} | {tps[k] / tps['dense']:.2f}x | "
                     f"{'yes' if torch.equal(toks[k], toks['thresholded']) else 'NO'} |")
    lines += ["", f"`auto` (batch 1): {sum(x.backend == 'act-sparse' for x in acts)} of {len(acts)} down projections "
              "converted to act-sparse; per layer (input sparsity = calibration sparsity at the threshold):", "",
              "| layer | input sparsity | backend | dense ms | chosen ms | reason |", "|---|---|---|---|---|---|"]
    for x in acts:
        lines.append(f"| {x.name} | {pct(x.input_sparsity)} | {x.backend} | {x.dense_ms or 0:.3f} | "
                     f"{x.chosen_ms or 0:.3f} | {x.reason} |")
    lines += ["", "Kernel alone: the SmolLM2 down projection (576 x 1536, fp32) on inputs with that fraction of "
              "zeros (random, independent per row), ms per call (sparsecraft.kernels.measure_backends: "
              "block-wise, fastest block median).", "",
              "| input sparsity | batch | dense (nn.Linear) | act-sparse | speed-up |", "|---|---|---|---|---|"]
    kern = []
    w = lm.model.model.layers[0].mlp.down_proj.weight.detach()
    for sp in (0.3, 0.5, 0.7, 0.9):
        for b in (1, 4, 8):
            t = measure_backends(w, b, ["dense", "act-sparse"], input_sparsity=sp)
            kern.append({"sparsity": sp, "batch": b, **t})
            lines.append(f"| {pct(sp)} | {b} | {t['dense'] * 1e3:.4f} | {t['act-sparse'] * 1e3:.4f} | "
                         f"{t['dense'] / t['act-sparse']:.2f}x |")
    same = {k: bool(torch.equal(toks[k], toks["thresholded"])) for k in models}
    save_raw("decode", {"tokens_per_s": tps, "same": same, "kernel": kern})
    write_section("decode", "\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["quality", "decode"], required=True)
    ap.add_argument("--n-calib", type=int, default=16)
    ap.add_argument("--n-eval", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10, help="bisection steps")
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    ap.add_argument("--ks", type=ints, default=[1024, 768, 512, 384, 256, 128])
    ap.add_argument("--value-ks", type=ints, default=[512])
    ap.add_argument("--minilm-windows", type=int, default=32)
    ap.add_argument("--recover-k", type=int, default=384)
    ap.add_argument("--recover-steps", type=int, default=40)
    ap.add_argument("--recover-lr", type=float, default=5e-5)
    ap.add_argument("--recover-seq-len", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--note", default="", help="a sentence about the run conditions, written to the doc")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    quality(args) if args.part == "quality" else decode(args)


if __name__ == "__main__":
    main()
