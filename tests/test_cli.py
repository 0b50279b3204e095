"""The ``sqla-querycache`` command, run as a subprocess against a real Redis.

An application module (``qc_app.py``, written to a temporary directory)
builds a QueryCache over Redis regions with Redis versions; the test process
imports it, fills SQLite and runs cached queries, then inspects and
invalidates the entries through the command line, as an operator would.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from string import Template
from typing import Any

import pytest

from sqla_querycache import cli, commands, demo

from . import models

ROOT = Path(__file__).resolve().parents[1]

APP = Template('''
"""An application with a query cache, as the CLI finds it: ``--cache qc_app:cache``."""
from dogpile.cache import make_region
from sqlalchemy import create_engine, select
from sqlalchemy.orm import sessionmaker

from sqla_querycache import FromCache, QueryCache
from tests import models
from tests.models import Product

REDIS = $redis


def redis_region(url, ttl=600):
    return make_region().configure(
        "dogpile.cache.redis", expiration_time=ttl, arguments={"url": url}
    )


engine = create_engine($db)
Session = sessionmaker(engine)
cache = QueryCache(
    regions={
        "default": redis_region(REDIS),
        "hot": redis_region(REDIS, ttl=60),
        "down": redis_region("redis://user:secret@127.0.0.1:1/0"),
        "nowhere": make_region().configure("dogpile.cache.null"),
    },
    versions=REDIS,
    namespace="qccli",  # its own app-wide counters, whatever other caches of the run left
).install(Session)


def warm():
    """Fill the database, then store four entries (three in "default") and hit one."""
    models.Base.metadata.create_all(engine)
    with Session() as s:
        models.populate(s)
    cache.versions.flush()  # deliver the commit's second half now
    with Session() as s:
        s.scalars(select(models.Product).where(models.Product.id <= 5).options(FromCache())).all()
        s.scalars(select(models.Customer).order_by(models.Customer.id).options(FromCache())).all()
        s.scalars(select(models.Category).options(FromCache())).all()
        s.scalars(select(models.Tag).options(FromCache("hot"))).all()
    with Session() as s:
        s.scalars(select(models.Product).where(models.Product.id <= 5).options(FromCache())).all()


def rename_product():
    with Session() as s:
        s.get(models.Product, 1).name = "renamed"
        s.commit()
    cache.versions.flush()
''')

#: a module whose import fails with a URL holding a password in the message
BAD_APP = """
from sqla_querycache import QueryCache

cache = QueryCache(regions={"default": {
    "backend": "dogpile.cache.redis", "expiration_time": "soon",
    "arguments": {"url": "redis://user:secret@127.0.0.1:1/0"},
}})
"""


#: an application whose version store is unreachable (and holds a password)
DOWN_APP = """
from dogpile.cache import make_region
from sqla_querycache import QueryCache

cache = QueryCache(
    regions={"default": make_region().configure("dogpile.cache.memory")},
    versions="redis://user:secret@127.0.0.1:1/0",
    require_versions=False,
)
"""


@pytest.fixture()
def app(tmp_path: Path, redis_url: str, redis_client: Any) -> Any:
    """The application module, imported here and warmed: entries exist in Redis."""
    path = tmp_path / "qc_app.py"
    path.write_text(APP.substitute(redis=repr(redis_url), db=repr(f"sqlite:///{tmp_path}/app.db")))
    (tmp_path / "qc_bad.py").write_text(BAD_APP)
    (tmp_path / "qc_down.py").write_text(DOWN_APP)
    spec = importlib.util.spec_from_file_location("qc_app", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.warm()
    module.cache.flush_stats()  # what the background flusher does every second
    yield module
    module.cache.close()  # its stats flusher too: it must not write into the next test's Redis
    module.engine.dispose()


def run(cwd: Path, *args: str, cache: str | None = "qc_app:cache") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "QC_CACHE"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(cwd)])
    argv = [sys.executable, "-m", "sqla_querycache.cli", *args]
    if cache:
        argv += ["--cache", cache]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip


def ok(cwd: Path, *args: str) -> str:
    proc = run(cwd, *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def as_json(cwd: Path, *args: str) -> list[dict[str, Any]]:
    return json.loads(ok(cwd, *args, "--json"))  # type: ignore[no-any-return]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def table(out: str) -> list[dict[str, str]]:
    """The rows of a table the CLI printed (rich's box characters), by column header."""
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("┃"))
    columns = [c.strip() for c in header.strip("┃").split("┃")]
    return [dict(zip(columns, (c.strip() for c in line.strip("│").split("│"))))
            for line in lines if line.startswith("│")]  # fmt: skip


def by_tables(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {r["tables"]: r["valid"] for r in rows}


# ----------------------------------------------------------------- inspect


def test_regions_lists_every_region_with_its_entry_count(app: Any, tmp_path: Path) -> None:
    rows = {r["region"]: r for r in table(ok(tmp_path, "regions"))}
    assert list(rows) == ["default", "hot", "down", "nowhere"]
    assert rows["default"]["entries"] == "3" and rows["hot"]["entries"] == "1"
    assert rows["default"]["backend"] == "Redis" and rows["nowhere"]["backend"] == "Null"
    assert rows["default"]["expiration"] == "600 s" and rows["hot"]["expiration"] == "60 s"
    assert rows["default"]["location"].startswith("redis://127.0.0.1:")
    assert rows["down"]["entries"] == "? (ConnectionError)"
    assert rows["nowhere"]["entries"] == "? (ConfigurationError)"
    # every process's counters (the app's, flushed to Redis), not the CLI's own
    assert rows["default"]["hit_ratio"] == "25.0%" and rows["default"]["scope"] == "app"
    assert rows["hot"]["hit_ratio"] == "0.0%"

    data = {r["region"]: r for r in as_json(tmp_path, "regions")}
    assert data["default"]["entries"] == 3 and data["default"]["expiration"] == 600


def test_entries_lists_keys_sizes_and_validity(app: Any, tmp_path: Path) -> None:
    rows = table(ok(tmp_path, "entries", "--region", "default"))
    assert len(rows) == 3
    assert all(r["key"].startswith("qccli:q:default:") and len(r["key"]) == 48 for r in rows)
    assert sorted(r["tables"] for r in rows) == ["category", "customer", "product"]
    assert all(r["valid"] == "True" for r in rows)
    assert all(re.fullmatch(r"\d+ B", r["bytes"]) for r in rows)
    assert all(re.fullmatch(r"\d+(\.\d)? s", r["age"]) for r in rows)
    assert {r["tables"]: r["rows"] for r in rows} == {"product": "5", "customer": "5",
                                                      "category": "4"}  # fmt: skip

    data = as_json(tmp_path, "entries", "--region", "hot")
    assert [(r["tables"], r["valid"], r["rows"]) for r in data] == [("tag", True, 5)]
    assert len(as_json(tmp_path, "entries", "--limit", "2")) == 2


def test_a_write_in_the_application_shows_as_invalid_entries(app: Any, tmp_path: Path) -> None:
    app.rename_product()
    out = ok(tmp_path, "entries")
    assert by_tables(table(out)) == {"product": "False", "customer": "True", "category": "True"}
    assert by_tables(as_json(tmp_path, "entries")) == {
        "product": False, "customer": True, "category": True,
    }  # fmt: skip


# -------------------------------------------------------------- invalidate


def test_invalidate_tables_then_region_then_everything(app: Any, tmp_path: Path) -> None:
    assert table(ok(tmp_path, "invalidate", "--tables", "product")) == [{"invalidated": "product"}]
    assert by_tables(as_json(tmp_path, "entries")) == {
        "product": False, "customer": True, "category": True,
    }  # fmt: skip
    assert as_json(tmp_path, "entries", "--region", "hot")[0]["valid"] is True

    assert as_json(tmp_path, "invalidate", "--region", "hot") == [{"invalidated": "region hot"}]
    assert as_json(tmp_path, "entries", "--region", "hot")[0]["valid"] is False
    assert by_tables(as_json(tmp_path, "entries"))["customer"] is True

    assert table(ok(tmp_path, "invalidate", "--everything")) == [{"invalidated": "everything"}]
    assert not any(r["valid"] for r in as_json(tmp_path, "entries"))


def test_versions_of_named_and_of_all_tables(app: Any, tmp_path: Path) -> None:
    (before,) = as_json(tmp_path, "versions", "--tables", "product")
    assert before["table"] == "product" and isinstance(before["version"], int)
    app.rename_product()  # a commit bumps twice: before and after it
    (after,) = as_json(tmp_path, "versions", "--tables", "product")
    assert after["version"] == before["version"] + 2
    ok(tmp_path, "invalidate", "--tables", "product")
    rows = table(ok(tmp_path, "versions", "--tables", "product"))
    assert rows == [{"table": "product", "version": str(before["version"] + 3)}]

    every = {r["table"] for r in as_json(tmp_path, "versions")}
    assert {"product", "customer", "category", "tag"} <= every


def test_json_on_every_command(app: Any, tmp_path: Path) -> None:
    key = as_json(tmp_path, "entries", "--region", "hot")[0]["key"]
    args = {"regions": [], "entries": [], "versions": ["--tables", "tag"],
            "invalidate": ["--tables", "tag"], "stats": [], "top": ["--once"],
            "show": [key], "identity": [],
            "exporter": ["--port", str(_free_port()), "--seconds", "0.1"],
            "disable": [], "enable": [],
            "explain": ["select(models.Tag).options(FromCache())"]}  # fmt: skip
    assert set(args) == {n for n, c in commands.COMMANDS.items() if c.needs_cache}
    for name, extra in args.items():
        rows = as_json(tmp_path, name, *extra)
        assert isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows), name


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "args, cache, message",
    [
        (["regions"], None, "give --cache"),
        (["regions"], "qc_app", "must look like 'package.module:attribute'"),
        (["regions"], "no_such_module:cache", "cannot import 'no_such_module'"),
        (["regions"], "qc_app:missing", "has no attribute 'missing'"),
        (["regions"], "qc_app:engine", "is a Engine, not a QueryCache"),
        (["entries", "--region", "nope"], "qc_app:cache", "unknown cache region 'nope'"),
        (["entries", "--region", "nowhere"], "qc_app:cache", "(NullBackend) cannot list its keys"),
        (["entries", "--region", "down"], "qc_app:cache", "ConnectionError"),
        (["invalidate"], "qc_app:cache", "say what to invalidate"),
        (["invalidate", "--region", "nope"], "qc_app:cache", "unknown cache region 'nope'"),
        (["invalidate", "--tables", "product"], "qc_down:cache", "did not take the invalidation"),
        (["versions", "--tables", "product"], "qc_down:cache", "ConnectionError"),
    ],
)
def test_errors_print_failed_and_exit_1(
    app: Any, tmp_path: Path, args: list[str], cache: str | None, message: str
) -> None:
    proc = run(tmp_path, *args, cache=cache)
    assert proc.returncode == 1
    *warnings, failed = proc.stderr.splitlines()  # warnings: logged by the extension
    assert failed.startswith("FAILED: ") and message in failed, proc.stderr
    assert all(w.startswith("WARNING [sqla_querycache") for w in warnings), proc.stderr
    assert proc.stdout == ""


def test_passwords_are_masked_in_output_and_errors(app: Any, tmp_path: Path) -> None:
    proc = run(tmp_path, "regions", cache="qc_bad:cache")  # fails while importing the app
    assert proc.returncode == 1
    assert "cannot import 'qc_bad'" in proc.stderr
    assert "redis://user:***@127.0.0.1:1/0" in proc.stderr
    for cache, args in [
        ("qc_app:cache", ["regions"]), ("qc_app:cache", ["regions", "--json"]),
        ("qc_app:cache", ["entries", "--region", "down"]),
        ("qc_down:cache", ["invalidate", "--everything"]), ("qc_down:cache", ["entries"]),
    ]:  # fmt: skip
        proc = run(tmp_path, *args, cache=cache)
        assert "secret" not in proc.stdout + proc.stderr
    assert "redis://user@127.0.0.1:1/0" in ok(tmp_path, "regions")


def test_mask() -> None:
    assert cli.mask("redis://user:secret@host:6379/0") == "redis://user:***@host:6379/0"
    assert cli.mask("redis://:secret@host") == "redis://:***@host"
    assert cli.mask("postgresql://u:p@ss:w@db/app x@y") == "postgresql://u:***@db/app x@y"
    assert cli.mask("{'url': 'redis://u:se:cret@h:1/0'}") == "{'url': 'redis://u:***@h:1/0'}"
    assert cli.mask("redis://host:6379/0 and a@b") == "redis://host:6379/0 and a@b"


# -------------------------------------------------------- rendering, repr


def test_plain_text_rendering_formats_by_column(app: Any, capsys: Any, monkeypatch: Any) -> None:
    """Without rich (the rich tables are what the subprocess tests read)."""
    # rich stays unimported in this process: test_demo hides it the same way
    for name in [m for m in sys.modules if m == "rich" or m.startswith("rich.")] or ["rich"]:
        monkeypatch.setitem(sys.modules, name, None)
    cli.render(commands.regions(app.cache), title="regions")  # 1 hit of 4 lookups here
    title, header, rule, default, *others = capsys.readouterr().out.splitlines()
    assert title == "regions" and header.split()[:2] == ["region", "backend"]
    assert set(rule) == {"-", " "} and len(others) == 3
    assert default.split()[-4:] == ["1", "3", "25.0%", "app"]  # hits, misses, hit ratio, scope
    assert default.split()[3:5] == ["600", "s"]  # expiration

    cli.render([{"key": "k", "bytes": 123456, "age": 4.31, "valid": True}])
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["key", "bytes", "age", "valid"]
    assert out[2].split() == ["k", "120.6", "KiB", "4.3", "s", "True"]
    cli.render([])
    assert capsys.readouterr().out == "(nothing)\n"


def test_repr_names_regions_backends_version_store_and_counters(app: Any) -> None:
    text = repr(app.cache)
    assert "versions=<RedisVersions 127.0.0.1:" in text and "lease=5s" in text and "installed" in text
    lines = {m.group(1): m.group(0) for m in re.finditer(r"'(\w+)': \w+Backend .*", text)}
    assert list(lines) == ["default", "hot", "down", "nowhere"]
    assert "RedisBackend hits=1 misses=3 stores=3 errors=0 hit_ratio=25%" in lines["default"]
    assert "RedisBackend hits=0 misses=1 stores=1" in lines["hot"]
    assert "NullBackend" in lines["nowhere"]


# -------------------------------------------------------------------- demo


def test_demo_prints_its_table(tmp_path: Path) -> None:
    out = run(tmp_path, "demo", "--rounds", "5", cache=None)
    assert out.returncode == 0, out.stderr
    assert demo.TITLE in out.stdout and "cached hit" in out.stdout
    assert all(name in out.stdout for name in demo.WORKLOADS)
    assert re.search(r"category_page\s+│\s+\d+\.\d{3} ms", out.stdout)  # rounded, with units
    rows = json.loads(run(tmp_path, "demo", "--rounds", "5", "--json", cache=None).stdout)
    assert [r["workload"] for r in rows] == list(demo.WORKLOADS)


# ------------------------------------------------ stats, top, entries, show


def test_version() -> None:
    proc = subprocess.run([sys.executable, "-m", "sqla_querycache.cli", "--version"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert proc.returncode == 0 and re.fullmatch(r"sqla-querycache \d+\.\d+\.\d+\S*\n", proc.stdout)


def test_stats_shows_the_apps_counters(app: Any, tmp_path: Path) -> None:
    rows = {r["region"]: r for r in table(ok(tmp_path, "stats"))}
    assert rows["default"]["hits"] == "1" and rows["default"]["misses"] == "3"
    assert rows["default"]["scope"] == "app" and rows["default"]["db_seconds"].endswith(" ms")
    stmts = as_json(tmp_path, "stats", "--by", "statement")
    assert sorted(s["tables"] for s in stmts) == ["category", "customer", "product", "tag"]
    product = next(s for s in stmts if s["tables"] == "product")
    assert (product["calls"], product["hits"], product["misses"]) == (2, 1, 1)
    assert product["sql"].startswith("SELECT product.id") and "FROM product" in product["sql"]
    tables = {t["table"]: t for t in as_json(tmp_path, "stats", "--by", "table")}
    assert {"category", "customer", "product", "tag"} <= set(tables)
    assert all(t.isidentifier() for t in tables)  # no @all, @any, @region:x, t#7, t@rows
    assert tables["product"]["hits"] == 1 and tables["orders"]["invalidations"] >= 1
    process = as_json(tmp_path, "stats", "--scope", "process")
    assert process[0]["scope"] == "process" and process[0]["hits"] == 0  # the CLI's own


def test_top_refreshes(app: Any, tmp_path: Path) -> None:
    out = ok(tmp_path, "top", "--iterations", "2", "--interval", "0.2")
    assert out.count("top  ") == 2  # two frames, each titled with the time
    assert "FROM product" in out
    frames = [json.loads(line) for line in
              ok(tmp_path, "top", "--once", "--by", "table", "--json").splitlines()]  # fmt: skip
    assert len(frames) == 1 and {r["table"] for r in frames[0]} >= {"product", "tag"}


def test_entries_show_sql_masked_params_and_ttl(app: Any, tmp_path: Path) -> None:
    rows = as_json(tmp_path, "entries")
    product = next(r for r in rows if r["tables"] == "product")
    assert "FROM product" in product["sql"] and "WHERE product.id <=" in product["sql"]
    assert product["params"] == "***"  # masked by default
    assert abs(product["ttl_left"] + product["age"] - 600) < 2  # Redis's TTL of the key
    assert len(product["statement"]) == 16
    shown = as_json(tmp_path, "entries", "--show-params")
    assert next(r for r in shown if r["tables"] == "product")["params"] == "5"
    hot = as_json(tmp_path, "entries", "--region", "hot")[0]
    assert 0 < hot["ttl_left"] <= 60 and abs(hot["ttl_left"] + hot["age"] - 60) < 2
    assert all(not t.startswith("@") for r in rows for t in r["tables"].split(","))


def test_show_one_entry(app: Any, tmp_path: Path) -> None:
    key = next(r["key"] for r in as_json(tmp_path, "entries") if r["tables"] == "product")
    (row,) = as_json(tmp_path, "show", key)
    assert row["key"] == key and row["region"] == "default" and row["valid"] is True
    assert row["rows"] == 5 and row["params"] == "***" and "FROM product" in row["sql"]
    assert "@all" in row["depends_on"] and "product" in row["depends_on"]
    text = ok(tmp_path, "show", key, "--show-params")
    assert re.search(r"^params\s+5$", text, re.M) and re.search(r"^valid\s+True$", text, re.M)
    proc = run(tmp_path, "show", "qccli:q:default:" + "0" * 32)
    assert proc.returncode == 1 and "no entry" in proc.stderr
    proc = run(tmp_path, "show", "nonsense")
    assert proc.returncode == 1 and "is not an entry key" in proc.stderr


SQL_APP = Template('''
from dogpile.cache import make_region
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker
from sqla_querycache import QueryCache

engine = create_engine($db)
Session = sessionmaker(engine)
cache = QueryCache(
    regions={"default": make_region().configure(
        "dogpile.cache.redis", expiration_time=600, arguments={"url": $redis})},
    versions="sql",
).install(Session)
''')


def test_validity_with_the_sql_store_needs_the_database_url(
    tmp_path: Path, redis_url: str, redis_client: Any
) -> None:
    from sqlalchemy import select

    from sqla_querycache import FromCache

    db = f"sqlite:///{tmp_path}/sqlapp.db"
    (tmp_path / "qc_sql.py").write_text(SQL_APP.substitute(db=repr(db), redis=repr(redis_url)))
    spec = importlib.util.spec_from_file_location("qc_sql", tmp_path / "qc_sql.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        module.cache.versions.create_tables(module.engine)
        models.Base.metadata.create_all(module.engine)
        with module.Session() as s:
            models.populate(s)
        with module.Session() as s:
            s.scalars(select(models.Tag).options(FromCache())).all()

        def entries(*extra: str) -> Any:
            proc = run(tmp_path, "entries", "--json", *extra, cache="qc_sql:cache")
            assert proc.returncode == 0, proc.stderr
            return json.loads(proc.stdout)

        # the database is the installed sessionmaker's: no --url needed
        (row,) = entries()
        assert row["valid"] is True and row["tables"] == "tag"
        assert entries("--url", db)[0]["valid"] is True
        with module.Session() as s:
            s.get(models.Tag, 1).label = "renamed"
            s.commit()
        assert entries("--url", db)[0]["valid"] is False
        assert entries()[0]["valid"] is False

        # the app-wide switch and stats through the sql store's table
        proc = run(tmp_path, "disable", "--json", cache="qc_sql:cache")
        assert proc.returncode == 0, proc.stderr
        deadline = time.monotonic() + 5
        while not module.cache.disabled_app_wide and time.monotonic() < deadline:
            time.sleep(0.05)
        assert module.cache.disabled_app_wide  # the app process saw it
        proc = run(tmp_path, "enable", cache="qc_sql:cache")
        assert proc.returncode == 0, proc.stderr
        module.cache.flush_stats()
        proc = run(tmp_path, "stats", "--json", cache="qc_sql:cache")
        assert proc.returncode == 0, proc.stderr
        (default,) = json.loads(proc.stdout)
        assert default["scope"] == "app" and default["misses"] == 1
        # a misspelt table: the rows of the sql store's table know the real ones
        proc = run(tmp_path, "invalidate", "--tables", "tga", cache="qc_sql:cache")
        assert proc.returncode == 1 and "'tga'" in proc.stderr and "tag" in proc.stderr
    finally:
        module.cache.close()
        module.engine.dispose()


# ------------------------------------------------------------------ explain


def test_explain_an_expression_of_the_apps_namespace(app: Any, tmp_path: Path) -> None:
    (row,) = as_json(tmp_path, "explain", "select(Product).where(Product.id == 3).options(FromCache())")
    assert row["cached"] is True and row["outcome"] == "cached" and row["reason"] is None
    assert row["region"] == "default" and row["tables"] == ["product"]
    assert row["key"].startswith("qccli:q:default:") and "product#3" in row["depends_on"]
    out = ok(tmp_path, "explain", "select(models.Customer)")
    assert re.search(r"^cached\s+False$", out, re.M)
    assert "no region" in out
    (row,) = as_json(tmp_path, "explain", "select(models.Tag).with_for_update().options(FromCache())")
    assert row["outcome"] == "uncacheable" and "FOR UPDATE" in row["reason"]
    proc = run(tmp_path, "explain", "select(Nothing)")
    assert proc.returncode == 1 and "cannot evaluate" in proc.stderr and "Nothing" in proc.stderr


# -------------------------------------------------- finding the cache: pyproject


def run_bare(cwd: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    """The CLI with no --cache, no QC_CACHE, and only the package on the path."""
    base = {k: v for k, v in os.environ.items() if k != "QC_CACHE"}
    base["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "sqla_querycache.cli", *args], cwd=cwd,
                          env={**base, **(env or {})}, capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip


def test_the_cache_is_found_from_the_nearest_pyproject(app: Any, tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "shop"\n\n[tool.sqla_querycache]\ncache = "qc_app:cache"\n'
    )
    deep = tmp_path / "src" / "deep"
    deep.mkdir(parents=True)
    (deep / "pyproject.toml").write_text('[tool.ruff]\nline-length = 100\n')  # not ours: skipped
    proc = run_bare(deep, "regions", "--json")
    assert proc.returncode == 0, proc.stderr
    assert {r["region"] for r in json.loads(proc.stdout)} == {"default", "hot", "down", "nowhere"}
    # precedence: $QC_CACHE over pyproject, --cache over both
    proc = run_bare(deep, "regions", env={"QC_CACHE": "qc_nope:cache"})
    assert proc.returncode == 1 and "cannot import 'qc_nope'" in proc.stderr
    proc = run_bare(tmp_path, "regions", "--json", "--cache", "qc_app:cache",
                    env={"QC_CACHE": "qc_nope:cache"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_pyproject_mistakes_are_said(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.sqla_querycache]\ncahce = 'qc_app:cache'\n")
    proc = run_bare(tmp_path, "regions")
    assert proc.returncode == 1 and "needs cache = " in proc.stderr
    (tmp_path / "pyproject.toml").write_text("[tool.sqla_querycache\n")
    proc = run_bare(tmp_path, "regions")
    assert proc.returncode == 1 and "cannot read" in proc.stderr
    (tmp_path / "pyproject.toml").unlink()
    proc = run_bare(tmp_path, "regions")
    assert proc.returncode == 1 and "[tool.sqla_querycache]" in proc.stderr
    assert cli.find_pyproject_cache(tmp_path) is None


# ------------------------------------------------------- invalidate: table names


def test_invalidate_refuses_a_misspelt_table_listing_the_known_ones(
    app: Any, tmp_path: Path
) -> None:
    proc = run(tmp_path, "invalidate", "--tables", "prodcut")
    assert proc.returncode == 1, proc.stdout
    assert "unknown table(s) 'prodcut'" in proc.stderr
    known = proc.stderr.split("known: ", 1)[1]
    assert "product" in known and "customer" in known
    assert "orders" in known  # from the application's MetaData: never queried, no version yet
    assert "@" not in known and "#" not in known  # internal names are not tables
    assert as_json(tmp_path, "invalidate", "--tables", "orders") == [{"invalidated": "orders"}]
    rows = as_json(tmp_path, "invalidate", "--tables", "only_in_the_db", "--force")
    assert rows == [{"invalidated": "only_in_the_db"}]


def test_entries_valid_with_memory_regions_and_local_versions(sqlite_engine: Any) -> None:
    from sqlalchemy import select, update
    from sqlalchemy.orm import sessionmaker

    from sqla_querycache import FromCache, QueryCache

    from .conftest import memory_region

    maker = sessionmaker(sqlite_engine)
    cache = QueryCache(regions={"default": memory_region()}).install(maker)
    try:
        with maker() as s:
            s.scalars(select(models.Tag).options(FromCache())).all()
        (row,) = commands.entries(cache)
        assert row["valid"] is True and row["tables"] == "tag"
        with maker() as s:
            s.execute(update(models.Tag).where(models.Tag.id == 1).values(label="x"))
            s.commit()
        assert commands.entries(cache)[0]["valid"] is False
    finally:
        cache.close()
