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

import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from . import codec
from .cache import QueryCache
from .exc import ConfigurationError, QueryCacheError
from .regions import RegionStore
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
    """The regions: backend, location, expiration, entries stored, this process's hit ratio."""
    stats = cache.stats()
    out: Rows = []
    for name, store in cache.regions.items():
        s = stats[name]
        out.append({
            "region": name, "backend": store.kind.removesuffix("Backend"),
            "location": _location(store), "expiration": store.expiration_time,
            "entries": _count(cache, name), "hits": s["hits"], "misses": s["misses"],
            "hit_ratio": s["hit_ratio"],
        })  # fmt: skip
    return out


def entries(cache: QueryCache, region: str = "default", limit: int = 50) -> Rows:
    """Entries of one region: key, size, age, rows, tables read and whether still valid.

    :param region: the region to list
    :param limit: list at most this many entries
    """
    out: Rows = []
    now = time.time()
    for key, raw, entry in _region_entries(cache, region):
        if len(out) >= limit:
            break
        row: dict[str, Any] = {"key": key, "bytes": len(raw)}
        if isinstance(entry, Exception):
            row.update(age=None, rows=None, tables="", valid=f"corrupt ({type(entry).__name__})")
        else:
            _fmt, _key, created, names, versions, _flags, payload = entry
            row.update(age=round(now - created, 1), rows=len(payload[4]),
                       tables=",".join(n for n in names if not n.startswith("@")),
                       valid=_still_valid(cache, names, versions))  # fmt: skip
        out.append(row)
    return out


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


def _still_valid(cache: QueryCache, names: list[str], versions: list[int]) -> Any:
    store = cache.versions
    if getattr(store, "needs_bind", False):
        return "unknown (sql store)"
    try:
        current = store.read(names)
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
) -> Rows:
    """Invalidate tables, a region, or everything, in every process sharing the versions.

    :param tables: invalidate every entry that read these tables
    :param region: invalidate every entry of this region
    :param everything: invalidate every entry of every region
    """
    if everything:
        cache.invalidate_all()
        done = ["everything"]
    elif region:
        cache.invalidate_region(region)
        done = [f"region {region}"]
    elif tables:
        done = [n for n in cache.invalidate(tables=tables) if not n.startswith("@")]
    else:
        raise ConfigurationError("say what to invalidate: --tables, --region or --everything")
    # QueryCache fails open and retries later; a one-shot caller must know now
    if not cache._writer.failed.retry():
        raise QueryCacheError(f"the version store {cache.versions!r} did not take the "
                              f"invalidation of {', '.join(done)}")  # fmt: skip
    return [{"invalidated": what} for what in done]


def disable(cache: QueryCache) -> Rows:
    """Disable caching app-wide: every process sharing the version store bypasses the
    cache within a second (writes still invalidate). Undo with ``enable``."""
    cache.disable_app_wide()
    return [{"caching": "disabled app-wide", "versions": repr(cache.versions)}]


def enable(cache: QueryCache) -> Rows:
    """Enable caching app-wide again (after ``disable``), within a second."""
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


class Command(NamedTuple):
    """One subcommand of the CLI."""

    fn: Callable[..., Rows]
    #: whether ``fn`` takes the user's QueryCache (``--cache module:attribute``) first
    needs_cache: bool = True
    #: prints the rows in place of the CLI's generic table
    render: Callable[[Rows], None] | None = None


#: the commands the CLI offers, in help order
COMMANDS: dict[str, Command] = {
    "regions": Command(regions),
    "entries": Command(entries),
    "versions": Command(versions),
    "invalidate": Command(invalidate),
    "identity": Command(identity),
    "disable": Command(disable),
    "enable": Command(enable),
    "demo": Command(demo, needs_cache=False, render=_print_demo),
}
