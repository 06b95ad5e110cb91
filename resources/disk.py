"""The disk guard: below MIN_FREE_GB of free disk, new uploads and new runs are refused with a clear
reason up front instead of failing halfway through a stage. One function, `ensure_free_space`, used
by the upload store (init, job creation), the first stage asset, the CLI and the readiness report."""

from __future__ import annotations

import shutil
from pathlib import Path

from resources import settings

GB = 1024**3


class DiskSpaceError(Exception):
    """Not enough free disk; the message names the numbers and MIN_FREE_GB."""

    def __init__(self, message: str, free_bytes: int, min_free_bytes: int):
        super().__init__(message)
        self.message = message
        self.free_bytes = free_bytes
        self.min_free_bytes = min_free_bytes


def min_free_bytes() -> int:
    """MIN_FREE_GB (default 1) in bytes."""
    return int(settings.number("MIN_FREE_GB", 1.0) * GB)


def _existing(path: Path) -> Path:
    """The nearest existing folder at or above `path` (the data folder may not exist yet)."""
    path = Path(path).resolve()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def free_bytes(path: Path | None = None) -> int:
    return shutil.disk_usage(_existing(path or settings.data_dir())).free


def size_text(n: float) -> str:
    if n >= GB:
        return f"{n / GB:.1f} GB"
    return f"{n / 1024**2:.0f} MB"


def _plain(value: float) -> str:
    """1, 0.5, 100000: no exponent, no trailing zeros."""
    return format(value, ".3f").rstrip("0").rstrip(".")


def low_space_reason(need_bytes: int = 0, path: Path | None = None, action: str = "new jobs") -> str | None:
    """Why `action` is refused for lack of disk, or None when there is room for `need_bytes` more
    while MIN_FREE_GB stays free."""
    free, keep = free_bytes(path), min_free_bytes()
    if free - max(0, need_bytes) >= keep:
        return None
    needs = f", {size_text(need_bytes)} needed" if need_bytes > 0 else ""
    return (f"not enough free disk for {action}: {size_text(free)} free{needs}, and "
            f"{_plain(settings.number('MIN_FREE_GB', 1.0))} GB must stay free (MIN_FREE_GB); "
            "free some space (old jobs' folders) and try again")


def ensure_free_space(need_bytes: int = 0, path: Path | None = None, action: str = "new jobs") -> None:
    """Raise DiskSpaceError when taking `need_bytes` on the disk of `path` (default: the data folder)
    would leave less than MIN_FREE_GB free."""
    reason = low_space_reason(need_bytes, path, action)
    if reason:
        raise DiskSpaceError(reason, free_bytes(path), min_free_bytes())


def disk_status(path: Path | None = None) -> dict:
    """Free and total space of the data disk and the MIN_FREE_GB floor (no paths: they are the
    server's business)."""
    usage = shutil.disk_usage(_existing(path or settings.data_dir()))
    keep = min_free_bytes()
    return {"free_gb": round(usage.free / GB, 2), "total_gb": round(usage.total / GB, 2),
            "min_free_gb": round(keep / GB, 3), "ok": usage.free >= keep}
