"""Who a request to the fake GitHub comes from, and what it may do: tokens with or without
limited permissions, GitHub Apps (their JWTs), and the installation tokens they mint.

GitHub's rules, as the fake applies them:
- An App authenticates with a JWT signed RS256 by one of its private keys, `iss` its id (a
  number or a string of it), `exp` no more than 10 minutes after `iat` and not past; anything
  else is a 401. A JWT opens only the App's own endpoints (`/app...`, `.../installation`);
  a token there is a 401 ("A JSON web token could not be decoded").
- An installation token (`ghs_...`, valid an hour) acts as `<slug>[bot]` with the
  installation's permissions, on the installation's repositories and organizations only: another
  repository is a 404 (GitHub does not say whether it exists), another organization a 403.
- A permission is `read` or `write` (`admin` for a few); `write` includes `read`, and an
  installation always has `metadata: read`. A request without the permission it needs is a 403
  "Resource not accessible by integration" ("... by personal access token" for a user's token),
  with the permissions that would do in `X-Accepted-GitHub-Permissions`.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

LEVELS = {"read": 1, "write": 2, "admin": 3}
JWT_MAX_LIFETIME = 600
# GitHub tolerates some clock drift on `iat`; its docs tell Apps to set it 60 s in the past.
CLOCK_DRIFT = 60
BAD_JWT = "A JSON web token could not be decoded"
JWT_TOO_LONG = "'Expiration time' claim ('exp') is too far in the future"
JWT_EXPIRED = (
    "'Expiration time' claim ('exp') must be a numeric value representing the future time at "
    "which the assertion expires"
)
JWT_IAT = (
    "'Issued at' claim ('iat') must be an Integer representing the time that the assertion "
    "was issued"
)
TOKEN_LIFETIME = timedelta(hours=1)


@dataclass
class App:
    app_id: int
    slug: str
    public_key: Any  # a cryptography public key
    permissions: dict[str, str]
    # installation id -> canonical scopes ("repos/OWNER/NAME", "orgs/ORG") it reaches.
    installations: dict[int, tuple[str, ...]] = field(default_factory=dict)
    created_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


@dataclass
class Credential:
    """The caller of one request. permissions None: every right (the fake's main token);
    scopes None: every repository and organization the fake serves."""

    kind: str  # "token" | "installation" | "app"
    login: str
    user_type: str  # "User" | "Bot"
    permissions: dict[str, str] | None = None
    scopes: frozenset[str] | None = None
    expires_at: datetime | None = None
    app: App | None = None
    installation_id: int | None = None
    user_id: int = 1

    def allows(self, *alternatives: tuple[str, str]) -> bool:
        """Whether any of (permission, level) is granted."""
        if self.permissions is None:
            return True
        granted = dict(self.permissions)
        if self.kind == "installation":
            granted.setdefault("metadata", "read")
        return any(
            LEVELS.get(granted.get(name, ""), 0) >= LEVELS[level] for name, level in alternatives
        )

    def refusal(self) -> str:
        who = "integration" if self.user_type == "Bot" else "personal access token"
        return f"Resource not accessible by {who}"


def bot_login(slug: str) -> str:
    return f"{slug}[bot]"


def installation_token() -> str:
    """A fresh token shaped like GitHub's installation tokens."""
    alphabet = string.ascii_letters + string.digits
    return "ghs_" + "".join(secrets.choice(alphabet) for _ in range(36))


def looks_like_jwt(credential: str) -> bool:
    return credential.count(".") == 2 and credential.startswith("eyJ")


def verify_jwt(credential: str, apps: dict[int, App], now: datetime) -> App | str:
    """The App that signed `credential`, or the message of GitHub's 401."""
    import jwt

    try:
        claims = jwt.decode(credential, options={"verify_signature": False})
        app = apps.get(int(str(claims.get("iss"))))
    except (jwt.PyJWTError, ValueError, TypeError):
        return BAD_JWT
    if app is None:
        return BAD_JWT
    try:
        claims = jwt.decode(
            credential,
            app.public_key,
            algorithms=["RS256"],
            options={"verify_exp": False, "verify_iat": False, "require": ["iat", "exp", "iss"]},
        )
    except jwt.PyJWTError:
        return BAD_JWT
    iat, exp = claims["iat"], claims["exp"]
    if not isinstance(iat, int) or iat > now.timestamp() + CLOCK_DRIFT:
        return JWT_IAT
    if not isinstance(exp, int) or exp <= now.timestamp():
        return JWT_EXPIRED
    if exp - iat > JWT_MAX_LIFETIME:
        return JWT_TOO_LONG
    return app


def accepted_header(alternatives: tuple[tuple[str, str], ...]) -> str:
    """X-Accepted-GitHub-Permissions: alternatives separated by '; '."""
    return "; ".join(f"{name}={level}" for name, level in alternatives)
