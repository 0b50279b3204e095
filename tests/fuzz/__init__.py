"""A generative differential fuzzer for sqla_querycache.

Random reads (ORM, Core, ``text()``, ``session.get``, volatile ones) and
random writes (ORM, bulk, Core, textual, AUTOCOMMIT, savepoints, cascades,
TRUNCATE) interleaved across sessions; after every step each read is compared
cached against uncached in the same context, and in fresh sessions after every
commit. See :mod:`tests.fuzz.runner` for the oracle and ``python -m tests.fuzz --help``.
"""
