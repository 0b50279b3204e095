"""Horizontal sharding (``sqlalchemy.ext.horizontal_shard``) with the identity cache on.

The sharding extension answers every statement from its own ``do_orm_execute``
hook (one ``invoke_statement`` per shard, which runs only the hooks after it);
the cache puts itself after that hook, so each shard's statement is cached as
a statement of its own (keyed for the shard's engine and identity token). What
must hold: each shard's rows under their own identity token, writes to one
shard seen at once, no row of one shard ever served for another, hits for
repeated reads, and unsharded sessions of the same cache still cached.
"""

from __future__ import annotations

import datetime as dt
import decimal
import random
import uuid
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, select, update
from sqlalchemy.ext.horizontal_shard import ShardedSession, set_shard_id
from sqlalchemy.orm import Session

from sqla_querycache import FromCache, QueryCache

from . import models as m
from .conftest import StatementCounter, memory_region


def test_sharded_sessions_stay_right_and_other_sessions_still_hit(tmp_path: Any) -> None:
    engines = {name: create_engine(f"sqlite:///{tmp_path / name}.db") for name in ("a", "b")}
    for name, engine in engines.items():
        m.Base.metadata.create_all(engine)
        with Session(engine) as s:
            s.add(m.Category(id=1, name=f"shard {name}"))
            s.commit()
    cache = QueryCache(regions={"default": memory_region()}, identity_region="default")
    cache.install(Session)
    counter = StatementCounter(engines["a"])

    def sharded() -> ShardedSession:
        return ShardedSession(
            shards=engines,
            shard_chooser=lambda mapper, instance, clause=None: "a",
            identity_chooser=lambda mapper, pk, **kw: ["a", "b"],
            execute_chooser=lambda ctx: ["a", "b"],
        )

    counter_b = StatementCounter(engines["b"])
    try:
        for round_ in range(2):  # the second round: hits, on both shards
            mark, mark_b = counter.count, counter_b.count
            with sharded() as s:
                got = {c.name for c in (s.get(m.Category, 1, identity_token=t) for t in "ab")}
                assert got == {"shard a", "shard b"}
                rows = sorted(c.name for c in s.scalars(select(m.Category)))
                assert rows == ["shard a", "shard b"]
                tokens = sorted(s.identity_key(instance=c)[2]
                                for c in s.scalars(select(m.Category).options(FromCache())))  # fmt: skip
                assert tokens == ["a", "b"]
            if round_:  # only the untagged query ran (once per shard)
                assert (counter.since(mark), counter_b.since(mark_b)) == (1, 1)
        with sharded() as s:  # a write to shard b only
            s.get(m.Category, 1, identity_token="b").name = "b renamed"
            s.commit()
        with sharded() as s:
            assert s.get(m.Category, 1, identity_token="a").name == "shard a"
            assert s.get(m.Category, 1, identity_token="b").name == "b renamed"
        for _ in range(2):  # an ordinary session on shard a: cached as usual
            mark = counter.count
            with Session(engines["a"]) as s:
                assert s.get(m.Category, 1).name == "shard a"
        assert counter.since(mark) == 0
    finally:
        counter.close()
        counter_b.close()
        cache.uninstall()
        for engine in engines.values():
            engine.dispose()


@pytest.mark.parametrize("seed", range(6))
def test_generated_sharded_reads_equal_the_uncached_ones(tmp_path: Any, seed: int) -> None:
    """Random writes to random shards (ORM changes, bulk updates aimed at one shard,
    inserts and deletes) between reads of every kind a sharded session makes (get
    with and without a token, queries over every shard or one, many-to-one lazy
    loads, collections): each read, made in a fresh session with the cache on,
    equals the same read with the cache off, identity tokens included."""
    rnd = random.Random(seed)
    engines = {name: create_engine(f"sqlite:///{tmp_path / name}.db") for name in ("a", "b")}
    for name, engine in engines.items():
        m.Base.metadata.create_all(engine)
        with Session(engine) as s:
            s.add_all([m.Category(id=i, name=f"{name}{i}") for i in range(1, 4)])
            s.add_all([m.Product(id=i, name=f"p{name}{i}", price=decimal.Decimal(i),
                                 category_id=1 + i % 3, created=dt.datetime(2024, 1, 1),
                                 sku=uuid.UUID(int=i)) for i in range(1, 7)])  # fmt: skip
            s.commit()
    cache = QueryCache(regions={"default": memory_region()}, identity_region="default")
    cache.install(Session)

    def sharded() -> ShardedSession:
        return ShardedSession(
            shards=engines,
            shard_chooser=lambda mapper, instance, clause=None: instance.__dict__.get(
                "_shard", "a"),  # fmt: skip
            identity_chooser=lambda mapper, pk, **kw: ["a", "b"],
            execute_chooser=lambda ctx: ["a", "b"],
        )

    def token(obj: Any) -> str:
        return str(inspect(obj).key[2])

    reads = {
        "get": lambda s, k, t: (lambda c: c and (c.name, token(c)))(
            s.get(m.Category, k, identity_token=t)),  # fmt: skip
        "get_any": lambda s, k, t: (lambda c: c and (c.name, token(c)))(s.get(m.Category, k)),
        "all": lambda s, k, t: sorted((c.name, c.id, token(c)) for c in s.scalars(
            select(m.Category).options(FromCache()))),  # fmt: skip
        "one_shard": lambda s, k, t: sorted((p.name, token(p)) for p in s.scalars(
            select(m.Product).where(m.Product.category_id == k).options(
                FromCache(), set_shard_id(t)))),  # fmt: skip
        "lazy": lambda s, k, t: sorted((p.name, p.category.name, token(p.category))
                                       for p in s.scalars(select(m.Product).options(
                                           FromCache(), set_shard_id(t)))),  # fmt: skip
        "collection": lambda s, k, t: (lambda c: c and sorted(p.name for p in c.products))(
            s.get(m.Category, k, identity_token=t)),  # fmt: skip
        "get_many": lambda s, k, t: [(c.name, token(c)) for c in cache.get_many(
            s, m.Category, [k, 1 + k % 3, 9], identity_token=t)],  # fmt: skip
        "get_many_any": lambda s, k, t: [(c.name, token(c)) for c in cache.get_many(
            s, m.Category, [k, 9])],  # fmt: skip
    }
    hits = 0
    try:
        next_id = 100
        for step in range(60):
            k, t = rnd.randint(1, 3), rnd.choice("ab")
            op = rnd.random()
            if op < 0.3:
                with sharded() as s:
                    kind = rnd.randrange(4)
                    if kind == 0:  # an ORM change on one shard
                        c = s.get(m.Category, k, identity_token=t)
                        if c is not None:
                            c.name = f"{t}{k}-{step}"
                    elif kind == 1:  # a bulk update aimed at one shard
                        s.execute(update(m.Category).where(m.Category.id == k)
                                  .values(name=f"bulk{step}").options(set_shard_id(t)))  # fmt: skip
                    elif kind == 2:  # a product moves to another category
                        p = s.get(m.Product, rnd.randint(1, 6), identity_token=t)
                        if p is not None:
                            p.category_id = k
                    else:  # a new product on that shard
                        next_id += 1
                        p = m.Product(id=next_id, name=f"new{next_id}", category_id=k,
                                      price=decimal.Decimal(1), created=dt.datetime(2024, 1, 1),
                                      sku=uuid.UUID(int=next_id))  # fmt: skip
                        p.__dict__["_shard"] = t
                        s.add(p)
                    s.commit()
                continue
            name = rnd.choice(list(reads))
            before = cache.stats()["default"]["hits"]
            cached = _outcome(sharded, reads[name], k, t)
            hits += cache.stats()["default"]["hits"] - before
            cache.enabled = False
            try:
                expected = _outcome(sharded, reads[name], k, t)
            finally:
                cache.enabled = True
            assert cached == expected, (seed, step, name, k, t)
    finally:
        cache.uninstall()
        for engine in engines.values():
            engine.dispose()
    assert hits > 10, hits  # reads were served from the cache, not only compared


def _outcome(sharded: Any, read: Any, k: int, t: str) -> Any:
    """What a read returns in a fresh session, or the error it raises (a get without
    a token finds the row on both shards: MultipleResultsFound, cached or not)."""
    try:
        with sharded() as s:
            return read(s, k, t)
    except Exception as err:
        return ("raised", type(err).__name__)
