"""Migrations and the cache: invalidate what a migration run touched.

In an alembic ``env.py``::

    from sqla_querycache.migrate import invalidating

    with engine.connect() as connection, invalidating(connection, "redis://cache:6379/0"):
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()

Every statement the migration sends is classified like any other write
(DDL and DML on named tables; anything unclear invalidates everything), and
the tables are bumped in the shared version store once the run committed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event

from . import rows, tracking
from .versions import make_version_store


def migration_location() -> str:
    """The ``versions`` folder of the ``querycache`` branch, for ``version_locations``."""
    from . import migrations  # type: ignore[attr-defined]  # top-level migrations/, installed here

    return os.path.join(os.path.dirname(migrations.__file__), "versions")


@contextmanager
def invalidating(
    connection: Any, versions: Any = None, namespace: str = "qc"
) -> Iterator[set[str]]:
    """Record the tables written on ``connection``; bump them in ``versions`` at exit.

    ``versions`` is what ``QueryCache(versions=...)`` takes (a Redis URL or
    client, ``"sql"``, a store) or a QueryCache; ``None`` records only.
    Yields the set of written table names.
    """
    written: set[str] = set()

    def on_execute(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        names = tracking.scan(conn, context, statement).writes
        if names:
            written.update(tracking.write_closure(conn, names))

    event.listen(connection, "before_cursor_execute", on_execute)
    try:
        yield written
    finally:
        event.remove(connection, "before_cursor_execute", on_execute)
    if written and versions is not None:
        names = rows.with_rows(written | {tracking.ANY_TABLE})
        invalidate = getattr(versions, "invalidate", None)
        if invalidate is not None:  # a QueryCache
            invalidate(tables=names)
        else:
            store = make_version_store(versions, namespace)
            if getattr(store, "needs_bind", False):
                store.bump(names, engines=[connection.engine])  # type: ignore[call-arg]
            else:
                store.bump(names)
