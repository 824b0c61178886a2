"""The agent loop: runs the task (or the runner), watches idle time and lifetime, and ends
the instance. It reads one JSON config:

    name            instance name (for log lines)
    idle_timeout    seconds with nothing running before the instance ends itself
    expires_at      unix seconds: the hard TTL deadline, whatever is running
    single          end the instance as soon as the first task ends
    command         argv of the task to run once (task mode); empty: nothing to run
    self_destroy    argv that ends this instance (a `down` of its own workspace on the local
                    cloud; a shutdown where the VM is set to terminate on shutdown), or a
                    built-in hook of hooks.py (@gcp-delete-instance, ...), which calls the
                    cloud API with the VM's own identity from the metadata server
    poll_seconds    how often to look
    runner          the forge's runner to run instead of a task (its `kind` picks the module)
    gpus, gpu_timeout, docker
                    what the instance must have before any work starts (host.py)
    startup_script  the team's own boot steps (`--startup-script`): a file beside the config,
                    run first, as root; the instance ends if it fails
    workdir         the task's working folder, a gzip tar ({"file": path} or {"url": URL}),
                    unpacked into work/ before the task starts (task.py)
    outputs         paths inside work/ packed into outputs.tar.gz when the task ends
    report          where status.json, instance.log and outputs.tar.gz go: {"dir": folder}
                    or {"urls": {name: presigned PUT URL}} (optional "headers" for the PUTs;
                    report.py)
    report_seconds  how often the status is reported while nothing changes
    preemption      task mode's spot interruption probe (a name in hooks.PREEMPTION_PROBES)

It writes `agent-status.json` (state busy/idle/destroying, last_activity, idle_seconds, the
task's state and exit code, the log's tail) beside itself for the launcher to read, reports the
same to the report sink, and logs one line per event to standard output.
"""

from __future__ import annotations

import binascii
import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .hooks import DEFAULT_ENDPOINTS, SELF_DESTROY, hook, log

if TYPE_CHECKING:
    from .github_runner import Runner
    from .host import HostSetup
    from .report import Reporter

STATUS_FILE = "agent-status.json"
LOG_FILE = "instance.log"
LOG_TAIL = 16384
SELF_DESTROY_ATTEMPTS = 5
TASK_STOP_GRACE = 10.0
PREEMPTION_POLL_SECONDS = 5.0
# The module of each forge's runner (its class `Runner`), by the `kind` of the config's `runner`
# section; imported only in runner mode.
RUNNERS = {"github": "github_runner"}


class Agent:
    def __init__(self, config: dict[str, Any], home: Path) -> None:
        self.name = str(config["name"])
        self.idle_timeout = float(config["idle_timeout"])
        self.expires_at = float(config["expires_at"])
        self.single = bool(config.get("single", False))
        self.command = [str(arg) for arg in config.get("command", [])]
        self.self_destroy_argv = [str(arg) for arg in config["self_destroy"]]
        self.poll = float(config.get("poll_seconds", 1.0))
        # Overridable so that tests can point the cloud self-destroys at loopback fakes.
        self.endpoints = {**DEFAULT_ENDPOINTS, **config.get("endpoints", {})}
        self.home = home
        self.task: subprocess.Popen[bytes] | None = None
        self.tasks_run = 0
        self.tasks_ended = 0
        self.last_exit_code: int | None = None
        self.last_activity = time.time()
        self.state = "idle"
        self.stopping = False
        self.runner: Runner | None = None
        if "runner" in config:
            module = importlib.import_module(
                f".{RUNNERS[config['runner'].get('kind', 'github')]}", __package__
            )
            self.runner = module.Runner(config["runner"], home, self.endpoints)
        self.startup_timeout = float(config.get("runner", {}).get("startup_timeout", 900))
        self.host: HostSetup | None = None
        gpus = int(config.get("gpus", 0))
        # As HostSetup.needed: where it has nothing to do, host.py is not on the instance.
        if gpus > 0 or config.get("docker", gpus > 0):
            from .host import HostSetup

            user = self.runner.user if self.runner else None
            self.host = HostSetup(config, user, self.expires_at)
        self._listening_seen = False
        self.preempted = False
        script = config.get("startup_script")
        self.startup_script = home / str(script) if script else None
        self.boot_steps: subprocess.Popen[bytes] | None = None
        # Task mode's traffic and the reports: task.py and report.py, imported (and on the
        # instance) only when they have work to do.
        self.task_state: str | None = "pending" if self.command else None
        self.exit_code: int | None = None
        self.notice: str | None = None
        self.outputs: dict[str, Any] | None = None
        self.log_complete = False
        self.reason: str | None = None
        self.workdir: dict[str, Any] | None = config.get("workdir")
        self.output_paths = [str(path) for path in config.get("outputs") or ()]
        self.probe = None if self.runner else config.get("preemption")
        self._next_probe = 0.0
        self.reporter: Reporter | None = None
        if config.get("report"):
            from .report import Reporter

            self.reporter = Reporter(config)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_term)
        log(
            f"{self.name}: idle timeout {self.idle_timeout:.0f}s, "
            f"ttl deadline {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(self.expires_at))}"
            + (", single" if self.single else "")
        )
        self.state = "starting"
        self._write_status()
        if self.startup_script is not None:
            # First of all: the team's steps may install what the rest needs (a GPU driver).
            self.state = "starting"
            self._write_status()
            reason = self._run_startup_script(self.startup_script)
            if reason:
                return self._end_instance(reason)
        if self.host is not None and self.host.needed:
            # Nothing runs before the GPUs and Docker are there: a job would fail on them.
            self.state = "starting"
            self._write_status()
            reason = self.host.run()
            if reason:
                return self._end_instance(reason)
        if self.command and self.workdir:
            from .task import fetch_workdir

            reason = fetch_workdir(self.workdir, self.home, self.home / "work")
            if reason:
                self.task_state = "failed-to-start"
                return self._end_instance(reason)
            log("workdir: unpacked into work/")
        if self.command:
            self._start_task()
        if self.runner is not None:
            self.state = "starting"
            try:
                _isolated(self.runner.install)
                self.runner.start()
            except (OSError, RuntimeError, ValueError) as exc:
                # The reason travels to the status file and `up`'s error (its log kept on the
                # local cloud): a checksum or an archive that is not one says what to fix.
                return self._end_instance(f"runner could not start: {exc}")
        self._write_status()
        while not self.stopping:
            tick = self._tick_runner if self.runner is not None else self._tick
            reason = tick(time.time())
            self._write_status()
            if reason:
                return self._end_instance(reason)
            time.sleep(self.poll)
        return 0

    def _run_startup_script(self, path: Path) -> str | None:
        """The team's script, as whoever runs the agent (root on a VM), its output into the
        instance log; None once it succeeded, else why the instance must end. A script with a
        `#!` line runs under its interpreter, any other under bash."""
        try:
            with path.open("rb") as script:
                shebang = script.read(2) == b"#!"
        except OSError as exc:
            return f"startup script could not be read: {exc}"
        argv = [str(path)] if shebang else ["bash", str(path)]
        log(f"startup script: running {path.name} as uid {os.getuid()}")
        started = time.monotonic()
        try:
            self.boot_steps = subprocess.Popen(argv, cwd=self.home, stdin=subprocess.DEVNULL)
        except OSError as exc:
            return f"startup script could not run: {exc}"
        while True:
            try:
                code = self.boot_steps.wait(timeout=self.poll)
                break
            except subprocess.TimeoutExpired:
                if time.time() >= self.expires_at:
                    _stop(self.boot_steps)
                    return "ttl reached (while the startup script ran)"
        self.boot_steps = None
        took = time.monotonic() - started
        if code != 0:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
            return f"startup script failed: it {how} after {took:.0f}s (its output is in the log)"
        log(f"startup script: done in {took:.0f}s")
        return None

    def _tick(self, now: float) -> str | None:
        """One look at the world; returns why the instance must end, if it must."""
        if now >= self.expires_at:
            if self.task is not None:
                log("ttl reached while the task runs; stopping it")
                self._stop_task()
            return "ttl reached"
        notice = self._preemption_notice(now)
        if notice:
            log(f"spot interruption notice ({notice})")
            self.notice = notice
            if self.task is not None:
                _stop(self.task)
                self.last_exit_code = self.task.returncode
                self.task = None
                self._pack_outputs()
                self.task_state = "preempted"
            return "spot interruption"
        if self.task is not None:
            code = self.task.poll()
            if code is None:
                self.state = "busy"
                self.last_activity = now
                return None
            self.task = None
            self.last_activity = now
            log(f"task ended with exit code {code}")
            self._task_ended(code)
        if self.single and self.tasks_ended:
            return "single task done"
        self.state = "idle"
        if now - self.last_activity >= self.idle_timeout:
            return f"idle for {self.idle_timeout:.0f}s"
        return None

    def _preemption_notice(self, now: float) -> str | None:
        if not self.probe or now < self._next_probe:
            return None
        self._next_probe = now + PREEMPTION_POLL_SECONDS
        try:
            return hook(self.probe)(self.endpoints)
        except (OSError, ValueError, KeyError):
            return None  # no notice reachable: keep working, look again later

    def _task_ended(self, code: int) -> None:
        """The task's end: its exit code as a shell gives it (128+N: killed by signal N), and
        its outputs packed and queued for upload."""
        self.tasks_ended += 1
        self.last_exit_code = code
        self.exit_code = 128 - code if code < 0 else code
        self.task_state = "exited"
        if not self.stopping:
            self._pack_outputs()

    def _pack_outputs(self) -> None:
        if self.output_paths:
            from .task import pack_for

            pack_for(self)

    def _tick_runner(self, now: float) -> str | None:
        """Runner mode: busy while a Runner.Worker runs; the idle clock starts once it listens."""
        runner = self.runner
        assert runner is not None
        if now >= self.expires_at:
            runner.stop()
            return "ttl reached"
        notice = None if self.preempted else runner.preemption_notice(now)
        if notice:
            self.preempted = True
            log(f"spot interruption notice ({notice}); the runner takes no further job")
        if self.preempted:
            # A running job may still finish before the cloud takes the VM; no new one starts.
            if runner.busy():
                self.state = "busy"
                return None
            runner.stop()
            return "spot interruption"
        code = runner.exit_code()
        if not runner.listening:
            self.state = "starting"
            if code is not None:
                return f"runner exited with code {code} before it listened for jobs"
            if now - runner.started_at > self.startup_timeout:
                runner.stop()
                return f"runner did not listen for jobs within {self.startup_timeout:.0f}s"
            return None
        if not self._listening_seen:
            self._listening_seen = True
            self.last_activity = now
        if runner.busy():
            self.state = "busy"
            self.last_activity = now
            return None
        if code is not None:
            return "runner finished its job" if runner.ephemeral else f"runner exited with {code}"
        self.state = "idle"
        if now - self.last_activity < self.idle_timeout:
            return None
        # One more look right before stopping: a job may have been assigned a moment ago.
        if runner.busy():
            return None
        runner.stop()
        return f"idle for {self.idle_timeout:.0f}s"

    def _start_task(self) -> None:
        log(f"task: {' '.join(self.command)}")
        work = self.home / "work"
        work.mkdir(exist_ok=True)
        try:
            # The task writes straight into our standard output (the instance log).
            self.task = subprocess.Popen(self.command, cwd=work, stdin=subprocess.DEVNULL)
        except OSError as exc:
            log(f"task could not start: {exc}")
            self.last_exit_code = self.exit_code = 127
            self.task_state = "failed-to-start"
            self.tasks_ended += 1
            return
        self.tasks_run += 1
        self.state = "busy"
        self.task_state = "running"

    def _stop_task(self) -> None:
        if self.task is None:
            return
        _stop(self.task)
        code = self.task.returncode
        self.task = None
        self._task_ended(code)

    def _end_instance(self, reason: str) -> int:
        if self.task_state == "pending":
            self.task_state = "failed-to-start"
        self.state = "destroying"
        self.reason = reason
        log(f"ending the instance: {reason}")
        self._write_status(reason)
        if self.reporter is not None:
            self.reporter.final(self)
        delay = 5.0
        for attempt in range(1, SELF_DESTROY_ATTEMPTS + 1):
            code = self._destroy_once(reason)
            if self.stopping:
                return 0
            if code == 0:
                # Still alive: the cloud ends us shortly; wait for it rather than retry.
                time.sleep(max(self.poll, 30.0))
                if self.stopping:
                    return 0
            log(f"self-destroy attempt {attempt} exited with {code}; retrying in {delay:.0f}s")
            time.sleep(delay)
            delay = min(delay * 2, 120.0)
        log("could not end the instance; `cml-infra cleanup` will reap it by its tags")
        while not self.stopping:
            time.sleep(self.poll)
        return 1

    def _destroy_once(self, reason: str) -> int:
        if self.self_destroy_argv[0] in SELF_DESTROY:
            try:
                hook(self.self_destroy_argv[0])(self.endpoints)
            except (OSError, ValueError, KeyError) as exc:
                # Never the response body: it could echo the token we sent.
                log(f"self-destroy through the cloud API failed: {type(exc).__name__}: {exc}")
                return 1
            return 0
        # A session of its own: the destroy stops this instance's process group, and must not
        # stop itself with it. Not subprocess.call: on our SIGTERM it would kill the destroy
        # half way.
        env = {**os.environ, "CML_INFRA_END_REASON": reason}
        destroyer = subprocess.Popen(
            self.self_destroy_argv, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )
        return destroyer.wait()

    def end_now(self, reason: str) -> int:
        """The TTL timer's entry point: end the instance without running anything first. What
        the agent last wrote of its task is reported on."""
        signal.signal(signal.SIGTERM, self._on_term)
        if self.reporter is not None:
            self.reporter.resume(self)
        return self._end_instance(reason)

    def _on_term(self, signum: int, frame: object) -> None:
        log("stopping (SIGTERM)")
        self.stopping = True
        if self.boot_steps is not None:
            _stop(self.boot_steps)
        self._stop_task()
        if self.runner is not None:
            self.runner.stop(grace=5.0)
        self.state = "stopped"
        # Best effort and short: one try of the status, nothing queued.
        self._write_status(self.reason, flush=False)
        sys.exit(0)

    def _write_status(self, reason: str | None = None, flush: bool = True) -> None:
        status = self._status(reason)
        if self.reporter is not None:
            self.reporter.report(status, lambda: self._status(reason), flush)
        # A fresh file of our own (O_EXCL, 0600), renamed over the status: nothing planted at
        # either name (a symlink) is written through.
        fd, tmp = _fresh_file(self.home, f".{STATUS_FILE}.{os.getpid()}")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(json.dumps(status))
            os.replace(tmp, self.home / STATUS_FILE)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _status(self, reason: str | None) -> dict[str, Any]:
        """The status document (agent-status.json, and the report's status.json)."""
        now = time.time()
        return {
            "name": self.name,
            "state": self.state,
            "pid": os.getpid(),
            "updated_at": now,
            "last_activity": self.last_activity,
            "idle_seconds": 0.0 if self.state == "busy" else round(now - self.last_activity, 1),
            "expires_at": self.expires_at,
            "tasks_run": self.tasks_run,
            "last_exit_code": self.last_exit_code,
            "reason": reason,
            "exit_code": self.exit_code,
            "task": self.task_state,
            "preempted": self.notice,
            "outputs": self.outputs,
            "log": self._log_state(),
        }

    def _log_state(self) -> dict[str, Any]:
        """The instance log's size and its last LOG_TAIL bytes (base64)."""
        offset, tail = 0, b""
        with contextlib.suppress(OSError), (self.home / LOG_FILE).open("rb") as log_file:
            offset = max(0, os.fstat(log_file.fileno()).st_size - LOG_TAIL)
            log_file.seek(offset)
            tail = log_file.read(LOG_TAIL)
        return {
            "size": offset + len(tail),
            "tail_offset": offset,
            "tail_b64": binascii.b2a_base64(tail, newline=False).decode(),
            "complete": self.log_complete,
        }


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after a grace period."""
    process.terminate()
    try:
        process.wait(TASK_STOP_GRACE)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _fresh_file(folder: Path, prefix: str) -> tuple[int, Path]:
    """A new file of ours, 0600, opened for writing: the first `prefix.N` that does not exist
    (O_EXCL: a name already taken, a symlink included, is never opened). Not tempfile: it
    costs the agent a megabyte it keeps for its whole life."""
    for number in range(1000):
        path = folder / f"{prefix}.{number}"
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free name {prefix}.N in {folder}")


def _isolated(work: Callable[[], None]) -> None:
    """Run `work` in a forked child and wait for it; its failure is raised here as a
    RuntimeError with its message. What it imports (hashlib, tarfile, urllib and ssl for the
    runner's download and checksum: about 10 MiB) stays out of this process, which lives as long
    as the instance. So `work` must leave its results on disk, not in memory."""
    sys.stdout.flush()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never back into the caller's code
        code = 1
        try:
            os.close(read)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            try:
                work()
                code = 0
            except BaseException as exc:  # whatever it is, the parent reports it
                os.write(write, (str(exc) or type(exc).__name__).encode(errors="replace")[:4000])
        finally:
            sys.stdout.flush()
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        message = pipe.read().decode(errors="replace")
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if code != 0:
        raise RuntimeError(message or f"its process exited with {code}")
