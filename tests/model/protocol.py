"""Exhaustive state-space exploration of the Redis version protocol.

Two writers (one transaction each), two readers (one cached read each) and a
store that may hang, black-hole, reset every connection, crash, restart
(empty, or from a snapshot taken at any earlier moment) and apply what it
received in any order, late, or never. Time is discrete (``tick``); the epoch
lease is ``L`` ticks, an in-flight mark lives ``M`` ticks.

Checked on every transition / state:

- **promise**: a read that began after a commit returned never returns data
  older than that commit;
- **entries**: no entry a read could serve (store reachable after its boot
  check, live epoch, equal version, no live mark) holds data older than a
  returned commit (an entry stored with versions newer than its data shows
  up here);
- **marks end**: an in-flight mark nobody holds any more is never re-armed
  past its own TTL, and in a final state no mark is waiting on its owner.

``Protocol`` flags switch single protocol steps off; the tests assert that each
such mutant has a counterexample, so the checker provably can fail.

Modelled assumption (A1, see ARCHITECTURE.md "Faults"): a writer that failed
to mark retries before the store's availability changes again (the store
does not flap faster than the retry interval), and faults are global (no
partition that cuts one client off a store others still reach).

    python -m tests.model.protocol            # explore the real protocol
    python -m tests.model.protocol no_lease_wait
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

L = 2  # epoch lease, ticks
M = 3  # in-flight mark TTL, ticks
TMAX = 5  # time horizon
FAULTS = 2  # faults per run (hang, black-hole, reset, crash; a restart is free)
ATTEMPTS = 2  # mark attempts per writer
FRESH0 = 100  # fresh random values: 100, 101, ... (never equal to a small INCR result)


@dataclass(frozen=True)
class Protocol:
    premark: bool = True  # bump + mark before the database commit
    versions_before_query: bool = True  # an entry stores the versions read before its query
    lease_wait: bool = True  # a writer that could not mark waits out the lease first
    boot_check: bool = True  # a restarted store gets a fresh epoch (run_id != recorded boot)
    token_marks: bool = True  # per-writer mark tokens with own TTL + tombstones (vs shared counter)
    inflight_check: bool = True  # readers neither serve nor store a marked table
    epoch: bool = True  # entries depend on the epoch (lease) at all
    #: the pre-commit check: each mark sent ahead is confirmed (or made again) in the
    #: server's current incarnation, sent before the database commit and awaited
    #: before commit() returns; a failed check settles the commit as unmarked
    verify: bool = True
    #: a mark sent within the commit() call itself (the flush inside commit) skips
    #: the pre-commit check: its reply, awaited before the database commit, is as
    #: recent as the check would be. A writer chooses either kind at each commit
    #: (``early_marks``: marks sent earlier in the transaction, checked before it).
    in_commit_marks: bool = True
    early_marks: bool = True
    #: A2: no crash/restart while a writer holds a confirmed mark whose end has not
    #: landed; with ``verify`` only in the window between the check and the database
    #: commit (a known limit, see ARCHITECTURE.md; the mutants "restart_while_marked"
    #: and "restart_during_db_commit" drop it); for a mark sent within commit(), from
    #: its landing to the database commit (the mutant "restart_after_in_commit_mark"
    #: drops that part)
    no_restart_while_marked: bool = True
    a2_in_commit: bool = True
    settle_unmarked: bool = True  # an unmarked commit bumps before returning if the store answers


class Data(NamedTuple):
    """What the server holds (and what a snapshot holds)."""

    v: int | None  # the table's version
    epoch: tuple[int, int] | None  # (id, absolute expiry)
    marks: frozenset  # (token, expiry, applied_at)
    dead: frozenset  # tombstoned tokens
    entry: tuple | None  # ((epoch id, v), data)
    boot: int  # run_id recorded by the last boot check


class Writer(NamedTuple):
    pc: str  # idle await retry commit end ending done
    attempt: int
    token: Any
    marked: bool
    began: int | None  # this process's outage start (first failure since a success)
    owes: bool  # must attempt again before the store's availability changes (A1)
    mine: int  # data value its commit produced
    owed: frozenset  # messages to deliver (ends, cancels) until the store takes them
    incommit: bool  # its mark is sent within commit(): no pre-commit check


class Reader(NamedTuple):
    pc: str  # idle lookup query store done
    need: int
    vers: Any
    data: int


class State(NamedTuple):
    t: int
    status: str  # up hung hole dead
    run: int  # the server's run_id (a restart makes a new one)
    data: Data
    snap: Data | None
    pending: frozenset  # messages sent, not applied yet
    acked: frozenset  # tokens / messages whose reply arrived
    db: int
    returned: int  # newest data value whose commit() returned
    writers: tuple
    readers: tuple
    fresh: int
    faults: int


def initial() -> State:
    d = Data(None, None, frozenset(), frozenset(), None, 0)
    w = Writer("idle", 0, None, False, None, False, 0, frozenset(), False)
    r = Reader("idle", 0, None, 0)
    return State(0, "up", 0, d, None, frozenset(), frozenset(), 0, 0,
                 (w,) * _WHO["writers"], (r,) * _WHO["readers"], FRESH0, 0)  # fmt: skip


class Violation(Exception):
    pass


def _live_marks(d: Data, t: int) -> bool:
    return any(exp > t for _, exp, _ in d.marks)


def _boot(s: State, p: Protocol) -> State:
    """What every new connection runs first (and the heartbeat): a restart gets a fresh epoch."""
    if not p.boot_check or s.data.boot == s.run:
        return s
    d = s.data._replace(boot=s.run, epoch=(s.fresh, s.t + L))
    return s._replace(data=d, fresh=s.fresh + 1)


def _read_versions(s: State, p: Protocol) -> tuple[State, Any]:
    """The read script: create epoch / version if missing; None if the table is in flight."""
    d = s.data
    fresh = s.fresh
    epoch = d.epoch
    if epoch is None or epoch[1] <= s.t:
        epoch = (fresh, s.t + L)
        fresh += 1
    v = d.v
    if v is None:
        v = fresh
        fresh += 1
    d = d._replace(epoch=epoch, v=v)
    s = s._replace(data=d, fresh=fresh)
    if p.inflight_check and _live_marks(d, s.t):
        return s, None
    return s, ((epoch[0] if p.epoch else 0), v)


def _apply(s: State, msg: tuple, p: Protocol) -> State:
    d = s.data
    kind = msg[0]
    t = s.t
    acked = s.acked | {msg} if kind in ("end", "cancel") else s.acked
    if kind == "begin":
        _, _w, token = msg
        v = 1 if d.v is None else d.v + 1
        marks = d.marks
        if token not in d.dead:
            if p.token_marks:
                marks = marks | {(token, t + M, t)}
            else:  # one shared counter, one shared TTL: every begin re-arms them all
                marks = frozenset((tk, t + M, at) for tk, _, at in marks) | {(token, t + M, t)}
        d = d._replace(v=v, marks=marks)
        acked = acked | {token}
    elif kind in ("end", "cancel"):
        _, _w, token = msg
        marks = d.marks
        if token is not None:
            mine = [m for m in marks if m[0] == token]
            if not p.token_marks and not mine and marks and kind == "end":
                mine = [min(marks)]  # a counter: DECR takes anybody's mark
            marks = marks - set(mine)
        if kind == "end":
            d = d._replace(v=(1 if d.v is None else d.v + 1), marks=marks)
        else:
            d = d._replace(marks=marks, dead=(d.dead | {token}) if p.token_marks else d.dead)
    elif kind == "verify":
        _, _w, token = msg
        if token not in d.dead and not any(m[0] == token for m in d.marks):
            v = 1 if d.v is None else d.v + 1  # lost: bump and mark again
            d = d._replace(v=v, marks=d.marks | {(token, t + M, t)})
        acked = acked | {msg}
    elif kind == "set":
        _, vers, value = msg
        d = d._replace(entry=(vers, value))
    return s._replace(data=d, pending=s.pending - {msg}, acked=acked)


def _store_away_allowed(s: State) -> bool:
    """A1: no fault takes the store away while a writer owes a retry in an up period."""
    return s.faults < FAULTS and not any(w.owes for w in s.writers)


def _set(tup: tuple, i: int, val: Any) -> tuple:
    return (*tup[:i], val, *tup[i + 1:])


def _send(s: State, msg: tuple) -> State:
    if s.status in ("hole", "dead"):
        return s  # black-holed or refused: lost
    return s._replace(pending=s.pending | {msg})


def successors(s: State, p: Protocol) -> list[tuple[str, State]]:
    out: list[tuple[str, State]] = []
    up = s.status == "up"

    # -- the store
    if up:
        for msg in sorted(s.pending, key=repr):
            s2 = _apply(_boot(s, p), msg, p)
            out.append((f"apply {msg}", s2))
        s2 = _boot(s, p)  # heartbeat: boot check + renew a live epoch
        e = s2.data.epoch
        if e is not None and e[1] > s.t:
            s2 = s2._replace(data=s2.data._replace(epoch=(e[0], s.t + L)))
        out.append(("heartbeat", s2))
        if s.snap != s.data and s.faults < FAULTS:
            out.append(("snapshot", s._replace(snap=s.data)))
    if s.t < TMAX and not any(w.pc in ("commit", "dbc", "vcheck", "end") for w in s.writers):
        out.append(("tick", s._replace(t=s.t + 1)))  # a commit takes no time
    if up and _store_away_allowed(s):
        out.append(("hang", s._replace(status="hung", faults=s.faults + 1)))
        out.append(("black-hole", s._replace(status="hole", pending=frozenset(),
                                             faults=s.faults + 1)))  # fmt: skip
        if not (p.no_restart_while_marked and _marked_in_flight(s, p)):
            out.append(("crash", s._replace(status="dead", pending=frozenset(),
                                            faults=s.faults + 1)))  # fmt: skip
    if s.status in ("up", "hung") and s.pending and s.faults < FAULTS:
        out.append(("reset", s._replace(pending=frozenset(), faults=s.faults + 1)))
    if s.status in ("hung", "hole"):
        out.append(("resume", _resumed(s._replace(status="up"))))
    if s.status == "dead":
        empty = Data(None, None, frozenset(), frozenset(), None, -1)
        out.append(("restart empty", _resumed(s._replace(status="up", run=s.run + 1, data=empty))))
        if s.snap is not None:
            out.append(("restart from snapshot",
                        _resumed(s._replace(status="up", run=s.run + 1, data=s.snap))))  # fmt: skip

    # -- writers
    for i, w in enumerate(s.writers):
        for label, w2, s2 in _writer_steps(s, i, w, p):
            out.append((f"w{i} {label}", s2._replace(writers=_set(s2.writers, i, w2))))
    # -- readers
    for i, r in enumerate(s.readers):
        for label, r2, s2 in _reader_steps(s, i, r, p):
            readers = tuple(sorted(_set(s2.readers, i, r2), key=repr))  # interchangeable
            out.append((f"r{i} {label}", s2._replace(readers=readers)))
    return out


def _marked_in_flight(s: State, p: Protocol) -> bool:
    """A writer whose mark landed and whose end has not landed yet (with the
    pre-commit check: one whose check ran and whose database commit has not)."""
    if p.verify:
        if p.a2_in_commit and any(
            w.incommit and ((w.pc == "commit" and w.marked)
                            or (w.pc == "await" and any(m[0] == w.token for m in s.data.marks)))
            for w in s.writers
        ):  # fmt: skip
            return True
        return any(w.pc == "dbc" and w.marked and ("verify", i, w.token) in s.acked
                   for i, w in enumerate(s.writers))  # fmt: skip
    for w in s.writers:
        if w.pc in ("commit", "end") and w.marked:
            return True
        if w.pc == "await" and any(m[0] == w.token for m in s.data.marks):
            return True
        if w.pc == "ending" and w.marked and any(m[0] == w.token for m in s.data.marks):
            return True
    return False


def _resumed(s: State) -> State:
    """The store is back: a writer waiting to retry must try before it can go away again."""
    ws = tuple(w._replace(owes=True) if w.pc == "retry" else w for w in s.writers)
    return s._replace(writers=ws)


def _writer_steps(s: State, i: int, w: Writer, p: Protocol) -> list:
    out = []
    up = s.status == "up"
    if w.pc == "idle":
        if p.premark:
            token = (i, 0)
            if p.early_marks or not (p.verify and p.in_commit_marks):
                out.append(("mark", w._replace(pc="await", token=token, attempt=1),
                            _send(s, ("begin", i, token))))  # fmt: skip
            if p.verify and p.in_commit_marks:
                out.append(("mark within commit()",
                            w._replace(pc="await", token=token, attempt=1, incommit=True),
                            _send(s, ("begin", i, token))))  # fmt: skip
        else:
            out.append(("commit without mark", w._replace(pc="commit", marked=False), s))
    elif w.pc == "await":
        if w.token in s.acked:
            s2 = s._replace(acked=s.acked - {w.token})
            applied = [at for tk, _, at in s.data.marks if tk == w.token]
            if applied and s.t - applied[0] >= M - 1:  # older than the re-mark age: mark again
                if w.attempt < ATTEMPTS:  # (a writer out of attempts here just stops)
                    end = ("end", i, w.token)
                    w2 = w._replace(pc="retry", owes=up, owed=w.owed | {end})
                    out.append(("mark too old", w2, _send(s2, end)))
            else:
                out.append(("marked", w._replace(pc="commit", marked=True, began=None,
                                                  owes=False), s2))  # fmt: skip
        elif not up or ("begin", i, w.token) not in s.pending:
            began = w.began if w.began is not None else s.t
            cancel = ("cancel", i, w.token)
            owed = w.owed | {cancel} if p.token_marks else w.owed
            w2 = w._replace(pc="retry", began=began, owes=up, owed=owed)
            out.append(("mark timed out", w2, _send(s, cancel) if p.token_marks else s))
    elif w.pc == "retry":
        if w.attempt < ATTEMPTS:
            token = (i, w.attempt)
            w2 = w._replace(pc="await", token=token, attempt=w.attempt + 1, owes=False)
            out.append(("mark again", w2, _send(s, ("begin", i, token))))
        if w.began is not None and not w.owes and (not p.lease_wait or s.t >= w.began + L):
            out.append(("commit unmarked", w._replace(pc="commit", marked=False, owes=False), s))
    elif w.pc == "commit":
        db = s.db + 1
        if p.verify and w.marked and not w.incommit:
            check = ("verify", i, w.token)
            out.append(("pre-commit check", w._replace(pc="dbc"), _send(s, check)))
        else:
            out.append(("db commit", w._replace(pc="end", mine=db), s._replace(db=db)))
    elif w.pc == "dbc":
        db = s.db + 1
        out.append(("db commit", w._replace(pc="vcheck", mine=db), s._replace(db=db)))
    elif w.pc == "vcheck":  # commit() awaits the check before it returns
        check = ("verify", i, w.token)
        if check in s.acked:
            out.append(("check held", w._replace(pc="end"), s._replace(acked=s.acked - {check})))
        elif not up or check not in s.pending:  # lost, or the store is away: unknown
            out.append(("check failed", w._replace(pc="end", marked=False), s))
    elif w.pc == "end":
        end = ("end", i, w.token if w.marked else None)
        if not w.marked and up and p.settle_unmarked:
            # settle_unmarked: the bump lands before commit() returns when the store answers
            s2 = _apply(_boot(s, p), end, p)
            s2 = s2._replace(returned=max(s.returned, w.mine), acked=s2.acked - {end})
            out.append(("commit returned (bumped)", w._replace(pc="ending"), s2))
        else:
            s2 = _send(s, end)._replace(returned=max(s.returned, w.mine))
            out.append(("commit returned", w._replace(pc="ending", owed=w.owed | {end}), s2))
    if w.pc in ("ending", "retry", "await", "commit", "dbc", "vcheck", "end") and w.owed:
        done = frozenset(m for m in w.owed if m in s.acked)
        if done:
            w2 = w._replace(owed=w.owed - done)
            if w2.pc == "ending" and not w2.owed:
                w2 = w2._replace(pc="done")
            out.append(("delivered", w2, s._replace(acked=s.acked - done)))
        for m in sorted(w.owed - done - s.pending, key=repr):
            if up:
                out.append((f"resend {m[0]}", w, _send(s, m)))
    if w.pc == "ending" and not w.owed:
        out.append(("done", w._replace(pc="done"), s))
    return out


def _reader_steps(s: State, i: int, r: Reader, p: Protocol) -> list:
    out = []
    up = s.status == "up"
    if r.pc == "idle":
        out.append(("start", r._replace(pc="lookup", need=s.returned), s))
    elif r.pc == "lookup":
        if up:
            s2, vers = _read_versions(_boot(s, p), p)
            if vers is None:
                _check_read(s, r, s.db, "bypass")
                out.append(("bypass (in flight)", r._replace(pc="done"), s2))
            else:
                entry = s2.data.entry
                if entry is not None and entry[0] == vers:
                    _check_read(s, r, entry[1], "hit")
                    out.append(("hit", r._replace(pc="done", data=entry[1]), s2))
                else:
                    out.append(("miss", r._replace(pc="query", vers=vers), s2))
        else:
            _check_read(s, r, s.db, "fallback")
            out.append(("store down: database", r._replace(pc="done"), s))
    elif r.pc == "query":
        _check_read(s, r, s.db, "miss")
        out.append(("query", r._replace(pc="store", data=s.db), s))
    elif r.pc == "store":
        vers = r.vers
        if not p.versions_before_query:
            if not up:
                return [("store skipped", r._replace(pc="done"), s)]
            s, vers = _read_versions(_boot(s, p), p)
            if vers is None:
                return [("store skipped", r._replace(pc="done"), s)]
        out.append(("store entry", r._replace(pc="done"), _send(s, ("set", vers, r.data))))
    return out


def _check_read(s: State, r: Reader, value: int, how: str) -> None:
    if value < r.need:
        raise Violation(f"stale read ({how}): began after commit {r.need} returned, saw {value}")


def check_state(s: State, p: Protocol) -> None:
    d = s.data
    # entries: nothing servable is older than a returned commit
    if d.entry is not None and s.status == "up" and (d.boot == s.run or not p.boot_check):
        (eid, ev), value = d.entry
        epoch = d.epoch
        alive = epoch is not None and epoch[1] > s.t
        servable = alive and (epoch[0] if p.epoch else 0) == eid and d.v == ev
        if (servable and not (p.inflight_check and _live_marks(d, s.t))
                and value < s.returned):  # fmt: skip
            raise Violation(f"servable entry holds {value} < returned commit {s.returned}")
    # marks end: a mark nobody holds is never re-armed past its own TTL
    held = {w.token for w in s.writers
            if w.pc in ("await", "commit", "dbc", "vcheck", "end") and w.token}  # fmt: skip
    for token, exp, at in d.marks:
        if token not in held and exp > at + M:
            raise Violation(f"in-flight mark {token} re-armed after its owner let go")
    if (all(w.pc == "done" for w in s.writers) and all(r.pc == "done" for r in s.readers)
            and not s.pending and any(exp > s.t + M for _, exp, _ in d.marks)):  # fmt: skip
        raise Violation("a mark outlives every writer by more than its TTL")


_WHO = {"writers": 2, "readers": 2}


@contextlib.contextmanager
def configured(writers: int = 2, readers: int = 2, tmax: int = TMAX, faults: int = FAULTS,
               lease: int = L, mark_ttl: int = M, attempts: int = ATTEMPTS) -> Iterator[None]:  # fmt: skip
    """Explore a world of this size (module-level bounds, restored afterwards)."""
    g = globals()
    saved = {k: g[k] for k in ("TMAX", "FAULTS", "L", "M", "ATTEMPTS")}, dict(_WHO)
    g.update(TMAX=tmax, FAULTS=faults, L=lease, M=mark_ttl, ATTEMPTS=attempts)
    _WHO.update(writers=writers, readers=readers)
    try:
        yield
    finally:
        g.update(saved[0])
        _WHO.update(saved[1])


@dataclass
class Result:
    ok: bool
    states: int
    transitions: int
    seconds: float
    trace: list[str]
    error: str = ""


def explore(p: Protocol = Protocol(), limit: int = 5_000_000) -> Result:
    """Breadth-first over every interleaving; the first violation with its shortest trace."""
    start = time.monotonic()
    s0 = initial()
    parent: dict[State, tuple[State | None, str]] = {s0: (None, "init")}
    queue = deque([s0])
    transitions = 0
    while queue:
        s = queue.popleft()
        try:
            check_state(s, p)
            nexts = successors(s, p)
        except Violation as v:
            return Result(False, len(parent), transitions, time.monotonic() - start,
                          _trace(parent, s), str(v))  # fmt: skip
        for label, s2 in nexts:
            transitions += 1
            if s2 not in parent:
                parent[s2] = (s, label)
                if len(parent) > limit:
                    raise RuntimeError("state space over the limit")
                queue.append(s2)
    return Result(True, len(parent), transitions, time.monotonic() - start, [])


def _trace(parent: dict, s: State) -> list[str]:
    steps = []
    while s is not None:
        prev, label = parent[s]
        steps.append(f"{label:28} t={s.t} {s.status:4} db={s.db} ret={s.returned} "
                     f"v={s.data.v} epoch={s.data.epoch} entry={s.data.entry}")  # fmt: skip
        s = prev
    return steps[::-1]


MUTANTS = {
    "no_premark": Protocol(premark=False, settle_unmarked=False),  # the end is asynchronous
    "versions_after_query": Protocol(versions_before_query=False),
    "no_lease_wait": Protocol(lease_wait=False),
    "no_boot_check": Protocol(boot_check=False),
    "shared_counter_marks": Protocol(token_marks=False),
    "no_inflight_check": Protocol(inflight_check=False),
    "no_epoch": Protocol(epoch=False),
    "restart_while_marked": Protocol(verify=False, no_restart_while_marked=False),
    "restart_during_db_commit": Protocol(no_restart_while_marked=False),
    "unmarked_bump_async": Protocol(settle_unmarked=False),
    "restart_after_in_commit_mark": Protocol(a2_in_commit=False),
}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description="explore the version protocol's model")
    ap.add_argument("names", nargs="*", default=["protocol"], help="protocol or a mutant")
    ap.add_argument("--writers", type=int, default=1)
    ap.add_argument("--readers", type=int, default=2)
    ap.add_argument("--tmax", type=int, default=2)
    ap.add_argument("--faults", type=int, default=1)
    ap.add_argument("--lease", type=int, default=1)
    ap.add_argument("--mark-ttl", type=int, default=2)
    ap.add_argument("--attempts", type=int, default=1)
    ap.add_argument("--limit", type=int, default=20_000_000)
    a = ap.parse_args(argv)
    status = 0
    for name in a.names:
        p = MUTANTS[name] if name in MUTANTS else Protocol()
        with configured(a.writers, a.readers, a.tmax, a.faults, a.lease, a.mark_ttl, a.attempts):
            r = explore(p, a.limit)
        verdict = "holds" if r.ok else f"VIOLATED: {r.error}"
        print(f"{name}: {verdict} ({r.states} states, {r.transitions} transitions, "
              f"{r.seconds:.1f} s)")  # fmt: skip
        for line in r.trace:
            print("   ", line)
        status |= 0 if r.ok == (name == "protocol") else 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
