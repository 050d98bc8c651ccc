"""``python -m sparsecraft ...`` (and ``torchrun -m sparsecraft ...``): the command line."""

from sparsecraft.cli.main import main

raise SystemExit(main())
