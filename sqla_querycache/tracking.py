"""Which tables a transaction wrote, and the per-transaction write state.

Writes are seen where they all pass: each statement sent on a connection
(``before_cursor_execute``), so ORM flushes, bulk ORM statements, Core DML,
``text()``, ``exec_driver_sql`` and DDL are classified in one place. What a
statement writes is read from its compiled form when there is one, and
otherwise parsed from its SQL conservatively: anything unrecognised writes
``@all`` (every table).
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterable
from typing import Any

from sqlalchemy.orm import Session
from sqlalchemy.sql import visitors
from sqlalchemy.sql.ddl import ExecutableDDLElement
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.schema import Index, Table
from sqlalchemy.sql.selectable import TableClause

#: the pseudo-table every entry depends on; a write that cannot be
#: attributed to tables bumps it
ALL_TABLES = "@all"


def table_name(table: Any) -> str:
    """The version name of a table: its schema-qualified name, case-folded."""
    if isinstance(table, Table):
        return str(table.fullname).lower()
    return str(getattr(table, "name", table)).lower()


# ---------------------------------------------------------- compiled writes


def _dml_tables(stmt: UpdateBase) -> set[str]:
    targets = [stmt.table, *(getattr(stmt, "_extra_froms", ()) or ())]  # multi-table forms
    out: set[str] = set()
    tables: list[Table] = []
    for target in targets:
        for t in visitors.iterate(target):
            if isinstance(t, TableClause):
                out.add(table_name(t))
                if isinstance(t, Table):
                    tables.append(t)
    for t in tables:  # rows the database changes itself (ON DELETE / ON UPDATE actions)
        out |= cascaded(out, t.metadata.tables.values())
    return out


def _ddl_tables(stmt: ExecutableDDLElement) -> set[str]:
    target = getattr(stmt, "element", None)
    if isinstance(target, TableClause):
        return {table_name(target)}
    if isinstance(target, Index) and target.table is not None:
        return {table_name(target.table)}
    return {ALL_TABLES}


#: compiled statement -> the tables it writes (SQLAlchemy caches compiled
#: statements, so most executions are a dictionary lookup here)
_compiled_writes: weakref.WeakKeyDictionary[Any, frozenset[str] | None] = (
    weakref.WeakKeyDictionary()
)


def written_by(context: Any, statement: str) -> frozenset[str] | None:
    """Tables one cursor execution writes; ``None`` when it writes nothing."""
    compiled = getattr(context, "compiled", None)
    if compiled is None:
        return parse_sql_writes(statement)
    try:
        return _compiled_writes[compiled]
    except KeyError:
        pass
    except TypeError:  # not weak-referenceable
        return _classify(context, compiled, statement)
    found = _compiled_writes[compiled] = _classify(context, compiled, statement)
    return found


def _classify(context: Any, compiled: Any, statement: str) -> frozenset[str] | None:
    element = getattr(compiled, "statement", None)
    if element is None or isinstance(element, TextClause):
        return parse_sql_writes(statement)
    if isinstance(element, UpdateBase):
        return frozenset(_dml_tables(element))
    if isinstance(element, ExecutableDDLElement):
        return frozenset(_ddl_tables(element))
    if getattr(context, "isddl", False):
        return frozenset({ALL_TABLES})
    return None  # a compiled SELECT


# -------------------------------------------------------------- textual SQL

_STRINGS = re.compile(r"'(?:[^']|'')*'|--[^\n]*|/\*.*?\*/", re.S)
_READ_ONLY_START = re.compile(
    r"^\s*(select|show|explain|describe|desc|values|begin|start\s+transaction|commit|rollback"
    r"|savepoint|release|set|pragma\s+\w+\s*(\(\s*\w*\s*\))?\s*;?\s*$)\b",
    re.I,
)
_WRITE_WORDS = re.compile(
    r"\b(insert|update|delete|merge|replace|upsert|truncate|create|drop|alter|rename|call|exec"
    r"|execute|do|copy|load|grant|revoke|into|vacuum|reindex|lock|import|handler)\b",
    re.I,
)
_NAME = r"((?:[`\"\[]?[\w$]+[`\"\]]?\s*\.\s*)?[`\"\[]?[\w$]+[`\"\]]?)"
_TARGETS = [
    re.compile(
        r"^\s*insert\s+(?:or\s+\w+\s+|ignore\s+|low_priority\s+|delayed\s+|high_priority\s+)*"
        r"into\s+" + _NAME + r"(?=[\s(]|$)",
        re.I,
    ),
    re.compile(
        r"^\s*replace\s+(?:low_priority\s+|delayed\s+)*into\s+" + _NAME + r"(?=[\s(]|$)", re.I
    ),
    re.compile(
        r"^\s*update\s+(?:or\s+\w+\s+|only\s+|low_priority\s+|ignore\s+)*"
        + _NAME
        + r"\s+(?:as\s+\w+\s+|\w+\s+)?set\b",
        re.I,
    ),
    re.compile(
        r"^\s*delete\s+(?:low_priority\s+|quick\s+|ignore\s+)*from\s+(?:only\s+)?"
        + _NAME
        + r"(?:\s+(?:as\s+)?\w+)?\s*(?:where\b|returning\b|;|$)",
        re.I,
    ),
    re.compile(
        r"^\s*truncate\s+(?:table\s+)?(?:only\s+)?"
        + _NAME
        + r"\s*(?:restart\s+identity\s*|continue\s+identity\s*|cascade\s*|restrict\s*)*;?\s*$",
        re.I,
    ),
    re.compile(r"^\s*alter\s+table\s+(?:if\s+exists\s+)?(?:only\s+)?" + _NAME, re.I),
    re.compile(
        r"^\s*drop\s+table\s+(?:if\s+exists\s+)?" + _NAME + r"\s*(?:cascade|restrict)?\s*;?\s*$",
        re.I,
    ),
    re.compile(
        r"^\s*create\s+(?:temporary\s+|temp\s+)?table\s+(?:if\s+not\s+exists\s+)?"
        + _NAME
        + r"\s*\(",
        re.I,
    ),
    re.compile(r"^\s*(?:create|drop)\s+(?:unique\s+)?index\b.*?\bon\s+" + _NAME, re.I | re.S),
]


def _clean_name(raw: str) -> str:
    return re.sub(r"[`\"\[\]\s]", "", raw).lower()


def parse_sql_writes(sql: str) -> frozenset[str] | None:
    """Tables a raw SQL string writes: ``None`` if it only reads, ``{"@all"}`` if unsure."""
    body = _STRINGS.sub(" ", sql)
    statements = [s for s in body.split(";") if s.strip()]
    if not statements:
        return None
    out: set[str] = set()
    for stmt in statements:
        if _READ_ONLY_START.match(stmt) and not _WRITE_WORDS.search(stmt):
            continue
        for pattern in _TARGETS:
            m = pattern.match(stmt)
            if m:
                out.add(_clean_name(m.group(1)))
                break
        else:
            if _WRITE_WORDS.search(stmt) or not _READ_ONLY_START.match(stmt):
                return frozenset({ALL_TABLES})
    return frozenset(out) if out else None


# ---------------------------------------------------------------- sessions


def pending_tables(session: Session) -> set[str]:
    """Tables the session's unflushed changes would write at autoflush."""
    out: set[str] = set()
    seen = set()
    for states in (session._new.keys(), session.identity_map._modified, session._deleted.keys()):
        for state in states:
            mapper = state.mapper
            if mapper in seen:
                continue
            seen.add(mapper)
            out.update(table_name(t) for t in mapper.tables)
            for rel in mapper.relationships:
                if rel.secondary is not None:
                    out.update(
                        table_name(t)
                        for t in visitors.iterate(rel.secondary)
                        if isinstance(t, TableClause)
                    )
    return out


def cascaded(tables: Iterable[str], metadata_tables: Iterable[Table]) -> set[str]:
    """Add tables whose rows the database itself changes (ON DELETE/UPDATE actions)."""
    out = set(tables)
    if not out:
        return out
    if ALL_TABLES in out:
        return out
    changed = True
    all_tables = list(metadata_tables)
    while changed:
        changed = False
        for t in all_tables:
            name = table_name(t)
            if name in out:
                continue
            for fk in t.foreign_keys:
                if (fk.ondelete or fk.onupdate) and table_name(fk.column.table) in out:
                    out.add(name)
                    changed = True
                    break
    return out


class ConnTracker:
    """Write state of one DBAPI connection's current transaction."""

    __slots__ = ("committing", "marked", "marks", "written")

    def __init__(self) -> None:
        self.written: set[str] = set()
        #: begin_write scripts sent ahead when a table was first written:
        #: (ticket, names, monotonic time sent); their replies are awaited at commit
        self.marks: list[tuple[Any, tuple[str, ...], float]] = []
        self.marked: set[str] = set()
        #: tables whose commit began (versions bumped, marked in flight)
        #: and whose post-commit bump has not run yet
        self.committing: list[tuple[tuple[str, ...], bool]] = []


class SessionTracker:
    """The connection trackers of a session's current transaction."""

    __slots__ = ("conns",)

    def __init__(self) -> None:
        self.conns: list[ConnTracker] = []

    def written(self) -> set[str]:
        if not self.conns:
            return set()
        out: set[str] = set()
        for ct in self.conns:
            out |= ct.written
            for names, _ in ct.committing:
                out.update(names)
        return out
