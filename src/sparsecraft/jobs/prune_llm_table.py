"""The prune-llm job's outputs: the perplexity table (markdown) and its bar chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparsecraft import atomic


def table_markdown(rows: list[dict[str, Any]], extra: dict[str, str] | None = None) -> str:
    """The results table; ``extra`` maps a column title to a row key (a parameter column is added
    when a row removed structures)."""
    extra = dict(extra or {})
    if any("params_m" in r for r in rows if r.get("method") != "dense"):
        extra = {"parameters (M)": "params_m", **extra}
    head = ["config", "perplexity", "prune wall time (s)", "peak RSS (MB)", "true sparsity", *extra]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["config"],
            "-" if r.get("perplexity") is None else f"{r['perplexity']:.2f}",
            "-" if r.get("wall_time_s") is None else f"{r['wall_time_s']:.1f}",
            "-" if r.get("peak_rss_mb") is None else f"{r['peak_rss_mb']:.0f}",
            f"{r['true_sparsity']:.4f}",
            *[str(r.get(k, "-")) for k in extra.values()],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_perplexity(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(rows) + 2), 4))
    ax.bar([r["config"] for r in rows], [r["perplexity"] for r in rows], color="#4878a8")
    dense = [r["perplexity"] for r in rows if r["method"] == "dense"]
    if dense:
        ax.axhline(dense[0], color="k", ls="--", lw=1, label=f"dense {dense[0]:.2f}")
        ax.legend()
    ax.set_yscale("log")
    ax.set_ylabel("perplexity (log)")
    ax.set_title(title)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    return atomic.save_figure(fig, path, dpi=110)
