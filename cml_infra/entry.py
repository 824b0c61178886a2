"""The console script: a Ctrl-C or SIGTERM while Python is still loading cml-infra is exit 130
and one line, like one at any later point, never a traceback from the imports."""

from __future__ import annotations

import atexit
import gc
import signal
import sys
from types import FrameType


def _terminated(signum: int, frame: FrameType | None) -> None:
    # SIGTERM ends cml-infra the way Ctrl-C does (unwinding, exit 130), not mid-step.
    raise KeyboardInterrupt


def main() -> None:
    # A command lives for seconds: the objects it made all die at exit, where a last full
    # collection would only walk them (tens of milliseconds on every command).
    atexit.register(gc.freeze)
    # Loading the modules makes tens of thousands of objects that live as long as the
    # process: collecting them again and again while they load costs every command ~20 ms.
    gc.disable()
    try:
        # Inside the try: a SIGTERM that lands as the handler is set is caught here too.
        signal.signal(signal.SIGTERM, _terminated)
        from cml_infra.cli import main as run

        gc.freeze()
        gc.enable()
        run()
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
