"""The azurerm store against Azurite on loopback: objects, conditional writes, errors as one
line. Azurite checks ETags on writes and deletes and signatures on every request, so the whole
protocol runs against it."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cml_infra import backends
from cml_infra.backends import azurerm
from cml_infra.backends.azurerm import AzureBlobBackend
from cml_infra.backends.base import BackendError
from cml_infra.errors import UsageError
from tests.fakes.emulators import (
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    azurite_or_skip,
    free_port,
)
from tests.unit.backends import contract


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with azurite_or_skip() as url:
        yield url


@pytest.fixture
def account_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AZURE_STORAGE_KEY", AZURITE_KEY)
    return AZURITE_KEY


def _container(endpoint: str, name: str):
    from azure.storage.blob import BlobServiceClient

    credential = {"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY}
    return BlobServiceClient(endpoint, credential=credential).get_container_client(name)


@pytest.fixture
def store(endpoint: str, account_key: str, no_proxy) -> AzureBlobBackend:
    name = f"ledger-{secrets.token_hex(4)}"
    _container(endpoint, name).create_container()
    backend = backends.parse(f"azurerm://{AZURITE_ACCOUNT}/{name}/team/ci?endpoint={endpoint}")
    assert isinstance(backend, AzureBlobBackend)
    return backend


def _names(store: AzureBlobBackend) -> list[str]:
    container = _container(str(store.endpoint), store.container)
    return sorted(blob.name for blob in container.list_blobs())


# URLs and Terraform's block.


def test_url_names_account_container_prefix_and_endpoint() -> None:
    url = "azurerm://devstoreaccount1/ledger/team/ci/?endpoint=http://127.0.0.1:10000/devstoreaccount1/"
    backend = backends.parse(url)
    assert isinstance(backend, AzureBlobBackend)
    assert (backend.account, backend.container, backend.prefix) == (
        "devstoreaccount1",
        "ledger",
        "team/ci",
    )
    assert backend.account_url == "http://127.0.0.1:10000/devstoreaccount1"
    assert backend.key("runners/x/runner.json") == "team/ci/runners/x/runner.json"
    plain = backends.parse("azurerm://acct/ledger")
    assert (plain.prefix, plain.account_url) == ("", "https://acct.blob.core.windows.net")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("azurerm://acct", "--backend: 'azurerm://acct' names no container; the form is azurerm://"),
        ("azurerm://Acct/c01/p", "--backend: storage account 'Acct': use 3 to 24 lowercase"),
        ("azurerm://my-account/c01/p", "--backend: storage account 'my-account'"),
        ("azurerm://acct/C1/p", "--backend: container 'C1': use 3 to 63 lowercase letters"),
        ("azurerm://acct/a--b/p", "--backend: container 'a--b'"),
        ("azurerm://acct/ab/p", "--backend: container 'ab'"),
        ("azurerm://key@acct/c01/p", "--backend: a backend URL must not hold a credential"),
        ("azurerm://acct/c01/p?key=abc", "--backend: unknown URL parameter 'key'; valid: endpoint"),
        ("azurerm://acct/c01/p?endpoint=tcp://h", "--backend: endpoint 'tcp://h' is not an http"),
    ],
)  # fmt: skip
def test_bad_urls_are_one_line_on_the_flag(url: str, message: str) -> None:
    contract.refused_in_one_line(url, message)


def test_terraform_block_keeps_the_state_in_the_launch_folder() -> None:
    backend = backends.parse("azurerm://acct/ledger/team")
    assert backend.terraform_settings("runners/0123456789abcdef") == {
        "storage_account_name": "acct",
        "container_name": "ledger",
        "key": "team/runners/0123456789abcdef/terraform.tfstate",
        "use_azuread_auth": True,
    }
    assert backend.STATE_OBJECTS == ("terraform.tfstate",)
    block = backend.terraform_block("runners/0123456789abcdef")
    assert 'backend "azurerm" {' in block
    assert not any(word in block for word in ("access_key", "sas_token", "client_secret"))


def test_terraform_cannot_follow_a_custom_endpoint() -> None:
    backend = backends.parse("azurerm://acct/ledger/team?endpoint=https://blob.example.com/acct")
    with pytest.raises(UsageError, match=r"^--backend: .*no setting for a custom blob endpoint"):
        backend.terraform_block("runners/x")


# Credentials: Azure AD, or an account key from the environment for an endpoint.


def test_credentials_come_from_azure_ad_unless_an_endpoint_has_a_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ad = object()
    monkeypatch.setattr(azurerm, "_credential", lambda: ad)
    monkeypatch.setenv("AZURE_STORAGE_KEY", "a-key")
    # Without an endpoint the key is not used: Terraform's block asks for Azure AD too.
    assert backends.parse("azurerm://acct/ledger")._credential() is ad  # type: ignore[attr-defined]
    with_endpoint = backends.parse("azurerm://acct/ledger?endpoint=https://h/acct")
    assert with_endpoint._credential() == {"account_name": "acct", "account_key": "a-key"}  # type: ignore[attr-defined]
    monkeypatch.delenv("AZURE_STORAGE_KEY")
    assert with_endpoint._credential() is ad  # type: ignore[attr-defined]


def test_a_token_is_never_sent_over_http(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZURE_STORAGE_KEY", raising=False)
    backend = backends.parse("azurerm://acct/ledger?endpoint=http://127.0.0.1:10000/acct")
    with pytest.raises(UsageError, match=r"^--backend: .*set AZURE_STORAGE_KEY"):
        backend.check()


# The store.


def test_objects_round_trip_under_the_prefix(store: AzureBlobBackend) -> None:
    store.check()
    assert store.get("runners/a/runner.json") is None
    assert store.list("runners/") == []
    written = store.put("runners/a/runner.json", b"{}")
    store.put("runners/b/hold.json", b"1")
    found = store.get("runners/a/runner.json")
    assert found is not None and found.data == b"{}" and found.version == written
    assert sorted(store.list("runners/")) == ["runners/a/runner.json", "runners/b/hold.json"]
    assert store.list("runners/a/") == ["runners/a/runner.json"]
    assert _names(store) == ["team/ci/runners/a/runner.json", "team/ci/runners/b/hold.json"]
    # A plain put overwrites.
    assert store.put("runners/a/runner.json", b"{ }") not in (None, written)


def test_conditional_writes(store: AzureBlobBackend) -> None:
    contract.conditional_writes(store)
    assert store.delete("hold.json") is False  # gone already


def test_a_hold_is_seen_from_another_machine(store: AzureBlobBackend, tmp_path: Path) -> None:
    contract.hold_seen_from_another_machine(store, tmp_path)


def test_removing_a_workspace_deletes_the_state(store: AzureBlobBackend, tmp_path: Path) -> None:
    contract.removing_a_workspace_deletes_the_state(store, tmp_path)


# Errors: bad input at check() is one line on --backend; anything later is a failure.


def test_a_missing_container_is_bad_input(endpoint: str, account_key: str, no_proxy) -> None:
    url = f"azurerm://{AZURITE_ACCOUNT}/no-such-container/p?endpoint={endpoint}"
    with pytest.raises(UsageError) as caught:
        backends.parse(url).check()
    assert str(caught.value) == (
        f"--backend: {url}: container 'no-such-container' does not exist in '{AZURITE_ACCOUNT}'"
    )


def test_status_on_a_missing_container_exits_2_in_one_line(
    endpoint: str, account_key: str, no_proxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cml_infra.cli import app

    monkeypatch.setenv("CML_INFRA_HOME", str(tmp_path / "state"))
    url = f"azurerm://{AZURITE_ACCOUNT}/no-such-container/p?endpoint={endpoint}"
    expected = f"error: --backend: {url}: container 'no-such-container' does not exist in "
    for command in (["status"], ["down", "nothing"], ["cleanup", "--dry-run"]):
        result = CliRunner().invoke(app, [*command, "--backend", url])
        assert result.exit_code == 2, (command, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(expected), lines
    assert not list((tmp_path / "state").glob("backends/*/runners/*"))


def test_a_wrong_key_is_bad_input(store: AzureBlobBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_STORAGE_KEY", AZURITE_KEY[:-8] + "AAAAAAA=")
    backend = backends.parse(store.url)
    with pytest.raises(UsageError) as caught:
        backend.check()
    message = str(caught.value)
    assert message.startswith(f"--backend: {store.url}: no permission to list the container ")
    assert "(AuthorizationFailure)" in message and "\n" not in message


def test_a_refusal_at_run_time_is_a_failure_naming_the_backend(
    store: AzureBlobBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.check()
    monkeypatch.setenv("AZURE_STORAGE_KEY", AZURITE_KEY[:-8] + "AAAAAAA=")
    backend = backends.parse(store.url)
    with pytest.raises(BackendError) as caught:
        backend.put("runners/a/runner.json", b"{}")
    message = str(caught.value)
    assert message.startswith(f"{store.url} (runners/a/runner.json): could not write: ")
    assert "\n" not in message and caught.value.exit_code == 1
    assert _names(store) == []


def test_an_unreachable_endpoint_is_bad_input(
    account_key: str, no_proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(azurerm, "RETRIES", 0)
    url = f"azurerm://{AZURITE_ACCOUNT}/ledger/p?endpoint=http://127.0.0.1:{free_port()}/x"
    with pytest.raises(UsageError, match=r"^--backend: azurerm://.*: cannot reach the store \("):
        backends.parse(url).check()
