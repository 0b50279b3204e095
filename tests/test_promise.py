"""One test per class of defect in "never stale, never wrong" (issue 6).

Each test builds the situation in which a cache that *predicts* what a
statement reads, or tracks transactions at the session, serves a wrong row,
and checks the cached read against the database. The oracle is the uncached
read (``NoCache``) and the number of statements sent.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event, func, select, text, update
from sqlalchemy.exc import IntegrityError, InvalidRequestError
from sqlalchemy.orm import Session, selectinload, with_loader_criteria

from sqla_querycache import FromCache, NoCache

from .models import Category, Customer, Order, Product, Tag


def rows(session: Any, stmt: Any) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in session.execute(stmt).all()]


def both(engine: Any, stmt: Any) -> tuple[list[Any], list[Any]]:
    with Session(engine) as s:
        cached = rows(s, stmt.options(FromCache()))
    with Session(engine) as s:
        plain = rows(s, stmt.options(NoCache()))
    return cached, plain


CATEGORY = select(Category.id, Category.name).where(Category.id == 1)


# ------------------------------------------------------------ pure reads only


def test_select_with_a_data_modifying_cte_runs_every_time(engine, sql, cache):
    if engine.dialect.name != "postgresql":
        pytest.skip("data-modifying CTEs are PostgreSQL's")
    cte = update(Category).where(Category.id == 1).values(name=Category.name + "!") \
        .returning(Category.id).cte("u")  # fmt: skip
    stmt = select(cte.c.id)
    for _ in range(2):
        with Session(engine) as s:
            s.execute(stmt.options(FromCache())).all()
            s.commit()
    with Session(engine) as s:
        assert s.scalar(select(Category.name).where(Category.id == 1)).endswith("!!")
    assert cache.stats()["default"]["hits"] == 0


@pytest.mark.parametrize("sql_text", ["SELECT id FROM category WHERE id = 1 FOR UPDATE",
                                      "SELECT id FROM category FOR UPDATE SKIP LOCKED"])
def test_locking_text_is_never_cached(engine, sql, cache, sql_text):
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite has no row locks")
    stmt = select(Category).from_statement(text(sql_text))
    for _ in range(2):
        mark = sql.count
        with Session(engine) as s:
            s.execute(stmt.options(FromCache())).all()
        assert sql.since(mark) == 1


def test_tableless_read_cached_only_when_tagged(engine, sql, cache):
    stmt = select(func.lower("ABC"))
    sessions = [lambda: Session(engine, info={"cache_region": "default"})]
    if hasattr(Session(), "execution_options"):  # SQLAlchemy 2.1
        sessions.append(lambda: Session(engine, execution_options={"cache_region": "default"}))
    for make in sessions:
        with make() as s:
            s.execute(stmt).all()
            mark = sql.count
            s.execute(stmt).all()
            assert sql.since(mark) == 1  # a session-wide option never caches it
    with Session(engine) as s:
        s.execute(stmt.options(FromCache())).all()
    with Session(engine) as s:  # (a fresh transaction: MariaDB's snapshots)
        mark = sql.count
        s.execute(stmt.options(FromCache())).all()
        assert sql.since(mark) == 0  # tagged by the statement itself: it is


# --------------------------------------------------- transactions at the connection


def test_session_bound_to_a_connection_sees_its_core_writes(engine, sql, cache):
    with engine.connect() as conn:
        conn.execute(update(Category).where(Category.id == 1).values(name="uncommitted"))
        with Session(bind=conn) as s:
            assert rows(s, CATEGORY.options(FromCache())) == [(1, "uncommitted")]
        conn.rollback()
    cached, plain = both(engine, CATEGORY)
    assert cached == plain and plain[0][1] != "uncommitted"


def test_snapshot_taken_by_sql_is_honoured(engine, sql, cache):
    if engine.dialect.name == "sqlite":
        pytest.skip("no isolation levels by SQL on SQLite")
    with Session(engine) as reader:
        reader.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        reader.execute(select(Tag.id).options(NoCache())).all()  # the snapshot starts here
        with Session(engine) as writer:
            writer.execute(update(Category).where(Category.id == 1).values(name="later"))
            writer.commit()
        old = rows(reader, CATEGORY.options(FromCache()))  # must not be stored for others
        assert old[0][1] != "later"
    cached, plain = both(engine, CATEGORY)
    assert cached == plain == [(1, "later")]


def test_driver_autocommit_commits_at_the_statement(engine, sql, cache, tmp_path):
    if engine.dialect.name == "sqlite":
        pytest.skip("covered by AUTOCOMMIT isolation on SQLite")
    both(engine, CATEGORY)
    from sqlalchemy import create_engine

    ac = create_engine(engine.url, connect_args={"autocommit": True})
    try:
        with ac.connect() as conn:
            conn.execute(update(Category).where(Category.id == 1).values(name="driver-ac"))
            cached, plain = both(engine, CATEGORY)  # committed already, before conn.commit()
            assert plain == [(1, "driver-ac")]
            assert cached == plain
            conn.rollback()  # nothing to undo: the driver committed
        cached, plain = both(engine, CATEGORY)
        assert cached == plain == [(1, "driver-ac")]
    finally:
        ac.dispose()


def test_mariadb_implicit_commit_then_rollback(engine, sql, cache):
    if engine.dialect.name != "mysql":
        pytest.skip("implicit commits are MySQL/MariaDB's")
    both(engine, CATEGORY)
    with engine.connect() as conn:
        conn.execute(update(Category).where(Category.id == 1).values(name="implicit"))
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS qc_implicit (id INT)")  # commits
        conn.rollback()
        conn.exec_driver_sql("DROP TABLE IF EXISTS qc_implicit")
    cached, plain = both(engine, CATEGORY)
    assert cached == plain == [(1, "implicit")]


def test_two_phase_commit_invalidates(engine, sql, cache):
    if engine.dialect.name != "postgresql":
        pytest.skip("two-phase commit tested on PostgreSQL")
    with engine.connect() as conn:
        if conn.exec_driver_sql("SHOW max_prepared_transactions").scalar() == "0":
            pytest.skip("max_prepared_transactions is 0")
    both(engine, CATEGORY)
    with engine.connect() as conn:
        trans = conn.begin_twophase()
        conn.execute(update(Category).where(Category.id == 1).values(name="twophase"))
        trans.prepare()
        both(engine, CATEGORY)  # read (and stored) between prepare and commit
        trans.commit()
    cached, plain = both(engine, CATEGORY)
    assert cached == plain == [(1, "twophase")]


# ------------------------------------------------- uncached semantics on a hit


def test_a_hit_autoflushes_like_the_query_would(engine, sql, cache):
    stmt = select(Category).where(Category.id == 1).options(FromCache())
    with Session(engine) as s:
        s.execute(stmt).all()
    with Session(engine) as s:
        s.add(Tag(id=1, label="duplicate"))  # another table: the query does not read it
        with pytest.raises(IntegrityError):
            s.execute(stmt).all()  # the uncached query would flush it, and fail


@pytest.mark.parametrize("flush", [True, False])
def test_a_hook_that_sets_autoflush_is_obeyed_on_a_hit(engine, sql, cache, flush):
    """A do_orm_execute hook's ``update_execution_options(autoflush=...)`` decides,
    as it does for the uncached query (SQLAlchemy reads it after the hooks)."""
    stmt = select(Category).where(Category.id == 1).options(FromCache())
    with Session(engine) as s:
        s.execute(stmt).all()  # stored
    for option in (FromCache(), NoCache()):
        with Session(engine) as s:
            event.listen(s, "do_orm_execute",
                         lambda st: st.update_execution_options(autoflush=flush))  # fmt: skip
            s.add(Tag(id=9001, label="pending"))
            s.execute(stmt.options(option)).all()
            assert bool(s.new) is not flush, option  # flushed exactly when asked


@pytest.mark.parametrize("option", [{"yield_per": 2}, {"populate_existing": True},
                                    {"stream_results": True}])  # fmt: skip
def test_options_a_hook_sets_are_seen_like_the_orm_sees_them(engine, sql, cache, option):
    """``update_execution_options`` in a hook: SQLAlchemy applies it after the hooks,
    so the cache must see it too (a statement a hook made streaming or
    populate_existing is never served from the cache)."""
    stmt = select(Category).order_by(Category.id).options(FromCache())
    with Session(engine) as s:
        s.execute(stmt).all()  # stored
    with Session(engine) as s:
        event.listen(s, "do_orm_execute", lambda st: st.update_execution_options(**option))
        mark = sql.count
        s.execute(stmt).all()
        assert sql.since(mark) >= 1  # ran: not a hit


def test_a_hook_that_changes_only_post_loads_is_part_of_the_key(engine, sql, cache):
    """A hook may change only the relationship loads (``is_relationship_load``): the
    selectin post-load runs only on a miss, so the entry a session without the
    hook stored must not serve a session with it (nor the reverse)."""
    stmt = (select(Customer).where(Customer.id == 1)
            .options(selectinload(Customer.orders), FromCache()))  # fmt: skip

    def only_recent(st: Any) -> None:
        if st.is_relationship_load:
            st.statement = st.statement.options(
                with_loader_criteria(Order, Order.id > 10 ** 9))  # fmt: skip

    def orders(hooked: bool, option: Any) -> list[int]:
        with Session(engine) as s:
            if hooked:
                event.listen(s, "do_orm_execute", only_recent)
            c = s.execute(stmt.options(option)).scalars().one()
            return [o.id for o in c.orders]

    for first in (False, True, False, True):  # stored by one kind, read by the other
        assert orders(first, FromCache()) == orders(first, NoCache())
        assert orders(not first, FromCache()) == orders(not first, NoCache())
    assert orders(True, NoCache()) == [] != orders(False, NoCache())


def test_a_miss_whose_post_load_a_hook_changed_is_not_stored(engine, sql, cache):
    """One hook whose effect on relationship loads depends on state the key cannot
    see: the miss that ran the changed post-load stores nothing (a hit would never
    run the hook again), so the next read is right whatever the state then."""
    stmt = (select(Customer).where(Customer.id == 1)
            .options(selectinload(Customer.orders), FromCache()))  # fmt: skip
    hide = {"on": True}

    def hook(st: Any) -> None:
        if st.is_relationship_load and hide["on"]:
            st.statement = st.statement.options(
                with_loader_criteria(Order, Order.id > 10 ** 9))  # fmt: skip

    event.listen(Session, "do_orm_execute", hook)
    try:
        with Session(engine) as s:
            assert s.execute(stmt).scalars().one().orders == []
        hide["on"] = False
        with Session(engine) as s:
            cached = [o.id for o in s.execute(stmt).scalars().one().orders]
        with Session(engine) as s:
            plain = [o.id for o in s.execute(stmt.options(NoCache())).scalars().one().orders]
        assert cached == plain != []
    finally:
        event.remove(Session, "do_orm_execute", hook)


def test_a_routing_get_bind_is_asked_once_per_statement(engine, sql, cache):
    """A get_bind override that routes each call (to a replica, say) is asked once
    per statement, miss, hit or passed on, and a miss runs on the bind it keyed."""
    other = engine.execution_options()  # another Engine object, the same database
    ran: list[Any] = []
    event.listen(other, "before_cursor_execute", lambda *a: ran.append("other"))
    asked: list[Any] = []

    class Routing(Session):
        def get_bind(self, mapper=None, clause=None, **kw):  # type: ignore[no-untyped-def]
            asked.append(clause)
            return engine if len(asked) % 2 else other  # another choice on every call

    stmt = select(Category).where(Category.id == 1).options(FromCache())
    for expected_hits in (0, 1):  # a miss, then a hit
        with Routing(engine) as s:
            hits = cache.stats()["default"]["hits"]
            asked.clear()
            ran.clear()
            assert s.execute(stmt).scalars().one().id == 1
            assert len(asked) == 1, asked
            assert ran == []  # the first choice (engine), the one keyed, ran it
            assert cache.stats()["default"]["hits"] - hits == expected_hits
    with Routing(engine) as s:  # passed on: this transaction wrote the table it reads
        s.execute(update(Category).where(Category.id == 2).values(name="x"))
        asked.clear()
        ran.clear()
        assert s.execute(stmt).scalars().one().id == 1
        assert len(asked) == 1, asked
        s.rollback()


@pytest.mark.parametrize("end", ["close", "expunge_all"])
@pytest.mark.parametrize("prebuffer", [False, True])
def test_a_hit_read_after_close_behaves_like_the_orms_result(engine, sql, cache, end, prebuffer):
    """The ORM's result turns rows into objects as they are fetched: after close()
    (or expunge_all()) fetching raises, unless prebuffer_rows; a hit does the same.
    Column rows never raise."""
    opts = {"prebuffer_rows": True} if prebuffer else {}
    stmt = select(Category).order_by(Category.id)
    cols = select(Category.id).order_by(Category.id)

    def outcome(option: Any, statement: Any) -> Any:
        with Session(engine) as s:
            result = s.execute(statement.options(option), execution_options=opts)
            getattr(s, end)()
            try:
                return [getattr(r, "id", r) for r in result.scalars().all()]
            except InvalidRequestError as err:
                return "identity map is no longer valid" in str(err)

    for statement in (stmt, cols):
        outcome(FromCache(), statement)  # stored
        plain = outcome(NoCache(), statement)
        assert outcome(FromCache(), statement) == plain
        assert cache.stats()["default"]["hits"] >= 1
    # the case where the ORM raises is exercised (and the prebuffered one where it does not)
    assert (outcome(NoCache(), stmt) is True) is not prebuffer


def test_autoflush_runs_once_per_query_hit_or_miss(engine, sql, cache):
    """The ORM calls Session._autoflush once per query; the cache neither adds a
    second call on a miss nor drops it on a hit (SQLAlchemy's test_events checks
    the count)."""
    from unittest import mock

    stmt = select(Category).where(Category.id == 2).options(FromCache())
    for expected_hits in (0, 1):
        with Session(engine) as s:
            hits = cache.stats()["default"]["hits"]
            with mock.patch.object(s, "_autoflush") as m:
                s.execute(stmt).all()
            assert m.call_count == 1
            assert cache.stats()["default"]["hits"] - hits == expected_hits


def test_moving_a_child_is_seen_before_flush(engine, sql, cache):
    stmt = select(Order.id).where(Order.customer_id == 2).order_by(Order.id)
    with Session(engine) as s:
        s.execute(stmt.options(FromCache())).all()
    with Session(engine) as s:
        order = s.scalars(select(Order).where(Order.customer_id != 2).limit(1)).one()
        customer = s.get(Customer, 2)
        customer.orders.append(order)  # changes order.customer_id at flush
        assert rows(s, stmt.options(FromCache())) == rows(s, stmt.options(NoCache()))


def test_core_select_result_has_the_cursor_attributes(engine, sql, cache):
    from .models import product_tag

    stmt = select(product_tag.c.product_id).where(product_tag.c.tag_id == 1)
    with Session(engine) as s:
        plain = s.execute(stmt.options(NoCache()))
        expected = (plain.returns_rows, plain.rowcount)
        plain.all()
    for _ in range(2):  # a miss, then a hit
        with Session(engine) as s:
            r = s.execute(stmt.options(FromCache()))
            assert (r.returns_rows, r.rowcount) == expected


def test_refresh_event_when_a_hit_fills_an_expired_object(engine, sql, cache):
    stmt = select(Category).where(Category.id == 1).options(FromCache())
    with Session(engine) as s:
        s.execute(stmt).all()
    seen: list[Any] = []

    def on_refresh(target: Any, context: Any, attrs: Any) -> None:
        seen.append(set(attrs or ()))

    event.listen(Category, "refresh", on_refresh)
    try:
        with Session(engine) as s:
            c = s.get(Category, 1)
            s.commit()  # expires it; the next query starts a fresh transaction
            assert "name" not in c.__dict__
            mark = sql.count
            s.execute(stmt).all()
            assert sql.since(mark) == 0
            assert seen and "name" in seen[-1]
    finally:
        event.remove(Category, "refresh", on_refresh)


# ------------------------------------------------------------ the final statement


def test_keyed_after_hooks_registered_after_install(engine, sql, cache):
    """SQLAlchemy's multi-tenant recipe: a hook added later narrows every query."""
    tenant = {"category": 1}

    @event.listens_for(Session, "do_orm_execute")
    def narrow(state):
        if state.is_select:
            state.statement = state.statement.options(with_loader_criteria(
                Product, Product.category_id == tenant["category"]))

    try:
        stmt = select(Product.id).order_by(Product.id)
        a = both(engine, stmt)
        tenant["category"] = 2
        b = both(engine, stmt)
        assert a[0] == a[1] and b[0] == b[1] and a[1] != b[1]
    finally:
        event.remove(Session, "do_orm_execute", narrow)


def test_scope_separates_connection_state(engine, sql, cache):
    stmt = select(Category.id).where(Category.id == 1)

    def run(scope: str) -> int:
        with Session(engine) as s:
            mark = sql.count
            s.execute(stmt.options(FromCache()), execution_options={"cache_scope": scope}).all()
            return sql.since(mark)

    assert run("a") == 1
    assert run("b") == 1  # another scope, another entry
    assert run("a") == 0


def test_set_search_path_bypasses_without_a_scope(engine, sql, cache):
    if engine.dialect.name != "postgresql":
        pytest.skip("search_path is PostgreSQL's")
    stmt = select(Category.id).where(Category.id == 1).options(FromCache())
    with Session(engine) as s:
        s.execute(stmt).all()
        s.execute(text("SET search_path TO public"))
        mark = sql.count
        s.execute(stmt).all()
        assert sql.since(mark) == 1


# ------------------------------------------------------------------- manual


def test_invalidate_model_reaches_text_reads(engine, sql, cache):
    stmt = select(Category).from_statement(text("SELECT * FROM category WHERE id = 1"))
    with Session(engine) as s:
        s.execute(stmt.options(FromCache())).all()
    with Session(engine) as s:
        mark = sql.count
        s.execute(stmt.options(FromCache())).all()
        assert sql.since(mark) == 0
    cache.invalidate(Category)
    with Session(engine) as s:
        mark = sql.count
        s.execute(stmt.options(FromCache())).all()
        assert sql.since(mark) == 1


def test_invalidate_refuses_a_string_for_tables(cache):
    with pytest.raises(TypeError):
        cache.invalidate(tables="product")


def test_engines_with_one_url_reaching_other_data_do_not_share_entries(tmp_path, cache):
    """``creator=`` (or ``connect_args``) can point one URL at another database."""
    import sqlite3

    from sqlalchemy import create_engine

    from .models import Base

    engines = []
    for label in ("a", "b"):
        path = tmp_path / f"{label}.db"
        eng = create_engine("sqlite:///same.db", creator=lambda p=path: sqlite3.connect(p))
        Base.metadata.create_all(eng)
        with Session(eng) as s:
            s.add(Category(id=1, name=label))
            s.commit()
        engines.append(eng)
    try:
        for _ in range(2):  # misses, then hits: each engine its own rows
            for eng, label in zip(engines, ("a", "b")):
                with Session(eng) as s:
                    assert rows(s, CATEGORY.options(FromCache())) == [(1, label)]
        assert cache.stats()["default"]["hits"] == 2
    finally:
        for eng in engines:
            eng.dispose()


def test_a_hit_refuses_like_the_query_when_autobegin_is_off(engine, sql, cache):
    stmt = select(Category.id).where(Category.id == 1).options(FromCache())
    with Session(engine) as s:
        s.execute(stmt).all()
    with Session(engine) as s:
        mark = sql.count
        s.execute(stmt).all()
        assert sql.since(mark) == 0
    with Session(engine, autobegin=False) as s, pytest.raises(InvalidRequestError):
        s.execute(stmt).all()  # the uncached query refuses too


# sqlite3's legacy transaction control opens a transaction only before INSERT,
# UPDATE, DELETE and REPLACE (its first word after whitespace and comments): any
# other statement that writes, while none is open, is committed at once by the
# driver, whatever SQLAlchemy's begin() said. Found by the fuzzer (seed 16516527:
# a WITH ... UPDATE on a Core connection in begin(), never committed, then rolled
# back: the cache served the old rows for good).
_SQLITE_WRITE_FORMS = {
    "cte": "WITH x AS (SELECT id FROM product WHERE category_id = 1) "
           "UPDATE product SET name = name || '+' WHERE id IN (SELECT id FROM x)",
    "plain": "UPDATE product SET name = name || '+' WHERE category_id = 1",
    "block_comment": "/* why */ UPDATE product SET name = name || '+' WHERE category_id = 1",
    "line_comment": "-- why\n  UPDATE product SET name = name || '+' WHERE category_id = 1",
    "cte_comment": "/* why */ WITH x AS (SELECT 1) "
                   "UPDATE product SET name = name || '+' WHERE category_id = 1",
}  # fmt: skip


@pytest.mark.parametrize("end", ["commit", "rollback"])
@pytest.mark.parametrize("form", sorted(_SQLITE_WRITE_FORMS))
def test_sqlite_writes_the_driver_commits_by_itself_invalidate(sqlite_engine, cache, form, end):
    """Whatever the driver does with a write (commits it at once, or holds it in a
    transaction), a cached read in a fresh session answers what an uncached one does:
    while the connection is still open, after its commit, and after its rollback."""
    stmt = select(Product.id, Product.name).where(Product.category_id == 1).order_by(Product.id)

    def both() -> tuple[Any, Any]:
        with Session(sqlite_engine) as s:
            cached = s.execute(stmt.options(FromCache())).all()
        with Session(sqlite_engine) as s:
            plain = s.execute(stmt.options(NoCache())).all()
        return cached, plain

    cached, plain = both()  # stored
    assert cached == plain
    conn = sqlite_engine.connect()
    try:
        conn.begin()
        conn.execute(text(_SQLITE_WRITE_FORMS[form]))
        cached, plain = both()
        assert cached == plain, "while the writing connection is open"
        conn.commit() if end == "commit" else conn.rollback()
        cached, plain = both()
        assert cached == plain, f"after {end}"
    finally:
        conn.close()
    cached, plain = both()
    assert cached == plain
