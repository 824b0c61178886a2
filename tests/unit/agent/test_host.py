"""cml_infra.agent.host: the GPU wait and the Docker / NVIDIA container toolkit decisions, with
fake tools on PATH (`nvidia-smi` that lists no GPU for a while, then some, or never; `docker`,
`nvidia-ctk`, `apt-get`, ... present or not, recording their arguments), and the agent running
them before its task or its runner."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from cml_infra.agent import host
from cml_infra.agent.host import HostSetup, count_gpus
from cml_infra.agent.loop import STATUS_FILE, Agent
from tests.unit.agent.test_loop import _run_agent, _self_destroy_by_sigterm, config

DRIVER_MISSING = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
KEY = "NVIDIA-KEY-BYTES"
SOURCE = "deb https://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH) /"


class Tools:
    """A bin folder of fake tools, each a Python script that records `name args...` as a line
    of `calls`, then does what its body says. PATH holds nothing else."""

    def __init__(self, folder: Path) -> None:
        self.bin = folder / "bin"
        self.bin.mkdir()
        self.record = folder / "calls"
        self.count = folder / "nvidia-smi-count"

    def source(self, name: str, body: str = "", code: int = 0) -> str:
        return (
            f"#!{sys.executable}\nimport os, sys\n"
            f"with open({str(self.record)!r}, 'a') as out:\n"
            f"    out.write(' '.join([{name!r}, *sys.argv[1:]]) + '\\n')\n"
            f"{body}\nsys.exit({code})\n"
        )

    def tool(self, name: str, body: str = "", code: int = 0) -> None:
        path = self.bin / name
        path.write_text(self.source(name, body, code))
        path.chmod(0o755)

    def nvidia_smi(self, gpus: int, fails: int = 0) -> None:
        """Fails as without a driver for its first `fails` calls, then lists `gpus` GPUs."""
        self.tool(
            "nvidia-smi",
            f"count = {str(self.count)!r}\n"
            "looks = int(open(count).read()) + 1 if os.path.exists(count) else 1\n"
            "open(count, 'w').write(str(looks))\n"
            f"if looks <= {fails}:\n"
            f"    print({DRIVER_MISSING!r})\n"
            "    sys.exit(9)\n"
            f"for i in range({gpus}):\n"
            "    print(f'GPU {i}: Tesla T4 (UUID: GPU-0000000{i})')",
        )

    def nvidia_smi_calls(self) -> int:
        return int(self.count.read_text()) if self.count.exists() else 0

    def installers(self, apt_code: int = 0) -> None:
        """apt-get, curl, gpg, systemctl and usermod, as on a Debian image; apt-get's install
        puts a fake of the package's tool on PATH."""
        installs = {
            package: (str(self.bin / tool), self.source(tool))
            for package, tool in (
                ("docker.io", "docker"),
                ("nvidia-container-toolkit", "nvidia-ctk"),
            )
        }
        self.tool(
            "apt-get",
            f"for package, (path, text) in {installs!r}.items():\n"
            f"    if {apt_code} == 0 and 'install' in sys.argv and package in sys.argv:\n"
            "        open(path, 'w').write(text)\n"
            "        os.chmod(path, 0o755)",
            code=apt_code,
        )
        self.tool("curl", f"print({KEY!r} if 'gpgkey' in sys.argv[-1] else {SOURCE!r})")
        # gpg --batch --yes --dearmor -o PATH: what it was given, into PATH.
        self.tool("gpg", "open(sys.argv[sys.argv.index('-o') + 1], 'w').write(sys.stdin.read())")
        for name in ("systemctl", "usermod"):
            self.tool(name)

    def calls(self) -> list[str]:
        return self.record.read_text().splitlines() if self.record.exists() else []


@pytest.fixture
def tools(tmp_path, monkeypatch):
    found = Tools(tmp_path)
    monkeypatch.setenv("PATH", str(found.bin))
    monkeypatch.setattr(host, "TOOLKIT_KEYRING", tmp_path / "keyring.gpg")
    monkeypatch.setattr(host, "TOOLKIT_SOURCES", tmp_path / "nvidia-container-toolkit.list")
    return found


def host_setup(gpus=1, timeout=5.0, user="cml-runner", expires_in=3600.0, **more) -> HostSetup:
    values = {"gpus": gpus, "gpu_timeout": timeout, "poll_seconds": 0.01, **more}
    return HostSetup(values, user, time.time() + expires_in)


# --- count_gpus -----------------------------------------------------------------------------


def test_count_gpus_reads_nvidia_smi_list(tools):
    tools.nvidia_smi(gpus=2)
    assert count_gpus() == (2, "")


def test_count_gpus_without_a_driver_says_what_nvidia_smi_said(tools):
    tools.nvidia_smi(gpus=1, fails=1)
    seen, said = count_gpus()
    assert seen == 0
    assert said == f"nvidia-smi exited with 9: {DRIVER_MISSING}"


def test_count_gpus_without_nvidia_smi(tools):
    assert count_gpus() == (0, "nvidia-smi is not installed (yet)")


def test_count_gpus_of_a_hung_nvidia_smi_is_bounded(tools, monkeypatch):
    monkeypatch.setattr(host, "NVIDIA_SMI_TIMEOUT", 0.2)
    tools.tool("nvidia-smi", "while True:\n    pass")
    started = time.monotonic()
    assert count_gpus() == (0, "nvidia-smi did not answer within 0s")
    assert time.monotonic() - started < 5


# --- the GPU wait ---------------------------------------------------------------------------


def test_gpu_wait_until_the_driver_lists_them(tools, quiet_log):
    tools.nvidia_smi(gpus=1, fails=3)
    assert host_setup(docker=False).run() is None
    assert tools.nvidia_smi_calls() == 4
    assert quiet_log[0] == "GPU wait: expecting 1 GPU(s) from nvidia-smi, for up to 5s"
    # What nvidia-smi says is logged when it changes, not at every look.
    waiting = [line for line in quiet_log if line.startswith("GPU wait: 0/1 GPUs after")]
    assert len(waiting) == 1 and DRIVER_MISSING in waiting[0]
    assert any(line.startswith("GPU ready: nvidia-smi sees 1 GPU(s) after") for line in quiet_log)
    assert quiet_log[-1] == "docker off: no Docker and no NVIDIA container toolkit installed"


def test_gpu_wait_logs_again_while_nothing_changes(tools, quiet_log, monkeypatch):
    monkeypatch.setattr(host, "GPU_LOG_SECONDS", 0.0)
    tools.nvidia_smi(gpus=1, fails=3)
    assert host_setup(docker=False).run() is None
    assert len([line for line in quiet_log if line.startswith("GPU wait: 0/1")]) == 3


def test_a_gpu_that_never_appears_ends_within_the_timeout(tools, quiet_log):
    tools.nvidia_smi(gpus=1, fails=10**6)
    started = time.monotonic()
    reason = host_setup(timeout=1.0).run()
    assert 1.0 <= time.monotonic() - started < 5
    assert reason == (
        f"GPU not ready: nvidia-smi saw 0 of 1 GPU(s) within 1s (nvidia-smi exited with 9: "
        f"{DRIVER_MISSING})"
    )
    assert tools.calls() == ["nvidia-smi -L"] * tools.nvidia_smi_calls()
    assert not any("docker" in line for line in quiet_log)


def test_fewer_gpus_than_promised_is_not_ready(tools, quiet_log):
    tools.nvidia_smi(gpus=1)
    reason = host_setup(gpus=2, timeout=0.3).run()
    assert reason == "GPU not ready: nvidia-smi saw 1 of 2 GPU(s) within 0s"
    assert any(line.startswith("GPU wait: 1/2 GPUs after") for line in quiet_log)


def test_more_gpus_than_promised_is_ready_and_said(tools, quiet_log):
    tools.nvidia_smi(gpus=4)
    assert host_setup(gpus=2, docker=False).run() is None
    assert any("sees 4 GPU(s) (more than the 2 promised)" in line for line in quiet_log)


def test_the_ttl_ends_the_gpu_wait(tools, quiet_log):
    reason = host_setup(timeout=600, expires_in=-1).run()
    assert reason == "ttl reached (while waiting for the GPUs)"
    assert quiet_log[-1] == "GPU wait: 0/1 GPUs after 0s (nvidia-smi is not installed (yet))"


# --- Docker and the NVIDIA container toolkit ------------------------------------------------


def test_docker_is_on_by_default_with_gpus_only():
    assert host_setup(gpus=1).docker is True
    assert host_setup(gpus=0).docker is False
    assert host_setup(gpus=0, docker=True).docker is True
    assert host_setup(gpus=2, docker=False).docker is False
    assert host_setup(gpus=0).needed is False
    assert HostSetup({}, None, 0).needed is False


def test_present_docker_and_toolkit_are_left_alone(tools, quiet_log):
    tools.nvidia_smi(gpus=1)
    tools.installers()
    tools.tool("docker")
    tools.tool("nvidia-ctk")
    assert host_setup().run() is None
    assert tools.calls() == ["nvidia-smi -L", "usermod -aG docker cml-runner"]
    assert "docker present, skipping its install" in quiet_log
    assert "nvidia-container-toolkit present (nvidia-ctk), skipping its install" in quiet_log
    assert any("adding cml-runner to the docker group" in line for line in quiet_log)


def test_missing_docker_is_installed_and_given_the_nvidia_runtime(tools, quiet_log):
    tools.nvidia_smi(gpus=1)
    tools.installers()
    tools.tool("nvidia-ctk")
    assert host_setup().run() is None
    lock = f"-o DPkg::Lock::Timeout={host.APT_LOCK_TIMEOUT}"
    assert tools.calls() == [
        "nvidia-smi -L",
        f"apt-get {lock} update -q",
        f"apt-get {lock} install -y -q docker.io",
        "nvidia-ctk runtime configure --runtime=docker",
        "systemctl restart docker",
        "usermod -aG docker cml-runner",
    ]
    assert "docker missing: installing docker.io" in quiet_log


def test_missing_toolkit_is_installed_from_nvidias_signed_repository(tools, quiet_log):
    tools.nvidia_smi(gpus=1)
    tools.installers()
    tools.tool("docker")
    assert host_setup().run() is None
    lock = f"-o DPkg::Lock::Timeout={host.APT_LOCK_TIMEOUT}"
    assert tools.calls() == [
        "nvidia-smi -L",
        f"curl -fsSL --retry 3 {host.TOOLKIT_KEY_URL}",
        f"gpg --batch --yes --dearmor -o {host.TOOLKIT_KEYRING}",
        f"curl -fsSL --retry 3 {host.TOOLKIT_LIST_URL}",
        f"apt-get {lock} update -q",
        f"apt-get {lock} install -y -q nvidia-container-toolkit",
        "nvidia-ctk runtime configure --runtime=docker",
        "systemctl restart docker",
        "usermod -aG docker cml-runner",
    ]
    assert host.TOOLKIT_KEYRING.read_text() == KEY + "\n"
    assert host.TOOLKIT_SOURCES.read_text() == (
        f"deb [signed-by={host.TOOLKIT_KEYRING}] "
        "https://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH) /\n"
    )
    assert any("nvidia-container-toolkit missing" in line for line in quiet_log)


def test_both_missing_update_apt_again_for_nvidias_repository(tools, quiet_log):
    tools.nvidia_smi(gpus=1)
    tools.installers()
    assert host_setup().run() is None
    apt = [call for call in tools.calls() if call.startswith("apt-get")]
    assert [call.split()[3:] for call in apt] == [
        ["update", "-q"],
        ["install", "-y", "-q", "docker.io"],
        ["update", "-q"],
        ["install", "-y", "-q", "nvidia-container-toolkit"],
    ]


def test_docker_off_installs_nothing_and_leaves_the_docker_group(tools, quiet_log):
    tools.nvidia_smi(gpus=1)
    tools.installers()
    assert host_setup(docker=False).run() is None
    assert tools.calls() == ["nvidia-smi -L"]


def test_docker_without_gpus_skips_the_toolkit(tools, quiet_log):
    tools.installers()
    tools.tool("docker")
    assert host_setup(gpus=0, docker=True).run() is None
    assert tools.calls() == ["usermod -aG docker cml-runner"]
    assert "no GPU expected: no NVIDIA container toolkit" in quiet_log


def test_a_task_instance_has_no_user_to_add(tools, quiet_log):
    tools.nvidia_smi(gpus=1)
    tools.installers()
    tools.tool("docker")
    tools.tool("nvidia-ctk")
    assert host_setup(user=None).run() is None
    assert tools.calls() == ["nvidia-smi -L"]
    assert quiet_log[-1] == "docker ready (the task runs as root)"


def test_a_failing_install_is_the_reason_to_end(tools, quiet_log):
    tools.nvidia_smi(gpus=1)
    tools.installers(apt_code=100)
    assert (
        host_setup().run()
        == "installing docker.io (apt-get update) failed: apt-get exited with 100"
    )


def test_an_image_without_apt_get_cannot_get_docker(tools, quiet_log):
    tools.nvidia_smi(gpus=1)
    assert host_setup().run() == "docker.io is missing and this image has no apt-get to install it"


def test_a_source_list_without_a_deb_line_is_refused(tools, quiet_log):
    tools.nvidia_smi(gpus=1)
    tools.installers()
    tools.tool("docker")
    tools.tool("curl", "print('key' if 'gpgkey' in sys.argv[-1] else '<html>moved</html>')")
    assert "holds no `deb https://` line" in host_setup().run()
    assert not host.TOOLKIT_SOURCES.exists()


# --- the agent runs them first, in task mode and runner mode --------------------------------


def _agent_env(tools: Tools, monkeypatch) -> None:
    # The agent and its task need a shell; nvidia-smi is the fake one, found first.
    monkeypatch.setenv("PATH", f"{tools.bin}:/usr/bin:/bin")


def test_agent_readies_gpus_and_docker_before_its_task(tools, tmp_path, monkeypatch):
    _agent_env(tools, monkeypatch)
    tools.nvidia_smi(gpus=1, fails=3)
    tools.tool("docker")
    tools.tool("nvidia-ctk")
    record = tmp_path / "reason.txt"
    cfg = config(
        single=True,
        command=["sh", "-c", f'read -r n <"{tools.count}"; echo "task after $n looks"'],
        self_destroy=_self_destroy_by_sigterm(record),
        gpus=1,
        gpu_timeout=30,
    )
    _, done = _run_agent(tmp_path, cfg)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "task after 4 looks" in done.stdout
    steps = ["GPU ready", "docker present", "nvidia-container-toolkit present", "task: sh -c"]
    at = [done.stdout.index(step) for step in steps]
    assert at == sorted(at), done.stdout
    assert record.read_text().strip() == "single task done"


def test_agent_ends_a_task_instance_whose_gpus_never_come(tools, tmp_path, monkeypatch):
    _agent_env(tools, monkeypatch)
    tools.nvidia_smi(gpus=1, fails=10**6)
    record = tmp_path / "reason.txt"
    marker = tmp_path / "task-ran"
    cfg = config(
        command=["touch", str(marker)],
        self_destroy=_self_destroy_by_sigterm(record),
        gpus=1,
        gpu_timeout=1,
    )
    _, done = _run_agent(tmp_path, cfg)
    assert done.returncode == 0, done.stdout + done.stderr
    reason = (
        "GPU not ready: nvidia-smi saw 0 of 1 GPU(s) within 1s "
        f"(nvidia-smi exited with 9: {DRIVER_MISSING})"
    )
    assert record.read_text().strip() == reason
    assert f"ending the instance: {reason}" in done.stdout
    assert not marker.exists(), "the task ran without its GPU"


def test_agent_starts_its_runner_only_once_the_gpus_are_there(tools, tmp_path, monkeypatch):
    _agent_env(tools, monkeypatch)
    tools.nvidia_smi(gpus=2, fails=2)
    record = tmp_path / "reason.txt"
    runner = {
        "kind": "github",
        "archive": {"path": str(tmp_path / "no-archive.tar.gz"), "sha256": "0" * 64},
        "registration": {"kind": "jit", "secret": "ENCODED", "url": "https://github.com/o/r"},
        "name": "box-1",
        "labels": ["gpu"],
    }
    cfg = config(self_destroy=_self_destroy_by_sigterm(record), runner=runner, gpus=2,
                 gpu_timeout=30, docker=False)  # fmt: skip
    _, done = _run_agent(tmp_path, cfg)
    assert done.returncode == 0, done.stdout + done.stderr
    # The (missing) archive is looked at only after the GPUs: installing is the next step.
    assert done.stdout.index("GPU ready") < done.stdout.index("runner could not start")
    assert "no-archive.tar.gz" in done.stdout
    assert tools.nvidia_smi_calls() == 3


@pytest.mark.usefixtures("restore_sigterm")
def test_the_status_says_starting_while_the_gpus_are_awaited(tmp_path, quiet_log, monkeypatch):
    seen = []

    def wait(self):
        seen.append(json.loads((tmp_path / STATUS_FILE).read_text())["state"])
        return "GPU not ready: test"

    monkeypatch.setattr(HostSetup, "run", wait)
    agent = Agent(config(gpus=1, self_destroy=["true"]), tmp_path)
    monkeypatch.setattr(Agent, "_end_instance", lambda self, reason: seen.append(reason) or 0)
    assert agent.run() == 0
    assert seen == ["starting", "GPU not ready: test"]
