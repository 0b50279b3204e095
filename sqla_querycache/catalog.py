"""What the database's own catalog says a write changes and a read depends on.

The cache keeps one version per table. The SQL text of a statement names the
tables it writes or reads, but the database may do more than the text says:

* a write to a PostgreSQL partition changes what its partitioned parent
  returns, and a write through the parent changes a partition (the same for
  classic ``INHERITS`` trees);
* foreign keys declared in the database with ``ON DELETE/UPDATE CASCADE``,
  ``SET NULL`` or ``SET DEFAULT`` change other tables, transitively, whether or
  not any SQLAlchemy ``MetaData`` knows about them;
* a trigger (or a PostgreSQL rewrite rule) may write anything;
* a write through an auto-updatable view writes its base tables;
* a view's rows change whenever one of its base tables changes (a materialized
  view's only change on ``REFRESH``, which is a write to it).

This module reads the catalog once per engine (lazily, on a connection of its
own, never inside the caller's transaction, with a short statement timeout)
and answers two questions with dictionary lookups and memoized closures:

``catalog.write_closure(names)``
    every table whose contents change when ``names`` are written, plus
    ``"@all"`` when something unknowable (a trigger, a rule, a view whose base
    tables are unknown) may write anything. It also names every view that
    reads a changed table, so that a result stored as depending on a view's
    name alone is still invalidated.
``catalog.read_closure(names)``
    every table a read of ``names`` depends on: a view's base tables
    (recursively), a parent's partitions / inheriting tables, and ``"@any"``
    for a view whose dependencies cannot be determined.

Names are canonical strings: lower-case, ``schema.table`` when the schema is
not the engine's default schema (PostgreSQL ``current_schema()``, MariaDB
``DATABASE()``, SQLite ``main``), else just ``table``.

Loading never raises: a failure is logged once and yields a *degraded*
catalog (``write_closure`` adds ``"@all"``, ``read_closure`` adds nothing),
retried after :attr:`Catalog.retry_after` seconds. A catalog older than
:attr:`Catalog.max_age` is reloaded in a background thread while the old one
keeps answering; :meth:`Catalog.invalidate` (call it when DDL runs, and again
once the transaction that ran it has committed) makes the next call reload.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy.engine import Engine

from . import sqlscan

__all__ = ["ALL", "ANY", "OPERATIONS", "Catalog", "canonical_name"]

log = logging.getLogger(__name__)

#: in a write closure: the write may have changed any table
ALL = "@all"
#: in a read closure: the result depends on something the catalog cannot name
ANY = "@any"
#: the ``op=`` values :meth:`Catalog.write_closure` understands (``None``: any)
OPERATIONS = frozenset({"insert", "update", "delete", "truncate"})

_ACTIONS = {  # referential actions that change the referencing table
    "cascade": "cascade",
    "set null": "set null",
    "set default": "set default",
    "c": "cascade",  # pg_constraint.confdeltype / confupdtype
    "n": "set null",
    "d": "set default",
}

Rows = list[tuple[Any, ...]]
Runner = Callable[[str], Rows]


def canonical_name(name: str, default_schema: str | None) -> str:
    """``name`` (possibly quoted, possibly ``schema.table``) as the cache spells it:
    :func:`.sqlscan.canonical`, the one rule for every name the cache compares."""
    raw = re.sub(r"[`\"\[\]\s]", "", str(name))
    schema, _, table = raw.rpartition(".")
    return sqlscan.canonical(table, schema or None, default_schema)


def _spelled(name: str) -> str:
    """The caller's own spelling, unquoted and lower-case (kept next to the
    canonical name: a caller may key reads by ``public.t``)."""
    return re.sub(r"[`\"\[\]\s]", "", str(name)).lower()


def _qualify(schema: str, table: str, default_schema: str) -> str:
    return sqlscan.canonical(str(table), str(schema), default_schema)


# ------------------------------------------------------------ SQL scanning

_TOKEN = re.compile(
    r"""
      (?P<skip> --[^\n]*  |  /\*.*?\*/  |  '(?:[^']|'')*'  |  \s+ )
    | (?P<ident> "(?:[^"]|"")*"  |  `(?:[^`]|``)*`  |  \[[^\]]*\]  |  [A-Za-z_][A-Za-z0-9_$]* )
    | (?P<dot> \. )
    | (?P<paren> \( )
    | (?P<other> . )
    """,
    re.X | re.S,
)


def _identifier_chains(sql: str) -> list[tuple[list[str], bool]]:
    """Dotted identifier chains in ``sql`` (string literals and comments
    skipped), each with whether a ``(`` follows it (a function call)."""
    chains: list[tuple[list[str], bool]] = []
    current: list[str] = []
    expect_ident = False
    for m in _TOKEN.finditer(sql):
        kind = m.lastgroup
        if kind == "skip":
            continue
        text = m.group()
        if kind == "ident":
            if current and not expect_ident:
                chains.append((current, False))
                current = []
            if text[0] in "\"`[":
                text = text[1:-1].replace(text[0] * 2, text[0]) if text[0] != "[" else text[1:-1]
            current.append(text.lower())
            expect_ident = False
        elif kind == "dot" and current:
            expect_ident = True
        else:
            if current:
                chains.append((current, kind == "paren"))
            current, expect_ident = [], False
    if current:
        chains.append((current, False))
    return chains


def _sqlite_trigger_ops(sql: str | None) -> set[str]:
    """The events of a ``CREATE TRIGGER`` statement; all of them when unsure."""
    if not sql:
        return set(OPERATIONS)
    words = [word for chain, _ in _identifier_chains(sql) for word in chain]
    try:
        header = words[: words.index("on")]
    except ValueError:
        return set(OPERATIONS)
    ops = {w for w in header if w in ("insert", "update", "delete")}
    return ops or set(OPERATIONS)


# ---------------------------------------------------------------- facts


class _Facts:
    """What a loader found, already in canonical names."""

    def __init__(self, default_schema: str) -> None:
        self.default_schema = default_schema
        self.kinds: dict[str, str] = {}  # table, partitioned, view, matview, foreign, virtual
        self.parents: dict[str, set[str]] = {}  # child -> parents (pg_inherits)
        self.fks: set[tuple[str, str, str, str]] = set()  # (child, parent, on_delete, on_update)
        self.triggers: dict[str, set[str]] = {}  # table or view -> ops
        self.rules: dict[str, set[str]] = {}  # PostgreSQL non-SELECT rules -> ops
        self.view_deps: dict[str, set[str] | None] = {}  # None: unknown
        self.companions: dict[str, set[str]] = {}  # written along (SQLite FTS shadow tables)
        self.schemas: set[str] = set()
        self.statements = 0

    def add(self, schema: str, name: str, kind: str) -> str:
        canon = _qualify(schema, name, self.default_schema)
        self.kinds.setdefault(canon, kind)
        self.schemas.add(str(schema).lower())
        return canon

    def fk(self, child: str, parent: str, on_delete: str | None, on_update: str | None) -> None:
        self.fks.add((child, parent, _action(on_delete), _action(on_update)))


def _action(value: str | None) -> str:
    return _ACTIONS.get(str(value or "").strip().lower(), "no action")


# --------------------------------------------------------------- loaders

_PG_OPS = ((4, "insert"), (8, "delete"), (16, "update"), (32, "truncate"))
_PG_RULE_OPS = {"2": "update", "3": "insert", "4": "delete"}
_PG_KINDS = {"r": "table", "p": "partitioned", "v": "view", "m": "matview", "f": "foreign"}


def _char(value: Any) -> str:
    """A PostgreSQL ``"char"`` column's value: asyncpg returns it as bytes."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("ascii")
    return str(value)


def _load_postgresql(run: Runner, default_schema: str) -> _Facts:
    f = _Facts(default_schema)
    rels: dict[int, str] = {}
    for oid, schema, name, kind in run(
        "SELECT c.oid, n.nspname, c.relname, c.relkind FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') "
        "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "AND n.nspname !~ '^pg_(toast|temp_)'"
    ):
        rels[int(oid)] = f.add(schema, name, _PG_KINDS[_char(kind)])
    for child, parent in run("SELECT inhrelid, inhparent FROM pg_inherits"):
        if int(child) in rels and int(parent) in rels:  # skips partitioned indexes
            f.parents.setdefault(rels[int(child)], set()).add(rels[int(parent)])
    for child, parent, on_delete, on_update in run(
        "SELECT conrelid, confrelid, confdeltype, confupdtype FROM pg_constraint "
        "WHERE contype = 'f'"
    ):
        if int(child) in rels and int(parent) in rels:
            f.fk(rels[int(child)], rels[int(parent)], _char(on_delete), _char(on_update))
    for rel, tgtype in run("SELECT tgrelid, tgtype FROM pg_trigger WHERE NOT tgisinternal"):
        ops = {op for bit, op in _PG_OPS if int(tgtype) & bit} or set(OPERATIONS)
        if int(rel) in rels:
            f.triggers.setdefault(rels[int(rel)], set()).update(ops)
    for rel, ev_type in run("SELECT ev_class, ev_type FROM pg_rewrite WHERE ev_type <> '1'"):
        if int(rel) in rels:
            op = _PG_RULE_OPS.get(_char(ev_type))
            f.rules.setdefault(rels[int(rel)], set()).update({op} if op else OPERATIONS)
    views = {oid for oid, canon in rels.items() if f.kinds[canon] == "view"}
    deps: dict[str, set[str] | None] = {rels[oid]: set() for oid in views}
    for view, ref in run(
        "SELECT DISTINCT r.ev_class, d.refobjid FROM pg_rewrite r "
        "JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid "
        "AND d.refclassid = 'pg_class'::regclass "
        "WHERE r.ev_type = '1' AND d.refobjid <> r.ev_class"
    ):
        if int(view) not in views:
            continue
        canon = rels[int(view)]
        target = rels.get(int(ref))
        current = deps.get(canon)
        if target is None:  # a system catalog, a sequence: nothing a write bumps
            deps[canon] = None
        elif current is not None:
            current.add(target)
    for view, definition in run(  # pinned system catalogs have no pg_depend rows
        "SELECT c.oid, pg_get_viewdef(c.oid) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'v' "
        "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "AND n.nspname !~ '^pg_(toast|temp_)'"
    ):
        if int(view) in views and _names_system_relation(str(definition or ""), f):
            deps[rels[int(view)]] = None
    for (view,) in run(  # a view calling a user function may read any table
        "SELECT DISTINCT r.ev_class FROM pg_rewrite r "
        "JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid "
        "AND d.refclassid = 'pg_proc'::regclass "
        "JOIN pg_proc p ON p.oid = d.refobjid "
        "JOIN pg_namespace pn ON pn.oid = p.pronamespace "
        "JOIN pg_language l ON l.oid = p.prolang "
        "WHERE r.ev_type = '1' AND pn.nspname NOT IN ('pg_catalog', 'information_schema') "
        "AND l.lanname NOT IN ('internal', 'c')"
    ):
        if int(view) in views:
            deps[rels[int(view)]] = None
    f.view_deps = deps
    return f


def _names_system_relation(sql: str, f: _Facts) -> bool:
    """Whether a PostgreSQL view's text reads a system catalog or view
    (``pg_class``, ``pg_stat_activity``, ``information_schema.tables``): rows
    no tracked write changes."""
    for chain, called in _identifier_chains(sql):
        if called:
            continue
        if chain[0] in ("pg_catalog", "information_schema") and len(chain) >= 2:
            return True
        if chain[0].startswith("pg_") and not any(
            k.rpartition(".")[2] == chain[0] for k in f.kinds
        ):
            return True
    return False


_MY_SYSTEM = ("information_schema", "mysql", "performance_schema", "sys")


def _load_mysql(run: Runner, default_schema: str) -> _Facts:
    f = _Facts(default_schema)
    system = ", ".join(f"'{s}'" for s in _MY_SYSTEM)
    has_usage = False
    for schema, name, kind in run(
        "SELECT TABLE_SCHEMA, TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES "
        f"WHERE TABLE_SCHEMA NOT IN ({system}) OR "
        "(TABLE_SCHEMA = 'information_schema' AND TABLE_NAME = 'VIEW_TABLE_USAGE')"
    ):
        if str(schema).lower() == "information_schema":
            has_usage = True
            continue
        f.add(schema, name, "view" if str(kind).upper() == "VIEW" else "table")
    for schema, child, ref_schema, parent, on_delete, on_update in run(
        "SELECT CONSTRAINT_SCHEMA, TABLE_NAME, UNIQUE_CONSTRAINT_SCHEMA, REFERENCED_TABLE_NAME, "
        "DELETE_RULE, UPDATE_RULE FROM information_schema.REFERENTIAL_CONSTRAINTS "
        f"WHERE CONSTRAINT_SCHEMA NOT IN ({system})"
    ):
        f.fk(_qualify(schema, child, default_schema), _qualify(ref_schema, parent, default_schema),
             on_delete, on_update)  # fmt: skip
    for schema, table, event in run(
        "SELECT EVENT_OBJECT_SCHEMA, EVENT_OBJECT_TABLE, EVENT_MANIPULATION "
        f"FROM information_schema.TRIGGERS WHERE EVENT_OBJECT_SCHEMA NOT IN ({system})"
    ):
        op = str(event).lower()
        f.triggers.setdefault(_qualify(schema, table, default_schema), set()).update(
            {op} if op in OPERATIONS else OPERATIONS
        )
    functions = {
        (str(s).lower(), str(n).lower())
        for s, n in run(
            "SELECT ROUTINE_SCHEMA, ROUTINE_NAME FROM information_schema.ROUTINES "
            f"WHERE ROUTINE_TYPE = 'FUNCTION' AND ROUTINE_SCHEMA NOT IN ({system})"
        )
    }
    views: dict[str, tuple[str, str | None]] = {}
    for schema, name, definition in run(
        "SELECT TABLE_SCHEMA, TABLE_NAME, VIEW_DEFINITION FROM information_schema.VIEWS "
        f"WHERE TABLE_SCHEMA NOT IN ({system})"
    ):
        views[_qualify(schema, name, default_schema)] = (str(schema).lower(), definition)
    usage: dict[str, set[str]] = {}
    if has_usage:  # MySQL 8.0.13+
        for vs, vn, ts, tn in run(
            "SELECT VIEW_SCHEMA, VIEW_NAME, TABLE_SCHEMA, TABLE_NAME "
            f"FROM information_schema.VIEW_TABLE_USAGE WHERE VIEW_SCHEMA NOT IN ({system})"
        ):
            usage.setdefault(_qualify(vs, vn, default_schema), set()).add(
                _qualify(ts, tn, default_schema)
            )
    for canon, (schema, definition) in views.items():
        deps = _text_dependencies(definition, [schema], f, functions)
        if deps is not None and has_usage:
            deps |= usage.get(canon, set())
        f.view_deps[canon] = deps
    return f


def _text_dependencies(
    sql: str | None,
    unqualified_schemas: Sequence[str],
    f: _Facts,
    functions: set[tuple[str, str]] = frozenset(),  # type: ignore[assignment]
) -> set[str] | None:
    """Every catalog relation a view's SQL text could name: a superset of its
    dependencies (an alias or a column spelled like a table only adds one).
    ``None`` when the text is missing or calls a user function."""
    if not sql or not str(sql).strip():
        return None
    out: set[str] = set()
    for chain, called in _identifier_chains(str(sql)):
        candidates: list[tuple[str, str]] = [(s, chain[0]) for s in unqualified_schemas]
        if len(chain) >= 2:
            candidates.append((chain[0], chain[1]))
        if called and len(chain) <= 2:
            target = (chain[0], chain[1]) if len(chain) == 2 else None
            if target in functions or any((s, chain[0]) in functions for s in unqualified_schemas):
                return None
        for schema, name in candidates:
            canon = _qualify(schema, name, f.default_schema)
            if canon in f.kinds:
                out.add(canon)
    return out


def _load_sqlite(run: Runner, include_temp: bool) -> _Facts:
    f = _Facts("main")
    schemas = [str(row[1]) for row in run("PRAGMA database_list")]
    if not include_temp:
        schemas = [s for s in schemas if s.lower() != "temp"]
    masters: dict[str, Rows] = {}
    for schema in schemas:
        quoted = schema.replace('"', '""')
        rows = run(f'SELECT type, name, tbl_name, sql FROM "{quoted}".sqlite_master')
        masters[schema] = rows
        for kind, name, _tbl, sql in rows:
            if kind == "table" and not str(name).lower().startswith("sqlite_"):
                virtual = bool(re.match(r"\s*create\s+virtual\s", str(sql or ""), re.I))
                f.add(schema, name, "virtual" if virtual else "table")
            elif kind == "view":
                f.add(schema, name, "view")
    order = ["temp", "main", *[s.lower() for s in schemas if s.lower() not in ("temp", "main")]]
    for schema in schemas:
        ident, literal = schema.replace('"', '""'), schema.replace("'", "''")
        for child, parent, on_update, on_delete in run(
            f'SELECT m.name, k."table", k.on_update, k.on_delete '
            f'FROM "{ident}".sqlite_master m, '
            f"pragma_foreign_key_list(m.name, '{literal}') k WHERE m.type = 'table'"
        ):
            # the parent of a foreign key lives in the child's database
            f.fk(_qualify(schema, child, "main"), _qualify(schema, parent, "main"),
                 on_delete, on_update)  # fmt: skip
        for kind, name, tbl, sql in masters[schema]:
            if kind == "trigger":
                ops = _sqlite_trigger_ops(sql)
                # a TEMP trigger may sit on a table of any database: all that name it
                targets = [schema.lower()] if schema.lower() != "temp" else order
                for s in targets:
                    canon = _qualify(s, tbl, "main")
                    if canon in f.kinds or s == schema.lower():
                        f.triggers.setdefault(canon, set()).update(ops)
            elif kind == "view":
                # a view of a database names objects of that database only; a TEMP one any
                scope = [schema.lower()] if schema.lower() != "temp" else order
                f.view_deps[_qualify(schema, name, "main")] = _text_dependencies(sql, scope, f)
    for canon, kind in list(f.kinds.items()):
        if kind == "virtual":  # FTS/R*Tree shadow tables are written along
            prefix = f"{canon}_"
            f.companions[canon] = {c for c in f.kinds if c.startswith(prefix)}
    return f


# --------------------------------------------------------------- catalog


class Catalog:
    """An immutable snapshot of one database's catalog, with memoized
    closures. Get one with :meth:`for_engine` (memoized, reloaded by age) or
    :meth:`load` (on a connection you hold)."""

    #: seconds a loaded catalog is used before a background reload
    max_age: float = 60.0
    #: seconds after which a failed (degraded) load is retried
    retry_after: float = 5.0
    #: seconds a caller waits for a load before getting a degraded catalog
    load_wait: float = 2.0
    #: per-statement timeout of the catalog queries (PostgreSQL, MariaDB/MySQL)
    statement_timeout: float = 5.0
    #: memoized closures kept per catalog before the memo is cleared
    memo_size: int = 8192

    def __init__(
        self,
        facts: _Facts | None,
        *,
        dialect: str = "",
        degraded: bool = False,
        supported: bool = True,
        error: str | None = None,
        load_seconds: float = 0.0,
    ) -> None:
        self.dialect = dialect
        self.degraded = degraded
        self.supported = supported
        self.error = error
        self.load_seconds = load_seconds
        self.loaded_at = time.monotonic()
        self._slot: _Slot | None = None
        f = facts or _Facts("")
        self.default_schema = f.default_schema
        self.statements = f.statements
        kinds = f.kinds
        self.tables = frozenset(c for c, k in kinds.items() if k not in ("view", "matview"))
        self.views = frozenset(c for c, k in kinds.items() if k == "view")
        self.materialized_views = frozenset(c for c, k in kinds.items() if k == "matview")
        self.partitioned = frozenset(c for c, k in kinds.items() if k == "partitioned")
        self.tables_with_triggers = frozenset(f.triggers)
        self.tables_with_rules = frozenset(f.rules)
        self.views_unknown = frozenset(v for v, d in f.view_deps.items() if d is None)
        self.foreign_key_actions = frozenset(
            fk for fk in f.fks if fk[2] != "no action" or fk[3] != "no action"
        )
        self.schemas = frozenset(f.schemas)
        self._kinds = kinds
        self._triggers = {k: frozenset(v) for k, v in f.triggers.items()}
        self._rules = {k: frozenset(v) for k, v in f.rules.items()}
        self._companions = f.companions
        self._view_deps = f.view_deps
        self._parents: dict[str, set[str]] = f.parents
        self._children: dict[str, set[str]] = {}
        for child, parents in f.parents.items():
            for parent in parents:
                self._children.setdefault(parent, set()).add(child)
        self.inheritance = {p: frozenset(c) for p, c in self._children.items()}
        self._referencing: dict[str, list[tuple[str, str, str]]] = {}
        for child, parent, on_delete, on_update in f.fks:
            self._referencing.setdefault(parent, []).append((child, on_delete, on_update))
        self._dependents: dict[str, set[str]] = {}  # relation -> views reading it directly
        for view, deps in f.view_deps.items():
            for dep in deps or ():
                self._dependents.setdefault(dep, set()).add(view)
        self._bare: dict[str, list[str]] = {}  # unqualified name -> every schema's relation
        for canon in kinds:
            self._bare.setdefault(canon.rpartition(".")[2], []).append(canon)
        self._write_memo: dict[tuple[Any, str | None], frozenset[str]] = {}
        self._read_memo: dict[Any, frozenset[str]] = {}

    def __repr__(self) -> str:
        state = "degraded" if self.degraded else ("unsupported" if not self.supported else "ok")
        return (
            f"<Catalog {self.dialect} {state} tables={len(self.tables)} views={len(self.views)} "
            f"triggers={len(self.tables_with_triggers)} fk_actions={len(self.foreign_key_actions)} "
            f"load={self.load_seconds * 1000:.1f}ms>"
        )

    # ------------------------------------------------------------ answers

    def _resolve(self, name: str) -> list[str]:
        """The catalog relations ``name`` may denote: the qualified one, or for
        an unqualified name every schema's relation of that name (search_path,
        SQLite's temp-main-attached order: over-approximate, never miss)."""
        canon = canonical_name(name, self.default_schema)
        if "." in canon:
            return [canon] if canon in self._kinds else []
        if self.dialect.startswith("mysql") or self.dialect == "mariadb":
            return [canon] if canon in self._kinds else []  # no search path
        return self._bare.get(canon, [])

    def write_closure(self, names: Iterable[str], op: str | None = None) -> frozenset[str]:
        """Every table (and view) whose contents change when ``names`` are
        written with ``op`` (``"insert"``, ``"update"``, ``"delete"``,
        ``"truncate"``; ``None``: any of them), plus ``"@all"`` when a trigger,
        a rule or an unknown view may write anything."""
        key = names if isinstance(names, (frozenset, str)) else frozenset(names)
        if isinstance(key, str):
            key = frozenset((key,))
        memo = self._write_memo.get((key, op))
        if memo is not None:
            return memo
        if op is not None and op not in OPERATIONS:
            raise ValueError(f"op must be one of {sorted(OPERATIONS)} or None, not {op!r}")
        out = {canonical_name(n, self.default_schema) for n in key} | {_spelled(n) for n in key}
        if self.degraded:
            out.add(ALL)
        else:
            for name in key:
                out |= self._write_one(name, op)
        result = frozenset(out)
        self._remember(self._write_memo, (key, op), result)
        return result

    def _write_one(self, name: str, op: str | None) -> frozenset[str]:
        canon = canonical_name(name, self.default_schema)
        memo = self._write_memo.get((canon, op))
        if memo is not None:
            return memo
        out: set[str] = {canon}
        seen: set[tuple[str, str | None]] = set()
        work: list[tuple[str, str | None]] = [(r, op) for r in self._resolve(canon)]
        while work:
            rel, rel_op = work.pop()
            if (rel, rel_op) in seen:
                continue
            seen.add((rel, rel_op))
            out.add(rel)
            for fired in (self._triggers.get(rel), self._rules.get(rel)):
                if fired and (rel_op is None or rel_op in fired):
                    out.add(ALL)
            kind = self._kinds.get(rel)
            if kind == "view":  # written through: its base tables (auto-updatable views)
                deps = self._view_deps.get(rel)
                if deps is None:
                    out.add(ALL)
                else:
                    work.extend((d, rel_op) for d in deps)
            out.update(self._companions.get(rel, ()))
            # a partition's / inheriting table's rows are part of every ancestor's;
            # a write through a parent reaches every descendant
            out |= self._walk(rel, self._parents)
            work.extend((d, rel_op) for d in self._walk(rel, self._children))
            for child, on_delete, on_update in self._referencing.get(rel, ()):
                if rel_op == "truncate":  # TRUNCATE ... CASCADE empties every referencing table
                    work.append((child, "truncate"))
                    continue
                if rel_op in (None, "delete") and on_delete != "no action":
                    work.append((child, "delete" if on_delete == "cascade" else "update"))
                if rel_op in (None, "update") and on_update != "no action":
                    work.append((child, "update"))
        # every view reading a changed relation changes too (not materialized views)
        pending = [r for r in out if r in self._dependents]
        while pending:
            for view in self._dependents.get(pending.pop(), ()):
                if view not in out:
                    out.add(view)
                    pending.append(view)
        out |= self.views_unknown
        result = frozenset(out)
        self._remember(self._write_memo, (canon, op), result)
        return result

    @staticmethod
    def _walk(rel: str, links: dict[str, set[str]]) -> set[str]:
        """Every node reachable from ``rel`` through ``links`` (pg_inherits)."""
        out: set[str] = set()
        stack = list(links.get(rel, ()))
        while stack:
            node = stack.pop()
            if node not in out:
                out.add(node)
                stack.extend(links.get(node, ()))
        return out

    def read_closure(self, names: Iterable[str]) -> frozenset[str]:
        """Every table a read of ``names`` depends on: the names, a view's base
        tables (recursively; ``"@any"`` when unknown), a parent's partitions
        and inheriting tables. A materialized view depends only on itself."""
        key = names if isinstance(names, (frozenset, str)) else frozenset(names)
        if isinstance(key, str):
            key = frozenset((key,))
        memo = self._read_memo.get(key)
        if memo is not None:
            return memo
        out = {canonical_name(n, self.default_schema) for n in key} | {_spelled(n) for n in key}
        work = [r for n in key for r in self._resolve(n)]
        seen: set[str] = set()
        while work:
            rel = work.pop()
            if rel in seen:
                continue
            seen.add(rel)
            out.add(rel)
            if self._kinds.get(rel) == "view":
                deps = self._view_deps.get(rel)
                if deps is None:
                    out.add(ANY)
                else:
                    work.extend(deps)
            work.extend(self._children.get(rel, ()))
        result = frozenset(out)
        self._remember(self._read_memo, key, result)
        return result

    def _remember(self, memo: dict[Any, frozenset[str]], key: Any, value: frozenset[str]) -> None:
        if len(memo) >= self.memo_size:
            memo.clear()
        memo[key] = value

    def invalidate(self) -> None:
        """The schema changed (DDL): the next :meth:`for_engine` call reloads."""
        if self._slot is not None:
            self._slot.invalidate()

    # ------------------------------------------------------------ loading

    @classmethod
    def degraded_catalog(cls, dialect: str = "", error: str | None = None,
                         default_schema: str = "") -> Catalog:  # fmt: skip
        """A catalog that knows nothing: every write may change every table."""
        return cls(_Facts(default_schema), dialect=dialect, degraded=True, error=error)

    @classmethod
    def load(cls, connection: Any, *, include_temp: bool | None = None) -> Catalog:
        """Introspect on ``connection`` (an SQLAlchemy ``Connection``) now.

        SQLite is read through the DBAPI connection directly (no transaction
        is begun, no event fires), so this is the way for in-memory databases
        and it sees the connection's TEMP objects and attached databases.
        On PostgreSQL and MariaDB the queries run inside a savepoint when the
        connection is in a transaction (rolled back: the caller's transaction
        is left as it was). Never raises: a failure gives a degraded catalog.
        """
        dialect = connection.dialect
        start = time.perf_counter()
        try:
            temp = True if include_temp is None else include_temp
            facts = _load_with(connection, dialect, cls.statement_timeout, include_temp=temp)
        except _Unsupported:
            return cls(None, dialect=dialect.name, supported=False)
        except Exception as err:
            log.warning("sqla_querycache: catalog load failed (%s): %s", dialect.name, err)
            return cls.degraded_catalog(dialect.name, f"{type(err).__name__}: {err}")
        return cls(facts, dialect=dialect.name, load_seconds=time.perf_counter() - start)

    @classmethod
    def for_engine(cls, engine: Any, connection: Any = None, *,
                   max_age: float | None = None) -> Catalog:  # fmt: skip
        """The catalog of ``engine``, loaded once and memoized per engine.

        A fresh catalog is returned without any lock or SQL. The first load
        runs on ``engine.connect()`` in a background thread the caller waits
        for at most :attr:`load_wait` seconds (then it gets a degraded catalog
        until the load is done). An aged catalog keeps answering while a
        background thread reloads it. For an in-memory SQLite database (each
        pool connection may be another database, and a shared one may be the
        caller's) the catalog is loaded on ``connection``, inline; without
        one a degraded catalog is returned and nothing is memoized.
        """
        slot = _slot_for(engine)
        age = cls.max_age if max_age is None else max_age
        cat = slot.catalog
        if cat is not None and slot.loaded_gen == slot.generation and not cat._aged(age):
            return cat  # the fast path: no lock, no SQL
        if _in_memory_sqlite(engine):
            with slot.lock:
                cat = slot.catalog
                valid = cat is not None and slot.loaded_gen == slot.generation
                if valid and cat is not None and (connection is None or not cat._aged(age)):
                    return cat
                if connection is None:
                    return cls.degraded_catalog(engine.dialect.name,
                                                "in-memory SQLite: pass the connection", "main")
                gen = slot.generation
                new = cls.load(connection)
                slot.store(new, gen)
            return new
        if getattr(engine.dialect, "is_async", False):
            # an async driver needs the caller's greenlet: load inline, on a private pool
            # (a thread of ours cannot drive it, and must not create its objects)
            with slot.lock:
                cat = slot.catalog
                if cat is not None and slot.loaded_gen == slot.generation and not cat._aged(age):
                    return cat
                slot.thread = threading.current_thread()
            slot.reload(cls)
            return slot.catalog or cls.degraded_catalog(engine.dialect.name, "load failed")
        with slot.lock:
            cat = slot.catalog
            valid = cat is not None and slot.loaded_gen == slot.generation
            if valid and cat is not None and not cat._aged(age):
                return cat  # loaded meanwhile
            thread = slot.thread
            if thread is None:
                thread = slot.thread = threading.Thread(
                    target=slot.reload, args=(cls,), name="sqla_querycache-catalog", daemon=True
                )
                thread.start()
        if valid and cat is not None:
            return cat  # aged: the old snapshot answers while the reload runs
        thread.join(cls.load_wait)
        cat = slot.catalog
        if cat is not None and (slot.loaded_gen == slot.generation or cat.degraded):
            return cat
        return cls.degraded_catalog(engine.dialect.name, "catalog load still running")

    def _aged(self, max_age: float) -> bool:
        limit = self.retry_after if self.degraded else max_age
        return time.monotonic() - self.loaded_at >= limit


class _Unsupported(Exception):
    pass


def _in_memory_sqlite(engine: Any) -> bool:
    if engine.dialect.name != "sqlite":
        return False
    db = engine.url.database or ""
    return db in ("", ":memory:") or "mode=memory" in db or "mode=memory" in str(engine.url.query)


def _load_with(connection: Any, dialect: Any, timeout: float, include_temp: bool) -> _Facts:
    name = dialect.name
    if name == "sqlite":
        # the DBAPI connection (for aiosqlite, its adapter that runs in our greenlet)
        raw = connection.connection.dbapi_connection
        counter = [0]

        def run_raw(sql: str) -> Rows:
            counter[0] += 1
            cur = raw.cursor()
            try:
                cur.execute(sql)
                return [tuple(r) for r in cur.fetchall()]
            finally:
                cur.close()

        facts = _load_sqlite(run_raw, include_temp)
        facts.statements = counter[0]
        return facts
    if name not in ("postgresql", "mysql", "mariadb"):
        raise _Unsupported(name)
    trans = connection.begin_nested() if connection.in_transaction() else connection.begin()
    count = [0]
    try:
        mariadb = name == "mariadb" or bool(getattr(dialect, "is_mariadb", False))
        if name == "postgresql":
            connection.exec_driver_sql(f"SET LOCAL statement_timeout = {int(timeout * 1000)}")
            count[0] += 1
            default = connection.exec_driver_sql("SELECT current_schema()").scalar()
            count[0] += 1
        else:
            default = connection.exec_driver_sql("SELECT DATABASE()").scalar()
            count[0] += 1

        def run(sql: str) -> Rows:
            if name != "postgresql":
                if mariadb:
                    sql = f"SET STATEMENT max_statement_time = {timeout:g} FOR {sql}"
                else:
                    hint = f"SELECT /*+ MAX_EXECUTION_TIME({int(timeout * 1000)}) */ "
                    sql = sql.replace("SELECT ", hint, 1)
            count[0] += 1
            return [tuple(r) for r in connection.exec_driver_sql(sql).fetchall()]

        default_schema = str(default or dialect.default_schema_name or "").lower()
        if name == "postgresql":
            facts = _load_postgresql(run, default_schema)
        else:
            facts = _load_mysql(run, default_schema)
        facts.statements = count[0]
        return facts
    finally:
        trans.rollback()


# ------------------------------------------------------------ per engine


class _Slot:
    """The memoized catalog of one engine and its reload state."""

    def __init__(self, engine: Any) -> None:
        self.engine_ref = weakref.ref(engine)
        self.lock = threading.Lock()
        self.catalog: Catalog | None = None
        self.generation = 0  # bumped by invalidate()
        self.loaded_gen = -1  # the generation the current catalog was loaded at
        self.thread: threading.Thread | None = None
        self.failing = False

    def invalidate(self) -> None:
        with self.lock:
            self.generation += 1

    def store(self, catalog: Catalog, generation: int) -> None:
        catalog._slot = self
        if catalog.degraded:
            if not self.failing:
                log.warning("sqla_querycache: catalog unavailable, every write invalidates every "
                            "table until it loads: %s", catalog.error)  # fmt: skip
            self.failing = True
        else:
            self.failing = False
        self.catalog = catalog
        self.loaded_gen = generation

    def reload(self, cls: type[Catalog]) -> None:
        try:
            engine = self.engine_ref()
            if engine is None:
                return
            gen = self.generation
            start = time.perf_counter()
            try:
                # a pool of our own: this thread's connection never joins the app's pool
                # (SQLite's check_same_thread, a small pool the app needs, its listeners)
                private = Engine(engine.pool.recreate(), engine.dialect, engine.url)
                try:
                    with private.connect() as conn:
                        conn = conn.execution_options(_qc_internal=True)
                        timeout = cls.statement_timeout
                        facts = _load_with(conn, conn.dialect, timeout, include_temp=False)
                finally:
                    private.dispose()
                new = cls(facts, dialect=engine.dialect.name,
                          load_seconds=time.perf_counter() - start)  # fmt: skip
            except _Unsupported:
                new = cls(None, dialect=engine.dialect.name, supported=False)
            except Exception as err:
                if not self.failing:
                    log.debug("catalog load of %s failed", engine.url, exc_info=True)
                new = cls.degraded_catalog(engine.dialect.name, f"{type(err).__name__}: {err}")
            del engine
            with self.lock:
                self.store(new, gen)
        finally:
            with self.lock:
                self.thread = None


_slots: weakref.WeakKeyDictionary[Any, _Slot] = weakref.WeakKeyDictionary()
_slots_lock = threading.Lock()


def _slot_for(engine: Any) -> _Slot:
    slot = _slots.get(engine)
    if slot is None:
        with _slots_lock:
            slot = _slots.get(engine)
            if slot is None:
                slot = _slots[engine] = _Slot(engine)
    return slot
