"""The runner on the instance keeps up with GitHub's releases: a runner that takes many jobs keeps
GitHub's self-update (or it stops getting jobs 30 days after the next release); a single-job one
has no use for it. And an archive whose checksum is not the published one is never installed."""

from __future__ import annotations

import hashlib

import pytest

from cml_infra.agent.github_runner import Runner
from tests.fakes.runner_double import build_archive
from tests.unit.agent.test_github_runner import _fake_runner_dir, runner_config

REGISTRATION = {"kind": "token", "secret": "AREG", "url": "https://github.com/o/r"}


def config_sh_args(tmp_path, **changes) -> list[str]:
    """The arguments the agent gives config.sh (a stand-in that writes them down)."""
    argv_file = tmp_path / "config-args"
    _fake_runner_dir(tmp_path, "exec sleep 5\n")
    config_sh = tmp_path / "runner" / "config.sh"
    config_sh.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >"{argv_file}"\n')
    config_sh.chmod(0o755)
    runner = Runner(runner_config(registration=REGISTRATION, **changes), tmp_path, {})
    try:
        runner.start()
    finally:
        runner.stop(grace=2.0)
    return argv_file.read_text().splitlines()


def test_a_runner_of_many_jobs_keeps_githubs_self_update(tmp_path, quiet_log):
    args = config_sh_args(tmp_path, ephemeral=False)
    assert "--disableupdate" not in args
    assert "--ephemeral" not in args
    assert "--unattended" in args


def test_a_single_job_runner_does_without_it(tmp_path, quiet_log):
    args = config_sh_args(tmp_path, ephemeral=True)
    assert {"--ephemeral", "--disableupdate"} <= set(args)


def test_an_archive_with_another_checksum_is_refused_and_removed(tmp_path, quiet_log):
    archive = build_archive(tmp_path / "dist")
    expected = hashlib.sha256(b"what the release notes say").hexdigest()
    runner = Runner(runner_config(archive={"path": str(archive), "sha256": expected}), tmp_path, {})
    with pytest.raises(RuntimeError) as raised:
        runner.install()
    actual = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert str(raised.value) == (
        f"the runner archive's sha256 is {actual}, not the {expected} it must have (its "
        "release's published checksum): refusing to install it"
    )
    assert not (tmp_path / "runner.tar.gz").exists(), "the unverified download is not kept"
    assert not (tmp_path / "runner").exists(), "nothing of it is extracted"
