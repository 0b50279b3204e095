"""Horizontal sharding (``sqlalchemy.ext.horizontal_shard``) with the identity cache on.

The sharding extension answers every statement from its own ``do_orm_execute``
hook (one ``invoke_statement`` per shard, with events skipped), so a sharded
session's reads are not cached; what must hold is that they stay right: each
shard's rows under their own identity token, writes to one shard seen at once,
no row of one shard ever served for another, and unsharded sessions of the same
cache still cached.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import create_engine, select
from sqlalchemy.ext.horizontal_shard import ShardedSession
from sqlalchemy.orm import Session

from sqla_querycache import QueryCache

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

    try:
        for _ in range(2):  # the second round would be the hits
            with sharded() as s:
                got = {c.name for c in (s.get(m.Category, 1, identity_token=t) for t in "ab")}
                assert got == {"shard a", "shard b"}
                rows = sorted(c.name for c in s.scalars(select(m.Category)))
                assert rows == ["shard a", "shard b"]
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
        cache.uninstall()
        for engine in engines.values():
            engine.dispose()
