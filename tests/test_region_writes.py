"""Entry writes to Redis do not wait for their reply (regions._Sender).

A miss sends its SET and returns; the reply is read later. What must hold
anyway: the miss costs no round trip for the write, the process that stored
an entry finds it on its next read (whatever path the two commands take),
an error reply is counted without desynchronising the connection, a server
that stopped answering costs a bounded wait, and a forked child never
shares the parent's socket. Real Redis throughout, through the fault proxy
where the path matters.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import pytest
from dogpile.cache import make_region
from sqlalchemy import String, literal, select
from sqlalchemy.orm import sessionmaker

from sqla_querycache import FromCache, QueryCache
from sqla_querycache.regions import RegionStore, _Sender

from .faultproxy import FaultProxy
from .models import Product

#: the Redis database the fault tests own on QC_REDIS_URL's server (flushed per test)
DB = int(os.environ.get("QC_FAULTS_REDIS_DB", "2"))



@pytest.fixture()
def target(redis_url: str) -> tuple[str, int]:
    import redis

    u = urlparse(redis_url)
    redis.Redis(host=u.hostname, port=u.port, db=DB).flushdb()
    return u.hostname or "127.0.0.1", u.port or 6379


@pytest.fixture()
def proxy(target: tuple[str, int]) -> Iterator[FaultProxy]:
    p = FaultProxy(*target).start()
    yield p
    p.close()


def url_of(p: FaultProxy) -> str:
    return f"redis://127.0.0.1:{p.port}/{DB}"


STMT = select(Product).where(Product.category_id == 2).order_by(Product.id).options(FromCache())


def _cache(url: str) -> QueryCache:
    region = make_region().configure("dogpile.cache.redis", expiration_time=600,
                                     arguments={"url": url})  # fmt: skip
    # local versions (not through the proxy); memo off: every read asks Redis
    return QueryCache(regions={"default": region}, memo_size=0, admission="always")


def test_a_miss_does_not_wait_for_its_write(proxy: FaultProxy, sqlite_engine: Any) -> None:
    cache = _cache(url_of(proxy))
    maker = sessionmaker(sqlite_engine)
    cache.install(maker)
    import redis

    probe = redis.Redis.from_url(url_of(proxy))
    try:
        with maker() as s:  # connections made, plan learned, then made stale
            s.scalars(STMT).all()
        probe.ping()
        proxy.delay(0.1)  # a round trip of 0.2 s (the socket timeout is 0.5 s)
        t = time.monotonic()
        probe.ping()
        rtt = time.monotonic() - t
        for _ in range(2):
            cache.invalidate(Product)
            time.sleep(1.2 * rtt)  # the previous write's reply is in (a read of its key waits)
            t = time.monotonic()
            with maker() as s:  # a miss: the lookup's round trip, the query, the SET
                s.scalars(STMT).all()
            took = time.monotonic() - t
            # one round trip (the lookup); awaiting the SET would make it two
            assert took < 1.6 * rtt, (took, rtt)
        assert cache.stats()["default"]["stores"] == 3, cache.stats()
    finally:
        proxy.resume()
        probe.close()
        cache.close()


def test_the_process_that_stored_finds_it_next(proxy: FaultProxy, sqlite_engine: Any) -> None:
    """The SET and the next GET travel on different connections. Here a large
    entry crosses a path that delays every 64 KiB chunk, so the small GET
    would arrive first; the reader must catch up on its own write of that key."""
    cache = _cache(url_of(proxy))
    maker = sessionmaker(sqlite_engine)
    cache.install(maker)
    big = (select(Product.id, literal("x" * 60_000, String).label("big"))
           .where(Product.category_id == 2).options(FromCache()))  # fmt: skip
    try:
        with maker() as s:
            s.execute(big).all()
        proxy.delay(0.01)
        for i in range(3):
            cache.invalidate(Product)
            with maker() as s:
                s.execute(big).all()  # a miss: stores several 64 KiB chunks
            with maker() as s:
                s.execute(big).all()  # must hit
            st = cache.stats()["default"]
            assert (st["hits"], st["misses"]) == (i + 1, i + 2), (i, st, cache.report()["statements"])
    finally:
        proxy.resume()
        cache.close()


def _sender(redis_url: str) -> tuple[_Sender, Any]:
    import redis

    client = redis.Redis.from_url(redis_url, db=DB)
    return _Sender(client.connection_pool), client


def test_an_error_reply_is_raised_once_and_the_connection_stays_in_step(
    target: Any, redis_url: str
) -> None:
    sender, client = _sender(redis_url)
    try:
        client.set("text", "not a number")
        sender.send("text", "INCR", "text")  # its error reply is read later
        for i in range(_Sender.MAX_OWED - 1):
            sender.send(f"k{i}", "SET", f"k{i}", "1")
        with pytest.raises(Exception, match="not an integer"):
            sender.send("after", "SET", "after", "1")  # raises the earlier error, after sending
        sender.send("later", "SET", "later", "2")
        sender.settle()
        assert sender.owed == 0
        assert (client.get("after"), client.get("later")) == (b"1", b"2")
    finally:
        sender.close()
        client.close()


def test_a_hung_server_costs_a_bounded_wait(proxy: FaultProxy) -> None:
    store = RegionStore("r", make_region().configure(
        "dogpile.cache.redis", arguments={"url": url_of(proxy)}))  # fmt: skip
    store.set("warm", b"1", 60)
    store.settle()
    proxy.pause()
    try:
        t = time.monotonic()
        for i in range(_Sender.MAX_OWED):  # sent, unanswered: nobody waits
            store.set(f"k{i}", b"x", 60)
        assert time.monotonic() - t < 0.4
        t = time.monotonic()
        from redis.exceptions import TimeoutError as RedisTimeout

        with pytest.raises(RedisTimeout):  # one more: waits for the oldest, times out
            store.set("one-more", b"x", 60)
        took = time.monotonic() - t
        assert 0.3 < took < 2.0, took
        t = time.monotonic()
        store.caught_up(["k0"])  # a read never raises for the writes, and does not wait again
        assert time.monotonic() - t < 0.3
    finally:
        proxy.resume()
    store.set("back", b"1", 60)
    store.settle()
    assert store.get("back") == b"1"


def test_a_forked_child_writes_on_its_own_connection(target: Any, redis_url: str) -> None:
    sender, client = _sender(redis_url)
    try:
        sender.send("parent", "SET", "parent", "1")
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                sender.send("child", "SET", "child", "1")
                sender.settle()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0
        sender.send("parent-again", "SET", "parent-again", "1")  # the parent's socket is still in step
        sender.settle()
        assert [client.get(k) for k in ("parent", "child", "parent-again")] == [b"1"] * 3
    finally:
        sender.close()
        client.close()
