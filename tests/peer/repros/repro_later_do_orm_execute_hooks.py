"""do_orm_execute hooks registered after install() are skipped on hits and not keyed.

SQLAlchemy tests: test/orm/test_events.py::ORMExecuteTest (38 cases:
test_user_option_propagation, test_execution_option_visibility_and_mutation,
test_load_option_propagation_to_post_load, test_autoflush_change,
test_chained_events_*). The extension's hook is a class-level
``do_orm_execute`` listener on Session (events.py ``install``:
``inst.listen(session_target, "do_orm_execute", do_orm_execute)``) and runs
before any hook added later. It computes the key from the statement as it
stands (cache.py ``_on_execute``), then on a hit returns rows without
running the later hooks, and on a miss runs them through
``invoke_statement()`` (they may change the statement) and stores the rows
under the key of the *unchanged* statement.

SQLAlchemy documents that hook as the way to add global criteria
(``with_loader_criteria`` for soft delete / multi-tenancy, "Adding global
WHERE / ON criteria"). Installed in that order, tenant 2 is served tenant
1's rows. Prints OK or FAIL.
"""

from dogpile.cache import make_region
from sqlalchemy import create_engine, event, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, with_loader_criteria

from sqla_querycache import QueryCache


class Base(DeclarativeBase):
    pass


class Doc(Base):
    __tablename__ = "doc"
    id: Mapped[int] = mapped_column(primary_key=True)
    tenant: Mapped[int]
    title: Mapped[str]


engine = create_engine("sqlite://")
Base.metadata.create_all(engine)
with Session(engine) as s:
    s.add_all([Doc(id=1, tenant=1, title="t1 secret"), Doc(id=2, tenant=2, title="t2 doc")])
    s.commit()

cache = QueryCache(regions={"default": make_region().configure("dogpile.cache.memory")})
cache.install(Session)  # the application's own hook comes after, e.g. in another module


@event.listens_for(Session, "do_orm_execute")
def tenant_filter(state):
    if state.is_select and not state.is_column_load and not state.is_relationship_load:
        tenant = state.session.info["tenant"]
        state.statement = state.statement.options(
            with_loader_criteria(Doc, lambda cls: cls.tenant == tenant,
                                 track_closure_variables=True))


def titles(tenant: int, cached: bool) -> list:
    info = {"tenant": tenant, **({"cache_region": "default"} if cached else {})}
    with Session(engine, info=info) as s:
        return s.scalars(select(Doc.title).select_from(Doc).order_by(Doc.id)).all()


ok = True
for tenant in (1, 2):
    want, got = titles(tenant, cached=False), titles(tenant, cached=True)
    print(f"tenant {tenant}: database {want}, cached {got}")
    ok &= want == got
print("OK" if ok else "FAIL")
