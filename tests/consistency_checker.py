"""Multi-process consistency checker: writers and readers hammer one cache.

Writers increment counters (ORM bulk UPDATE through a Session, ORM object
changes, Core UPDATE on a plain connection) and log the value each commit
made and the time ``commit()`` returned. Readers log the time each read
*began* and what it saw, through cached queries (a list and a per-row
lookup), each in a fresh Session. A read is stale if it began after a commit
returned and shows an older value. Zero stale reads are allowed.

    QC_PG_URL=postgresql+psycopg://root@127.0.0.1:5432/test \\
    QC_REDIS_URL=redis://127.0.0.1:6379/0 \\
    python -m tests.consistency_checker --seconds 60 --writers 3 --readers 5

Exit status 0 when no stale read was seen (it prints the counts either way).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import sys
import tempfile
import time
from typing import Any

from sqlalchemy import create_engine, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

ROWS = 4


class Base(DeclarativeBase):
    pass


class Counter(Base):
    __tablename__ = "qc_check_counter"
    id: Mapped[int] = mapped_column(primary_key=True)
    value: Mapped[int]


def _process(db_url: str, redis_url: str) -> tuple[Any, Any, Any]:
    """One checker process's engine, QueryCache and the sessionmaker it is installed on."""
    from dogpile.cache import make_region

    from sqla_querycache import QueryCache

    engine = create_engine(db_url)
    region = make_region().configure("dogpile.cache.redis", expiration_time=300,
                                     arguments={"url": redis_url})  # fmt: skip
    cache = QueryCache(regions={"default": region}, versions=redis_url, namespace="qccheck")
    maker = sessionmaker(engine)
    cache.install(maker)
    return engine, cache, maker


def writer(db_url: str, redis_url: str, deadline: float, seed: int, out: str) -> None:
    engine, _, maker = _process(db_url, redis_url)
    rnd = random.Random(seed)
    log = []
    while time.time() < deadline:
        k = rnd.randrange(ROWS)
        kind = rnd.randrange(3)
        if kind == 0:  # ORM bulk UPDATE through the session
            with maker() as s:
                value = s.execute(update(Counter).where(Counter.id == k)
                                  .values(value=Counter.value + 1)
                                  .returning(Counter.value)).scalar_one()  # fmt: skip
                s.commit()
        elif kind == 1:  # an ORM object change (row locked to keep increments exact)
            with maker() as s:
                c = s.scalars(select(Counter).where(Counter.id == k).with_for_update()).one()
                c.value += 1
                value = c.value
                s.commit()
        else:  # Core on a plain connection, no Session
            with engine.begin() as conn:
                value = conn.execute(update(Counter.__table__).where(Counter.id == k)
                                     .values(value=Counter.value + 1)
                                     .returning(Counter.value)).scalar_one()  # fmt: skip
        log.append((time.time(), k, value))  # commit() has returned
        time.sleep(rnd.random() * 0.01)
    with open(out, "w") as f:
        json.dump({"commits": log}, f)


def reader(db_url: str, redis_url: str, deadline: float, seed: int, out: str) -> None:
    from sqla_querycache import FromCache

    _, cache, maker = _process(db_url, redis_url)
    rnd = random.Random(seed)
    log = []
    all_rows = select(Counter).order_by(Counter.id).options(FromCache())
    while time.time() < deadline:
        began = time.time()
        with maker() as s:
            if rnd.random() < 0.5:
                seen = {c.id: c.value for c in s.scalars(all_rows)}
            else:
                k = rnd.randrange(ROWS)
                c = s.scalars(select(Counter).where(Counter.id == k).options(FromCache())).one()
                seen = {c.id: c.value}
        log.append((began, seen))
    with open(out, "w") as f:
        json.dump({"reads": log, "stats": cache.stats()["default"]}, f)


def run(db_url: str, redis_url: str, seconds: float, writers: int, readers: int) -> dict:
    engine = create_engine(db_url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with sessionmaker(engine)() as s:
        s.add_all([Counter(id=i, value=0) for i in range(ROWS)])
        s.commit()
    engine.dispose()
    import redis

    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match="*qccheck*"):
        client.delete(key)
    ctx = multiprocessing.get_context("spawn")
    tmp = tempfile.mkdtemp()
    deadline = time.time() + seconds + 2.0  # +2 s for the processes to start
    procs = []
    for i in range(writers):
        procs.append(ctx.Process(target=writer, args=(db_url, redis_url, deadline, i,
                                                      os.path.join(tmp, f"w{i}.json"))))  # fmt: skip
    for i in range(readers):
        procs.append(ctx.Process(target=reader, args=(db_url, redis_url, deadline, 100 + i,
                                                      os.path.join(tmp, f"r{i}.json"))))  # fmt: skip
    for p in procs:
        p.start()
    for p in procs:
        p.join(seconds + 60)
        if p.exitcode != 0:
            raise RuntimeError(f"{p.name} exited with {p.exitcode}")
    commits, reads, hits, misses = [], [], 0, 0
    for name in os.listdir(tmp):
        with open(os.path.join(tmp, name)) as f:
            data = json.load(f)
        commits += data.get("commits", [])
        reads += data.get("reads", [])
        if "stats" in data:
            hits += data["stats"]["hits"]
            misses += data["stats"]["misses"]
    return check(commits, reads) | {"hits": hits, "misses": misses}


def check(commits: list, reads: list) -> dict:
    """Count reads that began after a commit returned yet show an older value."""
    by_row: dict[int, list[tuple[float, int]]] = {}
    for t, k, value in commits:
        by_row.setdefault(k, []).append((t, value))
    for events in by_row.values():
        events.sort()
    stale = []
    for began, seen in reads:
        for k, value in seen.items():
            newest = max((v for t, v in by_row.get(int(k), []) if t < began), default=0)
            if value < newest:
                stale.append({"began": began, "row": k, "saw": value, "committed": newest})
    return {"commits": len(commits), "reads": len(reads), "stale": len(stale),
            "examples": stale[:5]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--writers", type=int, default=3)
    parser.add_argument("--readers", type=int, default=5)
    parser.add_argument("--db", default=os.environ.get("QC_PG_URL"))
    parser.add_argument("--redis", default=os.environ.get("QC_REDIS_URL"))
    args = parser.parse_args(argv)
    if not args.db or not args.redis:
        print("FAILED: set QC_PG_URL and QC_REDIS_URL (or --db / --redis)", file=sys.stderr)
        return 2
    result = run(args.db, args.redis, args.seconds, args.writers, args.readers)
    print(json.dumps(result, indent=2))
    return 0 if result["stale"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
