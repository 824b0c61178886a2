"""cml_infra.comment.assets, the parts that ask nothing of GitHub: branch names, the files'
limits and digests, and the URLs a comment links them at (the Git Data API side runs against
the fake GitHub in test_post.py)."""

from __future__ import annotations

import hashlib

import pytest

from cml_infra.comment import assets
from cml_infra.errors import UsageError


@pytest.mark.parametrize(
    "branch", ["cml-infra-assets", "reports/assets", "a.b", "x_y-1", "feature/v1.2/plots"]
)
def test_branch_names_git_takes(branch):
    assets.check_branch(branch)


@pytest.mark.parametrize(
    "branch",
    [
        "",
        "two words",
        "a..b",
        "a~1",
        "a^",
        "a:b",
        "a?",
        "a*",
        "a[b",
        "a\\b",
        "a@{1}",
        "@",
        "/lead",
        "trail/",
        "a//b",
        ".hidden",
        "a/.hidden",
        "x.lock",
        "a/x.lock/b",
        "dot.",
        "-option",
        "tab\there",
        "del\x7f",
        "x" * 256,
    ],
)
def test_branch_names_git_refuses_name_the_flag(branch):
    with pytest.raises(UsageError) as raised:
        assets.check_branch(branch)
    assert raised.value.source == "--assets-branch"
    assert "cml-infra-assets" in str(raised.value)


def test_inspect_gives_each_file_once_with_its_digest(tmp_path):
    first, second = tmp_path / "a.png", tmp_path / "b.csv"
    first.write_bytes(b"\x89PNG data")
    second.write_bytes(b"x,y\n1,2\n")
    found = assets.inspect([first, second, first])
    assert [asset.file for asset in found] == [first, second]
    digest = hashlib.sha256(b"\x89PNG data").hexdigest()
    assert found[0].sha256 == digest and found[0].size == 9
    assert found[0].path == f"{digest}/a.png"


def test_a_file_over_githubs_limit_names_the_file_and_the_limit(tmp_path):
    big = tmp_path / "weights.bin"
    with big.open("wb") as handle:  # sparse: no 100 MiB written
        handle.truncate(assets.MAX_FILE_BYTES + 1)
    with pytest.raises(UsageError) as raised:
        assets.inspect([big])
    assert raised.value.source == str(big)
    assert "100 MiB" in str(raised.value)


def test_a_file_at_the_limit_is_taken(tmp_path):
    edge = tmp_path / "edge.bin"
    with edge.open("wb") as handle:
        handle.truncate(assets.MAX_FILE_BYTES)
    [asset] = assets.inspect([edge])
    assert asset.size == assets.MAX_FILE_BYTES


@pytest.mark.parametrize("cut", [0, 1 << 20])  # inside one chunk, or across two
def test_a_file_holding_the_token_is_refused(tmp_path, cut):
    token = "ghp_assets_CANARY_1"
    leak = tmp_path / "env.txt"
    leak.write_bytes(b"a" * (cut - 5 if cut else 10) + token.encode() + b"z")
    with pytest.raises(UsageError) as raised:
        assets.inspect([leak], token)
    assert token not in str(raised.value)
    assert "token" in str(raised.value)


@pytest.mark.parametrize(
    ("api_url", "web"),
    [
        ("https://api.github.com", "https://github.com/o/r"),
        ("https://api.octocorp.ghe.com", "https://octocorp.ghe.com/o/r"),
        ("https://ghe.example/api/v3", "https://ghe.example/o/r"),
    ],
)
def test_links_point_at_the_raw_blob_on_the_web_host(api_url, web):
    url = assets.link(api_url, "o/r", "abc123", "ff00/loss curve.png")
    assert url == f"{web}/blob/abc123/ff00/loss%20curve.png?raw=true"
