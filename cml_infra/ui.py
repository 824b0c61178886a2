"""Everything cml-infra prints: results on stdout, progress and messages on stderr.

Importing this module is cheap (rich loads on first use), so the CLI callback can set `quiet`
without slowing `cml-infra COMMAND --help`. Errors become one line and an exit code here, once.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import typer

from cml_infra import config
from cml_infra.errors import CmlInfraError, UsageError

if TYPE_CHECKING:
    from rich.console import Console

    from cml_infra.terraform import Event

_SHOWN_EVENTS = frozenset(
    {
        "apply_start",
        "apply_progress",
        "apply_complete",
        "apply_errored",
        "provision_progress",
        "provision_errored",
        "change_summary",
    }
)

# --quiet, for the command that runs.
QUIET: ContextVar[bool] = ContextVar("cml_infra_quiet", default=False)
P = ParamSpec("P")
R = TypeVar("R")


def reported(func: Callable[P, R]) -> Callable[P, R]:
    """Our errors become one line and an exit code; CML_INFRA_DEBUG=1 shows the traceback."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except CmlInfraError as exc:
            if os.environ.get("CML_INFRA_DEBUG") == "1":
                raise
            error(_with_origin(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            # Outside `up`'s own guard a Ctrl-C has nothing to roll back.
            error("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def _with_origin(exc: CmlInfraError) -> str:
    """The message, plus the config file when that file sets the flag the error names."""
    if not isinstance(exc, UsageError) or (path := config.setting_origin(exc.source)) is None:
        return str(exc)
    return f"{exc} ({exc.source} is set in {path}; a flag or CML_INFRA_* variable overrides it)"


@cache
def stdout() -> Console:
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal:
        # Piped output is read by scripts: never cut a table down to 80 columns.
        console.width = 1000
    return console


@cache
def stderr() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def _say(text: str, style: str | None = None) -> None:
    """A line on stderr: styled by rich on a terminal, plain (and without loading rich)
    when it goes to a log."""
    if sys.stderr.isatty():
        stderr().print(text, markup=False, style=style)
    else:
        print(text, file=sys.stderr, flush=True)


def info(message: str) -> None:
    if not QUIET.get():
        _say(message)


def warn(message: str) -> None:
    _say(f"warning: {message}", "yellow")


def error(message: str) -> None:
    _say(f"error: {message}", "bold red")


def result(text: str) -> None:
    """The command's answer (a name, a path), alone on stdout so scripts can capture it."""
    print(text, flush=True)


def emit_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str), flush=True)


@contextmanager
def terraform_progress(title: str) -> Iterator[Callable[[Event], None]]:
    """An event handler: a spinner with the latest step on a TTY, plain lines otherwise."""
    if QUIET.get():
        yield lambda event: None
    elif sys.stderr.isatty():
        with stderr().status(title) as status:

            def on_tty_event(event: Event) -> None:
                if _shown(event):
                    status.update(f"{title}: {event.message}")
                _warn_diagnostic(event)

            yield on_tty_event
    else:
        _say(title)

        def on_plain_event(event: Event) -> None:
            if _shown(event):
                _say(f"  {event.message}")
            _warn_diagnostic(event)

        yield on_plain_event


def _shown(event: Event) -> bool:
    # Provisioners that get a sensitive value (the startup script) print only this placeholder.
    return (
        event.type in _SHOWN_EVENTS
        and bool(event.message)
        and not event.message.endswith("(output suppressed due to sensitive value in config)")
    )


def _warn_diagnostic(event: Event) -> None:
    diagnostic = event.raw.get("diagnostic") if event.type == "diagnostic" else None
    if isinstance(diagnostic, dict) and diagnostic.get("severity") == "warning":
        warn(f"terraform: {diagnostic.get('summary', '')} {diagnostic.get('detail', '')}".strip())


def table(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    money: Sequence[str] = (),
    err: bool = False,
) -> None:
    from rich.table import Table

    grid = Table(*columns, box=None, pad_edge=False, header_style="bold")
    for row in rows:
        grid.add_row(*(_cell(row.get(column), column in money) for column in columns))
    (stderr() if err else stdout()).print(grid)


def _cell(value: Any, money: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if money and isinstance(value, (int, float)):
        return f"${value:.4f}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
