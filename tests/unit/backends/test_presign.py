"""Signed URLs: what an instance with no credential of the store uses to read its task and
write its reports. S3 against moto's server on loopback (a PUT through the URL stores what the
backend reads); how long a URL lives, and what limits it; what GCS and Azure sign with when no
key is at hand (IAM signBlob, a user delegation key), with the network calls stood in for.
The round trips on fake-gcs-server and Azurite are in tests/e2e/test_presign_emulators.py."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from cml_infra import backends
from cml_infra.backends import azurerm
from cml_infra.backends.azurerm import AzureBlobBackend
from cml_infra.backends.base import MAX_URL_SECONDS, BackendError, SignedUrl
from cml_infra.backends.gs import GcsBackend
from cml_infra.backends.s3 import UNKNOWN_EXPIRY_SECONDS, S3Backend
from tests.fakes.credentials import service_account_key
from tests.fakes.emulators import moto_server

OBJECT = "runners/0123456789abcdef/task/status.json"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _query(url: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(url).query).items()}


def _lives(signed: SignedUrl, before: datetime, seconds: int) -> bool:
    """Whether `signed` expires `seconds` after `before`, give or take the test's own time
    (expires_at counts from the whole second the URL was signed in)."""
    return abs((signed.expires_at - before).total_seconds() - seconds) <= 3


# --- S3: moto's server ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture
def s3(moto_endpoint: str, aws_credentials: None, no_proxy: None) -> S3Backend:
    import boto3

    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(
        Bucket="presigned"
    )
    backend = backends.parse(f"s3://presigned/team/ci?region=us-east-1&endpoint={moto_endpoint}")
    assert isinstance(backend, S3Backend)
    return backend


def _put(url: str, data: bytes, headers: dict[str, str]) -> int:
    # Without a content type urllib sends a form's, which moto's server reads as a form.
    sent = {"Content-Type": "application/octet-stream", **headers}
    request = urllib.request.Request(url, data=data, method="PUT", headers=sent)
    with _OPENER.open(request, timeout=30) as answer:
        return int(answer.status)


def test_s3_put_url_stores_what_the_backend_reads(s3: S3Backend, moto_endpoint: str) -> None:
    put = s3.sign(OBJECT, "put", 3600)
    assert (put.method, put.headers) == ("PUT", {})
    assert put.url.startswith(f"{moto_endpoint}/presigned/team/ci/{OBJECT}?")
    assert _query(put.url)["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert _put(put.url, b'{"state": "running"}', put.headers) == 200
    blob = s3.get(OBJECT)
    assert blob is not None and blob.data == b'{"state": "running"}'

    s3.put("runners/0123456789abcdef/task/in.tar", b"\x00task\xff")
    get = s3.sign("runners/0123456789abcdef/task/in.tar", "GET", 3600)
    with _OPENER.open(get.url, timeout=30) as answer:
        assert answer.read() == b"\x00task\xff"


def test_s3_lifetime_is_clamped(s3: S3Backend) -> None:
    before = datetime.now(timezone.utc)
    for asked, given in [(1, 60), (900, 900), (30 * 24 * 3600, MAX_URL_SECONDS)]:
        signed = s3.sign(OBJECT, "GET", asked)
        assert _query(signed.url)["X-Amz-Expires"] == str(given)
        assert _lives(signed, before, given)
        assert signed.expires_at.tzinfo is not None


def test_s3_url_on_aws_is_regional_and_virtual_hosted(aws_credentials: None) -> None:
    backend = backends.parse("s3://presigned/team/ci?region=eu-west-1")
    url = backend.sign(OBJECT, "PUT", 3600).url
    assert url.startswith(f"https://presigned.s3.eu-west-1.amazonaws.com/team/ci/{OBJECT}?")
    dotted = backends.parse("s3://presigned.example.org/ci?region=eu-west-1")
    # A dotted name cannot be a host under S3's wildcard certificate: path style.
    assert dotted.sign(OBJECT, "GET", 60).url.startswith(
        f"https://s3.eu-west-1.amazonaws.com/presigned.example.org/ci/{OBJECT}?"
    )


class _Expiring:
    """A credential provider (as an OIDC or AssumeRole session is) whose keys expire."""

    METHOD = "test-session"

    def __init__(self, seconds: float) -> None:
        self.expiry = datetime.now(timezone.utc) + timedelta(seconds=seconds)

    def load(self) -> Any:
        from botocore.credentials import RefreshableCredentials

        def refresh() -> dict[str, str]:
            raise AssertionError("credentials this fresh are not refreshed")

        return RefreshableCredentials.create_from_metadata(
            {"access_key": "ASIATEST", "secret_key": "secret", "token": "session-token",
             "expiry_time": self.expiry.isoformat()},
            refresh_using=refresh, method=self.METHOD,
        )  # fmt: skip


def _with_session(backend: S3Backend, provider: _Expiring) -> None:
    import boto3

    session = boto3.session.Session()
    session._session.get_component("credential_provider").insert_before("env", provider)
    backend._session = session


@pytest.mark.parametrize(
    ("credentials_last", "asked", "given"),
    [(1200, 3600, 1200), (1200, 600, 600), (2 * 24 * 3600, MAX_URL_SECONDS, 2 * 24 * 3600)],
)
def test_s3_url_lives_no_longer_than_temporary_credentials(
    s3: S3Backend, credentials_last: int, asked: int, given: int
) -> None:
    _with_session(s3, _Expiring(credentials_last))
    before = datetime.now(timezone.utc)
    signed = s3.sign(OBJECT, "PUT", asked)
    query = _query(signed.url)
    assert query["X-Amz-Security-Token"] == "session-token"
    assert query["X-Amz-Credential"].startswith("ASIATEST/")
    assert given - 3 <= int(query["X-Amz-Expires"]) <= given
    assert _lives(signed, before, given)
    assert _put(signed.url, b"reported", {}) == 200  # the session's URL works meanwhile
    blob = s3.get(OBJECT)
    assert blob is not None and blob.data == b"reported"


def test_s3_expiry_from_the_environment_is_respected(
    moto_endpoint: str, aws_credentials: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token")
    backend = backends.parse(f"s3://presigned/ci?region=us-east-1&endpoint={moto_endpoint}")
    before = datetime.now(timezone.utc)
    # A token with no expiry said: taken to last STS's default hour.
    unknown = backend.sign(OBJECT, "GET", MAX_URL_SECONDS)
    assert _query(unknown.url)["X-Amz-Expires"] == str(UNKNOWN_EXPIRY_SECONDS)
    assert _lives(unknown, before, UNKNOWN_EXPIRY_SECONDS)
    # With AWS_CREDENTIAL_EXPIRATION, botocore knows when the session ends.
    ends = datetime.now(timezone.utc) + timedelta(minutes=40)
    monkeypatch.setenv("AWS_CREDENTIAL_EXPIRATION", ends.isoformat())
    backend = backends.parse(f"s3://presigned/ci?region=us-east-1&endpoint={moto_endpoint}")
    known = backend.sign(OBJECT, "GET", MAX_URL_SECONDS)
    assert abs((known.expires_at - ends).total_seconds()) <= 2
    assert 2400 - 3 <= int(_query(known.url)["X-Amz-Expires"]) <= 2400


def test_s3_without_credentials_is_one_line_without_a_url(no_aws_credentials: None) -> None:
    backend = backends.parse("s3://presigned/ci?region=us-east-1")
    with pytest.raises(BackendError) as raised:
        backend.sign(OBJECT, "GET", 60)
    assert str(raised.value) == (
        f"s3://presigned/ci?region=us-east-1 ({OBJECT}): no AWS credentials to sign a URL with"
    )


def test_only_get_and_put_are_signed(aws_credentials: None) -> None:
    with pytest.raises(ValueError, match="'DELETE'"):
        backends.parse("s3://presigned/ci?region=us-east-1").sign(OBJECT, "DELETE", 60)


def test_a_signed_url_stays_out_of_its_repr(s3: S3Backend) -> None:
    signed = s3.sign(OBJECT, "GET", 60)
    assert "X-Amz-Signature" in signed.url
    assert "X-Amz" not in repr(signed) and signed.url not in repr(signed)


# --- GCS: a key signs locally, anything else through IAM signBlob ----------------------------


@pytest.fixture
def key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    key = service_account_key(tmp_path / "key.json")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    return key


def test_gcs_key_signs_a_v4_url_on_google(key_file: Path) -> None:
    backend = backends.parse("gs://presigned/team/ci")
    before = datetime.now(timezone.utc)
    signed = backend.sign(OBJECT, "PUT", 30 * 24 * 3600)
    assert signed.url.startswith(f"https://storage.googleapis.com/presigned/team/ci/{OBJECT}?")
    query = _query(signed.url)
    assert query["X-Goog-Algorithm"] == "GOOG4-RSA-SHA256"
    assert query["X-Goog-Credential"].startswith("signer@test.iam.gserviceaccount.com/")
    assert query["X-Goog-Expires"] == str(MAX_URL_SECONDS)
    assert _lives(signed, before, MAX_URL_SECONDS)
    # RSA-2048, hex: 256 bytes signed locally with the key.
    assert len(query["X-Goog-Signature"]) == 512


class _AttachedAccount:
    """Stands in for a VM's or a federated identity's credentials: a token, no key."""

    def __init__(self, email: str | None) -> None:
        self.service_account_email = "default" if email else None
        self._email = email
        self.token: str | None = None
        self.refreshed = 0

    def refresh(self, request: Any) -> None:
        self.refreshed += 1
        self.token = "access-token"
        self.service_account_email = self._email


def test_gcs_without_a_key_signs_through_iam(monkeypatch: pytest.MonkeyPatch) -> None:
    import google.auth
    from google.cloud.storage import _signing

    attached = _AttachedAccount("runner@project.iam.gserviceaccount.com")
    monkeypatch.setattr(google.auth, "default", lambda scopes=None: (attached, "project"))
    asked: list[tuple[str, str]] = []

    def sign_blob(message: str, access_token: str, email: str, *args: Any) -> str:
        asked.append((access_token, email))
        return base64.b64encode(b"\x01" * 256).decode()

    monkeypatch.setattr(_signing, "_sign_message", sign_blob)
    backend = backends.parse("gs://presigned/team/ci?endpoint=http://127.0.0.1:9")
    assert isinstance(backend, GcsBackend)
    signed = backend.sign(OBJECT, "GET", 600)
    assert asked == [("access-token", "runner@project.iam.gserviceaccount.com")]
    assert attached.refreshed == 1
    assert signed.url.startswith(f"http://127.0.0.1:9/presigned/team/ci/{OBJECT}?")
    query = _query(signed.url)
    assert query["X-Goog-Credential"].startswith("runner@project.iam.gserviceaccount.com/")
    assert query["X-Goog-Signature"] == "01" * 256


def test_gcs_with_no_service_account_says_one_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    import google.auth

    federated = _AttachedAccount(None)
    monkeypatch.setattr(google.auth, "default", lambda scopes=None: (federated, None))
    backend = backends.parse("gs://presigned/ci")
    with pytest.raises(BackendError) as raised:
        backend.sign(OBJECT, "PUT", 60)
    assert str(raised.value).startswith(
        f"gs://presigned/ci ({OBJECT}): these Google credentials (a user's, or federated with "
        "no service account) cannot sign a URL: only a service account can"
    )
    assert federated.refreshed == 0


def test_gcs_with_no_credentials_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "absent.json"))
    backend = backends.parse("gs://presigned/ci?endpoint=http://127.0.0.1:9")
    with pytest.raises(BackendError, match=r"^gs://\S+ \(runners/\S+\): no Google credentials"):
        backend.sign(OBJECT, "GET", 60)


# --- Azure: an account key (Azurite), else a user delegation key -----------------------------


class _Credential:
    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        raise AssertionError("no token is asked for: get_user_delegation_key is stood in for")


@pytest.fixture
def delegation(monkeypatch: pytest.MonkeyPatch) -> list[tuple[datetime, datetime]]:
    """Azure's user delegation keys, stood in for: each request's (start, expiry)."""
    from azure.storage.blob import BlobServiceClient, UserDelegationKey

    monkeypatch.setattr(azurerm, "_credential", _Credential)
    issued: list[tuple[datetime, datetime]] = []

    def get_user_delegation_key(
        self: Any, key_start_time: datetime, key_expiry_time: datetime, **kwargs: Any
    ) -> Any:
        issued.append((key_start_time, key_expiry_time))
        key = UserDelegationKey()
        key.signed_oid = "00000000-0000-0000-0000-00000000000a"
        key.signed_tid = "00000000-0000-0000-0000-00000000000b"
        key.signed_start = key_start_time.strftime("%Y-%m-%dT%H:%M:%SZ")
        key.signed_expiry = key_expiry_time.strftime("%Y-%m-%dT%H:%M:%SZ")
        key.signed_service = "b"
        key.signed_version = "2025-01-05"
        key.value = base64.b64encode(b"k" * 32).decode()
        return key

    monkeypatch.setattr(BlobServiceClient, "get_user_delegation_key", get_user_delegation_key)
    return issued


def test_azure_signs_with_a_user_delegation_key(
    delegation: list[tuple[datetime, datetime]],
) -> None:
    backend = backends.parse("azurerm://presigned/ledger/ci")
    assert isinstance(backend, AzureBlobBackend)
    before = datetime.now(timezone.utc)
    put = backend.sign(OBJECT, "PUT", 30 * 24 * 3600)
    assert put.url.startswith(f"https://presigned.blob.core.windows.net/ledger/ci/{OBJECT}?")
    assert put.headers == {"x-ms-blob-type": "BlockBlob"}
    query = _query(put.url)
    assert (query["sp"], query["sr"], query["spr"]) == ("cw", "b", "https")
    assert query["skoid"] == "00000000-0000-0000-0000-00000000000a"
    assert _lives(put, before, MAX_URL_SECONDS)
    assert query["se"] == put.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    [(start, expiry)] = delegation
    assert expiry == put.expires_at and expiry - start == timedelta(seconds=MAX_URL_SECONDS)
    # More URLs that expire no later reuse the key; one that outlives it asks for another.
    get = backend.sign("runners/0123456789abcdef/task/in.tar", "GET", 3600)
    assert (_query(get.url)["sp"], get.headers) == ("r", {})
    assert len(delegation) == 1
    assert len(backend.sign(OBJECT, "PUT", 60).url) > 0 and len(delegation) == 1


def test_azure_delegation_refused_is_one_line_without_a_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from azure.core.exceptions import HttpResponseError
    from azure.storage.blob import BlobServiceClient

    def refuse(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise HttpResponseError(message="This request is not authorized.\nRequestId: 1")

    monkeypatch.setattr(azurerm, "_credential", _Credential)
    monkeypatch.setattr(BlobServiceClient, "get_user_delegation_key", refuse)
    backend = backends.parse("azurerm://presigned/ledger/ci")
    with pytest.raises(BackendError) as raised:
        backend.sign(OBJECT, "GET", 60)
    assert str(raised.value) == (
        f"azurerm://presigned/ledger/ci ({OBJECT}): could not sign a GET URL for: "
        "This request is not authorized."
    )


def test_azure_account_key_signs_without_asking_azure(
    delegation: list[tuple[datetime, datetime]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(azurerm.KEY_VARIABLE, base64.b64encode(b"account-key").decode())
    backend = backends.parse(
        "azurerm://devstoreaccount1/ledger/ci?endpoint=http://127.0.0.1:9/devstoreaccount1"
    )
    before = datetime.now(timezone.utc)
    signed = backend.sign(OBJECT, "GET", 1)
    assert signed.url.startswith(f"http://127.0.0.1:9/devstoreaccount1/ledger/ci/{OBJECT}?")
    assert _lives(signed, before, 60)
    assert "skoid" not in _query(signed.url) and "spr" not in _query(signed.url)
    assert delegation == []
