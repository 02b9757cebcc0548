"""The evaluation cache: one small JSON file per entry, written atomically.

An entry's key is the SHA-256 of a canonical JSON description of what was computed
(model hash, canonical scheme, data hash, seed, steps, learning rate, ...), so the
same evaluation is never run twice: an interrupted search resumes where it stopped and
a repeated search is free. Files live in ``<dir>/<kind>/<key[:2]>/<key>.json``; a file
is written to a temporary name in the same directory and renamed into place, so a
killed search never leaves a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinytrain.errors import UsageError

DEFAULT_CACHE_DIR = Path("~/.cache/tinytrain/search")


def canonical_json(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def digest(obj: object) -> str:
    """SHA-256 (hex) of the canonical JSON of ``obj``."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def bytes_digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    writes: int = 0


@dataclass
class EvalCache:
    """A directory of JSON entries (``None``: an in-memory cache that forgets on exit)."""

    root: Path | None
    stats: CacheStats = field(default_factory=CacheStats)
    _memory: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, root: str | Path | None) -> EvalCache:
        if root is None:
            return cls(None)
        path = Path(root).expanduser()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create the cache directory {path}: {exc.strerror or exc}") from None
        return cls(path)

    def _path(self, kind: str, key: str) -> Path:
        assert self.root is not None
        return self.root / kind / key[:2] / f"{key}.json"

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        mem = self._memory.get(f"{kind}/{key}")
        if mem is None and self.root is not None:
            try:
                value = json.loads(self._path(kind, key).read_text())
            except (OSError, ValueError):
                value = None
            if isinstance(value, dict):
                mem = value
                self._memory[f"{kind}/{key}"] = mem
        if mem is None:
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        return mem

    def put(self, kind: str, key: str, value: dict[str, Any]) -> None:
        self._memory[f"{kind}/{key}"] = value
        self.stats.writes += 1
        if self.root is None:
            return
        path = self._path(kind, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(value, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def entries(self, kind: str) -> int:
        """Entries of ``kind`` on disk (in memory for an in-memory cache)."""
        if self.root is None:
            return sum(1 for k in self._memory if k.startswith(f"{kind}/"))
        return sum(1 for _ in (self.root / kind).glob("*/*.json"))
