"""QueryCache: regions, version store, stats; the read and write paths.

See ``ARCHITECTURE.md`` for the data path. In short, a cacheable SELECT seen
by ``do_orm_execute`` is keyed (:mod:`.keys`), looked up together with the
current versions of every table it reads (:mod:`.versions`), and on a hit
rebuilt from plain values (:mod:`.hydrate`) without touching the database.
Writes are tracked per connection (:mod:`.tracking`) and bump versions
around the commit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy.engine import Engine
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.orm.context import FromStatement
from sqlalchemy.sql.elements import ClauseElement, TextClause
from sqlalchemy.sql.selectable import Select

from . import codec, events, keys, tracking
from .codec import CorruptEntry, Unencodable
from .exc import ConfigurationError, UnknownRegionError
from .hydrate import (
    MapperSet,
    NeedsLocalLoad,
    NotStorable,
    Shape,
    dehydrate,
    derive_shape,
    hydrate,
    mapper_of,
)
from .options import EXPIRATION_OPTION, REGION_OPTION, FromCache, NoCache
from .regions import RegionStore, now
from .stats import Stats
from .versions import VersionStore
from .versions import make_version_store as _make_version_store

log = logging.getLogger("sqla_querycache")

_SNAPSHOT_LEVELS = frozenset({"REPEATABLE READ", "SERIALIZABLE", "SNAPSHOT"})
_SKIP_OPTIONS = ("yield_per", "stream_results", "populate_existing", "max_row_buffer")

try:  # greenlet-spawned code (AsyncSession) must not block its event loop's thread
    import greenlet  # noqa: F401
    from sqlalchemy.util.concurrency import in_greenlet as _in_greenlet
except ImportError:  # no greenlet, no AsyncSession

    def _in_greenlet() -> bool:
        return False


class _KeyLocks:
    """One lock per cache key being computed, so concurrent misses query once."""

    def __init__(self) -> None:
        self._locks: dict[str, list[Any]] = {}
        self._guard = threading.Lock()

    @contextmanager
    def hold(self, key: str, timeout: float) -> Iterator[tuple[bool, bool]]:
        """Yield (acquired, waited): waited means another miss held the key first."""
        with self._guard:
            entry = self._locks.get(key)
            if entry is None:
                entry = self._locks[key] = [threading.Lock(), 0]
            entry[1] += 1
        lock = entry[0]
        waited = False
        acquired = lock.acquire(blocking=False)
        # a greenlet (AsyncSession) must not block the event loop's thread
        if not acquired and not _in_greenlet():
            waited = True
            acquired = lock.acquire(timeout=timeout)
        try:
            yield acquired, waited
        finally:
            if acquired:
                entry[0].release()
            with self._guard:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._locks[key]


class QueryCache:
    """Cache ORM SELECT results in dogpile.cache regions, invalidated per table.

    Example::

        from dogpile.cache import make_region
        from sqla_querycache import QueryCache, FromCache

        cache = QueryCache(regions={
            "default": make_region().configure("dogpile.cache.memory", expiration_time=600),
        })
        cache.install(Session)
        session.execute(select(Product).options(FromCache()))

    :param regions: region name -> configured dogpile ``CacheRegion``, or a
        dict of ``CacheRegion.configure()`` arguments (then the region uses a
        safe msgpack serializer).
    :param versions: ``"local"`` (default, one process), a Redis URL or
        client (shared by every process), ``"sql"`` (a table in the
        application's database), or a :class:`~.versions.VersionStore`.
    :param namespace: prefix of every key the extension writes.
    :param max_entry_bytes: entries larger than this are not stored.
    :param lock_timeout: seconds a concurrent miss waits for the first one.
    :param memo_size: decoded entries this process keeps between hits (a hit
        on one of them reads only the versions); 0 disables it.
    """

    def __init__(
        self,
        regions: Mapping[str, Any],
        *,
        versions: str | VersionStore | Any = "local",
        namespace: str = "qc",
        max_entry_bytes: int = 1 << 20,
        lock_timeout: float = 30.0,
        plan_memo_size: int = 2000,
        memo_size: int = 1000,
    ):
        if not isinstance(regions, Mapping) or not regions:
            raise ConfigurationError("regions must be a non-empty mapping of name -> region")
        if not isinstance(namespace, str) or not namespace or any(c in namespace for c in " :{}"):
            raise ConfigurationError(f"namespace must be a short word, got {namespace!r}")
        if (
            isinstance(max_entry_bytes, bool)
            or not isinstance(max_entry_bytes, int)
            or max_entry_bytes <= 0
        ):
            raise ConfigurationError(f"max_entry_bytes must be a positive int: {max_entry_bytes!r}")
        if not isinstance(lock_timeout, (int, float)) or lock_timeout < 0:
            raise ConfigurationError(f"lock_timeout must be >= 0 seconds: {lock_timeout!r}")
        self.regions: dict[str, RegionStore] = {}
        for name, region in regions.items():
            if not isinstance(name, str) or not name:
                raise ConfigurationError(f"region names must be non-empty str, got {name!r}")
            self.regions[name] = RegionStore(name, region)
        self.namespace = namespace
        self.max_entry_bytes = max_entry_bytes
        self.lock_timeout = float(lock_timeout)
        self.versions: VersionStore = _make_version_store(versions, namespace)
        self._plans: keys.LRU[keys.Plan] = keys.LRU(plan_memo_size)
        self._mapper_sets: dict[Any, MapperSet] = {}
        self._bind_ids: WeakKeyDictionary[Engine, str] = WeakKeyDictionary()
        self._stats = Stats(self.regions)
        self._locks = _KeyLocks()
        self._info_key = f"_sqla_querycache_{id(self)}"
        self._installed: events.Installation | None = None
        self._warned: set[Any] = set()
        if isinstance(memo_size, bool) or not isinstance(memo_size, int) or memo_size < 0:
            raise ConfigurationError(f"memo_size must be an int >= 0: {memo_size!r}")
        self._memo: keys.LRU[_Entry] = keys.LRU(memo_size)
        self._failed_bumps = _PendingBumps(self)

    # ------------------------------------------------------------ public API

    def install(self, target: Any) -> QueryCache:
        """Hook a Session class, subclass or sessionmaker (also async ones); return self."""
        if self._installed is not None:
            raise ConfigurationError("this QueryCache is already installed; uninstall() first")
        self._installed = events.install(self, target)
        return self

    def uninstall(self) -> None:
        """Remove every listener :meth:`install` added."""
        if self._installed is not None:
            self._installed.remove()
            self._installed = None

    def close(self) -> None:
        """Uninstall, and stop the version store's threads and connections."""
        self.uninstall()
        close = getattr(self.versions, "close", None)
        if close is not None:
            close()

    def stats(self) -> dict[str, dict[str, Any]]:
        """Counters per region (``hits``, ``misses``, ``stores``, ``errors``, ...)."""
        return self._stats.regions()

    def table_stats(self) -> dict[str, dict[str, int]]:
        """Per table: ``invalidations`` (writes committed) and ``bypassed`` reads."""
        return self._stats.tables()

    def reset_stats(self) -> None:
        self._stats.reset()

    def invalidate(self, *targets: Any, tables: Sequence[Any] = ()) -> list[str]:
        """Invalidate every entry that read the given tables, models or statements.

        ``cache.invalidate(Product)``, ``cache.invalidate(select(Product))``,
        ``cache.invalidate(tables=["product"])``. Returns the version names bumped.
        """
        names: set[str] = {tracking.table_name(t) for t in tables}
        for target in targets:
            names.update(self._names_of(target))
        if not names:
            raise ConfigurationError("invalidate() needs tables, a mapped class or a statement")
        self._bump(sorted(names))
        return sorted(names)

    def invalidate_region(self, name: str) -> None:
        """Invalidate every entry of one region, in every process sharing the versions."""
        self._region(name)
        self._bump([f"@region:{name}"])

    def invalidate_all(self) -> None:
        """Invalidate every entry of every region."""
        self._bump([tracking.ALL_TABLES])

    def __repr__(self) -> str:
        stats = self.stats()
        parts = []
        for name, store in self.regions.items():
            s = stats[name]
            ratio = "-" if s["hit_ratio"] is None else f"{s['hit_ratio']:.0%}"
            parts.append(
                f"  {name!r}: {store.kind} hits={s['hits']} misses={s['misses']} "
                f"stores={s['stores']} errors={s['errors']} hit_ratio={ratio}"
            )
        state = "installed" if self._installed is not None else "not installed"
        return (
            f"<QueryCache namespace={self.namespace!r} versions={self.versions!r} "
            f"{state}\n" + "\n".join(parts) + "\n>"
        )

    # ---------------------------------------------------------- helpers

    def _region(self, name: str) -> RegionStore:
        try:
            return self.regions[name]
        except KeyError:
            raise UnknownRegionError(
                f"unknown cache region {name!r}; configured: {sorted(self.regions)}"
            ) from None

    def _names_of(self, target: Any) -> set[str]:
        if isinstance(target, str):
            return {tracking.table_name(target)}
        mapper = mapper_of(target)
        if mapper is not None:
            return {tracking.table_name(t) for t in mapper.tables}
        if isinstance(target, ClauseElement):
            found = keys.tables_read(None, target)
            return set(found)
        raise ConfigurationError(f"cannot tell which tables {target!r} reads")

    def _warn_once(self, what: Any, msg: str, *args: Any) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning(msg, *args)

    def _bump(self, names: Sequence[str]) -> None:
        try:
            self.versions.bump(names)
        except Exception as err:  # fail open: remember and retry
            self._warn_once(("bump", type(err)), "version store bump failed: %r", err)
            self._failed_bumps.add(names)
        for name in names:
            self._stats.table(name, "invalidations")

    # ------------------------------------------------------------ read path

    def _region_for(self, orm_state: ORMExecuteState) -> tuple[str | None, float | None]:
        region = ttl = None
        for opt in orm_state.user_defined_options:
            if isinstance(opt, NoCache):
                return None, None
            if isinstance(opt, FromCache) and region is None:
                region, ttl = opt.region, opt.expiration_time
        if region is None:
            stmt_opts = orm_state.statement._execution_options
            local = orm_state.local_execution_options
            if REGION_OPTION in stmt_opts:
                region = stmt_opts[REGION_OPTION]
            elif REGION_OPTION in local:
                region = local[REGION_OPTION]
            else:
                region = orm_state.session.info.get(REGION_OPTION)
            if region is None:
                return None, None
            ttl = orm_state.execution_options.get(EXPIRATION_OPTION)
        return region, ttl

    def _plan(self, orm_state: ORMExecuteState, cache_key: Any, bind: Any) -> keys.Plan:
        engine = bind.engine
        engine_id = self._bind_ids.get(engine)
        if engine_id is None:
            # an engine made by execution_options() carries its own schema map
            engine_id = keys.bind_identity(keys.engine_identity(engine), engine, {})
            self._bind_ids[engine] = engine_id
        opts = orm_state.execution_options
        bind_id = engine_id
        if bind is not engine or "schema_translate_map" in opts or "identity_token" in opts:
            bind_id = keys.bind_identity(engine_id, bind, opts)
        load_options = _load_options(orm_state)
        shape_opts = (  # legacy Query options that change the rows' shape, not the SQL
            bool(getattr(load_options, "_only_return_tuples", False)),
            bool(getattr(load_options, "_legacy_uniquing", False)),
        )
        memo_key = (cache_key.key, bind_id, shape_opts)
        plan = self._plans.get(memo_key)
        if plan is not None:
            return plan
        stmt: Any = orm_state.statement
        if engine.dialect.server_version_info is None:
            # compiling before the first connect would memoize type decisions
            # for a server the dialect has not seen yet (MariaDB's UUID, ...)
            with engine.connect():
                pass
        compiled = stmt.compile(bind=engine)
        tables = keys.tables_read(compiled, stmt)
        roots = []
        for ent in getattr(compiled.compile_state, "_entities", ()) or ():
            m = getattr(ent, "mapper", None) or getattr(ent, "entity_zero", None)
            m = getattr(m, "mapper", m)
            if m is not None and hasattr(m, "base_mapper"):
                roots.append(m)
        mappers = self._mapper_set(roots)
        codec.register_enums_of(c.type for c in getattr(stmt, "selected_columns", ()))
        digest = keys.make_digest(
            self.namespace,
            str(codec.FORMAT_VERSION),
            bind_id,
            str(compiled),
            keys.stable_repr(cache_key.key),
            mappers.fingerprint,
            repr(shape_opts),
        )
        plan = keys.Plan(digest, compiled, tables, mappers)
        self._plans.put(memo_key, plan)
        return plan

    def _mapper_set(self, roots: list[Any]) -> MapperSet:
        k = tuple(sorted(id(r) for r in roots))
        ms = self._mapper_sets.get(k)
        if ms is None:
            ms = self._mapper_sets[k] = MapperSet(roots)
        return ms

    def _cacheable(self, orm_state: ORMExecuteState) -> bool:
        if not is_select(orm_state) or orm_state.is_column_load or orm_state.is_relationship_load:
            return False
        if orm_state.is_executemany:
            return False
        opts = orm_state.execution_options
        if any(opts.get(o) for o in _SKIP_OPTIONS):
            return False
        stmt = orm_state.statement
        if getattr(stmt, "_for_update_arg", None) is not None:
            return False
        load_options = _load_options(orm_state)
        return not (
            getattr(load_options, "_populate_existing", False)
            or getattr(load_options, "_yield_per", None)
        )

    def _on_execute(self, orm_state: ORMExecuteState) -> Any:
        if orm_state.is_relationship_load or orm_state.is_column_load:
            return None  # part of a load we cache whole, or a refresh
        region_name, ttl = self._region_for(orm_state)
        if region_name is None:
            return None
        region = self._region(region_name)  # an unknown name is a configuration error
        if not self._cacheable(orm_state):
            self._stats.incr(region_name, "uncacheable")
            return None
        session = orm_state.session
        try:
            statement: Any = orm_state.statement
            cache_key = statement._generate_cache_key()
            if cache_key is None:
                self._stats.incr(region_name, "uncacheable")
                return None
            bind = session.get_bind(**orm_state.bind_arguments)
            plan = self._plan(orm_state, cache_key, bind)
            key = keys.entry_key(
                self.namespace, region_name, plan, cache_key.bindparams, orm_state.parameters,
                getattr(cache_key, "params", None), keys.user_options(orm_state.execution_options),
            )  # fmt: skip
        except Unencodable:
            self._stats.incr(region_name, "uncacheable")
            return None
        except Exception as err:  # never our exception in the user's query
            self._warn_once(("key", type(err)), "cannot key a statement: %r", err)
            self._stats.incr(region_name, "errors")
            return None

        if not self._may_use(session, bind, plan, region_name):
            return None
        names = plan.names.get(region_name)
        if names is None:
            names = plan.names[region_name] = (
                *plan.tables,
                tracking.ALL_TABLES,
                f"@region:{region_name}",
            )
        if self._failed_bumps and self._failed_bumps.blocks(names):
            self._stats.incr(region_name, "bypassed")
            return None

        ttl = ttl if ttl is not None else region.expiration_time
        mappers = plan.mappers
        result, versions = self._lookup(orm_state, region, key, names, plan, mappers, ttl)
        if result is not None:
            return result
        if versions is None:  # tables in flight, or the version store is down
            self._stats.incr(region_name, "bypassed")
            return None
        self._stats.incr(region_name, "misses")
        with self._locks.hold(key, self.lock_timeout) as (locked, waited):
            mutex = region.mutex(key) if locked else None
            if mutex is not None:
                mutex.acquire()
            try:
                if waited or mutex is not None:  # someone may have stored it meanwhile
                    result, versions = self._lookup(
                        orm_state, region, key, names, plan, mappers, ttl, second=True
                    )
                    if result is not None:
                        return result
                    if versions is None:
                        return None
                return self._miss(orm_state, region, key, names, versions, plan, ttl)
            finally:
                if mutex is not None:
                    try:
                        mutex.release()
                    except Exception as err:
                        self._warn_once(("mutex", type(err)), "cache mutex release: %r", err)

    def _may_use(self, session: Session, bind: Any, plan: keys.Plan, region: str) -> bool:
        """Read-your-writes and snapshot rules: may this session use the cache here?"""
        tracker = session.info.get(self._info_key)
        written = tracker.written() if tracker is not None else None
        if session.autoflush and not session._is_clean():
            pending = tracking.pending_tables(session)
            written = pending if written is None else written | pending
        if written:
            read = plan.tables
            if (
                tracking.ALL_TABLES in written
                or keys.ANY_TABLE in read
                or not written.isdisjoint(read)
            ):
                self._stats.incr(region, "bypassed")
                for name in written.intersection(read):
                    self._stats.table(name, "bypassed")
                return False
        if _snapshot_started(session, bind):
            self._stats.incr(region, "bypassed")
            return False
        return True

    def _lookup(
        self,
        orm_state: ORMExecuteState,
        region: RegionStore,
        key: str,
        names: tuple[str, ...],
        plan: keys.Plan,
        mappers: MapperSet,
        ttl: float | None,
        second: bool = False,
    ) -> tuple[Any, list[int] | None]:
        """(result or None, current versions or None if unusable).

        An entry this process decoded before is kept decoded (``self._memo``);
        then only the versions are read. It is valid under exactly the same
        rule as the stored one: its versions equal the current ones.
        """
        memo_key = (region.name, key)
        entry = None if second else self._memo.get(memo_key)
        try:
            if entry is not None:
                raw, versions = None, self._read_versions(names, orm_state)
            else:
                raw, versions = self._fetch(region, key, names, orm_state)
        except Exception as err:
            self._warn_once(("get", region.name, type(err)), "cache read failed (%s): %r",
                            region.name, err)  # fmt: skip
            self._stats.incr(region.name, "errors")
            return None, None
        if versions is None:
            return None, None
        try:
            if entry is None:
                if raw is None:
                    return None, versions
                entry = _Entry.decode(raw, key, names)
                self._memo.put(memo_key, entry)
            if entry.versions != versions:
                self._memo.pop(memo_key)
                return None, versions  # stale: a table was written since
            if ttl is not None and now() - entry.created > ttl:
                return None, versions
            flags = entry.flags
            shape = plan.shape or plan.derived.get(tuple(flags))
            if shape is None:
                shape = plan.derived[tuple(flags)] = derive_shape(plan.compiled, flags)
            options: Any = orm_state.statement._with_options
            load_options = tuple(opt for opt in options if opt.propagate_to_loaders)
            data = hydrate(orm_state.session, mappers, entry.payload(), plan.templates,
                           load_options, shape)  # fmt: skip
        except NeedsLocalLoad:
            # objects need loader state only a load in this process can give
            # (raiseload, load_only(raiseload=True), aliased paths): run it once
            return None, versions
        except Exception as err:  # corrupt, foreign or mismatched: a miss
            self._memo.pop(memo_key)
            if not second:  # the same entry, read again under the lock, counts once
                self._warn_once(("decode", region.name), "undecodable cache entry in %s: %r",
                                region.name, err)  # fmt: skip
                self._stats.incr(region.name, "corrupt")
            return None, versions
        self._stats.incr(region.name, "hits")
        return shape.result(data), versions

    def _read_versions(self, names: tuple[str, ...], orm_state: Any) -> list[int] | None:
        store = self.versions
        if getattr(store, "needs_bind", False):
            return store.read(names, orm_state.session.get_bind(**orm_state.bind_arguments))
        return store.read(names)

    def _fetch(
        self, region: RegionStore, key: str, names: tuple[str, ...], orm_state: Any
    ) -> tuple[bytes | None, list[int] | None]:
        """The entry and the current versions; one round trip when both live in one Redis."""
        store = self.versions
        if region.combined is None:
            same = getattr(store, "same_server", None)
            region.combined = bool(region.redis is not None and same and same(region.redis))
        if region.combined:
            raw, versions = store.read_with_entry(region.redis, key, names)  # type: ignore[attr-defined]
            return raw, versions
        return region.get(key), self._read_versions(names, orm_state)

    def _miss(
        self,
        orm_state: ORMExecuteState,
        region: RegionStore,
        key: str,
        names: tuple[str, ...],
        versions: list[int],
        plan: keys.Plan,
        ttl: float | None,
    ) -> Any:
        session = orm_state.session
        idmap = session.identity_map
        preexisting = set(idmap.keys()) if len(idmap) else None
        result = orm_state.invoke_statement()  # the user's query: its errors propagate
        unique = result._unique_filter_state
        result._unique_filter_state = None
        frozen = result.freeze()
        shape = Shape(frozen.metadata, frozen._attributes, frozen._source_supports_scalars,
                      unique[1] if unique else None)  # fmt: skip
        plan.shape = shape
        out = shape.result(frozen.data)
        try:
            templates: dict[Any, Any] = {}
            payload = dehydrate(frozen.data, shape.scalars, preexisting, templates)
            if templates:
                plan.templates = {**(plan.templates or {}), **templates}
            flags = shape.flags
            created = now()
            blob = codec.packb(
                [codec.FORMAT_VERSION, key, created, list(names), versions, flags, payload]
            )
        except (NotStorable, Unencodable) as err:
            log.debug("not storing %s: %s", key, err)
            self._stats.incr(region.name, "not_stored")
            return out
        except Exception as err:
            self._warn_once(("dehydrate", type(err)), "cannot store a result: %r", err)
            self._stats.incr(region.name, "errors")
            return out
        if len(blob) > self.max_entry_bytes:
            self._stats.incr(region.name, "too_large")
            return out
        try:
            region.set(key, blob, ttl)
            self._stats.incr(region.name, "stores")
            # the payload we just built holds the live objects' values: keep it
            # decoded only if none of them can change in place
            kept = None if _has_mutable(payload) else payload
            self._memo.put((region.name, key), _Entry(created, versions, flags, blob, kept))
        except Exception as err:
            self._warn_once(("set", region.name, type(err)), "cache write failed (%s): %r",
                            region.name, err)  # fmt: skip
            self._stats.incr(region.name, "errors")
        return out

    # ----------------------------------------------------------- write path

    def _conn_tracker(self, info: dict[str, Any]) -> tracking.ConnTracker:
        ct = info.get(self._info_key)
        if ct is None:
            ct = info[self._info_key] = tracking.ConnTracker()
        return ct

    def _on_write(self, conn: Any, names: frozenset[str], autocommit: bool) -> None:
        ct = self._conn_tracker(conn.info)
        if autocommit:  # the statement commits itself; settled after it ran
            ct.committing.append(self._begin_commit([*names, keys.ANY_TABLE]))
            return
        ct.written |= names
        ct.written.add(keys.ANY_TABLE)
        begin_async = getattr(self.versions, "begin_async", None)
        if begin_async is not None:
            new = ct.written - ct.marked
            if new:  # mark now: the round trip overlaps the transaction's own statements
                ordered = tuple(sorted(new))
                ct.marked |= new
                ct.marks.append((begin_async(ordered), ordered, time.monotonic()))

    def _begin_commit(self, names: list[str], conn: Any = None) -> tuple[tuple[str, ...], bool]:
        """Before the database commit: bump and mark in flight. (names, marked?)

        If the store does not answer, keep trying for its ``retry_window``
        (the Redis store's epoch lease) before letting the commit proceed;
        see :class:`~.versions.RedisVersions` for why that makes outages safe.
        """
        t = tuple(sorted(names))
        deadline = None
        while True:
            try:
                self.versions.begin_write(t, conn)
                return t, True
            except Exception as err:
                now_ = time.monotonic()
                if deadline is None:
                    self._warn_once(("begin_write", type(err)), "version store failed: %r",
                                    err)  # fmt: skip
                    deadline = now_ + getattr(self.versions, "retry_window", 0.0)
                if now_ >= deadline:
                    self._failed_bumps.add(t)  # bypassed here until a bump lands
                    return t, False
                time.sleep(0.05)

    def _end_commit(self, names: tuple[str, ...], marked: bool) -> None:
        """After the database commit: bump again and clear the in-flight mark.

        Readers already bypass marked tables, so for a remote store this
        need not delay the commit: it is handed to a background thread.
        """
        if marked:
            self._end_write(names)
        for name in names:
            self._stats.table(name, "invalidations")

    def _end_write(self, names: tuple[str, ...]) -> None:
        try:
            self.versions.end_write(names)
        except Exception as err:
            self._warn_once(("end_write", type(err)), "version store failed: %r", err)
            self._failed_bumps.add(names, in_flight=True)

    def _on_commit(self, conn: Any) -> None:
        ct = conn.info.get(self._info_key)
        if ct is None or not ct.written:
            return
        confirmed = self._collect_marks(ct) if ct.marks else set()
        rest = ct.written - confirmed
        if rest:  # not marked ahead, or the mark did not land (in time)
            ct.committing.append(self._begin_commit(list(rest), conn))
        ct.written = set()

    def _collect_marks(self, ct: tracking.ConnTracker) -> set[str]:
        """Await the marks sent ahead; return the tables safely marked now.

        A mark that landed is ended after the commit in any case (the counter
        must come back down); one older than half its TTL is marked again.
        """
        confirmed: set[str] = set()
        store: Any = self.versions
        fresh_until = time.monotonic() - store.in_flight_ttl / 2
        for ticket, names, sent in ct.marks:
            if store.wait(ticket):
                ct.committing.append((names, True))
                if sent > fresh_until:
                    confirmed.update(names)
        ct.marks = []
        ct.marked = set()
        return confirmed

    def _settle(self, info: dict[str, Any] | None) -> None:
        """After a commit returned (or at the next sign of it): the post-commit bump."""
        ct = info.get(self._info_key) if info is not None else None
        if ct is not None:
            self._settle_tracker(ct)

    def _settle_tracker(self, ct: tracking.ConnTracker) -> None:
        while ct.committing:
            self._end_commit(*ct.committing.pop())

    def _on_rollback(self, info: dict[str, Any]) -> None:
        ct = info.get(self._info_key)
        if ct is not None:
            if ct.marks:  # marks that landed must come back down (their bump stays)
                store: Any = self.versions
                for ticket, names, _ in ct.marks:
                    if store.wait(ticket):
                        self._end_write(names)
                ct.marks = []
                ct.marked = set()
            ct.written = set()




def _load_options(orm_state: ORMExecuteState) -> Any:
    """``orm_state.load_options``, which SQLAlchemy refuses for from_statement(text())."""
    if orm_state.is_select:
        return orm_state.load_options
    return orm_state.execution_options.get("_sa_orm_load_options")


def is_select(orm_state: ORMExecuteState) -> bool:
    """A SELECT, including ``select(Entity).from_statement(text(...))``.

    SQLAlchemy reports ``is_select`` False for a FromStatement wrapping a
    TextClause; it returns rows like any ORM select all the same.
    """
    if orm_state.is_select:
        return True
    stmt = orm_state.statement
    return isinstance(stmt, FromStatement) and isinstance(stmt.element, (TextClause, Select))


def _snapshot_started(session: Session, bind: Any) -> bool:
    """Does the session's transaction already hold a snapshot older than now (I3)?

    Uses ``SessionTransaction._connections`` (SQLAlchemy 2.0 and 2.1): a
    transaction that has not connected yet will take its snapshot at this
    query, after the versions were read, which is safe.
    """
    trans = session._transaction
    if trans is None:
        return False
    entry = trans._connections.get(bind.engine) or trans._connections.get(bind)
    if entry is None:
        return False
    conn = entry[0]
    if conn.dialect.name == "sqlite":
        return False  # pysqlite starts no transaction for reads
    level = conn.get_execution_options().get("isolation_level") or conn.default_isolation_level
    return str(level).upper() in _SNAPSHOT_LEVELS


_MUTABLE = (list, dict, set, bytearray)


def _has_mutable(payload: Any) -> bool:
    """Does a payload hold values a user could change in place (JSON lists and dicts)?"""
    layouts, entities, kinds, scalar, rows = payload
    widths = [len(lay[1]) for lay in layouts]
    for record in entities:
        for v in record[3 : 3 + widths[record[0]]]:
            if isinstance(v, _MUTABLE):
                return True
    if not scalar and not all(kinds):
        for row in rows:
            for is_entity, v in zip(kinds, row):
                if not is_entity and isinstance(v, _MUTABLE):
                    return True
    return False


class _Entry:
    """A cache entry as this process holds it between hits.

    The decoded payload is kept when it holds only immutable values (then it
    can be shared by every hit); otherwise the bytes are kept and decoded per
    hit, so that no session can change what another one gets.
    """

    __slots__ = ("_payload", "_raw", "created", "flags", "versions")

    def __init__(self, created: float, versions: list[int], flags: list[bool], raw: Any,
                 payload: Any = None):  # fmt: skip
        self.created = created
        self.versions = versions
        self.flags = flags
        self._raw = raw
        self._payload = payload

    @classmethod
    def decode(cls, raw: bytes, key: str, names: tuple[str, ...]) -> _Entry:
        fmt, stored_key, created, stored_names, versions, flags, payload = codec.unpackb(raw)
        if fmt != codec.FORMAT_VERSION or stored_key != key or stored_names != list(names):
            raise CorruptEntry("entry of another format or statement")
        if _has_mutable(payload):
            return cls(created, versions, flags, raw)
        return cls(created, versions, flags, None, payload)

    def payload(self) -> Any:
        payload = self._payload
        if payload is None:
            payload = codec.unpackb(self._raw)[6]
            if not _has_mutable(payload):
                self._payload, self._raw = payload, None
        return payload


class _PendingBumps:
    """Invalidations the version store could not take yet; retried, and bypassed meanwhile."""

    def __init__(self, cache: QueryCache):
        self._cache = cache
        self._lock = threading.Lock()
        self._pending: list[tuple[tuple[str, ...], bool]] = []
        self._names: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self._pending)

    def add(self, names: Sequence[str], in_flight: bool = False) -> None:
        with self._lock:
            self._pending.append((tuple(names), in_flight))
            self._names.update(names)

    def blocks(self, names: Sequence[str]) -> bool:
        """True while an undelivered invalidation concerns any of ``names``."""
        if not self.retry():
            return bool(self._names.intersection(names)) or tracking.ALL_TABLES in self._names
        return False

    def retry(self) -> bool:
        """Deliver what is pending; True when nothing is left."""
        with self._lock:
            while self._pending:
                names, in_flight = self._pending[0]
                try:
                    if in_flight:
                        self._cache.versions.end_write(names)
                    else:
                        self._cache.versions.bump(names)
                except Exception:
                    return False
                self._pending.pop(0)
            self._names.clear()
            return True
