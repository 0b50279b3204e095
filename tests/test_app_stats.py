"""App-wide stats: counters of several processes summed through the shared Redis.

Two QueryCache instances installed on two Session classes stand for two
worker processes (each has its own counters and its own background flusher,
exactly as two processes would); a third instance, never installed, reads
the sums with ``stats(scope="app")`` and the CLI (a real subprocess) does too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session, sessionmaker

from sqla_querycache import ConfigurationError, FromCache, QueryCache, stats
from sqla_querycache.stats import RedisStatsStore, display_tables, table_of

from . import models
from .conftest import memory_region, redis_region

ROOT = Path(__file__).resolve().parents[1]


class Worker:
    """One "process": its own QueryCache, installed on its own Session class."""

    def __init__(self, engine: Any, redis_url: str, interval: float = 0.2):
        self.session_class = type("WorkerSession", (Session,), {})
        self.Session = sessionmaker(engine, class_=self.session_class)
        self.cache = QueryCache(
            regions={"default": redis_region(redis_url), "hot": memory_region()},
            versions=redis_url, stats_interval=interval,
        ).install(self.session_class)  # fmt: skip

    def products(self, upto: int = 5) -> None:
        with self.Session() as s:
            s.scalars(select(models.Product).where(models.Product.id <= upto)
                      .options(FromCache())).all()  # fmt: skip

    def tags(self) -> None:
        with self.Session() as s:
            s.scalars(select(models.Tag).options(FromCache("hot"))).all()

    def close(self) -> None:
        self.cache.close()


@pytest.fixture()
def db(tmp_path: Path) -> Iterator[Any]:
    engine = create_engine(f"sqlite:///{tmp_path}/app.db")
    models.Base.metadata.create_all(engine)
    with Session(engine) as s:
        models.populate(s)
    yield engine
    engine.dispose()


@pytest.fixture()
def workers(db: Any, redis_url: str, redis_client: Any) -> Iterator[tuple[Worker, Worker]]:
    a, b = Worker(db, redis_url), Worker(db, redis_url)
    yield a, b
    a.close()
    b.close()


def reader(redis_url: str) -> QueryCache:
    """The third process: same configuration, nothing installed, no queries."""
    return QueryCache(regions={"default": redis_region(redis_url), "hot": memory_region()},
                      versions=redis_url, stats_interval=0)  # fmt: skip


def wait_for(fn: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def test_two_processes_counters_summed_in_a_third(workers: Any, redis_url: str) -> None:
    a, b = workers
    a.products()  # miss, stored
    a.products()  # hit
    b.products()  # hit (stored by a)
    b.products()  # hit
    b.tags()  # miss in b's memory region
    b.tags()  # hit
    # process-local stays the default: each sees only its own
    assert a.cache.stats()["default"]["hits"] == 1 and a.cache.stats()["default"]["misses"] == 1
    assert b.cache.stats()["default"]["hits"] == 2 and b.cache.stats()["default"]["misses"] == 0

    third = reader(redis_url)
    try:
        # nobody called flush: the background flushers (every 0.2 s) deliver
        app = wait_for(lambda: (s := third.stats(scope="app"))["default"]["hits"] == 3
                       and s["hot"]["hits"] == 1 and s)  # fmt: skip
        assert app, third.stats(scope="app")
        d = app["default"]
        assert (d["hits"], d["misses"], d["stores"], d["calls"]) == (3, 1, 1, 4)
        assert d["hit_ratio"] == 0.75 and d["db_seconds"] > 0 and d["bytes_stored"] > 0
        assert d["saved_seconds"] == pytest.approx(3 * d["db_seconds"], rel=0.01)
        assert (app["hot"]["hits"], app["hot"]["misses"]) == (1, 1)
        assert third.stats()["default"]["hits"] == 0  # its own: nothing

        report = third.report("app")
        assert report["scope"] == "app"
        assert len(report["processes"]) == 2  # a and b; the reader has counted nothing
        (product,) = [s for s in report["statements"] if s["tables"] == ["product"]]
        assert "FROM product" in product["sql"] and len(product["fingerprint"]) == 16
        assert (product["calls"], product["hits"], product["misses"], product["stores"]) == (
            4,
            3,
            1,
            1,
        )
        assert product["entry_bytes"] == d["bytes_stored"]
        assert product["mean_miss_seconds"] == pytest.approx(d["db_seconds"], rel=0.01)
        assert report["tables"]["product"]["hits"] == 3
        assert report["tables"]["tag"]["hits"] == 1 and report["tables"]["tag"]["misses"] == 1
    finally:
        third.close()


def test_counters_are_flushed_in_batches_not_per_hit(
    db: Any, redis_url: str, redis_client: Any
) -> None:
    """With no flusher (interval 0), nothing reaches Redis until a flush."""
    w = Worker(db, redis_url, interval=0)
    try:
        w.products()
        w.products()
        assert redis_client.exists("qc:stats:c") == 0  # hits incremented local counters only
        assert w.cache.flush_stats() is True
        fields = redis_client.hgetall("qc:stats:c")
        assert int(fields[b"r|default|hits"]) == 1 and int(fields[b"r|default|misses"]) == 1
        w.products()
        w.cache.flush_stats()  # only the difference is sent
        assert int(redis_client.hget("qc:stats:c", "r|default|hits")) == 2
        assert w.cache.flush_stats() is True  # nothing new: nothing sent
        assert int(redis_client.hget("qc:stats:c", "r|default|hits")) == 2
        # a process-local reset does not take back what the app counted
        w.products()
        w.cache.reset_stats()
        assert w.cache.stats()["default"]["hits"] == 0
        w.cache.flush_stats()
        assert int(redis_client.hget("qc:stats:c", "r|default|hits")) == 3
        assert w.cache.stats(scope="app")["default"]["hits"] == 3
        assert redis_client.ttl("qc:stats:c") > 86400  # every key we write expires
        w.cache.reset_stats(scope="app")
        assert w.cache.stats(scope="app")["default"]["hits"] == 0
    finally:
        w.close()


def test_close_flushes_the_last_counts(db: Any, redis_url: str, redis_client: Any) -> None:
    w = Worker(db, redis_url, interval=3600)
    w.products()
    w.products()
    w.close()
    assert int(redis_client.hget("qc:stats:c", "r|default|hits")) == 1


def test_a_store_outage_keeps_the_counts_for_the_next_flush(
    db: Any, redis_url: str, redis_client: Any, caplog: Any
) -> None:
    w = Worker(db, redis_url, interval=0)
    app = w.cache._app_stats
    assert app is not None
    import redis

    good = app.store
    app.store = RedisStatsStore(redis.Redis(port=1, socket_timeout=0.2), "qc")  # nobody there
    try:
        w.products()
        w.products()
        assert w.cache.flush_stats() is False
        assert "app-wide stats not flushed" in caplog.text
        app.store = good
        w.products()
        assert w.cache.flush_stats() is True
        assert int(redis_client.hget("qc:stats:c", "r|default|hits")) == 2
        assert int(redis_client.hget("qc:stats:c", "r|default|misses")) == 1
    finally:
        app.store = good
        w.close()


@pytest.mark.parametrize("loss", ["flushdb", "reset by another process"])
def test_statement_rows_come_back_after_the_store_lost_them(
    db: Any, redis_url: str, redis_client: Any, loss: str
) -> None:
    """A process that sent a statement's row once must send it again when the
    shared store lost it (FLUSHDB, expiry, ``reset_stats`` elsewhere): its
    counts would otherwise show forever as a statement with no SQL and no
    tables."""
    w = Worker(db, redis_url, interval=0)
    other = reader(redis_url)
    try:
        w.products()
        assert w.cache.flush_stats() is True
        if loss == "flushdb":
            redis_client.flushdb()
        else:
            other.reset_stats(scope="app")
        w.products()
        w.products()
        assert w.cache.flush_stats() is True
        stmts = other.report("app")["statements"]
        hits = 1 if loss == "flushdb" else 2  # FLUSHDB took the entry too: a miss, then a hit
        assert [(s["tables"], s["hits"]) for s in stmts] == [(["product"], hits)]
        assert "FROM product" in stmts[0]["sql"]
    finally:
        w.close()
        other.close()


def test_bypass_reasons_and_table_invalidations(workers: Any, redis_url: str) -> None:
    a, _ = workers
    a.products()
    with a.Session() as s:
        s.get(models.Product, 1).name = "renamed"
        s.flush()  # written in this transaction: its reads of product bypass
        s.scalars(select(models.Product).options(FromCache())).all()
        s.commit()
    d = a.cache.stats()["default"]
    assert d["bypassed"] == 1 and d["bypass_reasons"] == {"written": 1}
    a.cache.flush_stats()
    report = a.cache.report("app")
    assert report["regions"]["default"]["bypass_reasons"] == {"written": 1}
    assert report["tables"]["product"]["invalidations"] == 1  # one commit, once per table
    assert report["tables"]["product"]["bypassed_by_writes"] == 1
    # internal names never show as tables
    assert not [t for t in report["tables"] if not t.isidentifier()]


def test_internal_and_row_level_names_fold_into_tables() -> None:
    assert table_of("product#7") == "product" and table_of("product@rows") == "product"
    assert table_of("order_item[order_id=3]") == "order_item" and table_of("@all") is None
    assert display_tables(["@all", "@any", "@region:x", "t#7", "t@rows", "t[fk=1]", "u"]) == [
        "t", "u"]  # fmt: skip


def test_hooks_see_every_event_and_cannot_break_a_query(workers: Any, caplog: Any) -> None:
    a, _ = workers
    seen: list[Any] = []
    for kind in ("on_hit", "on_miss", "on_store", "on_invalidate", "on_error"):
        getattr(a.cache.hooks, kind)(seen.append)

    @a.cache.hooks.on_hit
    def broken(event: Any) -> None:
        raise RuntimeError("a hook's bug")

    a.products()
    a.products()  # the hit: the broken hook is logged, the query answers
    a.cache.invalidate(models.Product)
    kinds = [e.kind for e in seen]
    assert kinds == ["miss", "store", "hit", "invalidate"]
    miss, store, hit, inv = seen
    assert miss.seconds > 0 and miss.tables == ("product",) and miss.region == "default"
    assert store.nbytes > 0 and hit.statement == miss.statement and len(hit.statement) == 16
    assert inv.tables == ("product",)
    assert "a hook's bug" in caplog.text
    a.cache.hooks.remove(broken)
    a.cache.hooks.remove(seen.append)
    a.products()
    assert len(seen) == 4


def test_error_hook(db: Any, redis_url: str, redis_client: Any) -> None:
    session_class = type("S", (Session,), {})
    cache = QueryCache(regions={"default": redis_region("redis://127.0.0.1:1/0")},
                       versions=redis_url).install(session_class)  # fmt: skip
    errors: list[Any] = []
    cache.hooks.on_error(errors.append)
    try:
        with sessionmaker(db, class_=session_class)() as s:
            assert len(s.scalars(select(models.Tag).options(FromCache())).all()) == 5
        assert errors and errors[0].kind == "error" and errors[0].error is not None
        assert cache.stats()["default"]["errors"] >= 1
    finally:
        cache.close()


def test_statements_are_bounded(workers: Any, monkeypatch: Any) -> None:
    a, _ = workers
    monkeypatch.setattr(stats, "MAX_STATEMENTS", 2)
    for upto in (1, 2, 3, 4):  # the same shape: one statement
        a.products(upto)
    a.tags()
    with a.Session() as s:
        s.scalars(select(models.Customer).options(FromCache())).all()
        s.scalars(select(models.Category).options(FromCache())).all()
    report = a.cache.report()
    fps = [s["fingerprint"] for s in report["statements"]]
    assert len(fps) == 3 and "other" in fps
    other = next(s for s in report["statements"] if s["fingerprint"] == "other")
    assert other["misses"] == 2


def test_app_scope_needs_a_shared_store() -> None:
    cache = QueryCache(regions={"default": memory_region()})
    assert cache.stats()["default"]["hits"] == 0
    with pytest.raises(ConfigurationError, match="only scope='process'"):
        cache.stats(scope="app")
    with pytest.raises(ConfigurationError, match="scope must be"):
        cache.stats(scope="everything")
    with pytest.raises(ConfigurationError, match="stats_interval"):
        QueryCache(regions={"default": memory_region()}, stats_interval=-1)


# --------------------------------------------------------------- the CLI

APP = """
from dogpile.cache import make_region
from sqla_querycache import QueryCache

cache = QueryCache(
    regions={{
        "default": make_region().configure("dogpile.cache.redis", expiration_time=600,
                                           arguments={{"url": {url!r}}}),
        "hot": make_region().configure("dogpile.cache.memory"),
    }},
    versions={url!r},
)
"""


def cli(tmp_path: Path, *args: str) -> Any:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    proc = subprocess.run(
        [sys.executable, "-m", "sqla_querycache.cli", *args, "--cache", "qc_stats_app:cache",
         "--json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    if args[0] == "top":  # one JSON document a line, one line a refresh
        return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return [json.loads(proc.stdout)]


def test_the_cli_in_a_third_process_shows_the_sums(
    workers: Any, redis_url: str, tmp_path: Path
) -> None:
    (tmp_path / "qc_stats_app.py").write_text(APP.format(url=redis_url))
    a, b = workers
    a.products()
    b.products()
    b.products()
    a.cache.flush_stats()
    b.cache.flush_stats()

    (regions,) = cli(tmp_path, "stats")
    d = next(r for r in regions if r["region"] == "default")
    assert (d["scope"], d["hits"], d["misses"], d["calls"]) == ("app", 2, 1, 3)
    (stmts,) = cli(tmp_path, "stats", "--by", "statement")
    (product,) = [s for s in stmts if s["tables"] == "product"]
    assert (product["calls"], product["hits"]) == (3, 2) and "FROM product" in product["sql"]
    (tables,) = cli(tmp_path, "stats", "--by", "table")
    assert {t["table"]: t["hits"] for t in tables} == {"product": 2}
    (procs,) = cli(tmp_path, "stats", "--by", "process")
    assert len(procs) == 2

    # top refreshes: the second refresh shows the rate of what happened between
    frames = cli(tmp_path, "top", "--iterations", "2", "--interval", "0.1")
    assert len(frames) == 2 and frames[0][0]["calls"] == 3
    assert frames[0][0]["calls_per_s"] is None and frames[1][0]["calls_per_s"] == 0
    (regions_rows,) = cli(tmp_path, "regions")
    assert next(r for r in regions_rows if r["region"] == "default")["hits"] == 2
