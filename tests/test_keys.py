"""I7: keys never collide where results differ; the same query has the same key everywhere.

Each collision check runs query A cached until it is a hit, then query B
cached in a fresh Session: B must emit SQL on its first run (it has its own
key) and return exactly its uncached result; then both are hits on their
own entries. Results are compared with their Python types, so ``1`` and
``1.0`` differ.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    ForeignKey,
    bindparam,
    create_engine,
    event,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session, selectinload, undefer, with_loader_criteria
from sqlalchemy.pool import StaticPool
from sqlalchemy.types import NullType

from sqla_querycache import FromCache, NoCache, QueryCache

from . import models
from .conftest import StatementCounter, redis_region
from .models import Category, Customer, Employee, Engineer, Order, OrderItem, Product, Tag

ROOT = Path(__file__).resolve().parent.parent

Run = Callable[[bool], "tuple[list[Any], int]"]


# ------------------------------------------------------------------ helpers


def plain(value: Any) -> Any:
    """A comparable rendering of a result value, with its type; never loads anything."""
    if hasattr(type(value), "_sa_class_manager"):
        state = inspect(value)
        mapper = state.mapper
        cols = sorted(
            (p.key, plain(state.dict[p.key])) for p in mapper.column_attrs if p.key in state.dict
        )
        rels = sorted(
            (r.key, plain(state.dict[r.key])) for r in mapper.relationships if r.key in state.dict
        )
        return ["entity", type(value).__name__, list(state.identity), cols, rels]
    if isinstance(value, (list, tuple)):
        return [type(value).__name__, [plain(v) for v in value]]
    if isinstance(value, dict):
        return ["dict", sorted((k, plain(v)) for k, v in value.items())]
    return [type(value).__name__, value]


def execute(
    bind: Any,
    counter: StatementCounter,
    stmt: Any,
    cached: bool,
    params: dict[str, Any] | None = None,
    execution_options: dict[str, Any] | None = None,
) -> tuple[list[Any], int]:
    """(plain rows, SQL statements sent), in a fresh Session."""
    mark = counter.count
    with Session(bind) as s:
        # always a copy: SQLAlchemy changes a statement it compiles (see
        # test_a_statement_that_ran_once_keeps_its_key), the copy keeps `stmt` pristine
        result = s.execute(
            stmt.options(FromCache()) if cached else stmt.execution_options(),
            params,
            execution_options=execution_options or {},
        )
        rows = [[plain(v) for v in row] for row in result]
    return rows, counter.since(mark)


def runner(bind: Any, counter: StatementCounter, stmt: Any, **kw: Any) -> Run:
    return lambda cached: execute(bind, counter, stmt, cached, **kw)


def assert_distinct(a: Run, b: Run, must_differ: bool = True) -> None:
    """A cached, then B cached: B has its own entry and is never served A's rows."""
    a_rows, n = a(True)
    assert n > 0, "A was a hit before it ever ran"
    again, n = a(True)
    assert n == 0 and again == a_rows, "A is not cached, so this check could not fail"
    b_rows, n_b = b(True)
    b_expected, _ = b(False)
    a_expected, _ = a(False)
    assert a_rows == a_expected
    if must_differ:
        assert a_expected != b_expected, "precondition: A and B must have different results"
    assert n_b > 0, "B was served A's cache entry (same key)"
    assert b_rows == b_expected
    b_again, n = b(True)
    assert n == 0 and b_again == b_expected, "B's own entry is a hit"
    a_again, n = a(True)
    assert n == 0 and a_again == a_expected, "A's entry is intact"


def add_products(engine: Any, names: dict[int, str]) -> None:
    with Session(engine) as s:
        for pid, name in names.items():
            s.add(
                Product(id=pid, name=name, price=1, category_id=1, sku=uuid.UUID(int=pid),
                        created=dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc))
            )  # fmt: skip
        s.commit()


# ----------------------------------------------------- entity vs columns


BY_CATEGORY = (Product.category_id == 2, Product.id < 20)


def _columns_of_product(orm: bool) -> list[Any]:
    cols = [c for c in Product.__table__.c if c.key != "description"]  # deferred
    return [getattr(Product, c.key) for c in cols] if orm else cols


@pytest.mark.parametrize("orm_columns", [False, True], ids=["table_columns", "orm_attributes"])
@pytest.mark.parametrize("entity_first", [True, False], ids=["entity_first", "columns_first"])
def test_entity_and_column_query_with_the_same_sql(engine, sql, cache, orm_columns, entity_first):
    entity = select(Product).where(*BY_CATEGORY).order_by(Product.id)
    columns = select(*_columns_of_product(orm_columns)).where(*BY_CATEGORY).order_by(Product.id)
    assert str(entity.compile(engine)) == str(columns.compile(engine)), "precondition: same SQL"
    a, b = runner(engine, sql, entity), runner(engine, sql, columns)
    assert_distinct(*((a, b) if entity_first else (b, a)))


# ------------------------------------------------------------ loader options


@pytest.mark.parametrize("option_first", [True, False], ids=["option_first", "plain_first"])
def test_loader_option_is_part_of_the_key(engine, sql, cache, option_first):
    base = select(Product).where(Product.id <= 6).order_by(Product.id)
    with_tags = base.options(selectinload(Product.tags))
    a, b = runner(engine, sql, with_tags), runner(engine, sql, base)
    assert_distinct(*((a, b) if option_first else (b, a)))
    # a hit of the option query carries the tags: no SQL to read them
    mark = sql.count
    with Session(engine) as s:
        got = [(p.id, [t.label for t in p.tags]) for p in s.scalars(with_tags.options(FromCache()))]
    assert sql.since(mark) == 0
    with Session(engine) as s:
        expected = [(p.id, [t.label for t in p.tags]) for p in s.scalars(with_tags)]
    assert got == expected and any(tags for _, tags in got)


def test_undefer_option_is_part_of_the_key(engine, sql, cache):
    base = select(Product).where(Product.id.in_([3, 4])).order_by(Product.id)
    undeferred = base.options(undefer(Product.description))
    assert_distinct(runner(engine, sql, base), runner(engine, sql, undeferred))
    mark = sql.count
    with Session(engine) as s:
        got = [p.description for p in s.scalars(undeferred.options(FromCache()))]
    assert sql.since(mark) == 0
    assert got == ["about product 3", "about product 4"]


def test_nested_eager_options_differ_by_depth(engine, sql, cache):
    shallow = select(Customer).where(Customer.id <= 2).options(selectinload(Customer.orders))
    deep = (
        select(Customer)
        .where(Customer.id <= 2)
        .options(selectinload(Customer.orders).selectinload(Order.items))
    )
    assert_distinct(runner(engine, sql, shallow), runner(engine, sql, deep))


# ------------------------------------------------------------- binds


def _sqlite_file_engine(path: Path, rename: str | None) -> Any:
    eng = create_engine(f"sqlite:///{path}")
    models.Base.metadata.create_all(eng)
    with Session(eng) as s:
        models.populate(s)
    if rename is not None:
        with eng.begin() as conn:
            conn.execute(update(Product.__table__).values(name=rename + Product.__table__.c.name))
    return eng


def _two_databases(one: Any, two: Any) -> None:
    stmt = select(Product.id, Product.name).where(Product.id <= 3).order_by(Product.id)
    c1, c2 = StatementCounter(one), StatementCounter(two)
    try:
        assert_distinct(runner(one, c1, stmt), runner(two, c2, stmt))
    finally:
        c1.close()
        c2.close()


def test_two_sqlite_files_same_statement(cache, tmp_path):
    one = _sqlite_file_engine(tmp_path / "one.db", None)
    two = _sqlite_file_engine(tmp_path / "two.db", "other ")
    try:
        _two_databases(one, two)
    finally:
        one.dispose()
        two.dispose()


def test_two_in_memory_sqlite_databases_same_statement(cache):
    engines = []
    for rename in (None, "other "):
        eng = create_engine("sqlite://", poolclass=StaticPool)
        models.Base.metadata.create_all(eng)
        with Session(eng) as s:
            models.populate(s)
        if rename:
            with eng.begin() as conn:
                conn.execute(update(Product.__table__).values(name=rename + Product.name))
        engines.append(eng)
    try:
        _two_databases(*engines)
    finally:
        for eng in engines:
            eng.dispose()


# ---------------------------------------------------- schema_translate_map


@pytest.fixture()
def two_schemas(engine, tmp_path):
    """Two schemas holding category/product tables with different rows."""
    kind = engine.dialect.name
    names = [f"qc_s{i}_{uuid.uuid4().hex[:8]}" for i in (1, 2)]
    attach = None
    try:
        if kind == "sqlite":
            paths = {n: tmp_path / f"{n}.db" for n in names}

            def attach(dbapi_conn: Any, record: Any) -> None:
                for n, p in paths.items():
                    dbapi_conn.execute(f"ATTACH DATABASE '{p}' AS {n}")

            event.listen(engine, "connect", attach)
            engine.dispose()  # pooled connections predate the attachments
        else:
            ddl = "CREATE SCHEMA {}" if kind == "postgresql" else "CREATE DATABASE {}"
            with engine.begin() as conn:
                for n in names:
                    conn.execute(text(ddl.format(n)))
    except Exception as err:
        pytest.skip(f"cannot create schemas on {kind}: {err}")
    tables = [Category.__table__, Product.__table__]
    for n in names:
        with engine.begin() as conn:
            conn = conn.execution_options(schema_translate_map={None: n})
            models.Base.metadata.create_all(conn, tables=tables)
            conn.execute(insert(Category.__table__), [{"id": 1, "name": f"{n} category"}])
            conn.execute(
                insert(Product.__table__),
                [
                    {"id": i, "name": f"{n[:5]} product {i}", "price": i, "category_id": 1,
                     "created": dt.datetime(2024, 1, i, tzinfo=dt.timezone.utc),
                     "sku": uuid.UUID(int=i)}
                    for i in (1, 2, 3)
                ],
            )  # fmt: skip
    yield names
    if attach is not None:
        event.remove(engine, "connect", attach)
        engine.dispose()
    else:
        drop = "DROP SCHEMA {} CASCADE" if kind == "postgresql" else "DROP DATABASE {}"
        with engine.begin() as conn:
            for n in names:
                conn.execute(text(drop.format(n)))


def _translated(engine: Any, counter: StatementCounter, how: str, schema: str) -> Run:
    stmt = select(Product.id, Product.name).order_by(Product.id)

    def run(cached: bool) -> tuple[list[Any], int]:
        # a new dict each time: SQLAlchemy changes a map it has used (see
        # test_reused_schema_translate_map_keeps_its_key)
        stm = {None: schema}
        if how == "execute_option":
            return execute(engine, counter, stmt, cached, execution_options={
                "schema_translate_map": stm})  # fmt: skip
        if how == "statement_option":
            return execute(
                engine, counter, stmt.execution_options(schema_translate_map=stm), cached
            )
        if how == "engine_option":
            return execute(
                engine.execution_options(schema_translate_map=stm), counter, stmt, cached
            )
        assert how == "connection_option"
        with engine.connect() as conn:
            return execute(conn.execution_options(schema_translate_map=stm), counter, stmt, cached)

    return run


@pytest.mark.parametrize(
    "how",
    [
        "execute_option",
        "statement_option",
        "engine_option",
        "connection_option",
    ],
)  # fmt: skip
def test_schema_translate_map_is_part_of_the_key(engine, sql, cache, two_schemas, how):
    one, two = two_schemas
    assert_distinct(_translated(engine, sql, how, one), _translated(engine, sql, how, two))


def test_schema_translate_map_vs_none(engine, sql, cache, two_schemas):
    stmt = select(Product.id, Product.name).where(Product.id <= 3).order_by(Product.id)
    assert_distinct(runner(engine, sql, stmt), _translated(engine, sql, "execute_option",
                                                           two_schemas[0]))  # fmt: skip


def test_reused_schema_translate_map_keeps_its_key(engine, sql, cache, two_schemas):
    stm = {None: two_schemas[0]}
    stmt = select(Product.id, Product.name).order_by(Product.id)
    first, n = execute(engine, sql, stmt, True, execution_options={"schema_translate_map": stm})
    assert n > 0
    again, n = execute(engine, sql, stmt, True, execution_options={"schema_translate_map": stm})
    assert again == first
    assert n == 0, "the same map, statement and bind missed"


# ---------------------------------------------------------- parameter values


@pytest.fixture()
def spaced_names(engine):
    add_products(engine, {101: "a b", 102: "a  b", 103: "A b"})


@pytest.mark.parametrize("a, b", [("a b", "a  b"), ("a b", "A b"), ("a  b", "A b")])
def test_string_literals_differing_in_whitespace_or_case(engine, sql, cache, spaced_names, a, b):
    def query(value: str) -> Any:
        return select(Product.id, Product.name).where(Product.name == value).order_by(Product.id)

    # MariaDB's default collation ignores case: then the rows may coincide
    must_differ = engine.dialect.name not in ("mysql", "mariadb") or a.lower() != b.lower()
    assert_distinct(runner(engine, sql, query(a)), runner(engine, sql, query(b)), must_differ)


@pytest.mark.parametrize("a, b", [([1, 2], [1, 3]), ([1, 2], [1, 2, 3]), ([], [1]), ([2, 1], [1])])
def test_in_lists(engine, sql, cache, a, b):
    def query(ids: list[int]) -> Any:
        return select(Product.id, Product.name).where(Product.id.in_(ids)).order_by(Product.id)

    assert_distinct(runner(engine, sql, query(a)), runner(engine, sql, query(b)))


def test_bindparam_callable_is_evaluated_per_execution(engine, sql, cache):
    box = {"value": 1}
    stmt = select(Product.id, Product.name).where(
        Product.id == bindparam("x", callable_=lambda: box["value"])
    )

    def run_with(value: int) -> Run:
        def run(cached: bool) -> tuple[list[Any], int]:
            box["value"] = value
            return execute(engine, sql, stmt, cached)

        return run

    assert_distinct(run_with(1), run_with(2))


def test_execute_time_parameters(engine, sql, cache):
    stmt = select(Product.id, Product.name).where(Product.id == bindparam("x"))
    assert_distinct(
        runner(engine, sql, stmt, params={"x": 1}), runner(engine, sql, stmt, params={"x": 2})
    )


def test_execute_time_parameters_override_statement_values(engine, sql, cache):
    stmt = select(Product.id, Product.name).where(Product.id == bindparam("x", 5))
    assert_distinct(runner(engine, sql, stmt), runner(engine, sql, stmt, params={"x": 6}))


def test_statement_params_method(engine, sql, cache):
    stmt = select(Product.id, Product.name).where(Product.id == bindparam("x"))
    assert_distinct(runner(engine, sql, stmt.params(x=1)), runner(engine, sql, stmt.params(x=2)))


@pytest.fixture()
def sqlite_sql(sqlite_engine):
    counter = StatementCounter(sqlite_engine)
    yield counter
    counter.close()


NUMERIC_LOOKALIKES = {"int": 1, "float": 1.0, "bool": True, "str": "1"}
PAIRS = [(a, b) for a in NUMERIC_LOOKALIKES for b in NUMERIC_LOOKALIKES if a < b]


def _lookalike_runs(how: str, engine: Any, counter: StatementCounter, kind: str) -> Run:
    value = NUMERIC_LOOKALIKES[kind]
    if how == "execute_params":
        stmt = select(Product.id, bindparam("v")).where(Product.id == 1)
        return runner(engine, counter, stmt, params={"v": value})
    if how == "untyped_bindparam":
        stmt = select(Product.id, bindparam("v", value, type_=NullType())).where(Product.id == 1)
        return runner(engine, counter, stmt)
    assert how == "params_method"
    stmt = select(Product.id, bindparam("v")).where(Product.id == 1).params(v=value)
    return runner(engine, counter, stmt)


@pytest.mark.parametrize("a, b", PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
@pytest.mark.parametrize(
    "how",
    [
        "execute_params",
        "untyped_bindparam",
        "params_method",
    ],
)  # fmt: skip
def test_int_float_bool_str_parameter_values_on_sqlite(sqlite_engine, sqlite_sql, cache, how, a, b):
    # SQLite returns an untyped parameter as it was bound: 1, 1.0, 1 (for True), "1"
    must_differ = {a, b} != {"int", "bool"}
    assert_distinct(
        _lookalike_runs(how, sqlite_engine, sqlite_sql, a),
        _lookalike_runs(how, sqlite_engine, sqlite_sql, b),
        must_differ,
    )


def test_execute_option_read_by_a_user_hook_is_a_different_result(engine, sql, cache):
    """SQLAlchemy's documented global-criteria recipe keys a WHERE on an execution option."""

    def hook(state: Any) -> None:
        if (state.is_select and not state.is_column_load and not state.is_relationship_load
                and not state.execution_options.get("include_all", False)):  # fmt: skip
            state.statement = state.statement.options(
                with_loader_criteria(Product, Product.id <= 3, include_aliases=True)
            )

    event.listen(Session, "do_orm_execute", hook)
    try:
        stmt = select(Product.id, Product.name).where(Product.id <= 6).order_by(Product.id)
        assert_distinct(
            runner(engine, sql, stmt),
            runner(engine, sql, stmt, execution_options={"include_all": True}),
        )
    finally:
        event.remove(Session, "do_orm_execute", hook)


# ------------------------------------------------------------ stable keys


def key_statements() -> list[tuple[Any, dict[str, Any] | None]]:
    """Statements of many shapes, built anew at each call: (statement, execute params).

    The last ``len(NUMERIC)`` carry a Numeric type in their cache key.
    """
    return [
        (select(Product).where(Product.category_id == 3).order_by(Product.id), None),
        (
            select(Product)
            .join(Product.category)
            .where(Category.name == "cat 2")
            .options(selectinload(Product.tags))
            .order_by(Product.id),
            None,
        ),
        (
            select(Customer)
            .where(Customer.id <= 2)
            .options(selectinload(Customer.orders).selectinload(Order.items))
            .order_by(Customer.id),
            None,
        ),
        (select(Employee).order_by(Employee.id), None),
        (select(Engineer).where(Engineer.language == "python"), None),
        (select(Tag.label).where(Tag.id == bindparam("t")).order_by(Tag.label), {"t": 2}),
        (
            select(Category.name, func.count(Product.id))
            .join(Product, Product.category_id == Category.id)
            .where(Product.name.like("Product%"))
            .group_by(Category.name)
            .order_by(Category.name),
            None,
        ),
        (
            select(Product)
            .where(Product.id.in_(select(OrderItem.product_id).where(OrderItem.quantity == 2)))
            .order_by(Product.id),
            None,
        ),
        # NUMERIC
        (select(Product.id, Product.name, Product.price).where(Product.id.in_([1, 2, 9])), None),
        (
            select(Category.name, Product.id)
            .join(Product, Product.category_id == Category.id)
            .where(Product.price > 10)
            .order_by(Product.id)
            .limit(5),
            None,
        ),
    ]


NUMERIC = [8, 9]
STABLE = [i for i in range(len(key_statements())) if i not in NUMERIC]


def test_a_statement_that_ran_once_keeps_its_key(engine, sql, cache):
    base = select(Product).where(Product.id <= 6).order_by(Product.id)
    with Session(engine) as s:
        expected = [p.id for p in s.scalars(base.options(FromCache()))]
    with Session(engine) as s:
        s.scalars(base).all()  # the same statement object, run uncached
    mark = sql.count
    with Session(engine) as s:
        got = [p.id for p in s.scalars(base.options(FromCache()))]
    assert got == expected
    assert sql.since(mark) == 0, "the same query got a new key after its statement ran"


def test_same_query_built_twice_is_a_hit(engine, sql, cache):
    for (first, params), (second, params2) in zip(key_statements(), key_statements()):
        assert first is not second
        rows, n = execute(engine, sql, first, True, params=params)
        assert n > 0
        again, n = execute(engine, sql, second, True, params=params2)
        assert n == 0, f"rebuilt statement missed: {second}"
        assert again == rows


def _close_versions(qc: QueryCache) -> None:
    close = getattr(qc.versions, "close", None)
    if close is not None:
        close()


def record_keys(db_url: str, redis_url: str, shared_versions: bool, which: list[int]) -> list[Any]:
    """Run statements ``which`` cached; for each, the cache keys it added and its SQL count."""
    import redis

    client = redis.Redis.from_url(redis_url)
    engine = create_engine(db_url)
    with engine.connect():  # dialect initialized first: see test_cached_first_query_types
        pass
    counter = StatementCounter(engine)
    versions = redis_url if shared_versions else "local"
    qc = QueryCache(regions={"default": redis_region(redis_url)}, versions=versions)
    qc.install(Session)
    out = []
    try:
        statements = key_statements()
        for i in which:
            stmt, params = statements[i]
            before = set(client.keys("qc:q:*"))
            rows, n = execute(engine, counter, stmt, True, params=params)
            added = sorted(k.decode() for k in set(client.keys("qc:q:*")) - before)
            out.append({"keys": added, "sql": n, "rows": json.loads(json.dumps(rows, default=str))})
    finally:
        qc.uninstall()
        _close_versions(qc)
        counter.close()
        engine.dispose()
        client.close()
    return out


CHILD = """
import json, sys
from tests.test_keys import record_keys
print(json.dumps(record_keys(sys.argv[1], sys.argv[2], sys.argv[3] == "shared",
                             json.loads(sys.argv[4]))))
"""


def in_child(db_url: str, redis_url: str, shared: bool, which: list[int], seed: str) -> Any:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": seed}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, db_url, redis_url, "shared" if shared else "local",
         json.dumps(which)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _db_url(engine: Any) -> str:
    return engine.url.render_as_string(hide_password=False)


def _keys_of_children(engine: Any, redis_url: str, client: Any, which: list[int],
                      seeds: list[str]) -> list[Any]:  # fmt: skip
    runs = []
    for seed in seeds:
        client.flushdb()
        runs.append(in_child(_db_url(engine), redis_url, False, which, seed=seed))
    client.flushdb()
    return runs


def test_same_query_in_two_processes_has_the_same_key(engine, redis_url, redis_client):
    children = _keys_of_children(engine, redis_url, redis_client, STABLE, ["1", "2"])
    here = record_keys(_db_url(engine), redis_url, False, STABLE)
    for n, i in enumerate(STABLE):
        mine = here[n]
        assert len(mine["keys"]) == 1 and mine["sql"] > 0, f"statement {i} was not stored"
        for child in children:
            assert child[n]["keys"] == mine["keys"], f"statement {i}: keys differ"
            assert child[n]["rows"] == mine["rows"]
    assert len({k for r in here for k in r["keys"]}) == len(STABLE), "distinct statements collide"


def test_numeric_typed_query_has_the_same_key_in_two_processes(engine, redis_url, redis_client):
    children = _keys_of_children(engine, redis_url, redis_client, NUMERIC, ["1", "2", "3"])
    for n, i in enumerate(NUMERIC):
        keys = {tuple(child[n]["keys"]) for child in children}
        assert all(len(k) == 1 for k in keys), f"statement {i} was not stored"
        assert len(keys) == 1, f"statement {i}: keys differ between processes"


def test_loader_criteria_lambda_has_the_same_key_in_two_processes():
    code = """
from sqlalchemy import select
from sqlalchemy.orm import with_loader_criteria
from sqla_querycache import keys
from tests.models import Product
stmt = select(Product.id).options(with_loader_criteria(Product, lambda cls: cls.id < 5))
print(keys.stable_repr(stmt._generate_cache_key().key))
"""
    outputs = set()
    for seed in ("1", "2"):
        proc = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False,
            env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": seed}, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        outputs.add(proc.stdout)
    assert len(outputs) == 1, "the static key part differs between processes"


def test_first_lookup_in_a_process_uses_another_process_entry(engine, sql, redis_url, redis_client):
    """A child stores; this process's very first run of each statement is a hit, no SQL."""
    which = [0, 1, 5]
    child = in_child(_db_url(engine), redis_url, True, which, seed="4")
    assert all(r["sql"] > 0 and len(r["keys"]) == 1 for r in child)
    stored_keys = {k.decode() for k in redis_client.keys("qc:q:*")}
    assert stored_keys == {r["keys"][0] for r in child}
    qc = QueryCache(regions={"default": redis_region(redis_url)}, versions=redis_url)
    qc.install(Session)
    try:
        statements = key_statements()
        for i, stored in zip(which, child):
            stmt, params = statements[i]
            rows, n = execute(engine, sql, stmt, True, params=params)
            assert n == 0, f"statement {i}: first lookup in this process missed"
            assert rows == execute(engine, sql, stmt, False, params=params)[0]
            assert json.loads(json.dumps(rows, default=str)) == stored["rows"]
        assert qc.stats()["default"]["hits"] == len(which)
    finally:
        qc.uninstall()
        _close_versions(qc)


FIRST_QUERY = """
import json, sys
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session
from sqla_querycache import FromCache, QueryCache
from tests.conftest import memory_region
from tests.models import Product

COLUMNS = ("id", "name", "price", "category_id", "created", "sku", "attrs")
engine = create_engine(sys.argv[1])
QueryCache(regions={"default": memory_region()}).install(Session)
with Session(engine) as s:  # the process's very first query is a cached one
    p = s.scalars(select(Product).where(Product.id == 2).options(FromCache())).one()
    first = [type(getattr(p, c)).__name__ for c in COLUMNS]
with Session(engine) as s:
    p = s.scalars(select(Product).where(Product.id == 4)).one()
    later = [type(getattr(p, c)).__name__ for c in COLUMNS]
print(json.dumps([first, later]))
"""


def test_cached_first_query_types(engine):
    """A cached query as a process's first database access returns the usual Python types."""
    columns = ("id", "name", "price", "category_id", "created", "sku", "attrs")
    with Session(engine) as s:
        p = s.scalars(select(Product).where(Product.id == 2)).one()
        expected = [type(getattr(p, c)).__name__ for c in columns]
    assert expected[columns.index("sku")] == "UUID"
    proc = subprocess.run(
        [sys.executable, "-c", FIRST_QUERY, _db_url(engine)], cwd=ROOT, capture_output=True,
        text=True, check=False, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, later = json.loads(proc.stdout.strip().splitlines()[-1])
    assert first == expected, "the cached first query loaded other types"
    assert later == expected, "queries after it (uncached) load other types"


# ------------------------------------------- found by SQLAlchemy's own suite (tests/peer)


def test_local_classes_of_one_name_never_share_an_entry(sqlite_engine, cache):
    """Two TypeDecorators made by one function have one qualified name and differ."""
    from sqlalchemy import Integer, TypeDecorator, type_coerce

    def scaled(factor: int) -> Any:
        class Scaled(TypeDecorator):  # the same __qualname__ every call
            impl = Integer
            cache_ok = True

            def process_result_value(self, value: Any, dialect: Any) -> Any:
                return value * factor

        return Scaled

    for factor in (10, 100):
        stmt = select(type_coerce(Category.id, scaled(factor)).label("v")).order_by(Category.id)
        with Session(sqlite_engine) as s:
            got = s.scalars(stmt.options(FromCache())).all()
            plain = s.scalars(stmt.options(NoCache())).all()
        assert got == plain and got[0] == factor * 1


def test_relationship_configuration_is_part_of_the_key(cache):
    """A relationship's order, join and loading strategy change its rows: another deploy
    (or mapping) that differs there must not read this one's entries."""
    from sqlalchemy import Column, Integer
    from sqlalchemy.orm import DeclarativeBase, relationship

    from sqla_querycache.hydrate import MapperSet

    def mapping(order: str, lazy: str) -> Any:
        class Base(DeclarativeBase):
            pass

        class Parent(Base):
            __tablename__ = "p"
            id = Column(Integer, primary_key=True)
            kids = relationship("Kid", order_by=f"Kid.id.{order}()", lazy=lazy)

        class Kid(Base):
            __tablename__ = "k"
            id = Column(Integer, primary_key=True)
            parent_id = Column(ForeignKey("p.id"))

        Base.registry.configure()
        return MapperSet([Parent.__mapper__]).fingerprint

    base = mapping("asc", "select")
    assert mapping("asc", "select") == base  # the same mapping, the same fingerprint
    assert mapping("desc", "select") != base
    assert mapping("asc", "selectin") != base


def test_lazy_load_criteria_of_a_hit_are_its_own(sqlite_engine, cache):
    """``lazyload(rel.and_(crit))`` leaves per-object loaders holding that execution's
    values: a hit must never hand an object the loaders of another parameter set."""
    from sqlalchemy.orm import lazyload

    def orders(floor: int) -> list[int]:
        stmt = (select(Customer).where(Customer.id == 1)
                .options(lazyload(Customer.orders.and_(Order.id > floor)), FromCache()))  # fmt: skip
        with Session(sqlite_engine) as s:
            (customer,) = s.scalars(stmt).all()
            return [o.id for o in customer.orders]

    with Session(sqlite_engine) as s:
        every = [o.id for o in s.get(Customer, 1).orders]
    assert every
    for _ in range(2):  # misses, then hits
        assert orders(0) == every
        assert orders(10_000) == []


def test_server_identity_never_takes_a_connection_of_the_pool(engine: Any) -> None:
    """A session holding the pool's only connection runs a first cached query on
    an engine: asking the server who it is must not wait for that pool."""
    import time as _time

    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from sqla_querycache import FromCache, QueryCache

    small = create_engine(engine.url, pool_size=1, max_overflow=0, pool_timeout=2)
    cache = QueryCache(regions={"default": {"backend": "dogpile.cache.memory"}}).install(Session)
    try:
        with Session(small) as s:
            s.connection()  # holds the pool's only connection
            t = _time.monotonic()
            s.execute(select(models.Tag).options(FromCache())).all()
            s.execute(select(models.Tag).options(FromCache())).all()
            assert _time.monotonic() - t < 1.5
        assert cache.stats()["default"]["errors"] == 0
        assert cache.stats()["default"]["stores"] == 1
    finally:
        cache.uninstall()
        small.dispose()
