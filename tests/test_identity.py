"""The object identity cache: session.get, lazy loads and collections, per row.

The oracle is the database itself, read through Core on a plain connection
(no ORM event, so never through the cache). Every cached read is compared
with it; the statement counter proves hits are hits.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import ForeignKey, String, delete, select, text, update
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)

from sqla_querycache import NoCache, QueryCache
from sqla_querycache.exc import ConfigurationError

from . import models as m
from .conftest import StatementCounter, identity_cache, memory_region, redis_region


@pytest.fixture()
def idc(engine: Any, region_kind: str, request: Any) -> Iterator[tuple[QueryCache, Any]]:
    cache = identity_cache(region_kind, request)
    maker = sessionmaker(engine)
    cache.install(Session)
    yield cache, maker
    cache.uninstall()
    cache.close()


def hits(cache: QueryCache) -> int:
    return cache.stats()["default"]["hits"]


# ------------------------------------------------------------ the oracle


def db_product(engine: Any, pid: int) -> Any:
    t = m.Product.__table__
    with engine.connect() as c:
        return c.execute(select(t.c.name, t.c.price).where(t.c.id == pid)).first()


def db_orders(engine: Any, cid: int) -> list[Any]:
    t = m.Order.__table__
    with engine.connect() as c:
        return [tuple(r) for r in c.execute(select(t.c.id, t.c.placed)
                                            .where(t.c.customer_id == cid).order_by(t.c.id))]  # fmt: skip


def db_items(engine: Any, oid: int) -> list[Any]:
    t = m.OrderItem.__table__
    with engine.connect() as c:
        q = select(t.c.id, t.c.quantity, t.c.product_id).where(t.c.order_id == oid).order_by(t.c.id)
        return [tuple(r) for r in c.execute(q)]


def db_item_order(engine: Any, iid: int) -> Any:
    i, o = m.OrderItem.__table__, m.Order.__table__
    with engine.connect() as c:
        return c.execute(select(o.c.id, o.c.customer_id).select_from(i.join(o))
                         .where(i.c.id == iid)).first()  # fmt: skip


def db_tags(engine: Any, pid: int) -> list[int]:
    pt = m.product_tag
    with engine.connect() as c:
        return sorted(r[0] for r in c.execute(select(pt.c.tag_id).where(pt.c.product_id == pid)))


# ------------------------------------------------------------- basics


def test_identity_region_must_be_a_configured_region() -> None:
    for bad in ("nope", 3, ["default"]):
        with pytest.raises(ConfigurationError):
            QueryCache(regions={"default": memory_region()}, identity_region=bad)


def test_get_is_a_hit_in_a_fresh_session(idc: Any, engine: Any) -> None:
    _cache, maker = idc
    sql = StatementCounter(engine)
    with maker() as s:
        p = s.get(m.Product, 7)
        first = (p.name, p.price, p.sku)
    mark = sql.count
    with maker() as s:
        p = s.get(m.Product, 7)
        assert (p.name, p.price, p.sku) == first
        assert sql.since(mark) == 0
        assert s.get(m.Product, 7) is p  # the identity map still wins
    assert (first[0], first[1]) == tuple(db_product(engine, 7))
    sql.close()


def test_a_row_update_invalidates_that_row_only(idc: Any, engine: Any) -> None:
    _cache, maker = idc
    sql = StatementCounter(engine)
    for pid in (7, 8):
        with maker() as s:
            s.get(m.Product, pid)
    with maker() as s:
        s.get(m.Product, 7).price = Decimal("99.50")
        s.commit()
    expected = db_product(engine, 8).price
    mark = sql.count
    with maker() as s:
        assert s.get(m.Product, 8).price == expected
        assert sql.since(mark) == 0  # row 8: still a hit
        assert s.get(m.Product, 7).price == Decimal("99.50")
        assert sql.since(mark) == 1  # row 7: a miss that sees the new value
    sql.close()


@pytest.mark.parametrize("how", ["orm_bulk", "core", "text", "delete_other"])
def test_writes_that_name_no_row_invalidate_every_row(idc: Any, engine: Any, how: str) -> None:
    _cache, maker = idc
    with maker() as s:
        s.get(m.Product, 3)
    with maker() as s:
        if how == "orm_bulk":
            s.execute(update(m.Product).where(m.Product.price > 0).values(name="bulk"))
        elif how == "core":
            s.connection().execute(update(m.Product.__table__).values(name="bulk"))
        elif how == "text":
            s.execute(text("UPDATE product SET name = 'bulk'"))
        else:  # a DELETE by a non-key column leaves row 3 but must not be trusted to
            s.execute(delete(m.OrderItem).where(m.OrderItem.product_id == 3))
            s.execute(update(m.Product).where(m.Product.name != "x").values(name="bulk"))
        s.commit()
    with maker() as s:
        assert s.get(m.Product, 3).name == "bulk"


def test_core_update_by_primary_key_is_row_level(idc: Any, engine: Any) -> None:
    _cache, maker = idc
    sql = StatementCounter(engine)
    for pid in (1, 2):
        with maker() as s:
            s.get(m.Product, pid)
    with engine.begin() as c:
        c.execute(update(m.Product.__table__).where(m.Product.__table__.c.id == 1)
                  .values(name="core by pk"))  # fmt: skip
    expected = db_product(engine, 2).name
    mark = sql.count
    with maker() as s:
        assert s.get(m.Product, 2).name == expected
        assert sql.since(mark) == 0
        assert s.get(m.Product, 1).name == "core by pk"
    sql.close()


def test_many_to_one_lazy_load_shares_the_row_entry(idc: Any, engine: Any) -> None:
    _cache, maker = idc
    sql = StatementCounter(engine)
    # each in its own session: under REPEATABLE READ (MariaDB's default) a
    # transaction that has read holds a snapshot, and bypasses the cache
    with maker() as s:
        s.get(m.Customer, 2)  # fills customer 2's row entry
    with maker() as s:
        s.get(m.Order, 20)
    mark = sql.count
    with maker() as s:
        order = s.get(m.Order, 20)
        assert order.customer.name == "customer 2"
        assert sql.since(mark) == 0  # both from the cache, the lazy load too
    with maker() as s:
        s.get(m.Customer, 2).name = "renamed"
        s.commit()
    with maker() as s:
        assert s.get(m.Order, 20).customer.name == "renamed"
    sql.close()


def test_collections_follow_a_child_that_moves(idc: Any, engine: Any) -> None:
    _cache, maker = idc
    sql = StatementCounter(engine)

    def orders(cid: int) -> list[Any]:
        with maker() as s:
            return [(o.id, o.placed) for o in s.get(m.Customer, cid).orders]

    for cid in (1, 2, 3, 1, 2, 3):  # twice: see the REPEATABLE READ note above
        orders(cid)
    expected = db_orders(engine, 3)
    mark = sql.count
    assert orders(3) == expected
    assert sql.since(mark) == 0
    with maker() as s:
        s.get(m.Order, 10).customer_id = 2  # moves from customer 1 to 2
        s.commit()
    assert orders(1) == db_orders(engine, 1)
    assert orders(2) == db_orders(engine, 2)
    assert 10 in [o for o, _ in orders(2)] and 10 not in [o for o, _ in orders(1)]
    mark = sql.count
    assert orders(3) == expected
    assert sql.since(mark) == 0  # customer 3's collection was not touched
    with maker() as s:  # through the relationship, and a content change
        o = s.get(m.Order, 21)
        o.customer = s.get(m.Customer, 3)
        s.get(m.Order, 30).placed = m.dt.date(2025, 5, 5)
        s.commit()
    for cid in (1, 2, 3):
        assert orders(cid) == db_orders(engine, cid)
    sql.close()


def test_collection_insert_and_delete(idc: Any, engine: Any) -> None:
    _cache, maker = idc

    def items(oid: int) -> list[Any]:
        with maker() as s:
            return [(i.id, i.quantity, i.product_id) for i in s.get(m.Order, oid).items]

    assert items(10) == db_items(engine, 10)
    assert items(11) == db_items(engine, 11)
    with maker() as s:
        s.add(m.OrderItem(id=500, order_id=10, product_id=5, quantity=9))
        s.commit()
    assert items(10) == db_items(engine, 10)
    assert 500 in [i for i, *_ in items(10)]
    with maker() as s:
        s.delete(s.get(m.OrderItem, 500))
        s.commit()
    assert items(10) == db_items(engine, 10)
    assert items(11) == db_items(engine, 11)


def test_many_to_many_append_and_remove(idc: Any, engine: Any) -> None:
    _cache, maker = idc

    def tags(pid: int) -> list[int]:
        with maker() as s:
            return sorted(t.id for t in s.get(m.Product, pid).tags)

    assert tags(5) == db_tags(engine, 5)
    with maker() as s:
        p = s.get(m.Product, 5)
        have = {t.id for t in p.tags}
        new = next(i for i in range(1, 6) if i not in have)
        p.tags.append(s.get(m.Tag, new))
        s.commit()
    assert tags(5) == db_tags(engine, 5) and new in tags(5)
    with maker() as s:
        p = s.get(m.Product, 5)
        p.tags.remove(next(t for t in p.tags if t.id == new))
        s.commit()
    assert tags(5) == db_tags(engine, 5) and new not in tags(5)


def test_many_to_many_collections_are_fresh_per_parent(idc: Any, engine: Any) -> None:
    """``product.tags`` depends on its own association rows (and on the tag table):
    another product's tags changing leaves it a hit; a tag renamed misses both."""
    _cache, _ = idc
    # READ COMMITTED: under MariaDB's REPEATABLE READ only a transaction's first
    # query may use the cache, and the collection is read after the product
    maker = sessionmaker(engine.execution_options(isolation_level="READ COMMITTED")
                         if engine.dialect.name in ("mysql", "mariadb") else engine)  # fmt: skip
    sql = StatementCounter(engine)

    def tag_ids(pid: int) -> list[int]:
        with maker() as s:
            return sorted(t.id for t in s.get(m.Product, pid).tags)

    try:
        for pid in (5, 6):
            assert tag_ids(pid) == db_tags(engine, pid)
        want = db_tags(engine, 5)  # the oracle's own statements are counted too
        mark = sql.count
        assert tag_ids(5) == want
        assert sql.since(mark) == 0
        with maker() as s:  # product 6 gains a tag
            p = s.get(m.Product, 6)
            have = {t.id for t in p.tags}
            p.tags.append(s.get(m.Tag, next(i for i in range(1, 6) if i not in have)))
            s.commit()
        want = db_tags(engine, 5)
        mark = sql.count
        assert tag_ids(5) == want
        assert sql.since(mark) == 0  # product 5's collection: still a hit
        assert tag_ids(6) == db_tags(engine, 6)
        assert sql.since(mark) >= 1
        with maker() as s:  # a tag renamed: every collection over tags reads it again
            s.get(m.Tag, db_tags(engine, 5)[0]).label = "renamed"
            s.commit()
        with maker() as s:
            labels = {t.id: t.label for t in s.get(m.Product, 5).tags}
        assert "renamed" in labels.values()
    finally:
        sql.close()


def test_joined_inheritance_rows_are_fresh_per_row(idc: Any, engine: Any) -> None:
    """``session.get(Engineer, id)`` reads employee and engineer rows of one key:
    a write to another engineer (either table) or a new engineer leaves it a hit;
    its own write misses; a bulk update of the base table misses all."""
    _cache, maker = idc
    sql = StatementCounter(engine)

    def engineer(i: int) -> tuple[str, str]:
        with maker() as s:
            e = s.get(m.Engineer, i)
            return e.name, e.language

    def db(i: int) -> tuple[str, str]:
        with engine.connect() as c:
            row = c.execute(text("SELECT e.name, g.language FROM employee e JOIN engineer g "
                                 "ON g.id = e.id WHERE e.id = :i"), {"i": i}).one()  # fmt: skip
            return row[0], row[1]

    try:
        for i in (1, 4):
            assert engineer(i) == db(i)
        with maker() as s:  # engineer 4 changes in both of its tables
            e = s.get(m.Engineer, 4)
            e.name, e.language = "dee2", "zig"
            s.commit()
        with maker() as s:  # and a new engineer arrives
            s.add(m.Engineer(id=9, name="eve", language="ocaml"))
            s.commit()
        want = db(1)  # the oracle's own statements are counted too
        mark = sql.count
        assert engineer(1) == want
        assert sql.since(mark) == 0  # engineer 1: still a hit
        assert engineer(4) == db(4) == ("dee2", "zig")
        assert sql.since(mark) >= 1
        assert engineer(9) == db(9)
        with maker() as s:  # its own row, in the subclass table only
            s.get(m.Engineer, 1).language = "lisp"
            s.commit()
        assert engineer(1) == db(1) == ("ada", "lisp")
        with maker() as s:  # not attributed to rows: every entry of the table goes
            s.execute(update(m.Employee).values(name="all").execution_options(
                synchronize_session=False))  # fmt: skip
            s.commit()
        for i in (1, 4, 9):
            assert engineer(i) == db(i) and db(i)[0] == "all"
    finally:
        sql.close()


def test_inheritance_restores_the_concrete_class(idc: Any, engine: Any) -> None:
    _cache, maker = idc
    sql = StatementCounter(engine)
    for _ in range(3):
        mark = sql.count
        with maker() as s:
            e = s.get(m.Employee, 1)
            assert type(e) is m.Engineer and e.name == "ada"
        with maker() as s:
            n = s.get(m.Note, 2)
            assert type(n) is m.Memo
    assert sql.since(mark) == 0
    with maker() as s:
        s.get(m.Employee, 1).name = "ada2"
        s.commit()
    with maker() as s:
        assert s.get(m.Employee, 1).name == "ada2"
    sql.close()


def test_bypasses(idc: Any, engine: Any) -> None:
    _cache, maker = idc
    sql = StatementCounter(engine)
    with maker() as s:
        s.get(m.Product, 9)
    for kw in ({"options": [NoCache()]}, {"populate_existing": True},
               {"with_for_update": True}):  # fmt: skip
        expected = db_product(engine, 9).name
        mark = sql.count
        with maker() as s:
            assert s.get(m.Product, 9, **kw).name == expected
        assert sql.since(mark) >= 1, kw
    sql.close()


def test_pending_changes_are_never_overwritten(idc: Any, engine: Any) -> None:
    _cache, maker = idc
    with maker() as s:
        s.get(m.Product, 4)
    with maker() as s:
        p = s.get(m.Product, 4)
        p.name = "pending"
        assert s.get(m.Product, 4).name == "pending"
        # a lazy load back to it (item -> product) finds the same object
        item = s.scalars(select(m.OrderItem).where(m.OrderItem.product_id == 4)).first()
        if item is not None:
            assert item.product is p and item.product.name == "pending"
        s.rollback()


def test_cross_process_row_invalidation(engine: Any, redis_url: str, redis_client: Any) -> None:
    """Two caches sharing Redis (two processes): a write in one reaches the other."""
    a = QueryCache(regions={"default": redis_region(redis_url)}, versions=redis_url,
                   identity_region="default")  # fmt: skip
    b = QueryCache(regions={"default": redis_region(redis_url)}, versions=redis_url,
                   identity_region="default")  # fmt: skip
    ma, mb = sessionmaker(engine), sessionmaker(engine)
    a.install(ma)
    b.install(mb)
    try:
        with mb() as s:
            s.get(m.Product, 11), s.get(m.Product, 12)
        with ma() as s:
            s.get(m.Product, 11).name = "from a"
            s.commit()
        with mb() as s:
            assert s.get(m.Product, 11).name == "from a"
            assert s.get(m.Product, 12).name == db_product(engine, 12).name
    finally:
        a.uninstall(), b.uninstall()
        a.close(), b.close()


# ------------------------------------------------------- the generator


def _writes(maker: Any, engine: Any, rnd: random.Random) -> str:
    kind = rnd.choice(["price", "move", "move_rel", "insert", "delete", "tags", "core_pk",
                       "bulk", "text", "bulk_pk", "rename_emp", "placed"])  # fmt: skip
    with maker() as s:
        if kind == "price":
            s.get(m.Product, rnd.randint(1, 40)).price = Decimal(rnd.randint(1, 999))
        elif kind == "move":
            item = s.scalars(select(m.OrderItem).order_by(m.OrderItem.id)).all()
            rnd.choice(item).order_id = rnd.choice([10, 11, 12, 20, 21, 30])
        elif kind == "move_rel":
            o = s.get(m.Order, rnd.choice([10, 11, 20, 21, 30, 31]))
            if o is not None:
                o.customer = s.get(m.Customer, rnd.randint(1, 5))
        elif kind == "insert":
            s.add(m.OrderItem(id=rnd.randint(1000, 10**6), order_id=rnd.choice([10, 11, 20]),
                              product_id=rnd.randint(1, 40),
                              quantity=rnd.randint(1, 5)))  # fmt: skip
        elif kind == "delete":
            ids = s.scalars(select(m.OrderItem.id)).all()
            if ids:
                s.delete(s.get(m.OrderItem, rnd.choice(ids)))
        elif kind == "tags":
            p = s.get(m.Product, rnd.randint(1, 40))
            t = s.get(m.Tag, rnd.randint(1, 5))
            if t in p.tags:
                p.tags.remove(t)
            else:
                p.tags.append(t)
        elif kind == "core_pk":
            s.execute(update(m.Product).where(m.Product.id == rnd.randint(1, 40))
                      .values(name=f"core {rnd.random()}"))  # fmt: skip
        elif kind == "bulk":
            s.execute(update(m.OrderItem).where(m.OrderItem.quantity > rnd.randint(0, 5))
                      .values(quantity=rnd.randint(1, 9)))  # fmt: skip
        elif kind == "text":
            s.execute(text("UPDATE orders SET customer_id = :c WHERE id = :o"),
                      {"c": rnd.randint(1, 5), "o": rnd.choice([10, 11, 20, 30, 40])})  # fmt: skip
        elif kind == "bulk_pk":  # ORM bulk UPDATE by primary key: no old values known
            ids = s.scalars(select(m.OrderItem.id)).all()
            s.execute(update(m.OrderItem), [{"id": i, "order_id": rnd.choice([10, 20, 30])}
                                            for i in rnd.sample(ids, min(2, len(ids)))])  # fmt: skip
        elif kind == "rename_emp":
            s.get(m.Employee, rnd.randint(1, 4)).name = f"e{rnd.randint(0, 99)}"
        else:
            s.get(m.Order, rnd.choice([10, 20, 30, 40, 50])).placed = m.dt.date(
                2024, rnd.randint(1, 12), 1
            )
        s.commit()
    return kind


def _read(cache: QueryCache, maker: Any, engine: Any, rnd: random.Random) -> None:
    kind = rnd.choice(["get", "orders", "items", "item_order", "tags", "emp", "many", "page"])
    with maker() as s:
        if kind == "page":  # a page, then a many-to-one of each (the prefetch)
            items = s.scalars(select(m.OrderItem).order_by(m.OrderItem.id)
                              .offset(rnd.randint(0, 10)).limit(8)).all()  # fmt: skip
            got = [(it.id, it.order.id, it.order.customer_id) for it in items]
            assert got == [(it_id, *db_item_order(engine, it_id)) for it_id, _, _ in got]
        elif kind == "many":
            ids = rnd.sample(range(1, 45), 6)  # 41..44 do not exist
            got = [(p.id, p.name, p.price) for p in cache.get_many(s, m.Product, ids)]
            want = [(i, *db_product(engine, i)) for i in ids if db_product(engine, i)]
            assert got == want, ids
        elif kind == "get":
            pid = rnd.randint(1, 40)
            p = s.get(m.Product, pid)
            assert (p.name, p.price) == tuple(db_product(engine, pid)), pid
        elif kind == "orders":
            cid = rnd.randint(1, 5)
            got = [(o.id, o.placed) for o in s.get(m.Customer, cid).orders]
            assert got == db_orders(engine, cid), cid
        elif kind == "items":
            oid = rnd.choice([10, 11, 12, 20, 21, 30])
            got = [(i.id, i.quantity, i.product_id) for i in s.get(m.Order, oid).items]
            assert got == db_items(engine, oid), oid
        elif kind == "item_order":
            ids = [r[0] for r in s.connection().execute(select(m.OrderItem.__table__.c.id))]
            iid = rnd.choice(ids)
            item = s.get(m.OrderItem, iid)
            assert (item.order.id, item.order.customer_id) == tuple(db_item_order(engine, iid))
        elif kind == "tags":
            pid = rnd.randint(1, 40)
            assert sorted(t.id for t in s.get(m.Product, pid).tags) == db_tags(engine, pid)
        else:
            eid = rnd.randint(1, 4)
            e = s.get(m.Employee, eid)
            with engine.connect() as c:
                t = m.Employee.__table__
                name, typ = c.execute(select(t.c.name, t.c.type).where(t.c.id == eid)).one()
            assert (e.name, type(e).__name__.lower()) == (name, typ)


@pytest.mark.parametrize("seed", [1, 2])
def test_generated_reads_and_writes_never_stale(idc: Any, engine: Any, seed: int) -> None:
    cache, maker = idc
    rnd = random.Random(seed)
    for _step in range(120):
        if rnd.random() < 0.25:
            _writes(maker, engine, rnd)
        for _ in range(3):
            _read(cache, maker, engine, rnd)
    # the comparison ran against hits, not only misses (fewer under REPEATABLE
    # READ, where a session's reads after its first miss bypass the cache)
    assert hits(cache) > (40 if engine.dialect.name == "mysql" else 100)


def test_get_many_keeps_order_and_skips_absent(idc: Any, engine: Any) -> None:
    cache, maker = idc
    sql = StatementCounter(engine)
    with maker() as s:
        got = cache.get_many(s, m.Product, [5, 999, 2, 7])
        assert [p.id for p in got] == [5, 2, 7]
    for i in (5, 2, 7):  # stored from fresh sessions (REPEATABLE READ: see above)
        with maker() as s:
            cache.get_many(s, m.Product, [i])
    mark = sql.count
    with maker() as s:
        assert [p.name for p in cache.get_many(s, m.Product, [5, 2, 7])] == [
            db_product(engine, i).name for i in (5, 2, 7)
        ]
    assert sql.since(mark) == 3  # only the oracle's three reads: the objects were hits
    sql.close()


def test_invalidate_reaches_row_entries(idc: Any, engine: Any) -> None:
    cache, maker = idc
    with maker() as s:
        s.get(m.Product, 6)
    raw = engine.raw_connection()  # a write no hook sees (another application)
    try:
        cur = raw.cursor()
        cur.execute("UPDATE product SET name = 'behind our back' WHERE id = 6")
        raw.commit()
    finally:
        raw.close()
    with maker() as s:
        assert s.get(m.Product, 6).name != "behind our back"  # stale, as expected, until:
    cache.invalidate(m.Product)
    with maker() as s:
        assert s.get(m.Product, 6).name == "behind our back"


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_async_session_get_and_awaitable_attrs(
    kind: str, tmp_path_factory: Any, caplog: Any
) -> None:
    import asyncio

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

    from .test_async import _prepare, async_url

    url = async_url(kind, tmp_path_factory)
    asyncio.run(_prepare(url))
    cache = QueryCache(regions={"default": memory_region()}, identity_region="default")
    cache.install(AsyncSession)

    async def main() -> None:
        engine = create_async_engine(url)
        maker = async_sessionmaker(engine, expire_on_commit=False)
        sql = StatementCounter(engine.sync_engine)
        try:
            for _ in range(2):
                async with maker() as s:
                    await cache.get_many(s, m.Order, [31, 32, 99])
                async with maker() as s:
                    order = await s.get(m.Order, 30)
                    cust = await order.awaitable_attrs.customer
                    orders = await cust.awaitable_attrs.orders
                    assert cust.id == 3 and [o.id for o in orders] == [30, 31, 32]
            mark = sql.count
            async with maker() as s:
                order = await s.get(m.Order, 30)
                assert (await order.awaitable_attrs.customer).name == "customer 3"
                assert len(await cache.get_many(s, m.Order, [31, 32, 99])) == 2
            assert sql.since(mark) == 0
            async with maker() as s:
                (await s.get(m.Order, 31)).customer_id = 1
                await s.commit()
            async with maker() as s:
                cust = await s.get(m.Customer, 3)
                assert [o.id for o in await cust.awaitable_attrs.orders] == [30, 32]
        finally:
            sql.close()
            await engine.dispose()

    try:
        asyncio.run(main())
    finally:
        cache.uninstall()
    # the database catalog loads through async drivers too (asyncpg returns "char" as bytes)
    assert not [r for r in caplog.records if "catalog unavailable" in r.getMessage()]


@pytest.mark.parametrize("how", ["orm", "core", "text"])
def test_no_such_row_is_cached_until_an_insert(idc: Any, engine: Any, how: str) -> None:
    _cache, maker = idc
    sql = StatementCounter(engine)
    for _ in range(2):
        with maker() as s:
            assert s.get(m.Tag, 77) is None
    mark = sql.count
    with maker() as s:
        assert s.get(m.Tag, 77) is None
    assert sql.since(mark) == 0  # "no such row" was a hit
    with maker() as s:
        if how == "orm":
            s.add(m.Tag(id=77, label="new"))
        elif how == "core":
            s.connection().execute(m.Tag.__table__.insert().values(id=77, label="new"))
        else:
            s.execute(text("INSERT INTO tag (id, label) VALUES (77, 'new')"))
        s.commit()
    with maker() as s:
        assert s.get(m.Tag, 77).label == "new"
    sql.close()


def test_identity_stats_repr_and_command(idc: Any, engine: Any) -> None:
    from sqla_querycache import commands

    cache, maker = idc
    for _ in range(3):  # three: under REPEATABLE READ the first lazy load bypasses
        with maker() as s:
            s.get(m.Product, 1)
        with maker() as s:
            s.get(m.Customer, 1).orders  # noqa: B018
    per_class = cache.identity_stats()
    assert per_class["Product"]["hits"] == 2 and per_class["Product"]["misses"] == 1
    assert per_class["Order"]["hits"] >= 1
    assert "identity region 'default'" in repr(cache) and "Product=2/3" in repr(cache)
    rows = commands.identity(cache)
    tables = {r["table"]: r for r in rows if "table" in r}
    assert tables["product"]["row_entries"] == 1
    assert tables["orders"]["collection_entries"] == 1
    assert any(r.get("class") == "Product" for r in rows)


def test_eager_load_back_to_the_same_table_depends_on_the_table(engine: Any) -> None:
    """A row entry whose load also read other rows of its table (a selectin load
    of a self-referential relationship) must not depend on its own row only."""

    class B(DeclarativeBase):
        pass

    class Node(B):
        __tablename__ = "qc_node"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(20))
        parent_id: Mapped[int | None] = mapped_column(ForeignKey("qc_node.id"))
        parent: Mapped[Node | None] = relationship(
            remote_side=[id], lazy="selectin", back_populates="children"
        )
        children: Mapped[list[Node]] = relationship(lazy="selectin", back_populates="parent")

    B.metadata.drop_all(engine)
    B.metadata.create_all(engine)
    cache = QueryCache(regions={"default": memory_region()}, identity_region="default")
    cache.install(Session)
    try:
        with Session(engine) as s:
            s.add_all([Node(id=1, name="root"), Node(id=2, name="leaf", parent_id=1)])
            s.commit()
        for _ in range(3):
            with Session(engine) as s:
                assert s.get(Node, 2).parent.name == "root"
            with Session(engine) as s:
                assert [c.name for c in s.get(Node, 1).children] == ["leaf"]
        with Session(engine) as s:
            s.get(Node, 1).name = "renamed"
            s.commit()
        with Session(engine) as s:
            assert s.get(Node, 2).parent.name == "renamed"
        with Session(engine) as s:
            s.get(Node, 2).name = "leaf2"  # read by node 1's eager load of its children
            s.commit()
        with Session(engine) as s:
            assert [c.name for c in s.get(Node, 1).children] == ["leaf2"]
    finally:
        cache.uninstall()
        B.metadata.drop_all(engine)


def test_get_many_asks_the_cache_once_for_the_batch(idc: Any, engine: Any) -> None:
    cache, maker = idc
    ids = list(range(1, 11))
    for i in ids:
        with maker() as s:
            s.get(m.Product, i)
    cache._reader.memo.clear()  # the entries come from the region, not this process's memo
    reads: list[int] = []
    fetches: list[int] = []
    store, region = cache.versions, cache.regions["default"]
    holder, attr = (region.redis, "mget") if region.redis is not None else (
        region.backend, "get_serialized_multi")  # fmt: skip
    real_read, real_fetch = store.read, getattr(holder, attr)
    store.read = lambda names, bind=None: reads.append(len(names)) or real_read(names, bind)  # type: ignore[method-assign]
    setattr(holder, attr, lambda keys: fetches.append(len(keys)) or real_fetch(keys))
    pipelines: list[Any] = []
    real_pipelined = getattr(store, "_pipelined", None)
    if real_pipelined is not None:  # Redis versions: count the round trips that carry entries
        store._pipelined = lambda key, *a: pipelines.append(key) or real_pipelined(key, *a)
    sql = StatementCounter(engine)
    try:
        with maker() as s:
            got = cache.get_many(s, m.Product, ids)
        assert [p.id for p in got] == ids
    finally:
        store.read = real_read  # type: ignore[method-assign]
        setattr(holder, attr, real_fetch)
        if real_pipelined is not None:
            del store._pipelined
        sql.close()
    assert sql.count == 0
    if region.redis is not None:  # the region lives in the versions' Redis: one round trip
        assert reads == [] and fetches == []
        assert len(pipelines) == 1 and len(pipelines[0]) == 10
    else:
        assert len(reads) == 1 and len(fetches) == 1 and fetches[0] == 10  # one batch each


def test_get_many_runs_one_get_for_the_batch_and_keeps_the_identity_map_first(
    idc: Any, engine: Any
) -> None:
    """The first id's get makes the plan; the other ids' lookups follow from it
    without a get each (their keys and row names equal what a get makes: hits).
    An id already in the identity map is that object, as with session.get."""
    cache, maker = idc
    ids = list(range(1, 21))
    # under REPEATABLE READ (MariaDB's default) reads after the first bypass: READ COMMITTED
    bind = (engine.execution_options(isolation_level="READ COMMITTED")
            if engine.dialect.name == "mysql" else engine)  # fmt: skip
    with maker(bind=bind) as s:
        cache.get_many(s, m.Product, ids)  # stored
    sql = StatementCounter(engine)
    try:
        with maker(bind=bind) as s:
            held = s.get(m.Product, 7)
            gets: list[Any] = []
            real_get = s.get
            s.get = lambda *a, **kw: gets.append(a) or real_get(*a, **kw)  # type: ignore[method-assign]
            hits = cache.stats()["default"]["hits"]
            mark = sql.count
            got = cache.get_many(s, m.Product, ids)
            assert [p.id for p in got] == ids and got[6] is held
            assert len(gets) == 2  # the first id's, and 7's (the identity map's object)
            assert cache.stats()["default"]["hits"] - hits == len(ids) - 1
            assert sql.since(mark) == 0
        with maker() as s:  # and the same objects a get per id would give
            plain = [s.get(m.Product, i, options=[NoCache()]) for i in ids]
            assert [(p.id, p.name, p.price) for p in plain] == [
                (p.id, p.name, p.price) for p in cache.get_many(s, m.Product, ids)]  # fmt: skip
    finally:
        sql.close()


def test_lazy_loads_of_one_way_relationships_are_hits(idc: Any, engine: Any) -> None:
    """Product.tags has no way back from Tag: its objects' load paths name the
    parent's class, which the entry must know (else every read is 'corrupt')."""
    cache, maker = idc
    sql = StatementCounter(engine)
    for _ in range(3):
        mark = sql.count
        with maker() as s:
            got = sorted(t.label for t in s.get(m.Product, 5).tags)
    assert sql.since(mark) == 0
    assert cache.stats()["default"]["corrupt"] == 0
    assert got
    sql.close()


def test_query_results_by_key_are_row_level_too(engine: Any) -> None:
    """A tagged query whose one table is bound by its primary key (or a declared
    foreign key) depends on those rows: writes to other rows leave it a hit."""
    from sqla_querycache import FromCache

    cache = QueryCache(regions={"default": memory_region()}).install(Session)
    sql = StatementCounter(engine)
    by_pk = select(m.Product).where(m.Product.id == 7).options(FromCache())
    by_fk = (
        select(m.Order).where(m.Order.customer_id == 3).order_by(m.Order.id).options(FromCache())
    )
    by_other = select(m.Product).where(m.Product.price > 0).order_by(m.Product.id).options(
        FromCache())  # fmt: skip
    try:
        for _ in range(2):
            for q in (by_pk, by_fk, by_other):
                with Session(engine) as s:
                    s.scalars(q).all()
        with Session(engine) as s:
            s.get(m.Product, 8, options=[NoCache()]).name = "eight"
            s.get(m.Order, 10, options=[NoCache()]).placed = m.dt.date(2030, 1, 1)  # customer 1
            s.commit()
        mark = sql.count
        with Session(engine) as s:
            assert s.scalars(by_pk).one().id == 7
            assert [o.id for o in s.scalars(by_fk)] == [30, 31, 32]
        assert sql.since(mark) == 0  # other rows were written: still hits
        with Session(engine) as s:
            assert "eight" in [p.name for p in s.scalars(by_other)]  # a table-level entry: a miss
        assert sql.since(mark) == 1
        with Session(engine) as s:
            s.get(m.Order, 31, options=[NoCache()]).customer_id = 1  # leaves customer 3
            s.commit()
        with Session(engine) as s:
            assert [o.id for o in s.scalars(by_fk)] == [30, 32]
    finally:
        cache.uninstall()
        sql.close()


def test_insert_or_replace_is_never_a_named_row_write(sqlite_engine: Any) -> None:
    """SQLite's INSERT OR REPLACE deletes the row it conflicts with: its write
    must not be read as "a new row" only."""
    cache = QueryCache(regions={"default": memory_region()}, identity_region="default")
    cache.install(Session)
    try:
        for _ in range(2):
            with Session(sqlite_engine) as s:
                assert s.get(m.Tag, 2).label == "tag2"
        with Session(sqlite_engine) as s:
            s.execute(m.Tag.__table__.insert().prefix_with("OR REPLACE").values(id=2, label="re"))
            s.commit()
        with Session(sqlite_engine) as s:
            assert s.get(m.Tag, 2).label == "re"
    finally:
        cache.uninstall()


def test_composite_primary_keys_are_per_row(engine: Any) -> None:
    class B(DeclarativeBase):
        pass

    class Pair(B):
        __tablename__ = "qc_pair"
        a: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        b: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        v: Mapped[str] = mapped_column(String(20))

    B.metadata.drop_all(engine)
    B.metadata.create_all(engine)
    cache = QueryCache(regions={"default": memory_region()}, identity_region="default")
    cache.install(Session)
    sql = StatementCounter(engine)
    try:
        with Session(engine) as s:
            s.add_all([Pair(a=1, b=2, v="x"), Pair(a=1, b=3, v="y"), Pair(a=2, b=1, v="z")])
            s.commit()
        for key in ((1, 2), (1, 3), (2, 1), (1, 2), (1, 3), (2, 1)):
            with Session(engine) as s:
                s.get(Pair, key)
        with Session(engine) as s:
            s.get(Pair, (1, 2)).v = "changed"
            s.commit()
        mark = sql.count
        with Session(engine) as s:
            assert s.get(Pair, (1, 3)).v == "y" and s.get(Pair, {"a": 2, "b": 1}).v == "z"
        assert sql.since(mark) == 0
        with Session(engine) as s:
            assert s.get(Pair, (1, 2)).v == "changed"
    finally:
        cache.uninstall()
        sql.close()
        B.metadata.drop_all(engine)


def test_expired_objects_reload_from_the_database(idc: Any, engine: Any) -> None:
    _cache, maker = idc
    with maker() as s:
        p = s.get(m.Product, 12)
        p.name = "committed"
        s.commit()  # expires p
        with engine.begin() as c:  # a write after the commit, by another connection
            c.execute(update(m.Product.__table__).where(m.Product.__table__.c.id == 12)
                      .values(name="later"))  # fmt: skip
        assert s.get(m.Product, 12).name == "later"  # the refresh is never a stale hit


def test_a_large_flush_bumps_the_table_not_each_row(idc: Any, engine: Any) -> None:
    """Past rows.MAX_NAMED row names for a table in one transaction, the commit
    bumps t@rows: its round trip stays small, and every row entry still misses."""
    from sqla_querycache import rows

    cache, maker = idc
    with maker() as s:
        s.get(m.Tag, 3)
    written: list[set[str]] = []
    writer = cache._writer
    real = writer.before_commit

    def spy(conn: Any) -> None:
        ct = conn.info.get(writer.info_key)
        if ct is not None:
            written.append(set(ct.written))
        real(conn)

    writer.before_commit = spy  # type: ignore[method-assign]
    try:
        with maker() as s:
            for i in range(rows.MAX_NAMED + 20):  # one statement each: names accumulate
                s.add(m.Tag(id=1000 + i, label=f"t{i}"))
                s.flush()
            s.get(m.Tag, 3).label = "in the big one"
            s.commit()
    finally:
        writer.before_commit = real  # type: ignore[method-assign]
    sent = set().union(*written)
    assert "tag@rows" in sent
    assert 0 < len([n for n in sent if n.startswith("tag#")]) <= rows.MAX_NAMED
    with maker() as s:
        assert s.get(m.Tag, 3).label == "in the big one"


def test_a_page_of_many_to_one_lazy_loads_costs_one_query_then_none(idc: Any, engine: Any) -> None:
    """The N+1 killer: the first lazy load of ``item.order`` on a page loads every
    item's order at once (one IN query on a cold cache, one batch lookup on a
    warm one); the other lazy loads find them in the identity map."""
    _cache, maker = idc
    sql = StatementCounter(engine)
    page = select(m.OrderItem).order_by(m.OrderItem.id).limit(20)
    # under REPEATABLE READ (MariaDB's default) the page's query takes a snapshot
    # and the lazy loads after it bypass the cache: READ COMMITTED, as documented
    bind = (engine.execution_options(isolation_level="READ COMMITTED")
            if engine.dialect.name == "mysql" else engine)  # fmt: skip

    def read_page() -> tuple[int, list[Any]]:
        with maker(bind=bind) as s:
            items = s.scalars(page).all()
            mark = sql.count
            got = [(i.id, i.order.id, i.order.placed) for i in items]
            return sql.since(mark), got

    with engine.connect() as c:
        i, o = m.OrderItem.__table__, m.Order.__table__
        want = [tuple(r) for r in c.execute(select(i.c.id, o.c.id, o.c.placed)
                                            .join(o).order_by(i.c.id).limit(20))]  # fmt: skip
    cold, got = read_page()
    assert got == want
    assert cold <= 2, sql.statements[-cold:]  # the first lazy load (get) and one IN query for the others
    before = hits(_cache)
    warm, got = read_page()
    assert got == want and warm == 0  # every order from the cache: one batch
    # each order looked up once: the siblings' lazy loads find the prefetched
    # orders in the identity map (pinned there, not collected before they ask)
    assert hits(_cache) - before == len({b for _, b, _ in want})
    with maker(bind=bind) as s:  # a write to one of them
        s.get(m.Order, 20).placed = m.dt.date(2031, 3, 3)
        s.commit()
    again, got = read_page()
    assert got == [(a, b, m.dt.date(2031, 3, 3) if b == 20 else c) for a, b, c in want]
    assert again <= 2
    sql.close()


def test_two_caches_in_one_process_store_row_keyed_entries(sqlite_engine: Any) -> None:
    """Each installed cache reports every statement to the miss being recorded:
    one execution must count once (else its table looks read twice, and the
    entry is never stored with row-level names)."""
    a = QueryCache(regions={"default": memory_region()}, identity_region="default")
    b = QueryCache(regions={"default": memory_region()}, identity_region="default")
    ma, mb = sessionmaker(sqlite_engine), sessionmaker(sqlite_engine)
    a.install(ma)
    b.install(mb)
    try:
        with ma() as s:
            s.get(m.Product, 3)
        assert a.stats()["default"]["stores"] == 1
        assert a.stats()["default"]["not_stored"] == 0
    finally:
        a.uninstall()
        b.uninstall()
