"""The identity cache against no cache, side by side in one run.

    python -m tests.benchmarks.identity                      # SQLite + memory
    QC_PG_URL=postgresql+psycopg://root@127.0.0.1:5432/test \\
    QC_REDIS_URL=redis://127.0.0.1:6379/0 python -m tests.benchmarks.identity

Workloads, each in a fresh session per repetition:

- ``get``: ``session.get(Product, id)`` (cycling over 50 ids);
- ``n+1 page``: 50 orders by one query (not cached), then ``order.customer``
  of each (50 lazy loads: what the identity cache serves); two rows from the
  same calls: the whole page, and its 50 lazy loads timed apart (the "+N";
  the orders query costs the same in both columns);
- ``get_many``: ``cache.get_many(session, Product, 50 ids)`` against 50
  uncached ``session.get``.

The cache's listeners are process-wide, so "uncached" and "cached" are
measured in alternating blocks (install, uninstall) of one run; the figure is
the ratio of the medians (cached / uncached: lower is better). Goals (issue):
``get`` <= 0.5 on SQLite + memory and <= 0.4 on PostgreSQL + Redis; the page
>= 3x faster (ratio <= 0.33). A third setup repeats PostgreSQL + Redis with the
opt-in near cache (``NearCache(max_staleness=0.05)``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from sqla_querycache import NearCache, QueryCache, demo

IDS = list(range(1, 51))


GET, PAGE, LAZY, MANY = ("get (50 fresh sessions)", "n+1 page (50 lazy loads)",
                         "n+1 page: its 50 lazy loads alone", "get_many (50 ids)")  # fmt: skip


def _get(maker: Any, cache: QueryCache) -> dict[str, float]:
    t = time.perf_counter()
    for i in IDS:
        with maker() as s:
            s.get(demo.Product, i)
    return {GET: time.perf_counter() - t}


def _page(maker: Any, cache: QueryCache) -> dict[str, float]:
    t = time.perf_counter()
    with maker() as s:
        orders = s.scalars(select(demo.Order).order_by(demo.Order.id).limit(50)).all()
        t2 = time.perf_counter()
        for o in orders:
            o.customer.name  # noqa: B018
        t3 = time.perf_counter()
    return {PAGE: time.perf_counter() - t, LAZY: t3 - t2}


def _get_many(maker: Any, cache: QueryCache, installed: bool) -> dict[str, float]:
    t = time.perf_counter()
    with maker() as s:
        if installed:
            cache.get_many(s, demo.Product, IDS)
        else:
            for i in IDS:
                s.get(demo.Product, i)
    return {MANY: time.perf_counter() - t}


def measure(
    db_url: str, redis_url: str | None, rounds: int, per_block: int, near: float = 0.0
) -> list[dict[str, Any]]:
    from dogpile.cache import make_region

    engine = demo.make_engine(db_url)
    demo.Base.metadata.drop_all(engine)
    demo.Base.metadata.create_all(engine)
    demo.populate(engine)
    maker = sessionmaker(engine)
    if redis_url:
        region = make_region().configure(
            "dogpile.cache.redis", expiration_time=600, arguments={"url": redis_url}
        )
        cache = QueryCache(regions={"id": region}, versions=redis_url, namespace="qcbench_id",
                           identity_region="id",
                           near=NearCache(max_staleness=near) if near else None)  # fmt: skip
    else:
        region = make_region().configure("dogpile.cache.memory", expiration_time=600)
        cache = QueryCache(regions={"id": region}, identity_region="id")
    work: list[Callable[[bool], dict[str, float]]] = [
        lambda on: _get(maker, cache),
        lambda on: _page(maker, cache),
        lambda on: _get_many(maker, cache, on),
    ]
    out = []
    for fn in work:
        times: dict[tuple[str, bool], list[float]] = {}
        cache.install(Session)
        for _ in range(3):  # fill, then a hit path that is warm
            fn(True)
        cache.uninstall()
        for r in range(rounds):
            for on in (False, True) if r % 2 == 0 else (True, False):
                if on:
                    cache.install(Session)
                try:
                    for _ in range(per_block):
                        for name, seconds in fn(on).items():
                            times.setdefault((name, on), []).append(seconds)
                finally:
                    if on:
                        cache.uninstall()
        for name in dict.fromkeys(n for n, _ in times):
            plain = statistics.median(times[(name, False)])
            cached = statistics.median(times[(name, True)])
            out.append({"workload": name, "uncached_ms": plain * 1e3, "cached_ms": cached * 1e3,
                        "ratio": cached / plain,
                        "hit_ratio": cache.stats()["id"]["hit_ratio"]})  # fmt: skip
    cache.close()
    engine.dispose()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-block", type=int, default=5)
    args = parser.parse_args(argv)
    setups = [("sqlite + memory", "sqlite://", None)]
    pg, redis_url = os.environ.get("QC_PG_URL"), os.environ.get("QC_REDIS_URL")
    if pg and redis_url:
        setups.append(("postgresql + redis", pg, redis_url))
        setups.append(("postgresql + redis, NearCache(max_staleness=0.05)", pg, redis_url))
    print("| setup | workload | uncached (median ms) | cached (median ms) | cached / uncached |")
    print("|---|---|---:|---:|---:|")
    for label, db, redis_url in setups:
        near = 0.05 if "NearCache" in label else 0.0
        for row in measure(db, redis_url, args.rounds, args.per_block, near):
            print(f"| {label} | {row['workload']} | {row['uncached_ms']:.2f} | "
                  f"{row['cached_ms']:.2f} | {row['ratio']:.2f} |")  # fmt: skip
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
