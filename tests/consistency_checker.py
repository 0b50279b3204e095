"""Multi-process consistency checker: writers and readers hammer one cache.

Writers increment counters (ORM bulk UPDATE through a Session, ORM object
changes, Core UPDATE on a plain connection, and now and then a transaction
that does other work for up to 0.2 s after its write) and log the value each commit
made and the time ``commit()`` returned. Readers log the time each read
*began* and what it saw, through cached queries (a list and a per-row
lookup), each in a fresh Session. A read is stale if it began after a commit
returned and shows an older value. Zero stale reads are allowed.

    QC_PG_URL=postgresql+psycopg://root@127.0.0.1:5432/test \\
    QC_REDIS_URL=redis://127.0.0.1:6379/0 \\
    python -m tests.consistency_checker --seconds 60 --writers 3 --readers 5

With ``--faults`` the processes talk to a redis-server of the checker's own
(``--redis`` is not used) through a fault-injecting proxy (tests/faultproxy.py),
and to the database through a second one with ``--db-faults``. A seeded
schedule (printed; ``--seed`` replays it) pauses, delays, black-holes and resets
the connections, refuses new ones, and kills the server and restarts it empty
or from an older RDB snapshot, while the workload runs; the last part of the
run is fault-free. It also reports commit and read latency per phase (before
any fault, during each kind of fault, after recovery):

    python -m tests.consistency_checker --faults --seconds 600 --writers 2 --readers 2

With ``--near SECONDS`` every process uses the near cache
(``NearCache(max_staleness=SECONDS)``): a read may then miss a commit that
returned less than SECONDS before it began, never one older. The checker
reports how stale each such read was (``staleness_ms``: how long before the
read began the oldest write it missed had returned; its distribution over the
stale reads, p50/p99/max, and over all reads) and fails on any read staler
than the bound (``beyond_bound``). Own writes are not exempt from the count:
a writer process never reads here, so every stale read is another process's.

    python -m tests.consistency_checker --near 0.05 --seconds 60 --writers 2 --readers 3

Exit status 0 when no stale read was seen and no process hung (it prints the
counts either way).
"""

from __future__ import annotations

import argparse
import bisect
import faulthandler
import itertools
import json
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from typing import Any

from sqlalchemy import create_engine, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

ROWS = 4
#: the workers' near cache bound, seconds (set by --near; unset or 0: strict)
NEAR_ENV = "QC_CHECK_NEAR"
#: seconds after the deadline a worker may take to finish before its watchdog ends it
GRACE = 20.0
#: seconds one operation (a transaction, a read) may run before its worker prints its stacks
SLOW = 15.0
#: seconds the workers may take to start (imports, engine, cache) before the run fails
STARTUP = 120.0


class Base(DeclarativeBase):
    pass


class Counter(Base):
    __tablename__ = "qc_check_counter"
    id: Mapped[int] = mapped_column(primary_key=True)
    value: Mapped[int]


def _process(db_url: str, redis_url: str) -> tuple[Any, Any, Any]:
    """One checker process's engine, QueryCache and the sessionmaker it is installed on."""
    from dogpile.cache import make_region

    from sqla_querycache import NearCache, QueryCache

    kw: dict[str, Any] = {}
    if db_url.startswith("postgresql"):  # a database behind a hung proxy: fail, do not wait
        kw["connect_args"] = {"connect_timeout": 3}
    engine = create_engine(db_url, **kw)
    region = make_region().configure("dogpile.cache.redis", expiration_time=300,
                                     arguments={"url": redis_url})  # fmt: skip
    near_s = float(os.environ.get(NEAR_ENV) or 0)
    near = NearCache(max_staleness=near_s) if near_s else None
    cache = QueryCache(regions={"default": region}, versions=redis_url, namespace="qccheck",
                       near=near)  # fmt: skip
    maker = sessionmaker(engine)
    cache.install(maker)
    return engine, cache, maker


class _Log:
    """A worker's log, written once: at the end, or by the watchdog if the worker hangs.

    The watchdog also prints every thread's stack (to stderr) when one
    operation has run for ``SLOW`` seconds: a hang is diagnosable from the run.
    """

    def __init__(self, out: str, deadline: float):
        self.out = out
        self.data: dict[str, Any] = {"errors": 0, "error_kinds": {}, "slow": []}
        self.op_began = 0.0  # when the operation in progress began (0: none)
        self._lock = threading.Lock()
        self._written = False
        watchdog = threading.Thread(target=self._watch, args=(deadline + GRACE,), daemon=True)
        watchdog.start()

    def error(self, err: BaseException) -> None:
        self.data["errors"] += 1
        kinds = self.data["error_kinds"]
        kinds[type(err).__name__] = kinds.get(type(err).__name__, 0) + 1
        time.sleep(0.05)  # a failing service: do not spin

    def write(self, hung: bool = False) -> None:
        with self._lock:
            if self._written:
                return
            self._written = True
            with open(self.out, "w") as f:
                json.dump({**self.data, "hung": hung}, f)

    def _watch(self, hard_deadline: float) -> None:
        reported = 0.0
        while time.time() < hard_deadline:
            time.sleep(1.0)
            began = self.op_began
            if began and began != reported and time.time() - began > SLOW:
                reported = began
                self.data["slow"].append(began)
                name = multiprocessing.current_process().name
                print(f"{name}: one operation has run {SLOW:g} s, since {began:.3f}; stacks:",
                      file=sys.stderr, flush=True)  # fmt: skip
                faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        self.write(hung=True)  # the main thread is stuck in a call that never returned
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        os._exit(3)


def writer(db_url: str, redis_url: str, seconds: float, seed: int, out: str, go: Any) -> None:
    engine, cache, maker = _process(db_url, redis_url)
    rnd = random.Random(seed)
    go(STARTUP)  # every worker is set up: the clock starts
    deadline = time.time() + seconds
    log = _Log(out, deadline)
    commits = log.data["commits"] = []
    while time.time() < deadline:
        k = rnd.randrange(ROWS)
        # a long transaction 1 time in 25: its mark (sent at its first write) keeps
        # readers off the table until it ends, so more would leave little to hit
        kind = 3 if rnd.random() < 0.04 else rnd.randrange(3)
        log.op_began = time.time()
        try:
            if kind == 0:  # ORM bulk UPDATE through the session
                with maker() as s:
                    value = s.execute(update(Counter).where(Counter.id == k)
                                      .values(value=Counter.value + 1)
                                      .returning(Counter.value)).scalar_one()  # fmt: skip
                    began = time.time()
                    s.commit()
            elif kind == 1:  # an ORM object change (row locked to keep increments exact)
                with maker() as s:
                    c = s.scalars(select(Counter).where(Counter.id == k).with_for_update()).one()
                    c.value += 1
                    value = c.value
                    began = time.time()
                    s.commit()
            elif kind == 3:  # a longer transaction: its mark is sent long before the commit
                with maker() as s:
                    value = s.execute(update(Counter).where(Counter.id == k)
                                      .values(value=Counter.value + 1)
                                      .returning(Counter.value)).scalar_one()  # fmt: skip
                    time.sleep(rnd.random() * 0.2)
                    began = time.time()
                    s.commit()
            else:  # Core on a plain connection, no Session
                with engine.connect() as conn:
                    value = conn.execute(update(Counter.__table__).where(Counter.id == k)
                                         .values(value=Counter.value + 1)
                                         .returning(Counter.value)).scalar_one()  # fmt: skip
                    began = time.time()
                    conn.commit()
        except Exception as err:  # a database fault: the commit's fate is unknown, not logged
            log.error(err)
            continue
        commits.append((time.time(), k, value, began))  # commit() has returned
        time.sleep(rnd.random() * 0.01)
    log.write()
    cache.close()


def reader(db_url: str, redis_url: str, seconds: float, seed: int, out: str, go: Any) -> None:
    from sqla_querycache import FromCache

    _, cache, maker = _process(db_url, redis_url)
    rnd = random.Random(seed)
    go(STARTUP)
    deadline = time.time() + seconds
    log = _Log(out, deadline)
    reads = log.data["reads"] = []
    all_rows = select(Counter).order_by(Counter.id).options(FromCache())
    while time.time() < deadline:
        began = log.op_began = time.time()
        try:
            with maker() as s:
                if rnd.random() < 0.5:
                    seen = {c.id: c.value for c in s.scalars(all_rows)}
                else:
                    k = rnd.randrange(ROWS)
                    stmt = select(Counter).where(Counter.id == k).options(FromCache())
                    c = s.scalars(stmt).one()
                    seen = {c.id: c.value}
        except Exception as err:  # a database fault (never a cache one: that is a bug)
            log.error(err)
            continue
        reads.append((began, seen, time.time() - began))
    log.data["stats"] = cache.stats()["default"]
    if cache.near is not None:
        log.data["near"] = cache.near.stats()
    log.write()
    cache.close()


def _prepare(db_url: str) -> None:
    engine = create_engine(db_url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with sessionmaker(engine)() as s:
        s.add_all([Counter(id=i, value=0) for i in range(ROWS)])
        s.commit()
    engine.dispose()


class _StartLine:
    """Workers report set up (``ready``) and wait for the parent's ``start``."""

    def __init__(self, ctx: Any):
        self.ready = ctx.Semaphore(0)
        self.start = ctx.Event()

    def __call__(self, timeout: float) -> None:
        self.ready.release()
        if not self.start.wait(timeout):
            os._exit(4)  # the parent gave up on the run


def _workers(db_url: str, redis_url: str, seconds: float, writers: int, readers: int,
             seed: int, tmp: str) -> tuple[list[Any], float]:  # fmt: skip
    """Start the workers; once all are set up (imports, engine, cache), start their clock.

    Returns the processes and when their clock started: a loaded machine's
    slow start-up does not eat into the run.
    """
    ctx = multiprocessing.get_context("spawn")
    go = _StartLine(ctx)
    procs = []
    for i in range(writers):
        procs.append(ctx.Process(target=writer, name=f"writer-{i}",
                                 args=(db_url, redis_url, seconds, seed * 1000 + i,
                                       os.path.join(tmp, f"w{i}.json"), go)))  # fmt: skip
    for i in range(readers):
        procs.append(ctx.Process(target=reader, name=f"reader-{i}",
                                 args=(db_url, redis_url, seconds, seed * 1000 + 100 + i,
                                       os.path.join(tmp, f"r{i}.json"), go)))  # fmt: skip
    for p in procs:
        p.start()
    limit = time.time() + STARTUP
    ready = 0
    while ready < len(procs):
        if go.ready.acquire(timeout=0.2):
            ready += 1
            continue
        crashed = [p.name for p in procs if p.exitcode not in (None, 0)]
        if crashed or time.time() > limit:
            for p in procs:
                p.kill()
                p.join(5)
            why = f"{crashed[0]} exited" if crashed else f"not set up within {STARTUP:g} s"
            raise RuntimeError(f"the workers did not start: {why}")
    go.start.set()
    return procs, time.time()


def _join(procs: list[Any], deadline: float) -> list[str]:
    """Wait for the workers; end any still alive well after its watchdog. Names of the hung.

    A worker that crashed ends the run at once (the others are killed): its
    log is lost, so the counts would lie.
    """
    hung = []
    limit = deadline + GRACE + 10
    while any(p.is_alive() for p in procs) and time.time() < limit:
        crashed = [p for p in procs if p.exitcode not in (None, 0, 3)]
        if crashed:
            for p in procs:
                p.kill()
                p.join(5)
            raise RuntimeError(f"{crashed[0].name} exited with {crashed[0].exitcode}")
        time.sleep(0.2)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(5)
            hung.append(f"{p.name} (killed)")
        elif p.exitcode == 3:
            hung.append(f"{p.name} (watchdog)")
        elif p.exitcode != 0:
            raise RuntimeError(f"{p.name} exited with {p.exitcode}")
    return hung


def _collect(tmp: str) -> dict[str, Any]:
    out: dict[str, Any] = {"commits": [], "reads": [], "hits": 0, "misses": 0, "errors": 0,
                           "error_kinds": {}}  # fmt: skip
    for name in sorted(os.listdir(tmp)):
        if name == "faults.json":
            continue
        with open(os.path.join(tmp, name)) as f:
            data = json.load(f)
        out["commits"] += data.get("commits", [])
        out["reads"] += data.get("reads", [])
        out["errors"] += data.get("errors", 0)
        for kind, n in data.get("error_kinds", {}).items():
            out["error_kinds"][kind] = out["error_kinds"].get(kind, 0) + n
        if "near" in data:
            out["near_hits"] = out.get("near_hits", 0) + data["near"]["hits"]
        if "stats" in data:
            out["hits"] += data["stats"]["hits"]
            out["misses"] += data["stats"]["misses"]
    return out


def run(db_url: str, redis_url: str, seconds: float, writers: int, readers: int,
        seed: int = 0, near: float = 0.0) -> dict:  # fmt: skip
    os.environ[NEAR_ENV] = str(near)  # the spawned workers read it
    _prepare(db_url)
    import redis

    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match="*qccheck*"):
        client.delete(key)
    tmp = tempfile.mkdtemp()
    procs, t0 = _workers(db_url, redis_url, seconds, writers, readers, seed, tmp)
    hung = _join(procs, t0 + seconds)
    got = _collect(tmp)
    return check(got["commits"], got["reads"], near) | {
        "hits": got["hits"], "misses": got["misses"], "errors": got["errors"], "hung": hung,
        "near_hits": got.get("near_hits", 0),
    }  # fmt: skip


def check(commits: list, reads: list, bound: float = 0.0) -> dict:
    """Count reads that began after a commit returned yet show an older value.

    ``bound`` (the near cache's ``max_staleness``): such a read is allowed when
    the oldest commit it missed returned less than ``bound`` before it began;
    ``beyond_bound`` counts the others. With 0 every stale read is beyond it.
    """
    by_row: dict[int, list[tuple[float, int]]] = {}
    for t, k, value, *_ in commits:
        by_row.setdefault(int(k), []).append((t, value))
    times: dict[int, list[float]] = {}
    newest: dict[int, list[int]] = {}  # per row: the highest value committed by each time
    for k, events in by_row.items():
        events.sort()
        times[k] = [t for t, _ in events]
        newest[k] = list(itertools.accumulate((v for _, v in events), max))
    stale = []
    ages = []  # per read: how stale it was (0: not at all), seconds
    for began, seen, *_ in reads:
        age = 0.0
        for k, value in seen.items():
            i = bisect.bisect_left(times.get(int(k), []), began)  # commits returned before it
            committed = newest[int(k)][i - 1] if i else 0
            if value < committed:
                # the oldest commit it missed: the first whose running max passed the value
                j = bisect.bisect_right(newest[int(k)], value)
                missed = began - times[int(k)][j]
                age = max(age, missed)
                stale.append({"began": began, "row": k, "saw": value, "committed": committed,
                              "ms": round(missed * 1000, 3)})  # fmt: skip
        ages.append(age)
    beyond = [e for e in stale if e["ms"] >= bound * 1000]
    return {"commits": len(commits), "reads": len(reads), "stale": len(beyond),
            "stale_within_bound": len(stale) - len(beyond), "bound_ms": bound * 1000,
            "staleness_ms": {"stale_reads": _percentiles([a for a in ages if a > 0]),
                             "all_reads": _percentiles(ages)},
            "beyond_bound": len(beyond),
            "examples": (beyond or stale)[:5]}  # fmt: skip


# ------------------------------------------------------------------ faults

#: Redis unreachable for the fault's whole window (not merely slow or reset once)
OUTAGES = ("pause", "blackhole", "refuse", "restart-empty", "restart-snapshot")
#: kind -> (min, max) seconds; 0: an instant fault (a burst of resets, a restart's down time)
REDIS_FAULTS = {
    "pause": (0.3, 8.0),  # every byte held, both ways (a hung server, SIGSTOP)
    "delay": (1.0, 6.0),  # latency on every chunk
    "reset": (0.0, 1.5),  # RST every open connection, 1-3 times over the window
    "blackhole": (0.3, 8.0),  # bytes read and discarded; the connections that lost some die
    "refuse": (0.3, 4.0),  # open connections reset, new ones refused
    "restart-empty": (0.0, 3.0),  # kill -9, down for the window, start with no data
    "restart-snapshot": (0.0, 3.0),  # kill -9, down, start from an older RDB snapshot
}
DB_FAULTS = {"db-pause": (0.2, 2.0), "db-delay": (1.0, 4.0), "db-reset": (0.0, 1.0)}


def fault_schedule(seed: int, seconds: float, db_faults: bool = False) -> list[dict[str, Any]]:
    """The faults of a run, from its seed alone: [{"at": s, "kind", "seconds", ...}].

    A fault-free start (the baseline) and end (the last recovery); healthy gaps
    of 1-4 s between faults; a snapshot (``save``) in some gaps, so a restart
    from a snapshot restores one that is seconds to minutes old.
    """
    rnd = random.Random(seed)
    kinds = [*REDIS_FAULTS, *(DB_FAULTS if db_faults else ())]
    table = REDIS_FAULTS | DB_FAULTS
    t = min(5.0, seconds * 0.15)
    end = seconds - max(3.0, seconds * 0.1)
    out: list[dict[str, Any]] = []
    saved = False
    while True:
        gap = rnd.uniform(1.0, 4.0)
        if not saved or rnd.random() < 0.3:
            out.append({"at": round(t + gap * rnd.random(), 3), "kind": "save", "seconds": 0.0})
            saved = True
        t += gap
        kind = rnd.choice(kinds)
        low, high = table[kind]
        fault = {"at": round(t, 3), "kind": kind, "seconds": round(rnd.uniform(low, high), 3)}
        if kind.startswith("restart") and rnd.random() < 0.5:
            fault["seconds"] = 0.0  # restarted at once (a supervisor), as often as not
        if kind.endswith("delay"):
            fault["latency"] = round(rnd.uniform(0.001, 0.1 if kind == "delay" else 0.02), 4)
        if kind.endswith("reset"):
            fault["times"] = rnd.randint(1, 3)
        if t + fault["seconds"] > end:
            return out
        out.append(fault)
        t += fault["seconds"]


class FaultRunner:
    """Applies a schedule from a thread at its wall-clock moments; records what it did."""

    def __init__(self, schedule: list[dict[str, Any]], server: Any, proxy: Any,
                 db_proxy: Any = None):  # fmt: skip
        self.schedule = schedule
        self.server = server
        self.proxy = proxy
        self.db_proxy = db_proxy
        self.applied: list[dict[str, Any]] = []  # {"kind", "start", "end"} (time.time())
        self.snapshot: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self, t0: float) -> FaultRunner:
        self._thread = threading.Thread(target=self._run, args=(t0,), daemon=True,
                                        name="fault-runner")  # fmt: skip
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _sleep_until(self, t: float) -> bool:
        return not self._stop.wait(max(0.0, t - time.time()))

    def _run(self, t0: float) -> None:
        try:
            for fault in self.schedule:
                if not self._sleep_until(t0 + fault["at"]):
                    return
                start = time.time()
                self._apply(fault, start + fault["seconds"])
                if fault["kind"] != "save":
                    self.applied.append({"kind": fault["kind"], "start": start, "end": time.time()})
        except BaseException as err:  # reported by the run: a broken schedule is no result
            self.error = err
        finally:
            self.proxy.resume()
            if self.db_proxy is not None:
                self.db_proxy.resume()
            if self.server.proc is None or self.server.proc.poll() is not None:
                self.server.start()

    def _apply(self, fault: dict[str, Any], until: float) -> None:
        kind = fault["kind"]
        proxy = self.db_proxy if kind.startswith("db-") else self.proxy
        what = kind.removeprefix("db-")
        if kind == "save":
            self.snapshot = self.server.save()
        elif what == "pause":
            proxy.pause()
            self._sleep_until(until)
            proxy.resume()
        elif what == "delay":
            proxy.delay(fault["latency"])
            self._sleep_until(until)
            proxy.resume()
        elif what == "reset":
            times = fault["times"]
            for _ in range(times):
                proxy.reset()
                self._sleep_until(time.time() + fault["seconds"] / times)
        elif kind == "blackhole":
            proxy.drop()
            self._sleep_until(until)
            proxy.resume()  # resets the connections that lost bytes
        elif kind == "refuse":
            proxy.refuse()
            proxy.reset()
            self._sleep_until(until)
            proxy.resume()
        elif kind.startswith("restart"):
            self.server.kill()
            self._sleep_until(until)
            old = self.snapshot if kind == "restart-snapshot" else None
            self.server.start(snapshot=old)
        else:  # pragma: no cover
            raise ValueError(kind)


def _phase(t: float, applied: list[dict[str, Any]]) -> str:
    """The phase of moment ``t``: "baseline" before any fault, the fault's kind inside one, "after" between faults."""
    last = None
    for fault in applied:
        if t < fault["start"]:
            break
        if t <= fault["end"]:
            return fault["kind"]
        last = fault
    return "baseline" if last is None else "after"


def _percentiles(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    values = sorted(values)

    def at(q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 2)

    return {"n": len(values), "p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": at(1.0)}


def latency_by_phase(samples: list[tuple[float, float]], applied: list[dict[str, Any]]) -> dict:
    """(start, seconds) samples -> percentiles per phase, plus "outage" (Redis unreachable)."""
    groups: dict[str, list[float]] = {}
    for start, took in samples:
        phase = _phase(start, applied)
        groups.setdefault(phase, []).append(took)
        if phase in OUTAGES:
            groups.setdefault("outage", []).append(took)
        if phase not in ("baseline", "after"):
            groups.setdefault("during any fault", []).append(took)
    return {phase: _percentiles(v) for phase, v in sorted(groups.items())}


def run_with_faults(db_url: str, seconds: float, writers: int, readers: int, seed: int,
                    db_faults: bool = False, verbose: bool = True,
                    keep: bool = True, near: float = 0.0) -> dict:  # fmt: skip
    """The checker through a fault proxy to a redis-server of its own, under a seeded schedule."""
    from sqlalchemy.engine import make_url

    from .faultproxy import FaultProxy, RedisServer

    os.environ[NEAR_ENV] = str(near)  # the spawned workers read it
    schedule = fault_schedule(seed, seconds, db_faults)
    if verbose:
        kinds = [f["kind"] for f in schedule if f["kind"] != "save"]
        print(f"fault schedule: seed {seed}, {len(kinds)} faults "
              f"({', '.join(f'{k} x{kinds.count(k)}' for k in sorted(set(kinds)))}); "
              f"replay with --seed {seed}", flush=True)  # fmt: skip
    _prepare(db_url)
    server = RedisServer()
    server.start()
    proxy = FaultProxy("127.0.0.1", server.port).start()
    db_proxy = None
    worker_db = db_url
    if db_faults:
        u = make_url(db_url)
        db_proxy = FaultProxy(u.host or "127.0.0.1", u.port or 5432).start()
        worker_db = u.set(host="127.0.0.1", port=db_proxy.port).render_as_string(False)
    tmp = tempfile.mkdtemp()
    runner = FaultRunner(schedule, server, proxy, db_proxy)
    try:
        procs, t0 = _workers(worker_db, f"redis://127.0.0.1:{proxy.port}/0", seconds,
                             writers, readers, seed, tmp)  # fmt: skip
        runner.start(t0)
        hung = _join(procs, t0 + seconds)
    finally:
        runner.stop()
        proxy.close()
        if db_proxy is not None:
            db_proxy.close()
        server.close()
    applied = runner.applied
    with open(os.path.join(tmp, "faults.json"), "w") as f:
        json.dump({"seed": seed, "t0": t0, "schedule": schedule, "applied": applied}, f)
    got = _collect(tmp)
    if not keep:
        shutil.rmtree(tmp, ignore_errors=True)
    result = check(got["commits"], got["reads"], near)
    commit_samples = [(c[3], c[0] - c[3]) for c in got["commits"]]
    read_samples = [(r[0], r[2]) for r in got["reads"]]
    commits_in = {"during": 0, "after": 0}
    for start, _ in commit_samples:
        phase = _phase(start, applied)
        if phase == "after":
            commits_in["after"] += 1
        elif phase != "baseline":
            commits_in["during"] += 1
    return result | {
        "seed": seed,
        "seconds": seconds,
        "logs": tmp if keep else None,
        "faults": len(applied),
        "fault_kinds": {
            k: sum(1 for f in applied if f["kind"] == k)
            for k in sorted({f["kind"] for f in applied})
        },  # fmt: skip
        "fault_runner_error": repr(runner.error) if runner.error else None,
        "commits_during_faults": commits_in["during"],
        "commits_after_faults": commits_in["after"],
        "hits": got["hits"],
        "near_hits": got.get("near_hits", 0),
        "misses": got["misses"],
        "errors": got["errors"],
        "error_kinds": got["error_kinds"],
        "hung": hung,
        "commit_latency": latency_by_phase(commit_samples, applied),
        "read_latency": latency_by_phase(read_samples, applied),
    }


def latency_table(result: dict) -> str:
    """The per-phase latencies of a ``--faults`` run as aligned lines (p50 / p99 in ms)."""

    def cell(p: dict) -> str:
        return (
            f"{p['p50_ms']:>8.1f} {p['p99_ms']:>8.1f} {p['n']:>7}"
            if p["n"]
            else f"{'-':>8} {'-':>8} {0:>7}"
        )

    commits, reads = result["commit_latency"], result["read_latency"]
    lines = [
        f"{'phase':<18}{'commit p50':>10} {'p99':>8} {'n':>7}   {'read p50':>8} {'p99':>8} {'n':>7}"
    ]
    for phase in sorted(set(commits) | set(reads)):
        none = {"n": 0}
        lines.append(
            f"{phase:<18}  {cell(commits.get(phase, none))}   {cell(reads.get(phase, none))}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--writers", type=int, default=3)
    parser.add_argument("--readers", type=int, default=5)
    parser.add_argument("--near", type=float, default=0.0, metavar="SECONDS",
                        help="the workers use NearCache(max_staleness=SECONDS)")
    parser.add_argument("--db", default=os.environ.get("QC_PG_URL"))
    parser.add_argument("--redis", default=os.environ.get("QC_REDIS_URL"))
    parser.add_argument(
        "--faults",
        action="store_true",
        help="own redis-server behind a fault proxy, seeded fault schedule",
    )
    parser.add_argument(
        "--db-faults",
        action="store_true",
        help="with --faults: the database behind a fault proxy too",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="the fault schedule's seed (default: random, printed)",
    )
    args = parser.parse_args(argv)  # fmt: skip
    if not args.db or (not args.redis and not args.faults):
        print("FAILED: set QC_PG_URL and QC_REDIS_URL (or --db / --redis)", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    if args.faults:
        result = run_with_faults(args.db, args.seconds, args.writers, args.readers, seed,
                                 db_faults=args.db_faults, near=args.near)  # fmt: skip
    else:
        result = run(args.db, args.redis, args.seconds, args.writers, args.readers, seed,
                     near=args.near)  # fmt: skip
    print(json.dumps(result, indent=2))
    if args.faults:
        print(latency_table(result))
    failed = result["stale"] or result["hung"] or result.get("fault_runner_error")
    if failed:
        print(f"FAILED: {result['stale']} stale reads, hung: {result['hung'] or 'none'} "
              f"(seed {seed})", file=sys.stderr)  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
