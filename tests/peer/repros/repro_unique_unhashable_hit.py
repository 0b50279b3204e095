"""Two TypeDecorator classes with the same qualified name share cache entries.

SQLAlchemy test: test/orm/test_query.py::RowTupleTest::test_unhashable_types
[unknown_unhashable-use_future]. Each parametrization defines its own local
``MyType`` (one ``hashable = False``, one ``_isnull = True``); SQLAlchemy's cache
key holds the class object, but the extension's persistent key renders a class
by ``module.qualname`` (keys.py ``_stable``), so the second statement is served
the first one's entry, and ``.unique()`` on that hit no longer raises the
error the database result raises. The same collision serves wrong *values*
when the classes process results differently (second check). Prints OK or FAIL.
"""

from dogpile.cache import make_region
from sqlalchemy import (
    ForeignKey,
    Integer,
    String,
    TypeDecorator,
    create_engine,
    select,
    type_coerce,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from sqla_querycache import QueryCache


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(30))
    addresses = relationship("Address")


class Address(Base):
    __tablename__ = "addresses"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))


def make_type(style=None, factor=1):
    class MyType(TypeDecorator):  # the same qualname every call, as in the test
        impl = Integer
        cache_ok = True
        if style == "unhashable":
            hashable = False
        elif style == "unknown_unhashable":
            _isnull = True

        def process_result_value(self, value, dialect):
            return [value] if style else value * factor

    return MyType


engine = create_engine("sqlite://")
Base.metadata.create_all(engine)
with Session(engine) as s:
    s.add_all([User(id=7, name="jack", addresses=[Address(id=1)]),
               User(id=8, name="ed", addresses=[Address(id=2), Address(id=3)])])
    s.commit()

cache = QueryCache(regions={"default": make_region().configure("dogpile.cache.memory")})
cache.install(Session)


def unique_rows(style: str, cached: bool) -> str:
    stmt = (select(User, type_coerce(User.id, make_type(style)).label("foo"))
            .join(User.addresses).order_by(User.id))
    with Session(engine, info={"cache_region": "default"} if cached else {}) as s:
        try:
            rows = s.execute(stmt).unique().all()
        except sa_exc.InvalidRequestError as err:
            return f"raised {str(err).split(';')[1].strip()[:35]!r}"
        return f"returned {len(rows)} rows"


def scaled(factor: int, cached: bool) -> list:
    stmt = select(type_coerce(User.id, make_type(factor=factor)).label("x")).order_by(User.id)
    with Session(engine, info={"cache_region": "default"} if cached else {}) as s:
        return s.scalars(stmt).all()


ok = True
unique_rows("unhashable", cached=True)  # stored under the shared key
want, got = unique_rows("unknown_unhashable", False), unique_rows("unknown_unhashable", True)
print(f"unique() with the second MyType: database {want}, cached {got}")
ok &= want == got
scaled(10, cached=True)
want, got = scaled(100, False), scaled(100, True)
print(f"values with a second Scaled type: database {want}, cached {got}")
ok &= want == got
print("OK" if ok else "FAIL")
