"""QueryCache: the public face. Regions, version store, stats, manual invalidation.

The work is done elsewhere: :mod:`.readpath` (a cacheable SELECT, from
``do_orm_execute`` to a Result), :mod:`.writepath` (what connections wrote
and the commit protocol) and :mod:`.events` (the listeners that connect both
to SQLAlchemy). See ``ARCHITECTURE.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ClauseElement

from . import checks, events, keys, sealing, tracking
from .exc import ConfigurationError, UnknownRegionError
from .hydrate import mapper_of
from .readpath import PROBE_OPTION, ReadPath
from .regions import RegionStore
from .stats import AppStats, Hooks, RedisStatsStore, Report, Stats, TableStats
from .versions import MAX_LEASE, VersionStore
from .versions import make_version_store as _make_version_store
from .writepath import WritePath

log = logging.getLogger("sqla_querycache")

#: the longest namespace accepted (it prefixes every key)
MAX_NAMESPACE = 64


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
        counters to the app-wide stats (Redis versions only; see
        :meth:`report`); 0 flushes only on :meth:`flush_stats`, reads and
        :meth:`close`.

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
        #: False: every statement bypasses the cache (writes still invalidate)
        self.enabled = True
        self._plan_memo_size = plan_memo_size
        self._memo_size = memo_size
        self._memo_bytes = memo_bytes
        self._plan_memo_bytes = plan_memo_bytes
        # 3. last: the version store (a Redis one is pinged, then its heartbeat starts)
        self.versions: VersionStore = _make_version_store(
            versions, namespace, lease=lease, require=require_versions
        )
        self._stats = Stats(self.regions)
        #: app-wide counters: flushed to the versions' Redis (None with other stores)
        self._app_stats: AppStats | None = None
        client = getattr(self.versions, "client", None)
        if client is not None and hasattr(client, "pipeline"):
            self._app_stats = AppStats(self._stats, RedisStatsStore(client, namespace),
                                       stats_interval)  # fmt: skip
        self._info_key = f"_sqla_querycache_{id(self)}"
        self._installed: events.Installation | None = None
        self._warned: set[Any] = set()
        self._reader = ReadPath(self)
        self._writer = WritePath(self)

    # ------------------------------------------------------------ public API

    def install(self, target: Any) -> QueryCache:
        """Hook a Session class, subclass or sessionmaker (also async ones); return self."""
        if self._installed is not None:
            raise ConfigurationError("this QueryCache is already installed; uninstall() first")
        self._installed = events.install(self._reader, self._writer, target)
        return self

    def uninstall(self) -> None:
        """Remove every listener :meth:`install` added."""
        if self._installed is not None:
            self._installed.remove()
            self._installed = None

    def close(self) -> None:
        """Uninstall, and stop the version store's threads and connections."""
        self.uninstall()
        self._reader.clear()  # the memory this process kept: plans, decoded entries
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
        ``stats_interval`` seconds) to the Redis of the version store; this
        process flushes first. Needs Redis versions: else
        :class:`~.exc.ConfigurationError`.
        """
        if scope == "process":
            return self._stats.report()
        if scope != "app":
            raise ConfigurationError(f"scope must be 'process' or 'app', got {scope!r}")
        if self._app_stats is None:
            raise ConfigurationError(
                "app-wide stats live in the Redis of the version store; this QueryCache's "
                f"versions are {self.versions!r}: only scope='process' is available"
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

    def invalidate(self, *targets: Any, tables: Sequence[Any] = ()) -> list[str]:
        """Invalidate every entry that read the given tables, models or statements.

        ``cache.invalidate(Product)``, ``cache.invalidate(select(Product))``,
        ``cache.invalidate(tables=["product"])``. Returns the version names bumped.
        """
        if isinstance(tables, str):
            raise TypeError(f"tables must be a list of names, not a str: tables=[{tables!r}]")
        names: set[str] = set()
        for t in tables:
            names |= tracking.name_variants(tracking.table_name(t))
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
        found: list[Any] = [None] * len(ids)
        probes: list[Any] = []
        noted: list[int] = []
        options = dict(get_kw.pop("execution_options", None) or {})
        probing = {**options, PROBE_OPTION: probes}
        for i, ident in enumerate(ids):
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

    def _warn_once(self, what: Any, msg: str, *args: Any) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning(msg, *args)


def _zero_region() -> dict[str, Any]:
    from .stats import REGION_COUNTERS

    row: dict[str, Any] = dict.fromkeys(REGION_COUNTERS, 0)
    row.update(hit_ratio=None, calls=0, db_seconds=0.0, saved_seconds=0.0, bytes_stored=0,
               bypass_reasons={})  # fmt: skip
    return row
