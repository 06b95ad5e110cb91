"""S3 settings and client, shared by media storage (stage artifacts, outputs) and the upload store.

Storage is chosen by DUBBING_STORAGE: `local` (the embedded default: a folder, DUBBING_DATA_DIR) or `s3`.
For `s3`:

    DUBBING_S3_BUCKET        bucket (required)
    DUBBING_S3_ENDPOINT_URL  a self-hosted S3 (SeaweedFS, MinIO, Ceph RGW, Garage); empty for AWS
    DUBBING_S3_REGION        region (default us-east-1)
    DUBBING_S3_PREFIX        key prefix inside the bucket, e.g. `dubbing/` (default none)
    DUBBING_S3_PATH_STYLE    true for path-style addressing (most self-hosted servers need it)
    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or any other way boto3 finds credentials)

Every object of the platform lives under one prefix:

    uploads/<upload_id>/data           a completed upload (a multipart upload while it is receiving)
    jobs/<job_id>/work/<name>          stage artifacts
    jobs/<job_id>/outputs/<name>       finished files
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass

BACKENDS = ("local", "s3")
MIN_PART = 5 * 1024 * 1024  # S3's least part size (all parts but the last)
MAX_PARTS = 10_000  # S3's most parts in one multipart upload


class StorageConfigError(RuntimeError):
    """Storage settings that cannot work; the message names the variable to fix."""


def backend() -> str:
    name = os.environ.get("DUBBING_STORAGE", "local").strip().lower() or "local"
    if name not in BACKENDS:
        raise StorageConfigError(f"DUBBING_STORAGE={name!r} is not a storage backend; use one of {', '.join(BACKENDS)}")
    return name


@dataclass(frozen=True)
class S3Settings:
    bucket: str
    endpoint_url: str | None = None
    region: str = "us-east-1"
    prefix: str = ""
    path_style: bool = False

    @classmethod
    def from_env(cls) -> "S3Settings":
        bucket = os.environ.get("DUBBING_S3_BUCKET", "").strip()
        if not bucket:
            raise StorageConfigError("DUBBING_STORAGE=s3 needs DUBBING_S3_BUCKET (and DUBBING_S3_ENDPOINT_URL for a "
                                     "self-hosted S3 server)")
        prefix = os.environ.get("DUBBING_S3_PREFIX", "").strip().strip("/")
        return cls(bucket=bucket, endpoint_url=os.environ.get("DUBBING_S3_ENDPOINT_URL", "").strip() or None,
                   region=os.environ.get("DUBBING_S3_REGION", "").strip() or "us-east-1",
                   prefix=f"{prefix}/" if prefix else "",
                   path_style=os.environ.get("DUBBING_S3_PATH_STYLE", "").strip().lower() in ("1", "true", "yes", "on"))

    def key(self, *parts: str) -> str:
        """The object key for a path under the platform's prefix: key("jobs", job_id, "work", name)."""
        segments = [seg for part in parts for seg in part.strip("/").split("/")]
        if any(seg in ("", ".", "..") for seg in segments):
            raise ValueError(f"invalid object key parts {parts!r}")
        return self.prefix + "/".join(segments)

    def url(self, key: str) -> str:
        """s3://bucket/key, the form a job record keeps for an input that lives in S3."""
        return f"s3://{self.bucket}/{key}"

    def split_url(self, url: str) -> str:
        """The key of an s3:// URL in this bucket (ValueError for any other bucket)."""
        if not url.startswith(f"s3://{self.bucket}/"):
            raise ValueError(f"{url!r} is not in bucket {self.bucket}")
        return url[len(f"s3://{self.bucket}/"):]


_clients: dict[S3Settings, object] = {}
_clients_lock = threading.Lock()


def settings() -> S3Settings:
    return S3Settings.from_env()


def client(cfg: S3Settings | None = None):
    """A boto3 S3 client for these settings, one per process (boto3 clients are thread-safe).
    Short timeouts and few retries: a request to a dead S3 server fails in seconds (the API answers 503
    and the client retries), never hangs an upload."""
    cfg = cfg or settings()
    with _clients_lock:
        found = _clients.get(cfg)
        if found is None:
            found = _make_client(cfg)
            _clients[cfg] = found
        return found


def _make_client(cfg: S3Settings):
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3", endpoint_url=cfg.endpoint_url, region_name=cfg.region,
        config=Config(s3={"addressing_style": "path" if cfg.path_style else "auto"},
                      connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"},
                      max_pool_connections=20))


@functools.cache
def transient_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "S3 is unreachable or overloaded right now" (answer 503 + Retry-After)."""
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError, HTTPClientError, ReadTimeoutError

    # HTTPClientError: a pooled connection the server closed (ConnectionClosedError, e.g. after it was
    # killed), a read timeout, a response cut off mid-stream (ResponseStreamingError)
    return (EndpointConnectionError, BotoConnectionError, ConnectTimeoutError, ReadTimeoutError, HTTPClientError,
            ConnectionError)


def error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ClientError (NoSuchKey, NoSuchUpload, SlowDown...); "" for others."""
    response = getattr(exc, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def http_status(exc: BaseException) -> int:
    """The HTTP status S3 answered with (0 when it did not answer)."""
    response = getattr(exc, "response", None)
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0) if isinstance(response, dict) else 0


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, transient_errors()):
        return True
    return http_status(exc) in (500, 502, 503, 504) or error_code(exc) in ("SlowDown", "ServiceUnavailable",
                                                                          "RequestTimeout")
