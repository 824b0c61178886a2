"""The S3 store on moto: objects, conditional writes, and errors as one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from botocore.stub import Stubber

from cml_infra.backends import parse
from cml_infra.backends.base import BackendError
from cml_infra.backends.s3 import S3Backend
from cml_infra.errors import UsageError
from tests.unit.backends import contract


def test_objects_round_trip_under_the_prefix(bucket: S3Backend) -> None:
    assert bucket.get("runners/a/runner.json") is None
    bucket.put("runners/a/runner.json", b"{}")
    bucket.put("runners/b/hold.json", b"1")
    assert sorted(bucket.list("runners/")) == ["runners/a/runner.json", "runners/b/hold.json"]
    found = bucket.get("runners/a/runner.json")
    assert found is not None and found.data == b"{}"
    raw = bucket.client().list_objects_v2(Bucket=bucket.bucket)["Contents"]
    assert {entry["Key"] for entry in raw} == {
        "team/ci/runners/a/runner.json",
        "team/ci/runners/b/hold.json",
    }


def test_conditional_writes(bucket: S3Backend) -> None:
    contract.conditional_writes(bucket)
    # S3 answers a delete of what is gone as done: it cannot tell.
    assert bucket.delete("hold.json") is True


def test_removing_a_workspace_deletes_the_state(bucket: S3Backend, tmp_path: Path) -> None:
    contract.removing_a_workspace_deletes_the_state(bucket, tmp_path)


def test_a_missing_bucket_is_bad_input(aws_credentials) -> None:
    from moto import mock_aws

    with mock_aws():
        backend = parse("s3://no-such-bucket-x/p?region=us-east-1")
        with pytest.raises(
            UsageError,
            match=r"^--backend: s3://no-such-bucket-x/p.*bucket 'no-such-bucket-x' does not exist$",
        ):
            backend.check()


@pytest.mark.parametrize("code", ["AccessDenied", "InvalidAccessKeyId", "ExpiredToken"])
def test_no_permission_to_list_is_bad_input(bucket: S3Backend, code: str) -> None:
    with Stubber(bucket.client()) as stub:
        stub.add_client_error("list_objects_v2", service_error_code=code, http_status_code=403)
        with pytest.raises(
            UsageError, match=f"^--backend: .*no permission to list the bucket \\({code}\\)$"
        ):
            bucket.check()


def test_a_refusal_at_run_time_is_a_failure_naming_the_backend(bucket: S3Backend) -> None:
    with Stubber(bucket.client()) as stub:
        stub.add_client_error("put_object", service_error_code="AccessDenied", http_status_code=403)
        with pytest.raises(BackendError) as caught:
            bucket.put("runners/a/runner.json", b"{}")
    assert str(caught.value).startswith(f"{bucket.url} (runners/a/runner.json): could not write: ")
    assert caught.value.exit_code == 1
