"""Worker configuration read from the environment once per process, at start.

Every limit of the API contract has an environment variable so an endpoint can be tuned without a rebuild.
A bad value raises SettingsError; the worker then stays up and answers every job with it (seedvr.worker),
since a worker that exits at start is restarted by RunPod in a loop that bills the operator.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

MB = 1024 * 1024


class SettingsError(ValueError):
    """An environment variable the worker cannot use; the message names it and what it accepts."""


def env_number(name: str, default: int | float) -> int | float:
    """A positive number of the default's type. Float notation is accepted for whole numbers: RunPod's tools
    write number defaults as `8.388608e+06`."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    whole = isinstance(default, int)
    rule = "a positive whole number" if whole else "a positive number"
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"environment variable {name} must be {rule}, got {raw!r}") from None
    if not (math.isfinite(value) and value > 0) or (whole and not value.is_integer()):
        raise SettingsError(f"environment variable {name} must be {rule}, got {raw!r}")
    return int(value) if whole else value


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class Limits:
    """Inputs over a limit are refused before any model work."""

    max_input_bytes: int = 200 * MB
    max_frames: int = 2000
    max_output_pixels: int = 4096 * 4096
    download_timeout: float = 300.0
    inline_max_bytes: int = 8 * MB
    # Hostile input: a picture's pixels are read from its header before anything is decoded (a small file can
    # hold a huge picture), and no output side may exceed this (a 4x3000 input would give 34x26290).
    max_input_pixels: int = 8192 * 8192
    max_output_side: int = 8192

    @classmethod
    def from_env(cls) -> "Limits":
        return cls(
            max_input_bytes=env_number("MAX_INPUT_BYTES", cls.max_input_bytes),
            max_frames=env_number("MAX_FRAMES", cls.max_frames),
            max_output_pixels=env_number("MAX_OUTPUT_PIXELS", cls.max_output_pixels),
            download_timeout=env_number("DOWNLOAD_TIMEOUT", cls.download_timeout),
            inline_max_bytes=env_number("INLINE_MAX_BYTES", cls.inline_max_bytes),
            max_input_pixels=env_number("MAX_INPUT_PIXELS", cls.max_input_pixels),
            max_output_side=env_number("MAX_OUTPUT_SIDE", cls.max_output_side),
        )


@dataclass(frozen=True)
class BucketConfig:
    """An S3-compatible bucket: from the job's `s3Config` or from the BUCKET_* variables."""

    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    bucket_name: str | None
    region: str | None = None

    @classmethod
    def from_env(cls) -> "BucketConfig | None":
        endpoint = os.environ.get("BUCKET_ENDPOINT_URL", "").strip()
        if not endpoint:
            return None
        return cls(
            endpoint_url=endpoint,
            access_key_id=os.environ.get("BUCKET_ACCESS_KEY_ID", ""),
            secret_access_key=os.environ.get("BUCKET_SECRET_ACCESS_KEY", ""),
            bucket_name=os.environ.get("BUCKET_NAME") or None,
            region=os.environ.get("BUCKET_REGION") or None,
        )

    @classmethod
    def from_job(cls, s3_config: dict) -> "BucketConfig":
        """RunPod passes a request's `s3Config` ({accessId, accessSecret, bucketName, endpointUrl}) to the job."""
        return cls(
            endpoint_url=str(s3_config.get("endpointUrl") or ""),
            access_key_id=str(s3_config.get("accessId") or ""),
            secret_access_key=str(s3_config.get("accessSecret") or ""),
            bucket_name=s3_config.get("bucketName") or None,
            region=s3_config.get("region") or None,
        )


@dataclass(frozen=True)
class WorkerSettings:
    """What the worker layer reads from the environment; the model folders belong to seedvr.manager."""

    limits: Limits = field(default_factory=Limits)
    bucket: BucketConfig | None = None
    url_expiry_seconds: int = 7 * 24 * 3600
    progress_interval: float = 3.0
    allow_private_urls: bool = False
    cpu_sp_max: int = 1  # sequence-parallel ranks allowed without CUDA (gloo; tests)
    weights_wait: float = 1500.0  # how long a job waits for weights still being fetched at start

    @classmethod
    def from_env(cls) -> "WorkerSettings":
        return cls(
            limits=Limits.from_env(),
            bucket=BucketConfig.from_env(),
            url_expiry_seconds=env_number("BUCKET_URL_EXPIRY", cls.url_expiry_seconds),
            progress_interval=env_number("PROGRESS_INTERVAL", cls.progress_interval),
            allow_private_urls=_env_flag("RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS"),
            cpu_sp_max=env_number("SEEDVR_CPU_SP_MAX", cls.cpu_sp_max),
            weights_wait=env_number("SEEDVR_WEIGHTS_WAIT", cls.weights_wait),
        )
