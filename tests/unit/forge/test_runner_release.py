"""Which actions/runner release an instance installs: looked up through GitHub at `up` (the
latest, or --runner-version's), with the SHA-256 GitHub publishes in the release notes; the
packaged pin as the floor and the offline fallback; GitHub Enterprise Server's own runner.

GitHub is the loopback FakeGitHub, whose traffic is checked against GitHub's OpenAPI description
(the releases and runner-applications operations of tests/data/github-subset.json)."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import socket
from pathlib import Path

import pytest
import requests
import yaml

from cml_infra import clouds
from cml_infra.clouds.base import Boot
from cml_infra.errors import CmlInfraError, UsageError
from cml_infra.forge import github_runner as runner
from cml_infra.forge.base import Registration, RunnerRelease
from cml_infra.forge.github import GitHubForge, enterprise_server
from cml_infra.spec import ForgeTarget, RunnerSpec, parse_runner_version
from cml_infra.state import StateDir
from tests.fakes.github import FakeGitHub

TOKEN = "ghp_release_CANARY_789"
ARCHIVE = b"an actions/runner archive, as far as these tests care"
ARCHIVE_SHA = hashlib.sha256(ARCHIVE).hexdigest()
LOCAL = Boot(self_destroy=("true",), runner_user=None, reads_launcher_files=True, arch="x86_64")

pytestmark = pytest.mark.usefixtures("no_proxy")


@pytest.fixture
def gh():
    with FakeGitHub(TOKEN) as fake:
        yield fake
        assert fake.violations == [], fake.violations


@pytest.fixture
def ghes():
    with FakeGitHub(TOKEN, api_prefix="/api/v3") as fake:
        yield fake
        assert fake.violations == [], fake.violations


def forge(api_url: str) -> GitHubForge:
    return GitHubForge(ForgeTarget(repo="octo/repo", api_url=api_url), TOKEN)


def spec(api_url: str | None = None, **changes) -> RunnerSpec:
    fields = {
        "name": "rel-1",
        "cloud": "local",
        "idle_timeout": 60,
        "ttl": 3600,
        "forge": ForgeTarget(repo="octo/repo", api_url=api_url),
    }
    fields.update(changes)
    return RunnerSpec(**fields)


def api_paths(gh: FakeGitHub) -> list[str]:
    return [path for _, path, _ in gh.requests if not path.startswith("/_fake/")]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the packaged release: the floor ---------------------------------------------------------


def test_the_packaged_release_is_a_real_one_at_least_githubs_minimum():
    text = (Path(runner.__file__).parent / "github_runner.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    version = data["version"]
    assert runner.version_key(version) >= runner.version_key(runner.MINIMUM_VERSION)
    assert set(data["platforms"]) == set(runner.PLATFORMS.values())
    for platform, build in data["platforms"].items():
        assert re.fullmatch(r"[0-9a-f]{64}", build["sha256"]), platform
        assert build["url"] == (
            f"https://github.com/actions/runner/releases/download/v{version}/"
            f"actions-runner-{platform}-{version}.tar.gz"
        )
    assert data["platforms"]["linux-x64"]["sha256"] != data["platforms"]["linux-arm64"]["sha256"]
    assert "source" in data and str(version) in data["source"]


@pytest.mark.parametrize(("arch", "platform"), [("x86_64", "linux-x64"), ("arm64", "linux-arm64")])
def test_render_names_the_packaged_build_for_the_cpu(arch, platform):
    boot = dataclasses.replace(LOCAL, arch=arch)
    build = runner.pinned()["platforms"][platform]
    assert runner.archive(spec(), boot) == {"url": build["url"], "sha256": build["sha256"]}


def test_a_cpu_the_runner_has_no_build_for_is_refused():
    with pytest.raises(UsageError, match="no build for riscv64"):
        runner.archive(spec(), dataclasses.replace(LOCAL, arch="riscv64"))


# --- --runner-version ---------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "parsed"), [("2.330.0", "2.330.0"), ("v2.331.1", "2.331.1")])
def test_runner_version_takes_a_release_number(text, parsed):
    assert parse_runner_version(text) == parsed


@pytest.mark.parametrize("text", ["2.330", "latest", "2.330.0-rc1", "", "2.330.0 ; rm"])
def test_runner_version_refuses_anything_else(text):
    with pytest.raises(UsageError) as raised:
        parse_runner_version(text)
    assert raised.value.source == "--runner-version"


@pytest.mark.parametrize("version", ["2.300.0", "2.321.0", "2.328.9", "1.999.999"])
def test_a_runner_older_than_githubs_minimum_is_refused(version):
    with pytest.raises(UsageError) as raised:
        runner.archive(spec(runner_version=version), LOCAL)
    assert raised.value.source == "--runner-version"
    assert raised.value.exit_code == 2
    assert runner.MINIMUM_VERSION in str(raised.value)


def test_github_enterprise_server_sets_its_own_minimum():
    old = spec("https://ghe.example/api/v3", runner_version="2.321.0")
    got = runner.archive(old, LOCAL)
    assert "v2.321.0/actions-runner-linux-x64-2.321.0.tar.gz" in got["url"]


def test_render_of_a_pinned_version_names_it_without_a_checksum():
    """render looks nothing up: the release is named, and an instance would refuse it."""
    got = runner.archive(spec(runner_version="2.333.0"), LOCAL)
    assert got["url"] == (
        "https://github.com/actions/runner/releases/download/v2.333.0/"
        "actions-runner-linux-x64-2.333.0.tar.gz"
    )
    assert got["sha256"] == runner.UNRESOLVED_SHA256
    assert not re.fullmatch(r"[0-9a-f]{64}", got["sha256"])


def test_a_local_archive_and_a_version_are_one_too_many(tmp_path):
    (tmp_path / "r.tgz").write_bytes(b"x")
    with pytest.raises(UsageError) as raised:
        runner.archive(
            spec(runner_archive=str(tmp_path / "r.tgz"), runner_version="2.330.0"), LOCAL
        )
    assert raised.value.source == "--runner-version"


def test_the_resolved_release_is_what_the_instance_gets():
    release = RunnerRelease("2.333.0", "https://example.test/r.tgz", "a" * 64)
    assert runner.archive(spec(), LOCAL, release) == {"url": release.url, "sha256": "a" * 64}
    # A mirror serves that release: its checksum holds for the mirror's file.
    mirrored = spec(runner_archive="https://mirror.example/r.tgz", runner_version="2.333.0")
    assert runner.archive(mirrored, LOCAL, release) == {
        "url": "https://mirror.example/r.tgz",
        "sha256": "a" * 64,
    }


def test_the_forge_passes_the_release_into_the_agent_config():
    release = RunnerRelease("2.333.0", "https://example.test/r.tgz", "b" * 64)
    registration = Registration("token", "AREG", "https://github.com/octo/repo")
    made = GitHubForge.agent_runner(spec(), registration, ("x",), LOCAL, release)
    assert made["archive"] == {"url": release.url, "sha256": release.sha256}


# --- the lookups, against the fake GitHub -----------------------------------------------------


def test_latest_is_githubs_latest_release_with_the_checksum_from_its_notes(gh):
    gh.publish_runner("2.332.0", ARCHIVE, latest=True)
    urls = gh.publish_runner("2.333.0", ARCHIVE)
    for platform in ("linux-x64", "linux-arm64"):
        release = forge(gh.api_url).latest_runner(platform)
        assert release == RunnerRelease("2.333.0", urls[platform], ARCHIVE_SHA)
    assert api_paths(gh) == ["/repos/actions/runner/releases/latest"] * 2


def test_the_archive_downloads_from_the_url_github_gives(gh):
    urls = gh.publish_runner("2.333.0", ARCHIVE)
    with requests.Session() as session:
        session.trust_env = False
        got = session.get(urls["linux-x64"], timeout=5)
    assert got.status_code == 200 and got.content == ARCHIVE
    assert hashlib.sha256(got.content).hexdigest() == ARCHIVE_SHA


def test_a_pinned_version_is_that_release(gh):
    gh.publish_runner("2.331.0", ARCHIVE, latest=False)
    gh.publish_runner("2.333.0", b"another archive")
    release = forge(gh.api_url).runner_release("linux-x64", "2.331.0")
    assert (release.version, release.sha256) == ("2.331.0", ARCHIVE_SHA)
    assert api_paths(gh) == ["/repos/actions/runner/releases/tags/v2.331.0"]


def test_a_version_github_does_not_have_is_a_usage_error(gh):
    gh.publish_runner("2.333.0", ARCHIVE)
    with pytest.raises(UsageError) as raised:
        forge(gh.api_url).runner_release("linux-x64", "2.399.0")
    assert raised.value.source == "--runner-version"
    assert "no release v2.399.0" in str(raised.value)


def test_no_release_at_all_is_a_clean_runtime_error(gh):
    with pytest.raises(CmlInfraError) as raised:
        forge(gh.api_url).latest_runner("linux-x64")
    assert type(raised.value) is CmlInfraError
    assert "lists no release of actions/runner" in str(raised.value)
    assert TOKEN not in str(raised.value)


def fetched_release(gh: FakeGitHub) -> dict:
    with requests.Session() as session:
        session.trust_env = False
        reply = session.get(
            f"{gh.api_url}/repos/actions/runner/releases/latest",
            headers={"Authorization": f"token {TOKEN}"},
            timeout=5,
        )
    assert reply.status_code == 200
    return reply.json()


def test_notes_that_disagree_with_the_assets_digest_are_refused(gh):
    gh.publish_runner("2.333.0", ARCHIVE, sha256={"linux-x64": "c" * 64})
    with pytest.raises(CmlInfraError, match="refusing both"):
        forge(gh.api_url).latest_runner("linux-x64")
    # The other platform's notes agree with its file.
    assert forge(gh.api_url).latest_runner("linux-arm64").sha256 == ARCHIVE_SHA


def test_notes_without_a_checksum_fall_back_on_the_assets_digest(gh):
    gh.publish_runner("2.333.0", ARCHIVE)
    data = fetched_release(gh)
    data["body"] = "## What's Changed\n* nothing about checksums\n"
    assert runner.from_release(data, "linux-x64").sha256 == ARCHIVE_SHA
    for asset in data["assets"]:
        asset["digest"] = None
    with pytest.raises(CmlInfraError, match="publishes no sha256"):
        runner.from_release(data, "linux-x64")


def test_notes_alone_are_enough(gh):
    gh.publish_runner("2.333.0", ARCHIVE, digests=False)
    assert forge(gh.api_url).latest_runner("linux-x64").sha256 == ARCHIVE_SHA


def test_a_release_without_the_platforms_asset_is_refused(gh):
    gh.publish_runner("2.333.0", ARCHIVE, platforms=("linux-x64",))
    with pytest.raises(
        CmlInfraError, match=re.escape("no asset actions-runner-linux-arm64-2.333.0.tar.gz")
    ):
        forge(gh.api_url).latest_runner("linux-arm64")


# --- GitHub Enterprise Server: the runner the server serves -----------------------------------


def test_enterprise_server_is_known_by_its_api_path():
    assert enterprise_server("https://ghe.example/api/v3")
    assert enterprise_server("http://127.0.0.1:8080/api/v3/")
    assert not enterprise_server("https://api.github.com")
    assert not enterprise_server("https://api.octo.ghe.com")
    assert not enterprise_server(None)


def test_enterprise_server_names_the_runner_it_serves(ghes):
    urls = ghes.publish_runner("2.325.0", ARCHIVE)
    release = forge(ghes.api_url).latest_runner("linux-arm64")
    assert release == RunnerRelease("2.325.0", urls["linux-arm64"], ARCHIVE_SHA)
    # The fake logs paths from the API root; it answers none outside /api/v3.
    assert api_paths(ghes) == ["/repos/octo/repo/actions/runners/downloads"]


def test_enterprise_server_refuses_another_version_than_its_own(ghes):
    ghes.publish_runner("2.325.0", ARCHIVE)
    assert forge(ghes.api_url).runner_release("linux-x64", "2.325.0").version == "2.325.0"
    with pytest.raises(UsageError) as raised:
        forge(ghes.api_url).runner_release("linux-x64", "2.333.0")
    assert raised.value.source == "--runner-version"
    assert "serves actions/runner 2.325.0" in str(raised.value)


# --- resolve: what `up` installs ----------------------------------------------------------------


def test_up_installs_the_latest(gh):
    gh.publish_runner("2.333.0", ARCHIVE)
    got = runner.resolve(forge(gh.api_url), spec(gh.api_url), LOCAL)
    assert got is not None and got.version == "2.333.0"


def test_up_installs_the_pinned_version(gh):
    gh.publish_runner("2.331.0", ARCHIVE, latest=False)
    gh.publish_runner("2.333.0", ARCHIVE)
    got = runner.resolve(forge(gh.api_url), spec(gh.api_url, runner_version="2.331.0"), LOCAL)
    assert got is not None and got.version == "2.331.0"


def test_an_unreachable_github_leaves_the_packaged_release_with_a_warning(capsys):
    api_url = f"http://127.0.0.1:{closed_port()}"
    assert runner.resolve(forge(api_url), spec(api_url), LOCAL) is None
    err = capsys.readouterr().err
    assert "could not look up the latest actions/runner release" in err
    assert f"installing the packaged {runner.pinned()['version']}" in err
    assert TOKEN not in err


def test_a_latest_below_the_floor_leaves_the_floor(gh, capsys):
    gh.publish_runner("2.328.0", ARCHIVE)
    assert runner.resolve(forge(gh.api_url), spec(gh.api_url), LOCAL) is None
    assert "older than the packaged" in capsys.readouterr().err


def test_enterprise_servers_runner_is_taken_below_the_floor(ghes):
    ghes.publish_runner("2.325.0", ARCHIVE)
    got = runner.resolve(forge(ghes.api_url), spec(ghes.api_url), LOCAL)
    assert got is not None and got.version == "2.325.0"


def test_an_unknown_pinned_version_fails_up(gh):
    gh.publish_runner("2.333.0", ARCHIVE)
    with pytest.raises(UsageError):
        runner.resolve(forge(gh.api_url), spec(gh.api_url, runner_version="2.399.0"), LOCAL)


def test_a_local_archive_or_a_mirror_needs_no_lookup(gh, tmp_path):
    (tmp_path / "r.tgz").write_bytes(ARCHIVE)
    for source in (str(tmp_path / "r.tgz"), "https://mirror.example/r.tgz"):
        assert (
            runner.resolve(forge(gh.api_url), spec(gh.api_url, runner_archive=source), LOCAL)
            is None
        )
    assert api_paths(gh) == []


def test_a_mirror_of_a_pinned_version_takes_that_releases_checksum(gh):
    gh.publish_runner("2.331.0", ARCHIVE)
    mirrored = spec(
        gh.api_url, runner_archive="https://mirror.example/r.tgz", runner_version="2.331.0"
    )
    release = runner.resolve(forge(gh.api_url), mirrored, LOCAL)
    assert runner.archive(mirrored, LOCAL, release) == {
        "url": "https://mirror.example/r.tgz",
        "sha256": ARCHIVE_SHA,
    }


def test_the_forge_protocol_resolves_through_github_runner(gh):
    gh.publish_runner("2.333.0", ARCHIVE)
    got = forge(gh.api_url).resolve_runner(spec(gh.api_url), LOCAL)
    assert got is not None and got.version == "2.333.0"


@pytest.mark.parametrize(
    ("cloud", "instance_type", "platform"),
    [
        ("aws", "m7g.large", "linux-arm64"),
        ("aws", "m7i.large", "linux-x64"),
        ("gcp", "t2a-standard-4", "linux-arm64"),
        ("azure", "Standard_D2ps_v5", "linux-arm64"),
        ("azure", "Standard_D2s_v5", "linux-x64"),
    ],
)
def test_a_vm_installs_the_build_for_its_cpu(gh, cloud, instance_type, platform):
    urls = gh.publish_runner("2.333.0", ARCHIVE)
    vm_spec = spec(gh.api_url, cloud=cloud, instance_type=instance_type, image="custom-image")
    boot = clouds.get(cloud, StateDir(Path("/nonexistent/state"))).boot(vm_spec)
    release = runner.resolve(forge(gh.api_url), vm_spec, boot)
    assert release is not None and release.url == urls[platform]
