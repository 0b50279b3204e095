"""ORM results <-> plain values, honouring the session's identity map.

``dehydrate`` turns the rows of a freshly loaded result into plain values:
each entity becomes (class, identity, loaded column values, loaded
relationships as references to other entities of the same entry). Nothing
of the session's own state is stored: an entry is refused if any object in
it was already in the session before the query (its attributes may predate
the database rows) or has pending changes.

``hydrate`` rebuilds ORM objects attached to a session from those values,
reusing objects the session already holds and never overwriting their
loaded or modified attributes (the identity map wins, invariant I8).

Hydration creates persistent objects through a few SQLAlchemy internals
(``ClassManager.new_instance``, ``IdentityMap._add_unpresent``,
``InstanceState._commit``), the same steps ``orm.loading`` takes for a row.
They are isolated in :func:`_attach_new` and :func:`_fill_unloaded`;
checked on SQLAlchemy 2.0.x and 2.1.x; ``tests/test_hydrate.py``
fails loudly if they change.
"""

from __future__ import annotations

import hashlib
import inspect
import weakref
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Column
from sqlalchemy import exc as sa_exc
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import IteratorResult
from sqlalchemy.engine.result import SimpleResultMetaData
from sqlalchemy.orm import Mapper, Session
from sqlalchemy.orm.attributes import instance_dict, instance_state
from sqlalchemy.orm.path_registry import PathRegistry
from sqlalchemy.util import immutabledict as util_immutabledict

from .codec import CorruptEntry, register_enums_of


class NotStorable(Exception):
    """This result must not be stored (it may include session-local state)."""


def class_key(mapper: Mapper[Any]) -> str:
    cls = mapper.class_
    return f"{cls.__module__}.{cls.__qualname__}"


# ------------------------------------------------------------- mapped schema


class MapperSet:
    """The mappers a statement can return (by name) and their fingerprint."""

    __slots__ = ("_layouts", "by_name", "fingerprint")

    def __init__(self, roots: Sequence[Mapper[Any]]):
        found: dict[str, Mapper[Any]] = {}
        todo = list(roots)
        while todo:
            mapper = todo.pop()
            for m in mapper.base_mapper.self_and_descendants:
                name = class_key(m)
                if name in found:
                    continue
                found[name] = m
                todo.extend(rel.mapper for rel in m.relationships)
        self.by_name = found
        for m in found.values():
            register_enums_of(c.type for c in m.columns)
        h = hashlib.blake2b(digest_size=12)
        for name in sorted(found):
            h.update(_mapper_signature(found[name]).encode())
        self.fingerprint = h.hexdigest()
        self._layouts: dict[Any, _Layout] = {}

    def layout(self, spec: Sequence[Any]) -> _Layout:
        key = (spec[0], tuple(spec[1]), tuple(spec[2]))
        lay = self._layouts.get(key)
        if lay is None:
            mapper = self.by_name.get(spec[0])
            if mapper is None:
                raise CorruptEntry(f"entry names an unknown class {spec[0]!r}")
            lay = self._layouts[key] = _Layout(mapper, key[1], key[2])
        return lay


def _column_signature(c: Any) -> str:
    if isinstance(c, Column):
        return f"{c.table.name if c.table is not None else ''}.{c.name}:{c.type!r}"
    return f"{type(c).__name__}:{c.type!r}:{c}"  # an expression: its SQL (anon names are stable)


def _relationship_signature(r: Any) -> str:
    """What of a relationship changes the rows a load gives: target, join, order, strategy."""
    order = ",".join(str(c) for c in (r.order_by or ()))
    joins = f"{r.primaryjoin}|{r.secondaryjoin}|{r.secondary}"
    return f"{r.key}>{class_key(r.mapper)}:{r.uselist}:{r.lazy}:{joins}:{order}"


def _mapper_signature(m: Mapper[Any]) -> str:
    cols = sorted(p.key + ":" + ",".join(map(_column_signature, p.columns)) for p in m.column_attrs)
    rels = sorted(map(_relationship_signature, m.relationships))
    tables = sorted(str(t) for t in m.tables)
    pk = [c.name for c in m.primary_key]
    return f"{class_key(m)}|{tables}|{pk}|{cols}|{rels}|{m.polymorphic_identity!r}"


class _Layout:
    """One (class, loaded columns, loaded relationships) combination."""

    __slots__ = (
        "cols",
        "expire",
        "identity_class",
        "key",
        "load_evt",
        "manager",
        "mapper",
        "ncols",
        "new_instance",
        "paths",
        "rels",
        "width",
    )  # fmt: skip

    def __init__(self, mapper: Mapper[Any], cols: tuple[str, ...], rels: tuple[str, ...]):
        self.key = (class_key(mapper), cols, rels)
        self.mapper = mapper
        self.identity_class = mapper._identity_class
        self.new_instance = mapper.class_manager.new_instance
        self.manager = mapper.class_manager
        known = {p.key for p in mapper.column_attrs}
        rel_props = {r.key: r for r in mapper.relationships}
        if not set(cols) <= known or not set(rels) <= set(rel_props):
            raise CorruptEntry(f"entry does not match the mapping of {class_key(mapper)}")
        self.cols = cols
        self.ncols = len(cols)
        self.rels = [(key, rel_props[key].uselist, self.manager[key].impl) for key in rels]
        self.width = 3 + len(cols) + len(rels)  # layout, identity, token, columns, relations
        # columns this load did not fetch and that have no loader of their
        # own must load on access, as the ORM marks them (orm.loading "expire")
        self.expire = frozenset(
            p.key
            for p in mapper.column_attrs
            if p.key not in cols and not getattr(self.manager[p.key].impl, "callable_", None)
        )
        self.load_evt = bool(self.manager.dispatch.load)
        self.paths: dict[Any, Any] = {}  # stored path steps -> PathRegistry


# ------------------------------------------------------------------ dehydrate


def _is_entity(value: Any) -> bool:
    return hasattr(type(value), "_sa_class_manager")


#: load path -> its plain steps (never changed once made: entries share them)
_paths_out: dict[Any, list[Any] | None] = {}


def _path_out(path: Any) -> list[Any] | None:
    """A load path as plain steps (class names, attribute keys); None if not expressible."""
    try:
        return _paths_out[path]
    except KeyError:
        pass
    except TypeError:  # not hashable: made each time
        return _path_steps(path)
    if len(_paths_out) >= 4096:  # paths through aliases made per call: keep it bounded
        _paths_out.clear()
    out = _paths_out[path] = _path_steps(path)
    return out


def _path_steps(path: Any) -> list[Any] | None:
    out: list[Any] = []
    for elem in path.path:
        if isinstance(elem, Mapper):
            out.append(class_key(elem))
        elif isinstance(getattr(elem, "key", None), str) and hasattr(elem, "parent"):
            out.append(["a", elem.key])
        else:  # an aliased entity: keep it in-process only
            return None
    return out


def _path_in(mappers: MapperSet, steps: Sequence[Any]) -> Any:
    elems: list[Any] = []
    mapper = None
    for step in steps:
        if isinstance(step, str):
            mapper = mappers.by_name.get(step)
            if mapper is None:
                raise CorruptEntry(f"entry names an unknown class {step!r}")
            elems.append(mapper)
        else:
            if mapper is None:
                raise CorruptEntry("malformed load path")
            elems.append(mapper.attrs[step[1]])
    return PathRegistry.coerce(tuple(elems)) if elems else PathRegistry.root


class NeedsLocalLoad(Exception):
    """The entry's objects need loader state only a load in this process can give."""


class _MapperKeys:
    """A mapper's attribute keys, as dehydrate lays out an object of it."""

    __slots__ = ("cols", "colset", "name", "rels", "sigs")

    def __init__(self, mapper: Mapper[Any]):
        self.name = class_key(mapper)
        self.cols = tuple(p.key for p in mapper.column_attrs)
        self.rels = tuple(r.key for r in mapper.relationships)
        #: an object whose dict holds every column (the common case) needs no scan
        self.colset = frozenset(self.cols)
        #: loaded relationship keys -> the layout of an object with every column
        self.sigs: dict[tuple[str, ...], tuple[str, tuple[str, ...], tuple[str, ...]]] = {}


_mapper_keys: weakref.WeakKeyDictionary[Mapper[Any], _MapperKeys] = weakref.WeakKeyDictionary()


def _layout_of(
    mapper: Mapper[Any], dict_: dict[str, Any]
) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """(class key, loaded column keys, loaded relationship keys) of one object."""
    known = _mapper_keys.get(mapper)
    if known is None:
        known = _mapper_keys[mapper] = _MapperKeys(mapper)
    rels = tuple([k for k in known.rels if k in dict_])
    if dict_.keys() >= known.colset:  # every column loaded: no scan of them
        sig = known.sigs.get(rels)
        if sig is None:
            sig = known.sigs[rels] = (known.name, known.cols, rels)
        return sig
    return known.name, tuple([k for k in known.cols if k in dict_]), rels


def dehydrate(
    rows: Sequence[Any],
    scalar: bool,
    preexisting: set[Any] | None,
    templates: dict[Any, Any] | None = None,
) -> list[Any]:
    """Rows of a fresh ORM result -> ``[layouts, entities, kinds, rows]``.

    ``preexisting`` is the set of identity keys the session held before the
    query ran (``None`` when it held none); an entity among them, or one with
    pending changes, makes the result :class:`NotStorable`.

    ``templates`` receives, per layout, the per-object loader state the ORM
    gave the objects (``raiseload``, ``load_only(raiseload=True)``, options
    propagated to lazy loads): code, so it stays in this process.
    """
    layouts: list[Any] = []
    layout_index: dict[Any, int] = {}
    entities: list[Any] = []
    index: dict[int, int] = {}  # id(obj) -> entity number
    pending: list[Any] = []

    def ref(obj: Any) -> int:
        n = index.get(id(obj))
        if n is not None:
            return n
        state = instance_state(obj)
        key = state.key
        # state._deleted: what ``state.deleted`` reads once the key is known
        if key is None or state.modified or state._deleted:
            raise NotStorable("result holds an object that is not clean and persistent")
        if preexisting is not None and key in preexisting:
            raise NotStorable("result holds an object the session loaded before")
        mapper = state.manager.mapper
        dict_ = instance_dict(obj)
        sig = _layout_of(mapper, dict_)
        li = layout_index.get(sig)
        if li is None:
            li = layout_index[sig] = len(layouts)
            layouts.append([sig[0], list(sig[1]), list(sig[2])])
        if li == len(layouts) - 1 and len(layouts[li]) == 3:  # first object of this layout
            path = _path_out(state.load_path)
            needs_local = bool(state.callables) or path is None
            layouts[li].extend([path or [], needs_local])
            if needs_local and templates is not None:
                templates[sig] = (dict(state.callables), state.load_path)
        n = index[id(obj)] = len(entities)
        record = [li, list(key[1]), key[2], *[dict_[k] for k in sig[1]]]
        entities.append(record)
        if sig[2]:
            pending.append((record, sig[2], dict_))
        return n

    kinds: list[bool] = []
    out_rows: list[Any] = []
    if scalar:
        kinds = [True]
        for obj in rows:
            out_rows.append(None if obj is None else ref(obj))
    elif rows:
        width = len(rows[0])
        kinds = [any(_is_entity(row[i]) for row in rows) for i in range(width)]
        for row in rows:
            out: list[Any] = []
            for is_entity, v in zip(kinds, row):
                if v is None:
                    out.append(None)
                elif is_entity:
                    if not _is_entity(v):
                        raise NotStorable("a column mixes entities and plain values")
                    out.append(ref(v))
                else:
                    out.append(v)
            out_rows.append(out)

    while pending:  # relationships, breadth first; refs may add entities
        record, rel_keys, dict_ = pending.pop()
        for key in rel_keys:
            value = dict_[key]
            if value is None:
                record.append(None)
            elif _is_entity(value):
                record.append(ref(value))
            else:
                members = value.values() if isinstance(value, dict) else value
                record.append([ref(v) for v in members])
    return [layouts, entities, kinds, scalar, out_rows]


# -------------------------------------------------------------------- hydrate


def _loader_state(state: Any, lay: _Layout, template: Any) -> None:
    """Per-object loader state: load path, propagated options, per-object loaders."""
    load_options, state.load_path, callables = template
    if load_options:  # options the ORM propagates to this object's later lazy loads
        state.load_options = load_options
    if callables:  # per-object loaders (raiseload, load_only(raiseload=True)), as loaded
        state.callables = dict(callables)
        if lay.expire:
            state.expired_attributes.update(lay.expire.difference(callables))
    elif lay.expire:
        state.expired_attributes.update(lay.expire)


def _attach(session: Session, states: list[Any], layouts: list[_Layout]) -> None:
    """Put new persistent objects into the session's identity map, then fire ``load``."""
    idmap = session.identity_map
    hash_key = session.hash_key
    for state, _ in states:
        state.session_id = hash_key
        idmap._add_unpresent(state, state.key)
    for state, lay in states:
        if lay.load_evt:
            lay.manager.dispatch.load(state, None)


def _fill_unloaded(obj: Any, lay: _Layout, values: Any) -> None:
    """Give an object the session already holds the attributes it lacks; keep the rest."""
    state = instance_state(obj)
    unloaded = state.unloaded
    if not unloaded:
        return
    dict_ = state.dict
    filled = [k for k in lay.cols if k in unloaded]
    if filled:
        dict_.update((k, v) for k, v in zip(lay.cols, values) if k in unloaded)
        state._commit(dict_, filled)
        refresh = lay.manager.dispatch.refresh
        if refresh:  # as the ORM does when a query fills an expired object
            refresh(state, None, set(filled))


def _ref(value: Any, n: int) -> int:
    if type(value) is not int or not 0 <= value < n:
        raise CorruptEntry("entry refers to an entity it does not hold")
    return value


def hydrate(
    session: Session,
    mappers: MapperSet,
    payload: Any,
    templates: dict[Any, Any] | None = None,
    load_options: tuple[Any, ...] = (),
    shape: Shape | None = None,
) -> list[Any]:
    """``[layouts, entities, kinds, scalar, rows]`` -> row data for a Result.

    The whole entry is checked (references, lengths, the statement's result
    shape) before anything touches the session: a bad entry raises and leaves
    the identity map as it was.
    """
    layouts_raw, entities, kinds, scalar, rows = payload
    if shape is not None:
        width = len(shape.metadata._keys)  # .keys hides unnamed columns (func.sum())
        if bool(scalar) != bool(shape.scalars) or (not scalar and rows and len(kinds) != width):
            raise CorruptEntry("entry does not have the statement's result shape")
    layouts = [mappers.layout(spec) for spec in layouts_raw]
    per_layout = []
    for lay, spec in zip(layouts, layouts_raw):
        steps, needs_local = spec[3], spec[4]
        local = templates.get(lay.key) if templates else None
        if needs_local and local is None:
            raise NeedsLocalLoad(lay.key[0])
        if local is not None:
            callables, path = local
        else:
            callables = None
            k = tuple(map(str, steps))
            path = lay.paths.get(k)
            if path is None:
                path = lay.paths[k] = _path_in(mappers, steps)
        per_layout.append((load_options, path, callables))

    n = len(entities)
    idmap_get = session.identity_map.get
    objs: list[Any] = []
    new_states: list[Any] = []
    held: list[tuple[int, Any, _Layout]] = []
    seen: set[Any] = set()
    for i, record in enumerate(entities):
        lay = layouts[record[0]]
        if len(record) != lay.width:
            raise CorruptEntry("entity record does not match its layout")
        key = (lay.identity_class, tuple(record[1]), record[2])
        if key in seen:
            raise CorruptEntry("entry holds one identity twice")
        seen.add(key)
        obj = idmap_get(key)
        if obj is None:
            # a persistent object, not yet in the session (the steps of orm.loading._instance)
            obj = lay.new_instance()
            state = instance_state(obj)
            state.key = key
            state.identity_token = key[2]
            instance_dict(obj).update(zip(lay.cols, record[3 : 3 + lay.ncols]))
            _loader_state(state, lay, per_layout[record[0]])
            new_states.append((state, lay))
        else:
            held.append((i, obj, lay))
        objs.append(obj)

    relations: list[tuple[int, Any, Any, bool, Any]] = []
    for i, record in enumerate(entities):
        lay = layouts[record[0]]
        base = 3 + lay.ncols
        for j, (key, uselist, impl) in enumerate(lay.rels):
            value = record[base + j]
            if uselist:
                if not isinstance(value, list):
                    raise CorruptEntry("collection is not a list")
                target: Any = [objs[_ref(v, n)] for v in value]
            else:
                target = None if value is None else objs[_ref(value, n)]
            relations.append((i, key, impl, uselist, target))

    data: list[Any]
    if scalar:
        data = [None if r is None else objs[_ref(r, n)] for r in rows]
    elif not any(kinds):
        data = [tuple(row) for row in rows]
        if any(len(row) != len(kinds) for row in data):
            raise CorruptEntry("row length does not match the result")
    else:
        data = []
        for row in rows:
            if len(row) != len(kinds):
                raise CorruptEntry("row length does not match the result")
            data.append(tuple(objs[_ref(v, n)] if (k and v is not None) else v
                              for k, v in zip(kinds, row)))  # fmt: skip

    # the entry is sound: now change the session
    is_new = [True] * n
    for i, obj, lay in held:
        is_new[i] = False
        _fill_unloaded(obj, lay, entities[i][3 : 3 + lay.ncols])
    for i, key, impl, uselist, target in relations:
        state = instance_state(objs[i])
        dict_ = state.dict
        if not is_new[i] and key in dict_:
            continue  # the session's own view of a held object wins
        if uselist:
            impl.set_committed_value(state, dict_, target)
        else:
            dict_[key] = target
            if not is_new[i]:
                state._commit(dict_, [key])
    _attach(session, new_states, layouts)
    return data


class Shape:
    """How to rebuild a Result like the ORM's; learned from a real result."""

    __slots__ = ("attributes", "flags", "metadata", "scalars", "unique")

    def __init__(self, metadata: Any, attributes: Any, scalars: bool, unique: Any,
                 rowcount_mode: int = 0):  # fmt: skip
        self.metadata = metadata
        self.attributes = attributes
        self.scalars = scalars
        self.unique = unique
        filtered = bool(attributes.get("filtered", False)) if attributes else False
        #: what another process needs to rebuild this shape (see derive_shape);
        #: the 4th says how the driver counted rows (a Core statement's rowcount)
        self.flags = [bool(scalars), filtered, unique is not None, rowcount_mode]

    def result(self, data: Sequence[Any], rowcount: int | None = None,
               session: Any = None) -> IteratorResult[Any]:  # fmt: skip
        """A Result over ``data``. With ``session``, rows holding ORM objects are
        fetched only while the session keeps the identity map they were put in
        (as the ORM's own result: after ``close()`` / ``expunge_all()`` it raises)."""
        live = session is not None and data and _holds_objects(data[0], self.scalars)
        if rowcount is None:
            result: IteratorResult[Any] = (LiveResult if live else IteratorResult)(
                self.metadata, iter(data))  # fmt: skip
        else:  # what a CursorResult has beyond rows
            result = CachedCursorResult(self.metadata, iter(data))
            result._rowcount = rowcount
        if live:
            result._qc_live = (session, session.identity_map, data)  # type: ignore[attr-defined]
        result._attributes = self.attributes
        result._source_supports_scalars = self.scalars
        if self.unique is not None:
            result._unique_filter_state = (set(), self.unique)
        return result


def _holds_objects(row: Any, scalars: bool) -> bool:
    if scalars:
        return _is_entity(row)
    return any(_is_entity(v) for v in row)


class LiveResult(IteratorResult):  # type: ignore[type-arg]
    """A hit's Result whose rows hold ORM objects: each fetch first checks that the
    session still keeps the identity map they were put in (the ORM's own result
    turns rows into objects as they are fetched, and raises after ``close()`` /
    ``expunge_all()``). One check per fetch call, not per row."""

    _qc_live: Any = None

    def _qc_check(self) -> None:
        live = self._qc_live
        if live is not None and live[0].identity_map is not live[1]:
            row = live[2][0]
            obj = row if _is_entity(row) else next(v for v in row if _is_entity(v))
            raise sa_exc.InvalidRequestError(  # the ORM's words (loading.py)
                f"Object {obj!r} cannot be converted to 'persistent' state, as this "
                "identity map is no longer valid.  Has the owning Session been closed?"
            )

    def _fetchiter_impl(self) -> Any:
        self._qc_check()
        return super()._fetchiter_impl()

    def _fetchone_impl(self, hard_close: bool = False) -> Any:
        self._qc_check()
        return super()._fetchone_impl(hard_close)

    def _fetchall_impl(self) -> Any:
        self._qc_check()
        return super()._fetchall_impl()

    def _fetchmany_impl(self, size: int | None = None) -> Any:
        self._qc_check()
        return super()._fetchmany_impl(size)


class CachedCursorResult(LiveResult):
    """A hit of a Core statement: the attributes of the CursorResult it stands for."""

    returns_rows = True
    is_insert = False
    _rowcount = -1

    @property
    def rowcount(self) -> int:
        return self._rowcount


def _require_unique(obj: Any) -> Any:
    raise sa_exc.InvalidRequestError(
        "The unique() method must be invoked on this Result, as it contains results that "
        "include joined eager loads against collections"
    )


def _lenient_hash(obj: Any) -> Any:
    try:
        return hash(obj)
    except TypeError:
        return id(obj)


_META_PARAMS = inspect.signature(SimpleResultMetaData.__init__).parameters


def derive_shape(compiled: Any, flags: Sequence[bool]) -> Shape:
    """A result shape from the ORM compile state, for an entry stored by another process.

    ``flags`` were recorded with the entry: (scalars, filtered, unique required).
    Reads ``ORMSelectCompileState._entities`` (``_label_name``,
    ``_extra_entities``, ``use_id_for_hash``); checked on SQLAlchemy 2.0.x and
    2.1.x; ``tests/test_hydrate.py`` compares it with the real shape.
    """
    scalars, filtered, unique_required = flags[:3]
    ents = getattr(compiled.compile_state, "_entities", None)
    if ents is None:  # a compound SELECT (UNION ...): its shape is learned from a load here
        raise NeedsLocalLoad("no ORM entities to derive the shape from")
    labels = [ent._label_name for ent in ents]
    extra = [ent._extra_entities for ent in ents]
    filters = [
        id if ent.use_id_for_hash
        else _lenient_hash if (ent._non_hashable_value or ent._null_column_type)
        else None
        for ent in ents
    ]  # fmt: skip
    if "_create_unique_filters" in _META_PARAMS:  # SQLAlchemy 2.1
        metadata = SimpleResultMetaData(labels, extra, _create_unique_filters=lambda r: filters)
    else:  # SQLAlchemy 2.0
        metadata = SimpleResultMetaData(labels, extra, _unique_filters=filters)  # type: ignore[call-arg]
    attributes = util_immutabledict({"filtered": filtered, "is_single_entity": scalars})
    rowcount_mode = flags[3] if len(flags) > 3 and type(flags[3]) is int else 0
    return Shape(metadata, attributes, scalars, _require_unique if unique_required else None,
                 rowcount_mode)  # fmt: skip


def mapper_of(entity: Any) -> Mapper[Any] | None:
    insp = sa_inspect(entity, raiseerr=False)
    return getattr(insp, "mapper", None)
