"""What the ``sqla-querycache`` shell command does, as plain functions.

Each function takes a :class:`~sqla_querycache.QueryCache` first (except
:func:`demo`) and returns plain data (a list of dicts, one per row), so it is
the Python API too::

    from sqla_querycache import commands
    commands.entries(cache, region="default", limit=20)

The command line is generated from these signatures and docstrings
(:mod:`.cli`); :data:`COMMANDS` lists what it offers.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from . import codec
from .cache import QueryCache
from .exc import ConfigurationError, QueryCacheError
from .regions import RegionStore
from .stats import Report, display_tables
from .versions import RedisVersions

Rows = list[dict[str, Any]]


def _entry_keys(cache: QueryCache, region: str) -> Iterator[str]:
    """Keys of the entries of ``region`` (keys name their region)."""
    store = cache._region(region)
    prefix = f"{cache.namespace}:q:{region}:"
    if store.redis is not None:
        for key in store.redis.scan_iter(match=prefix + "*", count=500):
            yield key.decode() if isinstance(key, bytes) else key
        return
    data = getattr(store.backend, "_cache", None)  # dogpile's memory backends
    if isinstance(data, dict):
        yield from (k for k in list(data) if isinstance(k, str) and k.startswith(prefix))
        return
    raise ConfigurationError(f"region {region!r} ({store.kind}) cannot list its keys")


def _region_entries(cache: QueryCache, region: str) -> Iterator[tuple[str, bytes, Any]]:
    """``(key, raw, decoded entry or the error decoding it)`` for the entries of ``region``."""
    store = cache._region(region)
    for key in _entry_keys(cache, region):
        raw = store.get(key)
        if raw is None:  # expired or evicted meanwhile
            continue
        try:
            entry = codec.unpackb(cache.sealer.open(key, raw))  # verified with a secret
            if entry[0] != codec.FORMAT_VERSION:
                raise codec.CorruptEntry(f"entry format {entry[0]}")
        except Exception as err:
            yield key, raw, err
            continue
        yield key, raw, entry


def _location(store: RegionStore) -> str | None:
    """Where a region keeps its entries, without credentials."""
    if store.redis is None:
        return "this process" if isinstance(getattr(store.backend, "_cache", None), dict) else None
    kw = getattr(store.redis.connection_pool, "connection_kwargs", {})
    if kw.get("path"):
        return f"unix://{kw['path']}?db={kw.get('db', 0)}"
    user = f"{kw['username']}@" if kw.get("username") else ""
    return f"redis://{user}{kw.get('host')}:{kw.get('port')}/{kw.get('db', 0)}"


def _count(cache: QueryCache, region: str) -> Any:
    try:
        return sum(1 for _ in _entry_keys(cache, region))
    except Exception as err:
        return f"? ({type(err).__name__})"


def regions(cache: QueryCache) -> Rows:
    """The regions: backend, location, expiration, entries stored, hits and misses of every
    process (with Redis versions; of this process otherwise: see ``scope``)."""
    scope = "app" if cache._app_stats is not None else "process"
    try:
        stats = cache.stats(scope)
    except Exception:  # the shared store is down: this process's, said so
        scope, stats = "process", cache.stats()
    out: Rows = []
    for name, store in cache.regions.items():
        s = stats[name]
        out.append({
            "region": name, "backend": store.kind.removesuffix("Backend"),
            "location": _location(store), "expiration": store.expiration_time,
            "entries": _count(cache, name), "hits": s["hits"], "misses": s["misses"],
            "hit_ratio": s["hit_ratio"], "scope": scope,
        })  # fmt: skip
    return out


def entries(
    cache: QueryCache,
    region: str = "default",
    limit: int = 50,
    show_params: bool = False,
    url: str | None = None,
) -> Rows:
    """Entries of one region: key, size, age, TTL left, rows, tables, SQL, parameters, valid.

    :param region: the region to list
    :param limit: list at most this many entries
    :param show_params: show the parameter values (masked as *** otherwise)
    :param url: the application's database URL, to check validity against the
        "sql" version store
    """
    out: Rows = []
    bind = _bind(url)
    sql = _sql_texts(cache)
    for key, raw, entry in _region_entries(cache, region):
        if len(out) >= limit:
            break
        out.append(_describe_entry(cache, region, key, raw, entry, sql, show_params, bind))
    return out


def show(cache: QueryCache, key: str, show_params: bool = False, url: str | None = None) -> Rows:
    """One entry, in full: its statement, parameters, tables, versions, age, TTL, validity.

    :param key: the entry's key (as ``entries`` lists it)
    :param show_params: show the parameter values (masked as *** otherwise)
    :param url: the application's database URL (for the "sql" version store)
    """
    parts = key.split(":")
    if len(parts) < 4 or parts[1] != "q":
        raise QueryCacheError(f"{key!r} is not an entry key (namespace:q:region:hash)")
    region = parts[2]
    store = cache._region(region)
    raw = store.get(key)
    if raw is None:
        raise QueryCacheError(f"no entry {key!r} in region {region!r} (expired or evicted?)")
    try:
        entry: Any = codec.unpackb(cache.sealer.open(key, raw))
        if entry[0] != codec.FORMAT_VERSION:
            raise codec.CorruptEntry(f"entry format {entry[0]}")
    except Exception as err:
        entry = err
    row = _describe_entry(cache, region, key, raw, entry, _sql_texts(cache), show_params,
                          _bind(url))  # fmt: skip
    row["region"] = region
    if not isinstance(entry, Exception):
        row["depends_on"] = list(entry[3])  # every version name, internal ones included
        row["created"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry[2]))
    return [row]


def _describe_entry(
    cache: QueryCache, region: str, key: str, raw: bytes, entry: Any,
    sql: dict[str, str], show_params: bool, bind: Any,
) -> dict[str, Any]:  # fmt: skip
    row: dict[str, Any] = {"key": key, "bytes": len(raw)}
    if isinstance(entry, Exception):
        row.update(age=None, ttl_left=None, rows=None, tables="", statement=None, sql=None,
                   params=None, valid=f"corrupt ({type(entry).__name__})")  # fmt: skip
        return row
    created, names, versions, payload = entry[2], entry[3], entry[4], entry[6]
    info = entry[7] if len(entry) > 7 and isinstance(entry[7], list) else []
    fp = info[0] if len(info) == 2 and isinstance(info[0], str) else None
    params = info[1] if fp and isinstance(info[1], list) else None
    params = [str(p) for p in params] if params is not None else None
    age = time.time() - created
    row.update(
        age=round(age, 1), ttl_left=_ttl_left(cache, region, key, age), rows=len(payload[4]),
        tables=",".join(display_tables(names)), statement=fp,
        sql=_match_sql(sql, fp),
        params=None if params is None else ", ".join(params if show_params else
                                                     ["***"] * len(params)),
        valid=_still_valid(cache, names, versions, bind),
    )  # fmt: skip
    return row


def _ttl_left(cache: QueryCache, region: str, key: str, age: float) -> float | None:
    store = cache._region(region)
    if store.redis is not None:
        try:
            ms = store.redis.pttl(key)
            if ms is not None and ms >= 0:
                return round(float(ms) / 1000, 1)
        except Exception:
            pass
    exp = store.expiration_time
    if exp is None or exp < 0:
        return None
    return round(max(exp - age, 0.0), 1)


def _sql_texts(cache: QueryCache) -> dict[str, str]:
    """Fingerprint -> SQL text: the app-wide per-statement stats, and this process's."""
    out: dict[str, str] = {}
    try:
        report = cache.report("app") if cache._app_stats is not None else None
    except Exception:
        report = None
    for meta_fp, meta in cache._stats.metas().items():
        out[meta_fp] = meta.sql
    if report is not None:
        for s in report["statements"]:
            out[s["fingerprint"]] = s["sql"]
    return out


def _match_sql(sql: dict[str, str], fp: str | None) -> str | None:
    if not fp:
        return None
    for full, text in sql.items():
        if full.startswith(fp):
            return text
    return None


def _bind(url: str | None) -> Any:
    if not url:
        return None
    from sqlalchemy import create_engine

    return create_engine(url)


#: engines made from --url for the "sql" store (it holds its databases weakly)
_URL_ENGINES: list[Any] = []


def _use_url(cache: QueryCache, url: str | None) -> None:
    """``--url``: the database of a "sql" version store (which a CLI process, having
    run no query, does not know otherwise unless ``versions=engine``)."""
    store: Any = cache.versions
    engine = _bind(url)
    if engine is None:
        engine = _default_bind(cache) if getattr(store, "needs_bind", False) else None
        if engine is None:
            return
    if hasattr(store, "_source"):
        _URL_ENGINES.append(engine)
        store._source(engine)


def identity(cache: QueryCache) -> Rows:
    """The identity region: row and collection entries per table, and this process's
    hits per class."""
    region = cache.identity_region
    if region is None:
        return [{"table": "(identity cache off: QueryCache(identity_region=...))"}]
    per_table: dict[str, dict[str, int]] = {}
    for _key, _raw, entry in _region_entries(cache, region):
        if isinstance(entry, Exception):
            continue
        for name in entry[3]:
            table, kind = _row_level(name)
            if table is not None:
                row = per_table.setdefault(table, {"rows": 0, "collections": 0})
                row[kind] += 1
                break
    out: Rows = [{"table": t, "row_entries": c["rows"], "collection_entries": c["collections"]}
                 for t, c in sorted(per_table.items())]  # fmt: skip
    for name, c in cache.identity_stats().items():
        out.append({"class": name, "hits": c["hits"], "misses": c["misses"],
                    "hit_ratio": c["hit_ratio"]})  # fmt: skip
    return out


def _row_level(name: str) -> tuple[str | None, str]:
    if "#" in name:
        return name.split("#", 1)[0], "rows"
    if "[" in name and not name.endswith("=*]"):
        return name.split("[", 1)[0], "collections"
    return None, ""


def _default_bind(cache: QueryCache) -> Any:
    """The database of a "sql" store: its own engine (``versions=engine``), or the bind
    of the sessionmaker the cache is installed on; None if neither is known."""
    store: Any = cache.versions
    if getattr(store, "engine", None) is not None:
        return store.engine
    inst = cache._installed
    kw = getattr(getattr(inst, "source", None), "kw", None) or {}
    bind = kw.get("bind")
    return getattr(bind, "sync_engine", bind)


def _still_valid(cache: QueryCache, names: list[str], versions: list[int], bind: Any = None) -> Any:
    store = cache.versions
    if getattr(store, "needs_bind", False) and bind is None:
        bind = _default_bind(cache)
        if bind is None:
            return "unknown (sql store: give --url)"
    try:
        current = store.read(names, bind) if bind is not None else store.read(names)
    except Exception as err:
        return f"unknown ({type(err).__name__})"
    return current == versions


def _known_tables(cache: QueryCache) -> list[str]:
    """Every name with a version: all of them in Redis, those this process saw otherwise."""
    store = cache.versions
    if isinstance(store, RedisVersions):
        prefix = store._vkeys([""])[0]
        keys = store.client.scan_iter(match=prefix + "*", count=500)
        return sorted(k.decode()[len(prefix):] if isinstance(k, bytes) else k[len(prefix):]
                      for k in keys)  # fmt: skip
    return sorted(cache.table_stats())


def _stored_names(cache: QueryCache) -> list[str]:
    """Names the shared version store holds (Redis keys, rows of the sql store's table)."""
    store: Any = cache.versions
    if isinstance(store, RedisVersions):
        return _known_tables(cache)
    if getattr(store, "needs_bind", False):
        bind = _default_bind(cache)
        targets = [bind] if bind is not None else []
        from sqlalchemy import select

        names: list[str] = []
        for engine in targets + [e for e in _URL_ENGINES if e is not bind]:
            try:
                with engine.connect() as conn:
                    names += [r[0] for r in conn.execute(select(store.table.c.name))]
            except Exception:  # no table yet: nothing known from there
                continue
        return names
    return []


def _app_metadata(cache: QueryCache) -> list[Any]:
    """The MetaData of the application module holding the cache (its declarative bases)."""
    import types

    from sqlalchemy import MetaData

    out: list[Any] = []
    namespace = _namespace_of(cache, None)
    values = list(namespace.values())
    for value in list(values):  # and one level down: ``from app import models``
        if isinstance(value, types.ModuleType) and value.__name__ != "sqlalchemy":
            values += list(vars(value).values())
    for value in values:
        try:
            md = value if isinstance(value, MetaData) else getattr(value, "metadata", None)
        except Exception:
            continue
        if isinstance(md, MetaData) and md not in out:
            out.append(md)
    return out


def check_tables(cache: QueryCache, tables: list[str]) -> None:
    """Raise :class:`~.exc.UnknownTableError` for a name that neither the
    application's MetaData nor the version store knows, listing the known tables
    (internal names such as ``@all`` never among them)."""
    from . import tracking
    from .cache import _check_known

    for md in _app_metadata(cache):
        tracking.remember_metadata(md)
    try:
        stored = _stored_names(cache)
    except Exception:  # the store is down: the MetaData alone (invalidate() will say more)
        stored = []
    _check_known(tables, display_tables(stored))


# ------------------------------------------------------------------ stats


def _report(cache: QueryCache, scope: str) -> Report:
    if scope == "app" and cache._app_stats is None:
        return cache.report("process")  # no shared store: say so in the rows' scope
    return cache.report(scope)


def stats(
    cache: QueryCache, by: str = "region", scope: str = "app", limit: int = 50,
    url: str | None = None,
) -> Rows:  # fmt: skip
    """Counters of every process (summed through the shared store): per region, table or
    statement.

    :param by: region, table, statement or process
    :param scope: app (every process; needs Redis or "sql" versions) or process (this one)
    :param limit: at most this many rows (statements: the most called first)
    :param url: the application's database URL (for the "sql" version store)
    """
    _use_url(cache, url)
    report = _report(cache, scope)
    return _rows(report, by)[:limit]


def _rows(report: Report, by: str) -> Rows:
    if by == "region":
        out: Rows = []
        for name, r in report["regions"].items():
            row: dict[str, Any] = {"region": name, "scope": report["scope"]}
            row.update({k: v for k, v in r.items() if k != "bypass_reasons"})
            row["bypass_reasons"] = ", ".join(f"{k}={v}" for k, v in r["bypass_reasons"].items())
            out.append(row)
        return out
    if by == "table":
        return [{"table": name, **t} for name, t in report["tables"].items()]
    if by == "statement":
        out = []
        for s in report["statements"]:
            row = dict(s)
            row["tables"] = ",".join(s["tables"])
            row["bypass_reasons"] = ", ".join(f"{k}={v}" for k, v in s["bypass_reasons"].items())
            out.append(row)
        return out
    if by == "process":
        return [dict(p) for p in report["processes"]]
    raise ConfigurationError(f"--by must be region, table, statement or process, not {by!r}")


def top(
    cache: QueryCache,
    by: str = "statement",
    interval: float = 2.0,
    iterations: int = 0,
    once: bool = False,
    limit: int = 20,
    url: str | None = None,
) -> Iterator[Rows]:
    """A live view of every process's counters, refreshed: calls and hits per second since
    the last refresh.

    :param by: statement, table or region
    :param interval: seconds between two refreshes
    :param iterations: stop after this many refreshes (0: until Ctrl-C)
    :param once: one refresh (the totals), then stop
    :param limit: at most this many rows, the busiest first
    :param url: the application's database URL (for the "sql" version store)
    """
    _use_url(cache, url)
    if once:
        iterations = 1
    key = {"statement": "fingerprint", "table": "table", "region": "region"}.get(by)
    if key is None:
        raise ConfigurationError(f"--by must be statement, table or region, not {by!r}")
    before: dict[Any, dict[str, Any]] = {}
    then = None
    n = 0
    while True:
        report = _report(cache, "app")
        rows = _rows(report, by)
        now = report["time"]
        for row in rows:
            calls = row.get("calls", row.get("hits", 0) + row.get("misses", 0))
            prev = before.get(row[key])
            if prev is not None and then is not None and now > then:
                dt = now - then
                row["calls_per_s"] = round((calls - prev["calls"]) / dt, 1)
                row["hits_per_s"] = round((row["hits"] - prev["hits"]) / dt, 1)
            else:
                row["calls_per_s"] = row["hits_per_s"] = None
            before[row[key]] = {"calls": calls, "hits": row["hits"]}
        rows.sort(key=lambda r: (-(r["calls_per_s"] or 0), -(r.get("calls") or r["hits"])))
        then = now
        yield rows[:limit]
        n += 1
        if iterations and n >= iterations:
            return
        time.sleep(interval)


def versions(cache: QueryCache, tables: list[str] | None = None) -> Rows:
    """Current versions of tables (every table the version store holds when none given).

    :param tables: the tables to show
    """
    store = cache.versions
    if getattr(store, "needs_bind", False):
        raise ConfigurationError("the sql version store lives in the database: query its table")
    names = list(tables or _known_tables(cache))
    if not names:
        return []
    current = store.read(names)
    if current is None:
        return [{"table": n, "version": "being written"} for n in names]
    return [{"table": n, "version": v} for n, v in zip(names, current[-len(names) :])]


def invalidate(
    cache: QueryCache,
    tables: list[str] | None = None,
    region: str | None = None,
    everything: bool = False,
    force: bool = False,
    url: str | None = None,
) -> Rows:
    """Invalidate tables, a region, or everything, in every process sharing the versions.

    :param tables: invalidate every entry that read these tables (each must be a table
        of the application's MetaData or of the version store, unless --force)
    :param region: invalidate every entry of this region
    :param everything: invalidate every entry of every region
    :param force: accept table names nothing knows (a table only the database has)
    :param url: the application's database URL (for the "sql" version store)
    """
    _use_url(cache, url)
    if tables and not force:
        check_tables(cache, tables)
    if everything:
        cache.invalidate_all()
        done = ["everything"]
    elif region:
        cache.invalidate_region(region)
        done = [f"region {region}"]
    elif tables:
        done = display_tables(cache.invalidate(tables=tables, strict=False))
    else:
        raise ConfigurationError("say what to invalidate: --tables, --region or --everything")
    # QueryCache fails open and retries later; a one-shot caller must know now
    if not cache._writer.failed.retry():
        raise QueryCacheError(f"the version store {cache.versions!r} did not take the "
                              f"invalidation of {', '.join(done)}")  # fmt: skip
    return [{"invalidated": what} for what in done]


def _namespace_of(cache: QueryCache, module: str | None) -> dict[str, Any]:
    """The globals of ``module``, or of the module that holds ``cache`` (the app's)."""
    import importlib

    if module:
        return dict(vars(importlib.import_module(module)))
    for mod in list(sys.modules.values()):
        try:
            values = vars(mod).values()
            if any(v is cache for v in values):
                return dict(vars(mod))
        except Exception:  # a module without a __dict__, or one that refuses
            continue
    return {}


def explain(
    cache: QueryCache, expression: str, module: str | None = None, url: str | None = None
) -> Rows:
    """Would a statement be cached? Its region, key, tables, and why not (nothing is run).

    :param expression: a Python expression giving the statement, evaluated in the
        namespace of the application module holding the cache, e.g.
        "select(Product).where(Product.id == 3)"
    :param module: evaluate in this module's namespace instead (package.module)
    :param url: the database URL to plan it for (default: the installed
        sessionmaker's bind)
    """
    import sqlalchemy

    from . import options

    namespace: dict[str, Any] = {
        "select": sqlalchemy.select, "text": sqlalchemy.text, "sa": sqlalchemy,
        "FromCache": options.FromCache, "NoCache": options.NoCache,
    }  # fmt: skip
    namespace.update(_namespace_of(cache, module))
    try:
        statement = eval(expression, namespace)  # the operator's own expression
    except Exception as err:
        raise QueryCacheError(f"cannot evaluate {expression!r}: {type(err).__name__}: {err}")
    bind = _bind(url)
    try:
        found = cache.explain(statement, bind)
    finally:
        if bind is not None:
            bind.dispose()
    return [found.as_dict()]


def disable(cache: QueryCache, url: str | None = None) -> Rows:
    """Disable caching app-wide: every process sharing the version store bypasses the
    cache within a second (writes still invalidate). Undo with ``enable``.

    :param url: the application's database URL (for the "sql" version store)
    """
    _use_url(cache, url)
    cache.disable_app_wide()
    return [{"caching": "disabled app-wide", "versions": repr(cache.versions)}]


def enable(cache: QueryCache, url: str | None = None) -> Rows:
    """Enable caching app-wide again (after ``disable``), within a second.

    :param url: the application's database URL (for the "sql" version store)
    """
    _use_url(cache, url)
    cache.enable_app_wide()
    return [{"caching": "enabled app-wide", "versions": repr(cache.versions)}]


def demo(rounds: int = 60, url: str = "sqlite://") -> Rows:
    """Run the shop demo: uncached vs cached timings of four workloads (memory regions).

    :param rounds: timed calls per workload and variant
    :param url: the database (default: SQLite in memory); only its shop_* tables are
        dropped and recreated
    """
    from . import demo as shop

    return shop.run_demo(url, rounds=rounds)


def _print_demo(rows: Rows) -> None:
    from . import demo as shop

    shop.render_table(rows)


def exporter(
    cache: QueryCache,
    port: int = 9300,
    address: str = "127.0.0.1",
    scope: str = "app",
    seconds: float = 0.0,
) -> Rows:
    """Serve the counters on a Prometheus /metrics endpoint (app-wide: run ONE next to the app).

    :param port: the HTTP port
    :param address: the address to listen on
    :param scope: app (every process, summed; needs Redis versions) or process
    :param seconds: stop after this long (0: until Ctrl-C)
    """
    from .metrics import PrometheusCollector

    try:
        from prometheus_client import CollectorRegistry, start_http_server
    except ImportError as err:
        raise ConfigurationError("pip install 'sqla_querycache[prometheus]'") from err
    registry = CollectorRegistry()
    registry.register(PrometheusCollector(cache, scope=scope))
    server, thread = start_http_server(port, addr=address, registry=registry)
    print(f"serving http://{address}:{port}/metrics", file=sys.stderr, flush=True)
    try:
        if seconds:
            time.sleep(seconds)
        else:
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        thread.join(5)
    return [{"served": f"http://{address}:{port}/metrics", "scope": scope}]


class Command(NamedTuple):
    """One subcommand of the CLI."""

    fn: Callable[..., Any]  # Rows, or an iterator of Rows with ``stream``
    #: whether ``fn`` takes the user's QueryCache (``--cache module:attribute``) first
    needs_cache: bool = True
    #: prints the rows in place of the CLI's generic table
    render: Callable[[Rows], None] | None = None
    #: ``fn`` yields Rows again and again (``top``): each printed as it comes
    stream: bool = False


#: the commands the CLI offers, in help order
COMMANDS: dict[str, Command] = {
    "regions": Command(regions),
    "stats": Command(stats),
    "top": Command(top, stream=True),
    "entries": Command(entries),
    "show": Command(show),
    "versions": Command(versions),
    "invalidate": Command(invalidate),
    "identity": Command(identity),
    "explain": Command(explain),
    "exporter": Command(exporter),
    "disable": Command(disable),
    "enable": Command(enable),
    "demo": Command(demo, needs_cache=False, render=_print_demo),
}
