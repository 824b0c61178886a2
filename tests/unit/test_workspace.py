"""cml_infra.workspace: the state dir's records, privacy, locks and Terraform CLI config."""

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
from cml_infra.workspace import (
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
    for folder in (state.root, state.runners, state.root / "locks", state.plugin_cache):
        assert mode(folder) == 0o700, folder
    assert os.umask(0o022) == 0o077


def test_ensure_tightens_existing_folders(tmp_path):
    root = tmp_path / "state"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    StateDir(root).ensure()
    assert mode(root) == 0o700


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


def test_write_private_over_a_stale_temp_file(tmp_path, umask_022):
    """A leftover .name.tmp keeps its mode through O_TRUNC; the result must still be 0600."""
    stale = tmp_path / ".runner.json.tmp"
    stale.write_text("half a file")
    os.chmod(stale, 0o644)
    write_private(tmp_path / "runner.json", "{}")
    assert mode(tmp_path / "runner.json") == 0o600
    assert not stale.exists()


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


def test_lock_held_by_another_process(tmp_path):
    state = StateDir(tmp_path / "state")
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from cml_infra.workspace import StateDir
        with StateDir(Path({str(state.root)!r})).lock("shared", wait=0):
            print("held", flush=True)
            sys.stdin.readline()
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "held"
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


def test_write_cli_config_content(tmp_path):
    state = StateDir(tmp_path / "state")
    path = state.write_cli_config()
    assert path == state.root / "terraformrc"
    text = path.read_text()
    assert f'plugin_cache_dir   = "{state.plugin_cache}"' in text
    assert "disable_checkpoint = true" in text
    assert mode(path) == 0o600
    assert state.plugin_cache.is_dir()


def test_write_cli_config_not_rewritten_when_unchanged(tmp_path):
    state = StateDir(tmp_path / "state")
    path = state.write_cli_config()
    before = os.stat(path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns - 10**9))
    aged = os.stat(path)
    assert state.write_cli_config() == path
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns) == (aged.st_ino, aged.st_mtime_ns)


def test_write_cli_config_rewrites_a_changed_file(tmp_path):
    state = StateDir(tmp_path / "state")
    path = state.write_cli_config()
    good = path.read_text()
    path.write_text('plugin_cache_dir = "/elsewhere"\n')
    state.write_cli_config()
    assert path.read_text() == good


def test_write_cli_config_quotes_odd_paths(tmp_path):
    state = StateDir(tmp_path / 'st"ate\\x')
    text = state.write_cli_config().read_text()
    assert 'plugin_cache_dir   = "' in text
    assert '\\"' in text and "\\\\" in text


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
