"""Row-level version names: what a write names exactly, and what a read depends on.

Table-level names (``product``) are bumped by every write to the table. A
write also bumps finer names (always: any process sharing the version store
may read by row), and entries whose statement selects rows by key read those
instead of the table's:

``product#7``
    the row whose primary key is 7: bumped by an UPDATE or DELETE that names
    it by primary key (ORM flushes, ``update(t).where(t.c.id == 7)``).
``order[customer_id=5]``
    the rows whose foreign key (a declared ``ForeignKeyConstraint``) is 5:
    bumped when such a row is inserted, deleted or changed, or moves in or
    out (old and new values). A collection entry (``customer.orders``)
    depends on it.
``order[customer_id=*]``
    the same for every value: bumped when a write changes rows of that
    foreign key whose values it cannot name (the ORM did not know the old
    value, a bulk update by primary key).
``product@ins``
    bumped by every INSERT: only "no such row" entries depend on it.
``product@rows``
    every row: bumped by every write to the table that is not attributed to
    named rows (bulk/Core/text DML, a cascade the database applies, DDL).

Every row-level entry also depends on ``@rows`` of its table; a write that is
attributed bumps the row and membership names it changed, one that is not
bumps ``@rows``. Both still bump the table's own name, so query results over
the table are invalidated as before. Keys are named only for integer and UUID
values of integer and UUID columns (other types compare by collation, which
the names could not mirror: their reads depend on the table instead).
"""

from __future__ import annotations

import uuid
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.sql import operators
from sqlalchemy.sql.dml import Delete, Insert, Update
from sqlalchemy.sql.elements import (
    BinaryExpression,
    BindParameter,
    BooleanClauseList,
    ColumnClause,
    TextClause,
)
from sqlalchemy.sql.schema import ForeignKeyConstraint
from sqlalchemy.sql.selectable import Select

ROWS = "@rows"
#: past this many row-level names for one table in one transaction, a write
#: bumps ``t@rows`` instead (a commit's round trip stays small)
MAX_NAMED = 256
INSERTS = "@ins"


def rows_any(table: str) -> str:
    return table + ROWS


def inserts(table: str) -> str:
    """Bumped by every INSERT into the table: "no such row" entries depend on it."""
    return table + INSERTS


def with_rows(names: Iterable[str]) -> list[str]:
    """``names`` plus ``t@rows`` of every table among them: an invalidation by
    table (``invalidate()``, a migration) reaches row-level entries too."""
    out = set(names)
    out.update(rows_any(n) for n in names if not n.startswith("@") and "#" not in n
               and "[" not in n and not n.endswith(ROWS))  # fmt: skip
    return sorted(out)


def _enc(value: Any) -> str | None:
    t = type(value)
    if t is int:
        return str(value)
    if t is uuid.UUID:
        return f"u{value.hex}"
    return None


def encode(values: Sequence[Any]) -> str | None:
    """The values of a key as they appear in a name, or None if they cannot be named."""
    parts = []
    for v in values:
        e = _enc(v)
        if e is None:
            return None
        parts.append(e)
    return ",".join(parts)


def row_name(table: str, enc: str) -> str:
    return f"{table}#{enc}"


def member_name(table: str, cols: Sequence[str], enc: str) -> str:
    return f"{table}[{','.join(cols)}={enc}]"


def nameable(col: Any) -> bool:
    """Can values of this column be named (integer and UUID columns)?"""
    try:
        py = col.type.python_type
    except Exception:
        return False
    return py is int or py is uuid.UUID


def fk_groups(table: Table) -> list[tuple[str, ...]]:
    """The column-name tuples of the table's declared foreign keys (sorted, nameable)."""
    found = []
    for fk in table.constraints:
        if isinstance(fk, ForeignKeyConstraint):
            cols = fk.columns
            if all(nameable(c) for c in cols):
                found.append(tuple(sorted(c.name for c in cols)))
    return found


def _conjuncts(criteria: Iterable[Any]) -> Iterator[Any]:
    for c in criteria:
        if isinstance(c, BooleanClauseList) and c.operator is operators.and_:
            yield from _conjuncts(c.clauses)
        else:
            yield c


def equalities(table: Any, criteria: Iterable[Any]) -> dict[str, BindParameter[Any]] | None:
    """``table column name -> bind parameter`` of the ``col = :param`` conjuncts.

    None if a conjunct is not plain (the caller then names nothing): a
    conjunct that is not an equality still only narrows the rows, so it is
    allowed; one that refers to another table or to SQL text is not.
    """
    found: dict[str, BindParameter[Any]] = {}
    for c in _conjuncts(criteria):
        if isinstance(c, BinaryExpression) and c.operator is operators.eq:
            left, right = c.left, c.right
            if isinstance(right, ColumnClause) and isinstance(left, BindParameter):
                left, right = right, left
            if isinstance(left, ColumnClause) and isinstance(right, BindParameter):
                col = table.c.corresponding_column(left) if left.table is not None else None
                if col is None or col.table is not table:
                    return None
                if col.name in found:
                    return None  # id = :a AND id = :b: not one row
                found[col.name] = right
                continue
        if not _only_table(table, c):
            return None
    return found


def _only_table(table: Any, element: Any) -> bool:
    """Does this criterion read nothing but columns of ``table`` and bound values?"""
    from sqlalchemy.sql import visitors

    for e in visitors.iterate(element):
        if isinstance(e, (TextClause, Select)):
            return False
        if isinstance(e, ColumnClause):
            if e.table is None or e.table.corresponding_column(e) is None:
                return False
            if table.c.corresponding_column(e) is None:
                return False
    return True


# ----------------------------------------------------------------- writes


def _replaces(table: Table) -> bool:
    """Is a constraint of the table declared to REPLACE rows on conflict (SQLite)?"""
    for item in (*table.constraints, *table.columns):
        for opts in getattr(item, "dialect_options", {}).values():
            for value in opts.values() if hasattr(opts, "values") else ():
                if isinstance(value, str) and value.upper() == "REPLACE":
                    return True
    return False


def _set_columns(compiled: Any, stmt: Any, table: Table) -> set[str] | None:
    """Names of the columns an UPDATE may set (None: cannot tell)."""
    cols: set[str] = set()
    for k in getattr(stmt, "_values", None) or {}:
        name = getattr(k, "name", k)
        if not isinstance(name, str):
            return None
        cols.add(name)
    if getattr(stmt, "_ordered_values", None) or getattr(stmt, "_multi_values", None):
        return None
    keys = getattr(compiled, "column_keys", None) or ()
    for c in table.c:
        if c.key in keys:
            cols.add(c.name)
    return cols


class _WritePlan:
    """What one compiled DML statement names, per execution (memoized per compiled)."""

    __slots__ = ("groups", "insert", "pk_keys", "sets", "table")

    def __init__(self, table: Table, insert: bool, pk_keys: list[str],
                 groups: list[tuple[tuple[str, ...], list[str], bool]]):  # fmt: skip
        self.table = table
        self.insert = insert
        self.pk_keys = pk_keys
        #: (group columns, their parameter keys, does the statement set them)
        self.groups = groups


_NO_PLAN = object()
_write_plans: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _write_plan(compiled: Any) -> _WritePlan | None:
    stmt = getattr(compiled, "statement", None)
    if not isinstance(stmt, (Update, Delete, Insert)) or not isinstance(stmt.table, Table):
        return None
    if stmt._independent_ctes or getattr(stmt, "_extra_froms", None):
        return None
    table: Table = stmt.table._deannotate()  # ORM-enabled DML names an annotated copy
    key_of = {c.name: c.key for c in table.c}
    if isinstance(stmt, Insert):
        if (stmt.select is not None or stmt._post_values_clause is not None
                or stmt._multi_values or stmt._prefixes or _replaces(table)):  # fmt: skip
            # INSERT ... SELECT, upserts, multi-row VALUES, INSERT OR REPLACE (a
            # prefix, or a table declared ON CONFLICT REPLACE): not named rows
            return None
        groups = [(g, [key_of[n] for n in g], True) for g in fk_groups(table)]
        pk = list(table.primary_key.columns)
        pk_keys = [c.key for c in pk] if pk and all(nameable(c) for c in pk) else []
        return _WritePlan(table, True, pk_keys, groups)
    pk = list(table.primary_key.columns)
    if not pk or not all(nameable(c) for c in pk):
        return None
    eq = equalities(table, stmt._where_criteria)
    if eq is None or any(c.name not in eq for c in pk):
        return None
    pk_keys = []
    for c in pk:
        key = compiled.bind_names.get(eq[c.name])
        if key is None:
            return None
        pk_keys.append(key)
    set_cols: set[str] = set()
    if isinstance(stmt, Update):
        found = _set_columns(compiled, stmt, table)
        if found is None or any(c.name in found for c in pk):
            return None  # a primary key that changes: not named here
        set_cols = found
    groups = [(g, [key_of[n] for n in g], not set_cols.isdisjoint(g)) for g in fk_groups(table)]
    return _WritePlan(table, False, pk_keys, groups)


def attribute_write(context: Any, table_name: str, hints: dict[Any, Any] | None) -> set[str] | None:
    """The row-level names one DML statement changes, or None if it names no rows.

    ``hints`` maps ``(Table, encoded primary key)`` to the old values of the
    row's foreign keys, as the ORM knew them before its flush changed them.
    """
    compiled = getattr(context, "compiled", None)
    if compiled is None:
        return None
    plan = _write_plans.get(compiled, _NO_PLAN)
    if plan is _NO_PLAN:
        plan = _write_plan(compiled)
        _write_plans[compiled] = plan
    if plan is None:
        return None
    params = context.compiled_parameters
    if not params:
        return None
    names: set[str] = set()
    if plan.insert:
        names.add(inserts(table_name))
        for p in params:
            if plan.pk_keys and all(k in p for k in plan.pk_keys):
                enc = encode([p[k] for k in plan.pk_keys])
                if enc is not None:  # a row of that key may have been deleted and re-made
                    names.add(row_name(table_name, enc))
            for g, keys, _ in plan.groups:
                if any(k not in p for k in keys):
                    names.add(member_name(table_name, g, "*"))
                    continue
                vals = [p[k] for k in keys]
                if any(v is None for v in vals):
                    continue  # a NULL foreign key: in no collection
                enc = encode(vals)
                names.add(member_name(table_name, g, enc if enc is not None else "*"))
        return names
    table = plan.table
    for p in params:
        try:
            enc = encode([p[k] for k in plan.pk_keys])
        except KeyError:
            return None
        if enc is None:
            return None
        names.add(row_name(table_name, enc))
        old = hints.get((table, enc)) if hints else None
        for g, keys, sets in plan.groups:
            before = old.get(g) if old is not None else None
            if before != "null":  # a row in no collection leaves none
                names.add(member_name(table_name, g, before if before is not None else "*"))
            if sets:
                if all(k in p for k in keys):
                    vals = [p[k] for k in keys]
                    if all(v is not None for v in vals):
                        after = encode(vals)
                        names.add(member_name(table_name, g, after if after else "*"))
                else:
                    names.add(member_name(table_name, g, "*"))
    return names


def hint_for(mapper: Any, state: Any, table: Table) -> tuple[Any, dict[Any, str | None]] | None:
    """(key, old foreign-key values) of one object's row in ``table``, before the flush."""
    from sqlalchemy.orm.base import NO_VALUE

    dict_ = state.dict
    committed = state.committed_state

    def old(col: Any) -> Any:
        prop = mapper._columntoproperty.get(col)
        if prop is None:
            return NO_VALUE
        key = prop.key
        if key in committed:
            return committed[key]
        return dict_.get(key, NO_VALUE)

    pk = [old(c) for c in table.primary_key.columns]
    enc = encode(pk)
    if enc is None:
        return None
    values: dict[Any, str | None] = {}
    for g in fk_groups(table):
        vals = [old(table.c[n]) for n in g]
        if any(v is NO_VALUE for v in vals):
            values[g] = None
        elif any(v is None for v in vals):
            values[g] = "null"  # was in no collection: nothing to leave
        else:
            values[g] = encode(vals)
    return (table, enc), values


# ------------------------------------------------------------------ reads


class RowKey:
    """How one statement shape's executions name the rows they read.

    ``kind`` is ``"row"`` (the primary key of the anchor table is bound: one
    row) or ``"member"`` (a declared foreign key is bound: one collection).
    ``positions`` locate the bound values among the cache key's bind
    parameters, which are aligned for every statement of a shape. ``joined``
    names the other tables whose rows the same values select (a joined
    inheritance subclass table: ``engineer.id = employee.id = :pk``), each
    with the order of the values in its own primary key and whether its row
    must exist for a row to be returned (an inner join). Every other table
    the statement reads is versioned whole.
    """

    __slots__ = ("_order", "cols", "found", "joined", "kind", "positions", "table", "tables")

    def __init__(self, table: str, kind: str, cols: tuple[str, ...], positions: list[int],
                 joined: tuple[tuple[str, tuple[int, ...], bool], ...] = ()):  # fmt: skip
        self.table = table
        self.kind = kind
        self.cols = cols
        self.positions = positions
        self.joined = joined
        self._order = {t: order for t, order, _ in joined}
        #: the tables read by row (their names are the row names, not the table)
        self.tables = frozenset((table, *self._order))
        #: tables whose row exists whenever the statement returned a row: an
        #: entry that found one does not depend on their inserts (``t@ins``)
        self.found = frozenset((table, *(t for t, _, inner in joined if inner)))

    def encode(self, bindparams: Sequence[Any], params: Any, stmt_params: Any) -> str | None:
        """This execution's key values, encoded (None: NULL or not nameable)."""
        values = []
        for i in self.positions:
            bp = bindparams[i]
            k = bp.key
            if params and k in params:
                v = params[k]
            elif stmt_params and k in stmt_params:
                v = stmt_params[k]
            else:
                v = bp.effective_value
            values.append(v)
        return encode(values)

    def names(self, tables: Iterable[str], enc: str) -> list[str]:
        """The version names an execution with key ``enc`` depends on."""
        out: list[str] = []
        joined = self._order
        for t in tables:
            if t == self.table:
                out.append(rows_any(t))
                if self.kind == "row":
                    out.append(row_name(t, enc))
                    out.append(inserts(t))  # kept by an entry only if it found no row
                else:
                    out.append(member_name(t, self.cols, enc))
                    out.append(member_name(t, self.cols, "*"))
            elif t in joined:
                out.append(rows_any(t))
                out.append(row_name(t, _reorder(enc, joined[t])))
                out.append(inserts(t))
            else:
                out.append(t)
        return out


def _reorder(enc: str, order: tuple[int, ...]) -> str:
    """The anchor's encoded key values in another table's primary key order."""
    if len(order) == 1:
        return enc
    parts = enc.split(",")
    return ",".join(parts[i] for i in order)


_Flat = tuple[list[Table], list[Any], list[tuple[Any, set[Any]]]]


def _flatten(froms: Sequence[Any]) -> _Flat | None:
    """The tables of a FROM list, the ON conjuncts that restrict every table they
    name (inner joins), and those that restrict only a LEFT join's right side
    (with those tables). None for anything else (subqueries, aliases, FULL joins)."""
    from sqlalchemy.sql.selectable import Join

    tables: list[Table] = []
    inner: list[Any] = []
    outer: list[tuple[Any, set[Any]]] = []

    def walk(f: Any) -> set[Any] | None:
        if isinstance(f, Table):
            tables.append(f)
            return {f}
        if isinstance(f, Join):
            if f.full:
                return None
            left, right = walk(f.left), walk(f.right)
            if left is None or right is None:
                return None
            ons = list(_conjuncts([f.onclause])) if f.onclause is not None else []
            if f.isouter:
                outer.extend((c, right) for c in ons)
            else:
                inner.extend(ons)
            return left | right
        return None

    for f in froms:
        if walk(f) is None:
            return None
    if len({id(t) for t in tables}) != len(tables):
        return None  # a table twice (a self-join): not one row per table
    return tables, inner, outer


def _column_of(tables: list[Table], col: Any) -> tuple[Table, str] | None:
    """(the table among ``tables``, column name) that ``col`` stands for, or None.

    By name: an annotated column (the ORM's) and its table's own are
    different objects."""
    if not isinstance(col, ColumnClause) or col.table is None:
        return None
    for t in tables:
        found = t.c.corresponding_column(col)
        if found is not None and found.table is t:
            return t, found.name
    return None


def row_key(compiled: Any, bindparams: Sequence[Any], table_name: Any) -> RowKey | None:
    """The :class:`RowKey` of a compiled SELECT, or None (it depends on whole tables).

    Only plain tables and joins of them may be read, with no subquery or SQL
    text anywhere. The anchor is the first table whose primary key (else a
    declared foreign key) is bound by ``col = :value`` conjuncts of the WHERE
    clause or of inner joins' ON clauses (an ON clause of a LEFT join keeps
    every row of its left side, so it names rows of its right side only):
    the rows read from it are exactly those the values select. A table whose
    primary key equals the anchor's, column for column, is read by the same
    values. Every other table is versioned whole.
    """
    from sqlalchemy.sql import visitors

    state = getattr(compiled, "compile_state", None)
    core = getattr(state, "statement", None)
    if not isinstance(core, Select):
        return None
    flat = _flatten(core.get_final_froms())
    if flat is None:
        return None
    tables, inner, outer = flat
    for e in visitors.iterate(core):
        if e is core:
            continue
        if isinstance(e, (Select, TextClause)):
            return None
        if isinstance(e, ColumnClause) and e.table is None:
            return None  # literal_column(): text we cannot read
    binds: dict[tuple[int, str], BindParameter[Any]] = {}  # (table, column) -> bound value
    #: (table, column) = (table, column), and which tables it restricts (None: all)
    links: list[tuple[tuple[Table, str], tuple[Table, str], set[Any] | None]] = []
    for c, side in [*((c, None) for c in _conjuncts(core._where_criteria)),
                    *((c, None) for c in inner), *outer]:  # fmt: skip
        if not (isinstance(c, BinaryExpression) and c.operator is operators.eq):
            continue
        left, right = c.left, c.right
        if isinstance(right, ColumnClause) and isinstance(left, BindParameter):
            left, right = right, left
        a = _column_of(tables, left)
        if a is None:
            continue
        if isinstance(right, BindParameter):
            if side is not None and a[0] not in side:
                continue  # a LEFT join's ON on its left side selects nothing
            k = (id(a[0]), a[1])
            if k in binds:
                return None  # id = :a AND id = :b: not one row
            binds[k] = right
            continue
        b = _column_of(tables, right)
        if b is not None:
            links.append((a, b, side))
    chosen: tuple[Table, str, list[str]] | None = None
    for t in tables:
        pk = list(t.primary_key.columns)
        if pk and all(nameable(c) and (id(t), c.name) in binds for c in pk):
            chosen = (t, "row", [c.name for c in pk])
            break
    if chosen is None:
        for t in tables:
            for g in fk_groups(t):
                if all((id(t), n) in binds for n in g):
                    chosen = (t, "member", list(g))
                    break
            if chosen is not None:
                break
    if chosen is None:
        return None
    anchor, kind, cols = chosen
    index = {bp.key: i for i, bp in enumerate(bindparams)}
    positions = []
    for n in cols:
        i = index.get(binds[(id(anchor), n)].key)
        if i is None:
            return None
        positions.append(i)
    joined: list[tuple[str, tuple[int, ...], bool]] = []
    if kind == "row":
        for u in tables:
            if u is anchor:
                continue
            order = _linked_key(u, anchor, cols, links)
            if order is not None:
                joined.append((table_name(u), order[0], order[1]))
    return RowKey(table_name(anchor), kind, tuple(cols), positions, tuple(joined))


def _linked_key(u: Table, anchor: Table, anchor_pk: list[str],
                links: list[tuple[tuple[Table, str], tuple[Table, str], set[Any] | None]]
                ) -> tuple[tuple[int, ...], bool] | None:  # fmt: skip
    """If every primary key column of ``u`` equals one of the anchor's, the
    position of each among the anchor's (and whether all links are inner)."""
    pk = list(u.primary_key.columns)
    if not pk or len(pk) != len(anchor_pk) or not all(nameable(c) for c in pk):
        return None
    order: list[int] = []
    inner = True
    for c in pk:
        found = None
        for a, b, side in links:
            for mine, other in ((a, b), (b, a)):
                if (mine[0] is u and mine[1] == c.name and other[0] is anchor
                        and other[1] in anchor_pk and (side is None or u in side)):  # fmt: skip
                    found = (anchor_pk.index(other[1]), side is None)
                    break
            if found is not None:
                break
        if found is None:
            return None
        order.append(found[0])
        inner = inner and found[1]
    if sorted(order) != list(range(len(anchor_pk))):
        return None
    return tuple(order), inner
