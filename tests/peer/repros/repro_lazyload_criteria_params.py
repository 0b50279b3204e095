"""lazyload(rel.and_(criteria)) on a hit uses another query's parameter values.

SQLAlchemy tests: test/orm/test_relationship_criteria.py::RelationshipCriteriaTest::
test_opts_local_criteria_cachekey[use_in-lazyload], [not_use_in-lazyload] and
test_loader_criteria_subquery_w_same_entity[lazyload-True]. The statement
``select(User).options(lazyload(User.addresses.and_(Address.email != value)))``
runs for value A (miss), B (miss), then A again (hit): the hit's objects
lazy-load their addresses with B's criteria.

Cause: with a loader option, the ORM gives each loaded object a per-object
lazy callable (``state.callables["addresses"] = LoadLazyAttribute(...)``)
that holds the option's criteria *with its bound values*. The extension keeps
those callables as per-plan templates (hydrate.py ``dehydrate``:
``templates[sig] = (dict(state.callables), state.load_path)``; cache.py
``_miss``: ``plan.templates = {**(plan.templates or {}), **templates}``), and the
plan is shared by every parameter set (its memo key is SQLAlchemy's cache key
without bound values, cache.py ``_plan``); a hit reapplies the last miss's
callables (hydrate.py ``_loader_state``). Prints OK or FAIL.
"""

from dogpile.cache import make_region
from sqlalchemy import ForeignKey, create_engine, select
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    lazyload,
    mapped_column,
    relationship,
)

from sqla_querycache import QueryCache


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    addresses: Mapped[list["Address"]] = relationship(order_by="Address.id")


class Address(Base):
    __tablename__ = "addresses"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    email: Mapped[str]


engine = create_engine("sqlite://")
Base.metadata.create_all(engine)
with Session(engine) as s:
    s.add(User(id=8, addresses=[Address(id=2, email="wood"), Address(id=3, email="betty"),
                                Address(id=4, email="lala")]))
    s.commit()

cache = QueryCache(regions={"default": make_region().configure("dogpile.cache.memory")})
cache.install(Session)


def emails(value: str, cached: bool) -> list:
    stmt = select(User).options(lazyload(User.addresses.and_(Address.email != value)))
    with Session(engine, info={"cache_region": "default"} if cached else {}) as s:
        return [a.email for u in s.scalars(stmt) for a in u.addresses]


ok = True
for value in ("wood", "lala", "wood", "lala"):
    want, got = emails(value, False), emails(value, True)
    print(f"addresses != {value!r}: database {want}, cached {got}")
    ok &= want == got
print("OK" if ok else "FAIL")
