"""The sealing benchmark still runs (a few rounds, SQLite + memory region only)."""

from __future__ import annotations

from tests.benchmarks import sealing


def test_sealing_bench_runs_and_checks_pass(capsys):
    assert sealing.main(["--rounds", "3", "--backends", "sqlite-memory",
                         "--workloads", "lookup_5", "--markdown"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "| sqlite-memory | lookup_5 | 1000 |" in out
    assert "| sqlite-memory | lookup_5 | 0 |" in out
    assert "CHECK FAILED" not in out and "were not hits" not in out
