"""A hit: zero SQL, the same objects and Result API, the identity map respected."""

from __future__ import annotations

import decimal

import pytest
from sqlalchemy import String, TypeDecorator, select
from sqlalchemy.orm import Session, selectinload

from sqla_querycache import FromCache, NoCache, QueryCache, UnknownRegionError

from .models import Category, Customer, Order, Product


def test_second_execution_is_a_hit_with_zero_sql(engine, sql, cache):
    stmt = select(Product).where(Product.category_id == 2).order_by(Product.id)
    with Session(engine) as s:
        first = [(p.id, p.name, p.price) for p in s.scalars(stmt.options(FromCache()))]
    mark = sql.count
    with Session(engine) as s:
        second = [(p.id, p.name, p.price) for p in s.scalars(stmt.options(FromCache()))]
    assert sql.since(mark) == 0
    assert first == second and len(first) == 10
    assert cache.stats()["default"]["hits"] == 1


def test_eager_graph_is_served_without_sql(engine, sql, cache):
    stmt = (
        select(Customer)
        .where(Customer.id.in_([1, 2]))
        .options(selectinload(Customer.orders).selectinload(Order.items), FromCache())
        .order_by(Customer.id)
    )
    with Session(engine) as s:
        expected = [(c.id, [(o.id, [i.id for i in o.items]) for o in c.orders]) for c in s.scalars(stmt)]
    mark = sql.count
    with Session(engine) as s:
        got = [(c.id, [(o.id, [i.id for i in o.items]) for o in c.orders]) for c in s.scalars(stmt)]
        assert sql.since(mark) == 0
    assert got == expected


def test_hit_objects_are_attached_like_loaded_ones(engine, sql, cache):
    stmt = select(Product).where(Product.id == 3).options(FromCache())
    with Session(engine) as s:
        s.scalars(stmt).one()
    with Session(engine) as s:
        mark = sql.count
        p = s.scalars(stmt).one()
        assert sql.since(mark) == 0
        assert s.get(Product, 3) is p  # identity map
        assert sql.since(mark) == 0
        assert p.category.name == "cat 4"  # lazy load works
        assert p.description == "about product 3"  # deferred column loads
        p.price = decimal.Decimal("99.00")
        s.commit()  # changes flush
    with Session(engine) as s:
        assert s.get(Product, 3).price == decimal.Decimal("99.00")


def test_held_object_is_reused_and_pending_changes_survive(engine, cache):
    stmt = select(Product).where(Product.category_id == 1).order_by(Product.id).options(FromCache())
    with Session(engine) as s:
        s.scalars(stmt).all()
    with Session(engine, autoflush=False) as s:
        held = s.get(Product, 4)
        held.name = "pending rename"
        got = s.scalars(stmt).all()
        assert held in got  # the very same object
        assert held.name == "pending rename"  # merge(load=False) would lose this


def test_unknown_region_is_a_typed_error(engine, cache):
    with Session(engine) as s, pytest.raises(UnknownRegionError):
        s.execute(select(Product).options(FromCache("nope")))


def test_no_cache_wins_over_session_region(engine, sql, cache):
    stmt = select(Category).order_by(Category.id)
    with Session(engine, info={"cache_region": "default"}) as s:
        s.scalars(stmt).all()
    mark = sql.count
    with Session(engine, info={"cache_region": "default"}) as s:
        s.scalars(stmt.options(NoCache())).all()
    assert sql.since(mark) == 1
    with Session(engine, info={"cache_region": "default"}) as s:
        s.scalars(stmt).all()
    assert sql.since(mark) == 1


def test_memoized_entry_serves_hits_but_never_outlives_a_write(engine, sql, cache):
    """The per-process decoded entry obeys the versions exactly like the stored one."""
    stmt = select(Product).where(Product.category_id == 3).order_by(Product.id).options(
        FromCache())
    with Session(engine) as s:
        s.scalars(stmt).all()
    for _ in range(2):
        mark = sql.count
        with Session(engine) as s:
            s.scalars(stmt).all()
        assert sql.since(mark) == 0
    with Session(engine) as s:
        s.get(Product, 2).name = "after memo"
        s.commit()
    with Session(engine) as s:
        assert "after memo" in [p.name for p in s.scalars(stmt)]


def test_memoized_json_values_are_not_shared_between_sessions(engine, cache):
    stmt = select(Product).where(Product.id == 1).options(FromCache())
    with Session(engine) as s:
        s.scalars(stmt).one()
    with Session(engine) as s:
        p = s.scalars(stmt).one()
        p.attrs["sizes"].append(99)  # in-place change, never flushed
    with Session(engine) as s:
        assert 99 not in s.scalars(stmt).one().attrs["sizes"]


class Pair(TypeDecorator):
    """Values that are tuples holding a list (as some drivers' composite types are)."""

    impl = String(200)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else ",".join(map(str, value[1]))

    def process_result_value(self, value, dialect):
        return None if value is None else ("sizes", [int(v) for v in value.split(",")])


@pytest.mark.parametrize("where", ["entity", "column"])
def test_lists_inside_tuples_are_not_shared_between_sessions(engine, cache, where):
    """A value type whose Python values are tuples holding lists: the entry is kept
    decoded only when nothing in it can be changed in place, inside tuples too."""
    from sqlalchemy import Column, Integer, MetaData, Table, insert
    from sqlalchemy.orm import registry

    md = MetaData()
    t = Table("qc_pairs", md, Column("id", Integer, primary_key=True), Column("pair", Pair))
    reg = registry()

    class Holder:
        pass

    reg.map_imperatively(Holder, t)
    md.drop_all(engine)
    md.create_all(engine)
    try:
        with engine.begin() as conn:
            conn.execute(insert(t), [{"id": 1, "pair": ("sizes", [1, 2])}])
        stmt = (select(Holder).where(Holder.id == 1) if where == "entity"
                else select(Holder.id, Holder.pair).where(Holder.id == 1)).options(FromCache())

        def pair(s):
            row = s.execute(stmt).one()
            return row[0].pair if where == "entity" else row.pair

        with Session(engine) as s:
            pair(s)  # the miss stores it
        with Session(engine) as s:
            pair(s)[1].append(99)  # a hit's value changed in place, never flushed
        with Session(engine) as s:
            assert pair(s) == ("sizes", [1, 2])
        assert cache.stats()["default"]["hits"] == 2
    finally:
        md.drop_all(engine)
        reg.dispose()


def test_the_recipe_loses_pending_changes_and_we_do_not(sqlite_engine):
    """The dogpile_caching recipe's merge(load=False) overwrites an unflushed change."""
    from sqlalchemy.orm import sessionmaker

    from .benchmarks.recipe import RecipeCache, RecipeFromCache, recipe_region

    maker = sessionmaker(sqlite_engine, autoflush=False)
    recipe = RecipeCache({"default": recipe_region("dogpile.cache.memory_pickle", "r:")})
    recipe.install(maker)
    stmt = select(Product).where(Product.category_id == 1).order_by(Product.id)
    try:
        with maker() as s:
            s.scalars(stmt.options(RecipeFromCache())).all()
        with maker() as s:
            held = s.get(Product, 4)
            held.name = "pending rename"
            s.scalars(stmt.options(RecipeFromCache())).all()
            assert recipe.hits == 1
            assert held.name == "Product 04"  # the recipe's hit overwrote it
    finally:
        recipe.uninstall()
    cache = QueryCache(regions={"default": {"backend": "dogpile.cache.memory"}})
    cache.install(maker)
    try:
        with maker() as s:
            s.scalars(stmt.options(FromCache())).all()
        with maker() as s:
            held = s.get(Product, 4)
            held.name = "pending rename"
            s.scalars(stmt.options(FromCache())).all()
            assert cache.stats()["default"]["hits"] == 1
            assert held.name == "pending rename"
    finally:
        cache.uninstall()


@pytest.mark.parametrize(
    "variant",
    ["with_for_update", "yield_per", "stream_results", "populate_existing", "update"],
)
def test_never_cached(engine, sql, cache, variant):
    from sqlalchemy import update

    base = select(Product).where(Product.category_id == 2).order_by(Product.id)
    run = {
        "with_for_update": lambda s: s.scalars(base.with_for_update().options(FromCache())).all(),
        "yield_per": lambda s: list(s.scalars(base.options(FromCache()).execution_options(
            yield_per=5))),
        "stream_results": lambda s: list(s.scalars(base.options(FromCache()).execution_options(
            stream_results=True))),
        "populate_existing": lambda s: s.scalars(base.options(FromCache()).execution_options(
            populate_existing=True)).all(),
        "update": lambda s: s.execute(update(Product).where(Product.id == 1).values(
            name="x").execution_options(cache_region="default")),
    }[variant]
    for _ in range(2):
        mark = sql.count
        with Session(engine) as s:
            run(s)
            s.rollback()
        assert sql.since(mark) >= 1
    stats = cache.stats()["default"]
    assert stats["hits"] == 0 and stats["stores"] == 0


def test_session_execution_options_cache_every_select(engine, sql, cache):
    import sqlalchemy

    if sqlalchemy.__version__.startswith("2.0"):
        pytest.skip("Session(execution_options=...) arrived in SQLAlchemy 2.1; use info=")
    stmt = select(Category).order_by(Category.id)
    for _ in range(2):
        with Session(engine, execution_options={"cache_region": "hot"}) as s:
            s.scalars(stmt).all()
    mark = sql.count
    with Session(engine, execution_options={"cache_region": "hot"}) as s:
        s.scalars(stmt).all()
    assert sql.since(mark) == 0
    assert cache.stats()["hot"]["hits"] >= 1
