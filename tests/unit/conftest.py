"""Shared fixtures for the unit tests: a clean environment and a restored umask."""

from __future__ import annotations

import os
import sys
from datetime import datetime, timedelta, timezone

import pytest

from cml_infra.record import RunnerRecord


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No CML_INFRA_* setting of the machine leaks in; the machine's Terraform config neither."""
    for key in list(os.environ):
        if key.startswith("CML_INFRA_"):
            monkeypatch.delenv(key)
    # Nor a config file in a folder above the test's: tests/unit/test_config.py turns it on.
    monkeypatch.setenv("CML_INFRA_CONFIG", "")
    monkeypatch.delenv("TF_CLI_CONFIG_FILE", raising=False)


class NoAzureCredential:
    """Stands in for DefaultAzureCredential, which would probe the Azure metadata server."""

    def get_token(self, *scopes, **kwargs):
        raise RuntimeError("no Azure credential in the unit tests")


@pytest.fixture(autouse=True)
def no_cloud_metadata(monkeypatch):
    """No test reaches a non-loopback address: the SDKs look for credentials on cloud metadata
    servers (169.254.169.254, metadata.google.internal) when they find none elsewhere."""
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # Container credentials would be fetched from 169.254.170.2 or any URL given here.
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", raising=False)
    # google-auth compares NO_GCE_CHECK with "true" exactly; port 9 on loopback is closed.
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")
    monkeypatch.setenv("GCE_METADATA_ROOT", "127.0.0.1:9")
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")
    # google-auth reads these when first imported; if an earlier import saw other values, fix it.
    metadata = sys.modules.get("google.auth.compute_engine._metadata")
    if metadata is not None:
        monkeypatch.setattr(metadata, "_NO_GCE_CHECK", True)
        monkeypatch.setattr(metadata, "_GCE_METADATA_HOST", "127.0.0.1:9")
    from cml_infra.clouds import azure

    monkeypatch.setattr(azure, "_credential", NoAzureCredential)


@pytest.fixture(autouse=True)
def fresh_boto3_session():
    """boto3's default session keeps the credentials it first resolved: a later test (the fuzz
    test's doctor, with no credentials anywhere) would otherwise sign with an earlier test's
    fake keys and reach for the real STS."""
    boto3 = sys.modules.get("boto3")
    if boto3 is not None:
        boto3.DEFAULT_SESSION = None
    yield
    boto3 = sys.modules.get("boto3")
    if boto3 is not None:
        boto3.DEFAULT_SESSION = None


@pytest.fixture
def aws_credentials(monkeypatch):
    """Fake AWS credentials, and nothing else of the machine's AWS set-up."""
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # Loading moto's table of public AMIs takes seconds; no test here looks one up.
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")


@pytest.fixture
def no_aws_credentials(monkeypatch, tmp_path):
    """No AWS credentials anywhere: neither in the environment, nor in a file, nor from EC2."""
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "nonexistent" / "creds"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "nonexistent" / "config"))


@pytest.fixture
def mocked_aws(aws_credentials):
    """EC2 and STS answered in process by moto."""
    from moto import mock_aws

    from tests.fakes import ec2

    with mock_aws():
        yield
    # A client made under moto must never outlive it.
    ec2.client.cache_clear()


@pytest.fixture
def no_proxy(monkeypatch):
    """Loopback traffic goes straight to the fake servers: no proxy of the machine in the way."""
    for key in list(os.environ):
        if key.lower().endswith("_proxy"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("no_proxy", "127.0.0.1")


@pytest.fixture
def route_server(no_proxy):
    """Starts loopback servers answering from route tables (tests/fakes/routes.py), with no
    proxy in the way; all are stopped after the test."""
    from tests.fakes.routes import Routes

    servers: list[Routes] = []

    def start(routes):
        servers.append(Routes(routes))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture(autouse=True)
def restore_umask():
    """StateDir.ensure() sets the process umask to 077; later tests must not inherit it."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield
    os.umask(previous)


@pytest.fixture
def umask_022():
    """A permissive umask, as on most machines, so that 0600/0700 come from the code."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def record_of(name="runner-a", **changes) -> RunnerRecord:
    now = datetime.now(timezone.utc)
    fields = {
        "name": name,
        "cloud": "local",
        "region": "local",
        "state": "running",
        "created_at": now,
        "updated_at": now,
        "expires_at": now + timedelta(hours=1),
        "idle_timeout": 300,
        "ttl": 3600,
        "labels": ("gpu", f"cml-infra-{name}"),
        "command": ("echo", "hi"),
    }
    fields.update(changes)
    return RunnerRecord(**fields)


@pytest.fixture
def make_record():
    return record_of


@pytest.fixture
def fake_compute(monkeypatch):
    """The Compute API of project "proj", answered on loopback by tests/fakes/gcp.py, which the gcp
    cloud is pointed at; every request and response it saw keeps to Google's description."""
    from tests.fakes.gcp import FakeCompute

    with FakeCompute("proj") as fake:
        monkeypatch.setenv("CML_INFRA_GCP_API_ENDPOINT", fake.url)
        monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "proj")
        yield fake
        assert fake.violations == []
