"""``QueryCache.get_by``: unique-key lookups through the identity cache.

The oracle is the uncached query (``select(...).filter_by(...)`` on a plain
connection). A generator of write sequences (ORM changes of the key, swaps
through a third value, deletes and re-inserts, Core and text UPDATEs that
name no row, writes to other rows) runs on SQLite, PostgreSQL and MariaDB
with memory and Redis regions; after every step every key is looked up both
ways in a fresh session.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Index, String, UniqueConstraint, select, text, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from sqla_querycache import QueryCache
from sqla_querycache.exc import ConfigurationError

from .conftest import StatementCounter, identity_cache, memory_region


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "qc_account"
    __table_args__ = (
        UniqueConstraint("tenant", "handle"),
        Index("qc_account_code", "code", unique=True),
    )
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    email: Mapped[str] = mapped_column(String(40), unique=True)
    tenant: Mapped[int]
    handle: Mapped[str] = mapped_column(String(20))
    code: Mapped[int]
    note: Mapped[str] = mapped_column(String(20), default="")


EMAILS = [f"user{i}@example.com" for i in range(8)]


@pytest.fixture()
def gb(engine: Any, region_kind: str, request: Any) -> Iterator[tuple[QueryCache, Any, Any]]:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        s.add_all(Account(id=i, email=EMAILS[i], tenant=i % 2, handle=f"h{i}", code=100 + i)
                  for i in range(1, 6))  # fmt: skip
        s.commit()
    cache = identity_cache(region_kind, request)
    maker = sessionmaker(engine, class_=type("GetBySession", (Session,), {}))
    cache.install(maker)
    yield cache, maker, engine
    cache.close()
    Base.metadata.drop_all(engine)


def truth(engine: Any, **values: Any) -> Any:
    t = Account.__table__
    with engine.connect() as c:
        row = c.execute(select(t.c.id).filter_by(**values)).first()
    return None if row is None else row[0]


def test_a_hit_sends_no_sql_and_survives_writes_to_other_rows(gb: Any) -> None:
    cache, maker, engine = gb
    sql = StatementCounter(engine)
    for _ in range(2):
        with maker() as s:
            assert cache.get_by(s, Account, email=EMAILS[2]).id == 2
    before = sql.count
    with maker() as s:
        assert cache.get_by(s, Account, email=EMAILS[2]).id == 2
    assert sql.count == before  # index entry + identity entry: no SQL
    with maker() as s:
        s.get(Account, 3).email = "other@example.com"  # another row
        s.commit()
    before = sql.count
    with maker() as s:
        assert cache.get_by(s, Account, email=EMAILS[2]).id == 2
    assert sql.count == before


def test_composite_and_index_keys(gb: Any) -> None:
    cache, maker, _ = gb
    with maker() as s:
        assert cache.get_by(s, Account, tenant=1, handle="h3").id == 3
        assert cache.get_by(s, Account, code=104).id == 4
        assert cache.get_by(s, Account, tenant=0, handle="h3") is None
        assert cache.get_by(s, Account, tenant=0, handle="h4").id == 4


def test_not_a_unique_key_is_a_typed_error(gb: Any) -> None:
    cache, maker, _ = gb
    with maker() as s:
        with pytest.raises(ConfigurationError, match="not a declared unique key"):
            cache.get_by(s, Account, note="x")
        with pytest.raises(ConfigurationError, match="unique keys: "):
            cache.get_by(s, Account, tenant=1)  # half of a composite key
        with pytest.raises(ConfigurationError):
            cache.get_by(s, Account)


def test_needs_an_identity_region(sqlite_engine: Any) -> None:
    cache = QueryCache(regions={"default": memory_region()})
    try:
        with (
            Session(sqlite_engine) as s,
            pytest.raises(ConfigurationError, match="identity_region"),
        ):
            cache.get_by(s, Account, email="x")
    finally:
        cache.close()


def test_unsaved_changes_are_seen_as_the_query_would(gb: Any) -> None:
    cache, maker, _ = gb
    with maker() as s:
        assert cache.get_by(s, Account, email=EMAILS[1]).id == 1
    with maker() as s:
        s.get(Account, 1).email = "moved@example.com"  # not flushed
        assert cache.get_by(s, Account, email=EMAILS[1]) is None  # autoflush, as the query
        assert cache.get_by(s, Account, email="moved@example.com").id == 1
        s.rollback()
    with maker() as s:
        assert cache.get_by(s, Account, email=EMAILS[1]).id == 1


def _step(rnd: random.Random, maker: Any, engine: Any) -> str:
    """One random write; returns what it did (for the failure message)."""
    with Session(engine) as s0:  # closed: an open transaction would hold MariaDB's locks
        ids = [r[0] for r in s0.execute(select(Account.id)).all()]
    k = rnd.random()
    with maker() as s:
        if k < 0.3 and len(ids) >= 2:  # swap two emails through a third value
            a, b = rnd.sample(ids, 2)
            x, y = s.get(Account, a), s.get(Account, b)
            ea, eb = x.email, y.email
            x.email = "swap@example.com"
            s.flush()
            y.email = ea
            s.flush()
            x.email = eb
            s.commit()
            return f"swap {a}<->{b}"
        if k < 0.45 and ids:  # delete a row, re-insert its email on a new id
            a = rnd.choice(ids)
            x = s.get(Account, a)
            email, tenant, handle, code = x.email, x.tenant, x.handle, x.code
            s.delete(x)
            s.flush()
            s.add(Account(id=max(ids) + 1, email=email, tenant=tenant, handle=handle, code=code))
            s.commit()
            return f"delete {a}, reinsert as {max(ids) + 1}"
        if k < 0.6:  # a free email to some row
            used = {r[0] for r in s.execute(select(Account.email))}
            free = [e for e in EMAILS if e not in used]
            if free and ids:
                a = rnd.choice(ids)
                s.get(Account, a).email = rnd.choice(free)
                s.commit()
                return f"row {a} takes a free email"
            return "nothing"
        if k < 0.7 and ids:  # Core UPDATE by a non-key column: names no row
            a = rnd.choice(ids)
            s.execute(
                update(Account)
                .where(Account.code == 100 + a)
                .values(email=f"core{rnd.randrange(10**9)}@x")
            )
            s.commit()
            return f"core update by code of {a}"
        if k < 0.8 and ids:  # text
            a = rnd.choice(ids)
            s.execute(text("UPDATE qc_account SET email = :e WHERE id = :i"),
                      {"e": f"text{rnd.randrange(10**9)}@x", "i": a})  # fmt: skip
            s.commit()
            return f"text update of {a}"
        if ids:  # an unrelated column of some row
            a = rnd.choice(ids)
            s.get(Account, a).note = str(rnd.random())[:10]
            s.commit()
            return f"note of {a}"
    return "nothing"


@pytest.mark.parametrize("seed", range(4))
def test_generated_writes_never_give_a_wrong_row(gb: Any, seed: int) -> None:
    cache, maker, engine = gb
    rnd = random.Random(seed)
    log: list[str] = []
    for _ in range(12):
        log.append(_step(rnd, maker, engine))
        with Session(engine) as s:
            emails = [e for (e,) in s.execute(select(Account.email))]
        for email in {*EMAILS, *emails, "nobody@example.com"}:
            want = truth(engine, email=email)
            for _ in range(2):  # a miss (stored), then a hit
                with maker() as s:
                    obj = cache.get_by(s, Account, email=email)
                    got = None if obj is None else obj.id
                assert got == want, f"email={email!r}: {got} != {want} after {log}"
    assert cache.stats()["default"]["hits"] > 0
