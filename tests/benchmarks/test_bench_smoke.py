"""The benchmark script still runs (a couple of rounds, SQLite + memory region only)."""

from __future__ import annotations

from tests.benchmarks import bench


def test_bench_runs_and_checks_pass(capsys):
    assert bench.main(["--rounds", "3", "--backends", "sqlite-memory", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "| sqlite-memory | category_page |" in out
    assert "CHECKS FAILED" not in out
    assert "every timed hit/miss was a real hit/miss" in out
    for workload in bench.WORKLOADS:
        assert workload in out
