"""App-wide counters and the app-wide switch when the versions live in the database.

The "sql" version store keeps them in a second table of its own,
``querycache_stats`` (the alembic branch's revision ``qc0002``, or
``SqlVersions.create_tables(engine)``)::

    namespace  kind  name                 value   info
    qc         c     r|default|hits       1234    -         summed counters
    qc         s     3f2a...              0       region\\x1ftables\\x1fsql
    qc         p     host:pid:abc123      <time>  -         last flush per process
    qc         w     disabled             1|0     -         the app-wide switch

Like the Redis store, every process adds what changed since its last flush
(one transaction per flush, from the background flusher, never on the hit
path), and the switch watcher reads one row per second. Both go through the
version store's own small pool, in autocommit, with parameters bound by the
driver. Their failures (the table not created yet, the database away) never
open the version store's breaker: lookups are not affected; the flush keeps
its counts for the next one and the watcher keeps what it knew; for
``RETRY_SECONDS`` after a failure they do not try the database again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Column, Float, MetaData, String, Table, Text, delete, select

from .stats import (
    MAX_STATEMENTS,
    OTHER,
    PROCESS_SEEN_SECONDS,
    ProcessInfo,
    _Meta,
    fold_overflow,
    unsent_metas,
)
from .versions import Unavailable

if TYPE_CHECKING:
    from .versions import SqlVersions, _Source

#: the table of app-wide counters and the switch (the "sql" store's second table)
STATS_TABLE = "querycache_stats"
#: rows of processes that have not flushed for this long are deleted
PROCESS_ROW_SECONDS = 86400.0
#: at most this many rows per INSERT (SQLite's bound parameters)
_BATCH = 100
#: after a failure (the table not created yet, the database away), seconds during
#: which flushes and switch reads fail at once instead of opening a connection
RETRY_SECONDS = 10.0


def stats_table(metadata: MetaData, name: str = STATS_TABLE) -> Table:
    return Table(
        name,
        metadata,
        Column("namespace", String(64), primary_key=True),
        Column("kind", String(1), primary_key=True),
        Column("name", String(255), primary_key=True),
        Column("value", Float(53), nullable=False),
        Column("info", Text, nullable=True),
    )


def _execute(cursor: Any, dialect: Any, stmt: Any) -> None:
    """Run a Core statement on a raw DBAPI cursor, its values bound by the driver."""
    compiled = stmt.compile(dialect=dialect)
    params = compiled.construct_params()
    if compiled.positional:
        cursor.execute(compiled.string, tuple(params[k] for k in compiled.positiontup))
    else:
        cursor.execute(compiled.string, params)


class SqlShared:
    """The app-wide counters (a stats store for :class:`~.stats.AppStats`) and the
    app-wide switch of one namespace, in ``querycache_stats``."""

    def __init__(self, versions: SqlVersions, namespace: str):
        self.versions = versions
        self.namespace = namespace
        self.table: Table = versions.stats_table
        self._registered: set[str] = set()
        self._pruned = 0.0
        #: monotonic time before which calls fail at once (after a failure)
        self._down_until = 0.0

    # -- plumbing

    def _source(self) -> _Source:
        return self.versions._targets()[0]  # ConfigurationError: no database known yet

    def _run(self, work: Callable[[Any, Any], Any], transaction: bool = False) -> Any:
        """``work(cursor, dialect)`` on a connection of the store's pool. Raises
        Unavailable (or ConfigurationError); never opens the store's breaker."""
        src = self._source()
        if src.pool is None:
            raise Unavailable(f"the sql version store cannot reach {src.where} on its own")
        src.circuit.check()  # the database is known to be away: do not wait for it
        if time.monotonic() < self._down_until:
            raise Unavailable(f"{self.table.name} failed less than {RETRY_SECONDS:g}s ago")
        try:
            conn = src.pool.connect()
        except Exception as err:
            self._down_until = time.monotonic() + RETRY_SECONDS
            raise Unavailable(f"{self.table.name}: cannot connect: {err!r}") from None
        try:
            cursor = conn.cursor()
            try:
                if transaction:
                    # SQLite: the write lock up front. A deferred transaction that
                    # reads first deadlocks with another flush on the lock upgrade,
                    # and SQLite fails one of them at once instead of waiting
                    cursor.execute("BEGIN IMMEDIATE" if src.dialect.name == "sqlite" else "BEGIN")
                out = work(cursor, src.dialect)
                if transaction:
                    cursor.execute("COMMIT")
            finally:
                cursor.close()
        except Exception as err:
            conn.invalidate()  # whatever state it is in (a transaction open), not reused
            self._down_until = time.monotonic() + RETRY_SECONDS
            raise Unavailable(f"{self.table.name}: {err!r}") from None
        finally:
            conn.close()
        return out

    def _upsert(self, dialect: Any, rows: list[dict[str, Any]], how: str) -> Any:
        """INSERT rows; on a conflict ``add`` their value, ``set`` it, or ``keep`` the row."""
        t = self.table
        pk = ["namespace", "kind", "name"]
        name = dialect.name
        if name in ("postgresql", "sqlite"):
            if name == "postgresql":
                from sqlalchemy.dialects.postgresql import insert
            else:
                from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
            ins = insert(t).values(rows)
            if how == "keep":
                return ins.on_conflict_do_nothing(index_elements=pk)
            value = t.c.value + ins.excluded.value if how == "add" else ins.excluded.value
            return ins.on_conflict_do_update(index_elements=pk, set_={"value": value})
        from sqlalchemy.dialects.mysql import insert as mysql_insert

        mins = mysql_insert(t).values(rows)
        if how == "keep":
            return mins.on_duplicate_key_update(info=t.c.info)
        value = t.c.value + mins.inserted.value if how == "add" else mins.inserted.value
        return mins.on_duplicate_key_update(value=value)

    def _write_rows(self, cursor: Any, dialect: Any, rows: list[dict[str, Any]], how: str) -> None:
        rows.sort(key=lambda r: (r["kind"], r["name"]))  # one lock order for every process
        for i in range(0, len(rows), _BATCH):
            _execute(cursor, dialect, self._upsert(dialect, rows[i : i + _BATCH], how))

    def _row(self, kind: str, name: str, value: float, info: str | None = None) -> dict[str, Any]:
        return {"namespace": self.namespace, "kind": kind, "name": name, "value": float(value),
                "info": info}  # fmt: skip

    # -- the stats store (AppStats)

    def write(self, process: str, delta: dict[str, float], metas: dict[str, _Meta]) -> None:
        new = unsent_metas(metas, self._registered, delta)
        t = self.table
        now = time.time()
        prune = now - self._pruned > 600

        def work(cursor: Any, dialect: Any) -> None:
            if new:
                _execute(cursor, dialect, select(t.c.name).where(
                    t.c.namespace == self.namespace, t.c.kind == "s"))  # fmt: skip
                known = {r[0] for r in cursor.fetchall()}
                fold_overflow(new, known, MAX_STATEMENTS - len(known), delta)
                rows = [self._row("s", fp, 0, "\x1f".join([m.region, ",".join(m.tables), m.sql]))
                        for fp, m in new.items()]  # fmt: skip
                if rows:
                    self._write_rows(cursor, dialect, rows, "keep")
            counters = [self._row("c", k, v) for k, v in delta.items() if v]
            if counters:
                self._write_rows(cursor, dialect, counters, "add")
                self._write_rows(cursor, dialect, [self._row("p", process, now)], "set")
            if prune:  # processes gone for a day: their rows go
                _execute(cursor, dialect, delete(t).where(
                    t.c.namespace == self.namespace, t.c.kind == "p",
                    t.c.value < now - PROCESS_ROW_SECONDS))  # fmt: skip

        self._run(work, transaction=True)
        if prune:
            self._pruned = now
        self._registered.update(new)

    def read(self) -> tuple[dict[str, float], dict[str, _Meta], list[ProcessInfo]]:
        t = self.table

        def work(cursor: Any, dialect: Any) -> list[Any]:
            _execute(cursor, dialect, select(t.c.kind, t.c.name, t.c.value, t.c.info).where(
                t.c.namespace == self.namespace, t.c.kind != "w"))  # fmt: skip
            return list(cursor.fetchall())

        fields: dict[str, float] = {}
        metas: dict[str, _Meta] = {}
        processes: list[ProcessInfo] = []
        now = time.time()
        for kind, name, value, info in self._run(work):
            value = float(value)
            if kind == "c":
                fields[name] = int(value) if value.is_integer() else value
            elif kind == "s":
                region, tables, sql = [*str(info or "").split("\x1f", 2), "", ""][:3]
                metas[name] = _Meta(region, sql, tuple(x for x in tables.split(",") if x))
            elif now - value <= PROCESS_SEEN_SECONDS:
                processes.append({"process": name, "last_flush": value,
                                  "age_seconds": round(now - value, 3)})  # fmt: skip
        metas.setdefault(OTHER, _Meta("?", "(other statements)", ()))
        processes.sort(key=lambda p: p["process"])
        return fields, metas, processes

    def clear(self) -> None:
        t = self.table

        def work(cursor: Any, dialect: Any) -> None:
            _execute(cursor, dialect, delete(t).where(
                t.c.namespace == self.namespace, t.c.kind != "w"))  # fmt: skip

        self._run(work)
        self._registered.clear()

    # -- the app-wide switch (QueryCache.disable_app_wide)

    def get_switch(self) -> bool:
        """Whether caching is disabled app-wide (raises when it cannot tell)."""
        t = self.table

        def work(cursor: Any, dialect: Any) -> Any:
            where = (t.c.namespace == self.namespace, t.c.kind == "w", t.c.name == "disabled")
            _execute(cursor, dialect, select(t.c.value).where(*where))
            return cursor.fetchall()

        rows: Sequence[Any] = self._run(work)
        return bool(rows and float(rows[0][0]))

    def set_switch(self, disabled: bool) -> None:
        """Disable (or enable again) caching for every process of this namespace."""
        row = self._row("w", "disabled", 1.0 if disabled else 0.0, repr(time.time()))
        self._run(lambda cursor, dialect: self._write_rows(cursor, dialect, [row], "set"))
