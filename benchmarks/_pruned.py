"""SmolLM2-135M pruned once per configuration and kept as sparsecraft checkpoints, shared by the
benchmarks that evaluate or fine-tune pruned models (bench_eval.py, bench_recovery.py).

Protocol: the Shakespeare protocol of ``sparsecraft.data.text`` with 8 calibration windows of 512
tokens (seed 0; the reduced protocol of the built-in ``smollm2-quick`` recipe: the machine these
numbers were made on is shared, and 32 windows -- bench_oneshot.py -- take 4x longer) and the
first 16 evaluation windows; every Linear of the 30 decoder blocks pruned by ``sparsecraft.prune``
(the same call as bench_oneshot.py). A checkpoint is written with
``sparsecraft.save`` (masks as bits) under the cache folder and re-used when present, so the
slow calibrated pruning runs once for both benchmarks.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

CONFIGS = [
    ("magnitude", "unstructured"), ("wanda", "unstructured"), ("sparsegpt", "unstructured"),
    ("magnitude", "2:4"), ("wanda", "2:4"), ("sparsegpt", "2:4"),
]
DEFAULT_CACHE = Path("/tmp/sparsecraft-pruned-smollm2")
N_CALIB = 8


def label(algo: str, pattern: str) -> str:
    return f"{algo} {'50%' if pattern == 'unstructured' else pattern}"


def slug(algo: str, pattern: str) -> str:
    return f"{algo}-{pattern.replace(':', 'of')}"


def protocol(tokenizer: Any, n_calib: int = N_CALIB, n_eval: int = 16):
    from sparsecraft.data.text import build_protocol

    return build_protocol(tokenizer, "shakespeare", n_calib=n_calib, n_eval=n_eval, seq_len=512, seed=0)


def prune_kwargs(algo: str, pattern: str) -> dict[str, Any]:
    if algo == "sparsegpt":
        return {"method": "sparsegpt", "pattern": pattern}
    return {"criterion": algo, "pattern": pattern}


def pruned(algo: str, pattern: str, cache: Path, calib: torch.Tensor,
           wait: bool = False) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(SmolLM2-135M pruned with ``algo``/``pattern``, info); from the cache when it is there.
    ``wait``: another process (``python benchmarks/_pruned.py``) is filling the cache: wait for it."""
    import sparsecraft
    from sparsecraft.models import load_model

    ckpt, info_file = cache / f"{slug(algo, pattern)}.safetensors", cache / f"{slug(algo, pattern)}.json"
    while wait and not info_file.is_file():  # the info file is written last
        time.sleep(20)
    model = load_model("smollm2-135m").model
    if ckpt.is_file() and info_file.is_file():
        sparsecraft.load(model, ckpt)
        return model, json.loads(info_file.read_text())
    t0 = time.perf_counter()
    rep = sparsecraft.prune(model, 0.5, calib=calib, batch_size=8, progress=False, **prune_kwargs(algo, pattern))
    info = {"config": label(algo, pattern), "true_sparsity": rep.sparsity,
            "prune_s": round(time.perf_counter() - t0, 1),
            "n_calib": int(calib.shape[0])}
    cache.mkdir(parents=True, exist_ok=True)
    sparsecraft.save(model, ckpt, format="auto")
    sparsecraft.atomic.write_json(info_file, info)
    return model, info


if __name__ == "__main__":  # fill the cache: python benchmarks/_pruned.py [CACHE]
    import sys

    from sparsecraft.models import load_model

    cache = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_CACHE
    proto = protocol(load_model("smollm2-135m").tokenizer)
    for a, p in CONFIGS:
        _, info = pruned(a, p, cache, proto.calib)
        print(info, flush=True)
