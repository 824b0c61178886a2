"""Backend URLs: each store's form, and one line on --backend for anything wrong."""

from __future__ import annotations

import pytest

from cml_infra import backends
from cml_infra.backends.s3 import S3Backend
from cml_infra.errors import UsageError
from tests.unit.backends import contract


def test_s3_url_with_region_and_endpoint() -> None:
    backend = backends.parse(
        "s3://bucket-one/team/ci/?region=eu-west-1&endpoint=http://127.0.0.1:9000"
    )
    assert isinstance(backend, S3Backend)
    assert (backend.bucket, backend.prefix, backend.region) == (
        "bucket-one",
        "team/ci",
        "eu-west-1",
    )
    assert backend.endpoint == "http://127.0.0.1:9000"
    assert backend.key("runners/x/runner.json") == "team/ci/runners/x/runner.json"


def test_s3_region_comes_from_the_aws_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_REGION", "ap-south-1")
    assert backends.parse("s3://bucket-one").region == "ap-south-1"  # type: ignore[attr-defined]


def test_s3_without_any_region_names_the_flag(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    for key in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    backend = backends.parse("s3://bucket-one/p")
    with pytest.raises(
        UsageError, match=r"^--backend: no region for s3://bucket-one/p: add \?region=R"
    ):
        backend.terraform_settings("runners/x")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("bucket/prefix", "--backend: 'bucket/prefix' is not a backend URL; valid forms: "),
        ("ftp://bucket/prefix", "--backend: unknown backend scheme 'ftp'; valid: "),
        ("s3://", "--backend: 's3://' names no bucket; the form is s3://BUCKET/PREFIX"),
        ("s3://user:pw@bucket/p", "--backend: a backend URL must not hold a credential"),
        ("s3://bucket/p?regoin=x", "--backend: unknown URL parameter 'regoin'; valid: region, "),
        ("s3://bucket/../up", "--backend: prefix '../up': use letters"),
        ("s3://bucket/a//b", "--backend: prefix 'a//b': use letters"),
        ("s3://bucket/p?endpoint=ftp://host", "--backend: endpoint 'ftp://host' is not an http"),
        ("s3://bucket/with space", "--backend: prefix 'with space': use letters"),
    ],
)  # fmt: skip
def test_bad_urls_are_one_line_on_the_flag(url: str, message: str) -> None:
    contract.refused_in_one_line(url, message)


def test_empty_backend_is_refused(tmp_path) -> None:
    from cml_infra.state import StateDir

    with pytest.raises(UsageError, match=r"^--backend: the URL is empty"):
        backends.open_ledger(StateDir(tmp_path), "  ")
    assert backends.open_ledger(StateDir(tmp_path), None).remote is False


def test_terraform_block_for_an_s3_compatible_store() -> None:
    backend = backends.parse("s3://bucket-one/team?region=auto&endpoint=https://r2.example.com")
    block = backend.terraform_block("runners/0123456789abcdef")
    assert 'backend "s3" {' in block
    assert '"team/runners/0123456789abcdef/terraform.tfstate"' in block
    assert "use_lockfile                = true" in block
    assert 'endpoints                   = { s3 = "https://r2.example.com" }' in block
    for skip in ("use_path_style", "skip_credentials_validation", "skip_requesting_account_id",
                 "skip_metadata_api_check", "skip_region_validation"):  # fmt: skip
        assert f"{skip}" in block
    # Nothing that names a credential, ever.
    assert not any(word in block for word in ("access_key", "secret", "token", "profile"))


def test_terraform_block_quotes_what_the_url_holds() -> None:
    with pytest.raises(UsageError, match="prefix"):
        backends.parse("s3://bucket-one/a-${b}?region=us-east-1")
    block = backends.parse('s3://bucket-one/p?region=${file("/x")}"').terraform_block("runners/x")
    assert 'region       = "$${file(\\"/x\\")}\\""' in block, block
