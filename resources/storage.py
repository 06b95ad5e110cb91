"""Media storage: where a job's stage artifacts and finished outputs live. One interface, two backends,
chosen by DUBBING_STORAGE (`local`, the embedded default, or `s3`; see resources/s3.py for the S3 settings).

local (a folder, DUBBING_DATA_DIR):

    <root>/jobs/<job_id>/work/      stage artifacts (audio, transcript.json, segment WAVs, ...)
    <root>/jobs/<job_id>/outputs/   finished files only, published atomically by the export stage

s3 (one bucket, under DUBBING_S3_PREFIX):

    jobs/<job_id>/work/<name>       stage artifacts that a later stage reads
    jobs/<job_id>/outputs/<name>    finished files
    <root>/scratch/<job_id>/        local scratch for the tools that need files (ffmpeg, faster-whisper),
                                    removed when the stage ends (`scratch`)

How a stage uses it, the same on both backends:

    with storage.scratch(job_id):                       # s3: the scratch folder is removed at the end
        src = storage.input_file(job_id, path, name)    # the job's input as a local file (s3:// fetched)
        wav = storage.fetch(job_id, "asr.wav")          # an upstream artifact as a local file
        out = storage.artifact(job_id, "mix.ogg")       # where to write a new artifact
        ...
        storage.save(job_id, "mix.ogg")                 # store it (local: already there; s3: upload)
        storage.write_json(job_id, "mix.json", {...})   # JSON goes straight to the backend
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import dagster as dg

from resources import s3, settings

CHUNK = 1024 * 1024  # bytes per piece when streaming an output from S3


@dataclass(frozen=True)
class Output:
    """A published output of a job."""
    name: str
    size: int

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix


class StorageUnavailable(OSError):
    """The S3 server is unreachable or overloaded right now: the API answers 503 with Retry-After, a
    stage fails and may be retried."""


def missing_artifact(job_id: str, name: str) -> FileNotFoundError:
    return FileNotFoundError(f"stage artifact {name} of job {job_id} is missing; materialise its upstream asset "
                             f"first")


def _check_job_id(job_id: str) -> str:
    if not job_id or "/" in job_id or job_id.startswith("."):
        raise ValueError(f"invalid job id {job_id!r}")
    return job_id


def _check_name(name: str) -> str:
    if not name or name.startswith(("/", ".")) or any(p in ("", ".", "..") for p in name.split("/")):
        raise ValueError(f"invalid artifact name {name!r}")
    return name


class MediaStorage(dg.ConfigurableResource):
    """Stage artifacts and outputs of jobs, in a local folder or in S3 (`backend`, default DUBBING_STORAGE)."""

    root: str = ""
    backend: str = ""

    # --- what both backends share ----------------------------------------------------------------

    def kind(self) -> str:
        name = (self.backend or "").strip().lower()
        if not name:
            return s3.backend()
        if name not in s3.BACKENDS:
            raise s3.StorageConfigError(f"storage backend {name!r} is not one of {', '.join(s3.BACKENDS)}")
        return name

    @property
    def is_s3(self) -> bool:
        return self.kind() == "s3"

    def root_path(self) -> Path:
        """The local data folder (local: everything; s3: the scratch folders)."""
        return Path(self.root).resolve() if self.root else settings.data_dir()

    def job_dir(self, job_id: str) -> Path:
        """The local folder of a job (local backend: its work/ and outputs/)."""
        return self.root_path() / "jobs" / _check_job_id(job_id)

    def work_dir(self, job_id: str) -> Path:
        """Where a stage's local files are: local: jobs/<id>/work; s3: the job's scratch folder."""
        if self.is_s3:
            path = self.root_path() / "scratch" / _check_job_id(job_id)
        else:
            path = self.job_dir(job_id) / "work"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def artifact(self, job_id: str, name: str) -> Path:
        """The local path to write an artifact to (then `save` it) or to read a fetched one from."""
        return self.work_dir(job_id) / _check_name(name)

    def input_file(self, job_id: str, input_path: str, filename: str = "") -> Path:
        """The job's input as a local file: a local path as it is; an s3:// object is fetched into the
        work (scratch) folder once."""
        if not input_path.startswith("s3://"):
            return Path(input_path)
        cfg = s3.settings()
        key = cfg.split_url(input_path)
        dest = self.artifact(job_id, "input" + PurePosixPath(filename or key).suffix.lower()[:16])
        if not dest.exists():
            self._download(cfg, key, dest, missing=FileNotFoundError(f"the job's input {input_path} is missing"))
        return dest

    @contextlib.contextmanager
    def scratch(self, job_id: str) -> Iterator[None]:
        """Around a stage: on s3, its scratch folder is removed when the stage ends, failed or not (locally
        the work folder is where the artifacts live, so it stays)."""
        try:
            yield
        finally:
            self.clear_scratch(job_id)

    # --- artifacts --------------------------------------------------------------------------------

    def save(self, job_id: str, name: str) -> None:
        """Store the artifact written at `artifact(job_id, name)` (local: nothing to do)."""
        if self.is_s3:
            cfg = s3.settings()
            with _s3_errors(cfg):
                s3.client(cfg).upload_file(str(self.artifact(job_id, name)), cfg.bucket, _work_key(cfg, job_id, name))

    def fetch(self, job_id: str, name: str) -> Path:
        """An upstream artifact as a local file (s3: downloaded into scratch unless already there)."""
        if not self.is_s3:
            path = self.job_dir(job_id) / "work" / _check_name(name)
            if not path.exists():
                raise missing_artifact(job_id, name)
            return path
        path = self.artifact(job_id, name)
        if not path.exists():
            cfg = s3.settings()
            self._download(cfg, _work_key(cfg, job_id, name), path, missing=missing_artifact(job_id, name))
        return path

    def remove_artifacts(self, job_id: str, names: list[str]) -> None:
        """Delete stage artifacts (missing ones are fine), e.g. segment cache entries no segment uses."""
        if not names:
            return
        for name in names:
            self.artifact(job_id, name).unlink(missing_ok=True)  # s3: the scratch copy
        if self.is_s3:
            cfg = s3.settings()
            client = s3.client(cfg)
            keys = [{"Key": _work_key(cfg, job_id, n)} for n in names]
            with _s3_errors(cfg):
                for i in range(0, len(keys), 1000):
                    client.delete_objects(Bucket=cfg.bucket, Delete={"Objects": keys[i:i + 1000], "Quiet": True})

    def write_json(self, job_id: str, name: str, data: Any) -> Path | str:
        """Write a JSON artifact; returns where it went (a local path, or an s3:// URL)."""
        text = json.dumps(data, ensure_ascii=False, indent=1)
        if not self.is_s3:
            path = self.artifact(job_id, name)
            atomic_write_text(path, text)
            return path
        cfg = s3.settings()
        key = _work_key(cfg, job_id, name)
        with _s3_errors(cfg):
            s3.client(cfg).put_object(Bucket=cfg.bucket, Key=key, Body=text.encode("utf-8"),
                                      ContentType="application/json; charset=utf-8")
        return cfg.url(key)

    def read_json(self, job_id: str, name: str) -> Any:
        if not self.is_s3:
            path = self.job_dir(job_id) / "work" / _check_name(name)  # reading never creates the work folder
            # (the notification of a cancelled job reads it after the cleanup removed the folder)
            if not path.exists():
                raise missing_artifact(job_id, name)
            return json.loads(path.read_text(encoding="utf-8"))
        cfg = s3.settings()
        with _s3_errors(cfg, missing=missing_artifact(job_id, name)):
            body = s3.client(cfg).get_object(Bucket=cfg.bucket, Key=_work_key(cfg, job_id, name))["Body"].read()
        return json.loads(body.decode("utf-8"))

    # --- outputs ----------------------------------------------------------------------------------

    def outputs_dir(self, job_id: str) -> Path:
        """The local backend's outputs folder of a job."""
        return self.job_dir(job_id) / "outputs"

    def outputs(self, job_id: str) -> list[Output]:
        """The published outputs of a job, by name (never a file still being published)."""
        if not self.is_s3:
            out = self.outputs_dir(job_id)
            if not out.is_dir():
                return []
            return sorted((Output(p.name, p.stat().st_size) for p in out.iterdir()
                           if p.is_file() and not p.name.startswith(".")), key=lambda o: o.name)
        cfg = s3.settings()
        prefix = cfg.key("jobs", _check_job_id(job_id), "outputs") + "/"
        found = []
        with _s3_errors(cfg):
            for page in s3.client(cfg).get_paginator("list_objects_v2").paginate(Bucket=cfg.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(prefix):]
                    if name and "/" not in name and not name.startswith("."):
                        found.append(Output(name, int(obj["Size"])))
        return sorted(found, key=lambda o: o.name)

    def artifact_location(self, job_id: str, name: str) -> str:
        """Where a stage artifact (or a folder of them, e.g. export/) is kept: a local path or an s3:// URL."""
        if not self.is_s3:
            return str(self.job_dir(job_id) / "work" / _check_name(name))
        cfg = s3.settings()
        return cfg.url(_work_key(cfg, job_id, name))

    def output_location(self, job_id: str, name: str = "") -> str:
        """Where an output (or, without a name, the outputs of a job) is: a local path or an s3:// URL."""
        if not self.is_s3:
            return str(self.outputs_dir(job_id) / name) if name else str(self.outputs_dir(job_id))
        cfg = s3.settings()
        return cfg.url(cfg.key("jobs", _check_job_id(job_id), "outputs", *([_check_name(name)] if name else [])))

    def publish_outputs(self, job_id: str, files: list[Path]) -> list[Output]:
        """Publish finished files (built in the work folder) as the job's outputs. Local: every file is first
        staged next to the outputs folder and then renamed, so readers never see a half-written output.
        S3: each file is uploaded to jobs/<id>/outputs/ (an object appears whole or not at all)."""
        published = []
        if not self.is_s3:
            out = self.outputs_dir(job_id)
            out.mkdir(parents=True, exist_ok=True)
            for src in files:
                dest = out / src.name
                tmp = out / f".{src.name}.partial"
                shutil.move(str(src), tmp)
                os.replace(tmp, dest)
                published.append(Output(dest.name, dest.stat().st_size))
            return published
        cfg = s3.settings()
        with _s3_errors(cfg):
            for src in files:
                size = src.stat().st_size
                s3.client(cfg).upload_file(str(src), cfg.bucket, _output_key(cfg, job_id, src.name))
                src.unlink()
                published.append(Output(src.name, size))
        return published

    def output_size(self, job_id: str, name: str) -> int | None:
        """The size of a published output, or None when there is no such output."""
        return next((o.size for o in self.outputs(job_id) if o.name == name), None)

    def read_output(self, job_id: str, name: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes [start, end) of an output (end None: to the end), in pieces. On S3 the request is made
        here, before the first piece is asked for: an outage raises StorageUnavailable up front."""
        if not self.is_s3:
            return _read_file(self.outputs_dir(job_id) / _check_name(name), start, end)
        cfg = s3.settings()
        ranged = {"Range": f"bytes={start}-{'' if end is None else end - 1}"} if start or end is not None else {}
        with _s3_errors(cfg, missing=FileNotFoundError(f"output {name} of job {job_id} is missing")):
            body = s3.client(cfg).get_object(Bucket=cfg.bucket, Key=_output_key(cfg, job_id, name), **ranged)["Body"]
        return _stream_body(body, cfg)

    def copy_output(self, job_id: str, name: str, dest: Path) -> Path:
        """A published output copied to a local file."""
        if not self.is_s3:
            return Path(shutil.copy2(self.outputs_dir(job_id) / _check_name(name), dest))
        cfg = s3.settings()
        self._download(cfg, _output_key(cfg, job_id, name), dest,
                       missing=FileNotFoundError(f"output {name} of job {job_id} is missing"))
        return dest

    def presign(self, job_id: str, name: str, expires_s: int = 3600) -> str:
        """A time-limited URL that downloads an output straight from S3 (as an attachment named `name`).
        Only call it after the ownership check: whoever holds the URL can download until it expires."""
        if not self.is_s3:
            raise ValueError("presigned URLs need the s3 storage backend")
        cfg = s3.settings()
        return s3.client(cfg).generate_presigned_url(
            "get_object", ExpiresIn=expires_s,
            Params={"Bucket": cfg.bucket, "Key": _output_key(cfg, job_id, name),
                    "ResponseContentDisposition": f'attachment; filename="{name}"'})

    def presign_origin(self) -> str:
        """scheme://host[:port] of presigned URLs (a Content-Security-Policy lets the web player follow them)."""
        from urllib.parse import urlsplit

        cfg = s3.settings()
        url = urlsplit(s3.client(cfg).generate_presigned_url(
            "get_object", Params={"Bucket": cfg.bucket, "Key": cfg.key("jobs")}, ExpiresIn=60))
        return f"{url.scheme}://{url.netloc}"

    def clear_outputs(self, job_id: str) -> None:
        if not self.is_s3:
            shutil.rmtree(self.outputs_dir(job_id), ignore_errors=True)
        else:
            self._delete_prefix(s3.settings(), job_id, "outputs")

    def clear_scratch(self, job_id: str) -> None:
        """Remove a job's local scratch folder (s3 only: locally the work folder is the artifacts)."""
        if self.is_s3:
            shutil.rmtree(self.root_path() / "scratch" / _check_job_id(job_id), ignore_errors=True)

    def clear_work(self, job_id: str) -> None:
        """Remove a job's stage artifacts and scratch, keeping its outputs (retention of intermediates)."""
        if not self.is_s3:
            shutil.rmtree(self.job_dir(job_id) / "work", ignore_errors=True)
            return
        shutil.rmtree(self.root_path() / "scratch" / _check_job_id(job_id), ignore_errors=True)
        self._delete_prefix(s3.settings(), job_id, "work")

    def clear_job(self, job_id: str) -> None:
        """Remove a job's artifacts, scratch and outputs (a cancelled job: nothing partial stays)."""
        if not self.is_s3:
            for sub in ("work", "outputs"):
                shutil.rmtree(self.job_dir(job_id) / sub, ignore_errors=True)
            return
        shutil.rmtree(self.root_path() / "scratch" / _check_job_id(job_id), ignore_errors=True)
        cfg = s3.settings()
        for sub in ("work", "outputs"):
            self._delete_prefix(cfg, job_id, sub)

    # --- S3 helpers -------------------------------------------------------------------------------

    def _download(self, cfg: s3.S3Settings, key: str, dest: Path, missing: Exception) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.partial")
        try:
            with _s3_errors(cfg, missing=missing):
                s3.client(cfg).download_file(cfg.bucket, key, str(tmp))
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    def _delete_prefix(self, cfg: s3.S3Settings, job_id: str, sub: str) -> None:
        client = s3.client(cfg)
        prefix = cfg.key("jobs", _check_job_id(job_id), sub) + "/"
        with _s3_errors(cfg):
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=cfg.bucket, Prefix=prefix):
                keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
                if keys:
                    client.delete_objects(Bucket=cfg.bucket, Delete={"Objects": keys, "Quiet": True})


def _work_key(cfg: s3.S3Settings, job_id: str, name: str) -> str:
    return cfg.key("jobs", _check_job_id(job_id), "work", _check_name(name))


def _output_key(cfg: s3.S3Settings, job_id: str, name: str) -> str:
    return cfg.key("jobs", _check_job_id(job_id), "outputs", _check_name(name))


def is_missing(exc: BaseException) -> bool:
    return s3.error_code(exc) in ("NoSuchKey", "404", "NotFound") or s3.http_status(exc) == 404


@contextlib.contextmanager
def _s3_errors(cfg: s3.S3Settings, missing: Exception | None = None) -> Iterator[None]:
    """S3 errors as the platform's: a missing object → `missing`; unreachable or overloaded → StorageUnavailable
    (naming the endpoint, never a credential)."""
    try:
        yield
    except StorageUnavailable:
        raise
    except Exception as exc:
        if missing is not None and is_missing(exc):
            raise missing from None
        if s3.is_transient(exc):
            where = cfg.endpoint_url or f"S3 ({cfg.region})"
            raise StorageUnavailable(f"the file storage at {where} is unavailable: {type(exc).__name__}") from exc
        raise


def _read_file(path: Path, start: int, end: int | None) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        fh.seek(start)
        left = None if end is None else end - start
        while left is None or left > 0:
            piece = fh.read(CHUNK if left is None else min(CHUNK, left))
            if not piece:
                return
            if left is not None:
                left -= len(piece)
            yield piece


def _stream_body(body, cfg: s3.S3Settings) -> Iterator[bytes]:
    try:
        with _s3_errors(cfg):
            yield from body.iter_chunks(CHUNK)
    finally:
        body.close()


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
