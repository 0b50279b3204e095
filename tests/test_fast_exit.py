"""The read path's early exit (``ReadPath.passes``) changes nothing but speed.

Every ORM statement of an installed session reaches our ``do_orm_execute``
hook; most are not for the cache. ``passes`` answers "certainly nothing to
do" before the full path runs. Generated cases (how the statement is tagged,
or not; an identity region or not; hooks after ours that tag it, change it or
do nothing; ``session.get``, a query, an eager load) run twice on fresh caches,
once as shipped and once with the early exit switched off: the rows, the SQL
sent and every counter must be the same.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event, select
from sqlalchemy.orm import Session, selectinload

from sqla_querycache import FromCache, NoCache, QueryCache
from sqla_querycache.readpath import ReadPath

from . import models
from .conftest import StatementCounter, memory_region

TAGS = ("none", "from_cache", "no_cache", "stmt_option", "call_option", "session_info")
HOOKS = ("none", "tags", "noop", "criteria")
READS = ("get", "query", "eager")


class _S(Session):
    """A session class of this module's own (the hooks under test listen on it)."""


def _tag_hook(orm_state: Any) -> None:
    if orm_state.is_select:
        orm_state.update_execution_options(cache_region="default")


def _noop_hook(orm_state: Any) -> None:
    return None


def _criteria_hook(orm_state: Any) -> None:
    if orm_state.is_select and not orm_state.is_column_load:
        orm_state.statement = orm_state.statement.execution_options(_fast_exit_seen=True)


def _run(db: Any, tag: str, hook: str, read: str, identity: bool, early: bool) -> Any:
    cache = QueryCache(regions={"default": memory_region()},
                       identity_region="default" if identity else None)  # fmt: skip
    cache.install(_S)
    fn = {"tags": _tag_hook, "noop": _noop_hook, "criteria": _criteria_hook}.get(hook)
    if fn is not None:
        event.listen(_S, "do_orm_execute", fn)  # after ours
    counter = StatementCounter(db)
    original = ReadPath.passes
    if not early:
        ReadPath.passes = lambda self, orm_state: False  # type: ignore[method-assign]
    try:
        out = []
        for _ in range(2):
            with _S(db) as s:
                if tag == "session_info":
                    s.info["cache_region"] = "default"
                opts: list[Any] = {"from_cache": [FromCache()], "no_cache": [NoCache()]}.get(tag, [])
                call = {"cache_region": "default"} if tag == "call_option" else {}
                if read == "get":
                    p = s.get(models.Product, 3, options=opts, execution_options=call)
                    out.append(None if p is None else (p.id, p.name, str(p.price)))
                    continue
                stmt = select(models.Category).order_by(models.Category.id)
                if read == "eager":
                    stmt = stmt.options(selectinload(models.Category.products))
                if opts:
                    stmt = stmt.options(*opts)
                if tag == "stmt_option":
                    stmt = stmt.execution_options(cache_region="default")
                rows = s.scalars(stmt, execution_options=call).all()
                out.append([(c.id, c.name, sorted(p.id for p in c.products)
                             if read == "eager" else None) for c in rows])  # fmt: skip
        stats = {k: v for k, v in cache.stats()["default"].items()
                 if k not in ("hit_ratio", "db_seconds", "saved_seconds")}  # timings differ
        return out, counter.count, stats
    finally:
        ReadPath.passes = original  # type: ignore[method-assign]
        counter.close()
        if fn is not None:
            event.remove(_S, "do_orm_execute", fn)
        cache.uninstall()
        cache.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tag=st.sampled_from(TAGS), hook=st.sampled_from(HOOKS), read=st.sampled_from(READS),
       identity=st.booleans())  # fmt: skip
def test_the_early_exit_changes_nothing_but_speed(
    sqlite_engine: Any, tag: str, hook: str, read: str, identity: bool
) -> None:
    db = sqlite_engine
    shipped = _run(db, tag, hook, read, identity, early=True)
    full = _run(db, tag, hook, read, identity, early=False)
    assert shipped == full


def test_an_untagged_statement_exits_early_and_a_later_hook_keeps_it_on_the_full_path(
    sqlite_engine: Any,
) -> None:
    db = sqlite_engine
    seen: list[bool] = []
    original = ReadPath.passes

    def spy(self: Any, orm_state: Any) -> bool:
        seen.append(original(self, orm_state))
        return seen[-1]

    cache = QueryCache(regions={"default": memory_region()}).install(_S)
    ReadPath.passes = spy  # type: ignore[method-assign]
    try:
        with _S(db) as s:
            s.scalars(select(models.Category)).all()
            s.scalars(select(models.Category).options(FromCache())).all()
        event.listen(_S, "do_orm_execute", _noop_hook)
        try:
            with _S(db) as s:
                s.scalars(select(models.Category)).all()
        finally:
            event.remove(_S, "do_orm_execute", _noop_hook)
    finally:
        ReadPath.passes = original  # type: ignore[method-assign]
        cache.uninstall()
    assert seen == [True, False, False]
