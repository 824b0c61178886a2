"""The Backend protocol: an object store that holds the ledger and, through Terraform's own
backend for that store, every runner's Terraform state.

One subclass per store (s3, gs, azurerm), the same small shape: parse its URL, check that the
bucket can be used, list/read/write/delete objects (with the conditional writes that make a
hold visible to other machines), and say how Terraform's backend block reaches the same place.
No credential is ever part of a backend: the providers' usual chains supply them, to the SDK
here and to Terraform alike.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar
from urllib.parse import parse_qs, urlsplit

from cml_infra.errors import CmlInfraError, UsageError

SOURCE = "--backend"
# What a prefix may hold: the keys it makes are also file names in Terraform's own messages.
_PREFIX = re.compile(r"[A-Za-z0-9._/-]*")
# How long a signed URL may live: S3 SigV4, GCS V4 and Azure user delegation keys all cap here.
MAX_URL_SECONDS = 7 * 24 * 3600
MIN_URL_SECONDS = 60
METHODS = ("GET", "PUT")


@dataclass(frozen=True)
class Blob:
    """An object's content and the version a conditional write or delete names (an S3 ETag, a
    GCS generation, an Azure ETag)."""

    data: bytes
    version: str


@dataclass(frozen=True)
class SignedUrl:
    """A capability to GET or PUT one object with no credential of the store: whoever holds the
    URL may use it until `expires_at`, so it is a secret (never logged, never in an error)."""

    url: str = field(repr=False)  # a secret: kept out of reprs, and so of tracebacks
    method: str  # "GET" or "PUT"
    # UTC: the earlier of the lifetime asked and what the signing credential allows.
    expires_at: datetime
    # Headers the request must carry (Azure's x-ms-blob-type on a PUT); {} when none.
    headers: dict[str, str]


def url_seconds(seconds: int) -> int:
    """A signed URL's lifetime, clamped to [MIN_URL_SECONDS, MAX_URL_SECONDS]."""
    return max(MIN_URL_SECONDS, min(int(seconds), MAX_URL_SECONDS))


def url_method(method: str) -> str:
    """`GET` or `PUT` (any case); anything else is a programming error here, not bad input."""
    upper = method.upper()
    if upper not in METHODS:
        raise ValueError(f"cannot sign {method!r}: use one of {', '.join(METHODS)}")
    return upper


class Backend(ABC):
    """A place in an object store: `<store>://<where>/<prefix>`; keys are relative to it."""

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    # The form of the URL, for errors.
    FORM: ClassVar[str]
    # Terraform's state objects in a workspace's state folder (`terraform_settings`' state_key),
    # which the ledger deletes once a destroy has emptied them: the name is the backend's
    # (Terraform's gcs backend calls it default.tfstate).
    STATE_OBJECTS: ClassVar[tuple[str, ...]] = ("terraform.tfstate",)

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix.strip("/")

    @classmethod
    @abstractmethod
    def parse(cls, url: str) -> Backend:
        """The backend a URL names; a UsageError on --backend when it is malformed."""

    def key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    @abstractmethod
    def check(self) -> None:
        """Whether the store can be listed and written: a UsageError on --backend naming what
        is wrong (no such bucket, no permission), before anything is created."""

    @abstractmethod
    def list(self, relative: str) -> list[str]:
        """Every key under `relative` (a folder, ending in /), relative to the prefix."""

    @abstractmethod
    def get(self, relative: str) -> Blob | None:
        """An object, or None when there is none."""

    @abstractmethod
    def put(self, relative: str, data: bytes, *, if_absent: bool = False) -> str | None:
        """Write an object: its new version; with `if_absent`, None (nothing written) when the
        object exists already."""

    @abstractmethod
    def replace(self, relative: str, data: bytes, version: str) -> str | None:
        """Overwrite an object only while it is at `version`: its new version, or None."""

    @abstractmethod
    def delete(self, relative: str, version: str | None = None) -> bool:
        """Delete an object (only while it is at `version`, when given); False when it was gone
        or had changed."""

    @abstractmethod
    def sign(self, relative: str, method: str, seconds: int) -> SignedUrl:
        """A URL that lets a machine with no credential of the store GET or PUT (create or
        overwrite) the object at `relative` for `seconds` (clamped to [60, MAX_URL_SECONDS]),
        or less when the signing credential expires sooner: `expires_at` says when. A
        BackendError (naming the backend and the object, never the URL) when it cannot sign."""

    @abstractmethod
    def terraform_settings(self, state_key: str) -> dict[str, object]:
        """The arguments of Terraform's backend block that keep a workspace's state at
        `state_key` (a folder, relative to the prefix), locking included; never a credential."""

    @property
    @abstractmethod
    def terraform_type(self) -> str:
        """The Terraform backend type: s3, gcs or azurerm."""

    def terraform_block(self, state_key: str) -> str:
        """`backend.tf` of a workspace: the backend block, each value as a JSON literal (a valid
        HCL literal too), so that no URL part can become HCL syntax."""
        lines = [
            "# Generated by cml-infra: this runner's Terraform state and its lock live here.",
            "terraform {",
            f"  backend {json.dumps(self.terraform_type)} {{",
        ]
        settings = self.terraform_settings(state_key)
        width = max(len(key) for key in settings)
        for key, value in settings.items():
            if isinstance(value, dict):
                inner = ", ".join(f"{k} = {_literal(v)}" for k, v in value.items())
                lines.append(f"    {key.ljust(width)} = {{ {inner} }}")
            else:
                lines.append(f"    {key.ljust(width)} = {_literal(value)}")
        lines += ["  }", "}", ""]
        return "\n".join(lines)

    def describe(self) -> str:
        """The URL as people wrote it (it holds no credential: none may be written in it)."""
        return self.url


def _literal(value: object) -> str:
    return json.dumps(value).replace("${", "$${").replace("%{", "%%{")


def split(url: str, form: str) -> tuple[str, str, dict[str, str]]:
    """`scheme://where/prefix?query` → (where, prefix, query); a credential in the URL, an
    unknown query key or a prefix that cannot be a key is refused."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise UsageError(
            SOURCE,
            "a backend URL must not hold a credential; the cloud's usual credential chain "
            "supplies one (environment, profile, OIDC)",
        )
    if not parts.netloc:
        raise UsageError(SOURCE, f"{url!r} names no bucket; the form is {form}")
    prefix = parts.path.strip("/")
    if not _PREFIX.fullmatch(prefix) or any(
        p in ("", ".", "..") for p in prefix.split("/") if prefix
    ):
        raise UsageError(
            SOURCE,
            f"prefix {prefix!r}: use letters, digits, '.', '_', '-' and '/' between folder names",
        )
    query: dict[str, str] = {}
    for key, values in parse_qs(parts.query, keep_blank_values=True, strict_parsing=False).items():
        query[key] = values[-1]
    return parts.netloc, prefix, query


def endpoint_of(query: dict[str, str]) -> str | None:
    """The `endpoint=` of a URL (an emulator, an S3-compatible store, a private endpoint),
    without a trailing slash; anything but an http(s) URL is refused."""
    endpoint = query.get("endpoint") or None
    if endpoint is None:
        return None
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
        raise UsageError(SOURCE, f"endpoint {endpoint!r} is not an http(s) URL")
    return endpoint.rstrip("/")


def unknown_query(query: dict[str, str], known: tuple[str, ...], form: str) -> None:
    extra = sorted(set(query) - set(known))
    if extra:
        valid = ", ".join(known) or "none"
        raise UsageError(
            SOURCE, f"unknown URL parameter {extra[0]!r}; valid: {valid} (the form is {form})"
        )


class BackendError(CmlInfraError):
    """The store refused or failed at run time (exit 1): not bad input."""
