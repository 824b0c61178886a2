"""Ctrl-C and SIGTERM during `up`: the contract is exit 130 with nothing left, or exit 0 with
a running instance that the output names, never anything in between.

The handler never raises: it notes the signal and asks a running Terraform to stop (exactly
one SIGINT, so that it stops cleanly and keeps its state consistent). `up` looks at the guard
between steps and rolls back. Once `up` has committed (the record says running), signals are
ignored until the process exits, so the name is always printed.
"""

from __future__ import annotations

import signal
import time
from types import FrameType, TracebackType
from typing import Any

from cml_infra import ui
from cml_infra.errors import Interrupted
from cml_infra.terraform import Engine

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# How often an interruptible wait looks at the guard.
SLICE_SECONDS = 0.1


class SignalGuard:
    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.received: str | None = None
        self.committed = False
        # Rolling back: a signal is noted, never passed on to the destroy that runs.
        self.rolling_back = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalGuard:
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.committed:
            # The instance is running and ours: no signal may turn that into exit 130 now.
            for ignored in SIGNALS:
                signal.signal(ignored, signal.SIG_IGN)
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def check(self) -> None:
        """Raise Interrupted if a signal came since `up` began."""
        if self.received and not self.committed:
            raise Interrupted(self.received)

    def sleep(self, seconds: float) -> None:
        """time.sleep that ends early, with Interrupted, when a signal comes."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.check()
            time.sleep(min(left, SLICE_SECONDS))
        self.check()

    def commit(self) -> None:
        """From here on `up` has succeeded: later signals change nothing."""
        self.committed = True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.committed:
            return
        if self.received or self.rolling_back:
            self.received = self.received or name
            ui.warn(f"{name}: already stopping; waiting for the rollback to finish")
            return
        self.received = name
        if self.engine is not None and self.engine.interrupt():
            ui.warn(f"{name}: stopping terraform, then destroying what it created")
        else:
            ui.warn(f"{name}: stopping, then destroying what was created")
