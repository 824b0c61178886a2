"""The fake GitHub's Apps (tests/fakes/github_auth.py): JWTs checked as GitHub checks them, the
installation lookups, installation tokens minted and then held to the installation's
permissions and scopes, over HTTP and through PyGithub's GithubIntegration."""

from __future__ import annotations

import base64
import json
import time
from datetime import datetime, timedelta, timezone

import github
import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.fakes.github import FakeGitHub

TOKEN = "ghp_fake_token_for_app_tests"
APP_ID = 4242
REPO = "octo/repo"
HEAD = "1234567890abcdef1234567890abcdef12345678"
PERMISSIONS = {"issues": "write", "pull_requests": "write", "contents": "read"}


def pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def gh(key):
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with FakeGitHub(TOKEN, repos=(REPO, "octo/other"), orgs=("octo", "elsewhere")) as fake:
        fake.add_app(
            APP_ID,
            public,
            slug="cml-reports",
            installations={7: [f"repos/{REPO}"], 8: ["orgs/octo"]},
            permissions=PERMISSIONS,
        )
        fake.open_pull(REPO, 5, HEAD)
        yield fake
        assert fake.violations == []


def integration(gh, private_pem: str) -> github.GithubIntegration:
    return github.GithubIntegration(
        auth=github.Auth.AppAuth(APP_ID, private_pem),
        base_url=gh.api_url,
        seconds_between_requests=None,
        seconds_between_writes=None,
    )


def signed(key, **claims) -> str:
    now = int(time.time())
    body = {"iat": now - 60, "exp": now + 300, "iss": str(APP_ID), **claims}
    return jwt.encode(body, pem(key), algorithm="RS256")


def unchecked_jwt(key, claims: dict) -> str:
    """RS256 over any claims (PyJWT refuses to encode an integer `iss`)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = part(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    body = part(json.dumps(claims).encode())
    signature = key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{head}.{body}.{part(signature)}"


def bearer(credential: str) -> requests.Session:
    http = requests.Session()
    http.trust_env = False
    http.headers["Authorization"] = f"Bearer {credential}"
    return http


def test_pygithub_app_flow_mints_a_token_that_comments_as_the_bot(gh, key):
    app = integration(gh, pem(key))
    installation = app.get_repo_installation("octo", "repo")
    assert installation.id == 7
    minted = app.get_access_token(installation.id)
    assert minted.token.startswith("ghs_") and len(minted.token) == 40
    assert gh.minted_tokens() == [minted.token]
    left = minted.expires_at - datetime.now(timezone.utc)
    assert timedelta(minutes=59) < left <= timedelta(hours=1)
    assert minted.permissions == PERMISSIONS

    with bearer(minted.token) as http:
        made = http.post(f"{gh.api_url}/repos/{REPO}/issues/5/comments", json={"body": "hi"})
        assert made.status_code == 201
        assert made.json()["user"]["login"] == "cml-reports[bot]"
        assert made.json()["user"]["type"] == "Bot"
        # contents: read, so no assets from this token; and nothing outside the installation.
        blob = http.post(f"{gh.api_url}/repos/{REPO}/git/blobs", json={"content": "x"})
        assert blob.status_code == 403
        assert blob.json()["message"] == "Resource not accessible by integration"
        assert http.get(f"{gh.api_url}/repos/octo/other").status_code == 404
        assert http.get(f"{gh.api_url}/orgs/elsewhere/actions/runners").status_code == 403
        assert http.get(f"{gh.api_url}/user").status_code == 403
        # An installation token is no JWT.
        assert http.get(f"{gh.api_url}/app").status_code == 401


def test_org_installation_and_its_runner_permission(gh, key):
    app = integration(gh, pem(key))
    installation = app.get_org_installation("octo")
    assert installation.id == 8
    token = app.get_access_token(8).token
    with bearer(token) as http:
        # Reaches the organization's endpoints, but its runners need their own permission.
        runners = http.get(f"{gh.api_url}/orgs/octo/actions/runners")
        assert runners.status_code == 403
        assert runners.headers["X-Accepted-GitHub-Permissions"] == (
            "organization_self_hosted_runners=read"
        )
        assert http.get(f"{gh.api_url}/repos/{REPO}").status_code == 404
    with pytest.raises(github.UnknownObjectException):
        app.get_org_installation("elsewhere")
    with pytest.raises(github.UnknownObjectException):
        app.get_repo_installation("octo", "other")


def test_jwt_routes_over_http(gh, key):
    with bearer(signed(key)) as http:
        me = http.get(f"{gh.api_url}/app")
        assert (me.status_code, me.json()["id"], me.json()["slug"]) == (200, APP_ID, "cml-reports")
        found = http.get(f"{gh.api_url}/repos/{REPO}/installation").json()
        assert (found["id"], found["app_id"], found["account"]["login"]) == (7, APP_ID, "octo")
        assert http.get(f"{gh.api_url}/orgs/octo/installation").json()["id"] == 8
        assert http.post(f"{gh.api_url}/app/installations/99/access_tokens").status_code == 404
        # Narrower than the installation: fine; wider: refused.
        narrow = http.post(
            f"{gh.api_url}/app/installations/7/access_tokens",
            json={"permissions": {"issues": "read"}, "repositories": ["repo"]},
        )
        assert narrow.status_code == 201
        assert narrow.json()["permissions"] == {"issues": "read"}
        assert [r["full_name"] for r in narrow.json()["repositories"]] == [REPO]
        wide = http.post(
            f"{gh.api_url}/app/installations/7/access_tokens",
            json={"permissions": {"contents": "write"}},
        )
        assert wide.status_code == 422
        elsewhere = http.post(
            f"{gh.api_url}/app/installations/7/access_tokens", json={"repositories": ["other"]}
        )
        assert elsewhere.status_code == 422
        # A JWT opens the App's endpoints only.
        assert http.get(f"{gh.api_url}/repos/{REPO}/pulls").status_code == 403
    assert gh.minted_tokens() == [narrow.json()["token"]]
    with bearer(narrow.json()["token"]) as http:
        refused = http.post(f"{gh.api_url}/repos/{REPO}/issues/5/comments", json={"body": "x"})
        assert refused.status_code == 403


def test_a_jwt_of_another_key_or_badly_timed_is_401(gh, key):
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(github.GithubException) as caught:
        integration(gh, pem(stranger)).get_repo_installation("octo", "repo")
    assert caught.value.status == 401
    now = int(time.time())
    bad = {
        "another key": signed(stranger),
        "too long": signed(key, iat=now - 60, exp=now + 660),
        "expired": signed(key, iat=now - 700, exp=now - 100),
        "from the future": signed(key, iat=now + 300, exp=now + 600),
        "unknown app": signed(key, iss="999"),
        "not a JWT": "eyJ.not.jwt",
        "HS256": jwt.encode({"iat": now, "exp": now + 60, "iss": str(APP_ID)}, "k" * 32, "HS256"),
    }
    for what, credential in bad.items():
        with bearer(credential) as http:
            reply = http.get(f"{gh.api_url}/app")
            assert reply.status_code == 401, what
            assert reply.json()["message"], what
    integer_iss = unchecked_jwt(key, {"iat": now - 60, "exp": now + 300, "iss": APP_ID})
    with bearer(integer_iss) as http:  # an integer `iss` is fine too
        assert http.get(f"{gh.api_url}/app").status_code == 200
    with bearer(TOKEN) as http:  # a token is no JWT
        assert http.get(f"{gh.api_url}/repos/{REPO}/installation").status_code == 401
    assert gh.minted_tokens() == []


def test_an_expired_installation_token_is_401(gh, key, monkeypatch):
    token = integration(gh, pem(key)).get_access_token(7).token
    with bearer(token) as http:
        assert http.get(f"{gh.api_url}/repos/{REPO}/pulls").status_code == 200
        later = datetime.now(timezone.utc) + timedelta(hours=1, seconds=1)
        monkeypatch.setattr("tests.fakes.github._now", lambda: later)
        reply = http.get(f"{gh.api_url}/repos/{REPO}/pulls")
        assert (reply.status_code, reply.json()["message"]) == (401, "Bad credentials")
