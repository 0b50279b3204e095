"""What makes a result differ: statement + parameters + bind -> a short key.

The expensive, per-statement-shape part (compiling, walking the statement for
the tables it reads, making the SQLAlchemy cache key stable across
processes) is done once per ``(statement cache key, bind)`` and kept in a
bounded memo as a :class:`Plan`. Per execution only the parameter values are
encoded and hashed.
"""

from __future__ import annotations

import enum
import hashlib
import os
import sys
import threading
import types
import weakref
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Generic, TypeVar

from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Mapper, RelationshipProperty
from sqlalchemy.sql import visitors
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.schema import Table
from sqlalchemy.sql.selectable import TableClause, TextualSelect

from . import codec
from .codec import Unencodable
from .tracking import ANY_TABLE, table_name


class Plan:
    """Per statement shape and bind: the static key part and the tables read."""

    __slots__ = (
        "adm",
        "compiled",
        "derived",
        "digest",
        "mappers",
        "names",
        "rowkey",
        "shape",
        "tables",
        "too_large",
        "uncacheable",
    )  # fmt: skip

    def __init__(self, digest: bytes, compiled: Any, tables: tuple[str, ...], mappers: Any):
        self.digest = digest
        self.compiled = compiled
        self.tables = tables
        self.mappers = mappers  # the MapperSet entries of this statement name classes in
        self.shape: Any = None  # result shape, learned from the first real result
        self.derived: dict[Any, Any] = {}  # shapes derived for entries of other processes
        #: per region: the version names a lookup reads (tables + pseudo-tables)
        self.names: dict[str, tuple[str, ...]] = {}
        #: why this statement shape is never cached (not a pure read), or None
        self.uncacheable: str | None = None
        #: how an execution names the rows it reads (:class:`.rows.RowKey`), or None
        self.rowkey: Any = None
        #: [bytes per row, retry time, misses left] after a result too large to store
        self.too_large: list[Any] | None = None
        #: the shape's admission state (:class:`.admission.Shape`, shared by plans of one
        #: digest), set at its first execution
        self.adm: Any = None

    @property
    def reads_tables(self) -> bool:
        """Does the statement read any table (a real one, or unknown ones)?"""
        return any(not t.startswith("@") or t == ANY_TABLE for t in self.tables)


V = TypeVar("V")


class LRU(Generic[V]):
    """A bounded, thread-safe LRU: plans, decoded entries.

    Bounded in count (``maxsize``; 0 keeps nothing) and, when ``maxbytes``
    is given, in bytes: each value is put with its ``cost`` (an estimate of
    the memory it holds), and the least recently used go until both bounds
    hold. A value costing more than ``maxbytes`` alone is not kept.
    """

    def __init__(self, maxsize: int, maxbytes: int | None = None):
        self.maxsize = maxsize
        self.maxbytes = maxbytes
        #: the sum of the costs of the values kept
        self.bytes = 0
        self._data: OrderedDict[Any, V] = OrderedDict()
        self._costs: dict[Any, int] = {}
        self._lock = threading.Lock()

    def get(self, key: Any) -> V | None:
        value = self._data.get(key)
        if value is not None:
            try:
                self._data.move_to_end(key)
            except KeyError:  # evicted by another thread meanwhile
                pass
        return value

    def put(self, key: Any, value: V, cost: int = 0) -> None:
        if not self.maxsize:
            return
        maxbytes = self.maxbytes
        with self._lock:
            self._drop(key)
            if maxbytes is not None and cost > maxbytes:
                return
            self._data[key] = value
            if cost:
                self._costs[key] = cost
                self.bytes += cost
            data = self._data
            while len(data) > self.maxsize or (maxbytes is not None and self.bytes > maxbytes):
                old, _ = data.popitem(last=False)
                self.bytes -= self._costs.pop(old, 0)

    def _drop(self, key: Any) -> None:
        if self._data.pop(key, None) is not None:
            self.bytes -= self._costs.pop(key, 0)

    def pop(self, key: Any) -> None:
        with self._lock:
            self._drop(key)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._costs.clear()
            self.bytes = 0

    def __len__(self) -> int:
        return len(self._data)


# ---------------------------------------------------------------- stable keys


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


_importable_memo: weakref.WeakKeyDictionary[type, bool] = weakref.WeakKeyDictionary()


def _importable(cls: type) -> bool:
    """Is ``cls`` what its module's attribute path ``__qualname__`` names?"""
    try:
        return _importable_memo[cls]
    except (KeyError, TypeError):
        pass
    target: Any = sys.modules.get(cls.__module__)
    for part in cls.__qualname__.split("."):
        target = getattr(target, part, None)
    found = target is cls
    try:
        _importable_memo[cls] = found
    except TypeError:
        pass
    return found


def _stable(obj: Any, out: list[str]) -> None:
    """Append a process-independent rendering of a SQLAlchemy cache key.

    Objects rendered by ``repr()`` must not be identified by their address
    alone (``<Foo object at 0x...>``): such a statement is not cacheable
    (:class:`~.codec.Unencodable`), since an address means nothing in another
    process and can be reused by another object in this one.
    """
    t = type(obj)
    if obj is None or t in (str, int, float, bool, bytes):
        out.append(f"{t.__name__[0]}{obj!r}")
    elif t is tuple or t is list:
        items = list(obj)
        start = 1 if items and isinstance(items[0], type) else 0
        rest = items[start:]
        if rest and all(type(i) is tuple and len(i) == 2 and type(i[0]) is str for i in rest):
            # (name, value) pairs, e.g. a type's keyword arguments: SQLAlchemy may
            # build them from a dict or set whose order depends on the hash seed
            items[start:] = sorted(rest, key=lambda i: i[0])
        out.append("(")
        previous = None
        for item in items:
            if previous == "_compile_options":
                _compile_options(item, out)
            else:
                _stable(item, out)
            previous = item if type(item) is str else None
        out.append(")")
    elif t is types.CodeType:  # a lambda's code (lambda_stmt, with_loader_criteria)
        # the file's base name: servers may install the same code in other places
        out.append(
            f"K{os.path.basename(obj.co_filename)}:{obj.co_firstlineno}:{obj.co_name}:"
            f"{hashlib.blake2b(obj.co_code, digest_size=8).hexdigest()}"
        )
        _stable(tuple(c for c in obj.co_consts if not isinstance(c, types.CodeType)), out)
    elif isinstance(obj, type):
        if not _importable(obj):
            # a class made inside a function: two of them may share a name and
            # differ (two local TypeDecorators), and no other process can name it
            raise Unencodable(f"{_qualname(obj)} cannot be named outside this process")
        out.append("C" + _qualname(obj))
    elif isinstance(obj, Mapper):
        out.append(f"M{_qualname(obj.class_)}")
    elif isinstance(obj, TableClause):
        out.append(f"T{obj.fullname}" if isinstance(obj, Table) else f"t{obj.name}")
    elif isinstance(obj, types.FunctionType):
        # the same name may be two functions (closures, redefinitions): their
        # code, defaults and closed-over values tell them apart
        out.append("F" + _qualname(obj))
        _stable(obj.__code__, out)
        _stable(obj.__defaults__, out)
        cells = []
        for cell in obj.__closure__ or ():
            try:
                cells.append(cell.cell_contents)
            except ValueError:  # an empty cell
                cells.append(None)
        _stable(tuple(cells), out)
    elif isinstance(obj, types.BuiltinFunctionType):
        out.append("B" + _qualname(obj))
    elif isinstance(obj, enum.Enum):
        out.append(f"E{_qualname(t)}.{obj.name}")
    elif isinstance(obj, (frozenset, set)):
        parts = []
        for item in obj:
            sub: list[str] = []
            _stable(item, sub)
            parts.append("".join(sub))
        out.append("{" + ",".join(sorted(parts)) + "}")
    else:
        text = repr(obj)
        if " at 0x" in text or " object at " in text:
            # identified only by its address: two processes (or two objects
            # at one address over time) would not agree on what it means
            raise Unencodable(f"no stable identity for a {_qualname(t)} in the statement")
        out.append(f"R{_qualname(t)}:{text}")


def _option_pairs(obj: Any, found: dict[str, Any]) -> None:
    if type(obj) is tuple:
        if len(obj) == 2 and type(obj[0]) is str and obj[0].startswith("_"):
            found[obj[0]] = obj[1]
        else:
            for item in obj:
                _option_pairs(item, found)


def _compile_options(value: Any, out: list[str]) -> None:
    """Compile options minus their defaults.

    Running a statement once replaces its default ``_compile_options`` by the
    ORM's, spelled out; both mean the same, so both render the same.
    """
    from sqlalchemy.orm import context as orm_context

    state_cls = getattr(orm_context, "_ORMCompileState", None) or orm_context.ORMCompileState  # type: ignore[attr-defined]
    defaults = state_cls.default_compile_options
    found: dict[str, Any] = {}
    _option_pairs(value, found)
    kept = sorted((k, v) for k, v in found.items()
                  if not (hasattr(defaults, k) and getattr(defaults, k) == v))  # fmt: skip
    out.append("O")
    _stable(tuple(kept), out)


def stable_repr(cache_key_tuple: Any) -> str:
    out: list[str] = []
    _stable(cache_key_tuple, out)
    return "".join(out)


def engine_identity(engine: Engine) -> str:
    """The database an engine talks to: its URL without password.

    Private databases (SQLite in memory) are told apart by the engine itself;
    their keys are meaningful in this process only, like their data.
    """
    url = engine.url
    ident = url.render_as_string(hide_password=True)
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        ident += f"#{id(engine)}"
    return ident


_SERVER_IDENTITY = {
    "postgresql": "SELECT current_database(), current_setting('search_path'), current_user, "
    "inet_server_addr(), inet_server_port()",
    "mysql": "SELECT DATABASE(), CURRENT_USER(), @@hostname, @@port",
    "sqlite": "PRAGMA database_list",
}


def server_identity(engine: Engine) -> str:
    """What the engine's connections really reach, asked once per engine.

    Two engines with one URL can reach different data: ``connect_args``
    (``dbname``, ``options=-csearch_path=...``), a ``creator=``, a connect
    hook that runs ``SET search_path``. The database tells which database,
    schema path and user a connection has; that is part of every key.
    Per-checkout state that differs between connections of one engine is
    what ``QueryCache(scope=...)`` is for.
    """
    sql = _SERVER_IDENTITY.get(engine.dialect.name)
    if sql is None:
        return ""
    from sqlalchemy.pool import SingletonThreadPool, StaticPool

    if isinstance(engine.pool, (StaticPool, SingletonThreadPool)):
        # the pool hands out the caller's own connection: returning it would
        # roll back the session's flushed writes (in-memory SQLite is keyed by
        # engine already)
        return ""
    # a connection of its own, made like the pool's (same creator, same connect
    # hooks), never one of the pool's: the session asking may hold the last one
    from sqlalchemy.pool import NullPool

    pool: Any = engine.pool
    side = NullPool(pool._creator, dialect=getattr(pool, "_dialect", None),
                    _dispatch=pool.dispatch)  # fmt: skip
    conn = side.connect()
    try:
        cursor = conn.cursor()
        try:
            cursor.execute(sql)
            found = [tuple(r) for r in cursor.fetchall()]
        finally:
            cursor.close()
    finally:
        conn.invalidate()  # closed, never returned anywhere
        side.dispose()
    if engine.dialect.name == "sqlite":
        # the files of main and attached databases; "temp" is listed only once a
        # connection has used it, so it would make the identity depend on history
        found = [(r[1], r[2]) for r in found if r[1] != "temp"]
    return repr(found)


def bind_identity(engine_id: str, bind: Engine | Connection, execution_options: Any) -> str:
    """What of the bind changes results: the database, schema translation, identity token."""
    stm = execution_options.get("schema_translate_map")
    if stm is None:
        stm = bind.get_execution_options().get("schema_translate_map")
    token = execution_options.get("identity_token")
    if not stm and token is None:
        return engine_id
    # SQLAlchemy adds a "_none" entry to a map in place on first use: not ours
    pairs = sorted(((k, v) for k, v in (stm or {}).items() if k != "_none"), key=repr)
    return f"{engine_id}|{pairs}|{token!r}"


def make_digest(*parts: str) -> bytes:
    h = hashlib.blake2b(digest_size=20)
    for part in parts:
        data = part.encode()
        h.update(len(data).to_bytes(4, "big"))
        h.update(data)
    return h.digest()


#: execution options that do not change a SELECT's rows (or are keyed elsewhere)
_NEUTRAL_OPTIONS = frozenset({
    "cache_region", "cache_expiration_time", "compiled_cache", "logging_token",
    "isolation_level", "no_parameters", "synchronize_session", "autoflush",
    "schema_translate_map", "identity_token", "preserve_rowcount", "insertmanyvalues_page_size",
    "dml_strategy", "is_delete_using", "is_update_from", "render_nulls", "driver_column_names",
})  # fmt: skip


def user_options(execution_options: Any) -> list[Any] | None:
    """Execution options a ``do_orm_execute`` hook of the user's may read to change a query.

    SQLAlchemy's own options start with an underscore or are known to be
    neutral; everything else is part of the key (unknown means "may matter").
    """
    found = [(k, v) for k, v in execution_options.items()
             if k not in _NEUTRAL_OPTIONS and not k.startswith("_")]  # fmt: skip
    return sorted(found) if found else None


def entry_key(
    namespace: str,
    region: str,
    plan: Plan,
    bindparams: Any,
    params: Any,
    stmt_params: Any = None,
    options: Any = None,
    scope: Any = None,
) -> str:
    """The cache key of one execution: the plan's digest plus its parameter values.

    ``bindparams`` are the statement's own parameters in cache-key order
    (SQLAlchemy's ``CacheKey.bindparams``, positionally aligned for every
    statement of one plan); ``effective_value`` resolves callables.
    ``params`` are the execute-time parameters.
    """
    h = hashlib.blake2b(plan.digest, digest_size=16)
    if params:
        # an execute-time value of a statement's own parameter takes its place
        # (as SQLAlchemy binds it): keys stay the same whatever the parameter's
        # name, which for a lazy load embeds an id() of this process
        values: list[Any] = [
            params[bp.key] if bp.key in params else bp.effective_value  # noqa: SIM401
            for bp in bindparams
        ]
        own = {bp.key for bp in bindparams}
        rest = sorted((str(k), v) for k, v in params.items() if k not in own)
    else:
        values = [bp.effective_value for bp in bindparams]
        rest = None
    if stmt_params:  # Select.params(), kept by SQLAlchemy 2.1 in CacheKey.params
        values.append(["p", sorted(stmt_params.items())])
    if rest:
        values.append(["e", rest])
    if options:
        values.append(["o", options])
    if scope is not None:  # QueryCache(scope=...) / the cache_scope execution option
        values.append(["s", scope])
    if values:
        h.update(codec.packb_key(values))
    # the region is in the key: two regions may share one Redis database
    return f"{namespace}:q:{region}:{h.hexdigest()}"


# ---------------------------------------------------------------- tables read


def _relationship_tables(
    prop: RelationshipProperty[Any], seen: set[Any], out: set[str], d: str | None
) -> None:
    if prop in seen:
        return
    seen.add(prop)
    if prop.secondary is not None:
        out.update(_tables_in(prop.secondary, d))
    _mapper_tables(prop.mapper, seen, out, d)


_EAGER = frozenset({"joined", "selectin", "subquery", "immediate"})


def _mapper_tables(mapper: Mapper[Any], seen: set[Any], out: set[str], d: str | None) -> None:
    """Tables of a mapper's whole hierarchy and of its default-eager relationships."""
    if mapper in seen:
        return
    seen.add(mapper)
    for m in mapper.base_mapper.self_and_descendants:
        for t in m.tables:
            out.update(_tables_in(t, d))
        for prop in m.relationships:
            if prop.lazy in _EAGER:
                _relationship_tables(prop, seen, out, d)


def _tables_in(element: Any, d: str | None = None) -> set[str]:
    found: set[str] = set()
    for node in visitors.iterate(element):
        if isinstance(node, TableClause):
            found.add(table_name(node, d))
        elif isinstance(node, (TextClause, TextualSelect)):
            found.add(ANY_TABLE)
    return found


def _option_relationships(options: Iterable[Any]) -> Iterable[RelationshipProperty[Any]]:
    for opt in options:
        paths = [getattr(opt, "path", None)]
        paths.extend(getattr(sub, "path", None) for sub in getattr(opt, "context", ()) or ())
        for path in paths:
            for elem in getattr(path, "natural_path", None) or getattr(path, "path", None) or ():
                if isinstance(elem, RelationshipProperty):
                    yield elem


def tables_read(compiled: Any, statement: Any, default: str | None = None) -> tuple[str, ...]:
    """The tables a statement and its eager loaders are expected to read.

    A prediction, used as the first guess of what a lookup reads; what a
    miss really read is observed (see :mod:`.readpath`) and learned.
    """
    compile_state = getattr(compiled, "compile_state", None)
    core = getattr(compile_state, "statement", None)
    out = _tables_in(core if core is not None else statement, default)
    out |= _tables_in(statement, default)
    seen: set[Any] = set()
    for ent in getattr(compile_state, "_entities", ()) or ():
        mapper = getattr(ent, "mapper", None)
        if mapper is not None:
            _mapper_tables(mapper, seen, out, default)
    for prop in _option_relationships(getattr(statement, "_with_options", ())):
        _relationship_tables(prop, seen, out, default)
    for desc in getattr(statement, "column_descriptions", ()) or ():
        entity = desc.get("entity") if isinstance(desc, dict) else None
        if entity is not None:
            insp = sa_inspect(entity, raiseerr=False)
            mapper = getattr(insp, "mapper", None)
            if mapper is not None:
                _mapper_tables(mapper, seen, out, default)
    return tuple(sorted(out))
