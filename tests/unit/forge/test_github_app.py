"""cml_infra.forge.github_app: the App's options checked before anything happens, and an
installation token minted against the loopback FakeGitHub for a repository and an organization."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cml_infra.errors import CmlInfraError, UsageError
from cml_infra.forge import for_target, github_app
from cml_infra.forge.github_app import KEY_ENV, GitHubApp, from_options
from cml_infra.spec import ForgeTarget
from tests.fakes.github import FakeGitHub

pytestmark = pytest.mark.usefixtures("no_proxy")

TOKEN = "ghp_unit_CANARY_app"
APP_ID = 4242


def _pem(key: object) -> str:
    return key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.setattr(github_app, "_MINTED", {})


@pytest.fixture
def key_file(tmp_path, rsa_key):
    path = tmp_path / "app.pem"
    path.write_text(_pem(rsa_key))
    return path


def _key_body(pem: str) -> str:
    """A line from the middle of the key: what must never be quoted anywhere."""
    return pem.splitlines()[5]


def test_no_app_id_means_no_app():
    assert from_options(None, None) is None


def test_key_from_file_or_environment(key_file, monkeypatch):
    app = from_options("4242", str(key_file))
    assert app is not None and app.app_id == "4242"
    assert "BEGIN" not in repr(app)  # the key is kept out of every repr
    monkeypatch.setenv(KEY_ENV, key_file.read_text())
    assert from_options(" 4242 ", None) == GitHubApp("4242", key_file.read_text())


@pytest.mark.parametrize(
    ("app_id", "key", "flag", "words"),
    [
        ("app", "file", "--github-app-id", "not an App id"),
        ("0", "file", "--github-app-id", "not an App id"),
        (None, "file", "--github-app-id", "without the App's id"),
        ("4242", None, "--github-app-key", "needs its private key"),
        ("4242", "missing", "--github-app-key", "cannot read"),
        ("4242", "garbage", "--github-app-key", "not an unencrypted PEM private key"),
        ("4242", "ec", "--github-app-key", "RSA"),
        ("4242", "binary", "--github-app-key", "not text"),
    ],
)
def test_bad_options_are_one_line_naming_the_flag(tmp_path, key_file, app_id, key, flag, words):
    files = {
        "file": key_file,
        "missing": tmp_path / "nope.pem",
        "garbage": tmp_path / "garbage.pem",
        "ec": tmp_path / "ec.pem",
        "binary": tmp_path / "binary.pem",
    }
    files["garbage"].write_text("-----BEGIN RSA PRIVATE KEY-----\nSECRETSTUFF\n")
    files["ec"].write_text(_pem(ec.generate_private_key(ec.SECP256R1())))
    files["binary"].write_bytes(b"\xff\xfe\x00key")
    with pytest.raises(UsageError) as caught:
        from_options(app_id, str(files[key]) if key else None)
    assert caught.value.source == flag
    message = str(caught.value)
    assert words in message and "\n" not in message
    assert "SECRETSTUFF" not in message and _key_body(key_file.read_text()) not in message


def test_encrypted_key_is_refused_without_quoting_it(tmp_path, rsa_key):
    path = tmp_path / "enc.pem"
    text = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    ).decode()
    path.write_text(text)
    with pytest.raises(UsageError) as caught:
        from_options("4242", str(path))
    assert _key_body(text) not in str(caught.value)


@pytest.fixture
def gh(rsa_key):
    public = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with FakeGitHub(TOKEN, repos=("octo/repo",), orgs=("octo",)) as fake:
        fake.add_app(
            APP_ID,
            public,
            slug="cml-infra-ci",
            installations={7: ["repos/octo/repo"], 8: ["orgs/octo"]},
            permissions={
                "administration": "write",
                "organization_self_hosted_runners": "write",
                "issues": "write",
                "contents": "write",
            },
        )
        yield fake
        assert fake.violations == [], fake.violations


@pytest.mark.parametrize("target", [{"repo": "octo/repo"}, {"org": "octo"}])
def test_mints_an_installation_token_the_forge_then_uses(gh, rsa_key, target):
    app = GitHubApp(str(APP_ID), _pem(rsa_key))
    forge = for_target(ForgeTarget(api_url=gh.api_url, **target), app)
    assert forge.runners() == []
    minted = forge._token  # type: ignore[attr-defined]
    assert minted.startswith("ghs_") and minted in gh.minted_tokens()
    # One mint per target for the life of the command.
    again = for_target(ForgeTarget(api_url=gh.api_url, **target), app)
    assert again._token == minted  # type: ignore[attr-defined]


def test_an_app_not_installed_there_is_one_clean_error(gh, rsa_key):
    gh.add_repo("octo/other")
    app = GitHubApp(str(APP_ID), _pem(rsa_key))
    with pytest.raises(CmlInfraError, match=r"App 4242 is not installed on octo/other \(404\)"):
        app.token_for(ForgeTarget(repo="octo/other", api_url=gh.api_url))


def test_a_key_of_another_app_is_rejected_without_quoting_it(gh):
    other = _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    app = GitHubApp(str(APP_ID), other)
    with pytest.raises(CmlInfraError) as caught:
        app.token_for(ForgeTarget(repo="octo/repo", api_url=gh.api_url))
    assert "401" in str(caught.value) and "--github-app-key" in str(caught.value)
    assert _key_body(other) not in str(caught.value)


def test_the_key_goes_only_over_https(rsa_key):
    app = GitHubApp(str(APP_ID), _pem(rsa_key))
    with pytest.raises(UsageError, match="https"):
        app.token_for(ForgeTarget(repo="octo/repo", api_url="http://example.com/api/v3"))
