"""``QueryCache.explain`` agrees with what the read path does at run time.

Generated statements (entity, filter, tag, options) on sessions in generated
states (fresh, after a write, after a statement ran, cache disabled) are
explained, then executed with the DEBUG line on: explain's outcome, reason,
region and key must be the ones the run reports, and a bypass must move the
bypass counter explain names. Explain itself sends no statement and moves no
counter.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as note
from hypothesis import strategies as st
from sqlalchemy import event, func, literal, select, text, update
from sqlalchemy.orm import sessionmaker

from sqla_querycache import REGION_OPTION, FromCache, NoCache, QueryCache, UnknownRegionError
from sqla_querycache.explain import NOT_FOR_CACHE, Explanation

from . import models
from .conftest import memory_region

_LINE = re.compile(r"^(\w+) region=(\S+) key=(\S+) tables=(\S+) reason=(.*) (\d+)us$")
ENTITIES = [models.Product, models.Customer, models.Category, models.Tag, models.Order]


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if _LINE.match(msg):
            self.lines.append(msg)


def statement(entity: Any, filt: str, tag: str, modifier: str) -> Any:
    if modifier == "text":
        stmt: Any = select(entity).from_statement(text(f"SELECT * FROM {entity.__tablename__}"))
    elif modifier == "literal":
        stmt = select(literal(1))
    elif modifier == "count":
        stmt = select(func.count()).select_from(entity)
    else:
        stmt = select(entity)
        if filt == "pk":
            stmt = stmt.where(entity.id == 3)
        elif filt == "range":
            stmt = stmt.where(entity.id <= 4).order_by(entity.id)
        if modifier == "for_update":
            stmt = stmt.with_for_update()
        elif modifier == "populate":
            stmt = stmt.execution_options(populate_existing=True)
    if tag == "default":
        stmt = stmt.options(FromCache())
    elif tag == "hot":
        stmt = stmt.options(FromCache("hot", expiration_time=30))
    elif tag == "nocache":
        stmt = stmt.options(NoCache())
    elif tag == "option":
        stmt = stmt.execution_options(**{REGION_OPTION: "hot"})
    elif tag == "unknown":
        stmt = stmt.options(FromCache("nowhere"))
    return stmt


cases = st.tuples(
    st.sampled_from(ENTITIES),
    st.sampled_from(["none", "pk", "range"]),
    st.sampled_from(["default", "hot", "nocache", "option", "none", "unknown"]),
    st.sampled_from(["plain", "plain", "plain", "text", "literal", "count", "for_update",
                     "populate"]),  # fmt: skip
    st.sampled_from(["fresh", "wrote", "ran", "disabled", "session_region"]),
)


@pytest.fixture()
def env(engine: Any) -> Any:
    maker = sessionmaker(engine)
    cache = QueryCache(regions={"default": memory_region(), "hot": memory_region()},
                       namespace="qcexplain").install(maker)  # fmt: skip
    logger = logging.getLogger("sqla_querycache")
    handler = Lines()
    level, disabled = logger.level, logger.disabled
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.disabled = False  # an in-process alembic run's fileConfig may have disabled it
    yield engine, maker, cache, handler
    logger.removeHandler(handler)
    logger.setLevel(level)
    logger.disabled = disabled
    cache.close()


def prepare(s: Any, cache: QueryCache, state: str) -> None:
    if state == "wrote":
        s.execute(update(models.Product).where(models.Product.id == 1).values(name="w"))
    elif state == "ran":
        s.execute(text("SELECT 1")).all()  # a transaction that ran a statement
    elif state == "disabled":
        cache.enabled = False
    elif state == "session_region":
        s.info[REGION_OPTION] = "default"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=cases)
def test_explain_agrees_with_the_run(env: Any, case: Any) -> None:
    engine, maker, cache, handler = env
    entity, filt, tag, modifier, state = case
    stmt = statement(entity, filt, tag, modifier)
    try:
        with maker() as s:
            prepare(s, cache, state)
            sent: list[str] = []

            def count(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
                sent.append(sql)

            before = cache.stats()
            event.listen(engine, "before_cursor_execute", count)
            try:
                try:
                    found = cache.explain(stmt, s)
                except UnknownRegionError:  # then the run raises it too
                    found = None
            finally:
                event.remove(engine, "before_cursor_execute", count)
            if found is None:
                with pytest.raises(UnknownRegionError):
                    s.execute(stmt)
                return
            assert isinstance(found, Explanation)
            # explain ran nothing of the statement and counted nothing
            assert not [q for q in sent if entity.__tablename__ in q.lower()
                        and "querycache" not in q], sent  # fmt: skip
            assert cache.stats() == before
            handler.lines.clear()
            s.execute(stmt).all()
            after = cache.stats()
            lines = list(handler.lines)
            s.rollback()
    finally:
        cache.enabled = True
    note(f"{found.outcome}: {found.bypass_reason or found.reason}")
    if not lines:
        assert found.outcome == NOT_FOR_CACHE and not found.cached, (found, case)
        return
    outcome, region, key, _tables, reason, _us = _LINE.match(lines[0]).groups()  # type: ignore[union-attr]
    assert found.region == region, (found, lines)
    if found.cached:
        assert outcome in ("hit", "miss"), (found, lines)
        assert found.key_prefix == key and found.key is not None and found.key.startswith(key)
        return
    assert (found.outcome, found.reason) == (outcome, reason), (found, lines, case)
    if found.bypass_reason and found.bypass_reason != "disabled":
        got = after[region]["bypass_reasons"].get(found.bypass_reason, 0)
        assert got == before[region]["bypass_reasons"].get(found.bypass_reason, 0) + 1


def test_explain_names_region_key_tables_and_rows(sqlite_engine: Any) -> None:
    maker = sessionmaker(sqlite_engine)
    cache = QueryCache(regions={"default": memory_region()}).install(maker)
    try:
        got = cache.explain(select(models.Product).where(models.Product.id == 3)
                            .options(FromCache()))  # fmt: skip
        assert got.cached and got.outcome == "cached" and got.reason is None
        assert got.region == "default" and got.tables == ["product"]
        assert "product#3" in got.depends_on and "@all" in got.depends_on
        assert got.key is not None and got.key.startswith("qc:q:default:")
        # the key explain names is the one the run stores under
        with maker() as s:
            s.scalars(select(models.Product).where(models.Product.id == 3)
                      .options(FromCache())).all()  # fmt: skip
        assert cache.regions["default"].get(got.key) is not None
        assert cache.report()["statements"][0]["fingerprint"] == got.fingerprint
        # a bind instead of a session; a write; not installed
        assert cache.explain(select(models.Tag).options(FromCache()), sqlite_engine).cached
        wrote = cache.explain(update(models.Tag).values(label="x"))
        assert not wrote.cached and "not an ORM SELECT" in (wrote.reason or "")
        cache.uninstall()
        assert "not installed" in (cache.explain(select(models.Tag)).reason or "")
    finally:
        cache.close()
