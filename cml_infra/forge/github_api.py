"""GitHub's REST API through PyGithub's requester: one call, one decoded JSON answer, one clean
error line. Shared by the runner forge (github.py) and the comments and assets of `comment`.

Each client says what the token needs for its calls (`scope_hint`), so that a 403 tells the user
which permission to grant: runners need Administration, comments Pull requests / Issues, assets
Contents. The token stays in this object: no error text carries it.

The forge registry imports every module of this package; this one registers nothing.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from cml_infra.errors import CmlInfraError, UsageError

PUBLIC_API = "https://api.github.com"
# Waiting for a rate-limit reset is worth it only when the reset is this close.
RATE_LIMIT_WAIT_MAX = 60.0


class GitHubApiError(CmlInfraError):
    """GitHub answered with an error status (`status`); exit code 1."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NotFound(GitHubApiError):
    """404: the object does not exist, or the token cannot see it (GitHub does not say which)."""


class GitHubApi:
    """Calls on one GitHub API root with one token.

    `subject` names what a 404 is about (`octo/repo`); `sleep` waits out a rate limit that
    resets soon (tests replace it).
    """

    def __init__(
        self,
        api_url: str,
        token: str,
        scope_hint: str,
        *,
        subject: str = "the repository",
        flag: str = "--github-url",
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        # The token goes out only over https (or to a loopback double): checked for every
        # client made, whatever checked the URL before.
        check_api_url(flag, api_url)
        self.api_url = api_url.rstrip("/")
        self.scope_hint = scope_hint
        self.subject = subject
        self._token = token
        self._sleep = sleep or time.sleep
        self._github: Any = None

    def request(
        self,
        verb: str,
        path: str,
        body: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        *,
        needs: str | None = None,
    ) -> Any:
        """One API call (`path` from the API root): its decoded JSON. A rate limit that resets
        soon is waited out once; anything else becomes one clean error without the token, a 403
        saying what the token needs (`needs`, else the client's `scope_hint`)."""
        from github import GithubException

        for attempt in range(2):
            try:
                _, data = self._client().requester.requestJsonAndCheck(
                    verb, path, parameters=params, headers=headers, input=body
                )
                return data
            except GithubException as exc:
                wait = _rate_limit_wait(exc)
                if wait is not None and wait <= RATE_LIMIT_WAIT_MAX and attempt == 0:
                    self._sleep(max(wait, 0.0) + 1.0)
                    continue
                raise self._error(exc, verb, path, needs or self.scope_hint) from None
            except Exception as exc:  # requests' connection errors, timeouts, TLS failures
                if type(exc).__module__.startswith(("requests", "urllib3")):
                    raise GitHubApiError(
                        f"github: {self.api_url} is unreachable ({type(exc).__name__})"
                    ) from None
                raise
        raise AssertionError("unreachable")

    def scrub(self, text: str) -> str:
        """`text` with the token masked (for messages that quote what GitHub said)."""
        return scrub(text, self._token)

    def _client(self) -> Any:
        if self._github is None:
            from github import Auth, Github

            # No PyGithub retries or pacing: it would sleep up to an hour on a rate limit; the
            # few calls made here handle limits themselves and report the reset time.
            self._github = Github(
                auth=Auth.Token(self._token),
                base_url=self.api_url,
                timeout=20,
                retry=None,
                seconds_between_requests=None,
                seconds_between_writes=None,
            )
        return self._github

    def _error(self, exc: Any, verb: str, path: str, needs: str) -> GitHubApiError:
        status = exc.status
        message = scrub(
            str((exc.data or {}).get("message", "")) if isinstance(exc.data, dict) else "",
            self._token,
        )
        where = f"{verb} {path}"
        if status == 401:
            return GitHubApiError(
                f"github: the token was rejected (401 {message}); check --token", status
            )
        if status == 404:
            return NotFound(
                f"github: {self.subject} not found, or the token cannot see it (404 on {where})",
                status,
            )
        wait = _rate_limit_wait(exc)
        if wait is not None:
            reset = datetime.fromtimestamp(time.time() + wait, timezone.utc)
            return GitHubApiError(
                f"github: rate limited until {reset:%Y-%m-%d %H:%M:%S} UTC ({where})", status
            )
        if status == 403:
            return GitHubApiError(
                f"github: permission denied (403 {message}) on {where}; the token needs {needs}",
                status,
            )
        return GitHubApiError(f"github: {where} failed ({status} {message})", status)


def check_api_url(flag: str, url: str) -> None:
    """The token goes only over https, or plain http to this machine (loopback test doubles)."""
    parts = urlsplit(url)
    try:
        host = parts.hostname
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        host = None
    if not host or not re.fullmatch(r"https?://[^\s/]+(/[^\s]*)?", url, re.IGNORECASE):
        raise UsageError(flag, f"{url!r} is not an http(s) URL; give https://HOST/api/v3")
    if parts.scheme == "https" or (parts.scheme == "http" and _loopback(host)):
        return
    raise UsageError(
        flag,
        f"{url!r}: the token is sent over https only (plain http only to 127.0.0.0/8, ::1 or "
        "localhost); give https://HOST/api/v3",
    )


def scrub(text: str, token: str) -> str:
    return text.replace(token, "***") if token else text


def _loopback(host: str) -> bool:
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _rate_limit_wait(exc: Any) -> float | None:
    """Seconds until the limit resets, when the error is GitHub's rate limit."""
    headers = {k.lower(): v for k, v in (exc.headers or {}).items()}
    if exc.status not in (403, 429):
        return None
    if headers.get("x-ratelimit-remaining") == "0" and "x-ratelimit-reset" in headers:
        return float(headers["x-ratelimit-reset"]) - time.time()
    if "retry-after" in headers:
        value = headers["retry-after"]
        if value.strip().isdigit():
            return float(value)
        from email.utils import parsedate_to_datetime

        try:  # Retry-After may also be an HTTP date
            return parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return None
