"""The baseline: SQLAlchemy's documented dogpile.cache recipe, re-implemented for the benchmark.

The shape follows SQLAlchemy's ``examples/dogpile_caching/caching_query.py``
(a ``do_orm_execute`` hook plus a ``UserDefinedOption``): the key is the
statement's offline cache-key string (SQL + parameters); a miss stores
``orm_state.invoke_statement().freeze()`` with ``region.get_or_create()``, so
the region's serializer (pickle, for dogpile's memory_pickle and network
backends) stores the FrozenResult with its ORM objects; a hit returns
``loading.merge_frozen_result(session, statement, frozen, load=False)()``.

It has no invalidation at all (the recipe leaves that to the application);
it is here only as the speed and size reference for hits.

:class:`FloorCache` is the other reference: the least work any cache hit can do.
"""

from __future__ import annotations

import hashlib
from typing import Any

from dogpile.cache import CacheRegion, make_region
from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, loading
from sqlalchemy.orm.interfaces import UserDefinedOption


class RecipeFromCache(UserDefinedOption):
    """Tag a statement for the recipe's cache (the recipe's own ``FromCache``)."""

    propagate_to_loaders = False  # selectin/lazy loads of a cached query are not cached apart

    def __init__(self, region: str = "default"):
        super().__init__(payload=region)
        self.region = region


def recipe_region(backend: str, prefix: str, **arguments: Any) -> CacheRegion:
    """A dogpile region as the recipe configures one: hashed keys, the backend's pickling."""

    def mangle(key: str) -> str:
        return prefix + hashlib.sha1(key.encode()).hexdigest()

    return make_region(key_mangler=mangle).configure(
        backend, expiration_time=600, arguments=arguments
    )


class RecipeCache:
    """``do_orm_execute`` caching of FrozenResult objects, as in SQLAlchemy's example.

    ``hits`` / ``misses`` count lookups; ``stored_keys`` lists the backend
    keys (after the region's key mangler) of every stored entry, so a caller
    can read the stored bytes back.
    """

    def __init__(self, regions: dict[str, CacheRegion]):
        self.regions = regions
        self._compiled: dict[Any, Any] = {}  # to_offline_string()'s statement cache
        self.hits = 0
        self.misses = 0
        self.stored_keys: list[str] = []
        self._target: Any = None

    def install(self, session_factory: Any) -> RecipeCache:
        """Listen on one Session class or sessionmaker; return self."""
        event.listen(session_factory, "do_orm_execute", self._on_execute)
        self._target = session_factory
        return self

    def uninstall(self) -> None:
        if self._target is not None:
            event.remove(self._target, "do_orm_execute", self._on_execute)
            self._target = None

    def cache_key(self, orm_state: ORMExecuteState) -> str:
        """SQL string and parameter values: the example's ``to_offline_string`` key."""
        statement: Any = orm_state.statement
        return statement._generate_cache_key().to_offline_string(
            self._compiled, statement, orm_state.parameters or {}
        )

    def _on_execute(self, orm_state: ORMExecuteState) -> Any:
        option = next(
            (o for o in orm_state.user_defined_options if isinstance(o, RecipeFromCache)), None
        )
        if option is None:
            return None
        region = self.regions[option.region]
        key = self.cache_key(orm_state)
        created = []

        def create() -> Any:
            created.append(True)
            return orm_state.invoke_statement().freeze()

        frozen = region.get_or_create(key, create)
        if created:
            self.misses += 1
            self.stored_keys.append(region.key_mangler(key) if region.key_mangler else key)
        else:
            self.hits += 1
        merged = loading.merge_frozen_result(
            orm_state.session, orm_state.statement, frozen, load=False
        )
        return merged()


class FloorCache:
    """The floor of a cache hit: a hook that hands back a result it already holds.

    On a hit it only keys the statement (``_generate_cache_key()``, which any
    cache must do) and returns a Result over a FrozenResult kept in a dict: no
    I/O, no decoding, no new objects (the cached ORM objects are detached and
    shared by every session, which no real cache may do). What is left is the
    caller's own work: building the statement, the Session, reading the
    attributes. ``hits`` / ``misses`` count lookups.
    """

    def __init__(self) -> None:
        self._results: dict[Any, Any] = {}
        self.hits = 0
        self.misses = 0
        self._target: Any = None

    def install(self, session_factory: Any) -> FloorCache:
        event.listen(session_factory, "do_orm_execute", self._on_execute)
        self._target = session_factory
        return self

    def uninstall(self) -> None:
        if self._target is not None:
            event.remove(self._target, "do_orm_execute", self._on_execute)
            self._target = None

    def _on_execute(self, orm_state: ORMExecuteState) -> Any:
        option = next(
            (o for o in orm_state.user_defined_options if isinstance(o, RecipeFromCache)), None
        )
        if option is None:
            return None
        statement: Any = orm_state.statement
        statement._generate_cache_key()  # the keying every cache has to do
        frozen = self._results.get(option.region)  # the region name keys one statement
        if frozen is None:
            self.misses += 1
            frozen = self._results[option.region] = orm_state.invoke_statement().freeze()
        else:
            self.hits += 1
        return frozen()
