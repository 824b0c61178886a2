"""AWS's hooks (registered in hooks.py): the spot interruption notice. An AWS VM ends itself
with a shutdown (it is set to terminate on shutdown), so it has no self-destroy hook."""

from __future__ import annotations

from .hooks_http import HTTPStatusError, _metadata


def aws_spot_notice(endpoints: dict[str, str]) -> str | None:
    base = endpoints["aws_metadata"]
    # IMDSv2: a session token first (an instance that requires it answers 401 without one).
    token = _metadata(
        "PUT", f"{base}/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"}
    ).decode()
    try:
        body = _metadata(
            "GET",
            f"{base}/latest/meta-data/spot/instance-action",
            {"X-aws-ec2-metadata-token": token},
        )
    except HTTPStatusError as exc:
        if exc.code == 404:  # no interruption scheduled
            return None
        raise
    return f"aws spot instance-action {body.decode().strip()}"
