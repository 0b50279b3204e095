"""AsyncSession: how long one hit keeps the event loop's thread, per backend.

Run from the repository root (Redis db 2 is flushed)::

    python -m tests.benchmarks.async_hits [redis URL]

A hit is synchronous code in SQLAlchemy's greenlet, on the loop's thread:
the loop runs nothing else meanwhile. With a Redis region or Redis
versions, a lookup includes a blocking round trip of the sync Redis client;
the figure for one plain GET is printed beside each.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time

import redis
from dogpile.cache import make_region
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from sqla_querycache import FromCache, QueryCache
from tests import models
from tests.models import Order

R = sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/2"


async def main():
    url = f"sqlite+aiosqlite:///{tempfile.mkdtemp()}/a.db"
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(models.Base.metadata.create_all)
    async with AsyncSession(engine) as s:
        await s.run_sync(models.populate)
    stmt = select(Order).where(Order.customer_id == 2).order_by(Order.id).options(FromCache())
    cl = redis.Redis.from_url(R)
    for name in ("memory+local", "redis+local", "redis+redis"):
        cl.flushdb()
        region = (
            make_region().configure("dogpile.cache.memory")
            if name.startswith("memory")
            else make_region().configure("dogpile.cache.redis", arguments={"url": R})
        )
        for memo in (1000, 0):
            cache = QueryCache(
                regions={"default": region},
                versions=R if name.endswith("redis") else "local",
                memo_size=memo,
            )
            maker = async_sessionmaker(engine, expire_on_commit=False)
            cache.install(maker)
            async with maker() as s:
                (await s.scalars(stmt)).all()
            times = []
            for _ in range(300):
                async with maker() as s:
                    t0 = time.perf_counter()
                    (await s.scalars(stmt)).all()
                    times.append(time.perf_counter() - t0)
            st = cache.stats()["default"]
            cache.close()
            t0 = time.perf_counter()
            for _ in range(300):
                cl.get("x")
            rt = (time.perf_counter() - t0) / 300
            print(
                f"{name} memo={memo}: hit median {statistics.median(times) * 1e6:.0f} us (hits {st['hits']}); one blocking redis GET {rt * 1e6:.0f} us"
            )
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
