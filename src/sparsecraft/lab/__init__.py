"""Small, tested experiments for the remaining systems of the seed paper list.

Each module of this package is one system (a paper): the paper's rule as plain functions plus one
registered :class:`~sparsecraft.lab.base.Experiment` that reproduces its qualitative claim at a
scale that runs in about a minute on one core::

    from sparsecraft.lab import EXPERIMENTS
    result = EXPERIMENTS.build({"type": "sparse-coding", "trials": 10}).run()
    print(result.to_markdown())

``sparsecraft list`` shows the registered experiments; ``benchmarks/bench_lab.py --only NAME``
writes an experiment's section of docs/results/lab.md. See docs/lab.md.
"""

from sparsecraft.lab.base import EXPERIMENTS, Experiment, LabResult, LabTable

__all__ = ["EXPERIMENTS", "Experiment", "LabResult", "LabTable"]
