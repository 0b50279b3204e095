"""An entry with eager-loaded collections is served to a mapping that loads them differently.

SQLAlchemy tests: test/orm/test_selectin_relations.py::EagerTest::test_orderby_desc
and test/orm/test_subquery_relations.py::EagerTest::test_orderby_desc. The
previous test maps ``User.addresses`` (lazy="selectin") ordered by
email_address ASC and caches ``query(User).order_by(User.id)`` with the
collections; the next one maps it ordered DESC and is served that entry: the
collections come back in the old order. The key's mapper fingerprint
(hydrate.py ``_mapper_signature``) records a relationship only as
``key>target:uselist``, not its order_by, join condition or loader strategy,
and the statement key renders the mapper by class name (keys.py ``_stable``).
The same happens across processes sharing a Redis region when a deploy changes
a relationship's ``order_by`` or ``primaryjoin`` (second check: a filtered
relationship served the unfiltered collections). Prints OK or FAIL.
"""

from dogpile.cache import make_region
from sqlalchemy import (
    Column,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    create_engine,
    desc,
)
from sqlalchemy.orm import Session, clear_mappers, registry, relationship

from sqla_querycache import QueryCache

metadata = MetaData()
users = Table("users", metadata, Column("id", Integer, primary_key=True), Column("name", String(30)))
addresses = Table("addresses", metadata, Column("id", Integer, primary_key=True),
                  Column("user_id", ForeignKey("users.id")), Column("email", String(50)))


class User:
    pass


class Address:
    pass


engine = create_engine("sqlite://")
metadata.create_all(engine)
with engine.begin() as conn:
    conn.execute(users.insert(), [{"id": 7, "name": "jack"}, {"id": 8, "name": "ed"}])
    conn.execute(addresses.insert(), [{"id": 1, "user_id": 7, "email": "jack@bean.com"},
                                      {"id": 2, "user_id": 8, "email": "ed@wood.com"},
                                      {"id": 3, "user_id": 8, "email": "ed@bettyboop.com"},
                                      {"id": 4, "user_id": 8, "email": "ed@lala.com"}])

cache = QueryCache(regions={"default": make_region().configure("dogpile.cache.memory")})
cache.install(Session)


def mapped(**rel_kw) -> None:
    clear_mappers()
    reg = registry()
    reg.map_imperatively(Address, addresses)
    reg.map_imperatively(User, users, properties={
        "addresses": relationship(Address, lazy="selectin", **rel_kw)})


def emails(cached: bool) -> list:
    with Session(engine, info={"cache_region": "default"} if cached else {}) as s:
        return [[a.email for a in u.addresses] for u in s.query(User).order_by(User.id)]


ok = True
mapped(order_by=addresses.c.email)
emails(cached=True)  # stored: collections ordered ASC
mapped(order_by=desc(addresses.c.email))
want, got = emails(False), emails(True)
print(f"order_by DESC: database {want}\n               cached   {got}")
ok &= want == got

mapped()
emails(cached=True)  # stored: every address
mapped(primaryjoin=and_(users.c.id == addresses.c.user_id, addresses.c.email.like("%wood%")),
       viewonly=True)
want, got = emails(False), emails(True)
print(f"filtered primaryjoin: database {want}\n                      cached   {got}")
ok &= want == got
print("OK" if ok else "FAIL")
