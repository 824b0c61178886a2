"""GitHub's runner on the instance, launcher side: which release it installs (looked up at `up`,
the packaged pin otherwise), and the `runner` section of the agent's config
(agent/github_runner.py reads it on the instance)."""

from __future__ import annotations

import hashlib
import re
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from cml_infra.errors import CmlInfraError, UsageError
from cml_infra.forge.base import Registration, RunnerRelease

if TYPE_CHECKING:
    from cml_infra.clouds.base import Boot
    from cml_infra.forge.github import GitHubForge
    from cml_infra.spec import RunnerSpec

# GitHub refuses to configure or register a runner older than this, and sends no more jobs to
# one that has not installed each new release within 30 days of its publication (GitHub
# changelog, 2026-02-05, "self-hosted runner minimum version enforcement extended"; enforced in
# full on github.com since September 2026). The packaged pin never goes below it.
MINIMUM_VERSION = "2.329.0"
# The runner's build for each CPU (Boot.arch), as its release assets name it.
PLATFORMS = {"x86_64": "linux-x64", "arm64": "linux-arm64"}
# Stands in for the checksum of a release `render` names but cannot look up (--runner-version
# without network): not hex, so an instance refuses whatever it downloads.
UNRESOLVED_SHA256 = "looked-up-by-cml-infra-up"
RELEASE_ASSET = "actions-runner-{platform}-{version}.tar.gz"
# Each release's notes carry the SHA-256 of every asset between markers, one pair per platform.
_NOTES_SHA = "<!-- BEGIN SHA {platform} -->([0-9a-fA-F]{{64}})<!-- END SHA {platform} -->"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_ASSET = re.compile(
    r"actions-runner-(?P<platform>[a-z0-9]+-[a-z0-9]+)-(?P<version>[0-9]+\.[0-9]+\.[0-9]+)\.tar\.gz"
)
# Stands in for a JIT config while inputs are checked before anything is minted: as large as
# GitHub's (a few KB), so that a startup script that would be too large fails first.
PLACEHOLDER = Registration(
    "jit", ("minted-by-cml-infra-up." * 200)[:4096], "https://github.com/minted/by-up"
)


@cache
def pinned() -> dict[str, Any]:
    """The packaged release (github_runner.yaml): version, and url and sha256 per platform."""
    import yaml

    text = resources.files(__package__).joinpath("github_runner.yaml").read_text("utf-8")
    data: dict[str, Any] = yaml.safe_load(text)
    return data


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def platform_of(boot: Boot) -> str:
    """The runner build the instance's CPU runs."""
    found = PLATFORMS.get(boot.arch)
    if found is None:
        raise UsageError(
            "--type",
            f"the GitHub runner has no build for {boot.arch} CPUs; it runs on "
            + ", ".join(sorted(PLATFORMS)),
        )
    return found


def packaged(platform: str) -> RunnerRelease:
    """The pinned release (github_runner.yaml) for `platform`."""
    data = pinned()
    build = data["platforms"][platform]
    return RunnerRelease(str(data["version"]), build["url"], build["sha256"])


def from_release(data: Any, platform: str) -> RunnerRelease:
    """A release of actions/runner, as GitHub's releases API describes it: the asset for
    `platform`, with the SHA-256 its notes publish (or, without one there, the digest GitHub
    keeps for the asset; the two must agree where both are given)."""
    tag = str(data.get("tag_name") or "") if isinstance(data, dict) else ""
    version = tag.removeprefix("v")
    if not re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", version):
        raise CmlInfraError(f"github: an actions/runner release with an unexpected tag {tag!r}")
    name = RELEASE_ASSET.format(platform=platform, version=version)
    asset = next((a for a in data.get("assets") or () if a.get("name") == name), None)
    if asset is None or not asset.get("browser_download_url"):
        raise CmlInfraError(f"github: actions/runner {tag} has no asset {name}")
    found = re.search(_NOTES_SHA.format(platform=re.escape(platform)), data.get("body") or "")
    noted = found[1].lower() if found else None
    digest = str(asset.get("digest") or "")
    kept = digest.removeprefix("sha256:").lower() if digest.startswith("sha256:") else None
    if noted and kept and noted != kept:
        raise CmlInfraError(
            f"github: actions/runner {tag}: the notes give {name} the sha256 {noted}, the "
            f"asset's digest is {kept}; refusing both"
        )
    sha256 = noted or kept
    if sha256 is None or not _HEX64.fullmatch(sha256):
        raise CmlInfraError(f"github: actions/runner {tag} publishes no sha256 for {name}")
    return RunnerRelease(version, str(asset["browser_download_url"]), sha256)


def from_applications(data: Any, platform: str) -> RunnerRelease:
    """The runner a GitHub Enterprise Server serves (its list of runner applications) for
    `platform`, with its checksum."""
    os_name, _, architecture = platform.partition("-")
    entry = next(
        (
            app
            for app in (data if isinstance(data, list) else ())
            if app.get("os") == os_name and app.get("architecture") == architecture
        ),
        None,
    )
    if entry is None:
        raise CmlInfraError(f"github: the server offers no runner application for {platform}")
    found = _ASSET.fullmatch(str(entry.get("filename") or ""))
    sha256 = str(entry.get("sha256_checksum") or "").lower()
    if (
        found is None
        or found["platform"] != platform
        or not _HEX64.fullmatch(sha256)
        or not entry.get("download_url")
    ):
        raise CmlInfraError(
            f"github: the server's runner application for {platform} names no version or no sha256"
        )
    return RunnerRelease(found["version"], str(entry["download_url"]), sha256)


def resolve(forge: GitHubForge, spec: RunnerSpec, boot: Boot) -> RunnerRelease | None:
    """At `up`: the release the instance installs. --runner-version: that release (its lookup
    failing fails `up`). Otherwise the latest, unless the archive is a local file (its own
    checksum) or a mirror (of the packaged release); a latest that cannot be looked up, or one
    older than the packaged floor, leaves the packaged release, with a warning."""
    from cml_infra import ui
    from cml_infra.forge.github import enterprise_server

    source = spec.runner_archive
    if source is not None and not _is_url(source):
        return None
    platform = platform_of(boot)
    if spec.runner_version is not None:
        release = forge.runner_release(platform, spec.runner_version)
        ui.info(f"{spec.name}: installing actions/runner {release.version} ({platform})")
        return release
    if source is not None:
        return None
    floor = packaged(platform)
    try:
        latest = forge.latest_runner(platform)
    except CmlInfraError as exc:
        ui.warn(
            f"{spec.name}: could not look up the latest actions/runner release ({exc}); "
            f"installing the packaged {floor.version}"
        )
        return None
    if version_key(latest.version) < version_key(floor.version) and not enterprise_server(
        forge.api_url
    ):
        ui.warn(
            f"{spec.name}: GitHub names actions/runner {latest.version} the latest, older than "
            f"the packaged {floor.version}; installing {floor.version}"
        )
        return None
    ui.info(f"{spec.name}: installing actions/runner {latest.version} ({platform}), the latest")
    return latest


def _is_url(source: str) -> bool:
    return urlsplit(source).scheme in ("http", "https")


def _check_version(spec: RunnerSpec) -> None:
    """--runner-version below the minimum GitHub lets register: refused before anything is
    made (GitHub Enterprise Server sets its own, and says it at `up`)."""
    from cml_infra.forge.github import enterprise_server

    version = spec.runner_version
    assert spec.forge is not None
    if version is None or enterprise_server(spec.forge.api_url):
        return
    if version_key(version) < version_key(MINIMUM_VERSION):
        raise UsageError(
            "--runner-version",
            f"{version} is older than {MINIMUM_VERSION}, the oldest runner GitHub lets "
            f"register; give {MINIMUM_VERSION} or later, or leave it out for the latest",
        )


def archive(spec: RunnerSpec, boot: Boot, release: RunnerRelease | None = None) -> dict[str, str]:
    """Where the instance gets the runner, and the sha256 it must have: `release` (what `up`
    looked up), else the packaged release, or what --runner-archive and --runner-version say."""
    _check_version(spec)
    platform = platform_of(boot)
    if release is None:
        release = packaged(platform)
        if spec.runner_version not in (None, release.version):
            # `render` looks nothing up: it names the asked-for release, without a checksum.
            url = release.url.replace(release.version, spec.runner_version)
            release = RunnerRelease(spec.runner_version, url, UNRESOLVED_SHA256)
    source = spec.runner_archive
    if source is None:
        return {"url": release.url, "sha256": release.sha256}
    if _is_url(source):
        # A mirror serves the packaged release, or the --runner-version one: its checksum holds.
        return {"url": source, "sha256": release.sha256}
    if spec.runner_version is not None:
        raise UsageError(
            "--runner-version", "a local --runner-archive is installed as it is; give one of them"
        )
    path = Path(source).expanduser()
    if not boot.reads_launcher_files:
        raise UsageError(
            "--runner-archive", "a local path works on the local cloud only; give a URL"
        )
    if not path.is_file():
        raise UsageError("--runner-archive", f"{source}: no such file")
    # A local file is trusted as given: its checksum is taken here and checked on the instance.
    return {"path": str(path.resolve()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def agent_config(
    spec: RunnerSpec,
    registration: Registration,
    labels: tuple[str, ...],
    boot: Boot,
    release: RunnerRelease | None = None,
) -> dict[str, Any]:
    assert spec.forge is not None
    return {
        "kind": "github",
        "archive": archive(spec, boot, release),
        "registration": {
            "kind": registration.kind,
            "secret": registration.secret,
            "url": registration.url,
        },
        "name": spec.name,
        "labels": list(labels),
        "ephemeral": spec.single,
        "group": spec.forge.group,
        "user": boot.runner_user,
        "preemption": boot.preemption_probe,
        "startup_timeout": spec.startup_timeout,
    }
