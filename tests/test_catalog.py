"""sqla_querycache.catalog against real catalogs: SQLite, PostgreSQL, MariaDB.

Every object these tests create is named ``cat_…`` (the CI databases are
shared with other tests) and dropped at the end. Assertions look only at
``cat_`` names and the ``@`` markers, since the shared database may hold other
tests' objects. URLs come from ``QC_PG_URL`` / ``QC_MARIADB_URL`` (skipped
without them, failed with ``QC_REQUIRE_SERVICES=1``).
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine

from sqla_querycache.catalog import ALL, ANY, Catalog, _identifier_chains, canonical_name

from .conftest import REQUIRE, db_url

KINDS = ["sqlite", "postgresql", "mariadb"]


def _foreign_keys_on(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.execute("PRAGMA foreign_keys = ON")


@pytest.fixture(params=KINDS)
def db(request: Any, tmp_path_factory: Any) -> Iterator[Engine]:
    """An engine of each kind; every ``cat_`` object is dropped afterwards."""
    engine = create_engine(db_url(request.param, tmp_path_factory))
    if request.param == "sqlite":
        event.listen(engine, "connect", _foreign_keys_on)
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as err:
        if REQUIRE or request.param == "sqlite":
            pytest.fail(f"{engine.url!r} unreachable: {err}")
        pytest.skip(f"{engine.url!r} unreachable: {err}")
    _drop_mine(engine)
    yield engine
    _drop_mine(engine)
    engine.dispose()


def _kind(engine: Engine) -> str:
    return "mariadb" if engine.dialect.name in ("mysql", "mariadb") else engine.dialect.name


def _drop_mine(engine: Engine) -> None:
    kind = _kind(engine)
    with engine.begin() as conn:
        if kind == "postgresql":
            conn.execute(text("DROP SCHEMA IF EXISTS cat_s CASCADE"))
            rows = conn.execute(text(
                "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n "
                "ON n.oid = c.relnamespace WHERE n.nspname = current_schema() "
                "AND c.relname LIKE 'cat\\_%' AND c.relkind IN ('r','p','v','m')"
            )).all()  # fmt: skip
            for name, relkind in rows:
                what = {"v": "VIEW", "m": "MATERIALIZED VIEW"}.get(relkind, "TABLE")
                conn.execute(text(f'DROP {what} IF EXISTS "{name}" CASCADE'))
            conn.execute(text("DROP FUNCTION IF EXISTS cat_fn() CASCADE"))
            conn.execute(text("DROP FUNCTION IF EXISTS cat_count() CASCADE"))
        elif kind == "mariadb":
            db_name = conn.execute(text("SELECT DATABASE()")).scalar()
            conn.execute(text(f"DROP DATABASE IF EXISTS cat_other_{db_name}"))
            conn.execute(text("SET FOREIGN_KEY_CHECKS = 0"))
            rows = conn.execute(text(
                "SELECT TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES "
                "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME LIKE 'cat\\_%'"
            )).all()  # fmt: skip
            for name, kind_ in rows:
                what = "VIEW" if kind_ == "VIEW" else "TABLE"
                conn.execute(text(f"DROP {what} IF EXISTS `{name}`"))
            conn.execute(text("DROP FUNCTION IF EXISTS cat_count"))
            conn.execute(text("SET FOREIGN_KEY_CHECKS = 1"))
        else:
            rows = conn.execute(text(
                "SELECT type, name FROM sqlite_master WHERE name LIKE 'cat\\_%' ESCAPE '\\' "
                "AND type IN ('table', 'view')"
            )).all()  # fmt: skip
            conn.execute(text("PRAGMA foreign_keys = OFF"))
            for kind_, name in rows:
                conn.execute(text(f'DROP {kind_.upper()} IF EXISTS "{name}"'))


def _run(engine: Engine, *statements: str) -> None:
    with engine.begin() as conn:
        for stmt in statements:
            conn.exec_driver_sql(stmt)


def _load(engine: Engine) -> Catalog:
    with engine.connect() as conn:
        cat = Catalog.load(conn)
    assert not cat.degraded, cat.error
    return cat


def mine(names: frozenset[str]) -> set[str]:
    """The names these tests made, and the markers."""
    return {n for n in names if "cat_" in n or n.startswith("@")}


def _serial(engine: Engine) -> str:
    return {"postgresql": "serial", "mariadb": "int auto_increment",
            "sqlite": "integer"}[_kind(engine)]  # fmt: skip


# ------------------------------------------------------------ pure logic


def test_canonical_names() -> None:
    assert canonical_name('"Public"."Foo"', "public") == "foo"
    assert canonical_name("`db2`.`T`", "db1") == "db2.t"
    assert canonical_name("main.x", "main") == "x"
    assert canonical_name("X", None) == "x"


def test_identifier_chains_skip_literals_and_comments() -> None:
    chains = _identifier_chains("select 'cat_a.b' , \"Q\".x -- cat_c\n from `d`.`t` /* u */ f(1)")
    names = [(c, called) for c, called in chains]
    assert (["q", "x"], False) in names and (["d", "t"], False) in names
    assert (["f"], True) in names
    assert not any("cat_a" in c or "cat_c" in c or "u" in c for c, _ in names)


# ----------------------------------------------------------- PostgreSQL


@pytest.fixture()
def pg(tmp_path_factory: Any) -> Iterator[Engine]:
    engine = create_engine(db_url("postgresql", tmp_path_factory))
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as err:
        if REQUIRE:
            pytest.fail(str(err))
        pytest.skip(str(err))
    _drop_mine(engine)
    yield engine
    _drop_mine(engine)
    engine.dispose()


def test_pg_partitions_two_levels_and_inheritance(pg: Engine) -> None:
    _run(pg,
         "CREATE TABLE cat_m (a int, b text) PARTITION BY RANGE (a)",
         "CREATE TABLE cat_m_1 PARTITION OF cat_m FOR VALUES FROM (0) TO (10) PARTITION BY LIST (b)",
         "CREATE TABLE cat_m_1_x PARTITION OF cat_m_1 FOR VALUES IN ('x')",
         "CREATE TABLE cat_m_1_y PARTITION OF cat_m_1 FOR VALUES IN ('y')",
         "CREATE TABLE cat_m_2 PARTITION OF cat_m FOR VALUES FROM (10) TO (20)",
         "CREATE INDEX cat_m_ix ON cat_m (a)",
         "CREATE TABLE cat_animal (id int)",
         "CREATE TABLE cat_dog (bark int) INHERITS (cat_animal)",
         "CREATE TABLE cat_puppy (age int) INHERITS (cat_dog)",
         "CREATE TABLE cat_cat (meow int) INHERITS (cat_animal)")  # fmt: skip
    cat = _load(pg)
    tree = {"cat_m", "cat_m_1", "cat_m_1_x", "cat_m_1_y", "cat_m_2"}
    assert {"cat_m", "cat_m_1"} <= cat.partitioned
    assert mine(cat.write_closure(["cat_m"])) == tree
    assert mine(cat.write_closure(["cat_m_1_x"])) == {"cat_m_1_x", "cat_m_1", "cat_m"}
    assert mine(cat.write_closure(["cat_m_1"])) == {"cat_m_1", "cat_m_1_x", "cat_m_1_y", "cat_m"}
    assert mine(cat.read_closure(["cat_m"])) == tree
    assert mine(cat.read_closure(["cat_m_1"])) == {"cat_m_1", "cat_m_1_x", "cat_m_1_y"}
    assert mine(cat.read_closure(["cat_m_2"])) == {"cat_m_2"}
    assert mine(cat.write_closure(["cat_puppy"])) == {"cat_puppy", "cat_dog", "cat_animal"}
    assert mine(cat.write_closure(["cat_animal"])) == {"cat_animal", "cat_dog", "cat_puppy", "cat_cat"}
    assert mine(cat.read_closure(["cat_dog"])) == {"cat_dog", "cat_puppy"}
    # the caller's own spelling stays in, next to the canonical name
    assert mine(cat.read_closure(["public.cat_animal"])) == {
        "public.cat_animal", "cat_animal", "cat_dog", "cat_puppy", "cat_cat"}
    # a row trigger on the partitioned parent is cloned onto every partition
    _run(pg,
         "CREATE FUNCTION cat_fn() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END'",
         "CREATE TRIGGER cat_tr AFTER INSERT ON cat_m FOR EACH ROW EXECUTE FUNCTION cat_fn()")  # fmt: skip
    cat = _load(pg)
    assert ALL in cat.write_closure(["cat_m_1_y"], op="insert")
    assert ALL in cat.write_closure(["cat_m"])
    assert ALL not in cat.write_closure(["cat_m_2"], op="delete")


def test_pg_rules_instead_of_triggers_matviews_functions(pg: Engine) -> None:
    _run(pg,
         "CREATE TABLE cat_a (id int primary key, v int)",
         "CREATE TABLE cat_log (x int)",
         "CREATE TABLE cat_ru (id int)",
         "CREATE RULE cat_rule AS ON UPDATE TO cat_ru DO ALSO INSERT INTO cat_log VALUES (1)",
         "CREATE VIEW cat_simple AS SELECT id, v FROM cat_a",
         "CREATE VIEW cat_tv AS SELECT id, v FROM cat_a",
         "CREATE FUNCTION cat_fn() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END'",
         "CREATE TRIGGER cat_io INSTEAD OF INSERT ON cat_tv FOR EACH ROW EXECUTE FUNCTION cat_fn()",
         "CREATE MATERIALIZED VIEW cat_mv AS SELECT id FROM cat_a",
         "CREATE VIEW cat_over_mv AS SELECT id FROM cat_mv",
         "CREATE FUNCTION cat_count() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM cat_log'",
         "CREATE VIEW cat_fv AS SELECT cat_count() AS n",
         "CREATE VIEW cat_sys AS SELECT relname FROM pg_class")  # fmt: skip
    cat = _load(pg)
    assert "cat_ru" in cat.tables_with_rules
    assert ALL in cat.write_closure(["cat_ru"], op="update")
    assert ALL not in cat.write_closure(["cat_ru"], op="delete")
    assert ALL in cat.write_closure(["cat_tv"], op="insert")
    # an auto-updatable view writes its base table
    assert {"cat_simple", "cat_a", "cat_tv"} <= cat.write_closure(["cat_simple"])
    assert "cat_mv" in cat.materialized_views
    assert mine(cat.read_closure(["cat_mv"])) == {"cat_mv"}
    assert mine(cat.read_closure(["cat_over_mv"])) == {"cat_over_mv", "cat_mv"}
    assert "cat_mv" not in cat.write_closure(["cat_a"])
    assert "cat_over_mv" in cat.write_closure(["cat_mv"])
    # a view calling a user function, a view over system catalogs: unknown
    assert ANY in cat.read_closure(["cat_fv"]) and ANY in cat.read_closure(["cat_sys"])
    assert {"cat_fv", "cat_sys"} <= cat.views_unknown
    assert {"cat_fv", "cat_sys"} <= cat.write_closure(["cat_log"])


def test_pg_other_schema(pg: Engine) -> None:
    _run(pg,
         "CREATE SCHEMA cat_s",
         "CREATE TABLE cat_p (id int primary key)",
         "CREATE TABLE cat_s.cat_c (id int primary key, p int REFERENCES cat_p ON DELETE CASCADE)",
         "CREATE TABLE cat_s.cat_only (id int)",
         "CREATE VIEW cat_v AS SELECT c.id FROM cat_s.cat_c c",
         "CREATE VIEW cat_s.cat_v2 AS SELECT id FROM cat_v",
         "CREATE TABLE cat_s.cat_kid (x int) INHERITS (cat_s.cat_only)")  # fmt: skip
    cat = _load(pg)
    assert "cat_s" in cat.schemas and "cat_s.cat_c" in cat.tables
    assert mine(cat.write_closure(["cat_p"])) == {"cat_p", "cat_s.cat_c", "cat_v", "cat_s.cat_v2"}
    assert mine(cat.write_closure(["cat_p"], op="insert")) == {"cat_p"}
    assert mine(cat.read_closure(["cat_s.cat_v2"])) == {"cat_s.cat_v2", "cat_v", "cat_s.cat_c"}
    assert mine(cat.read_closure(['"cat_s"."cat_only"'])) == {"cat_s.cat_only", "cat_s.cat_kid"}
    # an unqualified name may resolve through search_path: every schema's is included
    assert "cat_s.cat_only" in cat.write_closure(["cat_only"])


# --------------------------------------------------------- all three kinds


def test_views_over_views(db: Engine) -> None:
    kind = _kind(db)
    _run(db, "CREATE TABLE cat_a (id int primary key, v int)",
         "CREATE TABLE cat_b (id int primary key, a_id int)",
         "CREATE TABLE cat_c (id int primary key)",
         "CREATE VIEW cat_v1 AS SELECT x.id, y.a_id FROM cat_a x JOIN cat_b y ON y.a_id = x.id",
         "CREATE VIEW cat_v2 AS SELECT id FROM cat_v1 WHERE id > 1",
         "CREATE VIEW cat_v3 AS SELECT 'cat_c' AS s, id FROM cat_v2 -- cat_c")  # fmt: skip
    cat = _load(db)
    assert {"cat_v1", "cat_v2", "cat_v3"} <= cat.views
    assert mine(cat.read_closure(["cat_v3"])) == {"cat_v3", "cat_v2", "cat_v1", "cat_a", "cat_b"}
    assert mine(cat.read_closure(["cat_v1"])) == {"cat_v1", "cat_a", "cat_b"}
    assert mine(cat.read_closure(["cat_a"])) == {"cat_a"}
    assert mine(cat.write_closure(["cat_b"])) == {"cat_b", "cat_v1", "cat_v2", "cat_v3"}
    assert mine(cat.write_closure(["cat_c"])) == {"cat_c"}
    if kind == "sqlite":  # SQLite views are read-only without INSTEAD OF triggers
        assert ALL not in cat.write_closure(["cat_v1"])


def test_triggers(db: Engine) -> None:
    kind = _kind(db)
    _run(db, "CREATE TABLE cat_t (id int primary key)", "CREATE TABLE cat_log (x int)",
         "CREATE TABLE cat_p (id int primary key)",
         "CREATE TABLE cat_c (id int primary key, p int, "
         "FOREIGN KEY (p) REFERENCES cat_p (id) ON DELETE CASCADE)")  # fmt: skip
    if kind == "postgresql":
        _run(db, "CREATE FUNCTION cat_fn() RETURNS trigger LANGUAGE plpgsql AS "
                 "'BEGIN INSERT INTO cat_log VALUES (1); RETURN NEW; END'",
             "CREATE TRIGGER cat_tr AFTER INSERT ON cat_t FOR EACH ROW EXECUTE FUNCTION cat_fn()",
             "CREATE TRIGGER cat_tc AFTER DELETE ON cat_c FOR EACH STATEMENT EXECUTE FUNCTION cat_fn()")  # fmt: skip
    elif kind == "mariadb":
        _run(db, "CREATE TRIGGER cat_tr AFTER INSERT ON cat_t FOR EACH ROW INSERT INTO cat_log VALUES (1)",
             "CREATE TRIGGER cat_tc AFTER DELETE ON cat_c FOR EACH ROW INSERT INTO cat_log VALUES (2)")  # fmt: skip
    else:
        _run(db, "CREATE TRIGGER cat_tr AFTER INSERT ON cat_t BEGIN INSERT INTO cat_log VALUES (1); END",
             "CREATE TRIGGER cat_tc AFTER DELETE ON cat_c BEGIN INSERT INTO cat_log VALUES (2); END",
             "CREATE VIEW cat_iv AS SELECT id FROM cat_t",
             "CREATE TRIGGER cat_io INSTEAD OF UPDATE ON cat_iv BEGIN SELECT 1; END")  # fmt: skip
    cat = _load(db)
    assert {"cat_t", "cat_c"} <= cat.tables_with_triggers
    assert ALL in cat.write_closure(["cat_t"])
    assert ALL in cat.write_closure(["cat_t"], op="insert")
    assert ALL not in cat.write_closure(["cat_t"], op="update")
    assert ALL not in cat.write_closure(["cat_log"])
    assert ALL in cat.write_closure(["cat_p"], op="delete")  # the cascade fires cat_c's trigger
    assert ALL not in cat.write_closure(["cat_p"], op="update")
    if kind == "sqlite":
        assert ALL in cat.write_closure(["cat_iv"]) and "cat_iv" in cat.tables_with_triggers


def test_fk_chain_declared_in_database(db: Engine) -> None:
    """p <- c (ON DELETE CASCADE) <- g (ON DELETE SET NULL, ON UPDATE CASCADE); o: NO ACTION."""
    _run(db, "CREATE TABLE cat_p (id int primary key)",
         "CREATE TABLE cat_c (id int primary key, p int, FOREIGN KEY (p) REFERENCES cat_p (id) ON DELETE CASCADE)",
         "CREATE TABLE cat_g (id int primary key, c int, "
         "FOREIGN KEY (c) REFERENCES cat_c (id) ON DELETE SET NULL ON UPDATE CASCADE)",
         "CREATE TABLE cat_o (id int primary key, p int, FOREIGN KEY (p) REFERENCES cat_p (id))")  # fmt: skip
    cat = _load(db)
    assert mine(cat.write_closure(["cat_p"])) == {"cat_p", "cat_c", "cat_g"}
    assert mine(cat.write_closure(["cat_p"], op="delete")) == {"cat_p", "cat_c", "cat_g"}
    assert mine(cat.write_closure(["cat_p"], op="insert")) == {"cat_p"}
    assert mine(cat.write_closure(["cat_p"], op="update")) == {"cat_p"}
    assert mine(cat.write_closure(["cat_c"], op="update")) == {"cat_c", "cat_g"}
    assert mine(cat.write_closure(["cat_g"])) == {"cat_g"}
    if _kind(db) != "mariadb":  # MariaDB refuses TRUNCATE of a referenced table
        assert mine(cat.write_closure(["cat_p"], op="truncate")) == {"cat_p", "cat_c", "cat_g", "cat_o"}
    assert ("cat_c", "cat_p", "cascade", "no action") in cat.foreign_key_actions


# ----------------------------------------------- generated foreign-key graphs

ACTIONS = ["CASCADE", "SET NULL", "SET DEFAULT", "NO ACTION", "RESTRICT"]


def _graph(seed: int, kind: str) -> tuple[int, list[tuple[int, int, str, str]]]:
    """A random DAG: table i may reference tables j < i with random actions."""
    rng = random.Random(seed)
    n = rng.randint(4, 7)
    actions = [a for a in ACTIONS if not (kind == "mariadb" and a == "SET DEFAULT")]
    edges = []
    for child in range(1, n):
        for parent in range(child):
            if rng.random() < 0.45:
                edges.append((child, parent, rng.choice(actions), rng.choice(actions)))
    return n, edges


def _expected(start: int, op: str | None, edges: list[tuple[int, int, str, str]]) -> set[int]:
    """The closure computed from the generated graph, as a fixpoint over
    (table, event) facts: independent of the catalog's walk."""
    events = {(start, e) for e in (["delete", "update"] if op is None else [op])}
    while True:
        new = set(events)
        for table, ev in events:
            for child, parent, on_delete, on_update in edges:
                if parent != table:
                    continue
                if ev == "delete" and on_delete == "CASCADE":
                    new.add((child, "delete"))
                if ev == "delete" and on_delete in ("SET NULL", "SET DEFAULT"):
                    new.add((child, "update"))
                if ev == "update" and on_update in ("CASCADE", "SET NULL", "SET DEFAULT"):
                    new.add((child, "update"))
        if new == events:
            return {t for t, _ in events}
        events = new


def _fingerprint(conn: Connection, table: str) -> str:
    rows = conn.exec_driver_sql(f"SELECT * FROM {table} ORDER BY id").all()
    return hashlib.sha1(repr([tuple(r) for r in rows]).encode()).hexdigest()


@pytest.mark.parametrize("seed", range(3))
def test_generated_fk_graphs(db: Engine, seed: int) -> None:
    kind = _kind(db)
    rounds = 4 if kind == "sqlite" else 1
    for r in range(rounds):
        gseed = seed * 100 + r
        n, edges = _graph(gseed, kind)
        names = [f"cat_g{gseed}_{i}" for i in range(n)]
        ddl = []
        for i in range(n):
            cols = ["id int primary key"]
            fks = []
            for child, parent, on_delete, on_update in edges:
                if child == i:
                    cols.append(f"r{parent} int DEFAULT 1")
                    fks.append(f"FOREIGN KEY (r{parent}) REFERENCES {names[parent]} (id) "
                               f"ON DELETE {on_delete} ON UPDATE {on_update}")  # fmt: skip
            ddl.append(f"CREATE TABLE {names[i]} ({', '.join(cols + fks)})")
        _run(db, *ddl)
        with db.begin() as conn:  # rows 1..3 everywhere, every reference valid
            for i in range(n):
                refs = [p for c, p, _, _ in edges if c == i]
                for row in (1, 2, 3):
                    values = [str(row)] + [str(1 + (row + p) % 3) for p in refs]
                    cols = ["id"] + [f"r{p}" for p in refs]
                    conn.exec_driver_sql(
                        f"INSERT INTO {names[i]} ({', '.join(cols)}) VALUES ({', '.join(values)})"
                    )
        cat = _load(db)
        for start in range(n):
            for op in (None, "delete", "update", "insert"):
                got = mine(cat.write_closure([names[start]], op=op))
                want = {names[t] for t in _expected(start, op, edges)} if op != "insert" else {names[start]}
                assert got == want, (gseed, start, op, edges)
        # the database agrees: what a DELETE / key UPDATE changes is inside the closure
        for start in range(n):
            for op, sql in (("delete", f"DELETE FROM {names[start]} WHERE id = 2"),
                            ("update", f"UPDATE {names[start]} SET id = 7 WHERE id = 2")):  # fmt: skip
                with db.connect() as conn:
                    trans = conn.begin()
                    before = {t: _fingerprint(conn, t) for t in names}
                    try:
                        with conn.begin_nested():
                            conn.exec_driver_sql(sql)
                    except Exception:  # RESTRICT / NO ACTION / SET DEFAULT without a row 1
                        trans.rollback()
                        continue
                    changed = {t for t in names if _fingerprint(conn, t) != before[t]}
                    trans.rollback()
                assert changed <= mine(cat.write_closure([names[start]], op=op)), (gseed, sql, edges)
        _drop_mine(db)


# ------------------------------------------------------ other databases


def test_mariadb_other_database(tmp_path_factory: Any) -> None:
    engine = create_engine(db_url("mariadb", tmp_path_factory))
    try:
        with engine.connect() as conn:
            current = conn.execute(text("SELECT DATABASE()")).scalar()
    except Exception as err:
        if REQUIRE:
            pytest.fail(str(err))
        pytest.skip(str(err))
    other = f"cat_other_{current}"
    _drop_mine(engine)
    try:
        _run(engine, f"CREATE DATABASE {other}",
             "CREATE TABLE cat_p (id int primary key)",
             f"CREATE TABLE {other}.cat_c (id int primary key, p int, "
             f"FOREIGN KEY (p) REFERENCES {current}.cat_p (id) ON UPDATE CASCADE)",
             f"CREATE TABLE {other}.cat_base (id int)",
             f"CREATE VIEW cat_v AS SELECT b.id FROM {other}.cat_base b",
             f"CREATE VIEW {other}.cat_v2 AS SELECT id FROM {current}.cat_v",
             f"CREATE TRIGGER {other}.cat_tr BEFORE UPDATE ON {other}.cat_c FOR EACH ROW SET NEW.id = NEW.id",
             "CREATE FUNCTION cat_count() RETURNS int READS SQL DATA RETURN (SELECT count(*) FROM cat_p)",
             "CREATE VIEW cat_fv AS SELECT cat_count() AS n")  # fmt: skip
        cat = _load(engine)
        assert other in cat.schemas
        assert f"{other}.cat_c" in cat.write_closure(["cat_p"], op="update")
        assert ALL in cat.write_closure(["cat_p"], op="update")  # via the trigger on cat_c
        # a view whose base tables are unknown changes with any write
        assert mine(cat.write_closure(["cat_p"], op="delete")) == {"cat_p", "cat_fv"}
        assert mine(cat.read_closure([f"{other}.cat_v2"])) == {f"{other}.cat_v2", "cat_v", f"{other}.cat_base"}
        assert mine(cat.read_closure([f"{current}.cat_v"])) == {
            "cat_v", f"{current}.cat_v", f"{other}.cat_base"}
        assert ANY in cat.read_closure(["cat_fv"])
    finally:
        _drop_mine(engine)
        engine.dispose()


def test_sqlite_attached_and_temp(tmp_path: Any) -> None:
    aux = tmp_path / "aux.db"
    engine = create_engine(f"sqlite:///{tmp_path / 'main.db'}")

    @event.listens_for(engine, "connect")
    def _attach(dbapi_conn: Any, _rec: Any) -> None:
        dbapi_conn.execute(f"ATTACH DATABASE '{aux}' AS aux")

    _run(engine, "CREATE TABLE aux.cat_p (id int primary key)",
         "CREATE TABLE aux.cat_c (id int primary key, p int REFERENCES cat_p (id) ON DELETE SET NULL)",
         "CREATE TABLE aux.cat_log (x int)",
         "CREATE TRIGGER aux.cat_tr AFTER UPDATE ON cat_c BEGIN INSERT INTO cat_log VALUES (1); END",
         "CREATE VIEW aux.cat_v AS SELECT id FROM cat_c",
         "CREATE TABLE cat_c (id int)")  # fmt: skip
    cat = Catalog.for_engine(engine)
    assert not cat.degraded and "aux" in cat.schemas
    assert mine(cat.write_closure(["aux.cat_p"], op="delete")) == {"aux.cat_p", "aux.cat_c", "aux.cat_v", ALL}
    assert mine(cat.read_closure(["aux.cat_v"])) == {"aux.cat_v", "aux.cat_c"}
    # an unqualified name may be any database's: main.cat_c and aux.cat_c
    assert {"cat_c", "aux.cat_c", ALL} <= cat.write_closure(["cat_c"])
    # TEMP objects are per connection: Catalog.load on the connection sees them
    with engine.connect() as conn:
        conn.exec_driver_sql("CREATE TEMP VIEW cat_tv AS SELECT p FROM aux.cat_c")
        conn.commit()
        local = Catalog.load(conn)
        # a temporary object answers to the unqualified name too (sqlscan.canonical: it
        # shadows that name), beside the caller's own spelling
        assert mine(local.read_closure(["temp.cat_tv"])) == {"temp.cat_tv", "cat_tv", "aux.cat_c"}
        assert not conn.in_transaction()  # loading on the caller's connection begins nothing
    engine.dispose()


def test_sqlite_in_memory_needs_the_connection() -> None:
    engine = create_engine("sqlite://")
    assert Catalog.for_engine(engine).degraded
    with engine.connect() as conn:
        conn.exec_driver_sql("CREATE TABLE cat_a (id int)")
        conn.exec_driver_sql("CREATE VIEW cat_v AS SELECT id FROM cat_a")
        conn.commit()
        cat = Catalog.for_engine(engine, conn)
        assert not cat.degraded and not conn.in_transaction()
        assert mine(cat.read_closure(["cat_v"])) == {"cat_v", "cat_a"}
        assert Catalog.for_engine(engine) is cat  # memoized
    engine.dispose()


# --------------------------------------------------- degraded, memoized


def test_degraded_when_unreachable(caplog: Any, monkeypatch: Any) -> None:
    engine = create_engine("postgresql+psycopg://root@127.0.0.1:1/nothing")
    monkeypatch.setattr(Catalog, "retry_after", 0.2)
    caplog.set_level(logging.WARNING, logger="sqla_querycache.catalog")
    cat = Catalog.for_engine(engine)
    assert cat.degraded and cat.error
    assert cat.write_closure(["cat_a", "cat_b"]) == {"cat_a", "cat_b", ALL}
    assert cat.read_closure(["cat_a"]) == {"cat_a"}
    assert Catalog.for_engine(engine) is cat  # not retried before retry_after
    time.sleep(0.3)
    again = Catalog.for_engine(engine)
    for _ in range(50):
        again = Catalog.for_engine(engine)
        if again is not cat:
            break
        time.sleep(0.05)
    assert again is not cat and again.degraded  # retried, still failing
    warnings = [r for r in caplog.records if r.name == "sqla_querycache.catalog"]
    assert len(warnings) == 1  # logged once
    engine.dispose()


def test_unsupported_dialect_adds_nothing() -> None:
    class FakeDialect:
        name = "oracle"

    class FakeConn:
        dialect = FakeDialect()

    cat = Catalog.load(FakeConn())
    assert not cat.supported and not cat.degraded
    assert cat.write_closure(["x"]) == {"x"} and cat.read_closure(["x"]) == {"x"}


class Counter:
    """Statements the catalog sends for ``engine``: on a private pool of its own (so on
    another Engine object), recognised by the database URL and the internal option."""

    def __init__(self, engine: Engine) -> None:
        self.engine, self.count = engine, 0
        event.listen(Engine, "before_cursor_execute", self.on)

    def on(self, conn: Any, cursor: Any, statement: Any, params: Any, context: Any,
           executemany: Any) -> None:  # fmt: skip
        if conn.engine.url == self.engine.url:
            self.count += 1

    def close(self) -> None:
        event.remove(Engine, "before_cursor_execute", self.on)


def test_memoized_invalidated_and_aged(db: Engine) -> None:
    kind = _kind(db)
    _run(db, "CREATE TABLE cat_a (id int primary key)")
    counter = Counter(db)
    try:
        cat = Catalog.for_engine(db)
        assert not cat.degraded and "cat_a" in cat.tables
        loaded = counter.count
        assert loaded > 0 or kind == "sqlite"  # SQLite is read on the DBAPI connection
        assert cat.statements > 0
        first = cat.write_closure(["cat_a"])
        for _ in range(3):
            assert Catalog.for_engine(db) is cat
            assert cat.write_closure(["cat_a"]) is first
            cat.read_closure(["cat_a"])
        assert counter.count == loaded  # no SQL after the load
        # DDL: the caller invalidates; the next call reloads and sees it
        _run(db, "CREATE TABLE cat_b (id int primary key, a int, "
                 "FOREIGN KEY (a) REFERENCES cat_a (id) ON DELETE CASCADE)")  # fmt: skip
        assert Catalog.for_engine(db) is cat
        cat.invalidate()
        new = Catalog.for_engine(db)
        assert new is not cat and "cat_b" in new.write_closure(["cat_a"])
        # aged: the old catalog answers at once, a background thread reloads
        aged = Catalog.for_engine(db, max_age=0)
        assert aged is new
        for _ in range(100):
            if Catalog.for_engine(db) is not new:
                break
            time.sleep(0.02)
        assert Catalog.for_engine(db) is not new
    finally:
        counter.close()


def test_concurrent_first_load_loads_once(db: Engine) -> None:
    counter = Counter(db)
    results: list[Catalog] = []
    barrier = threading.Barrier(6)

    def work() -> None:
        barrier.wait()
        results.append(Catalog.for_engine(db))

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counter.close()
    assert len({id(c) for c in results}) == 1 and not results[0].degraded
    if _kind(db) != "sqlite":
        assert counter.count == results[0].statements  # one load, not six
