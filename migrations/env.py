"""Alembic environment of the ``querycache`` branch (standalone use).

Runs with its own version table so it never touches an application's
``alembic_version``. Writes it makes are reported to the cache through
:func:`sqla_querycache.migrate.invalidating` when ``-x versions=...`` names
a shared version store (a Redis URL, or ``sql``).
"""

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool

from sqla_querycache.migrate import invalidating

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

VERSION_TABLE = "querycache_alembic_version"
x = context.get_x_argument(as_dictionary=True)


def database_url() -> str:
    url = x.get("url") or os.environ.get("QC_DATABASE_URL") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise SystemExit("FAILED: give the database URL with -x url=... or QC_DATABASE_URL")
    return url


def run_migrations_offline() -> None:
    context.configure(url=database_url(), literal_binds=True, version_table=VERSION_TABLE,
                      dialect_opts={"paramstyle": "named"})  # fmt: skip
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(database_url(), poolclass=pool.NullPool)
    with engine.connect() as connection, invalidating(connection, x.get("versions")):
        context.configure(connection=connection, target_metadata=None,
                          version_table=VERSION_TABLE)  # fmt: skip
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
