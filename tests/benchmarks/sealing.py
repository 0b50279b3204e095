"""What signing and encryption cost a hit: plain vs ``secret=`` vs ``secret=, encrypt=True``.

Run from the repository root::

    python -m tests.benchmarks.sealing [--rounds N] [--backends sqlite-memory,sqlite-redis]
        [--workloads category_page,customer_orders] [--markdown]

Method (as :mod:`tests.benchmarks.bench`): every call is one realistic
request (fresh Session, the demo workload, every attribute read, Session
closed); the variants of one backend, workload and memo setting run
interleaved, one call each per round in an order shuffled every round;
figures are medians over the rounds and the ratios are ratios of medians of
the same run. Every timed call is checked from the counters to be a hit;
a call that was not is discarded and counted. Before timing, one hit of each
variant is checked to return exactly what the database returns.

Two memo settings:

- ``memo=1000`` (the default): a process keeps the entries it decoded, so
  a hit reads only the versions and never opens the stored bytes again:
  what sealing costs a hit there is ~nothing, by construction.
- ``memo=0``: every hit reads the entry and verifies (or decrypts) it: the
  full price, as for the first hit of every key in every process.

Also: seal / open of the real entry bytes alone (``timeit``, best of 15).
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import tempfile
import time
import timeit
import uuid
from typing import Any

from dogpile.cache import make_region
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from sqla_querycache import FromCache, QueryCache, demo

from .bench import (
    WORKLOADS,
    _args,
    machine_info,
    markdown_table,
    redis_server,
    text_table,
)

SECRET = b"benchmark secret: 32 bytes long."
VARIANTS = {"plain": {}, "signed": {"secret": SECRET},
            "encrypted": {"secret": SECRET, "encrypt": True}}  # fmt: skip
BACKENDS = ("sqlite-memory", "sqlite-redis")
MEMOS = (1000, 0)


class Variant:
    def __init__(self, name: str, engine: Any, backend: str, memo: int, url: str | None,
                 run_id: str, workload: str):  # fmt: skip
        self.name = name
        w = list(WORKLOADS).index(workload)
        self.namespace = f"qcs{run_id}{name[0]}{memo}{backend[7]}{w}"
        if backend == "sqlite-redis":
            region = make_region().configure(
                "dogpile.cache.redis", expiration_time=600, arguments={"url": url}
            )
            versions: Any = url
        else:
            region = make_region().configure("dogpile.cache.memory", expiration_time=600)
            versions = "local"
        self.cache = QueryCache(regions={"default": region}, versions=versions,
                                namespace=self.namespace, memo_size=memo,
                                **VARIANTS[name])  # fmt: skip
        self.maker = sessionmaker(engine)
        self.option = FromCache("default")

    def call(self, workload: str) -> Any:
        with self.maker() as session:
            return demo.WORKLOADS[workload](session, *_args(workload), cache=self.option)

    def hits(self) -> int:
        return int(self.cache.stats()["default"]["hits"])

    def entry(self) -> tuple[str, bytes]:
        store = self.cache.regions["default"]
        if store.redis is not None:
            keys = list(store.redis.scan_iter(match=f"{self.namespace}:q:*"))
        else:
            keys = list(store.backend._cache)
        assert len(keys) == 1, keys
        k = keys[0].decode() if isinstance(keys[0], bytes) else keys[0]
        return k, store.get(k)


def measure(engine: Any, backend: str, memo: int, workload: str, rounds: int, url: str | None,
            run_id: str) -> dict[str, Any]:  # fmt: skip
    variants = [Variant(n, engine, backend, memo, url, run_id, workload) for n in VARIANTS]
    plain = sessionmaker(engine)
    with plain() as s:
        expected = demo.WORKLOADS[workload](s, *_args(workload))
    out: dict[str, Any] = {"samples": {}, "discarded": {}, "checks": [], "bytes": {}, "ops": {}}
    installed: Variant | None = None

    def use(v: Variant | None) -> None:  # only the timed variant's listeners (not timed)
        nonlocal installed
        if installed is not v:
            if installed is not None:
                installed.cache.uninstall()
            if v is not None:
                v.cache.install(v.maker)
            installed = v

    for v in variants:
        use(v)
        v.call(workload)  # the miss that stores
        before = v.hits()
        if v.call(workload) != expected or v.hits() != before + 1:
            out["checks"].append(f"{v.name}: first hit wrong or not a hit")
        key, raw = v.entry()
        out["bytes"][v.name] = len(raw)
        sealer = v.cache.sealer
        inner = sealer.open(key, raw)
        n = 2000
        seal = min(timeit.repeat(lambda: sealer.seal(key, inner), number=n, repeat=15)) / n  # noqa: B023
        opened = min(timeit.repeat(lambda: sealer.open(key, raw), number=n, repeat=15)) / n  # noqa: B023
        out["ops"][v.name] = (len(inner), seal, opened)
    order = random.Random(2024)
    names = list(range(len(variants)))
    gc.collect()
    for _ in range(rounds):
        order.shuffle(names)
        for i in names:
            v = variants[i]
            use(v)
            before = v.hits()
            t0 = time.perf_counter()
            v.call(workload)
            elapsed = time.perf_counter() - t0
            ok = v.hits() == before + 1
            out["samples"].setdefault(v.name, []).append(elapsed if ok else None)
            if not ok:
                out["discarded"][v.name] = out["discarded"].get(v.name, 0) + 1
    use(None)
    for v in variants:
        v.cache.close()
    return out


def paired(samples: dict[str, list[float | None]], name: str) -> str:
    """p25-p75 of the per-round ratios name/plain (both ran in the same round)."""
    pairs = [a / b for a, b in zip(samples[name], samples["plain"])
             if a is not None and b is not None]  # fmt: skip
    if len(pairs) < 4:
        return "-"
    q = statistics.quantiles(pairs, n=4)
    return f"{q[0]:.2f}-{q[2]:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.sealing")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--workloads", default="category_page,customer_orders,lookup_5")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    workloads = [w for w in args.workloads.split(",") if w]
    for w in workloads:
        if w not in WORKLOADS:
            parser.error(f"unknown workload {w!r}")
    run_id = uuid.uuid4().hex[:6]
    notes: list[str] = []
    rows, op_rows = [], []
    import os

    load = os.getloadavg()
    started = time.perf_counter()
    need_redis = "sqlite-redis" in backends
    with tempfile.TemporaryDirectory() as tmp, redis_server(notes, need_redis) as url:
        engine = create_engine(f"sqlite:///{tmp}/bench.db")
        demo.populate(engine)
        for backend in backends:
            if backend == "sqlite-redis" and url is None:
                continue
            for w in workloads:
                for memo in MEMOS:
                    print(f"{backend} {w} memo={memo} ...", file=sys.stderr, flush=True)
                    m = measure(engine, backend, memo, w, args.rounds, url, run_id)
                    med = {
                        k: statistics.median([x for x in s if x is not None])
                        for k, s in m["samples"].items()
                    }
                    p = med.get("plain")

                    def r(name: str, med: dict = med, p: Any = p, m: dict = m) -> str:
                        if not p or name not in med:
                            return "-"
                        return f"{med[name] / p:.3f} ({paired(m['samples'], name)})"

                    rows.append([
                        backend, w, str(memo), f"{p * 1e6:,.0f}" if p else "-",
                        f"{med.get('signed', 0) * 1e6:,.0f}", r("signed"),
                        f"{med.get('encrypted', 0) * 1e6:,.0f}", r("encrypted"),
                        str(m["bytes"]["plain"]), str(m["bytes"]["signed"]),
                        str(m["bytes"]["encrypted"]),
                    ])  # fmt: skip
                    if memo == MEMOS[0]:
                        size, _, _ = m["ops"]["plain"]
                        op_rows.append([
                            backend, w, f"{size:,}",
                            f"{m['ops']['signed'][1] * 1e6:.1f}",
                            f"{m['ops']['signed'][2] * 1e6:.1f}",
                            f"{m['ops']['encrypted'][1] * 1e6:.1f}",
                            f"{m['ops']['encrypted'][2] * 1e6:.1f}",
                        ])  # fmt: skip
                    for c in m["checks"]:
                        notes.append(f"CHECK FAILED {backend}/{w}/memo={memo}: {c}")
                    for v, n in m["discarded"].items():
                        notes.append(f"{backend}/{w}/memo={memo}: {n} {v} calls were not hits")
        header = machine_info(None, url, load)
        if url:
            import redis

            client = redis.Redis.from_url(url)
            for pattern in (f"qcs{run_id}*", f"{{qcs{run_id}*"):
                keys = list(client.scan_iter(match=pattern, count=1000))
                if keys:
                    client.delete(*keys)
        engine.dispose()
    table = markdown_table if args.markdown else text_table
    print("\n".join(header))
    print(f"command: python -m tests.benchmarks.sealing {' '.join(sys.argv[1:])}")
    print(f"medians of {args.rounds} interleaved rounds (plain, signed, encrypted shuffled each "
          "round); every timed call a verified hit; beside each ratio of medians, p25-p75 of "
          "the per-round ratios\n")  # fmt: skip
    print(table(["backend", "workload", "memo", "plain hit µs", "signed µs", "signed/plain (p25-p75)",
                 "encrypted µs", "encrypted/plain (p25-p75)", "plain B", "signed B", "encrypted B"],
                rows, left=3))  # fmt: skip
    print("\nseal / open of the stored entry alone (µs, best of 15 x 2000):\n")
    print(table(["backend", "workload", "entry B", "sign", "verify", "encrypt", "decrypt"],
                op_rows))  # fmt: skip
    notes.append(f"wall time {time.perf_counter() - started:.0f} s")
    print("\n" + "\n".join(f"- {n}" for n in notes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
