"""Counters per region and per table, thread-safe and cheap."""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: the counters every region reports, in display order
REGION_COUNTERS = (
    "hits", "misses", "stores", "bypassed", "uncacheable", "not_stored", "too_large",
    "corrupt", "errors",
)  # fmt: skip


class Stats:
    def __init__(self, regions: Any):
        self._lock = threading.Lock()
        self._regions: dict[str, Counter[str]] = {name: Counter() for name in regions}
        self._tables: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._classes: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._tracing = 0  # traces open, in any thread
        self._trace = threading.local()

    def incr(self, region: str, counter: str, n: int = 1, why: str = "") -> None:
        """Count; ``why`` (the reason, for the DEBUG line) is kept only while tracing."""
        with self._lock:
            self._regions[region][counter] += n

    def _traced_incr(self, region: str, counter: str, n: int = 1, why: str = "") -> None:
        Stats.incr(self, region, counter, n)
        notes = getattr(self._trace, "notes", None)
        if notes is not None:
            notes.append((counter, why))

    @contextmanager
    def trace(self) -> Iterator[list[tuple[str, str]]]:
        """Yield the (counter, reason) pairs this thread counts in the block.

        While any thread traces, ``incr`` is the tracing one (an instance
        attribute); otherwise the plain method: no cost when nobody traces.
        """
        notes: list[tuple[str, str]] = []
        before = getattr(self._trace, "notes", None)  # a load nested in a miss
        self._trace.notes = notes
        with self._lock:
            self._tracing += 1
            self.incr = self._traced_incr  # type: ignore[method-assign]
        try:
            yield notes
        finally:
            self._trace.notes = before
            with self._lock:
                self._tracing -= 1
                if not self._tracing:
                    del self.incr

    def table(self, name: str, counter: str, n: int = 1) -> None:
        with self._lock:
            self._tables[name][counter] += n

    def klass(self, name: str, counter: str) -> None:
        with self._lock:
            self._classes[name][counter] += 1

    def classes(self) -> dict[str, dict[str, Any]]:
        """Identity-cache loads per mapped class: hits, misses, hit ratio."""
        with self._lock:
            out = {}
            for name, c in sorted(self._classes.items()):
                hits, misses = c.get("hits", 0), c.get("misses", 0)
                looked = hits + misses
                out[name] = {"hits": hits, "misses": misses,
                             "hit_ratio": round(hits / looked, 4) if looked else None}  # fmt: skip
            return out

    def regions(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            out = {}
            for name, c in self._regions.items():
                row: dict[str, Any] = {k: c.get(k, 0) for k in REGION_COUNTERS}
                looked = row["hits"] + row["misses"]
                row["hit_ratio"] = round(row["hits"] / looked, 4) if looked else None
                out[name] = row
            return out

    def tables(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {name: dict(c) for name, c in sorted(self._tables.items())}

    def reset(self) -> None:
        with self._lock:
            for c in self._regions.values():
                c.clear()
            self._tables.clear()
            self._classes.clear()
