"""S3 and S3-compatible stores (MinIO, Ceph, Cloudflare R2): `s3://BUCKET/PREFIX`, with
`?region=R` and, for a store that is not AWS, `&endpoint=URL`.

An endpoint implies path-style addressing and skips what only AWS has (the account lookup, the
credential check through STS, the instance metadata service), for Terraform's backend and boto3
alike. Terraform locks with a lock file beside the state (`use_lockfile`), which needs no
DynamoDB table.
"""

from __future__ import annotations

import bisect
import contextlib
import os
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

from cml_infra.backends import register
from cml_infra.backends.base import (
    MAX_URL_SECONDS,
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

FORM = "s3://BUCKET/PREFIX[?region=R&endpoint=URL]"
# Codes S3 answers for a bucket or key this caller may not use: bad input, not a failure.
_REFUSED = frozenset({"AccessDenied", "403", "AllAccessDisabled", "InvalidAccessKeyId",
                      "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"})  # fmt: skip
_MISSING = frozenset({"NoSuchBucket", "404"})
_PRECONDITION = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})
# How long temporary credentials whose expiry botocore does not know (a session token from the
# environment with no AWS_CREDENTIAL_EXPIRATION) are taken to last: STS's default session (and
# aws-actions/configure-aws-credentials') is one hour. Counted from now it may overstate a
# session begun earlier; a URL it signed then fails sooner than said, never later.
UNKNOWN_EXPIRY_SECONDS = 3600
# Beyond this an expiry is "none": refresh_needed() is False for any horizon when there is none.
_FOREVER = 100 * 365 * 24 * 3600


@register("s3")
class S3Backend(Backend):
    FORM: ClassVar[str] = FORM

    def __init__(
        self, url: str, bucket: str, prefix: str, region: str | None, endpoint: str | None
    ) -> None:
        super().__init__(url, prefix)
        self.bucket = bucket
        self._region = region
        self.endpoint = endpoint
        self._client: Any = None
        self._session: Any = None

    @classmethod
    def parse(cls, url: str) -> S3Backend:
        bucket, prefix, query = split(url, FORM)
        unknown_query(query, ("region", "endpoint"), FORM)
        return cls(url, bucket, prefix, query.get("region") or None, endpoint_of(query))

    @property
    def region(self) -> str:
        """The URL's region, else the AWS chain's (AWS_REGION, the profile's)."""
        if self._region:
            return self._region
        import boto3

        found = (
            os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or boto3.session.Session().region_name
        )
        if not found:
            raise UsageError(
                SOURCE, f"no region for {self.url}: add ?region=R to the URL or set AWS_REGION"
            )
        self._region = found
        return found

    @property
    def terraform_type(self) -> str:
        return "s3"

    def session(self) -> Any:
        """The boto3 session of the client: its credentials are the ones that sign."""
        if self._session is None:
            import boto3

            self._session = boto3.session.Session()
        return self._session

    def client(self) -> Any:
        if self._client is None:
            from botocore.config import Config

            options: dict[str, Any] = {}
            if self.endpoint:
                options["endpoint_url"] = self.endpoint
            # Path style for any endpoint: an S3-compatible store rarely serves virtual hosts.
            # On AWS, virtual (path style still for names with dots): "auto" presigns on the
            # global host, which redirects a PUT to a bucket outside us-east-1.
            addressing = "path" if self.endpoint else "virtual"
            config = Config(
                # Presigned URLs too: botocore presigns with SigV2 unless told.
                signature_version="s3v4",
                retries={"mode": "standard", "max_attempts": 5},
                s3={"addressing_style": addressing},
                max_pool_connections=32,
            )
            self._client = self.session().client(
                "s3", region_name=self.region, config=config, **options
            )
        return self._client

    def check(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client().list_objects_v2(Bucket=self.bucket, Prefix=self.key(""), MaxKeys=1)
        except ClientError as exc:
            code = _code(exc)
            if code in _MISSING:
                raise UsageError(
                    SOURCE, f"{self.url}: bucket {self.bucket!r} does not exist"
                ) from None
            if code in _REFUSED:
                raise UsageError(
                    SOURCE, f"{self.url}: no permission to list the bucket ({code})"
                ) from None
            raise BackendError(f"{self.url}: {_reason(exc)}") from None
        except BotoCoreError as exc:
            raise UsageError(SOURCE, f"{self.url}: cannot reach the store ({exc})") from None

    def list(self, relative: str) -> list[str]:
        prefix = self.key(relative)
        cut = len(self.key(""))
        pages = (
            self.client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=self.bucket, Prefix=prefix)
        )
        found: list[str] = []
        with self._errors("list", relative):
            for page in pages:
                found += [entry["Key"][cut:] for entry in page.get("Contents", ())]
        return found

    def get(self, relative: str) -> Blob | None:
        from botocore.exceptions import ClientError

        try:
            with self._errors("read", relative, passing={"NoSuchKey", "404"}):
                answer = self.client().get_object(Bucket=self.bucket, Key=self.key(relative))
        except ClientError:
            return None
        return Blob(answer["Body"].read(), answer["ETag"])

    def put(self, relative: str, data: bytes, *, if_absent: bool = False) -> str | None:
        from botocore.exceptions import ClientError

        extra = {"IfNoneMatch": "*"} if if_absent else {}
        try:
            with self._errors("write", relative, passing=_PRECONDITION if if_absent else ()):
                answer = self.client().put_object(
                    Bucket=self.bucket, Key=self.key(relative), Body=data, **extra
                )
        except ClientError:
            return None
        return str(answer["ETag"])

    def replace(self, relative: str, data: bytes, version: str) -> str | None:
        from botocore.exceptions import ClientError

        try:
            with self._errors("write", relative, passing=_PRECONDITION | {"NoSuchKey", "404"}):
                answer = self.client().put_object(
                    Bucket=self.bucket, Key=self.key(relative), Body=data, IfMatch=version
                )
        except ClientError:
            return None
        return str(answer["ETag"])

    def delete(self, relative: str, version: str | None = None) -> bool:
        from botocore.exceptions import ClientError

        extra = {"IfMatch": version} if version else {}
        try:
            with self._errors("delete", relative, passing=_PRECONDITION | {"NoSuchKey", "404"}):
                self.client().delete_object(Bucket=self.bucket, Key=self.key(relative), **extra)
        except ClientError:
            return False
        return True

    def sign(self, relative: str, method: str, seconds: int) -> SignedUrl:
        """A SigV4 presigned URL, on the client's endpoint and addressing style. It stops
        working when the credentials that signed it expire, so it is signed for no longer."""
        method = url_method(method)
        with self._errors(f"sign a {method} URL for", relative):
            lifetime = min(url_seconds(seconds), self._credential_seconds(relative))
            now = datetime.now(timezone.utc).replace(microsecond=0)
            url = self.client().generate_presigned_url(
                "get_object" if method == "GET" else "put_object",
                Params={"Bucket": self.bucket, "Key": self.key(relative)},
                ExpiresIn=lifetime,
                HttpMethod=method,
            )
        return SignedUrl(str(url), method, now + timedelta(seconds=lifetime), {})

    def _credential_seconds(self, relative: str) -> int:
        """How long the client's credentials stay valid, as far as it matters to a URL."""
        from botocore.credentials import RefreshableCredentials

        credentials = self.session().get_credentials()
        if credentials is None:
            raise BackendError(f"{self.url} ({relative}): no AWS credentials to sign a URL with")
        # Loads deferred credentials and renews ones about to expire, before they are read.
        frozen = credentials.get_frozen_credentials()
        if not frozen.token:
            return MAX_URL_SECONDS  # long-term keys: a URL lives as long as SigV4 allows
        if not isinstance(credentials, RefreshableCredentials) or not credentials.refresh_needed(
            _FOREVER
        ):
            return UNKNOWN_EXPIRY_SECONDS
        # botocore keeps the expiry private; refresh_needed(n), public, says whether fewer than
        # n seconds are left, so the first n for which it is true is one more than what is left.
        left = bisect.bisect_left(
            range(MAX_URL_SECONDS + 1), True, key=lambda n: credentials.refresh_needed(n)
        )
        if left <= 1:
            raise BackendError(f"{self.url} ({relative}): the AWS credentials have expired")
        return left - 1

    def terraform_settings(self, state_key: str) -> dict[str, object]:
        settings: dict[str, object] = {
            "bucket": self.bucket,
            "key": self.key(f"{state_key.strip('/')}/terraform.tfstate"),
            "region": self.region,
            "use_lockfile": True,
            "encrypt": True,
        }
        if self.endpoint:
            settings.update(
                endpoints={"s3": self.endpoint},
                use_path_style=True,
                skip_credentials_validation=True,
                skip_requesting_account_id=True,
                skip_metadata_api_check=True,
                skip_region_validation=True,
                skip_s3_checksum=True,
            )
        return settings

    @contextlib.contextmanager
    def _errors(self, what: str, relative: str, passing: Iterable[str] = ()) -> Iterator[None]:
        """botocore's failures as one line naming the backend; codes in `passing` go through as
        the ClientError the caller turns into an answer (absent, changed)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            if _code(exc) in set(passing):
                raise
            raise BackendError(
                f"{self.url} ({relative}): could not {what}: {_reason(exc)}"
            ) from None
        except BotoCoreError as exc:
            raise BackendError(
                f"{self.url} ({relative}): could not {what}: {_reason(exc)}"
            ) from None


def _code(exc: Any) -> str:
    error = exc.response.get("Error", {}) if hasattr(exc, "response") else {}
    code = str(error.get("Code", ""))
    if not code:
        code = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    return code


def _reason(exc: Any) -> str:
    return " ".join(str(exc).split())
