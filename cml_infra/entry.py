"""The console script: a Ctrl-C or SIGTERM while Python is still loading cml-infra is exit 130
and one line, like one at any later point, never a traceback from the imports."""

from __future__ import annotations

import signal
import sys
from types import FrameType


def _terminated(signum: int, frame: FrameType | None) -> None:
    # SIGTERM ends cml-infra the way Ctrl-C does (unwinding, exit 130), not mid-step.
    raise KeyboardInterrupt


def main() -> None:
    try:
        # Inside the try: a SIGTERM that lands as the handler is set is caught here too.
        signal.signal(signal.SIGTERM, _terminated)
        from cml_infra.cli import main as run

        run()
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
