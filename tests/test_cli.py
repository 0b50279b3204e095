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
from pathlib import Path
from string import Template
from typing import Any

import pytest

from sqla_querycache import cli, commands, demo

ROOT = Path(__file__).resolve().parents[1]

APP = Template('''
"""An application with a query cache, as the CLI finds it: ``--cache qc_app:cache``."""
from dogpile.cache import make_region
from sqlalchemy import create_engine, select
from sqlalchemy.orm import sessionmaker

from sqla_querycache import FromCache, QueryCache
from tests import models

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
    yield module
    module.cache.uninstall()
    module.cache.versions.close()
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
    assert rows["default"]["hit_ratio"] == "-"  # the CLI process has looked nothing up

    data = {r["region"]: r for r in as_json(tmp_path, "regions")}
    assert data["default"]["entries"] == 3 and data["default"]["expiration"] == 600


def test_entries_lists_keys_sizes_and_validity(app: Any, tmp_path: Path) -> None:
    rows = table(ok(tmp_path, "entries", "--region", "default"))
    assert len(rows) == 3
    assert all(r["key"].startswith("qc:q:default:") and len(r["key"]) == 45 for r in rows)
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
    args = {"regions": [], "entries": [], "versions": ["--tables", "tag"],
            "invalidate": ["--tables", "tag"], "identity": [], "disable": [], "enable": []}  # fmt: skip
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
    assert default.split()[-3:] == ["1", "3", "25.0%"]  # hits, misses, hit ratio
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
