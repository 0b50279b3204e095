"""memcached regions (``dogpile.cache.pymemcache``) against a real memcached.

memcached goes through the generic dogpile backend path of ``RegionStore``
(``get_serialized``, ``get_serialized_multi``, ``set_serialized``), not the
Redis fast path. Expiration is the extension's own check of the entry's age.

The server comes from ``QC_MEMCACHED_URL`` (default ``127.0.0.1:11211``);
absent, these tests skip with one line unless ``QC_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from dogpile.cache import make_region
from sqlalchemy import literal, select, update
from sqlalchemy.orm import Session, sessionmaker

from sqla_querycache import FromCache, NoCache, QueryCache

from . import models as m
from .conftest import REQUIRE, StatementCounter

URL = os.environ.get("QC_MEMCACHED_URL", "127.0.0.1:11211")
PAGE = select(m.Product).where(m.Product.category_id == 2).order_by(m.Product.id)


def _reachable(url: str) -> str | None:
    host, _, port = url.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), 1) as s:
            s.sendall(b"version\r\n")
            if s.recv(64).startswith(b"VERSION"):
                return None
            return "it does not answer like memcached"
    except Exception as err:
        return str(err)


@pytest.fixture(scope="module")
def memcached_url() -> str:
    problem = None
    try:
        import pymemcache  # noqa: F401
    except ImportError:
        problem = "pymemcache is not installed (pip install -e '.[test]')"
    if problem is None:
        why = _reachable(URL)
        if why:
            problem = f"no memcached at {URL} ({why}); start one or set QC_MEMCACHED_URL"
    if problem:
        if REQUIRE:
            pytest.fail(f"QC_REQUIRE_SERVICES=1 but {problem}")
        pytest.skip(f"memcached cases skipped: {problem}")
    return URL


def memcached_region(url: str, **kw: Any) -> Any:
    return make_region().configure(
        "dogpile.cache.pymemcache", expiration_time=kw.pop("expiration_time", 600),
        arguments={"url": [url], **kw},
    )  # fmt: skip


@pytest.fixture()
def mc(
    memcached_url: str, sqlite_engine: Any
) -> Iterator[tuple[QueryCache, Any, StatementCounter]]:
    from pymemcache.client.base import Client

    Client(memcached_url).flush_all()
    cache = QueryCache(regions={"default": memcached_region(memcached_url)},
                       identity_region="default")  # fmt: skip
    maker = sessionmaker(sqlite_engine)
    cache.install(maker)
    counter = StatementCounter(sqlite_engine)
    yield cache, maker, counter
    counter.close()
    cache.uninstall()
    cache.close()


def read(maker: Any, stmt: Any = PAGE) -> list[tuple[int, str]]:
    with maker() as s:
        return [(p.id, p.name) for p in s.scalars(stmt.options(FromCache()))]


def truth(engine: Any) -> list[tuple[int, str]]:
    with Session(engine) as s:  # a plain Session: never through the cache
        return [(p.id, p.name) for p in s.scalars(PAGE)]


def test_hit(mc: Any, sqlite_engine: Any) -> None:
    cache, maker, counter = mc
    first = read(maker)
    mark = counter.count
    again = read(maker)
    assert counter.since(mark) == 0
    assert again == first == truth(sqlite_engine)
    st = cache.stats()["default"]
    assert st["hits"] == 1 and st["stores"] == 1


def test_write_invalidates(mc: Any, sqlite_engine: Any) -> None:
    _cache, maker, counter = mc
    read(maker)
    with maker() as s:
        s.execute(update(m.Product).where(m.Product.id == 5).values(name="memcached"))
        s.commit()
    mark = counter.count
    got = read(maker)
    assert counter.since(mark) == 1
    assert got == truth(sqlite_engine) and (5, "memcached") in got
    mark = counter.count
    assert read(maker) == got and counter.since(mark) == 0


def test_get_many_through_get_serialized_multi(mc: Any, sqlite_engine: Any) -> None:
    cache, maker, counter = mc
    ids = [1, 2, 3, 999]
    with maker() as s:
        first = [(p.id, p.name) for p in cache.get_many(s, m.Product, ids)]
    mark = counter.count
    with maker() as s:
        again = [(p.id, p.name) for p in cache.get_many(s, m.Product, ids)]
    assert again == first and [i for i, _ in first] == [1, 2, 3]
    assert counter.since(mark) == 0  # every id (and the absent one) from memcached


def test_entry_too_large_for_memcached(memcached_url: str, sqlite_engine: Any) -> None:
    """memcached refuses items over 1 MB: not stored, the result still right, twice."""
    cache = QueryCache(regions={"default": memcached_region(memcached_url)},
                       max_entry_bytes=8 << 20)  # fmt: skip
    maker = sessionmaker(sqlite_engine)
    cache.install(maker)
    counter = StatementCounter(sqlite_engine)
    big = "x" * (1_500_000)
    stmt = (
        select(literal(big).label("v"), m.Product.id).where(m.Product.id < 3).order_by(m.Product.id)
    )
    try:
        for _ in range(2):
            mark = counter.count
            with maker() as s:
                rows = s.execute(stmt.options(FromCache())).all()
            assert [(len(v), i) for v, i in rows] == [(1_500_000, 1), (1_500_000, 2)]
            assert counter.since(mark) == 1  # never served from memcached
        st = cache.stats()["default"]
        assert st["hits"] == st["stores"] == 0 and st["errors"] == 2  # refused by the server
    finally:
        counter.close()
        cache.uninstall()


def test_memcached_down(sqlite_engine: Any) -> None:
    """Nothing listens there: every read answered by the database, no exception."""
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cache = QueryCache(regions={"default": memcached_region(f"127.0.0.1:{port}")})
    maker = sessionmaker(sqlite_engine)
    cache.install(maker)
    try:
        started = time.monotonic()
        for _ in range(3):
            assert read(maker) == truth(sqlite_engine)
        with maker() as s:
            s.execute(update(m.Product).where(m.Product.id == 5).values(name="down"))
            s.commit()
        assert read(maker) == truth(sqlite_engine)
        assert time.monotonic() - started < 10
        st = cache.stats()["default"]
        assert st["errors"] >= 1 and st["hits"] <= 2  # hits: entries this process kept decoded
    finally:
        cache.uninstall()


def test_bypass(mc: Any, sqlite_engine: Any) -> None:
    """A transaction that wrote a table reads its own writes; NoCache never caches."""
    cache, maker, counter = mc
    read(maker)
    with maker() as s:
        s.execute(update(m.Product).where(m.Product.id == 5).values(name="mine"))
        names = [p.name for p in s.scalars(PAGE.options(FromCache()))]
        assert "mine" in names  # not the cached page
        s.rollback()
    assert read(maker) == truth(sqlite_engine)
    mark = counter.count
    with maker() as s:
        s.scalars(PAGE.options(NoCache())).all()
    assert counter.since(mark) == 1
    assert cache.stats()["default"]["bypassed"] >= 1


def test_expiration_is_checked_by_the_extension(memcached_url: str, sqlite_engine: Any) -> None:
    cache = QueryCache(regions={"default": memcached_region(memcached_url, expiration_time=1)})
    maker = sessionmaker(sqlite_engine)
    cache.install(maker)
    counter = StatementCounter(sqlite_engine)
    try:
        read(maker)
        mark = counter.count
        read(maker)
        assert counter.since(mark) == 0
        time.sleep(1.2)
        mark = counter.count
        read(maker)
        assert counter.since(mark) == 1  # older than expiration_time: a miss
    finally:
        counter.close()
        cache.uninstall()


def test_memcached_hung(sqlite_engine: Any) -> None:
    """A server that accepts connections and never answers: reads wait TIMEOUT, not forever."""
    from sqla_querycache import memcached

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)  # the kernel completes the handshakes; nobody reads
        cache = QueryCache(regions={"default": memcached_region(
            f"127.0.0.1:{server.getsockname()[1]}")})  # fmt: skip
        maker = sessionmaker(sqlite_engine)
        cache.install(maker)
        try:
            started = time.monotonic()
            for _ in range(3):
                assert read(maker) == truth(sqlite_engine)
            elapsed = time.monotonic() - started
            # the first read waits out the timeouts; then the server is left alone
            assert elapsed < 3 * 2 * memcached.TIMEOUT + 2, elapsed
            assert cache.stats()["default"]["errors"] >= 1
        finally:
            cache.uninstall()


def test_items_expire_in_memcached(memcached_url: str) -> None:
    """Every item is set with the region's expiration time (+1 s) as its memcached expiry."""
    from pymemcache.client.base import Client

    from sqla_querycache.regions import RegionStore

    store = RegionStore("default", memcached_region(memcached_url, expiration_time=1))
    assert type(store.backend).__name__ == "BoundedMemcached" and store.backend.expire == 2
    store.set("qc-test-expiry", b"\x00raw bytes", None)
    assert store.get("qc-test-expiry") == b"\x00raw bytes"
    assert store.get_many(["qc-test-expiry", "qc-absent"]) == [b"\x00raw bytes", None]
    raw = Client(memcached_url)
    assert raw.get("qc-test-expiry") == b"\x00raw bytes"  # plain bytes: any client reads them
    time.sleep(3.1)
    assert raw.get("qc-test-expiry") is None  # gone from the server, not only stale
