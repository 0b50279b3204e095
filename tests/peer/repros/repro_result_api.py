"""What a cached Result is missing compared with the database's.

SQLAlchemy tests: test/orm/test_events.py::ORMExecuteTest::test_chained_events_one
and _two (``result.context.execution_options`` -> AttributeError: 'NoneType'
object has no attribute 'execution_options'), and
test/orm/test_session.py::NewStyleExecutionTest::test_unbuffered_result_session_is_closed
(reading a result after ``session.close()`` / ``expunge_all()`` must raise).
Miss or hit, the extension returns a new result built from frozen rows
(cache.py ``_miss``: ``shape.result(frozen.data)``; ``_lookup``:
``shape.result(data)``), so ``result.context`` (the execution context, with
the execution options and compiled statement) is None, and every row is
already an object of the identity map at execute() time (a buffered result):
reading it after the session was closed succeeds. Prints OK or FAIL.
"""

from dogpile.cache import make_region
from sqlalchemy import create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from sqla_querycache import QueryCache


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)


engine = create_engine("sqlite://")
Base.metadata.create_all(engine)
with Session(engine) as s:
    s.add(User(id=1))
    s.commit()
cache = QueryCache(regions={"default": make_region().configure("dogpile.cache.memory")})
cache.install(Session)


def observe(info) -> tuple:
    s = Session(engine, info=info)
    result = s.execute(select(User).execution_options(my_option=1))
    context = getattr(result, "context", None)
    opts = "has context" if context is not None else "context is None"
    s.close()
    try:
        result.all()
        after_close = "rows"
    except Exception as err:
        after_close = type(err).__name__
    return opts, after_close


plain, miss, hit = observe({}), observe({"cache_region": "default"}), observe({"cache_region": "default"})
print(f"(result.context, result.all() after close): plain {plain}, miss {miss}, hit {hit}")
print("OK" if plain == miss == hit else "FAIL")
