"""Bounded memory: the plan and entry memos are bounded in bytes, nothing unvalidated
is kept, a shape too large to store is not encoded on every miss, and the per-session
and per-connection trackers do not outlive what they track.

Real SQLite (and PostgreSQL where connection state matters) and a real dogpile
memory region; the memos' own byte counts (``keys.LRU.bytes``) and, for the
plateau test, ``tracemalloc`` are the oracles.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, literal_column, select, text
from sqlalchemy.orm import Session

from sqla_querycache import FromCache, QueryCache
from sqla_querycache.exc import ConfigurationError
from sqla_querycache.keys import LRU

from . import models
from .conftest import db_url, memory_region
from .models import Category, Customer, Order

MiB = 1 << 20


@pytest.fixture()
def db(tmp_path_factory: Any) -> Iterator[Any]:
    engine = create_engine(db_url("sqlite", tmp_path_factory))
    models.Base.metadata.create_all(engine)
    with Session(engine) as s:
        models.populate(s)
    yield engine
    engine.dispose()


def make(**kw: Any) -> QueryCache:
    return QueryCache(regions={"default": memory_region()}, **kw).install(Session)


ORDER_IDS = [c * 10 + k for c in range(1, 6) for k in range(3)]


def shape(i: int) -> Any:
    """A distinct statement shape per ``i`` (the literal is part of the SQL)."""
    return select(Order).where(Order.id == literal_column(f"{ORDER_IDS[i % 15]} + 0 * {i}"))


# ------------------------------------------------------------------ the LRU


def test_lru_is_bounded_in_bytes_and_in_count() -> None:
    lru: LRU[str] = LRU(maxsize=10, maxbytes=100)
    for i in range(5):
        lru.put(i, f"v{i}", 30)
    assert len(lru) == 3 and lru.bytes == 90  # the two oldest went for the byte bound
    assert lru.get(0) is None and lru.get(2) == "v2"
    lru.put(9, "too big", 101)  # more than the whole bound alone: not kept
    assert lru.get(9) is None and lru.bytes == 90
    lru.put(3, "v3 again", 10)  # replacing a key replaces its cost
    assert lru.bytes == 70
    lru.pop(3)
    assert lru.bytes == 60 and len(lru) == 2
    lru.put(5, "after", 60)  # 2 (touched above) stays, 4 (least recent) goes
    assert lru.get(4) is None and lru.get(2) == "v2" and lru.bytes == 90
    lru.clear()
    assert lru.bytes == 0 and len(lru) == 0
    counted: LRU[int] = LRU(maxsize=2)  # no byte bound: count only
    for i in range(4):
        counted.put(i, i, 10**9)
    assert len(counted) == 2


@pytest.mark.parametrize("bad", [{"memo_bytes": -1}, {"memo_bytes": True}, {"memo_bytes": 1.5},
                                 {"plan_memo_bytes": MiB - 1}, {"plan_memo_bytes": "64MiB"}])  # fmt: skip
def test_byte_bounds_are_validated(bad: dict[str, Any]) -> None:
    name = next(iter(bad))
    with pytest.raises(ConfigurationError, match=name):
        QueryCache(regions={"default": memory_region()}, **bad)


# ------------------------------------------------------- the memos' bounds


def test_memo_bytes_bounds_the_decoded_entries(db: Any) -> None:
    cache = make(memo_bytes=20_000)
    try:
        rp = cache._reader
        expected = {}
        with Session(db) as s:
            for i in range(1, 6):
                stmt = select(Order).where(Order.customer_id == i).order_by(Order.id)
                expected[i] = [o.id for o in s.scalars(stmt)]
            for _ in range(2):
                for i in range(1, 41):
                    stmt = select(Customer).where(Customer.id <= i % 5 + 1, Customer.id != -i)
                    s.scalars(stmt.options(FromCache())).all()
                    assert rp.memo.bytes <= 20_000
        assert 0 < len(rp.memo) < 40
        stats = cache.stats()["default"]
        assert stats["stores"] == 40 and stats["hits"] == 40  # evicted ones hit the region
        assert rp.memo.bytes == sum(e.cost() for e in rp.memo._data.values())
    finally:
        cache.uninstall()


def test_plan_memo_bytes_bounds_the_plans(db: Any) -> None:
    cache = make(plan_memo_bytes=MiB, plan_memo_size=100_000)
    try:
        plans = cache._reader._plans
        with Session(db) as s:
            for i in range(200):
                assert len(s.scalars(shape(i).options(FromCache())).all()) == 1
                assert plans.bytes <= MiB
        # a plan of this shape counts 16 KiB + 64 B per character: ~23 KiB
        assert 20 < len(plans) < 60, len(plans)
    finally:
        cache.uninstall()


def test_memos_real_memory_stays_within_their_byte_bounds(db: Any) -> None:
    """1000 distinct shapes: what the memos retain (tracemalloc) stays near their bounds.

    Measured as the memory freed by dropping the plans, entries and loader
    state (``ReadPath.clear``); without the byte bounds the 1000 plans alone
    would retain ~25 MB.
    """
    cache = make(plan_memo_bytes=2 * MiB, memo_bytes=MiB, plan_memo_size=100_000,
                 memo_size=100_000)  # fmt: skip
    rp = cache._reader
    tracemalloc.start()
    try:
        with Session(db) as s:
            for i in range(1000):
                assert len(s.scalars(shape(i).options(FromCache())).all()) == 1
                s.expunge_all()
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
        assert rp._plans.bytes <= 2 * MiB and rp.memo.bytes <= MiB
        plans, entries = len(rp._plans), len(rp.memo)
        rp.clear()
        gc.collect()
        retained = held - tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
        cache.uninstall()
    assert 50 < plans < 200 and entries > plans, (plans, entries)
    assert MiB < retained < 3.5 * MiB, f"the memos retained {retained / MiB:.2f} MiB"


# --------------------------------------------------- nothing unvalidated kept


def _only_key(cache: QueryCache) -> str:
    (key,) = cache.regions["default"].backend._cache.keys()
    return str(key)


def test_entry_larger_than_max_entry_bytes_is_refused_before_decoding(db: Any) -> None:
    cache = make(max_entry_bytes=4096)
    try:
        stmt = select(Category).order_by(Category.id).options(FromCache())
        with Session(db) as s:
            expected = [c.name for c in s.scalars(stmt)]
        key = _only_key(cache)
        # an entry too large for this process (another one's limit, or anyone's bytes):
        # decoding it would count "corrupt"; refused by its size, it never is
        cache.regions["default"].backend.set_serialized(key, b"\xc1" * 5000)
        cache._reader.memo.clear()
        with Session(db) as s:
            assert [c.name for c in s.scalars(stmt)] == expected
        stats = cache.stats()["default"]
        assert stats["too_large"] == 1 and stats["corrupt"] == 0 and stats["hits"] == 0
        assert stats["stores"] == 2  # the fresh result replaced it
    finally:
        cache.uninstall()


def test_memo_keeps_no_entry_that_failed_validation(db: Any) -> None:
    """Expired or stale entries are not kept decoded (nor is what a miss could not store)."""
    cache = make()
    try:
        rp = cache._reader
        stmt = select(Category).where(Category.id == 2).options(FromCache(expiration_time=0.3))
        with Session(db) as s:
            assert [c.name for c in s.scalars(stmt)] == ["cat 2"]
        key = _only_key(cache)
        assert rp.memo.get(("default", key)) is not None  # the stored entry, kept decoded
        (plan,) = [p for p in rp._plans._data.values() if "category" in p.tables]
        # this shape's results are predicted too large from now on: a miss stores nothing,
        # so whatever the memo holds afterwards came from the lookup
        plan.too_large = [10.0**9, time.monotonic() + 60, 100]
        time.sleep(0.4)
        with Session(db) as s:  # expired: a miss, and not kept
            assert [c.name for c in s.scalars(stmt)] == ["cat 2"]
        assert rp.memo.get(("default", key)) is None
        assert cache.stats()["default"]["hits"] == 0
        plan.too_large = None
        with Session(db) as s:  # stored again
            s.scalars(stmt).all()
        plan.too_large = [10.0**9, time.monotonic() + 60, 100]
        rp.memo.clear()
        with Session(db) as s:
            s.get(Category, 2).name = "renamed"  # type: ignore[union-attr]
            s.commit()
        with Session(db) as s:  # the region's entry is stale now: decoded, refused, not kept
            assert [c.name for c in s.scalars(stmt)] == ["renamed"]
        assert rp.memo.get(("default", key)) is None
        assert cache.stats()["default"]["hits"] == 0
    finally:
        cache.uninstall()


# -------------------------------------------- too large, remembered per shape


def test_too_large_is_remembered_per_shape(db: Any) -> None:
    cache = make(max_entry_bytes=500)  # 15 rows: ~670 bytes, 3 rows: ~250
    try:
        rp = cache._reader

        def stmt(n: int) -> Any:
            return select(Customer.id, Customer.name, Customer.email, Order.id, Order.placed
                          ).join(Order, Order.customer_id == Customer.id).where(
                Customer.id <= n).order_by(Order.id).options(FromCache())  # fmt: skip

        with Session(db) as s:
            assert len(s.execute(stmt(5)).all()) == 15
            (plan,) = [p for p in rp._plans._data.values() if "orders" in p.tables]
            assert plan.too_large is not None  # bytes per row learned
            per_row, _, left = plan.too_large
            assert per_row * 15 > 500 and left == 100
            for _ in range(3):  # as large again: not encoded again
                assert len(s.execute(stmt(5)).all()) == 15
            assert plan.too_large[2] == 97
            stats = cache.stats()["default"]
            assert stats["too_large"] == 4 and stats["stores"] == 0
            # a small result of the same shape is predicted to fit: stored
            assert len(s.execute(stmt(1)).all()) == 3
            assert cache.stats()["default"]["stores"] == 1
            plan.too_large[1] = time.monotonic() - 1  # the retry time has come
            assert len(s.execute(stmt(5)).all()) == 15
            assert plan.too_large is not None and plan.too_large[2] == 100  # measured again
            assert cache.stats()["default"]["too_large"] == 5
    finally:
        cache.uninstall()


# ------------------------------------------------------------------ trackers


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_trackers_do_not_outlive_the_session_or_the_checkout(
    kind: str, tmp_path_factory: Any
) -> None:
    url = db_url(kind, tmp_path_factory)
    engine = create_engine(url)
    models.Base.metadata.drop_all(engine)
    models.Base.metadata.create_all(engine)
    with Session(engine) as s:
        models.populate(s)
    cache = make()
    key = cache._info_key
    try:
        stmt = select(Category).order_by(Category.id).options(FromCache())
        with Session(engine) as s:
            s.scalars(stmt).all()
            s.add(Category(id=50, name="new"))
            s.flush()
            conn_info = s.connection().info
            assert key in s.info and key in conn_info  # while the transaction runs
            s.commit()
            assert key not in s.info  # the session keeps none between transactions
            s.scalars(stmt).all()
        assert key not in s.info
        assert key not in conn_info, "an idle connection tracker outlived its checkout"
        with engine.connect() as conn:
            conn.execute(text("select 1"))
            core_info = conn.info
            assert key in core_info
        assert key not in core_info
        if kind == "postgresql":  # state set by SQL lives on the DBAPI connection: kept
            with engine.connect() as conn:
                conn.execute(text("SET search_path TO public"))
                state_info = conn.info
            assert key in state_info and state_info[key].state_changed
        cache.close()
        assert len(cache._reader._plans) == 0 and len(cache._reader.memo) == 0
    finally:
        cache.uninstall()
        models.Base.metadata.drop_all(engine)
        engine.dispose()
