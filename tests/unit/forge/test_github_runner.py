"""cml_infra.forge.github_runner: the archive an instance installs and the agent's runner config."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import yaml

from cml_infra import clouds
from cml_infra.errors import UsageError
from cml_infra.forge import github_runner as runner
from cml_infra.forge.base import Registration, registration_labels
from cml_infra.forge.github import GitHubForge
from cml_infra.spec import ForgeTarget, RunnerSpec
from cml_infra.state import StateDir

VM_CLOUDS = ("aws", "gcp", "azure")
REGISTRATION = Registration("token", "AREGTOKEN", "https://github.com/octo/repo")
SINCE = 1_900_000_000.0  # when the runner was registered


def spec(**changes):
    fields = {
        "name": "gpu-box",
        "cloud": "local",
        "idle_timeout": 60,
        "ttl": 3600,
        "forge": ForgeTarget(repo="octo/repo"),
        "labels": ("gpu",),
    }
    fields.update(changes)
    return RunnerSpec(**fields)


def boot(cloud, runner_spec=None):
    """The cloud's Boot for the spec (the local cloud's sandboxes live under a state dir that
    is never created)."""
    return clouds.get(cloud, StateDir(Path("/nonexistent/state"))).boot(runner_spec or spec())


def agent_config(runner_spec, cloud):
    labels = registration_labels(runner_spec, cloud, SINCE)
    return runner.agent_config(runner_spec, REGISTRATION, labels, boot(cloud, runner_spec))


def catalog():
    # Read straight from the file, not through runner.pinned(), to check what it loads.
    text = (Path(runner.__file__).parent / "github_runner.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def test_pinned_release_is_the_catalog_entry():
    data = catalog()
    release = data["platforms"]["linux-x64"]
    version = data["version"]
    assert re.fullmatch(r"[0-9a-f]{64}", release["sha256"])
    assert release["url"] == (
        f"https://github.com/actions/runner/releases/download/v{version}/"
        f"actions-runner-linux-x64-{version}.tar.gz"
    )
    assert runner.pinned() == data


@pytest.mark.parametrize("cloud", ["local", *VM_CLOUDS])
def test_default_archive_is_the_pinned_release(cloud):
    release = catalog()["platforms"]["linux-x64"]
    assert runner.archive(spec(), boot(cloud)) == {
        "url": release["url"],
        "sha256": release["sha256"],
    }


@pytest.mark.parametrize("cloud", ["local", *VM_CLOUDS])
@pytest.mark.parametrize("mirror", ["https://mirror.example/x.tgz", "http://10.0.0.2/r.tar.gz"])
def test_a_mirror_keeps_the_pinned_checksum(cloud, mirror):
    release = catalog()["platforms"]["linux-x64"]
    got = runner.archive(spec(runner_archive=mirror), boot(cloud))
    assert got == {"url": mirror, "sha256": release["sha256"]}


def test_a_local_file_on_the_local_cloud_is_checksummed(tmp_path, monkeypatch):
    data = b"a runner archive, or so it says"
    (tmp_path / "runner.tgz").write_bytes(data)
    monkeypatch.chdir(tmp_path)
    got = runner.archive(spec(runner_archive="runner.tgz"), boot("local"))
    assert got == {
        "path": str(tmp_path / "runner.tgz"),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def test_a_missing_local_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError) as raised:
        runner.archive(spec(runner_archive=str(tmp_path / "nope.tgz")), boot("local"))
    assert raised.value.source == "--runner-archive"
    assert "no such file" in str(raised.value)


@pytest.mark.parametrize("cloud", VM_CLOUDS)
def test_a_local_file_on_a_vm_cloud_is_a_usage_error(tmp_path, cloud):
    path = tmp_path / "runner.tgz"
    path.write_bytes(b"x")
    with pytest.raises(UsageError) as raised:
        runner.archive(spec(runner_archive=str(path)), boot(cloud))
    assert raised.value.source == "--runner-archive"
    assert "give a URL" in str(raised.value)


def test_agent_config_on_the_local_cloud():
    config = agent_config(spec(startup_timeout=120), "local")
    assert config["kind"] == "github"
    assert config["user"] is None
    assert config["preemption"] is None
    assert config["registration"] == {
        "kind": "token",
        "secret": "AREGTOKEN",
        "url": "https://github.com/octo/repo",
    }
    assert config["name"] == "gpu-box"
    assert config["labels"] == [
        "gpu", "cml-infra-gpu-box", "cml-infra-on-local", "cml-infra-since-1900000000",
    ]  # fmt: skip
    assert config["ephemeral"] is False
    assert config["group"] is None
    assert config["startup_timeout"] == 120
    assert config["archive"] == runner.archive(spec(), boot("local"))


@pytest.mark.parametrize("cloud", VM_CLOUDS)
def test_agent_config_on_a_vm_cloud_runs_as_the_runner_user(cloud):
    config = agent_config(spec(forge=ForgeTarget(org="octo", group="7")), cloud)
    assert config["user"] == boot(cloud).runner_user == "cml-runner"
    assert config["group"] == "7"


@pytest.mark.parametrize(
    ("cloud", "spot", "expected"),
    [
        ("aws", True, "aws-spot-notice"),
        ("gcp", True, "gcp-preempted"),
        ("azure", True, "azure-preempt-event"),
        ("aws", False, None),
        ("gcp", False, None),
        ("azure", False, None),
        # The local cloud's spot rehearsal watches a metadata service of the user's choosing.
        ("local", True, "aws-spot-notice"),
        ("local", False, None),
    ],
)
def test_preemption_only_for_spot_on_a_vm_cloud(cloud, spot, expected):
    assert agent_config(spec(spot=spot), cloud)["preemption"] == expected


@pytest.mark.parametrize("single", [True, False])
def test_ephemeral_is_single(single):
    assert agent_config(spec(single=single), "aws")["ephemeral"] is single


def test_the_placeholder_is_as_large_as_a_jit_config():
    assert runner.PLACEHOLDER.kind == "jit"
    assert len(runner.PLACEHOLDER.secret) == 4096
    assert GitHubForge.placeholder() is runner.PLACEHOLDER


def test_the_forge_hands_out_this_config():
    runner_spec = spec()
    labels = registration_labels(runner_spec, "gcp", SINCE)
    made = GitHubForge.agent_runner(runner_spec, REGISTRATION, labels, boot("gcp"))
    assert made == agent_config(runner_spec, "gcp")
