"""CI slice of the generative differential fuzzer (tests/fuzz).

Each database x version store runs a fixed list of seeds for a bounded number
of steps (all together well under 3 minutes on a 2-core machine). A failing
seed is reported with its step, failure class and the command that replays
and shrinks it::

    python -m tests.fuzz --db postgresql --store redis --seed 3 --runs 1 --steps 40

PostgreSQL / MariaDB are skipped without ``QC_PG_URL`` / ``QC_MARIADB_URL``
(a failure with ``QC_REQUIRE_SERVICES=1``), like the rest of the suite.
"""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import db_url
from .fuzz import gen
from .fuzz import schema as S
from .fuzz.runner import Env, FuzzSession, replay

#: (seeds, steps per seed) per database: sized so the six cases take ~1.5 minutes together once every seed passes
BUDGET = {
    "sqlite": (list(range(1, 13)), 50),
    "postgresql": (list(range(1, 9)), 50),
    "mariadb": (list(range(1, 7)), 40),
}


@pytest.mark.parametrize("store", ["local", "redis"])
@pytest.mark.parametrize("db", ["sqlite", "postgresql", "mariadb"])
def test_fuzz_slice(db: str, store: str, request: Any, tmp_path_factory: Any) -> None:
    url = db_url(db, tmp_path_factory)
    redis_url = request.getfixturevalue("redis_url") if store == "redis" else None
    try:
        env = Env(url, store, redis_url)
    except Exception as err:  # like conftest: an unreachable server
        pytest.fail(f"database {db} unreachable: {err}")
    seeds, steps = BUDGET[db]
    failures, hits, attempts, compared = [], 0, 0, 0
    try:
        for seed in seeds:
            out = replay(env, gen.generate(seed, steps, env.kind))
            hits += out.hits
            attempts += out.hit_attempts
            compared += out.compared
            if out.failure is not None:
                f = out.failure
                failures.append(
                    f"seed {seed} step {f.step}: {f.signature}: {f.message.splitlines()[0]}\n"
                    f"    replay + shrink: python -m tests.fuzz --db {db} --store {store} "
                    f"--seed {seed} --runs 1 --steps {steps}"
                )
    finally:
        env.close()
    print(f"{db}/{store}: {len(seeds)} seeds, {compared} comparisons, "
          f"hits {hits}/{attempts}")  # fmt: skip
    assert not failures, f"{len(failures)} of {len(seeds)} seeds failed:\n" + "\n".join(failures)
    assert attempts == 0 or hits > 0, "no repeated pure read was ever a hit"


#: seed 6854194 (PostgreSQL + Redis), shrunk: the cached ``session.get`` ran
#: before the ``.events`` lazy load autoflushed (which expires ``n_items``, a
#: correlated-subquery column property), the uncached one after it, so only
#: the uncached one reloaded ``n_items``. SQLAlchemy's order, not the cache's.
FLUSH_ORDER_TRACE = [{
    "op": "sp", "ctx": "A", "mode": "session", "end": "rollback",
    "ws": [{"t": "mod", "ent": "Person", "id": 5, "attr": "name", "v": "name 31", "flush": False},
           {"t": "move_item", "id": 8, "owner": 6, "flush": False}],
    "r": {"k": "lazy", "ent": "Owner", "id": 6, "rel": "events"},
}]  # fmt: skip


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_a_read_that_autoflushes_is_compared_without_what_the_flush_expired(
    db: str, tmp_path_factory: Any
) -> None:
    env = Env(db_url(db, tmp_path_factory), "local")
    try:
        out = replay(env, FLUSH_ORDER_TRACE)
    finally:
        env.close()
    assert out.failure is None, out.failure.message
    assert out.compared == 2


def test_only_the_attributes_a_flush_expires_are_left_out() -> None:
    from .fuzz import reads as R

    owner = ("E", "Owner", (6,), (("id", ("int", 6)), ("n_items", ("int", 1))), ())
    item = ("E", "Item", (8,), (("id", ("int", 8)), ("qty", ("int", 3))), ())
    assert R.without_flush_expired((owner, item)) == (
        ("E", "Owner", (6,), (("id", ("int", 6)),), ()), item)  # fmt: skip


#: seed 2105251 (MariaDB + Redis; the same on every database), shrunk: B deletes
#: Item 3 without flushing, then reads ``session.get(Item, 3).owner``. The
#: cached read finds Item 3 in the identity map; its lazy load's autoflush
#: deletes it; the uncached read after it finds nothing. Uncached first, the
#: same happens the other way round: the pair is not comparable.
DELETED_BY_THE_FIRST_READ = [
    {"op": "w", "ctx": "B", "w": {"t": "del", "ent": "Item", "id": 3, "flush": False}},
    {"op": "read", "ctx": "B", "r": {"k": "lazy", "ent": "Item", "id": 3, "rel": "owner"},
     "mode": "df"},
]  # fmt: skip


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_a_pair_whose_first_read_flushes_away_its_target_is_not_compared(
    db: str, tmp_path_factory: Any
) -> None:
    from .fuzz import reads as R

    env = Env(db_url(db, tmp_path_factory), "local")
    try:
        out = replay(env, DELETED_BY_THE_FIRST_READ)
        assert out.failure is None, out.failure.message
        assert out.order_skipped == 1
        # what the oracle skips is SQLAlchemy's order: the uncached pair, in
        # either order, differs the same way, and the cached read's answer is
        # the one the uncached read gives when it goes first
        spec = DELETED_BY_THE_FIRST_READ[1]["r"]
        answers = {}
        for first_cached in (True, False):
            S.reset_data(env.engine)
            cache = env.new_cache()
            try:
                with FuzzSession(env.engine) as s:
                    s.get(S.MODELS["Item"], 3)  # stored in the identity region
                with FuzzSession(env.engine) as s:
                    s.get(S.MODELS["Owner"], s.get(S.MODELS["Item"], 3).owner_id)
                with FuzzSession(env.engine) as s:
                    s.delete(s.get(S.MODELS["Item"], 3))
                    first = R.run_read(s, spec, env.kind, first_cached, "df")
                    second = R.run_read(s, spec, env.kind, not first_cached, "df")
                    s.rollback()
            finally:
                cache.uninstall()
            answers[first_cached] = (first, second)
        assert answers[True][1] is None and answers[False][1] is None
        first_cached, first_plain = (R.without_flush_expired(answers[b][0]) for b in (True, False))
        assert first_cached == first_plain is not None
    finally:
        env.close()
