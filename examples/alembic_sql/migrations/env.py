"""The application's alembic environment, with sqla_querycache's hooks.

- ``include_object``: autogenerate never touches the package's own tables
  (``querycache_versions``), which are not in the application's metadata;
- ``process_revision_directives``: new revisions go to this folder, on the
  application's head, never into the installed package after ``qc0001``;
- ``invalidating(connection, "sql")``: every table the run wrote is bumped in
  the "sql" version store once it committed, so running applications see
  what a data migration changed. Before the ``querycache`` branch created its
  table, that is skipped with a warning (nothing cached can depend on it).
"""

import os
import sys
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool

from sqla_querycache.migrate import include_object, invalidating, process_revision_directives

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from models import Base

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

x = context.get_x_argument(as_dictionary=True)
URL = x.get("url") or os.environ.get("DATABASE_URL") or config.get_main_option("sqlalchemy.url")
VERSIONS = x.get("versions", "sql")  # what the application passes to QueryCache(versions=...)
HOOKS = {
    "target_metadata": Base.metadata,
    "include_object": include_object,
    "process_revision_directives": process_revision_directives,
}


def run_migrations_offline() -> None:
    context.configure(url=URL, literal_binds=True, **HOOKS)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(URL, poolclass=pool.NullPool)
    with engine.connect() as connection, invalidating(connection, VERSIONS):
        context.configure(connection=connection, **HOOKS)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
