"""The "sql" version store and the alembic branch that creates its table."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import pytest
from sqlalchemy import inspect, make_url, select, text, update
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
    assert "querycache_stats" in insp.get_table_names()  # qc0002: app-wide stats, switch
    assert "querycache_alembic_version" in insp.get_table_names()
    assert "alembic_version" not in insp.get_table_names()  # the app's own is untouched
    out = alembic(render(migrated), "downgrade", "querycache@base")
    assert out.returncode == 0, out.stderr
    assert "querycache_versions" not in inspect(migrated).get_table_names()
    assert "querycache_stats" not in inspect(migrated).get_table_names()
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
    try:
        command.upgrade(cfg, "heads")
    finally:  # its env.py's fileConfig disables every logger configured before it
        logging.getLogger("sqla_querycache").disabled = False
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
    cache.close()  # its stats flusher and switch watcher use querycache_stats
    with migrated.begin() as conn:
        conn.execute(text("DROP TABLE querycache_stats"))  # both made again from base
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


# ---------------------------------------------- an application's alembic setup
# examples/alembic_sql (alembic.ini + env.py with the package's hooks), copied
# into a temporary folder and run with the real alembic command line.

EXAMPLE = os.path.join(ROOT, "examples", "alembic_sql")
APP_TABLES = ("recipe", "alembic_version", "querycache_versions", "querycache_stats",
              "querycache_alembic_version")  # fmt: skip


def clean(engine):
    with engine.begin() as conn:
        for name in APP_TABLES:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")


@pytest.fixture(params=["sqlite", "postgresql"])
def app_db(request, tmp_path_factory):
    from .conftest import _make_engine, db_url

    url = db_url(request.param, tmp_path_factory)
    if request.param == "postgresql":  # a schema of its own: autogenerate sees only the app's
        base = _make_engine(url)
        with base.begin() as conn:
            conn.exec_driver_sql("CREATE SCHEMA IF NOT EXISTS qc_alembic")
        base.dispose()
        url = make_url(url).update_query_dict({"options": "-csearch_path=qc_alembic"})
        url = url.render_as_string(hide_password=False)
    eng = _make_engine(url)
    clean(eng)
    yield eng
    clean(eng)
    eng.dispose()


def app_setup(tmp_path, revisions=True):
    import shutil

    dest = tmp_path / "app"
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("__pycache__"))
    if not revisions:
        for f in (dest / "migrations" / "versions").glob("*.py"):
            f.unlink()
    return dest


def app_alembic(dest, engine, *args, versions="sql"):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "alembic", "-x", f"url={render(engine)}", "-x",
         f"versions={versions}", *args],  # fmt: skip
        capture_output=True, text=True, cwd=dest, env=env, timeout=120,
    )


def ok(out):
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def our_files():
    return sorted(os.listdir(migration_location()))


def test_the_branch_is_found_from_alembic_ini_version_locations(app_db, tmp_path):
    """Trap (a): ``sqla_querycache.migrations:versions`` in alembic.ini (not env.py)."""
    dest = app_setup(tmp_path)
    heads = ok(app_alembic(dest, app_db, "heads")).stdout
    assert "qc0002 (querycache)" in heads and "app0002" in heads
    ok(app_alembic(dest, app_db, "upgrade", "heads"))
    names = inspect(app_db).get_table_names()
    assert {"querycache_versions", "recipe", "alembic_version"} <= set(names)
    assert "querycache_alembic_version" not in names  # one version table: the app's


def test_setting_the_location_from_env_py_is_too_late(app_db, tmp_path):
    """Trap (a), the failing way: what the README now warns against."""
    dest = app_setup(tmp_path)
    ini = dest / "alembic.ini"
    ini.write_text(ini.read_text().replace(" sqla_querycache.migrations:versions", ""))
    env_py = dest / "migrations" / "env.py"
    env_py.write_text(env_py.read_text().replace(
        "config = context.config\n",
        "config = context.config\nfrom sqla_querycache.migrate import migration_location\n"
        "config.set_main_option('version_locations', "
        "config.get_main_option('version_locations') + ' ' + migration_location())\n"))  # fmt: skip
    ok(app_alembic(dest, app_db, "upgrade", "heads"))
    assert "querycache_versions" not in inspect(app_db).get_table_names()


def test_autogenerate_leaves_the_package_tables_alone(app_db, tmp_path):
    """Trap (b): include_object; without it alembic would drop querycache_versions."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from sqla_querycache.migrate import include_object

    sys.path.insert(0, EXAMPLE)
    try:
        from models import Base  # the example's metadata
    finally:
        sys.path.remove(EXAMPLE)
    dest = app_setup(tmp_path)
    ok(app_alembic(dest, app_db, "upgrade", "heads"))
    with app_db.connect() as conn:
        plain = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        hooked = compare_metadata(
            MigrationContext.configure(conn, opts={"include_object": include_object}),
            Base.metadata,
        )
    removed = [d[1].name for d in plain if d[0] == "remove_table"]
    assert {"querycache_versions", "querycache_stats"} <= set(removed)  # the trap is real
    assert hooked == []
    out = ok(app_alembic(dest, app_db, "revision", "--autogenerate", "-m", "nothing"))
    new = [f for f in (dest / "migrations" / "versions").glob("*nothing.py")]
    assert len(new) == 1, out.stderr
    assert "querycache" not in new[0].read_text()


def test_the_apps_first_revision_goes_into_the_apps_folder(app_db, tmp_path):
    """Trap (c): not into site-packages after qc0001, with and without --autogenerate."""
    before = our_files()
    dest = app_setup(tmp_path, revisions=False)
    ok(app_alembic(dest, app_db, "upgrade", "heads"))  # the querycache branch only
    ok(app_alembic(dest, app_db, "revision", "--autogenerate", "-m", "first"))
    assert our_files() == before
    versions = dest / "migrations" / "versions"
    (first,) = versions.glob("*first.py")
    text_ = first.read_text()
    assert "down_revision = None" in text_ and "op.create_table('recipe'" in text_
    assert "querycache_versions" not in text_
    ok(app_alembic(dest, app_db, "upgrade", "heads"))
    assert "recipe" in inspect(app_db).get_table_names()
    ok(app_alembic(dest, app_db, "revision", "-m", "second"))  # plain: two heads now
    (second,) = versions.glob("*second.py")
    first_id = first.name.split("_")[0]
    assert f"down_revision = {first_id!r}" in second.read_text()
    assert our_files() == before
    heads = ok(app_alembic(dest, app_db, "heads")).stdout
    assert "qc0002 (querycache)" in heads and second.name.split("_")[0] in heads


def test_app_branch_before_the_querycache_branch_with_the_sql_store(app_db, tmp_path):
    """Trap (d): the migration exits 0 with a warning; reads bypass until the table exists."""
    dest = app_setup(tmp_path)
    out = ok(app_alembic(dest, app_db, "upgrade", "app@head"))
    assert "querycache_versions does not exist yet" in out.stderr
    assert "querycache_versions" not in inspect(app_db).get_table_names()
    with app_db.begin() as conn:
        conn.execute(text("INSERT INTO recipe (id, title) VALUES (1, 'soup')"))
    cache = QueryCache(regions={"default": {"backend": "dogpile.cache.memory"}}, versions="sql")
    maker = sessionmaker(app_db)
    cache.install(maker)
    from sqlalchemy import Column, Integer, MetaData, String, Table

    recipe = Table("recipe", MetaData(), Column("id", Integer, primary_key=True),
                   Column("title", String(100)))  # fmt: skip
    titles = select(recipe.c.title).order_by(recipe.c.id).options(FromCache())
    try:
        for _ in range(2):  # no table: bypassed, never an error
            with maker() as s:
                assert s.scalars(titles).all() == ["soup"]
        st = cache.stats()["default"]
        assert st["bypassed"] == 2 and st["hits"] == st["stores"] == 0
        with maker() as s:
            s.execute(text("UPDATE recipe SET title = 'stew'"))
            s.commit()  # the bump fails open
        ok(app_alembic(dest, app_db, "upgrade", "heads"))
        counter = StatementCounter(app_db)
        sent = []
        for _ in range(10):  # the cache works once the table exists: as soon as the
            mark = counter.count  # failed bump is delivered (after the store's cool-down)
            with maker() as s:
                assert s.scalars(titles).all() == ["stew"]
            sent.append(counter.since(mark))
            if sent[-1] == 0:
                break
            time.sleep(0.3)
        assert sent[0] == 1 and sent[-1] == 0, sent
        counter.close()
    finally:
        cache.uninstall()


def test_standalone_branch_runs_from_an_installed_package(app_db, tmp_path):
    """``python -m sqla_querycache.migrate``: no source checkout, any working directory."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    for args in (["upgrade", "querycache@head"], ["current"]):
        out = subprocess.run(
            [sys.executable, "-m", "sqla_querycache.migrate", "-x", f"url={render(app_db)}", *args],
            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
        )
        ok(out)
    assert "qc0002" in out.stdout  # the branch head
    assert {"querycache_versions", "querycache_alembic_version"} <= set(
        inspect(app_db).get_table_names()
    )
