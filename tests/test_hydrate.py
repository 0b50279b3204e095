"""Hydration: objects built from cache entries behave like loaded ones.

These tests also guard the few SQLAlchemy internals hydration relies on
(see the docstring of ``sqla_querycache.hydrate``): if a SQLAlchemy release
changes them, these fail loudly.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, inspect, select
from sqlalchemy.orm import Session, joinedload, sessionmaker

from sqla_querycache import FromCache, QueryCache
from sqla_querycache.hydrate import derive_shape

from .conftest import StatementCounter, redis_region
from .models import Category, Customer, Product

STATEMENTS = {
    "entity": select(Product).where(Product.id < 6).order_by(Product.id),
    "columns": select(Product.id, Product.name, Product.price).order_by(Product.id).limit(5),
    "mixed": select(Product, Category.name).join(Product.category).order_by(Product.id).limit(5),
    "aggregate": select(Product.category_id, func.count()).group_by(Product.category_id)
    .order_by(Product.category_id),
    "joined_collection": select(Customer).options(joinedload(Customer.orders))
    .order_by(Customer.id),
}


def _plans(cache):
    return list(cache._reader._plans._data.values())


@pytest.mark.parametrize("name", sorted(STATEMENTS))
def test_derived_shape_matches_the_real_one(sqlite_engine, name):
    cache = QueryCache(regions={"default": {"backend": "dogpile.cache.memory"}})
    maker = sessionmaker(sqlite_engine)
    cache.install(maker)
    try:
        stmt = STATEMENTS[name].options(FromCache())
        with maker() as s:
            result = s.execute(stmt)
            expected = result.unique().all() if name == "joined_collection" else result.all()
        (plan,) = _plans(cache)
        real = plan.shape
        derived = derive_shape(plan.compiled, real.flags)
        assert list(derived.metadata.keys) == list(real.metadata.keys)
        assert dict(derived.attributes) == {
            k: v for k, v in real.attributes.items() if k in ("filtered", "is_single_entity")
        }
        assert derived.scalars == real.scalars
        assert (derived.unique is None) == (real.unique is None)
        plan.shape = None  # serve the next hit through the derived shape
        with maker() as s:
            result = s.execute(stmt)
            if name == "joined_collection":
                with pytest.raises(Exception, match="unique"):
                    result.all()
                result = s.execute(stmt).unique()
            got = result.all()
        assert [tuple(_plain(v) for v in row) for row in got] == [
            tuple(_plain(v) for v in row) for row in expected
        ]
        if name == "mixed":
            with maker() as s:
                row = s.execute(stmt).first()
                assert row._mapping[Product].id == row.Product.id == 1
    finally:
        cache.uninstall()


def _plain(v):
    state = inspect(v, raiseerr=False)
    if state is not None and hasattr(state, "identity"):
        return (type(v).__name__, state.identity)
    return v


def test_hydrated_objects_are_persistent_and_clean(sqlite_engine):
    cache = QueryCache(regions={"default": {"backend": "dogpile.cache.memory"}})
    maker = sessionmaker(sqlite_engine)
    cache.install(maker)
    counter = StatementCounter(sqlite_engine)
    try:
        stmt = select(Product).where(Product.id == 7).options(FromCache())
        with maker() as s:
            s.scalars(stmt).one()
        with maker() as s:
            mark = counter.count
            p = s.scalars(stmt).one()
            assert counter.since(mark) == 0
            st = inspect(p)
            assert st.persistent and not st.modified and st.session is s
            assert st.key == (Product, (7,), None) and s.identity_map[st.key] is p
            assert "description" not in st.dict and "description" in st.unloaded
            assert p.description == "about product 7"  # deferred loader still works
            assert counter.since(mark) == 1
            p.name = "x"
            assert list(s.dirty) == [p]
    finally:
        counter.close()
        cache.uninstall()


CHILD = textwrap.dedent(
    """
    import sys
    from dogpile.cache import make_region
    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import sessionmaker, selectinload
    from sqla_querycache import QueryCache, FromCache
    from tests.models import Customer, Order
    engine = create_engine(sys.argv[1])
    region = make_region().configure("dogpile.cache.redis", arguments={"url": sys.argv[2]})
    cache = QueryCache(regions={"default": region}, versions=sys.argv[2])
    maker = sessionmaker(engine)
    cache.install(maker)
    stmt = (select(Customer).where(Customer.id < 4).order_by(Customer.id)
            .options(selectinload(Customer.orders).selectinload(Order.items), FromCache()))
    with maker() as s:
        print(len(s.scalars(stmt).all()))
    print(cache.stats()["default"]["stores"])
    """
)


def test_entry_stored_by_another_process_is_a_hit_with_zero_sql(sqlite_engine, redis_url,
                                                                redis_client):  # fmt: skip
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(sqlite_engine.url), redis_url],
        capture_output=True, text=True, cwd=root, timeout=60, check=True,
    ).stdout.split()
    assert out == ["3", "1"]
    from .models import Order

    cache = QueryCache(regions={"default": redis_region(redis_url)}, versions=redis_url)
    maker = sessionmaker(sqlite_engine)
    cache.install(maker)
    counter = StatementCounter(sqlite_engine)
    try:
        from sqlalchemy.orm import selectinload

        stmt = (select(Customer).where(Customer.id < 4).order_by(Customer.id)
                .options(selectinload(Customer.orders).selectinload(Order.items), FromCache()))  # fmt: skip
        with maker() as s:
            got = [(c.id, [(o.id, [i.product_id for i in o.items]) for o in c.orders])
                   for c in s.scalars(stmt)]  # fmt: skip
            assert counter.count == 0
        assert cache.stats()["default"]["hits"] == 1
        with Session(sqlite_engine) as s:  # the same graph, uncached
            expected = [(c.id, [(o.id, [i.product_id for i in o.items]) for o in c.orders])
                        for c in s.scalars(select(Customer).where(Customer.id < 4)
                        .order_by(Customer.id))]  # fmt: skip
        assert got == expected and len(got) == 3
        assert len(redis_client.keys("qc:q:*")) == 1  # one key, computed alike in both
    finally:
        counter.close()
        cache.uninstall()


# ------------------------------------------------ which payloads are shared

_plain_values = st.one_of(st.none(), st.integers(), st.text(max_size=3), st.decimals(allow_nan=False),
                   st.booleans(), st.floats(allow_nan=False), st.binary(max_size=3))  # fmt: skip
_payload_value = st.recursive(
    _plain_values,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.lists(inner, max_size=3).map(tuple),
                            st.dictionaries(st.text(max_size=2), inner, max_size=2)),  # fmt: skip
    max_leaves=6,
)


def _reference_mutable(v):
    if isinstance(v, tuple):
        return any(_reference_mutable(x) for x in v)
    return isinstance(v, (list, dict, set, bytearray))


@st.composite
def _payloads(draw):
    """Payloads as dehydrate lays them out: layouts, entity records (layout, key,
    token, column values, relationship refs), column kinds, rows."""
    widths = draw(st.lists(st.integers(0, 4), min_size=1, max_size=3))
    layouts = [["C", [f"c{i}" for i in range(w)], ["r"]] for w in widths]
    entities = []
    for _ in range(draw(st.integers(0, 4))):
        li = draw(st.integers(0, len(layouts) - 1))
        values = draw(st.lists(_payload_value, min_size=widths[li], max_size=widths[li]))
        entities.append([li, [1], None, *values, draw(st.lists(st.integers(0, 3), max_size=2))])
    scalar = draw(st.booleans())
    if scalar:
        return [layouts, entities, [True], True, [0] * len(entities)]
    kinds = draw(st.lists(st.booleans(), min_size=1, max_size=3))
    rows = [[draw(st.integers(0, 3)) if k else draw(_payload_value) for k in kinds]
            for _ in range(draw(st.integers(0, 4)))]  # fmt: skip
    return [layouts, entities, kinds, False, rows]


@settings(max_examples=500, deadline=None)
@given(_payloads())
def test_property_payloads_with_values_changeable_in_place_are_never_shared(payload):
    """An entry is kept decoded (shared by every hit) only if no column value and
    no plain row value is, or holds inside tuples, a list, dict, set or bytearray:
    the fast check by value types agrees with a plain recursive walk."""
    from sqla_querycache.readpath import _has_mutable

    layouts, entities, kinds, scalar, rows = payload
    expected = any(
        _reference_mutable(v) for record in entities
        for v in record[3 : 3 + len(layouts[record[0]][1])]
    ) or (not scalar and any(
        not is_entity and _reference_mutable(v) for row in rows for is_entity, v in zip(kinds, row)
    ))  # fmt: skip
    assert _has_mutable(payload) == expected
