"""Adaptive admission: a statement shape whose expected saving is negative stops
consulting the cache, is re-probed, and comes back when the balance turns; pins
win; nothing of it ever changes a result.

Real SQLite (memory region, local versions) and PostgreSQL (Redis region and
Redis versions). Lookups are counted by a spy on the version store (every
lookup reads versions exactly once; the reads still go to the real store), SQL
by the statements the engine sends.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from sqla_querycache import ConfigurationError, FromCache, NoCache, QueryCache
from sqla_querycache.admission import ADMITTED, MAX_BACKOFF, PROBING, Shape

from . import models
from .conftest import StatementCounter, _make_engine, db_url, memory_region, redis_region

Product = models.Product
P1, P2 = aliased(Product), aliased(Product)


@pytest.fixture(params=["sqlite", "postgresql"])
def setup(request: Any, tmp_path_factory: Any) -> Iterator[dict[str, Any]]:
    """A populated database; SQLite with a memory region and local versions,
    PostgreSQL with a Redis region and Redis versions."""
    eng = _make_engine(db_url(request.param, tmp_path_factory))
    models.Base.metadata.drop_all(eng)
    models.Base.metadata.create_all(eng)
    with Session(eng) as s:
        models.populate(s)
    if request.param == "sqlite":
        kw: dict[str, Any] = {"regions": {"default": memory_region(), "hot": memory_region()}}
    else:
        url = request.getfixturevalue("redis_url")
        kw = {"regions": {"default": redis_region(url), "hot": redis_region(url)},
              "versions": url}  # fmt: skip
    yield {"engine": eng, "kw": kw}
    eng.dispose()


class Lookups:
    """Counts lookups: calls that read the version store (the real store answers)."""

    def __init__(self, cache: QueryCache):
        self.count = 0
        store: Any = cache.versions
        for name in ("read", "read_with_entry"):
            real = getattr(store, name, None)
            if real is not None:
                setattr(store, name, self._counting(real))

    def _counting(self, real: Any) -> Any:
        def call(*args: Any, **kw: Any) -> Any:
            self.count += 1
            return real(*args, **kw)

        return call


def make_cache(setup: dict[str, Any], **kw: Any) -> tuple[QueryCache, Any]:
    session_class = type("AdmSession", (Session,), {})
    kw = {**setup["kw"], "namespace": "adm" + uuid.uuid4().hex[:8], **kw}
    cache = QueryCache(**kw).install(session_class)
    return cache, sessionmaker(setup["engine"], class_=session_class)


def pairs(option: Any = None) -> Any:
    """Hundreds of rows: a miss encodes them all (dear), a hit decodes nothing (its
    entry is kept decoded), the query reads and returns them."""
    stmt = select(P1.id, P2.name).where(P1.id <= P2.id).order_by(P1.id, P2.id)
    return stmt.options(option) if option is not None else stmt


def statement_row(cache: QueryCache) -> Any:
    rows = [s for s in cache.report()["statements"] if "product_1" in s["sql"]]
    assert len(rows) == 1, rows
    return rows[0]


def bump_price(maker: Any, i: int) -> None:
    with maker() as s:
        s.execute(update(Product).where(Product.id == 1 + i % 40).values(name=f"p{i}"))
        s.commit()


def test_written_between_reads_goes_not_worth_it_then_comes_back(setup: dict[str, Any]) -> None:
    cache, maker = make_cache(setup, admission_min_samples=5, admission_probe_calls=10,
                              admission_probe_seconds=3600)  # fmt: skip
    lookups = Lookups(cache)
    plain = sessionmaker(setup["engine"])
    try:
        # 1. a write between every two reads: every lookup misses
        reads = 80
        for i in range(reads):
            with maker() as s:
                got = s.execute(pairs(FromCache())).all()
            with plain() as s:
                assert got == s.execute(pairs()).all()  # the promise, whatever the state
            bump_price(maker, i)
        row = statement_row(cache)
        assert row["hits"] == 0
        skipped = row["bypass_reasons"].get("not_worth_it", 0)
        assert skipped > reads / 2, row  # most calls skipped the cache...
        assert row["misses"] + skipped == reads, row
        assert lookups.count == row["misses"]  # ... and sent no lookup at all
        assert row["saving_us"] is not None and row["saving_us"] < 0, row
        assert row["admission"] in ("not worth it", "probing"), row

        # a skipped call is still exactly the uncached query: one statement, no lookup
        shape = next(iter(cache._stats.shapes.values()))
        if shape.describe() == "not worth it" and shape.left > 2:
            counter = StatementCounter(setup["engine"])
            before = lookups.count
            with maker() as s:
                s.execute(pairs(FromCache())).all()
            counter.close()
            assert counter.count == 1 and lookups.count == before

        # 2. the writes stop: a trial (after at most probe_calls x backoff skipped
        # calls) finds hits again and the shape is admitted
        limit = 10 * MAX_BACKOFF + 5 * 3
        for _ in range(limit):
            with maker() as s:
                s.execute(pairs(FromCache())).all()
            if shape.describe() == "admitted":
                break
        else:
            pytest.fail(
                f"not admitted again after {limit} reads without writes: {statement_row(cache)}"
            )
        assert statement_row(cache)["admission"] == "admitted"
        assert statement_row(cache)["saving_us"] > 0
        counter = StatementCounter(setup["engine"])
        with maker() as s:
            got = s.execute(pairs(FromCache())).all()
        counter.close()
        assert counter.count == 0  # a hit
        with plain() as s:
            assert got == s.execute(pairs()).all()
    finally:
        cache.close()


def test_debug_line_and_cli_rows_say_not_worth_it(
    setup: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    from sqla_querycache import commands

    cache, maker = make_cache(setup, admission_min_samples=2, admission_probe_calls=1000,
                              admission_probe_seconds=3600)  # fmt: skip
    try:
        for i in range(4):
            with maker() as s:
                s.execute(pairs(FromCache())).all()
            bump_price(maker, i)
        assert statement_row(cache)["admission"] == "not worth it"
        with caplog.at_level("DEBUG", logger="sqla_querycache"), maker() as s:
            s.execute(pairs(FromCache())).all()
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("bypass")]
        assert any("reason=not worth it (expected saving -" in line for line in lines), lines
        rows = [r for r in commands.stats(cache, by="statement", scope="process")
                if "product_1" in r["sql"]]  # fmt: skip
        assert rows[0]["admission"] == "not worth it"
        assert "not_worth_it=" in rows[0]["bypass_reasons"]
        assert cache.stats()["default"]["bypass_reasons"]["not_worth_it"] >= 1
        top = next(commands.top(cache, by="statement", once=True))
        assert [r["admission"] for r in top if "product_1" in r["sql"]] == ["not worth it"]
        if cache._app_stats is not None:  # Redis: the app-wide report says so too
            app = [s for s in cache.report("app")["statements"] if "product_1" in s["sql"]]
            assert app[0]["admission"] == "not worth it"
            assert app[0]["bypass_reasons"]["not_worth_it"] >= 1
            cache.close()  # this process leaves the app-wide states
            reader = QueryCache(**{**setup["kw"], "namespace": cache.namespace})
            try:
                app = [s for s in reader.report("app")["statements"] if "product_1" in s["sql"]]
                assert app[0]["admission"] is None
                assert app[0]["bypass_reasons"]["not_worth_it"] >= 1  # the counts stay
            finally:
                reader.close()
    finally:
        cache.close()


def test_pins_win_over_the_adaptive_decision(setup: dict[str, Any]) -> None:
    cache, maker = make_cache(setup, admission_min_samples=2, admission_probe_calls=1000,
                              admission_probe_seconds=3600)  # fmt: skip
    lookups = Lookups(cache)
    try:
        for i in range(4):
            with maker() as s:
                s.execute(pairs(FromCache())).all()
            bump_price(maker, i)
        assert statement_row(cache)["admission"] == "not worth it"
        # pinned always: looked up and stored although the shape is not worth it
        for _ in range(2):
            before = lookups.count
            counter = StatementCounter(setup["engine"])
            with maker() as s:
                s.execute(pairs(FromCache(admission="always"))).all()
            counter.close()
            assert lookups.count == before + 1
        assert counter.count == 0  # the second one hit
        # unpinned again: still skipped (the pin did not change the shape's state)
        before = lookups.count
        with maker() as s:
            s.execute(pairs(FromCache())).all()
        assert lookups.count == before
    finally:
        cache.close()
    # the QueryCache's and a region's modes; a FromCache pin beats them
    cache, maker = make_cache(setup, admission={"default": "never", "hot": "always"})
    lookups = Lookups(cache)
    try:
        for _ in range(3):
            with maker() as s:
                s.execute(pairs(FromCache())).all()
        assert lookups.count == 0
        assert cache.stats()["default"]["bypass_reasons"] == {"never": 3}
        assert statement_row(cache)["admission"] == "never"
        for _ in range(2):
            with maker() as s:
                s.execute(pairs(FromCache("default", admission="always"))).all()
        assert lookups.count == 2 and cache.stats()["default"]["hits"] == 1
        for _ in range(2):
            with maker() as s:
                s.execute(pairs(FromCache("hot"))).all()
        assert cache.stats()["hot"]["hits"] == 1
        with maker() as s:
            s.execute(pairs(FromCache("hot", admission="never"))).all()
        assert cache.stats()["hot"]["bypass_reasons"] == {"never": 1}
    finally:
        cache.close()
    cache, maker = make_cache(setup, admission="never")
    lookups = Lookups(cache)
    try:
        with maker() as s:
            s.execute(pairs(FromCache("hot"))).all()
        assert lookups.count == 0
    finally:
        cache.close()


def test_a_shape_is_never_judged_before_min_samples(setup: dict[str, Any]) -> None:
    """The default evidence threshold: a few misses never turn a shape away."""
    cache, maker = make_cache(setup)  # defaults: adaptive, 50 samples
    lookups = Lookups(cache)
    try:
        for i in range(cache._policy.min_samples - 1):
            with maker() as s:
                s.execute(pairs(FromCache())).all()
            bump_price(maker, i)
        assert lookups.count == cache._policy.min_samples - 1
        assert statement_row(cache)["admission"] == "admitted"
    finally:
        cache.close()


BAD_PINS = ["", "ALWAYS", "maybe", 1, True, b"never", ["always"]]


@pytest.mark.parametrize("value", BAD_PINS, ids=repr)
def test_a_bad_pin_is_refused(value: Any) -> None:
    with pytest.raises(ConfigurationError, match="admission"):
        FromCache("default", admission=value)


def test_the_state_machine_backs_off_and_resets() -> None:
    """Trials that do not pay double the wait (up to MAX_BACKOFF); one that pays resets it."""
    from sqla_querycache.admission import Policy

    policy = Policy(min_samples=3, probe_calls=4, probe_seconds=3600)
    shape = Shape()
    shape.ran(0.001, 0.001, policy)  # the query: 2 ms

    def lookups(hit: bool, n: int) -> None:
        for _ in range(n):
            assert shape.admit(policy)
            if hit:
                shape.hit(0.0005, policy)
            else:
                shape.missed(0.003, policy)

    lookups(False, 3)
    waits = []
    for _ in range(8):
        assert shape.describe() == "not worth it"
        skipped = 0
        while not shape.admit(policy):
            skipped += 1
        waits.append(skipped + 1)
        assert shape.describe() == "probing"
        shape.missed(0.003, policy)
        lookups(False, 2)
    assert waits[:5] == [4, 4 * 2, 4 * 4, 4 * 8, 4 * 16]  # doubled after each failed trial
    assert max(waits) == 4 * MAX_BACKOFF
    while not shape.admit(policy):
        pass
    lookups(True, 3)
    assert shape.describe() == "admitted" and shape.backoff == 1
    # a shape warming up (each trial hits more than the last, still not enough) is
    # tried again as soon; a trial that does not improve doubles the wait again
    shape = Shape()
    shape.ran(0.001, 0.001, policy)
    for _ in range(3):
        shape.missed(0.003, policy)
    assert shape.describe() == "not worth it"
    waits = []
    for hits in (1, 2, 0, 0):
        skipped = 0
        while not shape.admit(policy):
            skipped += 1
        waits.append(skipped + 1)
        for i in range(3):
            if i < hits:
                shape.hit(0.0019, policy)  # barely cheaper than the query: 2 of 3 do not pay
            else:
                shape.missed(0.003, policy)
        assert shape.describe() == "not worth it"
    assert waits == [4, 4, 4, 8]


def test_one_stall_does_not_turn_a_shape_away() -> None:
    """A miss that took 1 s (the process was descheduled) among 3 ms misses: clipped."""
    from sqla_querycache.admission import Policy

    policy = Policy(min_samples=50, probe_calls=4, probe_seconds=3600)  # the defaults' window
    shape = Shape()
    for i in range(200):  # one miss in 20; a hit costs a fifth of the query
        if i % 20:
            shape.hit(0.0005, policy)
        else:
            shape.ran(0.002, 0.0005, policy)
            shape.missed(0.003, policy)
    assert shape.describe() == "admitted"
    shape.missed(1.0, policy)  # a 1 s stall: unclipped, the average would be 43 ms
    assert shape.describe() == "admitted", shape.summary()
    assert shape.m < 0.003 * 1.5
    for _ in range(40):  # a lasting change does move it: every lookup misses, at 60 ms
        shape.missed(0.060, policy)
    assert shape.m > 0.030 and shape.describe() == "not worth it"


def test_a_batch_that_answered_several_loads_counts_as_that_many_hits() -> None:
    """A lazy load whose prefetch answered its siblings' loads too (they never
    reach the cache): one 1 ms batch that served 13 loads of a 0.2 ms query is 13
    hits of 77 us, worth it; counted as one 1 ms hit it would be turned away."""
    from sqla_querycache.admission import Policy

    policy = Policy(min_samples=10, probe_calls=4, probe_seconds=3600)
    batch, single = Shape(), Shape()
    for shape in (batch, single):
        shape.ran(0.00015, 0.00005, policy)  # the query: 0.2 ms
        shape.missed(0.0004, policy)  # the first page: a miss
    for _ in range(20):
        batch.hit(0.001, policy, served=13)
        single.hit(0.001, policy)
    assert batch.describe() == "admitted", batch.summary()
    assert abs(batch.h - 0.001 / 13) < 1e-9
    assert single.describe() == "not worth it", single.summary()


# ------------------------------------------------------------- the promise

READ = st.tuples(st.just("read"), st.integers(0, 3), st.integers(1, 45),
                st.sampled_from([None, None, None, "adaptive", "always", "never"]))  # fmt: skip
OPS = st.lists(
    st.one_of(
        READ, READ, READ, READ,
        st.tuples(st.just("update"), st.integers(1, 45)),
        st.tuples(st.just("insert"), st.integers(100, 130)),
        st.tuples(st.just("delete"), st.integers(100, 130)),
        st.tuples(st.just("read_own_write"), st.integers(1, 40)),
        st.tuples(st.just("rolled_back"), st.integers(1, 40)),
        # put every shape in a state now, whatever the timings of this machine would say
        st.tuples(st.just("force"), st.sampled_from(["reject", "probe", "admit"])),
    ),
    min_size=10, max_size=80,
)  # fmt: skip


def _read(kind: int, n: int, option: Any) -> Any:
    if kind == 0:
        stmt: Any = select(Product.id, Product.name, Product.price).where(Product.id <= n)
        stmt = stmt.order_by(Product.id)
    elif kind == 1:
        stmt = select(Product).where(Product.category_id == 1 + n % 4).order_by(Product.id)
    elif kind == 2:
        stmt = select(Product.category_id, Product.name).where(Product.id == n)
    else:
        stmt = pairs().where(P2.id <= n)
    return stmt.options(option)


def _plain(rows: list[Any]) -> list[Any]:
    """Rows as plain values (an entity: its id, name and price)."""
    return [(row[0].id, row[0].name, row[0].price) if isinstance(row[0], Product) else tuple(row)
            for row in rows]  # fmt: skip


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=OPS, min_samples=st.integers(1, 3), probe_calls=st.integers(1, 4),
       default=st.sampled_from(["adaptive", "adaptive", "always", "never"]),
       seed=st.integers(0, 2**16))  # fmt: skip
def test_results_equal_uncached_whatever_the_admission_state(
    setup: dict[str, Any], ops: list[Any], min_samples: int, probe_calls: int, default: str,
    seed: int,
) -> None:  # fmt: skip
    """Random read/write mixes under thresholds so small that shapes flip between
    admitted, not worth it and probing all the time: every cached read returns what
    the same read returns uncached at that moment."""
    cache, maker = make_cache(setup, admission=default, admission_min_samples=min_samples,
                              admission_probe_calls=probe_calls,
                              admission_probe_seconds=random.Random(seed).choice([0.001, 3600]))  # fmt: skip
    plain = sessionmaker(setup["engine"])
    states: set[str] = set()
    try:
        for op in ops:
            if op[0] == "read":
                _, kind, n, pin = op
                option = FromCache(admission=pin)
                with maker() as s:
                    got = _plain(s.execute(_read(kind, n, option)).all())
                with plain() as s:
                    want = _plain(s.execute(_read(kind, n, NoCache())).all())
                assert got == want, (op, got, want)
                states.update(sh.describe() for sh in cache._stats.shapes.values())
            elif op[0] == "update":
                with maker() as s:
                    s.execute(update(Product).where(Product.id == op[1]).values(name=f"u{seed}"))
                    s.commit()
            elif op[0] == "insert":
                with maker() as s:
                    s.execute(delete(Product).where(Product.id == op[1]))
                    s.execute(insert(Product).values(
                        id=op[1], name=f"new {op[1]}", price=op[1], category_id=1 + op[1] % 4,
                        created=dt.datetime(2024, 3, 1, tzinfo=models.UTC),
                        sku=uuid.UUID(int=op[1]),
                    ))  # fmt: skip
                    s.commit()
            elif op[0] == "delete":
                with maker() as s:
                    s.execute(delete(Product).where(Product.id == op[1]))
                    s.commit()
            elif op[0] == "read_own_write":
                with maker() as s:
                    s.execute(update(Product).where(Product.id == op[1]).values(name="mine"))
                    got = _plain(s.execute(_read(0, op[1], FromCache(admission="always"))).all())
                    assert got[-1][1] == "mine"
                    s.commit()
            elif op[0] == "force":
                for shape in list(cache._stats.shapes.values()):
                    if op[1] == "reject":
                        shape._reject(cache._policy)
                    elif op[1] == "probe":
                        shape.state, shape.trial, shape.kp = PROBING, min_samples, 0
                    else:
                        shape.state = ADMITTED
            else:  # rolled_back
                with maker() as s:
                    s.execute(update(Product).where(Product.id == op[1]).values(name="gone"))
                    s.rollback()
    finally:
        cache.close()
    if any(op[0] == "read" for op in ops):
        assert states  # the reads ran through the admission code


# ------------------------------------------------- CPU and wall; cold keys

COST = st.floats(1e-5, 1e-2)


@settings(max_examples=300, deadline=None)
@given(hit=COST, unc=COST, hit_cpu=COST, unc_cpu=COST, share=st.floats(0.05, 0.95))
def test_the_verdict_adds_the_wall_and_cpu_savings_each_as_a_share_of_uncached(
    hit: float, unc: float, hit_cpu: float, unc_cpu: float, share: float
) -> None:
    """Every hit timed in both clocks: the shape stays admitted when the wall saving
    and the CPU saving, each over its own uncached cost, add up to at least nothing;
    in particular when both are positive, and never when both are negative, whatever
    their sizes (a hit dearer than the query in one clock, cheaper in the other)."""
    from sqla_querycache.admission import Policy

    policy = Policy(min_samples=5, probe_calls=4, probe_seconds=3600)
    shape = Shape()
    shape.ran(unc * share, unc * (1 - share), policy, (unc_cpu * share, unc_cpu * (1 - share)))
    for _ in range(20):
        assert shape.admit(policy) or shape.describe() == "not worth it"
        shape.hit(hit, policy, 1, hit_cpu)
    wall, cpu = (unc - hit) / unc, (unc_cpu - hit_cpu) / unc_cpu
    if min(abs(wall + cpu), abs(wall), abs(cpu)) < 1e-6:
        return  # a tie: either answer is right
    if wall > 0 and cpu > 0:
        assert shape.describe() == "admitted"
    elif wall < 0 and cpu < 0:
        assert shape.describe() == "not worth it"
    assert (shape.describe() == "admitted") == (wall + cpu > 0), (wall, cpu, shape.summary())
    row = shape.summary()
    assert row["saving_us"] == pytest.approx((unc - hit) * 1e6, abs=0.1)
    assert row["saving_cpu_us"] == pytest.approx((unc_cpu - hit_cpu) * 1e6, abs=0.1)


def test_without_cpu_samples_the_wall_clock_decides() -> None:
    """A shape whose calls were never timed in CPU (one in CPU_EVERY is) is judged in
    wall time alone, as before CPU was measured."""
    from sqla_querycache.admission import Policy

    policy = Policy(min_samples=3, probe_calls=4, probe_seconds=3600)
    cheap, dear = Shape(), Shape()
    for shape, hit in ((cheap, 0.001), (dear, 0.003)):
        shape.ran(0.001, 0.001, policy)
        for _ in range(5):
            shape.hit(hit, policy)
        assert shape.saving_cpu() is None
    assert cheap.describe() == "admitted" and dear.describe() == "not worth it"


def _simulate(keys: Any, lookups: int, policy: Any) -> tuple[Shape, set[str]]:
    """Lookups of the keys ``keys()`` draws against a store that keeps what a miss
    stores, as the read path feeds the shape: a hit (0.2 ms) when stored, else a miss
    (2.4 ms: lookup, 2 ms query, store; cold when the key was never stored); a shape
    turned away skips (no lookup, no store). Returns the shape and the states seen
    after the first epoch of cold misses."""
    from sqla_querycache.admission import COLD_EPOCH

    shape = Shape()
    shape.ran(0.0015, 0.0005, policy, (0.0003, 0.0001))
    stored: set[Any] = set()
    seen: set[str] = set()
    for _ in range(lookups):
        key = keys()
        if not shape.admit(policy):
            continue
        if key in stored:
            shape.hit(0.0002, policy, 1, 0.00004)
        else:
            shape.missed(0.0024, policy, 0.0005, cold=True)
            stored.add(key)
        if shape.colds >= COLD_EPOCH:
            seen.add(shape.describe())
    return shape, seen


@settings(max_examples=12, deadline=None)
@given(n=st.integers(50, 10_000), skewed=st.booleans(), seed=st.integers(0, 2**16))
def test_a_shape_warming_a_bounded_key_space_is_never_turned_away(
    n: int, skewed: bool, seed: int
) -> None:
    """Ids drawn from a bounded set (uniform, or 80% of the draws on 20% of the ids):
    the shape is cold at first, less with every epoch; with no writes each warm lookup
    hits, so it must stay admitted all along, however many cold misses it takes to
    store its keys (turned away for being cold, it would store nothing, stay cold)."""
    from sqla_querycache.admission import Policy

    rng = random.Random(seed)
    hot = max(1, n // 5)

    def keys() -> int:
        if skewed and rng.random() < 0.8:
            return rng.randrange(hot)
        return rng.randrange(n)

    policy = Policy(min_samples=50, probe_calls=200, probe_seconds=3600)
    shape, seen = _simulate(keys, 6 * n + 3000, policy)
    assert shape.describe() == "admitted", (shape.summary(), shape.cshare)
    assert seen <= {"admitted"}, seen
    assert not shape.ccount


def test_a_shape_whose_keys_never_come_back_is_turned_away() -> None:
    """Every lookup a new key (a search box's text): it never hits, each miss costs
    its store. After two epochs of cold misses, cold lookups count and the shape is
    turned away, with no warm lookup ever seen; trials still come."""
    from sqla_querycache.admission import COLD_EPOCH, Policy

    policy = Policy(min_samples=50, probe_calls=200, probe_seconds=3600)
    counter = iter(range(10**9))
    shape, _ = _simulate(lambda: next(counter), 3 * COLD_EPOCH, policy)
    assert shape.kw == 0 and shape.ccount
    assert shape.describe() in ("not worth it", "probing"), shape.summary()
    assert shape.saving() is not None and shape.saving() < 0


def test_cold_marks_are_per_call_under_threads(tmp_path: Any) -> None:
    """Eight threads get products by primary key (no writes) while their entries are
    first stored: every warm lookup hits, so the warm hit ratio stays 1 and the shape
    admitted. A cold mark shared by the threads (set by one lookup, consumed by
    another's miss) lost marks, counted cold misses as warm ones and turned the
    shape away at a warm hit ratio near 0.5."""
    import threading

    eng = _make_engine(f"sqlite:///{tmp_path / 'cold.db'}")
    models.Base.metadata.create_all(eng)
    with Session(eng) as s:
        models.populate(s)
        ids = list(s.scalars(select(Product.id)))
    cache, maker = make_cache({"engine": eng, "kw": {"regions": {"default": memory_region()}}},
                              identity_region="default", admission_min_samples=20)  # fmt: skip
    try:
        errors: list[BaseException] = []

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            try:
                for _ in range(300):
                    with maker() as s:
                        got = s.get(Product, rng.choice(ids))
                        assert got is not None
            except BaseException as err:  # pragma: no cover - reported below
                errors.append(err)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        shapes = [sh for sh in cache._stats.shapes.values() if sh.kw]
        assert shapes
        for shape in shapes:
            assert shape.p == 1.0, shape.summary()
            assert shape.describe() == "admitted", shape.summary()
            assert shape.colds >= 1  # the keys' first lookups were cold
    finally:
        cache.close()
        eng.dispose()


class _Clock:
    """A monotonic clock the test advances (the shape's time-weighted hit ratio)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # the clock: per example
@given(n=st.integers(50, 2000), rate=st.sampled_from([200, 1000, 5000]),
       seed=st.integers(0, 2**16))  # fmt: skip
def test_a_bulk_update_is_a_dip_a_steady_write_rate_a_verdict(
    n: int, rate: int, seed: int, monkeypatch: Any
) -> None:
    """A busy shape (``rate`` lookups a second over ``n`` keys, hits 5x cheaper than
    the query, misses dearer) reads for a minute with no writes; then a bulk update
    makes every entry stale at once: each key misses once and is stored again, a dip
    the shape must ride out admitted. Then every key is written between any two of
    its reads (a steady write rate): the shape must be turned away within a few
    P_SECONDS."""
    from sqla_querycache import admission as adm

    clock = _Clock()
    monkeypatch.setattr(adm.time, "monotonic", clock)  # set anew for each example
    rng = random.Random(seed)
    policy = adm.Policy(min_samples=50, probe_calls=200, probe_seconds=30)
    shape = Shape()
    shape.ran(0.0008, 0.0002, policy, (0.0004, 0.0001))
    fresh: set[int] = set()  # keys whose stored entry is valid
    stored: set[int] = set()  # keys stored once at least

    def lookup(writes: bool) -> None:
        clock.now += 1.0 / rate
        key = rng.randrange(n)
        if not shape.admit(policy):
            return
        if key in fresh:
            shape.hit(0.0002, policy, 1, 0.0001)
        else:
            shape.missed(0.0015, policy, 0.0007, cold=key not in stored)
            stored.add(key)
            fresh.add(key)
        if writes:
            fresh.discard(key)  # written before its next read

    for _ in range(60 * rate):
        lookup(False)
    assert shape.describe() == "admitted"
    fresh.clear()  # the bulk update
    states = set()
    for _ in range(20 * rate):
        lookup(False)
        states.add(shape.describe())
    assert states == {"admitted"}, shape.summary()
    turned_at = None
    for i in range(4 * int(adm.P_SECONDS) * rate):
        lookup(True)
        if shape.describe() == "not worth it":
            turned_at = i / rate
            break
    assert turned_at is not None, shape.summary()


def test_a_rarely_called_shape_keeps_a_window_of_lookups(monkeypatch: Any) -> None:
    """One lookup a minute: the time weight of a sample would be 2 (a minute over
    P_SECONDS); capped at the count window's, two stale misses after a hundred
    hits move the hit ratio by a few points, not to zero."""
    from sqla_querycache import admission as adm

    clock = _Clock()
    monkeypatch.setattr(adm.time, "monotonic", clock)
    policy = adm.Policy(min_samples=50, probe_calls=200, probe_seconds=30)
    shape = Shape()
    shape.ran(0.0008, 0.0002, policy)
    for _ in range(100):
        clock.now += 60
        shape.hit(0.0002, policy)
    for _ in range(2):
        clock.now += 60
        shape.missed(0.0015, policy)
    assert 0.9 < shape.p < 1.0 and shape.describe() == "admitted", shape.summary()


def test_entries_gone_stale_while_turned_away_do_not_keep_a_shape_away(
    setup: dict[str, Any],
) -> None:
    """A shape turned away (writes elsewhere made it not worth it), then every one
    of its entries written while it was not looking (nobody re-stores them while it
    skips the cache): the stale entries its trial finds say nothing of the writes
    now, only that they must be stored again. The first trial admits it, and the
    keys are hits again on the next pass; counted as stale misses, the trial would
    see a hit ratio of 0 and double its wait."""
    cache, maker = make_cache(setup, admission_min_samples=5, admission_probe_calls=10,
                              admission_probe_seconds=3600)  # fmt: skip
    plain = sessionmaker(setup["engine"])
    ids = list(range(1, 31))

    def read(i: int) -> Any:
        with maker() as s:
            got = s.execute(select(Product.id, Product.name).where(Product.id == i)
                            .options(FromCache())).all()  # fmt: skip
        with plain() as s:
            assert got == s.execute(select(Product.id, Product.name)
                                    .where(Product.id == i)).all()  # fmt: skip
        return got

    try:
        for i in ids * 2:
            read(i)
        shape = next(iter(cache._stats.shapes.values()))
        assert shape.describe() == "admitted" and shape.p == 1.0
        shape._reject(cache._policy)  # as a write-heavy spell would
        with maker() as s:  # every entry written while the shape skips the cache
            s.execute(update(Product).where(Product.id.in_(ids)).values(name="bulk"))
            s.commit()
        states = []
        for i in ids:
            read(i)
            states.append(shape.describe())
        assert "probing" in states, states
        assert states[-1] == "admitted", (states, shape.summary())
        counter = StatementCounter(setup["engine"])
        for i in ids[-10:]:  # stored again by the trial and after it: hits
            assert read(i)[0][1] == "bulk"
        counter.close()
        assert counter.count == 10  # each read's uncached twin, no cached query
    finally:
        cache.close()
