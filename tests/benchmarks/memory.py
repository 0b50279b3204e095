"""Memory a process spends on the cache, with the default bounds.

Run from the repository root::

    python -m tests.benchmarks.memory [--shapes 10000] [--big 200] [--redis URL]

Two workloads on a file SQLite database, each in a fresh process state:

- ``shapes``: N distinct statement shapes (an ORM select whose SQL differs
  by a literal), each run twice (a miss that stores, then a hit).
- ``big``: N distinct keys whose result is one row of ~0.95 MiB of text
  (just under ``max_entry_bytes`` = 1 MiB), each run twice.

Entries live in a Redis region when ``--redis`` is given (the default is
``redis://127.0.0.1:6379/2``; the database is flushed), so the process's
memory is the cache's own: plans, decoded entries (the memo) and loader
state, plus SQLAlchemy's own caches. Figures: RSS growth (``VmRSS``) over
the run, the memory the memos retain (``tracemalloc``: what
``ReadPath.clear()`` frees), and the memos' own byte estimates.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
import tracemalloc
from typing import Any

from dogpile.cache import make_region
from sqlalchemy import Column, Integer, Text, create_engine, literal_column, select
from sqlalchemy.orm import DeclarativeBase, Session

from sqla_querycache import FromCache, QueryCache

MiB = 1 << 20


class Base(DeclarativeBase):
    pass


class Doc(Base):
    __tablename__ = "doc"
    id = Column(Integer, primary_key=True)
    body = Column(Text)


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def run(kind: str, n: int, redis_url: str) -> dict[str, Any]:
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    engine = create_engine(f"sqlite:///{tempfile.mkdtemp()}/mem.db")
    Base.metadata.create_all(engine)
    big = "x" * (MiB - 50_000)
    with Session(engine) as s:
        s.add_all(Doc(id=i, body=(big if kind == "big" else f"doc {i}")) for i in range(1, 41))
        s.commit()
    region = make_region().configure("dogpile.cache.redis", arguments={"url": redis_url})
    cache = QueryCache(regions={"default": region}).install(Session)  # the default bounds
    rp = cache._reader

    def stmt(i: int) -> Any:
        if kind == "shapes":  # a distinct SQL text, hence a distinct plan, per i
            return select(Doc).where(Doc.id == literal_column(f"{i % 40 + 1} + 0 * {i}"))
        return select(Doc).where(Doc.id == i % 40 + 1, Doc.id != -i)  # one shape, n keys

    gc.collect()
    rss0 = rss()
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with Session(engine) as s:
            for _ in range(2):
                for i in range(n):
                    s.scalars(stmt(i).options(FromCache())).all()
                    s.expunge_all()
        elapsed = time.perf_counter() - started
        gc.collect()
        traced, peak = tracemalloc.get_traced_memory()
        rss1 = rss()
        out = {
            "kind": kind,
            "n": n,
            "plans": len(rp._plans),
            "plan_bytes_estimate": rp._plans.bytes,
            "memo_entries": len(rp.memo),
            "memo_bytes_estimate": rp.memo.bytes,
            "stats": {k: v for k, v in cache.stats()["default"].items() if v},
        }
        rp.clear()
        gc.collect()
        out["memos_retained"] = traced - tracemalloc.get_traced_memory()[0]
        out["traced_growth"] = traced
        out["traced_peak"] = peak
        out["rss_growth"] = rss1 - rss0
        out["seconds"] = elapsed
    finally:
        tracemalloc.stop()
        cache.close()
        engine.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", type=int, default=10_000)
    parser.add_argument("--big", type=int, default=200)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/2")
    args = parser.parse_args()
    for kind, n in (("shapes", args.shapes), ("big", args.big)):
        r = run(kind, n, args.redis)
        print(
            f"{kind}: n={n} plans={r['plans']} (estimate {r['plan_bytes_estimate'] / MiB:.1f} MiB)"
            f" memo={r['memo_entries']} (estimate {r['memo_bytes_estimate'] / MiB:.1f} MiB)"
            f" | memos retain {r['memos_retained'] / MiB:.1f} MiB (tracemalloc)"
            f" | traced growth {r['traced_growth'] / MiB:.1f} MiB, peak"
            f" {r['traced_peak'] / MiB:.1f} MiB | RSS +{r['rss_growth'] / MiB:.1f} MiB"
            f" | {r['seconds']:.1f} s | {r['stats']}"
        )


if __name__ == "__main__":
    main()
