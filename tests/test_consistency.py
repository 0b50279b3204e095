"""Races, snapshots and stampedes, driven deterministically by engine events.

The populate/invalidate race: a reader reads versions, queries, and stores;
a writer commits somewhere in between. Whatever the interleaving, a read
that starts after the writer's commit returned must see the write (I1).
"""

from __future__ import annotations

import multiprocessing
import threading

import pytest
from sqlalchemy import event, select, update
from sqlalchemy.orm import Session, sessionmaker

from sqla_querycache import FromCache, QueryCache

from .conftest import StatementCounter, redis_region
from .models import Customer, Product

PAGE = select(Product).where(Product.category_id == 2).order_by(Product.id).options(FromCache())


def page_names(engine):
    with Session(engine) as s:
        return [p.name for p in s.scalars(PAGE)]


def commit_rename(engine, name):
    with Session(engine) as s:
        s.execute(update(Product).where(Product.id == 5).values(name=name))
        s.commit()


def _once_on_page_query(engine, when, action):
    """Run ``action`` once, at ``when`` of the next SELECT on product."""
    fired = []

    def hook(conn, cursor, statement, parameters, context, executemany):
        if not fired and statement.lstrip().upper().startswith("SELECT") and "product" in statement:
            fired.append(True)
            action()

    event.listen(engine, when, hook)
    return lambda: event.remove(engine, when, hook)


@pytest.mark.parametrize("when", ["before_cursor_execute", "after_cursor_execute"])
def test_writer_commits_while_reader_misses(engine, sql, cache, when):
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite locks the file while the reader's cursor is open")
    remove = _once_on_page_query(engine, when, lambda: commit_rename(engine, "raced"))
    try:
        page_names(engine)  # the racing miss; it may store, but never reachably stale
    finally:
        remove()
    assert "raced" in page_names(engine)  # starts after the commit returned
    assert "raced" in page_names(engine)


def test_snapshot_transaction_does_not_store(engine, sql, cache):
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite has no snapshot isolation for reads")
    level = {"postgresql": "REPEATABLE READ", "mysql": "REPEATABLE READ"}[engine.dialect.name]
    snap = engine.execution_options(isolation_level=level)
    with Session(snap) as old:
        old.scalars(select(Customer)).all()  # the snapshot is taken here
        commit_rename(engine, "after snapshot")
        in_snapshot = [p.name for p in old.scalars(PAGE)]
        assert "after snapshot" not in in_snapshot  # what the snapshot must see
    assert "after snapshot" in page_names(engine)  # nobody got the snapshot's rows
    assert cache.stats()["default"]["bypassed"] >= 1


def test_twelve_threads_missing_one_key_query_once(sqlite_engine):
    cache = QueryCache(regions={"default": {"backend": "dogpile.cache.memory"}})
    maker = sessionmaker(sqlite_engine)
    cache.install(maker)
    counter = StatementCounter(sqlite_engine)
    barrier = threading.Barrier(12)
    results, errors = [], []

    def slow(conn, cursor, statement, parameters, context, executemany):
        if "FROM product" in statement:
            threading.Event().wait(0.2)  # widen the window every thread races into

    event.listen(sqlite_engine, "before_cursor_execute", slow)

    def work():
        try:
            barrier.wait()
            with maker() as s:
                results.append([p.id for p in s.scalars(PAGE)])
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(12)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        event.remove(sqlite_engine, "before_cursor_execute", slow)
        counter.close()
        cache.uninstall()
    assert not errors
    assert len(results) == 12 and all(r == results[0] for r in results)
    assert sum("FROM product" in s for s in counter.statements) == 1
    stats = cache.stats()["default"]
    assert stats["stores"] == 1 and stats["hits"] == 11


def _process_reader(db_url, redis_url, barrier, out):
    from sqlalchemy import create_engine

    engine = create_engine(db_url)
    cache = QueryCache(regions={"default": redis_region(redis_url, distributed_lock=True,
                                                        thread_local_lock=False)},
                       versions=redis_url)  # fmt: skip
    maker = sessionmaker(engine)
    cache.install(maker)
    counter = StatementCounter(engine)

    def slow(conn, cursor, statement, parameters, context, executemany):
        if "FROM product" in statement:
            threading.Event().wait(0.3)

    event.listen(engine, "before_cursor_execute", slow)
    barrier.wait()
    with maker() as s:
        ids = [p.id for p in s.scalars(PAGE)]
    out.put((ids, sum("FROM product" in st for st in counter.statements)))


def test_processes_share_a_distributed_lock(sqlite_engine, redis_url, redis_client):
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_process_reader,
                         args=(str(sqlite_engine.url), redis_url, barrier, out))
             for _ in range(4)]  # fmt: skip
    for p in procs:
        p.start()
    got = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(10)
    assert all(ids == got[0][0] for ids, _ in got) and got[0][0]
    assert sum(n for _, n in got) == 1, got
