"""A cache hit begins no transaction, does not autoflush, ignores autobegin=False.

SQLAlchemy tests: test/orm/test_session.py::TransScopingTest::test_autobegin_execute
(``session._transaction`` still None after ``execute(select(1))``) and
test_no_autobegin[*-select1] (``Session(autobegin=False).execute(...)`` must
raise "Autobegin is disabled on this Session"). A hit returns from the
extension's do_orm_execute hook (cache.py ``_on_execute`` -> ``_lookup``)
before SQLAlchemy acquires a connection (``Session._connection_for_bind``),
so nothing begins: no ``after_begin`` event (where applications issue
``SET LOCAL`` / ``SET search_path`` / row-level-security settings), no
connection checked out, ``in_transaction()`` stays False, and the
autobegin=False check never runs. Nor does it autoflush (SQLAlchemy flushes
in the second ``orm_pre_session_exec`` pass, after the hooks; test_events.py
ORMExecuteTest::test_autoflush_change): pending objects of tables the query
does not read stay pending (no INSERT, no primary key yet). Prints OK or FAIL.
"""

from dogpile.cache import make_region
from sqlalchemy import create_engine, event, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from sqla_querycache import QueryCache


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)


class Note(Base):
    __tablename__ = "note"
    id: Mapped[int] = mapped_column(primary_key=True)


engine = create_engine("sqlite://")
Base.metadata.create_all(engine)
cache = QueryCache(regions={"default": make_region().configure("dogpile.cache.memory")})
cache.install(Session)
begins = []
event.listen(Session, "after_begin", lambda session, trans, conn: begins.append(1))


def observe(info) -> tuple:
    begins.clear()
    s = Session(engine, info=info)
    s.scalars(select(User)).all()
    began = (s.in_transaction(), len(begins))
    s.close()
    s = Session(engine, info=info, autobegin=False)
    try:
        s.scalars(select(User)).all()
        autobegin = "no error"
    except sa_exc.InvalidRequestError as err:
        autobegin = "raised " + str(err)[:30]
    s.close()
    with Session(engine, info=info) as s:
        note = Note()
        s.add(note)
        s.scalars(select(User)).all()
        flushed = "autoflushed" if note.id is not None else "still pending"
        s.rollback()
    return began, autobegin, flushed


plain = observe({})
observe({"cache_region": "default"})  # stores the entry
hit = observe({"cache_region": "default"})
print(f"(in_transaction, after_begin calls), autobegin=False, other pending object:\n"
      f"  plain {plain}\n  hit   {hit}")
print("OK" if plain == hit else "FAIL")
