"""Entry point of the ``sparsecraft`` command.

Sub-commands are discovered by the :data:`COMMANDS` registry: every module of ``sparsecraft/cli``
that defines ``NAME`` (the sub-command), ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int`` is a command. Adding a command is one new file, no edit here.

User errors (:class:`sparsecraft.errors.SparsecraftError`) print ``error: <reason>`` on one line
and exit 2; ``SPARSECRAFT_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from sparsecraft.errors import SparsecraftError
from sparsecraft.registry import Registry

#: sub-command name -> its module (see the module docstring)
COMMANDS: Registry = Registry("command", package="sparsecraft.cli", module_attr="NAME")


def build_parser() -> argparse.ArgumentParser:
    from sparsecraft import __version__

    parser = argparse.ArgumentParser(
        prog="sparsecraft",
        description="Sparse neural networks: prune, train sparse, measure, store small, run fast.",
    )
    parser.add_argument("--version", action="version", version=f"sparsecraft {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for _, mod in COMMANDS:
        p = sub.add_parser(
            mod.NAME,
            help=mod.HELP,
            description=(mod.__doc__ or mod.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except SparsecraftError as e:
        if os.environ.get("SPARSECRAFT_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`, which closed early
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
