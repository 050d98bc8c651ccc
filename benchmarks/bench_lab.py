"""Lab experiments (sparsecraft.lab): run each registered experiment at its defaults and write its
section of docs/results/lab.md (claim, tables, what happened here, the command and the run time).

    python benchmarks/bench_lab.py --only sparse-coding

Each experiment runs single-threaded (BLAS pinned to one thread) in one to six minutes. Without
``--only`` every registered experiment runs. These are quality numbers (no timing comparisons), so
they need no flock.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import header, load, load_line  # noqa: E402
from _sections import write_section  # noqa: E402

from sparsecraft.lab import EXPERIMENTS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", default=None, metavar="NAME",
                    help=f"run only this experiment (repeatable); one of: {', '.join(EXPERIMENTS.names())}")
    ap.add_argument("--out", default=str(ROOT / "docs/results/lab.md"))
    args = ap.parse_args()
    names = args.only or EXPERIMENTS.names()
    for name in names:
        EXPERIMENTS.get(name)  # unknown names fail before anything runs
    for name in names:
        exp = EXPERIMENTS.build(name)
        load0, t0 = load(), time.perf_counter()
        result = exp.run()
        elapsed = time.perf_counter() - t0
        head = header(f"{name}: {exp.paper}", "bench_lab.py", 1)
        head[0] = "#" + head[0]
        body = [*head, f"Run time {elapsed:.0f} s on one core. " + load_line(load0, load()), "",
                result.to_markdown()]
        print("\n".join(body), flush=True)
        write_section(Path(args.out), f"lab-{name}", "\n".join(body), "Lab experiments (sparsecraft.lab)")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
