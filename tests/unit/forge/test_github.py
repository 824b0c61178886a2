"""cml_infra.forge.github: GitHubForge against the loopback FakeGitHub (tests/fakes/github.py),
whose traffic is checked against GitHub's OpenAPI description. Only 127.0.0.1 is ever contacted."""

from __future__ import annotations

import base64
import dataclasses
import json
import socket
import time
import types

import pytest
import requests

from cml_infra.errors import CmlInfraError, UsageError
from cml_infra.forge import github as forge_module
from cml_infra.forge.base import Registration, RunnerInfo
from cml_infra.forge.github import GitHubForge, html_url
from cml_infra.spec import ForgeTarget
from tests.fakes.github import FakeGitHub

TOKEN = "ghp_unit_CANARY_123"
WRONG_TOKEN = "ghp_wrong_CANARY_456"
REPO = ForgeTarget(repo="octo/repo")
ORG = ForgeTarget(org="octo")


# requests (under PyGithub) must not send loopback traffic through a proxy.
pytestmark = pytest.mark.usefixtures("no_proxy")


@pytest.fixture
def gh():
    with FakeGitHub(TOKEN, repos=("octo/repo",), orgs=("octo",)) as fake:
        yield fake
        assert fake.violations == [], fake.violations


class Clock:
    """Stands in for the forge module's `time`: sleeps are recorded and advance monotonic()."""

    def __init__(self, on_sleep=None):
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.on_sleep = on_sleep

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep(len(self.sleeps))


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    namespace = types.SimpleNamespace(monotonic=fake.monotonic, sleep=fake.sleep, time=time.time)
    monkeypatch.setattr(forge_module, "time", namespace)
    return fake


def forge(gh, target=REPO, token=TOKEN, runner_group=None):
    """The forge for `target`, on the fake's API."""
    return GitHubForge(dataclasses.replace(target, api_url=gh.url, group=runner_group), token)


def assert_clean_error(exc: CmlInfraError, *tokens: str, api: bool = True) -> str:
    """A runtime error (exit 1) without the token; API failures lead with `github: `."""
    message = str(exc)
    assert type(exc) is not UsageError
    assert exc.exit_code == 1
    for token in tokens or (TOKEN,):
        assert token not in message
    assert message.startswith("github: ") == api, message
    return message


def control(gh, path: str) -> None:
    """The fake's control API (what the runner double uses), not GitHub's REST API."""
    with requests.Session() as session:
        session.trust_env = False
        assert session.post(f"{gh.url}/_fake{path}", timeout=5).status_code == 200


# --- check_target / html_url -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("repo", "org", "flag"),
    [
        ("octo/repo", "octo", "--repo"),
        (None, None, "--repo"),
        ("", "", "--repo"),
        ("noslash", None, "--repo"),
        ("a/b/c", None, "--repo"),
        ("a/", None, "--repo"),
        ("/b", None, "--repo"),
        (None, "a/b", "--org"),
    ],
)
def test_check_target_rejects(repo, org, flag):
    with pytest.raises(UsageError) as raised:
        GitHubForge.check_target(ForgeTarget(repo=repo, org=org))
    assert raised.value.source == flag
    assert str(raised.value).startswith(f"{flag}: ")
    assert raised.value.exit_code == 2


def test_check_target_both_or_neither_names_both_flags():
    for repo, org in (("octo/repo", "octo"), (None, None)):
        with pytest.raises(UsageError) as raised:
            GitHubForge.check_target(ForgeTarget(repo=repo, org=org))
        assert "--repo" in str(raised.value) and "--org" in str(raised.value)


@pytest.mark.parametrize("api_url", ["ftp://ghe.example", "ghe.example/api/v3", "https://"])
def test_check_target_rejects_a_url_that_is_not_http(api_url):
    with pytest.raises(UsageError) as raised:
        GitHubForge.check_target(ForgeTarget(repo="octo/repo", api_url=api_url))
    assert raised.value.source == "--github-url"


@pytest.mark.parametrize(
    "api_url",
    [
        "http://example.com/api/v3",
        "http://ghe.example",
        "http://127.0.0.1.nip.io:8080",  # a name, not the loopback address
        "http://localhost.example.com",
        "http://10.0.0.1/api/v3",
        "http://[::2]:8080",
        "HTTP://example.com",
    ],
)
def test_check_target_sends_the_token_over_https_only(api_url):
    with pytest.raises(UsageError) as raised:
        GitHubForge.check_target(ForgeTarget(repo="octo/repo", api_url=api_url))
    assert raised.value.source == "--github-url"
    assert "https" in str(raised.value)


@pytest.mark.parametrize(
    "api_url",
    [
        "https://ghe.example/api/v3",
        "https://api.github.com",
        "http://127.0.0.1:8080",
        "http://127.9.8.7",
        "http://localhost:3000/api/v3",
        "http://[::1]:8080",
    ],
)
def test_check_target_takes_https_and_plain_http_on_loopback(api_url):
    GitHubForge.check_target(ForgeTarget(repo="octo/repo", api_url=api_url))


def test_a_forge_on_plain_http_elsewhere_cannot_be_made():
    """Defense in depth: the constructor checks the URL too (a record's forge, say)."""
    with pytest.raises(UsageError) as raised:
        GitHubForge(ForgeTarget(repo="octo/repo", api_url="http://ghe.example/api/v3"), TOKEN)
    assert raised.value.source == "--github-url"


@pytest.mark.parametrize(
    ("repo", "org", "group", "flag"),
    [
        ("o/..", None, None, "--repo"),
        ("o/.", None, None, "--repo"),
        ("o/" + "r" * 101, None, None, "--repo"),
        ("o/r r", None, None, "--repo"),
        ("-o/r", None, None, "--repo"),
        ("o-/r", None, None, "--repo"),
        ("a--b/r", None, None, "--repo"),
        ("o" * 40 + "/r", None, None, "--repo"),
        ("o_o/r", None, None, "--repo"),
        (None, "-x", None, "--org"),
        (None, "x-", None, "--org"),
        (None, "a--b", None, "--org"),
        (None, "o" * 40, None, "--org"),
        (None, "o.o", None, "--org"),
        (None, "octo", "--ephemeral", "--runner-group"),
        (None, "octo", "-", "--runner-group"),
        (None, "octo", "", "--runner-group"),
        (None, "octo", " gpu", "--runner-group"),
        (None, "octo", "gpu ", "--runner-group"),
        (None, "octo", "gpu\npool", "--runner-group"),
        (None, "octo", "gpu\x00", "--runner-group"),
        (None, "octo", "gpu\x7f", "--runner-group"),
        (None, "octo", "g" * 101, "--runner-group"),
    ],
)
def test_check_target_follows_githubs_naming_rules(repo, org, group, flag):
    with pytest.raises(UsageError) as raised:
        GitHubForge.check_target(ForgeTarget(repo=repo, org=org, group=group))
    assert raised.value.source == flag


@pytest.mark.parametrize(
    ("repo", "org", "group"),
    [
        ("o" * 39 + "/" + "r" * 100, None, None),
        ("octo-cat/.github", None, None),
        ("o/a..b", None, None),
        ("o/_r-r.r_", None, None),
        ("a-b-c/r", None, None),
        (None, "a-b-c", "GPU pool (A100)"),
        (None, "octo", "3"),
        (None, "octo", "g" * 100),
    ],
)
def test_check_target_takes_what_github_takes(repo, org, group):
    GitHubForge.check_target(ForgeTarget(repo=repo, org=org, group=group))


def test_check_target_accepts_a_repo_or_an_org():
    repo = ForgeTarget(repo="octo/repo", api_url="https://ghe.example/api/v3")
    GitHubForge.check_target(repo)
    assert (repo.scope_path, repo.slug) == ("repos/octo/repo", "octo/repo")
    org = ForgeTarget(org="octo")
    GitHubForge.check_target(org)
    assert (org.scope_path, org.slug) == ("orgs/octo", "octo")


@pytest.mark.parametrize(
    ("api_url", "expected"),
    [
        ("https://api.github.com", "https://github.com/o/r"),
        ("https://api.github.com/", "https://github.com/o/r"),
        ("https://api.octocorp.ghe.com", "https://octocorp.ghe.com/o/r"),
        ("https://ghe.example/api/v3", "https://ghe.example/o/r"),
        ("https://ghe.example/api/v3/", "https://ghe.example/o/r"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080/o/r"),
    ],
)
def test_html_url(api_url, expected):
    assert html_url(ForgeTarget(repo="o/r"), api_url) == expected


def test_html_url_of_an_org():
    assert html_url(ForgeTarget(org="octo"), "https://api.github.com") == "https://github.com/octo"


# --- construction ---------------------------------------------------------------------------


def test_a_forge_needs_a_token():
    with pytest.raises(UsageError) as raised:
        GitHubForge(REPO, "")
    assert raised.value.source == "--token"


def test_the_public_api_is_the_default():
    assert GitHubForge(REPO, TOKEN).api_url == "https://api.github.com"


def test_describe_keeps_no_token():
    target = ForgeTarget(org="octo", group="3", api_url="https://ghe.example/api/v3/")
    described = GitHubForge(target, TOKEN).describe()
    assert described == {
        "kind": "github",
        "org": "octo",
        "group": "3",
        "api_url": "https://ghe.example/api/v3",
    }
    assert TOKEN not in json.dumps(described)


def test_describe_of_a_repo_on_the_public_api():
    assert GitHubForge(REPO, TOKEN).describe() == {
        "kind": "github",
        "repo": "octo/repo",
        "api_url": "https://api.github.com",
    }


# --- register / runner / wait_online / deregister ------------------------------------------------


def test_register_single_mints_a_jit_config(gh):
    registration = forge(gh).register("box-1", ("gpu", "cml-infra-box-1"), single=True)
    assert isinstance(registration, Registration)
    assert registration.kind == "jit"
    assert registration.url == f"{gh.url}/octo/repo"
    jit = json.loads(base64.b64decode(registration.secret))
    assert jit["name"] == "box-1" and jit["ephemeral"] is True

    [runner] = gh.runners("octo/repo")
    assert runner["name"] == "box-1"
    assert runner["status"] == "offline"
    assert runner["ephemeral"] is True
    assert runner["runner_group_id"] == 1
    names = [label["name"] for label in runner["labels"]]
    assert {"self-hosted", "gpu", "cml-infra-box-1"} <= set(names)
    [sent] = [e for e in gh.request_log if e["path"].endswith("/generate-jitconfig")]
    assert sent["json"] == {
        "name": "box-1",
        "runner_group_id": 1,
        "labels": ["self-hosted", "gpu", "cml-infra-box-1"],
        "work_folder": "_work",
    }


def test_register_single_in_an_org_runner_group(gh):
    registration = forge(gh, ORG, runner_group="3").register("org-1", ("x",), single=True)
    assert registration.url == f"{gh.url}/octo"
    [runner] = gh.runners("orgs/octo")
    assert runner["runner_group_id"] == 3


def test_register_multi_mints_a_registration_token(gh):
    registration = forge(gh).register("box-2", ("gpu",), single=False)
    assert registration.kind == "token"
    assert registration.url == f"{gh.url}/octo/repo"
    minted = gh.tokens[registration.secret]
    assert (minted["kind"], minted["scope"]) == ("registration", "repos/octo/repo")
    assert gh.runners() == [], "a registration token registers nothing by itself"


def test_a_runner_group_name_with_single_is_a_usage_error(gh):
    with pytest.raises(UsageError) as raised:
        forge(gh, ORG, runner_group="gpu-pool").register("org-2", (), single=True)
    assert raised.value.source == "--runner-group"
    assert gh.requests == [], "nothing is asked of GitHub for bad input"
    # A multi-job runner takes the group by name (config.sh --runnergroup).
    assert forge(gh, ORG, runner_group="gpu-pool").register("org-2", (), single=False).secret


def test_runner_is_found_beyond_the_first_page(gh):
    for number in range(130):
        gh.add_runner("octo/repo", f"r-{number:03}", ["gpu"])
    found = forge(gh).runner("r-125")
    assert found is not None and found.name == "r-125"
    assert forge(gh).runner("r-005").name == "r-005"
    assert forge(gh).runner("missing") is None
    pages = [e["query"] for e in gh.request_log if e["path"] == "/repos/octo/repo/actions/runners"]
    assert pages[:2] == [{"per_page": "100", "page": "1"}, {"per_page": "100", "page": "2"}]


def test_runner_with_exactly_a_full_page_asks_once_more(gh):
    for number in range(100):
        gh.add_runner("octo/repo", f"r-{number:03}")
    assert forge(gh).runner("missing") is None
    assert len(gh.requests) == 2


def test_runners_are_runner_infos(gh):
    gh.add_runner("octo/repo", "idle-1", ["gpu", "cml-infra-idle-1"], status="online")
    gh.add_runner("octo/repo", "busy-1", ["gpu"], status="online", busy=True, ephemeral=True)
    gh.add_runner("octo", "org-1", ["gpu"], status="online")
    idle, busy = forge(gh).runners()
    assert isinstance(idle, RunnerInfo)
    assert (idle.name, idle.online, idle.busy, idle.ephemeral) == ("idle-1", True, False, False)
    assert {"self-hosted", "gpu", "cml-infra-idle-1"} <= set(idle.labels)
    assert idle.ours == ("idle-1",)
    assert (busy.name, busy.busy, busy.ephemeral) == ("busy-1", True, True)
    assert idle.id != busy.id
    assert forge(gh).runner("busy-1") == busy


def test_wait_online_times_out_naming_the_runner(gh):
    started = time.monotonic()
    with pytest.raises(CmlInfraError) as raised:
        forge(gh).wait_online("ghost-1", timeout=0.5)
    assert time.monotonic() - started < 3
    message = assert_clean_error(raised.value, api=False)
    assert "ghost-1" in message and "never registered" in message


def test_wait_online_backs_off_then_says_still_offline(gh, clock):
    forge(gh).register("slow-1", (), single=True)
    with pytest.raises(CmlInfraError) as raised:
        forge(gh).wait_online("slow-1", timeout=10)
    message = assert_clean_error(raised.value, api=False)
    assert "slow-1" in message and "still offline" in message and "10s" in message
    assert clock.sleeps == [1.0, 1.5, 2.25, 3.375]


def test_wait_online_returns_once_the_runner_is_online(gh, clock):
    forge(gh).register("soon-1", ("gpu",), single=True)
    [runner] = gh.runners()
    clock.on_sleep = lambda count: control(gh, f"/runners/{runner['id']}/online")
    online = forge(gh).wait_online("soon-1", timeout=60)
    assert online.online and online.name == "soon-1"
    assert clock.sleeps == [1.0]


def test_idle_runner_has_every_label_and_is_online_idle_and_reusable(gh):
    scope = "octo/repo"
    gh.add_runner(scope, "a-offline", ["gpu", "t4"], status="offline")
    gh.add_runner(scope, "b-busy", ["gpu", "t4"], status="online", busy=True)
    gh.add_runner(scope, "c-single", ["gpu", "t4"], status="online", ephemeral=True)
    gh.add_runner(scope, "d-cpu", ["gpu"], status="online")
    assert forge(gh).idle_runner(["gpu", "t4"]) is None
    gh.add_runner(scope, "f-later", ["gpu", "t4", "x"], status="online")
    gh.add_runner(scope, "e-idle", ["t4", "gpu"], status="online")
    assert forge(gh).idle_runner(["gpu", "t4"]).name == "e-idle"  # the first by name
    assert forge(gh).idle_runner(["gpu", "t4", "x"]).name == "f-later"
    assert forge(gh).idle_runner(["GPU", "T4"]).name == "e-idle"  # as GitHub matches runs-on


def test_idle_runner_looks_only_in_its_scope(gh):
    gh.add_runner("octo", "org-runner", ["gpu"], status="online")
    assert forge(gh).idle_runner(["gpu"]) is None
    assert forge(gh, ORG).idle_runner(["gpu"]).name == "org-runner"


def test_deregister_removes_then_reports_already_gone(gh):
    forge(gh).register("gone-1", (), single=True)
    assert forge(gh).deregister("gone-1") is True
    assert gh.runners() == []
    assert forge(gh).deregister("gone-1") is False
    assert [r for r in gh.requests if r[0] == "DELETE"] == [
        ("DELETE", "/repos/octo/repo/actions/runners/1", 204)
    ]


def test_deregister_of_a_runner_gone_between_lookup_and_delete(gh, monkeypatch):
    forge_ = forge(gh)
    forge_.register("race-1", (), single=True)
    real_runner = forge_.runner

    def runner_then_vanish(name):
        found = real_runner(name)
        gh.fail_with = (404, {"message": "Not Found"}, None)
        return found

    monkeypatch.setattr(forge_, "runner", runner_then_vanish)
    assert forge_.deregister("race-1") is False


# --- errors: one clear line, exit code 1, never the token --------------------------------------


def test_wrong_token_is_rejected(gh):
    with pytest.raises(CmlInfraError) as raised:
        forge(gh, token=WRONG_TOKEN).register("box-3", (), single=True)
    message = assert_clean_error(raised.value, TOKEN, WRONG_TOKEN)
    assert "rejected" in message and "401" in message and "--token" in message


def test_unknown_repo_is_not_found(gh):
    with pytest.raises(CmlInfraError) as raised:
        forge(gh, ForgeTarget(repo="octo/nope")).register("box-4", (), single=False)
    message = assert_clean_error(raised.value)
    assert "not found" in message and "octo/nope" in message


def test_unknown_org_is_not_found(gh):
    with pytest.raises(CmlInfraError) as raised:
        forge(gh, ForgeTarget(org="nope")).runner("x")
    assert "not found" in assert_clean_error(raised.value)


def test_forbidden_is_permission_denied(gh):
    gh.fail_with = (403, {"message": "Resource not accessible by integration"}, None)
    with pytest.raises(CmlInfraError) as raised:
        forge(gh).register("box-5", (), single=True)
    message = assert_clean_error(raised.value)
    assert "permission denied" in message
    assert "Resource not accessible by integration" in message
    assert gh.runners() == []


def _rate_limited(reset: float) -> tuple[int, dict[str, str], dict[str, str]]:
    return (
        403,
        {"message": "API rate limit exceeded", "documentation_url": "https://docs.github.com"},
        {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(reset))},
    )


def test_rate_limit_far_away_is_reported_without_waiting(gh, clock):
    gh.fail_with = _rate_limited(time.time() + 3600)
    with pytest.raises(CmlInfraError) as raised:
        forge(gh).register("box-6", (), single=True)
    message = assert_clean_error(raised.value)
    assert "rate limited until" in message and "UTC" in message
    assert clock.sleeps == []
    assert len(gh.requests) == 1


def test_rate_limit_resetting_soon_is_waited_out(gh, clock):
    gh.fail_with = _rate_limited(time.time() + 1)
    registration = forge(gh).register("box-7", (), single=True)
    assert registration.kind == "jit"
    assert len(clock.sleeps) == 1 and 1.0 <= clock.sleeps[0] <= 2.5, clock.sleeps
    assert [status for _, _, status in gh.requests] == [403, 201]
    assert [r["name"] for r in gh.runners()] == ["box-7"]


def test_rate_limit_is_waited_out_once_only(gh, clock):
    gh.fail_with = _rate_limited(time.time() + 1)
    gh.fail_count = 2
    with pytest.raises(CmlInfraError) as raised:
        forge(gh).runner("x")
    assert "rate limited until" in assert_clean_error(raised.value)
    assert len(clock.sleeps) == 1
    assert len(gh.requests) == 2


def test_secondary_rate_limit_retry_after_is_waited_out(gh, clock):
    gh.fail_with = (
        403,
        {"message": "You have exceeded a secondary rate limit."},
        {"retry-after": "2"},
    )
    assert forge(gh).runner("nobody") is None
    assert clock.sleeps == [3.0]


def test_retry_after_as_an_http_date_is_understood(gh, clock):
    # A date already past: nothing to wait for but the usual second, then the retry succeeds.
    gh.fail_with = (429, {"message": "slow down"}, {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert forge(gh).runner("x") is None


def test_server_error_echoing_the_token_is_scrubbed(gh):
    gh.fail_with = (500, {"message": f"boom for token {TOKEN}"}, None)
    with pytest.raises(CmlInfraError) as raised:
        forge(gh).register("box-8", (), single=False)
    message = assert_clean_error(raised.value)
    assert "500" in message and "***" in message


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_api(clock):
    url = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(CmlInfraError) as raised:
        GitHubForge(dataclasses.replace(ORG, api_url=url), TOKEN).register("box-9", (), single=True)
    message = assert_clean_error(raised.value)
    assert "unreachable" in message and url in message
    assert clock.sleeps == []
