"""synchronize_session="fetch": a routing get_bind() sees an extra Select.

SQLAlchemy tests: test/orm/dml/test_orm_upd_del_basic.py::UpdateDeleteTest::
test_routing_session[fetch-update] and [fetch-delete]. A Session subclass
records ``type(kw["clause"])`` for each ``get_bind()`` call; SQLAlchemy
calls it once for the internal "fetch" pre-SELECT (from the
``skip_for_returning`` hook it appends to do_orm_execute,
orm/bulk_persistence.py ``_do_pre_synchronize_fetch``) and once for the
UPDATE/DELETE. Cached, the extension's do_orm_execute hook (which runs
first) treats that internal pre-SELECT as a user SELECT and calls
``session.get_bind()`` itself (cache.py ``_on_execute``): [Select, Select,
Update] instead of [Select, Update].

Also shown: the pre-SELECT is stored in the cache. On a backend with
RETURNING, ``skip_for_returning`` answers it with an empty ``null_result()``
(no SQL runs) and the extension stores that empty result as the statement's
rows; on a later hit ``skip_for_returning`` never runs (SQLAlchemy then gets
``_can_use_returning=None`` and the cached empty matched rows). The UPDATE
still synchronizes the session here (third line): no wrong result was
observed, only the extra call and a meaningless entry. Prints OK or FAIL.
"""

from dogpile.cache import make_region
from sqlalchemy import create_engine, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from sqla_querycache import QueryCache


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


engine = create_engine("sqlite://")
Base.metadata.create_all(engine)
with Session(engine) as s:
    s.add_all([User(id=1, name="a"), User(id=2, name="b")])
    s.commit()

cache = QueryCache(regions={"default": make_region().configure("dogpile.cache.memory")})
cache.install(Session)
stmt = update(User).where(User.id >= 1).values(name="x").execution_options(
    synchronize_session="fetch")


def routed(info) -> tuple[list, str]:
    received = []

    class RoutingSession(Session):
        def get_bind(self, **kw):
            received.append(type(kw["clause"]).__name__)
            return super().get_bind(**kw)

    with RoutingSession(engine, info=info) as s:
        u = s.get(User, 1)
        received.clear()
        s.execute(stmt)
        name = u.name
        s.rollback()
    return received, name


plain = routed({})
before = cache.stats()["default"]["stores"]
miss = routed({"cache_region": "default"})
stored = cache.stats()["default"]["stores"] - before
hit = routed({"cache_region": "default"})
print(f"get_bind() clauses: plain {plain[0]}, cached miss {miss[0]}, cached hit {hit[0]}")
print(f"entries stored by the cached UPDATE (its internal pre-SELECT and the get): {stored}")
print(f"object synchronized: plain {plain[1]!r}, miss {miss[1]!r}, hit {hit[1]!r}")
print("OK" if plain == miss == hit else "FAIL")
