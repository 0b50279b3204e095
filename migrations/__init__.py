"""The alembic branch ``querycache``: tables of sqla_querycache's own.

Installed as ``sqla_querycache.migrations``. In an application's alembic setup,
add ``sqla_querycache.migrations:versions`` to ``version_locations`` in its
``alembic.ini`` (``path_separator = space``) and use the hooks of
:mod:`sqla_querycache.migrate` in its ``env.py``. Standalone, with a version
table of its own (``querycache_alembic_version``)::

    python -m sqla_querycache.migrate -x url=<database url> upgrade querycache@head
"""
