"""The working folder a task ships (select/pack) and the outputs that come home (unpack)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from cml_infra import ui
from cml_infra.errors import CmlInfraError, UsageError
from cml_infra.task import pack as pack_mod
from cml_infra.task.pack import DEFAULT_LIMIT, IGNORE_FILE, pack, parse_outputs, select, unpack


def write(root: Path, rel: str, text: str = "x") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def names(packed_data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(packed_data), mode="r:gz") as tar:
        return tar.getnames()


# --- select -----------------------------------------------------------------------------------


def test_nested_gitignore_reincludes_and_git_is_never_shipped(tmp_path):
    write(tmp_path, ".gitignore", "*.log\nbuild/\n")
    write(tmp_path, "main.py")
    write(tmp_path, "debug.log")
    write(tmp_path, "build/out.o")
    write(tmp_path, "sub/.gitignore", "!keep.log\n/local.txt\n")
    write(tmp_path, "sub/keep.log")
    write(tmp_path, "sub/drop.log")
    write(tmp_path, "sub/local.txt")
    # A rule of sub/.gitignore is relative to sub/: a deeper local.txt is not its /local.txt.
    write(tmp_path, "sub/deep/local.txt")
    write(tmp_path, ".git/config")
    write(tmp_path, "vendor/lib/.git", "gitdir: elsewhere")  # a submodule's .git file
    write(tmp_path, "vendor/lib/code.py")

    assert select(tmp_path) == [
        ".gitignore",
        "main.py",
        "sub/.gitignore",
        "sub/deep/local.txt",
        "sub/keep.log",
        "vendor/lib/code.py",
    ]


def test_cml_infra_ignore_applies_after_gitignore_and_can_reinclude(tmp_path):
    write(tmp_path, ".gitignore", "data/\n*.ckpt\n")
    write(tmp_path, IGNORE_FILE, "!data/\n!best.ckpt\nnotes/\n")
    write(tmp_path, "data/train.csv")
    write(tmp_path, "best.ckpt")
    write(tmp_path, "other.ckpt")
    write(tmp_path, "notes/todo.md")
    write(tmp_path, "run.py")

    assert select(tmp_path) == [
        IGNORE_FILE,
        ".gitignore",
        "best.ckpt",
        "data/train.csv",
        "run.py",
    ]


def test_ignored_folder_is_not_walked(tmp_path, monkeypatch):
    write(tmp_path, ".gitignore", "node_modules/\n")
    write(tmp_path, IGNORE_FILE, ".venv\n")
    for index in range(3):
        write(tmp_path, f"node_modules/pkg{index}/index.js")
        write(tmp_path, f".venv/lib/mod{index}.py")
    write(tmp_path, "app.js")
    scanned: list[str] = []
    real_scandir = os.scandir

    def counting_scandir(path):
        scanned.append(os.path.relpath(path, tmp_path))
        return real_scandir(path)

    monkeypatch.setattr(pack_mod.os, "scandir", counting_scandir)

    assert select(tmp_path) == [IGNORE_FILE, ".gitignore", "app.js"]
    assert scanned == ["."]


def test_special_files_are_skipped_silently(tmp_path, monkeypatch):
    os.mkfifo(tmp_path / "pipe")
    write(tmp_path, "a.txt")
    warnings: list[str] = []
    monkeypatch.setattr(ui, "warn", warnings.append)

    assert names(pack(tmp_path).data) == ["a.txt"]
    assert warnings == []


def test_missing_or_file_workdir_is_refused(tmp_path):
    with pytest.raises(UsageError, match=r"^--workdir: .*missing is not a folder$"):
        pack(tmp_path / "missing")
    write(tmp_path, "file")
    with pytest.raises(UsageError, match=r"^--wd: .*file is not a folder$"):
        pack(tmp_path / "file", flag="--wd")


# --- symlinks ---------------------------------------------------------------------------------


def test_symlink_inside_is_shipped_outside_is_skipped_with_a_warning(tmp_path, monkeypatch):
    work = tmp_path / "work"
    outside = tmp_path / "secret.txt"
    outside.write_text("no")
    write(work, "data/real.csv", "1,2")
    (work / "latest.csv").symlink_to("data/real.csv")
    (work / "data" / "abs.csv").symlink_to(work / "data" / "real.csv")  # absolute, inside
    (work / "data" / "loop").symlink_to("../data")  # a folder link: shipped, not followed
    for index in range(4):
        (work / f"leak{index}").symlink_to(outside)
    warnings: list[str] = []
    monkeypatch.setattr(ui, "warn", warnings.append)

    packed = pack(work)

    with tarfile.open(fileobj=io.BytesIO(packed.data), mode="r:gz") as tar:
        links = {m.name: m.linkname for m in tar.getmembers() if m.issym()}
    assert links == {
        "latest.csv": "data/real.csv",
        "data/abs.csv": "real.csv",
        "data/loop": "../data",
    }
    assert packed.files == 1
    assert len(warnings) == 1
    assert "leak0, leak1, leak2 and 1 more" in warnings[0]
    assert str(outside) not in warnings[0]


# --- size limit -------------------------------------------------------------------------------


def test_over_the_limit_is_refused_before_any_file_is_read(tmp_path, monkeypatch):
    big = tmp_path / "data" / "huge.bin"
    big.parent.mkdir()
    with big.open("wb") as file:
        file.truncate(300 * 1024 * 1024)  # sparse: no disk used
    with (tmp_path / "model.bin").open("wb") as file:
        file.truncate(12 * 1024 * 1024 + 400 * 1024)
    write(tmp_path, "src/a.py", "print(1)")
    write(tmp_path, "tiny.txt", "1")
    opened: list[str] = []

    def refusing_open(path, *args, **kwargs):
        opened.append(str(path))
        raise PermissionError(13, "Permission denied")

    # Every file of the folder is unreadable: the size check must not need to read one.
    monkeypatch.setattr(pack_mod.os, "open", refusing_open)

    with pytest.raises(UsageError) as caught:
        pack(tmp_path)

    message = str(caught.value)
    assert message.startswith("--workdir: ")
    assert "312.4 MiB over the 100 MiB limit" in message
    assert "data/ (300 MiB), model.bin (12.4 MiB), src/ (8 B)" in message
    assert "tiny.txt" not in message
    assert "list what the task does not need in .cml-infra-ignore (gitignore syntax)" in message
    assert "\n" not in message
    assert opened == []


def test_unreadable_file_is_a_usage_error(tmp_path, monkeypatch):
    write(tmp_path, "ok.txt")
    secret = write(tmp_path, "locked.txt")
    real_open = os.open

    def open_(path, flags, *args, **kwargs):
        if Path(path) == secret:
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(pack_mod.os, "open", open_)

    with pytest.raises(UsageError, match=r"cannot be read: .*locked\.txt \(Permission denied\)$"):
        pack(tmp_path, flag="--workdir")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_folder_is_a_usage_error(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        with pytest.raises(UsageError, match=r"cannot be read: .*locked \("):
            select(tmp_path)
    finally:
        locked.chmod(0o755)


def test_limit_counts_content_bytes_exactly(tmp_path):
    write(tmp_path, "a", "12345")
    write(tmp_path, "b/c", "67890")
    assert pack(tmp_path, limit=10).size == 10
    with pytest.raises(UsageError, match="11 B over the 10 B limit"):
        write(tmp_path, "d", "!")
        pack(tmp_path, limit=10)
    assert DEFAULT_LIMIT == 100 * 1024 * 1024


# --- the tar ----------------------------------------------------------------------------------


def test_entries_modes_owners_and_folders(tmp_path):
    script = write(tmp_path, "bin/run.sh", "#!/bin/sh\n")
    script.chmod(0o700)
    plain = write(tmp_path, "conf/deep/settings.toml", "a = 1")
    plain.chmod(0o600)
    os.utime(plain, (1_700_000_000, 1_700_000_000))
    (tmp_path / "empty").mkdir()  # holds nothing shipped: no entry

    packed = pack(tmp_path)

    with tarfile.open(fileobj=io.BytesIO(packed.data), mode="r:gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert list(members) == [
        "bin",
        "bin/run.sh",
        "conf",
        "conf/deep",
        "conf/deep/settings.toml",
    ]
    assert members["bin"].isdir()
    assert members["bin/run.sh"].mode == 0o755
    assert members["conf/deep/settings.toml"].mode == 0o644
    assert members["conf/deep/settings.toml"].mtime == 1_700_000_000
    assert all(
        m.uid == 0 and m.gid == 0 and m.uname == "" and m.gname == "" for m in members.values()
    )
    assert packed.files == 2
    assert packed.size == len("#!/bin/sh\n") + len("a = 1")
    assert gzip.decompress(packed.data)  # a plain gzip stream
    assert packed.data[4:8] == b"\0\0\0\0"  # gzip header mtime


def test_same_tree_gives_the_same_bytes(tmp_path):
    write(tmp_path, "b.txt", "b")
    write(tmp_path, "a/z.txt", "z")
    write(tmp_path, "a/y.txt", "y")
    first = pack(tmp_path)
    second = pack(tmp_path)
    assert first.data == second.data
    assert first.sha256 == second.sha256
    assert first.sha256 == hashlib.sha256(first.data).hexdigest()
    write(tmp_path, "a/y.txt", "Y")
    assert pack(tmp_path).sha256 != first.sha256


def test_exec_bit_round_trips_through_unpack(tmp_path):
    src = tmp_path / "src"
    script = write(src, "tools/go.sh", "#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    write(src, "tools/readme.md", "hi")
    (src / "tools" / "readme.md").chmod(0o664)

    dest = tmp_path / "dest"
    written = unpack(pack(src).data, dest)

    assert written == ["tools/go.sh", "tools/readme.md"]
    assert (dest / "tools" / "go.sh").stat().st_mode & 0o777 == 0o755
    assert (dest / "tools" / "readme.md").stat().st_mode & 0o777 == 0o644
    assert (dest / "tools" / "go.sh").read_text() == "#!/bin/sh\necho hi\n"


# --- parse_outputs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["model.bin"], ("model.bin",)),
        (["./a//b/"], ("a/b",)),
        (["results/", "results", "./results", "m.bin"], ("results", "m.bin")),
        (["a/./b", "x"], ("a/b", "x")),
        ([], ()),
        (["..hidden"], ("..hidden",)),
    ],
)
def test_parse_outputs_normalises(values, expected):
    assert parse_outputs(values) == expected


@pytest.mark.parametrize(
    "value", ["", "  ", "/etc/passwd", "//x", "../up", "a/../../b", "a/..", ".", "./", "a\0b"]
)
def test_parse_outputs_refuses(value):
    with pytest.raises(UsageError) as caught:
        parse_outputs(["ok.txt", value])
    assert str(caught.value) == (
        f"--out: {value!r} must be a path inside the working folder, e.g. model.bin or results/"
    )


# --- unpack -----------------------------------------------------------------------------------


def make_tar(*members: tuple[str, str, str | bytes]) -> bytes:
    """(name, kind, content-or-link-target) with kind one of file, dir, sym, hard, fifo, chr."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, kind, value in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                data = value.encode() if isinstance(value, str) else value
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {
                "dir": tarfile.DIRTYPE,
                "sym": tarfile.SYMTYPE,
                "hard": tarfile.LNKTYPE,
                "fifo": tarfile.FIFOTYPE,
                "chr": tarfile.CHRTYPE,
            }[kind]
            info.linkname = str(value)
            tar.addfile(info)
    return buffer.getvalue()


def test_unpack_writes_files_links_and_overwrites_older_copies(tmp_path):
    dest = tmp_path / "out" / "here"
    (dest / "results").mkdir(parents=True)
    (dest / "results" / "metrics.json").write_text("old")
    (dest / "latest").symlink_to("results/metrics.json")
    data = make_tar(
        ("./", "dir", ""),
        ("./results", "dir", ""),
        ("./results/metrics.json", "file", "new"),
        ("results/sub/deep.txt", "file", "d"),
        ("model.bin", "file", b"\x00\x01"),
        ("latest", "sym", "model.bin"),
        ("results/sub/up", "sym", "../../model.bin"),
        ("results/here", "sym", "."),
    )

    written = unpack(data, dest)

    assert written == [
        "results/metrics.json",
        "results/sub/deep.txt",
        "model.bin",
        "latest",
        "results/sub/up",
        "results/here",
    ]
    assert (dest / "results" / "metrics.json").read_text() == "new"
    assert os.readlink(dest / "latest") == "model.bin"
    assert (dest / "results" / "sub" / "up").read_bytes() == b"\x00\x01"
    assert os.path.samefile(
        dest / "results" / "here" / "metrics.json", dest / "results" / "metrics.json"
    )
    assert sorted(p.name for p in dest.iterdir()) == ["latest", "model.bin", "results"]


@pytest.mark.parametrize(
    ("members", "why"),
    [
        ([("/etc/passwd", "file", "x")], "is not a relative POSIX path"),
        ([("../escape.txt", "file", "x")], "climbs out with .."),
        ([("a/../../escape.txt", "file", "x")], "climbs out with .."),
        ([("a\\..\\x", "file", "x")], "is not a relative POSIX path"),
        ([("dev", "chr", "")], "is a device, fifo or other special file"),
        ([("pipe", "fifo", "")], "is a device, fifo or other special file"),
        ([("ok.txt", "file", "x"), ("hard", "hard", "ok.txt")], "is a hard link"),
        ([("l", "sym", "/etc/passwd")], "outside the destination"),
        ([("l", "sym", "..")], "outside the destination"),
        ([("a/l", "sym", "../../x")], "outside the destination"),
        ([("self", "sym", "."), ("l", "sym", "self/..")], "outside the destination"),
        ([("l", "sym", "")], "outside the destination"),
        ([("l", "sym", "sub"), ("l/x.txt", "file", "x")], "which is not a folder"),
        ([("x.txt", "file", "1"), ("x.txt", "sym", "first.txt")], "as different kinds"),
        ([("l/x.txt", "file", "x"), ("l", "sym", "sub")], "which is not a folder"),
        ([("f/x.txt", "file", "x"), ("f", "file", "x")], "which is not a folder"),
    ],
)
def test_unpack_refuses_before_writing_anything(tmp_path, members, why):
    dest = tmp_path / "dest"
    data = make_tar(("first.txt", "file", "written?"), *members)
    with pytest.raises(CmlInfraError) as caught:
        unpack(data, dest)
    assert not isinstance(caught.value, UsageError)
    assert caught.value.exit_code == 1
    assert why in str(caught.value)
    assert "\n" not in str(caught.value)
    assert not (dest / "first.txt").exists()
    assert not (tmp_path / "escape.txt").exists()


def test_unpack_refuses_writing_through_an_existing_symlink(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("safe")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "results").symlink_to(outside)
    (dest / "victim.txt").symlink_to(outside / "victim.txt")

    for data in (
        make_tar(("results/victim.txt", "file", "pwned")),
        make_tar(("results", "dir", "")),
        make_tar(("victim.txt", "file", "pwned")),
    ):
        with pytest.raises(CmlInfraError, match="would be written through the symlink"):
            unpack(data, dest)
    assert (outside / "victim.txt").read_text() == "safe"
    assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not gzip at all",
        gzip.compress(b"not a tar" * 100),
        make_tar(("a", "file", "x" * 5000))[:60],
    ],
)
def test_unpack_refuses_corrupt_data(tmp_path, data):
    with pytest.raises(CmlInfraError, match="not a readable gzip tar") as caught:
        unpack(data, tmp_path / "dest")
    assert not isinstance(caught.value, UsageError)


def test_unpack_only_named_outputs(tmp_path):
    data = make_tar(
        ("results", "dir", ""),
        ("results/a.txt", "file", "a"),
        ("results-old/b.txt", "file", "b"),
        ("model.bin", "file", "m"),
        ("notes.txt", "file", "n"),
    )
    dest = tmp_path / "dest"
    assert unpack(data, dest, only=("results", "model.bin")) == ["results/a.txt", "model.bin"]
    assert sorted(p.name for p in dest.iterdir()) == ["model.bin", "results"]
    # Entries left out are still checked: the archive is refused as a whole.
    with pytest.raises(CmlInfraError, match="climbs out"):
        unpack(make_tar(("a", "file", "x"), ("../b", "file", "y")), dest, only=("a",))


def test_unpack_takes_the_later_copy_of_a_repeated_entry(tmp_path):
    # --out results --out results/a.txt: the agent packs results/a.txt twice.
    data = make_tar(
        ("results", "dir", ""),
        ("results/a.txt", "file", "first"),
        ("results/a.txt", "file", "second"),
        ("results", "dir", ""),
    )
    assert unpack(data, tmp_path) == ["results/a.txt"]
    assert (tmp_path / "results" / "a.txt").read_text() == "second"


def test_unpack_into_a_file_is_a_usage_error(tmp_path):
    write(tmp_path, "file")
    with pytest.raises(UsageError, match=r"^DEST: "):
        unpack(make_tar(("a", "file", "x")), tmp_path / "file")
