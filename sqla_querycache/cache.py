"""QueryCache: the public face. Regions, version store, stats, manual invalidation.

The work is done elsewhere: :mod:`.readpath` (a cacheable SELECT, from
``do_orm_execute`` to a Result), :mod:`.writepath` (what connections wrote
and the commit protocol) and :mod:`.events` (the listeners that connect both
to SQLAlchemy). See ``ARCHITECTURE.md``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ClauseElement

from . import admission as _admission
from . import checks, events, keys, sealing, tracking
from .exc import ConfigurationError, UnknownRegionError, UnknownTableError
from .explain import Explanation
from .hydrate import mapper_of
from .near import NearCache
from .readpath import PROBE_OPTION, Probes, ReadPath
from .regions import RegionStore
from .sqlshared import SqlShared
from .stats import AppStats, Hooks, RedisStatsStore, Report, Stats, TableStats
from .versions import MAX_LEASE, SqlVersions, VersionStore, is_redis_spec
from .versions import make_version_store as _make_version_store
from .writepath import WritePath

log = logging.getLogger("sqla_querycache")

#: the longest namespace accepted (it prefixes every key)
MAX_NAMESPACE = 64
#: the environment variable that starts every QueryCache of the process disabled
DISABLED_ENV = "SQLA_QUERYCACHE_DISABLED"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})
#: seconds between two warnings of one kind (the ones between are counted)
WARN_INTERVAL = 60.0
#: seconds between two looks at the app-wide switch in the shared version store
SWITCH_POLL = 1.0


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
    :param memo_bytes: ... and their estimated memory at most (default 64
        MiB; an entry counts its encoded size, plus 64 bytes a value when
        kept decoded).
    :param plan_memo_bytes: the statement shapes' plans (at most
        ``plan_memo_size`` of them) take at most this estimated memory
        (default 64 MiB; a plan counts 16 KiB + 64 bytes per character of
        its SQL), at least 1 MiB.
    :param scope: a function returning what, beyond the bind, makes results
        differ on the current connection (a tenant id your code sets with
        ``SET`` or a connect hook, a role): its value is part of every key.
        The ``cache_scope`` execution option does the same per statement.
        Without it, a connection on which SQL changed such state
        (``SET search_path``, ``SET ROLE``, ...) bypasses the cache.
    :param lease: seconds of the Redis version store's epoch lease (default
        5): how long a commit waits in a Redis outage, and how soon entries
        become unreachable when no process can renew the epoch. Only with a
        Redis URL or client as ``versions``.
    :param require_versions: with a Redis version store, check at
        construction that it answers (within its 0.5 s timeout), else raise
        :class:`~.exc.ConfigurationError`. ``False`` starts without it:
        reads go to the database and commits wait up to ``lease`` until it
        answers.
    :param secret: sign every entry (keyed BLAKE2b bound to its cache key):
        a forged, altered or moved entry is a ``corrupt`` miss, never rows.
        ``bytes`` or ``str`` of at least 16 bytes, or a list of them, newest
        first, to rotate (sign with the first, accept any).
    :param encrypt: encrypt entries with AES-256-GCM instead (key derived
        from ``secret``; needs the ``cryptography`` package, extra
        ``[encrypt]``).

    :param stats_interval: seconds between two flushes of this process's
        counters to the app-wide stats (Redis or "sql" versions; see
        :meth:`report`); 0 flushes only on :meth:`flush_stats`, reads and
        :meth:`close`.
    :param admission: whether a statement shape consults the cache:
        ``"adaptive"`` (default: while its measured expected saving per call
        is positive, see README "Admission"), ``"always"`` or ``"never"``;
        or a mapping region -> mode (regions not named are adaptive).
        ``FromCache(region, admission=...)`` pins one statement.
    :param admission_min_samples: lookups of a shape before it can be judged
        not worth it, and the length of a re-admission trial (default 50).
    :param admission_probe_calls: skipped calls of a shape judged not worth
        it before a trial (default 200; doubled after each trial that did
        not pay, up to 32 times).
    :param admission_probe_seconds: ... or this many seconds, whichever comes
        first (default 30; doubled likewise).
    :param near: a :class:`~.near.NearCache`: hits validated in this process
        against version changes Redis pushes, sending nothing, at the price
        of a bounded window (its ``max_staleness``) in which another
        process's committed write may not be seen yet; never in the writing
        process. Only with a single Redis as ``versions``. Its ``max_bytes``
        replaces ``memo_bytes``. Default None: every hit reads the versions.
    The environment variable ``SQLA_QUERYCACHE_DISABLED=1`` (read here)
    starts the cache disabled (:attr:`enabled` False); ``0`` or unset: enabled.

    Every argument is checked here, before anything starts (no thread, no
    connection kept): a bad one raises :class:`~.exc.ConfigurationError`.
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
        memo_bytes: int = 64 << 20,
        plan_memo_bytes: int = 64 << 20,
        scope: Callable[[], Any] | None = None,
        lease: float | None = None,
        require_versions: bool = True,
        secret: bytes | str | Sequence[bytes | str] | None = None,
        encrypt: bool = False,
        identity_region: str | None = None,
        stats_interval: float = 1.0,
        admission: str | Mapping[str, str] = "adaptive",
        admission_min_samples: int = 50,
        admission_probe_calls: int = 200,
        admission_probe_seconds: float = 30.0,
        near: NearCache | None = None,
    ):
        # 1. plain values
        if not isinstance(regions, Mapping) or not regions:
            raise ConfigurationError("regions must be a non-empty mapping of name -> region")
        if (
            not isinstance(namespace, str)
            or not 0 < len(namespace) <= MAX_NAMESPACE
            or not namespace.isprintable()
            or any(c.isspace() or c in ":{}" for c in namespace)
        ):
            raise ConfigurationError(
                f"namespace must be a short word (1-{MAX_NAMESPACE} printable characters, "
                f"no spaces, ':', '{{' or '}}'), got {namespace!r}"
            )
        checks.integer("max_entry_bytes", max_entry_bytes, 1)
        lock_timeout = checks.seconds("lock_timeout", lock_timeout, positive=False)
        checks.integer("plan_memo_size", plan_memo_size, 1)
        checks.integer("memo_size", memo_size, 0)
        checks.integer("memo_bytes", memo_bytes, 0)
        checks.integer("plan_memo_bytes", plan_memo_bytes, 1 << 20)
        if scope is not None and not callable(scope):
            raise ConfigurationError(f"scope must be a callable returning a value: {scope!r}")
        if lease is not None:
            lease = checks.seconds("lease", lease, maximum=MAX_LEASE)
            if lease < 0.001:
                raise ConfigurationError(f"lease must be at least 0.001 s, got {lease!r}")
        checks.flag("require_versions", require_versions)
        if near is not None:
            if not isinstance(near, NearCache):
                raise ConfigurationError(f"near must be a NearCache, got {near!r}")
            if near._versions is not None:
                raise ConfigurationError("this NearCache is already used by a QueryCache")
            memo_bytes = near.max_bytes
            if not (is_redis_spec(versions) or getattr(versions, "kind", None) == "redis"):
                got = versions if isinstance(versions, str) else type(versions).__name__
                raise ConfigurationError(
                    f"near= needs a Redis version store (versions=<redis URL or client>), "
                    f"got versions={got!r}: with local versions every read is already in "
                    f"process; the sql store has no push channel"
                )
        stats_interval = checks.seconds("stats_interval", stats_interval, positive=False)
        if identity_region is not None and (
            not isinstance(identity_region, str) or identity_region not in regions
        ):
            raise ConfigurationError(
                f"identity_region {identity_region!r} is not one of the regions "
                f"{sorted(map(str, regions))}"
            )
        for name in regions:
            if not isinstance(name, str) or not name:
                raise ConfigurationError(f"region names must be non-empty str, got {name!r}")
        self._admission = _admission.region_modes(admission, regions)
        self._policy = _admission.Policy(admission_min_samples, admission_probe_calls,
                                         admission_probe_seconds)  # fmt: skip
        env = os.environ.get(DISABLED_ENV, "").strip().lower()
        if env not in _TRUE and env not in _FALSE:
            raise ConfigurationError(
                f"{DISABLED_ENV}={os.environ[DISABLED_ENV]!r}: use 1 (disabled) or 0 (enabled)"
            )
        # 2. objects that start nothing
        self.sealer = sealing.make_sealer(secret, encrypt)
        self.regions: dict[str, RegionStore] = {
            name: RegionStore(name, region) for name, region in regions.items()
        }
        self.namespace = namespace
        self.max_entry_bytes = max_entry_bytes
        self.lock_timeout = lock_timeout
        self.scope = scope
        #: the region of primary-key loads (session.get) and lazy loads, or None
        self.identity_region = identity_region
        self._enabled = env not in _TRUE  # this process (the property ``enabled``)
        self._app_disabled = False  # the app-wide switch, as last read from the store
        #: what the read path checks: enabled here and not disabled app-wide
        self._active = self._enabled
        self._plan_memo_size = plan_memo_size
        self._memo_size = memo_size
        self._memo_bytes = memo_bytes
        self._plan_memo_bytes = plan_memo_bytes
        # 3. last: the version store (a Redis one is pinged, then its heartbeat starts)
        self.versions: VersionStore = _make_version_store(
            versions, namespace, lease=lease, require=require_versions
        )
        #: the near cache (opt-in), or None
        self.near = near
        if near is not None:
            try:
                near.attach(self.versions)
            except ConfigurationError:
                close = getattr(self.versions, "close", None)
                if close is not None:
                    close()
                raise
        self._stats = Stats(self.regions)
        #: app-wide counters and switch: the versions' Redis, or the "sql" store's
        #: ``querycache_stats`` table (None with other stores)
        self._app_stats: AppStats | None = None
        self._shared: Any = None
        client = getattr(self.versions, "client", None)
        if client is not None and hasattr(client, "pipeline"):
            self._shared = self.versions
            self._app_stats = AppStats(self._stats, RedisStatsStore(client, namespace),
                                       stats_interval)  # fmt: skip
        elif isinstance(self.versions, SqlVersions):
            self._shared = SqlShared(self.versions, namespace)
            self._app_stats = AppStats(self._stats, self._shared, stats_interval)
        self._info_key = f"_sqla_querycache_{id(self)}"
        self._installed: events.Installation | None = None
        self._warned: dict[Any, list[float]] = {}  # kind -> [next allowed, suppressed]
        self._warn_lock = threading.Lock()
        #: seconds between two warnings of one kind
        self.warn_interval = WARN_INTERVAL
        self._reader = ReadPath(self)
        self._writer = WritePath(self)
        self._switch_stop = threading.Event()
        if self._shared is not None:  # shared: watch the app-wide switch
            _start_switch_watcher(self)

    # ------------------------------------------------------------ public API

    def install(self, target: Any, *, strict: bool = False, metadata: Any = None,
                engine: Any = None) -> QueryCache:  # fmt: skip
        """Hook a Session class, subclass or sessionmaker (also async ones); return self.

        ``strict=True`` runs :meth:`check` first (with ``metadata`` and
        ``engine``): a problem raises :class:`~.exc.ConfigurationError` and
        nothing is installed.
        """
        if self._installed is not None:
            raise ConfigurationError("this QueryCache is already installed; uninstall() first")
        checks.flag("strict", strict)
        if strict:
            self.check(metadata, engine=engine)
        elif metadata is not None:
            tracking.remember_metadata(getattr(metadata, "metadata", metadata))
        self._installed = events.install(self._reader, self._writer, target)
        return self

    def check(self, metadata: Any = None, *, engine: Any = None) -> None:
        """Verify at start-up what can be verified; raise one error listing every problem.

        Each region answers a read; the version store answers (Redis: a ping;
        ``"sql"``: a read of its table through ``engine``, when given);
        ``identity_region`` is a region; every table of ``metadata`` (a
        ``MetaData``, or a declarative base) has a name the cache can version,
        and the ``metadata`` is remembered, so :meth:`invalidate` knows its
        tables from now on. Raises :class:`~.exc.ConfigurationError`.
        """
        problems: list[str] = []
        for name, store in self.regions.items():
            try:
                store.get(f"{self.namespace}:check")
            except Exception as err:
                problems.append(f"region {name!r} ({store.kind}) does not answer: {err!r}")
        try:
            # an explicit probe: not refused by a cool-down (Redis: the store's
            # breaker; "sql": one per database it knows)
            vstore: Any = self.versions
            sources = getattr(vstore, "_sources", None)
            for c in [getattr(vstore, "_circuit", None),
                      *(src.circuit for src in (sources or {}).values())]:  # fmt: skip
                if c is not None:
                    c.down_until = 0.0
            if hasattr(self.versions, "check"):
                self.versions.check()
            elif getattr(self.versions, "needs_bind", False):
                if engine is not None:
                    self.versions.read([tracking.ALL_TABLES], bind=engine)
            else:
                self.versions.read([tracking.ALL_TABLES])
        except Exception as err:
            problems.append(f"the version store {self.versions!r} does not answer: {err}")
        if self.identity_region is not None and self.identity_region not in self.regions:
            problems.append(f"identity_region {self.identity_region!r} is not a region")
        if metadata is not None:
            md = getattr(metadata, "metadata", metadata)
            tables = getattr(md, "tables", None)
            if not isinstance(tables, Mapping):
                problems.append(f"metadata: not a MetaData or declarative base: {metadata!r}")
            else:
                for key, table in tables.items():
                    try:
                        tracking.table_name(table)
                    except Exception as err:
                        problems.append(f"table {key!r}: no version name ({err!r})")
                tracking.remember_metadata(md)
        if problems:
            raise ConfigurationError("QueryCache.check() found:\n  " + "\n  ".join(problems))

    def uninstall(self) -> None:
        """Remove every listener :meth:`install` added."""
        if self._installed is not None:
            self._installed.remove()
            self._installed = None

    def close(self) -> None:
        """Uninstall, and stop the version store's threads and connections."""
        self.uninstall()
        self._switch_stop.set()
        self._reader.clear()  # the memory this process kept: plans, decoded entries
        for region in self.regions.values():
            if region.sender is not None:
                region.sender.close()
        if self._app_stats is not None:
            self._app_stats.close()  # the last counts, before the store's client goes
        close = getattr(self.versions, "close", None)
        if close is not None:
            close()

    def stats(self, scope: str = "process") -> dict[str, Any]:
        """Counters per region (``hits``, ``misses``, ``stores``, ``errors``, ...).

        ``scope="process"``: this process's; ``scope="app"``: every process's
        sharing the Redis versions, summed (see :meth:`report`). Each region's
        row is a :class:`~.stats.RegionStats`.
        """
        return dict(self.report(scope)["regions"])

    def report(self, scope: str = "process") -> Report:
        """Counters per region, table and statement, processes (a :class:`~.stats.Report`).

        ``scope="app"`` reads the sums every process flushed (every
        ``stats_interval`` seconds) to the shared version store (Redis hashes,
        or the ``"sql"`` store's ``querycache_stats`` table); this process
        flushes first. With ``"local"`` versions: :class:`~.exc.ConfigurationError`.
        """
        if scope == "process":
            return self._stats.report()
        if scope != "app":
            raise ConfigurationError(f"scope must be 'process' or 'app', got {scope!r}")
        if self._app_stats is None:
            raise ConfigurationError(
                "app-wide stats live in the shared version store (Redis, or the \"sql\" "
                f"store's querycache_stats table); this QueryCache's versions are "
                f"{self.versions!r}: only scope='process' is available"
            )
        report = self._app_stats.read()
        for name in self.regions:  # configured regions show even at zero
            if name not in report["regions"]:
                report["regions"][name] = _zero_region()  # type: ignore[assignment]
        return report

    def flush_stats(self) -> bool:
        """Send this process's counters to the app-wide store now (the flusher does it
        every ``stats_interval`` s); True if they landed."""
        return self._app_stats.flush() if self._app_stats is not None else False

    @property
    def hooks(self) -> Hooks:
        """Callbacks: ``cache.hooks.on_hit(fn)``, ``on_miss``, ``on_store``,
        ``on_invalidate``, ``on_error`` (each gets a :class:`~.stats.CacheEvent`)."""
        return self._stats.hooks

    def table_stats(self, scope: str = "process") -> dict[str, Any]:
        """Per table (internal and row-level names folded into their table).

        ``scope="process"``: ``invalidations`` (writes committed) and ``bypassed``
        reads of this process; ``scope="app"``: :class:`~.stats.TableStats` of
        every process.
        """
        if scope == "process":
            return self._stats.tables()
        tables: dict[str, TableStats] = self.report(scope)["tables"]
        return dict(tables)

    def identity_stats(self) -> dict[str, dict[str, Any]]:
        """Identity-cache loads per mapped class in this process: hits, misses, hit ratio."""
        return self._stats.classes()

    def reset_stats(self, scope: str = "process") -> None:
        """Zero this process's counters; ``scope="app"``: also the app-wide sums."""
        if scope == "app" and self._app_stats is not None:
            self._app_stats.store.clear()
            self._stats.reset()
            with self._stats.flush_lock:
                self._stats._flushed = {}  # nothing of before is owed to the cleared store
        else:
            self._stats.reset()

    def invalidate(
        self, *targets: Any, tables: Sequence[Any] = (), strict: bool = True
    ) -> list[str]:
        """Invalidate every entry that read the given tables, models or statements.

        ``cache.invalidate(Product)``, ``cache.invalidate(select(Product))``,
        ``cache.invalidate(tables=["product"])``. Returns the version names bumped.
        ``tables`` must be a list: a str raises ``TypeError``. A table name
        no ``MetaData`` this process knows (used by a query, or given to
        :meth:`check` / ``install(metadata=...)``) declares raises
        :class:`~.exc.UnknownTableError` listing the known ones; ``strict=False``
        accepts it (a table only the database has). With no MetaData known
        yet, every name is accepted.
        """
        if isinstance(tables, str):
            raise TypeError(f"tables must be a list of names, not a str: tables=[{tables!r}]")
        names: set[str] = set()
        for t in tables:
            names |= tracking.name_variants(tracking.table_name(t))
        if strict:
            _check_known([t for t in (*tables, *targets) if isinstance(t, str)])
        for target in targets:
            names.update(self._names_of(target))
        if not names:
            raise ConfigurationError("invalidate() needs tables, a mapped class or a statement")
        names.add(tracking.ANY_TABLE)  # entries that read tables they could not name
        self._writer.bump(sorted(names))
        return sorted(names)

    def get_many(self, session: Any, entity: Any, ids: Iterable[Any], **get_kw: Any) -> Any:
        """The objects of ``entity`` with these primary keys, in their order; absent ones skipped.

        Like ``session.get`` for each (the identity map first, then the identity
        region), but the cache is asked once for the whole batch: one round
        trip for the versions and one per region for the entries; the ids it
        misses are then loaded (and stored) one by one. With an ``AsyncSession``
        this returns an awaitable.
        """
        run_sync = getattr(session, "run_sync", None)
        if run_sync is not None and not isinstance(session, Session):
            ids = list(ids)
            return run_sync(lambda s: self.get_many(s, entity, ids, **get_kw))
        ids = list(ids)
        from sqlalchemy.ext.horizontal_shard import ShardedSession

        if isinstance(session, ShardedSession):
            # each get runs once per shard it may be on (its sharding hook): no
            # batch to make; the gets, each shard's cached as its own statement
            got = (session.get(entity, ident, **get_kw) for ident in ids)
            return [obj for obj in got if obj is not None]
        found: list[Any] = [None] * len(ids)
        probes = Probes()
        noted: list[int] = []
        options = dict(get_kw.pop("execution_options", None) or {})
        probing = {**options, PROBE_OPTION: probes}
        mapper = inspect(entity).mapper
        idmap = session.identity_map
        for i, ident in enumerate(ids):
            derive = probes.derive if not get_kw else None
            if derive is not None:
                # the first id's probe made the plan: the others' lookups follow
                # from it without a get each (unless the identity map has them)
                pk = tuple(ident) if isinstance(ident, (tuple, list)) else (ident,)
                if (len(pk) == len(mapper.primary_key)
                        and mapper.identity_key_from_primary_key(pk) not in idmap):  # fmt: skip
                    p = derive(pk)
                    if p is not None:
                        probes.append(p)
                        noted.append(i)
                        continue
            before = len(probes)
            obj = session.get(entity, ident, execution_options=probing, **get_kw)
            if len(probes) > before:
                noted.append(i)  # an entry to look up: answered below
            else:
                found[i] = obj  # the identity map, or not cacheable: a real get
        if noted:
            results = self._reader.lookup_many(probes)
            for i, result in zip(noted, results):
                obj = None
                if result is not None:
                    obj = result.unique().scalars().one_or_none()
                    if obj is not None:
                        self._stats.klass(type(obj).__name__, "hits")
                if obj is None:  # a miss: the real get (stored for next time)
                    obj = session.get(entity, ids[i], execution_options=options, **get_kw)
                found[i] = obj
        return [obj for obj in found if obj is not None]

    def explain(self, statement: Any, session_or_bind: Any = None) -> Explanation:
        """Would ``statement`` be cached? Its region, key, tables, and why not.

        Runs the read path's own decision (region, plan, key, the connection's
        rules) through ``session.execute`` without sending the statement to the
        database and without counting; returns an :class:`~.explain.Explanation`.
        ``session_or_bind``: the session it would run on (its transaction's
        writes and snapshot count: ``bypass``), or an Engine/Connection (a
        fresh session of the installed class); default: a fresh session of the
        installed sessionmaker. Like the query, it autoflushes the session.
        """
        from .explain import explain

        return explain(self, statement, session_or_bind)

    def get_by(self, session: Any, entity: Any, **values: Any) -> Any:
        """The object of ``entity`` whose declared unique key has these values, or None.

        ``cache.get_by(session, User, email="a@example.com")``: like
        ``session.get`` for a unique key other than the primary key (a
        ``unique=True`` column, a ``UniqueConstraint`` or a unique ``Index``;
        anything else raises ``ConfigurationError``). A hit costs an index
        entry and the row's identity entry, and is served only if the object
        still has these values (see ``sqla_querycache.index``); writes to other
        rows never make it miss. Needs ``identity_region``. With an
        ``AsyncSession`` this returns an awaitable.
        """
        from . import index

        run_sync = getattr(session, "run_sync", None)
        if run_sync is not None and not isinstance(session, Session):
            return run_sync(lambda s: index.get_by(self, s, entity, values))
        return index.get_by(self, session, entity, values)

    def invalidate_region(self, name: str) -> None:
        """Invalidate every entry of one region, in every process sharing the versions."""
        self._region(name)
        self._writer.bump([f"@region:{name}"])

    def invalidate_all(self) -> None:
        """Invalidate every entry of every region."""
        self._writer.bump([tracking.ALL_TABLES])

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """Bypass the cache in this block (this process); writes still invalidate."""
        before = self.enabled
        self.enabled = False
        try:
            yield
        finally:
            self.enabled = before

    @property
    def enabled(self) -> bool:
        """False: every statement of this process bypasses the cache (writes still
        invalidate). See also :meth:`disable_app_wide`."""
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self._enabled = bool(value)
        self._active = self._enabled and not self._app_disabled

    @property
    def disabled_app_wide(self) -> bool:
        """Whether the app-wide switch was off at this process's last look (<= 1 s ago)."""
        return self._app_disabled

    def disable_app_wide(self) -> None:
        """Make every process sharing the version store bypass the cache (within a second).

        Writes still invalidate. The switch lives in the shared store: a Redis
        key, or a row of ``querycache_stats`` with the ``"sql"`` store (which
        must know its database: ``versions=engine``, or a query ran); with the
        ``"local"`` store it is this process only. Raises
        :class:`~.versions.Unavailable` if the shared store does not take it.
        """
        self._set_app_wide(True)

    def enable_app_wide(self) -> None:
        """Undo :meth:`disable_app_wide` (every process caches again within a second)."""
        self._set_app_wide(False)

    def _set_app_wide(self, disabled: bool) -> None:
        if self._shared is not None:
            self._shared.set_switch(disabled)
        self._switch(disabled)

    def _switch(self, disabled: bool) -> None:
        if disabled != self._app_disabled:
            log.log(logging.WARNING if disabled else logging.INFO, "caching %s app-wide "
                    "(namespace %r)", "disabled" if disabled else "enabled again",
                    self.namespace)  # fmt: skip
        self._app_disabled = disabled
        self._active = self._enabled and not disabled

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
        if self.identity_region is not None:
            per_class = " ".join(
                f"{name}={c['hits']}/{c['hits'] + c['misses']}"
                for name, c in self.identity_stats().items()
            )
            parts.append(f"  identity region {self.identity_region!r}: hits/loads per class: "
                         f"{per_class or '-'}")  # fmt: skip
        if self.near is not None:
            parts.append(f"  near: {self.near!r}")
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
            return tracking.name_variants(tracking.table_name(target))
        mapper = mapper_of(target)
        if mapper is not None:
            out: set[str] = set()
            for t in mapper.tables:
                out |= tracking.name_variants(tracking.table_name(t))
            return out
        if isinstance(target, ClauseElement):
            out = set()
            for name in keys.tables_read(None, target):
                out |= tracking.name_variants(name)
            return out
        raise ConfigurationError(f"cannot tell which tables {target!r} reads")

    def _warn(self, what: Any, msg: str, *args: Any) -> None:
        """Log a warning of kind ``what`` at most once per ``warn_interval`` seconds;
        the next one says how many were suppressed meanwhile."""
        now = time.monotonic()
        with self._warn_lock:
            state = self._warned.get(what)
            if state is not None and now < state[0]:
                state[1] += 1
                return
            suppressed = int(state[1]) if state is not None else 0
            self._warned[what] = [now + self.warn_interval, 0]
        if suppressed:
            msg += " (and %d more like it in the last %gs)"
            args = (*args, suppressed, self.warn_interval)
        log.warning(msg, *args)

    #: the name the read and write paths used before warnings were rate-limited
    _warn_once = _warn

    def _recovered(self, what: str, since: float) -> None:
        """INFO: ``what`` answers again after failing since ``since`` (monotonic)."""
        log.info("%s answers again (failing for %.1fs)", what,
                 time.monotonic() - since)  # fmt: skip


def _zero_region() -> dict[str, Any]:
    from .stats import REGION_COUNTERS

    row: dict[str, Any] = dict.fromkeys(REGION_COUNTERS, 0)
    row.update(hit_ratio=None, calls=0, db_seconds=0.0, saved_seconds=0.0, bytes_stored=0,
               bypass_reasons={})  # fmt: skip
    return row


def _check_known(names: Iterable[str], also: Iterable[str] = ()) -> None:
    """Raise :class:`UnknownTableError` for a name no remembered MetaData declares
    (nor ``also``: names known elsewhere, the version store's)."""
    known: set[str] = set()
    for name in also:
        known |= tracking.name_variants(tracking.table_name(name))
    for md in list(tracking._metadata):
        for table in md.tables.values():
            known |= tracking.name_variants(tracking.table_name(table))
    if not known:
        return  # nothing to compare with
    unknown = sorted(
        n
        for n in names
        if not any(c in n for c in "@#[")  # the library's own names (row-level, @any)
        and not tracking.name_variants(tracking.table_name(n)) & known
    )
    if unknown:
        raise UnknownTableError(
            f"unknown table(s) {', '.join(map(repr, unknown))}; known: "
            f"{', '.join(sorted(k for k in known if '.' not in k))} "
            f"(strict=False invalidates a table only the database has)"
        )


def _start_switch_watcher(cache: QueryCache) -> None:
    """A daemon thread reading the app-wide switch once per ``SWITCH_POLL`` s.

    It holds the cache weakly: it ends when the cache is closed or collected.
    """
    ref = weakref.ref(cache)
    stop = cache._switch_stop
    store: Any = cache._shared

    def watch() -> None:
        while True:
            c = ref()
            if c is None or stop.is_set():
                return
            try:
                disabled = store.get_switch()
            except Exception:
                disabled = None  # unreachable: keep what we knew (its reads fail open anyway)
            if disabled is not None:
                c._switch(disabled)
            del c
            if stop.wait(SWITCH_POLL):
                return

    threading.Thread(target=watch, name="sqla_querycache-switch", daemon=True).start()
