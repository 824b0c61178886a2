"""The on-instance agent: runs the task, watches idle time and lifetime, and ends the instance.

Standard library only: it travels inside the startup script and runs with whatever python3 the
image has, so nothing is installed from PyPI on an instance. It reads one JSON config:

    name            instance name (for log lines)
    idle_timeout    seconds with nothing running before the instance ends itself
    expires_at      unix seconds: the hard TTL deadline, whatever is running
    single          end the instance as soon as the first task ends
    command         argv of the task to run once (task mode); empty: nothing to run
    self_destroy    argv that ends this instance (a `down` of its own workspace on the local
                    cloud; a shutdown where the VM is set to terminate on shutdown), or a
                    built-in: @gcp-delete-instance, @azure-delete-resource-group, which call
                    the cloud API with the VM's own identity from the metadata server
    poll_seconds    how often to look

It writes `agent-status.json` (state busy/idle/destroying, last_activity, idle_seconds) beside
itself for the launcher to read, and logs one line per event to standard output.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

STATUS_FILE = "agent-status.json"
HTTP_TIMEOUT = 10.0
DEFAULT_ENDPOINTS = {
    "gcp_metadata": "http://metadata.google.internal/computeMetadata/v1",
    "gcp_api": "https://compute.googleapis.com/compute/v1",
    "azure_metadata": "http://169.254.169.254/metadata",
    "azure_api": "https://management.azure.com",
    "aws_metadata": "http://169.254.169.254",
}
LISTENING_LINE = "Listening for Jobs"
RUNNER_STOP_GRACE = 30.0
PREEMPTION_POLL_SECONDS = 5.0
SELF_DESTROY_ATTEMPTS = 5
TASK_STOP_GRACE = 10.0


def log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(f"[cml-infra agent {stamp}] {message}", flush=True)


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
        self.runner = Runner(config["runner"], home, self.endpoints) if "runner" in config else None
        self.startup_timeout = float(config.get("runner", {}).get("startup_timeout", 900))
        self._listening_seen = False
        self.preempted = False

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_term)
        log(
            f"{self.name}: idle timeout {self.idle_timeout:.0f}s, "
            f"ttl deadline {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(self.expires_at))}"
            + (", single" if self.single else "")
        )
        if self.command:
            self._start_task()
        if self.runner is not None:
            self.state = "starting"
            try:
                self.runner.install()
                self.runner.start()
            except (OSError, RuntimeError, ValueError, tarfile.TarError) as exc:
                log(f"runner could not start: {exc}")
                return self._end_instance("runner could not start")
        self._write_status()
        while not self.stopping:
            tick = self._tick_runner if self.runner is not None else self._tick
            reason = tick(time.time())
            self._write_status()
            if reason:
                return self._end_instance(reason)
            time.sleep(self.poll)
        return 0

    def _tick(self, now: float) -> str | None:
        """One look at the world; returns why the instance must end, if it must."""
        if now >= self.expires_at:
            if self.task is not None:
                log("ttl reached while the task runs; stopping it")
                self._stop_task()
            return "ttl reached"
        if self.task is not None:
            code = self.task.poll()
            if code is None:
                self.state = "busy"
                self.last_activity = now
                return None
            self.task = None
            self.tasks_ended += 1
            self.last_exit_code = code
            self.last_activity = now
            log(f"task ended with exit code {code}")
        if self.single and self.tasks_ended:
            return "single task done"
        self.state = "idle"
        if now - self.last_activity >= self.idle_timeout:
            return f"idle for {self.idle_timeout:.0f}s"
        return None

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
            self.last_exit_code = 127
            self.tasks_ended += 1
            return
        self.tasks_run += 1
        self.state = "busy"

    def _stop_task(self) -> None:
        if self.task is None:
            return
        self.task.terminate()
        try:
            self.task.wait(TASK_STOP_GRACE)
        except subprocess.TimeoutExpired:
            self.task.kill()
            self.task.wait()
        self.last_exit_code = self.task.returncode
        self.task = None

    def _end_instance(self, reason: str) -> int:
        self.state = "destroying"
        self._write_status(reason)
        log(f"ending the instance: {reason}")
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
        builtin = BUILTIN_SELF_DESTROY.get(self.self_destroy_argv[0])
        if builtin is not None:
            try:
                builtin(self.endpoints)
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
        """The TTL timer's entry point: end the instance without running anything first."""
        signal.signal(signal.SIGTERM, self._on_term)
        return self._end_instance(reason)

    def _on_term(self, signum: int, frame: object) -> None:
        log("stopping (SIGTERM)")
        self.stopping = True
        self._stop_task()
        if self.runner is not None:
            self.runner.stop(grace=5.0)
        self.state = "stopped"
        self._write_status()
        sys.exit(0)

    def _write_status(self, reason: str | None = None) -> None:
        now = time.time()
        status = {
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
        }
        tmp = self.home / f".{STATUS_FILE}.tmp"
        tmp.write_text(json.dumps(status), encoding="utf-8")
        os.replace(tmp, self.home / STATUS_FILE)


class Runner:
    """The GitHub Actions runner on this instance: installed, configured, started, watched.

    Config: archive {url|path, sha256}, registration {kind: jit|token, secret, url}, name,
    labels, ephemeral, group, user (run as this user; none: as ourselves), preemption
    (aws|gcp|azure|none: which spot notice to poll), startup_timeout.
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
        archive = self.config["archive"]
        packed = self.home / "runner.tar.gz"
        if "path" in archive:
            shutil.copyfile(archive["path"], packed)
        else:
            log(f"downloading the runner from {archive['url']}")
            with (
                urllib.request.urlopen(archive["url"], timeout=120) as response,
                packed.open("wb") as out,
            ):
                shutil.copyfileobj(response, out)
        digest = hashlib.sha256(packed.read_bytes()).hexdigest()
        if digest != archive["sha256"]:
            raise RuntimeError(
                f"runner archive sha256 {digest} is not the pinned {archive['sha256']}"
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
        if registration["kind"] == "token":
            args = [
                "./config.sh", "--unattended", "--replace", "--disableupdate",
                "--url", registration["url"], "--token", registration["secret"],
                "--name", self.config["name"], "--labels", ",".join(self.config["labels"]),
                "--work", "_work",
            ]  # fmt: skip
            if self.config.get("ephemeral"):
                args.append("--ephemeral")
            if self.config.get("group"):
                args += ["--runnergroup", str(self.config["group"])]
            done = subprocess.run(args, cwd=self.dir, stdin=subprocess.DEVNULL, **self._as_user())
            if done.returncode != 0:
                raise RuntimeError(f"config.sh exited with {done.returncode}")
            run = ["./run.sh"]
        else:
            run = ["./run.sh", "--jitconfig", registration["secret"]]
        self.started_at = time.time()
        self.process = subprocess.Popen(
            run,
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            **self._as_user(),
        )
        threading.Thread(target=self._relay, daemon=True).start()
        log(f"runner {self.config['name']} started ({registration['kind']} registration)")

    def _as_user(self) -> dict[str, Any]:
        env = {**os.environ}
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
            return PREEMPTION_PROBES[cloud](self.endpoints)
        except (OSError, ValueError, KeyError):
            return None  # no notice reachable: keep working, look again later


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


def aws_spot_notice(endpoints: dict[str, str]) -> str | None:
    base = endpoints["aws_metadata"]
    token = _http(
        "PUT", f"{base}/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"}
    ).decode()
    try:
        body = _http(
            "GET",
            f"{base}/latest/meta-data/spot/instance-action",
            {"X-aws-ec2-metadata-token": token},
        )
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise
    return f"aws spot instance-action {body.decode().strip()}"


def gcp_preempted(endpoints: dict[str, str]) -> str | None:
    flag = _http(
        "GET", f"{endpoints['gcp_metadata']}/instance/preempted", {"Metadata-Flavor": "Google"}
    )
    return "gcp instance/preempted is TRUE" if flag.decode().strip().upper() == "TRUE" else None


def azure_preempt_event(endpoints: dict[str, str]) -> str | None:
    url = f"{endpoints['azure_metadata']}/scheduledevents?api-version=2020-07-01"
    events = json.loads(_http("GET", url, {"Metadata": "true"})).get("Events", [])
    preempts = [e for e in events if e.get("EventType") == "Preempt"]
    return f"azure scheduled event Preempt at {preempts[0].get('NotBefore')}" if preempts else None


PREEMPTION_PROBES = {"aws": aws_spot_notice, "gcp": gcp_preempted, "azure": azure_preempt_event}


def _http(method: str, url: str, headers: dict[str, str]) -> bytes:
    request = urllib.request.Request(url, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
        body: bytes = response.read()
        return body


def gcp_delete_instance(endpoints: dict[str, str]) -> None:
    """Delete this VM with its own service account (allowed on this instance only)."""
    metadata, flavor = endpoints["gcp_metadata"], {"Metadata-Flavor": "Google"}
    token = json.loads(_http("GET", f"{metadata}/instance/service-accounts/default/token", flavor))
    project = _http("GET", f"{metadata}/project/project-id", flavor).decode().strip()
    zone = _http("GET", f"{metadata}/instance/zone", flavor).decode().strip().rpartition("/")[2]
    name = _http("GET", f"{metadata}/instance/name", flavor).decode().strip()
    url = f"{endpoints['gcp_api']}/projects/{project}/zones/{zone}/instances/{name}"
    _http("DELETE", url, {"Authorization": f"Bearer {token['access_token']}"})


def azure_delete_resource_group(endpoints: dict[str, str]) -> None:
    """Delete this runner's resource group (VM included) with the VM's managed identity."""
    metadata, header = endpoints["azure_metadata"], {"Metadata": "true"}
    resource = urllib.parse.quote("https://management.azure.com/", safe="")
    token_url = f"{metadata}/identity/oauth2/token?api-version=2018-02-01&resource={resource}"
    token = json.loads(_http("GET", token_url, header))
    compute = json.loads(
        _http("GET", f"{metadata}/instance/compute?api-version=2021-02-01", header)
    )
    url = (
        f"{endpoints['azure_api']}/subscriptions/{compute['subscriptionId']}"
        f"/resourceGroups/{compute['resourceGroupName']}?api-version=2021-04-01"
    )
    _http("DELETE", url, {"Authorization": f"Bearer {token['access_token']}"})


BUILTIN_SELF_DESTROY = {
    "@gcp-delete-instance": gcp_delete_instance,
    "@azure-delete-resource-group": azure_delete_resource_group,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--end-now", metavar="REASON", help="end the instance at once")
    args = parser.parse_args(argv)
    config = json.loads(args.config.read_text(encoding="utf-8"))
    agent = Agent(config, args.config.resolve().parent)
    return agent.end_now(args.end_now) if args.end_now else agent.run()


if __name__ == "__main__":
    sys.exit(main())
