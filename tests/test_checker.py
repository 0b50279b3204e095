"""The multi-process consistency checker, short, on PostgreSQL + Redis."""

from __future__ import annotations

from .conftest import db_url
from .consistency_checker import check, run


def test_checker_detects_a_stale_read():
    commits = [(10.0, 0, 1), (20.0, 0, 2)]
    assert check(commits, [(15.0, {0: 1}), (25.0, {0: 2})])["stale"] == 0
    assert check(commits, [(25.0, {"0": 1})])["stale"] == 1  # began after value 2 committed


def test_no_stale_read_across_processes(redis_url):
    url = db_url("postgresql")
    result = run(url, redis_url, seconds=4, writers=2, readers=3)
    assert result["commits"] > 20 and result["reads"] > 50, result
    assert result["hits"] > 0, result  # the cache was really in use
    assert result["stale"] == 0, result["examples"]


def test_checker_measures_staleness_against_a_bound():
    commits = [(10.0, 0, 1), (20.0, 0, 2), (20.5, 0, 3)]
    reads = [(20.01, {0: 1}), (20.03, {0: 1}), (21.0, {0: 2}), (25.0, {0: 3})]
    got = check(commits, reads, bound=0.02)
    # 20.01 missed value 2 by 10 ms (within), 20.03 by 30 ms (beyond); 21.0 missed 3 by 500 ms
    assert got["stale_within_bound"] == 1 and got["beyond_bound"] == 2 == got["stale"]
    assert got["staleness_ms"]["stale_reads"]["max_ms"] == 1000.0 * 0.5
    assert got["staleness_ms"]["all_reads"]["n"] == 4
    assert check(commits, reads, bound=1.0)["stale"] == 0


def test_near_cache_reads_stay_within_their_bound_across_processes(redis_url):
    url = db_url("postgresql")
    result = run(url, redis_url, seconds=5, writers=2, readers=2, near=0.05)
    assert result["commits"] > 20 and result["reads"] > 50, result
    assert result["near_hits"] > 0, result  # the near path was really in use
    assert result["stale"] == 0, result["examples"]
