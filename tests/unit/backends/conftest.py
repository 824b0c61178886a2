"""A bucket answered in process by moto, and a ledger in it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cml_infra.backends import parse
from cml_infra.backends.ledger import RemoteLedger
from cml_infra.backends.s3 import S3Backend
from cml_infra.state import StateDir

BUCKET = "ledger-bucket"
URL = f"s3://{BUCKET}/team/ci?region=us-east-1"


@pytest.fixture
def bucket(aws_credentials) -> Iterator[S3Backend]:
    import boto3
    from moto import mock_aws

    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
        backend = parse(URL)
        assert isinstance(backend, S3Backend)
        yield backend


@pytest.fixture(autouse=True)
def machine_state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ledger keeps this machine's local instances in the user state dir: the test's own."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "machine"))


@pytest.fixture
def ledger(bucket: S3Backend, tmp_path: Path) -> RemoteLedger:
    return RemoteLedger(StateDir(tmp_path / "state"), bucket)
