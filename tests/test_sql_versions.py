"""The "sql" version store and the alembic branch that creates its table."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sqlalchemy import inspect, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from sqla_querycache import FromCache, QueryCache
from sqla_querycache.migrate import invalidating, migration_location

from .conftest import StatementCounter
from .models import Customer, Product

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = select(Product).where(Product.category_id == 2).order_by(Product.id).options(FromCache())


def alembic(url, *args):
    return subprocess.run(
        [sys.executable, "-m", "alembic", "-c", os.path.join(ROOT, "migrations", "alembic.ini"),
         "-x", f"url={url}", *args],  # fmt: skip
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )


def render(engine):
    return engine.url.render_as_string(hide_password=False)


@pytest.fixture()
def migrated(engine):
    url = render(engine)
    alembic(url, "downgrade", "querycache@base")  # leftovers of an interrupted run
    out = alembic(url, "upgrade", "querycache@head")
    assert out.returncode == 0, out.stderr
    yield engine
    out = alembic(url, "downgrade", "querycache@base")
    assert out.returncode == 0, out.stderr


def test_branch_upgrades_and_downgrades(migrated):
    insp = inspect(migrated)
    assert "querycache_versions" in insp.get_table_names()
    assert "querycache_alembic_version" in insp.get_table_names()
    assert "alembic_version" not in insp.get_table_names()  # the app's own is untouched
    out = alembic(render(migrated), "downgrade", "querycache@base")
    assert out.returncode == 0, out.stderr
    assert "querycache_versions" not in inspect(migrated).get_table_names()
    assert alembic(render(migrated), "upgrade", "querycache@head").returncode == 0


def test_branch_through_an_applications_version_locations(sqlite_engine, tmp_path):
    from alembic import command
    from alembic.config import Config

    cfg = Config(str(tmp_path / "alembic.ini"))
    command.init(cfg, str(tmp_path / "app"))
    cfg = Config(str(tmp_path / "alembic.ini"))
    cfg.set_main_option("sqlalchemy.url", render(sqlite_engine))
    cfg.set_main_option("version_locations",
                        f"{tmp_path / 'app' / 'versions'} {migration_location()}")  # fmt: skip
    cfg.set_main_option("path_separator", "space")
    command.upgrade(cfg, "heads")
    names = inspect(sqlite_engine).get_table_names()
    assert "querycache_versions" in names and "alembic_version" in names


@pytest.fixture()
def sql_cache(migrated):
    cache = QueryCache(regions={"default": {"backend": "dogpile.cache.memory"}}, versions="sql")
    maker = sessionmaker(migrated)
    cache.install(maker)
    yield cache, maker
    cache.uninstall()


def user_statements(counter, mark):
    return [s for s in counter.statements[mark:] if "querycache_versions" not in s]


def version_of(engine, name):
    with engine.connect() as conn:
        return conn.execute(text("SELECT version FROM querycache_versions WHERE name = :n"),
                            {"n": name}).scalar()  # fmt: skip


def test_writes_invalidate_through_the_database(migrated, sql_cache):
    _cache, maker = sql_cache
    counter = StatementCounter(migrated)
    try:
        with maker() as s:
            s.scalars(PAGE).all()
        mark = counter.count
        with maker() as s:
            s.scalars(PAGE).all()
        assert user_statements(counter, mark) == []  # a hit: only the version read
        # the page is bound by a declared foreign key: it reads the rows of that
        # value (rows.py), and an UPDATE by primary key with no old value known
        # bumps the foreign key's every-value name
        before = version_of(migrated, "product[category_id=*]")
        with maker() as s:
            s.execute(update(Product).where(Product.id == 5).values(name="sql store"))
            s.commit()
        assert version_of(migrated, "product[category_id=*]") == before + 1
        with maker() as s:
            assert "sql store" in [p.name for p in s.scalars(PAGE)]
    finally:
        counter.close()


def test_bump_commits_with_the_data_not_before(migrated, sql_cache):
    _cache, maker = sql_cache
    with maker() as s:
        s.scalars(PAGE).all()
    name = "product[category_id=2]"  # what PAGE depends on; product 5 is in category 2
    before = version_of(migrated, name)
    with maker() as s:
        s.get(Product, 5).name = "atomic"
        s.flush()
        assert version_of(migrated, name) == before  # not yet: still uncommitted
        s.commit()
    assert version_of(migrated, name) == before + 1


def test_failing_bump_never_breaks_the_users_commit(migrated, sql_cache):
    cache, maker = sql_cache
    with migrated.begin() as conn:
        conn.execute(text("DROP TABLE querycache_versions"))
    with maker() as s:
        s.get(Customer, 1).name = "still committed"
        s.commit()  # the bump fails inside a savepoint; the data commits
    with Session(migrated) as s:
        assert s.get(Customer, 1).name == "still committed"
    assert cache._writer.failed  # remembered for retry; customer reads bypass meanwhile
    alembic(render(migrated), "stamp", "querycache@base")
    assert alembic(render(migrated), "upgrade", "querycache@head").returncode == 0


def test_migration_hook_invalidates_what_it_touched(sqlite_engine):
    cache = QueryCache(regions={"default": {"backend": "dogpile.cache.memory"}})
    maker = sessionmaker(sqlite_engine)
    cache.install(maker)
    counter = StatementCounter(sqlite_engine)
    customers = select(Customer).order_by(Customer.id).options(FromCache())
    try:
        for stmt in (PAGE, PAGE, customers, customers):
            with maker() as s:
                s.scalars(stmt).all()
        cache.uninstall()  # a migration runs in another process, without the cache
        with sqlite_engine.connect() as conn, invalidating(conn, cache) as written:
            conn.exec_driver_sql("ALTER TABLE product ADD COLUMN extra INTEGER")
            conn.exec_driver_sql("UPDATE product SET name = 'migrated' WHERE id = 5")
            conn.commit()
        assert {"product"} <= written and "customer" not in written
        cache.install(maker)
        mark = counter.count
        with maker() as s:
            assert "migrated" in [p.name for p in s.scalars(PAGE)]
        with maker() as s:
            s.scalars(customers).all()
        assert counter.since(mark) == 1  # product reloaded, customer still cached
    finally:
        counter.close()
        cache.uninstall()
