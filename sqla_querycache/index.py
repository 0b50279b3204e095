"""Unique-key lookups through the identity cache: ``QueryCache.get_by``.

``cache.get_by(session, User, email="a@example.com")`` is ``session.get`` for
a declared unique key other than the primary key (Shopify identity_cache's
``cache_index ... unique: true``, Hibernate's natural-id region).

An *index entry* maps the key's values to a primary key. It carries no
versions of its own and is never trusted alone: a hit loads the object
through ``session.get`` (the identity map, then the identity region, whose
per-row entries are validated by the row's own versions like any other) and
serves it only if the object's attributes still *equal* the values asked
for. That check is what makes the entry safe without tracking who may take
a value:

- the row changed its key, or was deleted: ``session.get`` gives the row as it
  is now (or nothing), the values differ (or there is no object): a miss;
- another row took the value: under a unique constraint it could only after
  the indexed row gave it up, which the check sees;
- Python ``==`` on the values is stricter than any collation (identical
  strings are equal under every one): a difference the database would not
  make costs a miss, never a wrong row.

A miss (and "no such row", which is not cached) runs the uncached query, with
the session's autoflush, exactly as the caller's own ``select`` would, and
stores the mapping of the row it found. Unsaved changes of the class in the
session bypass the cache: the uncached query sees them after its autoflush.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

from . import codec
from .exc import ConfigurationError
from .options import NoCache

#: the format of an index entry (its first item)
INDEX_FORMAT = 1


@functools.cache
def unique_keys(mapper: Any) -> tuple[frozenset[str], ...]:
    """The attribute-name sets that a declared constraint or index makes unique
    (worked out once per mapper: declared tables do not change)."""
    table = mapper.local_table
    by_column = {}
    for prop in mapper.column_attrs:
        for col in prop.columns:
            if getattr(col, "table", None) is table:
                by_column[col.key] = prop.key
    keys: list[frozenset[str]] = []

    def add(columns: Any) -> None:
        names = [by_column.get(c.key) for c in columns]
        if names and all(names):
            keys.append(frozenset(n for n in names if n))

    for col in table.columns:
        if col.unique:
            add([col])
    for cons in table.constraints:
        if type(cons).__name__ == "UniqueConstraint":
            add(list(cons.columns))
    for ix in table.indexes:
        if ix.unique and all(hasattr(c, "table") for c in ix.expressions):
            add(list(ix.expressions))
    return tuple(keys)


def check_key(mapper: Any, values: dict[str, Any]) -> None:
    """ConfigurationError unless ``values`` names exactly a declared unique key."""
    if not values:
        raise ConfigurationError("get_by needs the values of a unique key, e.g. email=...")
    wanted = frozenset(values)
    keys = unique_keys(mapper)
    if wanted not in keys:
        known = sorted(", ".join(sorted(k)) for k in keys) or ["none declared"]
        raise ConfigurationError(
            f"{mapper.class_.__name__}: ({', '.join(sorted(wanted))}) is not a declared "
            f"unique key (unique=True, UniqueConstraint or a unique Index); "
            f"unique keys: {'; '.join(known)}"
        )


def index_key(cache: Any, mapper: Any, values: dict[str, Any]) -> str | None:
    """The entry's key, or None for values that cannot be keyed (NULL, odd types)."""
    items = sorted(values.items())
    if any(v is None for _, v in items):
        return None  # NULL is never equal to anything: always the query
    try:
        packed = codec.packb([mapper.class_.__module__, mapper.class_.__qualname__,
                              [k for k, _ in items], [v for _, v in items]])  # fmt: skip
    except Exception:
        return None
    digest = hashlib.blake2b(packed, digest_size=16).hexdigest()
    return f"{cache.namespace}:ix:{digest}"


def get_by(cache: Any, session: Session, entity: Any, values: dict[str, Any]) -> Any:
    mapper = inspect(entity)
    check_key(mapper, values)
    region_name = cache.identity_region
    if region_name is None:
        raise ConfigurationError("get_by needs QueryCache(identity_region=...)")
    region = cache._region(region_name)
    key = index_key(cache, mapper, values) if cache.enabled else None
    if key is not None and _unsaved(session, mapper):
        key = None  # the query's autoflush must see them
    if key is not None:
        obj = _hit(cache, session, entity, region, key, values)
        if obj is not None:
            return obj
    stmt = select(entity).filter_by(**values).options(NoCache())
    obj = session.execute(stmt).scalars().one_or_none()
    if obj is not None and key is not None:
        _store(cache, mapper, region, key, obj)
    return obj


def _unsaved(session: Session, mapper: Any) -> bool:
    for obj in (*session.new, *session.dirty, *session.deleted):
        if inspect(obj).mapper.isa(mapper) or mapper.isa(inspect(obj).mapper):
            return True
    return False


def _hit(cache: Any, session: Session, entity: Any, region: Any, key: str,
         values: dict[str, Any]) -> Any:  # fmt: skip
    try:
        raw = region.get(key)
        if raw is None:
            return None
        fmt, stored_key, ident = codec.unpackb(cache.sealer.open(key, raw))
        if fmt != INDEX_FORMAT or stored_key != key or type(ident) is not list:
            return None
    except Exception as err:  # unreachable, corrupt or forged: the query answers
        cache._warn(("index", type(err)), "index entry unusable: %r", err)
        return None
    obj = session.get(entity, tuple(ident))
    if obj is None:
        return None
    try:
        same = all(getattr(obj, k) == v for k, v in values.items())
    except Exception:
        return None
    return obj if same is True else None


def _store(cache: Any, mapper: Any, region: Any, key: str, obj: Any) -> None:
    try:
        ident = list(mapper.identity_key_from_instance(obj)[1])
        blob = codec.packb([INDEX_FORMAT, key, ident])
        region.set(key, cache.sealer.seal(key, blob), None)
    except Exception as err:  # a cache problem costs a miss next time, nothing else
        cache._warn(("index", type(err)), "index entry not stored: %r", err)
