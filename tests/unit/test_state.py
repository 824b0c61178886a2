"""cml_infra.state: the state dir's records, privacy, locks and Terraform CLI config."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from cml_infra.errors import CmlInfraError, UsageError
from cml_infra.state import (
    BrokenRecord,
    StateDir,
    make_private_dir,
    resolve_state_dir,
    write_private,
)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_state_dir_creates_nothing_until_written(tmp_path):
    state = StateDir(tmp_path / "state")
    assert state.load("nobody") is None
    assert state.records() == []
    assert not (tmp_path / "state").exists()


def test_save_load_roundtrip(tmp_path, make_record):
    state = StateDir(tmp_path / "state")
    record = make_record("runner-a", outputs={"id": "runner-a", "nested": {"x": [1, 2]}})
    saved = state.save(record)
    assert saved.updated_at >= record.updated_at
    loaded = state.load("runner-a")
    assert loaded == saved
    assert loaded.labels == ("gpu", "cml-infra-runner-a")
    assert loaded.outputs["nested"] == {"x": [1, 2]}
    assert (state.runner_dir("runner-a") / "runner.json").is_file()


def test_save_replaces_the_previous_record(tmp_path, make_record):
    state = StateDir(tmp_path / "state")
    state.save(make_record("runner-a"))
    state.save(make_record("runner-a", state="destroyed", end_reason="idle"))
    loaded = state.load("runner-a")
    assert loaded.state == "destroyed"
    assert loaded.end_reason == "idle"
    leftovers = [p.name for p in state.runner_dir("runner-a").iterdir()]
    assert leftovers == ["runner.json"]


def test_load_unreadable_record_is_a_clear_error(tmp_path):
    state = StateDir(tmp_path / "state")
    make_private_dir(state.runner_dir("broken"))
    (state.runner_dir("broken") / "runner.json").write_text("{not json")
    with pytest.raises(CmlInfraError, match="unreadable runner record"):
        state.load("broken")


def test_saved_files_are_private_under_umask_022(tmp_path, make_record, umask_022):
    state = StateDir(tmp_path / "state")
    state.ensure()
    os.umask(0o022)  # ensure() sets 077; the files must be private without its help
    state.save(make_record("runner-a"))
    assert mode(state.runner_dir("runner-a")) == 0o700
    assert mode(state.runner_dir("runner-a") / "runner.json") == 0o600


def test_ensure_makes_private_folders_under_umask_022(tmp_path, umask_022):
    state = StateDir(tmp_path / "state")
    state.ensure()
    for folder in (state.root, state.runners, state.locks):
        assert mode(folder) == 0o700, folder
    assert os.umask(0o022) == 0o077


def test_ensure_leaves_the_mode_of_a_folder_it_did_not_create(tmp_path):
    """`--state-dir .` must not change the mode of the user's working folder; what cml-infra
    creates inside it is private."""
    root = tmp_path / "state"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    state = StateDir(root)
    state.ensure()
    assert mode(root) == 0o755
    assert mode(state.runners) == 0o700


def test_save_on_a_fresh_state_dir_makes_every_folder_private(tmp_path, make_record, umask_022):
    state = StateDir(tmp_path / "state")
    state.save(make_record("runner-a"))
    for folder in (state.root, state.runners, state.runner_dir("runner-a")):
        assert mode(folder) == 0o700, folder


def test_write_private_mode_and_atomic(tmp_path, umask_022):
    target = tmp_path / "file.txt"
    target.write_text("old")
    os.chmod(target, 0o644)
    write_private(target, "new")
    assert target.read_text() == "new"
    assert mode(target) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_write_private_beside_a_stale_temp_file(tmp_path, umask_022):
    """A leftover temporary file is neither written through nor reused: the result is 0600."""
    stale = tmp_path / ".runner.json.tmp"
    stale.write_text("half a file")
    os.chmod(stale, 0o644)
    write_private(tmp_path / "runner.json", "{}")
    assert mode(tmp_path / "runner.json") == 0o600
    assert (tmp_path / "runner.json").read_text() == "{}"
    assert stale.read_text() == "half a file"


def test_write_private_never_writes_through_a_planted_symlink(tmp_path, umask_022):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    os.chmod(victim, 0o644)
    for planted in (".runner.json.tmp", ".runner.json..tmp"):
        (tmp_path / planted).symlink_to(victim)
    write_private(tmp_path / "runner.json", "{}")
    assert victim.read_text() == "precious"
    assert mode(victim) == 0o644
    assert (tmp_path / "runner.json").read_text() == "{}"


def test_write_private_replaces_a_symlink_at_the_target_not_what_it_points_to(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "runner.json").symlink_to(victim)
    write_private(tmp_path / "runner.json", "{}")
    assert victim.read_text() == "precious"
    assert not (tmp_path / "runner.json").is_symlink()


def test_make_private_dir_under_umask_022(tmp_path, umask_022):
    folder = make_private_dir(tmp_path / "a")
    assert folder == tmp_path / "a"
    assert mode(folder) == 0o700
    make_private_dir(folder)  # exists: fine
    assert mode(folder) == 0o700


def test_lock_wait_zero_fails_at_once_naming_name(tmp_path):
    state = StateDir(tmp_path / "state")
    held = threading.Event()
    release = threading.Event()

    def holder():
        with state.lock("busy-one", wait=0):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(10)
        with pytest.raises(UsageError) as caught, state.lock("busy-one", wait=0):
            pass
        assert caught.value.source == "--name"
        assert str(caught.value).startswith("--name: 'busy-one' is in use")
        # Another name is not blocked.
        with state.lock("other-one", wait=0):
            pass
    finally:
        release.set()
        thread.join(10)
    with state.lock("busy-one", wait=0):
        pass


def test_lock_with_wait_times_out_as_runtime_error(tmp_path):
    state = StateDir(tmp_path / "state")
    with (
        state.lock("slow", wait=0),
        pytest.raises(CmlInfraError) as caught,
        state.lock("slow", wait=0.2),
    ):
        pass
    assert not isinstance(caught.value, UsageError)
    assert "held its lock" in str(caught.value)


def hold_in_child(state: StateDir, name: str) -> subprocess.Popen[str]:
    """Another process holding `name`'s lock until a line comes on its stdin."""
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from cml_infra.state import StateDir
        with StateDir(Path({str(state.root)!r})).lock({name!r}, wait=0):
            print("held", flush=True)
            sys.stdin.readline()
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


def test_lock_held_by_another_process(tmp_path):
    state = StateDir(tmp_path / "state")
    child = hold_in_child(state, "shared")
    try:
        with (
            pytest.raises(UsageError, match=r"^--name: 'shared' is in use"),
            state.lock("shared", wait=0),
        ):
            pass
    finally:
        child.communicate("\n", timeout=10)
    assert child.returncode == 0
    with state.lock("shared", wait=0):
        pass


def test_lock_file_is_private(tmp_path, umask_022):
    state = StateDir(tmp_path / "state")
    with state.lock("runner-a", wait=0):
        assert mode(state.root / "locks" / "runner-a.lock") == 0o600


def test_records_skips_non_dirs_and_folders_without_a_record(tmp_path, make_record):
    state = StateDir(tmp_path / "state")
    state.save(make_record("runner-b"))
    state.save(make_record("runner-a"))
    (state.runners / "stray.json").write_text("{}")
    (state.runners / "empty-folder").mkdir()
    assert [r.name for r in state.records()] == ["runner-a", "runner-b"]


def test_remove_workspace(tmp_path, make_record):
    state = StateDir(tmp_path / "state")
    state.save(make_record("runner-a"))
    (state.workspace("runner-a") / "module").mkdir(parents=True)
    (state.workspace("runner-a") / "main.tf").write_text("")
    state.remove_workspace("runner-a")
    state.remove_workspace("runner-a")  # already gone: fine
    assert not state.workspace("runner-a").exists()
    assert state.load("runner-a") is not None


def test_layout():
    state = StateDir(Path("/x"))
    assert state.runner_dir("a") == Path("/x/runners/a")
    assert state.workspace("a") == Path("/x/runners/a/workspace")
    assert state.log_dir("a") == Path("/x/runners/a/logs")


def test_resolve_state_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_state_dir("rel") == tmp_path / "rel"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_state_dir("~/s") == tmp_path / "home" / "s"
    assert resolve_state_dir(None).name == "cml-infra"


def test_resolve_state_dir_refuses_an_empty_value():
    with pytest.raises(UsageError, match=r"^--state-dir: the path is empty"):
        resolve_state_dir("")
    with pytest.raises(UsageError, match=r"^--state-dir"):
        resolve_state_dir("   ")


# --- one unreadable record blocks nothing else -----------------------------------------------


@pytest.mark.parametrize(
    "spoil",
    [
        lambda path: path.write_text(path.read_text()[:40]),  # truncated
        lambda path: path.write_text(""),
        lambda path: path.write_text('{"name": "b"}'),  # fields missing
        lambda path: (path.unlink(), path.mkdir()),  # a folder in its place
    ],
    ids=["truncated", "empty", "incomplete", "a-folder"],
)
def test_scan_reports_an_unreadable_record_in_one_line_and_keeps_the_others(
    tmp_path, make_record, spoil
):
    state = StateDir(tmp_path / "state")
    for name in ("runner-a", "runner-b", "runner-c"):
        state.save(make_record(name))
    spoil(state.record_path("runner-b"))
    scan = state.scan()
    assert [r.name for r in scan.records] == ["runner-a", "runner-c"]
    assert [b.name for b in scan.broken] == ["runner-b"]
    message = str(scan.broken[0])
    assert "\n" not in message and "unreadable runner record" in message
    assert str(state.record_path("runner-b")) in message
    assert state.records() == scan.records
    with pytest.raises(BrokenRecord):
        state.load("runner-b")


def test_save_over_a_folder_where_the_record_belongs(tmp_path, make_record):
    state = StateDir(tmp_path / "state")
    state.record_path("runner-a").mkdir(parents=True)
    state.save(make_record("runner-a"))
    assert state.load("runner-a").name == "runner-a"


def test_set_aside_keeps_the_unreadable_file_for_a_person(tmp_path, make_record):
    state = StateDir(tmp_path / "state")
    state.save(make_record("runner-a"))
    state.record_path("runner-a").write_text("{broken")
    kept = state.set_aside("runner-a")
    assert kept.read_text() == "{broken" and kept.parent == state.runner_dir("runner-a")
    assert state.load("runner-a") is None
    assert state.set_aside("runner-a") is None


def test_forget_removes_everything_of_a_runner(tmp_path, make_record):
    state = StateDir(tmp_path / "state")
    state.save(make_record("runner-a"))
    state.log_dir("runner-a").mkdir()
    state.forget("runner-a")
    assert not state.runner_dir("runner-a").exists()
    assert state.names() == []


def test_held_tells_whether_a_live_process_holds_the_lock(tmp_path):
    state = StateDir(tmp_path / "state")
    assert not state.held("shared")
    child = hold_in_child(state, "shared")
    try:
        assert state.held("shared")
    finally:
        child.communicate("\n", timeout=10)
    assert not state.held("shared")


def test_a_killed_holder_holds_nothing(tmp_path):
    state = StateDir(tmp_path / "state")
    child = hold_in_child(state, "shared")
    child.kill()
    child.communicate(timeout=10)
    assert not state.held("shared")


# --- an unusable state dir is one line naming the option --------------------------------------


def _unusable(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    os.chmod(read_only, 0o500)
    return {
        "proc": Path("/proc/cml-infra-test/state"),
        "a-file": a_file,
        "under-a-file": a_file / "state",
        "too-long": tmp_path / ("x" * 300),
        "read-only": read_only / "state",
    }


@pytest.mark.parametrize("case", ["proc", "a-file", "under-a-file", "too-long", "read-only"])
def test_an_unusable_state_dir_is_a_usage_error_naming_the_option(tmp_path, make_record, case):
    if case == "read-only" and os.geteuid() == 0:
        pytest.skip("root writes into a read-only folder")
    state = StateDir(_unusable(tmp_path)[case])
    with pytest.raises(UsageError) as caught:
        state.save(make_record("runner-a"))
    message = str(caught.value)
    assert message.startswith("--state-dir: cannot use ") and "\n" not in message
    assert "CML_INFRA_HOME" in message
    with pytest.raises(UsageError, match=r"^--state-dir"), state.lock("runner-a", wait=0):
        pass


def test_reading_an_absent_state_dir_finds_nothing(tmp_path):
    state = StateDir(_unusable(tmp_path)["under-a-file"])
    assert state.scan().records == [] and state.names() == []
