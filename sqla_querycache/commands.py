"""What the ``sqla-querycache`` shell command does, as plain functions.

Each function takes a :class:`~sqla_querycache.QueryCache` first and returns
plain data (lists of dicts), so it is the Python API too::

    from sqla_querycache import commands
    commands.entries(cache, region="default", limit=20)

The command line is generated from these signatures (:mod:`.cli`).
"""

from __future__ import annotations

import time
from typing import Any, Iterator, Optional

from . import codec
from .cache import QueryCache
from .exc import ConfigurationError


def _entry_keys(cache: QueryCache, region: str) -> Iterator[str]:
    store = cache._region(region)
    prefix = f"{cache.namespace}:q:"
    if store.redis is not None:
        for key in store.redis.scan_iter(match=prefix + "*", count=500):
            yield key.decode() if isinstance(key, bytes) else key
        return
    data = getattr(store.backend, "_cache", None)  # dogpile's memory backends
    if isinstance(data, dict):
        yield from (k for k in list(data) if isinstance(k, str) and k.startswith(prefix))
        return
    raise ConfigurationError(f"region {region!r} ({store.kind}) cannot list its keys")


def regions(cache: QueryCache) -> list[dict[str, Any]]:
    """The regions: backend, expiration, entries stored, and this process's counters."""
    stats = cache.stats()
    out = []
    for name, store in cache.regions.items():
        try:
            count: Any = sum(1 for _ in _entry_keys(cache, name))
        except Exception as err:  # unlistable or unreachable: say so, keep going
            count = f"? ({type(err).__name__})"
        s = stats[name]
        out.append({
            "region": name, "backend": store.kind,
            "expiration": store.expiration_time, "entries": count,
            "hits": s["hits"], "misses": s["misses"], "stores": s["stores"],
            "errors": s["errors"], "hit_ratio": s["hit_ratio"],
        })  # fmt: skip
    return out


def entries(cache: QueryCache, region: str = "default", limit: int = 50) -> list[dict[str, Any]]:
    """Entries of one region: key, size, age, rows, tables read and whether still valid."""
    store = cache._region(region)
    out = []
    now = time.time()
    for key in _entry_keys(cache, region):
        if len(out) >= limit:
            break
        raw = store.get(key)
        if raw is None:
            continue
        row: dict[str, Any] = {"key": key, "bytes": len(raw)}
        try:
            fmt, _key, created, names, versions, flags, payload = codec.unpackb(raw)
            row.update(age=round(now - created, 1), rows=len(payload[4]),
                       tables=",".join(n for n in names if not n.startswith("@")))  # fmt: skip
            row["valid"] = _still_valid(cache, names, versions)
        except Exception as err:
            row.update(age=None, rows=None, tables="", valid=f"corrupt ({type(err).__name__})")
        out.append(row)
    return out


def _still_valid(cache: QueryCache, names: list[str], versions: list[int]) -> Any:
    store = cache.versions
    if getattr(store, "needs_bind", False):
        return "unknown (sql store)"
    try:
        current = store.read(names)
    except Exception as err:
        return f"unknown ({type(err).__name__})"
    return current == versions


def versions(cache: QueryCache, tables: Optional[list[str]] = None) -> list[dict[str, Any]]:
    """Current versions of tables (all tables this process has seen when none given)."""
    store = cache.versions
    if getattr(store, "needs_bind", False):
        raise ConfigurationError("the sql version store lives in the database: query its table")
    names = list(tables or sorted(cache.table_stats()) or [])
    if not names:
        return []
    current = store.read(names)
    if current is None:
        return [{"table": n, "version": "being written"} for n in names]
    return [{"table": n, "version": v} for n, v in zip(names, current[-len(names):])]


def invalidate(
    cache: QueryCache,
    tables: Optional[list[str]] = None,
    region: Optional[str] = None,
    everything: bool = False,
) -> list[dict[str, Any]]:
    """Invalidate tables, a region, or everything, in every process sharing the versions."""
    if everything:
        cache.invalidate_all()
        return [{"invalidated": "everything"}]
    if region:
        cache.invalidate_region(region)
        return [{"invalidated": f"region {region}"}]
    if tables:
        return [{"invalidated": name} for name in cache.invalidate(tables=tables)]
    raise ConfigurationError("say what to invalidate: --tables, --region or --everything")


def demo(rounds: int = 0) -> list[dict[str, Any]]:
    """Run the shop demo: SQLite + memory region, uncached vs cached timings."""
    from . import demo as shop

    kwargs = {"rounds": rounds} if rounds else {}
    return shop.run_demo(**kwargs)  # type: ignore[no-any-return]


#: the commands the CLI offers, in help order; ``needs_cache`` marks those
#: that take the user's QueryCache (``--cache module:attribute``)
COMMANDS = {"demo": (demo, False), "regions": (regions, True), "entries": (entries, True),
            "versions": (versions, True), "invalidate": (invalidate, True)}  # fmt: skip
