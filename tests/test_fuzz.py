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
from .fuzz.runner import Env, replay

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
