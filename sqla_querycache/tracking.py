"""What a statement reads and writes, and the per-connection transaction state.

Everything the cache knows about the database's activity comes from the
statements actually sent (``before_cursor_execute``): ORM flushes, loader
post-queries, bulk statements, Core, ``text()``, ``exec_driver_sql``, DDL.
Each SQL string is analysed once by a real SQL parser (:mod:`.sqlscan`),
memoized per compiled statement (or per string), so the tables an entry
depends on are *observed* from what ran, never predicted from the ORM
statement; names are canonical (schema-qualified only outside the bind's
default schema), so every spelling of a table is one name.
"""

from __future__ import annotations

import contextvars
import re
import threading
import time
import weakref
from collections.abc import Iterable
from typing import Any

from sqlalchemy.sql import visitors
from sqlalchemy.sql.schema import MetaData, Table

from . import sqlscan
from .catalog import Catalog

#: the pseudo-table every entry depends on; a write that cannot be
#: attributed to tables bumps it
ALL_TABLES = "@all"
#: the pseudo-table a read depends on when its tables cannot all be named
#: (unknown functions, unparseable SQL); every write bumps it
ANY_TABLE = "@any"


def default_schema(dialect: Any) -> str | None:
    name = getattr(dialect, "default_schema_name", None)
    if name is None and dialect.name == "sqlite":
        return "main"
    return name


def table_name(table: Any, default: str | None = None) -> str:
    """The version name of a table (``Table``, table clause or str), canonical."""
    if isinstance(table, str):
        schema, _, name = table.rpartition(".")
        return sqlscan.canonical(name, schema or None, default)
    table_schema: str | None = getattr(table, "schema", None)
    return sqlscan.canonical(str(getattr(table, "name", table)), table_schema, default)


def name_variants(name: str) -> set[str]:
    """A name as given and without its schema: every spelling another bind may use."""
    out = {name}
    if "." in name and not name.startswith("@"):
        out.add(name.rpartition(".")[2])
    return out


# --------------------------------------------------------------- analysis

#: compiled statement -> its analysis (SQLAlchemy caches compiled forms, so
#: most executions are one dictionary lookup)
_by_compiled: weakref.WeakKeyDictionary[Any, sqlscan.Analysis] = weakref.WeakKeyDictionary()
_XID = re.compile(r"'((?:[^']|'')*)'")


def scan(conn: Any, context: Any, statement: str) -> sqlscan.Analysis:
    """The analysis of one statement as the connection runs it."""
    compiled = getattr(context, "compiled", None)
    if compiled is not None and not context.execution_options.get("schema_translate_map"):
        try:
            return _by_compiled[compiled]
        except KeyError:
            pass
        except TypeError:
            compiled = None
        found = _analyse(conn.dialect, statement)
        _remember_metadata(compiled)
        if compiled is not None:
            _by_compiled[compiled] = found
        return found
    return _analyse(conn.dialect, statement)


def _analyse(dialect: Any, statement: str) -> sqlscan.Analysis:
    return sqlscan.analyze(statement, dialect.name, default_schema(dialect))


def xid_of(statement: str) -> str:
    m = _XID.search(statement)
    return m.group(1) if m else ""


def scan_sql(dialect: Any, sql: str) -> sqlscan.Analysis:
    """The analysis of a SQL string compiled for ``dialect`` (planning a read)."""
    return _analyse(dialect, sql)


# --------------------------------------------------- recording what ran


class Recorder:
    """What the statements run during one cache miss read."""

    __slots__ = ("again", "hooked", "impure", "parent", "reads", "seen", "wrote")

    def __init__(self, parent: Recorder | None):
        self.parent = parent
        #: the executions recorded (every installed cache reports each one)
        self.seen: list[Any] = []
        self.reads: set[str] = set()
        #: tables read by more than one statement of the load
        self.again: set[str] = set()
        self.impure: str | None = None
        self.wrote = False
        #: a do_orm_execute hook changed one of its post-loads (statement or options)
        self.hooked = False

    def mark_hooked(self) -> None:
        """A hook changed a post-load of this load (and so of every load it is part of)."""
        rec: Recorder | None = self
        while rec is not None:
            rec.hooked = True
            rec = rec.parent

    def add(self, found: sqlscan.Analysis, context: Any = None) -> None:
        if context is not None:
            if any(c is context for c in self.seen):
                return  # the same execution, reported by another installed cache
            self.seen.append(context)
        rec: Recorder | None = self
        while rec is not None:  # a miss inside a miss: the outer one read it too
            if not rec.reads.isdisjoint(found.reads):
                rec.again |= rec.reads & found.reads
            rec.reads |= found.reads
            if found.writes:
                rec.wrote = True
                rec.impure = rec.impure or "writes"
            elif not found.pure and found.txn is None and found.isolation is None:
                rec.impure = rec.impure or (found.reason or "not a pure read")
            rec = rec.parent


_recording: contextvars.ContextVar[Recorder | None] = contextvars.ContextVar(
    "sqla_querycache_recording", default=None
)


def current_recorder() -> Recorder | None:
    return _recording.get()


def start_recording() -> tuple[Recorder, Any]:
    rec = Recorder(_recording.get())
    return rec, _recording.set(rec)


def stop_recording(token: Any) -> None:
    _recording.reset(token)


# ------------------------------------------------- what a write changes

_metadata: weakref.WeakSet[MetaData] = weakref.WeakSet()
_fk_graph: dict[str, frozenset[str]] = {}
_fk_signature: tuple[int, int] = (0, 0)
_fk_lock = threading.Lock()


def _remember_metadata(compiled: Any) -> None:
    element = getattr(compiled, "statement", None)
    if element is None:
        return
    try:
        for node in visitors.iterate(element):
            if isinstance(node, Table) and node.metadata not in _metadata:
                _metadata.add(node.metadata)
    except Exception:
        pass


def remember_metadata(md: MetaData) -> None:
    _metadata.add(md)


def _fk_actions() -> dict[str, frozenset[str]]:
    """referenced table -> tables whose rows its writes change (declared FK actions)."""
    global _fk_graph, _fk_signature
    mds = list(_metadata)
    sig = (len(mds), sum(len(md.tables) for md in mds))
    if sig == _fk_signature:
        return _fk_graph
    with _fk_lock:
        graph: dict[str, set[str]] = {}
        for md in mds:
            for t in md.tables.values():
                for fk in t.foreign_keys:
                    if fk.ondelete or fk.onupdate:
                        try:
                            parent = fk.column.table
                        except Exception:
                            continue
                        graph.setdefault(table_name(parent), set()).add(table_name(t))
        _fk_graph = {k: frozenset(v) for k, v in graph.items()}
        _fk_signature = sig
    return _fk_graph


def cascaded(names: Iterable[str]) -> set[str]:
    """``names`` plus every table changed through declared FK actions, transitively."""
    out = set(names)
    graph = _fk_actions()
    if not graph:
        return out
    todo = [n for n in out if n in graph]
    while todo:
        for child in graph.get(todo.pop(), ()):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _referencing(names: Iterable[str]) -> set[str]:
    """``names`` plus every table with a foreign key to one of them, transitively."""
    out = set(names)
    refs: dict[str, set[str]] = {}
    for md in list(_metadata):
        for t in md.tables.values():
            for fk in t.foreign_keys:
                try:
                    refs.setdefault(table_name(fk.column.table), set()).add(table_name(t))
                except Exception:
                    continue
    todo = list(out)
    while todo:
        for child in refs.get(todo.pop(), ()):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def write_closure(
    conn: Any, names: frozenset[str], truncate_cascade: frozenset[str] = frozenset()
) -> frozenset[str]:
    """Every table whose contents a write of ``names`` changes, on this connection's database.

    Foreign-key actions declared in any MetaData seen, and the database's
    own catalog (:mod:`.catalog`: partitions, FK actions, triggers, views);
    ``TRUNCATE ... CASCADE`` empties every table referencing the truncated ones.
    """
    out = cascaded(names)
    if truncate_cascade:
        out |= _referencing(truncate_cascade)
    try:
        cat = Catalog.for_engine(conn.engine, conn)
        out |= cat.write_closure(out)
        if truncate_cascade:
            out |= cat.write_closure(truncate_cascade, op="truncate")
    except Exception:
        out.add(ALL_TABLES)
    return frozenset(out)


# ----------------------------------------------------------- connections


def _driver_autocommit(dbapi_conn: Any) -> bool:
    """Does the DBAPI connection commit every statement itself?"""
    ac = getattr(dbapi_conn, "autocommit", None)
    if isinstance(ac, bool):  # psycopg, psycopg2, sqlite3 (3.12), adapted asyncpg
        return ac
    get = getattr(dbapi_conn, "get_autocommit", None)  # PyMySQL, mysqlclient
    if get is not None:
        try:
            return bool(get())
        except Exception:
            return False
    if type(dbapi_conn).__module__.startswith("sqlite3"):
        return getattr(dbapi_conn, "isolation_level", "") is None
    return False


def _sqlite3_of(conn: Any) -> Any:
    """The sqlite3 connection under ``conn`` (also under aiosqlite, whose worker
    thread is idle while an event of ours runs) in legacy transaction control, else
    None."""
    if conn.dialect.name != "sqlite":  # after every statement that follows a write
        return None
    try:
        raw = conn.connection.dbapi_connection
    except Exception:
        return None
    if raw is not None and not type(raw).__module__.startswith("sqlite3"):
        # SQLAlchemy's aiosqlite adapter -> aiosqlite.Connection -> sqlite3.Connection
        raw = getattr(getattr(raw, "_connection", None), "_conn", None)
    if raw is None or not type(raw).__module__.startswith("sqlite3"):
        return None
    if isinstance(getattr(raw, "autocommit", None), bool):  # 3.12+ explicit control
        return None
    return raw


def committed_alone(conn: Any) -> bool:
    """After a statement: does the driver say no transaction is open (so writes
    recorded as pending were committed, or rolled back, by the driver itself)?
    sqlite3's legacy transaction control opens a transaction only before INSERT,
    UPDATE, DELETE and REPLACE: any other statement that writes (``WITH ...
    UPDATE``, DDL) while none is open is committed at once, whatever SQLAlchemy's
    ``begin()`` said. Known for sqlite3 (and aiosqlite) only; False elsewhere."""
    raw = _sqlite3_of(conn)
    if raw is None:
        return False
    try:
        return raw.in_transaction is False
    except Exception:
        return False


def is_autocommit(conn: Any) -> bool:
    """Does each statement on ``conn`` commit by itself (AUTOCOMMIT, or the driver's own)?"""
    check = getattr(conn, "_is_autocommit_isolation", None)
    if check is not None and check():
        return True
    if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
        return True
    try:
        dbapi_conn = conn.connection.dbapi_connection
    except Exception:
        return False
    return dbapi_conn is not None and _driver_autocommit(dbapi_conn)


def note_connection_state(ct: ConnTracker, found: sqlscan.Analysis) -> None:
    if found.isolation is not None:
        ct.isolation = found.isolation
    if found.session_state:
        ct.state_changed = True


class ConnTracker:
    """The state of one DBAPI connection (lives in ``Connection.info``)."""

    __slots__ = (
        "commit_began",
        "committing",
        "explicit_begin",
        "hints",
        "in_session",
        "isolation",
        "marked",
        "marks",
        "named",
        "settle_after",
        "state_changed",
        "statements",
        "text_txn",
        "verifies",
        "written",
    )  # fmt: skip

    def __init__(self) -> None:
        self.written: set[str] = set()
        #: begin_write scripts sent ahead when a table was first written:
        #: (ticket, names, monotonic time sent); their replies are awaited at commit
        self.marks: list[tuple[Any, tuple[str, ...], float]] = []
        self.marked: set[str] = set()
        #: tables whose commit began (versions bumped, marked in flight)
        #: and whose post-commit bump has not run yet
        self.committing: list[tuple[tuple[str, ...], bool]] = []
        #: statements run in the current transaction (a snapshot may be held)
        self.statements = 0
        #: a textual BEGIN opened the current transaction
        self.explicit_begin = False
        #: a textual BEGIN on an autocommit connection: writes wait for COMMIT
        self.text_txn = False
        #: the isolation level set by SQL on this connection ("UNKNOWN" if unreadable)
        self.isolation: str | None = None
        #: SQL changed connection state that changes results (search_path, role, ...)
        self.state_changed = False
        #: the post-commit half runs after the current statement
        self.settle_after = False
        #: (Table, encoded primary key) -> old foreign-key values, from the
        #: ORM just before its flush writes the row (:mod:`.rows`)
        self.hints: dict[Any, Any] | None = None
        #: row-level names written per table in this transaction (capped: rows.MAX_NAMED)
        self.named: dict[str, int] | None = None
        #: pre-commit checks of marks sent ahead, awaited before commit() returns
        self.verifies: list[tuple[Any, tuple[str, ...]]] = []
        #: a Session runs this transaction (its after_commit settles it)
        self.in_session = False
        #: when (monotonic) the Session's commit() began, 0.0 outside one: marks
        #: sent since (its flush) are not checked again before the database commit
        self.commit_began = 0.0

    def end_transaction(self) -> None:
        self.in_session = False
        self.commit_began = 0.0
        self.hints = None
        self.named = None
        self.statements = 0
        self.explicit_begin = False
        self.text_txn = False

    def idle(self) -> bool:
        """Nothing pending and no connection state learned: it may be dropped."""
        return not (self.written or self.marks or self.committing or self.state_changed
                    or self.isolation is not None or self.text_txn)  # fmt: skip


class SessionTracker:
    """The connection trackers of a session's current transaction."""

    __slots__ = ("commit_began", "conns")

    def __init__(self) -> None:
        self.conns: list[ConnTracker] = []
        #: when the session's commit() began (0.0: not committing)
        self.commit_began = 0.0

    def committing(self) -> None:
        """The session's commit() begins: its connections (and any it begins
        while flushing) send marks from now on within the commit itself."""
        self.commit_began = now = time.monotonic()
        for ct in self.conns:
            ct.commit_began = now

    def written(self) -> set[str]:
        if not self.conns:
            return set()
        out: set[str] = set()
        for ct in self.conns:
            out |= ct.written
            for names, _ in ct.committing:
                out.update(names)
        return out
