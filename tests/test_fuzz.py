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
