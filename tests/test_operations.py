"""Running it in production: DEBUG lines, rate-limited warnings and recovery lines,
mistakes caught early (``invalidate`` names, ``check()``, sessions not installed),
and the kill switch (environment variable, app-wide through a shared Redis, CLI).

Real services only: SQLite files, Redis (``QC_REDIS_URL`` or the embedded one),
a dead port for a region that never answers, and the fault proxy of
``tests/faultproxy.py`` for one that stops and comes back.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any
from urllib.parse import urlparse

import pytest
from dogpile.cache import make_region
from sqlalchemy import event, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from sqla_querycache import (
    ConfigurationError,
    FromCache,
    QueryCache,
    UnknownRegionError,
    UnknownTableError,
    cli,
    events,
    tracking,
)
from sqla_querycache.cache import DISABLED_ENV

from .faultproxy import FaultProxy
from .models import Base, Product

LOGGER = "sqla_querycache"
DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens there: connection refused at once


def memory() -> Any:
    return make_region().configure("dogpile.cache.memory")


def redis_region(url: str) -> Any:
    return make_region().configure("dogpile.cache.redis", arguments={"url": url})


@pytest.fixture(autouse=True)
def _loggers_enabled() -> None:
    """An alembic env.py run earlier in this process (logging.config.fileConfig)
    disables every logger that existed then: ours must log here."""
    for name in (LOGGER, f"{LOGGER}.catalog"):
        logging.getLogger(name).disabled = False


@pytest.fixture()
def caches() -> Any:
    made: list[QueryCache] = []

    def make(regions: Any = None, **kw: Any) -> QueryCache:
        c = QueryCache(regions or {"default": memory()}, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def products(session: Session, region: str = "default") -> list[str]:
    stmt = select(Product.name).where(Product.id < 4).order_by(Product.id)
    return list(session.execute(stmt.options(FromCache(region))).scalars())


# ------------------------------------------------------------------ 3. logging


DEBUG_LINE = re.compile(
    r"^(hit|miss|bypass|uncacheable) region=(\S+) key=(\S+) tables=(\S+) reason=(.*) (\d+)us$"
)


def debug_lines(caplog: Any) -> list[tuple[str, ...]]:
    out = []
    for rec in caplog.records:
        if rec.name == LOGGER and rec.levelno == logging.DEBUG:
            m = DEBUG_LINE.match(rec.getMessage())
            if m:
                out.append(m.groups())
    return out


def test_debug_line_per_statement(sqlite_engine: Any, caches: Any, caplog: Any) -> None:
    cache = caches().install(Session)
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    with Session(sqlite_engine) as s:
        products(s)  # miss, stored
        products(s)  # hit
        s.execute(update(Product).where(Product.id == 1).values(name="changed"))
        products(s)  # this transaction wrote product: bypass
        s.rollback()
        s.execute(select(Product).with_for_update().options(FromCache())).all()
        with cache.disabled():
            products(s)
    lines = debug_lines(caplog)
    outcomes = [(o, reason) for o, _r, _k, _t, reason, _us in lines]
    assert outcomes == [
        ("miss", "stored"),
        ("hit", "valid entry"),
        ("bypass", "this transaction wrote its tables"),
        ("uncacheable", "options (FOR UPDATE, yield_per, ...)"),
        ("bypass", "disabled"),
    ]
    miss, hit = lines[0], lines[1]
    assert miss[1] == hit[1] == "default"
    assert miss[2] == hit[2] and re.fullmatch(r"qc:q:default:[0-9a-f]{12}", miss[2])
    assert "product" in miss[3].split(",")
    assert int(hit[5]) >= 0 and int(miss[5]) > 0
    # nothing is traced any more: the counters are the plain method again
    assert "incr" not in vars(cache._stats)


def test_no_debug_line_when_debug_is_off(sqlite_engine: Any, caches: Any, caplog: Any) -> None:
    caches().install(Session)
    caplog.set_level(logging.INFO, logger=LOGGER)
    with Session(sqlite_engine) as s:
        products(s)
        products(s)
    assert debug_lines(caplog) == []


def test_debug_line_of_a_miss_that_stores_nothing(sqlite_engine: Any, caches: Any,
                                                  caplog: Any) -> None:  # fmt: skip
    cache = caches(max_entry_bytes=10).install(Session)
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    with Session(sqlite_engine) as s:
        products(s)
    ((outcome, _r, _k, _t, reason, _us),) = debug_lines(caplog)
    assert outcome == "miss" and reason.startswith("too large:"), reason
    assert cache.stats()["default"]["too_large"] == 1


def warnings_of(caplog: Any, text_: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and text_ in r.getMessage()]  # fmt: skip


def test_warnings_are_rate_limited_not_once_forever(sqlite_engine: Any, caches: Any,
                                                   caplog: Any) -> None:  # fmt: skip
    cache = caches({"default": redis_region(DEAD_REDIS)}).install(Session)
    cache.warn_interval = 0.3
    caplog.set_level(logging.WARNING, logger=LOGGER)
    with Session(sqlite_engine) as s:
        for _ in range(5):
            assert products(s) == ["Product 01", "Product 02", "Product 03"]
        assert len(warnings_of(caplog, "cache read failed")) == 1
        time.sleep(0.35)  # a second outage (or the same one, later) is logged again
        products(s)
    got = warnings_of(caplog, "cache read failed")
    assert len(got) == 2
    assert "and 4 more like it in the last 0.3s" in got[1]


def _proxy_url(redis_url: str, proxy: FaultProxy) -> str:
    u = urlparse(redis_url)
    return f"redis://127.0.0.1:{proxy.port}{u.path or '/0'}"


@pytest.fixture()
def proxy(redis_url: str, redis_client: Any) -> Any:
    u = urlparse(redis_url)
    p = FaultProxy(u.hostname or "127.0.0.1", u.port or 6379).start()
    yield p
    p.close()


def infos(caplog: Any) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == LOGGER and r.levelno == logging.INFO]  # fmt: skip


def test_info_when_a_region_answers_again(sqlite_engine: Any, caches: Any, caplog: Any,
                                          redis_url: str, proxy: FaultProxy) -> None:  # fmt: skip
    cache = caches({"default": redis_region(_proxy_url(redis_url, proxy))}).install(Session)
    caplog.set_level(logging.INFO, logger=LOGGER)
    with Session(sqlite_engine) as s:
        products(s)
        proxy.reset()
        proxy.refuse()
        cache._reader.memo.clear()  # read the region, not this process's memo
        products(s)
        assert warnings_of(caplog, "cache read failed")
        assert not [m for m in infos(caplog) if "answers again" in m]
        proxy.resume()
        s.execute(text("select 1"))
        cache._reader.memo.clear()  # read the region, not this process's memo
        cache.invalidate(tables=["product"])  # the next read misses and stores
        products(s)
    assert [m for m in infos(caplog) if m.startswith("region 'default' answers again")]


def test_info_when_the_redis_version_store_answers_again(
    sqlite_engine: Any, caches: Any, caplog: Any, redis_url: str, proxy: FaultProxy
) -> None:
    cache = caches(versions=_proxy_url(redis_url, proxy)).install(Session)
    caplog.set_level(logging.INFO, logger=LOGGER)
    with Session(sqlite_engine) as s:
        products(s)
        proxy.reset()
        proxy.refuse()
        products(s)
        proxy.resume()
        time.sleep(1.1)  # the circuit's cooldown
        for _ in range(20):
            products(s)
            if [m for m in infos(caplog) if "version store" in m]:
                break
            time.sleep(0.1)
    (line,) = [m for m in infos(caplog) if "version store" in m]
    assert re.match(r"the Redis version store 127\.0\.0\.1:\d+/\d+ answers again "
                    r"\(failing for \d+\.\ds\)", line), line  # fmt: skip
    assert cache.stats()["default"]["hits"] >= 1


# --------------------------------------------------------- 5. mistakes caught


def test_tables_as_a_str_is_a_type_error(caches: Any) -> None:
    cache = caches()
    with pytest.raises(TypeError, match=r"tables=\['product'\]"):
        cache.invalidate(tables="product")  # type: ignore[arg-type]


def test_unknown_table_names_are_refused_with_the_known_ones(caches: Any) -> None:
    cache = caches()
    cache.check(Base.metadata)  # remembered: its tables are the known ones
    with pytest.raises(UnknownTableError) as info:
        cache.invalidate(tables=["prodcut", "category"])
    msg = str(info.value)
    assert "'prodcut'" in msg and "'category'" not in msg.split(";")[0]
    assert "product" in msg.split("known:")[1] and "strict=False" in msg
    assert isinstance(info.value, ConfigurationError)
    with pytest.raises(UnknownTableError):
        cache.invalidate("prodcut")
    # spelled right (with a schema, too), or a table only the database has
    assert "product" in cache.invalidate(tables=["product", "main.category"])
    assert "audit_log" in cache.invalidate(tables=["audit_log"], strict=False)
    # the library's own names (row-level, "@any": the migration hook sends them) pass
    assert "product@rows" in cache.invalidate(tables=["product@rows", "@any"])


def test_unknown_region_fails_at_first_use_with_the_configured_names(
    sqlite_engine: Any, caches: Any
) -> None:
    caches({"default": memory(), "hot": memory()}).install(Session)
    with Session(sqlite_engine) as s, pytest.raises(UnknownRegionError) as info:
        products(s, region="hto")
    assert str(info.value) == "unknown cache region 'hto'; configured: ['default', 'hot']"


def test_check_passes_on_a_good_configuration(caches: Any, redis_url: str,
                                              redis_client: Any) -> None:  # fmt: skip
    cache = caches({"default": redis_region(redis_url), "local": memory()}, versions=redis_url)
    cache.check(Base.metadata)
    cache.install(sessionmaker(), strict=True, metadata=Base)
    other = caches()
    other.install(sessionmaker(), metadata=Base)  # not strict: only remembered
    assert Base.metadata in set(tracking._metadata)


def test_check_lists_every_problem(caches: Any) -> None:
    cache = caches({"default": memory(), "far": redis_region(DEAD_REDIS)},
                   versions=DEAD_REDIS, require_versions=False)  # fmt: skip
    with pytest.raises(ConfigurationError) as info:
        cache.check(object())
    msg = str(info.value)
    assert "region 'far'" in msg and "does not answer" in msg
    assert "the version store <RedisVersions 127.0.0.1:1/0" in msg
    assert "metadata: not a MetaData" in msg
    assert "region 'default'" not in msg
    # install(strict=True) checks first and installs nothing
    with pytest.raises(ConfigurationError, match="region 'far'"):
        cache.install(Session, strict=True)
    assert cache._installed is None


def test_check_of_the_sql_store_reads_its_table(sqlite_engine: Any, caches: Any) -> None:
    cache = caches(versions="sql")
    with pytest.raises(ConfigurationError, match="querycache_versions"):
        cache.check(engine=sqlite_engine)  # the table was never created (no migration)
    cache.versions.table.create(sqlite_engine)  # type: ignore[attr-defined]
    cache.check(engine=sqlite_engine)


def test_warning_once_for_a_tagged_statement_on_a_session_not_installed(
    sqlite_engine: Any, caches: Any, caplog: Any
) -> None:
    Installed = sessionmaker(sqlite_engine)
    cache = caches().install(Installed)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    with Installed() as s:
        products(s)
        products(s)
    assert cache.stats()["default"]["hits"] == 1
    assert not warnings_of(caplog, "no QueryCache is installed")
    with Session(sqlite_engine) as s:
        products(s)
        products(s)
        s.execute(select(Product.id)).all()  # not tagged: nothing to say
    (msg,) = warnings_of(caplog, "no QueryCache is installed")
    assert "sqlalchemy.orm.session.Session" in msg
    assert cache.stats()["default"]["hits"] == 1
    # the check listens only while a narrower target is installed
    assert event.contains(Session, "do_orm_execute", events._check_installed)
    cache.uninstall()
    assert not event.contains(Session, "do_orm_execute", events._check_installed)
    cache.install(Session)  # every session is installed: no check needed
    assert not event.contains(Session, "do_orm_execute", events._check_installed)


# ------------------------------------------------------------- 6. kill switch


def test_environment_variable_starts_disabled(sqlite_engine: Any, caches: Any,
                                              monkeypatch: Any) -> None:  # fmt: skip
    monkeypatch.setenv(DISABLED_ENV, "1")
    cache = caches().install(Session)
    assert cache.enabled is False
    with Session(sqlite_engine) as s:
        products(s)
        products(s)
    assert cache.stats()["default"]["hits"] == 0 == cache.stats()["default"]["stores"]
    cache.enabled = True
    with Session(sqlite_engine) as s:
        products(s)
        products(s)
    assert cache.stats()["default"]["hits"] == 1
    monkeypatch.setenv(DISABLED_ENV, "0")
    assert caches().enabled is True
    monkeypatch.setenv(DISABLED_ENV, "maybe")
    with pytest.raises(ConfigurationError, match=DISABLED_ENV):
        caches()


def _wait_for(predicate: Any, timeout: float = 3.0) -> float:
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < timeout, "not within the timeout"
        time.sleep(0.02)
    return time.monotonic() - t0


def test_app_wide_switch_through_shared_redis(tmp_path: Any, caches: Any, redis_url: str,
                                              redis_client: Any, caplog: Any) -> None:  # fmt: skip
    from sqlalchemy import create_engine

    from . import models

    engine = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    models.Base.metadata.create_all(engine)
    with Session(engine) as s:
        models.populate(s)
    # two "processes": two caches, their own memory regions, one Redis version store
    SessionA, SessionB = sessionmaker(engine), sessionmaker(engine)
    a = caches(versions=redis_url).install(SessionA)
    b = caches(versions=redis_url).install(SessionB)
    caplog.set_level(logging.INFO, logger=LOGGER)
    with SessionA() as s:
        assert products(s) == ["Product 01", "Product 02", "Product 03"]
    with SessionB() as s:
        products(s)
        products(s)
    assert b.stats()["default"]["hits"] == 1

    a.disable_app_wide()
    assert a.disabled_app_wide and a.enabled  # app-wide, not the process switch
    took = _wait_for(lambda: b.disabled_app_wide)
    assert took < 1.5  # polled once a second
    assert any("caching disabled app-wide" in m for m in
               [r.getMessage() for r in caplog.records])  # fmt: skip
    with SessionB() as s:
        products(s)
        # writes still invalidate while disabled
        s.execute(update(Product).where(Product.id == 1).values(name="renamed"))
        s.commit()
    assert b.stats()["default"]["hits"] == 1  # bypassed, not served
    assert b.stats()["default"]["stores"] == 1

    a.enable_app_wide()
    _wait_for(lambda: not b.disabled_app_wide)
    with SessionA() as s:  # A's entry is stale: the write bumped the version
        assert products(s) == ["renamed", "Product 02", "Product 03"]
    with SessionB() as s:
        assert products(s)[0] == "renamed"
        assert products(s)[0] == "renamed"
    assert b.stats()["default"]["hits"] == 2


def test_cli_disable_and_enable(tmp_path: Any, monkeypatch: Any, caches: Any, redis_url: str,
                                redis_client: Any, capsys: Any) -> None:  # fmt: skip
    (tmp_path / "qc_switch_app.py").write_text(
        "from dogpile.cache import make_region\n"
        "from sqla_querycache import QueryCache\n"
        f"cache = QueryCache({{'default': make_region().configure('dogpile.cache.memory')}},"
        f" versions={redis_url!r})\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    app = caches(versions=redis_url)  # the running app's process
    try:
        assert cli.main(["disable", "--cache", "qc_switch_app:cache", "--json"]) == 0
        assert '"caching": "disabled app-wide"' in capsys.readouterr().out
        _wait_for(lambda: app.disabled_app_wide)
        assert app._active is False
        assert cli.main(["enable", "--cache", "qc_switch_app:cache"]) == 0
        _wait_for(lambda: not app.disabled_app_wide)
        assert app._active is True
    finally:
        mod = sys.modules.pop("qc_switch_app", None)
        if mod is not None:
            mod.cache.close()


def test_app_wide_switch_with_local_and_sql_stores(caches: Any) -> None:
    local = caches()
    local.disable_app_wide()  # one process: this one
    assert local._active is False and local.enabled
    local.enabled = False
    local.enable_app_wide()
    assert local._active is False  # the process switch still says off
    local.enabled = True
    assert local._active is True
    # the sql store keeps the switch in its database: it must know one
    with pytest.raises(ConfigurationError, match="knows no database yet"):
        caches(versions="sql").disable_app_wide()


def test_names_known_come_from_metadata_used_by_queries(sqlite_engine: Any, caches: Any) -> None:
    cache = caches().install(Session)
    with Session(sqlite_engine) as s:
        products(s)
    assert Base.metadata in set(tracking._metadata)
    with pytest.raises(UnknownTableError):
        cache.invalidate(tables=["nope"])
