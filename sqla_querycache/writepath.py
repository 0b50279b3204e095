"""The write path: what a connection's transaction wrote, and the commit protocol.

Every statement on every connection passes :meth:`WritePath.on_statement`
(``before_cursor_execute``): its analysis (:mod:`.tracking`) says which
tables it writes and whether it controls the transaction (textual ``BEGIN``
/ ``COMMIT``, two-phase ``PREPARE`` / ``COMMIT PREPARED``, a MySQL statement
that commits implicitly). The state lives on the DBAPI connection
(``Connection.info``), so every Session and Core caller sharing a connection
shares it.

The commit protocol, in two halves around the database commit (see
ARCHITECTURE.md, "Version protocol"):

1. before it: bump the written tables and mark them in flight
   (:meth:`WritePath.before_commit`);
2. after it returned: bump them again and clear the mark
   (:meth:`WritePath.settle`).

No method here raises into the user's statement or commit: a version store
that does not answer makes its tables bypassed in this process until the bump
is delivered (:class:`PendingBumps`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import rows, tracking
from .exc import ConfigurationError
from .tracking import ALL_TABLES, ANY_TABLE, ConnTracker

if TYPE_CHECKING:
    from .cache import QueryCache

log = logging.getLogger("sqla_querycache")

#: two-phase transactions prepared by this process: xid -> the tables written
_prepared: dict[str, tuple[str, ...]] = {}
_prepared_lock = threading.Lock()


class WritePath:
    def __init__(self, cache: QueryCache):
        self.cache = cache
        self.versions = cache.versions
        self.info_key = cache._info_key
        self.failed = PendingBumps(self)

    # ------------------------------------------------------------ trackers

    def tracker(self, info: dict[str, Any]) -> ConnTracker:
        ct = info.get(self.info_key)
        if ct is None:
            ct = info[self.info_key] = ConnTracker()
        return ct

    # ---------------------------------------------------------- statements

    def on_statement(self, conn: Any, context: Any, statement: str) -> None:
        """``before_cursor_execute``: classify, record, and act on transaction control."""
        if context is not None and context.execution_options.get("_qc_internal"):
            return  # the sql version store's own statements
        scan = tracking.scan(conn, context, statement)
        recorder = tracking.current_recorder()
        if recorder is not None:
            recorder.add(scan, context)
        ct = self.tracker(conn.info)
        if scan.isolation is not None or scan.session_state:
            tracking.note_connection_state(ct, scan)
        if scan.txn is None:
            ct.statements += 1  # the transaction may hold a snapshot from now on
            if not scan.writes and not scan.implicit_commit:
                return  # a read: nothing more to do (the common case, kept short)
        autocommit = tracking.is_autocommit(conn) and not ct.text_txn
        if scan.txn is not None:
            self._on_transaction_control(conn, ct, scan, statement, autocommit)
        writes = scan.writes
        if writes:
            if ALL_TABLES not in writes:
                direct = writes
                writes = tracking.write_closure(conn, writes, scan.truncate_cascade)
                writes = writes | self._row_names(ct, context, direct, writes)
            if scan.implicit_commit and not autocommit and conn.in_transaction():
                # MySQL commits the open transaction before (and after) this statement
                self.before_commit(conn)
                ct.written = set()
                autocommit = True
            self.on_write(ct, writes, autocommit, conn)
        elif scan.implicit_commit and not autocommit and ct.written:
            self.before_commit(conn)
            ct.written = set()
            ct.settle_after = True

    def _row_names(
        self, ct: ConnTracker, context: Any, direct: frozenset[str], writes: frozenset[str]
    ) -> set[str]:
        """The row-level names a write changes (:mod:`.rows`): the rows and
        foreign-key groups it names, or every row (``t@rows``) of each table
        it does not attribute to rows."""
        out: set[str] = set()
        single = len(direct) == 1 and not (
            context is not None and context.execution_options.get("schema_translate_map")
        )
        for t in writes:
            if t.startswith("@"):
                continue
            if single and t in direct:
                named = ct.named
                if named is None:
                    named = ct.named = {}
                so_far = named.get(t, 0)
                found = None
                if so_far <= rows.MAX_NAMED:
                    try:
                        found = rows.attribute_write(context, t, ct.hints)
                    except Exception:  # never our exception in the user's statement
                        found = None
                if found is not None:
                    named[t] = so_far + len(found)
                    if so_far + len(found) <= rows.MAX_NAMED:
                        out |= found
                        continue
            out.add(rows.rows_any(t))
        return out

    def hint(self, info: dict[str, Any], mapper: Any, target: Any) -> None:
        """``before_update`` / ``before_delete``: the row's foreign keys before the flush."""
        try:
            from sqlalchemy import inspect

            state = inspect(target)
            ct = self.tracker(info)
            hints = ct.hints
            if hints is None:
                hints = ct.hints = {}
            for table in mapper.tables:
                if table.primary_key.columns:
                    found = rows.hint_for(mapper, state, table)
                    if found is not None:
                        hints[found[0]] = found[1]
        except Exception as err:  # a missing hint only widens the invalidation
            log.debug("no row hint: %r", err)

    def after_statement(self, conn: Any) -> None:
        """``after_cursor_execute``: a statement that committed by itself has run."""
        ct = conn.info.get(self.info_key)
        if ct is None:
            return
        if ct.written and tracking.committed_alone(conn):
            # writes recorded as pending, and the driver holds no transaction: it
            # committed them by itself (sqlite3 opens none before a WITH ... UPDATE
            # or DDL), or rolled them back; either way they are bumped now, with no
            # transaction to ride on (the store bumps on its own connection)
            self.before_commit(conn, bind=conn.engine)
            ct.settle_after = True
        if ct.committing and (ct.settle_after or tracking.is_autocommit(conn)
                              or not conn.in_transaction()):  # fmt: skip
            ct.settle_after = False
            self.settle_tracker(ct)

    def _on_transaction_control(
        self, conn: Any, ct: ConnTracker, scan: Any, statement: str, autocommit: bool
    ) -> None:
        kind = scan.txn
        if kind == "begin":
            if autocommit:
                ct.text_txn = True  # writes now wait for a textual COMMIT
            ct.explicit_begin = True
            ct.statements = 0
        elif kind == "commit":
            self.before_commit(conn)
            ct.settle_after = True
            ct.end_transaction()
        elif kind == "rollback":
            self.on_rollback(conn.info)
            ct.end_transaction()
        elif kind == "prepare":
            names = tuple(sorted(ct.written)) or (ANY_TABLE,)
            with _prepared_lock:
                _prepared[tracking.xid_of(statement)] = names
            self.on_rollback(conn.info)
            ct.end_transaction()
        elif kind in ("commit_prepared", "rollback_prepared"):
            with _prepared_lock:
                prepared = _prepared.pop(tracking.xid_of(statement), None)
            if kind == "commit_prepared":
                # prepared elsewhere (another connection or process): unknown tables
                t = prepared if prepared is not None else (ALL_TABLES,)
                # no transaction to ride on: the Engine tells the store where to bump
                ct.committing.append(self.begin_commit([*t, ANY_TABLE], conn.engine))
                ct.settle_after = True

    def on_write(
        self, ct: ConnTracker, names: frozenset[str], autocommit: bool, conn: Any = None
    ) -> None:
        if autocommit:  # the statement commits itself; settled after it ran
            engine = conn.engine if conn is not None else None  # no transaction to ride on
            ct.committing.append(self.begin_commit([*names, ANY_TABLE], engine))
            ct.settle_after = True
            return
        ct.written |= names
        ct.written.add(ANY_TABLE)
        begin_async = getattr(self.versions, "begin_async", None)
        if begin_async is not None:
            new = ct.written - ct.marked
            if new:  # mark now: the round trip overlaps the transaction's own statements
                ordered = tuple(sorted(new))
                ct.marked |= new
                ct.marks.append((begin_async(ordered), ordered, time.monotonic()))

    # -------------------------------------------------------------- commit

    def begin_commit(self, names: Sequence[str], conn: Any = None) -> tuple[tuple[str, ...], bool]:
        """Before the database commit: bump and mark in flight. (names, marked?)

        If the store does not answer, keep trying for its ``retry_window``
        (the Redis store's epoch lease) before letting the commit proceed;
        see ARCHITECTURE.md for why that makes outages safe.
        """
        t = tuple(sorted(names))
        mark = getattr(self.versions, "mark_for_commit", None)
        if mark is not None:
            # the store waits at most ``lease`` from the start of an outage in
            # this process (not per commit), and not at all once it answers
            marked = bool(mark(t, conn))
            if not marked:
                self.failed.add(t)  # bypassed here until a bump lands
            return t, marked
        deadline = None
        while True:
            try:
                self.versions.begin_write(t, conn)
                return t, True
            except Exception as err:
                now_ = time.monotonic()
                if deadline is None:
                    self.cache._warn(("begin_write", type(err)), "version store failed: %r",
                                     err)  # fmt: skip
                    deadline = now_ + getattr(self.versions, "retry_window", 0.0)
                if now_ >= deadline:
                    self.failed.add(t)  # bypassed here until a bump lands
                    return t, False
                time.sleep(0.05)

    def end_commit(self, names: tuple[str, ...], marked: bool) -> None:
        """After the database commit: bump again and clear the in-flight mark."""
        if marked:
            self.end_write(names)
        else:
            settle = getattr(self.versions, "settle_unmarked", None)
            if settle is not None:  # bump before the commit returns, if the store is back
                settle(names)
        self.cache._stats.written(names)

    def end_write(self, names: tuple[str, ...]) -> None:
        try:
            self.versions.end_write(names)
        except Exception as err:
            self.cache._warn(("end_write", type(err)), "version store failed: %r", err)
            self.failed.add(names, in_flight=True)

    def before_commit(self, conn: Any, bind: Any = None) -> None:
        """The ``commit`` event (and every other way a transaction commits).
        ``bind``: where a store that writes in the database bumps, when not in
        ``conn``'s transaction (one the driver already committed)."""
        ct = conn.info.get(self.info_key)
        if ct is None or not ct.written:
            return
        confirmed = self._collect_marks(ct) if ct.marks else set()
        rest = ct.written - confirmed
        if rest:  # not marked ahead, or the mark did not land (in time)
            ct.committing.append(self.begin_commit(list(rest), bind if bind is not None else conn))
        ct.written = set()
        if ct.verifies and not ct.in_session:
            # a Core commit: nothing of ours runs after it before it returns
            self._settle_verifies(ct)

    def _settle_verifies(self, ct: ConnTracker) -> None:
        """Await the pre-commit checks of marks sent ahead (``verify_async``).

        One that failed leaves the mark's fate unknown (the server may have
        restarted and lost it): its tables are settled as an unmarked commit
        (bumped before the commit returns if the store answers, else owed and
        bypassed here until the bump lands).
        """
        verifies, ct.verifies = ct.verifies, []
        store: Any = self.versions
        for ticket, names in verifies:
            if store.wait(ticket):
                continue
            self.failed.add(names)
            for i, (n, marked) in enumerate(ct.committing):
                if n == names and marked:
                    ct.committing[i] = (n, False)

    def _collect_marks(self, ct: ConnTracker) -> set[str]:
        """Await the marks sent ahead; return the tables safely marked now.

        A mark that landed is ended after the commit in any case (the counter
        must come back down); one older than half its TTL is marked again.
        """
        confirmed: set[str] = set()
        store: Any = self.versions
        fresh_until = time.monotonic() - store.in_flight_ttl / 2
        verify = getattr(store, "verify_async", None)
        for ticket, names, sent in ct.marks:
            if store.wait(ticket):
                ct.committing.append((names, True))
                if sent > fresh_until:
                    confirmed.update(names)
                    in_commit = ct.commit_began and sent >= ct.commit_began
                    if verify is not None and ticket.token and not in_commit:
                        # still there? (a restart since would have lost it). A
                        # mark sent within this commit() (its flush) is not asked
                        # again: the reply just awaited is as recent as the check
                        ct.verifies.append((verify(names, ticket.token), names))
        ct.marks = []
        ct.marked = set()
        return confirmed

    def settle(self, info: dict[str, Any] | None) -> None:
        """After a commit returned (or at the next sign of it): the post-commit bump."""
        ct = info.get(self.info_key) if info is not None else None
        if ct is not None:
            self.settle_tracker(ct)

    def settle_tracker(self, ct: ConnTracker) -> None:
        if ct.verifies:
            self._settle_verifies(ct)
        while ct.committing:
            self.end_commit(*ct.committing.pop())

    def on_rollback(self, info: dict[str, Any]) -> None:
        ct = info.get(self.info_key)
        if ct is None:
            return
        if ct.verifies:
            self._settle_verifies(ct)
        if ct.marks:  # marks that landed must come back down (their bump stays)
            store: Any = self.versions
            for ticket, names, _ in ct.marks:
                if store.wait(ticket):
                    self.end_write(names)
            ct.marks = []
            ct.marked = set()
        ct.written = set()
        ct.end_transaction()

    # -------------------------------------------------------------- manual

    def bump(self, names: Sequence[str]) -> None:
        names = rows.with_rows(names)
        try:
            self.versions.bump(names)
        except ConfigurationError:
            raise  # a store that cannot know where to bump (sql store without a database)
        except Exception as err:  # fail open: remember and retry
            self.cache._warn(("bump", type(err)), "version store bump failed: %r", err)
            self.failed.add(names)
        self.cache._stats.written(names)


class PendingBumps:
    """Invalidations the version store could not take yet; retried, and bypassed meanwhile."""

    def __init__(self, writer: WritePath):
        self._writer = writer
        self._lock = threading.Lock()
        self._pending: list[tuple[tuple[str, ...], bool]] = []
        self._names: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self._pending)

    def add(self, names: Sequence[str], in_flight: bool = False) -> None:
        with self._lock:
            self._pending.append((tuple(names), in_flight))
            self._names.update(names)

    def blocks(self, names: Sequence[str]) -> bool:
        """True while an undelivered invalidation concerns any of ``names``."""
        if not self.retry():
            return bool(self._names.intersection(names)) or ALL_TABLES in self._names
        return False

    def retry(self) -> bool:
        """Deliver what is pending; True when nothing is left."""
        versions = self._writer.versions
        with self._lock:
            while self._pending:
                names, in_flight = self._pending[0]
                try:
                    if in_flight:
                        versions.end_write(names)
                    else:
                        versions.bump(names)
                except Exception:
                    return False
                self._pending.pop(0)
            self._names.clear()
            return True
