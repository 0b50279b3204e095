"""Write-path cost: a one-row UPDATE + commit, with and without the cache installed.

Two kinds of write: a bulk ``UPDATE`` executed in the session, then ``commit()``
(its tables are marked when the statement runs, before ``commit()``), and an ORM
object change (``get``, set an attribute, ``commit()``: the flush inside
``commit()`` writes, so its mark is sent within the commit).

    QC_PG_URL=postgresql+psycopg://root@127.0.0.1:5432/test \\
    QC_REDIS_URL=redis://127.0.0.1:6379/0 python -m tests.benchmarks.write_path

The cache's engine listeners are process-wide, so the two variants are
measured by installing and uninstalling the cache in alternating blocks of
one run; the figure is the ratio of the medians. Goal: <= 1.25 on
PostgreSQL + Redis (version store and region both in Redis).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

from sqlalchemy import Integer, String, create_engine, update
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

GOAL = 1.25


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "qc_bench_item"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(40))


def _one_commit(maker: Any, i: int) -> float:
    t = time.perf_counter()
    with maker() as s:
        s.execute(update(Item).where(Item.id == i % 100).values(name=f"n{i}"))
        s.commit()
    return time.perf_counter() - t


def _one_orm_commit(maker: Any, i: int) -> float:
    t = time.perf_counter()
    with maker() as s:
        item = s.get(Item, i % 100)
        assert item is not None
        item.name = f"o{i}"
        s.commit()
    return time.perf_counter() - t


KINDS = {"bulk UPDATE, commit()": _one_commit, "ORM change, commit()": _one_orm_commit}


def measure(db_url: str, redis_url: str, rounds: int = 15, per_block: int = 40) -> dict[str, Any]:
    from dogpile.cache import make_region

    from sqla_querycache import QueryCache

    engine = create_engine(db_url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    maker = sessionmaker(engine)
    with maker() as s:
        s.add_all([Item(id=i, name="x") for i in range(100)])
        s.commit()
    region = make_region().configure("dogpile.cache.redis", arguments={"url": redis_url})
    cache = QueryCache(regions={"default": region}, versions=redis_url, namespace="qcbench")
    out: dict[str, Any] = {}
    i = 0
    for kind, one in KINDS.items():
        plain: list[float] = []
        cached: list[float] = []
        for _ in range(3 * per_block):  # warm both paths
            i += 1
            one(maker, i)
        for r in range(rounds):
            order = (False, True) if r % 2 else (True, False)
            for with_cache in order:
                if with_cache:
                    cache.install(maker)
                samples = cached if with_cache else plain
                for _ in range(per_block):
                    i += 1
                    samples.append(one(maker, i))
                if with_cache:
                    cache.uninstall()
        p, c = statistics.median(plain), statistics.median(cached)
        out[kind] = {"commits_per_variant": len(plain), "ratio": c / p, "goal": GOAL,
                     "met": c / p <= GOAL}  # fmt: skip
    cache.versions.close()
    Base.metadata.drop_all(engine)
    engine.dispose()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    db, redis_url = os.environ.get("QC_PG_URL"), os.environ.get("QC_REDIS_URL")
    if not db or not redis_url:
        print("FAILED: set QC_PG_URL and QC_REDIS_URL", file=sys.stderr)
        return 2
    results = measure(db, redis_url, rounds=4 if args.quick else args.rounds)
    for kind, result in results.items():
        print(f"write path (PostgreSQL + Redis), {kind}: commit with cache / without = "
              f"{result['ratio']:.3f} (median of {result['commits_per_variant']} commits each; "
              f"goal <= {GOAL}: {'met' if result['met'] else 'NOT met'})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
