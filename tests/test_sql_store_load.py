"""The "sql" version store under load: its own connections, no hot row, first-call bumps.

Real PostgreSQL, MariaDB and SQLite (a file). The versions table is created
here from the store's own ``Table`` (the alembic branch has its own tests in
test_sql_versions.py).
"""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import create_engine, event, select, text, update
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from sqla_querycache import FromCache, QueryCache
from sqla_querycache.exc import ConfigurationError
from sqla_querycache.versions import SqlVersions, Unavailable

from .conftest import StatementCounter
from .models import Customer, Product

PAGE = select(Product).where(Product.category_id == 2).order_by(Product.id).options(FromCache())
MEMORY = {"default": {"backend": "dogpile.cache.memory"}}


def url_of(engine):
    return engine.url.render_as_string(hide_password=False)


@pytest.fixture()
def versions_db(engine):
    """``engine`` with the store's table (and nothing left in it by an earlier run)."""
    table = SqlVersions().table
    table.drop(engine, checkfirst=True)
    table.create(engine)
    yield engine
    table.drop(engine, checkfirst=True)


def version_rows(engine):
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT name, version FROM querycache_versions")).all())


def raw_update(engine, sql):
    """A write no cache sees (a raw DBAPI cursor: no SQLAlchemy event fires)."""
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute(sql)
        cur.close()
        raw.commit()
    finally:
        raw.close()


# --------------------------------------------------------------- pool exhaustion


def test_lookups_never_take_a_second_application_connection(versions_db):
    """8 threads, an application pool of 2 without overflow, every session holding its
    connection when it looks up: all succeed, hits are served, and the application pool
    is checked out exactly once per session (the versions are read elsewhere)."""
    kw = {} if versions_db.dialect.name == "sqlite" else {"isolation_level": "READ COMMITTED"}
    app = create_engine(url_of(versions_db), pool_size=2, max_overflow=0, pool_timeout=10, **kw)
    checkouts = []

    def on_checkout(dbapi_conn, record, proxy):  # the store's pool copies app listeners
        if proxy._pool is app.pool:
            checkouts.append(1)

    event.listen(app, "checkout", on_checkout)
    cache = QueryCache(regions=MEMORY, versions="sql")
    maker = sessionmaker(app)
    cache.install(maker)
    threads, sessions_per_thread = 8, 6
    errors: list[BaseException] = []
    slowest = [0.0]
    start = threading.Barrier(threads)

    def work():
        try:
            start.wait()
            for _ in range(sessions_per_thread):
                t0 = time.monotonic()
                with maker() as s:
                    s.execute(select(Customer.id).limit(1)).all()  # holds its connection now
                    got = [p.id for p in s.scalars(PAGE)]
                    assert got == [p for p in range(1, 41) if p % 4 + 1 == 2]
                slowest[0] = max(slowest[0], time.monotonic() - t0)
        except BaseException as err:
            errors.append(err)

    try:
        with maker() as s:  # warm: the entry exists, version rows exist
            s.scalars(PAGE).all()
        checkouts.clear()
        cache.reset_stats()
        pool = [threading.Thread(target=work) for _ in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join(120)
        assert not errors, errors
        stats = cache.stats()["default"]
        assert stats["errors"] == 0 and stats["bypassed"] == 0, stats
        assert stats["hits"] == threads * sessions_per_thread, stats
        assert len(checkouts) == threads * sessions_per_thread  # one per session, no more
        assert slowest[0] < 10  # never waited out the application's pool timeout
    finally:
        cache.close()
        app.dispose()


def test_a_busy_store_pool_bypasses_instead_of_waiting(versions_db):
    """The store's own pool exhausted: the lookup waits at most pool_timeout, then the
    query runs uncached and returns the right rows."""
    store = SqlVersions(versions_db, pool_size=1, max_overflow=0, pool_timeout=0.05)
    cache = QueryCache(regions=MEMORY, versions=store)
    maker = sessionmaker(versions_db)
    cache.install(maker)
    try:
        with maker() as s:
            expected = [p.id for p in s.scalars(PAGE)]
        held = store._source(versions_db).pool.connect()  # the store's only connection
        try:
            cache.reset_stats()
            t0 = time.monotonic()
            with maker() as s:
                assert [p.id for p in s.scalars(PAGE)] == expected
            assert time.monotonic() - t0 < 5
            stats = cache.stats()["default"]
            assert stats["hits"] == 0 and stats["errors"] == 1, stats
        finally:
            held.close()
        with maker() as s:
            assert [p.id for p in s.scalars(PAGE)] == expected
        assert cache.stats()["default"]["hits"] == 1  # busy is not an outage: no cool-down
    finally:
        cache.close()


# ------------------------------------------------------------------ no hot row


@pytest.mark.parametrize("other_table", [False, True], ids=["same-table", "other-table"])
def test_commits_of_unrelated_tables_do_not_wait_for_each_other(versions_db, other_table):
    """A holds its transaction open right after its bump (inside its commit); B's commit
    of another table completes at once. Control: B writing A's table does wait."""
    if versions_db.dialect.name == "sqlite":
        pytest.skip("SQLite has one writer at a time whatever the rows")
    cache = QueryCache(regions=MEMORY, versions="sql")
    maker = sessionmaker(versions_db)
    cache.install(maker)
    bumped, release = threading.Event(), threading.Event()

    def hold(conn):  # instance listener: runs after the cache's (class-level) one
        if conn.info.get("hold_me"):
            bumped.set()
            release.wait(30)

    event.listen(versions_db, "commit", hold)
    results: dict[str, object] = {}
    threads: list[threading.Thread] = []

    def writer_a():
        try:
            with maker() as s:
                s.connection().info["hold_me"] = True
                s.get(Customer, 1).name = "A"
                s.commit()
            results["a"] = "ok"
        except BaseException as err:
            results["a"] = err

    def writer_b():
        try:
            t0 = time.monotonic()
            with maker() as s:
                if other_table:
                    s.execute(update(Product).where(Product.id == 3).values(name="B"))
                else:
                    s.execute(update(Customer).where(Customer.id == 2).values(name="B"))
                s.commit()
            results["b"] = time.monotonic() - t0
        except BaseException as err:
            results["b"] = err

    try:
        with maker() as s:  # the version rows exist before the race (first bumps insert)
            s.get(Customer, 1).name = "warm"
            s.execute(update(Product).where(Product.id == 3).values(name="warm"))
            s.commit()
        before = version_rows(versions_db)
        a = threading.Thread(target=writer_a)
        threads.append(a)
        a.start()
        assert bumped.wait(30)
        b = threading.Thread(target=writer_b)
        threads.append(b)
        b.start()
        b.join(3.0)
        if other_table:
            assert not b.is_alive(), "B's commit waited for A's open transaction"
            assert isinstance(results["b"], float) and results["b"] < 3.0, results
        else:
            assert b.is_alive(), "control: B should wait for A's lock on the customer row"
        release.set()
        a.join(30)
        b.join(30)
        assert results["a"] == "ok" and isinstance(results["b"], float), results
        after = version_rows(versions_db)
        assert after["customer"] == before["customer"] + (1 if other_table else 2)
        if other_table:
            assert after["product"] == before["product"] + 1
        assert "@any" not in after  # no row every commit would lock
    finally:
        release.set()
        for t in threads:
            t.join(30)
        event.remove(versions_db, "commit", hold)
        cache.close()


def test_any_is_derived_from_every_row(versions_db):
    """Reads that depend on @any see every commit, though no commit writes an @any row."""
    store = SqlVersions(versions_db)
    try:
        first = store.read(["@any", "product"], versions_db)
        assert store.read(["@any", "product"], versions_db) == first  # stable while idle
        with versions_db.begin() as conn:  # a commit of an unrelated table
            store.begin_write(("@any", "customer"), conn)
        second = store.read(["@any", "product"], versions_db)
        assert second[0] != first[0] and second[1] == first[1]
        assert "@any" not in version_rows(versions_db)
        store.bump(["@any"])  # alone, it needs a row of its own to change
        assert "@any" in version_rows(versions_db)
        assert store.read(["@any"], versions_db)[0] != second[0]
    finally:
        store.close()


# ------------------------------------------------------------------ first call


def test_invalidate_from_a_fresh_cache_reaches_other_caches(versions_db):
    """A process that has never read or written (here a second QueryCache, never
    installed) invalidates at its first call when it was given the engine."""
    cache = QueryCache(regions=MEMORY, versions="sql")
    maker = sessionmaker(versions_db)
    cache.install(maker)
    counter = StatementCounter(versions_db)
    try:
        with maker() as s:
            s.scalars(PAGE).all()
        raw_update(versions_db, "UPDATE product SET name = 'outside' WHERE id = 5")
        with maker() as s:
            assert "outside" not in [p.name for p in s.scalars(PAGE)]  # not seen: a hit
        for versions in (SqlVersions(engine=versions_db), versions_db):
            fresh = QueryCache(regions=MEMORY, versions=versions)
            assert fresh.versions.kind == "sql"
            assert fresh.invalidate(Product)  # its very first call
            fresh.close()
            mark = counter.count
            with maker() as s:
                assert "outside" in [p.name for p in s.scalars(PAGE)]
            assert counter.since(mark) == 1  # the query ran: the entry was invalidated
    finally:
        counter.close()
        cache.close()


def test_invalidate_without_a_database_is_an_error_not_a_drop():
    fresh = QueryCache(regions=MEMORY, versions="sql")
    with pytest.raises(ConfigurationError, match="knows no database"):
        fresh.invalidate(Product)
    with pytest.raises(ConfigurationError):
        fresh.invalidate_all()
    assert not fresh._writer.failed  # nothing silently queued either


def test_the_store_learns_its_database_from_a_write(versions_db):
    """A fresh process whose first act is a commit (Core, outside any session) can
    invalidate right after: the store learned the engine from the writing connection."""
    cache = QueryCache(regions=MEMORY, versions="sql")
    cache.install(sessionmaker(versions_db))
    try:
        with versions_db.begin() as conn:
            conn.execute(update(Customer).where(Customer.id == 1).values(name="core"))
        before = version_rows(versions_db)
        cache.invalidate(tables=["customer"])
        assert version_rows(versions_db)["customer"] == before["customer"] + 1
    finally:
        cache.close()


def test_autocommit_write_in_a_fresh_process_bumps_before_and_after(versions_db):
    """A statement that commits by itself has no transaction to carry the bump: the
    store bumps on its own connection before and after it, with no earlier read."""
    seed = SqlVersions(versions_db)
    before = seed.read(["product"], versions_db)[0]
    seed.close()
    cache = QueryCache(regions=MEMORY, versions="sql")  # has seen no database
    maker = sessionmaker(versions_db)
    cache.install(maker)
    try:
        with versions_db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(update(Product).where(Product.id == 5).values(name="first"))
        assert version_rows(versions_db)["product"] == before + 2
        assert not cache._writer.failed
        with maker() as s:
            assert "first" in [p.name for p in s.scalars(PAGE)]
        with versions_db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(update(Product).where(Product.id == 5).values(name="second"))
        with maker() as s:
            assert "second" in [p.name for p in s.scalars(PAGE)]
        assert version_rows(versions_db)["product"] == before + 4
    finally:
        cache.close()


# --------------------------------------------------------------------- outages


def test_versions_table_missing_bypasses_the_lookup(versions_db):
    """The versions table unreachable: lookups run the query uncached, never raise; the
    store skips the database for ``cooldown`` after a failure, then caches again."""
    store = SqlVersions(versions_db, cooldown=0.3)
    cache = QueryCache(regions=MEMORY, versions=store)
    maker = sessionmaker(versions_db)
    cache.install(maker)
    counter = StatementCounter(versions_db)
    try:
        with maker() as s:
            expected = [p.name for p in s.scalars(PAGE)]
        SqlVersions().table.drop(versions_db)
        raw_update(versions_db, "UPDATE product SET name = 'during' WHERE id = 5")
        expected = [("during" if n.startswith("Product 05") else n) for n in expected]
        cache.reset_stats()
        mark = counter.count
        for _ in range(3):
            with maker() as s:
                assert [p.name for p in s.scalars(PAGE)] == expected
        assert counter.since(mark) == 3  # every one ran: no hit without versions
        stats = cache.stats()["default"]
        assert stats["hits"] == 0 and stats["stores"] == 0, stats
        SqlVersions().table.create(versions_db)
        time.sleep(0.35)  # the cool-down
        for _ in range(2):
            with maker() as s:
                assert [p.name for p in s.scalars(PAGE)] == expected
        assert cache.stats()["default"]["hits"] == 1
    finally:
        counter.close()
        cache.close()


def test_read_raises_only_unavailable(versions_db):
    store = SqlVersions(versions_db)
    try:
        SqlVersions().table.drop(versions_db)
        with pytest.raises(Unavailable):
            store.read(["product"], versions_db)
        with pytest.raises(Unavailable):  # cooling down: refused without a round trip
            store.read(["product"], versions_db)
    finally:
        store.close()


# ----------------------------------------------------------------- configuration


def test_configuration_is_checked_at_construction(sqlite_engine):
    for bad in ({"pool_size": 0}, {"max_overflow": -1}, {"pool_timeout": float("nan")},
                {"pool_size": True}, {"table_name": ""}, {"cooldown": -1}):  # fmt: skip
        with pytest.raises(ConfigurationError):
            SqlVersions(**bad)
    with pytest.raises(ConfigurationError, match="Engine"):
        SqlVersions(engine="postgresql://x/y")
    memory = create_engine("sqlite://", poolclass=StaticPool)
    with pytest.raises(ConfigurationError, match="one connection"):
        SqlVersions(engine=memory)
    with pytest.raises(ConfigurationError, match="one connection"):
        QueryCache(regions=MEMORY, versions=memory)
    store = SqlVersions(engine=sqlite_engine)
    assert store.engine is sqlite_engine
    store.close()


def test_in_memory_sqlite_bypasses_and_keeps_the_sessions_writes():
    """A pool with one shared connection: the store never borrows it (a read there could
    end the session's transaction), so lookups bypass; flushed writes stay."""
    from . import models

    memory = create_engine("sqlite://", poolclass=StaticPool)
    models.Base.metadata.create_all(memory)
    SqlVersions().table.create(memory)
    with Session(memory) as s:
        models.populate(s)
    cache = QueryCache(regions=MEMORY, versions="sql")
    maker = sessionmaker(memory)
    cache.install(maker)
    try:
        with maker() as s:
            s.get(Customer, 1).name = "flushed"
            s.flush()
            assert len(s.scalars(PAGE).all()) == 10
            s.commit()
        with Session(memory) as s:
            assert s.get(Customer, 1).name == "flushed"
    finally:
        cache.close()
        memory.dispose()


def test_a_forked_child_uses_connections_of_its_own(versions_db):
    """After fork the child reads and bumps on new connections; the parent's still work."""
    import os

    if versions_db.dialect.name == "sqlite":
        pytest.skip("a fork shares no socket with SQLite")
    store = SqlVersions(versions_db, pool_size=1, max_overflow=0)
    try:
        first = store.read(["product"], versions_db)[0]  # the parent's connection, pooled
        parent_conn = store._source(versions_db).pool.connect()
        parent_dbapi = parent_conn.dbapi_connection
        parent_conn.close()
        pid = os.fork()
        if pid == 0:  # the child: never return into pytest
            code = 1
            try:
                src = store._source(versions_db)
                c = src.pool.connect()
                fresh = c.dbapi_connection is not parent_dbapi
                c.close()
                store.bump(["product"])
                code = 0 if fresh and store.read(["product"], versions_db)[0] == first + 1 else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0
        assert store.read(["product"], versions_db)[0] == first + 1  # parent's socket intact
    finally:
        store.close()
