"""``QueryCache.explain``: would this statement be cached, under which key, and why not.

The statement goes through ``session.execute`` with an execution option the
read path recognises: every ``do_orm_execute`` hook runs as it would, then
the read path makes its decision (:meth:`.readpath.ReadPath.decide`, the very
code a real execution calls: region, plan, key, connection rules) and raises
it instead of looking anything up. The statement is never sent to the
database and no counter moves. Like the query would, it autoflushes the
session.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.dml import UpdateBase

from . import events
from .exc import ConfigurationError
from .readpath import EXPLAIN_OPTION, Decision, Explained
from .stats import display_tables, fingerprint, short_sql

if TYPE_CHECKING:
    from .cache import QueryCache

#: ``outcome`` values
CACHED, BYPASS, UNCACHEABLE, NOT_FOR_CACHE = "cached", "bypass", "uncacheable", "not for the cache"

NO_REGION = "no region: neither the statement (FromCache / cache_region) nor the session asked"
NOT_SELECT = (
    "not an ORM SELECT (a write, or text() outside select().from_statement()): never cached"
)
NOT_INSTALLED = "this QueryCache is not installed (install() a Session class or sessionmaker)"


@dataclass(frozen=True)
class Explanation:
    """What :meth:`QueryCache.explain` found."""

    #: would it be looked up in the cache (a hit, or a miss that stores)?
    cached: bool
    #: ``cached``, ``bypass``, ``uncacheable`` (the DEBUG line's outcomes), or
    #: ``not for the cache`` (no region asked; not a SELECT; not installed)
    outcome: str
    #: why not: the text of the DEBUG line (``reason=...``); None when cached
    reason: str | None = None
    #: the key of ``bypass_reasons`` in the stats (``written``, ``snapshot``,
    #: ``state_changed``, ``store_failed``, ``disabled``), for a bypass
    bypass_reason: str | None = None
    region: str | None = None
    #: the entry's key (``sqla-querycache show KEY``)
    key: str | None = None
    #: the key as the DEBUG line shows it (namespace:q:region:<12 hex digits>)
    key_prefix: str | None = None
    #: tables it depends on (internal names hidden)
    tables: list[str] = field(default_factory=list)
    #: every version name a lookup reads (row-level names, ``@all``, ``@region:x``)
    depends_on: list[str] = field(default_factory=list)
    #: the statement's fingerprint in the per-statement stats
    fingerprint: str | None = None
    sql: str | None = None
    #: the statement itself asked (FromCache, cache_region), not only the session
    tagged: bool = False
    #: seconds an entry lives (FromCache(expiration_time=...) or the region's)
    expiration_time: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def from_decision(d: Decision | None) -> Explanation:
    """The explanation of a :class:`~.readpath.Decision` (None: no region)."""
    if d is None:
        return Explanation(False, NOT_FOR_CACHE, NO_REGION)
    plan = d.plan
    region = d.region
    ttl = d.ttl if d.ttl is not None else (region.expiration_time if region is not None else None)
    names = list(d.names) if d.names is not None else (list(plan.tables) if plan else [])
    common: dict[str, Any] = {
        "region": d.region_name, "key": d.key,
        "key_prefix": d.key[: d.key.rfind(":") + 13] if d.key else None,
        "tables": display_tables(names), "depends_on": names,
        "fingerprint": fingerprint(plan) if plan is not None else None,
        "sql": short_sql(plan) if plan is not None else None,
        "tagged": d.tagged, "expiration_time": ttl,
    }  # fmt: skip
    if d.skip is None:
        return Explanation(True, CACHED, **common)
    counter, reason, why, _ = d.skip
    if counter == "uncacheable":
        return Explanation(False, UNCACHEABLE, why, **common)
    return Explanation(False, BYPASS, why, reason or None, **common)


def _session_for(cache: QueryCache, session_or_bind: Any) -> tuple[Session, bool]:
    """(a session the cache's listeners see, whether we made it)."""
    if session_or_bind is not None and hasattr(session_or_bind, "sync_session"):
        session_or_bind = session_or_bind.sync_session  # an AsyncSession
    if isinstance(session_or_bind, Session):
        return session_or_bind, False
    inst = cache._installed
    assert inst is not None
    target = inst._target  # a sessionmaker, or a Session class (the sync side of an async one)
    bind = session_or_bind
    if bind is not None:
        bind = getattr(bind, "sync_engine", None) or getattr(bind, "sync_connection", None) or bind
    if isinstance(target, sessionmaker):
        return (target(bind=bind) if bind is not None else target()), True
    if bind is None:  # an async_sessionmaker keeps its AsyncEngine
        kw = getattr(inst.source, "kw", None) or {}
        bind = kw.get("bind")
        bind = getattr(bind, "sync_engine", bind)
    if bind is None:
        raise ConfigurationError(
            "explain() needs a session or a bind: the cache is installed on "
            f"{target!r}, which has no bind of its own"
        )
    return target(bind=bind), True


def explain(cache: QueryCache, statement: Any, session_or_bind: Any = None) -> Explanation:
    """See :meth:`QueryCache.explain`."""
    if isinstance(statement, UpdateBase):
        return Explanation(False, NOT_FOR_CACHE, NOT_SELECT)
    inst = cache._installed
    if inst is None:
        return Explanation(False, NOT_FOR_CACHE, NOT_INSTALLED)
    session, made = _session_for(cache, session_or_bind)
    try:
        if not events.covers(inst, session):
            cls = type(session)
            return Explanation(False, NOT_FOR_CACHE,
                               f"the session's class {cls.__module__}.{cls.__qualname__} is not "
                               f"the one this QueryCache is installed on")  # fmt: skip
        try:
            session.execute(statement, execution_options={EXPLAIN_OPTION: True})
        except Explained as done:
            if done.not_select:
                return Explanation(False, NOT_FOR_CACHE, NOT_SELECT)
            return from_decision(done.decision)
        # a do_orm_execute hook registered after the cache's returned a result itself
        hooked = "a do_orm_execute hook registered after the cache answers it"
        return Explanation(False, NOT_FOR_CACHE, hooked)
    finally:
        if made:
            session.close()
