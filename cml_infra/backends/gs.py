"""Google Cloud Storage: `gs://BUCKET/PREFIX`, with `?endpoint=URL` for an emulator or a private
endpoint.

An object's version is its generation, which every conditional request names: 0 for "only if
absent", the generation read for "only if unchanged". Terraform's gcs backend keeps the state
as `<prefix>/default.tfstate` and locks with `default.tflock` beside it, created the same way.

With an endpoint, the client here is anonymous, as the gcp cloud is with
CML_INFRA_GCP_API_ENDPOINT: an emulator checks no credential, and a private endpoint that does
is reached through a proxy that adds one. Terraform's backend still wants a token (the
`GOOGLE_OAUTH_ACCESS_TOKEN` of the environment); none is ever written in the block.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

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

FORM = "gs://BUCKET/PREFIX[?endpoint=URL]"
# Google's rule for bucket names (the dotted, domain-named kind may be longer, up to 222).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
# The JSON API's path under an endpoint: the Python client adds it, Terraform's wants it given.
_API_PATH = "/storage/v1"
# How long one call retries what Google calls transient (429, 5xx, a dropped connection):
# a command that waits longer on a store that is down helps nobody. The first call, which
# checks the URL, gives up sooner: a mistyped endpoint should not keep anyone waiting.
RETRY_SECONDS = 60.0
CHECK_RETRY_SECONDS = 10.0
_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)


@register("gs", aliases=("gcs",))
class GcsBackend(Backend):
    FORM: ClassVar[str] = FORM
    STATE_OBJECTS: ClassVar[tuple[str, ...]] = ("default.tfstate",)

    def __init__(self, url: str, bucket: str, prefix: str, endpoint: str | None) -> None:
        super().__init__(url, prefix)
        self.bucket = bucket
        self.endpoint = endpoint
        self._client: Any = None

    @classmethod
    def parse(cls, url: str) -> GcsBackend:
        bucket, prefix, query = split(url, FORM)
        unknown_query(query, ("endpoint",), FORM)
        if not _BUCKET.fullmatch(bucket) or ".." in bucket:
            raise UsageError(
                SOURCE,
                f"bucket {bucket!r}: use 3 to 222 lowercase letters, digits, '-', '_' and '.', "
                "starting and ending with a letter or digit",
            )
        endpoint = endpoint_of(query)
        if endpoint is not None:
            # Either form names the same service: `http://host:port` or `…/storage/v1/`.
            endpoint = endpoint.removesuffix(_API_PATH).rstrip("/")
        return cls(url, bucket, prefix, endpoint)

    @property
    def terraform_type(self) -> str:
        return "gcs"

    def client(self) -> Any:
        if self._client is None:
            from google.cloud import storage  # type: ignore[attr-defined]

            if self.endpoint:
                from google.auth.credentials import AnonymousCredentials

                self._client = storage.Client(
                    project=None,
                    credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                    client_options={"api_endpoint": self.endpoint},
                )
            else:
                # No project: nothing here lists buckets or bills one.
                self._client = storage.Client(project=None)
            # Recent releases read the bucket's metadata from a background thread on the first
            # call, for trace attributes nobody here records: a request (and a permission,
            # storage.buckets.get) more, which may still be in flight when a command exits.
            if hasattr(self._client, "_bucket_metadata_cache"):
                self._client._bucket_metadata_cache = None
        return self._client

    def _retry(self, seconds: float | None = None) -> Any:
        from google.cloud.storage.retry import DEFAULT_RETRY

        return DEFAULT_RETRY.with_timeout(RETRY_SECONDS if seconds is None else seconds)

    def _blob(self, relative: str) -> Any:
        return self.client().bucket(self.bucket).blob(self.key(relative))

    def check(self) -> None:
        from google.api_core.exceptions import (
            Forbidden,
            GoogleAPICallError,
            NotFound,
            RetryError,
            Unauthorized,
        )
        from google.auth.exceptions import DefaultCredentialsError, GoogleAuthError
        from requests.exceptions import RequestException

        try:
            pages = self.client().list_blobs(
                self.bucket,
                prefix=self.key(""),
                max_results=1,
                retry=self._retry(CHECK_RETRY_SECONDS),
            )
            list(pages)
        except NotFound:
            raise UsageError(SOURCE, f"{self.url}: bucket {self.bucket!r} does not exist") from None
        except (Forbidden, Unauthorized) as exc:
            raise UsageError(
                SOURCE, f"{self.url}: no permission to list the bucket ({_reason(exc)})"
            ) from None
        except DefaultCredentialsError:
            raise UsageError(
                SOURCE,
                f"{self.url}: no Google credentials (run `gcloud auth application-default "
                "login`, or set GOOGLE_APPLICATION_CREDENTIALS)",
            ) from None
        except (GoogleAuthError, RequestException, RetryError) as exc:
            raise UsageError(
                SOURCE, f"{self.url}: cannot reach the store ({_reason(exc)})"
            ) from None
        except GoogleAPICallError as exc:
            raise BackendError(f"{self.url}: {_reason(exc)}") from None

    def list(self, relative: str) -> list[str]:
        cut = len(self.key(""))
        with self._errors("list", relative):
            blobs = self.client().list_blobs(
                self.bucket, prefix=self.key(relative), retry=self._retry()
            )
            return [blob.name[cut:] for blob in blobs]

    def get(self, relative: str) -> Blob | None:
        from google.api_core.exceptions import NotFound

        blob = self._blob(relative)
        try:
            with self._errors("read", relative, passing=(NotFound,)):
                data = blob.download_as_bytes(retry=self._retry())
        except NotFound:
            return None
        if blob.generation is None:  # what a conditional write would name: never guessed
            raise BackendError(f"{self.url} ({relative}): the store sent no generation")
        return Blob(data, str(blob.generation))

    def put(self, relative: str, data: bytes, *, if_absent: bool = False) -> str | None:
        from google.api_core.exceptions import PreconditionFailed

        blob = self._blob(relative)
        condition = {"if_generation_match": 0} if if_absent else {}
        try:
            with self._errors("write", relative, passing=(PreconditionFailed,)):
                blob.upload_from_string(data, retry=self._retry(), **condition)
        except PreconditionFailed:
            return None
        return str(blob.generation)

    def replace(self, relative: str, data: bytes, version: str) -> str | None:
        from google.api_core.exceptions import NotFound, PreconditionFailed

        blob = self._blob(relative)
        try:
            with self._errors("write", relative, passing=(PreconditionFailed, NotFound)):
                blob.upload_from_string(
                    data, if_generation_match=_generation(version), retry=self._retry()
                )
        except (PreconditionFailed, NotFound):
            return None
        return str(blob.generation)

    def delete(self, relative: str, version: str | None = None) -> bool:
        from google.api_core.exceptions import NotFound, PreconditionFailed

        condition = {"if_generation_match": _generation(version)} if version else {}
        try:
            with self._errors("delete", relative, passing=(PreconditionFailed, NotFound)):
                self._blob(relative).delete(retry=self._retry(), **condition)
        except (PreconditionFailed, NotFound):
            return False
        return True

    def sign(self, relative: str, method: str, seconds: int) -> SignedUrl:
        """A V4 signed URL (on the endpoint, when there is one), signed by a service account:
        with its key when the credentials hold one, else through IAM's signBlob, so the URL
        outlives the session that asked for it (an OIDC token lasts an hour)."""
        method = url_method(method)
        lifetime = url_seconds(seconds)
        now = datetime.now(timezone.utc).replace(microsecond=0)
        with self._errors(f"sign a {method} URL for", relative):
            signing = self._signing(relative)
            url = self._blob(relative).generate_signed_url(
                version="v4",
                method=method,
                expiration=timedelta(seconds=lifetime),
                api_access_endpoint=self.endpoint,
                **signing,
            )
        return SignedUrl(str(url), method, now + timedelta(seconds=lifetime), {})

    def _signing(self, relative: str) -> dict[str, Any]:
        """generate_signed_url's arguments that say who signs: Application Default Credentials
        (GOOGLE_APPLICATION_CREDENTIALS first, also with an endpoint, where the client itself
        is anonymous)."""
        import google.auth
        from google.auth.credentials import Signing
        from google.auth.exceptions import DefaultCredentialsError
        from google.auth.transport.requests import Request

        try:
            credentials, _ = google.auth.default(scopes=_SCOPES)
        except DefaultCredentialsError:
            raise BackendError(
                f"{self.url} ({relative}): no Google credentials to sign a URL with: only a "
                "service account can sign one (set GOOGLE_APPLICATION_CREDENTIALS to its key, "
                "or run where one is attached or impersonated)"
            ) from None
        if isinstance(credentials, Signing):  # a key, or an impersonated service account
            return {"credentials": credentials}
        # An attached or federated service account: the token (fresh) lets IAM sign as it,
        # which needs iam.serviceAccounts.signBlob on it (Service Account Token Creator). A
        # user's credentials have no such attribute; a VM's says "default" until refreshed.
        email = getattr(credentials, "service_account_email", None)
        if email:
            credentials.refresh(Request())  # type: ignore[no-untyped-call]
            email = getattr(credentials, "service_account_email", None)
        if not email or "@" not in email:
            raise BackendError(
                f"{self.url} ({relative}): these Google credentials (a user's, or federated with "
                "no service account) cannot sign a URL: only a service account can, through "
                "its key (GOOGLE_APPLICATION_CREDENTIALS) or IAM signBlob (an attached one, or "
                "one impersonated, as workload identity federation can)"
            )
        return {
            "credentials": credentials,
            "service_account_email": email,
            "access_token": credentials.token,
        }

    def terraform_settings(self, state_key: str) -> dict[str, object]:
        settings: dict[str, object] = {
            "bucket": self.bucket,
            "prefix": self.key(state_key.strip("/")),
        }
        if self.endpoint:
            settings["storage_custom_endpoint"] = f"{self.endpoint}{_API_PATH}/"
        return settings

    @contextlib.contextmanager
    def _errors(
        self, what: str, relative: str, passing: tuple[type[Exception], ...] = ()
    ) -> Iterator[None]:
        """The client's failures as one line naming the backend; those in `passing` go through
        as the answer the caller makes of them (absent, changed)."""
        from google.api_core.exceptions import GoogleAPICallError, RetryError
        from google.auth.exceptions import GoogleAuthError
        from requests.exceptions import RequestException

        try:
            yield
        except passing:
            raise
        except (GoogleAPICallError, RetryError, GoogleAuthError, RequestException) as exc:
            raise BackendError(
                f"{self.url} ({relative}): could not {what}: {_reason(exc)}"
            ) from None


def _generation(version: str) -> int:
    try:
        return int(version)
    except ValueError:
        raise BackendError(f"{version!r} is not a GCS generation") from None


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split())
