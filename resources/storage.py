"""Media storage: where a job's stage artifacts and finished outputs live.

The embedded default is a local folder:

    <root>/jobs/<job_id>/work/      stage artifacts (audio, transcript.json, segment WAVs, ...)
    <root>/jobs/<job_id>/outputs/   finished files only, published atomically by the export stage
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import dagster as dg

from resources import settings


class MediaStorage(dg.ConfigurableResource):
    """Local-folder storage for stage artifacts and outputs."""

    root: str = ""

    def root_path(self) -> Path:
        return Path(self.root).resolve() if self.root else settings.data_dir()

    def job_dir(self, job_id: str) -> Path:
        if not job_id or "/" in job_id or job_id.startswith("."):
            raise ValueError(f"invalid job id {job_id!r}")
        return self.root_path() / "jobs" / job_id

    def work_dir(self, job_id: str) -> Path:
        path = self.job_dir(job_id) / "work"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def artifact(self, job_id: str, name: str) -> Path:
        return self.work_dir(job_id) / name

    def outputs_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "outputs"

    def outputs(self, job_id: str) -> list[Path]:
        """The published outputs of a job, by name (never a file still being published)."""
        out = self.outputs_dir(job_id)
        if not out.is_dir():
            return []
        return sorted(p for p in out.iterdir() if p.is_file() and not p.name.startswith("."))

    def write_json(self, job_id: str, name: str, data: Any) -> Path:
        path = self.artifact(job_id, name)
        atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=1))
        return path

    def read_json(self, job_id: str, name: str) -> Any:
        path = self.job_dir(job_id) / "work" / name  # reading never creates the work folder
        # (the notification of a cancelled job reads it after the cleanup removed the folder)
        if not path.exists():
            raise FileNotFoundError(
                f"stage artifact {name} of job {job_id} is missing; materialise its upstream asset first"
            )
        return json.loads(path.read_text(encoding="utf-8"))

    def publish_outputs(self, job_id: str, files: list[Path]) -> list[Path]:
        """Move finished files (from the work dir) into the outputs folder. Every file is first staged next to the
        outputs folder and then renamed, so readers never see a half-written output."""
        out = self.outputs_dir(job_id)
        out.mkdir(parents=True, exist_ok=True)
        published = []
        for src in files:
            dest = out / src.name
            tmp = out / f".{src.name}.partial"
            shutil.move(str(src), tmp)
            os.replace(tmp, dest)
            published.append(dest)
        return published

    def clear_outputs(self, job_id: str) -> None:
        shutil.rmtree(self.outputs_dir(job_id), ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
