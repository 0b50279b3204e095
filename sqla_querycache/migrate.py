"""Alembic and the cache: the ``querycache`` branch, and invalidating what a migration touched.

In the application's ``alembic.ini`` (the branch must be in ``version_locations``
*there*: alembic reads the script directory before ``env.py`` runs)::

    [alembic]
    script_location = %(here)s/alembic
    version_locations = %(here)s/alembic/versions sqla_querycache.migrations:versions
    path_separator = space
    revision_environment = true

In its ``env.py``::

    from sqla_querycache.migrate import (
        include_object, invalidating, process_revision_directives)

    with engine.connect() as connection, invalidating(connection, "sql"):
        context.configure(connection=connection, target_metadata=target_metadata,
                          include_object=include_object,
                          process_revision_directives=process_revision_directives)
        with context.begin_transaction():
            context.run_migrations()

- :func:`include_object` keeps autogenerate away from the package's own tables
  (without it, the first ``revision --autogenerate`` drops ``querycache_versions``
  and ``querycache_stats``);
- :func:`process_revision_directives` puts every new revision of the
  application in the application's folder, on the application's head (without
  it, the application's first revision is written into the installed package,
  after ``qc0002``);
- :func:`invalidating` bumps every table the run wrote once it committed.

Standalone, without an alembic setup of the application's:
``python -m sqla_querycache.migrate -x url=<database url> upgrade querycache@head``
(its own version table ``querycache_alembic_version``).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event, inspect

from . import rows, tracking
from .sqlshared import STATS_TABLE
from .versions import SQL_TABLE, make_version_store

log = logging.getLogger("sqla_querycache")

#: the branch label of the package's revisions
BRANCH = "querycache"
#: the package's versions folder as alembic's ``version_locations`` spells a
#: package resource (works wherever the package is installed)
VERSION_LOCATION = "sqla_querycache.migrations:versions"
#: tables the package owns: never the application's to autogenerate
TABLES = frozenset({SQL_TABLE, STATS_TABLE, "querycache_alembic_version"})


def migration_location() -> str:
    """The ``versions`` folder of the ``querycache`` branch, as a path.

    For a ``Config`` built in Python before a command runs. Setting it from
    ``env.py`` is too late (alembic has read ``version_locations`` already):
    in ``alembic.ini`` write :data:`VERSION_LOCATION` instead.
    """
    from . import migrations  # type: ignore[attr-defined]  # top-level migrations/, installed here

    return os.path.join(os.path.dirname(migrations.__file__), "versions")


def standalone_config() -> str:
    """The path of the branch's own ``alembic.ini`` (standalone use), wherever installed."""
    return os.path.join(os.path.dirname(migration_location()), "alembic.ini")


# ------------------------------------------------------------ autogenerate


def include_object(object: Any, name: str | None, type_: str, reflected: bool,
                   compare_to: Any) -> bool:  # fmt: skip
    """Alembic's ``include_object`` hook: False for the package's own tables.

    Combine it with one of yours: ``include_object=lambda *a: include_object(*a)
    and mine(*a)``.
    """
    if type_ == "table":
        return name not in TABLES
    table = getattr(object, "table", None)  # columns, indexes, constraints
    return getattr(table, "name", None) not in TABLES


def _same_dir(a: Any, b: str) -> bool:
    return os.path.realpath(str(a)) == os.path.realpath(b)


def _app_locations(script_dir: Any, ours: str) -> list[str]:
    locations = getattr(script_dir, "_version_locations", None)
    if locations is None:  # an alembic without the private property
        locations = [script_dir.versions]
    return [str(loc) for loc in locations if not _same_dir(loc, ours)]


def process_revision_directives(context: Any, revision: Any, directives: list[Any]) -> None:
    """Alembic's ``process_revision_directives`` hook: the application's
    revisions go into the application's folder, on the application's head.

    A new revision that would follow a ``querycache`` revision (the default
    ``head`` when the application has none yet, or ``querycache@head``)
    follows the application's single head instead (or starts at base), and one
    that would be written into the package's folder goes into the first other
    folder of ``version_locations``. Needs ``revision_environment = true`` for
    revisions made without ``--autogenerate``.
    """
    script_dir = getattr(context, "script", None)
    if script_dir is None or not directives:
        return
    ours_dir = migration_location()
    ours = {
        s.revision
        for s in script_dir.walk_revisions()
        if _same_dir(os.path.dirname(s.path), ours_dir)
    }
    if not ours:  # the branch is not in version_locations: nothing to steer
        return
    app_heads = [h for h in script_dir.get_heads() if h not in ours]
    app_dirs = _app_locations(script_dir, ours_dir)
    for script in directives:
        head = getattr(script, "head", None) or "head"
        on_ours = False
        if head == "head":
            on_ours = True  # "the" head of the application
        elif head not in ("base", "heads"):
            try:
                targets = script_dir.revision_map.get_revisions(head)
            except Exception:
                targets = ()  # alembic itself will say what is wrong with it
            on_ours = any(t is not None and t.revision in ours for t in targets)
        if on_ours:
            if len(app_heads) > 1:
                from alembic.util import CommandError

                raise CommandError(
                    f"the application has several heads ({', '.join(app_heads)}); "
                    f"give one with --head (the {BRANCH} branch is the package's own)"
                )
            new_head = app_heads[0] if app_heads else "base"
            log.info("new revision placed on %s, off the %s branch", new_head, BRANCH)
            script.head = new_head
        path = getattr(script, "version_path", None)
        if (path is None and not app_heads) or (path is not None and _same_dir(path, ours_dir)):
            if not app_dirs:
                from alembic.util import CommandError

                raise CommandError(
                    f"version_locations has no folder of the application's besides "
                    f"{VERSION_LOCATION}: add yours (path_separator = space)"
                )
            script.version_path = app_dirs[0]


# ------------------------------------------------------------ invalidation


def _table_missing(connection: Any) -> bool:
    try:
        with connection.engine.connect() as conn:
            return not inspect(conn).has_table(SQL_TABLE)
    except Exception:
        return False


@contextmanager
def invalidating(
    connection: Any, versions: Any = None, namespace: str = "qc"
) -> Iterator[set[str]]:
    """Record the tables written on ``connection``; bump them in ``versions`` at exit.

    ``versions`` is what ``QueryCache(versions=...)`` takes (a Redis URL or
    client, ``"sql"``, a store) or a QueryCache; ``None`` records only.
    Yields the set of written table names.

    With ``"sql"`` and no ``querycache_versions`` table yet (the application's
    branch migrated before the ``querycache`` branch), the bump is skipped with
    a warning: no entry can depend on versions that were never stored (reads
    bypass the cache until the table exists, and its rows start at fresh
    random versions), and the migration, committed by then, still succeeds.
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
            return
        store = make_version_store(versions, namespace)
        if getattr(store, "needs_bind", False):
            try:
                store.bump(names, engines=[connection.engine])  # type: ignore[call-arg]
            except Exception:
                if not _table_missing(connection):
                    raise
                log.warning(
                    "sqla_querycache: %s does not exist yet, so nothing cached depends on it: "
                    "invalidation skipped (reads bypass the cache until `alembic upgrade "
                    "%s@head` creates it)", SQL_TABLE, BRANCH,
                )  # fmt: skip
        else:
            store.bump(names)


# ------------------------------------------------------------ standalone


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m sqla_querycache.migrate ARGS``: alembic on the branch's own ``alembic.ini``."""
    from alembic.config import main as alembic_main

    args = list(sys.argv[1:] if argv is None else argv)
    alembic_main(argv=["-c", standalone_config(), *args], prog="python -m sqla_querycache.migrate")


if __name__ == "__main__":
    main()
