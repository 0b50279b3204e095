"""AsyncSession: the cache works through its ``sync_session_class``.

Real databases through real async drivers: SQLite via aiosqlite, PostgreSQL
via asyncpg (``QC_PG_URL`` with its driver replaced). Each test is a plain
sync test that runs its body with ``asyncio.run()`` (no pytest-asyncio); the
async engine is created inside that loop and disposed before it closes,
because pooled asyncpg / aiosqlite connections belong to one loop.

The cache is installed on an ``async_sessionmaker`` (its sync side, see
``events._session_target``) and uninstalled in teardown.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

pytest.importorskip("greenlet")

from sqlalchemy import event, inspect, make_url, select, text, update
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, joinedload, selectinload, sessionmaker

from sqla_querycache import FromCache, NoCache, QueryCache

from . import models
from .conftest import REQUIRE, StatementCounter, db_url, memory_region, redis_region
from .models import Category, Customer, Order, Product

UTC = dt.timezone.utc


# ------------------------------------------------------------------ helpers


def async_url(kind: str, tmp_path_factory: Any) -> Any:
    """The async-driver URL of a database kind (skip / fail like ``conftest.db_url``)."""
    if kind == "sqlite":
        pytest.importorskip("aiosqlite")
        return make_url(f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('adb') / 'async.db'}")
    url = make_url(db_url(kind))  # skips (or fails under QC_REQUIRE_SERVICES=1) when unset
    if kind == "postgresql":
        pytest.importorskip("asyncpg")
        return url.set(drivername="postgresql+asyncpg")
    raise AssertionError(kind)  # pragma: no cover


async def _prepare(url: Any) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("select 1"))
    except Exception as err:
        await engine.dispose()
        if REQUIRE or url.get_backend_name() == "sqlite":
            pytest.fail(f"database {url!r} unreachable: {err}")
        pytest.skip(f"database {url!r} unreachable: {err}")
    try:
        async with engine.begin() as conn:
            await conn.run_sync(models.Base.metadata.drop_all)
            await conn.run_sync(models.Base.metadata.create_all)
        async with AsyncSession(engine) as s:
            await s.run_sync(models.populate)
    finally:
        await engine.dispose()


def settle(cache: QueryCache) -> None:
    """Deliver post-commit version bumps a remote store may have queued (Redis)."""
    flush = getattr(cache.versions, "flush", None)
    if flush is not None:
        flush()


Body = Callable[[AsyncEngine, StatementCounter], Awaitable[Any]]


@dataclass
class AsyncEnv:
    """A populated database, a QueryCache installed on ``maker``, and a loop runner."""

    kind: str
    region_kind: str
    url: Any
    cache: QueryCache
    maker: async_sessionmaker

    async def _main(self, body: Body, timeout: float) -> Any:
        engine = create_async_engine(self.url)
        self.maker.configure(bind=engine)
        sql = StatementCounter(engine.sync_engine)
        try:
            return await asyncio.wait_for(body(engine, sql), timeout)
        finally:
            sql.close()
            self.maker.configure(bind=None)
            await engine.dispose()

    def run(self, body: Body, timeout: float = 60.0) -> Any:
        return asyncio.run(self._main(body, timeout))

    def run_guarded(self, body: Body, timeout: float = 30.0) -> Any:
        """``run`` in a watchdog thread: a blocked event loop fails the test, never hangs it."""
        out: dict[str, Any] = {}

        def target() -> None:
            try:
                out["value"] = self.run(body, timeout)
            except BaseException as err:  # re-raised in the test's thread
                out["error"] = err

        t = threading.Thread(target=target, name="qc-async-test", daemon=True)
        t.start()
        t.join(timeout + 15)
        if t.is_alive():
            pytest.fail(f"the event loop did not finish within {timeout + 15:.0f}s (deadlock?)")
        if "error" in out:
            raise out["error"]
        return out["value"]

    def hits(self) -> int:
        return self.cache.stats()["default"]["hits"]


def make_cache(region_kind: str, request: Any) -> QueryCache:
    if region_kind == "memory":
        return QueryCache(regions={"default": memory_region()})
    url = request.getfixturevalue("redis_url")
    request.getfixturevalue("redis_client")  # flushed
    versions = url if region_kind == "redis-versions" else "local"
    return QueryCache(regions={"default": redis_region(url)}, versions=versions)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_kind(request: Any) -> str:
    return request.param


@pytest.fixture(params=["memory", "redis", "redis-versions"])
def async_region_kind(request: Any) -> str:
    """memory region + local versions; Redis region + local versions; both in Redis."""
    return request.param


@pytest.fixture()
def aenv(db_kind: str, async_region_kind: str, request: Any, tmp_path_factory: Any
         ) -> Iterator[AsyncEnv]:  # fmt: skip
    url = async_url(db_kind, tmp_path_factory)
    asyncio.run(_prepare(url))
    cache = make_cache(async_region_kind, request)
    maker = async_sessionmaker(expire_on_commit=False)
    cache.install(maker)
    try:
        yield AsyncEnv(db_kind, async_region_kind, url, cache, maker)
    finally:
        cache.uninstall()
        cache.versions.close()


# ------------------------------------------------------------ plain shapes


def customer_graph(customers: Any) -> list[Any]:
    return [
        (c.id, c.name, c.email,
         [(o.id, o.placed, [(i.id, i.quantity, i.product_id) for i in o.items]) for o in c.orders])
        for c in customers
    ]  # fmt: skip


def product_graph(products: Any) -> list[Any]:
    return [
        (p.id, p.name, p.price, p.created, p.sku, p.attrs, p.category.name,
         [t.label for t in p.tags])
        for p in products
    ]  # fmt: skip


#: entities with a two-level selectinload graph (no Uuid column anywhere)
CUSTOMERS = (
    select(Customer)
    .where(Customer.id.in_([1, 2, 4]))
    .options(selectinload(Customer.orders).selectinload(Order.items))
    .order_by(Customer.id)
)
#: entities with a joined many-to-one and a selectin many-to-many; Product has a Uuid column
PRODUCTS = (
    select(Product)
    .where(Product.category_id == 2)
    .options(joinedload(Product.category), selectinload(Product.tags))
    .order_by(Product.id)
)
COLUMNS = (
    select(Order.id, Order.placed, Customer.name, Customer.email)
    .join(Order.customer)
    .where(Order.id > 20)
    .order_by(Order.id)
)
COLUMNS_WITH_UUID = (
    select(Product.id, Product.name, Product.price, Product.created, Product.sku, Product.attrs)
    .where(Product.price > 10)
    .order_by(Product.id)
)
MIXED = (
    select(Product, Category.name.label("cat"))
    .join(Product.category)
    .where(Product.id <= 8)
    .order_by(Product.id)
)
ORDERS = select(Order).where(Order.placed >= dt.date(2024, 2, 2)).order_by(Order.id)
CUSTOMERS_FROM_2 = select(Customer).where(Customer.id >= 2).order_by(Customer.id)


# -------------------------------------------------------------------- tests


def test_second_execution_is_a_hit_with_zero_sql(aenv: AsyncEnv) -> None:
    stmt = ORDERS.options(FromCache())

    async def body(engine: AsyncEngine, sql: StatementCounter) -> None:
        async with aenv.maker() as s:
            first = [(o.id, o.customer_id, o.placed) for o in await s.scalars(stmt)]
        assert sql.count > 0
        mark = sql.count
        async with aenv.maker() as s:
            second = [(o.id, o.customer_id, o.placed) for o in await s.scalars(stmt)]
        assert sql.since(mark) == 0, sql.statements[mark:]
        assert first == second and len(first) == 10
        assert aenv.hits() == 1
        stats = aenv.cache.stats()["default"]
        assert stats["misses"] == 1 and stats["stores"] == 1

    aenv.run(body)


def test_asyncpg_uuid_values_are_cached(aenv: AsyncEnv, request: Any) -> None:
    stmt = select(Product).where(Product.id <= 3).order_by(Product.id).options(FromCache())

    async def body(engine: AsyncEngine, sql: StatementCounter) -> None:
        async with aenv.maker() as s:
            first = [(p.id, p.sku) for p in await s.scalars(stmt)]
        mark = sql.count
        async with aenv.maker() as s:
            second = [(p.id, p.sku) for p in await s.scalars(stmt)]
        assert aenv.cache.stats()["default"]["not_stored"] == 0
        assert sql.since(mark) == 0
        assert second == first == [(i, uuid.UUID(int=i)) for i in (1, 2, 3)]
        assert all(isinstance(u, uuid.UUID) for _, u in second)

    aenv.run(body)


@pytest.mark.parametrize("name", [
    "customers_selectin_graph", "products_joined_and_selectin", "columns", "columns_with_uuid",
    "entity_and_column",
])  # fmt: skip
def test_cached_result_equals_uncached(aenv: AsyncEnv, name: str, request: Any) -> None:
    async def run_once(stmt: Any) -> Any:
        async with aenv.maker() as s:
            result = await s.execute(stmt)
            if name == "customers_selectin_graph":
                return customer_graph(result.scalars())
            if name == "products_joined_and_selectin":
                return product_graph(result.unique().scalars())
            if name.startswith("columns"):
                return list(result.keys()), [tuple(r) for r in result]
            return list(result.keys()), [(p.id, p.name, p.price, cat) for p, cat in result]

    stmt = {"customers_selectin_graph": CUSTOMERS, "products_joined_and_selectin": PRODUCTS,
            "columns": COLUMNS, "columns_with_uuid": COLUMNS_WITH_UUID,
            "entity_and_column": MIXED}[name]  # fmt: skip

    async def body(engine: AsyncEngine, sql: StatementCounter) -> None:
        uncached = await run_once(stmt)
        missed = await run_once(stmt.options(FromCache()))
        mark = sql.count
        hit = await run_once(stmt.options(FromCache()))
        assert missed == uncached
        assert hit == uncached
        assert len(uncached[1] if isinstance(uncached, tuple) else uncached) > 1
        assert sql.since(mark) == 0, sql.statements[mark:]
        assert aenv.hits() == 1

    aenv.run(body)


def test_scalar_and_mapping_apis_on_a_hit(aenv: AsyncEnv) -> None:
    one = select(Customer).where(Customer.id == 3).options(FromCache())
    emails = select(Customer.email).where(Customer.id > 1).order_by(Customer.id)

    async def body(engine: AsyncEngine, sql: StatementCounter) -> None:
        async def go() -> Any:
            async with aenv.maker() as s:
                c = (await s.execute(one)).scalar_one()
                got = (await s.scalars(emails.options(FromCache()))).all()
                maps = (await s.execute(COLUMNS.options(FromCache()))).mappings().all()
                return (c.id, c.name), got, [dict(m) for m in maps]

        expected = await go()
        mark = sql.count
        assert await go() == expected
        assert sql.since(mark) == 0
        assert aenv.hits() == 3

    aenv.run(body)


async def _write(how: str, aenv: AsyncEnv, engine: AsyncEngine) -> str:
    """Rename customer 3 (or add customer 99) by ``how``, committed; the new name."""
    new = f"renamed by {how}"
    if how == "orm_change":
        async with aenv.maker() as s:
            c = await s.get(Customer, 3)
            assert c is not None
            c.name = new
            await s.commit()
    elif how == "orm_bulk_update":
        async with aenv.maker() as s:
            await s.execute(update(Customer).where(Customer.id == 3).values(name=new))
            await s.commit()
    elif how == "orm_update_fetch":
        async with aenv.maker() as s:
            await s.execute(
                update(Customer).where(Customer.id == 3).values(name=new),
                execution_options={"synchronize_session": "fetch"},
            )
            await s.commit()
    elif how == "core_connection":
        async with engine.begin() as conn:
            customer = models.Base.metadata.tables["customer"]
            await conn.execute(update(customer).where(customer.c.id == 3).values(name=new))
    elif how == "orm_insert":
        async with aenv.maker() as s:
            s.add(Customer(id=99, name=new, email="new@example.com"))
            await s.commit()
    else:  # pragma: no cover
        raise AssertionError(how)
    return new


@pytest.mark.parametrize(
    "how", ["orm_change", "orm_bulk_update", "orm_update_fetch", "core_connection", "orm_insert"]
)
def test_committed_async_write_invalidates(aenv: AsyncEnv, how: str) -> None:
    stmt = CUSTOMERS_FROM_2.options(FromCache())

    async def names() -> list[str]:
        async with aenv.maker() as s:
            return [c.name for c in await s.scalars(stmt)]

    async def body(engine: AsyncEngine, sql: StatementCounter) -> None:
        before = await names()
        mark = sql.count
        assert await names() == before and sql.since(mark) == 0  # cached
        new = await _write(how, aenv, engine)
        mark = sql.count
        after = await names()
        assert sql.since(mark) > 0, "a committed write was served from the cache"
        assert new in after and new not in before
        settle(aenv.cache)
        await names()  # stores the fresh result (it may have bypassed while in flight)
        mark = sql.count
        assert await names() == after
        assert sql.since(mark) == 0, "the fresh result is cached again"

    aenv.run(body)


def test_uncommitted_write_reads_its_own_and_rollback_keeps_the_entry(aenv: AsyncEnv) -> None:
    stmt = CUSTOMERS_FROM_2.options(FromCache())

    async def body(engine: AsyncEngine, sql: StatementCounter) -> None:
        async with aenv.maker() as s:
            before = [c.name for c in await s.scalars(stmt)]
        async with aenv.maker() as s:
            await s.execute(update(Customer).where(Customer.id == 3).values(name="in flight"))
            mark = sql.count
            mine = [c.name for c in await s.scalars(stmt)]
            assert sql.since(mark) > 0, "a transaction that wrote the table must bypass the cache"
            assert "in flight" in mine
            await s.rollback()
        async with aenv.maker() as s:
            mark = sql.count
            again = [c.name for c in await s.scalars(stmt)]
        assert again == before
        if aenv.region_kind == "redis-versions":
            # the Redis store marks (and bumps) a table when it is first written, so that
            # the commit's round trip overlaps the transaction: a rollback costs a miss
            assert sql.since(mark) == 1, "the rolled-back write's early bump reloads once"
        else:
            assert sql.since(mark) == 0, "a rolled-back write must not invalidate"

    aenv.run(body)


def test_hit_objects_are_attached(aenv: AsyncEnv) -> None:
    stmt = select(Category).where(Category.id == 3).options(FromCache())

    async def body(engine: AsyncEngine, sql: StatementCounter) -> None:
        async with aenv.maker() as s:
            (await s.scalars(stmt)).one()
        async with aenv.maker() as s:
            mark = sql.count
            c = (await s.scalars(stmt)).one()
            assert sql.since(mark) == 0
            assert aenv.hits() == 1
            state = inspect(c)
            assert state.persistent and state.session is s.sync_session
            assert await s.get(Category, 3) is c  # identity map
            assert sql.since(mark) == 0
            # lazy loads and deferred columns work inside the greenlet, as for a loaded object
            ids = await s.run_sync(lambda _: [p.id for p in c.products])
            assert ids == [i for i in range(1, 41) if (i % 4) + 1 == 3]
            assert await s.run_sync(lambda _: c.product_count) == 10
            c.name = "renamed category"
            assert c in s.dirty
            await s.commit()
        async with aenv.maker() as s:
            fresh = await s.get(Category, 3)
            assert fresh is not None and fresh.name == "renamed category"
        settle(aenv.cache)
        async with aenv.maker() as s:  # the commit invalidated the cached entry
            mark = sql.count
            assert (await s.scalars(stmt)).one().name == "renamed category"
            assert sql.since(mark) > 0

    aenv.run(body)


def test_held_object_with_pending_change_survives_a_hit(aenv: AsyncEnv) -> None:
    stmt = select(Category).order_by(Category.id).options(FromCache())

    async def body(engine: AsyncEngine, sql: StatementCounter) -> None:
        async with aenv.maker() as s:
            (await s.scalars(stmt)).all()
        async with aenv.maker(autoflush=False) as s:
            held = await s.get(Category, 2)
            assert held is not None
            held.name = "pending rename"
            mark = sql.count
            got = (await s.scalars(stmt)).all()
            assert sql.since(mark) == 0
            assert held in got and held.name == "pending rename"
            assert [c.id for c in got] == [1, 2, 3, 4]

    aenv.run(body)


def test_concurrent_misses_on_one_key_do_not_block_the_loop(aenv: AsyncEnv) -> None:
    """10 tasks, each with its own AsyncSession, miss the same key at once.

    The cache's per-key lock is a thread lock; every task runs in a greenlet
    on the loop's one thread, so a task waiting for it would stop the loop
    and with it the task holding it. They must all finish, quickly, with
    the right rows, and the loop must keep turning meanwhile.
    """
    stmt = CUSTOMERS.options(FromCache())
    n_tasks = 10

    async def body(engine: AsyncEngine, sql: StatementCounter) -> None:
        async with aenv.maker() as s:
            expected = customer_graph(await s.scalars(CUSTOMERS))

        gaps: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:  # how long the loop ever stood still
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.005)
                t = time.monotonic()
                gaps.append(t - last)
                last = t

        async def worker() -> Any:
            async with aenv.maker() as s:
                return customer_graph(await s.scalars(stmt))

        tick = asyncio.create_task(ticker())
        started = time.monotonic()
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(worker() for _ in range(n_tasks))), timeout=20
            )
        finally:
            stop.set()
            await tick
        elapsed = time.monotonic() - started

        assert len(results) == n_tasks
        assert all(r == expected for r in results)
        # lock_timeout is 30 s: a task that blocked on the key lock would show here
        assert elapsed < 10, f"{n_tasks} concurrent misses took {elapsed:.1f}s"
        assert max(gaps, default=0) < 2.0, f"the event loop stood still {max(gaps):.2f}s"
        stats = aenv.cache.stats()["default"]
        assert stats["errors"] == 0 and stats["corrupt"] == 0
        assert stats["hits"] + stats["misses"] + stats["bypassed"] >= n_tasks
        assert stats["stores"] >= 1

        mark = sql.count  # and the key is now served from the cache
        async with aenv.maker() as s:
            assert customer_graph(await s.scalars(stmt)) == expected
        assert sql.since(mark) == 0

    aenv.run_guarded(body)


def test_concurrent_misses_while_another_loop_holds_the_key(aenv: AsyncEnv) -> None:
    """Another thread's event loop is in the middle of the same miss, holding the key.

    Tasks on this loop that find the key held wait for it without blocking
    their loop (they await a future the holder sets from its own thread),
    then hit what the holder stored: none of them runs the query. The holder
    is stalled inside the key (a wrapper around ``ReadPath._locks.hold``)
    until all five tasks wait, and the loop must keep turning meanwhile.
    """
    stmt = select(Order).where(Order.customer_id == 4).order_by(Order.id).options(FromCache())
    expected = [40, 41, 42]
    release = threading.Event()
    entered = threading.Event()
    locks = aenv.cache._reader._locks
    real_hold = locks.hold
    seen: list[tuple[str, str]] = []

    @contextmanager
    def hold(key: str, timeout: float) -> Iterator[Any]:
        with real_hold(key, timeout) as state:  # (whatever it yields is passed through)
            name = threading.current_thread().name
            seen.append((name, key))
            if name == "qc-holder" and not entered.is_set():
                entered.set()
                release.wait(30)  # a slow query, inside the key (blocks only its own loop)
            yield state

    holder_out: dict[str, Any] = {}

    async def holder_main() -> None:
        engine = create_async_engine(aenv.url)
        try:
            async with aenv.maker(bind=engine) as s:
                holder_out["ids"] = [o.id for o in await s.scalars(stmt)]
        finally:
            await engine.dispose()

    def holder() -> None:
        try:
            asyncio.run(holder_main())
        except BaseException as err:
            holder_out["error"] = err

    locks.hold = hold  # type: ignore[method-assign]
    t = threading.Thread(target=holder, name="qc-holder", daemon=True)
    t.start()
    try:
        assert entered.wait(20), "the holder never took the key"
        held_key = next(k for n, k in seen if n == "qc-holder")

        async def body(engine: AsyncEngine, sql: StatementCounter) -> Any:
            async def worker() -> list[int]:
                async with aenv.maker() as s:
                    return [o.id for o in await s.scalars(stmt)]

            mark = sql.count
            tasks = asyncio.gather(*(worker() for _ in range(5)))
            started = time.monotonic()
            gaps = []
            while len(locks._keys[held_key].waiters) < 5:  # the loop turns while they wait
                assert time.monotonic() - started < 15, "the tasks never waited for the key"
                t0 = time.monotonic()
                await asyncio.sleep(0.01)
                gaps.append(time.monotonic() - t0)
            release.set()
            out = await asyncio.wait_for(tasks, 20)
            return out, sql.since(mark), max(gaps, default=0)

        results, ran, gap = aenv.run_guarded(body)
    finally:
        release.set()
        t.join(30)
        locks.hold = real_hold  # type: ignore[method-assign]
    assert "error" not in holder_out, holder_out.get("error")
    assert holder_out["ids"] == expected
    assert results == [expected] * 5
    assert ran == 0, "a task ran the query the other loop's holder was running"
    assert gap < 1.0, f"the event loop stood still {gap:.2f}s while tasks waited"
    stats = aenv.cache.stats()["default"]
    assert stats["stores"] == 1 and stats["hits"] == 5 and stats["misses"] == 1, stats
    assert not locks._keys  # every key was let go


def _await_on_loop(awaitable: Any) -> Any:
    """Await from sync code running in AsyncSession's greenlet (a listener, here)."""
    from sqlalchemy.util import concurrency

    return (getattr(concurrency, "await_", None) or concurrency.await_only)(awaitable)


@contextmanager
def _listening(engine: AsyncEngine, fn: Callable[..., Any]) -> Iterator[None]:
    event.listen(engine.sync_engine, "before_cursor_execute", fn)
    try:
        yield
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", fn)


class _LoopWatch:
    """How long the event loop ever stood still while it runs (a ticker task)."""

    def __init__(self) -> None:
        self.gaps: list[float] = []
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            await asyncio.sleep(0.005)
            now = time.monotonic()
            self.gaps.append(now - last)
            last = now

    async def stop(self) -> float:
        self._stop.set()
        await self._task
        return max(self.gaps, default=0.0)


N_COLD = 30


def test_thirty_cold_requests_run_one_query_and_one_store(aenv: AsyncEnv) -> None:
    """30 tasks, each with its own AsyncSession, request one cold key at once.

    The first holds the key; the 29 others wait for it on the event loop
    (not on its thread) and hit what it stored: the statements sent are
    exactly those of one uncached execution, and one entry is stored. The
    first query is slowed (an awaited sleep in a listener) so that every
    task arrives while it runs.
    """
    stmt = CUSTOMERS.options(FromCache())

    def slow(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if "FROM customer" in statement:
            _await_on_loop(asyncio.sleep(0.2))

    async def body(engine: AsyncEngine, sql: StatementCounter) -> None:
        async with aenv.maker() as s:
            expected = customer_graph(await s.scalars(CUSTOMERS))
        one_query = sql.count  # the statements one uncached execution sends
        assert one_query == 3, sql.statements  # customers, their orders, their items

        async def worker() -> Any:
            async with aenv.maker() as s:
                return customer_graph(await s.scalars(stmt))

        mark = sql.count
        watch = _LoopWatch()
        with _listening(engine, slow):
            results = await asyncio.gather(*(worker() for _ in range(N_COLD)))
        gap = await watch.stop()
        assert sql.since(mark) == one_query, sql.statements[mark:]
        assert len(results) == N_COLD and all(r == expected for r in results)
        stats = aenv.cache.stats()["default"]
        assert stats["stores"] == 1 and stats["misses"] == 1, stats
        assert stats["hits"] == N_COLD - 1, stats
        assert stats["errors"] == 0 and stats["bypassed"] == 0, stats
        assert gap < 1.0, f"the event loop stood still {gap:.2f}s"
        assert not aenv.cache._reader._locks._keys

    aenv.run_guarded(body)


def test_waiters_run_their_own_query_when_the_holders_raises(aenv: AsyncEnv) -> None:
    """The holder's query raises: waiters neither hang nor queue one by one.

    Each runs its own query, as it would uncached (here it succeeds: only
    the first execution fails), and the holder alone gets the error.
    """
    stmt = ORDERS.options(FromCache())
    seen = {"n": 0}

    def fail_first(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if "FROM orders" in statement:
            seen["n"] += 1
            if seen["n"] == 1:
                _await_on_loop(asyncio.sleep(0.3))  # the others arrive and wait meanwhile
                raise RuntimeError("the holder's query failed")

    async def body(engine: AsyncEngine, sql: StatementCounter) -> None:
        async with aenv.maker() as s:
            expected = [o.id for o in await s.scalars(ORDERS)]
        seen["n"] = 0

        async def worker() -> Any:
            async with aenv.maker() as s:
                return [o.id for o in await s.scalars(stmt)]

        watch = _LoopWatch()
        started = time.monotonic()
        with _listening(engine, fail_first):
            results = await asyncio.gather(*(worker() for _ in range(N_COLD)),
                                           return_exceptions=True)  # fmt: skip
        elapsed = time.monotonic() - started
        gap = await watch.stop()
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 1 and "the holder's query failed" in str(errors[0]), errors
        assert [r for r in results if not isinstance(r, BaseException)] == [expected] * 29
        # the holder's, then the waiters' own, side by side (a late waiter may hit what
        # an earlier one stored meanwhile)
        stats = aenv.cache.stats()["default"]
        assert seen["n"] >= 2 and seen["n"] - 1 + stats["hits"] == N_COLD - 1, (seen, stats)
        assert elapsed < 10, f"the waiters took {elapsed:.1f}s"
        assert gap < 1.0, f"the event loop stood still {gap:.2f}s"
        assert not aenv.cache._reader._locks._keys
        mark = sql.count  # what they stored is served
        async with aenv.maker() as s:
            assert [o.id for o in await s.scalars(stmt)] == expected
        assert sql.since(mark) == 0

    aenv.run_guarded(body)


def test_waiters_give_up_after_lock_timeout(aenv: AsyncEnv) -> None:
    """A holder slower than ``lock_timeout``: waiters run their own query after it.

    The holder's query takes 3 s (an awaited sleep); with ``lock_timeout``
    0.4 s the nine waiters are done long before it, the loop turning all along.
    """
    aenv.cache.lock_timeout = 0.4
    stmt = ORDERS.options(FromCache())
    seen = {"n": 0}

    def slow_first(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if "FROM orders" in statement:
            seen["n"] += 1
            if seen["n"] == 1:
                _await_on_loop(asyncio.sleep(3.0))

    async def body(engine: AsyncEngine, sql: StatementCounter) -> None:
        async with aenv.maker() as s:
            expected = [o.id for o in await s.scalars(ORDERS)]
        seen["n"] = 0
        started = time.monotonic()

        async def worker(delay: float) -> tuple[list[int], float]:
            await asyncio.sleep(delay)
            async with aenv.maker() as s:
                ids = [o.id for o in await s.scalars(stmt)]
            return ids, time.monotonic() - started

        watch = _LoopWatch()
        with _listening(engine, slow_first):
            holder = asyncio.create_task(worker(0))
            waiters = await asyncio.gather(*(worker(0.1) for _ in range(9)))
            assert not holder.done()
            held = await holder
        gap = await watch.stop()
        assert held[0] == expected and held[1] >= 3.0
        assert all(ids == expected for ids, _ in waiters)
        slowest = max(t for _, t in waiters)
        assert 0.4 <= slowest < 2.5, f"waiters took {slowest:.2f}s with lock_timeout 0.4s"
        # each waiter ran its own query after the timeout, or hit what one of them stored
        stats = aenv.cache.stats()["default"]
        assert seen["n"] >= 2 and seen["n"] - 1 + stats["hits"] == 9, (seen, stats)
        assert gap < 1.0, f"the event loop stood still {gap:.2f}s"
        assert not aenv.cache._reader._locks._keys

    aenv.run_guarded(body)


# ------------------------------------------------------------ install targets


class _ScopedSync(Session):
    pass


class _ScopedAsync(AsyncSession):
    sync_session_class = _ScopedSync


@pytest.mark.parametrize("target", ["maker_with_sync_class", "async_session_subclass"])
def test_install_on_a_scoped_async_target(target: str, tmp_path_factory: Any) -> None:
    """Only sessions of the hooked sync class are cached; uninstall() unhooks them."""
    url = async_url("sqlite", tmp_path_factory)
    asyncio.run(_prepare(url))
    cache = QueryCache(regions={"default": memory_region()})
    if target == "maker_with_sync_class":
        maker: Any = async_sessionmaker(expire_on_commit=False, sync_session_class=_ScopedSync)
        cache.install(maker)
    else:
        maker = async_sessionmaker(expire_on_commit=False, class_=_ScopedAsync)
        cache.install(_ScopedAsync)
    stmt = ORDERS.options(FromCache())

    async def main() -> None:
        engine = create_async_engine(url)
        sql = StatementCounter(engine.sync_engine)
        try:

            async def run(factory: Any) -> int:
                mark = sql.count
                async with factory(bind=engine) as s:
                    assert len((await s.scalars(stmt)).all()) == 10
                return sql.since(mark)

            assert await run(maker) > 0
            assert await run(maker) == 0  # hooked: a hit
            assert await run(AsyncSession) > 0  # a plain AsyncSession is not hooked
            assert await run(AsyncSession) > 0
            assert cache.stats()["default"]["hits"] == 1
            cache.uninstall()
            assert await run(maker) > 0  # unhooked
            assert await run(maker) > 0
        finally:
            cache.uninstall()
            sql.close()
            await engine.dispose()

    asyncio.run(main())


def test_no_cache_option_and_session_region_on_async(aenv: AsyncEnv) -> None:
    stmt = select(Category).order_by(Category.id)

    async def body(engine: AsyncEngine, sql: StatementCounter) -> None:
        async def run(s_info: dict[str, Any], q: Any) -> int:
            mark = sql.count
            async with aenv.maker(info=s_info) as s:
                assert len((await s.scalars(q)).all()) == 4
            return sql.since(mark)

        region = {"cache_region": "default"}
        assert await run(region, stmt) > 0  # miss, stored
        assert await run(region, stmt) == 0  # session region: a hit
        assert await run(region, stmt.options(NoCache())) > 0  # NoCache wins
        assert await run({}, stmt) > 0  # no region, no caching

    aenv.run(body)


# ------------------------------------- the same per-key waiting, from threads


def test_threads_after_a_holder_that_raised_run_side_by_side(sqlite_engine: Any) -> None:
    """Sync sessions in threads: the holder's query raises; the waiters then run their
    own queries at once, not one after the other behind the key."""
    cache = QueryCache(regions={"default": memory_region()})
    maker = sessionmaker(sqlite_engine)
    cache.install(maker)
    stmt = ORDERS.options(FromCache())
    n_threads = 8
    seen = {"n": 0}
    lock = threading.Lock()
    barrier = threading.Barrier(n_threads)

    def slow(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if "FROM orders" in statement:
            with lock:
                seen["n"] += 1
                first = seen["n"] == 1
            if first:
                time.sleep(0.5)  # the others arrive and wait meanwhile
                raise RuntimeError("the holder's query failed")
            time.sleep(0.3)  # each waiter's own query

    def work(out: list[Any]) -> None:
        barrier.wait()
        try:
            with maker() as s:
                out.append([o.id for o in s.scalars(stmt)])
        except Exception as err:
            out.append(err)

    with maker() as s:
        expected = [o.id for o in s.scalars(ORDERS)]
    event.listen(sqlite_engine, "before_cursor_execute", slow)
    out: list[Any] = []
    threads = [threading.Thread(target=work, args=(out,)) for _ in range(n_threads)]
    try:
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        elapsed = time.monotonic() - started
    finally:
        event.remove(sqlite_engine, "before_cursor_execute", slow)
        cache.uninstall()
    errors = [r for r in out if isinstance(r, Exception)]
    assert len(errors) == 1 and "the holder's query failed" in str(errors[0]), out
    assert [r for r in out if not isinstance(r, Exception)] == [expected] * (n_threads - 1)
    # each waiter ran its own query, or (late) hit what another stored
    assert seen["n"] >= 2 and seen["n"] - 1 + cache.stats()["default"]["hits"] == n_threads - 1
    # one after the other would take 0.5 + 7 x 0.3 = 2.6 s
    assert elapsed < 1.6, f"{elapsed:.2f}s: the waiters queued behind the key"


def test_a_write_aiosqlite_commits_by_itself_invalidates(aenv: AsyncEnv) -> None:
    """aiosqlite runs sqlite3's legacy transaction control: a ``WITH ... UPDATE`` on a
    connection in ``begin()`` is committed at once, and rolling the connection back
    must not drop its bump (PostgreSQL holds it in the transaction: rolled back)."""
    stmt = CUSTOMERS_FROM_2.options(FromCache())

    async def names() -> list[str]:
        async with aenv.maker() as s:
            return [c.name for c in await s.scalars(stmt)]

    async def plain() -> list[str]:
        async with aenv.maker() as s:
            return [c.name for c in await s.scalars(CUSTOMERS_FROM_2.options(NoCache()))]

    async def body(engine: AsyncEngine, sql: StatementCounter) -> None:
        assert await names() == await plain()  # stored
        async with engine.connect() as conn:
            await conn.begin()
            await conn.execute(text("WITH x AS (SELECT 3 AS id) UPDATE customer "
                                    "SET name = 'by the driver' WHERE id IN (SELECT id FROM x)"))
            assert await names() == await plain(), "while the connection is open"
            await conn.rollback()
        settle(aenv.cache)
        after = await plain()
        assert ("by the driver" in after) == (aenv.kind == "sqlite")
        assert await names() == after

    aenv.run(body)
