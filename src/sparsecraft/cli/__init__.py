"""The ``sparsecraft`` command line: one module per sub-command (``cmd_*.py``)."""
