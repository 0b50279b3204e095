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
