"""The recipes in examples/, run against the real services.

Each shows the promise across parts of an application: a write in one (another
worker, a CLI command, a Celery worker, a migration) is seen by the next read in
another. A missing package or service skips with one line, unless
``QC_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import make_url

from .conftest import REQUIRE, _make_engine
from .test_sql_versions import app_alembic, app_db, app_setup, ok  # noqa: F401  (app_db: fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")


def unavailable(what: str) -> None:
    if REQUIRE:
        pytest.fail(f"QC_REQUIRE_SERVICES=1 but {what}")
    pytest.skip(f"examples skipped: {what}")


def need(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        unavailable(f"{', '.join(missing)} not installed (pip install -e '.[test]')")


@pytest.fixture()
def pg_url() -> str:
    url = os.environ.get("QC_PG_URL")
    if not url:
        unavailable("QC_PG_URL is not set (the examples run on PostgreSQL)")
    _make_engine(url).dispose()  # reachable, or skip/fail with the reason
    return url  # type: ignore[return-value]


def with_driver(url: str, driver: str) -> str:
    return make_url(url).set(drivername=f"postgresql+{driver}").render_as_string(False)


def env_for(**extra: str) -> dict[str, str]:
    path = os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load(name: str, path: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        p.terminate()
    for p in started:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# ------------------------------------------------------------------ FastAPI


def test_fastapi_two_workers(pg_url, redis_url, processes):
    """Two uvicorn servers on one PostgreSQL and Redis: a PUT on one, the next GET on the other."""
    need("fastapi", "uvicorn", "httpx", "asyncpg")
    import httpx

    where = os.path.join(EXAMPLES, "fastapi_app")
    env = env_for(DATABASE_URL=with_driver(pg_url, "asyncpg"), REDIS_URL=redis_url)
    ok(subprocess.run([sys.executable, "app.py", "init"], cwd=where, env=env,
                      capture_output=True, text=True, timeout=120))  # fmt: skip
    ports = [free_port(), free_port()]
    for port in ports:
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app:app", "--port", str(port), "--log-level",
             "warning"], cwd=where, env=env, text=True))  # fmt: skip
    a, b = (httpx.Client(base_url=f"http://127.0.0.1:{p}", timeout=30) for p in ports)
    deadline = time.monotonic() + 60
    for client in (a, b):
        while True:
            try:
                client.get("/stats").raise_for_status()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "uvicorn did not start"
                time.sleep(0.2)
    assert b.get("/items/1").json()["name"] == "apple"
    assert b.get("/items/1").json()["name"] == "apple"
    assert b.get("/stats").json()["regions"]["default"]["hits"] == 1
    put = a.put("/items/1", json={"name": "pear"}).json()
    assert put["name"] == "pear" and put["pid"] != b.get("/stats").json()["pid"]
    got = b.get("/items/1").json()
    assert got["name"] == "pear"  # another process's commit, seen at once
    assert [i["name"] for i in a.get("/items").json()] == ["pear", "banana"]
    assert b.get("/stats").json()["regions"]["default"]["hits"] == 1  # the read after: a miss
    a.close()
    b.close()


# -------------------------------------------------------------------- Flask


def test_flask_cli_write_seen_by_the_view(pg_url, redis_url):
    """`flask rename` in another process; the app's next page view shows it."""
    need("flask", "flask_sqlalchemy", "psycopg")
    where = os.path.join(EXAMPLES, "flask_app")
    env = env_for(DATABASE_URL=with_driver(pg_url, "psycopg"), REDIS_URL=redis_url)

    def flask(*args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "flask", "--app", "app", *args], cwd=where,
                             env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
        return ok(out).stdout

    flask("init")
    module = load("example_flask_app", os.path.join(where, "app.py"))
    app = module.create_app(env["DATABASE_URL"], redis_url)
    cache = app.extensions["querycache"]
    try:
        client = app.test_client()
        for _ in range(2):
            assert client.get("/notes/1").get_json()["text"] == "buy milk"
        assert cache.stats()["default"]["hits"] == 1
        assert "note 1: buy oat milk" in flask("rename", "1", "buy oat milk")
        assert client.get("/notes/1").get_json()["text"] == "buy oat milk"
        client.post("/notes/2/call dad")  # a write through the app itself
        assert client.get("/notes/2").get_json()["text"] == "call dad"
        assert client.get("/notes/1").get_json()["text"] == "buy oat milk"
        assert cache.stats()["default"]["hits"] >= 2
    finally:
        cache.close()
        with app.app_context():
            module.db.engine.dispose()


# ------------------------------------------------------------------- Celery


def test_celery_worker_write_seen_by_the_web_side(pg_url, redis_url, processes, monkeypatch):
    """A real worker process (Redis broker) commits; the web side's cached read sees it."""
    need("celery", "psycopg")
    where = os.path.join(EXAMPLES, "celery_app")
    db = with_driver(pg_url, "psycopg")
    env = env_for(DATABASE_URL=db, REDIS_URL=redis_url)
    processes.append(subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--pool=solo",
         "--loglevel=WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=where, env=env, text=True))  # fmt: skip
    monkeypatch.setenv("DATABASE_URL", db)
    monkeypatch.setenv("REDIS_URL", redis_url)
    tasks = load("tasks", os.path.join(where, "tasks.py"))  # the name the worker knows it by
    try:
        tasks.init()
        assert tasks.stock(1) == 3
        assert tasks.stock(1) == 3
        assert tasks.cache.stats()["default"]["hits"] == 1
        result = tasks.restock.delay(1, 5)
        assert result.get(timeout=90) == 8  # ran in the worker process
        assert tasks.stock(1) == 8  # its commit invalidated this process's cached read
        assert tasks.stock(2) == 10
    finally:
        tasks.cache.close()
        tasks.engine.dispose()
        sys.modules.pop("tasks", None)


# ------------------------------------------------------------------ alembic


def test_alembic_data_migration_seen_by_the_running_app(app_db, tmp_path):  # noqa: F811
    """examples/alembic_sql: the querycache branch, the "sql" store, a data migration."""
    from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select
    from sqlalchemy.orm import sessionmaker

    from sqla_querycache import FromCache, QueryCache

    from .conftest import StatementCounter

    dest = app_setup(tmp_path)
    ok(app_alembic(dest, app_db, "upgrade", "querycache@head"))  # the deployment order
    ok(app_alembic(dest, app_db, "upgrade", "app0001"))
    recipe = Table("recipe", MetaData(), Column("id", Integer, primary_key=True),
                   Column("title", String(100)))  # fmt: skip
    cache = QueryCache(regions={"default": {"backend": "dogpile.cache.memory"}}, versions="sql")
    maker = sessionmaker(app_db)
    cache.install(maker)
    counter = StatementCounter(app_db)
    titles = select(recipe.c.title).order_by(recipe.c.id).options(FromCache())
    try:
        with maker() as s:
            s.execute(insert(recipe), [{"id": 1, "title": "soup"}, {"id": 2, "title": "stew"}])
            s.commit()
        for sent in (1, 0):
            mark = counter.count
            with maker() as s:
                assert s.scalars(titles).all() == ["soup", "stew"]
            assert counter.since(mark) == sent
        ok(app_alembic(dest, app_db, "upgrade", "heads"))  # app0002: UPDATE recipe ...
        mark = counter.count
        with maker() as s:
            assert s.scalars(titles).all() == ["SOUP", "STEW"]
        assert counter.since(mark) == 1
    finally:
        counter.close()
        cache.uninstall()
