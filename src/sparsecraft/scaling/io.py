"""Read the runs to fit: CSV, JSON, or run folders.

Columns are named by the user; nested JSON keys are addressed with dotted paths
(``final.test_loss``). A column name may be prefixed with ``1-`` to fit one minus the value
(``1-final.test_accuracy`` = error rate), which keeps accuracy-like metrics in log space.

Accepted sources:

* ``runs.csv`` with a header row (``sparsecraft sweep-train`` writes one);
* a JSON file: a list of records, a ``{"runs": [...]}`` object, a dict of equal-length
  columns, or a single record;
* a directory: every ``report.json`` below it (written by ``sparsecraft run`` / ``train`` /
  ``sweep-train``) is one record; its folder is the ``run_dir`` column.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sparsecraft.errors import SparsecraftError


@dataclass
class Table:
    """The selected columns as arrays, plus bookkeeping."""

    x: np.ndarray
    y: np.ndarray
    x_names: list[str]
    y_name: str
    skipped: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"final": {"loss": 1}}`` -> ``{"final.loss": 1}`` (lists of scalars stay as lists)."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict):
                out.update(flatten(v, key))
            else:
                out[key] = v
    else:
        out[prefix or "value"] = obj
    return out


def read_records(source: str | Path) -> list[dict[str, Any]]:
    """Flat records (dotted keys) from a CSV file, a JSON file or a directory of runs."""
    path = Path(source)
    if path.is_dir():
        reports = sorted(path.rglob("report.json"))
        if not reports:
            raise SparsecraftError(f"no report.json found under {str(path)!r}")
        records = []
        for rep in reports:
            rec = flatten(_read_json(rep))
            rec.setdefault("run_dir", str(rep.parent))
            records.append(rec)
        return records
    if not path.is_file():
        raise SparsecraftError(f"{str(path)!r} is neither a file nor a directory")
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                raise SparsecraftError(f"{path} has no header row")
            return [dict(r) for r in reader]
    if path.suffix.lower() == ".json":
        doc = _read_json(path)
        if isinstance(doc, dict) and isinstance(doc.get("runs"), list):
            doc = doc["runs"]
        if isinstance(doc, list):
            if not all(isinstance(r, dict) for r in doc):
                raise SparsecraftError(f"{path}: a JSON list of runs must contain objects")
            return [flatten(r) for r in doc]
        if isinstance(doc, dict) and doc and all(isinstance(v, list) for v in doc.values()):
            lengths = {len(v) for v in doc.values()}
            if len(lengths) != 1:
                raise SparsecraftError(f"{path}: JSON columns have different lengths {sorted(lengths)}")
            n = lengths.pop()
            return [{k: v[i] for k, v in doc.items()} for i in range(n)]
        if isinstance(doc, dict):
            return [flatten(doc)]
        raise SparsecraftError(f"{path}: expected a JSON list of runs or an object")
    raise SparsecraftError(f"cannot read {path.name!r}: give a .csv, a .json or a run folder")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SparsecraftError(f"{path} is not valid JSON: {e}") from None


def _value(rec: dict[str, Any], name: str, row: int) -> float | None:
    """The numeric value of column ``name`` (``1-`` prefix allowed); None when missing."""
    flip = name.startswith("1-")
    key = name[2:] if flip else name
    raw = rec.get(key)
    if raw is None or raw == "":
        return None
    try:
        v = float(raw)
    except (TypeError, ValueError):
        raise SparsecraftError(f"row {row}: column {key!r} is not a number ({raw!r})") from None
    return 1.0 - v if flip else v


def select(records: list[dict[str, Any]], x: Sequence[str], y: str) -> Table:
    """Arrays of the requested columns; rows missing any of them are skipped (counted)."""
    if not records:
        raise SparsecraftError("no runs to fit (the source has no rows)")
    names = list(x) + [y]
    known = set().union(*(r.keys() for r in records))
    for name in names:
        key = name[2:] if name.startswith("1-") else name
        if key not in known:
            shown = ", ".join(sorted(known)[:30]) + (" ..." if len(known) > 30 else "")
            raise SparsecraftError(f"unknown column {key!r}; available: {shown}")
    xs, ys, kept = [], [], []
    for i, rec in enumerate(records):
        vals = [_value(rec, n, i) for n in names]
        if any(v is None for v in vals):
            continue
        xs.append(vals[:-1])
        ys.append(vals[-1])
        kept.append(rec)
    if not xs:
        raise SparsecraftError(f"no row has all of the columns {', '.join(names)}")
    xa = np.asarray(xs, dtype=float)
    if xa.shape[1] == 1:
        xa = xa[:, 0]
    return Table(xa, np.asarray(ys, dtype=float), list(x), y, len(records) - len(xs), kept)


def expand_rows(records: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Records whose ``key`` holds a list of row objects (e.g. a sweep report's ``rows``) become
    one record per row: the row's keys plus the parent's other keys (row keys win)."""
    out = []
    for rec in records:
        rows = rec.get(key)
        if isinstance(rows, str) and rows.startswith("["):  # a list stored in a CSV cell
            rows = json.loads(rows)
        if not isinstance(rows, list):
            continue
        parent = {k: v for k, v in rec.items() if k != key}
        out += [{**parent, **flatten(r)} for r in rows if isinstance(r, dict)]
    if not out:
        raise SparsecraftError(f"no record has a list of rows under {key!r}")
    return out


def filter_records(records: list[dict[str, Any]], where: Sequence[str]) -> list[dict[str, Any]]:
    """Keep records matching every ``KEY=VALUE`` (compared as text, numbers as numbers)."""
    out = records
    for cond in where:
        if "=" not in cond:
            raise SparsecraftError(f"bad filter {cond!r}: use KEY=VALUE")
        key, want = (part.strip() for part in cond.split("=", 1))
        out = [r for r in out if _equal(r.get(key), want)]
    if not out:
        raise SparsecraftError(f"no row matches {' and '.join(where)}")
    return out


def _equal(value: Any, want: str) -> bool:
    if value is None:
        return False
    try:
        return float(value) == float(want)
    except (TypeError, ValueError):
        return str(value) == want


def load_table(
    source: str | Path, x: str | Sequence[str], y: str, rows: str | None = None, where: Sequence[str] = ()
) -> Table:
    """Read ``source`` and select input column(s) ``x`` (comma-separated or a list) and ``y``.

    ``rows`` expands a list of row objects inside each record (``rows="rows"`` for a sweep
    report); ``where`` keeps only records matching ``KEY=VALUE`` filters.
    """
    xs = [s.strip() for s in x.split(",") if s.strip()] if isinstance(x, str) else list(x)
    if not xs:
        raise SparsecraftError("name at least one input column (--x)")
    records = read_records(source)
    if rows:
        records = expand_rows(records, rows)
    if where:
        records = filter_records(records, where)
    return select(records, xs, y)


def write_csv(path: str | Path, records: list[dict[str, Any]]) -> Path:
    """Write flat records as CSV atomically; columns = union of keys, first-seen order."""
    from sparsecraft import atomic

    path = Path(path)
    cols: list[str] = []
    for r in records:
        cols += [k for k in r if k not in cols]
    with atomic.replacing(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in records:
            w.writerow({k: _cell(r.get(k)) for k in cols})
    return path


def _cell(v: Any) -> Any:
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v)
    return "" if v is None else v
