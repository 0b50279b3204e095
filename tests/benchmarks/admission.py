"""Admission under writes: uncached vs cached (always) vs cached (adaptive), side by side.

    QC_PG_URL=postgresql+psycopg://root@127.0.0.1:5432/test \\
    QC_REDIS_URL=redis://127.0.0.1:6379/0 python -m tests.benchmarks.admission [--markdown]

The workload: blocks of 20 reads of one demo workload, then one write that
commits an UPDATE to a table the read reads (``shop_product``'s price for the
category page, the lookup and the report; ``shop_order_item``'s quantity for a
customer's orders). Keys are skewed: 80% of the category pages and customers
asked for are 20% of them (the lookup and the report have one key each).

Three variants, each its own sessionmaker: ``uncached`` (no cache consulted),
``always`` (``QueryCache(admission="always")``: every read looks up, every miss
stores) and ``adaptive`` (the default). One block of each per round, in an
order shuffled every round, with the same keys for the three; the figure is the
median over rounds of a block's mean read time (the misses are the block's
dear reads: a median of single reads would hide them). Writes are not timed.
A warm-up of ``--warmup`` blocks per variant lets the adaptive cache learn
first (its evidence threshold is the default, 50 lookups a shape).

Every engine-level listener of both caches is installed for all three
variants (writes must invalidate): "uncached" is the application with the
extension installed and the query not tagged.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from typing import Any

from dogpile.cache import make_region
from sqlalchemy import create_engine, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from sqla_querycache import FromCache, QueryCache, demo

from .bench import redis_server

BACKENDS = ("sqlite-memory", "sqlite-redis", "postgresql-redis")
WORKLOADS = ("category_page", "customer_orders", "lookup_5", "revenue_report")
VARIANTS = ("uncached", "always", "adaptive")
READS_PER_WRITE = 20


def _skewed(rng: random.Random, n: int) -> int:
    """1..n, 80% of the draws on the first 20% of the ids."""
    hot = max(1, n // 5)
    return rng.randint(1, hot) if rng.random() < 0.8 else rng.randint(hot + 1, n)


def _reads(workload: str, rng: random.Random) -> list[tuple[Any, ...]]:
    if workload == "category_page":
        return [(_skewed(rng, 100),) for _ in range(READS_PER_WRITE)]
    if workload == "customer_orders":
        return [(_skewed(rng, 500),) for _ in range(READS_PER_WRITE)]
    if workload == "lookup_5":
        return [(demo.lookup_ids(),)] * READS_PER_WRITE
    return [()] * READS_PER_WRITE


def _write(session: Any, workload: str, rng: random.Random) -> None:
    if workload == "customer_orders":
        session.execute(update(demo.OrderItem).where(demo.OrderItem.id == rng.randint(1, 6000))
                        .values(quantity=rng.randint(1, 9)))  # fmt: skip
    else:
        session.execute(update(demo.Product).where(demo.Product.id == rng.randint(1, 5000))
                        .values(price=rng.randint(100, 9999) / 100))  # fmt: skip
    session.commit()


class Variant:
    def __init__(self, name: str, engine: Engine, cache: QueryCache | None):
        self.name = name
        self.cache = cache
        self.maker = sessionmaker(engine)
        if cache is not None:
            cache.install(self.maker)
        self.option = FromCache() if cache is not None else None

    def block(self, workload: str, reads: list[tuple[Any, ...]], wrng: random.Random) -> float:
        """20 reads (timed: their mean) and one write (not timed)."""
        fn = demo.WORKLOADS[workload]
        t = 0.0
        for args in reads:
            t0 = time.perf_counter()
            with self.maker() as s:
                fn(s, *args, cache=self.option)
            t += time.perf_counter() - t0
        with self.maker() as s:
            _write(s, workload, wrng)
        return t / len(reads)


def _cache(kind: str, redis_url: str | None, namespace: str, mode: str) -> QueryCache:
    if kind == "memory":
        region = make_region().configure("dogpile.cache.memory", expiration_time=600)
        return QueryCache(regions={"default": region}, namespace=namespace, admission=mode)
    region = make_region().configure("dogpile.cache.redis", expiration_time=600,
                                     arguments={"url": redis_url})  # fmt: skip
    return QueryCache(regions={"default": region}, versions=redis_url, namespace=namespace,
                      admission=mode)  # fmt: skip


def measure(backend: str, engine: Engine, redis_url: str | None, run_id: str, rounds: int,
            warmup: int, workloads: tuple[str, ...]) -> list[dict[str, Any]]:  # fmt: skip
    kind = "memory" if backend == "sqlite-memory" else "redis"
    out = []
    for w in workloads:
        caches = {m: _cache(kind, redis_url, f"qca{run_id}{backend[0]}{m[:2]}{w[:3]}", m)
                  for m in ("always", "adaptive")}  # fmt: skip
        variants = [Variant("uncached", engine, None),
                    Variant("always", engine, caches["always"]),
                    Variant("adaptive", engine, caches["adaptive"])]  # fmt: skip
        samples: dict[str, list[float]] = {v.name: [] for v in variants}
        order = random.Random(7)
        try:
            for r in range(warmup + rounds):
                reads = _reads(w, random.Random(r))
                order.shuffle(variants)
                for v in variants:
                    t = v.block(w, reads, random.Random(10_000 + r))
                    if r >= warmup:
                        samples[v.name].append(t)
            row: dict[str, Any] = {"backend": backend, "workload": w}
            for name in VARIANTS:
                row[name] = statistics.median(samples[name])
            for name in ("always", "adaptive"):
                st = caches[name].stats()["default"]
                row[f"{name}_hit_ratio"] = st["hit_ratio"]
                row[f"{name}_skipped"] = st["bypass_reasons"].get("not_worth_it", 0)
                row[f"{name}_calls"] = st["calls"]
            states = [s["admission"] for s in caches["adaptive"].report()["statements"]]
            row["adaptive_state"] = ",".join(sorted(set(filter(None, states))))
            out.append(row)
        finally:
            for c in caches.values():
                c.close()
    return out


def render(rows: list[dict[str, Any]], markdown: bool) -> str:
    head = ["backend", "workload", "uncached µs", "always µs", "adaptive µs", "always/uncached",
            "adaptive/uncached", "adaptive/always", "hits always", "hits adaptive",
            "skipped (adaptive)", "adaptive state at the end"]  # fmt: skip
    lines = []
    for r in rows:
        u, a, d = r["uncached"], r["always"], r["adaptive"]

        def pct(x: float | None) -> str:
            return "-" if x is None else f"{x:.0%}"

        lines.append([r["backend"], r["workload"], f"{u * 1e6:,.0f}", f"{a * 1e6:,.0f}",
                      f"{d * 1e6:,.0f}", f"{a / u:.2f}", f"{d / u:.2f}", f"{d / a:.2f}",
                      pct(r["always_hit_ratio"]), pct(r["adaptive_hit_ratio"]),
                      f"{r['adaptive_skipped']}/{r['adaptive_calls']}",
                      r["adaptive_state"]])  # fmt: skip
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(out)
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths))
                     for line in [head, *lines])  # fmt: skip


def _cleanup(url: str, run_id: str) -> None:
    """Delete every key this run wrote (entries, versions, stats)."""
    import redis

    client = redis.Redis.from_url(url)
    for pattern in (f"qca{run_id}*", f"{{qca{run_id}*"):
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    workloads = tuple(w for w in args.workloads.split(",") if w)
    run_id = uuid.uuid4().hex[:6]
    notes: list[str] = []
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, redis_server(notes) as redis_url:
        engines: dict[str, Engine] = {}
        if any(b.startswith("sqlite") for b in backends):
            engines["sqlite"] = create_engine(f"sqlite:///{tmp}/adm.db")
            demo.populate(engines["sqlite"])
        if "postgresql-redis" in backends:
            url = os.environ.get("QC_PG_URL")
            if url:
                engines["postgresql"] = create_engine(url)
                demo.populate(engines["postgresql"])
            else:
                notes.append("postgresql-redis skipped: QC_PG_URL is not set")
        for b in backends:
            engine = engines.get(b.split("-")[0])
            if engine is None or (b.endswith("redis") and redis_url is None):
                continue
            print(f"measuring {b} ...", file=sys.stderr, flush=True)
            rows += measure(b, engine, redis_url, run_id, args.rounds, args.warmup, workloads)
        if redis_url:
            _cleanup(redis_url, run_id)
        if "postgresql" in engines:
            demo.Base.metadata.drop_all(engines["postgresql"])
        for e in engines.values():
            e.dispose()
    print(render(rows, args.markdown))
    print(f"\none write per {READS_PER_WRITE} reads; medians over {args.rounds} rounds of a "
          f"block's mean read time (after {args.warmup} warm-up rounds); load average "
          f"{os.getloadavg()[0]:.2f}; wall time {time.perf_counter() - started:.0f} s")  # fmt: skip
    for n in notes:
        print(f"note: {n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
