"""cml_infra.lifecycle.guard: the signal guard of `up` on its own."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from cml_infra.errors import Interrupted
from cml_infra.lifecycle.guard import SignalGuard
from tests.unit.lifecycle.conftest import ctrl_c


class Running:
    """An engine with a command running: interrupt() passes one SIGINT on."""

    def __init__(self) -> None:
        self.interrupts = 0

    def interrupt(self) -> bool:
        self.interrupts += 1
        return True


def test_a_signal_is_noted_never_raised_and_check_raises_it():
    with SignalGuard() as guard:
        ctrl_c()  # the handler runs here and returns
        assert guard.received == "SIGINT"
        with pytest.raises(Interrupted, match="SIGINT") as caught:
            guard.check()
    assert caught.value.exit_code == 130


def test_the_first_signal_reaches_a_running_engine_once():
    engine = Running()
    with SignalGuard() as guard:
        guard.engine = engine  # type: ignore[assignment]
        ctrl_c()
        ctrl_c()
        signal.raise_signal(signal.SIGTERM)
    assert engine.interrupts == 1
    assert guard.received == "SIGINT"


def test_while_rolling_back_a_signal_is_noted_but_the_engine_is_left_alone():
    engine = Running()
    with SignalGuard() as guard:
        guard.engine = engine  # type: ignore[assignment]
        guard.rolling_back = True
        ctrl_c()
    assert engine.interrupts == 0
    assert guard.received == "SIGINT", "up still ends with exit 130"


def test_sleep_ends_early_when_a_signal_comes():
    with SignalGuard() as guard:
        timer = threading.Timer(0.2, ctrl_c)
        timer.start()
        started = time.monotonic()
        with pytest.raises(Interrupted):
            guard.sleep(30)
        timer.join()
    assert time.monotonic() - started < 10


def test_after_commit_signals_change_nothing_and_stay_ignored():
    previous = signal.getsignal(signal.SIGINT)
    try:
        with SignalGuard() as guard:
            guard.commit()
            ctrl_c()
            guard.check()
        assert guard.received is None
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_without_commit_the_previous_handlers_come_back():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with SignalGuard():
        assert signal.getsignal(signal.SIGINT) is not before[signal.SIGINT]
    assert {s: signal.getsignal(s) for s in before} == before
