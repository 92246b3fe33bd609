"""The error exit the ``detector`` and ``trainer`` command lines share."""

from __future__ import annotations

import sys

__all__ = ["EXIT_CONFIG", "error_exit"]

# Bad configuration, model, data or registry: restarting cannot fix it (systemd does not retry it).
EXIT_CONFIG = 2


def error_exit(prog: str, problem: object) -> int:
    """Print ``<prog>: <problem>`` as one line on stderr and return :data:`EXIT_CONFIG`."""
    sys.stderr.write(f"{prog}: {problem}\n")
    return EXIT_CONFIG
