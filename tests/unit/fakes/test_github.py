"""The fake GitHub (tests/fakes/github.py) answers as GitHub's OpenAPI description says, and its
validation catches requests that do not: through plain HTTP and through PyGithub."""

from __future__ import annotations

import base64
import json
import re
import time
from datetime import datetime, timedelta, timezone

import github
import pytest
import requests

from tests.fakes.github import RUNNER_VERSION, FakeGitHub

TOKEN = "ghp_fake_token_for_tests"
SCOPES = ["repos/octo/repo", "orgs/octo"]


@pytest.fixture
def gh():
    with FakeGitHub(TOKEN) as fake:
        yield fake


@pytest.fixture
def http():
    session = requests.Session()
    session.trust_env = False
    session.headers["Authorization"] = f"token {TOKEN}"
    with session:
        yield session


def pygithub(gh, token=TOKEN, **options):
    # PyGithub waits 0.25 s between requests (1 s between writes) unless told otherwise.
    options = {"seconds_between_requests": None, "seconds_between_writes": None, **options}
    return github.Github(auth=github.Auth.Token(token), base_url=gh.url, **options)


def jit_body(name="cml-gpu-1", labels=("cml", "gpu")):
    return {"name": name, "runner_group_id": 1, "labels": list(labels), "work_folder": "_work"}


def parse_time(text):
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


@pytest.mark.parametrize("scope", SCOPES)
def test_runner_endpoints_answer_as_described(gh, http, scope):
    base = f"{gh.url}/{scope}/actions/runners"
    for kind in ("registration-token", "remove-token"):
        reply = http.post(f"{base}/{kind}")
        assert reply.status_code == 201
        expires = parse_time(reply.json()["expires_at"]) - datetime.now(timezone.utc)
        assert timedelta(minutes=59) < expires <= timedelta(hours=1)
        assert reply.json()["token"] in gh.tokens

    reply = http.post(f"{base}/generate-jitconfig", json=jit_body())
    assert reply.status_code == 201
    runner = reply.json()["runner"]
    assert (runner["name"], runner["os"], runner["status"], runner["busy"]) == (
        "cml-gpu-1",
        "linux",
        "offline",
        False,
    )
    labels = {label["name"]: label["type"] for label in runner["labels"]}
    assert labels == {
        "self-hosted": "read-only",
        "Linux": "read-only",
        "X64": "read-only",
        "cml": "custom",
        "gpu": "custom",
    }
    config = json.loads(base64.b64decode(reply.json()["encoded_jit_config"]))
    assert config == {
        "runner_id": runner["id"],
        "name": "cml-gpu-1",
        "labels": ["cml", "gpu"],
        "server": gh.url,
        "ephemeral": True,
    }
    assert gh.runners(scope) == [runner]

    listed = http.get(base).json()
    assert listed == {"total_count": 1, "runners": [runner]}
    assert http.get(base, params={"name": "other"}).json() == {"total_count": 0, "runners": []}
    assert http.get(f"{base}/{runner['id']}").json() == runner
    reply = http.get(f"{base}/{runner['id']}/labels")
    assert reply.status_code == 200
    assert reply.json() == {"total_count": 5, "labels": runner["labels"]}

    assert http.delete(f"{base}/{runner['id']}").status_code == 204
    assert http.get(f"{base}/{runner['id']}").status_code == 404
    assert http.get(f"{base}/{runner['id']}/labels").status_code == 404
    assert http.delete(f"{base}/{runner['id']}").status_code == 404
    assert gh.runners(scope) == []
    assert gh.violations == []
    assert [status for _, _, status in gh.requests] == [
        201,
        201,
        201,
        200,
        200,
        200,
        200,
        204,
        404,
        404,
        404,
    ]
    assert gh.requests[6] == ("GET", f"/{scope}/actions/runners/{runner['id']}/labels", 200)


def test_repository_user_and_rate_limit_are_valid(gh, http):
    repo = http.get(f"{gh.url}/repos/octo/repo")
    assert repo.status_code == 200
    assert (repo.json()["full_name"], repo.json()["owner"]["login"]) == ("octo/repo", "octo")
    assert repo.json()["url"] == f"{gh.url}/repos/octo/repo"
    user = http.get(f"{gh.url}/user")
    assert user.status_code == 200
    assert user.json()["login"] == gh.user_login
    limits = http.get(f"{gh.url}/rate_limit")
    assert limits.status_code == 200
    assert limits.json()["resources"]["core"]["remaining"] == 4999
    assert limits.headers["X-RateLimit-Limit"] == "5000"
    assert gh.violations == []


def test_pygithub_drives_the_runner_endpoints(gh):
    client = pygithub(gh)
    repo = client.get_repo("octo/repo")
    assert repo.full_name == "octo/repo"
    assert client.get_user().login == gh.user_login
    assert client.get_rate_limit().resources.core.remaining == 4999

    _, reply = client.requester.requestJsonAndCheck(
        "POST", "/repos/octo/repo/actions/runners/generate-jitconfig", input=jit_body()
    )
    runner_id = reply["runner"]["id"]
    _, token = client.requester.requestJsonAndCheck(
        "POST", "/repos/octo/repo/actions/runners/registration-token"
    )
    assert token["token"] in gh.tokens
    runners = list(repo.get_self_hosted_runners())
    assert [(r.id, r.name, r.status, r.busy) for r in runners] == [
        (runner_id, "cml-gpu-1", "offline", False)
    ]
    assert "gpu" in {label["name"] for label in runners[0].labels}
    assert repo.get_self_hosted_runner(runner_id).name == "cml-gpu-1"
    assert repo.remove_self_hosted_runner(runner_id) is True
    assert repo.get_self_hosted_runners().totalCount == 0
    with pytest.raises(github.UnknownObjectException):
        repo.get_self_hosted_runner(runner_id)

    _, org_reply = client.requester.requestJsonAndCheck(
        "POST", "/orgs/octo/actions/runners/generate-jitconfig", input=jit_body("org-1")
    )
    assert [r["name"] for r in gh.runners("orgs/octo")] == ["org-1"]
    assert org_reply["runner"]["id"] != runner_id
    assert gh.violations == []


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "expected"),
    [
        (
            "POST",
            "/repos/octo/repo/actions/runners/generate-jitconfig",
            {"runner_group_id": 1, "labels": ["gpu"]},
            422,
            "'name' is a required property",
        ),
        (
            "POST",
            "/orgs/octo/actions/runners/generate-jitconfig",
            {"name": "x", "runner_group_id": 1, "labels": []},
            422,
            "should be non-empty",
        ),
        ("PUT", "/repos/octo/repo/actions/runners", None, 404, "OperationNotFound"),
        ("GET", "/repos/octo/repo/actions/runner", None, 404, "PathNotFound"),
        ("GET", "/repos/octo/repo/actions/runners/abc", None, 422, "runner_id"),
        ("GET", "/repos/octo/repo/actions/runners", None, 422, "per_page"),
    ],
)
def test_a_request_off_the_description_is_a_violation(
    gh, http, method, path, body, status, expected
):
    params = {"per_page": "many"} if path.endswith("/runners") and method == "GET" else None
    reply = http.request(method, gh.url + path, json=body, params=params)
    assert reply.status_code == status
    assert reply.json()["message"]
    assert len(gh.violations) == 1, gh.violations
    assert gh.violations[0].startswith(f"{method} {path}: request: ")
    assert expected in gh.violations[0]
    assert gh.runners("repos/octo/repo") == gh.runners("orgs/octo") == []


def test_a_response_off_the_description_is_a_violation(gh, http, monkeypatch):
    monkeypatch.setattr(gh, "_rate_limit", lambda: {"rate": {"limit": "lots"}})
    assert http.get(f"{gh.url}/rate_limit").status_code == 200
    assert len(gh.violations) == 1
    assert gh.violations[0].startswith("GET /rate_limit: response 200: InvalidData")
    assert "'resources' is a required property" in gh.violations[0]


def test_pygithub_request_off_the_description_is_a_violation(gh):
    client = pygithub(gh, retry=None)
    with pytest.raises(github.GithubException) as raised:
        client.requester.requestJsonAndCheck(
            "POST", "/repos/octo/repo/actions/runners/generate-jitconfig", input={"labels": ["x"]}
        )
    assert raised.value.status == 422
    assert any("'name' is a required property" in v for v in gh.violations)


@pytest.mark.parametrize(
    "authorization", [None, "token wrong", f"Basic {TOKEN}", f"token {TOKEN}x", TOKEN]
)
def test_wrong_or_missing_token_is_401(gh, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    for path in ("/repos/octo/repo/actions/runners", "/user", "/repos/octo/repo"):
        reply = requests.get(gh.url + path, headers=headers)
        assert reply.status_code == 401
        assert reply.json()["message"] == "Bad credentials"
        assert reply.json()["documentation_url"]
    reply = requests.post(
        f"{gh.url}/repos/octo/repo/actions/runners/generate-jitconfig",
        headers=headers,
        json=jit_body(),
    )
    assert reply.status_code == 401
    assert gh.runners() == []
    assert gh.violations == []


def test_bearer_token_is_accepted_and_pygithub_bad_token_fails(gh):
    reply = requests.get(f"{gh.url}/user", headers={"Authorization": f"Bearer {TOKEN}"})
    assert reply.status_code == 200
    client = pygithub(gh, token="nope", retry=None)
    with pytest.raises(github.BadCredentialsException):
        client.get_repo("octo/repo")
    assert gh.violations == []


@pytest.mark.parametrize(
    "path",
    [
        "/repos/octo/nope",
        "/repos/other/repo/actions/runners",
        "/repos/octo/nope/actions/runners/1",
        "/orgs/nope/actions/runners",
        "/repos/octo/repo/actions/jobs/12345",
        "/repos/octo/repo/actions/runs/777/jobs",
    ],
)
def test_unknown_repo_org_or_object_is_404(gh, http, path):
    reply = http.get(gh.url + path)
    assert reply.status_code == 404
    assert reply.json()["message"] == "Not Found"
    assert gh.violations == []


def test_unknown_repo_and_org_are_404_through_pygithub_and_for_tokens(gh, http):
    with pytest.raises(github.UnknownObjectException):
        pygithub(gh).get_repo("octo/nope")
    for scope in ("repos/octo/nope", "orgs/nope"):
        reply = http.post(f"{gh.url}/{scope}/actions/runners/registration-token")
        assert reply.status_code == 404
    assert gh.tokens == {}
    assert gh.violations == []


def test_jit_config_for_a_taken_name_is_409(gh, http):
    url = f"{gh.url}/repos/octo/repo/actions/runners/generate-jitconfig"
    assert http.post(url, json=jit_body("dup")).status_code == 201
    reply = http.post(url, json=jit_body("dup"))
    assert reply.status_code == 409
    assert "already exists" in reply.json()["message"]
    # Names are per scope: the org may have a runner of the same name.
    org = f"{gh.url}/orgs/octo/actions/runners/generate-jitconfig"
    assert http.post(org, json=jit_body("dup")).status_code == 201
    assert gh.violations == []


def test_fault_switch_answers_rate_limit_with_headers(gh, http):
    reset = int(time.time()) + 60
    gh.fail_with = (
        403,
        {"message": "API rate limit exceeded", "documentation_url": "https://docs.github.com"},
        {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)},
    )
    gh.fail_count = 2
    url = f"{gh.url}/repos/octo/repo/actions/runners"
    for _ in range(2):
        reply = http.get(url)
        assert reply.status_code == 403
        assert reply.headers["X-RateLimit-Remaining"] == "0"
        assert reply.headers["X-RateLimit-Reset"] == str(reset)
        assert reply.json()["message"] == "API rate limit exceeded"
    assert http.get(url).status_code == 200
    assert (gh.fail_with, gh.fail_count) == (None, 1)  # disarmed once used up

    # The control API is not affected by the switch.
    gh.fail_with = (500, {"message": "Server Error"}, None)
    assert requests.post(f"{gh.url}/_fake/runners/999/online").status_code == 404
    assert http.get(url).status_code == 500
    assert http.get(url).status_code == 200
    assert gh.violations == []


def test_fault_switch_through_pygithub(gh):
    client = pygithub(gh, retry=None)
    repo = client.get_repo("octo/repo")
    gh.fail_with = (
        403,
        {"message": "API rate limit exceeded"},
        {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(time.time()) + 60)},
    )
    with pytest.raises(github.RateLimitExceededException):
        repo.get_self_hosted_runner(1)
    gh.fail_with = (403, {"message": "Resource not accessible by integration"}, {})
    with pytest.raises(github.GithubException) as raised:
        client.requester.requestJsonAndCheck(
            "POST", "/repos/octo/repo/actions/runners/generate-jitconfig", input=jit_body()
        )
    assert raised.value.status == 403
    assert gh.runners() == []
    assert gh.violations == []


def test_pagination_over_many_runners(gh, http):
    for number in range(130):
        gh.add_runner("octo/repo", f"r-{number:03}", ["gpu"])
    repo = pygithub(gh, per_page=100).get_repo("octo/repo")
    runners = repo.get_self_hosted_runners()
    assert [r.name for r in runners] == [f"r-{n:03}" for n in range(130)]
    assert runners.totalCount == 130
    pages = [e["query"] for e in gh.request_log if e["path"].endswith("/actions/runners")]
    assert pages == [{"per_page": "100"}, {"per_page": "100", "page": "2"}]

    # PyGithub's default of 30 per page: five pages through the Link headers.
    names = [r.name for r in pygithub(gh).get_repo("octo/repo").get_self_hosted_runners()]
    assert len(names) == 130 and len(set(names)) == 130

    base = f"{gh.url}/repos/octo/repo/actions/runners"
    first = http.get(base, params={"per_page": 50, "name": "r-001"})
    assert first.json()["total_count"] == 1 and "Link" not in first.headers
    middle = http.get(base, params={"per_page": 50, "page": 2})
    assert len(middle.json()["runners"]) == 50
    links = dict(
        (rel, url) for url, rel in re.findall(r'<([^>]+)>; rel="(\w+)"', middle.headers["Link"])
    )
    assert links == {
        "prev": f"{base}?per_page=50&page=1",
        "next": f"{base}?per_page=50&page=3",
        "last": f"{base}?per_page=50&page=3",
        "first": f"{base}?per_page=50&page=1",
    }
    last = http.get(links["last"])
    assert [r["name"] for r in last.json()["runners"]] == [f"r-{n}" for n in range(100, 130)]
    assert 'rel="next"' not in last.headers["Link"]
    assert gh.violations == []


def fake(gh, method, path, body=None):
    reply = requests.request(method, f"{gh.url}/_fake{path}", json=body)
    return reply.status_code, (reply.json() if reply.content else None)


def test_control_flow_register_run_and_remove_an_ephemeral_runner(gh, http):
    minted = http.post(f"{gh.url}/repos/octo/repo/actions/runners/registration-token").json()
    register = {"name": "cml-1", "labels": ["cml", "gpu"], "ephemeral": True}
    # A token is only good for the scope it was minted for, and must have been minted.
    assert fake(
        gh, "POST", "/register", {**register, "token": minted["token"], "scope": "orgs/octo"}
    ) == (
        401,
        {"message": "invalid registration token"},
    )
    bad = {**register, "token": "AAAA", "scope": "repos/octo/repo"}
    assert fake(gh, "POST", "/register", bad)[0] == 401
    status, body = fake(
        gh, "POST", "/register", {**register, "token": minted["token"], "scope": "repos/octo/repo"}
    )
    assert status == 201
    runner_id = body["runner_id"]
    other_id = gh.add_runner("repos/octo/repo", "cpu-only", ["cml"], status="online")["id"]
    assert [r["status"] for r in gh.runners("repos/octo/repo")] == ["offline", "online"]

    job_id = gh.queue_job(["gpu", "CML"], seconds=0.5, exit_code=0, name="train")
    assert gh.job(job_id)["status"] == "queued"
    assert fake(gh, "GET", f"/runners/{runner_id}/next-job") == (204, None)  # still offline
    assert fake(gh, "POST", f"/runners/{runner_id}/online")[0] == 200
    assert fake(gh, "GET", f"/runners/{other_id}/next-job") == (204, None)  # lacks "gpu"
    status, assigned = fake(gh, "GET", f"/runners/{runner_id}/next-job")
    assert (status, assigned) == (
        200,
        {"job_id": job_id, "name": "train", "seconds": 0.5, "exit_code": 0},
    )
    assert fake(gh, "GET", f"/runners/{runner_id}/next-job") == (204, None)  # busy
    job = gh.job(job_id)
    assert (job["status"], job["runner_name"], job["completed_at"]) == (
        "in_progress",
        "cml-1",
        None,
    )
    assert job["started_at"] is not None

    runner_url = f"{gh.url}/repos/octo/repo/actions/runners/{runner_id}"
    seen = http.get(runner_url).json()
    assert (seen["status"], seen["busy"], seen["version"]) == ("online", True, RUNNER_VERSION)
    assert http.delete(runner_url).status_code == 422  # GitHub refuses to delete a busy runner

    runs = http.get(f"{gh.url}/repos/octo/repo/actions/runs").json()
    assert runs["total_count"] == 1
    run = runs["workflow_runs"][0]
    assert (run["status"], run["conclusion"]) == ("in_progress", None)
    listed = http.get(f"{gh.url}/repos/octo/repo/actions/runs/{run['id']}/jobs").json()
    assert [(j["id"], j["status"], j["runner_name"]) for j in listed["jobs"]] == [
        (job_id, "in_progress", "cml-1")
    ]

    done = {"job_id": job_id, "conclusion": "success"}
    assert (
        fake(gh, "POST", f"/runners/{runner_id}/job-done", {**done, "conclusion": "ok"})[0] == 400
    )
    assert fake(gh, "POST", f"/runners/{other_id}/job-done", done)[0] == 400
    assert fake(gh, "POST", f"/runners/{runner_id}/job-done", done)[0] == 200
    job = gh.job(job_id)
    assert (job["status"], job["conclusion"]) == ("completed", "success")
    assert job["completed_at"] >= job["started_at"]

    # Ephemeral: the registration is gone once the job is done, and the double is told so.
    assert http.get(runner_url).status_code == 404
    assert fake(gh, "GET", f"/runners/{runner_id}/next-job")[0] == 404
    assert fake(gh, "POST", f"/runners/{runner_id}/offline")[0] == 404
    assert [r["name"] for r in gh.runners("repos/octo/repo")] == ["cpu-only"]

    api_job = http.get(f"{gh.url}/repos/octo/repo/actions/jobs/{job_id}").json()
    assert (api_job["status"], api_job["conclusion"], api_job["runner_name"]) == (
        "completed",
        "success",
        "cml-1",
    )
    assert (api_job["started_at"], api_job["completed_at"]) == (
        job["started_at"],
        job["completed_at"],
    )
    run = http.get(f"{gh.url}/repos/octo/repo/actions/runs", params={"status": "success"}).json()
    assert [(r["status"], r["conclusion"]) for r in run["workflow_runs"]] == [
        ("completed", "success")
    ]
    assert gh.violations == []


def test_a_jit_runner_runs_one_job_and_a_persistent_one_stays(gh, http):
    url = f"{gh.url}/orgs/octo/actions/runners/generate-jitconfig"
    encoded = http.post(url, json=jit_body("jit-1", ["gpu"])).json()["encoded_jit_config"]
    jit_id = json.loads(base64.b64decode(encoded))["runner_id"]
    token = http.post(f"{gh.url}/orgs/octo/actions/runners/registration-token").json()["token"]
    _, body = fake(
        gh,
        "POST",
        "/register",
        {
            "token": token,
            "name": "keep",
            "labels": ["gpu"],
            "ephemeral": False,
            "scope": "orgs/octo",
        },
    )
    keep_id = body["runner_id"]
    first = gh.queue_job(["gpu"], exit_code=1)
    second = gh.queue_job(["gpu"])
    for runner_id, job_id in ((jit_id, first), (keep_id, second)):
        assert fake(gh, "POST", f"/runners/{runner_id}/online")[0] == 200
        assert fake(gh, "GET", f"/runners/{runner_id}/next-job")[1]["job_id"] == job_id
    assert (
        fake(gh, "POST", f"/runners/{jit_id}/job-done", {"job_id": first, "conclusion": "failure"})[
            0
        ]
        == 200
    )
    assert (
        fake(
            gh, "POST", f"/runners/{keep_id}/job-done", {"job_id": second, "conclusion": "success"}
        )[0]
        == 200
    )
    assert gh.job(first)["conclusion"] == "failure"
    assert [(r["name"], r["busy"]) for r in gh.runners("orgs/octo")] == [("keep", False)]
    runs = http.get(f"{gh.url}/repos/octo/repo/actions/runs").json()["workflow_runs"]
    assert sorted(r["conclusion"] for r in runs) == ["failure", "success"]
    assert gh.violations == []


def test_register_replaces_a_runner_of_the_same_name_and_rejects_expired_tokens(gh, http):
    token = http.post(f"{gh.url}/repos/octo/repo/actions/runners/registration-token").json()[
        "token"
    ]
    body = {"token": token, "name": "same", "labels": [], "scope": "repos/octo/repo"}
    first = fake(gh, "POST", "/register", body)[1]["runner_id"]
    second = fake(gh, "POST", "/register", body)[1]["runner_id"]
    assert first != second
    assert [r["id"] for r in gh.runners("repos/octo/repo")] == [second]
    assert fake(gh, "POST", f"/runners/{first}/online")[0] == 404

    remove = http.post(f"{gh.url}/repos/octo/repo/actions/runners/remove-token").json()["token"]
    assert fake(gh, "POST", "/register", {**body, "token": remove})[0] == 401
    gh.tokens[token]["expires_at"] = datetime.now(timezone.utc) - timedelta(seconds=1)
    assert fake(gh, "POST", "/register", body)[0] == 401
    assert fake(gh, "GET", "/nothing-here")[0] == 404
    assert gh.violations == []
