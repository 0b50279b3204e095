"""The version protocol's model (tests/model/protocol.py): the real protocol holds,
and every mutant that drops one protocol step has a counterexample.

The exhaustive run of the real protocol here is the CI-sized one (one writer,
two readers, one fault, a 2-tick horizon); the two-writer runs are longer:
``python -m tests.model.protocol --writers 2`` (see ARCHITECTURE.md).
"""

from __future__ import annotations

import pytest

from .model import protocol as m

CI = dict(writers=1, readers=2, tmax=2, faults=1, lease=1, mark_ttl=2, attempts=1)


@pytest.mark.parametrize("marks", ["early", "in_commit"])
def test_the_protocol_holds(marks):
    """Marks sent early in the transaction (checked again before the database
    commit) and marks sent within commit() (not checked again), each world
    explored whole; with one writer the two together are every interleaving of
    a writer that may do either."""
    p = m.Protocol(early_marks=marks == "early", in_commit_marks=marks == "in_commit")
    with m.configured(**CI):
        r = m.explore(p, limit=2_000_000)
    assert r.ok, "\n".join([r.error, *r.trace])
    print(f"\n{r.states} states, {r.transitions} transitions, {r.seconds:.1f} s")


MUTANT_CONFIG = {  # the smallest world that shows each bug
    "no_premark": dict(writers=1, readers=2, tmax=0, faults=0),
    "versions_after_query": dict(writers=1, readers=2, tmax=0, faults=0),
    "no_inflight_check": dict(writers=1, readers=2, tmax=0, faults=0),
    "no_lease_wait": dict(writers=1, readers=1, tmax=1, faults=1, lease=1, mark_ttl=2, attempts=1),
    "no_epoch": dict(writers=1, readers=2, tmax=1, faults=1, lease=1, mark_ttl=2, attempts=1),
    "no_boot_check": dict(writers=1, readers=2, tmax=1, faults=1, lease=2, mark_ttl=3, attempts=1),
    "restart_while_marked": dict(writers=1, readers=2, tmax=0, faults=1),
    "restart_during_db_commit": dict(writers=1, readers=2, tmax=0, faults=1),
    "restart_after_in_commit_mark": dict(writers=1, readers=2, tmax=0, faults=1),
    "unmarked_bump_async": dict(writers=1, readers=1, tmax=1, faults=1, lease=1, mark_ttl=2,
                                attempts=1),  # fmt: skip
    "shared_counter_marks": dict(writers=2, readers=0, tmax=1, faults=1, lease=1, mark_ttl=3,
                                 attempts=1),  # fmt: skip
}


@pytest.mark.parametrize("name", sorted(m.MUTANTS))
def test_each_mutant_has_a_counterexample(name):
    with m.configured(**MUTANT_CONFIG[name]):
        r = m.explore(m.MUTANTS[name], limit=1_500_000)
    assert not r.ok, f"{name}: no counterexample in {r.states} states"
    assert r.trace
