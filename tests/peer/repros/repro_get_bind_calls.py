"""What Session.get_bind() sees when a SELECT goes through the cache.

SQLAlchemy tests: test/orm/test_query.py::SessionBindTest::* (20 cases). They
wrap ``session.get_bind`` in a mock and require every call to be exactly
``call(clause=ANY, mapper=User)`` (or ``call(clause=ANY)``). Cached, a miss
calls it twice: once from the extension (cache.py ``_on_execute``:
``session.get_bind(**orm_state.bind_arguments)``, same arguments, harmless for
that test) and once from SQLAlchemy itself inside
``ORMExecuteState.invoke_statement()``, which adds ``_sa_skip_events=True`` to
the bind arguments (sqlalchemy/orm/session.py, ``invoke_statement``): that
keyword is what the tests reject. A hit calls get_bind once, exactly like an
uncached query. The ``_sa_skip_events`` call is inherent to re-executing
from ``do_orm_execute`` (SQLAlchemy's own dogpile_caching example does the
same). Prints the calls, then OK if a hit matches the plain run and FAIL
otherwise.
"""

from unittest import mock

from dogpile.cache import make_region
from sqlalchemy import create_engine, event, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from sqla_querycache import QueryCache


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)


engine = create_engine("sqlite://")
Base.metadata.create_all(engine)
cache = QueryCache(regions={"default": make_region().configure("dogpile.cache.memory")})
cache.install(Session)


def calls(info) -> list:
    s = Session(engine, info=info)
    get_bind = mock.Mock(side_effect=s.get_bind)
    with mock.patch.object(s, "get_bind", get_bind):
        s.execute(select(User)).all()
    s.close()
    return [sorted(c.kwargs) for c in get_bind.mock_calls]


plain = calls({})
miss = calls({"cache_region": "default"})
hit = calls({"cache_region": "default"})
print(f"plain: {plain}\nmiss:  {miss}\nhit:   {hit}")

# the same second call from any do_orm_execute handler that re-executes
cache.uninstall()


@event.listens_for(Session, "do_orm_execute")
def reexecute(state):
    return state.invoke_statement()


print(f"a bare invoke_statement() handler: {calls({})}")
print("OK" if hit == plain and miss == plain else "FAIL")
