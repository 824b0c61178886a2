"""The console script: a Ctrl-C while Python is still loading cml-infra is exit 130 and one
line, like a Ctrl-C at any later point, never a traceback from the imports."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from cml_infra.cli import main as run
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    run()
