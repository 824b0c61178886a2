"""cml_infra.forge and forge/base.py: the forge registry, target checks, what our labels say
about a runner, and the Forge protocol's shared behaviour on a tiny in-test forge."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from cml_infra import forge
from cml_infra.clouds import tags
from cml_infra.errors import UsageError
from cml_infra.forge.base import Forge, Registration, RunnerInfo, registration_labels, step_outputs
from cml_infra.forge.github import GitHubForge
from cml_infra.spec import ForgeTarget, RunnerSpec

TARGET = ForgeTarget(kind="github", repo="octo/repo")

# --- the registry ----------------------------------------------------------------------------


def test_the_registry_finds_github():
    registry = forge.classes()
    assert registry["github"] is GitHubForge
    assert GitHubForge.name == "github"
    assert list(registry) == sorted(registry)


def test_for_target_makes_the_forge_of_the_target():
    made = forge.for_target(TARGET, "a-token")
    assert isinstance(made, GitHubForge)
    assert made.target == TARGET


@pytest.mark.parametrize("call", [forge.check, lambda target: forge.for_target(target, "tok")])
def test_an_unknown_forge_kind_is_refused_listing_the_valid_ones(call):
    with pytest.raises(UsageError) as raised:
        call(ForgeTarget(kind="gitlab", repo="octo/repo"))
    assert raised.value.exit_code == 2
    message = str(raised.value)
    assert "'gitlab'" in message
    assert f"valid: {', '.join(forge.classes())}" in message
    assert "github" in message


@pytest.mark.parametrize(
    ("target", "flag"),
    [
        (ForgeTarget(repo="no-slash"), "--repo"),
        (ForgeTarget(repo="octo/repo/extra"), "--repo"),
        (ForgeTarget(repo="-octo/repo"), "--repo"),
        (ForgeTarget(org="octo/repo"), "--org"),
        (ForgeTarget(org="octo_corp"), "--org"),
        (ForgeTarget(org="x" * 40), "--org"),
        (ForgeTarget(repo="octo/repo", api_url="api.github.com"), "--github-url"),
        (ForgeTarget(repo="octo/repo", api_url="https://ghe example/api"), "--github-url"),
        (ForgeTarget(repo="octo/repo", api_url="file:///etc/passwd"), "--github-url"),
    ],
)
def test_check_refuses_bad_names_naming_the_flag(target, flag):
    with pytest.raises(UsageError) as raised:
        forge.check(target)
    assert raised.value.source == flag
    assert str(raised.value).startswith(f"{flag}: ")


@pytest.mark.parametrize(
    "target",
    [
        ForgeTarget(repo="octo/repo"),
        ForgeTarget(repo="Octo-1/my.repo_name"),
        ForgeTarget(org="octo", group="gpu-pool"),
        ForgeTarget(org="octo", api_url="https://ghe.example/api/v3"),
        ForgeTarget(repo="octo/repo", api_url="http://127.0.0.1:8080"),
    ],
)
def test_check_accepts_good_names(target):
    forge.check(target)


def test_for_target_checks_the_names_before_the_token():
    with pytest.raises(UsageError) as raised:
        forge.for_target(ForgeTarget(repo="no-slash"), None)
    assert raised.value.source == "--repo"
    with pytest.raises(UsageError) as raised:
        forge.for_target(TARGET, None)
    assert raised.value.source == "--token"


# --- RunnerInfo: what our labels say -----------------------------------------------------------


def test_runner_info_parses_our_labels():
    runner = RunnerInfo(
        id=1,
        name="gpu-1",
        online=True,
        labels=(
            "self-hosted",
            "gpu",
            "cml-infra-gpu-1",
            "cml-infra-on-gcp",
            "cml-infra-since-1700000000",
        ),
    )
    assert runner.ours == ("gpu-1",)
    assert runner.clouds == ("gcp",)
    assert runner.registered_at == datetime(2023, 11, 14, 22, 13, 20, tzinfo=timezone.utc)


def test_runner_info_of_a_runner_not_ours():
    runner = RunnerInfo(id=2, name="theirs", online=False, labels=("self-hosted", "linux"))
    assert runner.ours == ()
    assert runner.clouds == ()
    assert runner.registered_at is None


@pytest.mark.parametrize(
    "label",
    [
        "cml-infra-since-",
        "cml-infra-since-soon",
        "cml-infra-since-17e8",
        "cml-infra-since-" + "9" * 13,
    ],
)
def test_a_malformed_since_label_is_no_registration_time(label):
    assert RunnerInfo(id=3, name="x", online=True, labels=(label,)).registered_at is None


def test_registration_labels_add_where_and_since():
    spec = RunnerSpec(
        name="gpu-1", cloud="aws", idle_timeout=60, ttl=3600, labels=("gpu", "t4"), forge=TARGET
    )
    labels = registration_labels(spec, "aws", 1_700_000_000.9)
    assert labels == (
        "gpu",
        "t4",
        "cml-infra-gpu-1",
        "cml-infra-on-aws",
        "cml-infra-since-1700000000",
    )
    parsed = RunnerInfo(id=1, name="gpu-1", online=True, labels=labels)
    assert (parsed.ours, parsed.clouds) == (("gpu-1",), ("aws",))
    assert parsed.registered_at == datetime.fromtimestamp(1_700_000_000, timezone.utc)


# --- the Forge protocol's shared behaviour, on a forge of the test's own -----------------------


class ListedForge(Forge):
    """A forge that lists the runners it is given and removes them when asked."""

    name = "listed"
    URL_FLAG = "--listed-url"

    def __init__(self, target: ForgeTarget, runners: list[RunnerInfo]) -> None:
        super().__init__(target, "unused-token")
        self.listed = list(runners)
        self.removed: list[int] = []

    @classmethod
    def check_target(cls, target):
        pass

    def register(self, name, labels, single):
        return Registration("token", "secret", "https://forge.example/octo/repo")

    def runners(self):
        return list(self.listed)

    def deregister_id(self, runner_id):
        self.removed.append(runner_id)
        before = len(self.listed)
        self.listed = [runner for runner in self.listed if runner.id != runner_id]
        return len(self.listed) < before

    def wait_online(self, name, timeout, sleep=None):
        raise NotImplementedError

    def latest_runner(self, platform):
        raise NotImplementedError

    def runner_release(self, platform, version):
        raise NotImplementedError

    @classmethod
    def agent_runner(cls, spec, registration, labels, boot, release=None):
        return {"kind": cls.name}

    @classmethod
    def placeholder(cls):
        return Registration("token", "placeholder", "https://forge.example/placeholder")


def runner(number, name, labels, *, online=True, busy=False, ephemeral=False):
    return RunnerInfo(number, name, online, busy, ephemeral, tuple(labels))


def listed(*runners):
    return ListedForge(TARGET, list(runners))


def test_idle_runner_skips_busy_offline_and_ephemeral_runners():
    found = listed(
        runner(1, "a-offline", ["gpu"], online=False),
        runner(2, "b-busy", ["gpu"], busy=True),
        runner(3, "c-single", ["gpu"], ephemeral=True),
    )
    assert found.idle_runner(["gpu"]) is None
    found.listed.append(runner(4, "d-idle", ["gpu"]))
    assert found.idle_runner(["gpu"]).id == 4


def test_idle_runner_needs_every_label_in_any_case():
    found = listed(runner(1, "cpu", ["gpu"]), runner(2, "t4", ["self-hosted", "GPU", "T4"]))
    assert found.idle_runner(["gpu", "t4"]).name == "t4"
    assert found.idle_runner(["Gpu", "t4"]).name == "t4"
    assert found.idle_runner(["gpu", "a100"]) is None


def test_idle_runner_is_the_first_by_name():
    found = listed(
        runner(1, "zeta", ["gpu"]), runner(2, "alpha", ["gpu"]), runner(3, "mu", ["gpu"])
    )
    assert found.idle_runner(["gpu"]).name == "alpha"
    assert found.idle_runner([]).name == "alpha", "no labels asked for: any idle runner fits"


def test_runner_and_deregister_go_by_name():
    found = listed(runner(7, "gpu-1", ["gpu"]), runner(8, "gpu-2", ["gpu"]))
    assert found.runner("gpu-2").id == 8
    assert found.runner("gpu-3") is None
    assert found.deregister("gpu-2") is True
    assert found.removed == [8]
    assert found.deregister("gpu-2") is False, "already gone: nothing to remove"
    assert found.removed == [8]


def test_last_jobs_is_empty_where_a_forge_cannot_list_them():
    assert listed().last_jobs() == {}


def test_describe_is_the_target_without_empty_fields():
    target = ForgeTarget(org="octo", group="3")
    assert ListedForge(target, []).describe() == {"kind": "listed", "org": "octo", "group": "3"}


def test_owns_instances_tagged_with_its_kind_and_scope():
    found = listed()
    mine = {tags.FORGE: "listed", tags.SCOPE: TARGET.scope_tag}
    assert found.owns(mine)
    assert not found.owns({**mine, tags.SCOPE: ForgeTarget(repo="octo/other").scope_tag})
    assert not found.owns({**mine, tags.FORGE: "github"})
    assert not found.owns({})


def test_step_outputs_go_to_every_ci_environment(monkeypatch):
    seen = []
    monkeypatch.setattr(
        forge, "ci_environments", lambda: [lambda outputs, summary: seen.append((outputs, summary))]
    )
    step_outputs({"name": "gpu-1"}, "| row |\n")
    step_outputs({"name": "gpu-2"})
    assert seen == [({"name": "gpu-1"}, "| row |\n"), ({"name": "gpu-2"}, None)]
