"""SQLAlchemy's own ORM tests, run with every SELECT cached, change no outcome (CI slice).

Runs ``python -m tests.peer --files ci`` (test_lazy_relations.py and
test_expire.py of the installed SQLAlchemy's sdist, plainly and cached) and
asserts that no test changed outcome for a reason other than counting
statements or observing the caching option. The full list is a documented
command (``tests/peer/README.md``). Skips when the sdist cannot be downloaded,
unless ``QC_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.peer import runner

REPO = Path(__file__).resolve().parents[1]
REQUIRE = os.environ.get("QC_REQUIRE_SERVICES") == "1"


def _redis_up(url: str) -> bool:
    try:
        import redis

        redis.Redis.from_url(url, socket_timeout=2).ping()
        return True
    except Exception:
        return False


@pytest.mark.parametrize("variant", ["memory", "redis"])
def test_sqlalchemy_orm_suite_slice_unchanged_by_caching(variant: str, tmp_path: Path) -> None:
    # QC_PEER_CI_FILES="test_lazy_relations.py test_expire.py test_bind.py" widens the slice
    files = os.environ.get("QC_PEER_CI_FILES", "").split() or runner.CI_FILES
    args = ["--files", *files, "--variant", variant, "--json", str(tmp_path / "r.json")]
    if variant == "redis":
        url = os.environ.get("QC_PEER_REDIS_URL", "redis://127.0.0.1:6379/3")
        if not _redis_up(url):
            if REQUIRE:
                pytest.fail(f"QC_REQUIRE_SERVICES=1 but no Redis at {url} (QC_PEER_REDIS_URL)")
            pytest.skip(f"no Redis at {url}: set QC_PEER_REDIS_URL to a scratch database")
        args += ["--redis-url", url]
    proc = subprocess.run(
        [sys.executable, "-m", "tests.peer", *args],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    if proc.returncode == 2 and "cannot download" in out and not REQUIRE:
        pytest.skip("the SQLAlchemy sdist cannot be downloaded (no package index?): "
                    + out.strip().splitlines()[-1][:300])  # fmt: skip
    assert proc.returncode != 2, f"the peer harness could not run:\n{out[-4000:]}"
    report = json.loads((tmp_path / "r.json").read_text())
    assert sum(f["tests"] for f in report["files"].values()) > 100, out[-2000:]
    # the cache really served some of those SELECTs
    assert sum(f["hits"] for f in report["files"].values()) > 0, out[-2000:]
    other = [c for c in report["changed"] if c["class"] == "other"]
    assert not other, "outcomes changed by caching:\n" + out[-6000:]
    assert proc.returncode == 0, out[-4000:]


# ----------------------------------------------------- the classifier itself

_COUNT_TB = """Traceback (most recent call last):
  File "/x/test/orm/test_lazy_relations.py", line 10, in test_x
    self.assert_sql_count(testing.db, go, 15)
  File "/x/lib/sqlalchemy/testing/assertions.py", line 950, in assert_sql_count
    self.assert_sql_execution(
  File "/x/lib/sqlalchemy/testing/assertsql.py", line 351, in no_more_statements
    assert False, "desired statement count %d does not match %d" % (
AssertionError: desired statement count 15 does not match 14
"""

_ERROR_INSIDE_COUNT_TB = """Traceback (most recent call last):
  File "/x/test/orm/test_expire.py", line 10, in test_x
    self.assert_sql_count(testing.db, go, 1)
  File "/x/lib/sqlalchemy/testing/assertions.py", line 950, in assert_sql_count
    self.assert_sql_execution(
  File "/x/test/orm/test_expire.py", line 8, in go
    sess.rollback()
  File "/x/sqla_querycache/events.py", line 118, in on_rollback
    cache._on_rollback(conn.info)
sqlalchemy.exc.PendingRollbackError: Can't reconnect until invalid transaction is rolled back.
"""

_OPTION_TB = """Traceback (most recent call last):
  File "/x/test/orm/test_session.py", line 10, in test_info
    eq_(sess.info, {})
  File "/x/lib/sqlalchemy/testing/assertions.py", line 300, in eq_
    assert a == b, msg or "%r != %r" % (a, b)
AssertionError: {'cache_region': 'default'} != {}
"""


_RECORDER = "test/orm/test_events.py::ORMExecuteTest::test_user_option_propagation"
_RECORDED_TB = """Traceback (most recent call last):
  File "/x/test/orm/test_events.py", line 232, in test_user_option_propagation
    eq_(
  File "/x/lib/sqlalchemy/testing/assertions.py", line 292, in eq_
    assert a == b, msg or "%r != %r" % (a, b)
AssertionError: [call.update_execution_options(_sa_shard_id='a')] != [call.x(), call.y()]
"""
_RECORDER_RAISES_TB = """Traceback (most recent call last):
  File "/x/test/orm/test_events.py", line 230, in test_user_option_propagation
    sess.execute(stmt)
  File "/x/lib/sqlalchemy/orm/session.py", line 10, in execute
    return self._execute_internal(
AssertionError: something inside SQLAlchemy
"""


@pytest.mark.parametrize(
    ("text", "nodeid", "expected"),
    [(_RECORDED_TB, _RECORDER + "[True-selectinload-3-fixed]", "sql-count"),
     (_RECORDER_RAISES_TB, _RECORDER + "[True-selectinload-3-fixed]", "other"),
     (_RECORDED_TB, "test/orm/test_events.py::ORMExecuteTest::test_other[x]", "other")],
)  # fmt: skip
def test_classify_tests_that_record_executions(text: str, nodeid: str, expected: str) -> None:
    """A listed test counts as sql-count only when its own assertion fails."""
    kind, reason = runner.classify({"outcome": "passed"},
                                   {"outcome": "failed", "longrepr": text}, nodeid)  # fmt: skip
    assert kind == expected, reason


@pytest.mark.parametrize(
    ("text", "expected"),
    [(_COUNT_TB, "sql-count"), (_ERROR_INSIDE_COUNT_TB, "other"), (_OPTION_TB, "observe-option")],
)
def test_classify(text: str, expected: str) -> None:
    kind, reason = runner.classify({"outcome": "passed"}, {"outcome": "failed", "longrepr": text})
    assert kind == expected, reason
