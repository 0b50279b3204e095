"""The alembic branch ``querycache``: tables of sqla_querycache's own.

Use it standalone (``alembic -c migrations/alembic.ini upgrade querycache@head``)
or add :func:`sqla_querycache.migration_location` to your own
``version_locations``. It keeps its own version table
(``querycache_alembic_version``) when run standalone.
"""
