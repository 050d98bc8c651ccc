"""The ``prune-llm`` job on a model that is not held in memory (``offload: disk``, or ``auto``
when the model would not fit): :func:`sparsecraft.prune` on the model folder, block by block
(:mod:`sparsecraft.oneshot.onloaded`), writing the pruned model to ``<run>/model``.

The perplexity before/after is not measured here (it needs the whole model in memory or another
onloaded pass; evaluate the written folder on a machine that holds it). Under data parallelism
only rank 0 writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparsecraft import atomic
from sparsecraft.distributed import group
from sparsecraft.errors import SparsecraftError


def run_offloaded(cfg: Any, run_dir: Path, path: Path, proto: Any, mode: str) -> dict[str, Any]:
    from sparsecraft.jobs.prune_llm import table_markdown
    from sparsecraft.oneshot.api import prune
    from sparsecraft.oneshot.memory import PeakRSS

    if len(cfg.runs) != 1 or cfg.recovery.steps:
        raise SparsecraftError("offload: a model pruned block by block takes one run and no recovery fine-tune "
                               f"({len(cfg.runs)} runs, recovery steps {cfg.recovery.steps}); use offload: none")
    r = cfg.runs[0]
    dest = run_dir / "model"
    with PeakRSS() as mem:
        rep = prune(str(path), r.sparsity, method=r.method, criterion=r.criterion, pattern=r.pattern,
                    distribution=r.distribution, targets=cfg.targets, ignore=cfg.ignore, calib=proto.calib,
                    batch_size=cfg.batch_size, out=dest, offload="disk", progress=cfg.progress,
                    distributed=cfg.distributed or None)
    row = {"config": r.label(), **rep.info, "offload": mode, "true_sparsity": rep.sparsity,
           "peak_rss_mb": round(mem.peak_mb, 1), "perplexity": None, "saved_hf": str(dest),
           "layers": rep.to_dict()["layers"]}
    out = {"model": cfg.model, "model_dir": str(path), "protocol": proto.fingerprint, "rows": [row], "offload": mode}
    if group.is_writer():
        atomic.write_text(run_dir / "sparsity.md", rep.to_markdown() + "\n")
        atomic.write_json(run_dir / "results.json", out)
        atomic.write_text(run_dir / "table.md", table_markdown([row]) + "\n")
    out["table_markdown"] = table_markdown([row])
    return out
