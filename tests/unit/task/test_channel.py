"""The channel: what the agent is told, what the launcher reads back, the log from its tails."""

from __future__ import annotations

import base64
import json
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from cml_infra.backends.base import Blob, SignedUrl
from cml_infra.state import StateDir
from cml_infra.task.channel import (
    LOG,
    STATUS,
    WORKDIR,
    BucketChannel,
    FolderChannel,
    channel_of,
)
from cml_infra.task.pack import pack

NOW = datetime(2026, 12, 2, tzinfo=timezone.utc)


class Store:
    """The part of a Backend a channel uses, in memory; signing as the store would."""

    def __init__(self, session_ends: datetime | None = None, headers: bool = False) -> None:
        self.objects: dict[str, bytes] = {}
        self.signed: list[tuple[str, str, int]] = []
        self.session_ends = session_ends
        self.headers = {"x-ms-blob-type": "BlockBlob"} if headers else {}

    def put(self, relative: str, data: bytes, *, if_absent: bool = False) -> str:
        self.objects[relative] = data
        return "v1"

    def get(self, relative: str) -> Blob | None:
        data = self.objects.get(relative)
        return None if data is None else Blob(data, "v1")

    def delete(self, relative: str, version: str | None = None) -> bool:
        return self.objects.pop(relative, None) is not None

    def sign(self, relative: str, method: str, seconds: int) -> SignedUrl:
        self.signed.append((relative, method, seconds))
        expires = NOW + timedelta(seconds=seconds)
        if self.session_ends is not None:
            expires = min(expires, self.session_ends)
        headers = self.headers if method == "PUT" else {}
        return SignedUrl(f"https://store/{relative}?sig={method}", method, expires, headers)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "train.py").write_text("print('hi')\n")
    return folder


def test_folder_channel_writes_the_workdir_privately_only_when_launching(
    tmp_path: Path, project: Path
) -> None:
    folder = tmp_path / "runners" / "one" / "task"
    channel = FolderChannel(folder)
    packed = pack(project)

    rendered = channel.agent_config(packed, ("model.bin",), 3600, sign=False)
    assert rendered == {
        "report": {"dir": str(folder)},
        "report_seconds": 1,
        "workdir": {"file": str(folder / WORKDIR)},
        "outputs": ["model.bin"],
    }
    assert not folder.exists(), "a render stores nothing"

    channel.agent_config(packed, (), 3600, sign=True)
    assert (folder / WORKDIR).read_bytes() == packed.data
    assert stat.S_IMODE((folder / WORKDIR).stat().st_mode) == 0o600
    channel.clear()
    assert not (folder / WORKDIR).exists()


def test_bucket_channel_signs_one_url_per_object_for_the_ttl_and_a_margin(project: Path) -> None:
    store = Store()
    channel = BucketChannel(store, "abc123", "s3://b/p/runners/abc123/task")  # type: ignore[arg-type]
    packed = pack(project)

    config = channel.agent_config(packed, ("model.bin",), 7200, sign=True)

    prefix = "runners/abc123/task"
    assert store.objects == {f"{prefix}/{WORKDIR}": packed.data}
    assert sorted(store.signed) == sorted(
        [(f"{prefix}/{name}", "PUT", 7200 + 3600) for name in (STATUS, LOG, "outputs.tar.gz")]
        + [(f"{prefix}/{WORKDIR}", "GET", 7200 + 3600)]
    )
    assert config["workdir"] == {"url": f"https://store/{prefix}/{WORKDIR}?sig=GET"}
    assert set(config["report"]["urls"]) == {STATUS, LOG, "outputs.tar.gz"}
    assert "headers" not in config["report"]
    assert channel.valid_until == NOW + timedelta(seconds=7200 + 3600)


def test_bucket_channel_without_a_task_reports_status_and_log_only() -> None:
    store = Store(headers=True)
    channel = BucketChannel(store, "k", "where")  # type: ignore[arg-type]
    config = channel.agent_config(None, (), 600, sign=True)
    assert set(config["report"]["urls"]) == {STATUS, LOG}
    assert config["report"]["headers"] == {"x-ms-blob-type": "BlockBlob"}
    assert "workdir" not in config and "outputs" not in config


def test_a_render_signs_nothing_and_stores_nothing(project: Path) -> None:
    store = Store()
    channel = BucketChannel(store, "k", "where")  # type: ignore[arg-type]
    config = channel.agent_config(pack(project), ("out",), 600, sign=False)
    assert store.signed == [] and store.objects == {}
    urls = [*config["report"]["urls"].values(), config["workdir"]["url"]]
    assert all(url.startswith("https://presigned-url.invalid/") for url in urls)
    # As long as a URL signed with a session's credentials: the size check holds.
    assert all(len(url) > 1000 for url in urls)


def test_the_earliest_expiry_of_a_session_is_what_the_channel_says() -> None:
    ends = NOW + timedelta(hours=1)
    channel = BucketChannel(Store(session_ends=ends), "k", "where")  # type: ignore[arg-type]
    channel.agent_config(None, (), 24 * 3600, sign=True)
    assert channel.valid_until == ends


def _status(log: bytes, start: int, *, complete: bool = False, size: int | None = None) -> dict:
    tail = log[start:]
    return {
        "log": {
            "size": size if size is not None else len(log),
            "tail_offset": start,
            "tail_b64": base64.b64encode(tail).decode(),
            "complete": complete,
        }
    }


@pytest.mark.parametrize(
    ("offset", "start", "data", "new_offset", "skipped"),
    [
        (0, 0, b"0123456789", 10, 0),  # the whole log is still in the tail
        (4, 0, b"456789", 10, 0),  # read on from where the last look stopped
        (2, 6, b"6789", 10, 4),  # the log outran the reports: bytes 2..6 are not in any tail
        (10, 6, b"", 10, 0),  # nothing new
        (12, 6, b"", 12, 0),  # never backwards
    ],
)
def test_the_log_from_its_tails(
    tmp_path: Path, offset: int, start: int, data: bytes, new_offset: int, skipped: int
) -> None:
    channel = FolderChannel(tmp_path)
    chunk = channel.log_since(offset, _status(b"0123456789", start))
    assert (chunk.data, chunk.offset, chunk.skipped, chunk.complete) == (
        data,
        new_offset,
        skipped,
        False,
    )


def test_the_whole_log_once_uploaded(tmp_path: Path) -> None:
    (tmp_path / LOG).write_bytes(b"0123456789ab")
    chunk = FolderChannel(tmp_path).log_since(4, _status(b"0123456789", 8, complete=True))
    assert (chunk.data, chunk.offset, chunk.complete) == (b"456789ab", 12, True)


@pytest.mark.parametrize("text", [b"{not json", b"[1, 2]", b""])
def test_a_status_that_is_not_one_is_none(tmp_path: Path, text: bytes) -> None:
    (tmp_path / STATUS).write_bytes(text)
    assert FolderChannel(tmp_path).status() is None


def test_status_is_read_as_the_agent_wrote_it(tmp_path: Path) -> None:
    (tmp_path / STATUS).write_text(json.dumps({"task": "exited", "exit_code": 3}))
    assert FolderChannel(tmp_path).status() == {"task": "exited", "exit_code": 3}


def test_channel_of_each_ledger(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    here = channel_of(state, "one", on_this_machine=True)
    assert isinstance(here, FolderChannel) and here.folder == tmp_path / "runners/one/task"
    # A VM with no backend: nothing can come back.
    assert channel_of(state, "one", on_this_machine=False) is None
