"""sqlscan: what raw SQL reads, writes and does, checked by named cases, by a
generator that composes statements and knows what it built, and against the SQL
the test models' ORM queries really send to SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event, select
from sqlalchemy.orm import Session, joinedload, selectinload, undefer

from sqla_querycache.sqlscan import CONSERVATIVE, Analysis, analyze, canonical

from . import models
from .conftest import _make_engine, db_url

DIALECTS = ["postgresql", "mysql", "mariadb", "sqlite"]
ALL = frozenset({"@all"})
ANY = frozenset({"@any"})


def fs(*names: str) -> frozenset[str]:
    return frozenset(names)


# ------------------------------------------------------------ named cases

#: (dialects, sql, expected fields); dialects "*" = all four
NAMED: list[tuple[str, str, dict[str, Any]]] = [
    # --- reads, pure
    ("*", "SELECT a FROM t", {"reads": fs("t"), "writes": None, "pure": True}),
    ("*", "WITH c AS (SELECT a FROM t) SELECT * FROM c", {"reads": fs("t"), "pure": True}),
    ("pg my", "TABLE t", {"reads": fs("t"), "pure": True}),
    ("*", "(SELECT a FROM t)", {"reads": fs("t"), "pure": True}),
    ("*", "SELECT a FROM t UNION SELECT b FROM u", {"reads": fs("t", "u"), "pure": True}),
    ("*", "SELECT 1 FROM t WHERE EXISTS (SELECT 1 FROM u) AND x IN (SELECT y FROM v)",
     {"reads": fs("t", "u", "v"), "pure": True}),
    ("pg", "SELECT * FROM t, LATERAL (SELECT * FROM u WHERE u.a = t.a) s", {"reads": fs("t", "u"), "pure": True}),
    ("*", "VALUES (1, 2)", {"reads": fs(), "pure": True, "writes": None}),
    ("*", "SELECT (SELECT max(b) FROM u) FROM t GROUP BY a HAVING count(*) > (SELECT 1 FROM v)",
     {"reads": fs("t", "u", "v"), "pure": True}),
    ("pg", "WITH t AS (SELECT a FROM t) SELECT * FROM t", {"reads": fs("t"), "pure": True}),
    ("pg", "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT * FROM r",
     {"reads": fs(), "pure": True}),
    ("pg", 'SELECT "public"."T".a FROM "public"."T"', {"reads": fs("t"), "pure": True}),
    ("pg", "SELECT a FROM other.t JOIN public.u ON 1 = 1", {"reads": fs("other.t", "u"), "pure": True}),
    ("pg", "SELECT a FROM db.other.t", {"reads": fs("other.t")}),
    ("sqlite", "SELECT a FROM main.t JOIN temp.u ON 1 JOIN aux.v ON 1", {"reads": fs("t", "u", "aux.v"), "pure": True}),
    ("pg", 'SELECT "delete" FROM t WHERE b = \'drop table x; delete from y\'', {"reads": fs("t"), "pure": True}),
    ("my", "SELECT `delete` FROM `T` # delete from y\n WHERE b = 'x'", {"reads": fs("t"), "pure": True}),
    ("*", "SELECT a FROM t /* ; update u set a = 1; */ WHERE b = 1 -- ; drop table v\n",
     {"reads": fs("t"), "pure": True, "writes": None}),
    ("pg", "SELECT myfunc(a) FROM t", {"reads": fs("t", "@any"), "pure": True}),
    ("pg", "SELECT s.myfunc(a) FROM t", {"reads": fs("t", "@any"), "pure": True}),
    ("pg", "SELECT * FROM generate_series(1, 3) g", {"reads": fs(), "pure": True}),
    ("pg", "SELECT a FROM t WHERE a IN (__[POSTCOMPILE_a]) AND b NOT IN (__[POSTCOMPILE_b~~(~~REPL~~)~~])",
     {"reads": fs("t"), "pure": True}),
    ("pg", "SELECT a FROM __[SCHEMA__none].t", {"reads": fs("t"), "pure": True}),
    ("*", "SELECT a FROM t WHERE a = %(p)s AND b = %s AND c = ? AND d = :n AND e = :1 AND f = $1 AND g = ?2",
     {"reads": fs("t"), "pure": True}),
    ("pg my", "SELECT a %% 2 FROM t WHERE b LIKE 'x%%'", {"reads": fs("t"), "pure": True}),
    # --- not pure reads
    ("pg my", "SELECT a FROM t FOR UPDATE", {"reads": fs("t"), "writes": None, "pure": False, "reason": "locking clause"}),
    ("pg", "SELECT a FROM t FOR NO KEY UPDATE OF t NOWAIT", {"pure": False, "reason": "locking clause"}),
    ("pg", "SELECT a FROM t FOR KEY SHARE SKIP LOCKED", {"pure": False, "reason": "locking clause"}),
    ("pg my", "SELECT a FROM t FOR SHARE", {"pure": False, "reason": "locking clause"}),
    ("my", "SELECT a FROM t LOCK IN SHARE MODE", {"pure": False, "reason": "locking clause"}),
    ("pg", "SELECT * FROM (SELECT a FROM t FOR UPDATE) s", {"pure": False, "reason": "locking clause"}),
    ("pg", "SELECT now()", {"pure": False}),
    ("pg", "SELECT clock_timestamp(), a FROM t", {"pure": False, "reads": fs("t")}),
    ("pg", "SELECT nextval('s')", {"pure": False, "reason": "sequence"}),
    ("pg", "SELECT a FROM t WHERE d > 'now'::timestamp", {"pure": False}),
    ("pg", "SELECT current_user", {"pure": False}),
    ("pg", "SELECT localtimestamp", {"pure": False}),
    ("pg", "SELECT set_config('a.b', 'c', false)", {"pure": False}),
    ("pg", "SELECT pg_advisory_lock(1)", {"pure": False}),
    ("pg", "SELECT gen_random_uuid()", {"pure": False}),
    ("my", "SELECT rand(), uuid()", {"pure": False}),
    ("my", "SELECT unix_timestamp()", {"pure": False}),
    ("my", "SELECT unix_timestamp('2024-01-01')", {"pure": True}),
    ("my", "SELECT last_insert_id()", {"pure": False}),
    ("my", "SELECT a FROM t WHERE b = @x", {"pure": False, "reason": "user variable"}),
    ("my", "SELECT @@session.sql_mode", {"pure": False}),
    ("mariadb", "SELECT NEXT VALUE FOR s", {"pure": False, "reason": "sequence"}),
    ("mariadb", "SELECT s.nextval", {"pure": False, "reason": "sequence"}),
    ("my", "SELECT SQL_CALC_FOUND_ROWS a FROM t", {"pure": False}),
    ("sqlite", "SELECT date('now')", {"pure": False}),
    ("sqlite", "SELECT random(), changes()", {"pure": False}),
    ("sqlite", "SELECT last_insert_rowid()", {"pure": False}),
    ("pg", "SELECT relname FROM pg_class", {"pure": False, "reason": "system catalog"}),
    ("*", "SELECT table_name FROM information_schema.tables", {"pure": False, "reason": "system catalog"}),
    ("sqlite", "SELECT name FROM sqlite_master", {"pure": False, "reason": "system catalog"}),
    # --- writes
    ("pg", "WITH x AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM x",
     {"writes": fs("t"), "pure": False, "reason": "writes"}),
    ("pg", "WITH d AS (DELETE FROM t RETURNING *) INSERT INTO u SELECT * FROM d", {"writes": fs("t", "u"), "pure": False}),
    ("pg", "WITH c AS (SELECT * FROM s) INSERT INTO t SELECT * FROM c", {"writes": fs("t"), "reads": fs("s")}),
    ("*", "INSERT INTO t (a) SELECT a FROM s", {"writes": fs("t"), "reads": fs("s")}),
    ("*", "INSERT INTO t (a) VALUES (?)", {"writes": fs("t")}),
    ("*", "UPDATE t SET a = 1 WHERE b IN (SELECT b FROM u)", {"writes": fs("t"), "reads": fs("t", "u")}),
    ("pg sqlite", "UPDATE a SET x = 1 FROM b WHERE a.id = b.id", {"writes": fs("a"), "reads": fs("a", "b")}),
    ("pg", "DELETE FROM a USING b WHERE a.id = b.id", {"writes": fs("a"), "reads": fs("a", "b")}),
    ("*", "DELETE FROM t WHERE id = 1", {"writes": fs("t")}),
    ("pg", "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = 1", {"writes": fs("t"), "reads": fs("t", "s")}),
    ("pg sqlite", "INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET a = 1", {"writes": fs("t")}),
    ("my", "INSERT INTO t VALUES (1) ON DUPLICATE KEY UPDATE a = 1", {"writes": fs("t")}),
    ("my sqlite", "REPLACE INTO t VALUES (1)", {"writes": fs("t")}),
    ("sqlite", "INSERT OR REPLACE INTO t VALUES (1)", {"writes": fs("t")}),
    ("my", "INSERT IGNORE INTO t VALUES (1)", {"writes": fs("t")}),
    ("my", "DELETE LOW_PRIORITY QUICK IGNORE FROM t WHERE 1", {"writes": fs("t")}),
    ("my", "UPDATE a JOIN b ON a.id = b.id SET a.x = 1, b.y = 2", {"writes": fs("a", "b")}),
    ("my", "UPDATE a, b SET a.x = b.y WHERE a.id = b.id", {"writes": fs("a", "b")}),
    ("my", "DELETE a, b FROM a JOIN b ON a.id = b.id", {"writes": fs("a", "b")}),
    ("my", "DELETE x FROM t1 AS x JOIN t2 AS y ON x.id = y.id", {"writes": fs("t1", "t2")}),
    ("my", "DELETE FROM a USING a JOIN b ON a.id = b.id", {"writes": fs("a", "b")}),
    ("pg", "TRUNCATE a, other.b CASCADE", {"writes": fs("a", "other.b"), "truncate_cascade": fs("a", "other.b")}),
    ("pg", "TRUNCATE TABLE ONLY a RESTART IDENTITY", {"writes": fs("a"), "truncate_cascade": fs()}),
    ("my", "TRUNCATE TABLE a", {"writes": fs("a"), "implicit_commit": True}),
    ("pg", "SELECT * INTO newt FROM t", {"writes": fs("newt"), "reads": fs("t"), "pure": False}),
    ("*", "CREATE TABLE n AS SELECT * FROM t", {"writes": fs("n"), "reads": fs("t")}),
    ("pg", "COPY t FROM STDIN", {"writes": fs("t"), "pure": False}),
    ("pg", "COPY (SELECT * FROM t) TO STDOUT", {"writes": None, "reads": fs("t"), "pure": False}),
    ("*", "CREATE TABLE n (id INTEGER PRIMARY KEY)", {"writes": fs("n")}),
    ("*", "ALTER TABLE t ADD COLUMN c INTEGER", {"writes": fs("t")}),
    ("*", "ALTER TABLE t RENAME TO u", {"writes": fs("t", "u")}),
    ("pg sqlite", "DROP TABLE a", {"writes": fs("a")}),
    ("pg my", "DROP TABLE a, b", {"writes": fs("a", "b")}),
    ("pg", "DROP TABLE a CASCADE", {"writes": fs("a", "@all")}),  # dependent views go too
    ("*", "CREATE INDEX i ON t (a)", {"writes": fs("t")}),
    ("pg", "CREATE UNIQUE INDEX i ON other.t (a)", {"writes": fs("other.t")}),
    ("my", "DROP INDEX i ON t", {"writes": fs("t")}),
    ("pg", "DROP INDEX i", {"writes": ALL}),
    ("*", "CREATE VIEW v AS SELECT * FROM t", {"writes": fs("v"), "reads": fs("t")}),
    ("*", "DROP VIEW v", {"writes": fs("v")}),
    ("pg", "CREATE SCHEMA s", {"writes": ALL}),
    ("my", "CREATE DATABASE d", {"writes": ALL, "implicit_commit": True}),
    ("pg", "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql", {"writes": ALL}),
    ("pg", "CREATE TRIGGER trg AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()", {"writes": ALL}),
    ("pg", "GRANT SELECT ON t TO u", {"writes": ALL}),
    ("my", "GRANT SELECT ON t TO u", {"writes": ALL, "implicit_commit": True}),
    ("pg my", "CALL p()", {"writes": ALL, "reads": ANY}),
    ("pg", "DO $$ BEGIN DELETE FROM t; END $$", {"writes": ALL}),
    ("pg", "EXECUTE stmt(1)", {"writes": ALL}),
    ("pg", "EXPLAIN ANALYZE DELETE FROM t", {"writes": fs("t"), "pure": False}),
    ("pg", "EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = 1", {"writes": fs("t")}),
    ("pg", "EXPLAIN DELETE FROM t", {"writes": None, "pure": False}),
    ("pg", "EXPLAIN SELECT * FROM t", {"writes": None, "reads": fs("t"), "pure": False}),
    ("sqlite", "EXPLAIN QUERY PLAN DELETE FROM t", {"writes": None}),
    ("mariadb", "ANALYZE DELETE FROM t", {"writes": fs("t")}),
    ("pg", "REFRESH MATERIALIZED VIEW CONCURRENTLY mv", {"writes": fs("mv")}),
    ("pg", "LOCK TABLE t IN ACCESS EXCLUSIVE MODE", {"writes": None, "pure": False}),
    ("my", "LOCK TABLES t WRITE", {"writes": None, "pure": False, "implicit_commit": True}),
    ("my", "UNLOCK TABLES", {"writes": None, "implicit_commit": True}),
    ("my", "RENAME TABLE a TO b, c TO d", {"writes": fs("a", "b", "c", "d"), "implicit_commit": True}),
    ("pg", "COMMENT ON TABLE t IS 'x'", {"writes": fs("t")}),
    # --- read-only utility statements
    ("pg my", "SHOW TABLES", {"writes": None, "pure": False}),
    ("my", "DESCRIBE t", {"writes": None, "pure": False}),
    ("pg", "ANALYZE t", {"writes": None, "pure": False, "implicit_commit": False}),
    ("my", "ANALYZE TABLE t", {"writes": None, "implicit_commit": True}),
    ("my", "OPTIMIZE TABLE t", {"writes": None, "implicit_commit": True}),
    ("pg sqlite", "VACUUM", {"writes": None}),
    ("pg", "LISTEN chan", {"writes": None, "pure": False}),
    ("pg", "UNLISTEN *", {"writes": None}),
    ("pg", "NOTIFY chan, 'x'", {"writes": None}),
    ("pg", "DISCARD ALL", {"writes": None, "session_state": True}),
    ("pg", "DEALLOCATE ALL", {"writes": None}),
    ("pg", "PREPARE q (int) AS SELECT * FROM t WHERE a = $1", {"writes": None, "reads": fs("t"), "pure": False}),
    ("pg", "CHECKPOINT", {"writes": None}),
    ("pg", "DECLARE c CURSOR FOR SELECT * FROM t", {"writes": None, "reads": fs("t"), "pure": False}),
    ("pg", "FETCH 10 FROM c", {"writes": None}),
    ("pg", "CLOSE c", {"writes": None}),
    ("sqlite", "PRAGMA table_info(t)", {"writes": None, "pure": False, "session_state": False}),
    ("sqlite", "PRAGMA foreign_keys = ON", {"writes": None, "session_state": False}),
    ("sqlite", "PRAGMA case_sensitive_like = ON", {"writes": None, "session_state": True}),
    ("sqlite", "ATTACH DATABASE 'x.db' AS aux", {"writes": None, "session_state": True}),
    ("my", "XA RECOVER", {"writes": None, "txn": None}),
    # --- transactions
    ("*", "BEGIN", {"txn": "begin", "writes": None, "pure": False}),
    ("my", "BEGIN", {"implicit_commit": True}),
    ("pg", "BEGIN", {"implicit_commit": False}),
    ("pg my", "START TRANSACTION", {"txn": "begin"}),
    ("sqlite", "BEGIN IMMEDIATE TRANSACTION", {"txn": "begin"}),
    ("*", "COMMIT", {"txn": "commit"}),
    ("pg sqlite", "END", {"txn": "commit"}),
    ("*", "ROLLBACK", {"txn": "rollback"}),
    ("*", "SAVEPOINT sp1", {"txn": "savepoint"}),
    ("*", "RELEASE SAVEPOINT sp1", {"txn": "release"}),
    ("*", "ROLLBACK TO SAVEPOINT sp1", {"txn": "rollback_to"}),
    ("pg", "PREPARE TRANSACTION 'x'", {"txn": "prepare"}),
    ("pg", "COMMIT PREPARED 'x'", {"txn": "commit_prepared"}),
    ("pg", "ROLLBACK PREPARED 'x'", {"txn": "rollback_prepared"}),
    ("my", "XA START 'x'", {"txn": "xa_start"}),
    ("my", "XA END 'x'", {"txn": "xa_end"}),
    ("my", "XA PREPARE 'x'", {"txn": "prepare"}),
    ("my", "XA COMMIT 'x'", {"txn": "commit_prepared"}),
    ("my", "XA COMMIT 'x' ONE PHASE", {"txn": "commit"}),
    ("my", "XA ROLLBACK 'x'", {"txn": "rollback_prepared"}),
    ("pg", "BEGIN ISOLATION LEVEL SERIALIZABLE", {"txn": "begin", "isolation": "SERIALIZABLE"}),
    ("pg", "START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY", {"isolation": "REPEATABLE READ"}),
    # --- isolation and session state
    ("pg my", "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", {"isolation": "REPEATABLE READ", "session_state": False}),
    ("pg", "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE", {"isolation": "SERIALIZABLE"}),
    ("my", "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED", {"isolation": "READ COMMITTED"}),
    ("my", "SET GLOBAL TRANSACTION ISOLATION LEVEL READ UNCOMMITTED", {"isolation": "READ UNCOMMITTED"}),
    ("my", "SET tx_isolation = 'READ-COMMITTED'", {"isolation": "READ COMMITTED"}),
    ("my", "SET @@session.transaction_isolation = 'REPEATABLE-READ'", {"isolation": "REPEATABLE READ"}),
    ("pg", "SET default_transaction_isolation = 'serializable'", {"isolation": "SERIALIZABLE"}),
    ("my", "SET transaction_isolation = @v", {"isolation": "UNKNOWN"}),
    ("pg", "SET search_path TO foo, public", {"session_state": True, "writes": None, "pure": False}),
    ("pg", "SET ROLE admin", {"session_state": True}),
    ("pg", "SET SESSION AUTHORIZATION bob", {"session_state": True}),
    ("pg", "SET app.tenant = '7'", {"session_state": True}),
    ("pg", "SET row_security = off", {"session_state": True}),
    ("pg", "SET TIME ZONE 'UTC'", {"session_state": True}),
    ("pg", "SET timezone = 'UTC'", {"session_state": True}),
    ("pg", "SET LOCAL statement_timeout = 1000", {"session_state": False}),
    ("pg", "SET application_name = 'x'", {"session_state": False}),
    ("pg", "RESET ALL", {"session_state": True}),
    ("pg", "SELECT set_config('app.tenant', '7', false)", {"pure": False}),
    ("my", "SET NAMES utf8mb4", {"session_state": False}),
    ("my", "SET time_zone = '+00:00'", {"session_state": True}),
    ("my", "SET @@sql_mode = 'ANSI'", {"session_state": True}),
    ("my", "SET SESSION sql_mode = 'ANSI', foreign_key_checks = 0", {"session_state": True}),
    ("my", "SET foreign_key_checks = 0", {"session_state": False}),
    ("my", "SET @x = 1", {"session_state": False, "writes": None}),
    ("my", "SET @x = (SELECT max(id) FROM t)", {"reads": fs("t"), "writes": None}),
    ("my", "USE other", {"session_state": True}),
    ("my", "SET autocommit = 1", {"implicit_commit": True}),
    ("my", "SET autocommit = 0", {"implicit_commit": False}),
    ("mariadb", "SET STATEMENT max_statement_time = 1 FOR UPDATE t SET a = 1", {"writes": fs("t")}),
    # --- multi-statement strings, junk
    ("*", "SELECT a FROM t; SELECT b FROM u", {"reads": fs("t", "u"), "pure": True}),
    ("*", "SELECT a FROM t; UPDATE u SET b = 1", {"reads": fs("t", "u"), "writes": fs("u"), "pure": False}),
    ("*", "BEGIN; UPDATE u SET b = 1; COMMIT", {"writes": fs("u"), "txn": "commit"}),
    ("*", "this is not sql", {"reads": ANY, "writes": ALL, "pure": False, "reason": "unparseable"}),
    ("*", "SELECT FROM WHERE (", {"reads": ANY, "writes": ALL, "pure": False}),
    ("*", "", {"writes": None, "pure": False}),
    ("*", "  -- just a comment\n", {"writes": None, "pure": False}),
    ("*", "SELECT 'unterminated", {"writes": ALL}),
]

_FAMS = {"pg": ["postgresql"], "my": ["mysql", "mariadb"], "sqlite": ["sqlite"]}


def _named_params() -> Iterator[Any]:
    for where, sql, expected in NAMED:
        dialects = DIALECTS if where == "*" else [d for w in where.split() for d in _FAMS.get(w, [w])]
        for d in dialects:
            yield pytest.param(d, sql, expected, id=f"{d}:{sql[:50]}")


@pytest.mark.parametrize(("dialect", "sql", "expected"), list(_named_params()))
def test_named(dialect: str, sql: str, expected: dict[str, Any]) -> None:
    a = analyze(sql, dialect)
    for field, value in expected.items():
        assert getattr(a, field) == value, (field, a)
    if a.pure:
        assert a.writes is None and a.reason is None


def test_canonical() -> None:
    assert canonical("T", "PUBLIC", "public") == "t"
    assert canonical("T", "Other", "public") == "other.t"
    assert canonical("t", None, "public") == "t"
    assert canonical("t", "main", "main") == "t"
    assert canonical("t", "temp", "main") == "t"
    assert canonical("t", "pg_temp_3", "public") == "t"
    assert canonical("t", "app", None) == "app.t"


def test_default_schema_mysql() -> None:
    a = analyze("SELECT * FROM app.t JOIN `App`.`U` ON 1 JOIN other.v ON 1", "mysql", "app")
    assert a.reads == fs("t", "u", "other.v")


def test_never_raises() -> None:
    for junk in ("\x00", "SELECT " * 5000, "(((((" * 2000, "'" * 3, "$$", "/*", "`", "SELECT ?1?2", "EXPLAIN",
                 "SET", "PRAGMA", "XA", "WITH", "DECLARE", ";;;;", "SELECT a FROM t WHERE a = ANY(%s)"):  # fmt: skip
        for d in [*DIALECTS, "oracle"]:
            assert isinstance(analyze(junk, d), Analysis)
    assert analyze(None, "postgresql") == CONSERVATIVE  # type: ignore[arg-type]
    assert analyze(["SELECT 1"], "postgresql") == CONSERVATIVE  # type: ignore[arg-type]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_huge_in_list_is_linear(dialect: str) -> None:
    def timed(n: int) -> float:
        sql = "SELECT a FROM t WHERE a IN (" + ", ".join(["?"] * n) + f") AND b = {n}"
        start = time.perf_counter()
        a = analyze(sql, dialect)
        elapsed = time.perf_counter() - start
        assert a.pure and a.reads == fs("t")
        return elapsed

    small, big = timed(1_000), timed(10_000)
    assert big < 0.5
    assert big < 30 * max(small, 1e-4)  # ~10x the work, far from 100x
    values = "INSERT INTO t (a, b) VALUES " + ", ".join(["(%s, %s)"] * 5000)
    assert analyze(values, dialect).writes == fs("t")


def test_memoized() -> None:
    sql = "SELECT a FROM memo_t WHERE b = ?"
    assert analyze(sql, "sqlite") is analyze(sql, "sqlite")


# ------------------------------------------------------ generated statements

DEFAULTS = {"postgresql": "public", "mysql": "app", "mariadb": "app", "sqlite": "main"}
QUOTES = {
    "postgresql": ['{}', '"{}"'],
    "mysql": ["{}", "`{}`"],
    "mariadb": ["{}", "`{}`"],
    "sqlite": ["{}", '"{}"', "`{}`", "[{}]"],
}
PLACEHOLDERS = ["%(p_1)s", "%s", "?", ":p_1", ":1", "$1", "__[POSTCOMPILE_p_2]"]
COMMENTS = {
    "postgresql": ["/* c; delete from x */", "-- drop table y;\n", "/* 'x */"],
    "mysql": ["/* c; delete from x */", "-- drop table y;\n", "# truncate z;\n"],
    "mariadb": ["/* c; delete from x */", "-- drop table y;\n", "# truncate z;\n"],
    "sqlite": ["/* c; delete from x */", "-- drop table y;\n"],
}
LOCKS = {
    "postgresql": ["FOR UPDATE", "FOR SHARE", "FOR NO KEY UPDATE", "FOR KEY SHARE", "FOR UPDATE NOWAIT",
                   "FOR UPDATE SKIP LOCKED"],  # fmt: skip
    "mysql": ["FOR UPDATE", "FOR SHARE", "LOCK IN SHARE MODE", "FOR UPDATE SKIP LOCKED"],
    "mariadb": ["FOR UPDATE", "LOCK IN SHARE MODE"],
    "sqlite": [],
}
VOLATILE = {
    "postgresql": ["now()", "random()", "clock_timestamp()", "nextval('s')", "CURRENT_TIMESTAMP", "txid_current()",
                   "gen_random_uuid()", "pg_backend_pid()", "current_setting('x')"],  # fmt: skip
    "mysql": ["now()", "rand()", "uuid()", "@x", "@@version", "sysdate()", "last_insert_id()", "CURRENT_DATE",
              "connection_id()", "found_rows()"],  # fmt: skip
    "mariadb": ["now()", "rand()", "uuid()", "@x", "NEXT VALUE FOR s", "utc_timestamp()"],
    "sqlite": ["random()", "date('now')", "changes()", "randomblob(4)", "CURRENT_TIMESTAMP", "datetime()"],
}


@dataclass
class Built:
    sql: str
    reads: set[str]
    writes: set[str] | None
    pure: bool


class Builder:
    """Composes statements from parts and knows what it composed."""

    def __init__(self, draw: Any, dialect: str):
        self.draw = draw
        self.d = dialect
        self.counter = 0

    def table(self) -> tuple[str, str]:
        """(SQL text, canonical name) of a table reference."""
        base = self.draw(st.sampled_from(["orders", "Item", "line_items", "CUSTOMER", "x1"]))
        schema = self.draw(st.sampled_from([None, "default", "other", "Other"]))
        quote = self.draw(st.sampled_from(QUOTES[self.d]))
        if schema == "default":
            schema = self.draw(st.sampled_from([DEFAULTS[self.d], DEFAULTS[self.d].upper()]))
        name = quote.format(base)
        if schema is None:
            return name, base.lower()
        text = f"{quote.format(schema)}.{name}"
        if schema.lower() == DEFAULTS[self.d]:
            return text, base.lower()
        return text, f"{schema.lower()}.{base.lower()}"

    def ph(self) -> str:
        return self.draw(st.sampled_from(PLACEHOLDERS))

    def alias(self) -> str:
        self.counter += 1
        return f"a{self.counter}"

    def select(self, depth: int = 0) -> Built:
        text, name = self.table()
        al = self.alias()
        reads = {name}
        pure = True
        sql = f"SELECT {al}.id FROM {text} AS {al}"
        kind = self.draw(st.sampled_from(["plain", "join", "in", "exists", "scalar"]))
        if kind == "join":
            t2, n2 = self.table()
            a2 = self.alias()
            sql += f" JOIN {t2} AS {a2} ON {a2}.id = {al}.id"
            reads.add(n2)
        elif kind in ("in", "exists", "scalar") and depth < 2:
            sub = self.select(depth + 1) if self.draw(st.booleans()) else None
            if sub is None:
                t2, n2 = self.table()
                sub = Built(f"SELECT id FROM {t2}", {n2}, None, True)
            reads |= sub.reads
            pure &= sub.pure
            if kind == "in":
                sql += f" WHERE {al}.id IN ({sub.sql})"
            elif kind == "exists":
                sql += f" WHERE EXISTS ({sub.sql})"
            else:
                sql = sql.replace("SELECT ", f"SELECT ({sub.sql} LIMIT 1) AS s, ", 1)
        has_where = kind in ("in", "exists") and depth < 2
        sql += f" {'AND' if has_where else 'WHERE'} {al}.id = {self.ph()}"
        if VOLATILE[self.d] and self.draw(st.integers(0, 5)) == 0:
            sql = sql.replace("SELECT ", f"SELECT {self.draw(st.sampled_from(VOLATILE[self.d]))} AS v, ", 1)
            pure = False
        if depth == 0 and LOCKS[self.d] and self.draw(st.integers(0, 5)) == 0:
            sql += " " + self.draw(st.sampled_from(LOCKS[self.d]))
            pure = False
        return Built(sql, reads, None, pure)

    def wrapped(self) -> Built:
        b = self.select()
        how = self.draw(st.sampled_from(["none", "cte", "paren", "union", "derived", "cte2"]))
        locked = any(lk in b.sql for lk in LOCKS[self.d])
        if locked and how in ("union", "paren", "cte", "cte2") and self.d != "postgresql":
            how = "none"
        if how == "cte":
            c = self.alias()
            b.sql = f"WITH c{c} AS ({b.sql}) SELECT * FROM c{c}"
        elif how == "cte2":  # a CTE named like a table shadows it
            b.sql = f"WITH orders AS ({b.sql}) SELECT * FROM orders"
        elif how == "paren" and not locked:
            b.sql = f"({b.sql})"
        elif how == "union" and not locked:
            other = self.select(1)
            b.sql = f"{b.sql} UNION ALL {other.sql}"
            b.reads |= other.reads
            b.pure &= other.pure
        elif how == "derived":
            b.sql = f"SELECT * FROM ({b.sql}) AS d{self.alias()}"
        return b

    def dml(self) -> Built:
        text, name = self.table()
        sub = self.select(1)
        kind = self.draw(st.sampled_from(["insert", "update", "delete", "insert_select", "cte_dml"]))
        if kind == "cte_dml" and self.d != "postgresql":
            kind = "update"
        if kind == "insert":
            return Built(f"INSERT INTO {text} (id, b) VALUES ({self.ph()}, {self.ph()})", set(), {name}, False)
        if kind == "insert_select":
            return Built(f"INSERT INTO {text} (id) {sub.sql}", sub.reads, {name}, False)
        if kind == "update":
            return Built(f"UPDATE {text} SET b = {self.ph()} WHERE id IN ({sub.sql})", sub.reads | {name}, {name}, False)
        if kind == "delete":
            return Built(f"DELETE FROM {text} WHERE id IN ({sub.sql})", sub.reads | {name}, {name}, False)
        verb = self.draw(st.sampled_from(["UPDATE {t} SET b = 1", "DELETE FROM {t}", "INSERT INTO {t} (id) VALUES (1)"]))
        reads = sub.reads if verb.startswith("INSERT") else sub.reads | {name}  # an INSERT target is not read
        return Built(f"WITH w AS ({verb.format(t=text)} RETURNING id) {sub.sql}", reads, {name}, False)

    def sprinkle(self, sql: str) -> str:
        """Comments between tokens (never inside a quoted name or a placeholder)."""
        parts = sql.split(" ")
        out = []
        for p in parts:
            out.append(p)
            if self.draw(st.integers(0, 12)) == 0:
                out.append(self.draw(st.sampled_from(COMMENTS[self.d])))
        return " ".join(out)


@st.composite
def built_statements(draw: Any, dialect: str) -> Built:
    b = Builder(draw, dialect)
    n = draw(st.integers(1, 3))
    parts = [b.dml() if draw(st.integers(0, 3)) == 0 else b.wrapped() for _ in range(n)]
    reads: set[str] = set().union(*(p.reads for p in parts))
    written = [p.writes for p in parts if p.writes is not None]
    writes = set().union(*written) if written else None
    sql = ";\n".join(b.sprinkle(p.sql) for p in parts)
    if draw(st.booleans()):
        sql = b.draw(st.sampled_from(COMMENTS[dialect])) + " " + sql + ";"
    return Built(sql, reads, writes, all(p.pure for p in parts))


def _check(built: Built, dialect: str) -> None:
    a = analyze(built.sql, dialect, None if dialect in ("postgresql", "sqlite") else "app")
    assert a.reason != "unparseable", built.sql
    assert a.reads - {"@any"} == built.reads, built.sql
    assert a.writes == (None if built.writes is None else frozenset(built.writes)), built.sql
    assert a.pure == built.pure, (built.sql, a.reason)


GEN_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("dialect", DIALECTS)
def test_generated(dialect: str) -> None:
    @GEN_SETTINGS
    @given(built_statements(dialect))
    def run(built: Built) -> None:
        _check(built, dialect)

    run()


# --------------------------------------------------------- real databases

EXPECTED_QUERIES = {
    "product+category": {"product", "category"},
    "orders+items+product": {"orders", "order_item", "product"},
    "category in-list": {"category"},
    "engineer": {"employee", "engineer"},
    "tags any": {"product", "product_tag", "tag"},
    "product_count": {"category", "product"},
    "customer orders joined": {"customer", "orders"},
}


def _orm_queries(s: Session) -> Iterator[str]:
    yield "product+category"
    s.scalars(select(models.Product).join(models.Product.category).where(models.Category.name == "cat 1")).all()
    yield "orders+items+product"
    s.scalars(select(models.Order).options(selectinload(models.Order.items).joinedload(models.OrderItem.product))).all()
    yield "category in-list"
    s.scalars(select(models.Category.id).where(models.Category.id.in_([1, 2, 3]))).all()
    yield "engineer"
    s.scalars(select(models.Engineer).where(models.Engineer.language == "python")).all()
    yield "tags any"
    s.scalars(select(models.Product).where(models.Product.tags.any(models.Tag.label == "tag1"))).all()
    yield "product_count"
    s.scalars(select(models.Category).options(undefer(models.Category.product_count))).all()
    yield "customer orders joined"
    s.scalars(select(models.Customer).options(joinedload(models.Customer.orders)).limit(2)).unique().all()


@pytest.mark.parametrize("db", ["sqlite", "postgresql", "mariadb"])
def test_orm_statements_are_pure_reads(db: str, tmp_path_factory: Any) -> None:
    engine = _make_engine(db_url(db, tmp_path_factory))
    try:
        models.Base.metadata.drop_all(engine)
        models.Base.metadata.create_all(engine)
        with Session(engine) as s:
            models.populate(s)
        dialect = "mariadb" if getattr(engine.dialect, "is_mariadb", False) else engine.dialect.name
        default_schema = engine.url.database if dialect in ("mysql", "mariadb") else None
        seen: list[str] = []

        def on(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            seen.append(statement)

        event.listen(engine, "before_cursor_execute", on)
        try:
            with Session(engine) as s:
                gen = _orm_queries(s)
                for label in gen:
                    seen.clear()
                    next(gen, None)
                    assert seen, label
                    reads: set[str] = set()
                    for statement in seen:
                        a = analyze(statement, dialect, default_schema)
                        assert a.pure, (label, statement, a)
                        assert "@any" not in a.reads, (label, statement)
                        reads |= a.reads
                    assert reads == EXPECTED_QUERIES[label], (label, seen)
                    s.expunge_all()
                # the ORM's own writes are writes of exactly their tables
                seen.clear()
                s.add(models.Tag(id=99, label="new"))
                s.flush()
                s.execute(models.Tag.__table__.delete().where(models.Tag.id == 99))
                s.rollback()
                found = [analyze(x, dialect, default_schema) for x in seen]
                assert [a.writes for a in found if a.writes is not None] == [fs("tag"), fs("tag")]
        finally:
            event.remove(engine, "before_cursor_execute", on)
    finally:
        engine.dispose()


# ------------------------------------------------------------------ speed


def test_speed_report(capsys: Any) -> None:
    """Prints first-time and memoized analyze times of an ORM-style 5-table join."""
    sql = (
        "SELECT orders.id, customer_1.name, product_1.name, category_1.name, "
        "(SELECT count(product.id) FROM product WHERE product.category_id = category_1.id) AS anon_1 "
        "FROM orders JOIN customer AS customer_1 ON customer_1.id = orders.customer_id "
        "LEFT OUTER JOIN order_item AS order_item_1 ON orders.id = order_item_1.order_id "
        "LEFT OUTER JOIN product AS product_1 ON product_1.id = order_item_1.product_id "
        "LEFT OUTER JOIN category AS category_1 ON category_1.id = product_1.category_id "
        "WHERE orders.placed >= %(placed_1)s AND customer_1.id IN "
        "(SELECT customer.id FROM customer WHERE customer.name LIKE %(name_1)s) "
        "ORDER BY orders.id LIMIT %(param_1)s"
    )
    first, memo = [], []
    for i in range(30):
        s = f"{sql} /* {i} */"
        t = time.perf_counter()
        a = analyze(s, "postgresql")
        first.append(time.perf_counter() - t)
        t = time.perf_counter()
        analyze(s, "postgresql")
        memo.append(time.perf_counter() - t)
    assert a.pure and a.reads == fs("orders", "customer", "order_item", "product", "category")
    with capsys.disabled():
        print(f"\nsqlscan: first analyze {statistics.median(first) * 1e6:.0f} µs, "
              f"memoized {statistics.median(memo) * 1e6:.2f} µs")  # fmt: skip
    assert statistics.median(memo) < 50e-6
