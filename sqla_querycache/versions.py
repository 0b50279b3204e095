"""Version stores: one counter per table, read with every lookup.

A cache entry records the versions of the tables it read, taken *before*
the query ran (I2); it is a hit only while they equal the current ones. A
write bumps its tables twice: once before the database commit
(``begin_write``, which also marks the tables "in flight" so nobody stores
or serves them meanwhile) and once after it (``end_write``). A missing
version is created with a fresh random value, so a flushed or evicted store
can never make an old entry match again (I4).
"""

from __future__ import annotations

import secrets
import threading
from collections import Counter
from typing import Any, Optional, Protocol, Sequence


def fresh_version() -> int:
    """A starting value no earlier incarnation of the store could have used."""
    return secrets.randbits(62)


class VersionStore(Protocol):
    """What :class:`~sqla_querycache.QueryCache` needs of a version store."""

    #: short name shown in repr() and the CLI
    kind: str

    def read(self, names: Sequence[str]) -> Optional[list[int]]:
        """Current versions of ``names``; ``None`` if any is being written."""

    def begin_write(self, names: Sequence[str]) -> None:
        """Before a commit: bump and mark ``names`` in flight. May raise."""

    def end_write(self, names: Sequence[str]) -> None:
        """After the commit (or its failure): bump again and clear the mark. May raise."""

    def bump(self, names: Sequence[str]) -> None:
        """Invalidate ``names`` now (manual invalidation, migrations). May raise."""


class LocalVersions:
    """In-process, thread-safe versions: one process, no network."""

    kind = "local"

    def __init__(self) -> None:
        self._versions: dict[str, int] = {}
        self._in_flight: Counter[str] = Counter()
        self._lock = threading.Lock()

    def read(self, names: Sequence[str]) -> Optional[list[int]]:
        versions = self._versions
        in_flight = self._in_flight
        out = []
        for name in names:
            if in_flight and in_flight.get(name):
                return None
            v = versions.get(name)
            if v is None:
                with self._lock:
                    v = versions.setdefault(name, fresh_version())
            out.append(v)
        return out

    def _bump_locked(self, names: Sequence[str]) -> None:
        for name in names:
            self._versions[name] = self._versions.get(name, fresh_version()) + 1

    def begin_write(self, names: Sequence[str]) -> None:
        with self._lock:
            self._bump_locked(names)
            self._in_flight.update(names)

    def end_write(self, names: Sequence[str]) -> None:
        with self._lock:
            self._bump_locked(names)
            self._in_flight.subtract(names)
            for name in names:
                if self._in_flight[name] <= 0:
                    del self._in_flight[name]

    def bump(self, names: Sequence[str]) -> None:
        with self._lock:
            self._bump_locked(names)

    def __repr__(self) -> str:
        return f"<LocalVersions tables={len(self._versions)} in_flight={sum(self._in_flight.values())}>"


def make_version_store(spec: Any, namespace: str) -> VersionStore:
    """``"local"``, a Redis URL or client, ``"sql"``, or a ready store -> a store."""
    from .exc import ConfigurationError

    if spec is None or spec == "local":
        return LocalVersions()
    if all(hasattr(spec, m) for m in ("read", "begin_write", "end_write", "bump")):
        return spec  # type: ignore[no-any-return]
    raise ConfigurationError(
        f"versions must be 'local', 'sql', a redis:// URL, a Redis client or a VersionStore; "
        f"got {spec!r}"
    )
