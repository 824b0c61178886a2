"""Azure Blob Storage: `azurerm://ACCOUNT/CONTAINER/PREFIX`, with `?endpoint=URL` for Azurite
(`http://127.0.0.1:10000/devstoreaccount1`) or another blob endpoint.

An object's version is its ETag: a conditional write sends it with If-Match, and "only if
absent" is If-None-Match: * (`overwrite=False`). Terraform's azurerm backend keeps the state as
one blob, `<prefix>/<state key>/terraform.tfstate`, and locks it with a lease on that blob.

Credentials: Azure AD through DefaultAzureCredential (environment, workload identity, managed
identity, the Azure CLI), the same identity Terraform's block asks for with `use_azuread_auth`,
so an account whose shared keys are disabled works. With an endpoint, an account key from the
environment (AZURE_STORAGE_KEY) is used instead when set: Azurite knows no Azure AD, and a
token is never sent over plain http. The key is never read from the URL nor written anywhere.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar
from urllib.parse import urlsplit

from cml_infra.backends import register
from cml_infra.backends.base import (
    SOURCE,
    Backend,
    BackendError,
    Blob,
    SignedUrl,
    endpoint_of,
    split,
    unknown_query,
    url_method,
    url_seconds,
)
from cml_infra.errors import UsageError

FORM = "azurerm://ACCOUNT/CONTAINER/PREFIX[?endpoint=URL]"
KEY_VARIABLE = "AZURE_STORAGE_KEY"
_ACCOUNT = re.compile(r"[a-z0-9]{3,24}")
_CONTAINER = re.compile(r"[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]")
_FORBIDDEN = frozenset({401, 403})
# A few quick retries: Azure's default waits 15 s and more between attempts, which keeps a
# command that names an unreachable account hanging for a minute before it can say so.
RETRIES = 4
CONNECT_SECONDS = 10
# A user delegation key signs every URL that expires before it does, give or take this much:
# signing a few URLs in a row should not ask Azure for a key each time.
_KEY_SLACK = timedelta(minutes=5)


@register("azurerm")
class AzureBlobBackend(Backend):
    FORM: ClassVar[str] = FORM
    STATE_OBJECTS: ClassVar[tuple[str, ...]] = ("terraform.tfstate",)

    def __init__(
        self, url: str, account: str, container: str, prefix: str, endpoint: str | None
    ) -> None:
        super().__init__(url, prefix)
        self.account = account
        self.container = container
        self.endpoint = endpoint
        self._client: Any = None
        self._service: Any = None
        self._delegation: tuple[Any, datetime] | None = None

    @classmethod
    def parse(cls, url: str) -> AzureBlobBackend:
        account, path, query = split(url, FORM)
        unknown_query(query, ("endpoint",), FORM)
        if not _ACCOUNT.fullmatch(account):
            raise UsageError(
                SOURCE, f"storage account {account!r}: use 3 to 24 lowercase letters and digits"
            )
        container, _, prefix = path.partition("/")
        if not container:
            raise UsageError(SOURCE, f"{url!r} names no container; the form is {FORM}")
        if not _CONTAINER.fullmatch(container):
            raise UsageError(
                SOURCE,
                f"container {container!r}: use 3 to 63 lowercase letters, digits and single "
                "'-', starting and ending with a letter or digit",
            )
        return cls(url, account, container, prefix, endpoint_of(query))

    @property
    def terraform_type(self) -> str:
        return "azurerm"

    @property
    def account_url(self) -> str:
        return self.endpoint or f"https://{self.account}.blob.core.windows.net"

    def client(self) -> Any:
        """The container's client; the SDK loads here, on the first call that needs it."""
        if self._client is None:
            from azure.storage.blob import BlobServiceClient, ExponentialRetry

            self._service = service = BlobServiceClient(
                self.account_url,
                credential=self._credential(),
                retry_policy=ExponentialRetry(
                    initial_backoff=1, increment_base=2, retry_total=RETRIES
                ),
                connection_timeout=CONNECT_SECONDS,
            )
            self._client = service.get_container_client(self.container)
        return self._client

    def _account_key(self) -> str | None:
        return (os.environ.get(KEY_VARIABLE) or None) if self.endpoint else None

    def _credential(self) -> Any:
        key = self._account_key()
        if key:
            return {"account_name": self.account, "account_key": key}
        if urlsplit(self.account_url).scheme != "https":
            raise UsageError(
                SOURCE,
                f"{self.url}: an Azure AD token is never sent over http; for Azurite set "
                f"{KEY_VARIABLE} to its account key",
            )
        return _credential()

    def check(self) -> None:
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ResourceNotFoundError,
            ServiceRequestError,
        )

        try:
            pages = self.client().list_blobs(name_starts_with=self.key(""), results_per_page=1)
            list(next(pages.by_page(), []))
        except ResourceNotFoundError:
            raise UsageError(
                SOURCE,
                f"{self.url}: container {self.container!r} does not exist in {self.account!r}",
            ) from None
        except ClientAuthenticationError as exc:
            raise UsageError(
                SOURCE, f"{self.url}: Azure refused the credentials ({_reason(exc)})"
            ) from None
        except HttpResponseError as exc:
            if exc.status_code in _FORBIDDEN:
                raise UsageError(
                    SOURCE, f"{self.url}: no permission to list the container ({_code(exc)})"
                ) from None
            raise BackendError(f"{self.url}: {_reason(exc)}") from None
        except ServiceRequestError as exc:
            raise UsageError(
                SOURCE, f"{self.url}: cannot reach the store ({_reason(exc)})"
            ) from None

    def list(self, relative: str) -> list[str]:
        cut = len(self.key(""))
        with self._errors("list", relative):
            names = self.client().list_blobs(name_starts_with=self.key(relative))
            return [str(entry.name)[cut:] for entry in names]

    def get(self, relative: str) -> Blob | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            with self._errors("read", relative, passing=(ResourceNotFoundError,)):
                download = self.client().download_blob(self.key(relative))
                data = download.readall()
        except ResourceNotFoundError:
            return None
        return Blob(bytes(data), str(download.properties.etag))

    def put(self, relative: str, data: bytes, *, if_absent: bool = False) -> str | None:
        from azure.core.exceptions import ResourceExistsError

        blob = self.client().get_blob_client(self.key(relative))
        try:
            with self._errors("write", relative, passing=(ResourceExistsError,)):
                answer = blob.upload_blob(data, overwrite=not if_absent)
        except ResourceExistsError:
            return None
        return str(answer["etag"])

    def replace(self, relative: str, data: bytes, version: str) -> str | None:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        blob = self.client().get_blob_client(self.key(relative))
        changed = (ResourceModifiedError, ResourceNotFoundError)
        try:
            with self._errors("write", relative, passing=changed):
                answer = blob.upload_blob(
                    data,
                    overwrite=True,
                    etag=version,
                    match_condition=MatchConditions.IfNotModified,
                )
        except changed:
            return None
        return str(answer["etag"])

    def delete(self, relative: str, version: str | None = None) -> bool:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        condition: dict[str, Any] = (
            {"etag": version, "match_condition": MatchConditions.IfNotModified} if version else {}
        )
        changed = (ResourceModifiedError, ResourceNotFoundError)
        try:
            with self._errors("delete", relative, passing=changed):
                self.client().delete_blob(self.key(relative), **condition)
        except changed:
            return False
        return True

    def sign(self, relative: str, method: str, seconds: int) -> SignedUrl:
        """A blob SAS URL (read, or create and write), signed with the account key where the
        backend uses one (Azurite), else with a user delegation key: once issued it signs for
        up to 7 days whatever becomes of the Azure AD session that asked for it (which needs
        generateUserDelegationKey on the account: Storage Blob Data Contributor has it). A PUT
        must send `x-ms-blob-type: BlockBlob`, which `headers` says."""
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        method = url_method(method)
        now = datetime.now(timezone.utc).replace(microsecond=0)
        expiry = now + timedelta(seconds=url_seconds(seconds))
        name = self.key(relative)
        if method == "GET":
            permission = BlobSasPermissions(read=True)
            headers: dict[str, str] = {}
        else:
            permission = BlobSasPermissions(create=True, write=True)
            headers = {"x-ms-blob-type": "BlockBlob"}
        with self._errors(f"sign a {method} URL for", relative):
            blob_url = self.client().get_blob_client(name).url
            account_key = self._account_key()
            signing: dict[str, Any]
            if account_key:
                signing = {"account_key": account_key}
            else:
                delegation, key_expiry = self._delegation_key(now, expiry)
                expiry = min(expiry, key_expiry)
                signing = {"user_delegation_key": delegation}
            sas = generate_blob_sas(
                account_name=self.account,
                container_name=self.container,
                blob_name=name,
                permission=permission,
                expiry=expiry,
                # A capability is never good over plain http where the store speaks https.
                protocol="https" if blob_url.startswith("https://") else None,
                **signing,
            )
        return SignedUrl(f"{blob_url}?{sas}", method, expiry, headers)

    def _delegation_key(self, now: datetime, expiry: datetime) -> tuple[Any, datetime]:
        """A user delegation key valid from now until about `expiry`, and when it expires:
        the last one while it lasts long enough."""
        if self._delegation is not None and self._delegation[1] >= expiry - _KEY_SLACK:
            return self._delegation
        self.client()
        key = self._service.get_user_delegation_key(key_start_time=now, key_expiry_time=expiry)
        self._delegation = (key, expiry)
        return self._delegation

    def terraform_settings(self, state_key: str) -> dict[str, object]:
        if self.endpoint:
            # Terraform's azurerm backend finds the blob endpoint from the account name and the
            # Azure environment alone: a state written through it would land elsewhere.
            raise UsageError(
                SOURCE,
                f"{self.url}: Terraform's azurerm backend has no setting for a custom blob "
                "endpoint, so runners cannot keep their state there; drop ?endpoint=",
            )
        return {
            "storage_account_name": self.account,
            "container_name": self.container,
            "key": self.key(f"{state_key.strip('/')}/{self.STATE_OBJECTS[0]}"),
            "use_azuread_auth": True,
        }

    @contextlib.contextmanager
    def _errors(
        self, what: str, relative: str, passing: tuple[type[Exception], ...] = ()
    ) -> Iterator[None]:
        """The SDK's failures as one line naming the backend; those in `passing` go through as
        the answer the caller makes of them (absent, changed)."""
        from azure.core.exceptions import AzureError

        try:
            yield
        except passing:
            raise
        except AzureError as exc:
            raise BackendError(
                f"{self.url} ({relative}): could not {what}: {_reason(exc)}"
            ) from None


def _credential() -> Any:
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


def _code(exc: Any) -> str:
    code = getattr(exc, "error_code", None) or exc.status_code
    return str(getattr(code, "value", code))


def _reason(exc: BaseException) -> str:
    # The storage SDK appends the whole response (headers, XML) after the first line.
    lines = str(exc).strip().splitlines()
    return " ".join(lines[0].split()) if lines else type(exc).__name__
