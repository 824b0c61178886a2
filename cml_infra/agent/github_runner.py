"""GitHub's runner on the instance: installed from the pinned release, configured with the
registration the launcher minted, run as an unprivileged user, and watched for jobs."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

from .hooks import hook, log

LISTENING_LINE = "Listening for Jobs"
RUNNER_STOP_GRACE = 30.0
PREEMPTION_POLL_SECONDS = 5.0
WORK_FOLDER = "_work"
# The runner reads a command-line argument NAME from the variable ACTIONS_RUNNER_INPUT_NAME too
# (actions/runner, src/Runner.Listener/CommandSettings.cs), then drops it from its environment,
# so that no worker or job inherits it. The registration secret goes that way, never in argv:
# /proc/PID/cmdline is readable by every user of the machine for the process's whole life.
INPUT_PREFIX = "ACTIONS_RUNNER_INPUT_"


class Runner:
    """The GitHub Actions runner on this instance: installed, configured, started, watched.

    Config: archive {url|path, sha256}, registration {kind: jit|token, secret, url}, name,
    labels, ephemeral, group, user (run as this user; none: as ourselves), preemption (the
    hooks.py probe of the cloud's spot interruption notice, or none), startup_timeout.
    """

    def __init__(self, config: dict[str, Any], home: Path, endpoints: dict[str, str]) -> None:
        self.config = config
        self.home = home
        self.dir = home / "runner"
        self.endpoints = endpoints
        self.user = config.get("user")
        self.ephemeral = bool(config.get("ephemeral")) or config["registration"]["kind"] == "jit"
        self.process: subprocess.Popen[bytes] | None = None
        self.listening = False
        self.started_at = time.time()
        self._next_preemption_poll = 0.0

    def install(self) -> None:
        # Imported here: the agent runs this in a child process (loop._isolated), so that the
        # megabytes these modules take never stay in the agent that watches the runner.
        import hashlib
        import shutil
        import tarfile
        import urllib.request

        archive = self.config["archive"]
        packed = self.home / "runner.tar.gz"
        if "path" in archive:
            shutil.copyfile(archive["path"], packed)
        else:
            log(f"downloading the runner from {_loggable_url(archive['url'])}")
            with (
                urllib.request.urlopen(archive["url"], timeout=120) as response,
                packed.open("wb") as out,
            ):
                shutil.copyfileobj(response, out)
        digest = hashlib.sha256(packed.read_bytes()).hexdigest()
        if digest != archive["sha256"]:
            packed.unlink()
            raise RuntimeError(
                f"the runner archive's sha256 is {digest}, not the {archive['sha256']} it "
                "must have (its release's published checksum): refusing to install it"
            )
        self.dir.mkdir(exist_ok=True)
        with tarfile.open(packed) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(self.dir, filter="data")
            else:  # Python before 3.11.4: the archive's checksum was verified above
                tar.extractall(self.dir)
        packed.unlink()
        if self.user:
            subprocess.run(["chown", "-R", f"{self.user}:", str(self.dir)], check=True)

    def start(self) -> None:
        registration = self.config["registration"]
        _check_values(registration, self.config)
        secret: dict[str, str] = {}
        if registration["kind"] == "token":
            args = [
                "./config.sh", "--unattended", "--replace",
                "--url", registration["url"],
                "--name", self.config["name"], "--labels", ",".join(self.config["labels"]),
                "--work", WORK_FOLDER,
            ]  # fmt: skip
            if self.config.get("ephemeral"):
                # One job, then gone: an update would only delay it. A runner that takes many
                # keeps GitHub's self-update, or it stops getting jobs 30 days after the next
                # release.
                args += ["--ephemeral", "--disableupdate"]
            if self.config.get("group"):
                args += ["--runnergroup", str(self.config["group"])]
            # config.sh ends once registered: the token lives no longer than it does.
            token = {f"{INPUT_PREFIX}TOKEN": registration["secret"]}
            done = subprocess.run(
                args, cwd=self.dir, stdin=subprocess.DEVNULL, **self._as_user(token)
            )
            if done.returncode != 0:
                raise RuntimeError(f"config.sh exited with {done.returncode}")
        else:
            # In run.sh's environment (and its listener's) while the runner lives: readable by
            # root and the runner user only, whose jobs can read the same credentials anyway in
            # the runner folder, where the listener writes them from the JIT config.
            secret = {f"{INPUT_PREFIX}JITCONFIG": registration["secret"]}
        self.started_at = time.time()
        self.process = subprocess.Popen(
            ["./run.sh"],
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            **self._as_user(secret),
        )
        threading.Thread(target=self._relay, daemon=True).start()
        log(f"runner {self.config['name']} started ({registration['kind']} registration)")

    def _as_user(self, inputs: dict[str, str]) -> dict[str, Any]:
        """Popen's arguments that run a runner script as the runner user, with `inputs` (the
        runner's ACTIONS_RUNNER_INPUT_* variables) and no others: none inherited from
        whoever started the agent may stand in for an argument of ours."""
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith(INPUT_PREFIX)}
        env.update(inputs)
        if not self.user:
            # The local cloud runs the runner as whoever runs cml-infra, root included.
            if os.geteuid() == 0:
                env["RUNNER_ALLOW_RUNASROOT"] = "1"
            return {"env": env}
        import grp
        import pwd

        account = pwd.getpwnam(self.user)
        env.update(HOME=account.pw_dir, USER=self.user, LOGNAME=self.user)
        extra = [g.gr_name for g in grp.getgrall() if self.user in g.gr_mem]
        return {"env": env, "user": account.pw_uid, "group": account.pw_gid, "extra_groups": extra}

    def _relay(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip()
            print(f"[runner] {line}", flush=True)
            if LISTENING_LINE in line:
                self.listening = True

    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def busy(self) -> bool:
        """A Runner.Worker process under our runner: a job runs (GitHub's busy flag lags)."""
        if self.process is None:
            return False
        return any(_is_worker(pid) for pid in _descendants(self.process.pid))

    def stop(self, grace: float = RUNNER_STOP_GRACE) -> None:
        """Ctrl-C, as for the real runner: it deregisters a session and stops its worker."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            # The listener ignored Ctrl-C: nothing of it may go on working.
            for pid in [*_descendants(self.process.pid), self.process.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.process.wait()

    def preemption_notice(self, now: float) -> str | None:
        cloud = self.config.get("preemption")
        if not cloud or now < self._next_preemption_poll:
            return None
        self._next_preemption_poll = now + PREEMPTION_POLL_SECONDS
        try:
            return hook(cloud)(self.endpoints)
        except (OSError, ValueError, KeyError):
            return None  # no notice reachable: keep working, look again later


def _check_values(registration: dict[str, Any], config: dict[str, Any]) -> None:
    """config.sh and run.sh read a value that starts with '-' as an option of their own (say
    `--ephemeral`), and a newline or NUL would end or split it: refuse to start with one. The
    launcher validates all of these first; this holds even if a config got past it."""
    values = [
        ("url", registration.get("url")),
        ("registration secret", registration.get("secret")),
        ("name", config.get("name")),
        ("runner group", config.get("group")),
        ("work folder", WORK_FOLDER),
    ]
    values += [("label", label) for label in config.get("labels") or ()]
    for what, value in values:
        text = "" if value is None else str(value)
        if text.startswith("-") or any(char in text for char in "\n\r\0"):
            shown = "" if what == "registration secret" else f" {text!r}"
            raise RuntimeError(
                f"refusing to pass the {what}{shown} to the runner: it starts with '-' "
                "or holds a line break or NUL"
            )


def _loggable_url(url: str) -> str:
    """A URL as the log may show it: without user:password@ and without the query and fragment
    (a signed URL carries its signature there)."""
    try:
        parts = urllib.parse.urlsplit(str(url))
    except ValueError:
        return "a URL that does not parse"
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # The command name in parentheses may hold spaces: the ppid follows the last ')'.
            fields = stat.rpartition(")")[2].split()
            parents[int(entry.name)] = int(fields[1])
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found.extend(children)
        frontier.extend(children)
    return found


def _is_worker(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    # A native Runner.Worker, or a script one run through its interpreter.
    return any(
        os.path.basename(arg.decode(errors="replace")) == "Runner.Worker" for arg in argv[:2]
    )
