"""Engine and model versions as the stages record them and the reprocessing rule compares them.

Every stage asset records, in its materialisation metadata, `engine`, `engine_version`, `model` (where
there is one) and `version_tag`: one string made of the three (`tag()`). Each engine module computes its
current tag next to the engine (`AsrResource.version_tag()`, `TranslatorResource.version_tag()`,
`TtsResource.version_tag()`, `media.version_tag()`); dubbing_assets/reprocess.py re-runs a job whose
recorded tag differs from the current one. Versions found by running a tool or asking dpkg are cached
per process (they change only when packages are installed, which restarts the processes that run stages).
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from importlib import metadata

UNKNOWN = "unknown"


@functools.cache
def package_version(dist: str) -> str | None:
    """An installed Python distribution's version (None when it is not installed)."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def dpkg_version(package: str) -> str | None:
    """A Debian package's installed version (None when dpkg does not know it)."""
    if shutil.which("dpkg-query") is None:
        return None
    try:
        proc = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


@functools.cache
def dpkg_owner(path: str) -> str | None:
    """The Debian package that installed `path` (None when none did)."""
    if shutil.which("dpkg-query") is None:
        return None
    try:
        proc = subprocess.run(["dpkg-query", "-S", path], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0 or ":" not in proc.stdout:
        return None
    return proc.stdout.split(":", 1)[0].split(",")[0].strip() or None


@functools.cache
def tool_version(cmd: tuple[str, ...], index: int) -> str | None:
    """The version word (at `index`) of a tool's version line, e.g. (("ffmpeg", "-version"), 2)."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    words = out.split()
    return words[index] if len(words) > index else None


def tag(engine: str, engine_version: str | None, model: str | None = None) -> str:
    """The one string the reprocessing rule compares: `engine=version[;model=...]`."""
    out = f"{engine}={engine_version or UNKNOWN}"
    return f"{out};model={model}" if model else out


def version_metadata(engine: str, engine_version: str | None, model: str | None = None) -> dict[str, str]:
    """The uniform metadata keys of a stage: engine, engine_version, model (when there is one), version_tag."""
    out = {"engine": engine, "engine_version": engine_version or UNKNOWN}
    if model:
        out["model"] = model
    out["version_tag"] = tag(engine, engine_version, model)
    return out
