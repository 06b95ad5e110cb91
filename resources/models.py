"""ModelManager: one cache of loaded models per process, loaded lazily, reused by every stage and
run in the process, with an LRU bound on how many stay loaded."""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from typing import Any, Callable


class ModelManager:
    def __init__(self, max_models: int | None = None):
        self.max_models = max_models or int(os.environ.get("MODEL_CACHE_MAX", "4"))
        self._models: OrderedDict[str, Any] = OrderedDict()
        self._load_seconds: dict[str, float] = {}
        self._lock = threading.RLock()

    def get(self, key: str, loader: Callable[[], Any]) -> Any:
        """The model for `key`, loading it with `loader` on first use."""
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            started = time.perf_counter()
            model = loader()
            self._load_seconds[key] = time.perf_counter() - started
            self._models[key] = model
            while len(self._models) > self.max_models:
                self._models.popitem(last=False)
            return model

    def loaded(self) -> dict[str, float]:
        """Loaded model keys with the seconds each load took."""
        with self._lock:
            return {k: round(self._load_seconds.get(k, 0.0), 3) for k in self._models}

    def evict(self, key: str) -> None:
        with self._lock:
            self._models.pop(key, None)


_MANAGER = ModelManager()


def model_manager() -> ModelManager:
    return _MANAGER
