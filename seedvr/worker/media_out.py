"""Returning the output file: inline base64 when the whole answer fits, else a presigned bucket URL.

RunPod drops results over ~20 MB silently (the client sees COMPLETED with no output), so the size of the JSON
answer is measured here, before returning, and never left to the SDK. INLINE_MAX_BYTES counts the answer with
the file once; the `videos` copy comes on top, and the whole must stay under RESULT_MAX_BYTES.
"""

from __future__ import annotations

import base64
import json
import math
import time
from pathlib import Path
from typing import Any

from .errors import ErrorCode, WorkerError
from .settings import BucketConfig

CONTENT_TYPES = {
    "mp4": "video/mp4",
    "webm": "video/webm",
    "mov": "video/quicktime",
    "png": "image/png",
    "jpg": "image/jpeg",
    "webp": "image/webp",
}
BUCKET_CHECK_TTL = 600.0  # seconds a bucket that answered is trusted without asking again
_bucket_checked: dict[BucketConfig, float] = {}
RESULT_MAX_BYTES = 19 * 1024 * 1024  # below RunPod's ~20 MB limit on a job's result, mirror included
NO_BUCKET = (
    "no bucket is configured: set BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID, BUCKET_SECRET_ACCESS_KEY and "
    "BUCKET_NAME on the endpoint, or send s3Config with the request"
)


def bucket_problem(bucket: BucketConfig | None) -> str | None:
    """Why uploads cannot work with this configuration, or None; checked before any model work."""
    if bucket is None:
        return NO_BUCKET
    missing = [
        name
        for name, value in (
            ("endpoint URL", bucket.endpoint_url),
            ("access key id", bucket.access_key_id),
            ("secret access key", bucket.secret_access_key),
            ("bucket name (BUCKET_NAME or s3Config.bucketName)", bucket.bucket_name),
        )
        if not value
    ]
    return f"the bucket configuration lacks: {', '.join(missing)}" if missing else None


def _inline_answer(answer: dict[str, Any], encoded: str) -> dict[str, Any]:
    # `videos` repeats `media` for clients written against the first version of the API.
    return {"success": answer["success"], "media": [encoded], "videos": [encoded], **answer}


def deliver(
    answer: dict[str, Any],
    path: Path,
    mode: str,
    inline_max_bytes: int,
    bucket: BucketConfig | None,
    key: str,
    url_expiry: int,
) -> dict[str, Any]:
    """Add the output to `answer` as base64 (`media`, `videos`) or as a presigned URL (`media_urls`)."""
    size = path.stat().st_size
    if mode != "upload":
        # base64 needs no JSON escaping, so the answer's size is known before encoding anything.
        encoded = 4 * math.ceil(size / 3) + len('"videos": [""], ')
        once = len(json.dumps(answer)) + encoded
        if once <= inline_max_bytes and once + encoded <= RESULT_MAX_BYTES:
            return _inline_answer(answer, base64.b64encode(path.read_bytes()).decode("ascii"))
        if mode == "inline":
            limit = (
                f"INLINE_MAX_BYTES={inline_max_bytes:,}"
                if once > inline_max_bytes
                else f"RunPod's result limit ({RESULT_MAX_BYTES:,} bytes with the videos copy)"
            )
            raise WorkerError(
                ErrorCode.TOO_LARGE,
                f"output is {size:,} bytes ({once:,} as a JSON answer), over {limit}: "
                "use output_mode upload (or auto) with a bucket",
            )
    problem = bucket_problem(bucket)
    if problem:
        raise WorkerError(
            ErrorCode.TOO_LARGE,
            f"output is {size:,} bytes, too large to return inline (INLINE_MAX_BYTES={inline_max_bytes:,}) "
            f"and {problem}",
        )
    url = upload(path, bucket, key, url_expiry)
    return {"success": answer["success"], "media_urls": [url], **answer}


def _client(bucket: BucketConfig, **config: Any):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=bucket.endpoint_url,
        aws_access_key_id=bucket.access_key_id,
        aws_secret_access_key=bucket.secret_access_key,
        region_name=bucket.region or _region_from_endpoint(bucket.endpoint_url),
        config=Config(signature_version="s3v4", **config),
    )


def check_bucket(bucket: BucketConfig) -> None:
    """One cheap request before any work, so that a wrong endpoint, key or bucket name fails in seconds rather
    than after the pipeline. A key that may write but not list passes (AccessDenied): only the upload can tell."""
    from botocore.exceptions import BotoCoreError, ClientError

    if time.monotonic() < _bucket_checked.get(bucket, -math.inf) + BUCKET_CHECK_TTL:
        return
    client = _client(bucket, connect_timeout=5, read_timeout=10, retries={"max_attempts": 1})
    try:
        client.list_objects_v2(Bucket=bucket.bucket_name, MaxKeys=1)
        _bucket_checked[bucket] = time.monotonic()
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("AccessDenied", "403"):
            return
        raise _bucket_failed(bucket, err, "checked before processing") from None
    except BotoCoreError as err:
        raise _bucket_failed(bucket, err, "checked before processing") from None


def _bucket_failed(bucket: BucketConfig, err: Exception, when: str) -> WorkerError:
    return WorkerError(
        ErrorCode.UPLOAD_FAILED, f"Upload to bucket {bucket.bucket_name!r} at {bucket.endpoint_url} failed ({when}): {err}"
    )


def upload(path: Path, bucket: BucketConfig, key: str, url_expiry: int) -> str:
    """Put `path` in the bucket with its content type and return a presigned GET URL."""
    from botocore.exceptions import BotoCoreError, ClientError
    from boto3.exceptions import S3UploadFailedError

    content_type = CONTENT_TYPES.get(path.suffix.lstrip(".").lower(), "application/octet-stream")
    client = _client(bucket, retries={"max_attempts": 3, "mode": "standard"})
    try:
        client.upload_file(str(path), bucket.bucket_name, key, ExtraArgs={"ContentType": content_type})
        return client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket.bucket_name, "Key": key}, ExpiresIn=url_expiry
        )
    except (BotoCoreError, ClientError, S3UploadFailedError) as err:
        raise _bucket_failed(bucket, err, "after processing") from None


def _region_from_endpoint(endpoint_url: str) -> str:
    """`https://s3.eu-west-1.amazonaws.com` style endpoints name their region; others accept any."""
    host = endpoint_url.split("://", 1)[-1].split("/", 1)[0]
    labels = host.split(".")
    if "s3" in labels:
        following = labels[labels.index("s3") + 1 :]
        if following and following[0] not in ("amazonaws", ""):
            return following[0]
    return "us-east-1"
