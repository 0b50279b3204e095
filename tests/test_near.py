"""The near cache (opt-in): hits validated in process, staleness bounded by ``max_staleness``.

Two QueryCaches with version stores of their own stand for two processes
sharing one Redis: a write through one reaches the other only through Redis.
What must hold, checked on generated runs:

- read-your-writes: a read through the cache that committed a write sees it,
  at once, whatever other threads of that process read meanwhile;
- bounded staleness: a read through the other cache that starts
  ``max_staleness`` after the commit returned sees it;
- the bound survives the push channel failing (killed, hung): reads turn strict.
"""

from __future__ import annotations

import random
import threading
import time
from urllib.parse import urlparse

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import sessionmaker

from sqla_querycache import ConfigurationError, FromCache, NearCache, QueryCache
from sqla_querycache.near import EPOCH, _PyParser

from .conftest import redis_region
from .faultproxy import FaultProxy
from .models import Tag

STALENESS = 0.05
STMT = select(Tag).where(Tag.id == 1).options(FromCache())


def _cache(url: str, near: NearCache | None = None, **kw) -> QueryCache:
    return QueryCache(regions={"default": redis_region(url)}, versions=url,
                      namespace="qcnear", near=near, **kw)  # fmt: skip


@pytest.fixture()
def pair(redis_url, redis_client, sqlite_engine):
    """Two near caches on one Redis and one database (two processes, in one)."""
    made = []

    def make(near: bool = True, url: str = redis_url):
        cache = _cache(url, NearCache(max_staleness=STALENESS) if near else None)
        maker = sessionmaker(sqlite_engine)
        cache.install(maker)
        made.append(cache)
        return cache, maker

    yield make
    for cache in made:
        cache.close()


def _wait_fresh(cache: QueryCache, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cache.near.fresh():
        assert time.monotonic() < deadline, f"the near cache never got fresh: {cache.near!r}"
        time.sleep(0.005)


def _read(maker) -> int:
    with maker() as s:
        return int(s.scalars(STMT).one().label)


def _write(maker, value: int) -> float:
    with maker() as s:
        s.execute(update(Tag).where(Tag.id == 1).values(label=str(value)))
        s.commit()
    return time.time()


@pytest.mark.parametrize("seed", range(3))
def test_generated_runs_keep_read_your_writes_and_the_staleness_bound(pair, seed):
    rnd = random.Random(seed)
    a, make_a = pair()
    b, make_b = pair()
    _write(make_a, 0)
    _wait_fresh(a)
    _wait_fresh(b)
    stop = threading.Event()
    errors: list[BaseException] = []

    def hammer(maker):  # other threads of each "process" read (and install) meanwhile
        while not stop.is_set():
            try:
                _read(maker)
            except BaseException as err:  # pragma: no cover - reported below
                errors.append(err)

    threads = [threading.Thread(target=hammer, args=(m,)) for m in (make_a, make_b)]
    for t in threads:
        t.start()
    commits: list[tuple[float, int]] = []  # (returned, value), in value order
    value = 0
    bad = []
    try:
        for _ in range(300):
            op = rnd.random()
            if op < 0.25:
                value += 1
                maker = make_a if rnd.random() < 0.5 else make_b
                commits.append((_write(maker, value), value))
                got = _read(maker)  # the writer's own read, at once
                if got != value:
                    bad.append(("own write not seen", value, got))
            else:
                maker = make_a if rnd.random() < 0.5 else make_b
                began = time.time()
                got = _read(maker)
                owed = max((v for t, v in commits if t <= began - STALENESS), default=0)
                if got < owed:
                    bad.append(("stale past the bound", owed, got, began))
            if rnd.random() < 0.3:
                time.sleep(rnd.choice((0.001, 0.01, STALENESS)))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[:3]
    assert not bad, bad[:5]
    # the run must have gone through the near path, or it proved nothing
    assert a.near.hits + b.near.hits > 100, (a.near, b.near)


def test_a_near_hit_sends_nothing_to_redis(redis_url, redis_client, sqlite_engine):
    # a bound of a second: a loaded machine (CI) must not turn these reads strict
    a = _cache(redis_url, NearCache(max_staleness=1.0))
    make_a = sessionmaker(sqlite_engine)
    a.install(make_a)
    try:
        _sends_nothing(a, make_a, redis_client)
    finally:
        a.close()


def _sends_nothing(a, make_a, redis_client):
    _write(make_a, 1)
    _read(make_a)
    _read(make_a)  # the entry is decoded in process, its versions in the mirror
    _wait_fresh(a)
    before = redis_client.info("stats")["total_commands_processed"]
    hits = a.near.hits
    for _ in range(50):
        assert _read(make_a) == 1
    after = redis_client.info("stats")["total_commands_processed"]
    assert a.near.hits - hits == 50
    # the beats (2 commands every max_staleness / 3), the heartbeat and the INFO
    # calls are all that reached Redis; strict reads would have sent 50 more
    assert after - before < 20, after - before


def _kill(redis_client, flag: str) -> int:
    killed = 0
    for c in redis_client.client_list():
        if flag in c["flags"]:
            redis_client.client_kill_filter(_id=c["id"])
            killed += 1
    return killed


@pytest.mark.parametrize("which", ["P", "t"])  # the subscribed connection; the tracking one
def test_a_killed_push_connection_costs_hits_never_freshness(pair, redis_client, which):
    a, make_a = pair()
    _, make_b = pair(near=False)
    _write(make_b, 1)
    assert _read(make_a) == 1
    _read(make_a)
    _wait_fresh(a)
    connects = a.near.connects
    assert _kill(redis_client, which) >= 1
    returned = _write(make_b, 2)
    # the bound holds whatever the push channel did
    while time.time() < returned + STALENESS:
        time.sleep(0.005)
    assert _read(make_a) == 2
    deadline = time.monotonic() + 5
    while a.near.connects == connects:  # and it comes back on its own
        assert time.monotonic() < deadline, a.near
        time.sleep(0.01)
    _wait_fresh(a)
    _write(make_b, 3)
    time.sleep(STALENESS)
    assert _read(make_a) == 3


def test_a_hung_redis_turns_reads_strict_and_they_fall_back_to_the_database(
    redis_url, redis_client, sqlite_engine
):
    u = urlparse(redis_url)
    proxy = FaultProxy(u.hostname, u.port).start()
    db = urlparse(redis_url).path or "/0"
    a = _cache(f"redis://127.0.0.1:{proxy.port}{db}", NearCache(max_staleness=STALENESS))
    b = _cache(redis_url)
    try:
        make_a, make_b = sessionmaker(sqlite_engine), sessionmaker(sqlite_engine)
        a.install(make_a)
        b.install(make_b)
        _write(make_b, 1)
        assert _read(make_a) == 1
        _read(make_a)
        _wait_fresh(a)
        proxy.pause()  # every byte held: no push, no beat, no read answers
        returned = _write(make_b, 2)
        time.sleep(max(0.0, returned + STALENESS - time.time()))
        assert not a.near.fresh()
        assert _read(make_a) == 2  # strict, Redis hung: the database answers
    finally:
        proxy.resume()
        a.close()
        b.close()
        proxy.close()


def test_a_flushed_redis_empties_the_mirror(pair, redis_client):
    a, make_a = pair()
    _write(make_a, 1)
    _wait_fresh(a)
    deadline = time.monotonic() + 2
    while a.near.stats()["tables"] == 0:  # once the write's end landed, a read installs
        assert time.monotonic() < deadline, a.near
        _read(make_a)
    redis_client.flushdb()
    deadline = time.monotonic() + 2
    while a.near.stats()["tables"] > 0:
        assert time.monotonic() < deadline, a.near
        time.sleep(0.005)
    assert _read(make_a) == 1


def test_a_read_that_raced_a_change_is_not_kept():
    near = NearCache()
    gen = near.generation()
    near.drop(["t"])  # a push (or a write of ours) arrived while the read was out
    near.put(["t"], [1, 2], gen)
    assert "t" not in near._known and EPOCH not in near._known
    gen = near.generation()
    near.put(["t"], [1, 2], gen)
    assert near._known == {EPOCH: 1, "t": 2}


def test_the_python_parser_reads_what_hiredis_reads():
    import hiredis

    stream = (b"*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*2\r\n$4\r\nk:v1\r\n$1\r\nx\r\n"
              b">2\r\n$10\r\ninvalidate\r\n_\r\n:5\r\n+OK\r\n*-1\r\n$-1\r\n"
              b">3\r\n$7\r\nmessage\r\n$4\r\nbeat\r\n$2\r\n17\r\n")  # fmt: skip
    rnd = random.Random(7)
    for _ in range(30):  # fed in random pieces
        py, hr = _PyParser(), hiredis.Reader()
        got_py, got_hr = [], []
        i = 0
        while i < len(stream):
            j = i + rnd.randint(1, 9)
            py.feed(stream[i:j])
            hr.feed(stream[i:j])
            i = j
            for parser, got in ((py, got_py), (hr, got_hr)):
                while (m := parser.gets()) is not False:
                    got.append(m)
        assert got_py == got_hr
        assert len(got_py) == 7


def test_configuration_errors(redis_url, redis_client):
    with pytest.raises(ConfigurationError, match="max_staleness"):
        NearCache(max_staleness=0)
    with pytest.raises(ConfigurationError, match="max_staleness"):
        NearCache(max_staleness=0.0001)
    with pytest.raises(ConfigurationError, match="max_bytes"):
        NearCache(max_bytes=-1)
    with pytest.raises(ConfigurationError, match="Redis version store"):
        QueryCache(regions={"default": redis_region(redis_url)}, near=NearCache())
    with pytest.raises(ConfigurationError, match="Redis version store"):
        QueryCache(regions={"default": redis_region(redis_url)}, versions="sql",
                   near=NearCache())  # fmt: skip
    with pytest.raises(ConfigurationError, match="NearCache"):
        _cache(redis_url, near=0.05)  # type: ignore[arg-type]
    near = NearCache(max_bytes=5 << 20)
    cache = _cache(redis_url, near)
    try:
        with pytest.raises(ConfigurationError, match="already used"):
            _cache(redis_url, near)
        assert "near: <NearCache max_staleness=0.05s" in repr(cache)
        assert cache._reader.memo.maxbytes == near.max_bytes
    finally:
        cache.close()
    assert not near.fresh()


def test_a_forked_child_runs_its_own_push_connection(pair):
    import multiprocessing

    a, make_a = pair()
    _write(make_a, 1)
    _read(make_a)
    _wait_fresh(a)
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()

    def child():
        try:
            fresh_at_once = a.near.fresh()  # the parent's thread is not here
            deadline = time.monotonic() + 5
            while not a.near.fresh() and time.monotonic() < deadline:
                time.sleep(0.01)
            q.put((fresh_at_once, a.near.fresh(), _read(make_a)))
        except BaseException as err:  # pragma: no cover
            q.put(repr(err))

    p = ctx.Process(target=child)
    p.start()
    got = q.get(timeout=20)
    p.join(10)
    assert got == (False, True, 1)


@pytest.mark.parametrize("seed", range(2))
def test_read_your_writes_holds_while_pushes_are_late(redis_url, redis_client, sqlite_engine,
                                                      monkeypatch, seed):  # fmt: skip
    """The writing process must not wait for Redis's push of its own write: its
    mirror forgets the tables when the write is sent and again when it landed.
    Pushes are held back 40 ms here (the push connections behind a slow proxy;
    beats come back well within ``max_staleness``), so the mirror still holds
    the old version when the writer reads; other threads read meanwhile."""
    u = urlparse(redis_url)
    proxy = FaultProxy(u.hostname, u.port).start()
    proxy.delay(0.04)

    def via_proxy(self):  # made like the store's connections, but through the proxy
        pool = self._versions.client.connection_pool
        conn = pool.connection_class(**{**pool.connection_kwargs, "host": "127.0.0.1",
                                        "port": proxy.port})  # fmt: skip
        self._conns.append(conn)
        conn.connect()
        return conn

    monkeypatch.setattr(NearCache, "_connect", via_proxy)
    rnd = random.Random(seed)
    a = _cache(redis_url, NearCache(max_staleness=0.4))
    b = _cache(redis_url, NearCache(max_staleness=0.4))
    makers = [sessionmaker(sqlite_engine), sessionmaker(sqlite_engine)]
    a.install(makers[0])
    b.install(makers[1])
    stop = threading.Event()

    def hammer(maker):
        while not stop.is_set():
            _read(maker)

    threads = [threading.Thread(target=hammer, args=(m,)) for m in makers]
    bad = []
    try:
        _write(makers[0], 0)
        _wait_fresh(a)
        _wait_fresh(b)
        for t in threads:
            t.start()
        hits = a.near.hits + b.near.hits
        for value in range(1, 80):
            maker = rnd.choice(makers)
            _write(maker, value)
            got = _read(maker)
            if got != value:
                bad.append((value, got))
            time.sleep(rnd.choice((0, 0.002, 0.05)))
        assert a.near.hits + b.near.hits - hits > 50, (a.near, b.near)
    finally:
        stop.set()
        for t in threads:
            t.join()
        a.close()
        b.close()
        proxy.close()
    assert not bad, bad[:5]


def _write_calls(store):
    """Every way the version store changes versions or marks (the write path's
    whole vocabulary), each as a call on ``names``."""
    def begin_async(n):
        store.wait(store.begin_async(n))

    def end_queued(n):  # the end cannot be sent now: it is queued
        store._circuit.failed()
        store.end_write(n)
        store._circuit.ok()

    def verify(n):
        store.wait(store.verify_async(n, "t0"))

    return {
        "begin_write": store.begin_write,
        "begin_async": begin_async,
        "end_write": store.end_write,
        "end_queued": end_queued,
        "bump": store.bump,
        "verify": verify,
        "mark_for_commit": store.mark_for_commit,
        "settle_unmarked": store.settle_unmarked,
    }


WRITE_CALLS = ("begin_write", "begin_async", "end_write", "end_queued", "bump", "verify",
               "mark_for_commit", "settle_unmarked")


@pytest.mark.parametrize("call", WRITE_CALLS)
def test_every_write_of_this_process_drops_its_tables_from_the_mirror(redis_url, redis_client,
                                                                       call):  # fmt: skip
    cache = _cache(redis_url, NearCache())
    try:
        near, store = cache.near, cache.versions
        _wait_fresh(cache)  # connected: its setup empties the mirror once
        names = ("t1", "t2")
        store.read(names)
        gen = near.generation()
        near.put(names, [1, 2, 3], gen)
        near.put(("other",), [1, 9], near.generation())
        gen = near.generation()
        calls = _write_calls(store)
        assert set(calls) == set(WRITE_CALLS)
        calls[call](names)
        assert "t1" not in near._known and "t2" not in near._known, call
        assert near.generation() > gen
        assert near._known.get("other") == 9  # only what it wrote
    finally:
        cache.close()


def test_a_push_channel_that_never_starts_is_said_once(caplog):
    near = NearCache()
    cache = QueryCache(regions={"default": redis_region("redis://127.0.0.1:1/0")},
                       versions="redis://127.0.0.1:1/0", require_versions=False,
                       near=near)  # fmt: skip
    try:
        deadline = time.monotonic() + 5
        while "no push channel" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.02)
        time.sleep(0.3)  # it keeps retrying, quietly
        assert caplog.text.count("no push channel") == 1
        assert not near.fresh() and near.get(("t",)) is None
    finally:
        cache.close()


def test_prometheus_exports_the_near_caches_counters(pair):
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry, generate_latest

    from sqla_querycache.metrics import PrometheusCollector

    a, make_a = pair()
    _write(make_a, 1)
    _wait_fresh(a)
    for _ in range(5):
        _read(make_a)
    registry = CollectorRegistry()
    registry.register(PrometheusCollector(a))
    text = generate_latest(registry).decode()
    mirror = [line for line in text.splitlines()
              if line.startswith('sqla_querycache_near_reads_total{answer="mirror"}')]  # fmt: skip
    assert mirror and float(mirror[0].split()[-1]) == a.near.hits > 0
    assert "sqla_querycache_near_fresh 1.0" in text
    assert "sqla_querycache_near_beat_lag_seconds" in text
