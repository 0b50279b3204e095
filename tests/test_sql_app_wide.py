"""App-wide stats and the app-wide switch with the "sql" version store.

Two real worker processes (subprocesses, each with its own QueryCache whose
versions live in the database) share Redis regions; the test process reads
their summed counters from ``querycache_stats`` and flips the app-wide
switch there, as ``sqla-querycache disable`` would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dogpile.cache import make_region
from sqlalchemy import select, text
from sqlalchemy.orm import sessionmaker

from sqla_querycache import FromCache, QueryCache
from sqla_querycache.versions import SqlVersions

from . import models
from .conftest import memory_region

ROOT = Path(__file__).resolve().parents[1]

WORKER = '''
import json, sys
from dogpile.cache import make_region
from sqlalchemy import create_engine, select
from sqlalchemy.orm import sessionmaker
from sqla_querycache import FromCache, QueryCache
from tests import models

url, redis, namespace = sys.argv[1:4]
engine = create_engine(url)
Session = sessionmaker(engine)
cache = QueryCache(
    regions={"default": make_region().configure(
        "dogpile.cache.redis", expiration_time=600, arguments={"url": redis})},
    versions=engine, namespace=namespace, stats_interval=0.2,
).install(Session)
PAGE = (select(models.Product).where(models.Product.id <= 5).order_by(models.Product.id)
        .options(FromCache()))
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    cmd = line.split()
    out = {}
    if cmd[0] == "products":
        with Session() as s:
            out["names"] = [p.name for p in s.scalars(PAGE)]
        out["stats"] = cache.stats()["default"]
    elif cmd[0] == "rename":
        with Session() as s:
            s.get(models.Product, 1).name = cmd[1]
            s.commit()
    elif cmd[0] == "state":
        out["disabled"] = cache.disabled_app_wide
    elif cmd[0] == "quit":
        cache.close()
    print(json.dumps(out), flush=True)
    if cmd[0] == "quit":
        break
'''


class Worker:
    def __init__(self, script: Path, url: str, redis_url: str, namespace: str):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, str(script), url, redis_url, namespace], cwd=ROOT, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.ask_raw() == {"ready": True}

    def ask_raw(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the worker died"
        return json.loads(line)

    def ask(self, *cmd: str) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(" ".join(cmd) + "\n")
        self.proc.stdin.flush()
        return self.ask_raw()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask("quit")
            except Exception:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def url_of(engine: Any) -> str:
    return str(engine.url.render_as_string(hide_password=False))


@pytest.fixture()
def sql_db(engine: Any) -> Iterator[Any]:
    """The populated database with the sql store's two tables (its own create path)."""
    store = SqlVersions()
    store.table.metadata.drop_all(engine)
    store.create_tables(engine)
    yield engine
    store.table.metadata.drop_all(engine)


def wait_for(fn: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def redis_cache(engine: Any, redis_url: str, namespace: str) -> QueryCache:
    region = make_region().configure("dogpile.cache.redis", expiration_time=600,
                                     arguments={"url": redis_url})  # fmt: skip
    return QueryCache(regions={"default": region}, versions=engine, namespace=namespace,
                      stats_interval=0)  # fmt: skip


def test_two_processes_sum_their_counters_and_obey_the_switch(
    sql_db: Any, redis_url: str, redis_client: Any, tmp_path: Path
) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    ns = f"qcsql{uuid.uuid4().hex[:6]}"
    a = Worker(script, url_of(sql_db), redis_url, ns)
    b = Worker(script, url_of(sql_db), redis_url, ns)
    third = redis_cache(sql_db, redis_url, ns)
    try:
        assert a.ask("products")["stats"]["misses"] == 1
        assert a.ask("products")["stats"]["hits"] == 1
        assert b.ask("products")["stats"]["hits"] == 1  # stored by a
        before = b.ask("products")
        assert before["stats"]["hits"] == 2
        names = before["names"]

        def summed() -> Any:
            r = third.report("app")
            d = r["regions"]["default"]
            return (d["hits"], d["misses"], len(r["processes"])) == (3, 1, 2) and r

        report = wait_for(summed)
        assert report, third.report("app")
        (page,) = [s for s in report["statements"] if s["tables"] == ["product"]]
        assert (page["calls"], page["hits"], page["misses"], page["stores"]) == (4, 3, 1, 1)
        assert "FROM product" in page["sql"]
        assert report["regions"]["default"]["bytes_stored"] > 0

        # the switch, from a third process: both see it within about a second
        started = time.monotonic()
        third.disable_app_wide()
        for w in (a, b):
            assert wait_for(lambda w=w: w.ask("state")["disabled"], timeout=5)
        seen = time.monotonic() - started
        assert seen < 2.5, seen  # polled once per second (SWITCH_POLL)
        off = a.ask("products")
        assert (off["stats"]["hits"], off["stats"]["misses"]) == (1, 1)  # bypassed
        assert off["names"] == names
        # writes still invalidate while disabled
        b.ask("rename", "while-off")
        assert "while-off" in a.ask("products")["names"]
        third.enable_app_wide()
        for w in (a, b):
            assert wait_for(lambda w=w: not w.ask("state")["disabled"], timeout=5)
        on = a.ask("products")
        assert "while-off" in on["names"]
        assert on["stats"]["misses"] == 2  # the old entry was invalidated: a miss
        assert a.ask("products")["stats"]["hits"] == 2  # cached again
        report = wait_for(lambda: (r := third.report("app"))["regions"]["default"]["hits"] == 4
                          and r)  # fmt: skip
        assert report, third.report("app")
        assert report["tables"]["product"]["invalidations"] >= 1
    finally:
        a.close()
        b.close()
        third.close()


def test_counts_wait_for_the_flusher_not_the_hit(sql_db: Any) -> None:
    ns = f"qcsql{uuid.uuid4().hex[:6]}"
    maker = sessionmaker(sql_db)
    cache = QueryCache(regions={"default": memory_region()}, versions=sql_db, namespace=ns,
                       stats_interval=0).install(maker)  # fmt: skip
    page = select(models.Tag).order_by(models.Tag.id).options(FromCache())

    def rows() -> int:
        with sql_db.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM querycache_stats WHERE "
                                         "namespace = :ns"), {"ns": ns}).scalar_one())  # fmt: skip

    try:
        for _ in range(5):
            with maker() as s:
                s.scalars(page).all()
        assert cache.stats()["default"]["hits"] == 4
        assert rows() == 0  # nothing was written by a lookup
        assert cache.flush_stats() is True
        assert rows() > 0
        app = cache.stats(scope="app")["default"]
        assert (app["hits"], app["misses"]) == (4, 1)
        cache.reset_stats(scope="app")
        assert cache.stats(scope="app")["default"]["hits"] == 0
    finally:
        cache.close()


def test_statement_rows_come_back_after_another_process_reset_them(sql_db: Any) -> None:
    ns = f"qcsql{uuid.uuid4().hex[:6]}"
    maker = sessionmaker(sql_db)
    cache = QueryCache(regions={"default": memory_region()}, versions=sql_db, namespace=ns,
                       stats_interval=0).install(maker)  # fmt: skip
    other = QueryCache(regions={"default": memory_region()}, versions=sql_db, namespace=ns,
                       stats_interval=0)  # fmt: skip
    page = select(models.Tag).order_by(models.Tag.id).options(FromCache())
    try:
        with maker() as s:
            s.scalars(page).all()
        assert cache.flush_stats() is True
        other.reset_stats(scope="app")
        for _ in range(2):
            with maker() as s:
                s.scalars(page).all()
        assert cache.flush_stats() is True
        stmts = other.report("app")["statements"]
        assert [(s["tables"], s["hits"]) for s in stmts] == [(["tag"], 2)]
    finally:
        cache.close()
        other.close()


def test_statements_are_bounded_in_the_sql_store(sql_db: Any, monkeypatch: Any) -> None:
    """Past the bound, a new statement's counts go to the "other" row."""
    from sqla_querycache import sqlshared

    monkeypatch.setattr(sqlshared, "MAX_STATEMENTS", 2)
    ns = f"qcsql{uuid.uuid4().hex[:6]}"
    maker = sessionmaker(sql_db)
    cache = QueryCache(regions={"default": memory_region()}, versions=sql_db, namespace=ns,
                       stats_interval=0).install(maker)  # fmt: skip
    try:
        for entity in (models.Tag, models.Customer, models.Category):
            with maker() as s:  # a session each (MariaDB's snapshot rule)
                s.scalars(select(entity).options(FromCache())).all()
        assert cache.flush_stats() is True
        report = cache.report("app")
        fps = [st["fingerprint"] for st in report["statements"]]
        assert len(fps) == 3 and "other" in fps
        other = next(st for st in report["statements"] if st["fingerprint"] == "other")
        assert other["misses"] == 1
    finally:
        cache.close()


def test_no_stats_table_costs_the_stats_not_the_cache(engine: Any, caplog: Any) -> None:
    import logging

    logging.getLogger("sqla_querycache").disabled = False  # see test_sql_versions
    store = SqlVersions()
    store.table.metadata.drop_all(engine)
    store.table.create(engine)  # only qc0001's table: qc0002 not migrated yet
    maker = sessionmaker(engine)
    cache = QueryCache(regions={"default": memory_region()}, versions=engine,
                       stats_interval=0).install(maker)  # fmt: skip
    page = select(models.Tag).order_by(models.Tag.id).options(FromCache())
    try:
        time.sleep(1.2)  # the switch watcher has failed to read at least once
        for _ in range(3):
            with maker() as s:
                s.scalars(page).all()
        assert cache.stats()["default"]["hits"] == 2  # lookups never bypassed
        assert cache.flush_stats() is False  # kept for the next flush
        assert not cache.disabled_app_wide
        assert "app-wide stats not flushed" in caplog.text
        store.stats_table.create(engine)  # qc0002 migrated: after the retry delay...
        assert cache.flush_stats() is False  # ...not before (no connection a second)
        cache._shared._down_until = 0.0  # the delay is over
        assert cache.flush_stats() is True
        app = cache.stats(scope="app")["default"]
        assert (app["hits"], app["misses"]) == (2, 1)  # nothing lost meanwhile
    finally:
        cache.close()
        store.table.metadata.drop_all(engine)


def test_processes_flushing_at_once_never_lose_a_flush(sql_db: Any) -> None:
    """Flushes that meet are contention, not an outage: none fails, none waits out
    the retry pause. (On SQLite two flushes that each read the statement rows and
    then write deadlock on the lock upgrade: one got "database is locked" at once,
    and the process then skipped the database for ``RETRY_SECONDS``; CI saw a
    worker's counts missing for 10 s.)"""
    import threading

    from sqlalchemy import literal_column

    ns = f"qcsql{uuid.uuid4().hex[:6]}"
    workers, rounds = 3, 6
    caches, makers = [], []
    for _ in range(workers):
        maker = sessionmaker(sql_db)
        caches.append(QueryCache(regions={"default": memory_region()}, versions=sql_db,
                                 namespace=ns, stats_interval=0).install(maker))  # fmt: skip
        makers.append(maker)
    barrier = threading.Barrier(workers)
    failed: list[str] = []

    def work(i: int) -> None:
        for r in range(rounds):
            # a statement no process flushed before: the flush reads, then writes
            stmt = select(models.Tag.id, literal_column(f"{i * 100 + r}")).options(FromCache())
            with makers[i]() as s:
                s.execute(stmt).all()
            barrier.wait()
            if not caches[i].flush_stats():
                failed.append(f"worker {i} round {r}")

    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not failed, failed
        app = caches[0].stats(scope="app")["default"]
        assert app["misses"] == workers * rounds
    finally:
        for c in caches:
            c.close()
