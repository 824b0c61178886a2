"""Failures the CLI reports as one line: bad input (exit 2), runtime or remote (exit 1)."""

from __future__ import annotations


class CmlInfraError(Exception):
    """Something failed while doing what was asked; exit code 1."""

    exit_code = 1


class UsageError(CmlInfraError):
    """The input is wrong; nothing was created. Exit code 2.

    `source` names the flag or file that was wrong so the message can lead with it.
    """

    exit_code = 2

    def __init__(self, source: str, message: str) -> None:
        self.source = source
        super().__init__(f"{source}: {message}")


class Interrupted(CmlInfraError):
    """Ctrl-C or SIGTERM arrived; raised so that half-made infrastructure is rolled back."""

    exit_code = 130

    def __init__(self, signame: str) -> None:
        self.signame = signame
        super().__init__(f"interrupted by {signame}")
