"""cml_infra.runner: the archive an instance installs and the agent's runner config."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import yaml

from cml_infra import runner
from cml_infra.errors import UsageError
from cml_infra.forge.github import Registration
from cml_infra.spec import RunnerSpec

VM_CLOUDS = ("aws", "gcp", "azure")
REGISTRATION = Registration("token", "AREGTOKEN", "https://github.com/octo/repo")
EXPIRES = 1_900_003_600.0  # the TTL deadline: registered an hour (the ttl) before


def spec(**changes):
    fields = {
        "name": "gpu-box",
        "cloud": "local",
        "idle_timeout": 60,
        "ttl": 3600,
        "repo": "octo/repo",
        "labels": ("gpu",),
    }
    fields.update(changes)
    return RunnerSpec(**fields)


def catalog():
    # Read straight from the file, not through runner.pinned(), to check what it loads.
    text = (Path(runner.__file__).parent / "catalog" / "runner.yaml").read_text(encoding="utf-8")
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
    assert runner.archive(spec(), cloud) == {"url": release["url"], "sha256": release["sha256"]}


@pytest.mark.parametrize("cloud", ["local", *VM_CLOUDS])
@pytest.mark.parametrize("mirror", ["https://mirror.example/x.tgz", "http://10.0.0.2/r.tar.gz"])
def test_a_mirror_keeps_the_pinned_checksum(cloud, mirror):
    release = catalog()["platforms"]["linux-x64"]
    got = runner.archive(spec(runner_archive=mirror), cloud)
    assert got == {"url": mirror, "sha256": release["sha256"]}


def test_a_local_file_on_the_local_cloud_is_checksummed(tmp_path, monkeypatch):
    data = b"a runner archive, or so it says"
    (tmp_path / "runner.tgz").write_bytes(data)
    monkeypatch.chdir(tmp_path)
    got = runner.archive(spec(runner_archive="runner.tgz"), "local")
    assert got == {
        "path": str(tmp_path / "runner.tgz"),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def test_a_missing_local_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError) as raised:
        runner.archive(spec(runner_archive=str(tmp_path / "nope.tgz")), "local")
    assert raised.value.source == "--runner-archive"
    assert "no such file" in str(raised.value)


@pytest.mark.parametrize("cloud", VM_CLOUDS)
def test_a_local_file_on_a_vm_cloud_is_a_usage_error(tmp_path, cloud):
    path = tmp_path / "runner.tgz"
    path.write_bytes(b"x")
    with pytest.raises(UsageError) as raised:
        runner.archive(spec(runner_archive=str(path)), cloud)
    assert raised.value.source == "--runner-archive"
    assert "give a URL" in str(raised.value)


def test_agent_config_on_the_local_cloud():
    config = runner.agent_config(spec(startup_timeout=120), "local", REGISTRATION, EXPIRES)
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
    assert config["archive"] == runner.archive(spec(), "local")


@pytest.mark.parametrize("cloud", VM_CLOUDS)
def test_agent_config_on_a_vm_cloud_runs_as_the_runner_user(cloud):
    config = runner.agent_config(spec(runner_group="7"), cloud, REGISTRATION, EXPIRES)
    assert config["user"] == runner.RUNNER_USER == "cml-runner"
    assert config["group"] == "7"


@pytest.mark.parametrize(
    ("cloud", "spot", "expected"),
    [
        ("aws", True, "aws"),
        ("gcp", True, "gcp"),
        ("azure", True, "azure"),
        ("aws", False, None),
        ("gcp", False, None),
        ("azure", False, None),
        ("local", True, None),
        ("local", False, None),
    ],
)
def test_preemption_only_for_spot_on_a_vm_cloud(cloud, spot, expected):
    assert (
        runner.agent_config(spec(spot=spot), cloud, REGISTRATION, EXPIRES)["preemption"] == expected
    )


@pytest.mark.parametrize("single", [True, False])
def test_ephemeral_is_single(single):
    assert (
        runner.agent_config(spec(single=single), "aws", REGISTRATION, EXPIRES)["ephemeral"]
        is single
    )


def test_the_placeholder_is_as_large_as_a_jit_config():
    assert runner.PLACEHOLDER.kind == "jit"
    assert len(runner.PLACEHOLDER.secret) == 4096
