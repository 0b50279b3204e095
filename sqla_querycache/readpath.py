"""The read path: one cacheable SELECT from ``do_orm_execute`` to a Result.

1. Let every ``do_orm_execute`` hook registered after ours run first, so the
   statement keyed is the one that would execute (:meth:`ReadPath.on_execute`).
2. Plan the statement shape once (:meth:`ReadPath.plan`): compile it for the
   bind, analyse the SQL (pure read? which tables?), digest the static key.
3. Autoflush as the uncached query would, then apply the connection's rules
   (read-your-writes, snapshots, changed connection state).
4. Look up the entry and the current versions of every table the plan reads
   in one round trip; a hit requires the entry's versions to equal them.
5. On a miss run the query while recording every statement it sends
   (:class:`~.tracking.Recorder`): the entry depends on what ran. If a
   statement read a table the lookup did not version, or was not a pure
   read, nothing is stored and the plan learns it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from sqlalchemy.engine import Connection, CursorResult, Engine, Result
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.orm.attributes import instance_state
from sqlalchemy.orm.context import FromStatement
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.selectable import Select

from . import admission, codec, keys, rows, tracking
from .catalog import Catalog
from .codec import Unencodable
from .hydrate import MapperSet, NeedsLocalLoad, NotStorable, Shape, dehydrate, derive_shape, hydrate
from .options import EXPIRATION_OPTION, REGION_OPTION, SCOPE_OPTION, FromCache, NoCache
from .regions import RegionStore, now
from .sqlscan import canonical
from .tracking import ALL_TABLES, ANY_TABLE
from .versions import Unavailable

if TYPE_CHECKING:
    from .cache import QueryCache

log = logging.getLogger("sqla_querycache")
_DEBUG = logging.DEBUG

#: at most this many siblings' targets are prefetched by one lazy load
_PREFETCH_MAX = 500
#: sibling's InstanceState -> the target a prefetch loaded for it. The identity
#: map holds clean objects weakly: without this, a prefetched target nobody
#: references yet is collected before the sibling's lazy load looks for it.
#: The pin lives as long as the sibling (the relationship itself is left to the
#: lazy load, which reads the foreign key as it is then).
_PINNED: WeakKeyDictionary[Any, Any] = WeakKeyDictionary()
#: execution option of get_many's first pass (a list the read path appends to)
PROBE_OPTION = "_qc_probe"
#: at most this many names are learned from an entry written elsewhere
_MAX_LEARNED = 64
#: the memo's estimate of a plan's memory: fixed + per character of its SQL (a plan keeps
#: the compiled statement; measured ~20 KB at ~60 characters, ~23 KB at 159, ~32 KB at 314)
_PLAN_COST = 16 << 10
_PLAN_COST_PER_CHAR = 64
#: ... and of an entry's: fixed + its encoded size (+ per value, when kept decoded)
_ENTRY_OVERHEAD = 512
_PER_VALUE = 64
#: a statement shape whose result was too large to store is not encoded again for
#: results predicted as large until this many such misses or seconds have passed
_TOO_LARGE_RETRY_MISSES = 100
_TOO_LARGE_RETRY_SECONDS = 60.0
_READ_COMMITTED = frozenset({"READ COMMITTED", "READ UNCOMMITTED", "AUTOCOMMIT"})
_SKIP_OPTIONS = ("yield_per", "stream_results", "populate_existing", "max_row_buffer")

try:  # greenlet-spawned code (AsyncSession) must not block its event loop's thread
    import greenlet  # noqa: F401
    from sqlalchemy.util import concurrency as _concurrency
    from sqlalchemy.util.concurrency import in_greenlet as _in_greenlet

    #: runs an awaitable from sync code inside ``greenlet_spawn`` (the loop keeps turning)
    _await = getattr(_concurrency, "await_", None) or _concurrency.await_only
except ImportError:  # no greenlet, no AsyncSession

    def _in_greenlet() -> bool:
        return False

    def _await(awaitable: Any) -> Any:  # pragma: no cover - never called without greenlet
        raise RuntimeError("no greenlet")


class Probes(list):  # type: ignore[type-arg]
    """get_many's lookups. ``derive(ident)``, set by the first primary-key probe
    whose plan names rows, makes the lookup of another id without a ``get``."""

    derive: Any = None

class _Key:
    """One key being computed: whether a miss holds it, and who waits for it."""

    __slots__ = ("held", "users", "waiters")

    def __init__(self) -> None:
        self.held = False
        self.users = 0
        #: callables, each waking one waiter (from any thread)
        self.waiters: list[Any] = []


def _wake_future(loop: Any, fut: Any) -> None:
    def wake() -> None:
        if not fut.done():
            fut.set_result(None)

    try:
        loop.call_soon_threadsafe(wake)
    except RuntimeError:  # its loop closed meanwhile: nobody waits there any more
        pass


class _KeyLocks:
    """One holder per cache key being computed, so concurrent misses query once.

    The first miss of a key holds it; later ones wait until it is done, then
    look the key up again (a hit, usually) and, if it is still missing, run
    their own query without queueing for the key one by one: the holder did
    not store (not storable, too large, or its query raised, in which case
    each waiter's query raises or not as it would uncached). Every wait is
    bounded by ``lock_timeout``; a waiter that times out runs its own query.

    A waiter in a thread blocks on an event. A waiter in an event loop's
    greenlet (AsyncSession) must not block the loop's thread: it awaits a
    future on its loop through SQLAlchemy's ``await_``, so the loop (and the
    holder, often a task on that same loop) keeps running. The holder wakes
    every waiter when it is done, from whatever thread it is on.
    """

    def __init__(self) -> None:
        self._keys: dict[str, _Key] = {}
        self._guard = threading.Lock()

    @contextmanager
    def hold(self, key: str, timeout: float) -> Iterator[tuple[bool, bool]]:
        """Yield (acquired, waited): waited means another miss held the key first."""
        with self._guard:
            k = self._keys.get(key)
            if k is None:
                k = self._keys[key] = _Key()
            k.users += 1
            acquired = not k.held
            k.held = True
        waited = not acquired
        try:
            if waited:
                acquired = self._wait(k, timeout)
            yield acquired, waited
        finally:
            with self._guard:
                waiters: list[Any] = []
                if acquired:
                    k.held = False
                    waiters, k.waiters = k.waiters, []
                k.users -= 1
                if k.users == 0:
                    del self._keys[key]
            for wake in waiters:
                wake()

    def _wait(self, k: _Key, timeout: float) -> bool:
        """Wait until the holder is done (or ``timeout``); True: the key was free, now ours."""
        green = _in_greenlet()
        if green:
            loop = asyncio.get_running_loop()
            fut = loop.create_future()
            wake: Any = functools.partial(_wake_future, loop, fut)
        else:
            event = threading.Event()
            wake = event.set
        with self._guard:
            if not k.held:  # released between hold()'s look and ours
                k.held = True
                return True
            k.waiters.append(wake)
        woken = False
        try:
            if green:
                woken = _await(_wait_future(fut, timeout))
            else:
                woken = event.wait(timeout)
        finally:
            if not woken:  # timed out (or cancelled): nobody will wake us now
                with self._guard:
                    if wake in k.waiters:
                        k.waiters.remove(wake)
        return False


def _acquire(mutex: Any, timeout: float) -> bool:
    """Take a region's mutex (dogpile's ``distributed_lock``): True when taken.

    In a thread it blocks as dogpile's own lock does. In an event loop's
    greenlet it never blocks the loop for longer than one non-blocking try:
    between tries it sleeps on the loop, until ``timeout``.
    """
    if not _in_greenlet():
        mutex.acquire()
        return True
    deadline = time.monotonic() + timeout
    delay = 0.005
    while not mutex.acquire(False):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        _await(asyncio.sleep(min(delay, remaining)))
        delay = min(delay * 2, 0.1)
    return True


async def _wait_future(fut: Any, timeout: float) -> bool:
    """Await ``fut`` on the running loop: True when it was set, False on timeout."""
    try:
        await asyncio.wait_for(fut, timeout)
    except asyncio.TimeoutError:
        return False
    return True


class _Skip(Exception):
    """Not cached: (counter, reason)."""


#: execution option of ``QueryCache.explain``: decide, raise :class:`Explained`, run nothing
EXPLAIN_OPTION = "_qc_explain"


class Decision:
    """What :meth:`ReadPath.decide` found for one execution (up to the lookup).

    ``skip``: None (the cache is looked up), or ``(counter, reason, why,
    extra)``: the counter it moves (``uncacheable``, ``bypassed``, ``errors``;
    ``disabled`` and ``""`` move none), the bypass reason of the stats
    (``written``, ``snapshot``, ``state_changed``, ``store_failed``), the text
    of the DEBUG line, and the error or the tables written.
    """

    __slots__ = ("bind", "c0", "cache_key", "cold", "enc", "flush_on_hit", "key", "names",
                 "plan", "region", "region_name", "rk", "shape", "skip", "t0", "tagged",
                 "ttl")  # fmt: skip

    def __init__(self, region_name: str, ttl: float | None, tagged: bool):
        self.region_name = region_name
        self.ttl = ttl
        self.tagged = tagged
        self.region: RegionStore | None = None
        self.plan: keys.Plan | None = None
        self.key: str | None = None
        self.names: tuple[str, ...] | None = None
        self.cache_key: Any = None
        self.bind: Any = None
        self.rk: Any = None
        self.enc: Any = None
        self.shape: admission.Shape | None = None  # its admission state
        self.t0 = 0.0  # when what the cache costs this call began
        self.c0 = -1.0  # the same on the thread's CPU clock (-1.0: not timed in CPU)
        #: what its lookup found: admission.WARM, COLD (nothing stored for its key) or
        #: RENEW (an entry stored before the shape was last turned away, gone stale)
        self.cold = admission.WARM
        self.skip: tuple[str, str, str, Any] | None = None
        #: the session was clean when decided: a hit autoflushes it (a no-op, as the
        #: ORM's would be), a miss leaves it to the ORM (one autoflush either way)
        self.flush_on_hit = False


class Explained(Exception):
    """Raised from inside ``session.execute`` for ``QueryCache.explain``: the
    statement is decided, never run. ``decision`` None: no region asked for it;
    ``not_select``: it is not a SELECT."""

    def __init__(self, decision: Decision | None, not_select: bool = False):
        super().__init__("explained")
        self.decision = decision
        self.not_select = not_select


class ReadPath:
    def __init__(self, cache: QueryCache):
        self.cache = cache
        self.info_key = cache._info_key
        self._plans: keys.LRU[keys.Plan] = keys.LRU(cache._plan_memo_size,
                                                    cache._plan_memo_bytes)  # fmt: skip
        self._mapper_sets: dict[Any, MapperSet] = {}
        self._bind_ids: WeakKeyDictionary[Engine, str] = WeakKeyDictionary()
        self._locks = _KeyLocks()
        self.memo: keys.LRU[Entry] = keys.LRU(cache._memo_size, cache._memo_bytes)
        #: per entry key: per-object loader state a load in this process gave
        #: (raiseload, criteria on lazy loads: they carry that execution's values)
        self._templates: keys.LRU[dict[Any, Any]] = keys.LRU(cache._plan_memo_size)

    def clear(self) -> None:
        """Drop what this process keeps: plans, decoded entries, loader state."""
        self._plans.clear()
        self.memo.clear()
        self._templates.clear()
        self._mapper_sets.clear()

    # -------------------------------------------------------------- entry

    def passes(self, orm_state: ORMExecuteState) -> bool:
        """Certainly nothing for the cache to do with this statement: no region
        for it (:meth:`_region_for`, the one place that decides), no explain or
        probe option, and no ``do_orm_execute`` hook that changed it or may still
        tag it. The full path would let the ORM run it too; this answers ~10 µs
        sooner, for every statement an app does not cache."""
        if getattr(orm_state, "_update_execution_options", None) or _remaining_hooks(orm_state):
            return False
        opts = orm_state.execution_options
        if EXPLAIN_OPTION in opts or PROBE_OPTION in opts:
            return False
        return self._region_for(orm_state)[0] is None

    def on_execute(self, orm_state: ORMExecuteState) -> Any:
        """``do_orm_execute`` for a SELECT: a Result, or None to let the ORM run it."""
        if orm_state.is_column_load:
            return None  # a refresh
        if orm_state.is_relationship_load and (
            self.cache.identity_region is None
            or _lazy_parent(orm_state) is None
            or tracking.current_recorder() is not None
        ):
            # part of a load we cache whole (an eager load, or a lazy load run
            # while a miss records what it reads: its reads must be seen)
            rec = tracking.current_recorder()
            if rec is not None:
                return _post_load(orm_state, rec)
            return None
        if _sharded(orm_state):
            return self._per_shard(orm_state)
        # hooks registered after ours may still change the statement (loader
        # criteria, tenants): run them now, so that what we key is final
        later, result = _run_later_hooks(orm_state)
        if result:
            return result
        updated = getattr(orm_state, "_update_execution_options", None)
        if updated:
            # hooks' update_execution_options: SQLAlchemy applies them after the
            # hooks (``execution_options`` was taken before); so do the key, the
            # region, autoflush and what may be cached (yield_per, populate_existing)
            orm_state.execution_options = orm_state.execution_options.union(updated)
        if EXPLAIN_OPTION in orm_state.execution_options:
            raise Explained(self.decide(orm_state, counting=False))
        if log.isEnabledFor(_DEBUG):  # one line per statement, built only then
            result = self._traced(orm_state)
        else:
            result = self._cached(orm_state)
        if result is None and later:  # they ran already: run the statement ourselves
            return orm_state.invoke_statement()
        return result

    def _per_shard(self, orm_state: ORMExecuteState) -> Any:
        """A :class:`~sqlalchemy.ext.horizontal_shard.ShardedSession`'s statement.

        Its sharding hook (an instance listener, so after ours) answers every
        statement itself: one ``invoke_statement`` per shard, with that shard in
        ``bind_arguments`` and its ``identity_token`` in the execution options,
        then merges the results. ``invoke_statement`` runs only the hooks after
        the one that calls it, so ours is put right after the sharding hook in
        this execution's list: each shard's statement then reaches
        :meth:`on_execute` as a statement of its own, keyed for its bind (the
        shard's engine) and its identity token, its objects keeping the token.
        """
        todo = orm_state._events_todo
        at = orm_state._starting_event_idx + 1
        for i in range(at, len(todo)):
            if todo[i] is _SHARD_HOOK:
                todo.insert(i + 1, self.on_execute)
                break
        _, result = _run_later_hooks(orm_state)
        return result

    def _traced(self, orm_state: ORMExecuteState) -> Any:
        """:meth:`_cached`, then one DEBUG line: outcome, reason, region, key, tables, µs."""
        trace: dict[str, Any] = {}
        t0 = time.perf_counter()
        with self.cache._stats.trace() as notes:
            result = self._cached(orm_state, trace)
        us = (time.perf_counter() - t0) * 1e6
        if "region" in trace:  # a statement for the cache (else: nothing to say)
            outcome, reason = _outcome(notes, trace)
            key = trace.get("key") or "-"
            log.debug("%s region=%s key=%s tables=%s reason=%s %.0fus", outcome,
                      trace["region"], key[: key.rfind(":") + 13],
                      ",".join(trace.get("tables", ())) or "-", reason, us)  # fmt: skip
        return result

    def decide(self, orm_state: ORMExecuteState, trace: dict[str, Any] | None = None,
               counting: bool = True) -> Decision | None:  # fmt: skip
        """Everything up to the lookup: region, plan, key, connection rules.

        None: not a statement for the cache (no region asked for it). Otherwise
        a :class:`Decision`; ``decision.skip`` set means it bypasses the cache
        (and why). The run time path (:meth:`_cached`) and ``QueryCache.explain``
        both call this, so they cannot disagree. ``counting=False`` (explain):
        no counter moves and no warning is logged.
        """
        cache = self.cache
        region_name, ttl, tagged, pin = self._region_for(orm_state)
        if region_name is None:
            return None
        d = Decision(region_name, ttl, tagged)
        if trace is not None:
            trace["region"] = region_name
        if not cache._active:
            d.skip = ("disabled", "disabled", "disabled", None)
            if trace is not None:
                trace["reason"] = "disabled"
            return d
        d.region = cache._region(region_name)  # an unknown name is a configuration error
        if not _cacheable(orm_state):
            d.skip = ("uncacheable", "", "options (FOR UPDATE, yield_per, ...)", None)
            return d
        session = orm_state.session
        try:
            statement: Any = orm_state.statement
            cache_key = statement._generate_cache_key()
            if cache_key is None:
                d.skip = ("uncacheable", "", "no SQLAlchemy cache key", None)
                return d
            d.cache_key = cache_key
            d.bind = bind = session.get_bind(**orm_state.bind_arguments)
            d.plan = plan = self.plan(orm_state, cache_key, bind)
            if plan.uncacheable is not None or (not tagged and not plan.reads_tables):
                # a statement that reads no table is cached only when tagged itself
                d.skip = ("uncacheable", "", plan.uncacheable or "reads no table, not tagged",
                          None)  # fmt: skip
                return d
            # admission: is this shape worth looking up? (a pin, else its averages)
            shape = plan.adm
            if shape is None:
                shape = self._shape_of(plan)
            d.shape = shape
            mode = shape.mode = pin or cache._admission[region_name]
            if mode == "never":
                skip = True
            elif mode == "always":
                skip = False
            elif counting:
                skip = not shape.admit(cache._policy)  # counts the call down to a trial
            else:  # explain: look, do not count
                skip = shape.state == admission.REJECTED
            if not skip:
                d.c0 = shape.cpu_clock()
            d.t0 = time.perf_counter()  # what the cache costs this call starts here
            d.key = key = "" if skip else keys.entry_key(
                cache.namespace, region_name, plan, cache_key.bindparams, orm_state.parameters,
                getattr(cache_key, "params", None), keys.user_options(orm_state.execution_options),
                self._scope(orm_state),
            )  # fmt: skip
        except Unencodable as err:
            d.skip = ("uncacheable", "", f"parameter: {err}", None)
            return d
        except Exception as err:  # never our exception in the user's query
            if counting:
                cache._warn(("key", type(err)), "cannot key a statement: %r", err)
            d.skip = ("errors", "", f"cannot key: {err!r}", err)
            return d
        if skip:  # the admission said no: no lookup, no store
            if trace is not None:
                trace.update(tables=plan.tables)
            if mode == "never":
                d.skip = ("admission", admission.PINNED_NEVER, "admission pinned to never", None)
            else:
                d.skip = ("admission", admission.NOT_WORTH_IT, "not worth it", None)
            return d
        if trace is not None:
            trace.update(key=key, tables=plan.tables)

        # as the uncached query would: refuse without a transaction when autobegin is
        # off, and autoflush; their errors are the user's. (A hit does not begin the
        # session's transaction itself: that would cost ~20 µs a hit, measured.)
        if session._transaction is None and not session.autobegin:
            session._autobegin_t()  # raises InvalidRequestError, like the query
        if _autoflushes(orm_state):
            if session._is_clean():  # nothing to flush: whoever serves it autoflushes once
                d.flush_on_hit = True
            else:  # before the lookup: what it writes decides what may be served
                session._autoflush()
        rule = self._may_use(session, bind, plan)
        if rule is not None:
            d.skip = rule
            if trace is not None and not rule[0]:
                trace["reason"] = rule[2]
            return d
        rk = plan.rowkey
        enc = None
        if rk is not None:
            enc = rk.encode(cache_key.bindparams, orm_state.parameters,
                            getattr(cache_key, "params", None))  # fmt: skip
        names: tuple[str, ...] | None
        if enc is not None:
            names = (*rk.names(plan.tables, enc), ALL_TABLES, f"@region:{region_name}")
        else:
            names = plan.names.get(region_name)
            if names is None:
                names = plan.names[region_name] = (*plan.tables, ALL_TABLES,
                                                   f"@region:{region_name}")  # fmt: skip
        d.rk, d.enc, d.names = rk, enc, names
        failed = cache._writer.failed
        if failed and failed.blocks(names):
            d.skip = ("bypassed", "store_failed", "an invalidation not delivered yet", None)
        return d

    def _count_skip(self, d: Decision) -> None:
        """Count a decision not to use the cache, as :meth:`decide` explained it."""
        stats = self.cache._stats
        counter, reason, why, extra = d.skip  # type: ignore[misc]
        if counter == "uncacheable":
            stats.incr(d.region_name, "uncacheable", why=why)
        elif counter == "errors":
            stats.error(d.region_name, extra, why=why)
        elif counter == "bypassed":
            stats.bypass(d.region_name, reason, d.plan, why=why)
            for name in extra or ():
                stats.table(name, "bypassed")

    def _cached(self, orm_state: ORMExecuteState, trace: dict[str, Any] | None = None) -> Any:
        cache = self.cache
        stats = cache._stats
        d = self.decide(orm_state, trace)
        if d is None:
            return None
        if d.skip is not None:
            if d.skip[0] == "admission":  # outside decide: the query's errors are the user's
                assert d.plan is not None and d.shape is not None
                return self._skip(orm_state, orm_state.session, d.bind, d.plan, d.shape,
                                  d.region_name)  # fmt: skip
            self._count_skip(d)
            return _pass_on(orm_state, d.bind)
        region_name, region, plan, key, names = d.region_name, d.region, d.plan, d.key, d.names
        assert region is not None and plan is not None and key is not None and names is not None
        shape, t0, c0 = d.shape, d.t0, d.c0
        assert shape is not None
        cache_key, bind, rk, enc, ttl = d.cache_key, d.bind, d.rk, d.enc, d.ttl
        session = orm_state.session
        ttl = ttl if ttl is not None else region.expiration_time
        probe = orm_state.execution_options.get(PROBE_OPTION)
        if probe is not None and plan.shape is not None and not orm_state.is_relationship_load:
            # get_many: note what to look up, answer "no row" for now; the
            # batch is looked up in one round trip (ReadPath.lookup_many)
            probe.append((orm_state, region, key, names, plan, ttl))
            target = _pk_load(orm_state)
            if (isinstance(probe, Probes) and probe.derive is None and target is not None
                    and rk is not None and enc is not None and rk.kind == "row"):  # fmt: skip
                # the other ids' lookups follow from this one (ReadPath.prober)
                probe.derive = self.prober(orm_state, region, plan, rk, cache_key, names, ttl,
                                           target)  # fmt: skip
            return plan.shape.result([], None)
        result, served = None, 1
        if (rk is not None and enc is not None and rk.kind == "row" and plan.shape is not None
                and _lazy_parent(orm_state) is not None):  # fmt: skip
            try:  # the lazy load's own target is looked up in the same batch
                result, served = self._prefetch(orm_state, region, plan, rk, cache_key, key,
                                                names, ttl)  # fmt: skip
            except Exception as err:  # an optimisation: never the user's error
                cache._warn(("prefetch", type(err)), "prefetch failed: %r", err)
        if result is None:
            served = 1
            result, versions = self._lookup(orm_state, region, key, names, plan, ttl, d=d)
        klass = _identity_class(orm_state) if region_name == cache.identity_region else None
        if result is not None:
            # a prefetch's batch answered its siblings' lazy loads too: they never
            # reach the cache (the identity map has their targets), so admission
            # weighs the batch as that many hits
            shape.hit(time.perf_counter() - t0, cache._policy, served, _cpu(c0))
            if klass is not None:
                stats.klass(klass, "hits")
            if d.flush_on_hit:
                session._autoflush()
            return result
        if versions is None:  # tables in flight, or the version store is down
            stats.bypass(region_name, "unavailable", plan,
                         why="tables being written, or store down")  # fmt: skip
            # the lookup's cost, plus the query the ORM now runs (estimated)
            shape.missed(time.perf_counter() - t0 + (shape.uncached or 0.0), cache._policy,
                         _cpu(c0, shape.uncached_cpu))  # fmt: skip
            return _pass_on(orm_state, bind)
        with self._locks.hold(key, cache.lock_timeout) as (locked, waited):
            mutex = region.mutex(key) if locked else None
            if mutex is not None and not _acquire(mutex, cache.lock_timeout):
                mutex = None  # another process's miss took too long: run ours
            try:
                if waited or mutex is not None:  # someone may have stored it meanwhile
                    result, versions = self._lookup(
                        orm_state, region, key, names, plan, ttl, second=True, d=d
                    )
                    if result is not None:
                        shape.hit(time.perf_counter() - t0, cache._policy, 1, _cpu(c0))
                        if d.flush_on_hit:
                            session._autoflush()
                        return result
                    if versions is None:
                        stats.bypass(region_name, "unavailable", plan,
                                     why="tables being written, or store down")  # fmt: skip
                        shape.missed(time.perf_counter() - t0 + (shape.uncached or 0.0),
                                     cache._policy, _cpu(c0, shape.uncached_cpu))  # fmt: skip
                        return _pass_on(orm_state, bind)
                stats.incr(region_name, "misses", plan=plan)  # this request runs the query
                if klass is not None:
                    stats.klass(klass, "misses")
                out = self._miss(orm_state, region, key, names, versions, plan, ttl, bind,
                                 rk if enc is not None else None,
                                 _params(cache_key.bindparams, orm_state.parameters))  # fmt: skip
                shape.missed(time.perf_counter() - t0, cache._policy, _cpu(c0), d.cold)
                return out
            finally:
                if mutex is not None:
                    try:
                        mutex.release()
                    except Exception as err:
                        cache._warn(("mutex", type(err)), "cache mutex release: %r", err)

    # ---------------------------------------------------------- admission

    def _shape_of(self, plan: keys.Plan) -> admission.Shape:
        """The admission state of the plan's statement shape (plans of one digest share it)."""
        shapes = self.cache._stats.shapes
        shape: admission.Shape | None = shapes.get(plan.digest)
        if shape is None:
            shape = admission.Shape()
            shape = shapes.setdefault(plan.digest, shape)
        plan.adm = shape
        return shape

    def _skip(
        self,
        orm_state: ORMExecuteState,
        session: Session,
        bind: Any,
        plan: keys.Plan,
        shape: admission.Shape,
        region: str,
    ) -> Any:
        """Run the statement without the cache (admission said so): no lookup, no store.

        Pinned ``never``: the ORM runs it. Not worth it: the ORM runs it too, except
        one call in ``admission.TIME_EVERY``, run and timed here, which keeps the
        shape's estimate of the uncached query current (running it from this hook
        costs a nested ``Session.execute``: ~25 us measured on a 400 us query).
        """
        stats = self.cache._stats
        if shape.mode == "never":
            stats.bypass(region, admission.PINNED_NEVER, plan, why="admission pinned to never")
            return _pass_on(orm_state, bind)
        timed = not shape.left % admission.TIME_EVERY
        why = ""
        if stats._tracing:
            s = shape.saving()
            why = (f"not worth it (expected saving {s * 1e6:.0f}us a call; next trial in "
                   f"{max(shape.left, 0)} calls)" if s is not None else "not worth it")  # fmt: skip
        stats.bypass(region, admission.NOT_WORTH_IT, plan, why=why)
        if not timed:
            return _pass_on(orm_state, bind)
        cpu = time.thread_time()
        started = time.perf_counter()
        result = _invoke_on(orm_state, bind)
        shape.ran(time.perf_counter() - started, None, self.cache._policy,
                  (time.thread_time() - cpu, None))  # fmt: skip
        return result

    # ------------------------------------------------------------- choice

    def _region_for(
        self, orm_state: ORMExecuteState
    ) -> tuple[str | None, float | None, bool, str | None]:
        """(region, ttl, tagged, pin): tagged means the statement itself asked to be
        cached; pin is the admission its FromCache pinned, or None."""
        region = ttl = pin = None
        for opt in orm_state.user_defined_options:
            if isinstance(opt, NoCache):
                return None, None, False, None
            if isinstance(opt, FromCache) and region is None:
                region, ttl, pin = opt.region, opt.expiration_time, opt.admission
        if region is not None:
            return region, ttl, True, pin
        stmt_opts = orm_state.statement._execution_options
        identity = self.cache.identity_region
        if (identity is not None and REGION_OPTION not in stmt_opts
                and REGION_OPTION not in orm_state.local_execution_options
                and _identity_load(orm_state)):  # fmt: skip
            return identity, orm_state.execution_options.get(EXPIRATION_OPTION), True, None
        local = orm_state.local_execution_options
        session = orm_state.session
        tagged = True
        if REGION_OPTION in stmt_opts:
            region = stmt_opts[REGION_OPTION]
        elif REGION_OPTION in local:
            region = local[REGION_OPTION]
            # Session(execution_options=...) (SQLAlchemy 2.1) reaches us merged into the
            # call's options: session-wide unless the call says otherwise
            session_opts = getattr(session, "execution_options", None) or {}
            tagged = session_opts.get(REGION_OPTION) != region
        else:
            tagged = False
            region = session.info.get(REGION_OPTION)
        if region is None:
            return None, None, False, None
        return region, orm_state.execution_options.get(EXPIRATION_OPTION), tagged, None

    def _scope(self, orm_state: ORMExecuteState) -> Any:
        scope = orm_state.execution_options.get(SCOPE_OPTION)
        if scope is None and self.cache.scope is not None:
            scope = self.cache.scope()
        hooks = _other_hooks(orm_state.session)
        if hooks:
            # the statement is keyed after the hooks, but what they do to its
            # post-loads (selectin/subquery/immediate, which run only on a miss)
            # is not in it: entries are shared only by sessions with the same hooks
            scope = (scope, hooks)
        return scope

    # --------------------------------------------------------------- plan

    def plan(self, orm_state: ORMExecuteState, cache_key: Any, bind: Any) -> keys.Plan:
        engine = bind.engine
        engine_id = self._bind_ids.get(engine)
        if engine_id is None:
            # an engine made by execution_options() carries its own schema map
            ident = keys.engine_identity(engine) + "|" + keys.server_identity(engine)
            engine_id = keys.bind_identity(ident, engine, {})
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
        dialect = engine.dialect
        stm = opts.get("schema_translate_map") or bind.get_execution_options().get(
            "schema_translate_map"
        )
        compiled = stmt.compile(bind=engine)
        sql = str(compiled)
        if stm:  # the names as they will run
            sql = str(stmt.compile(bind=engine, schema_translate_map=stm,
                                   render_schema_translate=True))  # fmt: skip
        found = tracking.scan_sql(dialect, sql)
        default = tracking.default_schema(dialect)
        tables = set(found.reads)
        # the loaders' tables, predicted: a first guess the misses correct
        tables.update(t for t in keys.tables_read(compiled, stmt, default) if t != ANY_TABLE)
        tables.discard(ALL_TABLES)
        try:
            tables = set(Catalog.for_engine(engine).read_closure(tables))
        except Exception:
            tables.add(ANY_TABLE)
        roots = []
        for ent in getattr(compiled.compile_state, "_entities", ()) or ():
            m = getattr(ent, "mapper", None) or getattr(ent, "entity_zero", None)
            m = getattr(m, "mapper", m)
            if m is not None and hasattr(m, "base_mapper"):
                roots.append(m)
        parent = _lazy_parent(orm_state)
        if parent is not None:  # its objects' load paths start at the parent's class
            roots.append(parent.mapper)
        mappers = self._mapper_set(roots)
        codec.register_enums_of(c.type for c in getattr(stmt, "selected_columns", ()))
        # a plain primary-key or lazy load (no options, no criteria of its own
        # beyond what the SQL says) is keyed by its SQL alone: session.get()
        # and a many-to-one lazy load of the same row share one entry
        plain = _identity_load(orm_state) and not stmt._with_options
        digest = keys.make_digest(
            self.cache.namespace,
            str(codec.FORMAT_VERSION),
            bind_id,
            str(compiled),
            "plain" if plain else keys.stable_repr(cache_key.key),
            mappers.fingerprint,
            repr(shape_opts),
        )
        plan = keys.Plan(digest, compiled, tuple(sorted(tables)), mappers)
        if not found.pure:
            plan.uncacheable = found.reason or "not a pure read"
        elif not stm and ANY_TABLE not in tables:
            try:
                rk = rows.row_key(compiled, cache_key.bindparams,
                                  lambda t: canonical(t.name, t.schema, default))  # fmt: skip
            except Exception as err:
                log.debug("no row key: %r", err)
                rk = None
            if rk is not None and rk.tables <= set(tables):
                plan.rowkey = rk
        self._plans.put(memo_key, plan, _PLAN_COST + _PLAN_COST_PER_CHAR * len(sql))
        return plan

    def _mapper_set(self, roots: list[Any]) -> MapperSet:
        k = tuple(sorted(id(r) for r in roots))
        ms = self._mapper_sets.get(k)
        if ms is None:
            ms = self._mapper_sets[k] = MapperSet(roots)
        return ms

    # ------------------------------------------------- connection's rules

    def _may_use(self, session: Session, bind: Any, plan: keys.Plan) -> Any:
        """Read-your-writes, snapshot and connection-state rules, at the connection:
        None (may use the cache) or the skip of a :class:`Decision`."""
        key = self.info_key
        conn = _connection_for(session, bind)
        tracker = session.info.get(key)
        written = tracker.written() if tracker is not None else set()
        ct = None
        if conn is not None:
            try:
                ct = conn.info.get(key)
            except Exception:  # an invalidated connection: the query will tell the user
                return ("", "", "the connection is invalidated", None)
            if ct is not None:
                written = written | ct.written
                for names, _ in ct.committing:
                    written.update(names)
        if written:
            read = plan.tables
            if ALL_TABLES in written or ANY_TABLE in read or not written.isdisjoint(read):
                return ("bypassed", "written", "this transaction wrote its tables",
                        sorted(written.intersection(read)))  # fmt: skip
        if ct is not None and (ct.state_changed and self.cache.scope is None):
            # SET search_path / role ...: results may differ
            return ("bypassed", "state_changed", "connection state changed (SET ...)", None)
        if conn is not None and _holds_snapshot(conn, ct):
            return ("bypassed", "snapshot", "the transaction holds a snapshot", None)
        return None

    # ------------------------------------------------------------- lookup

    def _lookup(
        self,
        orm_state: ORMExecuteState,
        region: RegionStore,
        key: str,
        names: tuple[str, ...],
        plan: keys.Plan,
        ttl: float | None,
        second: bool = False,
        d: Decision | None = None,
    ) -> tuple[Any, list[int] | None]:
        """(result or None, current versions or None if unusable); ``d.cold`` tells
        what a miss found (nothing stored, or an entry from before the shape was last
        turned away).

        An entry this process decoded before is kept decoded (``self.memo``);
        then only the versions are read. It is valid under exactly the same
        rule as the stored one: its versions equal the current ones.
        """
        cache = self.cache
        memo_key = (region.name, key)
        entry = None if second else self.memo.get(memo_key)
        try:
            if entry is not None:
                raw, versions = None, self._read_versions(names, orm_state)
            else:
                raw, versions = self._fetch(region, key, names, orm_state)
        except Exception as err:
            cache._warn(("get", region.name, type(err)), "cache read failed (%s): %r",
                        region.name, err)  # fmt: skip
            cache._stats.error(region.name, err, plan, why=f"read failed: {err!r}")
            if region.down_since is None and not isinstance(err, Unavailable):
                region.down_since = time.monotonic()
            return None, None
        if versions is None:
            return None, None
        if d is not None:  # nothing stored: a cold miss, no evidence of the writes
            d.cold = admission.COLD if entry is None and raw is None else admission.WARM
        return self._use(orm_state, region, key, names, plan, ttl, second, entry, raw, versions,
                         d)  # fmt: skip

    def _use(
        self,
        orm_state: ORMExecuteState,
        region: RegionStore,
        key: str,
        names: tuple[str, ...],
        plan: keys.Plan,
        ttl: float | None,
        second: bool,
        entry: Entry | None,
        raw: bytes | None,
        versions: list[int],
        d: Decision | None = None,
    ) -> tuple[Any, list[int] | None]:
        """The lookup's second half: a valid entry (memo or ``raw``) -> a Result."""
        cache = self.cache
        memo_key = (region.name, key)
        fresh = entry is None  # decoded here: kept only once it proved valid
        try:
            if entry is None:
                if raw is None:
                    return None, versions
                if len(raw) > cache.max_entry_bytes:  # refused before decoding anything
                    if not second:
                        cache._stats.incr(region.name, "too_large", plan=plan)
                    return None, versions
                entry = Entry.decode(cache.sealer.open(key, raw), key, len(raw))
            if not entry.matches(names, versions):
                if not entry.covered_by(names) and len(entry.names) <= _MAX_LEARNED:
                    # recorded with a dependency this lookup did not read (another
                    # process's plan learned more): never trusted; read it from now on
                    self._learn(plan, entry.names)
                self.memo.pop(memo_key)
                adm = plan.adm
                if d is not None and adm is not None and entry.created < adm.since:
                    # stored before the shape was turned away, written while it was
                    # not looking: a store to renew, no evidence of the write rate
                    d.cold = admission.RENEW
                return None, versions  # stale: a table was written since
            if ttl is not None and now() - entry.created > ttl:
                self.memo.pop(memo_key)
                return None, versions
            flags = entry.flags
            shape = plan.shape or plan.derived.get(tuple(flags))
            derived = None
            if shape is None:
                shape = derived = derive_shape(plan.compiled, flags)
            options: Any = orm_state.statement._with_options
            load_options = tuple(opt for opt in options if opt.propagate_to_loaders)
            data = hydrate(orm_state.session, plan.mappers, entry.payload(),
                           self._templates.get(key), load_options, shape)  # fmt: skip
            # it served rows: what it gave may be kept
            if derived is not None:
                plan.derived[tuple(flags)] = derived
            if fresh:
                self.memo.put(memo_key, entry, entry.cost())
        except NeedsLocalLoad:
            # objects need loader state only a load in this process can give
            # (raiseload, load_only(raiseload=True), aliased paths): run it once
            return None, versions
        except Exception as err:  # corrupt, foreign or mismatched: a miss
            self.memo.pop(memo_key)
            if not second:  # the same entry, read again under the lock, counts once
                cache._warn(("decode", region.name), "undecodable cache entry in %s: %r",
                            region.name, err)  # fmt: skip
                cache._stats.incr(region.name, "corrupt")
            return None, versions
        cache._stats.hit(region.name, plan)
        # the ORM's result reads its rows as they are fetched, unless prebuffered
        live = None if orm_state.execution_options.get("prebuffer_rows") else orm_state.session
        return shape.result(data, entry.rowcount(len(data)), live), versions

    def _prefetch(
        self,
        orm_state: ORMExecuteState,
        region: RegionStore,
        plan: keys.Plan,
        rk: rows.RowKey,
        cache_key: Any,
        key: str,
        names: tuple[str, ...],
        ttl: float | None,
    ) -> tuple[Any, int]:
        """A many-to-one lazy load: load its siblings' targets too, in one round trip.

        The siblings are the objects of the parent's class in the session whose
        same relationship is not loaded yet (a page of orders: each order's
        customer). Their targets are looked up in one batch; those the cache
        misses are loaded by one ``IN`` query and stored, each under the
        versions the batch read before it ran. They land in the identity map,
        pinned to their siblings (``_PINNED``), where the siblings' own lazy
        loads find them without SQL. The lazy load's own target is the batch's
        first lookup: its Result if that was a hit (else None: the caller looks
        it up, a hit if the ``IN`` query just stored it), and how many lazy loads
        the batch answered (the own one and one per distinct target it pinned: what
        the ORM would have loaded one by one).
        """
        from sqlalchemy import tuple_
        from sqlalchemy.orm.base import LoaderCallableStatus, PassiveFlag
        from sqlalchemy.orm.relationships import RelationshipProperty

        session = orm_state.session
        parent = _lazy_parent(orm_state)
        path = orm_state.loader_strategy_path
        prop = getattr(path, "prop", None)
        target = _pk_load(orm_state)
        strategy = getattr(prop, "_lazy_strategy", None)
        if (not isinstance(prop, RelationshipProperty) or target is None or strategy is None
                or not getattr(strategy, "use_get", False)):  # fmt: skip
            return None, 1
        token = getattr(parent, "identity_token", None)
        idmap = session.identity_map
        wanted: dict[tuple[Any, ...], list[Any]] = {}
        own_ident = tuple(
            strategy._get_ident_for_use_get(session, parent, PassiveFlag.PASSIVE_NO_FETCH)
        )
        wanted[own_ident] = []  # lands on the parent: nothing to pin
        for state in list(idmap.all_states()):
            if (state is parent or state.manager is not parent.manager or prop.key in state.dict
                    or state.identity_token != token):  # another shard's object: its own load
                continue
            ident = strategy._get_ident_for_use_get(session, state, PassiveFlag.PASSIVE_NO_FETCH)
            if any(v is None or v is LoaderCallableStatus.PASSIVE_NO_RESULT for v in ident):
                continue
            ident = tuple(ident)
            if ident in wanted:
                wanted[ident].append(state)
                continue
            if target.identity_key_from_primary_key(ident, token) in idmap:
                continue
            if len(wanted) >= _PREFETCH_MAX:
                break
            wanted[ident] = [state]
        if len(wanted) == 1:  # no sibling needs anything: the plain lookup
            return None, 1
        probes = []
        idents = []
        probe_for = self.prober(orm_state, region, plan, rk, cache_key, names, ttl, target)
        for ident in wanted:
            if ident == own_ident:
                probes.append((orm_state, region, key, names, plan, ttl))
                idents.append(ident)
                continue
            p = probe_for(ident)
            if p is not None:
                probes.append(p)
                idents.append(ident)
        found = self.lookup_many(probes, keep_versions=True)
        missing = []
        own_result, served = None, 1
        for ident, p, (result, versions) in zip(idents, probes, found):
            if result is not None and ident == own_ident:
                own_result = result
            elif result is not None:
                served += _pin(wanted[ident], result.scalars().first())
            elif versions is not None:
                missing.append((ident, p, versions))
        if not missing:
            return own_result, served
        pk_cols = list(target.primary_key)
        cond = (pk_cols[0].in_([i[0] for i, _, _ in missing]) if len(pk_cols) == 1
                else tuple_(*pk_cols).in_([i for i, _, _ in missing]))  # fmt: skip
        from sqlalchemy import select

        stmt = select(target).where(cond).options(NoCache())
        preexisting = set(idmap.keys()) if len(idmap) else None
        # where the lazy load itself runs: its shard (a sharded session runs a
        # statement with no shard on every shard) and its identity token
        opts: dict[str, Any] = {"autoflush": False}
        if token is not None:
            opts["identity_token"] = token
        shard = {k: v for k, v in orm_state.bind_arguments.items() if k == "shard_id"}
        if token is not None and not shard and _sharded(orm_state):
            shard = {"shard_id": token}
        rec, rec_token = tracking.start_recording()
        try:
            frozen = session.execute(stmt, execution_options=opts, bind_arguments=shard).freeze()
        finally:
            tracking.stop_recording(rec_token)
        scalars = frozen._source_supports_scalars  # rows are the objects themselves
        by_ident = {}
        for row in frozen.data:
            obj = row if scalars else row[0]
            if instance_state(obj).identity_token != token:
                return own_result, served  # not where the lazy load runs: keep nothing
            ident = tuple(target.primary_key_from_instance(obj))
            by_ident[ident] = row
            if ident in wanted:
                served += _pin(wanted[ident], obj)
        observed = rec.reads - {ALL_TABLES, *rk.tables}
        if rec.impure is not None or not rk.tables.isdisjoint(rec.again):
            return own_result, served  # not storable: loaded for this session only
        if bool(scalars) != bool(plan.shape.scalars):
            return own_result, served  # not the shape a get stores
        shape = plan.shape
        for ident, (_, _, k, n, _, _), versions in missing:
            row = by_ident.get(ident)
            if row is None or not observed.issubset(n):
                continue  # no such row (not stored: an INSERT names none), or read more
            found_n, found_v = _found_row(rk, n, versions)
            self._store(region, k, found_n, found_v, plan, shape, [row],
                        preexisting, ttl, [repr(v)[:80] for v in ident])  # fmt: skip
        return own_result, served

    def prober(
        self,
        orm_state: ORMExecuteState,
        region: RegionStore,
        plan: keys.Plan,
        rk: rows.RowKey,
        cache_key: Any,
        names: tuple[str, ...],
        ttl: float | None,
        target: Any,
    ) -> Callable[[tuple[Any, ...]], Any]:
        """``probe_for(ident)``: the lookup a primary-key load of ``ident`` would
        make through the same plan as ``orm_state`` (a get or a use_get lazy load of
        ``target``): its entry key (the statement's pk parameters set to ``ident``)
        and row names; None when ``ident`` has no row-level name (the load itself
        then decides). What every id of the batch shares is worked out once."""
        get_params = target._get_clause[1]
        pkeys = [get_params[col].key for col in target.primary_key]
        given = orm_state.parameters
        own = dict(given) if isinstance(given, dict) else {}
        namespace, stmt_params = self.cache.namespace, getattr(cache_key, "params", None)
        options = keys.user_options(orm_state.execution_options)
        scope = self._scope(orm_state)
        shared = names[len(names) - 2 :]

        def probe_for(ident: tuple[Any, ...]) -> Any:
            enc = rows.encode(ident)
            if enc is None:
                return None
            params = {**own, **dict(zip(pkeys, ident))}
            k = keys.entry_key(namespace, region.name, plan, cache_key.bindparams, params,
                               stmt_params, options, scope)  # fmt: skip
            return (orm_state, region, k, (*rk.names(plan.tables, enc), *shared), plan, ttl)

        return probe_for

    def lookup_many(self, probes: list[Any], keep_versions: bool = False) -> list[Any]:
        """Results (or None) of the lookups ``get_many`` noted, in one round trip per
        region for the entries and one to the version store for all their names."""
        cache = self.cache
        out: list[Any] = [None] * len(probes)
        if not probes:
            return out
        union: dict[str, None] = {}
        for p in probes:
            union.update(dict.fromkeys(p[3]))
        first = probes[0][0]
        try:
            all_names = tuple(union)
            raws: dict[int, Any] = {}
            by_region: dict[str, list[int]] = {}
            for i, p in enumerate(probes):
                if self.memo.get((p[1].name, p[2])) is None:
                    by_region.setdefault(p[1].name, []).append(i)
            current: list[int] | None = None
            combined = False
            if len(by_region) == 1:
                ((name, idx),) = by_region.items()
                region = probes[idx[0]][1]
                if self._combined(region):  # the entries and the versions: one round trip
                    batch = [probes[i][2] for i in idx]
                    region.caught_up(batch)
                    got, current = self.cache.versions.read_with_entries(  # type: ignore[attr-defined]
                        region.redis, batch, all_names)  # fmt: skip
                    raws.update(zip(idx, got))
                    by_region, combined = {}, True
            if not combined:
                current = self._read_versions(all_names, first)
            for name, idx in by_region.items():
                got = cache._region(name).get_many([probes[i][2] for i in idx])
                raws.update(zip(idx, got))
        except Exception as err:
            cache._warn(("get_many", type(err)), "cache read failed: %r", err)
            return [(None, None)] * len(probes) if keep_versions else out
        if current is None:
            # tables in flight, or the store is down: every id misses
            return [(None, None)] * len(probes) if keep_versions else out
        k = len(current) - len(all_names)  # a store's own values first (the epoch)
        by_name = dict(zip(all_names, current[k:]))
        for i, (orm_state, region, key, names, plan, ttl) in enumerate(probes):
            versions = current[:k] + [by_name[n] for n in names]
            entry = self.memo.get((region.name, key))
            result, seen = self._use(orm_state, region, key, names, plan, ttl, False, entry,
                                     raws.get(i), versions)  # fmt: skip
            out[i] = (result, seen) if keep_versions else result
        return out

    def _learn(self, plan: keys.Plan, seen: Any) -> None:
        """Widen what the plan's lookups read (its next miss can then be stored)."""
        tables = set(plan.tables)
        tables.update(n for n in seen if n != ALL_TABLES and not n.startswith("@region:"))
        if tables != set(plan.tables):
            plan.tables = tuple(sorted(tables))
            plan.names = {}

    def _read_versions(self, names: tuple[str, ...], orm_state: Any) -> list[int] | None:
        store = self.cache.versions
        if getattr(store, "needs_bind", False):
            return store.read(names, orm_state.session.get_bind(**orm_state.bind_arguments))
        return store.read(names)

    def _fetch(
        self, region: RegionStore, key: str, names: tuple[str, ...], orm_state: Any
    ) -> tuple[bytes | None, list[int] | None]:
        """The entry and the current versions; one round trip when both live in one Redis."""
        store = self.cache.versions
        if self._combined(region):
            region.caught_up([key])
            raw, versions = store.read_with_entry(region.redis, key, names)  # type: ignore[attr-defined]
            return raw, versions
        return region.get(key), self._read_versions(names, orm_state)

    def _combined(self, region: RegionStore) -> bool:
        """Do the region's entries live in the version store's Redis (one round trip)?"""
        if region.combined is None:
            same = getattr(self.cache.versions, "same_server", None)
            region.combined = bool(region.redis is not None and same and same(region.redis))
        return region.combined

    # --------------------------------------------------------------- miss

    def _miss(
        self,
        orm_state: ORMExecuteState,
        region: RegionStore,
        key: str,
        names: tuple[str, ...],
        versions: list[int],
        plan: keys.Plan,
        ttl: float | None,
        bind: Any,
        rk: rows.RowKey | None = None,
        params: list[str] | None = None,
    ) -> Any:
        cache = self.cache
        stats = cache._stats
        session = orm_state.session
        idmap = session.identity_map
        preexisting = set(idmap.keys()) if len(idmap) else None
        rec, token = tracking.start_recording()
        cpu0 = time.thread_time()
        started = time.perf_counter()
        try:
            # the user's query: its errors propagate
            result = _invoke_on(orm_state, bind)
            executed = time.perf_counter()
            cpu1 = time.thread_time()
            if not isinstance(result, Result):  # something a hook returned: not ours to store
                return result
            rowcount = result.rowcount if isinstance(result, CursorResult) else None
            unique = result._unique_filter_state
            result._unique_filter_state = None
            frozen = result.freeze()
        finally:
            tracking.stop_recording(token)
        done = time.perf_counter()
        stats.missed(region.name, plan, done - started)
        if plan.adm is not None:
            cpu2 = time.thread_time()
            plan.adm.ran(executed - started, done - executed, cache._policy,
                         (cpu1 - cpu0, cpu2 - cpu1))  # fmt: skip
        shape = Shape(frozen.metadata, frozen._attributes, frozen._source_supports_scalars,
                      unique[1] if unique else None,
                      _rowcount_mode(rowcount, frozen.data))  # fmt: skip
        plan.shape = shape
        out = shape.result(frozen.data, rowcount)
        if rec.impure is not None:  # a statement of this load was not a pure read
            plan.uncacheable = rec.impure
            stats.incr(region.name, "uncacheable", plan=plan, why=str(rec.impure))
            return out
        if rec.hooked:  # a hit would not run the post-load the hook changed
            stats.incr(region.name, "not_stored", plan=plan,
                       why="a do_orm_execute hook changed one of its post-loads")  # fmt: skip
            return out
        observed = rec.reads - {ALL_TABLES}
        if rk is not None:
            if not rk.tables.isdisjoint(rec.again):
                # another statement of this load (an eager load back to the same
                # table) read rows the key does not name: whole tables from now on
                plan.rowkey = None
                self._learn(plan, observed)
                stats.incr(region.name, "not_stored", plan=plan,
                           why="read its rows again: whole tables")  # fmt: skip
                return out
            # the rows of its keyed tables are versioned by name (rows.RowKey.names)
            observed = observed - rk.tables
            if rk.kind == "row" and frozen.data:
                names, versions = _found_row(rk, names, versions)
        if not observed.issubset(names):
            # it read tables whose versions were not read before it ran: not
            # storable now (I2); the next lookup reads them too
            self._learn(plan, observed)
            stats.incr(region.name, "not_stored", plan=plan, why="read tables not versioned before")
            return out
        self._store(region, key, names, versions, plan, shape, frozen.data, preexisting, ttl,
                    params)  # fmt: skip
        return out

    def _store(
        self,
        region: RegionStore,
        key: str,
        names: tuple[str, ...],
        versions: list[int],
        plan: keys.Plan,
        shape: Shape,
        data: Any,
        preexisting: Any,
        ttl: float | None,
        params: list[str] | None = None,
    ) -> None:
        """Encode and store one result (``data``: its frozen rows), read under ``versions``."""
        cache = self.cache
        stats = cache._stats
        big = plan.too_large
        if big is not None:
            if big[2] <= 0 or time.monotonic() >= big[1]:
                plan.too_large = None  # time to measure again
            elif len(data) * big[0] > cache.max_entry_bytes:
                # a result of this shape this large was too large to store lately:
                # not encoded again (until the retry); smaller ones still are
                big[2] -= 1
                stats.incr(region.name, "too_large", plan=plan, why="predicted too large")
                return
        try:
            templates: dict[Any, Any] = {}
            payload = dehydrate(data, shape.scalars, preexisting, templates)
            flags = shape.flags
            created = now()
            # the 8th item names the statement and its parameters, for the CLI
            blob = codec.packb([codec.FORMAT_VERSION, key, created, list(names), versions,
                                flags, payload, [plan.digest[:8].hex(), params]])  # fmt: skip
            stored = cache.sealer.seal(key, blob)  # signed / encrypted with a secret
        except (NotStorable, Unencodable) as err:
            log.debug("not storing %s: %s", key, err)
            stats.incr(region.name, "not_stored", plan=plan, why=str(err))
            return
        except Exception as err:
            cache._warn(("dehydrate", type(err)), "cannot store a result: %r", err)
            stats.error(region.name, err, plan, why=f"cannot store: {err!r}")
            return
        if len(stored) > cache.max_entry_bytes:
            # remember the bytes per row: results of this shape predicted too large
            # skip dehydrate + encode for a while
            per_row = len(stored) / max(len(data), 1)
            plan.too_large = [per_row, time.monotonic() + _TOO_LARGE_RETRY_SECONDS,
                              _TOO_LARGE_RETRY_MISSES]  # fmt: skip
            stats.incr(region.name, "too_large", plan=plan, why=f"{len(stored)} bytes")
            return
        try:
            region.set(key, stored, ttl)
            stats.stored(region.name, plan, len(stored))
            if region.down_since is not None:
                cache._recovered(f"region {region.name!r}", region.down_since)
                region.down_since = None
            if templates:
                self._templates.put(key, templates)
            # the payload we just built holds the live objects' values: keep it
            # decoded only if none of them can change in place
            if _has_mutable(payload):
                entry = Entry(created, names, versions, flags, blob, None, len(stored))
            else:
                entry = Entry(created, names, versions, flags, None, payload, len(stored))
            self.memo.put((region.name, key), entry, entry.cost())
        except Exception as err:
            cache._warn(("set", region.name, type(err)), "cache write failed (%s): %r",
                        region.name, err)  # fmt: skip
            stats.error(region.name, err, plan, why=f"write failed: {err!r}")
            if region.down_since is None:
                region.down_since = time.monotonic()


# -------------------------------------------------------------- helpers


def _params(bindparams: Any, params: Any) -> list[str] | None:
    """The parameter values of a miss, as short reprs (kept in its entry, for the CLI)."""
    try:
        given = params if isinstance(params, dict) else {}
        return [repr(given.get(bp.key, bp.effective_value))[:80] for bp in bindparams[:20]]
    except Exception:
        return None


def _outcome(notes: list[tuple[str, str]], trace: dict[str, Any]) -> tuple[str, str]:
    """(hit/miss/bypass/uncacheable, reason) from the counters one statement moved."""
    counted = [c for c, _ in notes]
    why = {c: w for c, w in reversed(notes)}  # the first reason of each counter
    if "hits" in counted:
        return "hit", "valid entry"
    if "misses" in counted:
        before = counted[: counted.index("misses")]
        after = counted[counted.index("misses") + 1 :]
        lookup = "corrupt entry, " if "corrupt" in before else ""
        lookup += "entry too large, " if "too_large" in before else ""
        for c in after:
            if c == "stores":
                return "miss", lookup + "stored"
            if c in ("not_stored", "too_large", "uncacheable", "errors"):
                return "miss", f"{lookup}{c.replace('_', ' ')}: {why[c]}"
        return "miss", lookup + "not stored"
    for c, outcome in (("bypassed", "bypass"), ("uncacheable", "uncacheable")):
        if c in why:
            return outcome, why[c]
    if "errors" in why:
        return "bypass", why["errors"]
    return "bypass", trace.get("reason", "-")


def _post_load(orm_state: ORMExecuteState, rec: tracking.Recorder) -> Any:
    """A statement of a load a miss is recording (an eager post-load): run as the ORM
    would, noting in ``rec`` whether a hook changed it. A hit never runs post-loads,
    so what hooks do to them must not be stored under the top statement's key."""
    before = orm_state.statement
    later, result = _run_later_hooks(orm_state)
    if orm_state.statement is not before or getattr(orm_state, "_update_execution_options", None):
        rec.mark_hooked()
    if result:
        return result
    return orm_state.invoke_statement() if later else None


_SHARD_HOOK: Any = None


def _sharded(orm_state: ORMExecuteState) -> bool:
    """Is SQLAlchemy's horizontal sharding hook among the hooks after ours?"""
    global _SHARD_HOOK
    later = _remaining_hooks(orm_state)
    if not later:
        return False
    if _SHARD_HOOK is None:
        from sqlalchemy.ext.horizontal_shard import execute_and_instances

        _SHARD_HOOK = execute_and_instances
    return any(fn is _SHARD_HOOK for fn in later)


def _run_later_hooks(orm_state: ORMExecuteState) -> tuple[list[Any], Any]:
    """Run the ``do_orm_execute`` listeners after ours, as SQLAlchemy would have:
    (those listeners, the first Result one of them returned, else None). Once they
    ran, the statement must be run by us (``invoke_statement``), not by the ORM."""
    later = _remaining_hooks(orm_state)
    for fn in later:
        orm_state._starting_event_idx += 1
        result = fn(orm_state)
        if result:
            return later, result
    return later, None


def _invoke_on(orm_state: ORMExecuteState, bind: Any) -> Any:
    """Run the statement on ``bind``, the one its key was made for, asking the
    session's ``get_bind`` no second time. The ORM asks ``get_bind`` on every
    execution; a ``get_bind`` override may route each call elsewhere (a replica
    chosen per call), so its next call, the one for this statement, is answered
    with ``bind`` (an instance attribute shadowing the method for one call)."""
    session = orm_state.session
    if bind is None:
        return orm_state.invoke_statement()
    if type(session).get_bind is Session.get_bind:
        return orm_state.invoke_statement(bind_arguments={"bind": bind})

    def chosen(*args: Any, **kw: Any) -> Any:
        session.__dict__.pop("get_bind", None)
        return bind

    try:
        session.get_bind = chosen  # type: ignore[method-assign]
    except AttributeError:  # a session class with __slots__: asked again
        return orm_state.invoke_statement()
    try:
        return orm_state.invoke_statement()
    finally:
        session.__dict__.pop("get_bind", None)


def _cpu(c0: float, extra: float | None = None) -> float | None:
    """This thread's CPU seconds since ``c0`` (plus ``extra``), None if not timed."""
    if c0 < 0:
        return None
    return time.thread_time() - c0 + (extra or 0.0)


def _pass_on(orm_state: ORMExecuteState, bind: Any) -> Any:
    """Not served by the cache: None lets the ORM run it, which asks ``get_bind``
    again; a session that overrides ``get_bind`` gets the statement run here on
    the bind already chosen instead (one routing decision per statement)."""
    session = orm_state.session
    if bind is None or type(session).get_bind is Session.get_bind:
        return None
    return _invoke_on(orm_state, bind)


def _other_hooks(session: Session) -> tuple[str, ...]:
    """The session's ``do_orm_execute`` listeners that are not ours, by name (stable
    across processes): part of the key's scope."""
    try:
        listeners = session.dispatch.do_orm_execute
        if not listeners:
            return ()
        ours = "sqla_querycache"
        return tuple(_hook_name(fn) for fn in listeners
                     if not getattr(fn, "__module__", "").startswith(ours))  # fmt: skip
    except Exception:
        return ("?",)


def _hook_name(fn: Any) -> str:
    """module:qualname:line of a listener (the line tells apart two closures of one
    name defined in different places; one definition's closures are one name)."""
    code = getattr(fn, "__code__", None)
    line = code.co_firstlineno if code is not None else 0
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{getattr(fn, '__module__', '')}:{name}:{line}"


def _remaining_hooks(orm_state: ORMExecuteState) -> list[Any]:
    """``do_orm_execute`` listeners after ours (``ORMExecuteState._remaining_events``,
    SQLAlchemy 2.0 and 2.1; ``tests/test_final_statement.py`` guards it)."""
    try:
        return orm_state._remaining_events()
    except Exception:
        return []


def _identity_class(orm_state: ORMExecuteState) -> str | None:
    """The class an identity load loads (its name, for the per-class counters)."""
    subject = getattr(orm_state.statement, "_propagate_attrs", {}).get("plugin_subject")
    cls = getattr(subject, "class_", None)
    return cls.__name__ if cls is not None else None


def _found_row(
    rk: rows.RowKey, names: tuple[str, ...], versions: list[int]
) -> tuple[tuple[str, ...], list[int]]:
    """The names and versions an entry that found its row keeps: a row found
    depends on it alone; only "no such row" depends on inserts (``t@ins``)."""
    ins = {rows.inserts(t) for t in rk.found}
    keep = [i for i, n in enumerate(names) if n not in ins]
    k = len(versions) - len(names)  # a store's own values first (the epoch)
    return tuple(names[i] for i in keep), versions[:k] + [versions[k + i] for i in keep]


def _pin(siblings: list[Any], obj: Any) -> int:
    """Keep ``obj`` (a prefetched target) alive as long as each of ``siblings``;
    1 if it was pinned (the uncached ORM would have loaded it once), else 0."""
    if obj is None or not siblings:
        return 0
    for state in siblings:
        try:
            _PINNED[state] = obj
        except TypeError:  # not weakly referenceable: the prefetch only costs a lookup
            return 0
    return 1


def _lazy_parent(orm_state: ORMExecuteState) -> Any:
    """The state a lazy load loads for (``ORMExecuteState.lazy_loaded_from``, which
    SQLAlchemy refuses for ``from_statement(text())``), or None."""
    return getattr(_load_options(orm_state), "_lazy_loaded_from", None)


def _pk_load(orm_state: ORMExecuteState) -> Any:
    """The mapper a load of one identity (``session.get``, a many-to-one lazy
    load by primary key) loads, or None."""
    stmt: Any = orm_state.statement
    crit: tuple[Any, ...] = getattr(stmt, "_where_criteria", ())
    if len(crit) != 1:
        return None
    subject = getattr(stmt, "_propagate_attrs", {}).get("plugin_subject")
    mapper = getattr(subject, "mapper", None)
    get_clause = getattr(mapper, "_get_clause", None)
    if get_clause is None:
        return None
    clause = get_clause[0]
    if crit[0] is clause:
        return mapper
    # SQLAlchemy 2.0 annotates a copy of it for each load (_orm_adapt)
    if getattr(crit[0], "_annotations", None) and crit[0].compare(clause):
        return mapper
    return None


def _identity_load(orm_state: ORMExecuteState) -> bool:
    """A load of one identity (``session.get``, a many-to-one lazy load) or a lazy load?"""
    return _lazy_parent(orm_state) is not None or _pk_load(orm_state) is not None


def _rowcount_mode(rowcount: int | None, data: Any) -> int:
    """How the driver reported a SELECT's rowcount: 0 absent, 1 the row count, 2 -1."""
    if rowcount is None:
        return 0
    if rowcount == -1:
        return 2
    return 1 if rowcount == len(data) else 0


def _connection_for(session: Session, bind: Any) -> Connection | None:
    """The connection this session's query will run on, if it already has one.

    A session bound to a Connection runs on it; otherwise the session's
    transaction may already hold one for the bind (``SessionTransaction.
    _connections``, SQLAlchemy 2.0 and 2.1). None: a fresh pooled
    connection, with no transaction of its own yet.
    """
    if isinstance(bind, Connection):
        return bind
    trans = session._transaction
    if trans is None:
        return None
    entry = trans._connections.get(bind.engine) or trans._connections.get(bind)
    return entry[0] if entry is not None else None


def _holds_snapshot(conn: Connection, ct: Any) -> bool:
    """May the connection's open transaction hold a snapshot older than now (I3)?

    A transaction that has run nothing yet takes its snapshot at this query,
    after the versions were read: safe. Otherwise it is safe only under READ
    COMMITTED (or autocommit); when the level is unknown, it is not.
    """
    if ct is None or not ct.statements:
        return False
    try:
        if not ct.text_txn and (not conn.in_transaction() or tracking.is_autocommit(conn)):
            return False  # each statement commits (unless a textual BEGIN opened one)
        if conn.dialect.name == "sqlite":
            # pysqlite opens its transaction at the first write, holding the
            # write lock from then on: nobody commits under us unless a BEGIN
            # sent by hand started it with a read
            explicit: bool = ct.explicit_begin
            return explicit
        level = ct.isolation or conn.get_execution_options().get("isolation_level")
        if level is None:
            level = _dbapi_isolation(conn)
    except Exception:
        return True
    return str(level).upper() not in _READ_COMMITTED


def _dbapi_isolation(conn: Connection) -> str:
    """The isolation level the DBAPI connection really has (asked once per connection)."""
    info = conn.info
    level = info.get("_sqla_querycache_isolation")
    if level is None:
        dbapi_conn = conn.connection.dbapi_connection
        if dbapi_conn is None:
            raise RuntimeError("the connection is closed")
        level = info["_sqla_querycache_isolation"] = str(
            conn.dialect.get_isolation_level(dbapi_conn)
        ).upper()
    return level


def _autoflushes(orm_state: ORMExecuteState) -> bool:
    """Would the ORM autoflush before running it? As SQLAlchemy decides after the
    ``do_orm_execute`` hooks: an ``autoflush`` execution option (a hook's
    ``update_execution_options`` included) wins over the load options."""
    opts = orm_state.execution_options
    if "autoflush" in opts:
        return bool(opts["autoflush"])
    return bool(getattr(_load_options(orm_state), "_autoflush", True))


def _load_options(orm_state: ORMExecuteState) -> Any:
    """``orm_state.load_options``, which SQLAlchemy refuses for from_statement(text())."""
    if orm_state.is_select:
        return orm_state.load_options
    return orm_state.execution_options.get("_sa_orm_load_options")


def _cacheable(orm_state: ORMExecuteState) -> bool:
    if not is_select(orm_state) or orm_state.is_executemany:
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


def is_select(orm_state: ORMExecuteState) -> bool:
    """A SELECT, including ``select(Entity).from_statement(text(...))``.

    SQLAlchemy reports ``is_select`` False for a FromStatement wrapping a
    TextClause; it returns rows like any ORM select all the same.
    """
    if orm_state.is_select:
        return True
    stmt = orm_state.statement
    return isinstance(stmt, FromStatement) and isinstance(stmt.element, (TextClause, Select))


_MUTABLE = (list, dict, set, bytearray)
#: the exact types of values a stored payload may hold that are, or may hold,
#: something a user could change in place (payloads are encoded with exact
#: types only, and a tuple may hold a list)
_NOT_PLAIN = frozenset((*_MUTABLE, tuple))


def _mutable(value: Any) -> bool:
    if isinstance(value, tuple):
        return any(_mutable(v) for v in value)
    return isinstance(value, _MUTABLE)


def _has_mutable(payload: Any) -> bool:
    """Does a payload hold values a user could change in place (JSON lists and
    dicts, also inside tuples)? The common payload holds none: checked by the
    types of its values, without a Python step per value."""
    layouts, entities, kinds, scalar, rows = payload
    widths = [len(lay[1]) for lay in layouts]
    isdisjoint = _NOT_PLAIN.isdisjoint
    for record in entities:
        values = record[3 : 3 + widths[record[0]]]
        if not isdisjoint(map(type, values)) and any(map(_mutable, values)):
            return True
    if not scalar and not all(kinds):
        for row in rows:  # entity references are ints: a row of plain types is done
            if not isdisjoint(map(type, row)) and any(
                not is_entity and _mutable(v) for is_entity, v in zip(kinds, row)
            ):
                return True
    return False


def _payload_values(payload: Any) -> int:
    """How many values (and lists) a decoded payload holds, roughly."""
    _layouts, entities, kinds, scalar, rows = payload
    n = sum(len(record) + 2 for record in entities) + len(rows)
    if not scalar and rows:
        n += len(rows) * len(kinds)
    return n


class Entry:
    """A cache entry as this process holds it between hits.

    The decoded payload is kept when it holds only immutable values (then it
    can be shared by every hit); otherwise the bytes are kept and decoded per
    hit, so that no session can change what another one gets.
    """

    __slots__ = ("_payload", "_raw", "created", "flags", "names", "size", "versions")

    def __init__(self, created: float, names: Any, versions: list[int], flags: list[Any],
                 raw: Any, payload: Any = None, size: int = 0):  # fmt: skip
        #: the size of the bytes it was read from (or stored as)
        self.size = size
        self.created = created
        self.names = tuple(names)
        self.versions = versions
        self.flags = flags
        self._raw = raw
        self._payload = payload

    @classmethod
    def decode(cls, raw: bytes, key: str, size: int = 0) -> Entry:
        fmt, stored_key, created, stored_names, versions, flags, payload, *_ = codec.unpackb(raw)
        if (fmt != codec.FORMAT_VERSION or stored_key != key or type(stored_names) is not list
                or type(versions) is not list or len(versions) < len(stored_names)):  # fmt: skip
            raise codec.CorruptEntry("entry of another format or statement")
        size = size or len(raw)
        if _has_mutable(payload):
            return cls(created, stored_names, versions, flags, raw, None, size)
        return cls(created, stored_names, versions, flags, None, payload, size)

    def cost(self) -> int:
        """Estimated memory it holds, for the memo's byte bound.

        Kept as bytes: their length. Kept decoded: the encoded size plus
        ``_PER_VALUE`` for every value (a Python object and its reference
        cost ~50-110 bytes more than its msgpack encoding).
        """
        if self._raw is not None:
            return _ENTRY_OVERHEAD + len(self._raw)
        return _ENTRY_OVERHEAD + self.size + _PER_VALUE * _payload_values(self._payload)

    def covered_by(self, names: tuple[str, ...]) -> bool:
        return set(self.names).issubset(names)

    def matches(self, names: tuple[str, ...], versions: list[int]) -> bool:
        """Were the entry's versions, for every name it depends on, the current ones?

        A store may put values of its own first (the Redis store's epoch):
        they must be equal too.
        """
        if self.names == names:
            return self.versions == versions
        k = len(self.versions) - len(self.names)
        if k != len(versions) - len(names) or self.versions[:k] != versions[:k]:
            return False
        current = dict(zip(names, versions[k:]))
        return all(current.get(name) == v for name, v in zip(self.names, self.versions[k:]))

    def rowcount(self, n: int) -> int | None:
        mode = self.flags[3] if len(self.flags) > 3 else 0
        return None if not mode else (n if mode == 1 else -1)

    def payload(self) -> Any:
        payload = self._payload
        if payload is None:
            payload = codec.unpackb(self._raw)[6]
            if not _has_mutable(payload):
                self._payload, self._raw = payload, None
        return payload
