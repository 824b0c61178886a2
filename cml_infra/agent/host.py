"""The instance made ready for work before the task starts or the runner takes a job: the GPUs
the placement promised are seen by `nvidia-smi`, and Docker and the NVIDIA container toolkit are
there where the config asks for Docker.

This runs in the agent rather than the startup script: the wait is bounded by clocks the agent
already keeps (the TTL), every decision lands in the instance log with a time stamp, a failure
ends the instance through the agent's one end path (status file, retried self-destroy), and
the steps run under unit tests with fake tools on PATH. The script only writes files and
starts the agent, as it does for every instance.

Config keys (top level of agent-config.json):

    gpus         GPUs the placement promised; nvidia-smi must list at least as many (0: none)
    gpu_timeout  seconds to wait for them (a Deep Learning VM image installs its driver at
                 first boot, and nvidia-smi fails until that is done)
    docker       install Docker where missing, and let the runner user use it (default: on
                 when GPUs are expected); with GPUs, the NVIDIA container toolkit too
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

from .hooks import log

GPU_TIMEOUT = 900.0
# A waiting line at most this often; every change of what nvidia-smi says is logged at once.
GPU_LOG_SECONDS = 30.0
NVIDIA_SMI_TIMEOUT = 60.0
# unattended-upgrades holds dpkg's lock for minutes after a first boot (Ubuntu images).
APT_LOCK_TIMEOUT = 600
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}
TOOLKIT_KEY_URL = "https://nvidia.github.io/libnvidia-container/gpgkey"
TOOLKIT_LIST_URL = (
    "https://nvidia.github.io/libnvidia-container/stable/deb/nvidia-container-toolkit.list"
)
TOOLKIT_KEYRING = Path("/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg")
TOOLKIT_SOURCES = Path("/etc/apt/sources.list.d/nvidia-container-toolkit.list")


class NotReady(Exception):
    """The instance cannot be made ready; the message is why it ends."""


def count_gpus() -> tuple[int, str]:
    """The GPUs `nvidia-smi -L` lists, and, when it lists none, what it said instead."""
    try:
        done = subprocess.run(
            ["nvidia-smi", "-L"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=NVIDIA_SMI_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        return 0, "nvidia-smi is not installed (yet)"
    except subprocess.TimeoutExpired:
        return 0, f"nvidia-smi did not answer within {NVIDIA_SMI_TIMEOUT:.0f}s"
    except OSError as exc:
        return 0, f"nvidia-smi could not run: {exc}"
    # One `GPU 0: Tesla T4 (UUID: ...)` line per GPU; MIG devices are indented beneath theirs.
    gpus = sum(1 for line in done.stdout.splitlines() if line.startswith("GPU "))
    said = " ".join((done.stdout + done.stderr).split())[:200]
    if done.returncode != 0:
        return gpus, f"nvidia-smi exited with {done.returncode}: {said or 'no output'}"
    return gpus, said if not gpus else ""


class HostSetup:
    """What `run` does before any work: wait for the GPUs, then Docker, the toolkit, the
    runner user's docker group; each step says what it found and what it does about it."""

    def __init__(self, config: dict[str, Any], user: str | None, expires_at: float) -> None:
        self.gpus = int(config.get("gpus", 0))
        self.timeout = float(config.get("gpu_timeout", GPU_TIMEOUT))
        self.docker = bool(config.get("docker", self.gpus > 0))
        self.user = user
        self.expires_at = expires_at
        # nvidia-smi is asked as often as the agent looks at anything else.
        self.poll = float(config.get("poll_seconds", 5.0))
        self._apt_updated = False

    @property
    def needed(self) -> bool:
        return self.gpus > 0 or self.docker

    def run(self) -> str | None:
        """None once the instance is ready; else why it must end."""
        try:
            if self.gpus:
                self.wait_for_gpus()
            if not self.docker:
                log("docker off: no Docker and no NVIDIA container toolkit installed")
                return None
            installed = self.ensure_docker()
            if self.gpus:
                installed = self.ensure_toolkit() or installed
                if installed:
                    self.configure_runtime()
            else:
                log("no GPU expected: no NVIDIA container toolkit")
            self.join_docker_group()
        except NotReady as exc:
            return str(exc)
        return None

    def wait_for_gpus(self) -> None:
        """Until nvidia-smi lists the promised GPUs; NotReady past the timeout or the TTL."""
        started = time.monotonic()
        deadline = started + self.timeout
        last: tuple[int, str] | None = None
        logged_at = started
        log(
            f"GPU wait: expecting {self.gpus} GPU(s) from nvidia-smi, for up to {self.timeout:.0f}s"
        )
        while True:
            seen, said = count_gpus()
            now = time.monotonic()
            waited = now - started
            if seen >= self.gpus:
                more = f" (more than the {self.gpus} promised)" if seen > self.gpus else ""
                log(f"GPU ready: nvidia-smi sees {seen} GPU(s){more} after {waited:.0f}s")
                return
            if (seen, said) != last or now - logged_at >= GPU_LOG_SECONDS:
                log(
                    f"GPU wait: {seen}/{self.gpus} GPUs after {waited:.0f}s"
                    + (f" ({said})" if said else "")
                )
                last, logged_at = (seen, said), now
            if time.time() >= self.expires_at:
                raise NotReady("ttl reached (while waiting for the GPUs)")
            if now >= deadline:
                raise NotReady(
                    f"GPU not ready: nvidia-smi saw {seen} of {self.gpus} GPU(s) within "
                    f"{self.timeout:.0f}s" + (f" ({said})" if said else "")
                )
            time.sleep(max(0.0, min(self.poll, deadline - now)))

    def ensure_docker(self) -> bool:
        """Docker where missing; whether it was installed here."""
        if _found("docker"):
            log("docker present, skipping its install")
            return False
        log("docker missing: installing docker.io")
        self._apt_install("docker.io")
        return True

    def ensure_toolkit(self) -> bool:
        """The NVIDIA container toolkit where missing, from NVIDIA's apt repository (signed by
        its key, as NVIDIA's install guide does it); whether it was installed here."""
        if _found("nvidia-ctk"):
            log("nvidia-container-toolkit present (nvidia-ctk), skipping its install")
            return False
        log("nvidia-container-toolkit missing: installing it from NVIDIA's apt repository")
        key = _output(["curl", "-fsSL", "--retry", "3", TOOLKIT_KEY_URL], "fetching NVIDIA's key")
        _call(
            ["gpg", "--batch", "--yes", "--dearmor", "-o", str(TOOLKIT_KEYRING)],
            "storing NVIDIA's key",
            stdin=key,
        )
        sources = _output(
            ["curl", "-fsSL", "--retry", "3", TOOLKIT_LIST_URL], "fetching NVIDIA's source list"
        ).decode()
        signed = sources.replace("deb https://", f"deb [signed-by={TOOLKIT_KEYRING}] https://")
        if f"signed-by={TOOLKIT_KEYRING}" not in signed:
            raise NotReady(
                "installing nvidia-container-toolkit failed: NVIDIA's source list "
                "holds no `deb https://` line"
            )
        TOOLKIT_SOURCES.write_text(signed, encoding="utf-8")
        self._apt_updated = False  # a new source: its package list is not known yet
        self._apt_install("nvidia-container-toolkit")
        return True

    def configure_runtime(self) -> None:
        """Docker's NVIDIA runtime, after either was installed here (an image that ships both
        has it configured already)."""
        log("configuring Docker's NVIDIA runtime (nvidia-ctk runtime configure), restarting it")
        _call(
            ["nvidia-ctk", "runtime", "configure", "--runtime=docker"],
            "configuring Docker's NVIDIA runtime",
        )
        _call(["systemctl", "restart", "docker"], "restarting Docker")

    def join_docker_group(self) -> None:
        if not self.user:
            log("docker ready (the task runs as root)")
            return
        log(
            f"adding {self.user} to the docker group: its jobs can use Docker, which makes "
            "them root-equivalent on this VM"
        )
        _call(["usermod", "-aG", "docker", self.user], "adding the runner user to docker")

    def _apt_install(self, package: str) -> None:
        if not _found("apt-get"):
            raise NotReady(f"{package} is missing and this image has no apt-get to install it")
        lock = ["-o", f"DPkg::Lock::Timeout={APT_LOCK_TIMEOUT}"]
        if not self._apt_updated:
            _call(["apt-get", *lock, "update", "-q"], f"installing {package} (apt-get update)")
            self._apt_updated = True
        _call(["apt-get", *lock, "install", "-y", "-q", package], f"installing {package}")


def _found(tool: str) -> bool:
    """Whether `tool` is on PATH, as `command -v` would say (without importing shutil)."""
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(folder or ".", tool)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return True
    return False


def _call(argv: list[str], what: str, stdin: bytes | None = None) -> None:
    """Run a step, its output into the instance log; NotReady saying which step failed."""
    try:
        done = subprocess.run(
            argv,
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            env={**os.environ, **APT_ENV},
            check=False,
        )
    except OSError as exc:
        raise NotReady(f"{what} failed: {argv[0]} could not run ({exc})") from None
    if done.returncode != 0:
        raise NotReady(f"{what} failed: {argv[0]} exited with {done.returncode}")


def _output(argv: list[str], what: str) -> bytes:
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, check=False)
    except OSError as exc:
        raise NotReady(f"{what} failed: {argv[0]} could not run ({exc})") from None
    if done.returncode != 0:
        raise NotReady(f"{what} failed: {argv[0]} exited with {done.returncode}")
    return done.stdout
