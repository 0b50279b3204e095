"""The first cached SELECT on an in-memory SQLite engine rolls back the session's writes.

Regression at 3cfef04 (not in fe613d9). SQLAlchemy tests (wide list):
test_bind.py::BindIntegrationTest::test_bind_from_metadata,
dml/test_bulk_statements.py ``test_autoflush[default]`` (5 classes),
test_naturalpks.py::CascadeToFKPKTest::test_onetomany_nonpassive,
test_unitofworkv2.py::BasicStaleChecksTest::test_update_multi_missing_broken_multi_rowcount,
test_cycles.py::InheritTestOne::test_many_to_one_only,
test_relationships.py::AmbiguousJoinInterpretedAsSelfRef::test_mapping,
test_unitofwork.py::BinaryHistTest::test_binary_equality: a query after a
flush returns no rows.

Cause: building the first plan for an engine asks the database what it
reaches (keys.py ``server_identity``: ``with engine.connect() as conn:
conn.exec_driver_sql("PRAGMA database_list"); conn.rollback()``). For
``sqlite://`` SQLAlchemy's pool (SingletonThreadPool; StaticPool alike) hands
out the *same* DBAPI connection the session's transaction is using, so that
``rollback()`` (and the pool's reset when it is returned) discards the
session's flushed, uncommitted rows: the query sees nothing, stores that
empty result, and ``commit()`` then commits nothing. Prints OK or FAIL.
"""

from dogpile.cache import make_region
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from sqla_querycache import QueryCache


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


cache = QueryCache(regions={"default": make_region().configure("dogpile.cache.memory")})
cache.install(Session)


def run(info) -> tuple[int, int]:
    engine = create_engine("sqlite://")  # a new in-memory database each time
    Base.metadata.create_all(engine)
    with Session(engine, info=info) as s:
        s.add(User(name="Johnny"))
        s.flush()
        seen = len(s.scalars(select(User).where(User.name == "Johnny")).all())
        s.commit()
    with Session(engine) as s:
        committed = s.scalar(select(func.count()).select_from(User))
    return seen, committed


plain, cached = run({}), run({"cache_region": "default"})
print(f"(rows seen after flush, rows committed): plain {plain}, cached {cached}")
print("OK" if plain == cached else "FAIL")
