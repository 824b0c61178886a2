"""A Debian root file system in which a VM's startup script runs for real, as root.

`base()` builds a bookworm minbase with mmdebstrap once per machine, cached under
`~/.cache/cml-infra-tests/` (`CML_INFRA_TEST_CACHE`) in a folder named after the package list,
and reused by every later run. `Vm` boots one instance on it:

- **Network**: a namespace of its own (`NetNamespace`) with loopback up and 169.254.169.254 on
  it, the metadata address of every cloud. The test starts its fakes (GitHub, the metadata
  service, the cloud API, the runner archive) inside it with `netns.call(...)`: a thread joins
  the namespace and creates their sockets there, while they keep serving from this process. So
  the instance reaches the fakes and nothing else, and whatever its script does to the
  firewall stays in the namespace.
- **Files**: an overlay over the cached base, mounted in a mount namespace of its own: the
  boot's writes land in `vm.upper` (the base stays clean), where the test reads them.
- **Processes**: a PID namespace of its own and a chroot; PID 1 runs the startup script as a
  cloud's boot agent would (as root, from /, with a clean environment) and keeps its output in
  `/var/log/startup-script.log` and its exit status in `/var/log/startup-script.exit`. A
  sampler records every process of the namespace while it runs (argv, environment, uids).
- **What a VM image has and this one cannot**: systemd is not PID 1 here, and there is no GPU,
  Docker or NVIDIA toolkit: `systemd-run`, `systemctl`, `shutdown`, `nvidia-smi`, `docker` and
  `nvidia-ctk` are recording stubs on PATH. Each appends `{"name", "argv", "uid"}` as a JSON
  line to `/var/log/vm-stubs.jsonl`; `nvidia-smi` answers as the real one does for the GPUs
  `gpus=` gives it, after failing its first `driver_late=` calls as it does while the driver
  is still being installed.

Everything needs root, Linux namespaces and overlayfs; `unavailable()` says why it cannot run.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from tests.fakes.routes import Routes

SUITE = "bookworm"
VARIANT = "minbase"
# What the startup script, the agent and the runner double need beyond minbase, plus iproute2
# for the namespace's loopback and util-linux's runuser (Essential) for checks as the runner.
PACKAGES = ("python3", "passwd", "procps", "curl", "iptables", "iproute2", "ca-certificates")
# Bumped when the build's recipe changes, so that an old cache is not reused.
RECIPE = 1
BUILD_TIMEOUT = 900.0
METADATA_ADDRESS = "169.254.169.254"
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
STUBS = ("systemd-run", "systemctl", "shutdown", "nvidia-smi", "docker", "nvidia-ctk")
STUB_LOG = "/var/log/vm-stubs.jsonl"
STARTUP_SCRIPT = "/var/lib/cloud/instance/user-data.txt"
STARTUP_LOG = "/var/log/startup-script.log"
STARTUP_EXIT = "/var/log/startup-script.exit"
VM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
T = TypeVar("T")


def cache_root() -> Path:
    configured = os.environ.get("CML_INFRA_TEST_CACHE")
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "cml-infra-tests"


def cache_key() -> str:
    recipe = json.dumps([SUITE, VARIANT, sorted(PACKAGES), RECIPE])
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def base_path() -> Path:
    return cache_root() / f"rootfs-{SUITE}-{cache_key()}"


@cache
def unavailable() -> str | None:
    """Why a VM cannot boot here (None: it can): each requirement, tried for real."""
    if sys.platform != "linux":
        return "booting a VM's root file system needs Linux namespaces"
    if os.geteuid() != 0:
        return "booting a VM's root file system needs root (chroot, namespaces, overlay mounts)"
    for tool in ("unshare", "nsenter", "chroot", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not on PATH (util-linux, coreutils)"
    if shutil.which("mmdebstrap") is None and not base_path().is_dir():
        return (
            "mmdebstrap is not on PATH and no root file system is cached at "
            f"{base_path()} (apt-get install --no-install-recommends mmdebstrap)"
        )
    with tempfile.TemporaryDirectory(prefix="cml-infra-overlay-probe-") as probe:
        for name in ("lower", "upper", "work", "merged"):
            Path(probe, name).mkdir()
        done = subprocess.run(
            ["unshare", "--net", "--mount", "--pid", "--fork", "--", "mount", "-t", "overlay",
             "overlay", "-o", f"lowerdir={probe}/lower,upperdir={probe}/upper,"
             f"workdir={probe}/work", f"{probe}/merged"],
            capture_output=True, text=True, check=False, timeout=30,
        )  # fmt: skip
    if done.returncode != 0:
        return "new mount, PID and network namespaces with an overlay mount fail here: " + (
            done.stderr.strip() or f"exit {done.returncode}"
        )
    return None


def base() -> Path:
    """The cached root file system, built first if this machine has none (about 20 s)."""
    root = base_path()
    if root.is_dir():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    # Several test runs on one machine build it once: the others wait for the first.
    with (root.parent / f"{root.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if root.is_dir():
            return root
        partial = root.parent / f"{root.name}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        done = subprocess.run(
            ["mmdebstrap", "--quiet", f"--variant={VARIANT}", f"--include={','.join(PACKAGES)}",
             SUITE, str(partial)],
            capture_output=True, text=True, check=False, timeout=BUILD_TIMEOUT,
        )  # fmt: skip
        if done.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise RuntimeError(f"mmdebstrap failed with exit {done.returncode}:\n{tail}")
        # Renamed whole: a folder at `root` is always a complete build.
        os.rename(partial, root)
    return root


def _die_with_parent() -> None:
    """In a child before exec: SIGKILL when the test process dies, so that neither a VM nor its
    network namespace outlives a test run that was killed (it survives exec, and unshare's
    --kill-child passes it on to the VM's PID 1)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class NetNamespace:
    """A network namespace with loopback and the metadata address, held by a sleeping process
    until `close()`. `call(fn)` runs fn in a thread inside it: sockets fn creates (a fake's
    listening socket, a client's connection) belong to the namespace."""

    def __init__(self, rootfs: Path) -> None:
        # The namespace's `ip` is the root file system's: nothing is asked of the host's tools.
        setup = (
            f"ip link set lo up && ip addr add {METADATA_ADDRESS}/32 dev lo && "
            "echo ready && exec sleep infinity"
        )
        self.holder = subprocess.Popen(
            ["unshare", "--net", "--", "chroot", str(rootfs), "/bin/sh", "-c", setup],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=_die_with_parent,
        )  # fmt: skip
        assert self.holder.stdout is not None
        if self.holder.stdout.readline().strip() != "ready":
            self.holder.kill()
            _, err = self.holder.communicate()
            raise RuntimeError(f"the VM's network namespace could not be set up: {err.strip()}")
        self.path = f"/proc/{self.holder.pid}/ns/net"

    def call(self, fn: Callable[[], T]) -> T:
        result: list[T] = []
        failure: list[BaseException] = []

        def inside() -> None:
            try:
                fd = os.open(self.path, os.O_RDONLY)
                try:
                    # A network namespace is per thread: this one joins, the process stays.
                    libc = ctypes.CDLL(None, use_errno=True)
                    if libc.setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns into the VM's network")
                finally:
                    os.close(fd)
                result.append(fn())
            except BaseException as exc:  # re-raised in the caller
                failure.append(exc)

        thread = threading.Thread(target=inside, name="in-vm-netns")
        thread.start()
        thread.join()
        if failure:
            raise failure[0]
        return result[0]

    def close(self) -> None:
        if self.holder.poll() is None:
            self.holder.kill()
        self.holder.communicate()


class MetadataService(Routes):
    """A cloud's metadata service where the VM asks it: 169.254.169.254:80 (create it inside
    the VM's network namespace, with `NetNamespace.call`)."""

    address = (METADATA_ADDRESS, 80)


@dataclass(frozen=True)
class Process:
    """A process of the VM as the sampler saw it (a pid that execs is seen once per argv)."""

    pid: int
    argv: tuple[str, ...]
    environ: tuple[str, ...]
    uids: tuple[int, ...]
    gids: tuple[int, ...]
    groups: tuple[int, ...]

    @property
    def program(self) -> str:
        """The program's file name; for a script, the script's rather than its interpreter's."""
        names = [os.path.basename(arg) for arg in self.argv]
        # `#!/usr/bin/env python3` runs as `env python3 SCRIPT`, then `python3 SCRIPT`;
        # `python3 -m MODULE` is the module's.
        launchers = ("env", "python3", "python", "bash", "sh")
        for name in names:
            if name.split(".")[0] not in launchers and not name.startswith("-"):
                return name
        return names[-1] if names else ""


STUB_SOURCE = r'''#!/usr/bin/python3
"""Recording stand-in for a program of a VM image that a chroot cannot have (see
tests/fakes/rootfs.py): records its call, then answers as the real program would."""
import json, os, sys

name = os.path.basename(sys.argv[0])
with open("/var/log/vm-stubs.jsonl", "a") as log:
    log.write(json.dumps({"name": name, "argv": sys.argv[1:], "uid": os.getuid()}) + "\n")
if name != "nvidia-smi":
    sys.exit(0)
with open("/etc/vm-stubs/nvidia-smi.json") as conf:
    gpu = json.load(conf)
with open("/var/log/vm-stubs.jsonl") as log:
    calls = sum(json.loads(line)["name"] == "nvidia-smi" for line in log)
if calls <= gpu["driver_late"] or not gpu["gpus"]:
    print("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
          "Make sure that the latest NVIDIA driver is installed and running.")
    sys.exit(9)
cards = [(i, gpu["name"], "GPU-%08d-0000-0000-0000-000000000000" % i) for i in range(gpu["gpus"])]
args = sys.argv[1:]
query = next((a.split("=", 1)[1] for a in args if a.startswith("--query-gpu=")), None)
if "-L" in args or "--list-gpus" in args:
    for i, card, uuid in cards:
        print(f"GPU {i}: {card} (UUID: {uuid})")
elif query is not None:
    fields = {"index": lambda c: str(c[0]), "name": lambda c: c[1], "uuid": lambda c: c[2],
              "count": lambda c: str(len(cards)), "driver_version": lambda c: "535.183.01",
              "memory.total": lambda c: "15360 MiB"}
    header = "noheader" not in " ".join(args)
    names = [f.strip() for f in query.split(",")]
    if header:
        print(", ".join(names))
    for card in cards:
        print(", ".join(fields.get(n, lambda c: "[N/A]")(card) for n in names))
else:
    print("NVIDIA-SMI 535.183.01    Driver Version: 535.183.01    CUDA Version: 12.2")
    for i, card, _ in cards:
        print(f"|   {i}  {card}  Off |")
'''

INIT_SOURCE = f"""#!/bin/sh
# PID 1 of the booted instance: runs the startup script as a cloud's boot agent does (as root,
# from /, clean environment), keeps its exit status, then idles as init does until the end.
cd /
/bin/bash {STARTUP_SCRIPT} >{STARTUP_LOG} 2>&1
echo "$?" >{STARTUP_EXIT}
exec sleep infinity
"""


class Vm:
    """One instance booted from a startup script on the cached root file system."""

    def __init__(self, rootfs: Path, work: Path, netns: NetNamespace) -> None:
        self.rootfs = rootfs
        self.work = work
        self.netns = netns
        self.upper = work / "upper"
        for name in ("upper", "overlay-work", "merged"):
            (work / name).mkdir(parents=True)
        self.process: subprocess.Popen[bytes] | None = None
        self.pid1: int | None = None
        self._pidns = ""
        self._seen: dict[tuple[int, tuple[str, ...]], Process] = {}
        self._sampling = threading.Event()
        self._sampler: threading.Thread | None = None

    # --- before the boot: what the image holds besides the cached base ----------------------

    def put(self, path: str, content: str | bytes, mode: int = 0o644) -> None:
        """A file of the image, root's, at `path` inside it (parents as in the base)."""
        target = self._upper(path)
        self._parents(target.parent)
        target.write_bytes(content.encode() if isinstance(content, str) else content)
        target.chmod(mode)

    def install_stubs(
        self, gpus: int = 0, gpu_name: str = "Tesla T4", driver_late: int = 0
    ) -> None:
        for name in STUBS:
            self.put(f"/usr/local/sbin/{name}", STUB_SOURCE, 0o755)
        self.put("/etc/vm-stubs/nvidia-smi.json", json.dumps(
            {"gpus": gpus, "name": gpu_name, "driver_late": driver_late}))  # fmt: skip
        # Anyone's calls are recorded, the runner user's included.
        self.put(STUB_LOG, "", 0o666)

    def remove_stub(self, name: str) -> None:
        self._upper(f"/usr/local/sbin/{name}").unlink()

    def _upper(self, path: str) -> Path:
        return self.upper / path.lstrip("/")

    def _parents(self, folder: Path) -> None:
        """Folders in the upper layer with the base's owner and mode, so that the overlay
        shows them as the image has them."""
        if folder == self.upper or folder.is_dir():
            return
        self._parents(folder.parent)
        folder.mkdir()
        lower = self.rootfs / folder.relative_to(self.upper)
        mode = lower.stat().st_mode & 0o7777 if lower.is_dir() else 0o755
        folder.chmod(mode)

    # --- the boot ------------------------------------------------------------------------------

    def boot(self, script: str, prepare: str = "") -> None:
        """Start the instance: `prepare` (shell, as root) first, as the image's own setup
        (groups a package would have made), then the startup script."""
        self.put(STARTUP_SCRIPT, script, 0o600)
        self.put("/usr/local/lib/vm/prepare", f"#!/bin/sh\nset -e\n{prepare}\n", 0o755)
        self.put("/usr/local/lib/vm/init", INIT_SOURCE, 0o755)
        merged = self.work / "merged"
        mount = (
            'mount -t overlay overlay -o "lowerdir=$1,upperdir=$2,workdir=$3" "$4" && '
            'mount -t proc proc "$4/proc" && '
            'chroot "$4" /usr/bin/env -i PATH="$5" HOME=/root LANG=C.UTF-8 '
            "/usr/local/lib/vm/prepare && "
            'exec chroot "$4" /usr/bin/env -i PATH="$5" HOME=/root LANG=C.UTF-8 '
            "/bin/sh /usr/local/lib/vm/init"
        )
        self.process = subprocess.Popen(
            ["nsenter", f"--net={self.netns.path}", "--", "unshare", "--mount", "--pid",
             "--fork", "--kill-child", "--", "/bin/sh", "-c", mount, "vm", str(self.rootfs),
             str(self.upper), str(self.work / "overlay-work"), str(merged), VM_PATH],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={"PATH": os.environ.get("PATH", VM_PATH)},
            preexec_fn=_die_with_parent,
        )  # fmt: skip
        self.pid1 = self._wait_for_pid1()
        self._pidns = os.readlink(f"/proc/{self.pid1}/ns/pid")
        self._sampler = threading.Thread(target=self._sample, name="vm-sampler", daemon=True)
        self._sampler.start()

    def _wait_for_pid1(self, timeout: float = 10.0) -> int:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        ours = os.readlink("/proc/self/ns/pid")
        while time.monotonic() < deadline:
            for child in _children(self.process.pid):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{child}/ns/pid") != ours:
                        return child
            if self.process.poll() is not None:
                out = (
                    self.process.stdout.read().decode(errors="replace")
                    if self.process.stdout
                    else ""
                )
                raise RuntimeError(f"the VM did not start (exit {self.process.returncode}): {out}")
            time.sleep(0.01)
        raise RuntimeError(f"the VM's PID 1 did not appear within {timeout:g}s")

    def _sample(self) -> None:
        while not self._sampling.is_set():
            for process in self._snapshot():
                self._seen.setdefault((process.pid, process.argv), process)
            self._sampling.wait(0.01)

    def _snapshot(self) -> Iterator[Process]:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                if os.readlink(f"/proc/{entry.name}/ns/pid") != self._pidns:
                    continue
                argv = Path(f"/proc/{entry.name}/cmdline").read_bytes()
                environ = Path(f"/proc/{entry.name}/environ").read_bytes()
                status = Path(f"/proc/{entry.name}/status").read_text()
            except OSError:
                continue  # gone meanwhile
            fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
            yield Process(
                pid=int(entry.name),
                argv=tuple(a.decode(errors="replace") for a in argv.split(b"\0") if a),
                environ=tuple(e.decode(errors="replace") for e in environ.split(b"\0") if e),
                uids=tuple(int(u) for u in fields.get("Uid", "").split()),
                gids=tuple(int(g) for g in fields.get("Gid", "").split()),
                groups=tuple(int(g) for g in fields.get("Groups", "").split()),
            )

    # --- while it runs, and after ---------------------------------------------------------------

    @property
    def seen(self) -> list[Process]:
        """Every process the sampler saw in the VM, each argv of a pid once."""
        return list(self._seen.values())

    def running(self) -> list[Process]:
        return list(self._snapshot())

    def file(self, path: str) -> Path:
        """Where `path` inside the VM is on this machine: the upper layer if the boot wrote
        it, else the base."""
        written = self._upper(path)
        return (
            written if written.exists() or written.is_symlink() else self.rootfs / path.lstrip("/")
        )

    def read(self, path: str) -> str:
        target = self.file(path)
        return target.read_text(errors="replace") if target.is_file() else ""

    def stub_calls(self, name: str | None = None) -> list[dict[str, Any]]:
        calls = [json.loads(line) for line in self.read(STUB_LOG).splitlines() if line.strip()]
        return [call for call in calls if name is None or call["name"] == name]

    def startup_exit(self) -> int | None:
        text = self.read(STARTUP_EXIT).strip()
        return int(text) if text else None

    def enter(
        self, *argv: str, user: str | None = None, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the running VM (its namespaces and root), as root or `user`."""
        assert self.pid1 is not None
        command = ["runuser", "-u", user, "--", *argv] if user else list(argv)
        return subprocess.run(
            ["nsenter", f"--target={self.pid1}", "--mount", "--pid", "--net", "--root",
             "--wd", "--", "/usr/bin/env", "-i", f"PATH={VM_PATH}", *command],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def passwd(self, user: str) -> tuple[int, int] | None:
        """(uid, gid) of `user` in the VM's /etc/passwd."""
        for line in self.read("/etc/passwd").splitlines():
            fields = line.split(":")
            if fields[0] == user:
                return int(fields[2]), int(fields[3])
        return None

    def written(self) -> Iterator[Path]:
        """Every file and folder the boot wrote, as paths inside the VM's upper layer."""
        for folder, dirs, files in os.walk(self.upper):
            for name in [*dirs, *files]:
                yield Path(folder) / name

    def inside(self, path: Path) -> str:
        """The path inside the VM of a path under the upper layer."""
        return "/" + path.relative_to(self.upper).as_posix()

    def halt(self, timeout: float = 15.0) -> None:
        """End the instance as its cloud does: every process at once. Idempotent."""
        self._sampling.set()
        if self._sampler is not None:
            self._sampler.join()
        if self.process is None:
            return
        if self.process.poll() is None:
            # unshare's --kill-child takes PID 1, and the kernel then the whole namespace.
            self.process.kill()
        self.process.wait(timeout)
        deadline = time.monotonic() + timeout
        while self._pidns and any(True for _ in self._snapshot()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes of the VM outlived it by {timeout:g}s")
            time.sleep(0.05)


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found
