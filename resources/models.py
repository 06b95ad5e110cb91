"""ModelManager: one cache of loaded models per process, loaded lazily, reused by every stage and
run in the process, with an LRU bound on how many stay loaded (MODEL_CACHE_MAX) and, optionally, on
about how much memory they take (MODEL_CACHE_MAX_MB; measured as the process's resident memory growth
during each load, so it is an estimate)."""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from typing import Any, Callable

from resources import settings


def rss_bytes() -> int:
    """This process's resident memory (Linux /proc; 0 where unknown)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class ModelManager:
    def __init__(self, max_models: int | None = None, max_mb: float | None = None):
        self.max_models = max(1, int(max_models or settings.number("MODEL_CACHE_MAX", 4) or 4))
        self.max_mb = settings.number("MODEL_CACHE_MAX_MB", 0) if max_mb is None else max_mb  # 0: no bound
        self._models: OrderedDict[str, Any] = OrderedDict()
        self._load_seconds: dict[str, float] = {}
        self._sizes: dict[str, int] = {}
        self._lock = threading.RLock()

    def get(self, key: str, loader: Callable[[], Any]) -> Any:
        """The model for `key`, loading it with `loader` on first use."""
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            before = rss_bytes()
            started = time.perf_counter()
            model = loader()
            self._load_seconds[key] = time.perf_counter() - started
            self._sizes[key] = max(0, rss_bytes() - before)
            self._models[key] = model
            self._trim()
            return model

    def _trim(self) -> None:
        """Drop least recently used models beyond the count bound, then beyond the memory bound (the
        newest model always stays)."""
        while len(self._models) > self.max_models:
            self._drop(next(iter(self._models)))
        while self.max_mb and len(self._models) > 1 and self._total_bytes() > self.max_mb * 1024**2:
            self._drop(next(iter(self._models)))

    def _drop(self, key: str) -> None:
        self._models.pop(key, None)
        self._sizes.pop(key, None)

    def _total_bytes(self) -> int:
        return sum(self._sizes.get(k, 0) for k in self._models)

    def loaded(self) -> dict[str, float]:
        """Loaded model keys with the seconds each load took."""
        with self._lock:
            return {k: round(self._load_seconds.get(k, 0.0), 3) for k in self._models}

    def is_loaded(self, key: str) -> bool:
        with self._lock:
            return key in self._models

    def stats(self) -> dict:
        """What is loaded (least recently used first), with load times and estimated sizes."""
        with self._lock:
            return {
                "max_models": self.max_models,
                "max_mb": self.max_mb or None,
                "loaded": [{"key": k, "load_s": round(self._load_seconds.get(k, 0.0), 3),
                            "approx_mb": round(self._sizes.get(k, 0) / 1024**2, 1)} for k in self._models],
                "approx_total_mb": round(self._total_bytes() / 1024**2, 1),
            }

    def evict(self, key: str) -> None:
        with self._lock:
            self._drop(key)


_MANAGER = ModelManager()


def model_manager() -> ModelManager:
    return _MANAGER


def gpu_present() -> bool:
    """An NVIDIA GPU with its driver loaded (checked in /proc and /dev: imports nothing)."""
    import glob

    return bool(glob.glob("/proc/driver/nvidia/gpus/*") or glob.glob("/dev/nvidia[0-9]*"))


def wants_gpu(device: str) -> bool:
    return (device or "").strip().lower().startswith(("cuda", "gpu"))
