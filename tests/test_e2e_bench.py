"""The end-to-end benchmark (``tests/benchmarks/e2e.py``) still runs, briefly.

Real parts: two uvicorn servers of the demo shop app on PostgreSQL and Redis,
``wrk`` (installed with apt-get when missing) driving them. One workload, the
read-only mix and the 20%-writes mix, one round of 1 s per run: the rows have
their shape, every request succeeded, the cached read-only run hit the cache,
and the cached app answered as the uncached one after the writes. Without
PostgreSQL or a load generator it skips with one line (fails with
``QC_REQUIRE_SERVICES=1``). The skewed id picker is checked without services.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.benchmarks import e2e, e2e_pick

from .conftest import REQUIRE, _make_engine, db_url


@settings(deadline=None, max_examples=50)
@given(st.integers(min_value=1, max_value=20_000))
def test_skewed_ids_are_a_permutation_with_a_hot_fifth(n):
    s = e2e_pick.spec(n)
    assert 1 <= s.hot <= n
    ranks = range(n)
    ids = {e2e_pick.rank_to_id(r, s) for r in ranks}
    assert ids == set(range(1, n + 1))  # every id, once: a permutation of 1..n
    if n >= 5:
        assert abs(s.hot - n * e2e_pick.HOT_ROWS) <= 1


@settings(deadline=None, max_examples=30)
@given(st.sampled_from(sorted(e2e_pick.SPECS)), st.integers(37, 997))
def test_skewed_draws_put_four_fifths_on_the_hot_rows(workload, step):
    s = e2e_pick.SPECS[workload]
    draws = Counter(e2e_pick.skewed(u, s) for u in range(0, 1_000_000, step))
    total = sum(draws.values())
    if s.n == 0:
        assert set(draws) == {0}
        return
    hot = {e2e_pick.rank_to_id(r, s) for r in range(s.hot)}
    assert set(draws) <= set(range(1, s.n + 1))
    share = sum(c for i, c in draws.items() if i in hot) / total
    assert share == pytest.approx(e2e_pick.HOT_SHARE, abs=0.002)


def test_the_wrk_script_names_the_cells_parameters():
    script = e2e.lua_script("customer_orders", 0.05, seed=7)
    s, p = e2e_pick.SPECS["customer_orders"], e2e_pick.SPECS["product"]
    assert f"local n, hot, stride = {s.n}, {s.hot}, {s.stride}" in script
    assert f"local pn, phot, pstride = {p.n}, {p.hot}, {p.stride}" in script
    assert 'local read_path = "/customer/%d/orders"' in script
    assert "local write_ratio = 0.05" in script
    assert "math.randomseed(7)" in script


def test_e2e_benchmark_runs(redis_url):
    url = db_url("postgresql")
    _make_engine(url).dispose()  # reachable, or skip / fail with the reason
    try:
        tool = e2e.find_load_generator(install=True)
    except e2e.LoadGeneratorMissing as err:
        if REQUIRE:
            pytest.fail(f"QC_REQUIRE_SERVICES=1 but {err}")
        pytest.skip(f"e2e benchmark skipped: {err}")
    cfg = e2e.Config(url, redis_url, workloads=("category_page",), mixes=(0.0, 0.2), rounds=1,
                     seconds=1, warmup=0, connections=4)  # fmt: skip
    notes: list[str] = []
    result = e2e.measure(cfg, tool, notes)
    rows = [c.row() for c in result.cells]
    assert [(r["workload"], r["writes"]) for r in rows] == [
        ("category_page", 0.0),
        ("category_page", 0.2),
    ]
    for r in rows:
        assert r["rounds"] == 1
        assert r["failed"] == 0, r  # no socket error, timeout or non-2xx answer
        assert r["requests"] > 0
        assert r["uncached_rps"] > 0 and r["cached_rps"] > 0
        assert r["ratio"] == pytest.approx(r["cached_rps"] / r["uncached_rps"])
        for key in ("uncached_p50_ms", "cached_p50_ms", "uncached_p99_ms", "cached_p99_ms"):
            assert r[key] > 0
        assert r["cached_p99_ms"] >= r["cached_p50_ms"]
    assert rows[0]["hit_ratio"] > 0  # the cached read-only run was served by the cache
    assert 0 <= rows[1]["hit_ratio"] <= 1
    assert result.compared > 0 and result.differ == []  # never a stale answer
    assert result.ok
    for markdown in (False, True):
        out = e2e.render(rows, cfg, tool, notes, markdown, {"command": "test"})
        assert "category_page" in out and "cached/uncached" in out
    table = e2e.render(rows, cfg, tool, notes, True, {"command": "test"}).splitlines()
    assert any(line.startswith("| category_page | 20% |") for line in table)
