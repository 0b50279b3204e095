"""Counters per region, per table and per statement: this process's, and the app's.

The hit path only increments counters of this process (one lock, two
increments). A background flusher (:class:`AppStats`, one thread per
QueryCache, every ``stats_interval`` seconds and at ``close()``) sends what
changed since its last flush to the shared store -- Redis hashes per
namespace when the versions live in Redis -- where every process adds its
share; ``cache.stats(scope="app")``, the CLI and the exporters read the sums.

Statements are known by their *fingerprint*: the first 16 hex digits of the
plan digest (``keys.Plan.digest``: SQL, bind, mapper fingerprint), with a
short SQL text. Both sides are bounded: at most :data:`MAX_STATEMENTS` per
process and in the shared store; the rest count under the fingerprint
``other``.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
import uuid
import weakref
from collections import Counter, defaultdict
from collections.abc import Callable, Container, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple, Protocol, TypedDict

log = logging.getLogger("sqla_querycache")

#: the counters every region reports, in display order
REGION_COUNTERS = (
    "hits", "misses", "stores", "bypassed", "uncacheable", "not_stored", "too_large",
    "corrupt", "errors",
)  # fmt: skip

#: why a read went to the database on purpose (``Stats.bypass``), per statement too
BYPASS_REASONS = (
    "written", "snapshot", "state_changed", "store_failed", "unavailable", "not_worth_it",
    "never",
)  # fmt: skip
#: per statement: counters (index = position); ``db_seconds`` is a float
STATEMENT_COUNTERS = (
    "hits", "misses", "bypassed", "stores", "too_large", "not_stored", "errors",
    "db_seconds", "bytes_stored", *("bypassed:" + r for r in BYPASS_REASONS),
)  # fmt: skip
#: per statement, a gauge per admission state: 1 in the process whose shape is in it
#: (summed app-wide: how many processes are in each state)
ADMISSION_GAUGES = {
    "admitted": "adm_admitted", "not worth it": "adm_not_worth_it", "probing": "adm_probing",
    "always": "adm_always", "never": "adm_never",
}  # fmt: skip
_GAUGE_STATE = {v: k for k, v in ADMISSION_GAUGES.items()}
_S = {name: i for i, name in enumerate(STATEMENT_COUNTERS)}
_HITS = _S["hits"]

#: statements kept per process and in the shared store; more count as ``other``
MAX_STATEMENTS = 1000
#: characters of SQL text kept per statement
SQL_CHARS = 300
OTHER = "other"
#: a process that has not flushed for this long is not listed as running
PROCESS_SEEN_SECONDS = 30.0
#: how long the shared counters live after the last flush of any process
APP_TTL_SECONDS = 7 * 86400

_SPACES = re.compile(r"\s+")


# ----------------------------------------------------------------- typed rows


class RegionStats(TypedDict):
    """One region's counters (this process's, or every process's summed)."""

    hits: int
    misses: int
    stores: int
    bypassed: int
    uncacheable: int
    not_stored: int
    too_large: int
    corrupt: int
    errors: int
    #: hits / (hits + misses), None before any lookup
    hit_ratio: float | None
    #: statements that asked for this region: hits + misses + bypassed + uncacheable
    calls: int
    #: database time spent running misses (seconds)
    db_seconds: float
    #: estimated database time hits saved: per statement, hits x mean miss time
    saved_seconds: float
    #: bytes of the entries stored
    bytes_stored: int
    #: bypassed, by reason (``written``, ``snapshot``, ``state_changed``,
    #: ``store_failed``, ``unavailable``)
    bypass_reasons: dict[str, int]


class TableStats(TypedDict):
    """One table: lookups of the statements reading it, and writes to it."""

    hits: int
    misses: int
    bypassed: int
    stores: int
    db_seconds: float
    saved_seconds: float
    #: commits or invalidate() calls that wrote it
    invalidations: int
    #: reads bypassed because their transaction had written it
    bypassed_by_writes: int


class StatementStats(TypedDict):
    """One statement shape (fingerprint = plan digest prefix)."""

    fingerprint: str
    region: str
    sql: str
    tables: list[str]
    calls: int
    hits: int
    misses: int
    bypassed: int
    stores: int
    too_large: int
    not_stored: int
    errors: int
    hit_ratio: float | None
    db_seconds: float
    #: mean database time of a miss (seconds), None before any
    mean_miss_seconds: float | None
    saved_seconds: float
    #: mean size of a stored entry (bytes), None before any
    entry_bytes: int | None
    #: bypassed, by reason (as the regions' ``bypass_reasons``)
    bypass_reasons: dict[str, int]
    #: admission (README "Admission"): "admitted", "not worth it", "probing", or a pin
    #: ("always", "never"); app-wide: the state most processes report, with their
    #: count when they differ ("not worth it (2 of 3 processes)"); None: never run
    admission: str | None
    #: this process's averages for the shape (None when it has not run it here):
    #: hit ratio of its lookups, what a hit / a miss / the uncached query costs (µs),
    #: and the expected saving per call in wall time and in this thread's CPU (µs;
    #: not worth it when the two, each as a share of the uncached call's, add up
    #: to less than nothing)
    admission_hit_ratio: float | None
    hit_us: float | None
    miss_us: float | None
    uncached_us: float | None
    saving_us: float | None
    saving_cpu_us: float | None


class ProcessInfo(TypedDict):
    process: str
    last_flush: float
    age_seconds: float


class Report(TypedDict):
    """Everything counted: ``cache.report(scope=...)``."""

    scope: str
    time: float
    regions: dict[str, RegionStats]
    tables: dict[str, TableStats]
    statements: list[StatementStats]
    #: identity-cache loads per mapped class: hits, misses
    classes: dict[str, dict[str, Any]]
    #: scope "app": processes that flushed within PROCESS_SEEN_SECONDS
    processes: list[ProcessInfo]


# ----------------------------------------------------------------- hooks


class CacheEvent(NamedTuple):
    """What a hook receives."""

    #: "hit", "miss", "store", "invalidate" or "error"
    kind: str
    region: str | None = None
    #: the statement's fingerprint (see :mod:`.stats`), when known
    statement: str | None = None
    tables: tuple[str, ...] = ()
    #: miss: database time of the query (seconds)
    seconds: float | None = None
    #: store: bytes stored
    nbytes: int | None = None
    #: error: what failed
    error: BaseException | None = None


class Hooks:
    """Callbacks per event; each returns the function, so they decorate::

        @cache.hooks.on_miss
        def slow(event):
            if event.seconds > 0.5: log.info("slow miss %s", event.statement)

    Hooks run in the thread of the query, after the event; whatever they
    raise is logged and swallowed. With no hook registered an event costs
    one truth test.
    """

    KINDS = ("hit", "miss", "store", "invalidate", "error")

    def __init__(self) -> None:
        self.hit: list[Callable[[CacheEvent], Any]] = []
        self.miss: list[Callable[[CacheEvent], Any]] = []
        self.store: list[Callable[[CacheEvent], Any]] = []
        self.invalidate: list[Callable[[CacheEvent], Any]] = []
        self.error: list[Callable[[CacheEvent], Any]] = []

    def on_hit(self, fn: Callable[[CacheEvent], Any]) -> Callable[[CacheEvent], Any]:
        self.hit.append(fn)
        return fn

    def on_miss(self, fn: Callable[[CacheEvent], Any]) -> Callable[[CacheEvent], Any]:
        self.miss.append(fn)
        return fn

    def on_store(self, fn: Callable[[CacheEvent], Any]) -> Callable[[CacheEvent], Any]:
        self.store.append(fn)
        return fn

    def on_invalidate(self, fn: Callable[[CacheEvent], Any]) -> Callable[[CacheEvent], Any]:
        self.invalidate.append(fn)
        return fn

    def on_error(self, fn: Callable[[CacheEvent], Any]) -> Callable[[CacheEvent], Any]:
        self.error.append(fn)
        return fn

    def remove(self, fn: Callable[[CacheEvent], Any]) -> None:
        """Unregister ``fn`` from every event."""
        for kind in self.KINDS:
            fns = getattr(self, kind)
            while fn in fns:
                fns.remove(fn)


def _fire(fns: list[Callable[[CacheEvent], Any]], event: CacheEvent) -> None:
    for fn in list(fns):
        try:
            fn(event)
        except Exception as err:  # a hook never breaks the user's query
            log.warning("sqla_querycache hook %r failed on %s: %r", fn, event.kind, err)


# ----------------------------------------------------------------- names


def table_of(name: str) -> str | None:
    """The table a version name belongs to; None for internal names (``@all``...).

    ``product#7``, ``product@rows``, ``product@ins``, ``product[category_id=3]``
    -> ``product``.
    """
    if not name or name.startswith("@"):
        return None
    for sep in ("#", "[", "@"):
        i = name.find(sep)
        if i > 0:
            name = name[:i]
    return name


def display_tables(names: Iterable[str]) -> list[str]:
    """Tables of version names, internal names hidden, sorted, each once."""
    return sorted({t for t in map(table_of, names) if t is not None})


def fingerprint(plan: Any) -> str:
    return bytes(plan.digest).hex()[:16] if plan is not None else OTHER


def short_sql(plan: Any) -> str:
    try:
        sql = _SPACES.sub(" ", str(plan.compiled)).strip()
    except Exception:
        return "?"
    return sql if len(sql) <= SQL_CHARS else sql[: SQL_CHARS - 3] + "..."


class _Meta(NamedTuple):
    region: str
    sql: str
    tables: tuple[str, ...]


# ----------------------------------------------------------------- counters


class Stats:
    """This process's counters, thread-safe; the hit path costs one lock."""

    def __init__(self, regions: Any):
        self._lock = threading.Lock()
        self._regions: dict[str, Counter[str]] = {name: Counter() for name in regions}
        self._tables: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._classes: defaultdict[str, Counter[str]] = defaultdict(Counter)
        #: plan digest -> counters (STATEMENT_COUNTERS order)
        self._stmts: dict[bytes, list[Any]] = {}
        #: fingerprint -> (region, sql, tables)
        self._meta: dict[str, _Meta] = {}
        self._fps: dict[bytes, str] = {}
        self.hooks = Hooks()
        #: the cumulative values last flushed to the shared store (AppStats)
        self._flushed: dict[str, float] = {}
        #: held by a flush and by reset(): a reset never lands inside a flush
        self.flush_lock = threading.Lock()
        self._tracing = 0  # DEBUG traces open, in any thread (ReadPath._traced)
        self._trace = threading.local()
        #: plan digest -> admission.Shape, kept alive by the plans that use it
        self.shapes: weakref.WeakValueDictionary[bytes, Any] = weakref.WeakValueDictionary()
        #: set by close(): the admission gauges read zero (this process stops counting)
        self.closed = False

    # -- counting (called by the read and write paths)

    def _row(self, region: str, plan: Any) -> list[Any]:
        """The statement's counters; the caller holds the lock."""
        digest = plan.digest
        row = self._stmts.get(digest)
        if row is None:
            if len(self._stmts) >= MAX_STATEMENTS:
                digest = b""
                row = self._stmts.get(digest)
                if row is not None:
                    return row
                fp, meta = OTHER, _Meta(region, "(other statements)", ())
            else:
                fp = fingerprint(plan)
                meta = _Meta(region, short_sql(plan), tuple(display_tables(plan.tables)))
            row = self._stmts[digest] = [0] * len(STATEMENT_COUNTERS)
            row[_S["db_seconds"]] = 0.0
            self._fps[digest] = fp
            self._meta.setdefault(fp, meta)
        return row

    def _note(self, counter: str, why: str) -> None:
        """While a DEBUG trace is open in this thread: remember what was counted, and why."""
        notes = getattr(self._trace, "notes", None)
        if notes is not None:
            notes.append((counter, why))

    def hit(self, region: str, plan: Any) -> None:
        """The hit path: two increments under one lock."""
        if self._tracing:
            self._note("hits", "")
        with self._lock:
            self._regions[region]["hits"] += 1
            row = self._stmts.get(plan.digest)
            if row is None:
                row = self._row(region, plan)
            row[_HITS] += 1
        if self.hooks.hit:
            _fire(self.hooks.hit, CacheEvent("hit", region, fingerprint(plan)))

    def incr(self, region: str, counter: str, n: int = 1, plan: Any = None,
             why: str = "") -> None:  # fmt: skip
        """Count; ``why`` (the reason, for the DEBUG line) is kept only while tracing."""
        if self._tracing:
            self._note(counter, why)
        with self._lock:
            self._regions[region][counter] += n
            if plan is not None and counter in _S:
                self._row(region, plan)[_S[counter]] += n

    def bypass(self, region: str, reason: str, plan: Any = None, why: str = "") -> None:
        if self._tracing:
            self._note("bypassed", why or reason)
        with self._lock:
            c = self._regions[region]
            c["bypassed"] += 1
            c["bypassed:" + reason] += 1
            if plan is not None:
                row = self._row(region, plan)
                row[_S["bypassed"]] += 1
                i = _S.get("bypassed:" + reason)
                if i is not None:
                    row[i] += 1

    def missed(self, region: str, plan: Any, seconds: float) -> None:
        """A miss ran the query in ``seconds``."""
        with self._lock:
            self._regions[region]["db_us"] += int(seconds * 1e6)
            self._row(region, plan)[_S["db_seconds"]] += seconds
        if self.hooks.miss:
            tables = tuple(display_tables(plan.tables))
            _fire(self.hooks.miss, CacheEvent("miss", region, fingerprint(plan), tables, seconds))

    def stored(self, region: str, plan: Any, nbytes: int) -> None:
        if self._tracing:
            self._note("stores", "")
        with self._lock:
            c = self._regions[region]
            c["stores"] += 1
            c["bytes_stored"] += nbytes
            row = self._row(region, plan)
            row[_S["stores"]] += 1
            row[_S["bytes_stored"]] += nbytes
        if self.hooks.store:
            tables = tuple(display_tables(plan.tables))
            event = CacheEvent("store", region, fingerprint(plan), tables, None, nbytes)
            _fire(self.hooks.store, event)

    def error(self, region: str, err: BaseException | None = None, plan: Any = None,
              why: str = "") -> None:  # fmt: skip
        self.incr(region, "errors", plan=plan, why=why)
        if self.hooks.error:
            _fire(self.hooks.error, CacheEvent("error", region, fingerprint(plan) if plan else None,
                                               error=err))  # fmt: skip

    @contextmanager
    def trace(self) -> Iterator[list[tuple[str, str]]]:
        """Yield the (counter, reason) pairs this thread counts in the block (the
        DEBUG line); when nobody traces, counting pays one attribute test."""
        notes: list[tuple[str, str]] = []
        before = getattr(self._trace, "notes", None)  # a load nested in a miss
        self._trace.notes = notes
        with self._lock:
            self._tracing += 1
        try:
            yield notes
        finally:
            self._trace.notes = before
            with self._lock:
                self._tracing -= 1

    def table(self, name: str, counter: str, n: int = 1) -> None:
        t = table_of(name)
        if t is None:
            return
        with self._lock:
            self._tables[t][counter] += n

    def written(self, names: Iterable[str]) -> None:
        """A commit or an invalidation bumped ``names``: once per table."""
        tables = display_tables(names)
        with self._lock:
            for t in tables:
                self._tables[t]["invalidations"] += 1
        if self.hooks.invalidate and tables:
            _fire(self.hooks.invalidate, CacheEvent("invalidate", tables=tuple(tables)))

    def klass(self, name: str, counter: str) -> None:
        with self._lock:
            self._classes[name][counter] += 1

    # -- reading this process's counters

    def classes(self) -> dict[str, dict[str, Any]]:
        """Identity-cache loads per mapped class: hits, misses, hit ratio."""
        with self._lock:
            return _classes({n: dict(c) for n, c in self._classes.items()})

    def regions(self) -> dict[str, RegionStats]:
        return self.report()["regions"]

    def tables(self) -> dict[str, dict[str, int]]:
        """Per table: ``invalidations`` (writes committed) and ``bypassed`` reads."""
        with self._lock:
            return {name: dict(c) for name, c in sorted(self._tables.items())}

    def report(self) -> Report:
        return build_report("process", self.snapshot(), self.metas(), [], self.estimates())

    def estimates(self) -> dict[str, dict[str, Any]]:
        """Fingerprint -> this process's admission averages (``admission.Shape.summary``)."""
        with self._lock:
            fps = dict(self._fps)
        out = {}
        for digest, shape in list(self.shapes.items()):
            fp = fps.get(digest)
            if fp is not None and fp != OTHER:
                out[fp] = shape.summary()
        return out

    def metas(self) -> dict[str, _Meta]:
        with self._lock:
            return dict(self._meta)

    def snapshot(self) -> dict[str, float]:
        """Every counter, cumulative, as flat fields ``kind|name|counter``."""
        with self._lock:
            return self._snapshot()

    def _snapshot(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for region, c in self._regions.items():
            out[f"r|{region}|_"] = 0  # known regions show even at zero
            for k, v in c.items():
                out[f"r|{region}|{k}"] = v
        for name, c in self._tables.items():
            for k, v in c.items():
                out[f"t|{name}|{k}"] = v
        for name, c in self._classes.items():
            for k, v in c.items():
                out[f"c|{name}|{k}"] = v
        for digest, row in self._stmts.items():
            fp = self._fps[digest]
            for k, v in zip(STATEMENT_COUNTERS, row):
                if v:
                    out[f"s|{fp}|{k}"] = v
        if not self.closed:
            for digest, shape in list(self.shapes.items()):
                known = self._fps.get(digest)
                if known is not None and known != OTHER:
                    out[f"s|{known}|{ADMISSION_GAUGES[shape.describe()]}"] = 1
        return out

    def reset(self) -> None:
        """Zero this process's counters (what was not flushed yet still is)."""
        with self.flush_lock, self._lock:
            pending = _delta(self._snapshot(), self._flushed)
            for c in self._regions.values():
                c.clear()
            self._tables.clear()
            self._classes.clear()
            for row in self._stmts.values():
                for i in range(len(row)):
                    row[i] = 0.0 if STATEMENT_COUNTERS[i] == "db_seconds" else 0
            # gauges are states, not counts: the shared store holds what was flushed
            gauges = {k: v for k, v in self._flushed.items()
                      if k.rpartition("|")[2] in _GAUGE_STATE}  # fmt: skip
            self._flushed = {k: -v for k, v in pending.items()
                             if k.rpartition("|")[2] not in _GAUGE_STATE}  # fmt: skip
            self._flushed.update(gauges)


def fold_overflow(new: dict[str, Any], known: Container[str], room: int,
                  delta: dict[str, float]) -> None:  # fmt: skip
    """A shared store with ``room`` statement rows left: keep in ``new`` the
    statements it takes (those in ``known`` take none), and fold the counts of
    the others in ``delta`` into the "other" row."""
    folded: dict[str, float] = {}
    for fp in list(new):
        if fp in known or fp == OTHER:
            continue
        if room <= 0:  # full: count it as "other" in the shared store
            new.pop(fp)
            for k in list(delta):
                if k.startswith(f"s|{fp}|"):
                    field = f"s|{OTHER}|" + k.rpartition("|")[2]
                    folded[field] = folded.get(field, 0) + delta.pop(k)
            continue
        room -= 1
    for k, v in folded.items():
        delta[k] = delta.get(k, 0) + v


def unsent_metas(metas: dict[str, Any], registered: Container[str],
                 delta: dict[str, float]) -> dict[str, Any]:  # fmt: skip
    """The statement rows a flush sends: those never sent, and those whose
    counts this flush moves. The second kind makes a shared store that lost
    its rows (expired, FLUSHDB, another process's ``clear``) whole again: a
    store-side "set if missing", so it costs nothing when the row is there."""
    touched = {k.split("|", 2)[1] for k in delta if k.startswith("s|")}
    return {fp: m for fp, m in metas.items()
            if fp != OTHER and (fp not in registered or fp in touched)}  # fmt: skip


def _delta(now: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    out = {}
    for k, v in now.items():
        d = v - before.get(k, 0)
        if d:
            out[k] = d
    for k, v in before.items():
        if k not in now and v:
            out[k] = -v
    return out


def _classes(raw: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, c in sorted(raw.items()):
        hits, misses = int(c.get("hits", 0)), int(c.get("misses", 0))
        looked = hits + misses
        out[name] = {"hits": hits, "misses": misses,
                     "hit_ratio": round(hits / looked, 4) if looked else None}  # fmt: skip
    return out


def _ratio(hits: int, misses: int) -> float | None:
    looked = hits + misses
    return round(hits / looked, 4) if looked else None


def _admission_state(c: dict[str, float]) -> str | None:
    """The state the most processes report (gauges summed), and how many when they differ."""
    states = [(int(c.get(g, 0)), state) for state, g in ADMISSION_GAUGES.items()]
    states = [(n, state) for n, state in states if n > 0]
    if not states:
        return None
    states.sort(key=lambda x: -x[0])
    n, state = states[0]
    total = sum(n for n, _ in states)
    return state if n == total else f"{state} ({n} of {total} processes)"


def build_report(
    scope: str,
    fields: dict[str, float],
    metas: dict[str, Any],
    processes: list[ProcessInfo],
    estimates: dict[str, dict[str, Any]] | None = None,
) -> Report:
    """Flat fields (``kind|name|counter``: a snapshot, or the shared hash) -> a Report.

    ``estimates``: this process's admission averages per fingerprint."""
    regions: dict[str, defaultdict[str, float]] = {}
    tables: defaultdict[str, defaultdict[str, float]] = defaultdict(lambda: defaultdict(float))
    classes: dict[str, dict[str, Any]] = defaultdict(dict)
    stmts: dict[str, dict[str, float]] = defaultdict(dict)
    for field, value in fields.items():
        kind, _, rest = field.partition("|")
        name, _, counter = rest.rpartition("|")
        if kind == "r":
            regions.setdefault(name, defaultdict(float))[counter] += value
        elif kind == "t":
            tables[name][counter] += value
        elif kind == "c":
            classes[name][counter] = value
        elif kind == "s":
            stmts[name][counter] = value
    statements: list[StatementStats] = []
    saved_by_region: defaultdict[str, float] = defaultdict(float)
    for fp, c in stmts.items():
        meta = metas.get(fp)
        region, sql, stables = (meta[0], meta[1], list(meta[2])) if meta else ("?", "?", [])
        hits, misses = int(c.get("hits", 0)), int(c.get("misses", 0))
        db = float(c.get("db_seconds", 0.0))
        mean = db / misses if misses else None
        saved = hits * mean if mean is not None else 0.0
        stores = int(c.get("stores", 0))
        row: StatementStats = {
            "fingerprint": fp, "region": region, "sql": sql, "tables": stables,
            "calls": hits + misses + int(c.get("bypassed", 0)), "hits": hits, "misses": misses,
            "bypassed": int(c.get("bypassed", 0)), "stores": stores,
            "too_large": int(c.get("too_large", 0)), "not_stored": int(c.get("not_stored", 0)),
            "errors": int(c.get("errors", 0)), "hit_ratio": _ratio(hits, misses),
            "db_seconds": round(db, 6),
            "mean_miss_seconds": None if mean is None else round(mean, 6),
            "saved_seconds": round(saved, 6),
            "entry_bytes": round(c.get("bytes_stored", 0) / stores) if stores else None,
            "bypass_reasons": {k.partition(":")[2]: int(v) for k, v in sorted(c.items())
                               if k.startswith("bypassed:") and v},
            "admission": _admission_state(c), "admission_hit_ratio": None, "hit_us": None,
            "miss_us": None, "uncached_us": None, "saving_us": None, "saving_cpu_us": None,
        }  # fmt: skip
        est = (estimates or {}).get(fp)
        if est is not None:
            row.update(est)  # type: ignore[typeddict-item]
            if scope == "app":  # the shared state, this process's averages
                row["admission"] = _admission_state(c) or est["admission"]
        statements.append(row)
        saved_by_region[region] += saved
        for t in stables:
            tc = tables[t]
            tc["s_hits"] += hits
            tc["s_misses"] += misses
            tc["s_bypassed"] += row["bypassed"]
            tc["s_stores"] += stores
            tc["s_db"] += db
            tc["s_saved"] += saved
    statements.sort(key=lambda s: (-s["calls"], s["fingerprint"]))
    out_regions: dict[str, RegionStats] = {}
    for name, c in regions.items():
        r: dict[str, Any] = {k: int(c.get(k, 0)) for k in REGION_COUNTERS}
        r["hit_ratio"] = _ratio(r["hits"], r["misses"])
        r["calls"] = r["hits"] + r["misses"] + r["bypassed"] + r["uncacheable"]
        r["db_seconds"] = round(c.get("db_us", 0) / 1e6, 6)
        r["saved_seconds"] = round(saved_by_region.get(name, 0.0), 6)
        r["bytes_stored"] = int(c.get("bytes_stored", 0))
        r["bypass_reasons"] = {k.partition(":")[2]: int(v) for k, v in sorted(c.items())
                               if k.startswith("bypassed:") and v}  # fmt: skip
        out_regions[name] = r  # type: ignore[assignment]
    out_tables: dict[str, TableStats] = {}
    for name, c in sorted(tables.items()):
        out_tables[name] = {
            "hits": int(c["s_hits"]), "misses": int(c["s_misses"]),
            "bypassed": int(c["s_bypassed"]), "stores": int(c["s_stores"]),
            "db_seconds": round(float(c["s_db"]), 6),
            "saved_seconds": round(float(c["s_saved"]), 6),
            "invalidations": int(c["invalidations"]), "bypassed_by_writes": int(c["bypassed"]),
        }  # fmt: skip
    return {
        "scope": scope, "time": time.time(), "regions": out_regions, "tables": out_tables,
        "statements": statements, "classes": _classes(classes), "processes": processes,
    }  # fmt: skip


# ----------------------------------------------------------------- app-wide


class RedisStatsStore:
    """The shared counters in Redis: three hashes per namespace.

    ``{ns}:stats:c`` (field ``kind|name|counter`` -> summed value),
    ``{ns}:stats:s`` (fingerprint -> ``region\\tables\\tsql``, at most
    MAX_STATEMENTS) and ``{ns}:stats:p`` (process -> last flush time). Each
    lives APP_TTL_SECONDS after the last flush.
    """

    def __init__(self, client: Any, namespace: str):
        self.client = client
        self.counters = f"{namespace}:stats:c"
        self.statements = f"{namespace}:stats:s"
        self.processes = f"{namespace}:stats:p"
        self._registered: set[str] = set()

    def write(self, process: str, delta: dict[str, float], metas: dict[str, _Meta]) -> None:
        new = unsent_metas(metas, self._registered, delta)
        client = self.client
        if new:
            known = client.hlen(self.statements)
            room = MAX_STATEMENTS - int(known or 0)
            existing = (
                set(_str(k) for k in client.hkeys(self.statements)) if room < len(new) else set()
            )
            fold_overflow(new, existing, room, delta)
        pipe = client.pipeline(transaction=False)
        for field, value in delta.items():
            if isinstance(value, float) and not value.is_integer():
                pipe.hincrbyfloat(self.counters, field, value)
            else:
                pipe.hincrby(self.counters, field, int(value))
        for fp, meta in new.items():
            pipe.hsetnx(
                self.statements, fp, "\x1f".join([meta.region, ",".join(meta.tables), meta.sql])
            )
        if delta:
            pipe.hset(self.processes, process, repr(time.time()))
        for key in (self.counters, self.statements, self.processes):
            pipe.expire(key, APP_TTL_SECONDS)
        pipe.execute()
        self._registered.update(new)

    def read(self) -> tuple[dict[str, float], dict[str, _Meta], list[ProcessInfo]]:
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.counters)
        pipe.hgetall(self.statements)
        pipe.hgetall(self.processes)
        raw_c, raw_s, raw_p = pipe.execute()
        fields = {}
        for k, v in raw_c.items():
            s = _str(v)
            fields[_str(k)] = float(s) if "." in s or "e" in s else int(s)
        metas = {}
        for k, v in raw_s.items():
            region, tables, sql = [*_str(v).split("\x1f", 2), "", ""][:3]
            metas[_str(k)] = _Meta(region, sql, tuple(t for t in tables.split(",") if t))
        metas.setdefault(OTHER, _Meta("?", "(other statements)", ()))
        now = time.time()
        processes: list[ProcessInfo] = []
        for k, v in raw_p.items():
            last = float(_str(v))
            if now - last <= PROCESS_SEEN_SECONDS:
                processes.append({"process": _str(k), "last_flush": last,
                                  "age_seconds": round(now - last, 3)})  # fmt: skip
        processes.sort(key=lambda p: p["process"])
        return fields, metas, processes

    def clear(self) -> None:
        self.client.delete(self.counters, self.statements, self.processes)
        self._registered.clear()


def _str(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class StatsStore(Protocol):
    """Where app-wide counters are summed: :class:`RedisStatsStore`,
    :class:`~.sqlshared.SqlShared`."""

    def write(self, process: str, delta: dict[str, float], metas: dict[str, _Meta]) -> None: ...

    def read(self) -> tuple[dict[str, float], dict[str, _Meta], list[ProcessInfo]]: ...

    def clear(self) -> None: ...


class AppStats:
    """Flushes a :class:`Stats` to a shared store in the background.

    The thread holds the flusher weakly: a QueryCache dropped without
    ``close()`` stops it at its next tick.
    """

    def __init__(self, stats: Stats, store: StatsStore, interval: float):
        self.stats = stats
        self.store = store
        self.interval = interval
        self.process = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._stop = threading.Event()
        self._failing = 0.0
        self._thread: threading.Thread | None = None
        if interval > 0:
            self._thread = threading.Thread(
                target=_flusher, args=(weakref.ref(self), self._stop, interval),
                name="sqla_querycache-stats", daemon=True,
            )  # fmt: skip
            self._thread.start()

    def flush(self) -> bool:
        """Send what changed since the last flush; True if it landed (or nothing to send)."""
        with self.stats.flush_lock:
            snap = self.stats.snapshot()
            delta = _delta(snap, self.stats._flushed)
            delta = {k: v for k, v in delta.items() if not k.endswith("|_")}
            if not delta:
                return True
            try:
                self.store.write(self.process, dict(delta), self.stats.metas())
            except Exception as err:  # kept: sent with the next flush
                now = time.monotonic()
                if now - self._failing > 60:  # at most one line a minute
                    log.warning("sqla_querycache: app-wide stats not flushed: %r", err)
                self._failing = now
                return False
            if self._failing:
                log.info("sqla_querycache: app-wide stats flushed again")
                self._failing = 0.0
            self.stats._flushed = snap
            return True

    def read(self) -> Report:
        self.flush()  # this process's latest counts are part of the answer
        fields, metas, processes = self.store.read()
        for fp, meta in self.stats.metas().items():
            metas.setdefault(fp, meta)
        return build_report("app", fields, metas, processes, self.stats.estimates())

    def close(self) -> None:
        self._stop.set()
        self.stats.closed = True  # this process's admission states leave the sums
        self.flush()


def _flusher(ref: Any, stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        app = ref()
        if app is None:
            return
        try:
            app.flush()
        except Exception:  # pragma: no cover - flush() logs its own failures
            pass
        del app
