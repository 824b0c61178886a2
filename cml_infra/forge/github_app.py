"""Signing in as a GitHub App: a short-lived installation token minted per repository or
organization, instead of a personal token that organizations forbid.

The App's private key is read once, kept in this object only (never in a repr, a file, a
process's arguments or environment, or an error), and used to sign the JWT that PyGithub sends
to `POST /app/installations/{id}/access_tokens`. The token minted there lasts an hour, long
enough for any one command, and is what the forge's calls then carry.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cml_infra.errors import CmlInfraError, UsageError

if TYPE_CHECKING:
    from cml_infra.spec import ForgeTarget

ID_FLAG = "--github-app-id"
KEY_FLAG = "--github-app-key"
# The key's text, as a CI secret hands it over (the flag names a file instead).
KEY_ENV = "CML_INFRA_GITHUB_APP_PRIVATE_KEY"
# A PEM private key is a few kB; a larger "key" is a wrong file, not read into memory whole.
KEY_MAX_BYTES = 64 * 1024
_APP_ID = re.compile(r"[1-9][0-9]{0,11}\Z")
# Minted tokens, per (App, API, scope), for the life of the command.
_MINTED: dict[tuple[str, str, str], str] = {}


@dataclass(frozen=True)
class GitHubApp:
    """An App's id and private key: mints the installation token of a forge target."""

    app_id: str
    key: str = field(repr=False)

    def token_for(self, target: ForgeTarget) -> str:
        from cml_infra.forge.github import PUBLIC_API

        api_url = (target.api_url or PUBLIC_API).rstrip("/")
        cache = (self.app_id, api_url, target.scope_path.lower())
        if cache not in _MINTED:
            _MINTED[cache] = self._mint(target, api_url)
        return _MINTED[cache]

    def _mint(self, target: ForgeTarget, api_url: str) -> str:
        from github import Auth, GithubException, GithubIntegration

        from cml_infra.forge.github import GitHubForge

        # The key goes to the API only as a JWT signature, over https (or to loopback doubles).
        GitHubForge.check_target(target)
        integration = GithubIntegration(
            auth=Auth.AppAuth(self.app_id, self.key),
            base_url=api_url,
            timeout=20,
            retry=None,
            seconds_between_requests=None,
            seconds_between_writes=None,
        )
        where = target.slug
        try:
            if target.repo:
                owner, _, name = target.repo.partition("/")
                installation = integration.get_repo_installation(owner, name)
            else:
                installation = integration.get_org_installation(str(target.org))
            return str(integration.get_access_token(installation.id).token)
        except GithubException as exc:
            raise _refused(exc.status, self.app_id, where) from None
        except Exception as exc:
            if type(exc).__module__.startswith(("requests", "urllib3")):
                raise CmlInfraError(
                    f"github: {api_url} is unreachable ({type(exc).__name__})"
                ) from None
            raise


def _refused(status: int, app_id: str, where: str) -> CmlInfraError:
    if status == 401:
        return CmlInfraError(
            f"github: the App's signature was rejected (401): check {ID_FLAG} {app_id} and "
            f"that {KEY_FLAG} is one of that App's private keys"
        )
    if status == 404:
        return CmlInfraError(
            f"github: App {app_id} is not installed on {where} (404); install it there, or "
            "check --repo/--org"
        )
    return CmlInfraError(f"github: minting an installation token for {where} failed ({status})")


def from_options(app_id: str | None, key_file: str | None) -> GitHubApp | None:
    """The App the flags (or CML_INFRA_GITHUB_APP_ID / _PRIVATE_KEY) name; None without an id.
    Checked before anything is created: an id of digits, a key that is a PEM private key."""
    key_text = os.environ.get(KEY_ENV) or None
    if not app_id:
        if key_file or key_text:
            where = KEY_FLAG if key_file else KEY_ENV
            raise UsageError(ID_FLAG, f"{where} is given without the App's id ({ID_FLAG})")
        return None
    if not _APP_ID.match(app_id.strip()):
        raise UsageError(ID_FLAG, f"{app_id!r} is not an App id (the App's number, e.g. 123456)")
    if key_file:
        key, source = _read_key(key_file), f"{KEY_FLAG} {key_file}"
    elif key_text:
        key, source = key_text, KEY_ENV
    else:
        raise UsageError(
            KEY_FLAG, f"App {app_id} needs its private key: {KEY_FLAG} FILE or {KEY_ENV}"
        )
    _check_key(key, source)
    return GitHubApp(app_id.strip(), key)


def _read_key(path: str) -> str:
    file = Path(path).expanduser()
    try:
        if file.stat().st_size > KEY_MAX_BYTES:
            limit = KEY_MAX_BYTES // 1024
            raise UsageError(KEY_FLAG, f"{path}: over {limit} kB, not a private key")
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(KEY_FLAG, f"{path}: not a PEM private key (not text)") from None
    except OSError as exc:
        raise UsageError(KEY_FLAG, f"{path}: cannot read ({exc.strerror})") from None


def _check_key(key: str, source: str) -> None:
    """A PEM RSA private key, the kind GitHub issues; its text is never quoted back."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        loaded: Any = load_pem_private_key(key.strip().encode("utf-8"), password=None)
    except (ValueError, TypeError):
        raise UsageError(
            KEY_FLAG, f"{source}: not an unencrypted PEM private key (the App's .pem download)"
        ) from None
    if not isinstance(loaded, rsa.RSAPrivateKey):
        raise UsageError(KEY_FLAG, f"{source}: GitHub App keys are RSA; this key is not")
