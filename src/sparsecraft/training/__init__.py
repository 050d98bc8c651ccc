"""Training-loop building blocks shared by the ``train`` job and the benchmarks."""
